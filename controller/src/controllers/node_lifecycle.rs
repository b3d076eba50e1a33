//! node-lifecycle-controller: watches node heartbeats (the node's Lease in `kube-node-lease`
//! and its Ready condition) and, when a node has not been heard from for
//! `--node-monitor-grace-period`, sets its Ready and pressure conditions to `Unknown`
//! ("Kubelet stopped posting node status."). It keeps the condition taints in line with the
//! conditions (`node.kubernetes.io/not-ready` / `unreachable` as `NoSchedule` and `NoExecute`,
//! the pressure taints, `unschedulable` for cordoned nodes) and marks the pods of an
//! unreachable node not ready. When the node's agent posts Ready again, the taints go.
//!
//! As upstream, "heard from" is judged by *our* clock: the time we last saw the lease's
//! renewTime or the Ready heartbeat change, so clock skew between machines does not matter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use miniorch_api::events::{EventRecorder, EventType, Reporter, object_reference};
use tokio_util::sync::CancellationToken;

use super::{ControllerContext, ControllerError, Descriptor};
use crate::informers::NODE_LEASE_NAMESPACE;
use crate::runtime::{self, FailureBackoff};

/// The controller's registry entry.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "node-lifecycle-controller",
    aliases: &["nodelifecycle"],
    enabled_by_default: true,
    start,
};

/// The component name its events carry, as upstream.
const COMPONENT: &str = "node-controller";

/// Taint keys upstream's `TaintNodesByCondition` manages.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// The conditions that go `Unknown` with a silent node (NetworkUnavailable is the network
/// plugin's, not the kubelet's, so it stays).
const HEARTBEAT_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Timing settings (upstream flags of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `--node-monitor-period`: how often each node is checked.
    pub monitor_period: Duration,
    /// `--node-monitor-grace-period`: silence after which a node is `Unknown`.
    pub grace_period: Duration,
    /// `--node-startup-grace-period`: the same for a node that never posted Ready.
    pub startup_grace_period: Duration,
}

/// What we remember of a node between checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// When (our clock) the node was last heard from.
    pub probe: Timestamp,
    /// The Ready condition's heartbeat as last seen; `None` when the node had no Ready
    /// condition.
    pub ready_heartbeat: Option<Option<Timestamp>>,
    /// The lease's renewTime as last seen.
    pub lease_renew: Option<Timestamp>,
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn ready_status(conditions: &[NodeCondition]) -> Option<&str> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// Updates what we know of the node's liveness from what it shows now (upstream
/// `tryUpdateNodeHealth`, first half).
pub fn observe(
    node: &Node,
    lease: Option<&Lease>,
    saved: Option<&NodeHealth>,
    now: Timestamp,
) -> NodeHealth {
    let heartbeat = condition(node, "Ready").map(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    let mut health = match (saved, heartbeat) {
        // Never posted status: count from creation, so a dead-on-arrival node still times out.
        (None, None) => NodeHealth {
            probe: node
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(now),
            ready_heartbeat: None,
            lease_renew: None,
        },
        (None, Some(_)) => NodeHealth {
            probe: now,
            ready_heartbeat: heartbeat,
            lease_renew: None,
        },
        (Some(s), hb) => {
            let mut h = s.clone();
            if s.ready_heartbeat != hb {
                h.probe = now;
            }
            h.ready_heartbeat = hb;
            h
        }
    };
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    if let Some(renew) = renewed
        && health.lease_renew.is_none_or(|seen| renew > seen)
    {
        health.lease_renew = Some(renew);
        health.probe = now;
    }
    health
}

/// The node's conditions with the heartbeat ones set to `Unknown`, if the node has been silent
/// longer than its grace period and that changes its Ready condition; otherwise `None` (upstream
/// `tryUpdateNodeHealth`, second half).
pub fn stale_conditions(
    node: &Node,
    health: &NodeHealth,
    now: Timestamp,
    settings: &Settings,
) -> Option<Vec<NodeCondition>> {
    let before = condition(node, "Ready").cloned();
    let grace = if before.is_some() {
        settings.grace_period
    } else {
        settings.startup_grace_period
    };
    let silent_for = now.duration_since(health.probe);
    if silent_for <= jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX) {
        return None;
    }
    let mut conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for type_ in HEARTBEAT_CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => conditions.push(NodeCondition {
                type_: type_.to_string(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                last_transition_time: Some(Time(now)),
            }),
            Some(c) if c.status != "Unknown" => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
            }
            Some(_) => {}
        }
    }
    let after = conditions.iter().find(|c| c.type_ == "Ready");
    (after != before.as_ref()).then_some(conditions)
}

fn managed(t: &Taint) -> bool {
    match t.effect.as_str() {
        "NoSchedule" => [
            TAINT_NOT_READY,
            TAINT_UNREACHABLE,
            TAINT_MEMORY_PRESSURE,
            TAINT_DISK_PRESSURE,
            TAINT_PID_PRESSURE,
            TAINT_NETWORK_UNAVAILABLE,
            TAINT_UNSCHEDULABLE,
        ]
        .contains(&t.key.as_str()),
        "NoExecute" => [TAINT_NOT_READY, TAINT_UNREACHABLE].contains(&t.key.as_str()),
        _ => false,
    }
}

/// The taints the node should carry given its conditions and cordon (upstream's NoSchedule
/// tainting pass and taint-based eviction taints); `None` when they already match. Taints this
/// controller does not manage are kept as they are.
pub fn desired_taints(
    current: &[Taint],
    conditions: &[NodeCondition],
    unschedulable: bool,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let status = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.as_str())
    };
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    match status("Ready") {
        Some("False") => wanted.extend([
            (TAINT_NOT_READY, "NoSchedule"),
            (TAINT_NOT_READY, "NoExecute"),
        ]),
        Some("Unknown") => wanted.extend([
            (TAINT_UNREACHABLE, "NoSchedule"),
            (TAINT_UNREACHABLE, "NoExecute"),
        ]),
        _ => {}
    }
    for (type_, key) in [
        ("MemoryPressure", TAINT_MEMORY_PRESSURE),
        ("DiskPressure", TAINT_DISK_PRESSURE),
        ("PIDPressure", TAINT_PID_PRESSURE),
        ("NetworkUnavailable", TAINT_NETWORK_UNAVAILABLE),
    ] {
        if status(type_) == Some("True") {
            wanted.push((key, "NoSchedule"));
        }
    }
    if unschedulable {
        wanted.push((TAINT_UNSCHEDULABLE, "NoSchedule"));
    }
    let is_wanted = |t: &Taint| wanted.contains(&(t.key.as_str(), t.effect.as_str()));
    let mut result: Vec<Taint> = current
        .iter()
        .filter(|t| !managed(t) || is_wanted(t))
        .cloned()
        .collect();
    for (key, effect) in &wanted {
        if !result.iter().any(|t| t.key == *key && t.effect == *effect) {
            result.push(Taint {
                key: key.to_string(),
                value: None,
                effect: effect.to_string(),
                // Eviction times tolerationSeconds from here, so only NoExecute needs it.
                time_added: (*effect == "NoExecute").then_some(Time(now)),
            });
        }
    }
    (result.len() != current.len() || result.iter().any(|t| !current.contains(t))).then_some(result)
}

/// Whether the pod still claims to be ready (its Ready condition is not `False`).
pub fn pod_needs_not_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status != "False")
}

/// Everything one check of one node decides.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    /// The health record to keep.
    pub health: NodeHealth,
    /// New conditions to write through `nodes/status`.
    pub conditions: Option<Vec<NodeCondition>>,
    /// New taints to write.
    pub taints: Option<Vec<Taint>>,
    /// The node just became unreachable through us: record `NodeNotReady`.
    pub became_not_ready: bool,
    /// The node is unreachable: its pods must not claim to be ready.
    pub mark_pods_not_ready: bool,
}

/// The pure decision for one node at `now`.
pub fn plan(
    node: &Node,
    lease: Option<&Lease>,
    saved: Option<&NodeHealth>,
    now: Timestamp,
    settings: &Settings,
) -> NodePlan {
    let health = observe(node, lease, saved, now);
    let conditions = stale_conditions(node, &health, now, settings);
    let before = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let current = conditions.as_ref().unwrap_or(&before);
    let spec = node.spec.as_ref();
    let taints = desired_taints(
        spec.and_then(|s| s.taints.as_deref()).unwrap_or(&[]),
        current,
        spec.and_then(|s| s.unschedulable).unwrap_or(false),
        now,
    );
    let was_ready = ready_status(&before) == Some("True");
    let ready_now = ready_status(current);
    NodePlan {
        health,
        became_not_ready: was_ready && ready_now != Some("True") && conditions.is_some(),
        mark_pods_not_ready: ready_now == Some("Unknown"),
        conditions,
        taints,
    }
}

/// The running controller's shared state.
struct Ctx {
    client: kube::Client,
    leases: Store<Lease>,
    pods: Store<Pod>,
    health: Mutex<HashMap<String, NodeHealth>>,
    settings: Settings,
    events: EventRecorder,
    backoff: FailureBackoff,
    metrics: crate::metrics::Metrics,
}

fn start(
    cx: &mut ControllerContext<'_>,
    token: CancellationToken,
) -> Result<BoxFuture<'static, ()>, ControllerError> {
    let settings = cx.settings.node_lifecycle;
    let nodes = cx.informers.nodes();
    let node_store = nodes.store();
    let node_sub = nodes.subscribe().ok_or(ControllerError::InformerStarted)?;
    let lease_sub = cx
        .informers
        .node_leases()
        .subscribe()
        .ok_or(ControllerError::InformerStarted)?;
    let ctx = Arc::new(Ctx {
        client: cx.client.clone(),
        leases: cx.informers.node_leases().store(),
        pods: cx.informers.pods().store(),
        health: Mutex::new(HashMap::new()),
        settings,
        events: EventRecorder::new(
            cx.client.clone(),
            Reporter {
                component: COMPONENT.into(),
                instance: cx.identity.clone(),
            },
        ),
        backoff: FailureBackoff::default(),
        metrics: cx.metrics.clone(),
    });
    let prune_nodes = node_store.clone();
    let prune_ctx = ctx.clone();
    let prune_token = token.clone();
    let controller = Controller::for_shared_stream(node_sub, node_store)
        .watches_shared_stream(lease_sub, |lease: Arc<Lease>| {
            lease
                .metadata
                .name
                .clone()
                .map(|n| ObjectRef::<Node>::new(&n))
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(runtime::CONCURRENCY))
        .graceful_shutdown_on(token.cancelled_owned())
        .run(reconcile, error_policy, ctx);
    Ok(Box::pin(async move {
        // Forget nodes that are gone, now and then.
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = prune_token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
                let mut health = prune_ctx.health.lock().unwrap_or_else(|p| p.into_inner());
                health.retain(|name, _| prune_nodes.get(&ObjectRef::new(name)).is_some());
            }
        });
        runtime::drain(DESCRIPTOR.name, controller).await;
    }))
}

fn error_policy(node: Arc<Node>, error: &ControllerError, ctx: Arc<Ctx>) -> Action {
    let name = node.metadata.name.clone().unwrap_or_default();
    let delay = ctx.backoff.failed(&name);
    tracing::warn!(node = name, error = %error, retry_in = ?delay, "node lifecycle sync failed");
    Action::requeue(delay)
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let timer = ctx.metrics.sync_timer(DESCRIPTOR.name);
    let name = node.metadata.name.clone().unwrap_or_default();
    let lease = ctx
        .leases
        .get(&ObjectRef::new(&name).within(NODE_LEASE_NAMESPACE));
    let now = Timestamp::now();
    let saved = ctx
        .health
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .cloned();
    let plan = plan(&node, lease.as_deref(), saved.as_ref(), now, &ctx.settings);
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut current = (*node).clone();
    if let Some(conditions) = &plan.conditions {
        tracing::info!(
            node = name,
            "node stopped posting status; marking its conditions Unknown"
        );
        current
            .status
            .get_or_insert_with(Default::default)
            .conditions = Some(conditions.clone());
        current = api
            .replace_status(&name, &PostParams::default(), &current)
            .await?;
    }
    // Remember only once the write (if any) went through, so a failed one is redone.
    ctx.health
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.clone(), plan.health.clone());
    if let Some(taints) = &plan.taints {
        current.spec.get_or_insert_with(Default::default).taints = Some(taints.clone());
        api.replace(&name, &PostParams::default(), &current).await?;
    }
    if plan.became_not_ready {
        let message = format!("Node {name} status is now: NodeNotReady");
        ctx.events
            .record(
                &object_reference(&*node),
                EventType::Normal,
                "NodeNotReady",
                "",
                &message,
            )
            .await;
    }
    if plan.mark_pods_not_ready {
        mark_pods_not_ready(&ctx, &name, now).await?;
    }
    ctx.backoff.succeeded(&name);
    timer.success();
    Ok(Action::requeue(ctx.settings.monitor_period))
}

/// Upstream `MarkPodsNotReady`: the pods of an unreachable node are not ready (so Services stop
/// sending them traffic), whatever their last report said.
async fn mark_pods_not_ready(ctx: &Ctx, node: &str, now: Timestamp) -> Result<(), ControllerError> {
    let pods = ctx.pods.state_filter(|p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node) && pod_needs_not_ready(p)
    });
    for pod in pods {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": Time(now)}]}
        });
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                ctx.events
                    .record(
                        &object_reference(&*pod),
                        EventType::Warning,
                        "NodeNotReady",
                        "",
                        "Node is not ready",
                    )
                    .await;
            }
            // Deleted meanwhile: nothing to mark.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    const SETTINGS: Settings = Settings {
        monitor_period: Duration::from_secs(5),
        grace_period: Duration::from_secs(40),
        startup_grace_period: Duration::from_secs(60),
    };

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    fn cond(type_: &str, status: &str, heartbeat: i64) -> NodeCondition {
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            last_heartbeat_time: Some(Time(t(heartbeat))),
            last_transition_time: Some(Time(t(0))),
            reason: Some("KubeletReady".into()),
            message: None,
        }
    }

    fn node(conditions: Vec<NodeCondition>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                creation_timestamp: Some(Time(t(0))),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(conditions),
                ..Default::default()
            }),
        }
    }

    fn ready_node(heartbeat: i64) -> Node {
        node(vec![
            cond("Ready", "True", heartbeat),
            cond("MemoryPressure", "False", heartbeat),
        ])
    }

    fn lease(renew: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(t(renew))),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn liveness_is_judged_by_our_clock() {
        let n = ready_node(0);
        let first = observe(&n, None, None, t(100));
        assert_eq!(first.probe, t(100), "first sight counts as alive");
        let same = observe(&n, None, Some(&first), t(130));
        assert_eq!(same.probe, t(100), "nothing changed");
        let renewed = observe(&n, Some(&lease(5)), Some(&same), t(131));
        assert_eq!(
            renewed.probe,
            t(131),
            "a renewed lease is a heartbeat, whatever its clock says"
        );
        let again = observe(&n, Some(&lease(5)), Some(&renewed), t(160));
        assert_eq!(again.probe, t(131), "the same renewTime is not");
        let posted = observe(&ready_node(50), Some(&lease(5)), Some(&again), t(161));
        assert_eq!(posted.probe, t(161), "a new Ready heartbeat is");
        let never = observe(&node(vec![]), None, None, t(500));
        assert_eq!(
            never.probe,
            t(0),
            "a node that never posted counts from its creation"
        );
    }

    #[test]
    fn silent_nodes_go_unknown_after_the_grace_period() {
        let n = ready_node(0);
        let health = observe(&n, None, None, t(100));
        assert_eq!(
            stale_conditions(&n, &health, t(140), &SETTINGS),
            None,
            "40 s is not more than 40 s"
        );
        let stale = stale_conditions(&n, &health, t(141), &SETTINGS).expect("stale");
        let ready = stale.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(ready.last_transition_time, Some(Time(t(141))));
        assert_eq!(
            ready.last_heartbeat_time,
            Some(Time(t(0))),
            "the heartbeat is the kubelet's"
        );
        let memory = stale.iter().find(|c| c.type_ == "MemoryPressure").unwrap();
        assert_eq!(memory.status, "Unknown");
        let never = stale.iter().find(|c| c.type_ == "DiskPressure").unwrap();
        assert_eq!(never.reason.as_deref(), Some("NodeStatusNeverUpdated"));

        // Already Unknown: nothing more to write.
        let mut unknown = n.clone();
        unknown.status.as_mut().unwrap().conditions = Some(stale);
        assert_eq!(stale_conditions(&unknown, &health, t(200), &SETTINGS), None);
    }

    #[test]
    fn new_nodes_get_the_startup_grace_period() {
        let n = node(vec![]);
        let health = observe(&n, None, None, t(10));
        assert_eq!(stale_conditions(&n, &health, t(60), &SETTINGS), None);
        let stale = stale_conditions(&n, &health, t(61), &SETTINGS).unwrap();
        let ready = stale.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("Unknown", Some("NodeStatusNeverUpdated"))
        );
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: None,
        }
    }

    fn keys(taints: &[Taint]) -> Vec<String> {
        let mut k: Vec<String> = taints
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        k.sort();
        k
    }

    #[test]
    fn taints_follow_conditions() {
        let unreachable = [
            format!("{TAINT_UNREACHABLE}:NoExecute"),
            format!("{TAINT_UNREACHABLE}:NoSchedule"),
        ];
        let not_ready = [
            format!("{TAINT_NOT_READY}:NoExecute"),
            format!("{TAINT_NOT_READY}:NoSchedule"),
        ];
        let own = taint("dedicated", "NoSchedule");
        /// name, current taints, conditions, cordoned, expected taints (None: unchanged)
        type Case = (
            &'static str,
            Vec<Taint>,
            Vec<NodeCondition>,
            bool,
            Option<Vec<String>>,
        );
        let cases: Vec<Case> = vec![
            (
                "ready, clean",
                vec![],
                vec![cond("Ready", "True", 0)],
                false,
                None,
            ),
            (
                "unknown",
                vec![],
                vec![cond("Ready", "Unknown", 0)],
                false,
                Some(unreachable.to_vec()),
            ),
            (
                "false",
                vec![],
                vec![cond("Ready", "False", 0)],
                false,
                Some(not_ready.to_vec()),
            ),
            (
                "back to ready removes ours, keeps others",
                vec![
                    taint(TAINT_UNREACHABLE, "NoSchedule"),
                    taint(TAINT_UNREACHABLE, "NoExecute"),
                    own.clone(),
                ],
                vec![cond("Ready", "True", 0)],
                false,
                Some(vec!["dedicated:NoSchedule".into()]),
            ),
            (
                "unknown to false swaps",
                vec![
                    taint(TAINT_UNREACHABLE, "NoSchedule"),
                    taint(TAINT_UNREACHABLE, "NoExecute"),
                ],
                vec![cond("Ready", "False", 0)],
                false,
                Some(not_ready.to_vec()),
            ),
            (
                "pressure and cordon",
                vec![],
                vec![cond("Ready", "True", 0), cond("DiskPressure", "True", 0)],
                true,
                Some(vec![
                    format!("{TAINT_DISK_PRESSURE}:NoSchedule"),
                    format!("{TAINT_UNSCHEDULABLE}:NoSchedule"),
                ]),
            ),
            (
                "already right",
                vec![
                    taint(TAINT_UNREACHABLE, "NoSchedule"),
                    taint(TAINT_UNREACHABLE, "NoExecute"),
                ],
                vec![cond("Ready", "Unknown", 0)],
                false,
                None,
            ),
        ];
        for (name, current, conditions, cordoned, want) in cases {
            let got = desired_taints(&current, &conditions, cordoned, t(9));
            assert_eq!(got.as_deref().map(keys), want, "{name}");
        }
        let added = desired_taints(&[], &[cond("Ready", "Unknown", 0)], false, t(9)).unwrap();
        for t_ in added {
            let stamped = t_.time_added.is_some();
            assert_eq!(stamped, t_.effect == "NoExecute", "{t_:?}");
        }
    }

    #[test]
    fn the_whole_plan_for_a_node_that_goes_silent_and_comes_back() {
        let n = ready_node(0);
        let p = plan(&n, Some(&lease(0)), None, t(100), &SETTINGS);
        assert_eq!((p.conditions.clone(), p.taints.clone()), (None, None));
        assert!(!p.became_not_ready && !p.mark_pods_not_ready);

        let later = plan(&n, Some(&lease(0)), Some(&p.health), t(141), &SETTINGS);
        let conditions = later.conditions.clone().expect("Unknown now");
        assert!(later.became_not_ready && later.mark_pods_not_ready);
        assert_eq!(keys(later.taints.as_ref().unwrap()).len(), 2);

        // The next check sees our write: no new event, but pods stay marked.
        let mut written = n.clone();
        written.status.as_mut().unwrap().conditions = Some(conditions);
        written.spec.as_mut().unwrap().taints = later.taints.clone();
        let next = plan(
            &written,
            Some(&lease(0)),
            Some(&later.health),
            t(146),
            &SETTINGS,
        );
        assert_eq!((next.conditions.clone(), next.taints.clone()), (None, None));
        assert!(!next.became_not_ready && next.mark_pods_not_ready);

        // The agent comes back: lease renewed and Ready posted; the taints go.
        let mut back = ready_node(150);
        back.spec.as_mut().unwrap().taints = later.taints.clone();
        let recovered = plan(
            &back,
            Some(&lease(150)),
            Some(&next.health),
            t(151),
            &SETTINGS,
        );
        assert_eq!(recovered.conditions, None);
        assert_eq!(recovered.taints, Some(vec![]));
        assert!(!recovered.mark_pods_not_ready);
    }

    #[test]
    fn only_pods_claiming_readiness_are_marked() {
        let pod = |status: Option<&str>| Pod {
            status: Some(PodStatus {
                conditions: status.map(|s| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: s.into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(pod_needs_not_ready(&pod(Some("True"))));
        assert!(!pod_needs_not_ready(&pod(Some("False"))));
        assert!(!pod_needs_not_ready(&pod(None)));
    }
}
