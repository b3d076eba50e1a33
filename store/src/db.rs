//! The member's state-machine database, a redb file at `<data-dir>/member/db.redb`: MVCC
//! history, leases, members and the applied position. The Raft log is not here: it is the
//! write-ahead log in `<data-dir>/member/wal/` ([`crate::raft::wal`]).
//!
//! The log and this file each have their own writer, so a log append is made durable (one
//! fsync) while the state machine applies the entries before it. The state machine commits
//! without fsync and checkpoints (a durable commit) now and then and before every snapshot;
//! after a crash the applied position read back matches the data read back, and openraft
//! replays the rest of the log, which is never purged past a checkpoint.

use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::mvcc::{Backend, Revision, StorageError};
use crate::pb::storepb::Record;

/// Raft log entries by index (`LogEntry` protobuf), in `raft.redb`, where data dirs written
/// before the write-ahead log kept them (read once, to move them).
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft's own state in `raft.redb`: `vote`, `committed`, `purged` (JSON).
pub const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
/// MVCC history: `(main, sub)` revision → `Record` protobuf.
pub const KV: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("kv");
/// State-machine position and counters (see the `META_*` keys).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Granted leases: ID → TTL in seconds.
pub const LEASES: TableDefinition<i64, i64> = TableDefinition::new("lease");
/// Published member attributes: member ID → `MemberAttributes` protobuf.
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");

/// Last applied log ID (JSON).
pub const META_APPLIED: &str = "applied";
/// Last applied membership (JSON).
pub const META_MEMBERSHIP: &str = "membership";
/// Current store revision (i64 little-endian).
pub const META_REVISION: &str = "revision";
/// Last compaction revision (i64 little-endian).
pub const META_COMPACT: &str = "compact_revision";
/// Raised alarms: JSON list of (member ID, alarm type).
pub const META_ALARMS: &str = "alarms";
/// This member's ID and its cluster's (u64 little-endian), fixed at the first start.
pub const META_MEMBER_ID: &str = "member_id";
pub const META_CLUSTER_ID: &str = "cluster_id";

/// Opening the database failed; each variant names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot open database {}: {source} (is another miniorch-store using this data dir?)",
        path.display()
    )]
    Locked {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("cannot open database {}: {detail} (the file is corrupt or truncated)", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot initialise database {}: {detail}", path.display())]
    Init { path: PathBuf, detail: String },
}

/// The open database and where it lives (for error messages).
pub struct Db {
    pub db: Database,
    pub path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// The state-machine database inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("db.redb")
}

/// The Raft log database of data dirs written before the write-ahead log.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("raft.redb")
}

impl Db {
    /// Opens (or creates) the state-machine database of `data_dir`, verifying every page so a
    /// damaged file is refused rather than served.
    pub fn open(data_dir: &Path, cache_bytes: usize) -> Result<Db, OpenError> {
        Self::open_file(db_path(data_dir), cache_bytes, |txn| {
            txn.open_table(KV)?;
            txn.open_table(META)?;
            txn.open_table(LEASES)?;
            txn.open_table(MEMBERS)?;
            Ok(())
        })
    }

    /// Opens the Raft log database of an older data dir (see [`log_path`]).
    pub fn open_log(data_dir: &Path, cache_bytes: usize) -> Result<Db, OpenError> {
        Self::open_file(log_path(data_dir), cache_bytes, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(RAFT)?;
            Ok(())
        })
    }

    fn open_file(
        path: PathBuf,
        cache_bytes: usize,
        tables: impl Fn(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<Db, OpenError> {
        let dir = path.parent().unwrap_or(&path).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| OpenError::Dir { path: dir, source })?;
        let mut builder = Database::builder();
        builder
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(true);
        // A damaged file can make the storage engine panic instead of erroring; either way the
        // member must refuse to start with a message naming the file.
        let opened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.create(&path)));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(source @ redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(OpenError::Locked { path, source });
            }
            Ok(Err(e)) => {
                return Err(OpenError::Corrupt {
                    path,
                    detail: e.to_string(),
                });
            }
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "storage engine panicked".into());
                return Err(OpenError::Corrupt { path, detail });
            }
        };
        let init = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            tables(&txn)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(|e| OpenError::Init {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Ok(Db { db, path })
    }

    /// A storage error naming this database file.
    pub fn err(&self, what: &str, e: impl std::fmt::Display) -> StorageError {
        StorageError(format!("{what} in {}: {e}", self.path.display()))
    }

    /// Size of the file on disk in bytes.
    pub fn file_size(&self) -> i64 {
        std::fs::metadata(&self.path)
            .map(|m| m.len() as i64)
            .unwrap_or(0)
    }

    /// The member and cluster IDs recorded at the first start, if any.
    pub fn identity(&self) -> Result<Option<(u64, u64)>, StorageError> {
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
        let get = |k: &str| -> Result<Option<u64>, StorageError> {
            let v = meta.get(k).map_err(|e| self.err("read meta", e))?;
            Ok(v.and_then(|v| bytes_i64(v.value())).map(|i| i as u64))
        };
        Ok(get(META_MEMBER_ID)?.zip(get(META_CLUSTER_ID)?))
    }

    /// Records the member and cluster IDs (durably).
    pub fn set_identity(&self, member: u64, cluster: u64) -> Result<(), StorageError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.err("write meta", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
            meta.insert(META_MEMBER_ID, i64_bytes(member as i64).as_slice())
                .map_err(|e| self.err("write meta", e))?;
            meta.insert(META_CLUSTER_ID, i64_bytes(cluster as i64).as_slice())
                .map_err(|e| self.err("write meta", e))?;
        }
        txn.commit().map_err(|e| self.err("commit meta", e))
    }

    /// Begins a read of a consistent snapshot of the database.
    pub fn read(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.db.begin_read().map_err(|e| self.err("read", e))
    }
}

pub fn i64_bytes(v: i64) -> [u8; 8] {
    v.to_le_bytes()
}

pub fn bytes_i64(b: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(b.try_into().ok()?))
}

fn decode_record(path: &Path, rev: Revision, bytes: &[u8]) -> Result<Record, StorageError> {
    Record::decode(bytes).map_err(|e| {
        StorageError(format!(
            "corrupt history record at revision {rev} in {}: {e}",
            path.display()
        ))
    })
}

/// History records as of a read transaction.
pub struct ReadKv<'a> {
    pub table: redb::ReadOnlyTable<(i64, i64), &'static [u8]>,
    pub path: &'a Path,
}

impl<'a> ReadKv<'a> {
    pub fn open(db: &'a Db, txn: &redb::ReadTransaction) -> Result<Self, StorageError> {
        Ok(ReadKv {
            table: txn.open_table(KV).map_err(|e| db.err("open history", e))?,
            path: &db.path,
        })
    }

    /// Records with `from <= main <= to`, oldest first, and whether that is all of them. Stops
    /// after the revision during which `max_records` records or `max_bytes` bytes are reached,
    /// so a revision is never split.
    pub fn scan(
        &self,
        from: i64,
        to: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(Revision, Record)>, bool), StorageError> {
        let mut out: Vec<(Revision, Record)> = Vec::new();
        let mut bytes = 0;
        if from > to {
            return Ok((out, true));
        }
        let iter = self
            .table
            .range((from, i64::MIN)..=(to, i64::MAX))
            .map_err(|e| StorageError(format!("scan {}: {e}", self.path.display())))?;
        for item in iter {
            let (k, v) =
                item.map_err(|e| StorageError(format!("scan {}: {e}", self.path.display())))?;
            let (main, sub) = k.value();
            let full = out.len() >= max_records || bytes >= max_bytes;
            if full && out.last().is_some_and(|(r, _)| r.main != main) {
                return Ok((out, false));
            }
            let rev = Revision::new(main, sub);
            bytes += v.value().len();
            out.push((rev, decode_record(self.path, rev, v.value())?));
        }
        Ok((out, true))
    }
}

impl Backend for ReadKv<'_> {
    fn get(&self, rev: Revision) -> Result<Option<Record>, StorageError> {
        let got = self
            .table
            .get((rev.main, rev.sub))
            .map_err(|e| StorageError(format!("read {}: {e}", self.path.display())))?;
        got.map(|v| decode_record(self.path, rev, v.value()))
            .transpose()
    }
}
