//! etcd's Lock service (v3lockpb): clientv3's `concurrency.Mutex`, run in the server.
//!
//! Each contender puts `name/<lease in hex>` with its lease, if it is not there yet; the
//! contender whose key has the lowest create revision holds the lock, the others wait for
//! every older key to be deleted (by Unlock or by its lease running out).

use tonic::{Request, Response, Status};

use super::recipes::{
    client_error, created_at, delete_op, get_op, put_op, range_of, session_key, top, CleanupOnDrop,
    Recipes,
};
use super::SharedNode;
use crate::proto::etcdserverpb::range_request::SortOrder;
use crate::proto::etcdserverpb::{RangeRequest, TxnRequest};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::watch::WatchHub;

/// clientv3's `concurrency.ErrSessionExpired`: the lock key vanished while waiting.
const SESSION_EXPIRED: &str = "session expired";

pub struct LockService {
    recipes: Recipes,
}

impl LockService {
    pub fn new(node: SharedNode, hub: WatchHub, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        LockService {
            recipes: Recipes::new(node, hub, stop),
        }
    }

    async fn acquire(&self, name: &[u8], lease: i64) -> Result<LockResponse, Status> {
        let recipes = &self.recipes;
        let lease = recipes.session_lease(lease).await?;
        let prefix = [name, b"/"].concat();
        let key = session_key(&prefix, lease);
        let owner = get_op(top(&prefix, SortOrder::Ascend));
        // Enter the queue, or find this session already in it; learn the holder either way.
        let response = recipes
            .txn(TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![put_op(&key, b"", lease), owner.clone()],
                failure: vec![
                    get_op(RangeRequest {
                        key: key.clone(),
                        ..RangeRequest::default()
                    }),
                    owner,
                ],
            })
            .await?;
        let header = response.header;
        let mut revision = header.as_ref().map_or(0, |header| header.revision);
        if !response.succeeded {
            revision = range_of(&response, 0)
                .and_then(|range| range.kvs.first())
                .map_or(revision, |kv| kv.create_revision);
        }
        let holder = range_of(&response, 1).and_then(|range| range.kvs.first());
        if holder.is_none_or(|holder| holder.create_revision == revision) {
            return Ok(LockResponse { header, key });
        }

        // Leaves the queue if the wait fails or the client goes away, as etcd's Lock does.
        let leave = CleanupOnDrop::new(
            recipes,
            TxnRequest {
                success: vec![delete_op(&key)],
                ..TxnRequest::default()
            },
        );
        let held = async {
            recipes.wait_deletes(&prefix, revision - 1).await?;
            // The lease may have run out while waiting.
            recipes
                .get(&RangeRequest {
                    key: key.clone(),
                    ..RangeRequest::default()
                })
                .await
        };
        match held.await {
            Ok(mine) if mine.kvs.is_empty() => {
                leave.disarm();
                Err(Status::unknown(SESSION_EXPIRED))
            }
            Ok(mine) => {
                leave.disarm();
                Ok(LockResponse {
                    header: mine.header,
                    key,
                })
            }
            Err(status) => {
                leave.run().await;
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let request = request.into_inner();
        self.acquire(&request.name, request.lease)
            .await
            .map(Response::new)
            .map_err(client_error)
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = request.into_inner().key;
        let response = self.recipes.delete(&key).await.map_err(client_error)?;
        Ok(Response::new(UnlockResponse {
            header: response.header,
        }))
    }
}
