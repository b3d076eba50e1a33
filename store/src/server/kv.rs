//! The etcd `KV` service: Range is served locally (after a linearizability check unless the
//! client asked for a serializable read); Put, DeleteRange, Txn and Compact go through Raft.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Node;
use crate::error::EtcdError;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::pb::storepb::{InternalRequest, apply_result, internal_request};
use crate::validate;

pub struct KvService {
    pub node: Arc<Node>,
}

fn unexpected(what: &str) -> Status {
    EtcdError::Internal(format!("unexpected apply result for {what}")).into()
}

impl KvService {
    async fn write(&self, r: internal_request::Request) -> Result<apply_result::Result, Status> {
        Ok(self
            .node
            .propose(InternalRequest { request: Some(r) })
            .await?)
    }

    /// Serves a transaction that writes nothing without Raft, like etcd; compares and reads
    /// see one consistent state.
    async fn read_only_txn(&self, t: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.node.blocking(move |kv| kv.read_txn(&t)).await
    }
}

/// etcd's `isTxnSerializable`: every operation is a serializable range.
fn txn_serializable(t: &TxnRequest) -> bool {
    use crate::pb::etcdserverpb::request_op::Request as R;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(&op.request, Some(R::RequestRange(r)) if r.serializable))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_range(&req)?;
        if !req.serializable {
            self.node.linearize().await?;
        }
        // A get reads a record or two: no need to leave this thread for it.
        let mut resp = match self.node.kv.small_range(&req)? {
            Some(r) => r,
            None => self.node.blocking(move |kv| kv.range(&req)).await?,
        };
        self.node.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate::check_put(&req)?;
        match self.write(internal_request::Request::Put(req)).await? {
            apply_result::Result::Put(mut r) => {
                self.node.fill(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_delete(&req)?;
        match self
            .write(internal_request::Request::DeleteRange(req))
            .await?
        {
            apply_result::Result::DeleteRange(mut r) => {
                self.node.fill(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected("delete range")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate::check_txn(&req, self.node.limits.max_txn_ops)?;
        let mut resp = if validate::txn_is_read_only(&req) {
            if !txn_serializable(&req) {
                self.node.linearize().await?;
            }
            self.read_only_txn(req).await?
        } else {
            match self.write(internal_request::Request::Txn(req)).await? {
                apply_result::Result::Txn(r) => r,
                _ => return Err(unexpected("txn")),
            }
        };
        self.node.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        match self
            .write(internal_request::Request::Compaction(req))
            .await?
        {
            apply_result::Result::Compaction(mut r) => {
                self.node.fill(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected("compaction")),
        }
    }
}
