//! The agent API over real HTTP and WebSocket connections, with the recording fake runtime and
//! a fake [`ContainerIo`] whose "commands" are a tiny shell: `echo ARGS`, `fail CODE` (writes
//! to stderr, exits CODE), `cat` (copies its input), `hang` (never ends; records when its
//! output is let go).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::io::{
    ContainerIo, ContainerUsage, ExecControl, ExecOutput, ExecSession, ExecSpec, IoError,
    LogRequest,
};
use super::{NodeServer, PodSource};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ObservedContainer, ObservedPod, ObservedSandbox, ObservedState};

struct Pods(Vec<Arc<Pod>>);

impl PodSource for Pods {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.0
            .iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }
}

#[derive(Default)]
struct FakeIo {
    calls: Mutex<Vec<String>>,
}

impl FakeIo {
    fn record(&self, call: String) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Records when the stream it lives in is dropped.
struct DropGuard(Arc<FakeIo>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.record("output dropped".into());
    }
}

struct FakeControl {
    io: Arc<FakeIo>,
    code: Arc<Mutex<Option<i64>>>,
}

#[async_trait::async_trait]
impl ExecControl for FakeControl {
    async fn resize(&self, width: u16, height: u16) -> Result<(), IoError> {
        self.io.record(format!("resize {width}x{height}"));
        Ok(())
    }

    async fn exit_code(&self) -> Result<Option<i64>, IoError> {
        Ok(*self.code.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Shares the fake between the server and the test.
struct SharedIo(Arc<FakeIo>);

#[async_trait::async_trait]
impl ContainerIo for SharedIo {
    async fn logs(
        &self,
        id: &str,
        request: &LogRequest,
    ) -> Result<BoxStream<'static, Result<Bytes, IoError>>, IoError> {
        self.0.record(format!(
            "logs {id} follow={} tail={:?}",
            request.follow, request.tail_lines
        ));
        if id == "gone" {
            return Err(IoError::NotFound(id.into()));
        }
        let lines = [format!("log of {id}\n"), "second line\n".to_string()];
        Ok(futures::stream::iter(lines.map(|l| Ok(Bytes::from(l)))).boxed())
    }

    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecSession, IoError> {
        self.0
            .record(format!("exec {id} {:?} tty={}", spec.command, spec.tty));
        let code = Arc::new(Mutex::new(None));
        let (tx, rx) = futures::channel::mpsc::channel::<Result<ExecOutput, IoError>>(16);
        let (input, mut reader) = tokio::io::duplex(1024);
        let command = spec.command.clone();
        if command.first().map(String::as_str) == Some("hang") {
            let guard = DropGuard(self.0.clone());
            let output = futures::stream::pending::<Result<ExecOutput, IoError>>()
                .map(move |item| {
                    let _keep = &guard;
                    item
                })
                .boxed();
            return Ok(ExecSession {
                output,
                input: None,
                control: Box::new(FakeControl {
                    io: self.0.clone(),
                    code,
                }),
            });
        }
        let done = code.clone();
        tokio::spawn(async move {
            let mut tx = tx;
            let exit = match command.first().map(String::as_str) {
                Some("echo") => {
                    let line = format!("{}\n", command[1..].join(" "));
                    let _ = tx.send(Ok(ExecOutput::Stdout(line.into()))).await;
                    0
                }
                Some("fail") => {
                    let _ = tx
                        .send(Ok(ExecOutput::Stderr(Bytes::from_static(b"oops\n"))))
                        .await;
                    command.get(1).and_then(|c| c.parse().ok()).unwrap_or(1)
                }
                Some("cat") => {
                    let mut buf = [0u8; 256];
                    loop {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => break 0,
                            Ok(n) => {
                                let chunk = Bytes::copy_from_slice(&buf[..n]);
                                let _ = tx.send(Ok(ExecOutput::Stdout(chunk))).await;
                            }
                        }
                    }
                }
                _ => 127,
            };
            *done.lock().unwrap_or_else(|e| e.into_inner()) = Some(exit);
        });
        Ok(ExecSession {
            output: rx.boxed(),
            input: spec
                .stdin
                .then(|| Box::pin(input) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>),
            control: Box::new(FakeControl {
                io: self.0.clone(),
                code,
            }),
        })
    }

    async fn usage(&self, id: &str) -> Result<ContainerUsage, IoError> {
        Ok(ContainerUsage {
            time: Some(jiff::Timestamp::now()),
            cpu_nano_cores: Some(if id == "c1" { 5_000_000 } else { 1_000_000 }),
            cpu_core_nanos: Some(42),
            window: Some(std::time::Duration::from_secs(1)),
            memory_usage_bytes: Some(20 << 20),
            working_set_bytes: Some(10 << 20),
            rss_bytes: Some(8 << 20),
        })
    }
}

fn pod(name: &str, uid: &str, containers: &[&str]) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: containers
                .iter()
                .map(|c| Container {
                    name: c.to_string(),
                    image: Some("miniorch/demo".into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        status: None,
    }
}

fn attempt(name: &str, id: &str, attempt: u32, running: bool) -> ObservedContainer {
    let started_at = Some(jiff::Timestamp::now());
    ObservedContainer {
        id: id.into(),
        name: name.into(),
        attempt,
        image: "miniorch/demo".into(),
        image_id: "sha256:x".into(),
        state: if running {
            ObservedState::Running { started_at }
        } else {
            ObservedState::Exited {
                exit_code: 1,
                reason: None,
                message: None,
                started_at,
                finished_at: started_at,
            }
        },
    }
}

struct Harness {
    url: String,
    io: Arc<FakeIo>,
    stop: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Pod `web` (uid u1): container `web` restarted once (c0 exited, c1 running).
/// Pod `two` (uid u2): containers `a` (running, c2) and `b` (exited once, never restarted: the
/// pod's policy is Always, so it waits in back-off).
/// Pod `fresh` (uid u3): nothing started yet.
async fn start() -> Harness {
    let runtime = Arc::new(FakeRuntime::new());
    let sandbox = |id: &str| ObservedSandbox {
        id: id.into(),
        attempt: 0,
        running: true,
        ip: Some("10.88.0.2".into()),
    };
    runtime.insert(ObservedPod {
        uid: "u1".into(),
        namespace: "default".into(),
        name: "web".into(),
        sandboxes: vec![sandbox("s1")],
        containers: vec![
            attempt("web", "c0", 0, false),
            attempt("web", "c1", 1, true),
        ],
        grace_period: None,
    });
    runtime.insert(ObservedPod {
        uid: "u2".into(),
        namespace: "default".into(),
        name: "two".into(),
        sandboxes: vec![sandbox("s2")],
        containers: vec![attempt("a", "c2", 0, true), attempt("b", "c3", 0, false)],
        grace_period: None,
    });
    let pods = Pods(vec![
        Arc::new(pod("web", "u1", &["web"])),
        Arc::new(pod("two", "u2", &["a", "b"])),
        Arc::new(pod("fresh", "u3", &["web"])),
    ]);
    let io = Arc::new(FakeIo::default());
    let server = Arc::new(NodeServer {
        node_name: "n1".into(),
        node_ip: "127.0.0.1".into(),
        pods: Arc::new(pods),
        runtime,
        io: Arc::new(SharedIo(io.clone())),
        meter: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let stop = CancellationToken::new();
    tokio::spawn(super::serve(listener, server, stop.clone()));
    Harness { url, io, stop }
}

/// An HTTP/1.0 GET (so the body ends with the connection): (status, body).
async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

#[tokio::test]
async fn logs_are_served_per_attempt() {
    let h = start().await;
    let cases = [
        (
            "/containerLogs/default/web/web",
            200,
            "log of c1\nsecond line\n",
        ),
        (
            "/containerLogs/default/web/web?previous=true",
            200,
            "log of c0\nsecond line\n",
        ),
        ("/containerLogs/default/web/web?limitBytes=6", 200, "log of"),
        (
            "/containerLogs/default/two/a",
            200,
            "log of c2\nsecond line\n",
        ),
        // Waiting in back-off: the log is the last attempt's.
        (
            "/containerLogs/default/two/b",
            200,
            "log of c3\nsecond line\n",
        ),
        (
            "/containerLogs/default/two/a?previous=1",
            400,
            "previous terminated container \"a\" in pod \"two\" not found\n",
        ),
        (
            "/containerLogs/default/fresh/web",
            400,
            "container \"web\" in pod \"fresh\" is waiting to start: ContainerCreating\n",
        ),
        (
            "/containerLogs/default/web/nope",
            404,
            "container \"nope\" not found in pod \"web\"\n",
        ),
        (
            "/containerLogs/default/ghost/web",
            404,
            "pod \"ghost\" does not exist\n",
        ),
        (
            "/containerLogs/default/web/web?tailLines=-1",
            400,
            "tailLines: Invalid value: -1: must be greater than or equal to 0\n",
        ),
    ];
    for (path, code, body) in cases {
        assert_eq!(get(&h.url, path).await, (code, body.to_string()), "{path}");
    }
    let (_, _) = get(
        &h.url,
        "/containerLogs/default/web/web?follow=true&tailLines=5",
    )
    .await;
    assert!(
        h.io.calls()
            .contains(&"logs c1 follow=true tail=Some(5)".to_string()),
        "{:?}",
        h.io.calls()
    );
    assert_eq!(get(&h.url, "/healthz").await, (200, "ok".into()));
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(h: &Harness, query: &str, protocol: &str) -> Result<Ws, (u16, String)> {
    let mut req = format!("ws://{}/exec/default/{query}", h.url)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(
                resp.headers()
                    .get("Sec-WebSocket-Protocol")
                    .and_then(|v| v.to_str().ok()),
                protocol.split(',').next().map(str::trim)
            );
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("connect: {e}"),
    }
}

/// Everything the server sends until it closes: bytes per channel.
async fn drain(ws: &mut Ws) -> BTreeMap<u8, Vec<u8>> {
    let mut out: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    while let Some(msg) = ws.next().await {
        match msg.expect("message") {
            Message::Binary(b) if !b.is_empty() => {
                out.entry(b[0]).or_default().extend_from_slice(&b[1..])
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    out
}

fn status(out: &BTreeMap<u8, Vec<u8>>) -> serde_json::Value {
    serde_json::from_slice(out.get(&3).expect("a status")).expect("status JSON")
}

#[tokio::test]
async fn exec_speaks_the_channel_protocol() {
    let h = start().await;
    let mut ws = connect(
        &h,
        "web/web?command=echo&command=hello&command=world&output=1&error=1",
        "v5.channel.k8s.io",
    )
    .await
    .expect("upgrade");
    let out = drain(&mut ws).await;
    assert_eq!(out.get(&1).map(Vec::as_slice), Some(&b"hello world\n"[..]));
    assert_eq!(status(&out)["status"], "Success");
    assert!(
        h.io.calls()
            .contains(&r#"exec c1 ["echo", "hello", "world"] tty=false"#.to_string())
    );

    // A failing command: stderr, then its exit code.
    let mut ws = connect(
        &h,
        "two/a?command=fail&command=3&output=1&error=1",
        "v4.channel.k8s.io",
    )
    .await
    .expect("upgrade");
    let out = drain(&mut ws).await;
    assert_eq!(out.get(&2).map(Vec::as_slice), Some(&b"oops\n"[..]));
    let s = status(&out);
    assert_eq!(s["reason"], "NonZeroExitCode");
    assert_eq!(s["details"]["causes"][0]["message"], "3");

    // Input, its end ([255, 0]), and a resize.
    let mut ws = connect(
        &h,
        "web/web?command=cat&input=1&output=1&tty=1",
        "v5.channel.k8s.io, v4.channel.k8s.io",
    )
    .await
    .expect("upgrade");
    ws.send(Message::Binary(Bytes::from_static(
        b"\x04{\"Width\":100,\"Height\":30}",
    )))
    .await
    .expect("send");
    ws.send(Message::Binary(Bytes::from_static(b"\x00abc")))
        .await
        .expect("send");
    ws.send(Message::Binary(Bytes::from_static(b"\x00def\n")))
        .await
        .expect("send");
    ws.send(Message::Binary(Bytes::from_static(b"\xff\x00")))
        .await
        .expect("send");
    let out = drain(&mut ws).await;
    assert_eq!(out.get(&1).map(Vec::as_slice), Some(&b"abcdef\n"[..]));
    assert_eq!(status(&out)["status"], "Success");
    assert!(
        h.io.calls().contains(&"resize 100x30".to_string()),
        "{:?}",
        h.io.calls()
    );
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_session() {
    let h = start().await;
    let mut ws = connect(&h, "web/web?command=hang&output=1", "v5.channel.k8s.io")
        .await
        .expect("upgrade");
    ws.close(None).await.expect("close");
    drop(ws);
    for _ in 0..1000 {
        if h.io.calls().contains(&"output dropped".to_string()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the session kept the command's output: {:?}", h.io.calls());
}

#[tokio::test]
async fn exec_refusals_are_plain_errors() {
    let h = start().await;
    let cases = [
        (
            "two/b?command=echo&output=1",
            "v5.channel.k8s.io",
            404,
            "container not found (\"b\"): it is not running\n",
        ),
        (
            "ghost/web?command=echo&output=1",
            "v5.channel.k8s.io",
            404,
            "pod \"ghost\" does not exist\n",
        ),
        (
            "web/web?output=1",
            "v5.channel.k8s.io",
            400,
            "you must specify at least one command for the container\n",
        ),
        (
            "web/web?command=echo&output=1",
            "SPDY/3.1+portforward.k8s.io",
            400,
            "unable to negotiate a WebSocket subprotocol: this agent speaks v5.channel.k8s.io, v4.channel.k8s.io\n",
        ),
    ];
    for (query, protocol, code, body) in cases {
        match connect(&h, query, protocol).await {
            Ok(_) => panic!("{query}: upgraded"),
            Err(got) => assert_eq!(got, (code, body.to_string()), "{query}"),
        }
    }
    let (code, body) = get(&h.url, "/exec/default/web/web?command=echo&output=1").await;
    assert_eq!(code, 400);
    assert!(body.starts_with("exec needs a WebSocket upgrade"), "{body}");
}

#[tokio::test]
async fn the_summary_has_every_running_container() {
    let h = start().await;
    let (code, body) = get(&h.url, "/stats/summary").await;
    assert_eq!(code, 200, "{body}");
    let s: super::stats::Summary = serde_json::from_str(&body).expect("summary");
    assert_eq!(s.node.node_name, "n1");
    let node_cpu = s.node.cpu.expect("node cpu");
    assert!(node_cpu.usage_nano_cores.is_some());
    assert!(s.node.memory.and_then(|m| m.working_set_bytes).is_some());
    type Row = (String, Vec<String>, Option<u64>, Option<u64>);
    let mut pods: Vec<Row> = s
        .pods
        .iter()
        .map(|p| {
            (
                p.pod_ref.name.clone(),
                p.containers.iter().map(|c| c.name.clone()).collect(),
                p.cpu.as_ref().and_then(|c| c.usage_nano_cores),
                p.memory.as_ref().and_then(|m| m.working_set_bytes),
            )
        })
        .collect();
    pods.sort();
    assert_eq!(
        pods,
        vec![
            (
                "two".into(),
                vec!["a".into()],
                Some(1_000_000),
                Some(10 << 20)
            ),
            (
                "web".into(),
                vec!["web".into()],
                Some(5_000_000),
                Some(10 << 20)
            ),
        ]
    );
}
