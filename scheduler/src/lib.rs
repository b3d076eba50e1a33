//! miniorch-scheduler: watches pods that have no node, picks a node for each through the
//! filter and score plugins of its profile, and binds the pod there. Leader-elected through the
//! Lease `kube-system/kube-scheduler`, like upstream's kube-scheduler.
//!
//! The decisions live in [`framework`] and [`plugins`] (pure), the bookkeeping in [`cache`] and
//! [`queue`] (pure, time passed in), and the I/O in [`scheduler`].

pub mod cache;
pub mod framework;
pub mod metrics;
pub mod plugins;
pub mod queue;
pub mod scheduler;
#[cfg(test)]
mod testing;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use miniorch_api::client::ClientArgs;
use miniorch_api::events::{EventRecorder, Reporter};
use miniorch_api::health::HealthServer;
use miniorch_api::leader::{KubeLeaseLock, LeaderElectionArgs, LeaderElector};
use tokio_util::sync::CancellationToken;

use crate::framework::{Profile, Registry};

/// The Lease upstream's scheduler holds.
pub const LEASE_NAME: &str = "kube-scheduler";

/// Flags of `miniorch-scheduler` (named as kube-scheduler's).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "miniorch-scheduler", version, about = "Assigns pods to nodes")]
pub struct Config {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub leader: LeaderElectionArgs,
    /// Port for /healthz, /readyz and /metrics (plain HTTP); 0 disables them.
    #[arg(long, default_value_t = 10259)]
    pub port: u16,
    /// Address the health and metrics port listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// Pods naming this scheduler (`spec.schedulerName`) are scheduled by this instance.
    #[arg(long, default_value = framework::registry::DEFAULT_SCHEDULER_NAME)]
    pub scheduler_name: String,
    /// Percentage of nodes to find feasible before scoring; 0 is upstream's adaptive default.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub percentage_of_nodes_to_score: u32,
}

/// Runs the scheduler until `shutdown`; with leader election, only while holding the lease,
/// and fails (so the process exits non-zero) when the lease is lost.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = config.client.client("miniorch-scheduler").await?;
    let profile = Profile {
        scheduler_name: config.scheduler_name.clone(),
        percentage_of_nodes_to_score: config.percentage_of_nodes_to_score,
        ..Profile::default()
    };
    let framework = Registry::in_tree()
        .build(&profile)
        .context("building the default profile")?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let leading = Arc::new(AtomicBool::new(false));
    let synced = Arc::new(AtomicBool::new(false));
    let leader_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    registry.register(
        "leader_election_master_status",
        "1 while this instance holds the leader lease",
        leader_gauge.clone(),
    );
    let health = if config.port != 0 {
        let (l, s) = (leading.clone(), synced.clone());
        let server = HealthServer::new(registry)
            .readyz_check(
                "sched-handler-sync",
                Arc::new(move || {
                    // A standby is ready to take over; a leader once its caches are filled.
                    if !l.load(Ordering::SeqCst) || s.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err("caches not synced".into())
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
    let events = Arc::new(EventRecorder::new(
        client.clone(),
        Reporter {
            component: config.scheduler_name.clone(),
            instance: identity.clone(),
        },
    ));
    let scheduler = scheduler::Scheduler::new(
        client.clone(),
        framework,
        config.scheduler_name.clone(),
        events.clone(),
        metrics,
        synced,
    );
    let result = if config.leader.leader_elect {
        let mut election = config.leader.election(LEASE_NAME);
        election.identity = identity;
        let lock = KubeLeaseLock::new(client, &election, Some(events));
        let elector = LeaderElector::new(lock, election)?;
        let outcome = elector
            .run(&shutdown, |token| {
                leading.store(true, Ordering::SeqCst);
                leader_gauge.set(1);
                scheduler.run(token)
            })
            .await;
        leader_gauge.set(0);
        match outcome {
            Ok(Some(work)) => work.context("scheduling stopped"),
            Ok(None) => Ok(()),
            Err(e) => Err(e).context("leaderelection lost"),
        }
    } else {
        scheduler
            .run(shutdown.clone())
            .await
            .context("scheduling stopped")
    };
    shutdown.cancel();
    if let Some(h) = health {
        h.await.context("health endpoint task")??;
    }
    result
}
