//! The agent's Node: registration (labels, capacity, addresses, system info, pod CIDR), the
//! status report (on change, and at least every 5 minutes, as upstream) and the heartbeat Lease
//! in `kube-node-lease` renewed every 10 s.
//!
//! [`node_object`], [`node_status`] and [`lease_spec`] are pure; [`run`] is the thin loop that
//! writes them, re-registering if someone deletes the Node.

use std::collections::BTreeMap;
use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use miniorch_api::quantity;
use tokio_util::sync::CancellationToken;

use crate::events::{Recorder, node_ref};
use crate::runtime::Runtime;
use crate::status::api_time;

/// The kubelet version the node reports.
pub const KUBELET_VERSION: &str = "v1.33.0-miniorch";
/// How often the status is computed (and written if it changed).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// An unchanged status is still written this often.
pub const STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(300);
/// How often the Lease is renewed.
pub const LEASE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Everything the Node object says about this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// The node's IP.
    pub ip: String,
    /// The machine's hostname.
    pub hostname: String,
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Pods this node takes at most.
    pub max_pods: u32,
    /// Kernel release.
    pub kernel_version: String,
    /// Distribution name.
    pub os_image: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// Boot id.
    pub boot_id: String,
    /// SMBIOS uuid, when readable.
    pub system_uuid: String,
    /// `amd64`, `arm64`, ... (Go's names, as Kubernetes uses them).
    pub architecture: String,
    /// `docker://<version>`.
    pub runtime_version: String,
    /// The subnet of the pod network, when known.
    pub pod_cidr: Option<String>,
    /// Port of the agent API (logs, exec, stats); 0 when it is not served.
    pub kubelet_port: u16,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The machine's hostname (lower-cased, as a node name must be).
pub fn hostname() -> String {
    let name = read_trimmed("/proc/sys/kernel/hostname");
    if name.is_empty() {
        "localhost".into()
    } else {
        name.to_lowercase()
    }
}

/// The primary IPv4 address: the source address of the default route, found by "connecting"
/// a UDP socket towards a public address (no packet is sent).
pub fn detect_node_ip() -> std::io::Result<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect("8.8.8.8:53")?;
    Ok(socket.local_addr()?.ip())
}

/// `MemTotal` of `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `PRETTY_NAME` of `/etc/os-release` text.
pub fn parse_os_release(text: &str) -> Option<String> {
    let value = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    Some(value.trim().trim_matches('"').to_string())
}

/// Go's name for a Rust architecture.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

impl NodeFacts {
    /// Reads the machine's facts; the runtime's version and pod CIDR come from the caller.
    pub fn gather(
        name: String,
        ip: String,
        max_pods: u32,
        runtime_version: String,
        pod_cidr: Option<String>,
        kubelet_port: u16,
    ) -> NodeFacts {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        NodeFacts {
            name,
            ip,
            hostname: hostname(),
            cpu_millis: i64::try_from(cpus).unwrap_or(1) * 1000,
            memory_bytes: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| parse_meminfo(&t))
                .unwrap_or(0),
            max_pods,
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            os_image: std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|t| parse_os_release(&t))
                .unwrap_or_else(|| "Linux".into()),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
            architecture: go_arch(std::env::consts::ARCH).to_string(),
            runtime_version,
            pod_cidr,
            kubelet_port,
        }
    }
}

/// The labels the agent puts on its Node.
pub fn node_labels(facts: &NodeFacts) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), facts.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), facts.architecture.clone()),
    ])
}

/// The Node to create.
pub fn node_object(facts: &NodeFacts, runtime_ready: &Result<(), String>, now: Timestamp) -> Node {
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(facts.name.clone()),
            labels: Some(node_labels(facts)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: facts.pod_cidr.clone(),
            pod_cidrs: facts.pod_cidr.clone().map(|c| vec![c]),
            ..Default::default()
        }),
        status: Some(node_status(facts, runtime_ready, None, now)),
    }
}

/// The Node's status: capacity, addresses, system info and conditions (Ready follows the
/// container runtime); a condition keeps its transition time while its status holds.
pub fn node_status(
    facts: &NodeFacts,
    runtime_ready: &Result<(), String>,
    old: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let capacity = BTreeMap::from([
        ("cpu".to_string(), quantity::from_milli(facts.cpu_millis)),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", facts.memory_bytes / 1024)),
        ),
        ("pods".to_string(), Quantity(facts.max_pods.to_string())),
    ]);
    let now_t = api_time(now);
    let condition = |type_: &str, ok: bool, reason: &str, message: &str| {
        let before = old
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == type_));
        let status = if ok { "True" } else { "False" }.to_string();
        let last_transition_time = match before {
            Some(b) if b.status == status => b.last_transition_time.clone().or(Some(now_t.clone())),
            _ => Some(now_t.clone()),
        };
        NodeCondition {
            type_: type_.into(),
            status,
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now_t.clone()),
            last_transition_time,
        }
    };
    let ready = match runtime_ready {
        Ok(()) => condition(
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status",
        ),
        Err(why) => condition(
            "Ready",
            false,
            "KubeletNotReady",
            &format!("container runtime is down: {why}"),
        ),
    };
    NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: facts.ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: facts.hostname.clone(),
            },
        ]),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            ready,
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: facts.architecture.clone(),
            boot_id: facts.boot_id.clone(),
            container_runtime_version: facts.runtime_version.clone(),
            kernel_version: facts.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: facts.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: facts.os_image.clone(),
            system_uuid: facts.system_uuid.clone(),
            swap: None,
        }),
        // Where the apiserver reaches this agent for logs, exec and stats.
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(facts.kubelet_port),
            }),
        }),
        ..old.cloned().unwrap_or_default()
    }
}

/// Whether two statuses differ in more than heartbeat times.
pub fn status_changed(old: &NodeStatus, new: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(old) != strip(new)
}

/// The Lease's spec at a renewal.
pub fn lease_spec(node: &str, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(node.into()),
        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    }
}

/// Registers the node, then keeps its status and Lease fresh until `shutdown`.
pub async fn run(
    client: kube::Client,
    facts: NodeFacts,
    runtime: Arc<dyn Runtime>,
    recorder: Recorder,
    shutdown: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    recorder.normal(&node_ref(&facts.name), "Starting", "Starting kubelet.");
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let mut lease_tick = tokio::time::interval(LEASE_INTERVAL);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut registered: Option<Node> = None;
    let mut retry = Duration::from_millis(500);
    let mut reported: Option<(NodeStatus, Timestamp)> = None;
    let mut lease: Option<Lease> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = status_tick.tick() => {}
            _ = lease_tick.tick(), if registered.is_some() => {
                if let Some(node) = &registered {
                    lease = renew_lease(&leases, node, lease.take()).await;
                }
                continue;
            }
        }
        let ready = runtime.healthy().await.map_err(|e| e.to_string());
        let now = Timestamp::now();
        let Some(node) = &registered else {
            match register(&nodes, &facts, &ready, now).await {
                Ok(node) => {
                    tracing::info!(node = %facts.name, "node registered");
                    retry = Duration::from_millis(500);
                    reported = None;
                    registered = Some(node);
                    // Report the status and take the Lease at once rather than a tick later.
                    status_tick.reset_immediately();
                    lease_tick.reset_immediately();
                }
                Err(e) => {
                    // The apiserver may still be starting: retry soon, then less often.
                    tracing::warn!(error = %e, "cannot register the node; retrying in {retry:?}");
                    status_tick.reset_after(retry);
                    retry = (retry * 2).min(STATUS_INTERVAL);
                }
            }
            continue;
        };
        let old = reported.as_ref().map(|(s, _)| s).or(node.status.as_ref());
        let status = node_status(&facts, &ready, old, now);
        let due = match &reported {
            None => true,
            Some((last, at)) => {
                status_changed(last, &status)
                    || now.duration_since(*at).as_secs() >= STATUS_REPORT_INTERVAL.as_secs() as i64
            }
        };
        if !due {
            continue;
        }
        // The first report after registering announces readiness, as upstream's NodeReady.
        let was_ready = reported.as_ref().is_some_and(|(s, _)| is_ready(s));
        let patch = serde_json::json!({ "status": status });
        match nodes
            .patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                let now_ready = is_ready(&status);
                if now_ready && !was_ready {
                    recorder.normal(
                        &node_ref(&facts.name),
                        "NodeReady",
                        format!("Node {} status is now: NodeReady", facts.name),
                    );
                } else if !now_ready && was_ready {
                    recorder.normal(
                        &node_ref(&facts.name),
                        "NodeNotReady",
                        format!("Node {} status is now: NodeNotReady", facts.name),
                    );
                }
                reported = Some((status, now));
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::warn!(node = %facts.name, "the node was deleted; registering it again");
                registered = None;
                lease = None;
                status_tick.reset_immediately();
            }
            Err(e) => tracing::warn!(error = %e, "cannot report the node status"),
        }
    }
}

fn is_ready(status: &NodeStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Creates the Node, or adopts the existing one (adding our labels and pod CIDR if missing).
async fn register(
    nodes: &Api<Node>,
    facts: &NodeFacts,
    ready: &Result<(), String>,
    now: Timestamp,
) -> Result<Node, kube::Error> {
    match nodes
        .create(&PostParams::default(), &node_object(facts, ready, now))
        .await
    {
        Ok(node) => return Ok(node),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    let existing = nodes.get(&facts.name).await?;
    let labels = existing.metadata.labels.clone().unwrap_or_default();
    let missing: BTreeMap<String, String> = node_labels(facts)
        .into_iter()
        .filter(|(k, v)| labels.get(k) != Some(v))
        .collect();
    let cidr_missing = facts.pod_cidr.is_some()
        && existing
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_ref())
            .is_none();
    if missing.is_empty() && !cidr_missing {
        return Ok(existing);
    }
    let mut patch = serde_json::json!({ "metadata": { "labels": missing } });
    if cidr_missing {
        patch["spec"] =
            serde_json::json!({ "podCIDR": facts.pod_cidr, "podCIDRs": [facts.pod_cidr] });
    }
    nodes
        .patch(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// Renews (or first takes) the node's Lease; returns the Lease as stored, or `None` to start
/// from a fresh read next time.
async fn renew_lease(leases: &Api<Lease>, node: &Node, current: Option<Lease>) -> Option<Lease> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let now = Timestamp::now();
    let current = match current {
        Some(lease) => Some(lease),
        None => match leases.get_opt(&name).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the node lease");
                return None;
            }
        },
    };
    let result = match current {
        Some(mut lease) => {
            lease.spec = Some(lease_spec(&name, now));
            leases.replace(&name, &PostParams::default(), &lease).await
        }
        None => {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid: node.metadata.uid.clone().unwrap_or_default(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(lease_spec(&name, now)),
            };
            leases.create(&PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(lease) => Some(lease),
        Err(e) => {
            // A conflict or a vanished Lease: read it afresh at the next renewal.
            tracing::warn!(error = %e, "cannot renew the node lease");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            ip: "192.168.1.10".into(),
            hostname: "box".into(),
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
            max_pods: 110,
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            system_uuid: "s".into(),
            architecture: "amd64".into(),
            runtime_version: "docker://20.10.24".into(),
            pod_cidr: Some("10.88.0.0/16".into()),
            kubelet_port: 10250,
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn machine_files_parse() {
        assert_eq!(
            parse_meminfo("MemTotal:       16305824 kB\nMemFree: 1 kB\n"),
            Some(16_305_824 * 1024)
        );
        assert_eq!(parse_meminfo("nothing"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB"), None);
        assert_eq!(
            parse_os_release("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            Some("Debian GNU/Linux 12 (bookworm)".into())
        );
        assert_eq!(parse_os_release("ID=x"), None);
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[test]
    fn the_node_object() {
        let node = node_object(&facts(), &Ok(()), t(0));
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        assert_eq!(
            node.spec.unwrap().pod_cidrs,
            Some(vec!["10.88.0.0/16".to_string()])
        );
        let status = node.status.unwrap();
        let cap = status.capacity.unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "8388608Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(status.allocatable.unwrap(), cap);
        let addresses: Vec<(String, String)> = status
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(
            addresses,
            vec![
                ("InternalIP".into(), "192.168.1.10".into()),
                ("Hostname".into(), "box".into())
            ]
        );
        assert_eq!(
            status
                .daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port),
            Some(10250)
        );
        let info = status.node_info.unwrap();
        assert_eq!(info.container_runtime_version, "docker://20.10.24");
        assert_eq!(info.kubelet_version, "v1.33.0-miniorch");
        assert_eq!(info.operating_system, "linux");
        let conditions: Vec<(String, String, String)> = status
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| (c.type_, c.status, c.reason.unwrap()))
            .collect();
        assert_eq!(
            conditions,
            vec![
                (
                    "MemoryPressure".into(),
                    "False".into(),
                    "KubeletHasSufficientMemory".into()
                ),
                (
                    "DiskPressure".into(),
                    "False".into(),
                    "KubeletHasNoDiskPressure".into()
                ),
                (
                    "PIDPressure".into(),
                    "False".into(),
                    "KubeletHasSufficientPID".into()
                ),
                ("Ready".into(), "True".into(), "KubeletReady".into()),
            ]
        );
    }

    #[test]
    fn heartbeats_alone_are_not_changes_but_readiness_is() {
        let first = node_status(&facts(), &Ok(()), None, t(0));
        let later = node_status(&facts(), &Ok(()), Some(&first), t(10));
        assert!(!status_changed(&first, &later));
        let ready = |s: &NodeStatus| {
            s.conditions
                .clone()
                .unwrap()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
        };
        assert_eq!(ready(&later).last_heartbeat_time, Some(api_time(t(10))));
        assert_eq!(ready(&later).last_transition_time, Some(api_time(t(0))));
        let down = node_status(&facts(), &Err("no answer".into()), Some(&later), t(20));
        assert!(status_changed(&later, &down));
        assert_eq!(ready(&down).status, "False");
        assert_eq!(ready(&down).reason.as_deref(), Some("KubeletNotReady"));
        assert_eq!(ready(&down).last_transition_time, Some(api_time(t(20))));
        assert!(!is_ready(&down) && is_ready(&later));
    }

    #[test]
    fn leases() {
        let spec = lease_spec("n1", t(5));
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(t(5))));
    }
}
