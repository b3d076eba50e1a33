//! The scheduler binary against a real apiserver over etcd: binding, FailedScheduling events and
//! conditions, capacity of assumed pods, re-queue on node changes, health and metrics, and
//! leader election (one leader, clean release, failover, exit on lost leadership).

mod common;

use std::time::Duration;

use common::{Cluster, eventually, free_port, http_get};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_miniorch-scheduler");
const WAIT: Duration = Duration::from_secs(30);

fn node(name: &str, cpu: &str, ready: &str, unschedulable: bool) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"unschedulable": unschedulable},
        "status": {
            "capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady",
                            "lastHeartbeatTime": common::now_rfc3339()}]
        }
    })
}

fn pod(name: &str, cpu: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "miniorch/demo:latest",
                                  "resources": {"requests": {"cpu": cpu}}}]}
    })
}

async fn bound_node(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name)
        .await
        .ok()?
        .spec?
        .node_name
        .filter(|n| !n.is_empty())
}

/// The messages of the events with `reason` about `pod`.
async fn event_messages(events: &Api<Event>, pod: &str, reason: &str) -> Vec<String> {
    let Ok(list) = events.list(&ListParams::default()).await else {
        return vec![];
    };
    list.items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.message)
        .collect()
}

/// Waits for an event with exactly `message` (earlier attempts may have said something else
/// while the scheduler's cache was still catching up with the nodes).
async fn expect_event(events: &Api<Event>, pod: &str, reason: &str, message: &str) {
    eventually(WAIT, &format!("{reason} event {message:?}"), || async {
        event_messages(events, pod, reason)
            .await
            .iter()
            .any(|m| m == message)
            .then_some(())
    })
    .await;
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("kube-scheduler")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test]
async fn schedules_binds_and_explains_failures() {
    let cluster = Cluster::start(BIN).await;
    let port = free_port();
    let mut sched = cluster.run("scheduler", &["--port", &port.to_string()]);

    cluster.create::<Node>(node("n1", "1", "True", false)).await;
    cluster.create::<Node>(node("n2", "4", "True", true)).await;
    cluster
        .create::<Node>(node("n3", "4", "False", false))
        .await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");

    // A pod that fits goes to the only node that can take it.
    cluster
        .create_in::<Pod>("default", pod("web", "250m"))
        .await;
    let node = eventually(WAIT, "web bound", || bound_node(&pods, "web")).await;
    assert_eq!(node, "n1");
    let p = pods.get("web").await.unwrap();
    let scheduled = p.status.unwrap().conditions.unwrap();
    assert!(
        scheduled
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    expect_event(
        &events,
        "web",
        "Scheduled",
        "Successfully assigned default/web to n1",
    )
    .await;

    // A pod that fits nowhere: the upstream message, as an event and as the pod's condition.
    cluster.create_in::<Pod>("default", pod("big", "2")).await;
    let want = "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) were not ready, 1 node(s) were unschedulable.";
    expect_event(&events, "big", "FailedScheduling", want).await;
    let condition = eventually(WAIT, "PodScheduled=False with the message", || async {
        let p = pods.get("big").await.ok()?;
        p.status?.conditions?.into_iter().find(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.message.as_deref() == Some(want)
        })
    })
    .await;
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));

    // Uncordoning n2 gives the parked pod another try.
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .unwrap();
    let node = eventually(WAIT, "big bound after uncordon", || {
        bound_node(&pods, "big")
    })
    .await;
    assert_eq!(node, "n2");

    // Health, readiness and metrics.
    let (code, body) = http_get(port, "/healthz").await.expect("healthz answers");
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, _) = http_get(port, "/readyz").await.expect("readyz answers");
    assert_eq!(code, 200);
    let (_, metrics) = http_get(port, "/metrics").await.expect("metrics answer");
    assert!(
        metrics.contains("scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scheduler_binding_duration_seconds_count 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("leader_election_master_status 1"),
        "{metrics}"
    );

    // The leader lease is held, and released on a clean shutdown.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-system");
    let h = holder(&leases).await.expect("lease held");
    assert!(h.contains('_'), "identity is <hostname>_<uuid>: {h}");
    sched.signal("TERM");
    let status = sched.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "clean shutdown exits 0: {status:?}\n{}",
        sched.logs()
    );
    assert_eq!(holder(&leases).await.as_deref(), Some(""), "lease released");
}

#[tokio::test]
async fn consecutive_pods_see_the_capacity_of_assumed_ones() {
    let cluster = Cluster::start(BIN).await;
    cluster.create::<Node>(node("n1", "1", "True", false)).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    for name in ["a", "b", "c"] {
        cluster.create_in::<Pod>("default", pod(name, "400m")).await;
    }
    // Start after the pods exist, so all three are scheduled back to back.
    let _sched = cluster.run("scheduler", &["--port", "0", "--leader-elect=false"]);
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let failed = eventually(WAIT, "one pod left out", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await;
    assert_eq!(
        failed.message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    let bound = eventually(WAIT, "two pods bound", || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let n = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(bound, 2);
    let unbound: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(unbound, [failed.involved_object.name.unwrap()]);
}

#[tokio::test]
async fn one_leader_at_a_time_and_failover() {
    let cluster = Cluster::start(BIN).await;
    cluster.create::<Node>(node("n1", "4", "True", false)).await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-system");
    let mut a = cluster.run("scheduler-a", &["--port", "0"]);
    let first = eventually(WAIT, "a leads", || holder(&leases)).await;
    let mut b = cluster.run("scheduler-b", &["--port", "0"]);

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    cluster
        .create_in::<Pod>("default", pod("one", "100m"))
        .await;
    eventually(WAIT, "one bound", || bound_node(&pods, "one")).await;
    assert!(a.running() && b.running());
    assert_eq!(
        holder(&leases).await,
        Some(first.clone()),
        "the standby does not take over"
    );

    // The leader dies without releasing: the standby waits out the lease and takes over.
    a.signal("KILL");
    a.wait_exit(WAIT).await;
    let second = eventually(Duration::from_secs(60), "b takes over", || async {
        holder(&leases).await.filter(|h| *h != first)
    })
    .await;
    assert!(!second.is_empty());
    let lease = leases.get("kube-scheduler").await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    cluster
        .create_in::<Pod>("default", pod("two", "100m"))
        .await;
    eventually(WAIT, "two bound by the new leader", || {
        bound_node(&pods, "two")
    })
    .await;

    // The apiserver stops answering: the leader cannot renew within 10 s, gives up and exits
    // non-zero so that its supervisor restarts it.
    cluster.apiserver.signal("STOP");
    let status = b.wait_exit(Duration::from_secs(60)).await;
    cluster.apiserver.signal("CONT");
    assert!(
        !status.success(),
        "lost leadership must exit non-zero: {status:?}"
    );
    assert!(b.logs().contains("leaderelection lost"), "{}", b.logs());
}
