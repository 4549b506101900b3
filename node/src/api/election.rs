//! etcd's Election service (v3electionpb): clientv3's `concurrency.Election`, run in the
//! server.
//!
//! A candidate puts `name/<lease in hex>` with its value and lease; the candidate whose key
//! has the lowest create revision leads, the others wait for every older key to be deleted.
//! Proclaim and Resign act on the leader key only while it is the one that was created at
//! the leader's revision.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::recipes::{
    client_error, created_at, delete_op, get_op, prefix_end, put_op, range_of, session_key, top,
    CleanupOnDrop, Recipes,
};
use super::SharedNode;
use crate::proto::etcdserverpb::range_request::SortOrder;
use crate::proto::etcdserverpb::{RangeRequest, ResponseHeader, TxnRequest};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::watch::WatchHub;

/// etcd's errors for these requests (plain errors there, so gRPC sends them as Unknown).
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";

/// Leader changes waiting to be sent on one Observe stream.
const OBSERVE_QUEUE: usize = 16;

pub struct ElectionService {
    recipes: Recipes,
}

impl ElectionService {
    pub fn new(node: SharedNode, hub: WatchHub, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        ElectionService {
            recipes: Recipes::new(node, hub, stop),
        }
    }
}

/// The Txn that gives up the leader key created at `revision`.
fn resignation(key: &[u8], revision: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![created_at(key, revision)],
        success: vec![delete_op(key)],
        failure: Vec::new(),
    }
}

impl Recipes {
    async fn campaign(&self, request: CampaignRequest) -> Result<CampaignResponse, Status> {
        let lease = self.session_lease(request.lease).await?;
        let prefix = [request.name.as_slice(), b"/"].concat();
        let key = session_key(&prefix, lease);
        let response = self
            .txn(TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![put_op(&key, &request.value, lease)],
                failure: vec![get_op(RangeRequest {
                    key: key.clone(),
                    ..RangeRequest::default()
                })],
            })
            .await?;
        let header = response.header;
        let mut revision = header.as_ref().map_or(0, |header| header.revision);
        if !response.succeeded {
            // This session campaigned before: keep its place, update its value.
            if let Some(existing) = range_of(&response, 0).and_then(|range| range.kvs.first()) {
                revision = existing.create_revision;
                if existing.value != request.value {
                    if let Err(status) = self.proclaim(&key, revision, lease, &request.value).await
                    {
                        let _ = self.txn(resignation(&key, revision)).await;
                        return Err(status);
                    }
                }
            }
        }

        // A client that goes away while waiting resigns, as etcd's Campaign does; a wait that
        // fails otherwise leaves the key for the lease to clean up, as there.
        let resign = CleanupOnDrop::new(self, resignation(&key, revision));
        let waited = self.wait_deletes(&prefix, revision - 1).await;
        resign.disarm();
        waited?;
        Ok(CampaignResponse {
            header,
            leader: Some(LeaderKey {
                name: request.name,
                key,
                rev: revision,
                lease,
            }),
        })
    }

    /// Puts the leader's new value if `key` is still the one created at `revision`.
    async fn proclaim(
        &self,
        key: &[u8],
        revision: i64,
        lease: i64,
        value: &[u8],
    ) -> Result<Option<ResponseHeader>, Status> {
        let response = self
            .txn(TxnRequest {
                compare: vec![created_at(key, revision)],
                success: vec![put_op(key, value, lease)],
                failure: Vec::new(),
            })
            .await?;
        if !response.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(response.header)
    }

    /// The leader's key-value (the oldest key under the election's prefix).
    async fn leader(&self, name: &[u8]) -> Result<LeaderResponse, Status> {
        let prefix = [name, b"/"].concat();
        let response = self.get(&top(&prefix, SortOrder::Ascend)).await?;
        match response.kvs.into_iter().next() {
            Some(kv) => Ok(LeaderResponse {
                header: response.header,
                kv: Some(kv),
            }),
            None => Err(Status::unknown(NO_LEADER)),
        }
    }

    /// clientv3's `Election.Observe`: the leader now (or the first one to come), each value
    /// it proclaims, then the next leader once its key is deleted, and so on.
    async fn observe(
        &self,
        name: &[u8],
        out: &mpsc::Sender<Result<LeaderResponse, Status>>,
    ) -> Result<(), Status> {
        let prefix = [name, b"/"].concat();
        let send = |header: ResponseHeader, kv: KeyValue| async move {
            let response = LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            };
            out.send(Ok(response))
                .await
                .map_err(|_| Status::cancelled("the observer went away"))
        };
        loop {
            let current = self.get(&top(&prefix, SortOrder::Ascend)).await?;
            let read_at = current.header.as_ref().map_or(0, |header| header.revision);
            let (header, leader) = match current.kvs.into_iter().next() {
                Some(kv) => (current.header.unwrap_or_default(), kv),
                None => self.first_candidate(&prefix, read_at).await?,
            };
            let key = leader.key.clone();
            let from = header.revision + 1;
            send(header, leader).await?;

            let mut watch = self.watch(&key, &[], from)?;
            'leading: loop {
                let (revision, events) = watch.next_with_revision().await?;
                for event in events {
                    if event.r#type == EventType::Delete as i32 {
                        break 'leading;
                    }
                    let header = self.complete(Some(ResponseHeader {
                        revision,
                        ..ResponseHeader::default()
                    }));
                    send(header, event.kv.unwrap_or_default()).await?;
                }
            }
        }
    }

    /// Waits for the first put under `prefix` after `revision`; the header carries the put's
    /// revision (a watch response may span several).
    async fn first_candidate(
        &self,
        prefix: &[u8],
        revision: i64,
    ) -> Result<(ResponseHeader, KeyValue), Status> {
        let mut watch = self.watch(prefix, &prefix_end(prefix), revision)?;
        loop {
            let events = watch.next().await?;
            let put = events
                .into_iter()
                .find(|event| event.r#type == EventType::Put as i32);
            if let Some(kv) = put.and_then(|event| event.kv) {
                let header = self.complete(Some(ResponseHeader {
                    revision: kv.mod_revision,
                    ..ResponseHeader::default()
                }));
                return Ok((header, kv));
            }
        }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.recipes
            .campaign(request.into_inner())
            .await
            .map(Response::new)
            .map_err(client_error)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = request
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let proclaimed = async {
            let lease = self.recipes.session_lease(leader.lease).await?;
            self.recipes
                .proclaim(&leader.key, leader.rev, lease, &request.value)
                .await
        };
        let header = proclaimed.await.map_err(client_error)?;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.recipes
            .leader(&request.into_inner().name)
            .await
            .map(Response::new)
            .map_err(client_error)
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        let recipes = self.recipes.clone();
        let (out, stream) = mpsc::channel(OBSERVE_QUEUE);
        tokio::spawn(async move {
            tokio::select! {
                // etcd ends the stream without an error when observing fails.
                ended = recipes.observe(&name, &out) => {
                    if let Err(status) = ended {
                        tracing::debug!(%status, "election observer ended");
                    }
                }
                () = out.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let resigned = async {
            // etcd's server opens a session here too, granting a lease when given none.
            self.recipes.session_lease(leader.lease).await?;
            self.recipes.txn(resignation(&leader.key, leader.rev)).await
        };
        let response = resigned.await.map_err(client_error)?;
        Ok(Response::new(ResignResponse {
            header: response.header,
        }))
    }
}
