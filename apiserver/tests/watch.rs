//! Watch semantics at the edges, over both stores: a resourceVersion older than both the watch
//! cache and the store's history gets 410 Expired; a watcher that stops reading is cut off with
//! a clear error instead of growing memory; bookmarks and timeouts behave as upstream.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api as KApi, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Api, STORES};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens a raw watch; the reader starts after the response headers.
fn raw_watch(api: &Api, path: &str) -> BufReader<TcpStream> {
    raw_watch_on(
        TcpStream::connect(("127.0.0.1", api.port)).expect("connect"),
        path,
    )
}

/// A raw watch over a socket with a tiny receive buffer: a client that stops reading backs
/// up into the server after a few kilobytes instead of tens of megabytes.
fn slow_watch(api: &Api, path: &str) -> BufReader<TcpStream> {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], api.port)).into())
        .expect("connect");
    raw_watch_on(s.into(), path)
}

fn raw_watch_on(mut s: TcpStream, path: &str) -> BufReader<TcpStream> {
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("headers");
        if line == "\r\n" || line.is_empty() {
            return r;
        }
    }
}

/// The JSON events of a chunked watch body (chunk-size lines are skipped).
fn events(r: &mut BufReader<TcpStream>, want: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut line = String::new();
    while out.len() < want {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // Chunk-size lines (hex) can parse as JSON numbers: events are objects.
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(line.trim()) {
            out.push(v);
        }
    }
    out
}

fn config_map(name: &str, size: usize) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"blob": "x".repeat(size)}}))
        .expect("cm")
}

#[test]
fn a_too_old_resource_version_gets_410_expired() {
    for store in STORES {
        // A small watch cache, so that outrunning it takes a few hundred changes.
        let api = Api::start_with(store, &["--default-watch-cache-size", "100"]);
        let rv0 = rt().block_on(async {
            let cms: KApi<ConfigMap> = KApi::namespaced(api.client(None), "default");
            cms.create(&PostParams::default(), &config_map("c", 10))
                .await
                .expect("create");
            let rv0 = cms
                .list(&ListParams::default())
                .await
                .expect("list")
                .metadata
                .resource_version
                .expect("rv");
            // More changes than the watch cache keeps, so the old revision is only in the store...
            for i in 0..150 {
                cms.patch(
                    "c",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"i": i.to_string()}})),
                )
                .await
                .expect("patch");
            }
            rv0
        });
        // ...and then not even there.
        let latest = support::text(
            &std::process::Command::new("etcdctl")
                .args(["--endpoints", &api.store_url, "get", "x", "-w", "json"])
                .output()
                .expect("etcdctl"),
        );
        let rev = serde_json::from_str::<Value>(&latest).expect("json")["header"]["revision"]
            .as_i64()
            .expect("rev");
        let out = std::process::Command::new("etcdctl")
            .args([
                "--endpoints",
                &api.store_url,
                "compaction",
                &rev.to_string(),
            ])
            .output()
            .expect("etcdctl compaction");
        assert!(out.status.success(), "{}", support::text(&out));
        let mut r = raw_watch(
            &api,
            &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv0}"),
        );
        let got = events(&mut r, 1);
        assert_eq!(got.len(), 1, "{store:?}: no event");
        assert_eq!(got[0]["type"], "ERROR", "{store:?}: {}", got[0]);
        assert_eq!(got[0]["object"]["code"], 410);
        assert_eq!(got[0]["object"]["reason"], "Expired");
        // A list at that revision is gone too.
        let (code, body) = api.curl("GET", &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv0}&resourceVersionMatch=Exact"), "application/json", "");
        assert_eq!(code, 410, "{body}");
    }
}

#[test]
fn a_watcher_that_stops_reading_is_cut_off_with_an_error() {
    for store in STORES {
        let api = Api::start(store);
        let rv = rt().block_on(async {
            let cms: KApi<ConfigMap> = KApi::namespaced(api.client(None), "default");
            cms.create(&PostParams::default(), &config_map("big", 10))
                .await
                .expect("create");
            cms.list(&ListParams::default())
                .await
                .expect("list")
                .metadata
                .resource_version
                .expect("rv")
        });
        let mut slow = slow_watch(
            &api,
            &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"),
        );
        // 1,600 events of 20 KB: more than the per-watcher queue (1,024 events), the rendered
        // events ahead of the socket and the server's send buffer (at most 4 MB) hold.
        rt().block_on(async {
            let cms: KApi<ConfigMap> = KApi::namespaced(api.client(None), "default");
            let blob = "y".repeat(20_000);
            for i in 0..1600 {
                cms.patch(
                    "big",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"blob": format!("{i}{blob}")}})),
                )
                .await
                .expect("patch");
            }
        });
        let mut last = None;
        let mut count = 0;
        let mut line = String::new();
        loop {
            line.clear();
            match slow.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(line.trim()) {
                count += 1;
                last = Some(v);
            }
        }
        let last = last.expect("events");
        assert!(
            count < 1600,
            "{store:?}: the slow watcher got every event ({count}); it should have been cut off"
        );
        assert_eq!(
            last["type"], "ERROR",
            "{store:?}: the stream should end with an error, ended with {}",
            last["type"]
        );
        assert!(
            last["object"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("fell too far behind")),
            "{store:?}: {}",
            last["object"]
        );
    }
}

#[test]
fn bookmarks_initial_events_and_timeouts() {
    for store in STORES {
        let api = Api::start(store);
        rt().block_on(async {
            let cms: KApi<ConfigMap> = KApi::namespaced(api.client(None), "default");
            for n in ["a", "b"] {
                cms.create(&PostParams::default(), &config_map(n, 5))
                    .await
                    .expect("create");
            }
        });
        // resourceVersion=0: the current objects as ADDED, then the initial-events-end bookmark.
        let mut r = raw_watch(
            &api,
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=0&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=2",
        );
        let got = events(&mut r, 3);
        let kinds: Vec<&str> = got.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(
            kinds,
            vec!["ADDED", "ADDED", "BOOKMARK"],
            "{store:?}: {got:?}"
        );
        assert_eq!(
            got[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        // timeoutSeconds ends the stream.
        let rest = events(&mut r, 100);
        assert!(rest.is_empty(), "{store:?}: {rest:?}");
        // A field selector narrows the initial events and the changes.
        let mut r = raw_watch(
            &api,
            "/api/v1/namespaces/default/configmaps?watch=true&fieldSelector=metadata.name%3Db&timeoutSeconds=5",
        );
        let got = events(&mut r, 1);
        assert_eq!(got[0]["object"]["metadata"]["name"], "b", "{store:?}");
    }
}
