//! `bench store`: miniorch-store beside the real etcd (Debian etcd-server) under the same load,
//! in one run. For 1 and 3 members on loopback: 64 and 256 concurrent clients doing puts,
//! linearizable gets and txn compare-and-swaps with 256-byte values (throughput, p50 and p99
//! side by side); the time from a leader SIGKILL to the next acknowledged write; and each
//! member's resident memory holding 100,000 keys of 256 bytes.
//!
//! Both clusters run at the same time and every load step runs on one right after the other,
//! so a noisy disk or a busy core hurts both alike.
//!
//! `BENCH_STORE_LOG` sets the members' `RUST_LOG` (default `warn`), to see inside a slow step:
//! `BENCH_STORE_LOG=miniorch_store=trace` logs every log write and apply with its duration.
//! `BENCH_STORE_KEEP=1` keeps every cluster's data dirs and member logs, and prints where.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use miniorch_store::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use miniorch_store::pb::etcdserverpb::kv_client::KvClient;
use miniorch_store::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use miniorch_store::pb::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest, request_op,
    response_op,
};
use tonic::transport::Channel;

use crate::stats::{Summary, summarize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Concurrent clients, comma-separated.
    #[arg(long, default_value = "64,256")]
    pub clients: String,
    /// Cluster sizes, comma-separated.
    #[arg(long, default_value = "1,3")]
    pub members: String,
    /// Workloads, comma-separated: put, get (linearizable), cas (txn compare-and-swap).
    #[arg(long, default_value = "put,get,cas")]
    pub workloads: String,
    /// Seconds each load step is measured (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Keys written before measuring resident memory.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Leader SIGKILLs timed per 3-member cluster.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// Which stores: miniorch, etcd or both.
    #[arg(long, default_value = "both")]
    pub store: String,
    /// Skip the memory phase.
    #[arg(long)]
    pub no_memory: bool,
    /// Skip the failover phase.
    #[arg(long)]
    pub no_failover: bool,
}

/// The two servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Miniorch,
    Etcd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Miniorch => "miniorch-store",
            Kind::Etcd => "etcd",
        }
    }
}

/// What one load step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Puts to random keys among 100,000.
    Put,
    /// Linearizable single-key gets.
    Get,
    /// Each client swaps its own key: a txn comparing its mod revision, then putting.
    Cas,
}

impl Workload {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "put" => Workload::Put,
            "get" => Workload::Get,
            "cas" => Workload::Cas,
            other => anyhow::bail!("unknown workload {other:?} (put, get, cas)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get (linearizable)",
            Workload::Cas => "txn CAS",
        }
    }
}

fn list<T>(s: &str, parse: impl Fn(&str) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse)
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One member process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cluster of one kind, killed on drop.
struct Cluster {
    kind: Kind,
    bin: PathBuf,
    members: Vec<Member>,
    initial: String,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }
}

impl Cluster {
    async fn start(kind: Kind, n: usize) -> anyhow::Result<Cluster> {
        let bin = match kind {
            Kind::Miniorch => crate::sibling("miniorch-store")?,
            Kind::Etcd => PathBuf::from("etcd"),
        };
        let keep = std::env::var_os("BENCH_STORE_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("bench-store")
            .disable_cleanup(keep)
            .tempdir()?;
        if keep {
            eprintln!(
                "   {} data dirs and logs kept in {}",
                kind.name(),
                dir.path().display()
            );
        }
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                data: dir.path().join(format!("m{i}")),
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            kind,
            bin,
            members,
            initial,
            dir,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        c.wait_ready().await?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let client = m.endpoint();
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))?;
        let child = Command::new(&self.bin)
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-token", "bench"])
            .env(
                "RUST_LOG",
                std::env::var("BENCH_STORE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Waits until every running member answers a linearizable read.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                let ok = async {
                    let mut kv = KvClient::connect(m.endpoint()).await.ok()?;
                    kv.range(RangeRequest {
                        key: b"ready".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .ok()
                }
                .await
                .is_some();
                if ok {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} member {} never became ready",
                    self.kind.name(),
                    m.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The index of the member every running member names as leader.
    async fn leader(&self) -> Option<usize> {
        let mut seen = None;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let ch = Channel::from_shared(m.endpoint())
                .ok()?
                .connect()
                .await
                .ok()?;
            let s = MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await
                .ok()?
                .into_inner();
            if s.leader == 0 || seen.is_some_and(|l| l != s.leader) {
                return None;
            }
            seen = Some(s.leader);
        }
        let leader = seen?;
        for (i, m) in self.members.iter().enumerate() {
            let ch = Channel::from_shared(m.endpoint())
                .ok()?
                .connect()
                .await
                .ok()?;
            let s = MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await
                .ok()?
                .into_inner();
            if s.header.map(|h| h.member_id) == Some(leader) {
                return Some(i);
            }
        }
        None
    }

    /// Sum of user and system CPU time of every member, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        self.members
            .iter()
            .filter_map(Member::pid)
            .filter_map(|pid| cpu_ticks(pid).ok())
            .sum()
    }
}

/// utime + stime of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields
        .get(11)
        .and_then(|v| v.parse().ok())
        .context("utime")?;
    let stime: u64 = fields
        .get(12)
        .and_then(|v| v.parse().ok())
        .context("stime")?;
    Ok(utime + stime)
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

/// Connections to every endpoint, about one per 16 clients, spread evenly.
async fn channels(endpoints: &[String], clients: usize) -> anyhow::Result<Vec<Channel>> {
    let n = clients.div_ceil(16).max(endpoints.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ep = &endpoints[i % endpoints.len()];
        let ch = Channel::from_shared(ep.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connect {ep}"))?;
        out.push(ch);
    }
    Ok(out)
}

/// A small fast generator; the benchmark needs spread, not quality.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The figures of one load step.
struct Step {
    ops_per_s: f64,
    latency: Summary,
    errors: u64,
    cpu_us_per_op: f64,
}

const GET_KEYS: usize = 1000;
const PUT_KEYS: u64 = 100_000;

async fn prefill(endpoints: &[String], value: &[u8]) -> anyhow::Result<()> {
    let mut kv = KvClient::connect(endpoints[0].clone()).await?;
    for i in 0..GET_KEYS {
        kv.put(PutRequest {
            key: format!("get/{i:04}").into_bytes(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

/// The load generator's HTTP/2 connection: requests go straight to hyper, without the tower
/// buffer (and its task hop) of a tonic `Channel`, so the client spends less of the shared
/// cores and both servers get more of them.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

type H2Future = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>
            + Send,
    >,
>;

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = H2Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// One HTTP/2 connection to `endpoint`, driven by the current runtime.
async fn h2_client(endpoint: &str) -> anyhow::Result<KvClient<H2>> {
    let uri: http::Uri = endpoint.parse()?;
    let host = uri.host().context("endpoint without a host")?;
    let port = uri.port_u16().context("endpoint without a port")?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connect {endpoint}"))?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .with_context(|| format!("HTTP/2 handshake with {endpoint}"))?;
    tokio::spawn(conn);
    Ok(KvClient::with_origin(H2(send), uri))
}

/// When a load step measures.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// Runs `clients` closed-loop clients for a warm-up second plus `seconds`, timing every
/// operation completed in the measured window. The clients are spread over one thread per
/// core, each with a single-threaded runtime and its own connections (about one per 16
/// clients, every endpoint used), so a client's requests and answers stay on one thread.
async fn load(
    cluster: &Cluster,
    workload: Workload,
    clients: usize,
    seconds: u64,
    value_bytes: usize,
) -> anyhow::Result<Step> {
    let endpoints = cluster.endpoints();
    let conns = clients.div_ceil(16).max(endpoints.len());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(conns);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let window = Window {
        measure_from: start + Duration::from_secs(1),
        end: start + Duration::from_secs(1 + seconds),
    };
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        // Connection j belongs to thread j % threads; client c uses connection c % conns.
        let mine: Vec<(usize, String)> = (t..conns)
            .step_by(threads)
            .map(|j| (j, endpoints[j % endpoints.len()].clone()))
            .collect();
        let errors = errors.clone();
        handles.push(std::thread::spawn(
            move || -> anyhow::Result<Vec<Duration>> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for (j, endpoint) in mine {
                        let kv = h2_client(&endpoint).await?;
                        for c in (j..clients).step_by(conns) {
                            let (kv, errors) = (kv.clone(), errors.clone());
                            tasks.push(tokio::spawn(client_loop(
                                kv,
                                c,
                                workload,
                                window,
                                value_bytes,
                                errors,
                            )));
                        }
                    }
                    let mut lat = Vec::new();
                    for t in tasks {
                        lat.extend(t.await?);
                    }
                    Ok(lat)
                })
            },
        ));
    }
    // CPU of the servers over the measured window only.
    tokio::time::sleep_until(window.measure_from.into()).await;
    let cpu_before = cluster.cpu_ticks();
    tokio::time::sleep_until(window.end.into()).await;
    let cpu_after = cluster.cpu_ticks();
    let mut all = Vec::new();
    for h in handles {
        let lat = tokio::task::spawn_blocking(move || h.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        all.extend(lat);
    }
    let ops = all.len() as f64;
    let ticks = cpu_after.saturating_sub(cpu_before) as f64;
    Ok(Step {
        ops_per_s: ops / seconds as f64,
        latency: summarize(&all),
        errors: errors.load(Ordering::Relaxed),
        // Clock ticks are 10 ms.
        cpu_us_per_op: if ops > 0.0 {
            ticks * 10_000.0 / ops
        } else {
            0.0
        },
    })
}

/// One closed-loop client: the next request as soon as the previous one is answered.
async fn client_loop(
    mut kv: KvClient<H2>,
    c: usize,
    workload: Workload,
    window: Window,
    value_bytes: usize,
    errors: Arc<AtomicU64>,
) -> Vec<Duration> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ ((c as u64 + 1) * 0x1000_0001));
    let mut lat = Vec::with_capacity(4096);
    let value = vec![b'v'; value_bytes];
    let cas_key = format!("cas/{c:04}").into_bytes();
    let mut cas_rev = 0i64;
    if workload == Workload::Cas {
        match kv
            .put(PutRequest {
                key: cas_key.clone(),
                value: value.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => cas_rev = r.into_inner().header.map_or(0, |h| h.revision),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    loop {
        let t = Instant::now();
        if t >= window.end {
            break;
        }
        let ok = match workload {
            Workload::Put => kv
                .put(PutRequest {
                    key: format!("put/{:06}", rng.next() % PUT_KEYS).into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .is_ok(),
            Workload::Get => kv
                .range(RangeRequest {
                    key: format!("get/{:04}", rng.next() % GET_KEYS as u64).into_bytes(),
                    ..Default::default()
                })
                .await
                .is_ok(),
            Workload::Cas => match kv.txn(cas(&cas_key, cas_rev, &value)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.succeeded {
                        cas_rev = r.header.map_or(cas_rev, |h| h.revision);
                        true
                    } else {
                        // Someone else's swap (only after an error): resync.
                        cas_rev = current_mod(&r).unwrap_or(cas_rev);
                        false
                    }
                }
                Err(_) => false,
            },
        };
        let done = Instant::now();
        if !ok {
            errors.fetch_add(1, Ordering::Relaxed);
        } else if t >= window.measure_from && done <= window.end {
            lat.push(done - t);
        }
    }
    lat
}

fn cas(key: &[u8], rev: i64, value: &[u8]) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::ModRevision(rev)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }],
    }
}

fn current_mod(r: &miniorch_store::pb::etcdserverpb::TxnResponse) -> Option<i64> {
    match r.responses.first()?.response.as_ref()? {
        response_op::Response::ResponseRange(rr) => rr.kvs.first().map(|kv| kv.mod_revision),
        _ => None,
    }
}

/// Kills the leader `kills` times while writers keep writing through the other members, and
/// returns, per kill, the time from the SIGKILL to the first acknowledged write sent after it.
async fn failover(cluster: &mut Cluster, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    for _ in 0..kills {
        cluster.wait_ready().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            if let Some(l) = cluster.leader().await {
                break l;
            }
            anyhow::ensure!(Instant::now() < deadline, "no agreed leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let others: Vec<String> = cluster
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, m)| m.endpoint())
            .collect();
        let killed_at: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
        let first_ack: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..8 {
            let ep = others[w % others.len()].clone();
            let (killed_at, first_ack, stop) = (killed_at.clone(), first_ack.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let Ok(ch) = Channel::from_shared(ep) else {
                    return;
                };
                let ch = ch.connect_lazy();
                let mut kv = KvClient::new(ch);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let sent = Instant::now();
                    let mut req = tonic::Request::new(PutRequest {
                        key: format!("failover/{w}/{}", i % 100).into_bytes(),
                        value: vec![b'f'; 256],
                        ..Default::default()
                    });
                    req.set_timeout(Duration::from_millis(400));
                    let ok = kv.put(req).await.is_ok();
                    let done = Instant::now();
                    if ok && killed_at.get().is_some_and(|k| sent >= *k) {
                        let mut f = first_ack.lock().unwrap_or_else(|p| p.into_inner());
                        if f.is_none_or(|t| done < t) {
                            *f = Some(done);
                        }
                    }
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.members[leader].kill9();
        let _ = killed_at.set(Instant::now());
        let k = *killed_at.get().context("kill time")?;
        let deadline = k + Duration::from_secs(30);
        loop {
            let acked = *first_ack.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = acked {
                out.push(t - k);
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no write acknowledged after a leader kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let _ = w.await;
        }
        cluster.spawn(leader)?;
    }
    cluster.wait_ready().await?;
    Ok(out)
}

/// Writes `keys` distinct keys, then reports each member's resident memory, under load's end
/// and again after every member restarted from its data dir.
async fn memory(
    kind: Kind,
    members: usize,
    keys: usize,
    value_bytes: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut cluster = Cluster::start(kind, members).await?;
    let endpoints = cluster.endpoints();
    let chans = channels(&endpoints, 64).await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..64 {
        let mut kv = KvClient::new(chans[c % chans.len()].clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys as u64 {
                    return anyhow::Ok(());
                }
                kv.put(PutRequest {
                    key: format!("/registry/bench/key-{i:08}").into_bytes(),
                    value: vec![b'm'; value_bytes],
                    ..Default::default()
                })
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Let the last applies and any snapshot settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = cluster
        .members
        .iter()
        .filter_map(Member::pid)
        .filter_map(|p| rss_mb(p).ok())
        .fold(0.0, f64::max);
    for i in 0..members {
        cluster.members[i].kill9();
    }
    for i in 0..members {
        cluster.spawn(i)?;
    }
    cluster.wait_ready().await?;
    // A read of everything, as an apiserver's first LIST would do.
    let mut kv = KvClient::connect(endpoints[0].clone()).await?;
    let all = kv
        .range(RangeRequest {
            key: b"/registry/bench/".to_vec(),
            range_end: b"/registry/bench0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        all.count as usize == keys,
        "{} keys after restart, wrote {keys}",
        all.count
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = cluster
        .members
        .iter()
        .filter_map(Member::pid)
        .filter_map(|p| rss_mb(p).ok())
        .fold(0.0, f64::max);
    Ok((loaded, restarted))
}

fn ms2(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let kinds: Vec<Kind> = match args.store.as_str() {
        "both" => vec![Kind::Miniorch, Kind::Etcd],
        "miniorch" => vec![Kind::Miniorch],
        "etcd" => vec![Kind::Etcd],
        other => anyhow::bail!("--store must be miniorch, etcd or both, not {other:?}"),
    };
    let clients = list(&args.clients, |s| Ok(s.parse::<usize>()?))?;
    let sizes = list(&args.members, |s| Ok(s.parse::<usize>()?))?;
    let workloads = list(&args.workloads, Workload::parse)?;
    let value = vec![b'v'; args.value_bytes];

    let mut rows = Vec::new();
    let mut failovers: Vec<(usize, Kind, Vec<Duration>)> = Vec::new();
    for &n in &sizes {
        let mut clusters = Vec::new();
        for &k in &kinds {
            eprintln!("== starting {} with {n} member(s)", k.name());
            let c = Cluster::start(k, n).await?;
            prefill(&c.endpoints(), &value).await?;
            clusters.push(c);
        }
        for &w in &workloads {
            for &cl in &clients {
                let mut figures = Vec::new();
                for c in &clusters {
                    eprintln!("   {} x{n}: {} with {cl} clients", c.kind.name(), w.name());
                    let step = load(c, w, cl, args.seconds, args.value_bytes).await?;
                    eprintln!(
                        "     {:.0} ops/s p50 {} p99 {} ({} errors, {:.0} µs server CPU/op)",
                        step.ops_per_s,
                        ms2(step.latency.p50),
                        ms2(step.latency.p99),
                        step.errors,
                        step.cpu_us_per_op
                    );
                    figures.push((c.kind, step));
                }
                rows.push((n, w, cl, figures));
            }
        }
        if n >= 3 && !args.no_failover {
            for c in &mut clusters {
                eprintln!("   {} x{n}: leader SIGKILL x{}", c.kind.name(), args.kills);
                let times = failover(c, args.kills).await?;
                eprintln!("     {times:?}");
                failovers.push((n, c.kind, times));
            }
        }
    }
    let mut memories = Vec::new();
    if !args.no_memory {
        for &n in &sizes {
            for &k in &kinds {
                eprintln!("== memory: {} x{n} with {} keys", k.name(), args.keys);
                let (loaded, restarted) = memory(k, n, args.keys, args.value_bytes).await?;
                eprintln!("     {loaded:.0} MB loaded, {restarted:.0} MB restarted");
                memories.push((n, k, loaded, restarted));
            }
        }
    }

    // The tables, miniorch-store first in every pair.
    println!(
        "| members | workload | clients | store | ops/s | p50 | p99 | server CPU/op | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, w, cl, figures) in &rows {
        let base = figures
            .iter()
            .find(|(k, _)| *k == Kind::Etcd)
            .map(|(_, s)| s.ops_per_s);
        for (k, s) in figures {
            let ratio = match (k, base) {
                (Kind::Miniorch, Some(b)) if b > 0.0 => format!(" ({:.2}x)", s.ops_per_s / b),
                _ => String::new(),
            };
            println!(
                "| {n} | {} | {cl} | {} | {:.0}{ratio} | {} | {} | {:.0} µs | {} |",
                w.name(),
                k.name(),
                s.ops_per_s,
                ms2(s.latency.p50),
                ms2(s.latency.p99),
                s.cpu_us_per_op,
                s.errors
            );
        }
    }
    if !failovers.is_empty() {
        println!();
        println!(
            "| members | store | leader SIGKILL → next acknowledged write (each kill) | worst |"
        );
        println!("|---|---|---|---|");
        for (n, k, times) in &failovers {
            let each: Vec<String> = times.iter().map(|t| ms2(*t)).collect();
            let worst = times.iter().max().copied().unwrap_or_default();
            println!(
                "| {n} | {} | {} | {} |",
                k.name(),
                each.join(", "),
                ms2(worst)
            );
        }
    }
    if !memories.is_empty() {
        println!();
        println!(
            "| members | store | RSS per member, {} keys of {} bytes, after loading | after restart |",
            args.keys, args.value_bytes
        );
        println!("|---|---|---|---|");
        for (n, k, loaded, restarted) in &memories {
            println!(
                "| {n} | {} | {loaded:.0} MB | {restarted:.0} MB |",
                k.name()
            );
        }
    }
    Ok(())
}
