//! The whole proxy against a real apiserver over a real etcd, programming a lab's "node"
//! namespace (`--netns`): a Service the apiserver gives a cluster IP, plus an EndpointSlice
//! written by the test, becomes reachable from the node; removing the slice makes the service
//! refuse connections; /healthz and /metrics answer. The host's tables are never touched.

mod support;

use std::io::ErrorKind;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use miniorch_apiserver::testing::{ControlPlane, eventually, free_port};
use support::{Lab, POD_IP};
use tokio_util::sync::CancellationToken;

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_from_the_api_become_rules() {
    let lab = Lab::new();
    lab.serve(&[8080]);
    let cp = ControlPlane::start(&[]).await;
    let stop = CancellationToken::new();
    let server = cp.url.clone();
    let (healthz, metrics) = (free_port(), free_port());
    let proxy = <miniorch_proxy::Config as clap::Parser>::try_parse_from([
        "miniorch-proxy",
        "--server",
        &server,
        "--node-name",
        "node",
        "--netns",
        &lab.node,
        "--cluster-cidr",
        "10.250.0.0/24",
        "--healthz-port",
        &healthz.to_string(),
        "--metrics-port",
        &metrics.to_string(),
    ])
    .unwrap();
    let proxy_task = tokio::spawn(miniorch_proxy::run(proxy, stop.clone()));

    let client =
        miniorch_api::client::build(kube::Config::new(server.parse().unwrap()), "proxy-test")
            .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let svc = eventually("the apiserver creates the service", async || {
        services.create(&PostParams::default(), &svc).await.ok()
    })
    .await;
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("a cluster IP");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [POD_IP], "conditions": {"ready": true}, "nodeName": "node"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    let addr = format!("{ip}:80");
    let answer = eventually("the service answers from the node", async || {
        lab.get(&lab.node, &addr).ok()
    })
    .await;
    assert!(answer.starts_with("8080 "), "{answer}");

    // Ready once synced; the metrics name upstream's sync counters.
    let ready = eventually("readyz", async || http_get(healthz, "/readyz").await).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let m = eventually("metrics", async || http_get(metrics, "/metrics").await).await;
    assert!(
        m.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
        "{m}"
    );

    // No endpoints left: the service now refuses connections.
    slices
        .delete("web-abc", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the service refuses once its slice is gone",
        async || match lab.get(&lab.node, &addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    )
    .await;

    // The `kubernetes` service the apiserver made has rules too (its endpoint is the host's).
    let nat = lab.save("nat");
    assert!(nat.contains("default/kubernetes:https cluster IP"), "{nat}");

    stop.cancel();
    proxy_task.await.unwrap().unwrap();
    drop(cp);
}
