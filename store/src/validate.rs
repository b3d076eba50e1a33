//! etcd's checks of a request before it is proposed (its `v3rpc` layer): empty keys, flag
//! combinations, unknown enum values, transaction size and keys written twice in one
//! transaction. Pure functions of the request.

use std::collections::BTreeSet;

use crate::error::EtcdError;
use crate::mvcc::KeyRange;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    range_request, request_op,
};

pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

fn check_compare(c: &Compare) -> Result<(), EtcdError> {
    let target = compare::CompareTarget::try_from(c.target)
        .map_err(|_| EtcdError::InvalidArgument(format!("unknown compare target {}", c.target)))?;
    compare::CompareResult::try_from(c.result)
        .map_err(|_| EtcdError::InvalidArgument(format!("unknown compare result {}", c.result)))?;
    use compare::{CompareTarget as T, TargetUnion as U};
    let matches = matches!(
        (target, &c.target_union),
        (_, None)
            | (T::Version, Some(U::Version(_)))
            | (T::Create, Some(U::CreateRevision(_)))
            | (T::Mod, Some(U::ModRevision(_)))
            | (T::Value, Some(U::Value(_)))
            | (T::Lease, Some(U::Lease(_)))
    );
    if !matches {
        return Err(EtcdError::InvalidArgument(format!(
            "compare target {target:?} does not match the value given"
        )));
    }
    Ok(())
}

/// etcd's `checkTxnRequest` plus the duplicate-key check.
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    check_txn_shape(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_shape(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    for c in &r.compare {
        check_compare(c)?;
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => check_range(x)?,
            Some(request_op::Request::RequestPut(x)) => check_put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => check_delete(x)?,
            Some(request_op::Request::RequestTxn(x)) => check_txn_shape(x, max_ops)?,
            // etcd answers an empty operation with "key not found".
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted range, owned.
#[derive(Debug, Clone)]
struct Del {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl Del {
    fn contains(&self, k: &[u8]) -> bool {
        KeyRange::new(&self.key, &self.end).contains(k)
    }
}

/// The keys a list of operations writes must not overlap (etcd's `checkIntervals`): a key put
/// twice, or put and deleted, is an error. The two branches of a nested transaction exclude
/// each other, so they may write the same key.
fn check_intervals(ops: &[RequestOp]) -> Result<(), EtcdError> {
    intervals(ops).map(|_| ())
}

fn intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Del>), EtcdError> {
    let mut dels: Vec<Del> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Del {
                key: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
            if dels.iter().any(|d| d.contains(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// True when no branch of the transaction writes anything.
pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::TxnRequest;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    prev_kv: false,
                },
            )),
        }
    }

    fn get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn txn(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }

    #[test]
    fn duplicate_keys() {
        let cases: Vec<(Vec<RequestOp>, Result<(), EtcdError>)> = vec![
            (vec![put("a"), put("b")], Ok(())),
            (vec![put("a"), put("a")], Err(EtcdError::DuplicateKey)),
            (vec![put("a"), del("a", "")], Err(EtcdError::DuplicateKey)),
            (vec![put("b"), del("a", "c")], Err(EtcdError::DuplicateKey)),
            (vec![put("c"), del("a", "c")], Ok(())),
            (vec![put("z"), del("a", "\0")], Err(EtcdError::DuplicateKey)),
            (vec![del("a", "c"), del("b", "d")], Ok(())),
            (vec![get("a"), put("a")], Ok(())),
            // Exclusive branches may write the same key...
            (vec![nested(vec![put("a")], vec![put("a")])], Ok(())),
            // ...but not a key the outer level writes too.
            (
                vec![put("a"), nested(vec![put("a")], vec![])],
                Err(EtcdError::DuplicateKey),
            ),
            (
                vec![del("a", ""), nested(vec![], vec![put("a")])],
                Err(EtcdError::DuplicateKey),
            ),
            (
                vec![nested(vec![del("a", "")], vec![]), put("a")],
                Err(EtcdError::DuplicateKey),
            ),
        ];
        for (ops, want) in cases {
            assert_eq!(check_txn(&txn(ops.clone()), 128), want, "{ops:?}");
        }
    }

    #[test]
    fn shapes() {
        let too_many = txn((0..129).map(|i| put(&format!("k{i}"))).collect());
        assert_eq!(check_txn(&too_many, 128), Err(EtcdError::TooManyOps));
        let empty_op = txn(vec![RequestOp { request: None }]);
        assert_eq!(check_txn(&empty_op, 128), Err(EtcdError::KeyNotFound));
        let empty_key = txn(vec![put("")]);
        assert_eq!(check_txn(&empty_key, 128), Err(EtcdError::EmptyKey));
        let bad_compare = TxnRequest {
            compare: vec![Compare {
                target: 9,
                ..Default::default()
            }],
            ..txn(vec![])
        };
        assert!(
            matches!(check_txn(&bad_compare, 128), Err(EtcdError::InvalidArgument(m)) if m.contains("compare target 9"))
        );
        let bad_result = TxnRequest {
            compare: vec![Compare {
                result: 7,
                ..Default::default()
            }],
            ..txn(vec![])
        };
        assert!(matches!(
            check_txn(&bad_result, 128),
            Err(EtcdError::InvalidArgument(_))
        ));
    }

    #[test]
    fn single_requests() {
        assert_eq!(
            check_range(&RangeRequest::default()),
            Err(EtcdError::EmptyKey)
        );
        let bad_sort = RangeRequest {
            key: b"a".to_vec(),
            sort_order: 5,
            ..Default::default()
        };
        assert_eq!(check_range(&bad_sort), Err(EtcdError::InvalidSortOption));
        let p = PutRequest {
            key: b"a".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(EtcdError::ValueProvided));
        let p = PutRequest {
            key: b"a".to_vec(),
            lease: 3,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(EtcdError::LeaseProvided));
        assert_eq!(
            check_delete(&DeleteRangeRequest::default()),
            Err(EtcdError::EmptyKey)
        );
    }

    #[test]
    fn read_only() {
        assert!(txn_is_read_only(&txn(vec![
            get("a"),
            nested(vec![get("b")], vec![])
        ])));
        assert!(!txn_is_read_only(&txn(vec![
            get("a"),
            nested(vec![], vec![del("b", "")])
        ])));
    }
}
