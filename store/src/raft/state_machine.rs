//! openraft's state machine over [`Kv`]: applies committed entries, reports the applied
//! position (which after a crash is the one that matches the data on disk, so openraft replays
//! the rest), and builds, receives and installs snapshots.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};

use super::snapshot;
use super::{
    Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig, io_error,
};
use crate::kv::Kv;

/// The state machine handed to openraft.
pub struct StateMachine {
    kv: Arc<Kv>,
    snap_dir: PathBuf,
    builds: Arc<AtomicU64>,
}

impl StateMachine {
    pub fn new(kv: Arc<Kv>, snap_dir: PathBuf) -> Self {
        StateMachine {
            kv,
            snap_dir,
            builds: Arc::new(AtomicU64::new(0)),
        }
    }
}

fn sm_error(e: impl std::fmt::Display) -> StorageError {
    io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn snap_error(e: impl std::fmt::Display) -> StorageError {
    io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

/// Builds snapshots from a consistent read of the database.
pub struct SnapshotBuilder {
    kv: Arc<Kv>,
    snap_dir: PathBuf,
    builds: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let kv = self.kv.clone();
        let dir = self.snap_dir.clone();
        let n = self.builds.fetch_add(1, Ordering::SeqCst);
        let (meta, path) = tokio::task::spawn_blocking(move || snapshot::build(&kv, &dir, n))
            .await
            .map_err(snap_error)?
            .map_err(snap_error)?;
        let file = tokio::fs::File::open(&path).await.map_err(snap_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.kv.applied();
        Ok((a.log_id, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // In memory (the database is written behind it, see `crate::kv`): no need to leave
        // the Raft thread.
        self.kv
            .apply(entries.into_iter().collect())
            .map_err(sm_error)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            kv: self.kv.clone(),
            snap_dir: self.snap_dir.clone(),
            builds: self.builds.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        tokio::fs::create_dir_all(&self.snap_dir)
            .await
            .map_err(snap_error)?;
        let path = self.snap_dir.join(snapshot::RECEIVING);
        let file = tokio::fs::File::create(&path).await.map_err(snap_error)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut file = *snapshot;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(snap_error)?;
        file.sync_all().await.map_err(snap_error)?;
        drop(file);
        let receiving = self.snap_dir.join(snapshot::RECEIVING);
        let path = self.snap_dir.join(format!("{}.snap", meta.snapshot_id));
        tokio::fs::rename(&receiving, &path)
            .await
            .map_err(snap_error)?;
        let kv = self.kv.clone();
        let dir = self.snap_dir.clone();
        let expected = meta.last_log_id;
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            kv.replace(|db| {
                let installed = snapshot::install(db, &path).map_err(|e| e.to_string())?;
                if installed.last_log_id != expected {
                    return Err(format!(
                        "snapshot {} covers {:?}, expected {:?}",
                        path.display(),
                        installed.last_log_id,
                        expected
                    ));
                }
                Ok(())
            })?;
            snapshot::remove_others(&dir, &path);
            Ok(())
        })
        .await
        .map_err(snap_error)?
        .map_err(snap_error)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.snap_dir.clone();
        let found = tokio::task::spawn_blocking(move || snapshot::latest(&dir))
            .await
            .map_err(snap_error)?
            .map_err(snap_error)?;
        match found {
            None => Ok(None),
            Some((meta, path)) => {
                let file = tokio::fs::File::open(&path).await.map_err(snap_error)?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(file),
                }))
            }
        }
    }
}
