//! etcd's gRPC errors that the API layer decides itself, with etcd's codes and exact
//! messages (clients match on the strings). Errors decided by the store live with it.

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tonic::{Code, Status};

use crate::raft::{Member, MemberId};

pub fn empty_key() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
}

pub fn value_provided() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: value is provided")
}

pub fn lease_provided() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: lease is provided")
}

pub fn lease_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: requested lease not found")
}

pub fn too_many_ops() -> Status {
    Status::new(
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    )
}

pub fn duplicate_key() -> Status {
    Status::new(
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    )
}

pub fn request_too_large() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: request is too large")
}

pub fn no_space() -> Status {
    Status::new(
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    )
}

pub fn no_leader() -> Status {
    Status::new(Code::Unavailable, "etcdserver: no leader")
}

pub fn leader_changed() -> Status {
    Status::new(Code::Unavailable, "etcdserver: leader changed")
}

pub fn stopped() -> Status {
    Status::new(Code::Unavailable, "etcdserver: server stopped")
}

pub fn timeout() -> Status {
    Status::new(Code::Unavailable, "etcdserver: request timed out")
}

/// A failed call to the leader: etcd's errors pass through, a lost connection means the
/// leader is gone.
pub fn from_peer_status(status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => no_leader(),
        _ => status,
    }
}

pub fn from_write_error(error: RaftError<MemberId, ClientWriteError<MemberId, Member>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => no_leader(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::new(Code::FailedPrecondition, e.to_string())
        }
        RaftError::Fatal(fatal) => {
            tracing::error!(%fatal, "raft stopped");
            stopped()
        }
    }
}

pub fn from_read_error(error: RaftError<MemberId, CheckIsLeaderError<MemberId, Member>>) -> Status {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))
        | RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => no_leader(),
        RaftError::Fatal(fatal) => {
            tracing::error!(%fatal, "raft stopped");
            stopped()
        }
    }
}
