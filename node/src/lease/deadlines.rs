//! The leader's lease deadlines: when each lease expires, and when the expiry loop should
//! next look at it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long the expiry loop leaves an expired lease alone after proposing its revoke, before
/// proposing it again (etcd's `expiredLeaseRetryInterval`): the revoke may have been lost
/// with a leader change, or still be on its way through Raft.
pub(super) const REVOKE_RETRY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
struct Tracked {
    ttl: i64,
    deadline: Instant,
    /// The lease's entry in the queue: its deadline, or a retry time once expired.
    check_at: Instant,
}

/// What the leader knows of a lease's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// Alive until the deadline.
    Until(Instant),
    /// Past its deadline, its revoke proposed or about to be.
    Expired,
}

#[derive(Debug, Default)]
pub(super) struct Deadlines {
    leases: HashMap<i64, Tracked>,
    /// `(check_at, id)` of every lease, earliest first.
    queue: BTreeSet<(Instant, i64)>,
}

impl Deadlines {
    /// Starts tracking a lease, or moves its deadline.
    pub fn track(&mut self, id: i64, ttl: i64, deadline: Instant) {
        self.untrack(id);
        self.leases.insert(
            id,
            Tracked {
                ttl,
                deadline,
                check_at: deadline,
            },
        );
        self.queue.insert((deadline, id));
    }

    pub fn untrack(&mut self, id: i64) {
        if let Some(old) = self.leases.remove(&id) {
            self.queue.remove(&(old.check_at, id));
        }
    }

    pub fn clear(&mut self) {
        self.leases.clear();
        self.queue.clear();
    }

    pub fn ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|lease| lease.ttl)
    }

    pub fn expiry(&self, id: i64, now: Instant) -> Option<Expiry> {
        let lease = self.leases.get(&id)?;
        Some(if lease.deadline > now {
            Expiry::Until(lease.deadline)
        } else {
            Expiry::Expired
        })
    }

    /// Up to `limit` leases whose deadline has passed and whose revoke is due (first time or
    /// retry); each is not returned again before [`REVOKE_RETRY`] has passed.
    pub fn take_expired(&mut self, now: Instant, limit: usize) -> Vec<i64> {
        let due: Vec<(Instant, i64)> = self
            .queue
            .iter()
            .take_while(|(check_at, _)| *check_at <= now)
            .take(limit)
            .copied()
            .collect();
        let retry_at = now + REVOKE_RETRY;
        for entry @ (_, id) in &due {
            self.queue.remove(entry);
            self.queue.insert((retry_at, *id));
            if let Some(lease) = self.leases.get_mut(id) {
                lease.check_at = retry_at;
            }
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_leases_come_out_in_deadline_order_and_again_after_the_retry_interval() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut deadlines = Deadlines::default();
        deadlines.track(1, 5, at(5));
        deadlines.track(2, 2, at(2));
        deadlines.track(3, 9, at(9));

        assert_eq!(deadlines.take_expired(at(1), 10), Vec::<i64>::new());
        assert_eq!(deadlines.take_expired(at(6), 1), [2]);
        assert_eq!(deadlines.take_expired(at(6), 10), [1]);
        assert_eq!(deadlines.expiry(1, at(6)), Some(Expiry::Expired));
        assert_eq!(deadlines.expiry(3, at(6)), Some(Expiry::Until(at(9))));
        // Proposed revokes are left alone for the retry interval.
        assert_eq!(deadlines.take_expired(at(7), 10), Vec::<i64>::new());
        // Both retries and lease 3's deadline fall at 9 s: equal times go by ID.
        assert_eq!(deadlines.take_expired(at(9), 10), [1, 2, 3]);
    }

    #[test]
    fn tracking_again_moves_the_deadline_and_untracking_forgets() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut deadlines = Deadlines::default();
        deadlines.track(1, 5, at(5));
        deadlines.track(1, 5, at(10));
        assert_eq!(deadlines.take_expired(at(6), 10), Vec::<i64>::new());
        assert_eq!(deadlines.ttl(1), Some(5));
        deadlines.untrack(1);
        assert_eq!(deadlines.ttl(1), None);
        assert_eq!(deadlines.take_expired(at(20), 10), Vec::<i64>::new());
        deadlines.track(2, 1, at(1));
        deadlines.clear();
        assert_eq!(deadlines.expiry(2, at(0)), None);
    }
}
