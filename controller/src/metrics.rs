//! The controller-manager's Prometheus metrics: syncs per controller by result, and how long
//! they take.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `controller` and `result` (`success` or `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// The controller's name.
    pub controller: String,
    /// The outcome.
    pub result: String,
}

/// `controller`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// The controller's name.
    pub controller: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// All controller-manager metrics.
#[derive(Clone)]
pub struct Metrics {
    /// `controller_sync_total`.
    pub syncs: Family<SyncLabels, Counter>,
    /// `controller_sync_duration_seconds`.
    pub durations: Family<ControllerLabel, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            syncs: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
        };
        registry.register(
            "controller_sync",
            "Number of syncs (one reconcile of one object, or one pass) per controller and result.",
            m.syncs.clone(),
        );
        registry.register(
            "controller_sync_duration_seconds",
            "How long syncs take, per controller.",
            m.durations.clone(),
        );
        m
    }

    /// Times a sync until the guard is dropped; [`SyncTimer::success`] marks it successful
    /// (a guard dropped without it, e.g. by an early `?`, counts as an error).
    pub fn sync_timer(&self, controller: &'static str) -> SyncTimer {
        SyncTimer {
            metrics: self.clone(),
            controller,
            started: Instant::now(),
            ok: false,
        }
    }
}

/// Records one sync when dropped.
pub struct SyncTimer {
    metrics: Metrics,
    controller: &'static str,
    started: Instant,
    ok: bool,
}

impl SyncTimer {
    /// The sync succeeded.
    pub fn success(mut self) {
        self.ok = true;
    }
}

impl Drop for SyncTimer {
    fn drop(&mut self) {
        let controller = self.controller.to_string();
        self.metrics
            .durations
            .get_or_create(&ControllerLabel {
                controller: controller.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .syncs
            .get_or_create(&SyncLabels {
                controller,
                result: if self.ok { "success" } else { "error" }.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_are_counted_by_result() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.sync_timer("podgc").success();
        drop(m.sync_timer("podgc"));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("controller_sync_total{controller=\"podgc\",result=\"success\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("controller_sync_total{controller=\"podgc\",result=\"error\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("controller_sync_duration_seconds_count{controller=\"podgc\"} 2"),
            "{out}"
        );
    }
}
