//! End to end, as a newcomer would do it: `miniorch up`, `mctl apply -f examples/pod.yaml`, the
//! pod runs as real Docker containers and answers HTTP on its pod IP, the real `kubectl` sees it,
//! delete removes its containers, `miniorch down` leaves no process and no container behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A binary of this workspace (built by `cargo build --workspace --all-targets`).
fn workspace_bin(name: &str) -> PathBuf {
    if name == "miniorch" {
        return PathBuf::from(env!("CARGO_BIN_EXE_miniorch"));
    }
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_miniorch"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` first",
        path.display()
    );
    path
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("examples")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n-> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A cluster brought up in a temporary directory on its own ports; `down` on drop, even when
/// the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    port_base: u16,
    node: String,
}

impl Cluster {
    fn up() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("miniorch-e2e")
            .tempdir()
            .expect("tempdir");
        // Different runs and parallel tests get different ports.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = std::process::id() * 7 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port_base = 21000 + (n % 400) as u16 * 10;
        let node = format!("e2e-{}", std::process::id());
        let c = Cluster {
            dir,
            port_base,
            node,
        };
        let out = run(c.miniorch("up").args([
            "--port-base",
            &port_base.to_string(),
            "--node-name",
            &c.node,
        ]));
        assert!(
            out.status.success(),
            "miniorch up failed:\n{}\n{}",
            text(&out),
            c.logs()
        );
        c
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data().join("kubeconfig")
    }

    fn miniorch(&self, sub: &str) -> Command {
        let mut c = Command::new(workspace_bin("miniorch"));
        c.arg(sub).arg("--data-dir").arg(self.data());
        c
    }

    fn mctl(&self) -> Command {
        let mut c = Command::new(workspace_bin("mctl"));
        c.arg("--kubeconfig").arg(self.kubeconfig());
        c
    }

    fn kubectl(&self, cache: &Path) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(cache);
        c
    }

    fn cluster_id(&self) -> String {
        let v: Value = serde_json::from_slice(
            &std::fs::read(self.data().join("cluster.json")).expect("cluster.json"),
        )
        .expect("json");
        v["id"].as_str().expect("id").to_string()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for c in ["store", "apiserver", "scheduler", "controller", "agent"] {
            let log = std::fs::read_to_string(self.data().join("logs").join(format!("{c}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            s.push_str(&format!(
                "--- {c}.log (last lines)\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }

    fn pids(&self) -> Vec<u32> {
        ["store", "apiserver", "scheduler", "controller", "agent"]
            .iter()
            .filter_map(|c| {
                std::fs::read_to_string(self.data().join("run").join(format!("{c}.pid"))).ok()
            })
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.miniorch("down").output();
    }
}

/// Containers (running or not) carrying all these labels.
fn containers(labels: &[String]) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-aq"]);
    for l in labels {
        cmd.args(["--filter", &format!("label={l}")]);
    }
    let out = cmd.output().expect("docker ps");
    assert!(out.status.success(), "docker ps failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

fn http_get(ip: &str, port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().expect("addr"),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

#[test]
fn e2e_pod_lifecycle_from_mctl_to_docker_and_back() {
    let c = Cluster::up();

    // A second `up` finds the cluster running and starts nothing.
    let pids = c.pids();
    let again = run(c
        .miniorch("up")
        .args(["--port-base", &c.port_base.to_string()]));
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("already up"), "{}", text(&again));
    assert_eq!(c.pids(), pids);

    let status = run(&mut c.miniorch("status"));
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains(&format!("node {}: Ready", c.node)),
        "{}",
        text(&status)
    );

    let nodes = run(c.mctl().args(["get", "nodes"]));
    assert!(
        text(&nodes).contains(&c.node) && text(&nodes).contains("Ready"),
        "{}",
        text(&nodes)
    );

    let applied = run(c
        .mctl()
        .args(["apply", "-f"])
        .arg(examples().join("pod.yaml")));
    assert!(applied.status.success(), "{}", text(&applied));
    assert_eq!(
        String::from_utf8_lossy(&applied.stdout).trim(),
        "pod/web created"
    );

    // Running with a pod IP.
    let deadline = Instant::now() + Duration::from_secs(60);
    let pod_ip = loop {
        let out = run(c.mctl().args(["get", "pod", "web", "-o", "json"]));
        let pod: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if pod["status"]["phase"] == "Running"
            && let Some(ip) = pod["status"]["podIP"].as_str()
        {
            break ip.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "pod web did not run in time:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    };

    // The demo answers with the pod's name from the pod IP.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match http_get(&pod_ip, 8080) {
            Ok(a) if a.contains("200") => break a,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("GET {pod_ip}:8080 failed: {other:?}"),
        }
    };
    assert!(
        answer.ends_with("\r\n\r\nweb\n") || answer.trim_end().ends_with("web"),
        "answer: {answer:?}"
    );

    // Its containers are real and labelled with the pod.
    let id = c.cluster_id();
    let labelled = [
        format!("io.miniorch.cluster={id}"),
        "io.kubernetes.pod.name=web".to_string(),
    ];
    assert!(
        containers(&labelled).len() >= 2,
        "expected a pause and an app container"
    );

    // The real kubectl sees it Running, and describe shows the scheduler's event.
    let cache = tempfile::tempdir().expect("cache dir");
    let got = run(c.kubectl(cache.path()).args(["get", "pods"]));
    assert!(got.status.success(), "{}", text(&got));
    let line = String::from_utf8_lossy(&got.stdout)
        .lines()
        .find(|l| l.starts_with("web "))
        .map(String::from);
    let line = line.unwrap_or_else(|| panic!("kubectl get pods shows no web:\n{}", text(&got)));
    assert!(line.contains("1/1") && line.contains("Running"), "{line}");
    let described = run(c.mctl().args(["describe", "pod", "web"]));
    assert!(
        text(&described).contains("Status:") && text(&described).contains("Running"),
        "{}",
        text(&described)
    );

    // Delete: the command returns once the pod is gone, and so are its containers.
    let deleted = run(c.mctl().args(["delete", "pod", "web"]));
    assert!(deleted.status.success(), "{}", text(&deleted));
    assert!(
        text(&deleted).contains("pod \"web\" deleted"),
        "{}",
        text(&deleted)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers(&labelled).is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers of web remain: {:?}",
            containers(&labelled)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let missing = run(c.mctl().args(["delete", "pod", "web"]));
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("Error from server (NotFound): pods \"web\" not found"),
        "{}",
        text(&missing)
    );

    // Down: no process, no container.
    let pids = c.pids();
    assert_eq!(pids.len(), 5, "five components run");
    let down = run(&mut c.miniorch("down"));
    assert!(down.status.success(), "{}", text(&down));
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still runs after down");
    }
    assert!(
        containers(&[format!("io.miniorch.cluster={id}")]).is_empty(),
        "containers remain after down"
    );
}

#[test]
fn e2e_bad_input_gets_clear_errors() {
    let c = Cluster::up();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        p
    };

    let bad_name = write(
        "bad-name.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Web_1\nspec:\n  containers:\n  - name: web\n    image: miniorch/demo\n",
    );
    let out = run(c.mctl().args(["apply", "-f"]).arg(&bad_name));
    assert!(!out.status.success());
    assert!(
        text(&out)
            .contains("The Pod \"Web_1\" is invalid: metadata.name: Invalid value: \"Web_1\""),
        "{}",
        text(&out)
    );

    let no_image = write(
        "no-image.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: noimage\nspec:\n  containers:\n  - name: web\n",
    );
    let out = run(c.mctl().args(["apply", "-f"]).arg(&no_image));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("spec.containers[0].image: Required value"),
        "{}",
        text(&out)
    );

    // The real kubectl gets the same 422 and prints the field.
    let cache = tempfile::tempdir().expect("cache dir");
    let out = run(c.kubectl(cache.path()).args(["apply", "-f"]).arg(&no_image));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("spec.containers[0].image: Required value"),
        "{}",
        text(&out)
    );

    let malformed = write(
        "malformed.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n",
    );
    let out = run(c.mctl().args(["apply", "-f"]).arg(&malformed));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("error parsing")
            && text(&out).contains("YAML is not valid")
            && text(&out).contains("line 4"),
        "{}",
        text(&out)
    );

    let out = run(c.mctl().args(["delete", "pod", "nothere"]));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Error from server (NotFound): pods \"nothere\" not found"),
        "{}",
        text(&out)
    );
    let out = run(c.kubectl(cache.path()).args(["delete", "pod", "nothere"]));
    assert!(
        text(&out).contains("Error from server (NotFound): pods \"nothere\" not found"),
        "{}",
        text(&out)
    );
}
