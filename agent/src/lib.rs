//! miniorch-agent, the node agent (kubelet): registers its Node and keeps its Lease, and runs
//! the pods bound to it as Docker containers around a pause container, reporting their status.
//!
//! Layout: [`sync`] and [`status`] decide (pure), [`spec`] turns pod specs into runtime plans
//! (pure), [`runtime`] is the narrow trait over Docker (and a recording fake), [`pods`] and
//! [`node`] are the thin loops that watch the API and apply decisions, [`events`] writes
//! Events, [`images`] loads miniorch's own images into Docker, [`server`] is the agent's API
//! (logs, exec, stats) that the apiserver passes `kubectl logs`, `exec` and `top` on to.

pub mod events;
pub mod images;
pub mod node;
pub mod pods;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod status;
pub mod sync;

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use miniorch_api::client::ClientArgs;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;
use crate::runtime::docker::{DockerConfig, DockerRuntime};

/// The agent's flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "miniorch-agent",
    version,
    about = "miniorch node agent: runs the pods bound to this node in Docker"
)]
pub struct Config {
    /// How to reach the apiserver.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Name of this node (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// IP address of this node (default: the source address of the default route).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Cluster id: labels every container and names the pod network `miniorch-<id>`.
    #[arg(long, default_value = "default", value_parser = parse_cluster_id)]
    pub cluster_id: String,
    /// Subnet of the pod network when the agent creates it, e.g. 10.88.0.0/16 (default:
    /// Docker picks one).
    #[arg(long, value_parser = parse_cidr)]
    pub pod_cidr: Option<String>,
    /// Docker endpoint, e.g. unix:///var/run/docker.sock (default: $DOCKER_HOST or the local
    /// socket).
    #[arg(long)]
    pub docker_host: Option<String>,
    /// Most pods this node runs (its `pods` capacity).
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Port of the plain-HTTP /healthz endpoint on 127.0.0.1; 0 disables it.
    #[arg(long, default_value_t = 10248)]
    pub healthz_port: u16,
    /// Port of the agent API (container logs, exec, stats: what `kubectl logs`, `exec` and
    /// `top` reach through the apiserver); 0 disables it.
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// Address the agent API listens on (default: the node IP, where the apiserver reaches
    /// it; `0.0.0.0` for every address).
    #[arg(long)]
    pub address: Option<IpAddr>,
    /// Image of the pod sandbox container.
    #[arg(long, default_value = images::PAUSE_IMAGE)]
    pub pause_image: String,
}

/// A cluster id: 1-40 lowercase letters, digits, `-`, `_` or `.`, starting with a letter or
/// digit (it ends up in Docker network names and label values).
fn parse_cluster_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(
            "must be 1-40 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
                .into(),
        )
    }
}

/// An IPv4 or IPv6 CIDR such as `10.88.0.0/16`.
fn parse_cidr(s: &str) -> Result<String, String> {
    let (ip, bits) = s
        .split_once('/')
        .ok_or("expected ADDRESS/BITS, e.g. 10.88.0.0/16")?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits.parse::<u8>() {
        Ok(b) if b <= max => Ok(s.to_string()),
        _ => Err(format!("prefix length must be 0-{max}")),
    }
}

/// Runs the agent until `shutdown`. Pods keep running when it stops: a restarted agent adopts
/// them, and `miniorch down` removes a cluster's containers by label.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node_name = config.node_name.clone().unwrap_or_else(node::hostname);
    anyhow::ensure!(
        miniorch_api::names::is_dns1123_subdomain(&node_name),
        "node name {node_name:?} is not valid: {}",
        miniorch_api::names::DNS1123_SUBDOMAIN_MSG
    );
    let node_ip = match config.node_ip {
        Some(ip) => ip,
        None => node::detect_node_ip().unwrap_or_else(|e| {
            // A machine without a default route (a laptop offline) still runs pods locally.
            tracing::warn!(error = %e, "no default route to take the node IP from; using 127.0.0.1 (pass --node-ip)");
            IpAddr::from([127, 0, 0, 1])
        }),
    };
    let docker = runtime::docker::connect(config.docker_host.as_deref())
        .await
        .context("the agent needs Docker (pass --docker-host if it is not the local socket)")?;
    // Bound before anything else, so a taken port stops the agent at once.
    let api = match config.port {
        0 => None,
        port => Some(AgentApi {
            listener: server::bind(std::net::SocketAddr::new(
                config.address.unwrap_or(node_ip),
                port,
            ))
            .await?,
            io: Arc::new(server::docker::DockerIo::new(docker.clone())),
        }),
    };
    let runtime = Arc::new(DockerRuntime::new(
        docker,
        DockerConfig {
            cluster_id: config.cluster_id.clone(),
            node_name: node_name.clone(),
            node_ip: node_ip.to_string(),
            pause_image: config.pause_image.clone(),
            pod_cidr: config.pod_cidr.clone(),
        },
    ));
    let info = runtime
        .prepare()
        .await
        .context("preparing Docker for pods")?;
    let facts = node::NodeFacts::gather(
        node_name.clone(),
        node_ip.to_string(),
        config.max_pods,
        info.version,
        info.pod_cidr,
        config.port,
    );
    tracing::info!(node = %node_name, ip = %node_ip, runtime = %facts.runtime_version, pod_cidr = ?facts.pod_cidr, "agent starting");
    let client = config.client.client("miniorch-agent").await?;
    run_with(client, facts, runtime, config.healthz_port, api, shutdown).await
}

/// The agent API to serve: its bound listener and the container I/O behind it.
pub struct AgentApi {
    pub listener: tokio::net::TcpListener,
    pub io: Arc<dyn server::io::ContainerIo>,
}

/// Runs the agent's loops over a given client and runtime (tests pass a fake runtime), and
/// the agent API if given one.
pub async fn run_with(
    client: kube::Client,
    facts: node::NodeFacts,
    runtime: Arc<dyn Runtime>,
    healthz_port: u16,
    api: Option<AgentApi>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (recorder, events) = events::Recorder::channel();
    let children = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(events::run_sink(
        client.clone(),
        facts.name.clone(),
        events,
        children.clone(),
    ));
    let manager = pods::PodManager::new(
        runtime.clone(),
        Arc::new(pods::KubePodApi(client.clone())),
        pods::NodeIdentity {
            name: facts.name.clone(),
            ip: facts.ip.clone(),
            cpu_millis: facts.cpu_millis,
            memory_bytes: facts.memory_bytes,
        },
        recorder.clone(),
    );
    if let Some(api) = api {
        let server = Arc::new(server::NodeServer {
            node_name: facts.name.clone(),
            node_ip: facts.ip.clone(),
            pods: manager.clone(),
            runtime: runtime.clone(),
            io: api.io,
            meter: Default::default(),
        });
        tasks.spawn(server::serve(api.listener, server, children.clone()));
    }
    tasks.spawn(manager.run(client.clone(), children.clone()));
    tasks.spawn(node::run(
        client,
        facts,
        runtime,
        recorder,
        children.clone(),
    ));
    if healthz_port != 0 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", healthz_port))
            .await
            .with_context(|| format!("cannot listen on 127.0.0.1:{healthz_port} for /healthz (--healthz-port 0 disables it)"))?;
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let stop = children.clone();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "healthz server failed");
            }
        });
    }
    shutdown.cancelled().await;
    children.cancel();
    // Loops finish their current step; none of them stops a pod.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tracing::info!("agent stopped; its pods keep running");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags() {
        let c = Config::try_parse_from([
            "miniorch-agent",
            "--server",
            "http://127.0.0.1:6443",
            "--node-name",
            "n1",
            "--cluster-id",
            "c1",
            "--pod-cidr",
            "10.88.0.0/16",
        ])
        .unwrap();
        assert_eq!(c.node_name.as_deref(), Some("n1"));
        assert_eq!(c.cluster_id, "c1");
        assert_eq!(c.max_pods, 110);
        assert_eq!(c.healthz_port, 10248);
        assert_eq!((c.port, c.address), (10250, None));
        assert_eq!(c.pause_image, "miniorch/pause:latest");
        for bad in [
            vec!["--cluster-id", "Bad"],
            vec!["--cluster-id", ""],
            vec!["--cluster-id", "-x"],
            vec!["--pod-cidr", "10.88.0.0"],
            vec!["--pod-cidr", "10.88.0.0/33"],
            vec!["--pod-cidr", "x/8"],
            vec!["--node-ip", "nope"],
            vec!["--port", "70000"],
            vec!["--address", "somewhere"],
        ] {
            let mut args = vec!["miniorch-agent"];
            args.extend(&bad);
            assert!(Config::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
