//! `bench api`: the apiserver over miniorch-store and over the real etcd, in one run: pod
//! creates per second from 64 concurrent clients, create latency at a steady 1,000 per second,
//! LIST of 10,000 pods, how long 1,000 watchers take to see an event, and the apiserver's
//! resident memory holding 10,000 pods.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncBufReadExt;

use crate::stats::{ms, summarize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pods created in the throughput phase (and held for the LIST and memory phases).
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Concurrent clients in the throughput phase.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Creates per second in the steady-rate phase, for this many seconds.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 5)]
    pub rate_seconds: u64,
    /// Concurrent watchers in the watch phase.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Which stores to run over: miniorch, etcd or both.
    #[arg(long, default_value = "both")]
    pub store: String,
}

/// The figures of one run over one store.
struct Figures {
    store: &'static str,
    creates_per_s: f64,
    create: crate::stats::Summary,
    steady: crate::stats::Summary,
    achieved_rate: f64,
    list: crate::stats::Summary,
    list_any: crate::stats::Summary,
    watch: crate::stats::Summary,
    rss_mb: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let stores: Vec<&'static str> = match args.store.as_str() {
        "both" => vec!["miniorch-store", "etcd"],
        "miniorch" => vec!["miniorch-store"],
        "etcd" => vec!["etcd"],
        other => anyhow::bail!("--store must be miniorch, etcd or both, not {other:?}"),
    };
    let mut all = Vec::new();
    for store in stores {
        eprintln!("== apiserver over {store}");
        all.push(one(&args, store).await?);
    }
    println!(
        "| apiserver over | creates/s ({} clients) | create p50 | create p99 | p99 at {}/s (achieved) | LIST {} pods p50 | p99 | LIST rv=0 p99 | watch delivery p99 ({} watchers) | RSS with {} pods |",
        args.clients, args.rate, args.pods, args.watchers, args.pods
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in all {
        println!(
            "| {} | {:.0} | {} | {} | {} ({:.0}/s) | {} | {} | {} | {} | {:.0} MB |",
            f.store,
            f.creates_per_s,
            ms(f.create.p50),
            ms(f.create.p99),
            ms(f.steady.p99),
            f.achieved_rate,
            ms(f.list.p50),
            ms(f.list.p99),
            ms(f.list_any.p99),
            ms(f.watch.p99),
            f.rss_mb
        );
    }
    Ok(())
}

/// A store and an apiserver, killed on drop.
struct Servers {
    children: Vec<Child>,
    api_pid: u32,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start(store: &str) -> anyhow::Result<Servers> {
    let dir = tempfile::Builder::new().prefix("bench-api").tempdir()?;
    let (client, peer, api) = (free_port()?, free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let bin = match store {
        "etcd" => PathBuf::from("etcd"),
        _ => crate::sibling("miniorch-store")?,
    };
    let log = |name: &str| -> anyhow::Result<Stdio> {
        Ok(Stdio::from(std::fs::File::create(dir.path().join(name))?))
    };
    let store_child = Command::new(bin)
        .args(["--name", "default", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(log("store.log")?)
        .stderr(log("store.err")?)
        .spawn()
        .with_context(|| format!("cannot start {store}"))?;
    let api_child = Command::new(crate::sibling("miniorch-apiserver")?)
        .args(["--etcd-servers", &client_url, "--port", &api.to_string()])
        .stdout(log("api.log")?)
        .stderr(log("api.err")?)
        .spawn()
        .context("cannot start the apiserver")?;
    let api_pid = api_child.id();
    Ok(Servers {
        children: vec![api_child, store_child],
        api_pid,
        url: format!("http://127.0.0.1:{api}"),
        _dir: dir,
    })
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn http() -> Http {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(c)
}

async fn request(
    http: &Http,
    method: &str,
    url: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = http.request(req).await?;
    let code = resp.status().as_u16();
    Ok((code, resp.into_body().collect().await?.to_bytes()))
}

fn pod_body(name: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"bench","tier":"web"}}}},"spec":{{"containers":[{{"name":"web","image":"miniorch/demo:1","ports":[{{"containerPort":8080}}],"resources":{{"requests":{{"cpu":"10m","memory":"16Mi"}}}}}}]}}}}"#
    ))
}

async fn wait_ready(http: &Http, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = request(
            http,
            "GET",
            &format!("{url}/api/v1/namespaces/default"),
            Bytes::new(),
        )
        .await
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the apiserver did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn one(args: &Args, store: &'static str) -> anyhow::Result<Figures> {
    let servers = start(store)?;
    let http = http();
    let url = servers.url.clone();
    wait_ready(&http, &url).await?;
    let pods = format!("{url}/api/v1/namespaces/default/pods");

    // 1. Throughput: `clients` workers create `pods` pods as fast as they can.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (http, pods, next, total) = (http.clone(), pods.clone(), next.clone(), args.pods);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                let (code, body) =
                    request(&http, "POST", &pods, pod_body(&format!("p-{i}"))).await?;
                anyhow::ensure!(
                    code == 201,
                    "create failed: {code} {}",
                    String::from_utf8_lossy(&body)
                );
                lat.push(t.elapsed());
            }
        }));
    }
    let mut create = Vec::new();
    for t in tasks {
        create.extend(t.await??);
    }
    let creates_per_s = args.pods as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "   {} creates in {:.1}s",
        args.pods,
        started.elapsed().as_secs_f64()
    );

    // 2. Steady rate: one create every 1/rate seconds, each on its own task.
    let total = (args.rate * args.rate_seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let steady_started = Instant::now();
    for i in 0..total {
        let due = steady_started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (http, pods, tx) = (http.clone(), pods.clone(), tx.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = request(&http, "POST", &pods, pod_body(&format!("s-{i}"))).await;
            let _ = tx.send(r.map(|(code, _)| (code, t.elapsed())));
        });
    }
    drop(tx);
    let mut steady = Vec::new();
    while let Some(r) = rx.recv().await {
        let (code, d) = r?;
        anyhow::ensure!(code == 201, "steady create failed: {code}");
        steady.push(d);
    }
    let achieved_rate = total as f64 / steady_started.elapsed().as_secs_f64();
    // Back to exactly `pods` pods for the LIST phase.
    for i in 0..total {
        request(&http, "DELETE", &format!("{pods}/s-{i}"), Bytes::new()).await?;
    }

    // 3. LIST of all pods, consistent (no resourceVersion) and from the cache (rv=0).
    let mut list = Vec::new();
    let mut list_any = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (code, body) = request(&http, "GET", &pods, Bytes::new()).await?;
        list.push(t.elapsed());
        anyhow::ensure!(
            code == 200 && body.len() > args.pods * 100,
            "list failed: {code}"
        );
        let t = Instant::now();
        request(
            &http,
            "GET",
            &format!("{pods}?resourceVersion=0"),
            Bytes::new(),
        )
        .await?;
        list_any.push(t.elapsed());
    }

    // 4. Watchers: each sees an update of one pod; time from the write's answer to receipt.
    let watch = watchers(&url, args.watchers, &http, &pods).await?;

    let rss_mb = rss_mb(servers.api_pid)?;
    Ok(Figures {
        store,
        creates_per_s,
        create: summarize(&create),
        steady: summarize(&steady),
        achieved_rate,
        list: summarize(&list),
        list_any: summarize(&list_any),
        watch: summarize(&watch),
        rss_mb,
    })
}

async fn watchers(url: &str, n: usize, http: &Http, pods: &str) -> anyhow::Result<Vec<Duration>> {
    let (code, body) = request(http, "GET", &format!("{pods}?limit=1"), Bytes::new()).await?;
    anyhow::ensure!(code == 200, "list failed");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let rv = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let addr = url.trim_start_matches("http://").to_string();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<Instant>(n);
    let path = format!(
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dp-0"
    );
    for _ in 0..n {
        let (addr, path, ready_tx, seen_tx) = (
            addr.clone(),
            path.clone(),
            ready_tx.clone(),
            seen_tx.clone(),
        );
        tokio::spawn(async move {
            // A raw HTTP/1.1 connection per watcher: 1,000 real streams, not one multiplexed.
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                return;
            };
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
            if tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut r = tokio::io::BufReader::new(s);
            let mut line = String::new();
            // Headers, then the chunked event stream: the event line contains "MODIFIED".
            let mut announced = false;
            loop {
                line.clear();
                match r.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if !announced && line == "\r\n" {
                    announced = true;
                    let _ = ready_tx.send(()).await;
                }
                if line.contains("\"MODIFIED\"") {
                    let _ = seen_tx.send(Instant::now()).await;
                    return;
                }
            }
        });
    }
    drop(ready_tx);
    drop(seen_tx);
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("watchers did not all start")?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patch = Bytes::from_static(br#"{"metadata":{"labels":{"seen":"yes"}}}"#);
    let req = hyper::Request::builder()
        .method("PATCH")
        .uri(format!("{pods}/p-0"))
        .header("content-type", "application/merge-patch+json")
        .body(Full::new(patch))?;
    // From the moment the write is sent: what a watcher waits, store commit included.
    let written = Instant::now();
    let resp = http.request(req).await?;
    anyhow::ensure!(
        resp.status().as_u16() == 200,
        "patch failed: {}",
        resp.status()
    );
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), seen_rx.recv()).await {
            Ok(Some(t)) => out.push(t.saturating_duration_since(written)),
            _ => anyhow::bail!("only {} of {n} watchers saw the event", out.len()),
        }
    }
    Ok(out)
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}
