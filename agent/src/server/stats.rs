//! `GET /stats/summary`: the node's and its pods' CPU and memory use, in the shape of upstream's
//! Summary API (`stats/v1alpha1`), the part metrics-server reads: `usageNanoCores` and
//! `workingSetBytes` for the node, each pod and each container. The node's figures come from
//! `/proc` (CPU as the rate between two samples of `/proc/stat`, taken in the background so a
//! request does not wait), the containers' from the runtime.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::NodeServer;
use super::io::ContainerUsage;
use crate::runtime::ObservedState;
use crate::status::api_time;

/// How often the node's CPU is sampled.
pub const NODE_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest interval a CPU rate is computed over.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Containers measured at once.
const PARALLEL: usize = 16;
/// Longest one container's measurement may take (the apiserver waits 5 s for a summary:
/// better a summary without a container than none).
const USAGE_TIMEOUT: Duration = Duration::from_secs(4);
/// Nanoseconds per clock tick of `/proc/stat`: USER_HZ is 100 on every Linux architecture.
const NANOS_PER_TICK: u64 = 10_000_000;

/// The summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    pub containers: Vec<ContainerStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// Cumulative busy CPU time of the node at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    pub at: Timestamp,
    /// Core-nanoseconds spent not idle since boot.
    pub busy_nanos: u64,
}

/// CPU use over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuRate {
    pub at: Timestamp,
    pub nano_cores: u64,
    pub busy_nanos: u64,
    pub window: Duration,
}

/// The rate between two samples; `None` if they are too close (or the clock went back).
pub fn cpu_rate(prev: CpuSample, cur: CpuSample) -> Option<CpuRate> {
    let window = Duration::try_from(cur.at.duration_since(prev.at)).ok()?;
    if window < MIN_WINDOW {
        return None;
    }
    let busy = u128::from(cur.busy_nanos.checked_sub(prev.busy_nanos)?);
    let nano_cores = busy * 1_000_000_000 / window.as_nanos();
    Some(CpuRate {
        at: cur.at,
        nano_cores: u64::try_from(nano_cores).unwrap_or(u64::MAX),
        busy_nanos: cur.busy_nanos,
        window,
    })
}

/// Busy CPU time from `/proc/stat` text: user, nice, system, irq, softirq and steal ticks of
/// the `cpu` line (guest time is already counted in user).
pub fn parse_proc_stat_cpu(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    if ticks.len() < 4 {
        return None;
    }
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    busy.checked_mul(NANOS_PER_TICK)
}

/// Boot time (Unix seconds) from `/proc/stat` text.
pub fn parse_boot_time(text: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The node's memory from `/proc/meminfo` text: available, used (total minus free) and the
/// working set (total minus available: what cannot be reclaimed).
pub fn parse_meminfo(text: &str) -> Option<NodeMemory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(':'))
        })?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    };
    let total = field("MemTotal")?;
    let free = field("MemFree")?;
    let available = field("MemAvailable").unwrap_or(free);
    Some(NodeMemory {
        available,
        usage: total.saturating_sub(free),
        working_set: total.saturating_sub(available),
    })
}

/// The node's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMemory {
    pub available: u64,
    pub usage: u64,
    pub working_set: u64,
}

/// The node's CPU rate, from samples taken in the background and on demand.
#[derive(Default)]
pub struct NodeMeter {
    state: Mutex<MeterState>,
}

#[derive(Default)]
struct MeterState {
    last: Option<CpuSample>,
    rate: Option<CpuRate>,
}

impl NodeMeter {
    fn lock(&self) -> std::sync::MutexGuard<'_, MeterState> {
        // Each update is one assignment, so a poisoned meter is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a sample into account: a new rate once it is far enough from the last one.
    pub fn observe(&self, sample: CpuSample) {
        let mut st = self.lock();
        match st.last.map(|last| (last, cpu_rate(last, sample))) {
            Some((_, Some(rate))) => {
                st.rate = Some(rate);
                st.last = Some(sample);
            }
            // Too close to the last sample: keep the older one as the base.
            Some((last, None)) if sample.at > last.at && sample.busy_nanos >= last.busy_nanos => {}
            _ => st.last = Some(sample),
        }
    }

    /// The latest rate.
    pub fn rate(&self) -> Option<CpuRate> {
        self.lock().rate
    }
}

fn sample_now() -> Option<CpuSample> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    Some(CpuSample {
        at: Timestamp::now(),
        busy_nanos: parse_proc_stat_cpu(&text)?,
    })
}

/// Samples the node's CPU until `shutdown`.
pub async fn sample_node(server: Arc<NodeServer>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(NODE_SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Some(s) = sample_now() {
                    server.meter.observe(s);
                }
            }
        }
    }
}

/// The node's CPU now; right after start it waits for a second sample.
async fn node_cpu(meter: &NodeMeter) -> Option<CpuStats> {
    if let Some(s) = sample_now() {
        meter.observe(s);
    }
    if meter.rate().is_none() {
        tokio::time::sleep(MIN_WINDOW).await;
        if let Some(s) = sample_now() {
            meter.observe(s);
        }
    }
    meter.rate().map(|r| CpuStats {
        time: api_time(r.at),
        usage_nano_cores: Some(r.nano_cores),
        usage_core_nano_seconds: Some(r.busy_nanos),
    })
}

fn node_memory(now: Timestamp) -> Option<MemoryStats> {
    let m = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    Some(MemoryStats {
        time: api_time(now),
        available_bytes: Some(m.available),
        usage_bytes: Some(m.usage),
        working_set_bytes: Some(m.working_set),
        rss_bytes: None,
    })
}

/// The CPU and memory entries of one container's usage.
pub fn container_entries(
    u: &ContainerUsage,
    now: Timestamp,
) -> (Option<CpuStats>, Option<MemoryStats>) {
    let time = api_time(u.time.unwrap_or(now));
    let cpu = (u.cpu_nano_cores.is_some() || u.cpu_core_nanos.is_some()).then(|| CpuStats {
        time: time.clone(),
        usage_nano_cores: u.cpu_nano_cores,
        usage_core_nano_seconds: u.cpu_core_nanos,
    });
    let memory =
        (u.working_set_bytes.is_some() || u.memory_usage_bytes.is_some()).then_some(MemoryStats {
            time,
            available_bytes: None,
            usage_bytes: u.memory_usage_bytes,
            working_set_bytes: u.working_set_bytes,
            rss_bytes: u.rss_bytes,
        });
    (cpu, memory)
}

/// A pod's totals: the sums over its containers, when every container has the figure.
pub fn pod_totals(
    containers: &[ContainerStats],
    now: Timestamp,
) -> (Option<CpuStats>, Option<MemoryStats>) {
    if containers.is_empty() {
        return (None, None);
    }
    let sum = |f: &dyn Fn(&ContainerStats) -> Option<u64>| -> Option<u64> {
        containers
            .iter()
            .map(f)
            .try_fold(0u64, |acc, v| Some(acc.saturating_add(v?)))
    };
    let time = api_time(now);
    let nano_cores = sum(&|c| c.cpu.as_ref()?.usage_nano_cores);
    let core_nanos = sum(&|c| c.cpu.as_ref()?.usage_core_nano_seconds);
    let working_set = sum(&|c| c.memory.as_ref()?.working_set_bytes);
    let usage = sum(&|c| c.memory.as_ref()?.usage_bytes);
    let rss = sum(&|c| c.memory.as_ref()?.rss_bytes);
    let cpu = (nano_cores.is_some() || core_nanos.is_some()).then(|| CpuStats {
        time: time.clone(),
        usage_nano_cores: nano_cores,
        usage_core_nano_seconds: core_nanos,
    });
    let memory = (working_set.is_some() || usage.is_some()).then_some(MemoryStats {
        time,
        available_bytes: None,
        usage_bytes: usage,
        working_set_bytes: working_set,
        rss_bytes: rss,
    });
    (cpu, memory)
}

/// One running container to measure.
struct Target {
    pod: usize,
    name: String,
    id: String,
    started: Option<Timestamp>,
}

/// Every pod bound here with running containers, each container measured.
async fn pod_stats(server: &NodeServer, now: Timestamp) -> Vec<PodStats> {
    let refs = match server.runtime.list_pods().await {
        Ok(refs) => refs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list pods for the stats summary");
            return Vec::new();
        }
    };
    let mut pods = Vec::new();
    let mut targets = Vec::new();
    for r in refs {
        // Only pods the API binds here (not leftovers about to be removed).
        let Some(pod) = server
            .pods
            .pod(&r.namespace, &r.name)
            .filter(|p| p.metadata.uid.as_deref() == Some(r.uid.as_str()))
        else {
            continue;
        };
        let Ok(Some(observed)) = server.runtime.observe_pod(&r.uid).await else {
            continue;
        };
        let index = pods.len();
        for c in &observed.containers {
            if let ObservedState::Running { started_at } = c.state {
                targets.push(Target {
                    pod: index,
                    name: c.name.clone(),
                    id: c.id.clone(),
                    started: started_at,
                });
            }
        }
        pods.push(PodStats {
            pod_ref: PodReference {
                name: r.name,
                namespace: r.namespace,
                uid: r.uid,
            },
            start_time: pod.status.as_ref().and_then(|s| s.start_time.clone()),
            ..Default::default()
        });
    }
    let io = server.io.clone();
    let measured: Vec<(Target, Option<ContainerUsage>)> = futures::stream::iter(targets)
        .map(|t| {
            let io = io.clone();
            async move {
                let usage = match tokio::time::timeout(USAGE_TIMEOUT, io.usage(&t.id)).await {
                    Ok(Ok(u)) => Some(u),
                    Ok(Err(e)) => {
                        tracing::debug!(container = %t.id, error = %e, "no usage for container");
                        None
                    }
                    Err(_) => None,
                };
                (t, usage)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for (t, usage) in measured {
        let (cpu, memory) = usage
            .map(|u| container_entries(&u, now))
            .unwrap_or((None, None));
        pods[t.pod].containers.push(ContainerStats {
            name: t.name,
            start_time: t.started.map(api_time),
            cpu,
            memory,
        });
    }
    for p in &mut pods {
        p.containers.sort_by(|a, b| a.name.cmp(&b.name));
        (p.cpu, p.memory) = pod_totals(&p.containers, now);
    }
    pods.retain(|p| !p.containers.is_empty());
    pods
}

/// The summary now.
pub async fn summary(server: &NodeServer) -> Summary {
    let now = Timestamp::now();
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let (cpu, pods) = tokio::join!(node_cpu(&server.meter), pod_stats(server, now));
    Summary {
        node: NodeStats {
            node_name: server.node_name.clone(),
            start_time: parse_boot_time(&stat)
                .and_then(|s| Timestamp::from_second(s).ok())
                .map(api_time),
            cpu,
            memory: node_memory(now),
        },
        pods,
    }
}

/// The handler.
pub async fn handle(State(server): State<Arc<NodeServer>>) -> Response {
    Json(summary(&server).await).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn cpu_rates() {
        let s = |at: &str, busy: u64| CpuSample {
            at: t(at),
            busy_nanos: busy,
        };
        let cases = [
            // Half a core for 10 s.
            (
                s("2024-01-01T00:00:00Z", 0),
                s("2024-01-01T00:00:10Z", 5_000_000_000),
                Some(500_000_000),
            ),
            // Two full cores for 2 s.
            (
                s("2024-01-01T00:00:00Z", 1_000),
                s("2024-01-01T00:00:02Z", 4_000_001_000),
                Some(2_000_000_000),
            ),
            // Too close together.
            (
                s("2024-01-01T00:00:00Z", 0),
                s("2024-01-01T00:00:00.5Z", 100),
                None,
            ),
            // The clock went back, or the counter did (a reboot).
            (
                s("2024-01-01T00:00:10Z", 0),
                s("2024-01-01T00:00:00Z", 100),
                None,
            ),
            (
                s("2024-01-01T00:00:00Z", 100),
                s("2024-01-01T00:00:10Z", 50),
                None,
            ),
        ];
        for (prev, cur, want) in cases {
            assert_eq!(
                cpu_rate(prev, cur).map(|r| r.nano_cores),
                want,
                "{prev:?} {cur:?}"
            );
        }
    }

    #[test]
    fn the_meter_keeps_a_base_old_enough() {
        let m = NodeMeter::default();
        let s = |secs: i64, busy: u64| CpuSample {
            at: Timestamp::from_second(1_700_000_000 + secs).unwrap(),
            busy_nanos: busy,
        };
        m.observe(s(0, 0));
        assert_eq!(m.rate(), None);
        // A sample too soon after the first leaves the first as the base.
        m.observe(CpuSample {
            at: Timestamp::from_second(1_700_000_000).unwrap()
                + jiff::SignedDuration::from_millis(300),
            busy_nanos: 10,
        });
        assert_eq!(m.rate(), None);
        m.observe(s(4, 1_000_000_000));
        assert_eq!(m.rate().map(|r| r.nano_cores), Some(250_000_000));
        m.observe(s(14, 11_000_000_000));
        assert_eq!(m.rate().map(|r| r.nano_cores), Some(1_000_000_000));
    }

    #[test]
    fn proc_files() {
        let stat =
            "cpu  100 20 30 4000 50 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\nbtime 1714557600\n";
        assert_eq!(
            parse_proc_stat_cpu(stat),
            Some((100 + 20 + 30 + 6 + 7 + 8) * NANOS_PER_TICK)
        );
        assert_eq!(parse_boot_time(stat), Some(1_714_557_600));
        assert_eq!(parse_proc_stat_cpu("cpu  1 2\n"), None);
        assert_eq!(parse_proc_stat_cpu("cpu  a b c d\n"), None);
        assert_eq!(parse_proc_stat_cpu(""), None);
        let meminfo = "MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable:    600 kB\nBuffers: 1 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some(NodeMemory {
                available: 600 * 1024,
                usage: 800 * 1024,
                working_set: 400 * 1024,
            })
        );
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn pod_totals_add_up_containers() {
        let now = t("2024-01-01T00:00:00Z");
        let c = |cpu: Option<u64>, ws: Option<u64>| {
            let (cpu, memory) = container_entries(
                &ContainerUsage {
                    cpu_nano_cores: cpu,
                    working_set_bytes: ws,
                    ..Default::default()
                },
                now,
            );
            ContainerStats {
                name: "c".into(),
                start_time: None,
                cpu,
                memory,
            }
        };
        let (cpu, mem) = pod_totals(&[c(Some(1), Some(10)), c(Some(2), Some(20))], now);
        assert_eq!(cpu.and_then(|c| c.usage_nano_cores), Some(3));
        assert_eq!(mem.and_then(|m| m.working_set_bytes), Some(30));
        let (cpu, mem) = pod_totals(&[c(Some(1), None), c(None, Some(20))], now);
        assert_eq!(cpu, None);
        assert_eq!(mem, None);
        assert_eq!(pod_totals(&[], now), (None, None));
    }

    #[test]
    fn the_summary_has_upstreams_field_names() {
        let now = t("2024-01-01T00:00:00Z");
        let s = Summary {
            node: NodeStats {
                node_name: "n1".into(),
                cpu: Some(CpuStats {
                    time: api_time(now),
                    usage_nano_cores: Some(5),
                    usage_core_nano_seconds: None,
                }),
                ..Default::default()
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "p".into(),
                    namespace: "default".into(),
                    uid: "u".into(),
                },
                ..Default::default()
            }],
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["node"]["nodeName"], "n1");
        assert_eq!(v["node"]["cpu"]["usageNanoCores"], 5);
        assert_eq!(v["node"]["cpu"]["time"], "2024-01-01T00:00:00Z");
        assert_eq!(v["pods"][0]["podRef"]["namespace"], "default");
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
