//! The member-to-member service (`storepb.Peer`) on the peer URLs: Raft RPCs into openraft,
//! and the requests followers hand to the leader (writes, read points, lease keep-alives).

use std::sync::Arc;

use prost::Message;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::proposer::ProposeError;
use super::{Leader, LeaderRead, Node, lease};
use crate::error::EtcdError;
use crate::pb::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::pb::storepb::MembersReply;
use crate::pb::storepb::peer_server::Peer;
use crate::pb::storepb::{
    ApplyError, ApplyResult, Empty, Proposal, ProposalResult, RaftMessage, ReadIndexReply,
    apply_result,
};
use crate::raft::network::{REMOVED_MESSAGE, decode_append, decode_snapshot};

pub struct PeerService {
    pub node: Arc<Node>,
}

fn reply<T: Serialize, E: Serialize>(r: Result<T, E>) -> Result<Response<RaftMessage>, Status> {
    let msg = match r {
        Ok(v) => RaftMessage {
            json: serde_json::to_vec(&v).map_err(|e| Status::internal(e.to_string()))?,
            ..RaftMessage::default()
        },
        Err(e) => RaftMessage {
            error_json: serde_json::to_vec(&e).map_err(|e| Status::internal(e.to_string()))?,
            ..RaftMessage::default()
        },
    };
    Ok(Response::new(msg))
}

impl PeerService {
    fn ensure_leader(&self) -> Result<(), Status> {
        match self.node.leader() {
            Leader::Me => Ok(()),
            _ => Err(EtcdError::NotLeader.into()),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_append(request.into_inner()).map_err(Status::invalid_argument)?;
        reply(self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: openraft::raft::VoteRequest<u64> =
            serde_json::from_slice(&request.into_inner().json)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A candidate missing from a committed membership that it has not even seen was
        // removed: tell it, rather than leave it campaigning forever.
        let committed = self.node.kv.applied().membership;
        let candidate = rpc.vote.leader_id.node_id;
        let known = committed.membership().get_node(&candidate).is_some();
        let seen = rpc.last_log_id.map_or(0, |l| l.index);
        if let Some(at) = *committed.log_id()
            && !known
            && seen < at.index
        {
            return Err(Status::failed_precondition(REMOVED_MESSAGE));
        }
        reply(self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_snapshot(request.into_inner()).map_err(Status::invalid_argument)?;
        reply(self.node.raft.install_snapshot(rpc).await)
    }

    async fn propose(
        &self,
        request: Request<Proposal>,
    ) -> Result<Response<ProposalResult>, Status> {
        let reqs = request.into_inner().requests;
        if reqs
            .iter()
            .any(|r| r.encoded_len() > self.node.limits.max_request_bytes)
        {
            return Err(EtcdError::RequestTooLarge.into());
        }
        let n = reqs.len();
        let results = match self.node.proposer.propose_all(reqs).await {
            Ok(results) => results,
            Err(ProposeError::ForwardToLeader(_)) => return Err(EtcdError::NotLeader.into()),
            Err(ProposeError::Other(e)) => {
                let failed = ApplyResult {
                    result: Some(apply_result::Result::Error(ApplyError {
                        code: tonic::Code::Internal as i32,
                        message: e,
                    })),
                };
                vec![failed; n]
            }
            Err(ProposeError::Stopped) => return Err(EtcdError::Stopped.into()),
        };
        Ok(Response::new(ProposalResult { results }))
    }

    async fn read_index(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        match self.node.leader_read_index().await {
            Ok(index) => Ok(Response::new(ReadIndexReply { index })),
            Err(LeaderRead::NotLeader) => Err(EtcdError::NotLeader.into()),
            Err(LeaderRead::Failed(e)) => Err(e.into()),
        }
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.ensure_leader()?;
        Ok(Response::new(lease::local_keep_alive(
            &self.node,
            request.into_inner().id,
        )))
    }

    async fn members(&self, _request: Request<Empty>) -> Result<Response<MembersReply>, Status> {
        let nodes: std::collections::BTreeMap<u64, crate::raft::Member> = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect()
        };
        Ok(Response::new(MembersReply {
            cluster_id: self.node.cluster_id,
            members_json: serde_json::to_vec(&nodes)
                .map_err(|e| Status::internal(e.to_string()))?,
        }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.ensure_leader()?;
        Ok(Response::new(lease::local_time_to_live(
            &self.node,
            &request.into_inner(),
        )))
    }
}
