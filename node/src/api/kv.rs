//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use prost::Message;
use tonic::{Request, Response, Status};

use super::{txn_check, SharedNode};
use crate::proto::cairnpb::{raft_request, raft_response};
use crate::proto::etcdserverpb::{
    kv_server::Kv, request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};

pub struct KvService {
    node: SharedNode,
}

impl KvService {
    pub fn new(node: SharedNode) -> Self {
        KvService { node }
    }

    /// Fills in the header fields the store does not know, keeping its revision.
    fn complete(&self, header: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = header.map_or(0, |header| header.revision);
        Some(self.node.header(revision))
    }
}

fn has_put(ops: &[RequestOp]) -> bool {
    ops.iter().any(|op| match &op.request {
        Some(request_op::Request::RequestPut(_)) => true,
        Some(request_op::Request::RequestTxn(txn)) => {
            has_put(&txn.success) || has_put(&txn.failure)
        }
        _ => false,
    })
}

fn unexpected() -> Status {
    Status::internal("etcdserver: the state machine answered a different request")
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        txn_check::check_range(&request)?;
        if !request.serializable {
            self.node.read_barrier().await?;
        }
        let mut response = self.node.store.range(&request)?;
        response.header = self.complete(response.header);
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        txn_check::check_put(&request)?;
        self.node.check_quota(request.encoded_len()).await?;
        match self
            .node
            .propose(raft_request::Request::Put(request))
            .await?
        {
            raft_response::Response::Put(mut response) => {
                response.header = self.complete(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        txn_check::check_delete(&request)?;
        match self
            .node
            .propose(raft_request::Request::DeleteRange(request))
            .await?
        {
            raft_response::Response::DeleteRange(mut response) => {
                response.header = self.complete(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let request = request.into_inner();
        txn_check::check_txn(&request, self.node.limits.max_txn_ops)?;
        if has_put(&request.success) || has_put(&request.failure) {
            self.node.check_quota(request.encoded_len()).await?;
        }
        match self
            .node
            .propose(raft_request::Request::Txn(request))
            .await?
        {
            raft_response::Response::Txn(mut response) => {
                response.header = self.complete(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected()),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let request = request.into_inner();
        match self
            .node
            .propose(raft_request::Request::Compaction(request))
            .await?
        {
            raft_response::Response::Compaction(mut response) => {
                response.header = self.complete(response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected()),
        }
    }
}
