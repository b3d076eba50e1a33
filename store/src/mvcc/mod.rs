//! The MVCC state machine with etcd's semantics: revisions (one per write transaction),
//! create/mod revision and version per key, historical reads, compaction, transactions and
//! leases. It is pure: records live behind the narrow [`Backend`] trait (a redb table in
//! production, a `BTreeMap` in unit tests) and only an in-memory key index is kept here.
//!
//! Applying is deterministic: every member applies the same log to the same state and gets the
//! same revisions, so a restart can replay the log and watchers never see a revision change.

pub mod key_index;
pub mod mem;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

pub use key_index::{KeyAt, KeyIndex, Revision};

use crate::error::EtcdError;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    TxnResponse, compare, range_request, request_op, response_op,
};
use crate::pb::mvccpb::{Event, KeyValue, event::EventType};
use crate::pb::storepb::{ApplyError, ApplyResult, Empty, InternalRequest, Record, apply_result};
use crate::pb::storepb::{MemberAttributes, internal_request};

/// A failure of the storage under the state machine. It is fatal for the member: the in-memory
/// index may no longer match the disk, so the caller must stop and recover from the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

/// Read access to the history records, by revision.
pub trait Backend {
    fn get(&self, rev: Revision) -> Result<Option<Record>, StorageError>;
}

/// Write access, used while applying. A transaction must read its own writes.
pub trait BackendMut: Backend {
    fn put(&mut self, rev: Revision, record: Record) -> Result<(), StorageError>;
    fn remove(&mut self, rev: Revision) -> Result<(), StorageError>;
    fn put_lease(&mut self, id: i64, ttl: i64) -> Result<(), StorageError>;
    fn remove_lease(&mut self, id: i64) -> Result<(), StorageError>;
}

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Bookkeeping of one granted lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// Granted time-to-live in seconds.
    pub ttl: i64,
    /// Keys currently attached.
    pub keys: BTreeSet<Vec<u8>>,
}

/// The outcome of applying one command: the client's answer and the watch events it produced
/// (all at revision [`Mvcc::revision`] when non-empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub result: ApplyResult,
    pub events: Vec<Event>,
}

/// Which keys a request addresses, decoded from etcd's `key`/`range_end` convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// `range_end` empty: the key alone.
    Single(&'a [u8]),
    /// `range_end` is `"\0"`: every key `>= key`.
    From(&'a [u8]),
    /// `[key, range_end)`; empty when `range_end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(key, end) => k >= key && k < end,
        }
    }
}

/// The key index and counters of the store; records are in the [`Backend`].
#[derive(Debug, Clone)]
pub struct Mvcc {
    index: BTreeMap<Vec<u8>, KeyIndex>,
    rev: i64,
    compact_rev: i64,
    leases: BTreeMap<i64, LeaseState>,
}

impl Default for Mvcc {
    fn default() -> Self {
        // etcd starts at revision 1 with nothing stored.
        Self {
            index: BTreeMap::new(),
            rev: 1,
            compact_rev: 0,
            leases: BTreeMap::new(),
        }
    }
}

/// The first phase of a range: which revisions to read. Taking it under a short lock and
/// reading the records afterwards keeps long reads from blocking writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    /// Revision reported in the response header (the store's, even for historical reads).
    pub header_rev: i64,
    /// Record revisions of the matching keys, in key order.
    pub hits: Vec<Revision>,
}

impl Mvcc {
    /// Rebuilds the index from the records on disk, oldest first.
    pub fn restore(
        rev: i64,
        compact_rev: i64,
        leases: impl IntoIterator<Item = (i64, i64)>,
        records: impl IntoIterator<Item = Result<(Revision, Record), StorageError>>,
    ) -> Result<Self, StorageError> {
        let mut m = Mvcc {
            rev: rev.max(1),
            compact_rev,
            ..Mvcc::default()
        };
        for (id, ttl) in leases {
            m.leases.insert(
                id,
                LeaseState {
                    ttl,
                    keys: BTreeSet::new(),
                },
            );
        }
        for item in records {
            let (r, record) = item?;
            let kv = record.kv.unwrap_or_default();
            let ki = m.index.entry(kv.key.clone()).or_default();
            if record.tombstone {
                ki.tombstone(r);
            } else {
                ki.restore(r, Revision::new(kv.create_revision, 0), kv.version);
                ki.lease = kv.lease;
            }
            if r.main > m.rev {
                return Err(StorageError(format!(
                    "record at revision {r} is newer than the stored revision {}",
                    m.rev
                )));
            }
        }
        for (key, ki) in &m.index {
            if ki.is_alive()
                && ki.lease != 0
                && let Some(l) = m.leases.get_mut(&ki.lease)
            {
                l.keys.insert(key.clone());
            }
        }
        Ok(m)
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// The revision of the last compaction (0 when never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// Number of keys that currently exist.
    pub fn key_count(&self) -> usize {
        self.index.values().filter(|k| k.is_alive()).count()
    }

    pub fn leases(&self) -> &BTreeMap<i64, LeaseState> {
        &self.leases
    }

    fn keys_in<'s>(
        &'s self,
        range: KeyRange<'s>,
    ) -> Box<dyn Iterator<Item = (&'s Vec<u8>, &'s KeyIndex)> + 's> {
        match range {
            KeyRange::Single(key) => Box::new(self.index.get_key_value(key).into_iter()),
            KeyRange::From(key) => Box::new(
                self.index
                    .range::<[u8], _>((Bound::Included(key), Bound::Unbounded)),
            ),
            // BTreeMap::range panics on an inverted range; etcd answers with nothing.
            KeyRange::Between(key, end) if end <= key => Box::new(std::iter::empty()),
            KeyRange::Between(key, end) => Box::new(
                self.index
                    .range::<[u8], _>((Bound::Included(key), Bound::Excluded(end))),
            ),
        }
    }

    /// Keys alive at revision `at` in `range`, in key order.
    fn live_at<'s>(
        &'s self,
        range: KeyRange<'s>,
        at: i64,
    ) -> impl Iterator<Item = (&'s Vec<u8>, &'s KeyIndex, KeyAt)> + 's {
        self.keys_in(range)
            .filter_map(move |(k, ki)| ki.get(at).map(|a| (k, ki, a)))
    }

    /// Checks a range's revision against the view `view_rev` and lists what to read.
    pub fn plan_range(&self, req: &RangeRequest, view_rev: i64) -> Result<RangePlan, EtcdError> {
        let at = self.read_revision(req.revision, view_rev)?;
        let hits = self
            .live_at(KeyRange::new(&req.key, &req.range_end), at)
            .map(|(_, _, a)| a.modified)
            .collect();
        Ok(RangePlan {
            header_rev: view_rev,
            hits,
        })
    }

    /// The revision a read at `requested` sees (etcd: `<= 0` means the view's newest).
    fn read_revision(&self, requested: i64, view_rev: i64) -> Result<i64, EtcdError> {
        if requested > view_rev {
            return Err(EtcdError::FutureRev);
        }
        let at = if requested <= 0 { view_rev } else { requested };
        if at < self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        Ok(at)
    }

    /// The newest record of `key` strictly before `rev` (for a watch event's `prev_kv`), or
    /// `None` when the key did not exist just before.
    pub fn prev_revision(&self, key: &[u8], rev: Revision) -> Option<Revision> {
        match self.index.get(key)?.last_before(rev) {
            Some((r, false)) if r.main >= self.compact_rev => Some(r),
            _ => None,
        }
    }

    /// Applies one command from the log. An etcd error (say, a missing lease) becomes the
    /// command's result and changes nothing; a storage error is returned and is fatal.
    pub fn apply(
        &mut self,
        be: &mut impl BackendMut,
        req: &InternalRequest,
    ) -> Result<Applied, StorageError> {
        let mut cx = WriteCx::new(self.rev + 1);
        let result = match self.apply_request(be, &mut cx, req) {
            Ok(mut ok) => {
                if cx.sub > 0 {
                    self.rev = cx.main;
                }
                set_top_header(&mut ok, self.rev);
                ok
            }
            Err(Failure::Etcd(e)) => apply_result::Result::Error(ApplyError {
                code: e.code() as i32,
                message: e.to_string(),
            }),
            Err(Failure::Storage(e)) => return Err(e),
        };
        Ok(Applied {
            result: ApplyResult {
                result: Some(result),
            },
            events: cx.events,
        })
    }

    fn apply_request(
        &mut self,
        be: &mut impl BackendMut,
        cx: &mut WriteCx,
        req: &InternalRequest,
    ) -> Result<apply_result::Result, Failure> {
        use apply_result::Result as Out;
        use internal_request::Request as R;
        Ok(match &req.request {
            Some(R::Put(put)) => {
                self.check_put(put)?;
                Out::Put(self.put(be, cx, put)?)
            }
            Some(R::DeleteRange(del)) => Out::DeleteRange(self.delete_range(be, cx, del)?),
            Some(R::Txn(txn)) => {
                let path = self.compare_path(be, txn)?;
                self.check_txn(txn, &path, &mut 0)?;
                Out::Txn(self.txn(be, cx, txn, &path, &mut 0)?)
            }
            Some(R::Compaction(c)) => Out::Compaction(self.compact(be, c)?),
            Some(R::LeaseGrant(g)) => Out::LeaseGrant(self.lease_grant(be, g)?),
            Some(R::LeaseRevoke(r)) => {
                if !self.leases.contains_key(&r.id) {
                    return Err(EtcdError::LeaseNotFound.into());
                }
                Out::LeaseRevoke(self.lease_revoke(be, cx, r)?)
            }
            // Not MVCC state: alarms and member attributes are kept by the caller.
            Some(R::MemberAttributes(MemberAttributes { .. })) | Some(R::Alarm(_)) | None => {
                Out::Empty(Empty {})
            }
        })
    }

    fn record(be: &impl Backend, rev: Revision) -> Result<KeyValue, StorageError> {
        match be.get(rev)? {
            Some(Record { kv: Some(kv), .. }) => Ok(kv),
            _ => Err(StorageError(format!(
                "history record at revision {rev} is missing"
            ))),
        }
    }

    fn check_put(&self, put: &PutRequest) -> Result<(), EtcdError> {
        if put.lease != 0 && !self.leases.contains_key(&put.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        if (put.ignore_value || put.ignore_lease)
            && self
                .index
                .get(put.key.as_slice())
                .is_none_or(|k| !k.is_alive())
        {
            return Err(EtcdError::KeyNotFound);
        }
        Ok(())
    }

    fn put(
        &mut self,
        be: &mut impl BackendMut,
        cx: &mut WriteCx,
        req: &PutRequest,
    ) -> Result<PutResponse, StorageError> {
        let main = cx.main;
        // One search of the index per put: it is the largest cost of an apply.
        let mut found = self.index.get_mut(req.key.as_slice());
        let (prev, old_lease) = match &found {
            Some(ki) => (ki.get(main), ki.lease),
            None => (None, 0),
        };
        let prev_kv = match prev {
            Some(p) if req.prev_kv || req.ignore_value => Some(Self::record(be, p.modified)?),
            _ => None,
        };
        let value = match (&prev_kv, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = if req.ignore_lease {
            old_lease
        } else {
            req.lease
        };
        let (create_revision, version) = match prev {
            Some(p) => (p.created.main, p.version + 1),
            None => (main, 1),
        };
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        let rev = cx.next();
        be.put(
            rev,
            Record {
                kv: Some(kv.clone()),
                tombstone: false,
            },
        )?;
        let ki = match found.take() {
            Some(ki) => ki,
            None => self.index.entry(req.key.clone()).or_default(),
        };
        ki.put(rev);
        ki.lease = lease;
        if old_lease != lease {
            if let Some(l) = self.leases.get_mut(&old_lease) {
                l.keys.remove(&req.key);
            }
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(req.key.clone());
            }
        }
        cx.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(PutResponse {
            header: Some(header(main)),
            prev_kv: if req.prev_kv { prev_kv } else { None },
        })
    }

    fn delete_range(
        &mut self,
        be: &mut impl BackendMut,
        cx: &mut WriteCx,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StorageError> {
        let main = cx.main;
        let doomed: Vec<(Vec<u8>, KeyAt, i64)> = self
            .live_at(KeyRange::new(&req.key, &req.range_end), main)
            .map(|(k, ki, a)| (k.clone(), a, ki.lease))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, at, lease) in &doomed {
            if req.prev_kv {
                prev_kvs.push(Self::record(be, at.modified)?);
            }
            self.tombstone(be, cx, key, *lease)?;
        }
        let rev = if cx.sub > 0 { main } else { main - 1 };
        Ok(DeleteRangeResponse {
            header: Some(header(rev)),
            deleted: doomed.len() as i64,
            prev_kvs,
        })
    }

    fn tombstone(
        &mut self,
        be: &mut impl BackendMut,
        cx: &mut WriteCx,
        key: &[u8],
        lease: i64,
    ) -> Result<(), StorageError> {
        let kv = KeyValue {
            key: key.to_vec(),
            mod_revision: cx.main,
            ..KeyValue::default()
        };
        let rev = cx.next();
        be.put(
            rev,
            Record {
                kv: Some(kv.clone()),
                tombstone: true,
            },
        )?;
        if let Some(ki) = self.index.get_mut(key) {
            ki.tombstone(rev);
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
        cx.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(())
    }

    /// Evaluates every compare of the transaction tree against the state before it, like etcd:
    /// a pre-order list of which branch each (nested) transaction takes.
    fn compare_path(&self, be: &impl Backend, txn: &TxnRequest) -> Result<Vec<bool>, StorageError> {
        let mut path = Vec::new();
        self.compare_path_into(be, txn, &mut path)?;
        Ok(path)
    }

    fn compare_path_into(
        &self,
        be: &impl Backend,
        txn: &TxnRequest,
        path: &mut Vec<bool>,
    ) -> Result<(), StorageError> {
        let mut ok = true;
        for c in &txn.compare {
            if !self.compare(be, c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &txn.success } else { &txn.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                self.compare_path_into(be, nested, path)?;
            }
        }
        Ok(())
    }

    /// One compare, with etcd's rules: a missing key compares as zero values, except that a
    /// value compare on a missing key is false; a range compare needs every key to match.
    fn compare(&self, be: &impl Backend, c: &Compare) -> Result<bool, StorageError> {
        let target = compare::CompareTarget::try_from(c.target).ok();
        let live: Vec<(&Vec<u8>, &KeyIndex, KeyAt)> = self
            .live_at(KeyRange::new(&c.key, &c.range_end), self.rev)
            .collect();
        if live.is_empty() {
            if target == Some(compare::CompareTarget::Value) {
                return Ok(false);
            }
            return Ok(compare_one(c, target, &KeyValue::default()));
        }
        for (key, ki, at) in live {
            let kv = if target == Some(compare::CompareTarget::Value) {
                Self::record(be, at.modified)?
            } else {
                KeyValue {
                    key: key.clone(),
                    create_revision: at.created.main,
                    mod_revision: at.modified.main,
                    version: at.version,
                    value: Vec::new(),
                    lease: ki.lease,
                }
            };
            if !compare_one(c, target, &kv) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// etcd's apply-time checks of the branch a transaction takes, before anything is written.
    fn check_txn(&self, txn: &TxnRequest, path: &[bool], at: &mut usize) -> Result<(), EtcdError> {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let ops = if ok { &txn.success } else { &txn.failure };
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    self.read_revision(r.revision, self.rev)?;
                }
                Some(request_op::Request::RequestPut(p)) => self.check_put(p)?,
                Some(request_op::Request::RequestTxn(nested)) => {
                    self.check_txn(nested, path, at)?
                }
                Some(request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn txn(
        &mut self,
        be: &mut impl BackendMut,
        cx: &mut WriteCx,
        txn: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse, StorageError> {
        let succeeded = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for RequestOp { request } in ops {
            let response = match request {
                Some(request_op::Request::RequestRange(r)) => {
                    let view = if cx.sub > 0 { cx.main } else { cx.main - 1 };
                    let plan = match self.plan_range(r, view) {
                        Ok(plan) => plan,
                        // Checked before anything was written; the view only moved forward.
                        Err(e) => return Err(StorageError(format!("range in txn: {e}"))),
                    };
                    Some(response_op::Response::ResponseRange(execute_range(
                        be, r, plan,
                    )?))
                }
                Some(request_op::Request::RequestPut(p)) => {
                    Some(response_op::Response::ResponsePut(self.put(be, cx, p)?))
                }
                Some(request_op::Request::RequestDeleteRange(d)) => Some(
                    response_op::Response::ResponseDeleteRange(self.delete_range(be, cx, d)?),
                ),
                Some(request_op::Request::RequestTxn(nested)) => {
                    let mut r = self.txn(be, cx, nested, path, at)?;
                    // etcd leaves a nested transaction's header empty.
                    r.header = Some(header(0));
                    Some(response_op::Response::ResponseTxn(r))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        let rev = if cx.sub > 0 { cx.main } else { cx.main - 1 };
        Ok(TxnResponse {
            header: Some(header(rev)),
            succeeded,
            responses,
        })
    }

    /// Serves a transaction that writes nothing, at the current revision.
    pub fn read_txn(
        &self,
        be: &impl Backend,
        txn: &TxnRequest,
    ) -> Result<Result<TxnResponse, EtcdError>, StorageError> {
        let path = self.compare_path(be, txn)?;
        if let Err(e) = self.check_txn(txn, &path, &mut 0) {
            return Ok(Err(e));
        }
        self.read_txn_branch(be, txn, &path, &mut 0).map(Ok)
    }

    fn read_txn_branch(
        &self,
        be: &impl Backend,
        txn: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse, StorageError> {
        let succeeded = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for RequestOp { request } in ops {
            let response = match request {
                Some(request_op::Request::RequestRange(r)) => {
                    let plan = self
                        .plan_range(r, self.rev)
                        .map_err(|e| StorageError(format!("range in txn: {e}")))?;
                    Some(response_op::Response::ResponseRange(execute_range(
                        be, r, plan,
                    )?))
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    let mut r = self.read_txn_branch(be, nested, path, at)?;
                    r.header = Some(header(0));
                    Some(response_op::Response::ResponseTxn(r))
                }
                Some(_) => {
                    return Err(StorageError("write in a read-only transaction".into()));
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: Some(header(self.rev)),
            succeeded,
            responses,
        })
    }

    fn compact(
        &mut self,
        be: &mut impl BackendMut,
        req: &CompactionRequest,
    ) -> Result<CompactionResponse, Failure> {
        let at = req.revision;
        if at <= self.compact_rev {
            return Err(EtcdError::Compacted.into());
        }
        if at > self.rev {
            return Err(EtcdError::FutureRev.into());
        }
        let mut removed = Vec::new();
        self.index.retain(|_, ki| !ki.compact(at, &mut removed));
        for rev in removed {
            be.remove(rev)?;
        }
        self.compact_rev = at;
        Ok(CompactionResponse {
            header: Some(header(self.rev)),
        })
    }

    fn lease_grant(
        &mut self,
        be: &mut impl BackendMut,
        req: &LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, Failure> {
        if req.id <= 0 {
            let msg = format!("invalid lease ID {}", req.id);
            return Err(EtcdError::InvalidArgument(msg).into());
        }
        if self.leases.contains_key(&req.id) {
            return Err(EtcdError::LeaseExist.into());
        }
        if req.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        be.put_lease(req.id, req.ttl)?;
        self.leases.insert(
            req.id,
            LeaseState {
                ttl: req.ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(LeaseGrantResponse {
            header: Some(header(self.rev)),
            id: req.id,
            ttl: req.ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(
        &mut self,
        be: &mut impl BackendMut,
        cx: &mut WriteCx,
        req: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, StorageError> {
        let keys = self
            .leases
            .get(&req.id)
            .map(|l| l.keys.clone())
            .unwrap_or_default();
        for key in keys {
            let alive = self.index.get(&key).is_some_and(|k| k.is_alive());
            if alive {
                self.tombstone(be, cx, &key, req.id)?;
            }
        }
        self.leases.remove(&req.id);
        be.remove_lease(req.id)?;
        let rev = if cx.sub > 0 { cx.main } else { cx.main - 1 };
        Ok(LeaseRevokeResponse {
            header: Some(header(rev)),
        })
    }
}

/// Why an apply step stopped: an etcd error is the client's answer, a storage error is fatal.
enum Failure {
    Etcd(EtcdError),
    Storage(StorageError),
}

impl From<EtcdError> for Failure {
    fn from(e: EtcdError) -> Self {
        Failure::Etcd(e)
    }
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        Failure::Storage(e)
    }
}

/// The write in progress: its revision, the next sub-revision and the events so far.
struct WriteCx {
    main: i64,
    sub: i64,
    events: Vec<Event>,
}

impl WriteCx {
    fn new(main: i64) -> Self {
        Self {
            main,
            sub: 0,
            events: Vec::new(),
        }
    }

    fn next(&mut self) -> Revision {
        let r = Revision::new(self.main, self.sub);
        self.sub += 1;
        r
    }
}

/// A header carrying only a revision; the server fills in cluster, member and term.
pub fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..ResponseHeader::default()
    }
}

fn set_top_header(result: &mut apply_result::Result, rev: i64) {
    use apply_result::Result as R;
    let h = match result {
        R::Put(r) => &mut r.header,
        R::DeleteRange(r) => &mut r.header,
        R::Txn(r) => &mut r.header,
        R::Compaction(r) => &mut r.header,
        R::LeaseGrant(r) => &mut r.header,
        R::LeaseRevoke(r) => &mut r.header,
        R::Empty(_) | R::Error(_) | R::Alarm(_) => return,
    };
    *h = Some(header(rev));
}

fn compare_one(c: &Compare, target: Option<compare::CompareTarget>, kv: &KeyValue) -> bool {
    use compare::{CompareResult as Res, CompareTarget as T, TargetUnion as U};
    let ord = match target {
        Some(T::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(U::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Some(T::Create) => kv.create_revision.cmp(&match c.target_union {
            Some(U::CreateRevision(v)) => v,
            _ => 0,
        }),
        Some(T::Mod) => kv.mod_revision.cmp(&match c.target_union {
            Some(U::ModRevision(v)) => v,
            _ => 0,
        }),
        Some(T::Version) => kv.version.cmp(&match c.target_union {
            Some(U::Version(v)) => v,
            _ => 0,
        }),
        Some(T::Lease) => kv.lease.cmp(&match c.target_union {
            Some(U::Lease(v)) => v,
            _ => 0,
        }),
        // Rejected before proposing; etcd compares nothing and treats it as equal.
        None => std::cmp::Ordering::Equal,
    };
    match Res::try_from(c.result) {
        Ok(Res::Equal) => ord.is_eq(),
        Ok(Res::NotEqual) => ord.is_ne(),
        Ok(Res::Greater) => ord.is_gt(),
        Ok(Res::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

/// The second phase of a range: reads the planned records and shapes the response like etcd
/// (count before limit, `more`, filters, sort, keys_only).
pub fn execute_range(
    be: &impl Backend,
    req: &RangeRequest,
    plan: RangePlan,
) -> Result<RangeResponse, StorageError> {
    use range_request::{SortOrder, SortTarget};
    let count = plan.hits.len() as i64;
    let mut resp = RangeResponse {
        header: Some(header(plan.header_rev)),
        kvs: Vec::new(),
        more: false,
        count,
    };
    if req.count_only {
        return Ok(resp);
    }
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    // etcd sorts ascending by default when a non-key target is named.
    let order = match (order, target) {
        (SortOrder::None, t) if t != SortTarget::Key => SortOrder::Ascend,
        (o, _) => o,
    };
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let limit = usize::try_from(req.limit).unwrap_or(0);
    let fetch_all = order != SortOrder::None || filtered || limit == 0;
    let to_fetch = if fetch_all {
        plan.hits.len()
    } else {
        limit.min(plan.hits.len())
    };
    let mut kvs = Vec::with_capacity(to_fetch);
    for rev in &plan.hits[..to_fetch] {
        kvs.push(Mvcc::record(be, *rev)?);
    }
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    if order != SortOrder::None {
        match target {
            SortTarget::Key => {}
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    if fetch_all {
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            resp.more = true;
        }
    } else {
        resp.more = plan.hits.len() > limit;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    resp.kvs = kvs;
    Ok(resp)
}

/// The watch event a history record stands for.
pub fn record_event(record: &Record) -> Event {
    let kind = if record.tombstone {
        EventType::Delete
    } else {
        EventType::Put
    };
    Event {
        r#type: kind as i32,
        kv: record.kv.clone(),
        prev_kv: None,
    }
}

/// The result of an apply as the client sees it.
pub fn apply_error(result: &ApplyResult) -> Option<EtcdError> {
    match &result.result {
        Some(apply_result::Result::Error(e)) => Some(EtcdError::from_parts(e.code, &e.message)),
        None => Some(EtcdError::Internal("empty apply result".into())),
        _ => None,
    }
}
