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
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::pb::storepb::{ApplyResult, InternalRequest, Proposal};
use crate::raft::log_store::LogProgress;
use crate::raft::{Member, Raft, Request};

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

type Done = oneshot::Sender<Result<ApplyResult, ProposeError>>;

struct Pending {
    req: InternalRequest,
    size: usize,
    done: Done,
}

/// Handle to the batching task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task over `raft`, pacing entries to the log's fsyncs.
    pub fn start(raft: Raft, log: LogProgress) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, log, rx));
        Proposer { tx }
    }

    /// Proposes one write and waits until it is applied on this member.
    pub async fn propose(&self, req: InternalRequest) -> Result<ApplyResult, ProposeError> {
        let (done, rx) = oneshot::channel();
        let size = req.encoded_len();
        self.tx
            .send(Pending { req, size, done })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }
}

/// Takes writes off the queue as batches, one entry per log fsync.
async fn run(raft: Raft, mut log: LogProgress, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let batch = gather(first, &mut rx);
        let (requests, dones): (Vec<InternalRequest>, Vec<Done>) =
            batch.into_iter().map(|p| (p.req, p.done)).unzip();
        // This entry goes out in one of the next append calls; counting from here means the
        // wait below ends no later than when it is durable.
        let durable = log.appended() + 1;
        // Handing the entry to Raft here, in order, keeps batches in arrival order.
        let mut pending = match raft.client_write_ff(Request(Proposal { requests })).await {
            Ok(rx) => rx,
            Err(_) => {
                deliver(dones, Err(ProposeError::Stopped));
                continue;
            }
        };
        // Writes that arrive while this entry's fsync runs form the next batch.
        tokio::select! {
            answer = &mut pending => {
                deliver(dones, outcome(answer));
                continue;
            }
            _ = log.wait_flushed(durable) => {}
            _ = tokio::time::sleep(PACE_LIMIT) => {}
        }
        tokio::spawn(async move {
            let _permit = permit;
            deliver(dones, outcome(pending.await));
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

fn outcome(answer: Answer) -> Result<Vec<ApplyResult>, ProposeError> {
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

/// The first write and whatever else is queued, within the batch limits.
fn gather(first: Pending, rx: &mut mpsc::Receiver<Pending>) -> Vec<Pending> {
    let mut bytes = first.size;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(p) => {
                bytes += p.size;
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Hands each waiting caller its own result.
fn deliver(dones: Vec<Done>, outcome: Result<Vec<ApplyResult>, ProposeError>) {
    match outcome {
        Ok(results) if results.len() == dones.len() => {
            for (done, r) in dones.into_iter().zip(results) {
                let _ = done.send(Ok(r));
            }
        }
        Ok(results) => {
            let e = ProposeError::Other(format!(
                "applied {} results for {} writes",
                results.len(),
                dones.len()
            ));
            for done in dones {
                let _ = done.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for done in dones {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

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
        let cases: Vec<(usize, Result<Vec<ApplyResult>, ProposeError>, bool)> = vec![
            (2, Ok(vec![ok(), ok()]), true),
            (2, Ok(vec![ok()]), false),
            (3, Err(ProposeError::Stopped), false),
        ];
        for (n, outcome, each_ok) in cases {
            let (dones, rxs): (Vec<Done>, Vec<_>) = (0..n).map(|_| oneshot::channel()).unzip();
            deliver(dones, outcome);
            for mut rx in rxs {
                assert_eq!(rx.try_recv().unwrap().is_ok(), each_ok);
            }
        }
    }

    #[tokio::test]
    async fn gather_respects_limits() {
        let (tx, mut rx) = mpsc::channel(4096);
        let pending = |size| Pending {
            req: InternalRequest::default(),
            size,
            done: oneshot::channel().0,
        };
        for _ in 0..(MAX_BATCH_REQUESTS + 10) {
            tx.send(pending(1)).await.unwrap();
        }
        let first = rx.recv().await.unwrap();
        assert_eq!(gather(first, &mut rx).len(), MAX_BATCH_REQUESTS);
        let first = rx.recv().await.unwrap();
        assert_eq!(gather(first, &mut rx).len(), 10);
        tx.send(pending(MAX_BATCH_BYTES)).await.unwrap();
        tx.send(pending(1)).await.unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(gather(first, &mut rx).len(), 1);
    }
}
