//! The member's key-value state as the servers and Raft see it: the MVCC index in memory over
//! the history in the database, the applied position, and the watch hub. The Raft state
//! machine writes through [`Kv::apply`]; the gRPC services read through the other methods.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use prost::Message;
use redb::{Durability, ReadableTable};

use crate::db::{self, Db, ReadKv, WriteKv};
use crate::error::EtcdError;
use crate::mvcc::{self, Mvcc, Revision, StorageError};
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use crate::pb::mvccpb::KeyValue;
use crate::pb::storepb::{
    ApplyResult, Empty, MemberAttributes, ProposalResult, Record, apply_result, internal_request,
};
use crate::progress::Progress;
use crate::raft::{Entry, LogId, Response, StoredMembership};
use crate::watch::Hub;

/// How often the state machine makes its applied state durable. Between checkpoints a crash
/// costs replaying the log from the last one, nothing more.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// A history record with the previous value of its key (when asked for).
pub type HistoryItem = (Revision, Record, Option<KeyValue>);

/// Where the state machine stands in the log.
#[derive(Debug, Clone, Default)]
pub struct AppliedState {
    pub log_id: Option<LogId>,
    pub membership: StoredMembership,
}

/// Shared state of one member's store.
pub struct Kv {
    pub db: Arc<Db>,
    mvcc: RwLock<Mvcc>,
    pub hub: Hub,
    applied: Mutex<AppliedState>,
    members: RwLock<BTreeMap<u64, MemberAttributes>>,
    /// Raised alarms: (member ID, alarm type).
    alarms: RwLock<BTreeSet<(u64, i32)>>,
    /// Set when an apply failed half-way: the index no longer matches the disk.
    failed: Mutex<Option<String>>,
    /// When the applied state was last made durable.
    checkpointed: Mutex<Instant>,
    /// The last applied log index, for linearizable reads to wait on.
    pub applied_index: Progress,
}

/// A consistent, durable view of the state machine: a read transaction and the position and
/// counters it reflects (what a snapshot is built from).
pub struct Frozen {
    pub txn: redb::ReadTransaction,
    pub applied: AppliedState,
    pub revision: i64,
    pub compact_revision: i64,
    pub alarms: BTreeSet<(u64, i32)>,
}

fn read_meta_json<T: serde::de::DeserializeOwned>(
    db: &Db,
    table: &redb::ReadOnlyTable<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match table.get(key).map_err(|e| db.err("read meta", e))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| db.err(&format!("corrupt meta {key}"), e)),
    }
}

fn read_meta_i64(
    db: &Db,
    table: &redb::ReadOnlyTable<&str, &[u8]>,
    key: &str,
) -> Result<Option<i64>, StorageError> {
    match table.get(key).map_err(|e| db.err("read meta", e))? {
        None => Ok(None),
        Some(v) => db::bytes_i64(v.value())
            .map(Some)
            .ok_or_else(|| db.err("corrupt meta", key)),
    }
}

impl Kv {
    /// Loads the state from the database: the applied position, counters, leases, members, and
    /// the key index rebuilt from the history records.
    pub fn open(db: Arc<Db>) -> Result<Kv, StorageError> {
        let (mvcc, applied, members, alarms) = Self::load(&db)?;
        let hub = Hub::new(mvcc.revision());
        let applied_index = Progress::new(applied.log_id.map_or(0, |l| l.index as i64));
        Ok(Kv {
            db,
            mvcc: RwLock::new(mvcc),
            hub,
            applied: Mutex::new(applied),
            members: RwLock::new(members),
            alarms: RwLock::new(alarms),
            failed: Mutex::new(None),
            checkpointed: Mutex::new(Instant::now()),
            applied_index,
        })
    }

    #[allow(clippy::type_complexity)]
    fn load(
        db: &Db,
    ) -> Result<
        (
            Mvcc,
            AppliedState,
            BTreeMap<u64, MemberAttributes>,
            BTreeSet<(u64, i32)>,
        ),
        StorageError,
    > {
        let txn = db.read()?;
        let meta = txn
            .open_table(db::META)
            .map_err(|e| db.err("open meta", e))?;
        let applied = AppliedState {
            log_id: read_meta_json(db, &meta, db::META_APPLIED)?,
            membership: read_meta_json(db, &meta, db::META_MEMBERSHIP)?.unwrap_or_default(),
        };
        let rev = read_meta_i64(db, &meta, db::META_REVISION)?.unwrap_or(1);
        let compact = read_meta_i64(db, &meta, db::META_COMPACT)?.unwrap_or(0);
        let alarms: BTreeSet<(u64, i32)> =
            read_meta_json(db, &meta, db::META_ALARMS)?.unwrap_or_default();
        let leases_table = txn
            .open_table(db::LEASES)
            .map_err(|e| db.err("open leases", e))?;
        let mut leases = Vec::new();
        for item in leases_table.iter().map_err(|e| db.err("read leases", e))? {
            let (k, v) = item.map_err(|e| db.err("read leases", e))?;
            leases.push((k.value(), v.value()));
        }
        let members_table = txn
            .open_table(db::MEMBERS)
            .map_err(|e| db.err("open members", e))?;
        let mut members = BTreeMap::new();
        for item in members_table
            .iter()
            .map_err(|e| db.err("read members", e))?
        {
            let (k, v) = item.map_err(|e| db.err("read members", e))?;
            let m = MemberAttributes::decode(v.value()).map_err(|e| db.err("corrupt member", e))?;
            members.insert(k.value(), m);
        }
        let kv = txn
            .open_table(db::KV)
            .map_err(|e| db.err("open history", e))?;
        let iter = kv.iter().map_err(|e| db.err("read history", e))?;
        let records = iter.map(|item| {
            let (k, v) = item.map_err(|e| db.err("read history", e))?;
            let (main, sub) = k.value();
            let rev = Revision::new(main, sub);
            let record = Record::decode(v.value())
                .map_err(|e| db.err(&format!("corrupt history record at revision {rev}"), e))?;
            Ok((rev, record))
        });
        let mvcc = Mvcc::restore(rev, compact, leases, records)?;
        Ok((mvcc, applied, members, alarms))
    }

    fn mvcc(&self) -> RwLockReadGuard<'_, Mvcc> {
        self.mvcc.read().unwrap_or_else(|p| p.into_inner())
    }

    fn mvcc_mut(&self) -> RwLockWriteGuard<'_, Mvcc> {
        self.mvcc.write().unwrap_or_else(|p| p.into_inner())
    }

    fn applied_lock(&self) -> MutexGuard<'_, AppliedState> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn applied(&self) -> AppliedState {
        self.applied_lock().clone()
    }

    /// The reason the state machine stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn check(&self) -> Result<(), EtcdError> {
        match self.failure() {
            Some(f) => Err(EtcdError::Internal(f)),
            None => Ok(()),
        }
    }

    pub fn revision(&self) -> i64 {
        self.mvcc().revision()
    }

    pub fn compact_revision(&self) -> i64 {
        self.mvcc().compact_revision()
    }

    /// Attributes published by members (name, client URLs).
    pub fn member_attributes(&self) -> BTreeMap<u64, MemberAttributes> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Raised alarms: (member ID, alarm type).
    pub fn alarms(&self) -> BTreeSet<(u64, i32)> {
        self.alarms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lease IDs with their granted TTL and attached keys.
    pub fn leases(&self) -> BTreeMap<i64, mvcc::LeaseState> {
        self.mvcc().leases().clone()
    }

    /// Serves a range at the newest applied state (blocking: run off the async threads).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.check()?;
        let (plan, txn) = {
            let m = self.mvcc();
            let plan = m.plan_range(req, m.revision())?;
            // Begun under the lock: the snapshot holds every record the plan names.
            let txn = self.db.read().map_err(internal)?;
            (plan, txn)
        };
        let be = ReadKv::open(&self.db, &txn).map_err(internal)?;
        mvcc::execute_range(&be, req, plan).map_err(internal)
    }

    /// Serves a transaction that writes nothing (blocking).
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.check()?;
        let m = self.mvcc();
        let txn = self.db.read().map_err(internal)?;
        let be = ReadKv::open(&self.db, &txn).map_err(internal)?;
        m.read_txn(&be, req).map_err(internal)?
    }

    /// History records with `from <= revision <= to` (at most about `max` of them and
    /// `max_bytes` bytes, whole revisions), each with the previous value of its key when
    /// `prev_kv` is asked for, and whether that reached `to`. Returns `Err(compact_revision)`
    /// when `from` has been compacted away.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        max: usize,
        max_bytes: usize,
        prev_kv: bool,
    ) -> Result<Result<(Vec<HistoryItem>, bool), i64>, StorageError> {
        let m = self.mvcc();
        if from < m.compact_revision() {
            return Ok(Err(m.compact_revision()));
        }
        let txn = self.db.read()?;
        let be = ReadKv::open(&self.db, &txn)?;
        let (records, complete) = be.scan(from, to, max, max_bytes)?;
        let mut out = Vec::with_capacity(records.len());
        for (rev, record) in records {
            let prev = match (&record.kv, prev_kv) {
                (Some(kv), true) => self.prev_value(&m, &be, &kv.key, rev)?,
                _ => None,
            };
            out.push((rev, record, prev));
        }
        Ok(Ok((out, complete)))
    }

    /// The value `key` had just before `rev`, for a live event's `prev_kv`.
    pub fn prev_kv(&self, key: &[u8], rev: Revision) -> Result<Option<KeyValue>, StorageError> {
        let m = self.mvcc();
        let txn = self.db.read()?;
        let be = ReadKv::open(&self.db, &txn)?;
        self.prev_value(&m, &be, key, rev)
    }

    fn prev_value(
        &self,
        m: &Mvcc,
        be: &ReadKv<'_>,
        key: &[u8],
        rev: Revision,
    ) -> Result<Option<KeyValue>, StorageError> {
        use mvcc::Backend;
        match m.prev_revision(key, rev) {
            Some(prev) => Ok(be.get(prev)?.and_then(|r| r.kv)),
            None => Ok(None),
        }
    }

    /// Applies committed entries in one database transaction (no fsync: see [`crate::db`]),
    /// then announces the new revisions to watchers.
    pub fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        if let Some(f) = self.failure() {
            return Err(StorageError(f));
        }
        let started = std::time::Instant::now();
        let n = entries.len();
        let mut m = self.mvcc_mut();
        let result = self.apply_locked(&mut m, entries);
        tracing::trace!(entries = n, took = ?started.elapsed(), "applied");
        match result {
            Ok((responses, published)) => {
                for (rev, events) in published {
                    self.hub.publish(rev, events);
                }
                if let Some(l) = self.applied_lock().log_id {
                    self.applied_index.advance(l.index as i64);
                }
                Ok(responses)
            }
            Err(e) => {
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn apply_locked(
        &self,
        m: &mut Mvcc,
        entries: Vec<Entry>,
    ) -> Result<(Vec<Response>, Vec<(i64, Vec<crate::pb::mvccpb::Event>)>), StorageError> {
        let db = &self.db;
        let mut txn = db.db.begin_write().map_err(|e| db.err("begin apply", e))?;
        let durable = self.checkpoint_due();
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| db.err("begin apply", e))?;
        }
        let mut responses = Vec::with_capacity(entries.len());
        let mut published = Vec::new();
        let mut applied = self.applied();
        let mut new_members = Vec::new();
        let mut alarms = self.alarms();
        let alarms_before = alarms.clone();
        {
            let mut be = WriteKv::open(&db.path, &txn)?;
            for entry in entries {
                applied.log_id = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(empty()),
                    EntryPayload::Membership(mem) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), mem);
                        responses.push(empty());
                    }
                    EntryPayload::Normal(proposal) => {
                        let mut results = Vec::with_capacity(proposal.0.requests.len());
                        for req in &proposal.0.requests {
                            if let Some(internal_request::Request::MemberAttributes(a)) =
                                &req.request
                            {
                                new_members.push(a.clone());
                            }
                            if let Some(internal_request::Request::Alarm(a)) = &req.request {
                                results.push(apply_alarm(&mut alarms, a, m.revision()));
                                continue;
                            }
                            let out = m.apply(&mut be, req)?;
                            if !out.events.is_empty() {
                                published.push((m.revision(), out.events));
                            }
                            results.push(out.result);
                        }
                        responses.push(Response(ProposalResult { results }));
                    }
                }
            }
            let mut meta = txn
                .open_table(db::META)
                .map_err(|e| db.err("open meta", e))?;
            let put = |meta: &mut redb::Table<&str, &[u8]>, k: &str, v: &[u8]| {
                meta.insert(k, v)
                    .map(|_| ())
                    .map_err(|e| db.err("write meta", e))
            };
            put(&mut meta, db::META_APPLIED, &to_json(db, &applied.log_id)?)?;
            put(
                &mut meta,
                db::META_MEMBERSHIP,
                &to_json(db, &applied.membership)?,
            )?;
            put(&mut meta, db::META_REVISION, &db::i64_bytes(m.revision()))?;
            put(
                &mut meta,
                db::META_COMPACT,
                &db::i64_bytes(m.compact_revision()),
            )?;
            if alarms != alarms_before {
                put(&mut meta, db::META_ALARMS, &to_json(db, &alarms)?)?;
            }
            if !new_members.is_empty() {
                let mut t = txn
                    .open_table(db::MEMBERS)
                    .map_err(|e| db.err("open members", e))?;
                for a in &new_members {
                    t.insert(a.id, a.encode_to_vec().as_slice())
                        .map_err(|e| db.err("write member", e))?;
                }
            }
        }
        txn.commit().map_err(|e| db.err("commit apply", e))?;
        if durable {
            *self.checkpointed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        *self.applied_lock() = applied;
        if alarms != alarms_before {
            *self.alarms.write().unwrap_or_else(|p| p.into_inner()) = alarms;
        }
        if !new_members.is_empty() {
            let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
            for a in new_members {
                members.insert(a.id, a);
            }
        }
        Ok((responses, published))
    }

    /// Replaces the whole state with what was just written to the database by a snapshot
    /// install, and tells watchers to catch up from disk.
    pub fn reload(&self) -> Result<(), StorageError> {
        let mut m = self.mvcc_mut();
        let (mvcc, applied, members, alarms) = Self::load(&self.db)?;
        *m = mvcc;
        *self.applied_lock() = applied;
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = members;
        *self.alarms.write().unwrap_or_else(|p| p.into_inner()) = alarms;
        self.hub.reset(m.revision());
        if let Some(l) = self.applied_lock().log_id {
            self.applied_index.advance(l.index as i64);
        }
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        self.checkpointed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= CHECKPOINT_INTERVAL
    }

    /// Makes everything applied so far durable (one fsync of the state file).
    fn checkpoint_locked(&self) -> Result<(), StorageError> {
        let txn = self
            .db
            .db
            .begin_write()
            .map_err(|e| self.db.err("checkpoint", e))?;
        txn.commit().map_err(|e| self.db.err("checkpoint", e))?;
        *self.checkpointed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(())
    }

    /// Makes the applied state durable and returns a read of exactly that state, taken while
    /// no apply is in progress. Since the log is only purged up to a snapshot, and snapshots
    /// are built from this, the log always reaches back to what the disk holds.
    pub fn freeze(&self) -> Result<Frozen, StorageError> {
        let m = self.mvcc();
        self.checkpoint_locked()?;
        let txn = self.db.read()?;
        Ok(Frozen {
            txn,
            applied: self.applied(),
            revision: m.revision(),
            compact_revision: m.compact_revision(),
            alarms: self.alarms(),
        })
    }
}

/// Raises or clears an alarm, as etcd's alarm store: the answer lists what changed.
fn apply_alarm(
    alarms: &mut BTreeSet<(u64, i32)>,
    req: &AlarmRequest,
    revision: i64,
) -> ApplyResult {
    use crate::pb::etcdserverpb::alarm_request::AlarmAction;
    let key = (req.member_id, req.alarm);
    let changed = match AlarmAction::try_from(req.action) {
        Ok(AlarmAction::Activate) if req.alarm != AlarmType::None as i32 => {
            alarms.insert(key);
            vec![key]
        }
        Ok(AlarmAction::Deactivate) if alarms.remove(&key) => vec![key],
        _ => Vec::new(),
    };
    ApplyResult {
        result: Some(apply_result::Result::Alarm(AlarmResponse {
            header: Some(crate::mvcc::header(revision)),
            alarms: changed
                .into_iter()
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect(),
        })),
    }
}

fn empty() -> Response {
    Response(ProposalResult {
        results: vec![ApplyResult {
            result: Some(apply_result::Result::Empty(Empty {})),
        }],
    })
}

fn internal(e: StorageError) -> EtcdError {
    EtcdError::Internal(e.to_string())
}

fn to_json(db: &Db, v: &impl serde::Serialize) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(v).map_err(|e| db.err("encode meta", e))
}
