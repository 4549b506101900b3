//! The etcd v3 gRPC services, one file per service: each adapts protobuf requests to the
//! Raft and store layers and answers with etcd's messages and errors.

pub mod cluster;
pub mod election;
pub mod errors;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod read_index;
mod recipes;
mod txn_check;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use prost::Message;
use tonic::Status;

use crate::proto::cairnpb::{raft_request, raft_response, RaftRequest};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, ResponseHeader,
};
use crate::raft::{Applied, Forwarder, Member, MemberId, Peers, Proposer, Raft};
use crate::store::Store;

/// etcd's request timeout: 5 s plus two election timeouts. A write fails with "request
/// timed out" when it has not been applied by then: on the leader (one cut off from the
/// quorum keeps leading in openraft) and when forwarded to a leader that does not answer.
pub fn request_timeout(election_timeout: Duration) -> Duration {
    Duration::from_secs(5) + 2 * election_timeout
}

/// Limits an operator sets, with etcd's defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub quota_backend_bytes: i64,
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1536 * 1024,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            max_txn_ops: 128,
        }
    }
}

/// What every service needs: this member's identity, its Raft handle and its store.
pub struct Node {
    pub member_id: MemberId,
    pub cluster_id: u64,
    pub raft: Raft,
    pub proposer: Proposer,
    pub store: Store,
    pub log: crate::raft::LogStore,
    pub peers: Peers,
    pub forwarder: Forwarder,
    pub cluster_token: String,
    pub election_timeout: Duration,
    pub limits: Limits,
    pub read_index: read_index::ReadIndexBatcher,
    pub lessor: crate::lease::Lessor,
    /// How long a request waits for a leader to be elected before it fails with "no leader".
    pub leader_wait: Duration,
    /// The certificates this member serves, whose expiry Status and `/health` report.
    pub certificate_files: Vec<std::path::PathBuf>,
    /// True while the member has been without a leader long enough that the streams which
    /// require one end ([`leader::monitor`]).
    pub leader_lost: tokio::sync::watch::Receiver<bool>,
}

/// Where a request that needs the leader goes.
pub enum Route {
    Here,
    /// Another member leads: its ID and how to reach it.
    Leader(MemberId, Member),
}

pub type SharedNode = Arc<Node>;

impl Node {
    /// etcd's response header; `revision` is the store revision the answer reflects.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    /// Whether this member knows a leader: a follower's leader, or itself leading with a
    /// quorum heard from within an election timeout. (etcd's leader steps down after that
    /// long without one; openraft's keeps leading, so it is counted here.)
    pub fn has_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        match metrics.current_leader {
            None => false,
            Some(leader) if leader == self.member_id => metrics
                .millis_since_quorum_ack
                .is_some_and(|millis| u128::from(millis) < self.election_timeout.as_millis()),
            Some(_) => true,
        }
    }

    /// Replicates a write through Raft and returns what the state machine answered. A member
    /// that is not the leader forwards the write to the leader over the peer network.
    pub async fn propose(
        &self,
        request: raft_request::Request,
    ) -> Result<raft_response::Response, Status> {
        let proposal = RaftRequest {
            request: Some(request),
        };
        if proposal.encoded_len() > self.limits.max_request_bytes {
            return Err(errors::request_too_large());
        }
        let applied = match self.route().await? {
            Route::Here => match tokio::time::timeout(
                request_timeout(self.election_timeout),
                self.proposer.propose(proposal.clone()),
            )
            .await
            .map_err(|_| errors::timeout())?
            {
                Ok(applied) => applied,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    match forward.leader_node {
                        Some(leader) => self.forward(&leader, proposal).await?,
                        None => return Err(errors::no_leader()),
                    }
                }
                Err(error) => return Err(errors::from_write_error(error)),
            },
            Route::Leader(_, leader) => self.forward(&leader, proposal).await?,
        };
        applied
            .into_result()?
            .and_then(|response| response.response)
            .ok_or_else(|| Status::internal("etcdserver: the state machine gave no response"))
    }

    async fn forward(&self, leader: &Member, proposal: RaftRequest) -> Result<Applied, Status> {
        self.forwarder.forward(leader, proposal).await
    }

    /// The leader to send a request to, waiting a while for an election to finish.
    pub async fn route(&self) -> Result<Route, Status> {
        let mut metrics = self.raft.metrics();
        let leader = tokio::time::timeout(
            self.leader_wait,
            metrics.wait_for(|metrics| metrics.current_leader.is_some()),
        )
        .await
        .map_err(|_| errors::no_leader())?
        .map_err(|_| errors::stopped())?
        .current_leader
        .ok_or_else(errors::no_leader)?;
        if leader == self.member_id {
            return Ok(Route::Here);
        }
        let metrics = self.raft.metrics();
        let leader_member = metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned();
        leader_member
            .map(|member| Route::Leader(leader, member))
            .ok_or_else(errors::no_leader)
    }

    /// Waits until this member has applied everything committed before the call, so that a
    /// following local read is linearizable: the leader confirms its commit index with a
    /// quorum (read index), then this member waits to have applied up to it.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        let read_index = self.read_index.read_index(self.fetch_read_index()).await?;
        self.raft
            .wait(Some(self.leader_wait))
            .applied_index_at_least(Some(read_index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| errors::timeout())
    }

    /// One read-index round: the leader's read index (see [`crate::raft::read_index`]),
    /// confirmed by a quorum.
    async fn fetch_read_index(&self) -> Result<u64, Status> {
        let read_index = match self.route().await? {
            Route::Here => match crate::raft::read_index(&self.raft).await {
                Ok(index) => index,
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    match (forward.leader_id, forward.leader_node) {
                        (Some(id), Some(leader)) => self.remote_read_index(id, &leader).await?,
                        _ => return Err(errors::no_leader()),
                    }
                }
                Err(error) => return Err(errors::from_read_error(error)),
            },
            Route::Leader(id, leader) => self.remote_read_index(id, &leader).await?,
        };
        Ok(read_index)
    }

    /// Asks the leader `id` for its read index. As etcd's read loop does, gives up with
    /// "leader changed" once this member learns of another leader (the client retries at
    /// once, instead of waiting on a leader that is gone), and with "request timed out" after
    /// etcd's request timeout.
    async fn remote_read_index(&self, id: MemberId, leader: &Member) -> Result<u64, Status> {
        let mut client = self.peers.client(leader).map_err(|_| errors::no_leader())?;
        let mut metrics = self.raft.metrics();
        let replaced =
            metrics.wait_for(|metrics| metrics.current_leader.is_some_and(|current| current != id));
        tokio::select! {
            reply = client.read_index(crate::proto::cairnpb::ReadIndexRequest {}) => {
                Ok(reply.map_err(errors::from_peer_status)?.get_ref().index)
            }
            changed = replaced => Err(match changed {
                Ok(_) => errors::leader_changed(),
                Err(_) => errors::stopped(),
            }),
            () = tokio::time::sleep(request_timeout(self.election_timeout)) => Err(errors::timeout()),
        }
    }

    /// etcd's quota check: a write that would take the store past its quota raises the
    /// NOSPACE alarm (through Raft, so every member sees it) and is refused.
    pub async fn check_quota(&self, cost: usize) -> Result<(), Status> {
        if self.store.db_size_in_use() + cost as i64 <= self.limits.quota_backend_bytes {
            return Ok(());
        }
        let activate = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        tracing::warn!(
            quota = self.limits.quota_backend_bytes,
            in_use = self.store.db_size_in_use(),
            "database space exceeded; raising the NOSPACE alarm"
        );
        self.propose(raft_request::Request::Alarm(activate)).await?;
        Err(errors::no_space())
    }
}
