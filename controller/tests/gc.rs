//! The garbage collector in the controller-manager binary, against a real apiserver over etcd,
//! driven by the real `kubectl`: background, foreground and orphan cascades, a restart with work
//! left over, and an owner reference across namespaces.

#[path = "../../scheduler/tests/common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Cluster, Proc, eventually, free_port, http_get};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_miniorch-controller");
/// A generous bound for the collector to act on a slow machine (not a speed assertion).
const WAIT: Duration = Duration::from_secs(60);

fn start_gc(cluster: &Cluster, name: &str, port: u16) -> Proc {
    cluster.run(
        name,
        &[
            "--port",
            &port.to_string(),
            "--leader-elect=false",
            "--controllers=garbage-collector-controller",
        ],
    )
}

fn kubeconfig(cluster: &Cluster) -> std::path::PathBuf {
    let path = cluster.dir.path().join("kubeconfig");
    if !path.exists() {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: u\ncurrent-context: t\nusers:\n- name: u\n  user: {{}}\n",
            cluster.server
        );
        std::fs::write(&path, text).expect("write kubeconfig");
    }
    path
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig(cluster))
        .arg("--cache-dir")
        .arg(cluster.dir.path().join("kube-cache"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl is installed")
}

/// Waits for kubectl: its exit code and everything it printed.
async fn finish(child: tokio::process::Child, args: &str) -> (Option<i32>, String) {
    let out = child.wait_with_output().await.expect("kubectl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ kubectl {args}\n{text}");
    (out.status.code(), text)
}

async fn run_kubectl(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    finish(kubectl(cluster, args), &args.join(" ")).await
}

fn owner(api_version: &str, kind: &str, m: &ObjectMeta, block: bool) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": m.name, "uid": m.uid,
        "controller": block, "blockOwnerDeletion": block,
    })
}

fn template(app: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": "miniorch/demo:latest"}]}
    })
}

async fn deployment(cluster: &Cluster, name: &str) -> ObjectMeta {
    cluster
        .create_in::<Deployment>(
            "default",
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template(name)}
            }),
        )
        .await
        .metadata
}

async fn replicaset(cluster: &Cluster, name: &str, app: &str, owners: Vec<Value>) -> ObjectMeta {
    cluster
        .create_in::<ReplicaSet>(
            "default",
            json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": name, "ownerReferences": owners},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}}, "template": template(app)}
            }),
        )
        .await
        .metadata
}

/// A pod never bound to a node: deleting it removes it at once (no agent needed).
async fn pod(cluster: &Cluster, name: &str, owners: Vec<Value>) -> ObjectMeta {
    cluster
        .create_in::<Pod>(
            "default",
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "ownerReferences": owners},
                "spec": {"containers": [{"name": "app", "image": "miniorch/demo:latest"}]}
            }),
        )
        .await
        .metadata
}

async fn configmap(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    owners: Vec<Value>,
    finalizers: &[&str],
) -> ObjectMeta {
    cluster
        .create_in::<ConfigMap>(
            namespace,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "ownerReferences": owners, "finalizers": finalizers},
                "data": {"k": "v"}
            }),
        )
        .await
        .metadata
}

/// The uids an object's owner references name.
fn owner_uids(m: &ObjectMeta) -> Vec<String> {
    m.owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.clone())
        .collect()
}

fn uid(m: &ObjectMeta) -> String {
    m.uid.clone().expect("created objects have a uid")
}

async fn gone<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    matches!(api.get_opt(name).await, Ok(None))
}

#[tokio::test]
async fn kubectl_delete_cascades_orphan_background_and_foreground() {
    let cluster = Cluster::start(BIN).await;
    let port = free_port();
    let gc = start_gc(&cluster, "controller", port);
    let c = cluster.client.clone();
    let (deploys, sets, pods, cms): (Api<Deployment>, Api<ReplicaSet>, Api<Pod>, Api<ConfigMap>) = (
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c.clone(), "default"),
    );
    let keeper = configmap(&cluster, "default", "keeper", vec![], &[]).await;
    let keeper_ref = owner("v1", "ConfigMap", &keeper, false);

    // --cascade=orphan: the dependents stay, without the reference to the deployment.
    let keep = deployment(&cluster, "keep").await;
    let keep_ref = owner("apps/v1", "Deployment", &keep, true);
    let keep_rs = replicaset(&cluster, "keep-1", "keep", vec![keep_ref.clone()]).await;
    pod(
        &cluster,
        "keep-1-a",
        vec![owner("apps/v1", "ReplicaSet", &keep_rs, true)],
    )
    .await;
    configmap(
        &cluster,
        "default",
        "keep-shared",
        vec![
            owner("apps/v1", "Deployment", &keep, false),
            keeper_ref.clone(),
        ],
        &[],
    )
    .await;
    let (code, out) = run_kubectl(
        &cluster,
        &[
            "delete",
            "deploy",
            "keep",
            "--cascade=orphan",
            "--timeout=120s",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{}", gc.logs());
    assert!(out.contains("deployment.apps \"keep\" deleted"), "{out}");
    assert!(gone(&deploys, "keep").await);
    let rs = sets.get("keep-1").await.expect("orphaned replicaset kept");
    assert_eq!(owner_uids(&rs.metadata), Vec::<String>::new());
    let p = pods.get("keep-1-a").await.expect("its pod kept");
    assert_eq!(owner_uids(&p.metadata), vec![uid(&keep_rs)]);
    let shared = cms.get("keep-shared").await.expect("kept");
    assert_eq!(
        owner_uids(&shared.metadata),
        vec![uid(&keeper)],
        "only the deleted owner's reference is removed"
    );

    // Background (kubectl's default): the deployment goes at once, then its dependents, all
    // the way down; a dependent with another live owner only loses the reference.
    let web = deployment(&cluster, "web").await;
    let web_ref = owner("apps/v1", "Deployment", &web, true);
    let web_rs = replicaset(&cluster, "web-1", "web", vec![web_ref.clone()]).await;
    let rs_ref = owner("apps/v1", "ReplicaSet", &web_rs, true);
    pod(&cluster, "web-1-a", vec![rs_ref.clone()]).await;
    pod(&cluster, "web-1-b", vec![rs_ref]).await;
    configmap(
        &cluster,
        "default",
        "web-settings",
        vec![owner("apps/v1", "Deployment", &web, false)],
        &[],
    )
    .await;
    configmap(
        &cluster,
        "default",
        "web-shared",
        vec![web_ref.clone(), keeper_ref.clone()],
        &[],
    )
    .await;
    let (code, out) = run_kubectl(&cluster, &["delete", "deploy", "web"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    eventually(WAIT, "web's dependents collected", || async {
        (gone(&sets, "web-1").await
            && gone(&pods, "web-1-a").await
            && gone(&pods, "web-1-b").await
            && gone(&cms, "web-settings").await)
            .then_some(())
    })
    .await;
    eventually(WAIT, "web-shared loses its reference to web", || async {
        let m = cms.get("web-shared").await.ok()?.metadata;
        (owner_uids(&m) == vec![uid(&keeper)]).then_some(())
    })
    .await;

    // --cascade=foreground: kubectl returns once the deployment is gone, which is after every
    // blocking dependent is gone. One dependent holds on (a finalizer of its own) to show the
    // deployment waiting for it.
    let fg = deployment(&cluster, "fg").await;
    let fg_ref = owner("apps/v1", "Deployment", &fg, true);
    let fg_rs = replicaset(&cluster, "fg-1", "fg", vec![fg_ref.clone()]).await;
    pod(
        &cluster,
        "fg-1-a",
        vec![owner("apps/v1", "ReplicaSet", &fg_rs, true)],
    )
    .await;
    configmap(
        &cluster,
        "default",
        "fg-hold",
        vec![fg_ref.clone()],
        &["example.com/hold"],
    )
    .await;
    configmap(
        &cluster,
        "default",
        "fg-loose",
        vec![owner("apps/v1", "Deployment", &fg, false)],
        &[],
    )
    .await;
    let args = [
        "delete",
        "deploy",
        "fg",
        "--cascade=foreground",
        "--timeout=120s",
    ];
    let mut running = kubectl(&cluster, &args);
    eventually(WAIT, "fg's dependents deleted, fg-hold held", || async {
        let hold = cms.get("fg-hold").await.ok()?;
        (hold.metadata.deletion_timestamp.is_some()
            && gone(&sets, "fg-1").await
            && gone(&pods, "fg-1-a").await
            && gone(&cms, "fg-loose").await)
            .then_some(())
    })
    .await;
    let waiting = deploys.get("fg").await.expect("fg waits for fg-hold");
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(
        waiting
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "foregroundDeletion"),
        "{:?}",
        waiting.metadata.finalizers
    );
    assert!(
        running.try_wait().expect("kubectl status").is_none(),
        "kubectl must wait while the deployment waits"
    );
    // What the holder's own controller would do: let go.
    cms.patch(
        "fg-hold",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release fg-hold");
    let (code, out) = finish(running, &args.join(" ")).await;
    assert_eq!(code, Some(0), "{out}\n{}", gc.logs());
    assert!(out.contains("deployment.apps \"fg\" deleted"), "{out}");
    assert!(gone(&deploys, "fg").await);
    assert!(gone(&cms, "fg-hold").await);

    // The orphans of the first step were left alone through all of this.
    assert!(sets.get("keep-1").await.is_ok());
    assert!(pods.get("keep-1-a").await.is_ok());
    assert!(cms.get("keeper").await.is_ok());

    let (code, metrics) = http_get(port, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "controller_sync_total{controller=\"garbage-collector-controller\",result=\"success\"}"
        ),
        "{metrics}"
    );
    let logs = gc.logs();
    assert!(logs.contains("all resource monitors have synced"), "{logs}");
}

#[tokio::test]
async fn work_left_while_down_is_done_after_a_restart() {
    let cluster = Cluster::start(BIN).await;
    let c = cluster.client.clone();
    let (deploys, cms): (Api<Deployment>, Api<ConfigMap>) = (
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c.clone(), "default"),
    );
    // No collector: deletions are recorded, nothing more happens.
    let mut made = Vec::new();
    for name in ["bg", "fg", "orphan"] {
        let d = deployment(&cluster, name).await;
        for i in 0..3 {
            configmap(
                &cluster,
                "default",
                &format!("{name}-{i}"),
                vec![owner("apps/v1", "Deployment", &d, true)],
                &[],
            )
            .await;
        }
        made.push(d);
    }
    deploys
        .delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    deploys
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    deploys
        .delete("orphan", &DeleteParams::orphan())
        .await
        .unwrap();
    assert!(
        deploys
            .get("fg")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    assert!(cms.get("bg-0").await.is_ok(), "nobody collects yet");

    // A collector killed without warning, then another: the work gets done once.
    let first = start_gc(&cluster, "controller-1", 0);
    eventually(WAIT, "first collector synced", || async {
        first
            .logs()
            .contains("all resource monitors have synced")
            .then_some(())
    })
    .await;
    first.signal("KILL");
    drop(first);
    let second = start_gc(&cluster, "controller-2", 0);
    eventually(WAIT, "everything collected", || async {
        for name in ["bg", "fg", "orphan"] {
            if !gone(&deploys, name).await {
                return None;
            }
        }
        for i in 0..3 {
            if !gone(&cms, &format!("bg-{i}")).await || !gone(&cms, &format!("fg-{i}")).await {
                return None;
            }
        }
        Some(())
    })
    .await;
    for i in 0..3 {
        let m = cms
            .get(&format!("orphan-{i}"))
            .await
            .unwrap_or_else(|e| panic!("orphan-{i} kept: {e}\n{}", second.logs()))
            .metadata;
        assert_eq!(owner_uids(&m), Vec::<String>::new());
    }
}

#[tokio::test]
async fn an_owner_in_another_namespace_is_reported_and_its_dependent_collected() {
    let cluster = Cluster::start(BIN).await;
    for ns in ["team-a", "team-b"] {
        cluster
            .create::<Namespace>(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
    }
    let gc = start_gc(&cluster, "controller", 0);
    let owner_meta = configmap(&cluster, "team-a", "owner", vec![], &[]).await;
    let dep = configmap(
        &cluster,
        "team-b",
        "dep",
        vec![owner("v1", "ConfigMap", &owner_meta, false)],
        &[],
    )
    .await;
    let b: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "team-b");
    let a: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "team-a");
    // Owners are looked up in the dependent's namespace: there is none, so it goes.
    eventually(WAIT, "dependent collected", || async {
        gone(&b, "dep").await.then_some(())
    })
    .await;
    assert!(
        a.get("owner").await.is_ok(),
        "the owner elsewhere is untouched"
    );
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "team-b");
    let e = eventually(WAIT, "OwnerRefInvalidNamespace event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("OwnerRefInvalidNamespace"))
    })
    .await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.involved_object.name.as_deref(), Some("dep"));
    assert_eq!(e.involved_object.uid, dep.uid);
    assert_eq!(
        e.message.as_deref(),
        Some(
            format!(
                "ownerRef [v1/ConfigMap, namespace: team-b, name: owner, uid: {}] does not exist in namespace \"team-b\"",
                uid(&owner_meta)
            )
            .as_str()
        ),
        "{}",
        gc.logs()
    );
    assert_eq!(
        e.source.and_then(|s| s.component).as_deref(),
        Some("garbage-collector-controller")
    );
}
