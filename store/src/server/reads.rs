//! Linearizable reads by read index, batched as etcd's `linearizableReadLoop` does: a read
//! waits for the next round of "am I still the leader, and up to where is the log committed"
//! that starts after it arrived, and one round answers every read waiting by then. Under load
//! that is one quorum heartbeat (or one request to the leader) for many reads, not one each.
//! The read then waits for the local state machine to reach the round's index.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// Reads waiting for the next round; senders wait when it is full.
const QUEUE: usize = 16 * 1024;

/// One round's answer: the log index reads must see, or why there is none.
pub type Round<E> = Result<u64, E>;

/// A batching loop around one way of getting a read index.
pub struct Coalesce<E> {
    tx: mpsc::Sender<oneshot::Sender<Round<E>>>,
}

impl<E: Clone + Send + 'static> Coalesce<E> {
    /// Starts the loop; each round calls `round` once, giving up after `limit` with `timeout`.
    pub fn start<F, Fut>(round: F, limit: Duration, timeout: E) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Round<E>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Round<E>>>(QUEUE);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiting.push(w);
                }
                let answer = tokio::time::timeout(limit, round())
                    .await
                    .unwrap_or_else(|_| Err(timeout.clone()));
                for w in waiting {
                    let _ = w.send(answer.clone());
                }
            }
        });
        Coalesce { tx }
    }

    /// The read index of the next round; `stopped` when the loop is gone.
    pub async fn index(&self, stopped: E) -> Round<E> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).await.is_err() {
            return Err(stopped);
        }
        rx.await.unwrap_or(Err(stopped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn concurrent_reads_share_rounds_that_start_after_them() {
        let rounds = Arc::new(AtomicU64::new(0));
        let counter = rounds.clone();
        let c = Arc::new(Coalesce::start(
            move || {
                let counter = counter.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<u64, String>(counter.fetch_add(1, Ordering::SeqCst) + 1)
                }
            },
            Duration::from_secs(5),
            "timeout".to_string(),
        ));
        let first = c.index("stopped".into()).await.unwrap();
        assert_eq!(first, 1);
        // Twenty reads at once: the first round takes the ones queued when it starts, the
        // rest share the next; never one round per read.
        let reads: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.index("stopped".into()).await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for r in reads {
            got.push(r.await.unwrap());
        }
        assert!(got.iter().all(|&i| i > first), "{got:?}");
        assert!(rounds.load(Ordering::SeqCst) <= 3, "{got:?}");
    }

    #[tokio::test]
    async fn a_stuck_round_times_out() {
        let c = Coalesce::start(
            std::future::pending::<Round<String>>,
            Duration::from_millis(10),
            "timeout".to_string(),
        );
        assert_eq!(c.index("stopped".into()).await, Err("timeout".into()));
    }
}
