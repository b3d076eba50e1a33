//! The scheduler's Prometheus metrics, named as upstream's where one exists.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::queue::QueueLengths;

/// `result` (`scheduled`, `unschedulable`, `error`) and `profile`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The outcome.
    pub result: String,
    /// The scheduler name.
    pub profile: String,
}

/// `queue` (`active`, `backoff`, `unschedulable`, `gated`) as upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// The sub-queue.
    pub queue: String,
}

/// The value of the `type` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeValue {
    /// `nodes` or `pods`.
    pub r#type: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// All scheduler metrics.
#[derive(Clone)]
pub struct Metrics {
    /// `scheduler_schedule_attempts_total`.
    pub attempts: Family<AttemptLabels, Counter>,
    /// `scheduler_scheduling_attempt_duration_seconds`.
    pub attempt_duration: Family<AttemptLabels, Histogram, fn() -> Histogram>,
    /// `scheduler_binding_duration_seconds`: the binding API call.
    pub binding_duration: Histogram,
    /// `scheduler_pod_scheduling_duration_seconds`: first attempt to bound.
    pub e2e_duration: Histogram,
    /// `scheduler_pending_pods`.
    pub pending: Family<QueueLabel, Gauge>,
    /// `scheduler_cache_size`.
    pub cache: Family<TypeValue, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(latency_histogram),
            binding_duration: latency_histogram(),
            e2e_duration: latency_histogram(),
            pending: Family::default(),
            cache: Family::default(),
        };
        registry.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result.",
            m.attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding).",
            m.attempt_duration.clone(),
        );
        registry.register(
            "scheduler_binding_duration_seconds",
            "Latency of the binding API call in seconds.",
            m.binding_duration.clone(),
        );
        registry.register(
            "scheduler_pod_scheduling_duration_seconds",
            "Latency from a pod's first scheduling attempt until it is bound, in seconds.",
            m.e2e_duration.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "Number of pending pods, by the queue type.",
            m.pending.clone(),
        );
        registry.register(
            "scheduler_cache_size",
            "Number of nodes and pods in the scheduler cache.",
            m.cache.clone(),
        );
        m
    }

    /// Counts one attempt and its latency.
    pub fn attempt(&self, result: &str, profile: &str, seconds: f64) {
        let labels = AttemptLabels {
            result: result.to_string(),
            profile: profile.to_string(),
        };
        self.attempts.get_or_create(&labels).inc();
        self.attempt_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Publishes the queue and cache sizes.
    pub fn sizes(&self, q: QueueLengths, gated: usize, nodes: usize, pods: usize) {
        for (queue, n) in [
            ("active", q.active + q.in_flight),
            ("backoff", q.backoff),
            ("unschedulable", q.unschedulable),
            ("gated", gated),
        ] {
            self.pending
                .get_or_create(&QueueLabel {
                    queue: queue.to_string(),
                })
                .set(n as i64);
        }
        for (kind, n) in [("nodes", nodes), ("pods", pods)] {
            self.cache
                .get_or_create(&TypeValue {
                    r#type: kind.to_string(),
                })
                .set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_upstream_names() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.attempt("scheduled", "default-scheduler", 0.01);
        m.sizes(
            QueueLengths {
                active: 2,
                ..Default::default()
            },
            1,
            3,
            4,
        );
        m.binding_duration.observe(0.002);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for want in [
            "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"} 1",
            "scheduler_pending_pods{queue=\"active\"} 2",
            "scheduler_pending_pods{queue=\"gated\"} 1",
            "scheduler_cache_size{type=\"nodes\"} 3",
            "scheduler_binding_duration_seconds_count 1",
        ] {
            assert!(out.contains(want), "{want} missing in\n{out}");
        }
    }
}
