//! Snapshot files: the whole state machine (MVCC history, leases, members, counters) as a
//! stream of length-delimited protobuf messages after a magic header, ending with an item
//! count so a truncated file is refused. They are written from a consistent read of the
//! database while applies continue, and sent to members that fell behind the purged log.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use redb::ReadableTable;

use super::SnapshotMeta;
use crate::db::{self, Db};
use crate::kv::Kv;
use crate::mvcc::StorageError;
use crate::pb::etcdserverpb::AlarmMember;
use crate::pb::storepb::{
    KvItem, LeaseRecord, MemberAttributes, Record, SnapshotHeader, SnapshotItem, snapshot_item,
};

const MAGIC: &[u8; 8] = b"MOSNAP01";
/// Largest message accepted when reading a snapshot (a record is at most ~1.5 MiB).
const MAX_MESSAGE: u64 = 64 << 20;
/// File name of a snapshot being received from the leader.
pub const RECEIVING: &str = "receiving.tmp";

/// Writes a snapshot of the current state into `dir`, returning its metadata and path. Older
/// snapshots are removed once the new one is durable. Applies go on while the file is written:
/// it is read from a frozen, durable view.
pub fn build(kv: &Kv, dir: &Path, id_suffix: u64) -> Result<(SnapshotMeta, PathBuf), StorageError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        StorageError(format!("snapshot {what} in {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| err("create dir", &e))?;
    let frozen = kv.freeze()?;
    let (txn, applied) = (&frozen.txn, &frozen.applied);
    {
        let snapshot_id = match applied.log_id {
            Some(l) => format!(
                "{}-{}-{}-{id_suffix}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("0-0-0-{id_suffix}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.log_id,
            last_membership: applied.membership.clone(),
            snapshot_id: snapshot_id.clone(),
        };
        let tmp = dir.join(format!("{snapshot_id}.tmp"));
        let path = dir.join(format!("{snapshot_id}.snap"));
        let file = File::create(&tmp).map_err(|e| err("create", &e))?;
        let mut w = BufWriter::new(file);
        let write = |w: &mut BufWriter<File>, bytes: &[u8]| {
            w.write_all(bytes).map_err(|e| err("write", &e))
        };
        write(&mut w, MAGIC)?;
        let header = SnapshotHeader {
            meta_json: serde_json::to_vec(&meta).map_err(|e| err("encode", &e))?,
            revision: frozen.revision,
            compact_revision: frozen.compact_revision,
            alarms: frozen
                .alarms
                .iter()
                .copied()
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect(),
        };
        write(&mut w, &header.encode_length_delimited_to_vec())?;
        let mut count = 0u64;
        let mut item = |w: &mut BufWriter<File>, item: snapshot_item::Item| {
            count += 1;
            let msg = SnapshotItem { item: Some(item) };
            write(w, &msg.encode_length_delimited_to_vec())
        };
        let t = txn.open_table(db::KV).map_err(|e| err("read", &e))?;
        for r in t.iter().map_err(|e| err("read", &e))? {
            let (k, v) = r.map_err(|e| err("read", &e))?;
            let (main, sub) = k.value();
            let record = Record::decode(v.value()).map_err(|e| err("decode record", &e))?;
            item(
                &mut w,
                snapshot_item::Item::Kv(KvItem {
                    main,
                    sub,
                    record: Some(record),
                }),
            )?;
        }
        let t = txn.open_table(db::LEASES).map_err(|e| err("read", &e))?;
        for r in t.iter().map_err(|e| err("read", &e))? {
            let (k, v) = r.map_err(|e| err("read", &e))?;
            item(
                &mut w,
                snapshot_item::Item::Lease(LeaseRecord {
                    id: k.value(),
                    ttl: v.value(),
                }),
            )?;
        }
        let t = txn.open_table(db::MEMBERS).map_err(|e| err("read", &e))?;
        for r in t.iter().map_err(|e| err("read", &e))? {
            let (_, v) = r.map_err(|e| err("read", &e))?;
            let m = MemberAttributes::decode(v.value()).map_err(|e| err("decode member", &e))?;
            item(&mut w, snapshot_item::Item::Member(m))?;
        }
        let end = SnapshotItem {
            item: Some(snapshot_item::Item::EndCount(count)),
        };
        write(&mut w, &end.encode_length_delimited_to_vec())?;
        let file = w.into_inner().map_err(|e| err("flush", &e))?;
        file.sync_all().map_err(|e| err("sync", &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err("rename", &e))?;
        sync_dir(dir);
        remove_others(dir, &path);
        Ok((meta, path))
    }
}

/// Best effort: makes a rename durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes every snapshot file in `dir` but `keep`.
pub fn remove_others(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_snapshot = p.extension().is_some_and(|x| x == "snap" || x == "tmp");
        if is_snapshot && p != keep && p.file_name().is_some_and(|n| n != RECEIVING) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The newest complete snapshot in `dir`, with its metadata.
pub fn latest(dir: &Path) -> Result<Option<(SnapshotMeta, PathBuf)>, StorageError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut best: Option<(SnapshotMeta, PathBuf)> = None;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "snap") {
            continue;
        }
        let (meta, _) = read_header(&p)?;
        if best
            .as_ref()
            .is_none_or(|(b, _)| b.last_log_id < meta.last_log_id)
        {
            best = Some((meta, p));
        }
    }
    Ok(best)
}

fn read_message<M: Message + Default>(r: &mut impl Read, path: &Path) -> Result<M, StorageError> {
    let err = |e: &dyn std::fmt::Display| StorageError(format!("snapshot {}: {e}", path.display()));
    let mut len: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)
            .map_err(|e| err(&format!("truncated ({e})")))?;
        len |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    if len > MAX_MESSAGE {
        return Err(err(&format!("message of {len} bytes is too large")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)
        .map_err(|e| err(&format!("truncated ({e})")))?;
    M::decode(buf.as_slice()).map_err(|e| err(&format!("corrupt ({e})")))
}

/// Reads and checks the header of a snapshot file.
pub fn read_header(path: &Path) -> Result<(SnapshotMeta, SnapshotHeader), StorageError> {
    let file =
        File::open(path).map_err(|e| StorageError(format!("snapshot {}: {e}", path.display())))?;
    let mut r = BufReader::new(file);
    header(&mut r, path)
}

fn header(r: &mut impl Read, path: &Path) -> Result<(SnapshotMeta, SnapshotHeader), StorageError> {
    let err = |e: &dyn std::fmt::Display| StorageError(format!("snapshot {}: {e}", path.display()));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|e| err(&format!("truncated ({e})")))?;
    if &magic != MAGIC {
        return Err(err(&"not a miniorch-store snapshot"));
    }
    let header: SnapshotHeader = read_message(r, path)?;
    let meta: SnapshotMeta = serde_json::from_slice(&header.meta_json)
        .map_err(|e| err(&format!("corrupt metadata ({e})")))?;
    Ok((meta, header))
}

/// Replaces the state machine's tables with the snapshot at `path`, durably, after checking
/// the whole file. Returns the snapshot's metadata.
pub fn install(db: &Db, path: &Path) -> Result<SnapshotMeta, StorageError> {
    let err = |e: &dyn std::fmt::Display| {
        StorageError(format!("install snapshot {}: {e}", path.display()))
    };
    // First pass: the file is complete and well-formed, so a bad one changes nothing.
    {
        let file = File::open(path).map_err(|e| err(&e))?;
        let mut r = BufReader::new(file);
        header(&mut r, path)?;
        let mut count = 0u64;
        loop {
            let item: SnapshotItem = read_message(&mut r, path)?;
            match item.item {
                Some(snapshot_item::Item::EndCount(n)) if n == count => break,
                Some(snapshot_item::Item::EndCount(n)) => {
                    return Err(err(&format!("expected {n} items, found {count}")));
                }
                Some(_) => count += 1,
                None => return Err(err(&"empty item")),
            }
        }
    }
    let file = File::open(path).map_err(|e| err(&e))?;
    let mut r = BufReader::new(file);
    let (meta, header) = header(&mut r, path)?;
    let txn = db.db.begin_write().map_err(|e| err(&e))?;
    {
        let mut kv = txn.open_table(db::KV).map_err(|e| err(&e))?;
        let mut leases = txn.open_table(db::LEASES).map_err(|e| err(&e))?;
        let mut members = txn.open_table(db::MEMBERS).map_err(|e| err(&e))?;
        let mut meta_t = txn.open_table(db::META).map_err(|e| err(&e))?;
        kv.retain(|_, _| false).map_err(|e| err(&e))?;
        leases.retain(|_, _| false).map_err(|e| err(&e))?;
        members.retain(|_, _| false).map_err(|e| err(&e))?;
        loop {
            let item: SnapshotItem = read_message(&mut r, path)?;
            match item.item {
                Some(snapshot_item::Item::Kv(k)) => {
                    let bytes = k.record.unwrap_or_default().encode_to_vec();
                    kv.insert((k.main, k.sub), bytes.as_slice())
                        .map_err(|e| err(&e))?;
                }
                Some(snapshot_item::Item::Lease(l)) => {
                    leases.insert(l.id, l.ttl).map_err(|e| err(&e))?;
                }
                Some(snapshot_item::Item::Member(m)) => {
                    members
                        .insert(m.id, m.encode_to_vec().as_slice())
                        .map_err(|e| err(&e))?;
                }
                Some(snapshot_item::Item::EndCount(_)) | None => break,
            }
        }
        let applied = serde_json::to_vec(&meta.last_log_id).map_err(|e| err(&e))?;
        let membership = serde_json::to_vec(&meta.last_membership).map_err(|e| err(&e))?;
        meta_t
            .insert(db::META_APPLIED, applied.as_slice())
            .map_err(|e| err(&e))?;
        meta_t
            .insert(db::META_MEMBERSHIP, membership.as_slice())
            .map_err(|e| err(&e))?;
        meta_t
            .insert(db::META_REVISION, db::i64_bytes(header.revision).as_slice())
            .map_err(|e| err(&e))?;
        meta_t
            .insert(
                db::META_COMPACT,
                db::i64_bytes(header.compact_revision).as_slice(),
            )
            .map_err(|e| err(&e))?;
        let alarms: Vec<(u64, i32)> = header
            .alarms
            .iter()
            .map(|a| (a.member_id, a.alarm))
            .collect();
        let alarms = serde_json::to_vec(&alarms).map_err(|e| err(&e))?;
        meta_t
            .insert(db::META_ALARMS, alarms.as_slice())
            .map_err(|e| err(&e))?;
    }
    txn.commit().map_err(|e| err(&e))?;
    Ok(meta)
}
