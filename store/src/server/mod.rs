//! The gRPC servers: the etcd v3 services on the client URLs (one file per service) and the
//! member-to-member service on the peer URLs, all over one [`Node`].

pub mod authority;
pub mod cluster;
pub mod forward;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod oversize;
pub mod peer;
pub mod proposer;
pub mod reads;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::error::EtcdError;
use crate::kv::Kv;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::pb::storepb::peer_client::PeerClient;
use crate::pb::storepb::{ApplyResult, Empty, InternalRequest, apply_result};
use crate::raft::network::MAX_PEER_MESSAGE;
use crate::raft::{Member, Raft};
use proposer::ProposeError;

/// How long a proposal may take before the client gets etcd's timeout error.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(7);

/// Who this member is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub token: String,
}

/// Limits from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_backend_bytes: i64,
    pub watch_progress_interval: Duration,
    /// Smallest lease TTL granted, in seconds.
    pub min_lease_ttl: i64,
}

/// Where this member's Raft state stood when the process started, for [`Node::linearize`].
///
/// After a restart openraft resumes leading the term this member led before (if the other
/// members still follow it). Its read index is then the first entry of that term or the commit
/// index found on disk, whichever is later; but the commit index is written lazily (see
/// `raft::log_store`), so it may lag entries this member committed, applied and acknowledged
/// before it died, which a restarted member has not re-applied yet: a read would miss an
/// acknowledged write. Everything committed is in the log, so while leading the resumed term,
/// reads wait for the log as it was at the start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resumed {
    /// The term of the vote on disk.
    pub term: Option<u64>,
    /// The last log index on disk.
    pub last_log_index: u64,
}

impl Resumed {
    /// Reads it from the log store, before Raft takes the store over.
    pub async fn read(
        log: &mut crate::raft::log_store::LogStore,
    ) -> Result<Resumed, crate::raft::StorageError> {
        use openraft::storage::RaftLogStorage;
        let last = log.get_log_state().await?.last_log_id;
        let vote = log.read_vote().await?;
        Ok(Resumed {
            term: vote.map(|v| v.leader_id().term),
            last_log_index: last.map_or(0, |l| l.index),
        })
    }

    /// The read index to use for `read`, confirmed by a leader round that began in `term`.
    pub fn read_index(&self, term: u64, read: u64) -> u64 {
        if self.term == Some(term) {
            read.max(self.last_log_index)
        } else {
            read
        }
    }
}

/// The leader as seen from one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// This member leads.
    Me,
    /// Another member leads; how to reach it.
    Other(Member),
    /// No leader is known (election in progress, or no quorum).
    None,
}

/// Everything the services share: the Raft handle, the local state and who we are.
pub struct Node {
    pub kv: Arc<Kv>,
    pub raft: Raft,
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    /// `--initial-cluster-token`, part of the IDs of members added later.
    pub token: String,
    pub limits: Limits,
    pub lessor: lease::Lessor,
    pub proposer: proposer::Proposer,
    /// Writes this member hands to the leader while following.
    forwarder: forward::Forwarder,
    /// Read index rounds while this member leads, and asked of the leader otherwise.
    leader_reads: reads::Coalesce<LeaderRead>,
    forwarded_reads: reads::Coalesce<EtcdError>,
    peers: Arc<PeerClients>,
}

/// Why a leader-side read index round gave no index.
#[derive(Debug, Clone)]
pub enum LeaderRead {
    /// This member does not lead: ask the leader.
    NotLeader,
    Failed(EtcdError),
}

/// Clients of the other members' peer services, by URL.
#[derive(Default)]
pub struct PeerClients {
    clients: std::sync::Mutex<BTreeMap<String, PeerClient<Channel>>>,
}

impl PeerClients {
    fn get(&self, url: &str) -> Result<PeerClient<Channel>, EtcdError> {
        let mut peers = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(url) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| EtcdError::Internal(format!("bad peer URL {url:?}: {e}")))?;
        let client = PeerClient::new(
            endpoint
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy(),
        )
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
        peers.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// A client for the leader's peer service.
    pub fn leader(&self, leader: Option<&Member>) -> Result<PeerClient<Channel>, EtcdError> {
        let url = leader
            .and_then(|m| m.peer_urls.first())
            .ok_or(EtcdError::NoLeader)?;
        self.get(url)
    }
}

/// The leader as `raft` sees it, when it is another member.
pub(crate) fn other_leader(raft: &Raft, me: u64) -> Option<Member> {
    let m = raft.metrics();
    let m = m.borrow();
    let id = m.current_leader.filter(|id| *id != me)?;
    m.membership_config.membership().get_node(&id).cloned()
}

impl Node {
    pub fn new(
        kv: Arc<Kv>,
        raft: Raft,
        log: crate::raft::log_store::LogProgress,
        id: Identity,
        limits: Limits,
        resumed: Resumed,
        forward_on: &tokio::runtime::Handle,
    ) -> Self {
        let Identity {
            member_id,
            cluster_id,
            name,
            client_urls,
            token,
        } = id;
        let proposer = proposer::Proposer::start(raft.clone(), log, kv.clone());
        let peers = Arc::new(PeerClients::default());
        let forwarder = forward::Forwarder::start(
            forward_on,
            forward::Deps {
                raft: raft.clone(),
                member_id,
                peers: peers.clone(),
                kv: kv.clone(),
                timeout: PROPOSE_TIMEOUT,
            },
        );
        let leader_raft = raft.clone();
        let leader_reads = reads::Coalesce::start(
            move || {
                let raft = leader_raft.clone();
                async move {
                    // The term before the round: the round confirms a leadership at least as new.
                    let term = raft.metrics().borrow().current_term;
                    match raft.get_read_log_id().await {
                        Ok((read, _)) => Ok(resumed.read_index(term, read.map_or(0, |l| l.index))),
                        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                            Err(LeaderRead::NotLeader)
                        }
                        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                            Err(LeaderRead::Failed(EtcdError::Timeout))
                        }
                        Err(RaftError::Fatal(_)) => Err(LeaderRead::Failed(EtcdError::Stopped)),
                    }
                }
            },
            PROPOSE_TIMEOUT,
            LeaderRead::Failed(EtcdError::Timeout),
        );
        let (follower_raft, follower_peers) = (raft.clone(), peers.clone());
        let forwarded_reads = reads::Coalesce::start(
            move || {
                let raft = follower_raft.clone();
                let peers = follower_peers.clone();
                async move {
                    let leader = other_leader(&raft, member_id);
                    let mut client = peers.leader(leader.as_ref())?;
                    let mut req = tonic::Request::new(Empty {});
                    req.set_timeout(PROPOSE_TIMEOUT);
                    let reply = client.read_index(req).await.map_err(status_to_etcd)?;
                    Ok(reply.into_inner().index)
                }
            },
            PROPOSE_TIMEOUT,
            EtcdError::Timeout,
        );
        Node {
            kv,
            raft,
            member_id,
            cluster_id,
            name,
            client_urls,
            token,
            limits,
            lessor: lease::Lessor::default(),
            proposer,
            forwarder,
            leader_reads,
            forwarded_reads,
            peers,
        }
    }

    /// A response header as etcd fills it.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    /// Fills in the member fields of a header the state machine left with a revision only.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or_else(|| self.kv.revision(), |h| h.revision);
        *header = Some(self.header(revision));
    }

    pub(crate) fn leader_client(
        &self,
        leader: Option<&Member>,
    ) -> Result<PeerClient<Channel>, EtcdError> {
        self.peers.leader(leader)
    }

    /// Who leads, as this member sees it.
    pub fn leader(&self) -> Leader {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(id) if id == self.member_id && m.state == openraft::ServerState::Leader => {
                Leader::Me
            }
            Some(id) if id != self.member_id => {
                match m.membership_config.membership().get_node(&id) {
                    Some(member) => Leader::Other(member.clone()),
                    None => Leader::None,
                }
            }
            _ => Leader::None,
        }
    }

    /// Proposes a write through Raft and waits until it is applied here. On a follower the
    /// write is handed to the leader, as etcd does. Returns the apply result or its etcd error.
    pub async fn propose(&self, req: InternalRequest) -> Result<apply_result::Result, EtcdError> {
        if req.encoded_len() > self.limits.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        if let Some(a) = maintenance::blocking_write(&self.kv.alarms(), &req) {
            return Err(a);
        }
        let result = tokio::time::timeout(PROPOSE_TIMEOUT, self.propose_inner(req))
            .await
            .map_err(|_| EtcdError::Timeout)??;
        match result.result {
            Some(apply_result::Result::Error(e)) => Err(EtcdError::from_parts(e.code, &e.message)),
            Some(ok) => Ok(ok),
            None => Err(EtcdError::Internal("empty apply result".into())),
        }
    }

    async fn propose_inner(&self, req: InternalRequest) -> Result<ApplyResult, EtcdError> {
        if let Leader::Other(_) = self.leader() {
            return self.forwarder.forward(req).await;
        }
        // Kept for the rare case that leadership moved since the check above.
        let again = req.clone();
        match self.proposer.propose(req).await {
            Ok(result) => Ok(result),
            Err(ProposeError::ForwardToLeader(_)) => self.forwarder.forward(again).await,
            Err(ProposeError::Other(e)) => Err(EtcdError::Internal(e)),
            Err(ProposeError::Stopped) => Err(EtcdError::Stopped),
        }
    }

    /// The read index of the next leader-side round (for this member's reads, or a follower
    /// asking through the peer service).
    pub async fn leader_read_index(&self) -> Result<u64, LeaderRead> {
        self.leader_reads
            .index(LeaderRead::Failed(EtcdError::Stopped))
            .await
    }

    /// Makes a following read linearizable: gets a read index from a round this read did not
    /// precede (as leader, or from the leader) and waits for the local state machine to reach it.
    pub async fn linearize(&self) -> Result<(), EtcdError> {
        let index = match self.leader_read_index().await {
            Ok(i) => i,
            Err(LeaderRead::NotLeader) => self.forwarded_reads.index(EtcdError::Stopped).await?,
            Err(LeaderRead::Failed(e)) => return Err(e),
        };
        let index = i64::try_from(index).unwrap_or(i64::MAX);
        tokio::time::timeout(PROPOSE_TIMEOUT, self.kv.applied_index.reached(index))
            .await
            .map_err(|_| EtcdError::Timeout)
    }

    /// Runs a blocking read off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Kv) -> Result<T, EtcdError> + Send + 'static,
    ) -> Result<T, EtcdError> {
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || f(&kv))
            .await
            .map_err(|e| EtcdError::Internal(e.to_string()))?
    }
}

/// The store revision an apply result reached, to wait for it locally.
pub(crate) fn result_revision(r: &ApplyResult) -> Option<i64> {
    use apply_result::Result as R;
    let h = match r.result.as_ref()? {
        R::Put(x) => &x.header,
        R::DeleteRange(x) => &x.header,
        R::Txn(x) => &x.header,
        R::Compaction(x) => &x.header,
        R::LeaseGrant(x) => &x.header,
        R::LeaseRevoke(x) => &x.header,
        R::Empty(_) | R::Error(_) | R::Alarm(_) => return None,
    };
    h.as_ref().map(|h| h.revision)
}

/// An error from the leader, back into etcd's terms.
pub fn status_to_etcd(s: tonic::Status) -> EtcdError {
    match s.code() {
        tonic::Code::Unavailable if s.message().starts_with("etcdserver:") => {
            EtcdError::from_parts(s.code() as i32, s.message())
        }
        tonic::Code::Unavailable | tonic::Code::Cancelled => EtcdError::NoLeader,
        tonic::Code::DeadlineExceeded => EtcdError::Timeout,
        code => EtcdError::from_parts(code as i32, s.message()),
    }
}
