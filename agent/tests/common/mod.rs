//! Helpers the agent's Docker tests share: miniorch's images built from the static binaries
//! and loaded without a registry, unique ids, bounded waits, plain HTTP, and removal of
//! everything a test labelled.

#![allow(dead_code)] // Each test file uses a different part.

#[path = "../../../images/build_static.rs"]
mod build_static;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use miniorch_agent::images::{DEMO_IMAGE, LocalImage, PAUSE_IMAGE, ensure_images};
use miniorch_agent::runtime::docker::{self, labels};

/// Longest any wait in these tests may take before the test fails (a bound, not a timing).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The static binaries, built like `miniorch/build.rs` does, into the shared nested target.
fn static_binaries() -> Vec<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let target_dir = build_static::target_dir(workspace);
    build_static::StaticBuild {
        workspace,
        target_dir: &target_dir,
        target: &target,
        cargo: &cargo,
        rustc: None,
    }
    .run()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Makes sure `miniorch/pause` and `miniorch/demo` hold the current binaries.
pub async fn load_images(docker: &Docker) {
    let binaries = static_binaries();
    let pause = std::fs::read(&binaries[0]).expect("read pause");
    let demo = std::fs::read(&binaries[1]).expect("read demo");
    let images = [
        LocalImage {
            name: PAUSE_IMAGE,
            binary_name: "pause",
            binary: &pause,
            default_args: &[],
        },
        LocalImage {
            name: DEMO_IMAGE,
            binary_name: "demo",
            binary: &demo,
            default_args: &["serve"],
        },
    ];
    ensure_images(docker, &images, false)
        .await
        .expect("load images");
    assert_eq!(
        ensure_images(docker, &images, false)
            .await
            .expect("check images"),
        Vec::<String>::new()
    );
}

/// An id unique to this test run, usable in names and labels.
pub fn unique_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t{}-{nanos:x}", std::process::id())
}

/// Polls `check` until it returns a value; fails the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /` on `addr`, retried until the server answers.
pub fn http_get(addr: &str) -> String {
    let start = Instant::now();
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s =
                TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(response) if !response.is_empty() => return response,
            _ => {
                assert!(
                    start.elapsed() < PATIENCE,
                    "{addr} never answered: {attempt:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The body of an HTTP response.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Containers labelled with cluster `cluster` (and pod `uid` if given).
pub async fn containers(
    docker: &Docker,
    cluster: &str,
    uid: Option<&str>,
) -> Vec<bollard::models::ContainerSummary> {
    let mut label = vec![format!("{}={cluster}", labels::CLUSTER)];
    if let Some(uid) = uid {
        label.push(format!("{}={uid}", labels::POD_UID));
    }
    let filters = HashMap::from([("label", label)]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .expect("list containers")
}

/// Removes everything labelled with `cluster`, and its network.
pub async fn clean_up(docker: &Docker, cluster: &str) {
    for c in containers(docker, cluster, None).await {
        if let Some(id) = c.id {
            let options = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(&id, Some(options)).await;
        }
    }
    let _ = docker.remove_network(&docker::network_name(cluster)).await;
}
