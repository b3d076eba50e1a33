//! `kubectl logs`, `exec` and `top` end to end: the real kubectl against a real apiserver (in
//! process, over a real etcd) that passes them on to a real agent running pods in Docker.
//! Logs with `--tail`, `--limit-bytes`, `-f` (the process killed once the expected lines came)
//! and `--previous` after a restart; exec with output, stderr, `-i` input and exit codes; the
//! agent's TTY exec straight over its WebSocket; `kubectl top pod|node` printing usage.
//!
//! Everything is labelled with a cluster id unique to the run and removed at the end, also
//! when the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{PATIENCE, clean_up, eventually, load_images, unique_id};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use kube::api::{Api, LogParams, PostParams};
use miniorch_agent::images::DEMO_IMAGE;
use miniorch_apiserver::testing::{ControlPlane, free_port};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// The real kubectl with its own kubeconfig and discovery cache.
struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

/// What one kubectl run gave.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn new(dir: &Path, server: &str) -> Kubectl {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n    namespace: default\ncurrent-context: t\nusers:\n- name: t\n  user: {{}}\n"
            ),
        )
        .expect("kubeconfig");
        Kubectl {
            kubeconfig,
            cache: tempfile::tempdir().expect("cache dir"),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to the end, with `stdin` as its input.
    async fn run_with_input(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("kubectl must be installed for this test");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).await.expect("write stdin");
        drop(input);
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .expect("kubectl output");
        let out = Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ kubectl {}\n{out:?}", args.join(" "));
        out
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with_input(args, b"").await
    }

    /// Runs kubectl until it succeeds with output `check` accepts (metrics and logs take a
    /// moment to appear).
    async fn until(&self, args: &[&str], check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let out = self.run(args).await;
            if out.code == Some(0) && check(&out.stdout) {
                return out.stdout;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "kubectl {args:?} never gave the expected output: {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn demo_pod(name: &str, node: &str, containers: &[(&str, &[&str])], restart: &str) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app".to_string(), name.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            restart_policy: Some(restart.into()),
            termination_grace_period_seconds: Some(5),
            containers: containers
                .iter()
                .map(|(c, args)| Container {
                    name: c.to_string(),
                    image: Some(DEMO_IMAGE.into()),
                    args: Some(args.iter().map(|a| a.to_string()).collect()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        status: None,
    }
}

async fn running(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(&format!("{name} Running"), || async {
        pods.get(name).await.ok().filter(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.ready))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_exec_and_top_reach_the_agent() {
    let docker = miniorch_agent::runtime::docker::connect(None)
        .await
        .expect("Docker must be reachable for this test");
    load_images(&docker).await;
    let cp = ControlPlane::start(&[]).await;
    let (api_port, stop) = (cp.port, CancellationToken::new());
    let cluster = unique_id();
    let result = tokio::spawn({
        let (cluster, stop) = (cluster.clone(), stop.clone());
        async move { scenario(&cluster, api_port, stop).await }
    })
    .await;
    stop.cancel();
    clean_up(&docker, &cluster).await;
    drop(cp);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn scenario(cluster: &str, api_port: u16, stop: CancellationToken) {
    let server = format!("http://127.0.0.1:{api_port}");
    let client =
        kube::Client::try_from(kube::Config::new(server.parse().expect("url"))).expect("client");
    eventually("the apiserver", || async {
        client.apiserver_version().await.ok()
    })
    .await;
    let node = format!("node-{cluster}");
    let agent_port = free_port();
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
        "--port",
        &agent_port.to_string(),
    ])
    .expect("agent flags");
    tokio::spawn(miniorch_agent::run(config, stop.child_token()));

    // The node says where its agent API is.
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
    let endpoint = registered
        .status
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .expect("daemonEndpoints.kubeletEndpoint");
    assert_eq!(endpoint.port, i32::from(agent_port));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for pod in [
        demo_pod("counter", &node, &[("main", &["count", "5"])], "Always"),
        demo_pod(
            "ticker",
            &node,
            &[("main", &["count", "100000", "--every", "0.2"])],
            "Always",
        ),
        demo_pod(
            "crash",
            &node,
            &[("main", &["exit", "1", "--after", "1"])],
            "Always",
        ),
        demo_pod("done", &node, &[("main", &["echo", "finished"])], "Never"),
        demo_pod(
            "two",
            &node,
            &[("a", &["sleep", "3600"]), ("b", &["sleep", "3600"])],
            "Always",
        ),
    ] {
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }
    running(&pods, "counter").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubectl = Kubectl::new(dir.path(), &server);

    // Logs, whole and in part.
    let all = "line 1\nline 2\nline 3\nline 4\nline 5\n";
    kubectl.until(&["logs", "counter"], |out| out == all).await;
    let out = kubectl.run(&["logs", "counter", "--tail", "2"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "line 4\nline 5\n")
    );
    let out = kubectl
        .run(&["logs", "counter", "--limit-bytes", "6"])
        .await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "line 1"));
    let out = kubectl
        .run(&["logs", "counter", "--timestamps", "--tail", "1"])
        .await;
    let (time, line) = out.stdout.trim_end().split_once(' ').expect("a timestamp");
    assert!(time.parse::<jiff::Timestamp>().is_ok(), "{time}");
    assert_eq!(line, "line 5");
    let out = kubectl.run(&["logs", "counter", "--previous"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains(
            "Error from server (BadRequest): previous terminated container \"main\" in pod \"counter\" not found"
        ),
        "{out:?}"
    );
    // kubectl checks the container itself; the server says the same.
    let out = kubectl.run(&["logs", "counter", "-c", "nope"]).await;
    assert!(
        out.stderr
            .contains("container nope is not valid for pod counter"),
        "{out:?}"
    );
    let err = pods
        .logs(
            "counter",
            &LogParams {
                container: Some("nope".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("no such container");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message == "container nope is not valid for pod counter"),
        "{err}"
    );
    let out = kubectl.run(&["logs", "ghost"]).await;
    assert!(
        out.stderr.contains("(NotFound): pods \"ghost\" not found"),
        "{out:?}"
    );
    // Without a container, a pod of two cannot be served (kubectl always names one: ask
    // directly).
    running(&pods, "two").await;
    let err = pods
        .logs("two", &LogParams::default())
        .await
        .expect_err("no container named");
    match err {
        kube::Error::Api(s) => assert_eq!(
            (s.code, s.message.as_str()),
            (
                400,
                "a container name must be specified for pod two, choose one of: [a b]"
            )
        ),
        other => panic!("{other}"),
    }

    // Following: lines arrive as they are written; the client ends it.
    running(&pods, "ticker").await;
    let mut follow = kubectl.command(&["logs", "-f", "ticker"]);
    follow.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = follow.spawn().expect("kubectl logs -f");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            let done = line == "line 8";
            seen.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .expect("followed lines");
    child.kill().await.expect("kill kubectl");
    let want: Vec<String> = (1..=8).map(|n| format!("line {n}")).collect();
    assert_eq!(seen, want);

    // The previous attempt of a restarted container.
    eventually("crash restarted", || async {
        pods.get("crash").await.ok().filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs[0].restart_count >= 1)
        })
    })
    .await;
    let previous = kubectl
        .until(&["logs", "crash", "--previous"], |out| {
            out.contains("demo: exiting with code 1\n")
        })
        .await;
    assert!(
        previous.starts_with("demo: exiting with code 1 in 1s\n"),
        "{previous}"
    );

    // A finished pod keeps its log.
    eventually("done Succeeded", || async {
        pods.get("done")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
    })
    .await;
    let out = kubectl.run(&["logs", "done"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "finished\n"));

    // Exec: output, listing, stderr, exit codes, input.
    let out = kubectl
        .run(&["exec", "counter", "--", "/demo", "echo", "hello", "world"])
        .await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "hello world\n"));
    let out = kubectl
        .run(&["exec", "counter", "--", "/demo", "ls", "/"])
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    for entry in ["demo", "etc", "proc"] {
        assert!(out.stdout.lines().any(|l| l == entry), "{entry}: {out:?}");
    }
    let out = kubectl
        .run(&["exec", "counter", "--", "/demo", "echo", "--stderr", "oops"])
        .await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""));
    assert!(out.stderr.contains("oops"), "{out:?}");
    let out = kubectl
        .run(&["exec", "counter", "--", "/demo", "exit", "3"])
        .await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.stderr.contains("command terminated with exit code 3"),
        "{out:?}"
    );
    let input = b"first line\nsecond line\n".repeat(100);
    let out = kubectl
        .run_with_input(&["exec", "-i", "counter", "--", "/demo", "cat"], &input)
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.as_bytes(), &input[..]);
    let out = kubectl
        .run(&["exec", "two", "-c", "b", "--", "/demo", "echo", "in b"])
        .await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "in b\n"));
    let out = kubectl
        .run(&["exec", "counter", "-c", "nope", "--", "/demo", "ls"])
        .await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("container nope is not valid for pod counter"),
        "{out:?}"
    );

    // A terminal, straight over the agent's WebSocket: output comes back as a TTY writes it.
    let mut req = format!(
        "ws://127.0.0.1:{agent_port}/exec/default/counter/main?command=/demo&command=echo&command=hi&input=1&output=1&tty=1"
    )
    .into_client_request()
    .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("agent exec");
    ws.send(Message::Binary(
        b"\x04{\"Width\":120,\"Height\":40}".to_vec().into(),
    ))
    .await
    .expect("resize");
    let mut stdout = Vec::new();
    let mut status = Vec::new();
    while let Some(msg) = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("exec output")
    {
        match msg.expect("message") {
            Message::Binary(b) if b.first() == Some(&1) => stdout.extend_from_slice(&b[1..]),
            Message::Binary(b) if b.first() == Some(&3) => status.extend_from_slice(&b[1..]),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "hi\r\n");
    let status: serde_json::Value = serde_json::from_slice(&status).expect("status");
    assert_eq!(status["status"], "Success");

    // Usage, per pod and per node.
    let top = kubectl
        .until(&["top", "pod"], |out| {
            out.lines().any(|l| l.starts_with("counter "))
        })
        .await;
    assert!(top.starts_with("NAME"), "{top}");
    assert!(
        top.contains("CPU(cores)") && top.contains("MEMORY(bytes)"),
        "{top}"
    );
    let row: Vec<&str> = top
        .lines()
        .find(|l| l.starts_with("counter "))
        .expect("counter row")
        .split_whitespace()
        .collect();
    assert!(row[1].ends_with('m') && row[2].ends_with("Mi"), "{row:?}");
    let top = kubectl
        .until(&["top", "pod", "-l", "app=two", "--containers"], |out| {
            out.contains("two ")
        })
        .await;
    assert!(!top.contains("counter"), "{top}");
    assert!(
        top.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("a")),
        "{top}"
    );
    let top = kubectl
        .until(&["top", "node"], |out| out.contains(&node))
        .await;
    assert!(
        top.contains("CPU(cores)") && top.contains("MEMORY(%)"),
        "{top}"
    );
    let out = kubectl.run(&["top", "pod", "ghost"]).await;
    assert!(
        out.stderr
            .contains("podmetrics.metrics.k8s.io \"ghost\" not found"),
        "{out:?}"
    );
}
