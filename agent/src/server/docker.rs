//! [`ContainerIo`] over Docker (bollard): logs from the engine's log API, exec through Docker
//! exec (attached, with its input as a half-closable stream), and usage from the stats API
//! (one sample with the engine's previous one, so the CPU rate needs no state here).

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerStatsResponse, ExecConfig};
use bollard::query_parameters::{
    LogsOptionsBuilder, ResizeExecOptionsBuilder, StatsOptionsBuilder,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;

use super::io::{
    ContainerIo, ContainerUsage, ExecControl, ExecOutput, ExecSession, ExecSpec, IoError,
    LogRequest,
};

/// Largest chunk of exec output passed on at once.
const OUTPUT_CHUNK: usize = 32 * 1024;

/// Container I/O through a Docker engine.
pub struct DockerIo {
    docker: Docker,
}

impl DockerIo {
    pub fn new(docker: Docker) -> Self {
        DockerIo { docker }
    }
}

fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// A Docker error about container `id` as an [`IoError`].
fn io_error(id: &str, what: &str, e: DockerError) -> IoError {
    match status_code(&e) {
        Some(404) => IoError::NotFound(id.to_string()),
        Some(409) => IoError::NotRunning(id.to_string()),
        _ => IoError::Backend(format!("{what} of container {id}: {e}")),
    }
}

/// The chunks of a log or exec stream, whichever stream they came from.
fn output_bytes(o: LogOutput) -> ExecOutput {
    match o {
        LogOutput::StdErr { message } => ExecOutput::Stderr(message),
        LogOutput::StdOut { message }
        | LogOutput::Console { message }
        | LogOutput::StdIn { message } => ExecOutput::Stdout(message),
    }
}

/// The number of CPU core-nanoseconds used per second of `stats`' window, and the window:
/// from the sample's own previous reading (`precpu_stats`, taken about a second before).
pub fn cpu_usage(stats: &ContainerStatsResponse) -> (Option<u64>, Option<Duration>) {
    let total = |s: Option<&bollard::models::ContainerCpuStats>| {
        s.and_then(|s| s.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
    };
    let (Some(now), Some(before)) = (
        total(stats.cpu_stats.as_ref()),
        total(stats.precpu_stats.as_ref()),
    ) else {
        return (None, None);
    };
    let time = |t: Option<&String>| t.and_then(|t| t.parse::<Timestamp>().ok());
    let (Some(read), Some(preread)) = (time(stats.read.as_ref()), time(stats.preread.as_ref()))
    else {
        return (None, None);
    };
    // Docker's zero time (`0001-01-01`) means there was no earlier sample.
    if preread.as_second() <= 0 || before == 0 {
        return (None, None);
    }
    let Ok(window) = Duration::try_from(read.duration_since(preread)) else {
        return (None, None);
    };
    if window.is_zero() {
        return (None, None);
    }
    let used = u128::from(now.saturating_sub(before));
    let rate = used * 1_000_000_000 / window.as_nanos();
    (Some(u64::try_from(rate).unwrap_or(u64::MAX)), Some(window))
}

/// Memory figures of `stats`: (usage, working set, rss). The working set is usage minus
/// inactive file pages, as cAdvisor computes it (cgroup v1 and v2 name them differently).
pub fn memory_usage(stats: &ContainerStatsResponse) -> (Option<u64>, Option<u64>, Option<u64>) {
    let Some(m) = stats.memory_stats.as_ref() else {
        return (None, None, None);
    };
    let Some(usage) = m.usage else {
        return (None, None, None);
    };
    let stat = |keys: &[&str]| {
        m.stats
            .as_ref()
            .and_then(|s| keys.iter().find_map(|k| s.get(*k).copied()))
    };
    let inactive = stat(&["total_inactive_file", "inactive_file"]).unwrap_or(0);
    let rss = stat(&["total_rss", "anon"]);
    (Some(usage), Some(usage.saturating_sub(inactive)), rss)
}

/// A container's usage from one Docker stats sample.
pub fn usage_of(stats: &ContainerStatsResponse) -> ContainerUsage {
    let (cpu_nano_cores, window) = cpu_usage(stats);
    let (memory_usage_bytes, working_set_bytes, rss_bytes) = memory_usage(stats);
    ContainerUsage {
        time: stats.read.as_ref().and_then(|t| t.parse().ok()),
        cpu_nano_cores,
        cpu_core_nanos: stats
            .cpu_stats
            .as_ref()
            .and_then(|s| s.cpu_usage.as_ref())
            .and_then(|u| u.total_usage),
        window,
        memory_usage_bytes,
        working_set_bytes,
        rss_bytes,
    }
}

struct DockerExec {
    docker: Docker,
    exec_id: String,
}

#[async_trait::async_trait]
impl ExecControl for DockerExec {
    async fn resize(&self, width: u16, height: u16) -> Result<(), IoError> {
        let options = ResizeExecOptionsBuilder::new()
            .w(i32::from(width))
            .h(i32::from(height))
            .build();
        self.docker
            .resize_exec(&self.exec_id, options)
            .await
            .map_err(|e| IoError::Backend(format!("resizing exec {}: {e}", self.exec_id)))
    }

    async fn exit_code(&self) -> Result<Option<i64>, IoError> {
        let info = self
            .docker
            .inspect_exec(&self.exec_id)
            .await
            .map_err(|e| IoError::Backend(format!("inspecting exec {}: {e}", self.exec_id)))?;
        Ok(match info.running {
            Some(false) => info.exit_code,
            _ => None,
        })
    }
}

#[async_trait::async_trait]
impl ContainerIo for DockerIo {
    async fn logs(
        &self,
        id: &str,
        request: &LogRequest,
    ) -> Result<BoxStream<'static, Result<Bytes, IoError>>, IoError> {
        // A missing container is a 404 now, not an error in the middle of a stream that has
        // already answered 200.
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(|e| io_error(id, "inspection", e))?;
        let tail = request
            .tail_lines
            .map_or_else(|| "all".to_string(), |n| n.to_string());
        let mut options = LogsOptionsBuilder::new()
            .follow(request.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(request.timestamps)
            .tail(&tail);
        if let Some(since) = request.since {
            options = options.since(i32::try_from(since.max(0)).unwrap_or(i32::MAX));
        }
        let id = id.to_string();
        Ok(self
            .docker
            .logs(&id, Some(options.build()))
            .map(move |chunk| {
                chunk
                    .map(LogOutput::into_bytes)
                    .map_err(|e| io_error(&id, "log", e))
            })
            .boxed())
    }

    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecSession, IoError> {
        let config = ExecConfig {
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(spec.stdout),
            attach_stderr: Some(spec.stderr),
            tty: Some(spec.tty),
            cmd: Some(spec.command.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(id, config)
            .await
            .map_err(|e| io_error(id, "exec", e))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: spec.tty,
                    output_capacity: Some(OUTPUT_CHUNK),
                }),
            )
            .await
            .map_err(|e| io_error(id, "exec start", e))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(IoError::Backend(format!(
                "exec in container {id} started detached"
            )));
        };
        let cid = id.to_string();
        Ok(ExecSession {
            output: output
                .map(move |o| {
                    o.map(output_bytes)
                        .map_err(|e| io_error(&cid, "exec output", e))
                })
                .boxed(),
            input: spec.stdin.then_some(input),
            control: Box::new(DockerExec {
                docker: self.docker.clone(),
                exec_id: created.id,
            }),
        })
    }

    async fn usage(&self, id: &str) -> Result<ContainerUsage, IoError> {
        // Not one-shot: the engine then includes its previous sample, which gives the rate.
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(false)
            .build();
        let stats = self
            .docker
            .stats(id, Some(options))
            .next()
            .await
            .ok_or_else(|| IoError::Backend(format!("no stats for container {id}")))?
            .map_err(|e| io_error(id, "stats", e))?;
        Ok(usage_of(&stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(json: serde_json::Value) -> ContainerStatsResponse {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn cpu_is_the_rate_since_the_previous_sample() {
        let cases = [
            // A quarter of a core over one second.
            (
                serde_json::json!({
                    "read": "2024-05-01T10:00:01.000000000Z", "preread": "2024-05-01T10:00:00.000000000Z",
                    "cpu_stats": {"cpu_usage": {"total_usage": 1_250_000_000u64}},
                    "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000_000u64}},
                }),
                (Some(250_000_000), Some(Duration::from_secs(1))),
            ),
            // No previous sample (a one-shot read, or the first one).
            (
                serde_json::json!({
                    "read": "2024-05-01T10:00:01Z", "preread": "0001-01-01T00:00:00Z",
                    "cpu_stats": {"cpu_usage": {"total_usage": 5u64}},
                    "precpu_stats": {"cpu_usage": {"total_usage": 0u64}},
                }),
                (None, None),
            ),
            (
                serde_json::json!({"read": "2024-05-01T10:00:01Z", "cpu_stats": {}}),
                (None, None),
            ),
            // Garbage times.
            (
                serde_json::json!({
                    "read": "soon", "preread": "2024-05-01T10:00:00Z",
                    "cpu_stats": {"cpu_usage": {"total_usage": 5u64}},
                    "precpu_stats": {"cpu_usage": {"total_usage": 1u64}},
                }),
                (None, None),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(cpu_usage(&stats(json.clone())), want, "{json}");
        }
    }

    #[test]
    fn working_set_leaves_out_inactive_files() {
        let v1 = stats(serde_json::json!({"memory_stats": {"usage": 1000u64,
            "stats": {"total_inactive_file": 300u64, "total_rss": 500u64}}}));
        assert_eq!(memory_usage(&v1), (Some(1000), Some(700), Some(500)));
        let v2 = stats(serde_json::json!({"memory_stats": {"usage": 1000u64,
            "stats": {"inactive_file": 100u64, "anon": 600u64}}}));
        assert_eq!(memory_usage(&v2), (Some(1000), Some(900), Some(600)));
        let odd = stats(serde_json::json!({"memory_stats": {"usage": 10u64,
            "stats": {"inactive_file": 100u64}}}));
        assert_eq!(memory_usage(&odd), (Some(10), Some(0), None));
        assert_eq!(
            memory_usage(&stats(serde_json::json!({}))),
            (None, None, None)
        );
    }
}
