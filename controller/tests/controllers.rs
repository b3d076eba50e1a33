//! The controller-manager binary against a real apiserver over etcd: node lifecycle (a silent
//! node goes Unknown and is tainted, and recovers), pod garbage collection, namespace deletion,
//! leader lease, health and metrics.

#[path = "../../scheduler/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Cluster, eventually, free_port, http_get, now_rfc3339};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_miniorch-controller");
const WAIT: Duration = Duration::from_secs(30);

fn node(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}]
        }
    })
}

fn pod_on(name: &str, node: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "miniorch/demo:latest"}]}
    })
}

/// What the agent does: renew the node's lease.
async fn renew_lease(leases: &Api<Lease>, node: &str) {
    let now = jiff::Timestamp::now().to_string();
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}
    });
    if leases.get_opt(node).await.unwrap().is_some() {
        leases
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"renewTime": now}})),
            )
            .await
            .unwrap();
    } else {
        let lease: Lease = serde_json::from_value(body).unwrap();
        leases.create(&Default::default(), &lease).await.unwrap();
    }
}

fn ready_status(n: &Node) -> Option<(String, Option<String>)> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn taint_keys(n: &Node) -> Vec<String> {
    let mut keys: Vec<String> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn silent_nodes_go_unknown_and_come_back() {
    let cluster = Cluster::start(BIN).await;
    let port = free_port();
    let _cm = cluster.run(
        "controller",
        &[
            "--port",
            &port.to_string(),
            "--node-monitor-grace-period=8s",
            "--node-monitor-period=1s",
            "--controllers=node-lifecycle-controller",
        ],
    );
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    cluster.create::<Node>(node("n1")).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    cluster
        .create_in::<Pod>("default", pod_on("web", "n1"))
        .await;
    pods.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();

    // While the lease is renewed, the node stays Ready and untainted past the grace period.
    for _ in 0..12 {
        renew_lease(&leases, "n1").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let n = nodes.get("n1").await.unwrap();
    assert_eq!(ready_status(&n).map(|r| r.0).as_deref(), Some("True"));
    assert!(taint_keys(&n).is_empty(), "{:?}", taint_keys(&n));

    // Silence: Unknown, the unreachable taints, pods not ready, an event.
    let n = eventually(WAIT, "node n1 Unknown", || async {
        let n = nodes.get("n1").await.ok()?;
        (ready_status(&n)?.0 == "Unknown").then_some(n)
    })
    .await;
    let ready = n
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let keys = eventually(WAIT, "unreachable taints", || async {
        let keys = taint_keys(&nodes.get("n1").await.ok()?);
        (keys.len() == 2).then_some(keys)
    })
    .await;
    assert_eq!(
        keys,
        [
            "node.kubernetes.io/unreachable:NoExecute",
            "node.kubernetes.io/unreachable:NoSchedule"
        ]
    );
    eventually(WAIT, "pod marked not ready", || async {
        let p = pods.get("web").await.ok()?;
        p.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")
    })
    .await;
    let events: Api<Event> = Api::all(cluster.client.clone());
    eventually(WAIT, "NodeNotReady event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("NodeNotReady")
                && e.message.as_deref() == Some("Node n1 status is now: NodeNotReady")
        })
    })
    .await;

    // The agent is back: lease renewed and Ready posted; the taints go.
    renew_lease(&leases, "n1").await;
    let now = now_rfc3339();
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}}),
            ),
        )
        .await
        .unwrap();
    eventually(WAIT, "taints removed", || async {
        taint_keys(&nodes.get("n1").await.ok()?)
            .is_empty()
            .then_some(())
    })
    .await;

    let (code, metrics) = http_get(port, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "controller_sync_total{controller=\"node-lifecycle-controller\",result=\"success\"}"
        ),
        "{metrics}"
    );
    let (code, body) = http_get(port, "/healthz").await.expect("healthz");
    assert_eq!((code, body.as_str()), (200, "ok"));
    let lease: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-system");
    let holder = lease
        .get("kube-controller-manager")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert!(holder.is_some_and(|h| h.contains('_')));
}

#[tokio::test]
async fn namespace_deletion_empties_then_finalizes() {
    let cluster = Cluster::start(BIN).await;
    let _cm = cluster.run("controller", &["--port", "0", "--leader-elect=false"]);
    cluster.create::<Node>(node("n1")).await;
    cluster
        .create::<Namespace>(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        )
        .await;
    cluster
        .create_in::<Pod>("team", pod_on("bound", "n1"))
        .await;
    cluster
        .create_in::<Pod>(
            "team",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending"},
                   "spec": {"containers": [{"name": "app", "image": "miniorch/demo:latest"}]}}),
        )
        .await;
    cluster
        .create_in::<Lease>(
            "team",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "lock"}, "spec": {"holderIdentity": "someone"}}),
        )
        .await;
    cluster
        .create_in::<Event>(
            "team",
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "note"},
                   "involvedObject": {"kind": "Pod", "name": "bound", "namespace": "team"},
                   "reason": "Test", "message": "hello", "type": "Normal"}),
        )
        .await;

    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();

    // The bound pod terminates gracefully (its agent must stop it), so the namespace waits and
    // says why; everything else is already gone.
    let ns = eventually(WAIT, "content remaining condition", || async {
        let ns = namespaces.get("team").await.ok()?;
        let c = ns
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")?
            .clone();
        (c.status == "True").then_some((ns, c))
    })
    .await;
    assert_eq!(
        ns.0.status.as_ref().unwrap().phase.as_deref(),
        Some("Terminating")
    );
    assert_eq!(
        ns.1.message.as_deref(),
        Some("Some resources are remaining: pods has 1 resource instances")
    );
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "team");
    assert!(
        leases
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "team");
    assert!(events.get_opt("note").await.unwrap().is_none());

    // What the agent does once the containers stopped: delete the pod for good.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "team");
    pods.delete(
        "bound",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually(WAIT, "namespace removed", || async {
        matches!(namespaces.get_opt("team").await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn podgc_removes_orphans_and_old_finished_pods() {
    let cluster = Cluster::start(BIN).await;
    let _cm = cluster.run(
        "controller",
        &[
            "--port",
            "0",
            "--leader-elect=false",
            "--controllers=podgc",
            "--terminated-pod-gc-threshold=1",
        ],
    );
    cluster.create::<Node>(node("n1")).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    cluster
        .create_in::<Pod>("default", pod_on("orphan", "ghost"))
        .await;
    cluster
        .create_in::<Pod>("default", pod_on("alive", "n1"))
        .await;
    for name in ["done-old", "done-new"] {
        cluster
            .create_in::<Pod>("default", pod_on(name, "n1"))
            .await;
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
        // Creation timestamps have one-second resolution.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Quarantine (40 s) plus a pass (every 20 s), with room to spare.
    let gone = |name: &'static str| {
        let pods = pods.clone();
        async move { matches!(pods.get_opt(name).await, Ok(None)).then_some(()) }
    };
    eventually(Duration::from_secs(120), "orphan collected", || {
        gone("orphan")
    })
    .await;
    eventually(WAIT, "oldest finished pod collected", || gone("done-old")).await;
    assert!(
        pods.get_opt("done-new").await.unwrap().is_some(),
        "under the threshold"
    );
    assert!(pods.get_opt("alive").await.unwrap().is_some());
}
