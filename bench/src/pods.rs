//! `bench pods`: how long from `create pod` to the pod Running (as the API reports it), against
//! how long raw `docker run -d` of the same image takes on the same machine, in the same run.
//! A pod is more work than one `docker run`: a pause container, the app container joined to its
//! network namespace, scheduling, and two status writes through the API.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::stats::{ms, summarize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pods (and docker runs) to time.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// First of the consecutive ports the benchmark cluster uses.
    #[arg(long, default_value_t = 22000)]
    pub port_base: u16,
}

const IMAGE: &str = "miniorch/demo:latest";

pub async fn run(args: Args) -> anyhow::Result<()> {
    let miniorch = crate::sibling("miniorch")?;
    let data = tempfile::Builder::new()
        .prefix("miniorch-bench")
        .tempdir()?;
    let up = Command::new(&miniorch)
        .args(["up", "--data-dir"])
        .arg(data.path())
        .args([
            "--port-base",
            &args.port_base.to_string(),
            "--node-name",
            "bench",
        ])
        .output()?;
    anyhow::ensure!(
        up.status.success(),
        "miniorch up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let result = measure(&args, data.path()).await;
    let _ = Command::new(&miniorch)
        .args(["down", "--data-dir"])
        .arg(data.path())
        .output();
    let (pods, docker) = result?;
    let (p, d) = (summarize(&pods), summarize(&docker));
    println!("| {} runs, image {IMAGE} | p50 | p99 | mean |", p.n);
    println!("|---|---|---|---|");
    println!(
        "| miniorch: pod create → Running (API watch) | {} | {} | {} |",
        ms(p.p50),
        ms(p.p99),
        ms(p.mean)
    );
    println!(
        "| docker run -d (CLI, one container) | {} | {} | {} |",
        ms(d.p50),
        ms(d.p99),
        ms(d.mean)
    );
    println!();
    println!(
        "ratio p50 {:.2}x, p99 {:.2}x",
        p.p50.as_secs_f64() / d.p50.as_secs_f64(),
        p.p99.as_secs_f64() / d.p99.as_secs_f64()
    );
    Ok(())
}

async fn measure(
    args: &Args,
    data: &std::path::Path,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let config = miniorch_api::client::from_kubeconfig_file(&data.join("kubeconfig")).await?;
    let client = miniorch_api::client::build(config, "bench")?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, "default");
    // One warm-up each, not counted.
    pod_once(&pods, "warmup").await?;
    docker_once()?;
    let mut pod_times = Vec::new();
    let mut docker_times = Vec::new();
    // Interleaved, so a slow phase of the machine hits both alike.
    for i in 0..args.count {
        pod_times.push(pod_once(&pods, &format!("bench-{i}")).await?);
        docker_times.push(docker_once()?);
    }
    Ok((pod_times, docker_times))
}

async fn pod_once(pods: &kube::Api<Pod>, name: &str) -> anyhow::Result<Duration> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "ports": [{"containerPort": 8080}]}]},
    }))?;
    let started = Instant::now();
    let created = pods.create(&PostParams::default(), &pod).await?;
    let uid = created.metadata.uid.unwrap_or_default();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods.clone(), name, conditions::is_pod_running()),
    )
    .await
    .with_context(|| format!("pod {name} did not run within 60 s"))??;
    let took = started.elapsed();
    pods.delete(name, &DeleteParams::default()).await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods.clone(), name, conditions::is_deleted(&uid)),
    )
    .await
    .ok();
    Ok(took)
}

fn docker_once() -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = Command::new("docker")
        .args(["run", "-d", "--label", "io.miniorch.bench=1", IMAGE])
        .output()?;
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    Ok(took)
}
