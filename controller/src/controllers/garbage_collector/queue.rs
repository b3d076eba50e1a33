//! The garbage collector's work queues, with client-go's `workqueue` semantics: a key is queued
//! at most once however often it is added, is handed to one worker at a time (added again while
//! being processed, it is queued once the worker is done), and failed keys come back after
//! upstream's per-key exponential backoff. A queue holds at most one entry per distinct key (a
//! graph node), so its size is bounded by the objects in the cluster.
//!
//! kube's own controller queue cannot serve here: it reconciles objects from a reflector store,
//! while the collector's items are graph nodes, some of them virtual (an owner that was never
//! observed).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runtime::FailureBackoff;

#[derive(Default)]
struct State {
    /// Keys ready to be handed out, in order.
    queue: VecDeque<String>,
    /// Keys waiting to be processed (queued, or re-added while processing).
    dirty: HashSet<String>,
    /// Keys a worker holds.
    processing: HashSet<String>,
    /// Keys to be added later, with when: a later request for a key already waiting is dropped.
    waiting: HashMap<String, Instant>,
}

/// A deduplicating, rate-limited work queue of keys.
pub struct WorkQueue {
    name: &'static str,
    state: Mutex<State>,
    ready: Notify,
    backoff: FailureBackoff,
    shutdown: CancellationToken,
}

impl WorkQueue {
    /// An empty queue; it stops handing out keys once `shutdown` is cancelled.
    pub fn new(name: &'static str, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(WorkQueue {
            name,
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            backoff: FailureBackoff::default(),
            shutdown,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` unless it is queued already.
    pub fn add(&self, key: &str) {
        let mut s = self.lock();
        if s.dirty.contains(key) {
            return;
        }
        s.dirty.insert(key.to_string());
        if !s.processing.contains(key) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: &str, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let at = Instant::now() + delay;
        {
            let mut s = self.lock();
            if s.waiting.get(key).is_some_and(|t| *t <= at) {
                return;
            }
            s.waiting.insert(key.to_string(), at);
        }
        let me = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::select! {
                _ = me.shutdown.cancelled() => {}
                _ = tokio::time::sleep_until(at) => {
                    {
                        let mut s = me.lock();
                        // A sooner request replaced ours: it adds the key.
                        if s.waiting.get(&key) != Some(&at) {
                            return;
                        }
                        s.waiting.remove(&key);
                    }
                    me.add(&key);
                }
            }
        });
    }

    /// Queues `key` again after its failure backoff (5 ms, doubling per consecutive failure).
    pub fn add_rate_limited(self: &Arc<Self>, key: &str) {
        let delay = self.backoff.failed(key);
        tracing::debug!(queue = self.name, key, retry_in = ?delay, "requeued");
        self.add_after(key, delay);
    }

    /// `key` succeeded: its next failure starts from the base delay again.
    pub fn forget(&self, key: &str) {
        self.backoff.succeeded(key);
    }

    /// The next key to process, waiting for one; `None` once the queue is shut down. The
    /// caller must call [`WorkQueue::done`] with it.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shutdown.is_cancelled() {
                return None;
            }
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    return Some(key);
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// The worker is done with `key`; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Keys queued and not yet handed out.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Arc<WorkQueue> {
        WorkQueue::new("test", CancellationToken::new())
    }

    #[tokio::test]
    async fn keys_are_deduplicated_and_kept_in_order() {
        let q = queue();
        for k in ["a", "b", "a", "c", "b"] {
            q.add(k);
        }
        assert_eq!(q.len(), 3);
        let mut got = Vec::new();
        for _ in 0..3 {
            let k = q.get().await.unwrap();
            q.done(&k);
            got.push(k);
        }
        assert_eq!(got, ["a", "b", "c"]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_processing_waits_for_done() {
        let q = queue();
        q.add("a");
        let k = q.get().await.unwrap();
        q.add("a");
        q.add("a");
        assert!(q.is_empty(), "not handed out twice at once");
        q.done(&k);
        assert_eq!(q.len(), 1, "queued once more after done");
        let again = q.get().await.unwrap();
        q.done(&again);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn delayed_keys_arrive_and_a_sooner_request_wins() {
        let q = queue();
        q.add_after("late", Duration::from_secs(3600));
        q.add_after("late", Duration::from_millis(10));
        let k = tokio::time::timeout(Duration::from_secs(30), q.get())
            .await
            .expect("the sooner request fires")
            .unwrap();
        assert_eq!(k, "late");
        q.done(&k);
    }

    #[tokio::test]
    async fn shutdown_releases_waiting_workers() {
        let token = CancellationToken::new();
        let q = WorkQueue::new("test", token.clone());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        token.cancel();
        assert_eq!(waiter.await.unwrap(), None);
        q.add("a");
        assert_eq!(q.get().await, None, "nothing is handed out after shutdown");
    }
}
