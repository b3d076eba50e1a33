//! miniorch-controller: the controller-manager. It runs the controllers that keep the cluster
//! as declared (today: namespace, node-lifecycle, pod garbage collection), over shared
//! informers, leader-elected through the Lease `kube-system/kube-controller-manager` like
//! upstream's kube-controller-manager.
//!
//! Each controller's decision is a pure function in its file under [`controllers`]; the
//! watches are in [`informers`], the work queue and backoff in [`runtime`].

pub mod controllers;
pub mod informers;
pub mod metrics;
pub mod runtime;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use miniorch_api::client::ClientArgs;
use miniorch_api::events::{EventRecorder, Reporter};
use miniorch_api::health::HealthServer;
use miniorch_api::leader::{KubeLeaseLock, LeaderElectionArgs, LeaderElector, parse_duration};
use tokio_util::sync::CancellationToken;

use crate::controllers::{ControllerContext, Settings};
use crate::informers::Informers;

/// The Lease upstream's controller-manager holds.
pub const LEASE_NAME: &str = "kube-controller-manager";

/// Flags of `miniorch-controller` (named as kube-controller-manager's).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "miniorch-controller",
    version,
    about = "Runs the controllers that keep the cluster as declared"
)]
pub struct Config {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub leader: LeaderElectionArgs,
    /// Controllers to run: `*` for the default set, `foo` to add one, `-foo` to leave one out.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,
    /// Port for /healthz, /readyz and /metrics (plain HTTP); 0 disables them.
    #[arg(long, default_value_t = 10257)]
    pub port: u16,
    /// Address the health and metrics port listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// How often the node-lifecycle controller checks each node.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: Duration,
    /// How long a node may stay silent before it is marked Unknown.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// The same for a node that has never posted its status.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub node_startup_grace_period: Duration,
    /// Finished pods kept before the oldest are deleted (0 or less keeps them all).
    #[arg(long, default_value_t = 12500, allow_negative_numbers = true)]
    pub terminated_pod_gc_threshold: i64,
}

impl Config {
    fn settings(&self) -> Settings {
        Settings {
            node_lifecycle: controllers::node_lifecycle::Settings {
                monitor_period: self.node_monitor_period.max(Duration::from_millis(100)),
                grace_period: self.node_monitor_grace_period,
                startup_grace_period: self.node_startup_grace_period,
            },
            terminated_pod_gc_threshold: self.terminated_pod_gc_threshold,
        }
    }
}

/// Runs the selected controllers until `shutdown`; with leader election, only while holding
/// the lease, and fails (so the process exits non-zero) when the lease is lost.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let selected = controllers::select(&config.controllers)
        .map_err(anyhow::Error::msg)
        .context("--controllers")?;
    let client = config.client.client("miniorch-controller").await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let leader_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    registry.register(
        "leader_election_master_status",
        "1 while this instance holds the leader lease",
        leader_gauge.clone(),
    );
    let leading = Arc::new(AtomicBool::new(false));
    let synced = Arc::new(AtomicBool::new(false));
    let health = if config.port != 0 {
        let (l, s) = (leading.clone(), synced.clone());
        let server = HealthServer::new(registry)
            .readyz_check(
                "informer-sync",
                Arc::new(move || {
                    if !l.load(Ordering::SeqCst) || s.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err("informers not synced".into())
                    }
                }),
            )
            .bind(SocketAddr::new(config.bind_address, config.port))
            .await?;
        tracing::info!(addr = %server.local_addr(), "serving /healthz, /readyz, /metrics");
        Some(tokio::spawn(server.serve(shutdown.clone())))
    } else {
        None
    };

    let identity = miniorch_api::leader::default_identity();
    let settings = config.settings();
    let work = {
        let client = client.clone();
        let identity = identity.clone();
        let synced = synced.clone();
        move |token: CancellationToken| async move {
            let mut informers = Informers::new(client.clone());
            let mut running = tokio::task::JoinSet::new();
            for d in &selected {
                let mut cx = ControllerContext {
                    client: client.clone(),
                    informers: &mut informers,
                    settings,
                    metrics: metrics.clone(),
                    identity: identity.clone(),
                };
                let fut = (d.start)(&mut cx, token.clone())
                    .with_context(|| format!("starting {}", d.name))?;
                running.spawn(fut);
            }
            let names: Vec<&str> = selected.iter().map(|d| d.name).collect();
            tracing::info!(controllers = ?names, "controllers starting");
            let sync = informers.start(&token);
            tokio::spawn(async move {
                if sync.await {
                    tracing::info!("informers synced");
                    synced.store(true, Ordering::SeqCst);
                }
            });
            // Controllers run until the token is cancelled; one ending before that is a bug.
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    Some(done) = running.join_next() => {
                        done.context("a controller task failed")?;
                        if !token.is_cancelled() {
                            anyhow::bail!("a controller stopped on its own");
                        }
                    }
                }
            }
            while let Some(done) = running.join_next().await {
                done.context("a controller task failed")?;
            }
            anyhow::Ok(())
        }
    };

    let result = if config.leader.leader_elect {
        let mut election = config.leader.election(LEASE_NAME);
        election.identity = identity.clone();
        let events = Arc::new(EventRecorder::new(
            client.clone(),
            Reporter {
                component: "kube-controller-manager".into(),
                instance: identity,
            },
        ));
        let lock = KubeLeaseLock::new(client, &election, Some(events));
        let elector = LeaderElector::new(lock, election)?;
        let outcome = elector
            .run(&shutdown, |token| {
                leading.store(true, Ordering::SeqCst);
                leader_gauge.set(1);
                work(token)
            })
            .await;
        leader_gauge.set(0);
        match outcome {
            Ok(Some(work)) => work,
            Ok(None) => Ok(()),
            Err(e) => Err(e).context("leaderelection lost"),
        }
    } else {
        work(shutdown.clone()).await
    };
    shutdown.cancel();
    if let Some(h) = health {
        h.await.context("health endpoint task")??;
    }
    result
}
