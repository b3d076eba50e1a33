//! etcd semantics, checked differentially: the same requests go to real etcd (3.4, the
//! `etcd` binary) and to miniorch-store, and the answers must match once the member-specific
//! header fields (cluster, member, term) are cleared. Errors must match in code and message.

mod common;

use std::time::Duration;

use common::{Kind, Server};
use miniorch_store::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use miniorch_store::pb::etcdserverpb::kv_client::KvClient;
use miniorch_store::pb::etcdserverpb::lease_client::LeaseClient;
use miniorch_store::pb::etcdserverpb::watch_client::WatchClient;
use miniorch_store::pb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    WatchCreateRequest, WatchRequest, WatchResponse, range_request, request_op, response_op,
    watch_request,
};
use tonic::transport::Channel;

/// One step of a scenario.
#[derive(Debug, Clone)]
enum Op {
    Put(PutRequest),
    Range(RangeRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    LeaseGrant(i64, i64),
    LeaseRevoke(i64),
    /// Watch from a revision; then put "sentinel" to the given key (inside the watched range)
    /// and collect events up to it. Without a key, expect the watch to be canceled.
    Watch(WatchCreateRequest, Option<&'static str>),
}

fn put(k: &str, v: &str) -> Op {
    Op::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn range(k: &str, end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn del(k: &str, end: &[u8], prev_kv: bool) -> Op {
    Op::Delete(DeleteRangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        prev_kv,
    })
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn cmp(k: &str, target: CompareTarget, result: CompareResult, v: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: k.into(),
        target_union: Some(v),
        range_end: Vec::new(),
    }
}

fn watch(k: &str, end: &[u8], start: i64, prev_kv: bool, sentinel: Option<&'static str>) -> Op {
    Op::Watch(
        WatchCreateRequest {
            key: k.into(),
            range_end: end.to_vec(),
            start_revision: start,
            prev_kv,
            ..Default::default()
        },
        sentinel,
    )
}

/// The steps every server must answer identically.
fn scenario() -> Vec<Op> {
    use CompareResult::*;
    use CompareTarget::*;
    let mut ops = vec![
        put("a", "1"),
        put("b", "2"),
        put("a", "3"),
        put("c/1", "x"),
        put("c/2", "y"),
        put("c/3", "z"),
        Op::Put(PutRequest {
            prev_kv: true,
            ..put_req("a", "4")
        }),
        Op::Range(range("a", b"")),
        Op::Range(range("a", b"\0")),
        Op::Range(range("c/", b"c0")),
        Op::Range(RangeRequest {
            limit: 2,
            ..range("\0", b"\0")
        }),
        Op::Range(RangeRequest {
            count_only: true,
            ..range("c/", b"c0")
        }),
        Op::Range(RangeRequest {
            keys_only: true,
            ..range("c/", b"c0")
        }),
        Op::Range(RangeRequest {
            revision: 3,
            ..range("a", b"")
        }),
        Op::Range(RangeRequest {
            revision: 2,
            ..range("\0", b"\0")
        }),
        Op::Range(RangeRequest {
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Mod as i32,
            limit: 2,
            ..range("\0", b"\0")
        }),
        Op::Range(RangeRequest {
            sort_target: range_request::SortTarget::Value as i32,
            ..range("c/", b"c0")
        }),
        Op::Range(RangeRequest {
            min_mod_revision: 5,
            ..range("\0", b"\0")
        }),
        // range_end before key: nothing.
        Op::Range(range("c", b"a")),
        // Future revision.
        Op::Range(RangeRequest {
            revision: 100,
            ..range("a", b"")
        }),
        del("c/2", b"", true),
        del("nothing", b"", false),
        Op::Range(range("c/", b"c0")),
        Op::Range(RangeRequest {
            revision: 8,
            ..range("c/", b"c0")
        }),
    ];
    // Transactions: compare targets, both branches, reads inside, nested.
    let compares = [
        cmp("a", Mod, Equal, TargetUnion::ModRevision(8)),
        cmp("a", Mod, Less, TargetUnion::ModRevision(8)),
        cmp("a", Version, Equal, TargetUnion::Version(3)),
        cmp("a", Create, Equal, TargetUnion::CreateRevision(2)),
        cmp("a", Value, Greater, TargetUnion::Value(b"3".to_vec())),
        cmp("zz", Version, Equal, TargetUnion::Version(0)),
        cmp("zz", Value, Equal, TargetUnion::Value(Vec::new())),
        cmp("a", Lease, Equal, TargetUnion::Lease(0)),
        Compare {
            range_end: b"c0".to_vec(),
            ..cmp("c/", Version, Greater, TargetUnion::Version(0))
        },
    ];
    for (i, c) in compares.into_iter().enumerate() {
        ops.push(Op::Txn(TxnRequest {
            compare: vec![c],
            success: vec![
                op(request_op::Request::RequestPut(put_req(
                    &format!("t/{i}"),
                    "yes",
                ))),
                op(request_op::Request::RequestRange(range(
                    &format!("t/{i}"),
                    b"",
                ))),
            ],
            failure: vec![op(request_op::Request::RequestRange(range("a", b"")))],
        }));
    }
    ops.extend([
        // Read-only transaction.
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![op(request_op::Request::RequestRange(range("t/", b"t0")))],
            failure: vec![],
        }),
        // Nested transaction; delete with prev_kv inside.
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                op(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b"t/".to_vec(),
                        range_end: b"t0".to_vec(),
                        prev_kv: true,
                    },
                )),
                op(request_op::Request::RequestTxn(TxnRequest {
                    compare: vec![cmp("a", Version, Greater, TargetUnion::Version(1))],
                    success: vec![op(request_op::Request::RequestPut(put_req("n", "inner")))],
                    failure: vec![op(request_op::Request::RequestPut(put_req("n", "other")))],
                })),
            ],
            failure: vec![],
        }),
        // Errors decided before or at apply time.
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                op(request_op::Request::RequestPut(put_req("d", "1"))),
                op(request_op::Request::RequestPut(put_req("d", "2"))),
            ],
            failure: vec![],
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![op(request_op::Request::RequestRange(RangeRequest {
                revision: 1000,
                ..range("a", b"")
            }))],
            failure: vec![],
        }),
        Op::Put(PutRequest {
            ignore_value: true,
            ..put_req("missing", "")
        }),
        Op::Put(PutRequest {
            ignore_value: true,
            ..put_req("a", "")
        }),
        Op::Put(PutRequest {
            lease: 12345,
            ..put_req("l", "v")
        }),
        Op::Put(put_req("", "empty key")),
        // Leases.
        Op::LeaseGrant(777, 600),
        Op::LeaseGrant(777, 600),
        Op::Put(PutRequest {
            lease: 777,
            ..put_req("leased/1", "v")
        }),
        Op::Put(PutRequest {
            lease: 777,
            ..put_req("leased/2", "v")
        }),
        Op::Put(PutRequest {
            ignore_lease: true,
            ..put_req("leased/1", "v2")
        }),
        Op::Range(range("leased/", b"leased0")),
        Op::LeaseRevoke(777),
        Op::LeaseRevoke(777),
        Op::Range(range("leased/", b"leased0")),
        // Watches from the past, with prev_kv, across deletes and transactions.
        watch("a", b"", 1, true, Some("a")),
        watch("c/", b"c0", 1, true, Some("c/9")),
        watch("\0", b"\0", 10, false, Some("zzz")),
        // Compaction and what it does to reads.
        Op::Compact(9),
        Op::Compact(9),
        Op::Compact(5),
        Op::Compact(1000),
        Op::Range(RangeRequest {
            revision: 8,
            ..range("a", b"")
        }),
        Op::Range(RangeRequest {
            revision: 9,
            ..range("\0", b"\0")
        }),
        Op::Range(range("\0", b"\0")),
        watch("a", b"", 5, false, None),
    ]);
    ops
}

fn clear(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn clear_ops(ops: &mut [ResponseOp]) {
    for o in ops {
        match o.response.as_mut() {
            Some(response_op::Response::ResponseRange(r)) => clear(&mut r.header),
            Some(response_op::Response::ResponsePut(r)) => clear(&mut r.header),
            Some(response_op::Response::ResponseDeleteRange(r)) => clear(&mut r.header),
            Some(response_op::Response::ResponseTxn(r)) => {
                clear(&mut r.header);
                clear_ops(&mut r.responses);
            }
            None => {}
        }
    }
}

type Answer = Result<String, (i32, String)>;

fn status(s: tonic::Status) -> (i32, String) {
    (s.code() as i32, s.message().to_string())
}

async fn watch_events(ch: Channel, req: WatchCreateRequest, sentinel: Option<&str>) -> Answer {
    let mut client = WatchClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(req)),
    })
    .await
    .expect("queue request");
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status)?
        .into_inner();
    let mut events = Vec::new();
    let mut canceled: Option<WatchResponse> = None;
    let mut created = false;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("watch answered")
            .map_err(status)?;
        let Some(mut resp) = next else { break };
        if resp.created && !created {
            created = true;
            if let Some(key) = sentinel {
                let mut kv = KvClient::new(ch.clone());
                kv.put(put_req(key, "sentinel")).await.map_err(status)?;
            }
            if !resp.canceled {
                continue;
            }
        }
        if resp.canceled {
            clear(&mut resp.header);
            resp.cancel_reason.clear();
            canceled = Some(resp);
            break;
        }
        let done = resp.events.iter().any(|e| {
            e.kv.as_ref().is_some_and(|kv| {
                Some(kv.key.as_slice()) == sentinel.map(str::as_bytes) && kv.value == b"sentinel"
            })
        });
        events.extend(resp.events);
        if done {
            break;
        }
    }
    drop(tx);
    Ok(format!(
        "{events:?} {:?}",
        canceled.map(|c| (c.canceled, c.compact_revision))
    ))
}

async fn run(server: &Server, ops: &[Op]) -> Vec<(String, Answer)> {
    let ch = server.channel().await;
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    let mut out = Vec::new();
    for o in ops {
        let answer: Answer = match o.clone() {
            Op::Put(r) => kv.put(r).await.map(|r| {
                let mut r = r.into_inner();
                clear(&mut r.header);
                format!("{r:?}")
            }),
            Op::Range(r) => kv.range(r).await.map(|r| {
                let mut r = r.into_inner();
                clear(&mut r.header);
                format!("{r:?}")
            }),
            Op::Delete(r) => kv.delete_range(r).await.map(|r| {
                let mut r = r.into_inner();
                clear(&mut r.header);
                format!("{r:?}")
            }),
            Op::Txn(r) => kv.txn(r).await.map(|r| {
                let mut r = r.into_inner();
                clear(&mut r.header);
                clear_ops(&mut r.responses);
                format!("{r:?}")
            }),
            Op::Compact(rev) => kv
                .compact(CompactionRequest {
                    revision: rev,
                    physical: true,
                })
                .await
                .map(|r| {
                    let mut r = r.into_inner();
                    clear(&mut r.header);
                    format!("{r:?}")
                }),
            Op::LeaseGrant(id, ttl) => {
                lease
                    .lease_grant(LeaseGrantRequest { ttl, id })
                    .await
                    .map(|r| {
                        let mut r = r.into_inner();
                        clear(&mut r.header);
                        format!("{r:?}")
                    })
            }
            Op::LeaseRevoke(id) => lease
                .lease_revoke(LeaseRevokeRequest { id })
                .await
                .map(|r| {
                    let mut r = r.into_inner();
                    clear(&mut r.header);
                    format!("{r:?}")
                }),
            Op::Watch(req, sentinel) => {
                out.push((
                    format!("{o:?}"),
                    watch_events(ch.clone(), req, sentinel).await,
                ));
                continue;
            }
        }
        .map_err(status);
        out.push((format!("{o:?}"), answer));
    }
    out
}

#[test]
fn same_answers_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Server::start(Kind::Etcd, &dir.path().join("etcd"));
    let ours = Server::start(Kind::Miniorch, &dir.path().join("ours"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ops = scenario();
    let want = rt.block_on(run(&etcd, &ops));
    let got = rt.block_on(run(&ours, &ops));
    let mut diffs = Vec::new();
    for ((op, w), (_, g)) in want.iter().zip(&got) {
        if w != g {
            diffs.push(format!("{op}\n  etcd: {w:?}\n  ours: {g:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} answers differ:\n{}",
        diffs.len(),
        ops.len(),
        diffs.join("\n")
    );
}
