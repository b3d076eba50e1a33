//! The member's key-value state as the servers and Raft see it: the MVCC index in memory over
//! the history in the database, the applied position, and the watch hub. The Raft state
//! machine writes through [`Kv::apply`]; the gRPC services read through the other methods.
//!
//! Applying touches memory only: the key index, and the new history records kept beside it
//! until a writer thread moves them into the database, every [`FLUSH_INTERVAL`] or sooner when
//! [`FLUSH_BYTES`] pile up, in one transaction with the applied position they reach (as etcd's
//! backend batches its commits). Readers look at those records first, then at the database.
//! Most flushes skip the fsync; one a [`CHECKPOINT_INTERVAL`] makes everything durable. After a
//! crash the database holds a checkpoint's state and position, and openraft replays the log
//! from there: the log is only purged up to a snapshot, and snapshots are taken from a durable
//! state ([`Kv::freeze`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use prost::Message;
use redb::{Durability, ReadableTable};
use tokio::sync::oneshot;

use crate::db::{self, Db, ReadKv};
use crate::error::EtcdError;
use crate::mvcc::{self, Backend, BackendMut, Mvcc, Revision, StorageError};
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

/// How often applied writes are moved into the database.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of history records waiting for the database that trigger a flush before the interval.
pub const FLUSH_BYTES: usize = 4 << 20;
/// How often a flush makes the database durable. Between checkpoints a crash costs replaying
/// the log from the last one, nothing more.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// An apply slower than this is logged as a warning (etcd's "apply request took too long").
const SLOW_APPLY: Duration = Duration::from_millis(100);
/// A flush slower than this is logged as a warning.
const SLOW_FLUSH: Duration = Duration::from_secs(1);

/// Most records a range may read on an async thread ([`Kv::small_range`]).
pub const SMALL_RANGE: usize = 16;

/// A history record with the previous value of its key (when asked for).
pub type HistoryItem = (Revision, Record, Option<KeyValue>);

/// History records by revision, shared with readers while a flush writes them.
type Records = BTreeMap<Revision, Arc<Record>>;

/// Where the state machine stands in the log.
#[derive(Debug, Clone, Default)]
pub struct AppliedState {
    pub log_id: Option<LogId>,
    pub membership: StoredMembership,
}

/// What was applied since the last flush began, besides history records.
#[derive(Debug, Default)]
struct Changes {
    /// Revisions compacted away (their records may be in the database).
    removed: Vec<Revision>,
    /// Lease TTLs granted, or `None` when revoked.
    leases: BTreeMap<i64, Option<i64>>,
    members: Vec<MemberAttributes>,
    /// Encoded size of the records waiting, to flush early when it grows.
    bytes: usize,
}

/// The key index and the history records not yet in the database, guarded together so a
/// reader sees a record either here or in a database snapshot taken under the same lock.
struct State {
    mvcc: Mvcc,
    /// Records applied since the last flush began.
    unwritten: Records,
    /// Records a flush is writing, readable here until its transaction has committed.
    writing: Option<Arc<Records>>,
    changes: Changes,
}

/// A record not yet in the database: applied since the last flush began, or being written.
fn unwritten<'a>(
    unwritten: &'a Records,
    writing: Option<&'a Records>,
    rev: Revision,
) -> Option<&'a Arc<Record>> {
    unwritten
        .get(&rev)
        .or_else(|| writing.and_then(|w| w.get(&rev)))
}

impl State {
    fn record(&self, rev: Revision) -> Option<&Arc<Record>> {
        unwritten(&self.unwritten, self.writing.as_deref(), rev)
    }

    /// Records not yet in the database with `from <= main <= to`.
    fn records_between(
        &self,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = (&Revision, &Arc<Record>)> {
        let range = Revision::new(from, i64::MIN)..=Revision::new(to, i64::MAX);
        let writing = self
            .writing
            .as_deref()
            .into_iter()
            .flat_map(move |w| w.range(range.clone()));
        let range = Revision::new(from, i64::MIN)..=Revision::new(to, i64::MAX);
        writing.chain(self.unwritten.range(range))
    }
}

/// History under the state lock: records not yet written, then the database.
struct Locked<'a> {
    state: &'a State,
    db: ReadKv<'a>,
}

impl Backend for Locked<'_> {
    fn get(&self, rev: Revision) -> Result<Option<Record>, StorageError> {
        match self.state.record(rev) {
            Some(r) => Ok(Some(Record::clone(r))),
            None => self.db.get(rev),
        }
    }
}

/// Where [`Kv::apply`] puts what it writes: into memory, for the next flush. Reads see the
/// records not yet written, then the database (the few writes that read a record, such as a
/// put asking for its previous value, open a read transaction).
struct Buffered<'a> {
    unwritten: &'a mut Records,
    writing: Option<&'a Records>,
    changes: &'a mut Changes,
    db: &'a Db,
}

impl Backend for Buffered<'_> {
    fn get(&self, rev: Revision) -> Result<Option<Record>, StorageError> {
        if let Some(r) = unwritten(self.unwritten, self.writing, rev) {
            return Ok(Some(Record::clone(r)));
        }
        let txn = self.db.read()?;
        ReadKv::open(self.db, &txn)?.get(rev)
    }
}

impl BackendMut for Buffered<'_> {
    fn put(&mut self, rev: Revision, record: Record) -> Result<(), StorageError> {
        self.changes.bytes += record.encoded_len();
        self.unwritten.insert(rev, Arc::new(record));
        Ok(())
    }

    fn remove(&mut self, rev: Revision) -> Result<(), StorageError> {
        self.unwritten.remove(&rev);
        self.changes.removed.push(rev);
        Ok(())
    }

    fn put_lease(&mut self, id: i64, ttl: i64) -> Result<(), StorageError> {
        self.changes.leases.insert(id, Some(ttl));
        Ok(())
    }

    fn remove_lease(&mut self, id: i64) -> Result<(), StorageError> {
        self.changes.leases.insert(id, None);
        Ok(())
    }
}

/// This member's proposals waiting for their results, by proposal ID (etcd's `wait`): the
/// state machine hands each its results as it applies it, without waiting for Raft's core,
/// which may be busy making the next entry durable.
#[derive(Debug, Default)]
pub struct Waiters(Mutex<HashMap<u64, oneshot::Sender<Vec<ApplyResult>>>>);

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Vec<ApplyResult>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the proposal `id` (call before proposing it).
    pub fn register(&self, id: u64) -> oneshot::Receiver<Vec<ApplyResult>> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Stops waiting (the proposal failed).
    pub fn cancel(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Vec<ApplyResult>>> {
        if id == 0 {
            return None;
        }
        self.lock().remove(&id)
    }
}

/// Shared state of one member's store.
pub struct Kv {
    pub db: Arc<Db>,
    state: RwLock<State>,
    pub hub: Hub,
    applied: Mutex<AppliedState>,
    members: RwLock<BTreeMap<u64, MemberAttributes>>,
    /// Raised alarms: (member ID, alarm type).
    alarms: RwLock<BTreeSet<(u64, i32)>>,
    /// Set when an apply or a flush failed: memory no longer matches the disk.
    failed: Mutex<Option<String>>,
    /// Held by the one flush in progress; the last durable commit.
    checkpointed: Mutex<Checkpoint>,
    /// Wakes the writer thread early.
    wake: std::sync::mpsc::SyncSender<()>,
    /// The last applied log index, for linearizable reads to wait on.
    pub applied_index: Progress,
    /// Writes proposed here, waiting for their results.
    pub proposals: Waiters,
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
    /// Loads the state from the database (the applied position, counters, leases, members, and
    /// the key index rebuilt from the history records) and starts the thread that moves applied
    /// writes into the database.
    pub fn open(db: Arc<Db>) -> Result<Arc<Kv>, StorageError> {
        let (mvcc, applied, members, alarms) = Self::load(&db)?;
        let hub = Hub::new(mvcc.revision());
        let applied_index = Progress::new(applied.log_id.map_or(0, |l| l.index as i64));
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let kv = Arc::new(Kv {
            db,
            state: RwLock::new(State {
                mvcc,
                unwritten: Records::new(),
                writing: None,
                changes: Changes::default(),
            }),
            hub,
            applied: Mutex::new(applied),
            members: RwLock::new(members),
            alarms: RwLock::new(alarms),
            failed: Mutex::new(None),
            checkpointed: Mutex::new(Checkpoint {
                at: Instant::now(),
                applied: None,
            }),
            wake,
            applied_index,
            proposals: Waiters::default(),
        });
        let weak = Arc::downgrade(&kv);
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || write_loop(weak, woken))
            .map_err(|e| StorageError(format!("starting the database writer: {e}")))?;
        Ok(kv)
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

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
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

    fn fail(&self, e: &StorageError) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    fn check(&self) -> Result<(), EtcdError> {
        self.intact().map_err(|e| EtcdError::Internal(e.0))
    }

    /// Fails once a flush failed: what it was writing is lost from memory, so nothing read or
    /// made durable from here on would be the whole state.
    fn intact(&self) -> Result<(), StorageError> {
        match self.failure() {
            Some(f) => Err(StorageError(f)),
            None => Ok(()),
        }
    }

    pub fn revision(&self) -> i64 {
        self.state().mvcc.revision()
    }

    pub fn compact_revision(&self) -> i64 {
        self.state().mvcc.compact_revision()
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
        self.state().mvcc.leases().clone()
    }

    /// Serves a range at the newest applied state (blocking: run off the async threads).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.range_upto(req, usize::MAX)?
            .ok_or_else(|| EtcdError::Internal("range refused".into()))
    }

    /// Serves a range that reads at most [`SMALL_RANGE`] records (a get, say), quick enough
    /// for an async thread; `None` when it would read more.
    pub fn small_range(&self, req: &RangeRequest) -> Result<Option<RangeResponse>, EtcdError> {
        self.range_upto(req, SMALL_RANGE)
    }

    fn range_upto(
        &self,
        req: &RangeRequest,
        most: usize,
    ) -> Result<Option<RangeResponse>, EtcdError> {
        self.check()?;
        let (plan, held, txn) = {
            let s = self.state();
            let plan = s.mvcc.plan_range(req, s.mvcc.revision())?;
            if plan.hits.len() > most && !req.count_only {
                return Ok(None);
            }
            // Records not yet in the database are taken now; the others are read from a
            // snapshot begun under the same lock, so each is in one or the other.
            let held: Records = plan
                .hits
                .iter()
                .filter_map(|rev| s.record(*rev).map(|r| (*rev, r.clone())))
                .collect();
            (plan, held, self.db.read().map_err(internal)?)
        };
        let be = Held {
            held,
            db: ReadKv::open(&self.db, &txn).map_err(internal)?,
        };
        mvcc::execute_range(&be, req, plan)
            .map(Some)
            .map_err(internal)
    }

    /// Serves a transaction that writes nothing (blocking).
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.check()?;
        let s = self.state();
        let txn = self.db.read().map_err(internal)?;
        let be = Locked {
            state: &s,
            db: ReadKv::open(&self.db, &txn).map_err(internal)?,
        };
        s.mvcc.read_txn(&be, req).map_err(internal)?
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
        self.intact()?;
        let s = self.state();
        if from < s.mvcc.compact_revision() {
            return Ok(Err(s.mvcc.compact_revision()));
        }
        let txn = self.db.read()?;
        let be = Locked {
            state: &s,
            db: ReadKv::open(&self.db, &txn)?,
        };
        let (on_disk, complete) = be.db.scan(from, to, max, max_bytes)?;
        // Records not yet written are newer than those on disk (or the same ones, while a
        // flush commits): they belong after the disk's, up to where the disk scan stopped.
        let upto = if complete {
            to
        } else {
            on_disk.last().map_or(to, |(r, _)| r.main)
        };
        let mut records: BTreeMap<Revision, Record> = on_disk.into_iter().collect();
        for (rev, r) in s.records_between(from, upto) {
            records.entry(*rev).or_insert_with(|| Record::clone(r));
        }
        let mut out = Vec::with_capacity(records.len());
        for (rev, record) in records {
            let prev = match (&record.kv, prev_kv) {
                (Some(kv), true) => prev_value(&s.mvcc, &be, &kv.key, rev)?,
                _ => None,
            };
            out.push((rev, record, prev));
        }
        Ok(Ok((out, complete)))
    }

    /// The value `key` had just before `rev`, for a live event's `prev_kv`.
    pub fn prev_kv(&self, key: &[u8], rev: Revision) -> Result<Option<KeyValue>, StorageError> {
        self.intact()?;
        let s = self.state();
        let txn = self.db.read()?;
        let be = Locked {
            state: &s,
            db: ReadKv::open(&self.db, &txn)?,
        };
        prev_value(&s.mvcc, &be, key, rev)
    }

    /// Applies committed entries in memory (see the module header), then announces the new
    /// revisions to watchers.
    pub fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        self.intact()?;
        let started = std::time::Instant::now();
        let n = entries.len();
        let (result, pending) = {
            let mut s = self.state_mut();
            let r = self.apply_locked(&mut s, entries);
            (r, s.changes.bytes)
        };
        let took = started.elapsed();
        if took >= SLOW_APPLY {
            tracing::warn!(
                entries = n,
                ?took,
                "applying committed entries took too long"
            );
        } else {
            tracing::trace!(entries = n, ?took, "applied");
        }
        match result {
            Ok((responses, published, answers)) => {
                for (rev, events) in published {
                    self.hub.publish(rev, events);
                }
                if let Some(l) = self.applied_lock().log_id {
                    self.applied_index.advance(l.index as i64);
                }
                for (tx, results) in answers {
                    let _ = tx.send(results);
                }
                if pending >= FLUSH_BYTES {
                    let _ = self.wake.try_send(());
                }
                Ok(responses)
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    fn apply_locked(&self, s: &mut State, entries: Vec<Entry>) -> Result<Applied, StorageError> {
        let mut responses = Vec::with_capacity(entries.len());
        let mut published = Vec::new();
        let mut answers = Vec::new();
        let mut applied = self.applied();
        let mut new_members = Vec::new();
        let mut alarms = self.alarms();
        let alarms_before = alarms.clone();
        let State {
            mvcc,
            unwritten,
            writing,
            changes,
        } = s;
        let mut be = Buffered {
            unwritten,
            writing: writing.as_deref(),
            changes,
            db: &self.db,
        };
        for entry in entries {
            applied.log_id = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(empty()),
                EntryPayload::Membership(mem) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), mem);
                    responses.push(empty());
                }
                EntryPayload::Normal(proposal) => {
                    let proposal = proposal.proposal();
                    let mut results = Vec::with_capacity(proposal.requests.len());
                    for req in &proposal.requests {
                        if let Some(internal_request::Request::MemberAttributes(a)) = &req.request {
                            new_members.push(a.clone());
                        }
                        if let Some(internal_request::Request::Alarm(a)) = &req.request {
                            results.push(apply_alarm(&mut alarms, a, mvcc.revision()));
                            continue;
                        }
                        let out = mvcc.apply(&mut be, req)?;
                        if !out.events.is_empty() {
                            published.push((mvcc.revision(), out.events));
                        }
                        results.push(out.result);
                    }
                    match self.proposals.take(proposal.id) {
                        // Raft's own answer to that writer then carries nothing.
                        Some(tx) => {
                            answers.push((tx, results));
                            responses.push(Response::default());
                        }
                        None => responses.push(Response(ProposalResult { results })),
                    }
                }
            }
        }
        changes.members.extend(new_members.iter().cloned());
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
        Ok((responses, published, answers))
    }

    /// Moves what was applied into the database, in one transaction with the position it
    /// reaches; durably when a checkpoint is due or `durable` asks for it.
    pub fn flush(&self, durable: bool) -> Result<(), StorageError> {
        let mut checkpointed = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
        let durable = durable || checkpointed.at.elapsed() >= CHECKPOINT_INTERVAL;
        let batch = {
            let mut s = self.state_mut();
            let waiting = !s.unwritten.is_empty() || !s.changes.removed.is_empty();
            // Nothing applied since the last durable commit: an idle member does not sync.
            let idle = self.applied().log_id == checkpointed.applied;
            if (!waiting && !durable) || idle {
                return Ok(());
            }
            self.take_batch(&mut s)
        };
        let written = self.write_batch(&batch, durable);
        self.state_mut().writing = None;
        if let Err(e) = written {
            self.fail(&e);
            return Err(e);
        }
        if durable {
            *checkpointed = Checkpoint::now(&batch);
        }
        Ok(())
    }

    /// Takes what is waiting, leaving it readable as `writing` until it is committed.
    fn take_batch(&self, s: &mut State) -> Batch {
        let records = Arc::new(std::mem::take(&mut s.unwritten));
        s.writing = Some(records.clone());
        Batch {
            records,
            changes: std::mem::take(&mut s.changes),
            applied: self.applied(),
            revision: s.mvcc.revision(),
            compact_revision: s.mvcc.compact_revision(),
            alarms: self.alarms(),
        }
    }

    fn write_batch(&self, b: &Batch, durable: bool) -> Result<(), StorageError> {
        let db = &self.db;
        let started = Instant::now();
        let mut txn = db.db.begin_write().map_err(|e| db.err("begin write", e))?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| db.err("begin write", e))?;
        }
        {
            let w = |e: &dyn std::fmt::Display| db.err("write", e);
            let mut kv = txn.open_table(db::KV).map_err(|e| w(&e))?;
            let mut bytes = Vec::new();
            for (rev, record) in b.records.iter() {
                bytes.clear();
                record.encode(&mut bytes).map_err(|e| w(&e))?;
                kv.insert((rev.main, rev.sub), bytes.as_slice())
                    .map_err(|e| w(&e))?;
            }
            for rev in &b.changes.removed {
                kv.remove((rev.main, rev.sub)).map_err(|e| w(&e))?;
            }
            let mut leases = txn.open_table(db::LEASES).map_err(|e| w(&e))?;
            for (id, ttl) in &b.changes.leases {
                match ttl {
                    Some(ttl) => leases.insert(*id, *ttl).map(|_| ()),
                    None => leases.remove(*id).map(|_| ()),
                }
                .map_err(|e| w(&e))?;
            }
            let mut members = txn.open_table(db::MEMBERS).map_err(|e| w(&e))?;
            for a in &b.changes.members {
                members
                    .insert(a.id, a.encode_to_vec().as_slice())
                    .map_err(|e| w(&e))?;
            }
            let mut meta = txn.open_table(db::META).map_err(|e| w(&e))?;
            let mut put = |k: &str, v: &[u8]| meta.insert(k, v).map(|_| ()).map_err(|e| w(&e));
            put(db::META_APPLIED, &to_json(db, &b.applied.log_id)?)?;
            put(db::META_MEMBERSHIP, &to_json(db, &b.applied.membership)?)?;
            put(db::META_REVISION, &db::i64_bytes(b.revision))?;
            put(db::META_COMPACT, &db::i64_bytes(b.compact_revision))?;
            put(db::META_ALARMS, &to_json(db, &b.alarms)?)?;
        }
        txn.commit().map_err(|e| db.err("commit", e))?;
        let took = started.elapsed();
        if took >= SLOW_FLUSH {
            tracing::warn!(
                records = b.records.len(),
                durable,
                ?took,
                "slow database flush"
            );
        } else {
            tracing::trace!(
                records = b.records.len(),
                durable,
                ?took,
                "flushed to the database"
            );
        }
        Ok(())
    }

    /// Replaces the whole state with what `write` puts in the database (a snapshot install),
    /// reloads it and tells watchers to catch up from disk. Applied writes not yet in the
    /// database are dropped (the new state supersedes them); no flush runs meanwhile, so none
    /// can write them over the new state.
    pub fn replace<T>(&self, write: impl FnOnce(&Db) -> Result<T, String>) -> Result<T, String> {
        let _flush = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
        let out = write(&self.db)?;
        self.reload().map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn reload(&self) -> Result<(), StorageError> {
        let mut s = self.state_mut();
        let (mvcc, applied, members, alarms) = Self::load(&self.db)?;
        *s = State {
            mvcc,
            unwritten: Records::new(),
            writing: None,
            changes: Changes::default(),
        };
        *self.applied_lock() = applied;
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = members;
        *self.alarms.write().unwrap_or_else(|p| p.into_inner()) = alarms;
        self.hub.reset(s.mvcc.revision());
        if let Some(l) = self.applied_lock().log_id {
            self.applied_index.advance(l.index as i64);
        }
        Ok(())
    }

    /// Makes the applied state durable and returns a read of exactly that state. The state is
    /// taken between two applies; applies go on while it is written (holding the flush lock,
    /// so no other write lands before the read). Since the log is only purged up to a
    /// snapshot, and snapshots are built from this, the log always reaches back to what the
    /// disk holds.
    pub fn freeze(&self) -> Result<Frozen, StorageError> {
        self.intact()?;
        let mut checkpointed = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
        let batch = self.take_batch(&mut self.state_mut());
        let written = self.write_batch(&batch, true).inspect_err(|e| self.fail(e));
        let read = written.and_then(|()| self.db.read());
        self.state_mut().writing = None;
        let txn = read?;
        *checkpointed = Checkpoint::now(&batch);
        Ok(Frozen {
            txn,
            applied: batch.applied,
            revision: batch.revision,
            compact_revision: batch.compact_revision,
            alarms: batch.alarms,
        })
    }
}

/// What applying entries produced: Raft's responses, the events of each new revision, and the
/// results for this member's waiting writers.
type Applied = (
    Vec<Response>,
    Vec<(i64, Vec<crate::pb::mvccpb::Event>)>,
    Vec<(oneshot::Sender<Vec<ApplyResult>>, Vec<ApplyResult>)>,
);

/// The last durable commit: when, and the applied position it holds.
struct Checkpoint {
    at: Instant,
    applied: Option<LogId>,
}

impl Checkpoint {
    fn now(batch: &Batch) -> Checkpoint {
        Checkpoint {
            at: Instant::now(),
            applied: batch.applied.log_id,
        }
    }
}

/// What one flush writes: the records and changes taken from memory and the state they bring
/// the database to.
struct Batch {
    records: Arc<Records>,
    changes: Changes,
    applied: AppliedState,
    revision: i64,
    compact_revision: i64,
    alarms: BTreeSet<(u64, i32)>,
}

/// A range's records: those taken from memory under the lock, then the database snapshot.
struct Held<'a> {
    held: Records,
    db: ReadKv<'a>,
}

impl Backend for Held<'_> {
    fn get(&self, rev: Revision) -> Result<Option<Record>, StorageError> {
        match self.held.get(&rev) {
            Some(r) => Ok(Some(Record::clone(r))),
            None => self.db.get(rev),
        }
    }
}

fn prev_value(
    m: &Mvcc,
    be: &impl Backend,
    key: &[u8],
    rev: Revision,
) -> Result<Option<KeyValue>, StorageError> {
    match m.prev_revision(key, rev) {
        Some(prev) => Ok(be.get(prev)?.and_then(|r| r.kv)),
        None => Ok(None),
    }
}

/// The writer thread: flushes every [`FLUSH_INTERVAL`], or when woken, until the state goes.
fn write_loop(kv: Weak<Kv>, woken: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        if let Err(RecvTimeoutError::Disconnected) = woken.recv_timeout(FLUSH_INTERVAL) {
            return;
        }
        let Some(kv) = kv.upgrade() else {
            return;
        };
        if kv.failure().is_some() {
            return;
        }
        if let Err(e) = kv.flush(false) {
            tracing::error!(error = %e, "cannot write applied changes to the database");
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};
    use crate::pb::storepb::{InternalRequest, Proposal};
    use crate::raft::Request;
    use crate::raft::codec::log_id;

    fn entry(index: u64, requests: Vec<internal_request::Request>) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Request::new(Proposal {
                requests: requests
                    .into_iter()
                    .map(|r| InternalRequest { request: Some(r) })
                    .collect(),
                id: 0,
            })),
        }
    }

    fn put(k: &str, v: &str) -> internal_request::Request {
        internal_request::Request::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
    }

    /// Every key with its value, and the history from revision 2 as (revision, key, value).
    type Seen = (Vec<(Vec<u8>, Vec<u8>)>, Vec<(i64, Vec<u8>, Vec<u8>)>);

    fn seen(kv: &Kv) -> Seen {
        let all = kv
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let (history, complete) = kv
            .history(
                kv.compact_revision().max(2),
                kv.revision(),
                10_000,
                1 << 30,
                false,
            )
            .unwrap()
            .unwrap();
        assert!(complete);
        let history = history
            .into_iter()
            .map(|(rev, r, _)| {
                let kv = r.kv.unwrap_or_default();
                (rev.main, kv.key, kv.value)
            })
            .collect();
        (all, history)
    }

    #[test]
    fn a_waiting_proposal_gets_its_results_from_the_apply() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(Arc::new(Db::open(dir.path(), 1 << 20).unwrap())).unwrap();
        let mut waiting = kv.proposals.register(9);
        let mut mine = entry(1, vec![put("a", "1"), put("b", "2")]);
        if let EntryPayload::Normal(r) = &mine.payload {
            let mut p = r.proposal().clone();
            p.id = 9;
            mine.payload = EntryPayload::Normal(Request::new(p));
        }
        let others = entry(2, vec![put("c", "3")]);
        let responses = kv.apply(vec![mine, others]).unwrap();
        let results = waiting.try_recv().expect("handed over at apply");
        assert_eq!(results.len(), 2);
        assert!(
            responses[0].0.results.is_empty(),
            "Raft's answer carries nothing"
        );
        assert_eq!(responses[1].0.results.len(), 1);
    }

    #[test]
    fn applied_writes_read_the_same_before_and_after_they_reach_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Kv::open(Arc::new(Db::open(dir.path(), 1 << 20).unwrap())).unwrap();
        let kv = open();
        kv.apply(vec![
            entry(1, (0..10).map(|i| put(&format!("k{i}"), "a")).collect()),
            entry(
                2,
                vec![
                    put("k1", "b"),
                    internal_request::Request::DeleteRange(DeleteRangeRequest {
                        key: b"k3".to_vec(),
                        ..Default::default()
                    }),
                ],
            ),
        ])
        .unwrap();
        let before = seen(&kv);
        assert_eq!(before.0.len(), 9);
        assert_eq!(before.1.len(), 12);
        kv.flush(false).unwrap();
        assert_eq!(seen(&kv), before, "the same once in the database");

        // A compaction removes records whether or not they reached the database.
        kv.apply(vec![
            entry(3, vec![put("k2", "c")]),
            entry(
                4,
                vec![internal_request::Request::Compaction(CompactionRequest {
                    revision: 12,
                    physical: false,
                })],
            ),
        ])
        .unwrap();
        let compacted = seen(&kv);
        kv.freeze().unwrap();
        assert_eq!(seen(&kv), compacted);
        // The writer thread may hold the state a moment longer: wait for the file to close.
        let db = kv.db.clone();
        drop(kv);
        while Arc::strong_count(&db) > 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(db);
        let kv = open();
        assert_eq!(kv.applied().log_id, Some(log_id(1, 1, 4)));
        assert_eq!(seen(&kv), compacted, "the same after a restart");
    }
}
