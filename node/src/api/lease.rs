//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases.
//!
//! Grants and revokes are Raft writes. Keepalives and TimeToLive need lease deadlines, which
//! only the leader's lessor keeps: a follower forwards them to the leader (etcd forwards them
//! over its peer HTTP API), and retries while a new leader's lessor gets ready.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{errors, Node, Route, SharedNode};
use crate::lease::LeaseError;
use crate::proto::cairnpb::{raft_request, raft_response, LeaseRenewRequest};
use crate::proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    ResponseHeader,
};
use crate::store::KvError;

/// Grants with a generated ID that are tried again when the ID is taken (by a client that
/// chose it) before the collision is reported.
const GRANT_ATTEMPTS: usize = 3;

/// Pause between two attempts to reach a ready lessor primary (etcd waits 50 ms).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Keepalive answers waiting to be sent on one stream.
const KEEPALIVE_QUEUE: usize = 16;

pub struct LeaseService {
    node: SharedNode,
    /// Turns true when the member shuts down: keepalive streams end then, so that the
    /// server's graceful shutdown does not wait for clients to close them.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl LeaseService {
    pub fn new(node: SharedNode, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        LeaseService { node, stop }
    }

    /// Fills in the header fields the store does not know, keeping its revision.
    fn complete(&self, header: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = header.map_or(0, |header| header.revision);
        Some(self.node.header(revision))
    }
}

fn unexpected() -> Status {
    Status::internal("etcdserver: the state machine answered a different request")
}

/// What a request asks of the lessor primary.
enum Ask {
    Renew(i64),
    TimeToLive(LeaseTimeToLiveRequest),
}

enum Answer {
    Renewed(i64),
    TimeToLive(LeaseTimeToLiveResponse),
}

/// Asks the lessor primary, here or on the leader; `None` if the lease does not exist.
async fn ask_primary(node: &Node, ask: &Ask) -> Result<Option<Answer>, Status> {
    let deadline = Instant::now() + super::request_timeout(node.election_timeout);
    loop {
        let outcome = match node.route().await? {
            Route::Here => match ask {
                Ask::Renew(id) => node.lessor.renew(*id).await.map(Answer::Renewed),
                Ask::TimeToLive(request) => node
                    .lessor
                    .answer_time_to_live(request)
                    .await
                    .map(Answer::TimeToLive),
            }
            .map_err(Some),
            Route::Leader(_, leader) => {
                let mut client = node
                    .peers
                    .client(&leader)
                    .map_err(|_| errors::no_leader())?;
                let timeout = deadline.saturating_duration_since(Instant::now());
                let reply = match ask {
                    Ask::Renew(id) => {
                        let mut request = Request::new(LeaseRenewRequest { id: *id });
                        request.set_timeout(timeout);
                        client
                            .lease_renew(request)
                            .await
                            .map(|reply| Answer::Renewed(reply.into_inner().ttl))
                    }
                    Ask::TimeToLive(request) => {
                        let mut request = Request::new(*request);
                        request.set_timeout(timeout);
                        client
                            .lease_time_to_live(request)
                            .await
                            .map(|reply| Answer::TimeToLive(reply.into_inner()))
                    }
                };
                reply.map_err(|status| LeaseError::from_primary(&status))
            }
        };
        match outcome {
            Ok(answer) => return Ok(Some(answer)),
            Err(Some(LeaseError::NotFound)) => return Ok(None),
            // Not the primary yet (a new leader catching up) or the leader changed: again.
            Err(Some(LeaseError::NotPrimary) | None) => {}
        }
        if Instant::now() >= deadline {
            return Err(errors::timeout());
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// One keepalive: the lease's TTL, or 0 if it does not exist (etcd's answer then).
async fn keep_alive(
    node: &Node,
    request: LeaseKeepAliveRequest,
) -> Result<LeaseKeepAliveResponse, Status> {
    // The header is taken before the renewal, as etcd does, so that its revision is never
    // newer than the renewal: a client cannot see a keepalive succeed at a revision after
    // the one that revoked the lease.
    let header = node.header(node.store.current_revision());
    let ttl = match ask_primary(node, &Ask::Renew(request.id)).await? {
        Some(Answer::Renewed(ttl)) => ttl,
        None => 0,
        Some(Answer::TimeToLive(_)) => return Err(unexpected()),
    };
    Ok(LeaseKeepAliveResponse {
        header: Some(header),
        id: request.id,
        ttl,
    })
}

/// Grants a lease as etcd's server does: an ID of 0 gets one chosen here, the TTL is raised
/// to the lessor's minimum. Used by LeaseGrant and by the Lock and Election sessions.
pub(super) async fn grant(node: &Node, ttl: i64, id: i64) -> Result<LeaseGrantResponse, Status> {
    // Raised to the minimum here rather than when applied: members may be configured with
    // different election timeouts, and applying must decide the same everywhere.
    let ttl = ttl.max(node.lessor.min_ttl());
    let mut attempts = 0;
    loop {
        attempts += 1;
        let chosen = match id {
            0 => node.lessor.next_id(),
            id => id,
        };
        let request = LeaseGrantRequest { ttl, id: chosen };
        match node
            .propose(raft_request::Request::LeaseGrant(request))
            .await
        {
            Ok(raft_response::Response::LeaseGrant(mut response)) => {
                let revision = response.header.map_or(0, |header| header.revision);
                response.header = Some(node.header(revision));
                return Ok(response);
            }
            Ok(_) => return Err(unexpected()),
            Err(status)
                if id == 0
                    && attempts < GRANT_ATTEMPTS
                    && status.message() == KvError::LeaseExists.to_string() => {}
            Err(status) => return Err(status),
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        self.node.check_quota(request.encoded_len()).await?;
        grant(&self.node, request.ttl, request.id)
            .await
            .map(Response::new)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        match self
            .node
            .propose(raft_request::Request::LeaseRevoke(request.into_inner()))
            .await?
        {
            raft_response::Response::LeaseRevoke(mut response) => {
                response.header = self.complete(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut leader_lost =
            super::leader::requires_leader(&request).then(|| self.node.leader_lost.clone());
        let mut incoming = request.into_inner();
        let node = self.node.clone();
        let mut stop = self.stop.clone();
        let (answers, outgoing) = tokio::sync::mpsc::channel(KEEPALIVE_QUEUE);
        let serving = answers.clone();
        // Requests of one stream are answered in order, one at a time, as etcd does.
        let serve = async move {
            while let Ok(Some(request)) = incoming.message().await {
                let answer = keep_alive(&node, request).await;
                let failed = answer.is_err();
                if serving.send(answer).await.is_err() || failed {
                    return;
                }
            }
        };
        let stopped = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        tokio::spawn(async move {
            tokio::select! {
                () = serve => {}
                () = stopped => {
                    let _ = answers.send(Err(errors::stopped())).await;
                }
                () = super::leader::leader_lost(&mut leader_lost) => {
                    let _ = answers.send(Err(errors::no_leader())).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outgoing))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let id = request.id;
        let mut response = match ask_primary(&self.node, &Ask::TimeToLive(request)).await? {
            Some(Answer::TimeToLive(response)) => response,
            // etcd answers an unknown lease with TTL -1 rather than an error.
            None => LeaseTimeToLiveResponse {
                id,
                ttl: -1,
                ..LeaseTimeToLiveResponse::default()
            },
            Some(Answer::Renewed(_)) => return Err(unexpected()),
        };
        response.header = Some(self.node.header(self.node.store.current_revision()));
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        // etcd lists its local lessor; reading after a barrier also shows grants made
        // through other members a moment ago.
        self.node.read_barrier().await?;
        let leases = self
            .node
            .store
            .leases()
            .into_iter()
            .map(|lease| LeaseStatus { id: lease.id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(self.node.store.current_revision())),
            leases,
        }))
    }
}
