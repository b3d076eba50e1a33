//! `miniorch down`: stops every component `up` started and removes every container and
//! network its agent made. The data directory stays, so `up` brings the same cluster back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cluster::{self, COMPONENTS, Cluster};
use crate::signal;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data directory of the cluster to stop.
    #[arg(long, default_value_os_t = miniorch_api::paths::default_data_dir())]
    pub data_dir: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let data = if args.data_dir.is_absolute() {
        args.data_dir.clone()
    } else {
        std::env::current_dir()?.join(&args.data_dir)
    };
    let cluster = Cluster::load(&data)?;
    let mut stopped = 0;
    for component in COMPONENTS.iter().rev() {
        if let Some(pid) = cluster::running_pid(&data, component) {
            stop(pid, component, Duration::from_secs(10)).await;
            stopped += 1;
        }
        let _ = std::fs::remove_file(cluster::pid_file(&data, component));
    }
    let removed = match &cluster {
        Some(c) => remove_containers(&c.id).await?,
        None => 0,
    };
    if cluster.is_none() && stopped == 0 {
        println!("no miniorch cluster in {}: nothing to stop", data.display());
        return Ok(());
    }
    println!(
        "miniorch is down: stopped {stopped} processes, removed {removed} containers (data kept in {})",
        data.display()
    );
    Ok(())
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
pub async fn stop(pid: u32, name: &str, grace: Duration) {
    if !signal::send(pid, signal::TERM) {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{name} (pid {pid}) did not stop within {grace:?}; killing it");
    signal::send(pid, signal::KILL);
    while alive(pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) no longer runs.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Removes the containers and networks labelled with the cluster id; returns how many
/// containers went.
async fn remove_containers(id: &str) -> anyhow::Result<usize> {
    use bollard::query_parameters::{
        ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
    };
    let docker = match miniorch_agent::runtime::docker::connect(None).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("warning: cannot reach Docker to remove the cluster's containers: {e}");
            return Ok(0);
        }
    };
    let label = format!("{}={id}", miniorch_agent::runtime::docker::labels::CLUSTER);
    let filters = std::collections::HashMap::from([("label".to_string(), vec![label.clone()])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let mut removed = 0;
    for c in containers {
        let Some(cid) = c.id else { continue };
        match docker
            .remove_container(
                &cid,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(()) => removed += 1,
            Err(e) => eprintln!("warning: cannot remove container {cid}: {e}"),
        }
    }
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?;
    for n in networks {
        if let Some(name) = n.name
            && let Err(e) = docker.remove_network(&name).await
        {
            eprintln!("warning: cannot remove network {name}: {e}");
        }
    }
    Ok(removed)
}
