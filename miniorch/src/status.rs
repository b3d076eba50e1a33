//! `miniorch status`: is each component running and healthy, is the node Ready, who leads.
//! Exits non-zero when something is down, so scripts can use it.

use std::path::PathBuf;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::cluster::{self, COMPONENTS, Cluster};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data directory of the cluster to report on.
    #[arg(long, default_value_os_t = miniorch_api::paths::default_data_dir())]
    pub data_dir: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let data = if args.data_dir.is_absolute() {
        args.data_dir.clone()
    } else {
        std::env::current_dir()?.join(&args.data_dir)
    };
    let Some(c) = Cluster::load(&data)? else {
        println!(
            "no miniorch cluster in {} (start one with `miniorch up{}`)",
            data.display(),
            crate::up::data_dir_flag(&data)
        );
        std::process::exit(1);
    };
    let p = c.ports;
    println!("miniorch cluster {} (data in {})", c.id, data.display());
    println!("{:<12}{:<10}{:<9}DETAIL", "COMPONENT", "STATE", "PID");
    let mut all_up = true;
    for component in COMPONENTS {
        let pid = cluster::running_pid(&data, component);
        let health = match *component {
            "store" => Some(format!("http://127.0.0.1:{}", p.store)),
            "apiserver" => Some(format!("{}/readyz", c.api_url())),
            "scheduler" => Some(format!("http://127.0.0.1:{}/healthz", p.scheduler)),
            "controller" => Some(format!("http://127.0.0.1:{}/healthz", p.controller)),
            "agent" => Some(format!("http://127.0.0.1:{}/healthz", p.agent)),
            _ => None,
        };
        let (state, detail) = match (pid, health) {
            (None, _) => {
                all_up = false;
                (
                    "stopped",
                    format!("see {}", cluster::log_file(&data, component).display()),
                )
            }
            (Some(_), Some(url)) if *component == "store" => {
                let port_open = tokio::net::TcpStream::connect(("127.0.0.1", p.store))
                    .await
                    .is_ok();
                (if port_open { "running" } else { "starting" }, url)
            }
            (Some(_), Some(url)) => match http_get(&url).await {
                Ok((200, _)) => ("healthy", url),
                Ok((code, body)) => ("unhealthy", format!("{url}: {code} {}", body.trim())),
                Err(_) => ("running", format!("{url} not answering")),
            },
            (Some(_), None) => ("running", String::new()),
        };
        println!(
            "{component:<12}{state:<10}{:<9}{detail}",
            pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    match node_and_leaders(&data, &c).await {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
        }
        Err(e) => {
            all_up = false;
            println!("cannot ask the apiserver: {e:#}");
        }
    }
    if !all_up {
        std::process::exit(1);
    }
    Ok(())
}

async fn node_and_leaders(data: &std::path::Path, c: &Cluster) -> anyhow::Result<Vec<String>> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;
    let config =
        miniorch_api::client::from_kubeconfig_file(&miniorch_api::paths::kubeconfig_in(data))
            .await?;
    let client = miniorch_api::client::build(config, "miniorch-status")?;
    let mut lines = Vec::new();
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    for n in nodes.list(&Default::default()).await?.items {
        let ready = n
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| {
                if c.status == "True" {
                    "Ready".to_string()
                } else {
                    format!("NotReady ({})", c.reason.unwrap_or_default())
                }
            })
            .unwrap_or_else(|| "Unknown".into());
        lines.push(format!(
            "node {}: {ready}",
            n.metadata.name.unwrap_or_default()
        ));
    }
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, "kube-system");
    for name in ["kube-scheduler", "kube-controller-manager"] {
        if let Ok(Some(l)) = leases.get_opt(name).await {
            let holder = l
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_else(|| "<none>".into());
            lines.push(format!("leader of {name}: {holder}"));
        }
    }
    let _ = c;
    Ok(lines)
}

/// GET `url` with a short timeout: (status code, body).
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(2), client.get(uri))
        .await
        .context("timed out")??;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}
