//! miniorch-proxy, the service proxy (kube-proxy in iptables mode): watches Services and
//! EndpointSlices and keeps this node's nat/filter rules in line with them, so that a
//! connection to a ClusterIP, NodePort, external or load balancer IP reaches a ready endpoint.
//!
//! Layout: [`model`] joins the API objects into plain service ports (pure), [`render`] turns
//! them into `iptables-restore` input (pure), [`apply`] is the narrow trait over the iptables
//! commands and one sync, [`runner`] is the thin loop that watches and syncs, [`ipvs`] only
//! detects whether IPVS mode could run.

pub mod apply;
pub mod ipvs;
pub mod model;
pub mod render;
pub mod runner;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use miniorch_api::client::ClientArgs;
use tokio_util::sync::CancellationToken;

pub use render::{NodeConfig, render_iptables};

/// How services are programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// nat/filter rules applied with one `iptables-restore` per sync.
    Iptables,
    /// IPVS virtual servers (needs the ip_vs kernel module).
    Ipvs,
}

/// The proxy's flags (upstream's names where upstream has them).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "miniorch-proxy",
    version,
    about = "miniorch service proxy: programs Services into this node's iptables"
)]
pub struct Config {
    /// How to reach the apiserver.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Name of this node: its endpoints serve the `Local` traffic policies (default: the
    /// hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Which proxy mode to use.
    #[arg(long, value_enum, default_value = "iptables")]
    pub mode: Mode,
    /// The pod network, e.g. 10.244.0.0/16: traffic to a cluster IP from outside it is
    /// masqueraded so replies come back through this node.
    #[arg(long)]
    pub cluster_cidr: Option<model::Ipv4Cidr>,
    /// Masquerade all traffic sent to cluster IPs.
    #[arg(long)]
    pub masquerade_all: bool,
    /// Resync everything at least this often, e.g. 30s, 1m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,
    /// Never resync more often than this (changes in between are coalesced), e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// Port of /healthz (all interfaces); 0 disables it.
    #[arg(long, default_value_t = 10256)]
    pub healthz_port: u16,
    /// Port of /metrics (127.0.0.1); 0 disables it.
    #[arg(long, default_value_t = 10249)]
    pub metrics_port: u16,
    /// Program the rules of this network namespace (`ip netns exec NAME`), for tests and labs.
    #[arg(long)]
    pub netns: Option<String>,
    /// Remove every rule and chain the proxy made, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// A duration such as `30s`, `500ms`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 500ms, 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// Runs the proxy until `shutdown`. Rules stay in place when it stops (traffic keeps flowing;
/// a restarted proxy takes them over); `--cleanup` removes them.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.mode == Mode::Ipvs {
        ipvs::check(&ipvs::HostKernel)?;
    }
    let ipt = Arc::new(apply::Commands {
        netns: config.netns.clone(),
        iptables: None,
    });
    if config.cleanup {
        apply::cleanup(ipt.as_ref())
            .await
            .context("removing the proxy's iptables rules")?;
        tracing::info!("removed the proxy's iptables rules and chains");
        return Ok(());
    }
    let node_name = match &config.node_name {
        Some(n) => n.clone(),
        None => hostname().context("cannot tell this node's name; pass --node-name")?,
    };
    let node = NodeConfig {
        node_name,
        cluster_cidr: config.cluster_cidr,
        masquerade_all: config.masquerade_all,
    };
    if node.cluster_cidr.is_none() && !node.masquerade_all {
        tracing::warn!(
            "no --cluster-cidr: traffic to cluster IPs from outside the pod network is not masqueraded"
        );
    }
    let client = config.client.client("miniorch-proxy").await?;
    let timing = runner::Timing {
        sync_period: config.sync_period,
        min_sync_period: config.min_sync_period,
    };
    let ports = runner::Ports {
        healthz: (config.healthz_port != 0)
            .then(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.healthz_port))),
        metrics: (config.metrics_port != 0)
            .then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, config.metrics_port))),
    };
    tracing::info!(node = %node.node_name, cluster_cidr = ?node.cluster_cidr.map(|c| c.to_string()), netns = ?config.netns, "proxy starting in iptables mode");
    runner::run(client, ipt, node, timing, ports, shutdown).await
}

/// This machine's hostname, lowercased as node names are.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading /proc/sys/kernel/hostname")?;
    let name = name.trim().to_lowercase();
    anyhow::ensure!(!name.is_empty(), "the hostname is empty");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        let cases = [
            ("30s", Ok(Duration::from_secs(30))),
            ("500ms", Ok(Duration::from_millis(500))),
            ("2m", Ok(Duration::from_secs(120))),
            ("1h", Ok(Duration::from_secs(3600))),
            ("0s", Err("more than zero")),
            ("s", Err("not a duration")),
            ("5d", Err("unknown unit")),
        ];
        for (input, want) in cases {
            match (parse_duration(input), want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{input}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{input}: {g}"),
                (g, w) => panic!("{input}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn flags_default_as_upstream() {
        let c = Config::try_parse_from(["miniorch-proxy"]).unwrap();
        assert_eq!(c.mode, Mode::Iptables);
        assert_eq!(c.sync_period, Duration::from_secs(30));
        assert_eq!((c.healthz_port, c.metrics_port), (10256, 10249));
        let c = Config::try_parse_from([
            "miniorch-proxy",
            "--mode",
            "ipvs",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--node-name",
            "n1",
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Ipvs);
        assert_eq!(c.cluster_cidr.unwrap().to_string(), "10.244.0.0/16");
        let err =
            Config::try_parse_from(["miniorch-proxy", "--cluster-cidr", "10.244.0.0"]).unwrap_err();
        assert!(err.to_string().contains("not a CIDR"), "{err}");
    }
}
