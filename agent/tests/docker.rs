//! The Docker runtime against the real engine: miniorch's images built from the static
//! binaries and loaded without a registry, then pods run, observed, answered over HTTP from the
//! host at the pod IP, and killed without leaving anything behind.
//!
//! Everything is labelled with a cluster id unique to the test run and removed at the end,
//! also when the test fails.

mod common;

use std::time::Duration;

use bollard::Docker;
use common::{body, clean_up, containers, http_get, load_images, unique_id};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use miniorch_agent::images::{DEMO_IMAGE, PAUSE_IMAGE};
use miniorch_agent::runtime::docker::{self, DockerConfig, DockerRuntime};
use miniorch_agent::runtime::{ObservedPod, ObservedState, Runtime, RuntimeError};
use miniorch_agent::spec::{self, PodFacts};

fn pod(name: &str, containers: Vec<Container>) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{}", unique_id())),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers,
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        }),
        status: None,
    }
}

fn demo(name: &str, args: &[&str]) -> Container {
    Container {
        name: name.into(),
        image: Some(DEMO_IMAGE.into()),
        args: (!args.is_empty()).then(|| args.iter().map(|a| a.to_string()).collect()),
        ..Default::default()
    }
}

/// Runs `pod` the way the agent's worker does: sandbox, then every container.
async fn run_pod(rt: &DockerRuntime, pod: &Pod) -> Vec<Result<(), RuntimeError>> {
    let sandbox = rt
        .run_sandbox(pod, &spec::sandbox_plan(pod), 0)
        .await
        .expect("sandbox");
    let mut results = Vec::new();
    for c in &pod.spec.as_ref().unwrap().containers {
        let facts = PodFacts {
            pod_ip: sandbox.ip.as_deref(),
            host_ip: "127.0.0.1",
            node_cpu_millis: 1000,
            node_memory_bytes: 1 << 30,
        };
        let plan = spec::container_plan(pod, c, &facts).expect("plan");
        results.push(
            rt.start_container(pod, &sandbox, &plan, 0)
                .await
                .map(|_| ()),
        );
    }
    results
}

async fn observe_until(
    rt: &DockerRuntime,
    uid: &str,
    what: &str,
    done: impl Fn(&ObservedPod) -> bool,
) -> ObservedPod {
    common::eventually(what, || async {
        rt.observe_pod(uid)
            .await
            .expect("observe")
            .filter(|p| done(p))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_in_docker_and_leave_nothing_behind() {
    let docker = docker::connect(None)
        .await
        .expect("Docker must be reachable for this test");
    load_images(&docker).await;
    let cluster = unique_id();
    let rt = DockerRuntime::new(
        docker.clone(),
        DockerConfig {
            cluster_id: cluster.clone(),
            node_name: "docker-test-node".into(),
            node_ip: "127.0.0.1".into(),
            pause_image: PAUSE_IMAGE.into(),
            pod_cidr: None,
        },
    );
    let result = tokio::spawn({
        let docker = docker.clone();
        let cluster = cluster.clone();
        async move { scenario(&docker, rt, &cluster).await }
    })
    .await;
    clean_up(&docker, &cluster).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn scenario(docker: &Docker, rt: DockerRuntime, cluster: &str) {
    let info = rt.prepare().await.expect("prepare");
    assert!(info.version.starts_with("docker://"), "{info:?}");
    assert!(info.pod_cidr.is_some(), "{info:?}");

    // Two containers in one pod share its network and hostname: both answer with the pod name.
    let web = pod(
        "web-1",
        vec![demo("web", &[]), demo("side", &["serve", "--port", "9090"])],
    );
    let uid = web.metadata.uid.clone().unwrap();
    assert!(run_pod(&rt, &web).await.iter().all(Result::is_ok));
    let observed = observe_until(&rt, &uid, "both containers running", |p| {
        p.containers.len() == 2
            && p.containers
                .iter()
                .all(|c| matches!(c.state, ObservedState::Running { .. }))
    })
    .await;
    let sandbox = observed.sandbox().expect("sandbox").clone();
    let ip = sandbox.ip.clone().expect("pod ip");
    assert!(sandbox.running);
    assert_eq!(
        (observed.name.as_str(), observed.namespace.as_str()),
        ("web-1", "default")
    );
    assert_eq!(observed.grace_period, Some(Duration::from_secs(5)));
    let response = http_get(&format!("{ip}:8080"));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(body(&response), "web-1\n");
    assert_eq!(body(&http_get(&format!("{ip}:9090"))), "web-1\n");
    let listed = rt.list_pods().await.expect("list");
    assert_eq!(
        listed.iter().map(|p| p.uid.as_str()).collect::<Vec<_>>(),
        vec![uid.as_str()]
    );

    // Containers that exit, and ones that cannot start, are reported as finished attempts.
    let mut broken = demo("broken", &[]);
    broken.command = Some(vec!["/no-such-binary".into()]);
    let jobs = pod("jobs", vec![demo("three", &["exit", "3"]), broken]);
    let jobs_uid = jobs.metadata.uid.clone().unwrap();
    let results = run_pod(&rt, &jobs).await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(RuntimeError::RunContainerError(_))),
        "{results:?}"
    );
    let observed = observe_until(&rt, &jobs_uid, "both containers finished", |p| {
        p.containers.len() == 2
            && p.containers
                .iter()
                .all(|c| matches!(c.state, ObservedState::Exited { .. }))
    })
    .await;
    for c in &observed.containers {
        let ObservedState::Exited {
            exit_code,
            reason,
            started_at,
            finished_at,
            ..
        } = &c.state
        else {
            unreachable!()
        };
        match c.name.as_str() {
            "three" => {
                assert_eq!((*exit_code, reason.as_deref()), (3, None));
                assert!(started_at.is_some() && finished_at.is_some());
            }
            _ => {
                assert_eq!(reason.as_deref(), Some("StartError"), "{c:?}");
                assert_ne!(*exit_code, 0);
            }
        }
    }

    // Without the pause image no sandbox can be made, and nothing is left half-made.
    let no_pause = DockerRuntime::new(
        docker.clone(),
        DockerConfig {
            cluster_id: cluster.to_string(),
            node_name: "docker-test-node".into(),
            node_ip: "127.0.0.1".into(),
            pause_image: "miniorch/no-such-pause:1".into(),
            pod_cidr: None,
        },
    );
    let orphan = pod("no-sandbox", vec![demo("web", &[])]);
    match no_pause
        .run_sandbox(&orphan, &spec::sandbox_plan(&orphan), 0)
        .await
    {
        Err(RuntimeError::CreatePodSandboxError(message)) => {
            assert!(message.contains("not on this node"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let orphan_uid = orphan.metadata.uid.as_deref();
    assert!(containers(docker, cluster, orphan_uid).await.is_empty());

    // An image that is not on the node and must not be pulled.
    let mut missing = demo("missing", &[]);
    missing.image = Some("miniorch/not-there:1".into());
    missing.image_pull_policy = Some("Never".into());
    let lonely = pod("lonely", vec![missing]);
    let results = run_pod(&rt, &lonely).await;
    assert!(
        matches!(&results[0], Err(RuntimeError::ErrImageNeverPull { .. })),
        "{results:?}"
    );

    // Stopping: the demo and the pause container exit 0 on SIGTERM, so a stop never waits out
    // the grace period (exit code 137 would mean they had to be killed).
    rt.stop_pod(&uid, Duration::from_secs(5))
        .await
        .expect("stop");
    let stopped = rt
        .observe_pod(&uid)
        .await
        .expect("observe")
        .expect("still there");
    assert!(!stopped.sandbox().unwrap().running);
    for c in &stopped.containers {
        assert!(
            matches!(c.state, ObservedState::Exited { exit_code: 0, .. }),
            "{c:?}"
        );
    }
    let pause = docker
        .inspect_container(&sandbox.id, None)
        .await
        .expect("inspect pause");
    assert_eq!(pause.state.and_then(|s| s.exit_code), Some(0));

    // Killing removes everything of each pod.
    for pod in [&uid, &jobs_uid, lonely.metadata.uid.as_ref().unwrap()] {
        rt.kill_pod(pod, Duration::from_secs(5))
            .await
            .expect("kill");
        assert_eq!(rt.observe_pod(pod).await.expect("observe"), None);
    }
    assert!(containers(docker, cluster, None).await.is_empty());
    assert!(rt.list_pods().await.expect("list").is_empty());
}
