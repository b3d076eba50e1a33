//! The Raft log on disk: a write-ahead log of append-only segment files in
//! `<data-dir>/member/wal/`, as etcd keeps it.
//!
//! A segment is a sequence of frames, `[len: u32][crc: u32][kind: u8][payload]`, little-endian,
//! the CRC-32 covering the length, the kind and the payload. A frame is a log entry (its index,
//! then the encoded entry), a truncation (the first index it removes) or a piece of Raft's own
//! state: the vote, the committed log ID and the purged log ID (JSON), the newest of each
//! winning. A batch of frames is written with one `write` and made durable with one
//! `fdatasync`; nothing is acknowledged before that returns. Nothing written is ever rewritten:
//! truncating a follower's conflicting entries appends a truncation frame, so a crash at any
//! moment leaves every frame before it, the vote included, intact.
//!
//! A segment is named `<seq>-<first index>.wal` (hex, as etcd). When the active one is full a
//! new one begins with the current state frames (written under a temporary name, synced, then
//! renamed), so deleting the segments behind a purge loses no state.
//!
//! Segments are zero-filled ahead of the writes, a chunk at a time, in the same write as the
//! batch that reaches the end: an `fdatasync` then flushes the frames alone, without the file
//! size and block allocation a growing file makes it write (it costs a third less CPU and
//! time). Zeros after the last frame are the clean end of a segment.
//!
//! On open every frame is checked. A bad or short frame at the end of the last segment is a
//! write the crash interrupted, so never acknowledged: it is cut off, with a warning. A bad frame
//! anywhere else (followed by a good one, or in an older segment) is corruption: opening fails
//! with the file and offset, and the member refuses to start rather than serve a wrong log.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// A new segment is started once the active one reaches this size (etcd's size).
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Longest frame accepted when reading: a batch of entries is at most a few MiB.
const MAX_FRAME: u32 = 512 << 20;
const HEADER: usize = 8;
/// Zeros written ahead of the frames each time the writes reach the zero-filled end.
const ZERO_CHUNK: u64 = 256 << 10;
/// Extension of a segment being started; one left by a crash is removed on open.
const TMP: &str = "wal.tmp";

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Entry = 1,
    Vote = 2,
    Committed = 3,
    Purged = 4,
    /// Entries from the index it holds on are gone.
    Truncate = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Entry,
            2 => Kind::Vote,
            3 => Kind::Committed,
            4 => Kind::Purged,
            5 => Kind::Truncate,
            _ => return None,
        })
    }
}

/// Opening or writing the log failed; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "corrupt write-ahead log {} at byte {offset}: {detail} (the member cannot trust its log; \
         replace it: `etcdctl member remove`, then add it back with an empty data dir)",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Raft's own state as last written: JSON of the vote, committed and purged log IDs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub purged: Option<Vec<u8>>,
    /// The index `purged` names.
    pub purged_index: Option<u64>,
}

/// Where one entry lives.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    len: u32,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Entries in this segment by index: where their frame is.
    entries: BTreeMap<u64, Slot>,
    /// Where its last frame ends (zeros may follow).
    end: u64,
}

/// The segments and what they hold; shared by the writer and readers.
#[derive(Default)]
struct Index {
    segments: Vec<Segment>,
}

impl Index {
    fn last_index(&self) -> Option<u64> {
        self.segments
            .iter()
            .rev()
            .find_map(|s| s.entries.last_key_value().map(|(i, _)| *i))
    }

    fn first_index(&self) -> Option<u64> {
        self.segments
            .iter()
            .find_map(|s| s.entries.first_key_value().map(|(i, _)| *i))
    }

    fn locate(&self, index: u64) -> Option<(Arc<File>, PathBuf, Slot)> {
        // Segments hold increasing indexes: the last one starting at or below `index`.
        let seg = self.segments.iter().rev().find(|s| {
            s.entries
                .first_key_value()
                .is_some_and(|(i, _)| *i <= index)
        })?;
        let slot = seg.entries.get(&index)?;
        Some((seg.file.clone(), seg.path.clone(), *slot))
    }
}

/// Reads entries back from the log, from any thread.
#[derive(Clone)]
pub struct WalReader {
    index: Arc<RwLock<Index>>,
}

impl WalReader {
    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The encoded entry at `index`, if the log holds it. Its checksum is verified again.
    pub fn read(&self, index: u64) -> Result<Option<Vec<u8>>, WalError> {
        let Some((file, path, slot)) = self.index().locate(index) else {
            return Ok(None);
        };
        let mut frame = vec![0u8; HEADER + slot.len as usize];
        file.read_exact_at(&mut frame, slot.offset)
            .map_err(io_err(&path))?;
        match parse_frame(&frame) {
            Ok((Kind::Entry, payload)) if payload.len() >= 8 => {
                let at = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                if at != index {
                    return Err(corrupt(
                        &path,
                        slot.offset,
                        format!("entry {at} found where entry {index} was written"),
                    ));
                }
                Ok(Some(payload[8..].to_vec()))
            }
            Ok(_) => Err(corrupt(&path, slot.offset, "not an entry frame".into())),
            Err(detail) => Err(corrupt(&path, slot.offset, detail)),
        }
    }

    pub fn last_index(&self) -> Option<u64> {
        self.index().last_index()
    }

    pub fn first_index(&self) -> Option<u64> {
        self.index().first_index()
    }
}

fn corrupt(path: &Path, offset: u64, detail: String) -> WalError {
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        detail,
    }
}

/// Checks a whole frame (header included) and returns its kind and payload.
fn parse_frame(frame: &[u8]) -> Result<(Kind, &[u8]), String> {
    if frame.len() < HEADER + 1 {
        return Err("frame too short".into());
    }
    let len = u32::from_le_bytes(frame[0..4].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(frame[4..8].try_into().unwrap_or_default());
    if len as usize != frame.len() - HEADER {
        return Err(format!("frame length {len} does not match"));
    }
    let body = &frame[HEADER..];
    if checksum(len, body) != crc {
        return Err("checksum mismatch".into());
    }
    let kind = Kind::from_u8(body[0]).ok_or_else(|| format!("unknown frame kind {}", body[0]))?;
    Ok((kind, &body[1..]))
}

fn checksum(len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

fn push_frame(buf: &mut Vec<u8>, kind: Kind, parts: &[&[u8]]) {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind as u8);
    for p in parts {
        buf.extend_from_slice(p);
    }
    let crc = checksum(len, &buf[start + HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn segment_name(seq: u64, first: u64) -> String {
    format!("{seq:016x}-{first:016x}.wal")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(first, 16).ok()?,
    ))
}

fn open_write(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

/// What follows the last good frame of a segment.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// Nothing, or zeros written ahead.
    Clean,
    /// The unfinished last write (last segment only): cut it off.
    Torn,
    /// Damage: a good frame follows a bad one, or garbage ends an older segment.
    Corrupt,
}

/// Classifies the bytes after `good_len`, the end of a segment's good frames.
fn tail(file: &File, size: u64, good_len: u64, is_last: bool) -> std::io::Result<Tail> {
    // The first byte that is not zero, if any.
    let mut first_set = None;
    let mut buf = vec![0u8; 64 << 10];
    let mut at = good_len;
    while at < size && first_set.is_none() {
        let n = buf.len().min((size - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        first_set = buf[..n].iter().position(|b| *b != 0).map(|i| at + i as u64);
        at += n as u64;
    }
    let Some(q) = first_set else {
        return Ok(Tail::Clean);
    };
    // A good frame after the bad bytes means damage to acknowledged frames. It starts where
    // the bad frame's header says it ends, or (after zeros) at most three bytes before the
    // first byte set, which is then in its length.
    let mut head = [0u8; 4];
    let claimed = file
        .read_exact_at(&mut head, good_len)
        .ok()
        .map(|_| good_len + HEADER as u64 + u64::from(u32::from_le_bytes(head)));
    let after_zeros = (q.saturating_sub(3).max(good_len)..=q).filter(|c| *c > good_len);
    let damaged = claimed
        .into_iter()
        .chain(after_zeros)
        .any(|c| good_frame_at(file, c, size));
    Ok(if damaged || !is_last {
        Tail::Corrupt
    } else {
        Tail::Torn
    })
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What reading one segment found.
struct Scanned {
    /// Entries and state frames, in order.
    frames: Vec<(Kind, u64, Slot, Vec<u8>)>,
    /// Bytes of good frames; a torn tail starts here.
    good_len: u64,
    /// Why the rest of the file is not good, when it is not.
    bad: Option<String>,
}

/// Reads every frame of a segment. State payloads are returned; entry payloads only as their
/// index (the entry itself stays on disk).
fn scan(path: &Path, file: &File) -> Result<Scanned, WalError> {
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut out = Scanned {
        frames: Vec::new(),
        good_len: 0,
        bad: None,
    };
    let mut offset = 0u64;
    let mut body = Vec::new();
    while offset < size {
        let remaining = size - offset;
        if remaining < HEADER as u64 + 1 {
            out.bad = Some(format!("{remaining} stray bytes"));
            break;
        }
        let mut head = [0u8; HEADER];
        r.read_exact(&mut head).map_err(io_err(path))?;
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
        if len == 0 || len > MAX_FRAME || u64::from(len) > remaining - HEADER as u64 {
            out.bad = Some(format!("frame length {len} with {remaining} bytes left"));
            break;
        }
        body.resize(len as usize, 0);
        r.read_exact(&mut body).map_err(io_err(path))?;
        if checksum(len, &body) != crc {
            out.bad = Some("checksum mismatch".into());
            break;
        }
        let Some(kind) = Kind::from_u8(body[0]) else {
            out.bad = Some(format!("unknown frame kind {}", body[0]));
            break;
        };
        let slot = Slot { offset, len };
        let payload = &body[1..];
        match kind {
            Kind::Entry | Kind::Truncate => {
                let Some(index) = payload.get(..8) else {
                    out.bad = Some("frame without an index".into());
                    break;
                };
                let index = u64::from_le_bytes(index.try_into().unwrap_or_default());
                out.frames.push((kind, index, slot, Vec::new()));
            }
            _ => out.frames.push((kind, 0, slot, payload.to_vec())),
        }
        offset += HEADER as u64 + u64::from(len);
        out.good_len = offset;
    }
    Ok(out)
}

/// Whether a good frame starts at `offset` (to tell a torn tail from damage in the middle).
fn good_frame_at(file: &File, offset: u64, size: u64) -> bool {
    let mut head = [0u8; HEADER];
    if offset + HEADER as u64 >= size || file.read_exact_at(&mut head, offset).is_err() {
        return false;
    }
    let len = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default());
    if len == 0 || len > MAX_FRAME || offset + HEADER as u64 + u64::from(len) > size {
        return false;
    }
    let mut frame = vec![0u8; HEADER + len as usize];
    file.read_exact_at(&mut frame, offset).is_ok() && parse_frame(&frame).is_ok()
}

/// The write side of the log; owned by one writer.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    index: Arc<RwLock<Index>>,
    /// The active (last) segment, where its frames end, and where the zeros after them end
    /// (the file's size).
    active: File,
    active_len: u64,
    zeroed_end: u64,
    state: State,
    /// Frames staged for the next [`Wal::sync`], with the entries among them.
    buf: Vec<u8>,
    staged: Vec<(u64, usize, u32)>,
}

impl Wal {
    /// Opens the log in `dir` (creating it), checking every frame and cutting off a torn tail.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut names: Vec<(u64, u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(TMP) {
                std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            } else if let Some((seq, first)) = parse_name(&name) {
                names.push((seq, first, e.path()));
            }
        }
        names.sort();
        let mut state = State::default();
        let mut segments: Vec<Segment> = Vec::new();
        let count = names.len();
        let mut last: Option<(u64, PathBuf)> = None;
        // Entries across segments, to check they follow each other.
        let mut pending_jumps: Vec<(u64, u64, PathBuf, u64)> = Vec::new();
        for (n, (seq, _first, path)) in names.into_iter().enumerate() {
            let is_last = n + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(is_last)
                .open(&path)
                .map_err(io_err(&path))?;
            let scanned = scan(&path, &file)?;
            let size = file.metadata().map_err(io_err(&path))?.len();
            match tail(&file, size, scanned.good_len, is_last).map_err(io_err(&path))? {
                Tail::Clean => {}
                Tail::Torn => {
                    tracing::warn!(
                        file = %path.display(),
                        offset = scanned.good_len,
                        dropped_bytes = size - scanned.good_len,
                        reason = scanned.bad.as_deref().unwrap_or("?"),
                        "cutting off the unfinished last write of the log (it was never acknowledged)"
                    );
                    file.set_len(scanned.good_len).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                }
                Tail::Corrupt => {
                    let why = scanned
                        .bad
                        .unwrap_or_else(|| "garbage after the last frame".into());
                    return Err(corrupt(&path, scanned.good_len, why));
                }
            }
            let end = scanned.good_len;
            let mut entries = BTreeMap::new();
            for (kind, index, slot, payload) in scanned.frames {
                match kind {
                    Kind::Entry => {
                        if let Some((prev, prev_path)) = &last
                            && index != prev + 1
                        {
                            if index <= *prev {
                                return Err(corrupt(
                                    &path,
                                    slot.offset,
                                    format!(
                                        "entry {index} after entry {prev} (in {})",
                                        prev_path.display()
                                    ),
                                ));
                            }
                            // A jump is legal only over purged entries: checked at the end,
                            // once the newest purged index is known.
                            pending_jumps.push((*prev, index, path.clone(), slot.offset));
                        }
                        entries.insert(index, slot);
                        last = Some((index, path.clone()));
                    }
                    Kind::Truncate => {
                        for s in &mut segments {
                            s.entries.retain(|i, _| *i < index);
                        }
                        entries.retain(|i, _| *i < index);
                        last = match last {
                            Some((prev, p)) if prev >= index => {
                                index.checked_sub(1).map(|i| (i, p))
                            }
                            other => other,
                        };
                    }
                    Kind::Vote => state.vote = Some(payload),
                    Kind::Committed => state.committed = Some(payload),
                    Kind::Purged => {
                        let Some(at) = payload.get(..8) else {
                            return Err(corrupt(&path, slot.offset, "short purge frame".into()));
                        };
                        state.purged_index =
                            Some(u64::from_le_bytes(at.try_into().unwrap_or_default()));
                        state.purged = Some(payload[8..].to_vec());
                    }
                }
            }
            segments.push(Segment {
                seq,
                path,
                file: Arc::new(file),
                entries,
                end,
            });
        }
        for (prev, index, path, offset) in pending_jumps {
            if state.purged_index.is_none_or(|p| p < index - 1) {
                return Err(corrupt(
                    &path,
                    offset,
                    format!("entries {} to {} are missing", prev + 1, index - 1),
                ));
            }
        }
        // Purged entries are never read again.
        if let Some(p) = state.purged_index {
            for s in &mut segments {
                s.entries.retain(|i, _| *i > p);
            }
        }
        let created = segments.is_empty();
        if created {
            let path = dir.join(segment_name(0, 0));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io_err(&path))?;
            sync_dir(dir)?;
            segments.push(Segment {
                seq: 0,
                path,
                file: Arc::new(file),
                entries: BTreeMap::new(),
                end: 0,
            });
        }
        let last_seg = segments.last().expect("at least one segment");
        let active = open_write(&last_seg.path)?;
        let active_len = last_seg.end;
        let zeroed_end = active.metadata().map_err(io_err(&last_seg.path))?.len();
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            index: Arc::new(RwLock::new(Index { segments })),
            active,
            active_len,
            zeroed_end,
            state,
            buf: Vec::new(),
            staged: Vec::new(),
        })
    }

    pub fn reader(&self) -> WalReader {
        WalReader {
            index: self.index.clone(),
        }
    }

    /// Raft's state as last written.
    pub fn state(&self) -> &State {
        &self.state
    }

    fn active_path(&self) -> PathBuf {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index
            .segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.dir.clone())
    }

    /// Stages an entry for the next [`Wal::sync`].
    pub fn append(&mut self, index: u64, entry: &[u8]) {
        let at = self.buf.len();
        push_frame(&mut self.buf, Kind::Entry, &[&index.to_le_bytes(), entry]);
        let len = (self.buf.len() - at - HEADER) as u32;
        self.staged.push((index, at, len));
    }

    pub fn set_vote(&mut self, json: Vec<u8>) {
        push_frame(&mut self.buf, Kind::Vote, &[&json]);
        self.state.vote = Some(json);
    }

    pub fn set_committed(&mut self, json: Vec<u8>) {
        push_frame(&mut self.buf, Kind::Committed, &[&json]);
        self.state.committed = Some(json);
    }

    /// Records that entries up to `index` are no longer needed; segments holding nothing newer
    /// are deleted after the next sync.
    pub fn set_purged(&mut self, index: u64, json: Vec<u8>) {
        push_frame(&mut self.buf, Kind::Purged, &[&index.to_le_bytes(), &json]);
        self.state.purged = Some(json);
        self.state.purged_index = Some(index);
    }

    fn state_frames(&self, buf: &mut Vec<u8>) {
        let s = &self.state;
        if let Some(v) = &s.vote {
            push_frame(buf, Kind::Vote, &[v]);
        }
        if let Some(c) = &s.committed {
            push_frame(buf, Kind::Committed, &[c]);
        }
        if let (Some(i), Some(p)) = (s.purged_index, &s.purged) {
            push_frame(buf, Kind::Purged, &[&i.to_le_bytes(), p]);
        }
    }

    /// Writes what is staged and makes it durable (one write, one fdatasync).
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.active_len >= self.segment_bytes {
            self.roll()?;
        }
        let path = self.active_path();
        let base = self.active_len;
        let end = base + self.buf.len() as u64;
        if end > self.zeroed_end {
            // Zeros ahead, in the same write and fdatasync.
            // (Small segments, in tests, get small chunks.)
            let chunk = ZERO_CHUNK.min(self.segment_bytes).max(1);
            let zeros = end.next_multiple_of(chunk) + chunk - end;
            self.buf.resize(self.buf.len() + zeros as usize, 0);
        }
        let write = self
            .active
            .write_all_at(&self.buf, base)
            .and_then(|_| self.active.sync_data());
        if let Err(e) = write {
            // Leave the file as it was, so a retry or a restart sees no half batch.
            let _ = self.active.set_len(base);
            self.zeroed_end = base;
            self.buf.clear();
            self.staged.clear();
            return Err(io_err(&path)(e));
        }
        self.zeroed_end = self.zeroed_end.max(base + self.buf.len() as u64);
        self.active_len = end;
        {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            let seg = index.segments.last_mut().expect("an active segment");
            seg.end = end;
            for (i, at, len) in self.staged.drain(..) {
                seg.entries.insert(
                    i,
                    Slot {
                        offset: base + at as u64,
                        len,
                    },
                );
            }
        }
        self.buf.clear();
        self.drop_purged()
    }

    /// Starts a new segment, beginning with the current state.
    fn roll(&mut self) -> Result<(), WalError> {
        let (seq, first) = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            let seq = index.segments.last().map_or(0, |s| s.seq + 1);
            (seq, index.last_index().map_or(0, |i| i + 1))
        };
        // Complete and durable before it has its name: a crash leaves no segment without the
        // state, which a later purge would make the only copy.
        let path = self.dir.join(segment_name(seq, first));
        let tmp = path.with_extension(TMP);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let mut head = Vec::new();
        self.state_frames(&mut head);
        file.write_all(&head)
            .and_then(|_| file.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        let read = File::open(&path).map_err(io_err(&path))?;
        self.active = file;
        self.active_len = head.len() as u64;
        self.zeroed_end = self.active_len;
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        index.segments.push(Segment {
            seq,
            path,
            file: Arc::new(read),
            entries: BTreeMap::new(),
            end: head.len() as u64,
        });
        Ok(())
    }

    /// Deletes segments whose entries are all purged (never the active one).
    fn drop_purged(&mut self) -> Result<(), WalError> {
        let Some(purged) = self.state.purged_index else {
            return Ok(());
        };
        let mut gone = Vec::new();
        {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            let n = index.segments.len();
            for s in &mut index.segments {
                s.entries.retain(|i, _| *i > purged);
            }
            // Only a prefix of the segments, and never the active one.
            let keep_from = index.segments[..n - 1]
                .iter()
                .position(|s| !s.entries.is_empty())
                .unwrap_or(n - 1);
            gone.extend(index.segments.drain(..keep_from).map(|s| s.path));
        }
        for path in gone {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Removes entries from `from` on (a follower's conflicting suffix), durably: a truncation
    /// frame, appended like any other, so no frame already written is touched.
    pub fn truncate(&mut self, from: u64) -> Result<(), WalError> {
        // Staged entries first, so the truncation also covers those at or after `from`.
        self.sync()?;
        push_frame(&mut self.buf, Kind::Truncate, &[&from.to_le_bytes()]);
        self.sync()?;
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        for s in &mut index.segments {
            s.entries.retain(|i, _| *i < from);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Vec<u8> {
        format!("entry-{i}").into_bytes().repeat(10)
    }

    fn append(w: &mut Wal, range: std::ops::RangeInclusive<u64>) {
        for i in range {
            w.append(i, &entry(i));
        }
        w.sync().unwrap();
    }

    /// Where the frames of a segment end: its last byte that is not zero, plus one.
    fn frames_end(path: &Path) -> u64 {
        let bytes = std::fs::read(path).unwrap();
        bytes
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |i| i as u64 + 1)
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn entries_and_state_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
        w.set_vote(b"vote-1".to_vec());
        append(&mut w, 0..=9);
        w.set_committed(b"c-5".to_vec());
        w.set_vote(b"vote-2".to_vec());
        w.sync().unwrap();
        drop(w);
        let w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
        assert_eq!(w.state().vote.as_deref(), Some(&b"vote-2"[..]));
        assert_eq!(w.state().committed.as_deref(), Some(&b"c-5"[..]));
        let r = w.reader();
        assert_eq!((r.first_index(), r.last_index()), (Some(0), Some(9)));
        for i in 0..=9 {
            assert_eq!(r.read(i).unwrap(), Some(entry(i)));
        }
        assert_eq!(r.read(10).unwrap(), None);
    }

    #[test]
    fn segments_roll_and_purge_deletes_old_ones_keeping_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 300).unwrap();
        w.set_vote(b"v".to_vec());
        for i in 0..40 {
            append(&mut w, i..=i);
        }
        let many = files(dir.path()).len();
        assert!(many > 5, "{many} segments");
        w.set_purged(30, b"p30".to_vec());
        w.sync().unwrap();
        let few = files(dir.path()).len();
        assert!(
            few < many / 2,
            "{few} of {many} segments left after purging to 30"
        );
        drop(w);
        let w = Wal::open(dir.path(), 300).unwrap();
        assert_eq!(w.state().vote.as_deref(), Some(&b"v"[..]));
        assert_eq!(w.state().purged_index, Some(30));
        assert_eq!(w.state().purged.as_deref(), Some(&b"p30"[..]));
        let r = w.reader();
        assert_eq!((r.first_index(), r.last_index()), (Some(31), Some(39)));
        assert_eq!(r.read(35).unwrap(), Some(entry(35)));
    }

    #[test]
    fn purge_past_the_end_then_a_jump_is_legal() {
        // A follower installing a snapshot purges everything and continues after it.
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
        append(&mut w, 0..=4);
        w.set_purged(100, b"p100".to_vec());
        append(&mut w, 101..=103);
        drop(w);
        let w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let r = w.reader();
        assert_eq!((r.first_index(), r.last_index()), (Some(101), Some(103)));
    }

    #[test]
    fn truncate_removes_the_suffix_and_keeps_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 200).unwrap();
        append(&mut w, 0..=5);
        w.set_vote(b"late-vote".to_vec());
        append(&mut w, 6..=20);
        w.truncate(4).unwrap();
        append(&mut w, 4..=6);
        drop(w);
        let w = Wal::open(dir.path(), 200).unwrap();
        assert_eq!(w.state().vote.as_deref(), Some(&b"late-vote"[..]));
        let r = w.reader();
        assert_eq!(r.last_index(), Some(6));
        assert_eq!(r.read(5).unwrap(), Some(entry(5)));
    }

    #[test]
    fn a_truncation_lasts_and_rewrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 300).unwrap();
        append(&mut w, 0..=9);
        w.set_vote(b"vote-after-9".to_vec());
        w.sync().unwrap();
        let before: Vec<(PathBuf, Vec<u8>)> = files(dir.path())
            .into_iter()
            .map(|f| (f.clone(), std::fs::read(&f).unwrap()))
            .collect();
        w.truncate(3).unwrap();
        // Every byte written before is still there (only zeros ahead may have been used).
        for (f, old) in before {
            let now = std::fs::read(&f).unwrap();
            let end = old.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            assert_eq!(now[..end], old[..end], "{} rewritten", f.display());
        }
        drop(w);
        let mut w = Wal::open(dir.path(), 300).unwrap();
        assert_eq!(w.reader().last_index(), Some(2));
        assert_eq!(w.reader().read(5).unwrap(), None);
        assert_eq!(w.state().vote.as_deref(), Some(&b"vote-after-9"[..]));
        append(&mut w, 3..=4);
        drop(w);
        let w = Wal::open(dir.path(), 300).unwrap();
        assert_eq!(w.reader().last_index(), Some(4));
        assert_eq!(w.reader().read(4).unwrap(), Some(entry(4)));
    }

    #[test]
    fn a_segment_left_half_started_by_a_crash_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 100).unwrap();
        append(&mut w, 0..=3);
        drop(w);
        let half = dir.path().join(segment_name(99, 4)).with_extension(TMP);
        std::fs::write(&half, b"").unwrap();
        let w = Wal::open(dir.path(), 100).unwrap();
        assert!(!half.exists());
        assert_eq!(w.reader().last_index(), Some(3));
    }

    #[test]
    fn a_torn_last_write_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
        append(&mut w, 0..=2);
        drop(w);
        let path = files(dir.path()).pop().unwrap();
        let zeroed = std::fs::metadata(&path).unwrap().len();
        assert!(
            zeroed > frames_end(&path),
            "zeros are written ahead of the frames"
        );
        for (tail, cut) in [
            (vec![7u8; 3], true), // a few bytes of a header
            // A whole frame whose end did not reach the disk.
            (
                {
                    let mut b = Vec::new();
                    push_frame(&mut b, Kind::Entry, &[&3u64.to_le_bytes(), &entry(3)]);
                    let n = b.len();
                    b[n - 5..].fill(0);
                    b
                },
                true,
            ),
            // Its start did not: zeros, then the rest of the write.
            ([vec![0u8; 8], vec![9u8; 40]].concat(), true),
            // Zeros written ahead, nothing else.
            (vec![0u8; 64], false),
        ] {
            let end = Wal::open(dir.path(), SEGMENT_BYTES).unwrap().active_len;
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&tail, end).unwrap();
            drop(f);
            let w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
            assert_eq!(w.reader().last_index(), Some(2));
            let len = std::fs::metadata(&path).unwrap().len();
            if cut {
                assert_eq!(len, end, "cut off where the frames end");
            } else {
                assert!(len > end, "zeros after the frames stay");
            }
            drop(w);
            // Writing goes on where the frames end.
            let mut w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
            append(&mut w, 3..=3);
            drop(w);
            let w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
            assert_eq!(w.reader().read(3).unwrap(), Some(entry(3)));
            drop(w);
            let mut w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
            w.truncate(3).unwrap();
        }
    }

    #[test]
    fn damage_before_good_frames_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
        append(&mut w, 0..=5);
        drop(w);
        let path = files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 12] ^= 0xff; // inside the first entry
        std::fs::write(&path, &bytes).unwrap();
        let e = Wal::open(dir.path(), SEGMENT_BYTES).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("checksum"), "{msg}");
    }

    #[test]
    fn damage_in_an_older_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 100).unwrap();
        for i in 0..10 {
            append(&mut w, i..=i);
        }
        drop(w);
        let first = files(dir.path()).remove(0);
        let end = frames_end(&first);
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(end - 3)
            .unwrap();
        let e = Wal::open(dir.path(), 100).err().expect("refused");
        assert!(e.to_string().contains(&first.display().to_string()), "{e}");
    }

    #[test]
    fn a_missing_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 100).unwrap();
        for i in 0..10 {
            append(&mut w, i..=i);
        }
        drop(w);
        let mut f = files(dir.path());
        assert!(f.len() >= 3);
        std::fs::remove_file(f.remove(1)).unwrap();
        let e = Wal::open(dir.path(), 100).err().expect("refused");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn frames_reject_garbage() {
        let mut b = Vec::new();
        push_frame(&mut b, Kind::Vote, &[b"x"]);
        assert!(parse_frame(&b).is_ok());
        for cut in 0..b.len() {
            assert!(parse_frame(&b[..cut]).is_err());
        }
        let mut bad = b.clone();
        bad[HEADER] = 99;
        assert!(parse_frame(&bad).is_err());
    }
}
