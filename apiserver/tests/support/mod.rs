//! Harness for the apiserver's component tests: a store (miniorch-store or the real etcd) and
//! an apiserver on free ports in a temporary directory, and the real `kubectl` against them.
//! Every test runs on both stores: the apiserver knows only the etcd v3 API.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Which store runs under the apiserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Miniorch,
    Etcd,
}

pub const STORES: [Store; 2] = [Store::Miniorch, Store::Etcd];

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

fn which(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run scripts/install-deps"))
}

/// A binary of this workspace (built by `cargo build --workspace --all-targets`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let apiserver = PathBuf::from(env!("CARGO_BIN_EXE_miniorch-apiserver"));
    let p = apiserver.parent().expect("target dir").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` first",
        p.display()
    );
    p
}

/// A store and an apiserver; both processes are killed on drop.
pub struct Api {
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub store_url: String,
    pub url: String,
    pub port: u16,
    children: Vec<Child>,
    cache: tempfile::TempDir,
}

impl Api {
    pub fn start(store: Store) -> Api {
        Api::start_with(store, &[])
    }

    /// Like `start`, with extra apiserver flags.
    pub fn start_with(store: Store, apiserver_args: &[&str]) -> Api {
        let dir = tempfile::Builder::new()
            .prefix("apiserver-test")
            .tempdir()
            .expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let store_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data = dir.path().join("store");
        let mut cmd = match store {
            Store::Miniorch => Command::new(workspace_bin("miniorch-store")),
            Store::Etcd => Command::new(which("etcd")),
        };
        cmd.args(["--name", "default", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &store_url,
                "--advertise-client-urls",
                &store_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")]);
        let store_child = spawn(cmd, &dir.path().join("store.log"));
        let port = free_port();
        let mut api = Command::new(env!("CARGO_BIN_EXE_miniorch-apiserver"));
        api.args(["--etcd-servers", &store_url, "--port", &port.to_string()])
            .args(apiserver_args);
        let api_child = spawn(api, &dir.path().join("apiserver.log"));
        let a = Api {
            store,
            url: format!("http://127.0.0.1:{port}"),
            port,
            store_url,
            children: vec![api_child, store_child],
            cache: tempfile::tempdir().expect("cache dir"),
            dir,
        };
        std::fs::write(a.kubeconfig(), kubeconfig(&a.url)).expect("kubeconfig");
        a.wait_ready();
        a
    }

    /// Starts one more apiserver over the same store; its URL.
    pub fn add_apiserver(&mut self) -> String {
        let port = free_port();
        let mut api = Command::new(env!("CARGO_BIN_EXE_miniorch-apiserver"));
        api.args([
            "--etcd-servers",
            &self.store_url,
            "--port",
            &port.to_string(),
        ]);
        let log = self.dir.path().join(format!("apiserver-{port}.log"));
        self.children.push(spawn(api, &log));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(&url) {
            assert!(
                Instant::now() < deadline,
                "second apiserver not ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        url
    }

    /// A kube-rs client for `url` (this server's when None).
    pub fn client(&self, url: Option<&str>) -> kube::Client {
        let uri: http::Uri = url.unwrap_or(&self.url).parse().expect("url");
        kube::Client::try_from(kube::Config::new(uri)).expect("client")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ready(&self.url) {
                // The system namespaces are created just after the store answers.
                if self.kubectl(&["get", "ns", "default"]).status.success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "apiserver on {:?} not ready:\n{}",
                self.store,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- apiserver.log\n{}\n--- store.log (tail)\n{}",
            read("apiserver.log"),
            tail(&read("store.log"), 20)
        )
    }

    /// Runs the real kubectl against this server (fresh discovery cache per server).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(which("kubectl"));
        cmd.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        let out = match stdin {
            None => cmd.output().expect("kubectl"),
            Some(input) => {
                use std::io::Write;
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("kubectl");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(input.as_bytes())
                    .expect("write");
                child.wait_with_output().expect("kubectl")
            }
        };
        eprintln!(
            "[{:?}] $ kubectl {}\n{}{}",
            self.store,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed on {:?}: {}",
            args.join(" "),
            self.store,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl <args> -o json` that must succeed, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl -o json")
    }

    /// kubectl that must fail; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {} should fail on {:?}: {}",
            args.join(" "),
            self.store,
            text(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `curl` with a method, body and content type; (status code, body).
    pub fn curl(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let header = format!("Content-Type: {content_type}");
        let url = format!("{}{path}", self.url);
        let mut args = vec!["-X", method, "-H", &header];
        if !body.is_empty() {
            args.extend(["--data-binary", body]);
        }
        args.push(&url);
        curl(&args, 60)
    }
}

/// Whether the apiserver at `url` says it is ready (an unanswered probe gives up after 5 s).
fn ready(url: &str) -> bool {
    (200..400).contains(&curl(&[&format!("{url}/readyz")], 5).0)
}

/// `curl -s <args>`, given at most `max_secs`: (status code, body); code 0 when no answer came.
pub fn curl(args: &[&str], max_secs: u32) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", &max_secs.to_string()])
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or((&s, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

impl Drop for Api {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().expect("log"))
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: u\ncurrent-context: t\nusers:\n- name: u\n  user: {{}}\n"
    )
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` until it is true (at most 20 s).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
