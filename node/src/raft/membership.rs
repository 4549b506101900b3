//! Membership changes, executed on the leader: etcd's MemberAdd / Remove / Update / Promote,
//! members publishing their own attributes, automatic learner promotion and leader moves.
//!
//! A member that is not the leader sends the change to the leader over the peer network; the
//! leader runs it through openraft's joint consensus.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use super::types::{Member, MemberId, Raft};

/// How far behind the leader's log a learner may be and still count as caught up.
pub const CAUGHT_UP_ENTRIES: u64 = 100;

/// A change to the cluster's members, as sent to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a member as a learner; `promote` promotes it once it has caught up.
    Add { id: MemberId, member: Member },
    /// Make a caught-up learner a voter.
    Promote { id: MemberId },
    /// Remove a voter or a learner.
    Remove { id: MemberId },
    /// Replace a member's attributes (peer URLs, name, client URLs).
    Update { id: MemberId, member: Member },
}

/// One member as a membership lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    pub id: MemberId,
    pub member: Member,
    pub learner: bool,
}

/// The members of `membership`, voters and learners.
pub fn listed(membership: &openraft::Membership<MemberId, Member>) -> Vec<Listed> {
    let learners: BTreeSet<MemberId> = membership.learner_ids().collect();
    membership
        .nodes()
        .map(|(id, member)| Listed {
            id: *id,
            member: member.clone(),
            learner: learners.contains(id),
        })
        .collect()
}

/// The outcome of a change, as carried back from the leader: the members once the change is
/// committed, or `Err((code, message))`.
pub type ChangeOutcome = Result<Vec<Listed>, (i32, String)>;

pub fn member_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: member not found")
}

pub fn member_not_learner() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    )
}

pub fn learner_not_ready() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    )
}

pub fn member_exists() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: member ID already exist",
    )
}

pub fn peer_url_exists() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    )
}

/// How long a change waits for the one before it (a client's, a promotion, a member
/// publishing its attributes) to commit before it gives up as etcd does, "request timed out".
const CHANGE_WAIT: Duration = Duration::from_secs(10);

/// Pause between two attempts while another membership change is committing.
const CHANGE_RETRY: Duration = Duration::from_millis(50);

/// Runs one openraft membership change, waiting out a change already in progress.
async fn change_membership(
    raft: &Raft,
    changes: ChangeMembers<MemberId, Member>,
    retain: bool,
) -> Result<Vec<Listed>, Status> {
    let give_up = tokio::time::Instant::now() + CHANGE_WAIT;
    loop {
        match raft.change_membership(changes.clone(), retain).await {
            Ok(written) => {
                // The committed uniform configuration; the metrics of this member (or of
                // the member that forwarded the change) may not show it yet.
                let membership = written.membership.ok_or_else(|| {
                    Status::internal("cairn: a membership change wrote no membership")
                })?;
                return Ok(listed(&membership));
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) => {
                if tokio::time::Instant::now() >= give_up {
                    return Err(crate::api::errors::timeout());
                }
                tokio::time::sleep(CHANGE_RETRY).await;
            }
            Err(error) => return Err(crate::api::errors::from_write_error(error)),
        }
    }
}

/// The leader's view: last log index and each member's matched index (`None` for one that
/// has accepted nothing yet).
fn lag_view(raft: &Raft) -> Option<(u64, BTreeMap<MemberId, Option<u64>>)> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let replication = metrics.replication.as_ref()?;
    let matched = replication
        .iter()
        .map(|(id, log_id)| (*id, log_id.map(|log_id| log_id.index)))
        .collect();
    Some((metrics.last_log_index.unwrap_or(0), matched))
}

/// Each member's lag behind the leader's log, in entries; `None` on a member that is not the
/// leader (only the leader knows its followers' progress).
pub fn follower_lag(raft: &Raft) -> Option<BTreeMap<MemberId, u64>> {
    let (last, matched) = lag_view(raft)?;
    Some(
        matched
            .into_iter()
            .map(|(id, index)| (id, last.saturating_sub(index.unwrap_or(0))))
            .collect(),
    )
}

/// Whether learner `id` has accepted entries and is within [`CAUGHT_UP_ENTRIES`] of the
/// leader's log. One that has accepted nothing yet (not started, or unreachable) is not, even
/// while the whole log is shorter than that: etcd refuses to promote a learner that has
/// matched nothing as well.
fn is_caught_up(raft: &Raft, id: MemberId) -> bool {
    lag_view(raft).is_some_and(|(last, matched)| {
        matched
            .get(&id)
            .copied()
            .flatten()
            .is_some_and(|index| last.saturating_sub(index) <= CAUGHT_UP_ENTRIES)
    })
}

/// Runs a change on this member, which must be the leader.
pub async fn apply_change(raft: &Raft, change: MembershipChange) -> Result<Vec<Listed>, Status> {
    let membership = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    let voters: BTreeSet<MemberId> = membership.voter_ids().collect();
    let known = |id: &MemberId| membership.get_node(id).is_some();
    match change {
        MembershipChange::Add { id, member } => {
            if known(&id) {
                return Err(member_exists());
            }
            let taken = membership.nodes().any(|(_, other)| {
                other
                    .peer_urls
                    .iter()
                    .any(|url| member.peer_urls.contains(url))
            });
            if taken {
                return Err(peer_url_exists());
            }
            change_membership(
                raft,
                ChangeMembers::AddNodes(BTreeMap::from([(id, member)])),
                true,
            )
            .await
        }
        MembershipChange::Promote { id } => {
            if !known(&id) {
                return Err(member_not_found());
            }
            if voters.contains(&id) {
                return Err(member_not_learner());
            }
            if !is_caught_up(raft, id) {
                return Err(learner_not_ready());
            }
            change_membership(raft, ChangeMembers::AddVoterIds(BTreeSet::from([id])), true).await
        }
        MembershipChange::Remove { id } => {
            if !known(&id) {
                return Err(member_not_found());
            }
            if voters.contains(&id) {
                change_membership(
                    raft,
                    ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                    false,
                )
                .await
            } else {
                change_membership(
                    raft,
                    ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                    false,
                )
                .await
            }
        }
        MembershipChange::Update { id, member } => {
            if !known(&id) {
                return Err(member_not_found());
            }
            change_membership(
                raft,
                ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
                true,
            )
            .await
        }
    }
}

/// On the leader: promotes caught-up learners to voters. Members added as voters are promoted
/// as soon as they have caught up; with `auto_promote`, learners are promoted too, keeping the
/// number of voters odd (an even count tolerates no more failures than the odd count below).
pub async fn promote_learners(raft: &Raft, auto_promote: bool) -> Result<(), Status> {
    let (voters, learners) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state != ServerState::Leader {
            return Ok(());
        }
        let membership = metrics.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return Ok(());
        }
        let voters: BTreeSet<MemberId> = membership.voter_ids().collect();
        let learners: Vec<(MemberId, bool)> = membership
            .learner_ids()
            .map(|id| {
                (
                    id,
                    membership
                        .get_node(&id)
                        .is_some_and(|member| member.wants_vote),
                )
            })
            .collect();
        (voters, learners)
    };
    let (wanted, optional): (Vec<_>, Vec<_>) = learners
        .into_iter()
        .filter(|(id, _)| is_caught_up(raft, *id))
        .partition(|(_, wants_vote)| *wants_vote);
    let mut promoted: BTreeSet<MemberId> = wanted.into_iter().map(|(id, _)| id).collect();
    if auto_promote {
        let voters_after = voters.len() + promoted.len();
        let mut optional: Vec<MemberId> = optional.into_iter().map(|(id, _)| id).collect();
        if (voters_after + optional.len()) % 2 == 0 {
            optional.pop();
        }
        promoted.extend(optional);
    }
    if promoted.is_empty() {
        return Ok(());
    }
    tracing::info!(members = ?promoted.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(), "promoting caught-up learners");
    change_membership(raft, ChangeMembers::AddVoterIds(promoted), true)
        .await
        .map(drop)
}

/// On the member asked to take over (MoveLeader): keeps calling elections until it leads or
/// the deadline passes. The other voters refuse votes until the old leader's lease runs out,
/// and the old leader has stopped sending heartbeats, so this member's early, repeated
/// campaign is what wins.
pub async fn campaign(raft: &Raft, deadline: Duration) -> bool {
    let me = raft.metrics().borrow().id;
    let give_up = tokio::time::Instant::now() + deadline;
    let mut metrics = raft.metrics();
    while tokio::time::Instant::now() < give_up {
        if raft.trigger().elect().await.is_err() {
            return false;
        }
        let became_leader = tokio::time::timeout(
            Duration::from_millis(100),
            metrics.wait_for(|metrics| {
                metrics.current_leader == Some(me) && metrics.state == ServerState::Leader
            }),
        )
        .await;
        if matches!(became_leader, Ok(Ok(_))) {
            return true;
        }
    }
    false
}
