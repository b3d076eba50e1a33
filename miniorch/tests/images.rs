//! miniorch's own images: the embedded binaries are static, and they load into Docker without a
//! registry and run (the demo answers HTTP with its hostname; the demo and pause stop on
//! SIGTERM with exit code 0 instead of being killed).
//!
//! The Docker test builds its images under test-only names, so it never removes the
//! `miniorch/*` images that other tests and running clusters use.

#[allow(dead_code)]
#[path = "../src/images.rs"]
mod images;

#[allow(dead_code)]
#[path = "../../images/build_static.rs"]
mod build_static;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
};
use miniorch_agent::images::{IMAGE_LABEL, LocalImage, ensure_images};

/// Longest any wait may take before the test fails (a bound, not a timing).
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn embedded_binaries_are_static_executables() {
    for image in images::images() {
        assert_eq!(
            build_static::elf_interpreter(image.binary),
            Ok(None),
            "{} needs a loader",
            image.binary_name
        );
    }
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t{}-{nanos:x}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_load_without_a_registry_and_run() {
    let docker = Docker::connect_with_defaults()
        .expect("Docker client")
        .negotiate_version()
        .await
        .expect("Docker must be reachable for this test");
    let tag = unique();
    let names: Vec<String> = images::images()
        .iter()
        .map(|i| format!("miniorch-test/{}:{tag}", i.binary_name))
        .collect();
    let result = tokio::spawn({
        let (docker, tag, names) = (docker.clone(), tag.clone(), names.clone());
        async move { scenario(&docker, &tag, &names).await }
    })
    .await;
    clean_up(&docker, &tag, &names).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn scenario(docker: &Docker, tag: &str, names: &[String]) {
    // Missing images are built, labelled, and then found current.
    let test_images: Vec<LocalImage<'_>> = images::images()
        .iter()
        .zip(names)
        .map(|(i, name)| LocalImage {
            name: name.as_str(),
            ..*i
        })
        .collect();
    let built = ensure_images(docker, &test_images, false)
        .await
        .expect("build");
    assert_eq!(built, names.to_vec());
    assert!(
        ensure_images(docker, &test_images, false)
            .await
            .expect("check")
            .is_empty()
    );
    let info = docker.inspect_image(&names[1]).await.expect("inspect demo");
    let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get(IMAGE_LABEL).map(String::as_str), Some("demo"));

    // The real names are there afterwards too (built if they were missing).
    images::ensure(docker, false).await.expect("ensure");
    for name in [images::PAUSE_IMAGE, images::DEMO_IMAGE] {
        docker
            .inspect_image(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let demo = run(docker, tag, &names[1], "demo-test").await;
    let pause = run(docker, tag, &names[0], "pause-test").await;
    let ip = docker
        .inspect_container(&demo, None)
        .await
        .expect("inspect")
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get("bridge").and_then(|e| e.ip_address.clone()))
        .expect("demo IP");
    let response = http_get(&format!("{ip}:8080"));
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\ndemo-test\n"), "{response}");

    for id in [&demo, &pause] {
        let options = StopContainerOptionsBuilder::new().t(10).build();
        docker
            .stop_container(id, Some(options))
            .await
            .expect("stop");
        let state = docker
            .inspect_container(id, None)
            .await
            .expect("inspect")
            .state
            .expect("state");
        // 0: it exited on SIGTERM; 137 would mean Docker had to SIGKILL it after 10 s.
        assert_eq!(state.exit_code, Some(0), "{id}");
    }
}

async fn run(docker: &Docker, tag: &str, image: &str, hostname: &str) -> String {
    let body = ContainerCreateBody {
        image: Some(image.into()),
        hostname: Some(hostname.into()),
        labels: Some(HashMap::from([(
            "io.miniorch.test".to_string(),
            tag.to_string(),
        )])),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new()
        .name(&format!("{hostname}-{tag}"))
        .build();
    let id = docker
        .create_container(Some(options), body)
        .await
        .expect("create")
        .id;
    docker.start_container(&id, None).await.expect("start");
    id
}

/// `GET /` on `addr`, retried until the server answers.
fn http_get(addr: &str) -> String {
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

async fn clean_up(docker: &Docker, tag: &str, names: &[String]) {
    let filters = HashMap::from([("label", vec![format!("io.miniorch.test={tag}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    for c in docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
    {
        if let Some(id) = c.id {
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = docker.remove_container(&id, Some(options)).await;
        }
    }
    for name in names {
        let options = RemoveImageOptionsBuilder::new().force(true).build();
        let _ = docker.remove_image(name, Some(options), None).await;
    }
}
