//! The durable Raft log and vote, on the member's write-ahead log ([`super::wal`]), with group
//! commit.
//!
//! openraft calls [`RaftLogStorage::append`] once per client write. Each call only queues the
//! entries (they are readable at once from an in-memory cache) for one writer thread, which
//! takes everything queued, writes it with one `write` and one `fdatasync`, then reports every
//! queued append as flushed. Under load one fsync covers many writes. Vote, truncate and purge
//! go through the same queue, so all log I/O stays in call order as openraft requires.

// openraft's StorageError and RPCError are large by design; they are its API types.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader};
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{decode_entry, encode_entry};
use super::wal::{self, Wal, WalError, WalReader};
use super::{Entry, LogId, StorageError, TypeConfig, Vote, io_error};

/// Bytes of entries kept in memory after they are durable, so the state machine and
/// replication rarely read the log back from disk. Entries are batches of writes, so the bound
/// is on their encoded size, not their number.
const CACHE_BYTES: usize = 4 << 20;
/// Upper bound on queued log operations; `append` waits when the disk falls this far behind.
const QUEUE_DEPTH: usize = 4096;
/// Most operations one write takes from the queue.
const MAX_BATCH: usize = 4096;
/// A log write (and its fsync) slower than this is logged as a warning.
const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(100);

type Done = oneshot::Sender<Result<(), String>>;

/// One queued log operation.
enum Op {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        last_index: u64,
        /// [`Cache::truncations`] when it was queued.
        epoch: u64,
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
    /// Truncations so far. An append queued before the latest one wrote entries that are gone,
    /// so its completion must not mark their replacements as on disk.
    truncations: u64,
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
    reader: WalReader,
    /// The log directory, for messages.
    dir: PathBuf,
    cache: Mutex<Cache>,
    /// Raft's state as last handed to the writer (JSON): what `read_vote` and friends answer.
    state: Mutex<wal::State>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value behind these locks is replaced whole, never left half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        lock(&self.cache)
    }

    fn read_error(&self, e: impl std::fmt::Display) -> StorageError {
        io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
    }

    fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(1024) as usize);
        for i in start..end {
            let cached = self.cache().entries.get(&i).map(|(e, _)| e.clone());
            let entry = match cached {
                Some(e) => e,
                None => {
                    // Stop at the first hole: openraft checks what it got.
                    let Some(bytes) = self.reader.read(i).map_err(|e| self.read_error(e))? else {
                        break;
                    };
                    decode_entry(&bytes).map_err(|e| {
                        io_error(
                            ErrorSubject::LogIndex(i),
                            ErrorVerb::Read,
                            format!("corrupt log entry {i} in {}: {e}", self.dir.display()),
                        )
                    })?
                }
            };
            out.push(entry);
        }
        Ok(out)
    }

    /// The highest index present, in the cache or on disk.
    fn last_index(&self) -> Option<u64> {
        let cached = self.cache().entries.last_key_value().map(|(i, _)| *i);
        cached.or_else(|| self.reader.last_index())
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

/// The log directory inside a data directory.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

impl LogStore {
    /// Opens (recovering) the log of `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path) -> Result<LogStore, WalError> {
        let dir = wal_dir(data_dir);
        let wal = Wal::open(&dir, wal::SEGMENT_BYTES)?;
        let shared = Arc::new(Shared {
            reader: wal.reader(),
            dir: dir.clone(),
            cache: Mutex::new(Cache {
                entries: BTreeMap::new(),
                bytes: 0,
                flushed: 0,
                truncations: 0,
            }),
            state: Mutex::new(wal.state().clone()),
            committed: Mutex::new(None),
            appended: AtomicU64::new(0),
            flushed: watch::Sender::new(0),
        });
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(writer, wal, rx))
            .map_err(|source| WalError::Io { path: dir, source })?;
        Ok(LogStore { shared, queue })
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
        what: &str,
        pick: impl Fn(&wal::State) -> Option<Vec<u8>>,
    ) -> Result<Option<T>, StorageError> {
        let Some(json) = pick(&lock(&self.shared.state)) else {
            return Ok(None);
        };
        serde_json::from_slice(&json).map(Some).map_err(|e| {
            io_error(
                ErrorSubject::Store,
                ErrorVerb::Read,
                format!("corrupt {what} in {}: {e}", self.shared.dir.display()),
            )
        })
    }

    /// Waits until everything queued so far is on disk.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.submit(ErrorSubject::Logs, |done| Op::Sync { done })
            .await
    }
}

/// Data dirs written before the write-ahead log kept the Raft log in `member/raft.redb`. Its
/// vote, committed and purged IDs and entries move once into a new log, which is made durable
/// under a temporary name and renamed; only then is the old file removed.
pub fn migrate_redb_log(data_dir: &Path) -> Result<bool, String> {
    use redb::{ReadableDatabase, ReadableTable};
    let old = crate::db::log_path(data_dir);
    let dir = wal_dir(data_dir);
    if !old.exists() || dir.exists() {
        return Ok(false);
    }
    let fail =
        |e: &dyn std::fmt::Display| format!("moving the Raft log out of {}: {e}", old.display());
    let tmp = dir.with_extension("migrating");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| fail(&e))?;
    }
    let db = crate::db::Db::open_log(data_dir, 1 << 20).map_err(|e| fail(&e))?;
    let txn = db.db.begin_read().map_err(|e| fail(&e))?;
    let mut wal = Wal::open(&tmp, wal::SEGMENT_BYTES).map_err(|e| fail(&e))?;
    let raft = txn.open_table(crate::db::RAFT).map_err(|e| fail(&e))?;
    let get = |k: &str| -> Result<Option<Vec<u8>>, String> {
        Ok(raft
            .get(k)
            .map_err(|e| fail(&e))?
            .map(|v| v.value().to_vec()))
    };
    if let Some(v) = get("vote")? {
        wal.set_vote(v);
    }
    if let Some(c) = get("committed")? {
        wal.set_committed(c);
    }
    if let Some(p) = get("purged")? {
        let id: LogId = serde_json::from_slice(&p).map_err(|e| fail(&e))?;
        wal.set_purged(id.index, p);
    }
    let log = txn.open_table(crate::db::LOG).map_err(|e| fail(&e))?;
    for (n, item) in log.iter().map_err(|e| fail(&e))?.enumerate() {
        let (k, v) = item.map_err(|e| fail(&e))?;
        wal.append(k.value(), v.value());
        if n % 1024 == 1023 {
            wal.sync().map_err(|e| fail(&e))?;
        }
    }
    wal.sync().map_err(|e| fail(&e))?;
    drop(wal);
    std::fs::rename(&tmp, &dir).map_err(|e| fail(&e))?;
    if let Some(member) = dir.parent() {
        std::fs::File::open(member)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(&e))?;
    }
    drop((log, raft, txn, db));
    std::fs::remove_file(&old).map_err(|e| fail(&e))?;
    Ok(true)
}

fn write_loop(shared: Arc<Shared>, mut wal: Wal, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let committed = lock(&shared.committed).take();
        let started = std::time::Instant::now();
        let result = write_batch(&mut wal, &batch, committed).map_err(|e| e.to_string());
        let mut written = Vec::new();
        for op in &batch {
            if let Op::Append {
                last_index, epoch, ..
            } = op
            {
                written.push((*epoch, *last_index));
            }
        }
        let appends = written.len() as u64;
        let took = started.elapsed();
        if took >= SLOW_WRITE {
            // etcd's "slow fdatasync": every write waits for this one, elections included.
            tracing::warn!(
                ops = batch.len(),
                ?took,
                "slow Raft log write (the disk is busy)"
            );
        } else {
            tracing::trace!(ops = batch.len(), ?took, "log batch written");
        }
        if result.is_ok() {
            let mut cache = shared.cache();
            let now = cache.truncations;
            if let Some((_, last)) = written.iter().rev().find(|(epoch, _)| *epoch == now) {
                cache.flushed = cache.flushed.max(*last);
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

fn write_batch(wal: &mut Wal, batch: &[Op], committed: Option<Vec<u8>>) -> Result<(), WalError> {
    for op in batch {
        match op {
            Op::Append { entries, .. } => {
                for (index, bytes) in entries {
                    wal.append(*index, bytes);
                }
            }
            Op::Vote { json, .. } => wal.set_vote(json.clone()),
            Op::Truncate { from, .. } => wal.truncate(*from)?,
            Op::Purge { upto, json, .. } => wal.set_purged(*upto, json.clone()),
            Op::Sync { .. } => {}
        }
    }
    if let Some(json) = committed {
        wal.set_committed(json);
    }
    wal.sync()
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
        let end = end.min(self.shared.last_index().map_or(0, |i| i + 1));
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
        let last_purged: Option<LogId> = self.read_json("purged log ID", |s| s.purged.clone())?;
        let last = match self.shared.last_index() {
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
        lock(&self.shared.state).vote = Some(json.clone());
        self.submit(ErrorSubject::Vote, |done| Op::Vote { json, done })
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_json("vote", |s| s.vote.clone())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            let json = serde_json::to_vec(&c)
                .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
            lock(&self.shared.state).committed = Some(json.clone());
            *lock(&self.shared.committed) = Some(json);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_json("committed log ID", |s| s.committed.clone())
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
        let epoch = {
            let mut cache = self.shared.cache();
            for entry in entries {
                let index = entry.log_id.index;
                let bytes = encode_entry(&entry);
                cache.insert(index, entry, bytes.len());
                encoded.push((index, bytes));
                last_index = index;
            }
            cache.truncations
        };
        self.queue
            .send(Op::Append {
                entries: encoded,
                last_index,
                epoch,
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
            cache.truncations += 1;
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
        {
            let mut state = lock(&self.shared.state);
            state.purged = Some(json.clone());
            state.purged_index = Some(upto);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::codec::log_id;

    #[test]
    fn a_redb_log_moves_into_the_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let purged = serde_json::to_vec(&log_id(1, 1, 4)).unwrap();
        {
            let db = crate::db::Db::open_log(data, 1 << 20).unwrap();
            let txn = db.db.begin_write().unwrap();
            {
                let mut raft = txn.open_table(crate::db::RAFT).unwrap();
                raft.insert("vote", b"vote-json".as_slice()).unwrap();
                raft.insert("purged", purged.as_slice()).unwrap();
                let mut log = txn.open_table(crate::db::LOG).unwrap();
                for i in 5..=9u64 {
                    log.insert(i, format!("entry-{i}").as_bytes()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        assert!(migrate_redb_log(data).unwrap());
        assert!(!crate::db::log_path(data).exists(), "the old file is gone");
        assert!(!migrate_redb_log(data).unwrap(), "nothing left to move");
        let wal = Wal::open(&wal_dir(data), wal::SEGMENT_BYTES).unwrap();
        assert_eq!(wal.state().vote.as_deref(), Some(&b"vote-json"[..]));
        assert_eq!(wal.state().purged_index, Some(4));
        let r = wal.reader();
        assert_eq!((r.first_index(), r.last_index()), (Some(5), Some(9)));
        assert_eq!(r.read(7).unwrap(), Some(b"entry-7".to_vec()));
    }
}
