//! The small HTTP endpoint every long-running component serves: `/healthz` and `/livez` (is the
//! process working), `/readyz` (is it ready to do its job, e.g. caches synced) and `/metrics`
//! (Prometheus/OpenMetrics text). Plain HTTP for now; the answers follow upstream's
//! `healthz` package: `ok` with 200, or the failing checks with 500, and `?verbose` lists each
//! check as `[+]name ok` / `[-]name failed: reason withheld`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// A named check: `Ok` when healthy, otherwise why not (logged, not shown to clients).
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Why the endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Serving failed after it started.
    #[error("health endpoint failed: {0}")]
    Serve(std::io::Error),
}

struct Shared {
    healthz: Vec<(String, Check)>,
    readyz: Vec<(String, Check)>,
    metrics: Registry,
}

/// The endpoint being assembled: add checks, then [`HealthServer::bind`].
pub struct HealthServer {
    shared: Shared,
}

impl HealthServer {
    /// An endpoint serving `metrics`, with only the always-passing `ping` check.
    pub fn new(metrics: Registry) -> Self {
        let ping: Check = Arc::new(|| Ok(()));
        HealthServer {
            shared: Shared {
                healthz: vec![("ping".into(), ping.clone())],
                readyz: vec![("ping".into(), ping)],
                metrics,
            },
        }
    }

    /// Adds a liveness check (also part of readiness, as upstream's readyz includes healthz).
    pub fn healthz_check(mut self, name: &str, check: Check) -> Self {
        self.shared.healthz.push((name.to_string(), check.clone()));
        self.shared.readyz.push((name.to_string(), check));
        self
    }

    /// Adds a readiness-only check.
    pub fn readyz_check(mut self, name: &str, check: Check) -> Self {
        self.shared.readyz.push((name.to_string(), check));
        self
    }

    /// Listens on `addr`, so a taken port is reported before the component starts its work.
    pub async fn bind(self, addr: SocketAddr) -> Result<BoundHealthServer, HealthError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| HealthError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| HealthError::Bind { addr, source })?;
        Ok(BoundHealthServer {
            listener,
            local,
            shared: Arc::new(self.shared),
        })
    }
}

/// A listening endpoint; [`BoundHealthServer::serve`] answers until shutdown.
pub struct BoundHealthServer {
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    shared: Arc<Shared>,
}

impl BoundHealthServer {
    /// The address actually bound (useful with port 0 in tests).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), HealthError> {
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/livez", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.shared);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(HealthError::Serve)
    }
}

#[derive(serde::Deserialize)]
struct CheckQuery {
    verbose: Option<String>,
}

/// Runs `checks` and renders upstream's answer.
fn run_checks(kind: &str, checks: &[(String, Check)], verbose: bool) -> (StatusCode, String) {
    let mut failed = false;
    let mut lines = String::new();
    for (name, check) in checks {
        match check() {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(reason) => {
                failed = true;
                tracing::info!(check = name, reason, "{kind} check failed");
                lines.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
    }
    match (failed, verbose) {
        (false, false) => (StatusCode::OK, "ok".to_string()),
        (false, true) => (StatusCode::OK, format!("{lines}{kind} check passed\n")),
        (true, _) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{lines}{kind} check failed\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<Shared>>, Query(q): Query<CheckQuery>) -> Response {
    let (status, body) = run_checks("healthz", &s.healthz, q.verbose.is_some());
    text(status, body)
}

async fn readyz(State(s): State<Arc<Shared>>, Query(q): Query<CheckQuery>) -> Response {
    let (status, body) = run_checks("readyz", &s.readyz, q.verbose.is_some());
    text(status, body)
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.metrics) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn check_answers_follow_upstream() {
        let ok: Check = Arc::new(|| Ok(()));
        let bad: Check = Arc::new(|| Err("cache not synced".into()));
        let checks = vec![("ping".to_string(), ok.clone())];
        assert_eq!(
            run_checks("healthz", &checks, false),
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(
            run_checks("healthz", &checks, true),
            (StatusCode::OK, "[+]ping ok\nhealthz check passed\n".into())
        );
        let checks = vec![("ping".to_string(), ok), ("informers".to_string(), bad)];
        assert_eq!(
            run_checks("readyz", &checks, false),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "[+]ping ok\n[-]informers failed: reason withheld\nreadyz check failed\n".into()
            )
        );
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("things", "Things done", counter.clone());
        counter.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let server = HealthServer::new(registry)
            .readyz_check(
                "synced",
                Arc::new(move || {
                    r.load(Ordering::SeqCst)
                        .then_some(())
                        .ok_or("not yet".to_string())
                }),
            )
            .bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(shutdown.clone()));

        let h = http_get(addr, "/healthz").await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert!(h.ends_with("ok"), "{h}");
        let r = http_get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 500"), "{r}");
        ready.store(true, Ordering::SeqCst);
        let r = http_get(addr, "/readyz?verbose").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("[+]synced ok"), "{r}");
        let m = http_get(addr, "/metrics").await;
        assert!(m.contains("things_total 1"), "{m}");
        let nf = http_get(addr, "/nope").await;
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");

        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = held.local_addr().unwrap();
        let err = HealthServer::new(Registry::default())
            .bind(addr)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot listen on"), "{err}");
    }
}
