//! The proxy's rules on a real kernel: rendered rules are applied with the real
//! `iptables-restore` inside a lab's "node" namespace, and connections from there (or from the
//! "pods" side) show where traffic lands. The host's tables are never touched.

mod support;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::process::Command;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use miniorch_proxy::apply;
use miniorch_proxy::model;
use miniorch_proxy::render::NodeConfig;
use support::{Lab, NODE_IP, POD_IP};

fn service(name: &str, cluster_ip: &str, spec: serde_json::Value) -> Service {
    let mut s = serde_json::json!({
        "metadata": {"namespace": "default", "name": name},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "protocol": "TCP", "port": 80}]},
    });
    json_merge(&mut s["spec"], spec);
    serde_json::from_value(s).unwrap()
}

fn json_merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn slice(service: &str, port: u16, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "other"}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "default", "name": format!("{service}-{port}"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": port}],
    }))
    .unwrap()
}

fn node() -> NodeConfig {
    NodeConfig {
        node_name: "node".into(),
        cluster_cidr: None,
        masquerade_all: false,
    }
}

async fn program(lab: &Lab, services: &[Service], slices: &[EndpointSlice]) {
    let m = model::build(services, slices, "node");
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
    apply::sync(&lab.iptables(), &m.ports, &node())
        .await
        .unwrap_or_else(|e| panic!("sync failed: {e}"));
}

#[tokio::test]
async fn cluster_ips_reach_endpoints_and_empty_services_are_rejected() {
    let lab = Lab::new();
    lab.serve(&[8080, 8081]);
    let services = [
        service("web", "10.96.0.10", serde_json::json!({})),
        service(
            "sticky",
            "10.96.0.11",
            serde_json::json!({"sessionAffinity": "ClientIP"}),
        ),
        service("empty", "10.96.0.12", serde_json::json!({})),
    ];
    // Two endpoints per service: the same pod IP on two ports.
    let slices = [
        slice("web", 8080, &[POD_IP]),
        slice("web", 8081, &[POD_IP]),
        slice("sticky", 8080, &[POD_IP]),
        slice("sticky", 8081, &[POD_IP]),
    ];
    program(&lab, &services, &slices).await;

    // Spread over both endpoints (40 tries: a miss has odds of 2^-39).
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let answer = lab
            .get(&lab.node, "10.96.0.10:80")
            .expect("connect to the cluster IP");
        let (port, client) = answer.split_once(' ').unwrap();
        assert_eq!(client, NODE_IP, "not masqueraded without a cluster CIDR");
        seen.insert(port.to_string());
    }
    assert_eq!(seen, ["8080", "8081"].map(String::from).into());

    // ClientIP affinity: every connection lands where the first did.
    let first = lab.get(&lab.node, "10.96.0.11:80").unwrap();
    for _ in 0..10 {
        assert_eq!(lab.get(&lab.node, "10.96.0.11:80").unwrap(), first);
    }

    // No endpoints: refused at once (filter REJECT), not a timeout.
    let err = lab.get(&lab.node, "10.96.0.12:80").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn node_ports_are_masqueraded_back_through_the_node() {
    let lab = Lab::new();
    lab.serve(&[8080]);
    let services = [service(
        "np",
        "10.96.0.20",
        serde_json::json!({"type": "NodePort",
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]}),
    )];
    program(&lab, &services, &[slice("np", 8080, &[POD_IP])]).await;
    // From the pods' side to the node's address: DNATed back to the pod, and masqueraded so
    // the reply returns through the node.
    let answer = lab
        .get(&lab.pods, &format!("{NODE_IP}:30080"))
        .expect("connect to the node port");
    assert_eq!(answer, format!("8080 {NODE_IP}"));
}

#[tokio::test]
async fn resyncs_replace_rules_and_cleanup_removes_them() {
    let lab = Lab::new();
    let services = [service("a", "10.96.0.30", serde_json::json!({}))];
    program(&lab, &services, &[slice("a", 8080, &[POD_IP])]).await;
    program(&lab, &services, &[slice("a", 8080, &[POD_IP])]).await;
    let nat = lab.save("nat");
    assert!(nat.contains("KUBE-SVC-"), "{nat}");
    for (chain, target) in [
        ("PREROUTING", "KUBE-SERVICES"),
        ("OUTPUT", "KUBE-SERVICES"),
        ("POSTROUTING", "KUBE-POSTROUTING"),
    ] {
        let jumps = nat
            .lines()
            .filter(|l| {
                l.starts_with(&format!("-A {chain} ")) && l.ends_with(&format!("-j {target}"))
            })
            .count();
        assert_eq!(jumps, 1, "{chain} -> {target} once:\n{nat}");
    }

    // The service goes away: its chains go with it.
    program(&lab, &[], &[]).await;
    let nat = lab.save("nat");
    assert!(
        !nat.contains("KUBE-SVC-") && !nat.contains("KUBE-SEP-"),
        "{nat}"
    );
    assert!(nat.contains(":KUBE-SERVICES"), "{nat}");

    apply::cleanup(&lab.iptables()).await.expect("cleanup");
    for table in ["nat", "filter"] {
        let t = lab.save(table);
        assert!(!t.contains("KUBE-"), "{table} after cleanup:\n{t}");
    }
}

#[test]
fn ipvs_mode_fails_with_one_clear_line_on_this_kernel() {
    let out = Command::new(env!("CARGO_BIN_EXE_miniorch-proxy"))
        .args([
            "--mode",
            "ipvs",
            "--node-name",
            "n1",
            "--healthz-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = if std::path::Path::new("/proc/net/ip_vs").exists() {
        "IPVS mode is not implemented in miniorch-proxy yet; run with --mode iptables"
    } else {
        "IPVS mode needs the ip_vs kernel module, which this kernel does not have; run with --mode iptables"
    };
    assert!(stderr.contains(want), "{stderr}");
}
