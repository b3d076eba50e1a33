//! A control plane for other crates' component tests (feature `testing`): the real etcd (the
//! Debian `etcd-server` package) in a temporary directory and this apiserver in process, on
//! free ports. Dropping it stops both.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

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

/// Retries `f` until it returns `Some`, or panics after a minute saying `what` (a bound on how
/// long a component may take to catch up, not an assertion on its speed).
pub async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// etcd and an apiserver over it; both stop when this is dropped.
pub struct ControlPlane {
    /// The apiserver's URL, `http://127.0.0.1:<port>`.
    pub url: String,
    pub port: u16,
    stop: CancellationToken,
    etcd: Child,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts etcd and the apiserver (with `extra` apiserver flags) and waits until it is
    /// ready. Must run inside a multi-threaded Tokio runtime.
    pub async fn start(extra: &[&str]) -> ControlPlane {
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let etcd = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd must be installed: run scripts/install-deps");
        let port = free_port();
        // Built from flags, so tests keep up with new apiserver settings and their defaults.
        let config = <crate::Config as clap::Parser>::try_parse_from(
            [
                "miniorch-apiserver",
                "--etcd-servers",
                &etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ]
            .into_iter()
            .chain(extra.iter().copied()),
        )
        .expect("apiserver flags");
        let stop = CancellationToken::new();
        tokio::spawn(crate::run(config, stop.clone()));
        let cp = ControlPlane {
            url: format!("http://127.0.0.1:{port}"),
            port,
            stop,
            etcd,
            _dir: dir,
        };
        cp.wait_ready().await;
        cp
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        // The apiserver holds connections unanswered until its store answers: ask again.
        while !tokio::time::timeout(Duration::from_secs(5), self.ready())
            .await
            .unwrap_or(false)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the apiserver on {} did not become ready within a minute",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let req = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut out = String::new();
        s.write_all(req.as_bytes()).await.is_ok()
            && s.read_to_string(&mut out).await.is_ok()
            && out.starts_with("HTTP/1.1 200")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}
