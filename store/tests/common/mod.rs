//! Shared harness for the integration tests: start the real `miniorch-store` binary (or real
//! etcd) on free ports in a temporary data dir, run the real `etcdctl` against it, and talk
//! gRPC with the generated clients.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use miniorch_store::pb::etcdserverpb::RangeRequest;
use miniorch_store::pb::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

/// A port nobody listens on right now, and never handed out before in this process: the
/// kernel may give a released ephemeral port again, and two parts of one test (a store's peer
/// port and an apiserver's port) must not get the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("an ephemeral port")
            .port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// The `etcdctl` binary; the test fails (never skips) when it is missing.
pub fn etcdctl_path() -> PathBuf {
    which("etcdctl").unwrap_or_else(|| {
        panic!("etcdctl not found on PATH: install the Debian package etcd-client (apt-get install etcd-client)")
    })
}

/// The `etcd` binary, for differential tests.
pub fn etcd_path() -> PathBuf {
    which("etcd").unwrap_or_else(|| {
        panic!("etcd not found on PATH: install the Debian package etcd-server (apt-get install etcd-server)")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Which server a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Miniorch,
    Etcd,
}

/// A running server process; killed when dropped.
pub struct Server {
    pub kind: Kind,
    pub name: String,
    pub dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    /// `--initial-cluster`; empty means this member alone.
    pub initial_cluster: String,
    pub extra: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Starts a single-member server with `dir` as its data dir and waits until it serves.
    pub fn start(kind: Kind, dir: &Path) -> Server {
        Self::start_on(kind, dir, free_port(), free_port(), &[])
    }

    pub fn start_on(
        kind: Kind,
        dir: &Path,
        client_port: u16,
        peer_port: u16,
        extra: &[&str],
    ) -> Server {
        let mut s = Server::member(kind, "m1", dir, client_port, peer_port, "", extra);
        s.spawn();
        s.wait_ready();
        s
    }

    /// A member of a cluster, not started yet.
    pub fn member(
        kind: Kind,
        name: &str,
        dir: &Path,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
        extra: &[&str],
    ) -> Server {
        Server {
            kind,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            client_port,
            peer_port,
            initial_cluster: initial_cluster.to_string(),
            extra: extra.iter().map(|e| e.to_string()).collect(),
            child: None,
            log: dir.with_extension("log"),
        }
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = self.peer_url();
        let cluster = if self.initial_cluster.is_empty() {
            format!("{}={peer}", self.name)
        } else {
            self.initial_cluster.clone()
        };
        let bin = match self.kind {
            Kind::Miniorch => PathBuf::from(env!("CARGO_BIN_EXE_miniorch-store")),
            Kind::Etcd => etcd_path(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        let mut cmd = Command::new(bin);
        cmd.args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster])
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn server"));
    }

    /// Waits until a linearizable read succeeds (so a leader exists).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let endpoint = self.endpoint();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("server exited early ({status}); log:\n{}", self.log_text());
            }
            let ok = rt.block_on(async {
                let Ok(mut c) = KvClient::connect(endpoint.clone()).await else {
                    return false;
                };
                c.range(RangeRequest {
                    key: b"health".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok()
            });
            if ok {
                return;
            }
            if Instant::now() > deadline {
                panic!("server did not become ready; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the same member again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }

    /// True once the process has exited on its own.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::connect(self.endpoint()).await.expect("connect")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// Runs `etcdctl` against this server.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_stdin(args, None)
    }

    pub fn ctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(etcdctl_path());
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcdctl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("etcdctl output")
    }

    /// Runs `etcdctl`, asserts success and returns its standard output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An `n`-member miniorch-store cluster bootstrapped from `--initial-cluster` (members `m0`..),
/// each serving once started.
pub fn cluster(dir: &std::path::Path, n: usize) -> Vec<Server> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Server> = ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| {
            Server::member(
                Kind::Miniorch,
                &format!("m{i}"),
                &dir.join(format!("m{i}")),
                *c,
                *p,
                &initial,
                &[],
            )
        })
        .collect();
    for m in &mut members {
        m.spawn();
    }
    for m in &mut members {
        m.wait_ready();
    }
    members
}
