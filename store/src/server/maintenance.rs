//! The etcd `Maintenance` service: status, alarms (a full database raises NOSPACE instead of
//! crashing), hashes for consistency checks, and snapshots streamed to a client.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use redb::ReadableTable;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Node;
use crate::db;
use crate::error::EtcdError;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    alarm_request::AlarmAction,
};
use crate::pb::storepb::{InternalRequest, apply_result, internal_request};
use crate::raft::snapshot;

/// The etcd API version this server reports.
pub const VERSION: &str = "3.5.0";
/// Bytes per snapshot message.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// With NOSPACE raised anywhere in the cluster, etcd refuses writes that can grow the database
/// (deletes, revokes and compactions still go through, to make room).
pub fn blocking_write(alarms: &BTreeSet<(u64, i32)>, req: &InternalRequest) -> Option<EtcdError> {
    let nospace = alarms.iter().any(|&(_, a)| a == AlarmType::Nospace as i32);
    if !nospace {
        return None;
    }
    match &req.request {
        Some(internal_request::Request::Put(_))
        | Some(internal_request::Request::Txn(_))
        | Some(internal_request::Request::LeaseGrant(_)) => Some(EtcdError::NoSpace),
        _ => None,
    }
}

/// Free bytes kept on the data directory's file system: below this the member raises NOSPACE
/// rather than let a write fail half-way on a full disk.
pub const DISK_RESERVE_BYTES: u64 = 64 << 20;

/// Free bytes on the file system holding `path`.
pub fn disk_free(path: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether this member's database needs the NOSPACE alarm: over the quota, or the disk
/// nearly full.
pub fn out_of_space(used: Option<i64>, quota: i64, free: Option<u64>) -> bool {
    used.is_some_and(|u| u > quota) || free.is_some_and(|f| f < DISK_RESERVE_BYTES)
}

/// Bytes of the database in use (pages allocated), as opposed to the file size.
pub fn db_in_use(d: &db::Db) -> Option<i64> {
    let txn = d.db.begin_write().ok()?;
    let stats = txn.stats().ok()?;
    let bytes = stats.allocated_pages() as i64 * stats.page_size() as i64;
    let _ = txn.abort();
    Some(bytes)
}

/// Raises NOSPACE (through Raft, so every member refuses growing writes) when this member's
/// database outgrows the quota or its disk is nearly full. As in etcd, clearing it is left
/// to the operator (`etcdctl alarm disarm`) once space is made.
pub async fn watch_quota(node: Arc<Node>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let d = node.kv.db.clone();
        let (used, free) = tokio::task::spawn_blocking(move || {
            let dir = d
                .path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            (db_in_use(&d), disk_free(&dir))
        })
        .await
        .unwrap_or((None, None));
        let raised = node
            .kv
            .alarms()
            .contains(&(node.member_id, AlarmType::Nospace as i32));
        if raised || !out_of_space(used, node.limits.quota_backend_bytes, free) {
            continue;
        }
        tracing::warn!(
            used,
            free,
            quota = node.limits.quota_backend_bytes,
            "database space exceeded; raising the NOSPACE alarm (writes are refused)"
        );
        let req = InternalRequest {
            request: Some(internal_request::Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: node.member_id,
                alarm: AlarmType::Nospace as i32,
            })),
        };
        if let Err(e) = node.propose(req).await {
            tracing::warn!(error = %e, "cannot raise the NOSPACE alarm");
        }
    }
}

/// FNV-1a over history records with revision `<= upto` (and leases when `with_leases`), a
/// hash that is equal on members with equal state.
fn hash_state(kv: &crate::kv::Kv, upto: i64, with_leases: bool) -> Result<u32, EtcdError> {
    let internal = |e: &dyn std::fmt::Display| EtcdError::Internal(e.to_string());
    // Everything applied, in the database: applied writes wait in memory for a while.
    let frozen = kv.freeze().map_err(|e| internal(&e))?;
    let txn = &frozen.txn;
    let table = txn.open_table(db::KV).map_err(|e| internal(&e))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for item in table.range(..=(upto, i64::MAX)).map_err(|e| internal(&e))? {
        let (k, v) = item.map_err(|e| internal(&e))?;
        let (main, sub) = k.value();
        feed(&main.to_be_bytes());
        feed(&sub.to_be_bytes());
        feed(v.value());
    }
    if with_leases {
        let leases = txn.open_table(db::LEASES).map_err(|e| internal(&e))?;
        for item in leases.iter().map_err(|e| internal(&e))? {
            let (k, v) = item.map_err(|e| internal(&e))?;
            feed(&k.value().to_be_bytes());
            feed(&v.value().to_be_bytes());
        }
    }
    Ok((h ^ (h >> 32)) as u32)
}

pub struct MaintenanceService {
    pub node: Arc<Node>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                let alarms = self
                    .node
                    .kv
                    .alarms()
                    .into_iter()
                    .filter(|&(m, a)| {
                        (req.alarm == AlarmType::None as i32 || a == req.alarm)
                            && (req.member_id == 0 || m == req.member_id)
                    })
                    .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                    .collect();
                Ok(Response::new(AlarmResponse {
                    header: Some(self.node.header(self.node.kv.revision())),
                    alarms,
                }))
            }
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                if AlarmType::try_from(req.alarm).is_err() {
                    let msg = format!("unknown alarm type {}", req.alarm);
                    return Err(EtcdError::InvalidArgument(msg).into());
                }
                let r = self
                    .node
                    .propose(InternalRequest {
                        request: Some(internal_request::Request::Alarm(req)),
                    })
                    .await?;
                match r {
                    apply_result::Result::Alarm(mut a) => {
                        self.node.fill(&mut a.header);
                        Ok(Response::new(a))
                    }
                    _ => {
                        Err(EtcdError::Internal("unexpected apply result for alarm".into()).into())
                    }
                }
            }
            Err(_) => Err(EtcdError::InvalidArgument(format!(
                "unknown alarm action {}",
                req.action
            ))
            .into()),
        }
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let (leader, last_index, applied, term, is_learner) = {
            let m = node.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let is_learner = membership.get_node(&node.member_id).is_some()
                && !membership.voter_ids().any(|v| v == node.member_id);
            (
                m.current_leader.unwrap_or(0),
                m.last_log_index.unwrap_or(0),
                m.last_applied.map_or(0, |l| l.index),
                m.current_term,
                is_learner,
            )
        };
        let d = node.kv.db.clone();
        let in_use = tokio::task::spawn_blocking(move || db_in_use(&d))
            .await
            .ok()
            .flatten();
        let db_size = node.kv.db.file_size();
        let mut errors = Vec::new();
        if let Some(f) = node.kv.failure() {
            errors.push(f);
        }
        for (member, alarm) in node.kv.alarms() {
            let name = AlarmType::try_from(alarm).map_or("UNKNOWN", |t| t.as_str_name());
            errors.push(format!("memberID:{member} alarm:{name}"));
        }
        Ok(Response::new(StatusResponse {
            header: Some(node.header(node.kv.revision())),
            version: VERSION.to_string(),
            db_size,
            leader,
            raft_index: last_index,
            raft_term: term,
            raft_applied_index: applied,
            errors,
            db_size_in_use: in_use.unwrap_or(db_size),
            is_learner,
            storage_version: String::new(),
            db_size_quota: node.limits.quota_backend_bytes,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented(
            "defragment is not supported: miniorch-store's database reuses freed pages in place",
        ))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let hash = self
            .node
            .blocking(|kv| hash_state(kv, i64::MAX, true))
            .await?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(self.node.kv.revision())),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let req = request.into_inner();
        let current = self.node.kv.revision();
        let compact = self.node.kv.compact_revision();
        let rev = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if rev > current {
            return Err(EtcdError::FutureRev.into());
        }
        if rev < compact {
            return Err(EtcdError::Compacted.into());
        }
        let hash = self
            .node
            .blocking(move |kv| hash_state(kv, rev, false))
            .await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(current)),
            hash,
            compact_revision: compact,
            hash_revision: rev,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let node = self.node.clone();
        let dir = node
            .kv
            .db
            .path
            .parent()
            .map(|p| {
                p.join("client-snapshots")
                    .join(format!("{:016x}", rand::random::<u64>()))
            })
            .ok_or_else(|| EtcdError::Internal("database has no directory".into()))?;
        let build_dir = dir.clone();
        let kv = node.kv.clone();
        let (_, path) = tokio::task::spawn_blocking(move || snapshot::build(&kv, &build_dir, 0))
            .await
            .map_err(|e| EtcdError::Internal(e.to_string()))?
            .map_err(|e| EtcdError::Internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let result = stream_file(&node, &path, &tx).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
            let _ = tokio::fs::remove_dir_all(&dir).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let req = request.into_inner();
        let me_leading = matches!(self.node.leader(), super::Leader::Me);
        if !me_leading {
            return Err(EtcdError::NotLeader.into());
        }
        if req.target_id != self.node.member_id {
            return Err(Status::failed_precondition(
                "etcdserver: leader transfer to another member is not supported yet",
            ));
        }
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.node.header(self.node.kv.revision())),
        }))
    }
}

/// Streams a snapshot file as etcd does: the data padded to a multiple of 512 bytes, then
/// its SHA-256, which `etcdctl snapshot save` looks for.
async fn stream_file(
    node: &Node,
    path: &std::path::Path,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), Status> {
    use sha2::Digest;
    let io = |e: std::io::Error| Status::internal(format!("snapshot {}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let len = file.metadata().await.map_err(io)?.len();
    let padded = len.div_ceil(512) * 512;
    let total = padded + 32;
    let mut hasher = sha2::Sha256::new();
    let mut sent = 0u64;
    let mut first = true;
    while sent < total {
        let mut buf = Vec::with_capacity(SNAPSHOT_CHUNK);
        if sent < len {
            let n = SNAPSHOT_CHUNK.min((len - sent) as usize);
            buf.resize(n, 0);
            file.read_exact(&mut buf).await.map_err(io)?;
        } else if sent < padded {
            buf.resize(SNAPSHOT_CHUNK.min((padded - sent) as usize), 0);
        }
        if sent + buf.len() as u64 == padded || (buf.is_empty() && sent == padded) {
            hasher.update(&buf);
            buf.extend_from_slice(&std::mem::take(&mut hasher).finalize());
        } else {
            hasher.update(&buf);
        }
        sent += buf.len() as u64;
        let resp = SnapshotResponse {
            header: first.then(|| node.header(node.kv.revision())),
            remaining_bytes: total - sent,
            blob: buf,
            version: VERSION.to_string(),
        };
        first = false;
        if tx.send(Ok(resp)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest};

    #[test]
    fn nospace_blocks_growing_writes_only() {
        let none = BTreeSet::new();
        let nospace = BTreeSet::from([(7, AlarmType::Nospace as i32)]);
        let corrupt = BTreeSet::from([(7, AlarmType::Corrupt as i32)]);
        let put = InternalRequest {
            request: Some(internal_request::Request::Put(PutRequest::default())),
        };
        let del = InternalRequest {
            request: Some(internal_request::Request::DeleteRange(
                DeleteRangeRequest::default(),
            )),
        };
        let cases = [
            (&none, &put, None),
            (&nospace, &put, Some(EtcdError::NoSpace)),
            (&nospace, &del, None),
            (&corrupt, &put, None),
        ];
        for (alarms, req, want) in cases {
            assert_eq!(blocking_write(alarms, req), want, "{alarms:?} {req:?}");
        }
    }

    #[test]
    fn space_decisions() {
        let quota = 1000;
        let cases = [
            (Some(10), Some(u64::MAX), false),
            (Some(1001), Some(u64::MAX), true),
            (Some(10), Some(DISK_RESERVE_BYTES - 1), true),
            (None, None, false),
        ];
        for (used, free, want) in cases {
            assert_eq!(out_of_space(used, quota, free), want, "{used:?} {free:?}");
        }
    }
}
