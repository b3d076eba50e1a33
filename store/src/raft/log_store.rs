//! The durable Raft log and vote, on the member's redb file, with group commit.
//!
//! openraft calls [`RaftLogStorage::append`] once per client write. Each call only queues the
//! entries (they are readable at once from an in-memory cache) for one writer thread, which
//! takes everything queued, writes it in one transaction and fsyncs once, then reports every
//! queued append as flushed. Under load one fsync covers many writes. Vote, truncate and purge
//! go through the same queue, so all log I/O stays in call order as openraft requires.

// openraft's StorageError and RPCError are large by design; they are its API types.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader};
use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{decode_entry, encode_entry};
use super::{Entry, LogId, StorageError, TypeConfig, Vote, io_error};
use crate::db::{Db, LOG, RAFT};

/// Bytes of entries kept in memory after they are durable, so the state machine and
/// replication rarely read the log back from disk. Entries are batches of writes, so the bound
/// is on their encoded size, not their number.
const CACHE_BYTES: usize = 8 << 20;
/// Upper bound on queued log operations; `append` waits when the disk falls this far behind.
const QUEUE_DEPTH: usize = 4096;
/// Most operations one transaction takes from the queue.
const MAX_BATCH: usize = 4096;

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";

type Done = oneshot::Sender<Result<(), String>>;

/// One queued log operation.
enum Op {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        last_index: u64,
        callback: LogFlushed<TypeConfig>,
    },
    Vote {
        json: Vec<u8>,
        done: Done,
    },
    Truncate {
        from: u64,
        done: Done,
    },
    Purge {
        upto: u64,
        json: Vec<u8>,
        done: Done,
    },
    /// Completes once everything queued before it is durable.
    Sync {
        done: Done,
    },
}

struct Cache {
    /// Entries with their encoded size.
    entries: BTreeMap<u64, (Entry, usize)>,
    /// Sum of the sizes in `entries`.
    bytes: usize,
    /// Highest index known to be on disk; entries at or below it may be evicted.
    flushed: u64,
}

impl Cache {
    fn insert(&mut self, index: u64, entry: Entry, size: usize) {
        if let Some((_, old)) = self.entries.insert(index, (entry, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    fn remove(&mut self, index: u64) {
        if let Some((_, size)) = self.entries.remove(&index) {
            self.bytes -= size;
        }
    }

    /// Keeps only the entries `keep` accepts.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let gone: Vec<u64> = self.entries.keys().copied().filter(|i| !keep(*i)).collect();
        for i in gone {
            self.remove(i);
        }
    }
}

struct Shared {
    db: Arc<Db>,
    cache: Mutex<Cache>,
    /// The newest committed log ID not yet written. It rides along with the next batch: a
    /// stale committed ID on disk only means more replay after a crash.
    committed: Mutex<Option<Vec<u8>>>,
    /// Append calls received, and (below) made durable: see [`LogProgress`].
    appended: AtomicU64,
    flushed: watch::Sender<u64>,
}

/// How far log appends have got. The proposer hands Raft its next batch when the previous one
/// is durable, so writes arriving during an fsync ride together in the next one.
#[derive(Clone)]
pub struct LogProgress {
    shared: Arc<Shared>,
    flushed: watch::Receiver<u64>,
}

impl LogProgress {
    /// Append calls received so far.
    pub fn appended(&self) -> u64 {
        self.shared.appended.load(Ordering::SeqCst)
    }

    /// Waits until `n` append calls are durable (or the log writer stopped).
    pub async fn wait_flushed(&mut self, n: u64) {
        let _ = self.flushed.wait_for(|f| *f >= n).await;
    }
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters: it is a cache over the database.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(1024) as usize);
        let mut missing = Vec::new();
        {
            let cache = self.cache();
            for i in start..end {
                match cache.entries.get(&i) {
                    Some((e, _)) => out.push(Some(e.clone())),
                    None => {
                        out.push(None);
                        missing.push(i);
                    }
                }
            }
        }
        if !missing.is_empty() {
            let read = |e: &dyn std::fmt::Display| {
                io_error(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    format!("{}: {e}", self.db.path.display()),
                )
            };
            let txn = self.db.db.begin_read().map_err(|e| read(&e))?;
            let table = txn.open_table(LOG).map_err(|e| read(&e))?;
            for i in missing {
                let slot = &mut out[(i - start) as usize];
                if let Some(v) = table.get(i).map_err(|e| read(&e))? {
                    let entry = decode_entry(v.value()).map_err(|e| {
                        io_error(
                            ErrorSubject::LogIndex(i),
                            ErrorVerb::Read,
                            format!("corrupt log entry {i} in {}: {e}", self.db.path.display()),
                        )
                    })?;
                    *slot = Some(entry);
                }
            }
        }
        // Stop at the first hole: openraft checks what it got.
        Ok(out.into_iter().map_while(|e| e).collect())
    }
}

/// The log storage handed to openraft.
pub struct LogStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Op>,
}

/// A reader for replication and the state machine.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Starts the writer thread over `db`.
    pub fn open(db: Arc<Db>) -> std::io::Result<LogStore> {
        let shared = Arc::new(Shared {
            db,
            cache: Mutex::new(Cache {
                entries: BTreeMap::new(),
                bytes: 0,
                flushed: 0,
            }),
            committed: Mutex::new(None),
            appended: AtomicU64::new(0),
            flushed: watch::Sender::new(0),
        });
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(writer, rx))?;
        Ok(LogStore { shared, queue })
    }

    fn path(&self) -> String {
        self.shared.db.path.display().to_string()
    }

    /// A handle that follows how far appends have got.
    pub fn progress(&self) -> LogProgress {
        LogProgress {
            shared: self.shared.clone(),
            flushed: self.shared.flushed.subscribe(),
        }
    }

    async fn submit(
        &self,
        subject: ErrorSubject<u64>,
        op: impl FnOnce(Done) -> Op,
    ) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        let write = |e: String| io_error(subject.clone(), ErrorVerb::Write, e);
        self.queue
            .send(op(done))
            .await
            .map_err(|_| write("log writer stopped".into()))?;
        rx.await
            .map_err(|_| write("log writer stopped".into()))?
            .map_err(write)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let read = |e: &dyn std::fmt::Display| {
            io_error(
                ErrorSubject::Store,
                ErrorVerb::Read,
                format!("{}: {e}", self.path()),
            )
        };
        let txn = self.shared.db.db.begin_read().map_err(|e| read(&e))?;
        let table = txn.open_table(RAFT).map_err(|e| read(&e))?;
        match table.get(key).map_err(|e| read(&e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| read(&format!("corrupt {key}: {e}"))),
        }
    }

    /// Waits until everything queued so far is on disk.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.submit(ErrorSubject::Logs, |done| Op::Sync { done })
            .await
    }
}

fn write_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let committed = shared
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let started = std::time::Instant::now();
        let result = write_batch(&shared.db, &batch, committed.as_deref())
            .map_err(|e| format!("{}: {e}", shared.db.path.display()));
        let mut flushed_to = None;
        let mut appends = 0;
        for op in &batch {
            if let Op::Append { last_index, .. } = op {
                flushed_to = Some(*last_index);
                appends += 1;
            }
        }
        tracing::trace!(ops = batch.len(), took = ?started.elapsed(), "log batch written");
        if result.is_ok() {
            let mut cache = shared.cache();
            if let Some(last) = flushed_to {
                cache.flushed = cache.flushed.max(last);
            }
            while cache.bytes > CACHE_BYTES {
                let Some((&first, _)) = cache.entries.first_key_value() else {
                    break;
                };
                if first > cache.flushed {
                    break;
                }
                cache.remove(first);
            }
        }
        if result.is_ok() && appends > 0 {
            shared.flushed.send_modify(|f| *f += appends);
        }
        for op in batch {
            let r = result.clone();
            match op {
                Op::Append { callback, .. } => {
                    callback.log_io_completed(r.map_err(std::io::Error::other));
                }
                Op::Vote { done, .. }
                | Op::Truncate { done, .. }
                | Op::Purge { done, .. }
                | Op::Sync { done } => {
                    let _ = done.send(r);
                }
            }
        }
    }
}

fn write_batch(db: &Db, batch: &[Op], committed: Option<&[u8]>) -> Result<(), redb::Error> {
    let txn = db.db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut raft = txn.open_table(RAFT)?;
        for op in batch {
            match op {
                Op::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(*index, bytes.as_slice())?;
                    }
                }
                Op::Vote { json, .. } => {
                    raft.insert(KEY_VOTE, json.as_slice())?;
                }
                Op::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)?;
                }
                Op::Purge { upto, json, .. } => {
                    log.retain_in(..=*upto, |_, _| false)?;
                    raft.insert(KEY_PURGED, json.as_slice())?;
                }
                Op::Sync { .. } => {}
            }
        }
        if let Some(json) = committed {
            raft.insert(KEY_COMMITTED, json)?;
        }
    }
    txn.commit()?;
    Ok(())
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        let end = end.min(last_index(&self.shared)?.map_or(0, |i| i + 1));
        if start >= end {
            return Ok(Vec::new());
        }
        let cached = {
            let cache = self.shared.cache();
            (start..end).all(|i| cache.entries.contains_key(&i))
        };
        if cached {
            // Recent entries, the usual case for apply and replication: no disk read.
            return self.shared.read_entries(start, end);
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.read_entries(start, end))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?
    }
}

/// The highest index present, in the cache or on disk.
fn last_index(shared: &Shared) -> Result<Option<u64>, StorageError> {
    if let Some((&i, _)) = shared.cache().entries.last_key_value() {
        return Ok(Some(i));
    }
    let read = |e: &dyn std::fmt::Display| {
        io_error(
            ErrorSubject::Logs,
            ErrorVerb::Read,
            format!("{}: {e}", shared.db.path.display()),
        )
    };
    let txn = shared.db.db.begin_read().map_err(|e| read(&e))?;
    let table = txn.open_table(LOG).map_err(|e| read(&e))?;
    let last = table.last().map_err(|e| read(&e))?;
    Ok(last.map(|(k, _)| k.value()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        LogReader {
            shared: self.shared.clone(),
        }
        .try_get_log_entries(range)
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.sync().await?;
        let last_purged: Option<LogId> = self.read_json(KEY_PURGED)?;
        let last = match last_index(&self.shared)? {
            Some(i) => self.shared.read_entries(i, i + 1)?.pop().map(|e| e.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let json = serde_json::to_vec(vote)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.submit(ErrorSubject::Vote, |done| Op::Vote { json, done })
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_json(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            let json = serde_json::to_vec(&c)
                .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
            *self
                .shared
                .committed
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(json);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_json(KEY_COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.shared.appended.fetch_add(1, Ordering::SeqCst);
        let mut encoded = Vec::new();
        let mut last_index = 0;
        {
            let mut cache = self.shared.cache();
            for entry in entries {
                let index = entry.log_id.index;
                let bytes = encode_entry(&entry);
                cache.insert(index, entry, bytes.len());
                encoded.push((index, bytes));
                last_index = index;
            }
        }
        self.queue
            .send(Op::Append {
                entries: encoded,
                last_index,
                callback,
            })
            .await
            .map_err(|_| io_error(ErrorSubject::Logs, ErrorVerb::Write, "log writer stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        {
            let mut cache = self.shared.cache();
            cache.retain(|i| i < from);
            cache.flushed = cache.flushed.min(from.saturating_sub(1));
        }
        self.submit(ErrorSubject::Log(log_id), |done| Op::Truncate {
            from,
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        let json = serde_json::to_vec(&log_id)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.submit(ErrorSubject::Log(log_id), |done| Op::Purge {
            upto,
            json,
            done,
        })
        .await?;
        self.shared.cache().retain(|i| i > upto);
        Ok(())
    }
}
