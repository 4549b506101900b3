//! etcd's concurrency recipes (clientv3's `concurrency` package), run inside the server for
//! the Lock and Election services, as etcd's v3lock and v3election servers run them over an
//! in-process client: the same keys, transactions and waits, so that servers and clients
//! that use the recipes directly (`etcdctl lock`, `etcdctl elect`) interoperate.
//!
//! Waiting for a key's deletion uses the member's watch hub, as clientv3 uses a watch.

use prost::Message;
use tonic::Status;

use super::{errors, lease, txn_check, SharedNode};
use crate::proto::cairnpb::{raft_request, raft_response};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::Event;
use crate::store::KvError;
use crate::watch::{Created, Output, WatchHub};

/// The TTL of the lease a session grants when the request names none (clientv3's
/// `defaultSessionTTL`).
const DEFAULT_SESSION_TTL: i64 = 60;

fn unexpected() -> Status {
    Status::internal("etcdserver: the state machine answered a different request")
}

/// What the Lock and Election services work with.
#[derive(Clone)]
pub(super) struct Recipes {
    pub node: SharedNode,
    hub: WatchHub,
    /// Turns true when the member shuts down: waits end then, so that the server's graceful
    /// shutdown does not wait for locks and elections.
    stop: tokio::sync::watch::Receiver<bool>,
}

/// etcd's Lock and Election servers return the errors of their in-process client, which are
/// not gRPC statuses, so gRPC sends every one of them as Unknown with its message.
pub(super) fn client_error(status: Status) -> Status {
    Status::unknown(status.message())
}

impl Recipes {
    pub fn new(node: SharedNode, hub: WatchHub, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Recipes { node, hub, stop }
    }

    /// The lease of a session (clientv3's `NewSession` with `WithLease`): the given one, or a
    /// new one when it is 0. etcd's servers stop the session's keepalives at once, so a
    /// lease granted here lives its TTL unless the client keeps it alive.
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = lease::grant(&self.node, DEFAULT_SESSION_TTL, 0).await?;
        Ok(granted.id)
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        self.node.check_quota(request.encoded_len()).await?;
        match self
            .node
            .propose(raft_request::Request::Txn(request))
            .await?
        {
            raft_response::Response::Txn(mut response) => {
                response.header = Some(self.complete(response.header));
                Ok(response)
            }
            _ => Err(unexpected()),
        }
    }

    /// clientv3's `Delete` of one key.
    pub async fn delete(&self, key: &[u8]) -> Result<DeleteRangeResponse, Status> {
        let request = DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        };
        txn_check::check_delete(&request)?;
        match self
            .node
            .propose(raft_request::Request::DeleteRange(request))
            .await?
        {
            raft_response::Response::DeleteRange(mut response) => {
                response.header = Some(self.complete(response.header));
                Ok(response)
            }
            _ => Err(unexpected()),
        }
    }

    /// A linearizable range, as clientv3's default `Get`.
    pub async fn get(&self, request: &RangeRequest) -> Result<RangeResponse, Status> {
        self.node.read_barrier().await?;
        let mut response = self.node.store.range(request)?;
        response.header = Some(self.complete(response.header));
        Ok(response)
    }

    pub fn complete(&self, header: Option<ResponseHeader>) -> ResponseHeader {
        self.node.header(header.map_or(0, |header| header.revision))
    }

    /// clientv3's `waitDeletes`: waits until no key under `prefix` created at or before
    /// `max_create_revision` is left, newest first, and returns the header of the last read.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: i64,
    ) -> Result<ResponseHeader, Status> {
        loop {
            let request = RangeRequest {
                max_create_revision,
                ..top(prefix, SortOrder::Descend)
            };
            let response = self.get(&request).await?;
            let header = response.header.unwrap_or_default();
            let Some(last) = response.kvs.into_iter().next() else {
                return Ok(header);
            };
            self.wait_delete(&last.key, header.revision).await?;
        }
    }

    /// clientv3's `waitDelete`: waits for a delete of `key` at or after `revision`.
    async fn wait_delete(&self, key: &[u8], revision: i64) -> Result<(), Status> {
        let mut watch = self.watch(key, &[], revision)?;
        loop {
            let events = watch.next().await?;
            if events
                .iter()
                .any(|event| event.r#type == EventType::Delete as i32)
            {
                return Ok(());
            }
        }
    }

    /// A watch of `[key, range_end)` from `start_revision` on this member.
    pub fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<Watch, Status> {
        let mut stream = self.hub.stream();
        let request = WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            start_revision,
            ..WatchCreateRequest::default()
        };
        match stream.create(&request) {
            Created::Watching { .. } => Ok(Watch {
                stream,
                stop: self.stop.clone(),
            }),
            Created::Refused { reason, .. } => Err(Status::unknown(reason)),
        }
    }
}

/// One watcher's events.
pub(super) struct Watch {
    stream: crate::watch::WatchStream,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Watch {
    /// The events of the next revisions that have some, and the header revision that came
    /// with them. A compacted start ends the watch with etcd's compacted error, a shutdown
    /// with "server stopped".
    pub async fn next_with_revision(&mut self) -> Result<(i64, Vec<Event>), Status> {
        loop {
            let output = tokio::select! {
                output = self.stream.next() => output?,
                _ = self.stop.wait_for(|stopped| *stopped) => return Err(errors::stopped()),
            };
            match output {
                Output::Events {
                    revision, events, ..
                } => return Ok((revision, events)),
                Output::Compacted { .. } => return Err(KvError::Compacted.into()),
                Output::Progress { .. } => {}
            }
        }
    }

    pub async fn next(&mut self) -> Result<Vec<Event>, Status> {
        self.next_with_revision().await.map(|(_, events)| events)
    }
}

/// The end of the range of every key starting with `prefix` (clientv3's `GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented, or "\0" (every key) if it has none.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key of a session's entry under `prefix`: the lease in hexadecimal, as Go's `%x`
/// prints an int64 (a minus sign, then the magnitude).
pub(super) fn session_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    [prefix, hex.as_bytes()].concat()
}

/// The key under `prefix` with the lowest (`Ascend`, clientv3's `WithFirstCreate`) or the
/// highest (`Descend`, `WithLastCreate`) create revision.
pub(super) fn top(prefix: &[u8], order: SortOrder) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        ..RangeRequest::default()
    }
}

/// A compare of `key`'s create revision.
pub(super) fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
    }
}

pub(super) fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..PutRequest::default()
        })),
    }
}

pub(super) fn get_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(request)),
    }
}

pub(super) fn delete_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.to_vec(),
                ..DeleteRangeRequest::default()
            },
        )),
    }
}

/// The range answer of a Txn's `index`th op.
pub(super) fn range_of(response: &TxnResponse, index: usize) -> Option<&RangeResponse> {
    match response.responses.get(index)?.response.as_ref()? {
        crate::proto::etcdserverpb::response_op::Response::ResponseRange(range) => Some(range),
        _ => None,
    }
}

/// A Txn to run if the request that would have run it goes away (the client canceled it),
/// as etcd's servers clean up with their client's background context.
pub(super) struct CleanupOnDrop {
    cleanup: Option<(Recipes, TxnRequest)>,
}

impl CleanupOnDrop {
    pub fn new(recipes: &Recipes, cleanup: TxnRequest) -> Self {
        CleanupOnDrop {
            cleanup: Some((recipes.clone(), cleanup)),
        }
    }

    /// Runs the cleanup now (the request failed) and waits for it.
    pub async fn run(mut self) {
        if let Some((recipes, cleanup)) = self.cleanup.take() {
            let _ = recipes.txn(cleanup).await;
        }
    }

    /// The request finished as it should: no cleanup.
    pub fn disarm(mut self) {
        self.cleanup = None;
    }
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if let Some((recipes, cleanup)) = self.cleanup.take() {
            tokio::spawn(async move {
                if let Err(status) = recipes.txn(cleanup).await {
                    tracing::warn!(%status, "cleaning up after a canceled lock or campaign failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"lock/"), b"lock0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn session_keys_print_the_lease_as_go_does() {
        assert_eq!(
            session_key(b"n/", 0x694d_7c3d_0a2b_0f05),
            b"n/694d7c3d0a2b0f05"
        );
        assert_eq!(session_key(b"n/", -0x1f), b"n/-1f");
        assert_eq!(session_key(b"n/", i64::MIN), b"n/-8000000000000000");
    }
}
