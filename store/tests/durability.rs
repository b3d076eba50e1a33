//! Every write acknowledged before a SIGKILL is there after a restart on the same data dir,
//! with the same revision, create revision and version.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Kind, Server};
use miniorch_store::pb::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};

/// What a client was told.
#[derive(Debug, Clone)]
enum Ack {
    /// The key holds `value`, written at `revision`.
    Put {
        key: String,
        value: String,
        revision: i64,
    },
    /// The key was deleted at `revision`.
    Deleted { key: String, revision: i64 },
    /// A delete of the key was sent but not acknowledged: it may or may not have happened.
    DeleteSent { key: String },
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// Writes until the server goes away, recording every acknowledged write.
async fn writer(s: String, round: usize, w: usize, acks: Arc<Mutex<Vec<Ack>>>) {
    let Ok(mut kv) = miniorch_store::pb::etcdserverpb::kv_client::KvClient::connect(s).await else {
        return;
    };
    for i in 0.. {
        let key = format!("r{round}/w{w}/{i:06}");
        let value = format!("value-{round}-{w}-{i}");
        let result = match i % 10 {
            // A transaction writing two keys at one revision.
            3 => {
                let other = format!("{key}/pair");
                let t = TxnRequest {
                    compare: vec![],
                    success: vec![put_op(&key, &value), put_op(&other, &value)],
                    failure: vec![],
                };
                kv.txn(t).await.map(|r| {
                    let revision = r.into_inner().header.unwrap().revision;
                    vec![
                        Ack::Put {
                            key: key.clone(),
                            value: value.clone(),
                            revision,
                        },
                        Ack::Put {
                            key: other,
                            value: value.clone(),
                            revision,
                        },
                    ]
                })
            }
            // Delete what was written just before.
            7 => {
                let prev = format!("r{round}/w{w}/{:06}", i - 1);
                acks.lock()
                    .unwrap()
                    .push(Ack::DeleteSent { key: prev.clone() });
                kv.delete_range(DeleteRangeRequest {
                    key: prev.clone().into(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    assert_eq!(r.deleted, 1, "delete of {prev}");
                    vec![Ack::Deleted {
                        key: prev,
                        revision: r.header.unwrap().revision,
                    }]
                })
            }
            _ => kv
                .put(PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    vec![Ack::Put {
                        key: key.clone(),
                        value: value.clone(),
                        revision: r.into_inner().header.unwrap().revision,
                    }]
                }),
        };
        match result {
            Ok(a) => acks.lock().unwrap().extend(a),
            Err(_) => return,
        }
    }
}

/// Checks the server holds exactly what the acknowledgements say.
async fn verify(endpoint: String, acks: &[Ack]) {
    let mut kv = miniorch_store::pb::etcdserverpb::kv_client::KvClient::connect(endpoint)
        .await
        .expect("connect after restart");
    // The last word on each key.
    let mut last: BTreeMap<String, Ack> = BTreeMap::new();
    // Keys whose delete may or may not have happened, with their acknowledged put.
    let mut unsure: BTreeMap<String, Ack> = BTreeMap::new();
    let mut max_rev = 0;
    for a in acks {
        match a {
            Ack::Put { key, revision, .. } | Ack::Deleted { key, revision } => {
                max_rev = max_rev.max(*revision);
                unsure.remove(key);
                last.insert(key.clone(), a.clone());
            }
            Ack::DeleteSent { key } => {
                if let Some(put) = last.remove(key) {
                    unsure.insert(key.clone(), put);
                }
            }
        }
    }
    for (key, put) in &unsure {
        let got = kv
            .range(RangeRequest {
                key: key.clone().into(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        if let (
            Some(kv),
            Ack::Put {
                value, revision, ..
            },
        ) = (got.kvs.first(), put)
        {
            assert_eq!(kv.value, value.as_bytes(), "{key}");
            assert_eq!(kv.mod_revision, *revision, "{key}");
        }
    }
    for (key, a) in &last {
        let got = kv
            .range(RangeRequest {
                key: key.clone().into(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        assert!(
            got.header.as_ref().unwrap().revision >= max_rev,
            "store revision went back"
        );
        match a {
            Ack::Put {
                value, revision, ..
            } => {
                assert_eq!(got.kvs.len(), 1, "acknowledged key {key} lost");
                let kv = &got.kvs[0];
                assert_eq!(kv.value, value.as_bytes(), "{key}");
                assert_eq!(kv.mod_revision, *revision, "{key}");
                assert_eq!(kv.create_revision, *revision, "{key}");
                assert_eq!(kv.version, 1, "{key}");
            }
            Ack::DeleteSent { .. } => unreachable!("moved to the unsure set"),
            Ack::Deleted { revision, .. } => {
                assert!(got.kvs.is_empty(), "acknowledged delete of {key} lost");
                // The deletion itself is in the history.
                let before = kv
                    .range(RangeRequest {
                        key: key.clone().into(),
                        revision: revision - 1,
                        ..Default::default()
                    })
                    .await
                    .expect("historical range")
                    .into_inner();
                assert_eq!(before.kvs.len(), 1, "{key} before its deletion");
            }
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    let rt = runtime();
    let mut all: Vec<Ack> = Vec::new();
    for round in 0..4 {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..4)
            .map(|w| rt.spawn(writer(s.endpoint(), round, w, acks.clone())))
            .collect();
        // Kill while the writers are mid-stream.
        while acks.lock().unwrap().len() < 150 + 100 * round {
            std::thread::sleep(Duration::from_millis(5));
        }
        s.kill9();
        for w in writers {
            rt.block_on(w).expect("writer task");
        }
        let acked = acks.lock().unwrap().clone();
        // Revisions: one per write, shared only within a transaction.
        let mut revs: Vec<i64> = acked
            .iter()
            .filter_map(|a| match a {
                Ack::Put { revision, .. } | Ack::Deleted { revision, .. } => Some(*revision),
                Ack::DeleteSent { .. } => None,
            })
            .collect();
        let writes = revs.len();
        revs.sort_unstable();
        let pairs = acked
            .iter()
            .filter(|a| matches!(a, Ack::Put { key, .. } if key.ends_with("/pair")))
            .count();
        revs.dedup();
        assert_eq!(revs.len() + pairs, writes, "revisions are unique per write");
        all.extend(acked);
        s.restart();
        rt.block_on(verify(s.endpoint(), &all));
    }
    // A clean stop after all this exits successfully, and the data is still there.
    assert!(s.stop(), "clean shutdown; log:\n{}", s.log_text());
    s.restart();
    rt.block_on(verify(s.endpoint(), &all));
}

/// With frequent snapshots the log is purged; a restart from snapshot plus the rest of the log
/// loses nothing and keeps the history.
#[test]
fn snapshots_and_log_purge_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_on(
        Kind::Miniorch,
        &data,
        common::free_port(),
        common::free_port(),
        &[
            "--snapshot-count",
            "20",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    );
    let rt = runtime();
    let mut acks = Vec::new();
    rt.block_on(async {
        let mut kv = s.kv().await;
        for i in 0..300 {
            let key = format!("snap/{i:04}");
            let value = format!("v{i}");
            let r = kv
                .put(PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            acks.push(Ack::Put {
                key,
                value,
                revision: r.header.unwrap().revision,
            });
        }
    });
    let snaps: Vec<_> = std::fs::read_dir(data.join("member").join("snap"))
        .expect("snapshot directory")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(snaps.len(), 1, "exactly one current snapshot");
    s.kill9();
    s.restart();
    rt.block_on(verify(s.endpoint(), &acks));
    // History older than the snapshot is still readable (the snapshot holds the history).
    assert_eq!(
        s.ctl_ok(&["get", "snap/0000", "--rev", "2", "--print-value-only"]),
        "v0\n"
    );
    // The log was purged behind the snapshots: far fewer entries than writes remain.
    assert!(s.stop());
    let wal = miniorch_store::raft::wal::Wal::open(
        &miniorch_store::raft::log_store::wal_dir(&data),
        miniorch_store::raft::wal::SEGMENT_BYTES,
    )
    .expect("open the stopped member's log");
    let r = wal.reader();
    let entries = r.last_index().unwrap() - r.first_index().unwrap() + 1;
    assert!(entries < 100, "{entries} log entries kept after 300 writes");
}
