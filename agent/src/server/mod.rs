//! The agent's own API, upstream's kubelet server: `GET /containerLogs/{ns}/{pod}/{container}`,
//! `/exec/{ns}/{pod}/{container}` (WebSocket, `v5.channel.k8s.io` and `v4.channel.k8s.io`),
//! `GET /stats/summary` and `/healthz`, on `--port` (10250). The apiserver passes `kubectl
//! logs`, `exec` and `top` on to it. Plain HTTP for now; errors are plain text with upstream's
//! codes and wording, which the apiserver turns into `Status` objects.
//!
//! Layout: [`logs`], [`exec`] and [`stats`] each hold one endpoint's pure decisions and its thin
//! handler; what they need from the runtime is the narrow [`io::ContainerIo`] trait, which
//! [`docker`] implements over bollard.

pub mod docker;
pub mod exec;
pub mod io;
pub mod logs;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use tokio_util::sync::CancellationToken;

use crate::runtime::{ObservedPod, Runtime};
use crate::status::{StatusInputs, pod_status};
use io::ContainerIo;

/// Where the agent finds the pods bound to its node (the pod manager's cache).
pub trait PodSource: Send + Sync + 'static {
    /// The pod `namespace/name`, if it is bound to this node.
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>>;
}

impl PodSource for crate::pods::PodManager {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pod_named(namespace, name)
    }
}

/// A failed request, answered as kubelet does: a status code and a line of plain text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed, or what it asks for is not possible now (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such pod or container (404).
    #[error("{0}")]
    NotFound(String),
    /// The runtime failed (500).
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    pub fn code(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<io::IoError> for ServeError {
    fn from(e: io::IoError) -> Self {
        match e {
            io::IoError::NotFound(_) => ServeError::NotFound(e.to_string()),
            io::IoError::NotRunning(_) => ServeError::BadRequest(e.to_string()),
            io::IoError::Unsupported(_) | io::IoError::Backend(_) => {
                ServeError::Internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        (self.code(), format!("{self}\n")).into_response()
    }
}

/// What the handlers share.
pub struct NodeServer {
    /// The node's name (the summary names it).
    pub node_name: String,
    /// The node's IP (pod statuses need it).
    pub node_ip: String,
    /// The pods bound here.
    pub pods: Arc<dyn PodSource>,
    /// What the runtime has of each pod.
    pub runtime: Arc<dyn Runtime>,
    /// Logs, exec and usage of containers.
    pub io: Arc<dyn ContainerIo>,
    /// The node's CPU meter.
    pub meter: stats::NodeMeter,
}

/// A pod as the handlers need it: the API's copy, what the runtime has, and the container
/// statuses computed from both (fresher than the pod's stored status).
pub struct PodView {
    pub pod: Arc<Pod>,
    pub observed: Option<ObservedPod>,
    pub statuses: Vec<ContainerStatus>,
}

impl NodeServer {
    /// Pod `namespace/name` and its containers' current state; 404 if it is not bound here.
    pub async fn pod_view(&self, namespace: &str, name: &str) -> Result<PodView, ServeError> {
        let pod = self
            .pods
            .pod(namespace, name)
            .ok_or_else(|| ServeError::NotFound(format!("pod {name:?} does not exist")))?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let observed = self
            .runtime
            .observe_pod(&uid)
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let failures = Default::default();
        let inputs = StatusInputs {
            host_ip: &self.node_ip,
            failures: &failures,
            now: jiff::Timestamp::now(),
        };
        let status = pod_status(&pod, observed.as_ref(), &inputs);
        let statuses = status
            .init_container_statuses
            .into_iter()
            .flatten()
            .chain(status.container_statuses.into_iter().flatten())
            .collect();
        Ok(PodView {
            pod,
            observed,
            statuses,
        })
    }
}

/// Whether `pod` has a container (init or app) named `name`.
pub fn has_container(pod: &Pod, name: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == name)
            || s.init_containers.iter().flatten().any(|c| c.name == name)
    })
}

/// A runtime container id from a status's `docker://<id>`.
pub fn runtime_id(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

/// The agent API's routes.
pub fn router(server: Arc<NodeServer>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::handle),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec::handle).post(exec::handle),
        )
        .route("/stats/summary", get(stats::handle))
        .with_state(server)
}

/// Binds the agent API's address; a clear error if it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for the agent API (is another agent running? pick another --port, or 0 to disable it)")
    })
}

/// Serves the agent API on `listener` until `shutdown`, and keeps the node's CPU meter fed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<NodeServer>,
    shutdown: CancellationToken,
) {
    tokio::spawn(stats::sample_node(server.clone(), shutdown.clone()));
    let app = router(server);
    // Followed logs and exec sessions hold connections open: cut them at shutdown.
    let stop = shutdown.clone();
    let serving = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
    tokio::select! {
        r = serving => if let Err(e) = r {
            tracing::warn!(error = %e, "the agent API stopped");
        },
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        } => {}
    }
}

#[cfg(test)]
pub(crate) mod tests;
