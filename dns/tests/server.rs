//! The DNS server on a real socket: started on a free port with a fixed view, queried over UDP
//! and TCP by hickory's own DNS client, as a pod's resolver would.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use miniorch_dns::resolve::Zone;
use miniorch_dns::server::{self, Handler, Metrics};
use miniorch_dns::view::View;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn svc(ns: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        .unwrap()
}

fn slice(ns: &str, service: &str, n: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..n)
        .map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 250, i % 250 + 1)], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": format!("{service}-x"), "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

/// A running server; stops when dropped.
struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(domain: &str, view: View, upstream: Vec<SocketAddr>) -> Running {
    let (udp, tcp) = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let handler = Handler::new(
        Arc::new(RwLock::new(Arc::new(view))),
        Zone::new(domain, 5).unwrap(),
        upstream,
        Metrics::default(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(handler, udp, tcp, stop.clone()));
    Running { addr, stop }
}

fn cluster_view() -> View {
    let services = [
        svc(
            "ns1",
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
        ),
        svc(
            "ns1",
            "db",
            json!({"clusterIP": "None", "ports": [{"name": "http", "port": 8080}]}),
        ),
        svc("ns1", "big", json!({"clusterIP": "None"})),
        svc(
            "ns1",
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
    ];
    let slices = [slice("ns1", "db", 2), slice("ns1", "big", 300)];
    View::build(&services, &slices, 1)
}

async fn udp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let conn = UdpClientStream::builder(addr, TokioRuntimeProvider::default()).build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    tokio::spawn(bg);
    client
}

async fn tcp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let (connect, sender) = TcpClientStream::new(addr, None, None, TokioRuntimeProvider::new());
    let (client, bg) = Client::<TokioRuntimeProvider>::new(connect.await.unwrap(), sender);
    tokio::spawn(bg);
    client
}

async fn ask(client: &mut Client<TokioRuntimeProvider>, name: &str, qtype: RecordType) -> Message {
    let response = client
        .query(Name::from_str(name).unwrap(), DNSClass::IN, qtype)
        .await
        .unwrap_or_else(|e| panic!("{name} {qtype}: {e}"));
    response.into_message()
}

fn answers(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.to_string()).collect()
}

#[tokio::test]
async fn answers_cluster_names_over_udp_and_tcp() {
    let server = start("cluster.local", cluster_view(), vec![]).await;
    for mut client in [udp_client(server.addr).await, tcp_client(server.addr).await] {
        let m = ask(&mut client, "web.ns1.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(
            answers(&m),
            ["web.ns1.svc.cluster.local. 5 IN A 10.96.0.10"]
        );

        let m = ask(
            &mut client,
            "_http._tcp.web.ns1.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(
            answers(&m),
            ["_http._tcp.web.ns1.svc.cluster.local. 5 IN SRV 0 100 80 web.ns1.svc.cluster.local."]
        );
        assert_eq!(m.additionals.len(), 1, "{m:?}");

        let m = ask(&mut client, "db.ns1.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            answers(&m),
            [
                "db.ns1.svc.cluster.local. 5 IN A 10.244.0.1",
                "db.ns1.svc.cluster.local. 5 IN A 10.244.0.2"
            ]
        );

        let m = ask(&mut client, "ext.ns1.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            answers(&m),
            ["ext.ns1.svc.cluster.local. 5 IN CNAME example.com."]
        );

        let m = ask(&mut client, "nope.ns1.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1, "the SOA for negative caching");

        // Not a cluster name and no --upstream: refused.
        let m = ask(&mut client, "example.com.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let server = start("cluster.local", cluster_view(), vec![]).await;
    let name = "big.ns1.svc.cluster.local.";
    let mut udp = udp_client(server.addr).await;
    let m = ask(&mut udp, name, RecordType::A).await;
    assert!(m.metadata.truncation, "300 A records do not fit 512 bytes");
    let mut tcp = tcp_client(server.addr).await;
    let m = ask(&mut tcp, name, RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 300);
}

#[tokio::test]
async fn other_names_are_forwarded_upstream() {
    // The "upstream" is another instance, authoritative for its own domain.
    let upstream_view = View::build(
        &[svc("u", "svc", json!({"clusterIP": "10.0.0.53"}))],
        &[],
        1,
    );
    let upstream = start("upstream.test", upstream_view, vec![]).await;
    let server = start("cluster.local", cluster_view(), vec![upstream.addr]).await;
    for mut client in [udp_client(server.addr).await, tcp_client(server.addr).await] {
        let m = ask(&mut client, "svc.u.svc.upstream.test.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answers(&m), ["svc.u.svc.upstream.test. 5 IN A 10.0.0.53"]);
        // Upstream's own negative answer is passed on.
        let m = ask(&mut client, "nope.u.svc.upstream.test.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Cluster names are still ours.
        let m = ask(&mut client, "web.ns1.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            answers(&m),
            ["web.ns1.svc.cluster.local. 5 IN A 10.96.0.10"]
        );
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_servfail_and_garbage_is_survived() {
    // A port nobody answers on (bound, then closed).
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = start("cluster.local", cluster_view(), vec![dead]).await;
    let mut client = udp_client(server.addr).await;
    let m = ask(&mut client, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    // Junk datagrams and a half-sent TCP query do not stop the server.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for bytes in [
        &b""[..],
        b"\x00",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        &[0u8; 600],
    ] {
        junk.send_to(bytes, server.addr).await.unwrap();
    }
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
    }
    let m = ask(&mut client, "web.ns1.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        answers(&m),
        ["web.ns1.svc.cluster.local. 5 IN A 10.96.0.10"]
    );
}
