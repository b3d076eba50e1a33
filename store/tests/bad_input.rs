//! Bad input gets etcd's error (or a clear one), never a crash: malformed requests, oversized
//! requests, garbage on the wire, a busy port, an unusable or damaged data directory.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kind, Server, free_port};
use miniorch_store::pb::etcdserverpb::kv_client::KvClient;
use miniorch_store::pb::etcdserverpb::watch_client::WatchClient;
use miniorch_store::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest, compare, request_op, watch_request,
};
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn put(k: &[u8], v: Vec<u8>) -> PutRequest {
    PutRequest {
        key: k.to_vec(),
        value: v,
        ..Default::default()
    }
}

/// The (code, message) a server answers to each bad request.
async fn answers(s: &Server) -> Vec<(String, Code, String)> {
    let mut kv = KvClient::new(s.channel().await).max_encoding_message_size(8 << 20);
    let mut out = Vec::new();
    let mut record = |what: &str, r: Result<String, tonic::Status>| {
        let (code, msg) = match r {
            Ok(v) => (Code::Ok, v),
            Err(e) => (e.code(), e.message().to_string()),
        };
        out.push((what.to_string(), code, msg));
    };
    record(
        "put empty key",
        kv.put(put(b"", b"v".to_vec())).await.map(|_| String::new()),
    );
    record(
        "range empty key",
        kv.range(RangeRequest::default())
            .await
            .map(|_| String::new()),
    );
    record(
        "delete empty key",
        kv.delete_range(DeleteRangeRequest::default())
            .await
            .map(|_| String::new()),
    );
    record(
        "range end before key",
        kv.range(RangeRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .map(|r| format!("{} keys", r.into_inner().kvs.len())),
    );
    record(
        "1.6 MiB value",
        kv.put(put(b"big", vec![b'x'; 1_600_000]))
            .await
            .map(|_| String::new()),
    );
    record(
        "3 MiB value",
        kv.put(put(b"huge", vec![b'x'; 3 << 20]))
            .await
            .map(|_| String::new()),
    );
    let too_many = TxnRequest {
        compare: vec![],
        success: (0..129)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(put(
                    format!("k{i}").as_bytes(),
                    vec![],
                ))),
            })
            .collect(),
        failure: vec![],
    };
    record(
        "129 operations",
        kv.txn(too_many).await.map(|_| String::new()),
    );
    let ignore_with_value = PutRequest {
        ignore_value: true,
        ..put(b"a", b"v".to_vec())
    };
    record(
        "ignore_value with a value",
        kv.put(ignore_with_value).await.map(|_| String::new()),
    );
    out
}

#[test]
fn request_errors_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Server::start(Kind::Etcd, &dir.path().join("etcd"));
    let ours = Server::start(Kind::Miniorch, &dir.path().join("ours"));
    let rt = rt();
    let want = rt.block_on(answers(&etcd));
    let got = rt.block_on(answers(&ours));
    assert_eq!(got, want);
    assert!(
        got.iter().any(|(_, c, m)| *c == Code::InvalidArgument && m == "etcdserver: request is too large"),
        "{got:?}"
    );
}

#[test]
fn malformed_requests_do_not_crash() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    let rt = rt();
    rt.block_on(async {
        let mut kv = KvClient::new(s.channel().await).max_encoding_message_size(8 << 20);
        // Larger than gRPC accepts at all: refused by the transport.
        let huge = kv.put(put(b"huge", vec![b'x'; 3 << 20])).await.unwrap_err();
        assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
        // Unknown compare target and result, unknown sort: a clear InvalidArgument.
        for (target, result) in [(9, 0), (0, 9)] {
            let t = TxnRequest {
                compare: vec![Compare {
                    target,
                    result,
                    key: b"a".to_vec(),
                    target_union: Some(compare::TargetUnion::Version(1)),
                    range_end: vec![],
                }],
                success: vec![],
                failure: vec![],
            };
            let e = kv.txn(t).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(
                e.message().starts_with("etcdserver: unknown compare"),
                "{e:?}"
            );
        }
        let e = kv
            .range(RangeRequest {
                key: b"a".to_vec(),
                sort_order: 42,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "etcdserver: invalid sort option")
        );
        // A compare whose value does not fit its target.
        let t = TxnRequest {
            compare: vec![Compare {
                target: compare::CompareTarget::Mod as i32,
                result: 0,
                key: b"a".to_vec(),
                target_union: Some(compare::TargetUnion::Value(b"x".to_vec())),
                range_end: vec![],
            }],
            success: vec![],
            failure: vec![],
        };
        assert_eq!(kv.txn(t).await.unwrap_err().code(), Code::InvalidArgument);
        // A watch on an empty range is refused at creation, the stream goes on.
        let mut w = WatchClient::new(s.channel().await);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = |key: &[u8], end: &[u8]| WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: key.to_vec(),
                    range_end: end.to_vec(),
                    ..Default::default()
                },
            )),
        };
        tx.send(create(b"z", b"a")).await.unwrap();
        tx.send(WatchRequest {
            request_union: None,
        })
        .await
        .unwrap();
        tx.send(create(b"a", b"")).await.unwrap();
        let mut stream = w
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(first.created && first.canceled, "{first:?}");
        assert_eq!(first.cancel_reason, "mvcc: watcher range is empty");
        let second = stream.message().await.unwrap().unwrap();
        assert!(second.created && !second.canceled, "{second:?}");
        drop(tx);
        // Still serving.
        kv.put(put(b"after", b"ok".to_vec())).await.unwrap();
    });
    // Garbage on the client port, then a normal request.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", s.client_port)) {
            let _ = c.write_all(junk);
        }
    }
    assert_eq!(s.ctl_ok(&["get", "after", "--print-value-only"]), "ok\n");
}

/// Runs the binary expecting it to refuse to start; returns its stderr.
fn refuses(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_miniorch-store"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(!status.success(), "started although it should not");
            let out = child.wait_with_output().unwrap();
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kept running although it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn args_for(dir: &std::path::Path, client: u16, peer: u16) -> Vec<String> {
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    vec![
        "--name".into(),
        "m1".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen-client-urls".into(),
        c.clone(),
        "--advertise-client-urls".into(),
        c,
        "--listen-peer-urls".into(),
        p.clone(),
        "--initial-advertise-peer-urls".into(),
        p.clone(),
        "--initial-cluster".into(),
        format!("m1={p}"),
    ]
}

#[test]
fn busy_port_and_bad_data_dir_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let args = args_for(&dir.path().join("d"), port, free_port());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = refuses(&args);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("--listen-client-urls"), "{err}");

    // The data dir is a file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let args = args_for(&file, free_port(), free_port());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = refuses(&args);
    assert!(err.contains("cannot create data directory"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn damaged_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start(Kind::Miniorch, &data);
    for i in 0..200 {
        s.ctl_ok(&["put", &format!("key{i}"), &"v".repeat(500)]);
    }
    assert!(s.stop());
    let db = data.join("member").join("db.redb");
    let len = std::fs::metadata(&db).unwrap().len();
    // Truncated to half.
    let copy = std::fs::read(&db).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let args = args_for(&data, free_port(), free_port());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = refuses(&args);
    assert!(err.contains(&db.display().to_string()), "{err}");
    // Live data overwritten: every stored copy of the values is changed (damage to pages the
    // database no longer uses would be harmless and is not what this checks).
    let mut damaged = copy.clone();
    let pattern = b"vvvvvvvvvvvvvvvv";
    let mut hits = 0;
    let mut i = 0;
    while i + pattern.len() <= damaged.len() {
        if &damaged[i..i + pattern.len()] == pattern {
            damaged[i + 3] = b'w';
            hits += 1;
            i += pattern.len();
        } else {
            i += 1;
        }
    }
    assert!(hits > 0, "the values are in the file");
    std::fs::write(&db, &damaged).unwrap();
    let err = refuses(&args);
    assert!(err.contains(&db.display().to_string()), "{err}");
    // Restored, it serves again.
    std::fs::write(&db, &copy).unwrap();
    s.restart();
    assert_eq!(
        s.ctl_ok(&["get", "key7", "--print-value-only"]),
        format!("{}\n", "v".repeat(500))
    );
}

#[test]
fn space_exhaustion_raises_an_alarm_instead_of_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (client, peer) = (free_port(), free_port());
    let mut s = Server::start_on(Kind::Miniorch, &data, client, peer, &[]);
    s.ctl_ok(&["put", "victim", "v"]);
    assert!(s.stop());
    // Again with a quota far below what the database already uses.
    let mut s = Server::start_on(
        Kind::Miniorch,
        &data,
        client,
        peer,
        &["--quota-backend-bytes", "4096"],
    );
    // The member notices on its next check; writes are then refused with etcd's error.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = s.ctl(&["put", "k", "v"]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("etcdserver: mvcc: database space exceeded"),
                "{err}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the NOSPACE alarm was never raised"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let alarms = s.ctl_ok(&["alarm", "list"]);
    assert!(
        alarms.starts_with("memberID:") && alarms.trim_end().ends_with("alarm:NOSPACE"),
        "{alarms}"
    );
    // Making room still works.
    assert_eq!(s.ctl_ok(&["del", "victim"]), "1\n");
    // The alarm is part of the replicated state: it survives a restart...
    s.kill9();
    let mut s = Server::start_on(Kind::Miniorch, &data, client, peer, &[]);
    assert!(!s.ctl(&["put", "k", "v"]).status.success());
    // ...until the operator disarms it.
    assert!(s.ctl_ok(&["alarm", "disarm"]).contains("alarm:NOSPACE"));
    assert_eq!(s.ctl_ok(&["alarm", "list"]), "");
    assert_eq!(s.ctl_ok(&["put", "k", "v"]), "OK\n");
    assert!(s.stop());
}
