//! pod-garbage-collector-controller (podgc): every 20 s, removes the pods nobody else will.
//! - Pods bound to a node that no longer exists (checked against the apiserver after 40 s of
//!   quarantine, so a cache lagging behind a new node does not cost pods): marked `Failed` with
//!   a `DisruptionTarget` condition, then force-deleted, terminating ones included.
//! - Terminating pods on an out-of-service node (`node.kubernetes.io/out-of-service` taint, not
//!   Ready): the same.
//! - Terminating pods never bound to a node: force-deleted.
//! - Finished pods (`Succeeded`/`Failed`) above `--terminated-pod-gc-threshold`: the oldest go.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;

use super::{ControllerContext, ControllerError, Descriptor};

/// The controller's registry entry.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "pod-garbage-collector-controller",
    aliases: &["podgc"],
    enabled_by_default: true,
    start,
};

/// Upstream `gcCheckPeriod`.
const GC_CHECK_PERIOD: Duration = Duration::from_secs(20);
/// Upstream `quarantineTime`: how long a node must be missing before its pods go.
pub const QUARANTINE: Duration = Duration::from_secs(40);
/// Deletions in flight at once.
const PARALLEL_DELETES: usize = 10;
/// The taint an admin puts on a node that is down for good.
pub const TAINT_OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

/// Why a pod is removed, and so whether it is marked Failed first and with what message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its node is gone.
    Orphaned,
    /// Terminating on an out-of-service node.
    OutOfService,
    /// Terminating without ever having been bound.
    UnscheduledTerminating,
    /// Finished, and over the threshold.
    Terminated,
}

impl Reason {
    /// The `DisruptionTarget` condition message, for reasons that mark the pod Failed.
    pub fn disruption_message(self) -> Option<&'static str> {
        match self {
            Reason::Orphaned => Some("PodGC: node no longer exists"),
            Reason::OutOfService => Some("PodGC: node is out-of-service"),
            Reason::UnscheduledTerminating | Reason::Terminated => None,
        }
    }
}

/// One pod to force-delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid (a precondition: a new pod of the same name is not touched).
    pub uid: String,
    /// Why.
    pub reason: Reason,
    /// Mark it `Failed` before deleting (it has not finished by itself).
    pub mark_failed: bool,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn is_terminated(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The nodes pods are bound to that the cache does not know.
pub fn missing_nodes(pods: &[Arc<Pod>], node_exists: impl Fn(&str) -> bool) -> HashSet<String> {
    pods.iter()
        .filter_map(|p| node_of(p))
        .filter(|n| !node_exists(n))
        .map(str::to_string)
        .collect()
}

/// When each missing node was first seen missing; a node must stay missing for the whole
/// quarantine before its pods are collected.
#[derive(Debug, Default, Clone)]
pub struct Quarantine {
    since: HashMap<String, Timestamp>,
}

impl Quarantine {
    /// Records which nodes are missing now; returns those missing for at least `period`
    /// (to be confirmed against the apiserver). Nodes that reappeared are forgotten.
    pub fn due(
        &mut self,
        missing: &HashSet<String>,
        now: Timestamp,
        period: Duration,
    ) -> Vec<String> {
        self.since.retain(|n, _| missing.contains(n));
        for n in missing {
            self.since.entry(n.clone()).or_insert(now);
        }
        let period = jiff::SignedDuration::try_from(period).unwrap_or(jiff::SignedDuration::MAX);
        let mut due: Vec<String> = self
            .since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= period)
            .map(|(n, _)| n.clone())
            .collect();
        due.sort();
        due
    }

    /// The node exists after all.
    pub fn release(&mut self, node: &str) {
        self.since.remove(node);
    }
}

fn out_of_service(node: &Node) -> bool {
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == TAINT_OUT_OF_SERVICE && t.effect == "NoExecute")
        });
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    tainted && !ready
}

/// The pure decision of one pass: which pods to delete and why. `deleted_nodes` are nodes
/// confirmed gone; `node` looks a node up in the cache. A pod is listed once.
pub fn plan(
    pods: &[Arc<Pod>],
    node: impl Fn(&str) -> Option<Arc<Node>>,
    deleted_nodes: &HashSet<String>,
    terminated_threshold: i64,
) -> Vec<Deletion> {
    let mut out: Vec<Deletion> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    let mut push = |p: &Pod, reason: Reason, out: &mut Vec<Deletion>| {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        if !taken.insert(uid.clone()) {
            return;
        }
        out.push(Deletion {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            uid,
            reason,
            mark_failed: reason.disruption_message().is_some() && !is_terminated(p),
        });
    };

    if terminated_threshold > 0 {
        let mut terminated: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_terminated(p)).collect();
        let excess = terminated.len() as i64 - terminated_threshold;
        if excess > 0 {
            // Upstream byEvictionAndCreationTimestamp: evicted first, then oldest.
            terminated.sort_by_key(|p| {
                let evicted =
                    p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
                (
                    !evicted,
                    p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    p.metadata.name.clone(),
                )
            });
            for p in terminated.into_iter().take(excess as usize) {
                push(p, Reason::Terminated, &mut out);
            }
        }
    }
    for p in pods {
        let terminating = p.metadata.deletion_timestamp.is_some();
        match node_of(p) {
            Some(n) if deleted_nodes.contains(n) => push(p, Reason::Orphaned, &mut out),
            Some(n) if terminating && node(n).is_some_and(|n| out_of_service(&n)) => {
                push(p, Reason::OutOfService, &mut out)
            }
            None if terminating => push(p, Reason::UnscheduledTerminating, &mut out),
            _ => {}
        }
    }
    out
}

/// The status patch that marks a pod Failed with a `DisruptionTarget` condition.
pub fn failed_patch(message: &str, now: Timestamp) -> serde_json::Value {
    serde_json::json!({
        "status": {
            "phase": "Failed",
            "conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByPodGC",
                "message": message,
                "lastTransitionTime": Time(now),
            }]
        }
    })
}

struct Gc {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    threshold: i64,
    quarantine: Quarantine,
    metrics: crate::metrics::Metrics,
}

fn start(
    cx: &mut ControllerContext<'_>,
    token: CancellationToken,
) -> Result<BoxFuture<'static, ()>, ControllerError> {
    let mut gc = Gc {
        client: cx.client.clone(),
        pods: cx.informers.pods().store(),
        nodes: cx.informers.nodes().store(),
        threshold: cx.settings.terminated_pod_gc_threshold,
        quarantine: Quarantine::default(),
        metrics: cx.metrics.clone(),
    };
    Ok(Box::pin(async move {
        tracing::info!(controller = DESCRIPTOR.name, "controller started");
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(GC_CHECK_PERIOD) => {}
            }
            let timer = gc.metrics.sync_timer(DESCRIPTOR.name);
            match gc.pass().await {
                Ok(()) => timer.success(),
                Err(e) => tracing::warn!(error = %e, "pod garbage collection pass failed"),
            }
        }
        tracing::info!(controller = DESCRIPTOR.name, "controller stopped");
    }))
}

impl Gc {
    async fn pass(&mut self) -> Result<(), ControllerError> {
        let pods = self.pods.state();
        let nodes = self.nodes.clone();
        let cached = move |n: &str| nodes.get(&ObjectRef::new(n));
        let missing = missing_nodes(&pods, |n| cached(n).is_some());
        let due = self.quarantine.due(&missing, Timestamp::now(), QUARANTINE);
        let mut deleted = HashSet::new();
        let api: Api<Node> = Api::all(self.client.clone());
        for n in due {
            // The cache may lag: ask the apiserver before taking pods away.
            match api.get_opt(&n).await? {
                None => {
                    deleted.insert(n);
                }
                Some(_) => self.quarantine.release(&n),
            }
        }
        let deletions = plan(&pods, cached, &deleted, self.threshold);
        if deletions.is_empty() {
            return Ok(());
        }
        tracing::info!(count = deletions.len(), "garbage collecting pods");
        let client = self.client.clone();
        let results: Vec<Result<(), kube::Error>> = stream::iter(deletions)
            .map(|d| delete(client.clone(), d))
            .buffer_unordered(PARALLEL_DELETES)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }
}

async fn delete(client: kube::Client, d: Deletion) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client, &d.namespace);
    let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
    if d.mark_failed
        && let Some(message) = d.reason.disruption_message()
    {
        let patch = failed_patch(message, Timestamp::now());
        match api
            .patch_status(&d.name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(d.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    tracing::info!(pod = format!("{}/{}", d.namespace, d.name), reason = ?d.reason, "force-deleting pod");
    match api.delete(&d.name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus, Taint,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    struct P(Pod);

    fn pod(name: &str) -> P {
        P(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(t(0))),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        })
    }

    impl P {
        fn on(mut self, node: &str) -> Self {
            self.0.spec.as_mut().unwrap().node_name = Some(node.into());
            self
        }
        fn phase(mut self, phase: &str) -> Self {
            self.0.status.as_mut().unwrap().phase = Some(phase.into());
            self
        }
        fn created(mut self, s: i64) -> Self {
            self.0.metadata.creation_timestamp = Some(Time(t(s)));
            self
        }
        fn terminating(mut self) -> Self {
            self.0.metadata.deletion_timestamp = Some(Time(t(1)));
            self
        }
        fn evicted(mut self) -> Self {
            self.0.status.as_mut().unwrap().reason = Some("Evicted".into());
            self
        }
        fn arc(self) -> Arc<Pod> {
            Arc::new(self.0)
        }
    }

    fn node(name: &str, ready: &str, out_of_service: bool) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: out_of_service.then(|| {
                    vec![Taint {
                        key: TAINT_OUT_OF_SERVICE.into(),
                        effect: "NoExecute".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn summary(d: &[Deletion]) -> Vec<(String, Reason, bool)> {
        d.iter()
            .map(|d| (d.name.clone(), d.reason, d.mark_failed))
            .collect()
    }

    #[test]
    fn plans_as_upstream() {
        let nodes: HashMap<String, Arc<Node>> = [
            ("alive".to_string(), node("alive", "True", false)),
            ("dead".to_string(), node("dead", "False", true)),
        ]
        .into();
        let lookup = |n: &str| nodes.get(n).cloned();
        let pods = vec![
            pod("fine").on("alive").arc(),
            pod("orphan").on("gone").arc(),
            pod("orphan-done").on("gone").phase("Succeeded").arc(),
            pod("orphan-terminating").on("gone").terminating().arc(),
            pod("not-yet-confirmed").on("lagging").arc(),
            pod("oos-terminating").on("dead").terminating().arc(),
            pod("oos-running").on("dead").arc(),
            pod("never-bound-terminating").terminating().arc(),
            pod("pending").arc(),
        ];
        let deleted: HashSet<String> = ["gone".to_string()].into();
        let got = summary(&plan(&pods, lookup, &deleted, 0));
        assert_eq!(
            got,
            vec![
                ("orphan".into(), Reason::Orphaned, true),
                ("orphan-done".into(), Reason::Orphaned, false),
                ("orphan-terminating".into(), Reason::Orphaned, true),
                ("oos-terminating".into(), Reason::OutOfService, true),
                (
                    "never-bound-terminating".into(),
                    Reason::UnscheduledTerminating,
                    false
                ),
            ]
        );
    }

    #[test]
    fn terminated_pods_over_the_threshold_oldest_and_evicted_first() {
        let pods = vec![
            pod("new").on("n").phase("Succeeded").created(30).arc(),
            pod("old").on("n").phase("Failed").created(10).arc(),
            pod("evicted")
                .on("n")
                .phase("Failed")
                .created(40)
                .evicted()
                .arc(),
            pod("middle").on("n").phase("Succeeded").created(20).arc(),
            pod("running").on("n").created(0).arc(),
        ];
        let none = |_: &str| None;
        let names = |threshold| -> Vec<String> {
            plan(&pods, none, &HashSet::new(), threshold)
                .into_iter()
                .map(|d| d.name)
                .collect()
        };
        assert_eq!(names(2), ["evicted", "old"]);
        assert_eq!(names(4), Vec::<String>::new());
        assert_eq!(names(0), Vec::<String>::new(), "0 disables");
        assert_eq!(names(1), ["evicted", "old", "middle"]);
    }

    #[test]
    fn quarantine_waits_and_forgets() {
        let mut q = Quarantine::default();
        let missing: HashSet<String> = ["a".into(), "b".into()].into();
        assert!(q.due(&missing, t(0), QUARANTINE).is_empty());
        assert!(q.due(&missing, t(39), QUARANTINE).is_empty());
        assert_eq!(q.due(&missing, t(40), QUARANTINE), ["a", "b"]);
        // "b" reappears in the cache: its clock restarts if it goes missing again.
        let only_a: HashSet<String> = ["a".into()].into();
        assert_eq!(q.due(&only_a, t(41), QUARANTINE), ["a"]);
        assert_eq!(q.due(&missing, t(42), QUARANTINE), ["a"]);
        q.release("a");
        assert!(
            q.due(&missing, t(43), QUARANTINE).is_empty(),
            "both clocks restarted"
        );
        assert_eq!(q.due(&missing, t(82), QUARANTINE), ["b"]);
    }

    #[test]
    fn missing_nodes_are_found() {
        let pods = vec![
            pod("a").on("n1").arc(),
            pod("b").on("n2").arc(),
            pod("c").arc(),
        ];
        let got = missing_nodes(&pods, |n| n == "n1");
        assert_eq!(got, ["n2".to_string()].into());
    }

    #[test]
    fn failed_patch_shape() {
        let p = failed_patch("PodGC: node no longer exists", t(0));
        assert_eq!(p["status"]["phase"], "Failed");
        assert_eq!(p["status"]["conditions"][0]["type"], "DisruptionTarget");
        assert_eq!(p["status"]["conditions"][0]["reason"], "DeletionByPodGC");
    }
}
