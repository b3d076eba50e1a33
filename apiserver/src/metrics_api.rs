//! `metrics.k8s.io/v1beta1`: `pods` (namespaced) and `nodes`, get and list, in metrics-server's
//! shapes (`PodMetrics`, `NodeMetrics` and their lists), so `kubectl top pod|node` and the
//! autoscaler work. Not a stored kind: each request asks the agents of the Ready nodes
//! concerned for their `/stats/summary` (upstream's Summary API), in parallel and with a short
//! timeout; a node that does not answer is left out, as metrics-server leaves out what it
//! could not scrape.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use futures::future::BoxFuture;
use http::StatusCode;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::State;
use crate::errors::{ApiError, ApiResult};
use crate::handlers::{ApiRequest, Endpoint, Filter, list_objects, read};
use crate::http::{Query, json_response};
use crate::node_proxy::{agent_address, agent_get, read_body};
use crate::registry::{Registry, ResourceInfo};
use crate::request::Verb;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";
/// How long an agent may take to answer for its summary (it measures each container over
/// about a second, and gives up on one after 4 s).
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest summary read.
const MAX_SUMMARY: usize = 16 * 1024 * 1024;
/// The window reported with every figure: the longest interval usage is averaged over by the
/// agents (about 1 s per container, 10 s for a node) or by a kubelet's cAdvisor, as
/// metrics-server reports its scrape interval.
pub const WINDOW: &str = "30s";

/// Which resource of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Pods,
    Nodes,
}

struct Metrics {
    info: ResourceInfo,
    which: Which,
}

/// Adds `pods` and `nodes` of metrics.k8s.io to the registry.
pub fn register(r: &mut Registry) {
    for (which, kind, plural, namespaced) in [
        (Which::Pods, "PodMetrics", "pods", true),
        (Which::Nodes, "NodeMetrics", "nodes", false),
    ] {
        r.add(Arc::new(Metrics {
            info: ResourceInfo {
                group: GROUP,
                version: VERSION,
                kind,
                plural,
                singular: "",
                namespaced,
                short_names: &[],
                categories: &[],
                verbs: &["get", "list"],
                subresources: Vec::new(),
            },
            which,
        }));
    }
}

impl Endpoint for Metrics {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }

    fn handle<'a>(
        &'a self,
        state: &'a State,
        req: ApiRequest,
    ) -> BoxFuture<'a, ApiResult<Response>> {
        Box::pin(async move {
            if req.path.subresource.is_some() {
                return Err(ApiError::no_route());
            }
            let name = req.path.name.as_deref();
            let ns = req.path.namespace.as_deref();
            match (self.which, req.verb) {
                (Which::Pods, Verb::Get | Verb::List) if name.is_some() && ns.is_none() => {
                    Err(ApiError::no_route())
                }
                (Which::Nodes, _) if ns.is_some() => Err(ApiError::no_route()),
                (Which::Pods, Verb::Get | Verb::List) => pods(state, &req).await,
                (Which::Nodes, Verb::Get | Verb::List) => nodes(state, &req).await,
                (_, verb) => Err(ApiError::method_not_allowed(format!(
                    "{verb:?} is not supported on {}.{GROUP}: metrics are read-only (get, list)",
                    self.info.plural
                ))),
            }
        })
    }

    fn start_cache(&self, _state: &State) {}
}

// ---------------------------------------------------------------------------------------------
// The part of the Summary API read here.

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    #[serde(default)]
    pub node: NodeStats,
    #[serde(default)]
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    #[serde(default)]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodRef,
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    #[serde(default)]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub usage_nano_cores: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    #[serde(default)]
    pub working_set_bytes: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Pure: summaries to metrics.

/// CPU in cores as a quantity, in the shortest exact form (`250m`, `1500u`, `12345n`).
pub fn cpu_quantity(nano_cores: u64) -> String {
    match nano_cores {
        0 => "0".into(),
        n if n % 1_000_000_000 == 0 => (n / 1_000_000_000).to_string(),
        n if n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{}u", n / 1_000),
        n => format!("{n}n"),
    }
}

/// Memory in bytes as a quantity (`10Mi`, or plain bytes).
pub fn memory_quantity(bytes: u64) -> String {
    miniorch_api::quantity::from_bytes(i64::try_from(bytes).unwrap_or(i64::MAX)).0
}

fn usage(cpu: Option<&CpuStats>, memory: Option<&MemoryStats>) -> Option<Value> {
    let cores = cpu?.usage_nano_cores?;
    let bytes = memory?.working_set_bytes?;
    Some(json!({"cpu": cpu_quantity(cores), "memory": memory_quantity(bytes)}))
}

fn metadata(
    name: Option<&str>,
    namespace: Option<&str>,
    labels: Option<&BTreeMap<String, String>>,
    now: &str,
) -> Value {
    let mut m = json!({"name": name, "creationTimestamp": now});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    if let Some(l) = labels.filter(|l| !l.is_empty()) {
        m["labels"] = json!(l);
    }
    m
}

/// A `NodeMetrics` for `node` from its agent's summary; `None` without both figures.
pub fn node_metrics(node: &Node, summary: &Summary, now: &str) -> Option<Value> {
    let usage = usage(summary.node.cpu.as_ref(), summary.node.memory.as_ref())?;
    let timestamp = summary
        .node
        .cpu
        .as_ref()
        .and_then(|c| c.time.clone())
        .unwrap_or_else(|| now.to_string());
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": API_VERSION,
        "metadata": metadata(node.metadata.name.as_deref(), None, node.metadata.labels.as_ref(), now),
        "timestamp": timestamp,
        "window": WINDOW,
        "usage": usage,
    }))
}

/// A `PodMetrics` for `pod` from its node's summary; `None` if the summary does not have the
/// pod, or has no complete figures for any of its containers.
pub fn pod_metrics(pod: &Pod, summary: &Summary, now: &str) -> Option<Value> {
    let meta = &pod.metadata;
    let stats = summary.pods.iter().find(|p| {
        Some(p.pod_ref.name.as_str()) == meta.name.as_deref()
            && Some(p.pod_ref.namespace.as_str()) == meta.namespace.as_deref()
            && (p.pod_ref.uid.is_empty() || Some(p.pod_ref.uid.as_str()) == meta.uid.as_deref())
    })?;
    let mut timestamp = None;
    let containers: Vec<Value> = stats
        .containers
        .iter()
        .filter_map(|c| {
            let usage = usage(c.cpu.as_ref(), c.memory.as_ref())?;
            if timestamp.is_none() {
                timestamp = c.cpu.as_ref().and_then(|c| c.time.clone());
            }
            Some(json!({"name": c.name, "usage": usage}))
        })
        .collect();
    if containers.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": API_VERSION,
        "metadata": metadata(meta.name.as_deref(), meta.namespace.as_deref(), meta.labels.as_ref(), now),
        "timestamp": timestamp.unwrap_or_else(|| now.to_string()),
        "window": WINDOW,
        "containers": containers,
    }))
}

/// Whether a node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

// ---------------------------------------------------------------------------------------------
// I/O.

/// The summaries of the Ready `nodes` whose agents answered in time, by node name.
async fn summaries(nodes: &[Node]) -> HashMap<String, Summary> {
    let asks = nodes.iter().filter(|n| is_ready(n)).filter_map(|n| {
        let name = n.metadata.name.clone()?;
        let addr = match agent_address(n) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "no metrics from this node");
                return None;
            }
        };
        Some(async move {
            // One bound for the whole answer, body included.
            let ask = async {
                let r = agent_get(&name, addr, "/stats/summary", SUMMARY_TIMEOUT)
                    .await
                    .map_err(|e| e.message)?;
                if !r.status().is_success() {
                    return Err(format!("the agent answered {}", r.status()));
                }
                let body = read_body(r.into_body(), MAX_SUMMARY).await?;
                serde_json::from_slice::<Summary>(&body).map_err(|e| format!("bad summary: {e}"))
            };
            let summary = tokio::time::timeout(SUMMARY_TIMEOUT, ask)
                .await
                .unwrap_or_else(|_| Err("the summary did not arrive in time".into()));
            match summary {
                Ok(s) => Some((name, s)),
                Err(e) => {
                    tracing::debug!(node = %name, error = %e, "no metrics from this node");
                    None
                }
            }
        })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": kind, "apiVersion": API_VERSION, "metadata": {}, "items": items}),
    )
}

async fn pods(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let ns = req.path.namespace.as_deref();
    let pods: Vec<Pod> = match req.path.name.as_deref() {
        Some(name) => match read::<Pod>(&st.store, ns, name).await {
            Ok((p, _)) => vec![p],
            Err(e) if e.code == 404 => {
                return Err(ApiError::not_found(GROUP, "podmetrics", name));
            }
            Err(e) => return Err(e),
        },
        None => {
            let filter = Filter::from_query::<Pod>(&req.query)?;
            list_objects::<Pod>(st, ns, &filter, &Query::default())
                .await?
                .0
        }
    };
    let mut node_names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    node_names.sort();
    node_names.dedup();
    let mut nodes = Vec::new();
    for n in node_names {
        match read::<Node>(&st.store, None, &n).await {
            Ok((node, _)) => nodes.push(node),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let by_node = summaries(&nodes).await;
    let now = now();
    let items: Vec<Value> = pods
        .iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.as_ref()?;
            pod_metrics(p, by_node.get(node)?, &now)
        })
        .collect();
    match req.path.name.as_deref() {
        Some(name) => match items.into_iter().next() {
            Some(item) => Ok(json_response(StatusCode::OK, &item)),
            None => Err(ApiError::not_found(GROUP, "podmetrics", name)),
        },
        None => Ok(list("PodMetricsList", items)),
    }
}

async fn nodes(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let nodes: Vec<Node> = match req.path.name.as_deref() {
        Some(name) => match read::<Node>(&st.store, None, name).await {
            Ok((n, _)) => vec![n],
            Err(e) if e.code == 404 => {
                return Err(ApiError::not_found(GROUP, "nodemetrics", name));
            }
            Err(e) => return Err(e),
        },
        None => {
            let filter = Filter::from_query::<Node>(&req.query)?;
            list_objects::<Node>(st, None, &filter, &Query::default())
                .await?
                .0
        }
    };
    let by_node = summaries(&nodes).await;
    let now = now();
    let items: Vec<Value> = nodes
        .iter()
        .filter_map(|n| node_metrics(n, by_node.get(n.metadata.name.as_deref()?)?, &now))
        .collect();
    match req.path.name.as_deref() {
        Some(name) => match items.into_iter().next() {
            Some(item) => Ok(json_response(StatusCode::OK, &item)),
            None => Err(ApiError::not_found(GROUP, "nodemetrics", name)),
        },
        None => Ok(list("NodeMetricsList", items)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_exact_and_short() {
        for (n, want) in [
            (0, "0"),
            (2_000_000_000, "2"),
            (250_000_000, "250m"),
            (1_000_000, "1m"),
            (1_500_000, "1500u"),
            (12_345, "12345n"),
        ] {
            assert_eq!(cpu_quantity(n), want);
        }
        assert_eq!(memory_quantity(10 << 20), "10Mi");
        assert_eq!(memory_quantity(1000), "1000");
    }

    fn summary() -> Summary {
        serde_json::from_value(json!({
            "node": {"nodeName": "n1",
                     "cpu": {"time": "2024-05-01T10:00:00Z", "usageNanoCores": 123_000_000u64},
                     "memory": {"time": "2024-05-01T10:00:00Z", "workingSetBytes": 2u64 << 30}},
            "pods": [
                {"podRef": {"name": "web", "namespace": "default", "uid": "u1"},
                 "containers": [
                    {"name": "web", "cpu": {"time": "2024-05-01T10:00:01Z", "usageNanoCores": 1_000_000u64},
                     "memory": {"workingSetBytes": 10u64 << 20}},
                    {"name": "side", "cpu": {"usageNanoCores": 5u64}}]},
                {"podRef": {"name": "old", "namespace": "default", "uid": "u0"},
                 "containers": [{"name": "c", "cpu": {"usageNanoCores": 1u64}, "memory": {"workingSetBytes": 1u64}}]}
            ]
        }))
        .unwrap()
    }

    fn pod(name: &str, uid: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(uid.into());
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p
    }

    #[test]
    fn pod_metrics_come_from_the_summary() {
        let now = "2024-05-01T10:00:05Z";
        let m = pod_metrics(&pod("web", "u1"), &summary(), now).unwrap();
        assert_eq!(
            m,
            json!({"kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                   "metadata": {"name": "web", "namespace": "default", "creationTimestamp": now, "labels": {"app": "web"}},
                   "timestamp": "2024-05-01T10:00:01Z", "window": "30s",
                   "containers": [{"name": "web", "usage": {"cpu": "1m", "memory": "10Mi"}}]})
        );
        // Another pod of the same name (a new uid) has no figures yet.
        assert_eq!(pod_metrics(&pod("old", "u9"), &summary(), now), None);
        assert_eq!(pod_metrics(&pod("nobody", "u2"), &summary(), now), None);
    }

    fn ready_node(name: &str, port: u16) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn nodes_that_do_not_answer_are_left_out() {
        // One agent answers; one port has nobody; one node is not Ready.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/stats/summary",
            axum::routing::get(|| async {
                axum::Json(json!({"node": {"nodeName": "up",
                    "cpu": {"usageNanoCores": 5_000_000u64}, "memory": {"workingSetBytes": 1024u64}}, "pods": []}))
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut not_ready = ready_node("asleep", port);
        not_ready.status.as_mut().unwrap().conditions = None;
        let nodes = [
            ready_node("up", port),
            ready_node("down", closed),
            not_ready,
        ];
        let got = summaries(&nodes).await;
        let mut names: Vec<&String> = got.keys().collect();
        names.sort();
        assert_eq!(names, ["up"]);
        let m = node_metrics(&nodes[0], &got["up"], "2024-05-01T10:00:00Z").unwrap();
        assert_eq!(m["usage"], json!({"cpu": "5m", "memory": "1Ki"}));
    }

    #[test]
    fn node_metrics_come_from_the_summary() {
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        let m = node_metrics(&node, &summary(), "2024-05-01T10:00:05Z").unwrap();
        assert_eq!(m["usage"], json!({"cpu": "123m", "memory": "2Gi"}));
        assert_eq!(m["timestamp"], "2024-05-01T10:00:00Z");
        assert_eq!(m["metadata"]["name"], "n1");
        assert_eq!(node_metrics(&node, &Summary::default(), "x"), None);
    }
}
