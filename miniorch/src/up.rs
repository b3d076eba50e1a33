//! `miniorch up`: one command from nothing to a working cluster on this machine. It checks
//! Docker and the ports, loads miniorch's images, starts store, apiserver, scheduler,
//! controller and agent as separate processes, writes the kubeconfig, waits for the node to be
//! Ready, and says how to use it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cluster::{self, COMPONENTS, Cluster, Ports};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the cluster keeps its data, logs and kubeconfig.
    #[arg(long, default_value_os_t = miniorch_api::paths::default_data_dir())]
    pub data_dir: PathBuf,
    /// Use seven consecutive ports from this one instead of the standard ports (2379, 2380,
    /// 6443, 10259, 10257, 10248, 10250), e.g. to run a second cluster.
    #[arg(long)]
    pub port_base: Option<u16>,
    /// Name of the node (default: this machine's hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// How long to wait for the node to become Ready.
    #[arg(long, default_value_t = 90)]
    pub timeout_seconds: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let data = absolute(&args.data_dir)?;
    for sub in ["run", "logs", "store"] {
        std::fs::create_dir_all(data.join(sub))
            .with_context(|| format!("cannot create {}", data.join(sub).display()))?;
    }
    let running: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| cluster::running_pid(&data, c).is_some())
        .collect();
    let existing = Cluster::load(&data)?;
    if running.len() == COMPONENTS.len() {
        let c = existing
            .context("processes run but cluster.json is missing: run `miniorch down` first")?;
        println!(
            "miniorch is already up (data in {}); nothing to do.",
            data.display()
        );
        print_usage(&data, &c);
        return Ok(());
    }
    let cluster = match existing {
        Some(c) if args.port_base.is_none() && args.node_name.is_none() => c,
        Some(c) => Cluster {
            ports: match args.port_base {
                Some(b) => Ports::from_base(b)?,
                None => c.ports,
            },
            node_name: args.node_name.clone().unwrap_or(c.node_name),
            id: c.id,
        },
        None => Cluster {
            id: cluster::new_id(),
            ports: match args.port_base {
                Some(b) => Ports::from_base(b)?,
                None => Ports::DEFAULT,
            },
            node_name: args.node_name.clone().unwrap_or_else(hostname),
        },
    };
    if running.is_empty()
        && let Some((what, port)) = cluster.ports.first_in_use()
    {
        anyhow::bail!(
            "port {port} ({what}) is already in use on 127.0.0.1: stop what uses it, or start on other ports with `miniorch up --port-base 20000`"
        );
    }
    let docker = miniorch_agent::runtime::docker::connect(None).await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Docker daemon ({e}): start Docker (e.g. `sudo systemctl start docker`) and run `miniorch up` again")
    })?;
    let loaded = crate::images::ensure(&docker, false).await?;
    if !loaded.is_empty() {
        println!("loaded images: {}", loaded.join(", "));
    }
    cluster.save(&data)?;

    let mut started = Vec::new();
    let result = start_all(
        &data,
        &cluster,
        &mut started,
        Duration::from_secs(args.timeout_seconds),
    )
    .await;
    if let Err(e) = result {
        for (name, child) in started.iter_mut().rev() {
            crate::down::stop(child.id(), name, Duration::from_secs(5)).await;
            let _ = child.wait();
            let _ = std::fs::remove_file(cluster::pid_file(&data, name));
        }
        return Err(e.context(format!(
            "miniorch up failed; the logs are in {}",
            data.join("logs").display()
        )));
    }
    println!("miniorch is up (data in {}):", data.display());
    for c in COMPONENTS {
        if let Some(pid) = cluster::running_pid(&data, c) {
            println!(
                "  {c:<11} pid {pid:<7} log {}",
                cluster::log_file(&data, c).display()
            );
        }
    }
    print_usage(&data, &cluster);
    Ok(())
}

fn print_usage(data: &Path, c: &Cluster) {
    let kubeconfig = miniorch_api::paths::kubeconfig_in(data);
    println!();
    println!("  apiserver   {}", c.api_url());
    println!("  node        {} (Ready)", c.node_name);
    println!();
    println!("Try it:");
    println!("  mctl get nodes");
    println!("  mctl apply -f examples/pod.yaml && mctl get pods -o wide");
    println!("  KUBECONFIG={} kubectl get pods", kubeconfig.display());
    if data != miniorch_api::paths::default_data_dir() {
        println!(
            "  (mctl: pass --kubeconfig {} or export KUBECONFIG)",
            kubeconfig.display()
        );
    }
    println!("Stop it with `miniorch down{}`.", data_dir_flag(data));
}

pub fn data_dir_flag(data: &Path) -> String {
    if data == miniorch_api::paths::default_data_dir() {
        String::new()
    } else {
        format!(" --data-dir {}", data.display())
    }
}

async fn start_all(
    data: &Path,
    c: &Cluster,
    started: &mut Vec<(&'static str, Child)>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let kubeconfig = miniorch_api::paths::kubeconfig_in(data);
    let p = c.ports;
    let store_url = format!("http://127.0.0.1:{}", p.store);
    let peer_url = format!("http://127.0.0.1:{}", p.store_peer);
    let deadline = Instant::now() + timeout;
    for component in COMPONENTS {
        if cluster::running_pid(data, component).is_some() {
            continue;
        }
        let args: Vec<String> = match *component {
            "store" => vec![
                "--name".into(),
                "default".into(),
                "--data-dir".into(),
                data.join("store").display().to_string(),
                "--listen-client-urls".into(),
                store_url.clone(),
                "--advertise-client-urls".into(),
                store_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                format!("default={peer_url}"),
            ],
            "apiserver" => vec![
                "--etcd-servers".into(),
                store_url.clone(),
                "--bind-address".into(),
                "127.0.0.1".into(),
                "--port".into(),
                p.apiserver.to_string(),
            ],
            "scheduler" => vec![
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--port".into(),
                p.scheduler.to_string(),
            ],
            "controller" => vec![
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--port".into(),
                p.controller.to_string(),
            ],
            "agent" => vec![
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--cluster-id".into(),
                c.id.clone(),
                "--node-name".into(),
                c.node_name.clone(),
                "--healthz-port".into(),
                p.agent.to_string(),
                "--port".into(),
                p.kubelet.to_string(),
            ],
            other => anyhow::bail!("unknown component {other}"),
        };
        started.push((component, spawn(data, component, &args)?));
        match *component {
            "store" => wait_port(p.store, deadline, data, started).await?,
            "apiserver" => {
                wait_ready(&format!("{}/readyz", c.api_url()), deadline, data, started).await?;
                std::fs::write(&kubeconfig, cluster::kubeconfig(&c.api_url()))
                    .with_context(|| format!("cannot write {}", kubeconfig.display()))?;
            }
            _ => {}
        }
    }
    wait_node_ready(c, &kubeconfig, deadline, data, started).await
}

/// Starts `miniorch <component> ARGS` in its own process group, logging to its log file.
fn spawn(data: &Path, component: &str, args: &[String]) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the miniorch executable")?;
    let log_path = cluster::log_file(data, component);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let child = Command::new(exe)
        .arg(component)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal later does not stop the cluster.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {component}"))?;
    std::fs::write(cluster::pid_file(data, component), child.id().to_string())?;
    Ok(child)
}

/// Fails, quoting the end of its log, if a component this `up` started has exited.
fn check_alive(data: &Path, started: &mut [(&'static str, Child)]) -> anyhow::Result<()> {
    for (component, child) in started.iter_mut() {
        if !matches!(child.try_wait(), Ok(None)) {
            let log = cluster::log_file(data, component);
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            anyhow::bail!(
                "{component} exited at start:\n  {}",
                last.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            );
        }
    }
    Ok(())
}

async fn wait_port(
    port: u16,
    deadline: Instant,
    data: &Path,
    started: &mut [(&'static str, Child)],
) -> anyhow::Result<()> {
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        check_alive(data, started)?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the store did not open port {port} in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ready(
    url: &str,
    deadline: Instant,
    data: &Path,
    started: &mut [(&'static str, Child)],
) -> anyhow::Result<()> {
    loop {
        if crate::status::http_get(url)
            .await
            .is_ok_and(|(code, _)| code == 200)
        {
            return Ok(());
        }
        check_alive(data, started)?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the apiserver was not ready in time ({url})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_node_ready(
    c: &Cluster,
    kubeconfig: &Path,
    deadline: Instant,
    data: &Path,
    started: &mut [(&'static str, Child)],
) -> anyhow::Result<()> {
    let config = miniorch_api::client::from_kubeconfig_file(kubeconfig).await?;
    let client = miniorch_api::client::build(config, "miniorch-up")?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    loop {
        if let Ok(Some(n)) = nodes.get_opt(&c.node_name).await {
            let ready = n
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|cond| cond.type_ == "Ready" && cond.status == "True");
            if ready {
                return Ok(());
            }
        }
        check_alive(data, started)?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {} did not become Ready in time",
            c.node_name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| miniorch_api::names::is_dns1123_subdomain(h))
        .unwrap_or_else(|| "miniorch".into())
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}
