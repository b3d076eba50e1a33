//! What a fuzzer drives: untrusted request bytes through protobuf decoding, the checks a
//! request passes before it is proposed ([`crate::validate`]) and the state machine's apply
//! and reads, over an in-memory backend. The input is a sequence of requests, each a tag byte,
//! a length byte and that many bytes of protobuf, applied in order to one state machine, so
//! the fuzzer can build up history, leases and compactions. Any panic is a bug, and so is a
//! storage error: the in-memory backend cannot fail, so one means the index and the records
//! disagree. `fuzz/` runs it under libFuzzer; a unit test runs it over a small corpus.

use prost::Message;

use crate::mvcc::mem::MemBackend;
use crate::mvcc::{MAX_LEASE_TTL, Mvcc, execute_range};
use crate::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, TxnRequest,
};
use crate::pb::storepb::{InternalRequest, internal_request::Request};
use crate::validate;

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut sm = Mvcc::default();
    let mut be = MemBackend::default();
    let mut rest = data;
    while let [tag, len, tail @ ..] = rest {
        let (msg, next) = tail.split_at((*len as usize).min(tail.len()));
        rest = next;
        step(&mut sm, &mut be, *tag, msg);
        check_consistent(&sm, &be);
    }
}

fn step(sm: &mut Mvcc, be: &mut MemBackend, tag: u8, msg: &[u8]) {
    let request = match tag % 7 {
        0 => decode::<PutRequest>(msg)
            .filter(|r| validate::check_put(r).is_ok())
            .map(Request::Put),
        1 => decode::<DeleteRangeRequest>(msg)
            .filter(|r| validate::check_delete(r).is_ok())
            .map(Request::DeleteRange),
        2 => decode::<TxnRequest>(msg)
            .filter(|r| validate::check_txn(r, MAX_TXN_OPS).is_ok())
            .and_then(|r| {
                if validate::txn_is_read_only(&r) {
                    let _ = sm
                        .read_txn(be, &r)
                        .expect("a read-only txn cannot fail on storage");
                    None
                } else {
                    Some(Request::Txn(r))
                }
            }),
        3 => decode::<CompactionRequest>(msg).map(Request::Compaction),
        4 => decode::<LeaseGrantRequest>(msg)
            .filter(|r| r.ttl <= MAX_LEASE_TTL)
            .map(|mut r| {
                // The lease service picks an ID when the client leaves it 0.
                if r.id == 0 {
                    r.id = 1;
                }
                Request::LeaseGrant(r)
            }),
        5 => decode::<LeaseRevokeRequest>(msg).map(Request::LeaseRevoke),
        _ => {
            if let Some(r) =
                decode::<RangeRequest>(msg).filter(|r| validate::check_range(r).is_ok())
                && let Ok(plan) = sm.plan_range(&r, sm.revision())
            {
                execute_range(be, &r, plan).expect("a planned range reads what it planned");
            }
            None
        }
    };
    if let Some(request) = request {
        let before = sm.revision();
        let req = InternalRequest {
            request: Some(request),
        };
        sm.apply(be, &req)
            .expect("apply cannot fail on an in-memory backend");
        assert!(sm.revision() >= before, "the revision went back");
    }
}

fn decode<M: Message + Default>(msg: &[u8]) -> Option<M> {
    M::decode(msg).ok()
}

/// Every live key reads back at the current revision.
fn check_consistent(sm: &Mvcc, be: &MemBackend) {
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let plan = sm
        .plan_range(&all, sm.revision())
        .expect("a range at the current revision");
    let resp = execute_range(be, &all, plan).expect("the index and the records agree");
    assert_eq!(
        resp.count as usize,
        sm.key_count(),
        "the key count and a full range disagree"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(tag: u8, msg: impl Message) -> Vec<u8> {
        let bytes = msg.encode_to_vec();
        let mut out = vec![tag, bytes.len() as u8];
        out.extend(bytes);
        out
    }

    #[test]
    fn a_small_corpus_goes_through_without_panics() {
        let put = |k: &str, lease: i64| PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        };
        let mut history = Vec::new();
        history.extend(op(4, LeaseGrantRequest { ttl: 5, id: 7 }));
        history.extend(op(0, put("a", 7)));
        history.extend(op(0, put("b", 0)));
        history.extend(op(0, put("a", 0)));
        history.extend(op(
            3,
            CompactionRequest {
                revision: 3,
                physical: false,
            },
        ));
        history.extend(op(
            6,
            RangeRequest {
                key: b"a".to_vec(),
                revision: 2,
                ..Default::default()
            },
        ));
        history.extend(op(5, LeaseRevokeRequest { id: 7 }));
        history.extend(op(
            1,
            DeleteRangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            },
        ));
        run(&history);
        for input in [
            &[][..],
            &[0],
            &[2, 200, 1, 2, 3],
            &[0, 3, 0x0a, 0x01, b'k'],
            &[255; 64],
        ] {
            run(input);
        }
    }
}
