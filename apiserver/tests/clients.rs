//! Clients other than kubectl: kube-rs (here) and the official Python client (`python.rs`'s
//! script) list, watch, create, patch and delete; several apiservers over one store serve the
//! same data, and a watch resumed on another apiserver from its last resourceVersion misses
//! nothing.

mod support;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{
    Api as KApi, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use support::{Api, STORES};

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "kube-rs"}},
        "spec": {"containers": [{"name": "c", "image": "miniorch/demo"}]}
    }))
    .expect("pod")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn kube_rs_lists_watches_creates_patches_and_deletes() {
    for store in STORES {
        let api = Api::start(store);
        rt().block_on(async {
            let pods: KApi<Pod> = KApi::namespaced(api.client(None), "default");
            let list = pods.list(&ListParams::default()).await.expect("list");
            let rv = list.metadata.resource_version.clone().expect("list rv");
            let mut watch = pods.watch(&WatchParams::default(), &rv).await.expect("watch").boxed();

            pods.create(&PostParams::default(), &pod("a")).await.expect("create");
            let patched = pods
                .patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})))
                .await
                .expect("patch");
            assert_eq!(patched.metadata.labels.as_ref().and_then(|l| l.get("x")).map(String::as_str), Some("y"));
            let applied = pods
                .patch("b", &PatchParams::apply("kube-rs").force(), &Patch::Apply(pod("b")))
                .await
                .expect("server-side apply creates");
            assert_eq!(applied.metadata.name.as_deref(), Some("b"));
            let selected = pods.list(&ListParams::default().labels("x=y")).await.expect("list by label");
            assert_eq!(selected.items.len(), 1);
            pods.delete("a", &DeleteParams::default()).await.expect("delete");

            let mut seen = Vec::new();
            while seen.len() < 4 {
                match tokio::time::timeout(std::time::Duration::from_secs(10), watch.try_next()).await {
                    Ok(Ok(Some(WatchEvent::Added(p)))) => seen.push(format!("ADDED {}", p.metadata.name.unwrap_or_default())),
                    Ok(Ok(Some(WatchEvent::Modified(p)))) => seen.push(format!("MODIFIED {}", p.metadata.name.unwrap_or_default())),
                    Ok(Ok(Some(WatchEvent::Deleted(p)))) => seen.push(format!("DELETED {}", p.metadata.name.unwrap_or_default())),
                    Ok(Ok(Some(_))) => {}
                    other => panic!("watch ended early on {store:?}: {other:?}; seen {seen:?}"),
                }
            }
            assert_eq!(seen, vec!["ADDED a", "MODIFIED a", "ADDED b", "DELETED a"], "{store:?}");

            let services: KApi<Service> = KApi::namespaced(api.client(None), "default");
            let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})).expect("svc");
            let created = services.create(&PostParams::default(), &svc).await.expect("create service");
            assert!(created.spec.and_then(|s| s.cluster_ip).is_some_and(|ip| ip.starts_with("10.")));
            let err = services.create(&PostParams::default(), &svc).await.expect_err("second create");
            assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"), "{err:?}");
        });
    }
}

#[test]
fn several_apiservers_serve_one_store_and_watches_resume_on_another() {
    for store in STORES {
        let mut api = Api::start(store);
        let second = api.add_apiserver();
        rt().block_on(async {
            let a: KApi<Pod> = KApi::namespaced(api.client(None), "default");
            let b: KApi<Pod> = KApi::namespaced(api.client(Some(&second)), "default");
            let rv = a
                .list(&ListParams::default())
                .await
                .expect("list")
                .metadata
                .resource_version
                .expect("rv");
            // Watch on the first apiserver, see one event, then resume on the second.
            let mut w = a
                .watch(&WatchParams::default(), &rv)
                .await
                .expect("watch")
                .boxed();
            a.create(&PostParams::default(), &pod("one"))
                .await
                .expect("create one");
            let last_rv = match w.try_next().await.expect("event") {
                Some(WatchEvent::Added(p)) => p.metadata.resource_version.expect("rv"),
                other => panic!("{other:?}"),
            };
            drop(w);
            // Changes while no one watches, written through both servers.
            b.create(&PostParams::default(), &pod("two"))
                .await
                .expect("create two");
            a.delete("one", &DeleteParams::default())
                .await
                .expect("delete one");
            b.create(&PostParams::default(), &pod("three"))
                .await
                .expect("create three");
            assert_eq!(
                b.get("two")
                    .await
                    .expect("read through the other")
                    .metadata
                    .name
                    .as_deref(),
                Some("two")
            );
            let mut w = b
                .watch(&WatchParams::default(), &last_rv)
                .await
                .expect("resume")
                .boxed();
            let mut seen = Vec::new();
            while seen.len() < 3 {
                match tokio::time::timeout(std::time::Duration::from_secs(10), w.try_next()).await {
                    Ok(Ok(Some(WatchEvent::Added(p)))) => {
                        seen.push(format!("ADDED {}", p.metadata.name.unwrap_or_default()))
                    }
                    Ok(Ok(Some(WatchEvent::Deleted(p)))) => {
                        seen.push(format!("DELETED {}", p.metadata.name.unwrap_or_default()))
                    }
                    Ok(Ok(Some(WatchEvent::Modified(_) | WatchEvent::Bookmark(_)))) => {}
                    other => panic!("resumed watch failed on {store:?}: {other:?}; seen {seen:?}"),
                }
            }
            assert_eq!(
                seen,
                vec!["ADDED two", "DELETED one", "ADDED three"],
                "{store:?}"
            );
        });
    }
}
