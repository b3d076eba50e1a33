//! A store cluster on a network of its own, for fault tests: every member runs the real
//! `miniorch-store` binary inside its own network namespace, with its own address on a private
//! bridge, so a test can cut a member off its peers and heal it again, SIGKILL it and start it
//! again, like a machine in a real cluster.
//!
//! The network, built and torn down by each test (it needs root; the host's own firewall is never
//! touched, only a veth pair on the host and rules inside the test's own namespaces):
//!
//! ```text
//!   host ── veth 10.a.b.254 ──┐
//!                             ├── br0 (in netns <id>-hub)
//!   netns <id>-m0 ── eth0 10.a.b.1 ──┤
//!   netns <id>-m1 ── eth0 10.a.b.2 ──┤
//!   netns <id>-m2 ── eth0 10.a.b.3 ──┘
//! ```
//!
//! The test process talks to the members from the host through the veth. A partition is a set
//! of `iptables DROP` rules inside the isolated member's namespace for its peers' addresses (not
//! for the host's), so a client still reaches the member it is partitioned: that member simply
//! cannot reach the others. Healing flushes those rules. Dropping the cluster kills the
//! processes and deletes the namespaces (which removes the veths and the bridge with them), on
//! success and on panic alike; namespaces left by a test process that was itself killed are
//! removed by the next run.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use miniorch_store::pb::etcdserverpb::cluster_client::ClusterClient;
use miniorch_store::pb::etcdserverpb::kv_client::KvClient;
use miniorch_store::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use miniorch_store::pb::etcdserverpb::{
    HashKvRequest, MemberListRequest, RangeRequest, StatusRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Prefix of every namespace these tests create: `mfo-<pid>-<n>-<role>`.
const PREFIX: &str = "mfo-";
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// Runs a command and panics with its output when it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs a command, ignoring its outcome (cleanup paths).
fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list (iproute2 is needed)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Deletes namespaces left behind by test processes that no longer exist.
fn remove_stale() {
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            sh_quiet(&["ip", "netns", "del", &ns]);
        }
    }
}

/// A /24 in 10/8 that no route or address on the host uses.
fn free_subnet(seed: u64) -> (u8, u8) {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .expect("ip route");
    let routes = String::from_utf8_lossy(&out.stdout).to_string();
    let addrs = Command::new("ip")
        .args(["-4", "addr"])
        .output()
        .expect("ip addr");
    let taken = routes + &String::from_utf8_lossy(&addrs.stdout);
    let mut x = seed ^ u64::from(std::process::id()).rotate_left(17) ^ now_nanos();
    for _ in 0..1000 {
        x = splitmix(x);
        let a = 64 + (x % 180) as u8;
        let b = (x >> 8) as u8;
        if !taken.contains(&format!("10.{a}.{b}.")) && !taken.contains(&format!("10.{a}.0.0/16")) {
            return (a, b);
        }
    }
    panic!("no free 10.x.y.0/24 subnet for the test network")
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One step of SplitMix64.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The test network: a bridge in its own namespace, one namespace per member slot, and a veth
/// from the host. Deleted when dropped.
pub struct Net {
    pub id: String,
    subnet: (u8, u8),
    hub: String,
    host_if: String,
    slots: Vec<String>,
}

impl Net {
    /// Builds the network with `n` member slots.
    pub fn new(n: usize) -> Net {
        remove_stale();
        let k = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{PREFIX}{pid}-{k}");
        let subnet = free_subnet(u64::from(k));
        let mut net = Net {
            hub: format!("{id}-hub"),
            host_if: format!("mfo{pid:x}x{k}"),
            id,
            subnet,
            slots: Vec::new(),
        };
        // From here on, Drop cleans up whatever was made, should a step fail.
        sh(&["ip", "netns", "add", &net.hub]);
        sh(&["ip", "-n", &net.hub, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &net.hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{}-m{i}", net.id);
            sh(&["ip", "netns", "add", &ns]);
            net.slots.push(ns.clone());
            let port = format!("p{i}");
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &net.hub,
            ]);
            sh(&[
                "ip", "-n", &net.hub, "link", "set", &port, "master", "br0", "up",
            ]);
            let addr = format!("{}/24", net.ip(i));
            sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip",
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            &net.hub,
        ]);
        sh(&[
            "ip", "-n", &net.hub, "link", "set", "host", "master", "br0", "up",
        ]);
        let host_addr = format!("{}/24", net.host_ip());
        sh(&["ip", "addr", "add", &host_addr, "dev", &net.host_if]);
        sh(&["ip", "link", "set", &net.host_if, "up"]);
        net
    }

    /// The address of member slot `i`.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, i as u8 + 1)
    }

    /// The host's address on the test network (where the test's clients come from).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 254)
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.slots[i]
    }

    fn ipt(&self, i: usize, args: &[&str]) {
        let mut cmd = vec!["ip", "netns", "exec", self.ns(i), "iptables", "-w"];
        cmd.extend_from_slice(args);
        sh(&cmd);
    }

    /// Cuts slot `i` off every other slot, both ways (its clients still reach it).
    pub fn isolate(&self, i: usize) {
        for j in 0..self.slots.len() {
            if j != i {
                self.cut(i, j);
            }
        }
    }

    /// Cuts the link between `i` and `j` (rules in `i`'s namespace for everything from and to
    /// `j`); both still reach every other slot.
    pub fn cut(&self, i: usize, j: usize) {
        let peer = self.ip(j).to_string();
        self.ipt(i, &["-A", "INPUT", "-s", &peer, "-j", "DROP"]);
        self.ipt(i, &["-A", "OUTPUT", "-d", &peer, "-j", "DROP"]);
    }

    /// Removes every rule in `i`'s namespace.
    pub fn heal(&self, i: usize) {
        self.ipt(i, &["-F"]);
    }

    pub fn heal_all(&self) {
        for i in 0..self.slots.len() {
            self.heal(i);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.slots {
            sh_quiet(&["ip", "netns", "del", ns]);
        }
        sh_quiet(&["ip", "netns", "del", &self.hub]);
        // Gone with its peer in the hub already; this is for a half-built network.
        sh_quiet(&["ip", "link", "del", &self.host_if]);
    }
}

/// One member process, run inside the namespace of its slot.
pub struct Member {
    pub name: String,
    pub slot: usize,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub initial_cluster: String,
    pub extra: Vec<String>,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.ip)
    }

    /// Starts the process (without waiting for it to serve).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let client = self.endpoint();
        let peer = self.peer_url();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open member log");
        let bin = env!("CARGO_BIN_EXE_miniorch-store");
        let mut cmd = Command::new("ip");
        // `ip netns exec` enters the namespace and execs the binary: the child's PID is the
        // member's own, so SIGKILL reaches it directly.
        cmd.args(["netns", "exec", &self.ns, bin])
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(&self.extra)
            // More detail on demand, e.g. NETCLUSTER_LOG=info,openraft=debug.
            .env(
                "RUST_LOG",
                std::env::var("NETCLUSTER_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn member"));
    }

    /// SIGKILL: nothing gets flushed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// True when the process was started and has exited on its own.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => false,
        }
    }

    /// Waits until a linearizable read through this member succeeds.
    pub fn wait_ready(&mut self, rt: &tokio::runtime::Runtime) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.exited() {
                panic!(
                    "{} exited early; log:\n{}",
                    self.name,
                    tail(&self.log_text(), 60)
                );
            }
            let endpoint = self.endpoint();
            let ok = rt.block_on(async {
                KvClient::new(channel(&endpoint, Duration::from_secs(2)))
                    .range(RangeRequest {
                        key: b"health".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready; log:\n{}",
                self.name,
                tail(&self.log_text(), 60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client channel to this member whose every request gives up after `timeout`.
    pub fn channel(&self, timeout: Duration) -> Channel {
        channel(&self.endpoint(), timeout)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A lazily connecting channel: creating it never blocks, a dead server fails the request.
/// Needs a Tokio context (inside the runtime, or after `Runtime::enter`).
pub fn channel(url: &str, timeout: Duration) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy()
}

pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A multi-threaded runtime for the test's clients.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Repeats `f` until it gives `Some`; fails after a generous guard (never a timing assertion).
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Members on a [`Net`]; members are dropped (killed) before the network goes away.
pub struct NetCluster {
    pub members: Vec<Member>,
    pub net: Net,
    pub dir: tempfile::TempDir,
}

impl NetCluster {
    /// Builds the network and starts `n` members bootstrapped together; waits until each serves.
    pub fn start(n: usize, extra: &[&str], rt: &tokio::runtime::Runtime) -> NetCluster {
        let net = Net::new(n);
        let dir = tempfile::tempdir().expect("tempdir");
        let initial = (0..n)
            .map(|i| format!("m{i}=http://{}:{PEER_PORT}", net.ip(i)))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                slot: i,
                ns: net.ns(i).to_string(),
                ip: net.ip(i),
                dir: dir.path().join(format!("m{i}")),
                initial_cluster: initial.clone(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
                log: dir.path().join(format!("m{i}.log")),
            })
            .collect();
        let mut c = NetCluster { members, net, dir };
        eprintln!(
            "test network {}: members at {}..{}, host at {}",
            c.net.id,
            c.net.ip(0),
            c.net.ip(n - 1),
            c.net.host_ip()
        );
        for m in &mut c.members {
            m.spawn();
        }
        for m in &mut c.members {
            m.wait_ready(rt);
        }
        c
    }

    pub fn isolate(&self, i: usize) {
        self.net.isolate(self.members[i].slot);
    }

    pub fn heal(&self, i: usize) {
        self.net.heal(self.members[i].slot);
    }

    /// Cuts the link between members `i` and `j` only.
    pub fn cut(&self, i: usize, j: usize) {
        self.net.cut(self.members[i].slot, self.members[j].slot);
    }

    pub fn heal_all(&self) {
        self.net.heal_all();
    }

    /// (member ID, leader ID it sees) of member `i`, if it answers.
    pub async fn status(&self, i: usize) -> Option<(u64, u64)> {
        let mut c = MaintenanceClient::new(self.members[i].channel(Duration::from_secs(1)));
        let s = c.status(StatusRequest {}).await.ok()?.into_inner();
        Some((s.header?.member_id, s.leader))
    }

    /// The index of the member every answering member among `among` names as leader.
    pub async fn leader_among(&self, among: &[usize]) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for &i in among {
            let (me, l) = self.status(i).await?;
            ids.push((i, me));
            if l == 0 || leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        let leader = leader?;
        ids.iter().find(|(_, me)| *me == leader).map(|(i, _)| *i)
    }

    /// The member ID of member `i`.
    pub async fn member_id(&self, i: usize) -> Option<u64> {
        self.status(i).await.map(|(me, _)| me)
    }

    /// (revision, hash) of member `i`'s whole key space.
    pub async fn hash(&self, i: usize) -> Option<(i64, u32)> {
        let mut c = MaintenanceClient::new(self.members[i].channel(Duration::from_secs(2)));
        let r = c
            .hash_kv(HashKvRequest { revision: 0 })
            .await
            .ok()?
            .into_inner();
        Some((r.header?.revision, r.hash))
    }

    /// Waits until every member answers with the same revision and the same hash.
    pub fn converge(&self, rt: &tokio::runtime::Runtime) -> (i64, u32) {
        let all: Vec<usize> = (0..self.members.len()).collect();
        eventually(
            "every member at the same revision with the same hash",
            || {
                let hashes: Vec<Option<(i64, u32)>> =
                    all.iter().map(|&i| rt.block_on(self.hash(i))).collect();
                let first = hashes[0]?;
                hashes.iter().all(|h| *h == Some(first)).then_some(first)
            },
        )
    }

    /// Keys and values under `prefix` as member `i` has applied them (serializable read).
    pub async fn local_range(&self, i: usize, prefix: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut end = prefix.to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        let mut c = KvClient::new(self.members[i].channel(Duration::from_secs(5)));
        let r = c
            .range(RangeRequest {
                key: prefix.to_vec(),
                range_end: end,
                serializable: true,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        Some(r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    /// The members as member `i` lists them: (ID, name, peer URLs, client URLs).
    pub async fn member_list(
        &self,
        i: usize,
    ) -> Option<Vec<(u64, String, Vec<String>, Vec<String>)>> {
        let mut c = ClusterClient::new(self.members[i].channel(Duration::from_secs(5)));
        let r = c
            .member_list(MemberListRequest { linearizable: true })
            .await
            .ok()?
            .into_inner();
        Some(
            r.members
                .into_iter()
                .map(|m| (m.id, m.name, m.peer_ur_ls, m.client_ur_ls))
                .collect(),
        )
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
        if std::thread::panicking() {
            // The temporary dir goes away: keep the logs where they can be read afterwards.
            for m in &self.members {
                let kept = std::env::temp_dir().join(format!("{}-{}.log", self.net.id, m.name));
                let _ = std::fs::copy(&m.log, &kept);
                eprintln!(
                    "---- last lines of {} (whole log kept in {}) ----\n{}",
                    m.name,
                    kept.display(),
                    tail(&m.log_text(), 40)
                );
            }
        }
    }
}
