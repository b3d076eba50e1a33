//! Table-driven tests of the state machine against etcd's documented and observed behaviour.

use super::mem::MemBackend;
use super::*;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::storepb::internal_request::Request as R;

struct Store {
    m: Mvcc,
    be: MemBackend,
}

impl Store {
    fn new() -> Self {
        Store {
            m: Mvcc::default(),
            be: MemBackend::default(),
        }
    }

    fn apply(&mut self, r: R) -> Applied {
        self.m
            .apply(&mut self.be, &InternalRequest { request: Some(r) })
            .expect("storage")
    }

    fn put(&mut self, k: &str, v: &str) -> PutResponse {
        match self.apply(R::Put(put(k, v))).result.result {
            Some(apply_result::Result::Put(p)) => p,
            other => panic!("put: {other:?}"),
        }
    }

    fn del(&mut self, k: &str, end: &str) -> DeleteRangeResponse {
        let req = DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: true,
        };
        match self.apply(R::DeleteRange(req)).result.result {
            Some(apply_result::Result::DeleteRange(d)) => d,
            other => panic!("del: {other:?}"),
        }
    }

    fn txn(&mut self, t: TxnRequest) -> Result<TxnResponse, EtcdError> {
        let applied = self.apply(R::Txn(t));
        if let Some(e) = apply_error(&applied.result) {
            return Err(e);
        }
        match applied.result.result {
            Some(apply_result::Result::Txn(t)) => Ok(t),
            other => panic!("txn: {other:?}"),
        }
    }

    fn range(&self, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
        let plan = self.m.plan_range(&req, self.m.revision())?;
        Ok(execute_range(&self.be, &req, plan).expect("storage"))
    }

    fn get(&self, k: &str, rev: i64) -> Result<Option<KeyValue>, EtcdError> {
        let req = RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        };
        Ok(self.range(req)?.kvs.into_iter().next())
    }
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn kv(k: &str, v: &str, create: i64, m: i64, version: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
        create_revision: create,
        mod_revision: m,
        version,
        lease: 0,
    }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(k, v))),
    }
}

fn op_get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        })),
    }
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

#[test]
fn revisions_versions_and_history() {
    let mut s = Store::new();
    assert_eq!(s.m.revision(), 1);
    assert_eq!(s.put("a", "1").header.unwrap().revision, 2);
    assert_eq!(s.put("a", "2").header.unwrap().revision, 3);
    assert_eq!(s.put("b", "x").header.unwrap().revision, 4);
    assert_eq!(s.get("a", 0).unwrap(), Some(kv("a", "2", 2, 3, 2)));
    assert_eq!(s.get("a", 2).unwrap(), Some(kv("a", "1", 2, 2, 1)));
    assert_eq!(s.get("b", 3).unwrap(), None);
    let d = s.del("a", "");
    assert_eq!((d.deleted, d.header.unwrap().revision), (1, 5));
    assert_eq!(d.prev_kvs, vec![kv("a", "2", 2, 3, 2)]);
    assert_eq!(s.get("a", 0).unwrap(), None);
    assert_eq!(s.get("a", 4).unwrap(), Some(kv("a", "2", 2, 3, 2)));
    // Re-creating starts a new generation.
    s.put("a", "3");
    assert_eq!(s.get("a", 0).unwrap(), Some(kv("a", "3", 6, 6, 1)));
    // Deleting nothing does not move the revision.
    let d = s.del("zzz", "");
    assert_eq!((d.deleted, d.header.unwrap().revision), (0, 6));
    assert_eq!(s.m.revision(), 6);
}

#[test]
fn read_revision_errors() {
    let mut s = Store::new();
    s.put("a", "1");
    s.put("a", "2");
    s.put("a", "3");
    assert_eq!(s.get("a", 5), Err(EtcdError::FutureRev));
    let c = s.apply(R::Compaction(CompactionRequest {
        revision: 3,
        physical: false,
    }));
    assert_eq!(apply_error(&c.result), None);
    assert_eq!(s.get("a", 2), Err(EtcdError::Compacted));
    assert_eq!(s.get("a", 3).unwrap(), Some(kv("a", "2", 2, 3, 2)));
    assert_eq!(s.get("a", 4).unwrap(), Some(kv("a", "3", 2, 4, 3)));
    // Revision 2 left the disk; 3 and 4 stay.
    let revs: Vec<i64> = s.be.records.keys().map(|r| r.main).collect();
    assert_eq!(revs, vec![3, 4]);
    let again = s.apply(R::Compaction(CompactionRequest {
        revision: 3,
        physical: false,
    }));
    assert_eq!(apply_error(&again.result), Some(EtcdError::Compacted));
    let future = s.apply(R::Compaction(CompactionRequest {
        revision: 9,
        physical: false,
    }));
    assert_eq!(apply_error(&future.result), Some(EtcdError::FutureRev));
}

#[test]
fn range_limit_count_sort_and_bounds() {
    let mut s = Store::new();
    for (k, v) in [("a", "3"), ("b", "2"), ("c", "1"), ("d", "0")] {
        s.put(k, v);
    }
    s.put("b", "2b");
    let r = |key: &str, end: &[u8], limit: i64| RangeRequest {
        key: key.into(),
        range_end: end.to_vec(),
        limit,
        ..Default::default()
    };
    // (request, keys, count, more)
    let cases: Vec<(RangeRequest, Vec<&str>, i64, bool)> = vec![
        (r("a", b"c", 0), vec!["a", "b"], 2, false),
        (r("a", b"\0", 0), vec!["a", "b", "c", "d"], 4, false),
        (r("a", b"\0", 2), vec!["a", "b"], 4, true),
        (r("a", b"\0", 4), vec!["a", "b", "c", "d"], 4, false),
        (r("\0", b"\0", 1), vec!["a"], 4, true),
        // range_end before key: nothing, no panic.
        (r("c", b"a", 0), vec![], 0, false),
        (r("c", b"c", 0), vec![], 0, false),
        (r("zz", b"", 0), vec![], 0, false),
        (
            RangeRequest {
                sort_order: range_request::SortOrder::Descend as i32,
                ..r("a", b"\0", 3)
            },
            vec!["d", "c", "b"],
            4,
            true,
        ),
        (
            RangeRequest {
                sort_target: range_request::SortTarget::Value as i32,
                ..r("a", b"\0", 0)
            },
            vec!["d", "c", "b", "a"],
            4,
            false,
        ),
        (
            RangeRequest {
                sort_target: range_request::SortTarget::Mod as i32,
                sort_order: range_request::SortOrder::Descend as i32,
                ..r("a", b"\0", 1)
            },
            vec!["b"],
            4,
            true,
        ),
        (
            RangeRequest {
                min_mod_revision: 4,
                ..r("a", b"\0", 0)
            },
            vec!["c", "d", "b"]
                .into_iter()
                .filter(|_| false)
                .chain(["b", "c", "d"])
                .collect(),
            4,
            false,
        ),
        (
            RangeRequest {
                count_only: true,
                ..r("a", b"\0", 1)
            },
            vec![],
            4,
            false,
        ),
    ];
    for (req, keys, count, more) in cases {
        let resp = s.range(req.clone()).unwrap();
        let got: Vec<String> = resp
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        assert_eq!(got, keys, "{req:?}");
        assert_eq!(resp.count, count, "{req:?}");
        assert_eq!(resp.more, more, "{req:?}");
        assert_eq!(resp.header.unwrap().revision, 6, "{req:?}");
    }
    let keys_only = s
        .range(RangeRequest {
            keys_only: true,
            ..r("a", b"", 0)
        })
        .unwrap();
    assert_eq!(keys_only.kvs[0].value, b"");
}

#[test]
fn txn_compares() {
    let mut s = Store::new();
    s.put("k", "v"); // rev 2, version 1
    s.put("k", "v2"); // rev 3, version 2
    use CompareResult::*;
    use CompareTarget::*;
    let cases: Vec<(Compare, bool)> = vec![
        (cmp("k", Mod, Equal, TargetUnion::ModRevision(3)), true),
        (cmp("k", Mod, Less, TargetUnion::ModRevision(3)), false),
        (cmp("k", Mod, Greater, TargetUnion::ModRevision(2)), true),
        (cmp("k", Version, Equal, TargetUnion::Version(2)), true),
        (cmp("k", Version, NotEqual, TargetUnion::Version(2)), false),
        (
            cmp("k", Create, Equal, TargetUnion::CreateRevision(2)),
            true,
        ),
        (
            cmp("k", Value, Equal, TargetUnion::Value(b"v2".to_vec())),
            true,
        ),
        (
            cmp("k", Value, Greater, TargetUnion::Value(b"v".to_vec())),
            true,
        ),
        (cmp("k", Lease, Equal, TargetUnion::Lease(0)), true),
        // A missing key has zero revisions and version...
        (
            cmp("nope", Create, Equal, TargetUnion::CreateRevision(0)),
            true,
        ),
        (cmp("nope", Version, Equal, TargetUnion::Version(0)), true),
        // ...but a value compare on it always fails.
        (
            cmp("nope", Value, Equal, TargetUnion::Value(Vec::new())),
            false,
        ),
        (
            cmp("nope", Value, NotEqual, TargetUnion::Value(b"x".to_vec())),
            false,
        ),
    ];
    for (c, want) in cases {
        let t = TxnRequest {
            compare: vec![c.clone()],
            success: vec![op_get("k")],
            failure: vec![],
        };
        let resp = s.txn(t).unwrap();
        assert_eq!(resp.succeeded, want, "{c:?}");
        // Read-only transactions do not move the revision.
        assert_eq!(resp.header.unwrap().revision, 3);
    }
}

#[test]
fn txn_writes_share_one_revision() {
    let mut s = Store::new();
    s.put("a", "0");
    let t = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(1),
        )],
        success: vec![op_put("a", "1"), op_get("a"), op_put("b", "1")],
        failure: vec![op_put("c", "1")],
    };
    let resp = s.txn(t.clone()).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    assert_eq!(s.m.revision(), 3);
    // The read inside the transaction sees the earlier write.
    let Some(response_op::Response::ResponseRange(r)) = &resp.responses[1].response else {
        panic!("range response expected");
    };
    assert_eq!(r.kvs, vec![kv("a", "1", 2, 3, 2)]);
    assert_eq!(r.header.as_ref().unwrap().revision, 3);
    assert_eq!(s.get("b", 0).unwrap(), Some(kv("b", "1", 3, 3, 1)));
    // Same compare now fails: failure branch, next revision.
    let resp = s.txn(t).unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 4);
    assert_eq!(s.get("c", 0).unwrap(), Some(kv("c", "1", 4, 4, 1)));
}

#[test]
fn txn_with_missing_lease_changes_nothing() {
    let mut s = Store::new();
    let mut p = put("a", "1");
    p.lease = 77;
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("b", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(p)),
            },
        ],
        failure: vec![],
    };
    assert_eq!(s.txn(t), Err(EtcdError::LeaseNotFound));
    assert_eq!(s.m.revision(), 1);
    assert_eq!(s.get("b", 0).unwrap(), None);
}

#[test]
fn nested_txn() {
    let mut s = Store::new();
    let inner = TxnRequest {
        compare: vec![cmp(
            "x",
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Version(0),
        )],
        success: vec![op_put("yes", "1")],
        failure: vec![op_put("no", "1")],
    };
    let outer = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("x", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestTxn(inner)),
            },
        ],
        failure: vec![],
    };
    let resp = s.txn(outer).unwrap();
    assert!(resp.succeeded);
    // Nested compares are evaluated before the outer writes, as in etcd.
    assert_eq!(s.get("no", 0).unwrap().map(|k| k.mod_revision), Some(2));
    assert_eq!(s.get("yes", 0).unwrap(), None);
}

#[test]
fn put_flags() {
    let mut s = Store::new();
    let mut p = put("a", "");
    p.ignore_value = true;
    let r = s.apply(R::Put(p.clone()));
    assert_eq!(apply_error(&r.result), Some(EtcdError::KeyNotFound));
    s.put("a", "keep");
    s.apply(R::Put(p));
    assert_eq!(s.get("a", 0).unwrap(), Some(kv("a", "keep", 2, 3, 2)));
    let mut p = put("a", "new");
    p.prev_kv = true;
    let Some(apply_result::Result::Put(resp)) = s.apply(R::Put(p)).result.result else {
        panic!("put");
    };
    assert_eq!(resp.prev_kv, Some(kv("a", "keep", 2, 3, 2)));
}

#[test]
fn leases_attach_and_revoke() {
    let mut s = Store::new();
    let g = s.apply(R::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 5 }));
    assert_eq!(apply_error(&g.result), None);
    let dup = s.apply(R::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 5 }));
    assert_eq!(apply_error(&dup.result), Some(EtcdError::LeaseExist));
    let mut p = put("a", "1");
    p.lease = 5;
    s.apply(R::Put(p.clone()));
    p.key = b"b".to_vec();
    s.apply(R::Put(p));
    s.put("b", "detached");
    assert_eq!(s.m.leases()[&5].keys, BTreeSet::from([b"a".to_vec()]));
    let r = s.apply(R::LeaseRevoke(LeaseRevokeRequest { id: 5 }));
    assert_eq!(apply_error(&r.result), None);
    assert_eq!(r.events.len(), 1);
    assert_eq!(s.get("a", 0).unwrap(), None);
    assert!(s.get("b", 0).unwrap().is_some());
    let r = s.apply(R::LeaseRevoke(LeaseRevokeRequest { id: 5 }));
    assert_eq!(apply_error(&r.result), Some(EtcdError::LeaseNotFound));
}

#[test]
fn events_and_prev_revision() {
    let mut s = Store::new();
    let a = s.apply(R::Put(put("a", "1")));
    assert_eq!(a.events.len(), 1);
    s.put("a", "2");
    let d = s.apply(R::DeleteRange(DeleteRangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    }));
    assert_eq!(d.events[0].r#type, EventType::Delete as i32);
    assert_eq!(d.events[0].kv.as_ref().unwrap().mod_revision, 4);
    assert_eq!(
        s.m.prev_revision(b"a", Revision::new(4, 0)),
        Some(Revision::new(3, 0))
    );
    assert_eq!(s.m.prev_revision(b"a", Revision::new(2, 0)), None);
    s.put("a", "3");
    // Before a re-creation the key did not exist.
    assert_eq!(s.m.prev_revision(b"a", Revision::new(5, 0)), None);
}

#[test]
fn restore_rebuilds_the_same_state() {
    let mut s = Store::new();
    s.apply(R::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 9 }));
    s.put("a", "1");
    s.put("a", "2");
    let mut p = put("l", "x");
    p.lease = 9;
    s.apply(R::Put(p));
    s.del("a", "");
    s.put("a", "3");
    s.put("b", "1");
    s.apply(R::Compaction(CompactionRequest {
        revision: 4,
        physical: true,
    }));
    let records = s.be.records.clone().into_iter().map(Ok);
    let leases = s.be.leases.clone();
    let restored = Mvcc::restore(s.m.revision(), s.m.compact_revision(), leases, records).unwrap();
    assert_eq!(restored.index, s.m.index);
    assert_eq!(restored.leases, s.m.leases);
    assert_eq!(restored.revision(), 7);
    assert_eq!(restored.compact_revision(), 4);
}
