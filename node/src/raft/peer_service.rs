//! The peer network, server side: the `cairnpb.Peer` service on the peer URL.

use std::future::Future;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::membership::{self, ChangeOutcome, MembershipChange};
use super::network::{decode, encode};
use super::proposer::Proposer;
use super::types::{Applied, MemberId, Raft, TypeConfig};
use crate::lease::Lessor;
use crate::proto::cairnpb::peer_server::Peer;
use crate::proto::cairnpb::{
    CampaignRequest, CampaignResponse, LeaseRenewRequest, LeaseRenewResponse, ProposeResponse,
    RaftBatch, RaftMessage, ReadIndexRequest, ReadIndexResponse,
};
use crate::proto::etcdserverpb::{LeaseTimeToLiveRequest, LeaseTimeToLiveResponse};

pub struct PeerService {
    raft: Raft,
    proposer: Proposer,
    lessor: Lessor,
    stop: watch::Receiver<bool>,
}

impl PeerService {
    /// `stop` turning true ends the long-lived streams, which the server's graceful
    /// shutdown would otherwise wait for as long as the other members keep them open.
    pub fn new(
        raft: Raft,
        proposer: Proposer,
        lessor: Lessor,
        stop: watch::Receiver<bool>,
    ) -> Self {
        PeerService {
            raft,
            proposer,
            lessor,
            stop,
        }
    }

    /// Resolves once this member is stopping.
    fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }
}

fn bad_message(error: postcard::Error) -> Status {
    Status::invalid_argument(format!("cairn: undecodable raft message: {error}"))
}

fn encode_reply<T: serde::Serialize>(value: &T) -> Result<RaftMessage, Status> {
    encode(value).map_err(|e| Status::internal(format!("cairn: cannot encode raft reply: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    encode_reply(value).map(Response::new)
}

/// The answers to one append-entries stream, in the order of its requests.
type Appended = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

/// The answers to one stream of forwarded batches, in the order of the batches.
type Proposed = Pin<Box<dyn Stream<Item = Result<ProposeResponse, Status>> + Send>>;

/// Replicates the writes a follower forwarded together and answers each, in order.
async fn propose_batch(proposer: &Proposer, batch: RaftBatch) -> Result<ProposeResponse, Status> {
    let answers = proposer.propose_all(batch.requests).await;
    let mut applied = Vec::with_capacity(answers.len());
    for answer in answers {
        let answer = answer.unwrap_or_else(|error| {
            // The leader changed while the write was on its way: the forwarding member
            // answers as etcd does and the client retries.
            let status = crate::api::errors::from_write_error(error);
            Applied::Rejected {
                code: status.code() as i32,
                message: status.message().to_owned(),
            }
        });
        applied.push(
            postcard::to_allocvec(&answer)
                .map_err(|e| Status::internal(format!("cairn: cannot encode the answer: {e}")))?,
        );
    }
    Ok(ProposeResponse { applied })
}

#[tonic::async_trait]
impl Peer for PeerService {
    type AppendEntriesStream = Appended;

    /// Answers each request of the leader's stream before it reads the next, inside the
    /// stream's own task: no task, channel or HTTP/2 stream per request.
    async fn append_entries(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Appended>, Status> {
        let raft = self.raft.clone();
        let answers = request
            .into_inner()
            .take_until(self.stopping())
            .then(move |message| {
                let raft = raft.clone();
                async move {
                    let rpc: AppendEntriesRequest<TypeConfig> =
                        decode(&message?).map_err(bad_message)?;
                    encode_reply(&raft.append_entries(rpc).await)
                }
            });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<MemberId> = decode(request.get_ref()).map_err(bad_message)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode(request.get_ref()).map_err(bad_message)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    type ProposeStream = Proposed;

    /// Replicates the batches of a follower's stream as they come, several at once, and
    /// answers them in their order.
    async fn propose(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<Proposed>, Status> {
        let proposer = self.proposer.clone();
        let answers = request
            .into_inner()
            .take_until(self.stopping())
            .map(move |batch| {
                let proposer = proposer.clone();
                async move { propose_batch(&proposer, batch?).await }
            })
            .buffered(super::forwarder::IN_FLIGHT);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        match super::read_index(&self.raft).await {
            Ok(index) => Ok(Response::new(ReadIndexResponse { index })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(crate::api::errors::no_leader())
            }
            Err(error) => Err(crate::api::errors::from_read_error(error)),
        }
    }

    async fn change_membership(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let change: MembershipChange = decode(request.get_ref()).map_err(bad_message)?;
        let outcome: ChangeOutcome = membership::apply_change(&self.raft, change)
            .await
            .map_err(|status| (status.code() as i32, status.message().to_owned()));
        reply(&outcome)
    }

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let deadline = std::time::Duration::from_millis(request.get_ref().deadline_ms);
        let elected = membership::campaign(&self.raft, deadline).await;
        Ok(Response::new(CampaignResponse { elected }))
    }

    async fn lease_renew(
        &self,
        request: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewResponse>, Status> {
        let ttl = self.lessor.renew(request.get_ref().id).await?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let answer = self.lessor.answer_time_to_live(request.get_ref()).await?;
        Ok(Response::new(answer))
    }
}
