//! A position that only moves forward (an applied log index, a published revision) and tasks
//! waiting for it to reach a point. Waiters are kept by the point they wait for, so moving
//! forward wakes exactly the tasks it satisfies rather than every waiter on every step.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::oneshot;

#[derive(Debug)]
pub struct Progress {
    at: AtomicI64,
    waiting: Mutex<BTreeMap<i64, Vec<oneshot::Sender<()>>>>,
}

impl Progress {
    pub fn new(at: i64) -> Self {
        Progress {
            at: AtomicI64::new(at),
            waiting: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn get(&self) -> i64 {
        self.at.load(Ordering::SeqCst)
    }

    /// Moves to `to` (never backwards) and wakes whoever waited for a point at or before it.
    pub fn advance(&self, to: i64) {
        self.at.fetch_max(to, Ordering::SeqCst);
        let woken = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let later = w.split_off(&to.saturating_add(1));
            std::mem::replace(&mut *w, later)
        };
        for tx in woken.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Returns once the position is at least `point`.
    pub async fn reached(&self, point: i64) {
        if self.get() >= point {
            return;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            // Checked again under the lock: an advance between the two checks has either
            // been seen here or will see this waiter.
            if self.get() >= point {
                return;
            }
            w.entry(point).or_default().push(tx);
        }
        let _ = rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn wakes_exactly_the_satisfied_waiters() {
        let p = Arc::new(Progress::new(5));
        p.reached(3).await;
        p.reached(5).await;
        let waiter = |point| {
            let p = p.clone();
            tokio::spawn(async move { p.reached(point).await })
        };
        let (a, b, c) = (waiter(6), waiter(8), waiter(10));
        tokio::task::yield_now().await;
        p.advance(4); // backwards: ignored
        assert_eq!(p.get(), 5);
        p.advance(8);
        a.await.unwrap();
        b.await.unwrap();
        assert!(!c.is_finished());
        assert_eq!(p.waiting.lock().unwrap().len(), 1);
        p.advance(10);
        c.await.unwrap();
        assert!(p.waiting.lock().unwrap().is_empty());
    }
}
