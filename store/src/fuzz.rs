//! What a fuzzer drives.
//!
//! [`run`]: untrusted request bytes through protobuf decoding, the checks a request passes
//! before it is proposed ([`crate::validate`]) and the state machine's apply and reads, over
//! an in-memory backend. The input is a sequence of requests, each a tag byte, a length byte
//! and that many bytes of protobuf, applied in order to one state machine, so the fuzzer can
//! build up history, leases and compactions. Any panic is a bug, and so is a storage error:
//! the in-memory backend cannot fail, so one means the index and the records disagree.
//!
//! [`wal`]: the write-ahead log's recovery. The input is a sequence of log operations
//! (appends, votes, purges, truncations, syncs, over small segments) and then one damaged
//! byte. Undamaged, the log must reopen with exactly the entries written; damaged, it must
//! reopen or refuse with an error, never panic, and whatever it reopens with reads back.
//!
//! `fuzz/` runs both under libFuzzer; unit tests run them over a small corpus.

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

/// The content of log entry `index` in [`wal`]'s logs.
fn wal_entry(index: u64, len: u8) -> Vec<u8> {
    let mut e = index.to_le_bytes().to_vec();
    e.resize(8 + len as usize, (index % 251) as u8);
    e
}

/// Runs one input against a write-ahead log in a fresh directory.
pub fn wal(data: &[u8]) {
    use crate::raft::wal::Wal;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "miniorch-wal-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (head, ops) = data.split_first().unwrap_or((&0, &[]));
    let segment = 64 + u64::from(*head) * 16;
    let mut wal = Wal::open(&dir, segment).expect("a new log opens");
    // Entries the log must hold: index → length.
    let mut entries = std::collections::BTreeMap::new();
    let mut next = 0u64;
    let mut purged = None;
    let mut vote = None;
    let (ops, damage) = ops.split_at(ops.len().saturating_sub(3));
    for op in ops.chunks(2) {
        let arg = op.get(1).copied().unwrap_or(0);
        match op[0] % 6 {
            0 | 1 => {
                wal.append(next, &wal_entry(next, arg));
                entries.insert(next, arg);
                next += 1;
            }
            2 => {
                wal.set_vote(vec![arg; 3]);
                vote = Some(vec![arg; 3]);
            }
            3 => {
                let upto = next.saturating_sub(u64::from(arg % 8));
                if upto > 0 && purged.is_none_or(|p| upto - 1 > p) {
                    wal.set_purged(upto - 1, b"purged".to_vec());
                    purged = Some(upto - 1);
                    entries.retain(|i, _| *i >= upto);
                }
            }
            4 => {
                // Raft only truncates what is not purged.
                let from = next.saturating_sub(u64::from(arg % 4));
                if purged.is_none_or(|p| from > p) && from < next {
                    wal.truncate(from).expect("truncate");
                    entries.retain(|i, _| *i < from);
                    next = from;
                }
            }
            _ => wal.sync().expect("sync"),
        }
    }
    wal.sync().expect("sync");
    drop(wal);
    let check = |wal: &Wal, exact: bool| {
        let r = wal.reader();
        if exact {
            assert_eq!(r.last_index(), entries.keys().last().copied(), "last index");
        }
        if let (Some(first), Some(last)) = (r.first_index(), r.last_index()) {
            for i in first..=last {
                match r.read(i) {
                    Ok(Some(e)) if exact => {
                        assert_eq!(e, wal_entry(i, entries[&i]), "entry {i}");
                    }
                    Ok(Some(_)) | Err(_) => {}
                    Ok(None) => panic!("entry {i} missing between {first} and {last}"),
                }
            }
        }
    };
    let wal = Wal::open(&dir, segment).expect("an undamaged log reopens");
    check(&wal, true);
    assert_eq!(wal.state().vote, vote, "the last vote");
    drop(wal);
    if let [file, at, xor] = damage
        && *xor != 0
    {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        if !files.is_empty() {
            let path = &files[*file as usize % files.len()];
            if let Ok(mut bytes) = std::fs::read(path)
                && !bytes.is_empty()
            {
                let at = *at as usize * bytes.len() / 256;
                bytes[at] ^= xor;
                let _ = std::fs::write(path, &bytes);
            }
        }
        if let Ok(wal) = Wal::open(&dir, segment) {
            check(&wal, false);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
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

    #[test]
    fn a_small_log_corpus_goes_through_without_panics() {
        // Small segments; appends, a vote, a purge, a truncation, syncs; then damage.
        let mut ops = vec![0u8];
        for i in 0..40u8 {
            ops.extend([0, i.wrapping_mul(7)]);
            match i % 10 {
                3 => ops.extend([2, i]),
                5 => ops.extend([5, 0]),
                7 => ops.extend([4, 2]),
                9 => ops.extend([3, 3]),
                _ => {}
            }
        }
        for damage in [[0, 0, 0], [0, 10, 0xff], [1, 128, 0x01], [9, 255, 0x80]] {
            let mut input = ops.clone();
            input.extend(damage);
            wal(&input);
        }
        for input in [&[][..], &[7], &[255; 33], &[1, 4, 0, 4, 1, 3, 0, 0, 5, 5]] {
            wal(input);
        }
    }
}
