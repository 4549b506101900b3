//! The etcd v3 gRPC services, one file per service: each adapts protobuf requests to the
//! Raft and store layers and answers with etcd's messages and errors.

pub mod cluster;
pub mod errors;
pub mod kv;
pub mod maintenance;
mod txn_check;

use std::sync::Arc;

use prost::Message;
use tonic::Status;

use crate::proto::cairnpb::{raft_request, raft_response, RaftRequest};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, ResponseHeader,
};
use crate::raft::{MemberId, Proposal, Raft};
use crate::store::Store;

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
    pub store: Store,
    pub log: crate::raft::LogStore,
    pub limits: Limits,
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

    /// Replicates a write through Raft and returns what the state machine answered.
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
        let written = self
            .raft
            .client_write(Proposal(proposal))
            .await
            .map_err(errors::from_write_error)?;
        written
            .data
            .into_result()?
            .and_then(|response| response.response)
            .ok_or_else(|| Status::internal("etcdserver: the state machine gave no response"))
    }

    /// Waits until this member has applied everything committed before the call, so that a
    /// following local read is linearizable.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(errors::from_read_error)
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
