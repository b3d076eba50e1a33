//! The thin runtime every keyed controller shares. Keys are queued, deduplicated and reconciled
//! one at a time per key by kube's `Controller` (level-triggered: a reconcile always re-reads
//! the cache); this adds upstream's per-key exponential failure backoff and the sync metrics.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use futures::{Stream, StreamExt};

/// Reconciles of one controller running at once (upstream `--concurrent-*-syncs` defaults).
pub const CONCURRENCY: u16 = 10;
/// Upstream `ItemExponentialFailureRateLimiter` base delay.
const BASE_DELAY: Duration = Duration::from_millis(5);
/// ... and cap.
const MAX_DELAY: Duration = Duration::from_secs(1000);

/// Upstream's per-item failure backoff: 5 ms doubled per consecutive failure, at most 1000 s.
pub fn failure_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    BASE_DELAY.saturating_mul(1u32 << doublings).min(MAX_DELAY)
}

/// Consecutive failures per key.
#[derive(Debug, Default)]
pub struct FailureBackoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl FailureBackoff {
    /// Counts a failure of `key`; returns how long to wait before retrying it.
    pub fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        failure_delay(*n)
    }

    /// `key` synced: its next failure starts from the base delay again.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Runs a controller's result stream to its end, counting each sync by result.
pub async fn drain<S, T, E>(name: &'static str, results: S)
where
    S: Stream<Item = Result<T, E>>,
    E: Debug,
{
    tracing::info!(controller = name, "controller started");
    let mut results = std::pin::pin!(results);
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            tracing::debug!(controller = name, error = ?e, "sync failed");
        }
    }
    tracing::info!(controller = name, "controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_and_resets() {
        let ms = Duration::from_millis;
        for (failures, want) in [
            (1, ms(5)),
            (2, ms(10)),
            (3, ms(20)),
            (20, MAX_DELAY),
            (100, MAX_DELAY),
        ] {
            assert_eq!(failure_delay(failures), want, "{failures}");
        }
        let b = FailureBackoff::default();
        assert_eq!(b.failed("a"), ms(5));
        assert_eq!(b.failed("a"), ms(10));
        assert_eq!(b.failed("b"), ms(5));
        b.succeeded("a");
        assert_eq!(b.failed("a"), ms(5));
    }
}
