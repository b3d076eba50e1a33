//! The whole agent loop against a real apiserver over a real etcd, with real Docker: the node
//! registers and turns Ready with its Lease, a bound pod runs and answers HTTP at its pod IP
//! with its name, a finished pod reports its exit code, a graceful deletion removes the
//! containers and then the pod, and stopping the agent leaves running pods alone.

mod common;

use common::{body, clean_up, containers, eventually, http_get, load_images, unique_id};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Event, Node, Pod, PodSpec};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use miniorch_agent::images::DEMO_IMAGE;
use miniorch_apiserver::testing::ControlPlane;
use tokio_util::sync::CancellationToken;

fn demo_pod(name: &str, node: &str, args: &[&str], restart_policy: &str) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            restart_policy: Some(restart_policy.into()),
            termination_grace_period_seconds: Some(5),
            containers: vec![Container {
                name: "main".into(),
                image: Some(DEMO_IMAGE.into()),
                args: (!args.is_empty()).then(|| args.iter().map(|a| a.to_string()).collect()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_bound_pods_end_to_end() {
    let docker = miniorch_agent::runtime::docker::connect(None)
        .await
        .expect("Docker must be reachable for this test");
    load_images(&docker).await;
    let cp = ControlPlane::start(&[]).await;
    let (api_port, stop) = (cp.port, CancellationToken::new());
    let cluster = unique_id();
    let result = tokio::spawn({
        let (docker, cluster, stop) = (docker.clone(), cluster.clone(), stop.clone());
        async move { scenario(&docker, &cluster, api_port, stop).await }
    })
    .await;
    stop.cancel();
    clean_up(&docker, &cluster).await;
    drop(cp);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn scenario(docker: &bollard::Docker, cluster: &str, api_port: u16, stop: CancellationToken) {
    let server = format!("http://127.0.0.1:{api_port}");
    let client =
        kube::Client::try_from(kube::Config::new(server.parse().expect("url"))).expect("client");
    eventually("the apiserver", || async {
        client.apiserver_version().await.ok()
    })
    .await;

    let node = format!("node-{cluster}");
    let agent_stop = stop.child_token();
    let config = <miniorch_agent::Config as clap::Parser>::try_parse_from([
        "miniorch-agent",
        "--server",
        &server,
        "--node-name",
        &node,
        "--node-ip",
        "127.0.0.1",
        "--cluster-id",
        cluster,
        "--healthz-port",
        "0",
        // No kubelet API here: it would take the well-known port a real agent may hold.
        "--port",
        "0",
    ])
    .expect("flags");
    let agent = tokio::spawn(miniorch_agent::run(config, agent_stop.clone()));

    // The node registers, turns Ready and holds its Lease.
    let nodes: Api<Node> = Api::all(client.clone());
    let registered = eventually("a Ready node", || async {
        nodes.get_opt(&node).await.ok().flatten().filter(|n| {
            n.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await;
    let status = registered.status.expect("status");
    assert_eq!(status.capacity.expect("capacity")["pods"].0, "110");
    assert_eq!(
        status.node_info.expect("info").kubelet_version,
        "v1.33.0-miniorch"
    );
    let labels = registered.metadata.labels.expect("labels");
    assert_eq!(labels["kubernetes.io/hostname"], node);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = eventually("the node lease", || async {
        leases.get_opt(&node).await.ok().flatten()
    })
    .await;
    assert_eq!(
        lease.spec.expect("spec").holder_identity.as_deref(),
        Some(node.as_str())
    );

    // A bound pod runs and answers with its own name at its pod IP.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &demo_pod("web", &node, &[], "Always"),
    )
    .await
    .expect("create web");
    let web = eventually("web Running with an IP", || async {
        pods.get("web").await.ok().filter(|p| {
            let s = p.status.as_ref();
            s.and_then(|s| s.phase.as_deref()) == Some("Running")
                && s.and_then(|s| s.pod_ip.as_ref()).is_some()
        })
    })
    .await;
    let status = web.status.expect("status");
    let ip = status.pod_ip.expect("pod ip");
    assert_eq!(body(&http_get(&format!("{ip}:8080"))), "web\n");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    let main = &status.container_statuses.expect("container statuses")[0];
    assert!(
        main.ready
            && main
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("docker://"))
    );
    let conditions: Vec<(String, String)> = status
        .conditions
        .expect("conditions")
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    for wanted in [
        "PodScheduled",
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ] {
        assert!(
            conditions.contains(&(wanted.to_string(), "True".to_string())),
            "{wanted}: {conditions:?}"
        );
    }
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually("a Started event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.involved_object.name.as_deref() == Some("web")
                && e.reason.as_deref() == Some("Started")
        })
    })
    .await;

    // A pod that finishes reports how.
    pods.create(
        &PostParams::default(),
        &demo_pod("job", &node, &["exit", "3"], "Never"),
    )
    .await
    .expect("create job");
    let job = eventually("job Failed", || async {
        pods.get("job")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
    })
    .await;
    let state = job
        .status
        .and_then(|s| s.container_statuses)
        .expect("statuses")[0]
        .state
        .clone()
        .expect("state");
    assert_eq!(state.terminated.expect("terminated").exit_code, 3);

    // Graceful deletion: the agent stops and removes the containers, then deletes the pod.
    let web_uid = web.metadata.uid.expect("uid");
    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    eventually("web gone", || async {
        pods.get_opt("web")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    assert!(containers(docker, cluster, Some(&web_uid)).await.is_empty());

    // Stopping the agent leaves pods running (a restarted agent adopts them).
    pods.create(
        &PostParams::default(),
        &demo_pod("stays", &node, &[], "Always"),
    )
    .await
    .expect("create stays");
    let stays = eventually("stays Running", || async {
        pods.get("stays")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    agent_stop.cancel();
    agent.await.expect("agent task").expect("agent run");
    let uid = stays.metadata.uid.expect("uid");
    let left = containers(docker, cluster, Some(&uid)).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)),
        "{left:?}"
    );
}
