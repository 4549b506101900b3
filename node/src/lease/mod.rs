//! The lessor: when leases expire. Leases themselves (IDs, TTLs, attached keys) are
//! replicated state in the store; their deadlines are not. As in etcd, only the leader keeps
//! deadlines, in memory: it renews them on keepalives and proposes a revoke through Raft for
//! each lease that runs out, so every member deletes the lease's keys at the same revision.
//!
//! A member becomes the lessor's primary once it leads and has applied everything committed
//! before its term (etcd promotes its lessor when it applies the new leader's first entry).
//! Promotion sets every lease's deadline to now + election timeout + TTL, as etcd does: no
//! member knew the old leader's deadlines, and this errs on the side of keeping leases
//! (clients' keepalives reach the new leader within that time). Demotion forgets them.
//!
//! Expiry never decides anything on a follower; keepalives and TimeToLive are answered by the
//! primary (followers forward them over the peer service).

mod deadlines;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;

use crate::proto::cairnpb::{raft_request, RaftRequest};
use crate::proto::etcdserverpb::{
    LeaseRevokeRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};
use crate::raft::{Applied, Proposer, Raft};
use crate::store::{LeaseChange, Store};
use deadlines::{Deadlines, Expiry};

/// How often the primary looks for expired leases. etcd's lessor loop runs every 500 ms; a
/// shorter tick (a lock and a look at the earliest deadline) keeps a lease's keys from
/// outliving it by up to half a second more on a loaded member.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Most revokes proposed per second (etcd's `leaseRevokeRate`), so that a mass expiry does
/// not crowd client writes out of the log.
const REVOKES_PER_SECOND: usize = 1000;

/// How long promotion may take to confirm leadership and catch up before it is tried again.
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the lessor could not answer about a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// This member is not (yet, or any more) the primary: ask the leader.
    NotPrimary,
    /// No such lease.
    NotFound,
}

/// The message a primary that is not ready gives a follower, which then tries again.
const NOT_PRIMARY: &str = "cairn: this member's lessor is not the primary";

impl From<LeaseError> for tonic::Status {
    /// How a primary answers a follower's forwarded request.
    fn from(error: LeaseError) -> Self {
        match error {
            LeaseError::NotFound => crate::api::errors::lease_not_found(),
            LeaseError::NotPrimary => tonic::Status::failed_precondition(NOT_PRIMARY),
        }
    }
}

impl LeaseError {
    /// The lessor's answer in a primary's reply to a forwarded request; `None` for a failure
    /// of the call itself (the leader changed or is unreachable), which is worth a retry.
    pub fn from_primary(status: &tonic::Status) -> Option<LeaseError> {
        match status.code() {
            tonic::Code::NotFound => Some(LeaseError::NotFound),
            tonic::Code::FailedPrecondition if status.message() == NOT_PRIMARY => {
                Some(LeaseError::NotPrimary)
            }
            _ => None,
        }
    }
}

/// What TimeToLive reports about a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeToLive {
    /// Whole seconds left.
    remaining: i64,
    /// The TTL the lease was granted with.
    granted: i64,
}

/// The lessor of one member; cheap to clone.
#[derive(Clone)]
pub struct Lessor {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    proposer: Proposer,
    store: Store,
    /// etcd's minimum lease TTL, 1.5 election timeouts rounded up to seconds: a shorter lease
    /// could expire during a routine leader election.
    min_ttl: i64,
    /// Added to every deadline at promotion (etcd extends by the election timeout).
    extension: Duration,
    state: Mutex<State>,
    /// Bumped when a lease is revoked or the primary changes, for keepalives waiting on an
    /// expired lease's fate.
    changes: watch::Sender<u64>,
    ids: IdGenerator,
}

#[derive(Default)]
struct State {
    /// The term this member is primary for; `None` when it is not.
    primary: Option<u64>,
    deadlines: Deadlines,
}

/// What this member's Raft says about leadership, right now.
fn leading_term(raft: &Raft) -> Option<u64> {
    let metrics = raft.server_metrics();
    let metrics = metrics.borrow();
    (metrics.state == ServerState::Leader).then(|| metrics.vote.leader_id().get_term())
}

impl Lessor {
    /// A lessor for the member's Raft and store; it follows the store's lease changes from
    /// now on. Call [`Lessor::run`] to have it promote itself and expire leases.
    pub fn new(
        raft: Raft,
        proposer: Proposer,
        store: Store,
        member_id: u64,
        election_timeout: Duration,
    ) -> Lessor {
        let inner = Arc::new(Inner {
            raft,
            proposer,
            store: store.clone(),
            min_ttl: min_ttl(election_timeout),
            extension: election_timeout,
            state: Mutex::new(State::default()),
            changes: watch::Sender::new(0),
            ids: IdGenerator::new(member_id),
        });
        // Weak: the store keeps the observer and the lessor keeps the store, so a strong
        // reference would keep both alive for good.
        let observer = Arc::downgrade(&inner);
        let registered = store.observe_leases(move |changes| {
            if let Some(inner) = Weak::upgrade(&observer) {
                inner.observe(changes);
            }
        });
        if !registered {
            tracing::error!("the store already has a lease observer; lease expiry is off");
        }
        Lessor { inner }
    }

    /// etcd's minimum TTL, in seconds: grants ask for at least this much.
    pub fn min_ttl(&self) -> i64 {
        self.inner.min_ttl
    }

    /// A lease ID for a grant that asked for none.
    pub fn next_id(&self) -> i64 {
        self.inner.ids.next()
    }

    /// Follows leadership (promotion, demotion) and revokes expired leases while primary,
    /// until `stop` turns true or Raft shuts down.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut server = self.inner.raft.server_metrics();
        let mut ticks = tokio::time::interval(EXPIRY_TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                changed = server.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = ticks.tick() => {}
            }
            self.follow_leadership().await;
            self.revoke_expired();
        }
    }

    async fn follow_leadership(&self) {
        let inner = &self.inner;
        let term = leading_term(&inner.raft);
        let primary = inner.lock().primary;
        match (term, primary) {
            (Some(term), Some(primary)) if term == primary => {}
            (Some(term), _) => {
                if primary.is_some() {
                    inner.demote();
                }
                inner.promote(term).await;
            }
            (None, Some(_)) => inner.demote(),
            (None, None) => {}
        }
    }

    /// Proposes revokes for the leases that ran out, at most a tick's share of the rate.
    fn revoke_expired(&self) {
        let expired = {
            let mut state = self.inner.lock();
            if state.primary.is_none() {
                return;
            }
            let limit = REVOKES_PER_SECOND * EXPIRY_TICK.as_millis() as usize / 1000;
            state.deadlines.take_expired(Instant::now(), limit)
        };
        for id in expired {
            let proposer = self.inner.proposer.clone();
            // One task each: the proposer gathers them into as few log entries as it can.
            tokio::spawn(async move {
                let revoke = RaftRequest {
                    request: Some(raft_request::Request::LeaseRevoke(LeaseRevokeRequest {
                        id,
                    })),
                };
                match proposer.propose(revoke).await {
                    Ok(Applied::Response(_)) => {
                        tracing::debug!(lease = %format!("{id:x}"), "revoked an expired lease")
                    }
                    // Revoked meanwhile (by a client, or by a previous proposal).
                    Ok(_) => {}
                    Err(error) => tracing::debug!(
                        lease = %format!("{id:x}"),
                        %error,
                        "revoking an expired lease failed; it is retried while this member leads"
                    ),
                }
            });
        }
    }

    /// Renews a lease (a keepalive) on the primary and returns its TTL. A lease that has run
    /// out but is not revoked yet cannot be renewed: as etcd, this waits for its revoke
    /// (`NotFound`) or for a leader change (`NotPrimary`, the caller retries elsewhere).
    pub async fn renew(&self, id: i64) -> Result<i64, LeaseError> {
        let inner = &self.inner;
        let mut changes = inner.changes.subscribe();
        let mut confirmed = false;
        loop {
            let expired = {
                let mut state = inner.primary_state()?;
                let now = Instant::now();
                match state.deadlines.expiry(id, now) {
                    Some(Expiry::Until(_)) => {
                        let ttl = state.deadlines.ttl(id).unwrap_or_default();
                        state.deadlines.track(id, ttl, now + secs(ttl));
                        return Ok(ttl);
                    }
                    Some(Expiry::Expired) => {
                        // Marked seen under the lock: the revoke or demotion that follows
                        // bumps it after taking the lock, so the wait below cannot miss it.
                        changes.borrow_and_update();
                        true
                    }
                    None => false,
                }
            };
            if expired {
                // The sender lives as long as `inner`, which we hold.
                let _ = changes.changed().await;
            } else if confirmed {
                return Err(LeaseError::NotFound);
            } else {
                inner.catch_up(id).await?;
                confirmed = true;
            }
        }
    }

    /// How long a lease has left, on the primary.
    async fn time_to_live(&self, id: i64) -> Result<TimeToLive, LeaseError> {
        let inner = &self.inner;
        let mut confirmed = false;
        loop {
            {
                let state = inner.primary_state()?;
                let now = Instant::now();
                if let Some(expiry) = state.deadlines.expiry(id, now) {
                    // etcd truncates to whole seconds; a lease past its deadline (its revoke
                    // under way) shows 0 rather than a negative time that could read as -1,
                    // "no such lease".
                    let remaining = match expiry {
                        Expiry::Until(deadline) => (deadline - now).as_secs() as i64,
                        Expiry::Expired => 0,
                    };
                    let granted = state.deadlines.ttl(id).unwrap_or_default();
                    return Ok(TimeToLive { remaining, granted });
                }
            }
            if confirmed {
                return Err(LeaseError::NotFound);
            }
            inner.catch_up(id).await?;
            confirmed = true;
        }
    }
}

impl Lessor {
    /// etcd's LeaseTimeToLive on the primary, with the keys if asked for; the header is left
    /// for the member that answers the client to fill in.
    pub async fn answer_time_to_live(
        &self,
        request: &LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, LeaseError> {
        let ttl = self.time_to_live(request.id).await?;
        let keys = if request.keys {
            self.inner.store.lease_keys(request.id)
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header: Some(ResponseHeader::default()),
            id: request.id,
            ttl: ttl.remaining,
            granted_ttl: ttl.granted,
            keys,
        })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Deadlines are rebuilt at the next promotion; a panic elsewhere cannot leave them
        // in a state worse than stale.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state, if this member is the primary and Raft still says it leads that term.
    fn primary_state(&self) -> Result<MutexGuard<'_, State>, LeaseError> {
        let state = self.lock();
        match state.primary {
            Some(term) if leading_term(&self.raft) == Some(term) => Ok(state),
            _ => Err(LeaseError::NotPrimary),
        }
    }

    /// A lease the primary does not track may have been granted by an entry committed but not
    /// yet applied here (etcd waits for the applied index before it renews): confirm the
    /// read index with a quorum, wait to have applied it, and track the lease if it exists.
    async fn catch_up(&self, id: i64) -> Result<(), LeaseError> {
        let read = crate::raft::read_index(&self.raft)
            .await
            .map_err(|_| LeaseError::NotPrimary)?;
        self.raft
            .wait(Some(PROMOTION_TIMEOUT))
            .applied_index_at_least(Some(read), "lease lookup")
            .await
            .map_err(|_| LeaseError::NotPrimary)?;
        if let Some(lease) = self.store.lease(id) {
            let mut state = self.primary_state()?;
            if state.deadlines.ttl(id).is_none() {
                state
                    .deadlines
                    .track(id, lease.ttl, Instant::now() + secs(lease.ttl));
            }
        }
        Ok(())
    }

    /// Becomes the primary for `term` once everything committed before it is applied.
    async fn promote(&self, term: u64) {
        let caught_up = tokio::time::timeout(PROMOTION_TIMEOUT, async {
            let read = crate::raft::read_index(&self.raft).await.ok()?;
            self.raft
                .wait(None)
                .applied_index_at_least(Some(read), "lessor promotion")
                .await
                .ok()
        })
        .await;
        if !matches!(caught_up, Ok(Some(_))) {
            tracing::debug!(term, "lessor promotion did not complete; retrying");
            return;
        }
        {
            // Under the lock, so that the observer's changes apply after the store's table
            // was read (a change it reports again is harmless).
            let mut state = self.lock();
            if leading_term(&self.raft) != Some(term) {
                return;
            }
            let now = Instant::now();
            state.deadlines.clear();
            let leases = self.store.leases();
            for lease in &leases {
                let deadline = now + self.extension + secs(lease.ttl);
                state.deadlines.track(lease.id, lease.ttl, deadline);
            }
            state.primary = Some(term);
            tracing::info!(term, leases = leases.len(), "lessor promoted");
        }
        self.changes.send_modify(|generation| *generation += 1);
    }

    fn demote(&self) {
        {
            let mut state = self.lock();
            state.primary = None;
            state.deadlines.clear();
        }
        tracing::info!("lessor demoted");
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Called by the store after it applied lease changes (on every member).
    fn observe(&self, changes: &[LeaseChange]) {
        let revoked = {
            let mut state = self.lock();
            if state.primary.is_none() {
                return;
            }
            let now = Instant::now();
            let mut revoked = false;
            for change in changes {
                match *change {
                    LeaseChange::Granted(lease) => {
                        state
                            .deadlines
                            .track(lease.id, lease.ttl, now + secs(lease.ttl))
                    }
                    LeaseChange::Revoked(id) => {
                        state.deadlines.untrack(id);
                        revoked = true;
                    }
                }
            }
            revoked
        };
        if revoked {
            self.changes.send_modify(|generation| *generation += 1);
        }
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// etcd's minimum TTL: `ceil(1.5 × election timeout)` in whole seconds.
fn min_ttl(election_timeout: Duration) -> i64 {
    let millis = i64::try_from(election_timeout.as_millis()).unwrap_or(i64::MAX / 4);
    ((3 * millis + 1999) / 2000).max(1)
}

/// Lease IDs for grants that ask for none, built as etcd's ID generator builds them: the
/// member's ID in the top bits, then the time in milliseconds at start, then a counter.
/// Members do not collide (different prefixes), one member never repeats itself (the
/// counter), and a restart starts past every ID it gave before (the clock moved on).
/// A collision with an ID a client chose is possible; the grant then fails with "lease
/// already exists" and the caller draws again.
struct IdGenerator {
    prefix: u64,
    suffix: std::sync::atomic::AtomicU64,
}

/// Bits of the ID below the member prefix: 40 of milliseconds and 8 of counter, as etcd.
const ID_SUFFIX_BITS: u32 = 48;
const ID_COUNTER_BITS: u32 = 8;

impl IdGenerator {
    fn new(member_id: u64) -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let suffix_mask = (1 << ID_SUFFIX_BITS) - 1;
        IdGenerator {
            prefix: member_id << ID_SUFFIX_BITS,
            suffix: std::sync::atomic::AtomicU64::new((millis << ID_COUNTER_BITS) & suffix_mask),
        }
    }

    /// A positive ID (etcd keeps generated IDs positive: clients print them as signed).
    fn next(&self) -> i64 {
        let suffix_mask = (1 << ID_SUFFIX_BITS) - 1;
        loop {
            let suffix = self
                .suffix
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_add(1);
            let id = ((self.prefix | (suffix & suffix_mask)) & i64::MAX as u64) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        assert_eq!(min_ttl(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl(Duration::from_millis(2000)), 3);
        assert_eq!(min_ttl(Duration::from_millis(100)), 1);
        assert_eq!(min_ttl(Duration::from_millis(5000)), 8);
    }

    #[test]
    fn generated_ids_are_positive_distinct_and_carry_the_member() {
        let one = IdGenerator::new(0x8e9e_05c5_2164_694d);
        let two = IdGenerator::new(0x1234);
        let a = one.next();
        let b = one.next();
        let c = two.next();
        assert!(a > 0 && b > 0 && c > 0);
        assert_ne!(a, b);
        assert_ne!(a >> ID_SUFFIX_BITS, c >> ID_SUFFIX_BITS);
        assert_eq!(c >> ID_SUFFIX_BITS, 0x1234);
    }
}
