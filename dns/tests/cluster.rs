//! The whole DNS server against a real apiserver over a real etcd: names follow Services and
//! EndpointSlices as they are created and deleted, queried with hickory's DNS client.

use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;

use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use miniorch_apiserver::testing::{ControlPlane, eventually};
use tokio_util::sync::CancellationToken;

/// The answer's code and records (as text), or `None` when the query itself failed.
async fn ask(
    client: &mut Client<TokioRuntimeProvider>,
    name: &str,
    qtype: RecordType,
) -> Option<(ResponseCode, Vec<String>)> {
    let r = client
        .query(Name::from_str(name).unwrap(), DNSClass::IN, qtype)
        .await
        .ok()?
        .into_message();
    Some((
        r.metadata.response_code,
        r.answers.iter().map(|a| a.data.to_string()).collect(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_follow_services_and_slices() {
    let cp = ControlPlane::start(&[]).await;
    let stop = CancellationToken::new();
    let server = cp.url.clone();
    let dns_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dns_addr: SocketAddr = ([127, 0, 0, 1], dns_port).into();
    let dns = <miniorch_dns::Config as clap::Parser>::try_parse_from([
        "miniorch-dns",
        "--server",
        &server,
        "--listen",
        &dns_addr.to_string(),
        "--healthz-port",
        "0",
    ])
    .unwrap();
    let dns_task = tokio::spawn(miniorch_dns::run(dns, stop.clone()));

    let conn = UdpClientStream::builder(dns_addr, TokioRuntimeProvider::default()).build();
    let (mut dig, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    tokio::spawn(bg);

    // The apiserver's own service.
    let (code, answers) = eventually("kubernetes.default resolves", async || {
        ask(
            &mut dig,
            "kubernetes.default.svc.cluster.local.",
            RecordType::A,
        )
        .await
        .filter(|(_, a)| !a.is_empty())
    })
    .await;
    assert_eq!(
        (code, answers),
        (ResponseCode::NoError, vec!["10.96.0.1".to_string()])
    );

    let client =
        miniorch_api::client::build(kube::Config::new(server.parse().unwrap()), "dns-test")
            .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let web: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap();
    let web = services.create(&PostParams::default(), &web).await.unwrap();
    let ip = web.spec.and_then(|s| s.cluster_ip).unwrap();
    let answers = eventually("web resolves to its cluster IP", async || {
        ask(&mut dig, "web.default.svc.cluster.local.", RecordType::A)
            .await
            .map(|(_, a)| a)
            .filter(|a| !a.is_empty())
    })
    .await;
    assert_eq!(answers, [ip]);
    let (_, srv) = ask(
        &mut dig,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await
    .unwrap();
    assert_eq!(srv, ["0 100 80 web.default.svc.cluster.local."]);

    // A headless service resolves to its ready endpoints.
    let db: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &db).await.unwrap();
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-abc", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.0.8"], "conditions": {"ready": false}},
        ],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let answers = eventually("db resolves to its ready endpoint", async || {
        ask(&mut dig, "db.default.svc.cluster.local.", RecordType::A)
            .await
            .map(|(_, a)| a)
            .filter(|a| !a.is_empty())
    })
    .await;
    assert_eq!(answers, ["10.244.0.7"]);
    let (_, a) = ask(
        &mut dig,
        "db-0.db.default.svc.cluster.local.",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(a, ["10.244.0.7"]);

    // Deleted: the name is gone.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("web is NXDOMAIN once deleted", async || {
        ask(&mut dig, "web.default.svc.cluster.local.", RecordType::A)
            .await
            .filter(|(code, _)| *code == ResponseCode::NXDomain)
    })
    .await;

    stop.cancel();
    dns_task.await.unwrap().unwrap();
    drop(cp);
}
