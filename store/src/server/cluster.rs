//! The etcd `Cluster` service: the member list comes from the Raft membership (who votes, who
//! learns, their peer URLs) and the attributes members publish once they run (name, client
//! URLs). Membership changes are made by the leader; a follower hands them to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{Leader, Node};
use crate::config;
use crate::error::EtcdError;
use crate::pb::etcdserverpb::cluster_client::ClusterClient;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::raft::Member as RaftMember;

/// How long a membership change may take to be appended before the client is answered.
const CHANGE_VISIBLE_WITHIN: Duration = Duration::from_secs(5);

pub struct ClusterService {
    pub node: Arc<Node>,
}

fn change_error(e: RaftError<u64, ClientWriteError<u64, RaftMember>>) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => EtcdError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            EtcdError::Internal(e.to_string())
        }
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}

impl ClusterService {
    /// Every member, as etcd lists them.
    pub fn members(&self) -> Vec<Member> {
        let attrs = self.node.kv.member_attributes();
        let m = self.node.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let a = attrs.get(id);
                Member {
                    id: *id,
                    // etcd leaves the name empty until the member has started.
                    name: a.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: a.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    fn header(&self) -> Option<crate::pb::etcdserverpb::ResponseHeader> {
        Some(self.node.header(self.node.kv.revision()))
    }

    /// A client for the leader's etcd API, when this member does not lead.
    fn leader(&self) -> Result<Option<ClusterClient<Channel>>, EtcdError> {
        match self.node.leader() {
            Leader::Me => Ok(None),
            Leader::None => Err(EtcdError::NoLeader),
            Leader::Other(_) => {
                let leader_id = self
                    .node
                    .raft
                    .metrics()
                    .borrow()
                    .current_leader
                    .ok_or(EtcdError::NoLeader)?;
                let attrs = self.node.kv.member_attributes();
                let url = attrs
                    .get(&leader_id)
                    .and_then(|a| a.client_urls.first())
                    .ok_or(EtcdError::NoLeader)?;
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| EtcdError::Internal(e.to_string()))?
                    .connect_lazy();
                Ok(Some(ClusterClient::new(channel)))
            }
        }
    }

    /// Waits until the membership this member sees satisfies `done`.
    async fn wait_membership(&self, done: impl Fn(&BTreeSet<u64>, &BTreeSet<u64>) -> bool) {
        let mut rx = self.node.raft.metrics();
        let _ = tokio::time::timeout(CHANGE_VISIBLE_WITHIN, async {
            loop {
                {
                    let m = rx.borrow();
                    let membership = m.membership_config.membership();
                    let voters: BTreeSet<u64> = membership.voter_ids().collect();
                    let nodes: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
                    if done(&voters, &nodes) {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Waits (a while at most) until no membership change is under way: the latest
    /// configuration is not a joint one and is applied. etcd answers a change once it is
    /// applied, so a client may start the next one at once (`member remove` then `member add`);
    /// openraft refuses a change while the previous one is not committed yet.
    async fn wait_settled(&self) {
        let mut rx = self.node.raft.metrics();
        let _ = tokio::time::timeout(CHANGE_VISIBLE_WITHIN, async {
            loop {
                {
                    let m = rx.borrow();
                    let stored = &m.membership_config;
                    if stored.membership().get_joint_config().len() == 1
                        && m.last_applied >= *stored.log_id()
                    {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Runs a membership change to completion in the background (openraft drives its two
    /// steps from the caller; a dropped call would leave the joint configuration behind).
    fn change_in_background(&self, change: ChangeMembers<u64, RaftMember>) {
        let raft = self.node.raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.change_membership(change, false).await {
                tracing::warn!(error = %e, "membership change failed");
            }
        });
    }

    fn existing(&self) -> (BTreeMap<u64, RaftMember>, BTreeSet<u64>) {
        let m = self.node.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        (
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            membership.voter_ids().collect(),
        )
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        if let Some(mut leader) = self.leader()? {
            return leader.member_add(req).await;
        }
        self.wait_settled().await;
        let urls = config::parse_urls("peerURLs", &req.peer_ur_ls.join(","))
            .map_err(|_| EtcdError::MemberBadUrls)?;
        let (nodes, _) = self.existing();
        if nodes
            .values()
            .any(|n| n.peer_urls.iter().any(|u| urls.contains(u)))
        {
            return Err(EtcdError::PeerUrlExist.into());
        }
        // As etcd: the ID mixes the URLs, the cluster token and the time of the change.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = config::member_id(&urls, &format!("{}{now}", self.node.token));
        let node = RaftMember {
            name: String::new(),
            peer_urls: urls.clone(),
        };
        self.node
            .raft
            .add_learner(id, node, false)
            .await
            .map_err(change_error)?;
        if !req.is_learner {
            self.change_in_background(ChangeMembers::AddVoterIds(BTreeSet::from([id])));
            self.wait_membership(|voters, _| voters.contains(&id)).await;
        }
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: urls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let req = request.into_inner();
        if let Some(mut leader) = self.leader()? {
            return leader.member_remove(req).await;
        }
        self.wait_settled().await;
        let (nodes, voters) = self.existing();
        if !nodes.contains_key(&req.id) {
            return Err(EtcdError::MemberNotFound.into());
        }
        let id = req.id;
        if voters.contains(&id) {
            self.change_in_background(ChangeMembers::RemoveVoters(BTreeSet::from([id])));
        } else {
            self.change_in_background(ChangeMembers::RemoveNodes(BTreeSet::from([id])));
        }
        self.wait_membership(|_, nodes| !nodes.contains(&id)).await;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        if let Some(mut leader) = self.leader()? {
            return leader.member_update(req).await;
        }
        self.wait_settled().await;
        let urls = config::parse_urls("peerURLs", &req.peer_ur_ls.join(","))
            .map_err(|_| EtcdError::MemberBadUrls)?;
        let (nodes, _) = self.existing();
        let Some(current) = nodes.get(&req.id) else {
            return Err(EtcdError::MemberNotFound.into());
        };
        if nodes
            .iter()
            .any(|(id, n)| *id != req.id && n.peer_urls.iter().any(|u| urls.contains(u)))
        {
            return Err(EtcdError::PeerUrlExist.into());
        }
        let updated = RaftMember {
            name: current.name.clone(),
            peer_urls: urls.clone(),
        };
        self.node
            .raft
            .change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(req.id, updated)])),
                true,
            )
            .await
            .map_err(change_error)?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.linearize().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let req = request.into_inner();
        if let Some(mut leader) = self.leader()? {
            return leader.member_promote(req).await;
        }
        self.wait_settled().await;
        let (nodes, voters) = self.existing();
        if !nodes.contains_key(&req.id) {
            return Err(EtcdError::MemberNotFound.into());
        }
        if voters.contains(&req.id) {
            return Err(EtcdError::MemberNotLearner.into());
        }
        let id = req.id;
        self.change_in_background(ChangeMembers::AddVoterIds(BTreeSet::from([id])));
        self.wait_membership(|voters, _| voters.contains(&id)).await;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}
