//! The container runtime seen by the agent: run a pod's sandbox and containers, observe what a
//! pod has, stop or kill a pod, list what exists. Pod-shaped rather than Docker-shaped, so the
//! Docker runtime, the recording fake of the unit tests and a hollow runtime for scale tests
//! are interchangeable.
//!
//! What a runtime observes ([`ObservedPod`]) is plain data; [`crate::sync`] and
//! [`crate::status`] decide from it without I/O.

pub mod docker;
pub mod fake;

use std::time::Duration;

use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::spec::{ContainerPlan, SandboxPlan};

/// What a pod has in the runtime: its sandboxes and every attempt of every container that
/// still exists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedPod {
    /// The pod's uid (the key everything is found by).
    pub uid: String,
    /// The pod's namespace, as labelled.
    pub namespace: String,
    /// The pod's name, as labelled.
    pub name: String,
    /// Sandboxes, newest attempt first.
    pub sandboxes: Vec<ObservedSandbox>,
    /// Container attempts, in no particular order.
    pub containers: Vec<ObservedContainer>,
    /// The grace period the pod had when its containers were made, so a pod deleted while the
    /// agent was away is still stopped gently.
    pub grace_period: Option<Duration>,
}

impl ObservedPod {
    /// The newest sandbox.
    pub fn sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes.first()
    }

    /// Attempts of container `name`, newest first.
    pub fn attempts(&self, name: &str) -> Vec<&ObservedContainer> {
        let mut attempts: Vec<_> = self.containers.iter().filter(|c| c.name == name).collect();
        attempts.sort_by_key(|c| std::cmp::Reverse(c.attempt));
        attempts
    }

    /// Whether anything of the pod is still running.
    pub fn anything_running(&self) -> bool {
        self.sandboxes.iter().any(|s| s.running)
            || self
                .containers
                .iter()
                .any(|c| matches!(c.state, ObservedState::Running { .. }))
    }
}

/// A pod sandbox: the process holding the pod's network namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedSandbox {
    /// Runtime id.
    pub id: String,
    /// Attempt number (0 for the first sandbox of the pod).
    pub attempt: u32,
    /// Whether it is running.
    pub running: bool,
    /// The pod IP it holds, once known.
    pub ip: Option<String>,
}

/// One attempt of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    /// Runtime id.
    pub id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// Attempt number: how many times it had been restarted when this one was made.
    pub attempt: u32,
    /// The image as the spec named it.
    pub image: String,
    /// The runtime's id of the image it runs.
    pub image_id: String,
    /// What it is doing.
    pub state: ObservedState,
}

/// The state of one container attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservedState {
    /// Made but not (yet) started.
    Created,
    /// Running since `started_at`.
    Running {
        /// When it started.
        started_at: Option<Timestamp>,
    },
    /// Finished, or could not start (then `reason` says so and `started_at` is `None`).
    Exited {
        /// Exit code of the process (or the runtime's code for a failed start).
        exit_code: i32,
        /// Why, when the runtime knows better than the exit code: `OOMKilled`, `StartError`.
        reason: Option<String>,
        /// The runtime's error message, if any.
        message: Option<String>,
        /// When it started.
        started_at: Option<Timestamp>,
        /// When it finished.
        finished_at: Option<Timestamp>,
    },
}

/// A pod as listed: enough to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// The pod's uid.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

/// How a container's image was made available.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// The image was already on the node and the policy did not ask for a pull.
    Present,
    /// Pulled from its registry.
    Pulled,
    /// The policy asked for a pull, it failed, and the copy on the node was used instead.
    LocalAfterFailedPull {
        /// Why the pull failed.
        error: String,
    },
    /// The image is one miniorch builds itself (never in any registry), so no pull was tried.
    BuiltLocally,
}

/// A container that was made and started.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedContainer {
    /// Runtime id.
    pub id: String,
    /// How the image was found.
    pub image: ImageSource,
}

/// Facts about the runtime for the Node object.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeInfo {
    /// `docker://20.10.24` style version.
    pub version: String,
    /// The subnet pods get their IPs from, when the runtime knows it.
    pub pod_cidr: Option<String>,
}

/// Why a runtime call failed. The `Err*` variants map to upstream's container waiting reasons.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not on the node and the pull policy forbids pulling it.
    #[error("Container image \"{image}\" is not present with pull policy of Never")]
    ErrImageNeverPull {
        /// The image.
        image: String,
    },
    /// The image is not on the node and pulling it failed.
    #[error("Failed to pull image \"{image}\": {message}")]
    ErrImagePull {
        /// The image.
        image: String,
        /// Why.
        message: String,
    },
    /// The container could not be created.
    #[error("failed to create container: {0}")]
    CreateContainerError(String),
    /// The container was created but could not start.
    #[error("failed to start container: {0}")]
    RunContainerError(String),
    /// The pod sandbox could not be made.
    #[error("failed to create pod sandbox: {0}")]
    CreatePodSandboxError(String),
    /// The runtime itself failed (unreachable, bad answer).
    #[error("container runtime: {0}")]
    Backend(String),
}

impl RuntimeError {
    /// The waiting reason a container shows after this error.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::ErrImageNeverPull { .. } => "ErrImageNeverPull",
            RuntimeError::ErrImagePull { .. } => "ErrImagePull",
            RuntimeError::CreateContainerError(_) => "CreateContainerError",
            RuntimeError::RunContainerError(_) => "RunContainerError",
            RuntimeError::CreatePodSandboxError(_) => "CreatePodSandboxError",
            RuntimeError::Backend(_) => "ContainerRuntimeError",
        }
    }
}

/// The container runtime. Every method is idempotent enough to be retried after a crash: the
/// agent may die between any two calls and must find, not duplicate, what exists.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Prepares the node (e.g. the pod network) and describes the runtime. Called at start.
    async fn prepare(&self) -> Result<RuntimeInfo, RuntimeError>;

    /// Whether the runtime answers (the node's Ready condition follows it).
    async fn healthy(&self) -> Result<(), RuntimeError>;

    /// Makes and starts the sandbox of `pod` (attempt `attempt`) and returns it, with its IP.
    async fn run_sandbox(
        &self,
        pod: &Pod,
        plan: &SandboxPlan,
        attempt: u32,
    ) -> Result<ObservedSandbox, RuntimeError>;

    /// Makes and starts one container of `pod` inside `sandbox`, after making its image
    /// available according to its pull policy.
    async fn start_container(
        &self,
        pod: &Pod,
        sandbox: &ObservedSandbox,
        plan: &ContainerPlan,
        attempt: u32,
    ) -> Result<StartedContainer, RuntimeError>;

    /// Removes one (stopped) container attempt.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Stops everything of pod `uid` (SIGTERM, SIGKILL after `grace`) and keeps it for
    /// inspection: app containers first, then the sandbox.
    async fn stop_pod(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Stops everything of pod `uid` as [`Runtime::stop_pod`] does, then removes it all.
    async fn kill_pod(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// What pod `uid` has in the runtime; `None` when it has nothing.
    async fn observe_pod(&self, uid: &str) -> Result<Option<ObservedPod>, RuntimeError>;

    /// Every pod that has something in the runtime.
    async fn list_pods(&self) -> Result<Vec<PodRef>, RuntimeError>;

    /// Uids of pods whose containers changed (started, exited, vanished), as they change.
    /// The stream ends when the runtime connection breaks; the caller subscribes again.
    fn changes(&self) -> BoxStream<'static, Result<String, RuntimeError>>;
}
