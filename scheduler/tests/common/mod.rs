//! A real control plane for integration tests: etcd (the Debian `etcd`, or `$MINIORCH_ETCD`)
//! and `miniorch-apiserver` (built in the same target directory as the test, or
//! `$MINIORCH_APISERVER`) on free ports in a temporary directory, plus helpers to run a
//! component binary against it and to wait for what it should do. Every process is killed
//! when its handle is dropped. Shared by the scheduler's and the controller's tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use kube::api::{Api, ListParams, PostParams};
use serde::de::DeserializeOwned;

/// A child process killed on drop; its output goes to `<dir>/<name>.log`.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin args` with output to `dir/name.log`.
    pub fn spawn(dir: &Path, name: &str, bin: &Path, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{signal} {} failed", self.name);
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it printed so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // It may be stopped (SIGSTOP) by a test; SIGKILL works regardless.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// A binary next to the test's own component binary (same target dir and profile), unless
/// `env` names one.
pub fn sibling_binary(component_exe: &str, name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let path = Path::new(component_exe)
        .parent()
        .expect("binary has a directory")
        .join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (`cargo build -p {name}` with the same CARGO_TARGET_DIR), or set ${env}",
        path.display()
    );
    path
}

/// etcd + apiserver in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub server: String,
    pub client: kube::Client,
    component_exe: String,
    etcd: Proc,
    pub apiserver: Proc,
}

impl Cluster {
    /// Starts a fresh control plane; `component_exe` is the tested binary
    /// (`env!("CARGO_BIN_EXE_...")`), next to which the apiserver is looked for.
    pub async fn start(component_exe: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let etcd_bin = std::env::var("MINIORCH_ETCD").unwrap_or_else(|_| "etcd".into());
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Proc::spawn(
            dir.path(),
            "etcd",
            Path::new(&etcd_bin),
            &[
                "--name".into(),
                "default".into(),
                "--data-dir".into(),
                dir.path().join("etcd").display().to_string(),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--advertise-client-urls".into(),
                client_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                format!("default={peer_url}"),
            ],
        );
        let apiserver_bin =
            sibling_binary(component_exe, "miniorch-apiserver", "MINIORCH_APISERVER");
        let apiserver = Proc::spawn(
            dir.path(),
            "apiserver",
            &apiserver_bin,
            &[
                "--etcd-servers".into(),
                client_url,
                "--bind-address".into(),
                "127.0.0.1".into(),
                "--port".into(),
                api_port.to_string(),
            ],
        );
        let server = format!("http://127.0.0.1:{api_port}");
        let config = kube::Config::new(server.parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let mut cluster = Cluster {
            dir,
            server,
            client,
            component_exe: component_exe.to_string(),
            etcd,
            apiserver,
        };
        cluster.wait_ready().await;
        cluster
    }

    async fn wait_ready(&mut self) {
        let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        for _ in 0..300 {
            if let Ok(list) = ns.list(&ListParams::default()).await
                && list
                    .items
                    .iter()
                    .any(|n| n.metadata.name.as_deref() == Some("kube-node-lease"))
            {
                return;
            }
            assert!(self.etcd.running(), "etcd exited:\n{}", self.etcd.logs());
            assert!(
                self.apiserver.running(),
                "apiserver exited:\n{}",
                self.apiserver.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("apiserver not ready in 30 s:\n{}", self.apiserver.logs());
    }

    /// Runs the tested component binary against this cluster with `args` (after `--server`).
    pub fn run(&self, name: &str, args: &[&str]) -> Proc {
        let mut all = vec!["--server".to_string(), self.server.clone()];
        all.extend(args.iter().map(|s| s.to_string()));
        Proc::spawn(self.dir.path(), name, Path::new(&self.component_exe), &all)
    }

    /// Creates a cluster-scoped object given as JSON (`serde_json::json!`).
    pub async fn create<K>(&self, value: serde_json::Value) -> K
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        create_with(Api::all(self.client.clone()), value).await
    }

    /// Creates an object in `namespace`.
    pub async fn create_in<K>(&self, namespace: &str, value: serde_json::Value) -> K
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        create_with(Api::namespaced(self.client.clone(), namespace), value).await
    }
}

async fn create_with<K>(api: Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let text = value.to_string();
    let obj: K = serde_json::from_value(value).expect("test object parses");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create failed: {e}\n{text}"))
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `timeout`
/// (a generous bound for a slow machine, never an assertion about speed).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain HTTP GET of `path` on 127.0.0.1:`port`: (status code, body).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The current time in the API's format.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}
