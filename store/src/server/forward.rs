//! Writes a follower receives go to the leader, as etcd forwards proposals. The writes that
//! arrive together travel in one `Peer.Propose` call, and several calls may be in flight, so a
//! follower adds one round trip to a write, not one call per write. Each caller gets its own
//! result once this member has applied it too, so a read here right after sees the write.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::proposer::{Batched, Waiting, deliver, next_batch};
use super::{PeerClients, other_leader, result_revision, status_to_etcd};
use crate::error::EtcdError;
use crate::kv::Kv;
use crate::pb::storepb::{ApplyResult, InternalRequest, Proposal};
use crate::raft::Raft;
use crate::thread::Inbox;

/// Most writes in one call.
const MAX_BATCH_REQUESTS: usize = 1024;
/// Most bytes in one call (a single larger write still goes alone).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Calls in flight to the leader.
const IN_FLIGHT: usize = 32;
/// Writes waiting for a call; callers wait when it is full.
const QUEUE: usize = 16 * 1024;

type Done = oneshot::Sender<Result<Vec<ApplyResult>, EtcdError>>;

struct Forward {
    req: InternalRequest,
    size: usize,
    done: Done,
    /// The lane the caller waits on.
    inbox: Option<Inbox>,
}

impl Batched for Forward {
    fn weight(&self) -> (usize, usize) {
        (1, self.size)
    }
}

/// Handle to the forwarding task.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Forward>,
}

/// What forwarding needs from the member.
pub struct Deps {
    pub raft: Raft,
    pub member_id: u64,
    pub peers: Arc<PeerClients>,
    pub kv: Arc<Kv>,
    /// How long a call and the local apply after it may take.
    pub timeout: Duration,
}

impl Forwarder {
    /// Starts the forwarding task on `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle, deps: Deps) -> Forwarder {
        let (tx, rx) = mpsc::channel(QUEUE);
        runtime.spawn(run(Arc::new(deps), rx));
        Forwarder { tx }
    }

    /// Hands one write to the leader and waits for its result, applied here as well.
    pub async fn forward(&self, req: InternalRequest) -> Result<ApplyResult, EtcdError> {
        let (done, rx) = oneshot::channel();
        let size = prost::Message::encoded_len(&req);
        let inbox = Inbox::current();
        self.tx
            .send(Forward {
                req,
                size,
                done,
                inbox,
            })
            .await
            .map_err(|_| EtcdError::Stopped)?;
        let mut results = rx.await.map_err(|_| EtcdError::Stopped)??;
        results
            .pop()
            .ok_or_else(|| EtcdError::Internal("no result for the write".into()))
    }
}

async fn run(deps: Arc<Deps>, mut rx: mpsc::Receiver<Forward>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some((permit, batch)) =
        next_batch(&slots, &mut rx, MAX_BATCH_REQUESTS, MAX_BATCH_BYTES).await
    {
        let deps = deps.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (requests, dones): (Vec<InternalRequest>, Vec<Waiting<EtcdError>>) = batch
                .into_iter()
                .map(|f| (f.req, (1, f.done, f.inbox)))
                .unzip();
            let outcome = tokio::time::timeout(deps.timeout, call(&deps, requests))
                .await
                .unwrap_or(Err(EtcdError::Timeout));
            deliver(dones, outcome, |e| {
                EtcdError::Internal(format!("the leader answered {e}"))
            });
        });
    }
}

/// One call to the leader, then the wait until this member applied what it answered.
async fn call(deps: &Deps, requests: Vec<InternalRequest>) -> Result<Vec<ApplyResult>, EtcdError> {
    let leader = other_leader(&deps.raft, deps.member_id);
    let mut client = deps.peers.leader(leader.as_ref())?;
    let results = client
        .propose(Proposal { requests, id: 0 })
        .await
        .map_err(status_to_etcd)?
        .into_inner()
        .results;
    if let Some(rev) = results.iter().filter_map(result_revision).max() {
        deps.kv.hub.reached(rev).await;
    }
    Ok(results)
}
