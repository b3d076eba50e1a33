//! miniorch-dns, the cluster DNS (CoreDNS with its kubernetes plugin): answers
//! `svc.ns.svc.cluster.local`, headless, SRV, endpoint, pod and reverse names from Services and
//! EndpointSlices, and forwards other names to `--upstream` resolvers.
//!
//! Layout: [`view`] turns the watched objects into an index (pure), [`resolve`] answers one
//! question from it (pure), [`server`] is hickory's UDP/TCP server around them plus
//! forwarding; this module parses flags, runs the watchers and swaps in a new view after each
//! change.

pub mod resolve;
pub mod server;
pub mod view;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use miniorch_api::client::ClientArgs;
use miniorch_api::health::HealthServer;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::resolve::Zone;
use crate::server::{Handler, Metrics, SharedView};
use crate::view::View;

/// How long to wait for the first full list before answering anyway (as CoreDNS).
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// The DNS server's flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "miniorch-dns",
    version,
    about = "miniorch cluster DNS: answers Service and Pod names under the cluster domain"
)]
pub struct Config {
    /// How to reach the apiserver.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Address to serve DNS on (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:53")]
    pub listen: SocketAddr,
    /// The cluster domain answered authoritatively.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Resolvers for every other name, as IP or IP:PORT (repeat or comma-separate); without
    /// any, other names are refused.
    #[arg(long, value_delimiter = ',', value_parser = parse_upstream)]
    pub upstream: Vec<SocketAddr>,
    /// TTL of answers, in seconds.
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Port of /healthz, /readyz and /metrics on all interfaces; 0 disables it.
    #[arg(long, default_value_t = 8080)]
    pub healthz_port: u16,
}

/// An upstream resolver: `IP` (port 53) or `IP:PORT` (`[v6]:PORT`).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
}

/// Runs the DNS server until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let zone = Zone::new(&config.cluster_domain, config.ttl)
        .map_err(anyhow::Error::msg)
        .context("--cluster-domain")?;
    let (udp, tcp) = server::bind(config.listen)
        .await
        .context("the DNS port is taken or needs privileges (pass --listen ADDR:PORT)")?;
    let metrics = Metrics::default();
    let synced = Arc::new(tokio::sync::watch::Sender::new(false));
    let children = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    if config.healthz_port != 0 {
        let s = synced.clone();
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.healthz_port));
        let health = HealthServer::new(metrics.registry())
            .readyz_check(
                "kubernetes",
                Arc::new(move || {
                    if *s.borrow() {
                        Ok(())
                    } else {
                        Err("services and endpointslices not listed yet".into())
                    }
                }),
            )
            .bind(addr)
            .await
            .context("serving /healthz (--healthz-port 0 disables it)")?;
        let stop = children.clone();
        tasks.spawn(async move {
            if let Err(e) = health.serve(stop).await {
                tracing::warn!(error = %e, "health endpoint failed");
            }
        });
    }

    let client = config.client.client("miniorch-dns").await?;
    let view: SharedView = Arc::new(RwLock::new(Arc::new(View::default())));
    let wake = Arc::new(Notify::new());
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (slice_store, slice_writer) = reflector::store::<EndpointSlice>();
    let services = reflector::reflector(
        svc_writer,
        watcher::watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let slices = reflector::reflector(
        slice_writer,
        watcher::watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    tasks.spawn(watch("services", services, wake.clone(), children.clone()));
    tasks.spawn(watch(
        "endpointslices",
        slices,
        wake.clone(),
        children.clone(),
    ));
    tasks.spawn(keep_view(
        svc_store,
        slice_store,
        view.clone(),
        wake,
        synced.clone(),
        children.clone(),
    ));

    // Answering NXDOMAIN from an empty view would be cached by clients: wait a little first.
    // (Watch the flag rather than the stores: a store wakes only its first waiter.)
    let mut first_view = synced.subscribe();
    let built = first_view.wait_for(|built| *built);
    if tokio::time::timeout(SYNC_WAIT, built).await.is_err() {
        tracing::warn!(
            "services and endpointslices not listed after {SYNC_WAIT:?}; answering anyway"
        );
    }
    tracing::info!(listen = %config.listen, domain = %zone.domain, upstream = ?config.upstream, "DNS server starting");
    let handler = Handler::new(view, zone, config.upstream.clone(), metrics);
    let result = server::serve(handler, udp, tcp, shutdown.clone()).await;
    children.cancel();
    while tasks.join_next().await.is_some() {}
    result.context("serving DNS")
}

/// Drives one reflector, waking the view builder on every change.
async fn watch<K>(
    kind: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    wake: Arc<Notify>,
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
            Some(Ok(_)) => wake.notify_one(),
            Some(Err(e)) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
        }
    }
}

/// Rebuilds the view after each batch of changes (changes arriving during a rebuild are
/// coalesced into the next one).
async fn keep_view(
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    view: SharedView,
    wake: Arc<Notify>,
    synced: Arc<tokio::sync::watch::Sender<bool>>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        r = async { (services.wait_until_ready().await, slices.wait_until_ready().await) } => {
            if r.0.is_err() || r.1.is_err() {
                return;
            }
        }
    }
    loop {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let svcs = services.state();
        let sls = slices.state();
        let next = View::build(
            svcs.iter().map(|s| s.as_ref()),
            sls.iter().map(|s| s.as_ref()),
            serial,
        );
        tracing::debug!(services = next.services.len(), "DNS view rebuilt");
        *view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        synced.send_replace(true);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn upstreams() {
        let cases = [
            ("10.0.0.2", Ok("10.0.0.2:53")),
            ("10.0.0.2:5353", Ok("10.0.0.2:5353")),
            ("[fd00::1]:53", Ok("[fd00::1]:53")),
            ("fd00::1", Ok("[fd00::1]:53")),
            ("dns.google", Err("not IP")),
        ];
        for (input, want) in cases {
            match (parse_upstream(input), want) {
                (Ok(g), Ok(w)) => assert_eq!(g.to_string(), w),
                (Err(g), Err(w)) => assert!(g.contains(w), "{g}"),
                (g, w) => panic!("{input}: {g:?} vs {w:?}"),
            }
        }
    }

    #[test]
    fn flags() {
        let c = Config::try_parse_from(["miniorch-dns"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:53");
        assert_eq!(
            (c.cluster_domain.as_str(), c.ttl, c.healthz_port),
            ("cluster.local", 5, 8080)
        );
        assert!(c.upstream.is_empty());
        let c = Config::try_parse_from([
            "miniorch-dns",
            "--upstream",
            "1.1.1.1,9.9.9.9:53",
            "--upstream",
            "8.8.8.8",
        ])
        .unwrap();
        assert_eq!(c.upstream.len(), 3);
    }
}
