//! The proxy's thin loop: reflectors keep Services and EndpointSlices in memory, every change
//! wakes the syncer, and the syncer applies the whole desired state — coalesced to at most one
//! sync per `--min-sync-period`, and at least one per `--sync-period` as a safety net, like
//! upstream's bounded-frequency runner. A failed sync is retried with backoff.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use miniorch_api::health::HealthServer;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Iptables};
use crate::model;
use crate::render::NodeConfig;

/// How often to sync.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The safety-net resync interval.
    pub sync_period: Duration,
    /// The least time between two syncs.
    pub min_sync_period: Duration,
}

/// Where the health and metrics endpoints listen (`None`: not served).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// `/healthz` (and `/readyz`).
    pub healthz: Option<SocketAddr>,
    /// `/metrics`.
    pub metrics: Option<SocketAddr>,
}

/// The proxy's Prometheus metrics (upstream's names).
#[derive(Clone)]
struct Metrics {
    duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    restore_failures: Counter,
    changes: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_sync: Gauge::default(),
            restore_failures: Counter::default(),
            changes: Counter::default(),
        }
    }

    /// A registry holding these metrics (each endpoint needs its own; the metrics are shared).
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.last_sync.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            self.restore_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_changes",
            "Service and EndpointSlice changes seen",
            self.changes.clone(),
        );
        r
    }
}

/// What `/healthz` and `/readyz` report, as upstream's proxier health server: unhealthy when a
/// change has waited longer than twice the sync period; ready after the first sync.
#[derive(Debug, Default)]
struct HealthState {
    pending_since: Option<Instant>,
    synced: bool,
}

type SharedHealth = Arc<Mutex<HealthState>>;

fn lock(h: &SharedHealth) -> std::sync::MutexGuard<'_, HealthState> {
    // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches, syncs and serves health until `shutdown`.
pub async fn run(
    client: kube::Client,
    ipt: Arc<dyn Iptables>,
    node: NodeConfig,
    timing: Timing,
    ports: Ports,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let health: SharedHealth = Arc::default();
    let wake = Arc::new(Notify::new());
    let children = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();

    let healthy = {
        let h = health.clone();
        let limit = timing.sync_period * 2;
        move || match lock(&h).pending_since {
            Some(t) if t.elapsed() > limit => Err(format!(
                "a change has waited {}s for a sync",
                t.elapsed().as_secs()
            )),
            _ => Ok(()),
        }
    };
    let ready = {
        let h = health.clone();
        move || {
            if lock(&h).synced {
                Ok(())
            } else {
                Err("no sync yet".to_string())
            }
        }
    };
    for (addr, what) in [(ports.healthz, "healthz"), (ports.metrics, "metrics")] {
        let Some(addr) = addr else { continue };
        // Each endpoint serves the same checks and metrics; upstream splits them by port.
        let server = HealthServer::new(metrics.registry())
            .healthz_check("proxier", Arc::new(healthy.clone()))
            .readyz_check("synced", Arc::new(ready.clone()))
            .bind(addr)
            .await
            .with_context(|| format!("serving {what} (--{what}-port 0 disables it)"))?;
        tasks.spawn(log_failure(what, server.serve(children.clone())));
    }

    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client);
    let (svc_store, svc_writer) = reflector::store();
    let (slice_store, slice_writer) = reflector::store();
    let svc_events = reflector::reflector(
        svc_writer,
        watcher::watcher(services, watcher::Config::default()).default_backoff(),
    );
    let slice_events = reflector::reflector(
        slice_writer,
        watcher::watcher(slices, watcher::Config::default()).default_backoff(),
    );
    tasks.spawn(watch(
        "services",
        svc_events,
        wake.clone(),
        health.clone(),
        metrics.clone(),
        children.clone(),
    ));
    tasks.spawn(watch(
        "endpointslices",
        slice_events,
        wake.clone(),
        health.clone(),
        metrics.clone(),
        children.clone(),
    ));

    let syncer = Syncer {
        ipt,
        node,
        timing,
        services: svc_store,
        slices: slice_store,
        wake,
        health,
        metrics,
    };
    tasks.spawn(syncer.run(children.clone()));

    shutdown.cancelled().await;
    children.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn log_failure<E: std::fmt::Display>(
    what: &'static str,
    f: impl Future<Output = Result<(), E>>,
) {
    if let Err(e) = f.await {
        tracing::warn!(error = %e, "{what} endpoint failed");
    }
}

/// Drives one reflector, waking the syncer on every change.
async fn watch<K>(
    kind: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    wake: Arc<Notify>,
    health: SharedHealth,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Ok(_)) => {
                metrics.changes.inc();
                lock(&health).pending_since.get_or_insert_with(Instant::now);
                wake.notify_one();
            }
            Some(Err(e)) => {
                // The backoff spaces retries; the stores keep their last contents meanwhile.
                tracing::warn!(kind, error = %miniorch_api_error(&e), "watch failed; retrying");
            }
        }
    }
}

fn miniorch_api_error(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => miniorch_api::client::error_message(k),
        other => other.to_string(),
    }
}

/// Applies the desired state when woken, within the timing bounds.
struct Syncer {
    ipt: Arc<dyn Iptables>,
    node: NodeConfig,
    timing: Timing,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    wake: Arc<Notify>,
    health: SharedHealth,
    metrics: Metrics,
}

impl Syncer {
    async fn run(self, shutdown: CancellationToken) {
        // Programming from half a list would drop working services: wait for both.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = async { (self.services.wait_until_ready().await, self.slices.wait_until_ready().await) } => {
                if r.0.is_err() || r.1.is_err() {
                    return;
                }
            }
        }
        tracing::info!("services and endpointslices listed; syncing rules");
        let mut failures: u32 = 0;
        let mut last_attempt: Option<Instant> = None;
        loop {
            if let Some(last) = last_attempt {
                let wait = retry_delay(failures, self.timing);
                let until = tokio::time::Instant::from_std(last + wait);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            last_attempt = Some(Instant::now());
            if self.sync_once().await {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.timing.sync_period) => {}
            }
        }
    }

    /// One full sync; true when it worked.
    async fn sync_once(&self) -> bool {
        let started = Instant::now();
        let services = self.services.state();
        let slices = self.slices.state();
        let model = model::build(
            services.iter().map(|s| s.as_ref()),
            slices.iter().map(|s| s.as_ref()),
            &self.node.node_name,
        );
        for why in &model.skipped {
            tracing::debug!("not proxied: {why}");
        }
        let result = apply::sync(self.ipt.as_ref(), &model.ports, &self.node).await;
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(report) => {
                let mut h = lock(&self.health);
                h.pending_since = None;
                h.synced = true;
                drop(h);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                self.metrics.last_sync.set(now.as_secs_f64());
                tracing::debug!(
                    ports = model.ports.len(),
                    lines = report.lines,
                    jumps_added = report.jumps_added,
                    took_ms = started.elapsed().as_millis() as u64,
                    "synced proxy rules"
                );
                true
            }
            Err(e) => {
                self.metrics.restore_failures.inc();
                tracing::error!(error = %e, "syncing proxy rules failed; will retry");
                false
            }
        }
    }
}

/// How long after an attempt the next may start: the minimum interval, doubled per failure in
/// a row, never more than the sync period.
fn retry_delay(failures: u32, t: Timing) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    t.min_sync_period
        .saturating_mul(factor)
        .min(t.sync_period.max(t.min_sync_period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_the_sync_period() {
        let t = Timing {
            sync_period: Duration::from_secs(30),
            min_sync_period: Duration::from_secs(1),
        };
        let got: Vec<u64> = [0, 1, 2, 3, 4, 5, 6, 40]
            .iter()
            .map(|f| retry_delay(*f, t).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
