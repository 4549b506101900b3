//! How this member reaches its peers.
//!
//! Cairn runs one-member clusters for now: the only member never sends a Raft message, so
//! every peer is unreachable. The peer transport (a gRPC service on the peer URL) replaces
//! this when multi-member clusters arrive; until then a configuration that names other
//! members is refused at startup rather than left to fail here.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::types::{Member, MemberId, TypeConfig};

/// Hands out a connection per peer.
pub struct PeerNetwork;

/// A peer this member cannot reach.
pub struct UnreachablePeer {
    target: MemberId,
}

impl UnreachablePeer {
    fn error<E: std::error::Error>(&self) -> RPCError<MemberId, Member, E> {
        RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
            "no peer transport to member {:x}: Cairn runs single-member clusters only",
            self.target
        ))))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = UnreachablePeer;

    async fn new_client(&mut self, target: MemberId, _node: &Member) -> UnreachablePeer {
        UnreachablePeer { target }
    }
}

impl RaftNetwork<TypeConfig> for UnreachablePeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>>
    {
        Err(self.error())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<MemberId>,
        RPCError<MemberId, Member, RaftError<MemberId, InstallSnapshotError>>,
    > {
        Err(self.error())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<MemberId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>> {
        Err(self.error())
    }
}
