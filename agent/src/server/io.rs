//! What the agent's API needs from the container runtime beyond running pods: a container's
//! log, a command run inside it, and its resource usage. A narrow trait of its own, so the
//! HTTP and WebSocket handling is tested against a recording fake and a runtime without these
//! (the hollow nodes of scale tests) simply answers that it has none.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use jiff::Timestamp;
use tokio::io::AsyncWrite;

/// Why a container I/O call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IoError {
    /// The runtime has no such container (any more).
    #[error("container {0} not found")]
    NotFound(String),
    /// The container exists but is not running (exec needs a running one).
    #[error("container {0} is not running")]
    NotRunning(String),
    /// This runtime does not serve logs, exec or usage (hollow nodes).
    #[error("this node's container runtime does not serve {0}")]
    Unsupported(&'static str),
    /// The runtime failed or gave a bad answer.
    #[error("container runtime: {0}")]
    Backend(String),
}

/// Which part of a container's log to read (already validated, in runtime terms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRequest {
    /// Keep streaming new output until the container stops or the reader goes.
    pub follow: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<u64>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// Only output since this Unix second.
    pub since: Option<i64>,
}

/// A command to run in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Attach the command's standard input.
    pub stdin: bool,
    /// Attach its standard output.
    pub stdout: bool,
    /// Attach its standard error (never with a TTY, which merges both).
    pub stderr: bool,
    /// Give it a terminal.
    pub tty: bool,
}

/// One chunk a running command wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Standard output (or the terminal's output).
    Stdout(Bytes),
    /// Standard error.
    Stderr(Bytes),
}

/// Controls of a started command.
#[async_trait::async_trait]
pub trait ExecControl: Send + Sync {
    /// Resizes the command's terminal.
    async fn resize(&self, width: u16, height: u16) -> Result<(), IoError>;
    /// The command's exit code, once it has exited (`None` while it runs).
    async fn exit_code(&self) -> Result<Option<i64>, IoError>;
}

/// A started command: what it writes, where its input goes, and its controls.
pub struct ExecSession {
    /// Output until the command closes it (exits).
    pub output: BoxStream<'static, Result<ExecOutput, IoError>>,
    /// Its standard input, when attached; shutting it down closes the command's input.
    pub input: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Resize and exit code.
    pub control: Box<dyn ExecControl>,
}

/// Resource usage of one container at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerUsage {
    /// When it was measured.
    pub time: Option<Timestamp>,
    /// CPU used over the last `window`, in billionths of a core.
    pub cpu_nano_cores: Option<u64>,
    /// CPU used since the container started, in core-nanoseconds.
    pub cpu_core_nanos: Option<u64>,
    /// What `cpu_nano_cores` was averaged over.
    pub window: Option<Duration>,
    /// Memory charged to the container, page cache included.
    pub memory_usage_bytes: Option<u64>,
    /// Memory that cannot be reclaimed easily (usage minus inactive file pages): what
    /// evictions and `kubectl top` go by.
    pub working_set_bytes: Option<u64>,
    /// Anonymous (and swap cache) memory.
    pub rss_bytes: Option<u64>,
}

/// Log, exec and usage of containers by runtime id.
#[async_trait::async_trait]
pub trait ContainerIo: Send + Sync + 'static {
    /// The container's log as it is written (a finished stream unless `follow`).
    async fn logs(
        &self,
        id: &str,
        request: &LogRequest,
    ) -> Result<BoxStream<'static, Result<Bytes, IoError>>, IoError>;

    /// Starts `spec` in the running container `id`.
    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecSession, IoError>;

    /// Current resource usage of the running container `id`.
    async fn usage(&self, id: &str) -> Result<ContainerUsage, IoError>;
}

/// The [`ContainerIo`] of a runtime that has none.
pub struct NoContainerIo;

#[async_trait::async_trait]
impl ContainerIo for NoContainerIo {
    async fn logs(
        &self,
        _id: &str,
        _request: &LogRequest,
    ) -> Result<BoxStream<'static, Result<Bytes, IoError>>, IoError> {
        Err(IoError::Unsupported("logs"))
    }

    async fn exec(&self, _id: &str, _spec: &ExecSpec) -> Result<ExecSession, IoError> {
        Err(IoError::Unsupported("exec"))
    }

    async fn usage(&self, _id: &str) -> Result<ContainerUsage, IoError> {
        Err(IoError::Unsupported("usage"))
    }
}
