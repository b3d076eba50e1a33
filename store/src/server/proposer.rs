//! Group commit above Raft. openraft 0.9 makes each log append durable before it takes the
//! next one, so one entry per client write would cost one fsync per write. The proposer
//! instead gathers the writes that arrive while the previous entry is being made durable, and
//! proposes them as one entry when that fsync is done: one fsync for the whole batch, and no
//! write waits for more than the fsync in progress plus its own (as etcd's raft loop). Each
//! write still gets its own revision and its own answer.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::kv::Kv;
use crate::pb::storepb::{ApplyResult, InternalRequest, Proposal};
use crate::raft::log_store::LogProgress;
use crate::raft::{Member, Raft, Request};
use crate::thread::{Deliveries, Inbox};

/// Most writes in one entry.
const MAX_BATCH_REQUESTS: usize = 1024;
/// Most bytes in one entry (a single larger write still goes alone).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Entries proposed but not yet applied, to bound memory when followers or the state machine
/// fall behind the leader's disk.
const IN_FLIGHT: usize = 64;
/// Longest wait for the previous entry's fsync before proposing anyway (a lost leadership or
/// a failed disk must not stall the queue; Raft reports those to the waiting writes).
const PACE_LIMIT: Duration = Duration::from_millis(100);
/// Writes waiting for a batch; callers wait when it is full.
const QUEUE: usize = 16 * 1024;

/// Why a write was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This member does not lead; the leader, when known.
    ForwardToLeader(Option<Member>),
    /// Raft has stopped.
    Stopped,
    /// Anything else (the message says what).
    Other(String),
}

type Done = oneshot::Sender<Result<Vec<ApplyResult>, ProposeError>>;

/// Writes from one caller (one client, or a batch a follower forwarded), answered together.
struct Pending {
    reqs: Vec<InternalRequest>,
    size: usize,
    done: Done,
    /// The lane the caller waits on.
    inbox: Option<Inbox>,
}

impl Batched for Pending {
    fn weight(&self) -> (usize, usize) {
        (self.reqs.len(), self.size)
    }
}

/// Handle to the batching task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task over `raft`, pacing entries to the log's fsyncs; `kv`'s state
    /// machine hands back the results.
    pub fn start(raft: Raft, log: LogProgress, kv: Arc<Kv>) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, log, kv, rx));
        Proposer { tx }
    }

    /// Proposes one write and waits until it is applied on this member.
    pub async fn propose(&self, req: InternalRequest) -> Result<ApplyResult, ProposeError> {
        let mut results = self.propose_all(vec![req]).await?;
        results
            .pop()
            .ok_or_else(|| ProposeError::Other("no result for the write".into()))
    }

    /// Proposes writes (in this order, in one entry when they fit) and waits until they are
    /// applied on this member; one result per write.
    pub async fn propose_all(
        &self,
        reqs: Vec<InternalRequest>,
    ) -> Result<Vec<ApplyResult>, ProposeError> {
        let (done, rx) = oneshot::channel();
        let size = reqs.iter().map(Message::encoded_len).sum();
        let inbox = Inbox::current();
        self.tx
            .send(Pending {
                reqs,
                size,
                done,
                inbox,
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }
}

/// Takes writes off the queue as batches, one entry per log fsync.
async fn run(raft: Raft, mut log: LogProgress, kv: Arc<Kv>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // Random per process, so an entry proposed before a restart and replayed after it can
    // never be taken for a new one.
    let mut next_id: u64 = rand::random();
    loop {
        let Some((permit, batch)) =
            next_batch(&slots, &mut rx, MAX_BATCH_REQUESTS, MAX_BATCH_BYTES).await
        else {
            return;
        };
        let mut requests = Vec::new();
        let mut dones = Vec::with_capacity(batch.len());
        for p in batch {
            dones.push((p.reqs.len(), p.done, p.inbox));
            requests.extend(p.reqs);
        }
        // This entry goes out in one of the next append calls; counting from here means the
        // wait below ends no later than when it is durable.
        let durable = log.appended() + 1;
        next_id = next_id.wrapping_add(1).max(1);
        let id = next_id;
        let mut applied = kv.proposals.register(id);
        // Handing the entry to Raft here, in order, keeps batches in arrival order.
        let proposal = Request::new(Proposal { requests, id });
        let mut answer = match raft.client_write_ff(proposal).await {
            Ok(rx) => rx,
            Err(_) => {
                kv.proposals.cancel(id);
                deliver(dones, Err(ProposeError::Stopped), ProposeError::Other);
                continue;
            }
        };
        // Writes that arrive while this entry's fsync runs form the next batch.
        tokio::select! {
            biased;
            results = &mut applied => {
                deliver(dones, results.map_err(|_| ProposeError::Stopped), ProposeError::Other);
                continue;
            }
            a = &mut answer => {
                deliver(dones, outcome(&kv, id, a, &mut applied), ProposeError::Other);
                continue;
            }
            _ = log.wait_flushed(durable) => {}
            _ = tokio::time::sleep(PACE_LIMIT) => {}
        }
        let kv = kv.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = tokio::select! {
                biased;
                results = &mut applied => results.map_err(|_| ProposeError::Stopped),
                a = &mut answer => outcome(&kv, id, a, &mut applied),
            };
            deliver(dones, result, ProposeError::Other);
        });
    }
}

type Answer = Result<
    Result<
        openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
        ClientWriteError<u64, Member>,
    >,
    oneshot::error::RecvError,
>;

/// The results of proposal `id` once Raft answered: handed over by the state machine when it
/// applied the entry (Raft's own answer is then empty), or Raft's error.
fn outcome(
    kv: &Kv,
    id: u64,
    answer: Answer,
    applied: &mut oneshot::Receiver<Vec<ApplyResult>>,
) -> Result<Vec<ApplyResult>, ProposeError> {
    if let Ok(results) = applied.try_recv() {
        return Ok(results);
    }
    kv.proposals.cancel(id);
    match answer {
        Err(_) => Err(ProposeError::Stopped),
        Ok(Ok(resp)) => Ok(resp.data.0.results),
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
            Err(ProposeError::ForwardToLeader(f.leader_node))
        }
        Ok(Err(ClientWriteError::ChangeMembershipError(e))) => {
            Err(ProposeError::Other(e.to_string()))
        }
    }
}

/// Something queued for a batch: how many writes it holds and their size in bytes.
pub(crate) trait Batched {
    fn weight(&self) -> (usize, usize);
}

/// The next batch, once one of `slots` is free (a bound on batches in flight) and something
/// is queued; `None` when the queue or the slots are closed.
pub(crate) async fn next_batch<T: Batched>(
    slots: &Arc<Semaphore>,
    rx: &mut mpsc::Receiver<T>,
    max_writes: usize,
    max_bytes: usize,
) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
    let permit = slots.clone().acquire_owned().await.ok()?;
    let first = rx.recv().await?;
    Some((permit, gather(first, rx, max_writes, max_bytes)))
}

/// The first item and whatever else is queued, while the batch holds fewer than `max_writes`
/// writes and `max_bytes` bytes (a single larger item still goes, alone).
fn gather<T: Batched>(
    first: T,
    rx: &mut mpsc::Receiver<T>,
    max_writes: usize,
    max_bytes: usize,
) -> Vec<T> {
    let (mut writes, mut bytes) = first.weight();
    let mut batch = vec![first];
    while writes < max_writes && bytes < max_bytes {
        match rx.try_recv() {
            Ok(p) => {
                let (w, b) = p.weight();
                writes += w;
                bytes += b;
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Hands each waiting caller its own results: `dones` says how many writes each one sent, and
/// on which lane it waits (answers for one lane go over together). `miscount` is the error
/// for a number of results that does not match.
pub(crate) fn deliver<E: Clone + Send + 'static>(
    dones: Vec<Waiting<E>>,
    outcome: Result<Vec<ApplyResult>, E>,
    miscount: impl FnOnce(String) -> E,
) {
    let sent: usize = dones.iter().map(|(n, _, _)| n).sum();
    let outcome = match outcome {
        Ok(results) if results.len() != sent => Err(miscount(format!(
            "{} results for {sent} writes",
            results.len()
        ))),
        other => other,
    };
    let mut out = Deliveries::default();
    match outcome {
        Ok(results) => {
            let mut results = results.into_iter();
            for (n, done, inbox) in dones {
                let mine: Vec<ApplyResult> = results.by_ref().take(n).collect();
                out.add(inbox.as_ref(), move || {
                    let _ = done.send(Ok(mine));
                });
            }
        }
        Err(e) => {
            for (_, done, inbox) in dones {
                let e = e.clone();
                out.add(inbox.as_ref(), move || {
                    let _ = done.send(Err(e));
                });
            }
        }
    }
    out.send();
}

/// A caller waiting for its writes: how many, where to answer, on which lane.
pub(crate) type Waiting<E = ProposeError> = (
    usize,
    oneshot::Sender<Result<Vec<ApplyResult>, E>>,
    Option<Inbox>,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::storepb::{Empty, apply_result};

    fn ok() -> ApplyResult {
        ApplyResult {
            result: Some(apply_result::Result::Empty(Empty {})),
        }
    }

    #[test]
    fn results_reach_their_callers() {
        // Writes per caller, what Raft answered, whether each caller gets results.
        type Case = (Vec<usize>, Result<Vec<ApplyResult>, ProposeError>, bool);
        let cases: Vec<Case> = vec![
            (vec![1, 1], Ok(vec![ok(), ok()]), true),
            (vec![2, 1], Ok(vec![ok(), ok(), ok()]), true),
            (vec![1, 1], Ok(vec![ok()]), false),
            (vec![1, 2, 1], Err(ProposeError::Stopped), false),
        ];
        for (sizes, outcome, each_ok) in cases {
            let (dones, rxs): (Vec<Waiting>, Vec<_>) = sizes
                .iter()
                .map(|&n| {
                    let (tx, rx) = oneshot::channel();
                    ((n, tx, None), (n, rx))
                })
                .unzip();
            deliver(dones, outcome, ProposeError::Other);
            for (n, mut rx) in rxs {
                match rx.try_recv().unwrap() {
                    Ok(results) => {
                        assert!(each_ok);
                        assert_eq!(results.len(), n);
                    }
                    Err(_) => assert!(!each_ok),
                }
            }
        }
    }

    #[tokio::test]
    async fn gather_respects_limits() {
        let (tx, mut rx) = mpsc::channel(4096);
        let pending = |writes, size| Pending {
            reqs: vec![InternalRequest::default(); writes],
            size,
            done: oneshot::channel().0,
            inbox: None,
        };
        for _ in 0..(MAX_BATCH_REQUESTS + 10) {
            tx.send(pending(1, 1)).await.unwrap();
        }
        let g = |rx: &mut mpsc::Receiver<Pending>, first| {
            gather(first, rx, MAX_BATCH_REQUESTS, MAX_BATCH_BYTES).len()
        };
        let first = rx.recv().await.unwrap();
        assert_eq!(g(&mut rx, first), MAX_BATCH_REQUESTS);
        let first = rx.recv().await.unwrap();
        assert_eq!(g(&mut rx, first), 10);
        tx.send(pending(1, MAX_BATCH_BYTES)).await.unwrap();
        tx.send(pending(1, 1)).await.unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(g(&mut rx, first), 1);
        // A forwarded batch counts as the writes it holds.
        tx.send(pending(MAX_BATCH_REQUESTS - 1, 1)).await.unwrap();
        tx.send(pending(1, 1)).await.unwrap();
        tx.send(pending(1, 1)).await.unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(g(&mut rx, first), 2);
    }
}
