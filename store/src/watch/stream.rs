//! The watchers of one gRPC watch stream, as plain state: creating and cancelling them with
//! etcd's rules, and deciding which events of an applied revision each one gets. The async
//! loop in `server::watch` feeds it and does the I/O.
//!
//! Each watcher knows the next revision it needs. A *synced* watcher takes revisions live from
//! the hub and skips those it already has; an unsynced one (new from a past revision, or after
//! the stream fell behind) reads history from disk until it reaches the published revision.

use std::collections::BTreeMap;

use crate::mvcc::KeyRange;
use crate::pb::etcdserverpb::{WatchCreateRequest, watch_create_request::FilterType};
use crate::pb::mvccpb::{Event, event::EventType};

/// Most watchers one stream may hold, to bound its memory.
pub const MAX_WATCHERS_PER_STREAM: usize = 10_000;

/// One watcher of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    pub id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The next revision this watcher needs.
    pub next_rev: i64,
    pub prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    pub progress_notify: bool,
    /// Takes revisions live from the hub (else catches up from disk).
    pub synced: bool,
    /// Events were sent since the last progress tick.
    pub active: bool,
}

impl Watcher {
    fn range(&self) -> KeyRange<'_> {
        KeyRange::new(&self.key, &self.range_end)
    }

    /// Whether this watcher wants `event`, by key and filters.
    pub fn wants(&self, event: &Event) -> bool {
        let Some(kv) = &event.kv else {
            return false;
        };
        let is_put = event.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return false;
        }
        self.range().contains(&kv.key)
    }
}

/// Why a create request was refused (sent back as a canceled creation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("too many watchers on this stream (at most {MAX_WATCHERS_PER_STREAM})")]
    TooMany,
}

/// All watchers of one stream.
#[derive(Debug, Default)]
pub struct Watchers {
    map: BTreeMap<i64, Watcher>,
    next_id: i64,
}

impl Watchers {
    /// Creates a watcher as etcd does; `published` is the newest announced revision.
    pub fn create(&mut self, req: &WatchCreateRequest, published: i64) -> Result<i64, CreateError> {
        // etcd: an empty key means the smallest key; "\0" as range end means "all keys >= key".
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.clone()
        };
        let range_end = req.range_end.clone();
        if !range_end.is_empty() && range_end != [0] && key >= range_end {
            return Err(CreateError::EmptyRange);
        }
        if self.map.len() >= MAX_WATCHERS_PER_STREAM {
            return Err(CreateError::TooMany);
        }
        let id = if req.watch_id != 0 {
            if self.map.contains_key(&req.watch_id) {
                return Err(CreateError::DuplicateId);
            }
            req.watch_id
        } else {
            while self.map.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        };
        let next_rev = if req.start_revision <= 0 {
            published + 1
        } else {
            req.start_revision
        };
        let has = |f: FilterType| req.filters.contains(&(f as i32));
        self.map.insert(
            id,
            Watcher {
                id,
                key,
                range_end,
                next_rev,
                prev_kv: req.prev_kv,
                no_put: has(FilterType::Noput),
                no_delete: has(FilterType::Nodelete),
                progress_notify: req.progress_notify,
                synced: next_rev > published,
                active: false,
            },
        );
        Ok(id)
    }

    pub fn cancel(&mut self, id: i64) -> bool {
        self.map.remove(&id).is_some()
    }

    pub fn get(&self, id: i64) -> Option<&Watcher> {
        self.map.get(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Watcher> {
        self.map.values()
    }

    /// A watcher that must catch up from disk, if any.
    pub fn first_unsynced(&self) -> Option<i64> {
        self.map.values().find(|w| !w.synced).map(|w| w.id)
    }

    /// The stream missed live revisions (it fell behind, or the state was replaced): every
    /// watcher catches up from disk from where it is.
    pub fn unsync_all(&mut self) {
        for w in self.map.values_mut() {
            w.synced = false;
        }
    }

    /// Records that watcher `id` has everything before `next_rev`; it becomes synced when that
    /// passes the published revision.
    pub fn caught_up(&mut self, id: i64, next_rev: i64, published: i64) {
        if let Some(w) = self.map.get_mut(&id) {
            w.next_rev = w.next_rev.max(next_rev);
            if w.next_rev > published {
                w.synced = true;
            }
        }
    }

    /// Hands a live revision to the synced watchers: returns, per watcher that wants some of
    /// it, the events to send. Revisions a watcher already has are skipped.
    pub fn on_revision(&mut self, revision: i64, events: &[Event]) -> Vec<(i64, Vec<Event>)> {
        let mut out = Vec::new();
        for w in self.map.values_mut() {
            if !w.synced || revision < w.next_rev {
                continue;
            }
            w.next_rev = revision + 1;
            let mine: Vec<Event> = events.iter().filter(|e| w.wants(e)).cloned().collect();
            if !mine.is_empty() {
                w.active = true;
                out.push((w.id, mine));
            }
        }
        out
    }

    /// A revision this stream can report as progress: every event at or below it has already
    /// been sent to every watcher.
    pub fn progress_revision(&self, published: i64) -> i64 {
        self.map
            .values()
            .map(|w| w.next_rev - 1)
            .fold(published, i64::min)
    }

    /// Watchers due a periodic progress notification (synced, asked for it, quiet since the
    /// last tick); resets the quiet tracking.
    pub fn progress_due(&mut self) -> Vec<i64> {
        let mut due = Vec::new();
        for w in self.map.values_mut() {
            if w.progress_notify && w.synced && !w.active {
                due.push(w.id);
            }
            w.active = false;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::KeyValue;

    fn create(key: &str, end: &[u8], start: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.into(),
            range_end: end.to_vec(),
            start_revision: start,
            ..Default::default()
        }
    }

    fn put(key: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn del(key: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            ..put(key, rev)
        }
    }

    #[test]
    fn ids_and_create_errors() {
        let mut ws = Watchers::default();
        assert_eq!(ws.create(&create("a", b"", 0), 5), Ok(0));
        assert_eq!(ws.create(&create("a", b"", 0), 5), Ok(1));
        let explicit = WatchCreateRequest {
            watch_id: 7,
            ..create("a", b"", 0)
        };
        assert_eq!(ws.create(&explicit, 5), Ok(7));
        assert_eq!(ws.create(&explicit, 5), Err(CreateError::DuplicateId));
        assert_eq!(
            ws.create(&create("b", b"a", 0), 5),
            Err(CreateError::EmptyRange)
        );
        assert_eq!(
            ws.create(&create("b", b"b", 0), 5),
            Err(CreateError::EmptyRange)
        );
        // "\0" means every key from `key` on.
        assert!(ws.create(&create("b", b"\0", 0), 5).is_ok());
        assert!(ws.cancel(0));
        assert!(!ws.cancel(0));
    }

    #[test]
    fn sync_state_from_start_revision() {
        let mut ws = Watchers::default();
        let now = ws.create(&create("a", b"", 0), 10).unwrap();
        let past = ws.create(&create("a", b"", 3), 10).unwrap();
        let future = ws.create(&create("a", b"", 20), 10).unwrap();
        assert!(ws.get(now).unwrap().synced);
        assert!(!ws.get(past).unwrap().synced);
        assert!(ws.get(future).unwrap().synced);
        assert_eq!(ws.first_unsynced(), Some(past));
        assert_eq!(ws.progress_revision(10), 2);
        ws.caught_up(past, 11, 10);
        assert_eq!(ws.first_unsynced(), None);
        assert_eq!(ws.progress_revision(10), 10);
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn live_revisions_without_duplicates() {
        let mut ws = Watchers::default();
        let a = ws.create(&create("a", b"", 0), 10).unwrap();
        let prefix = ws.create(&create("p/", b"p0", 0), 10).unwrap();
        let future = ws.create(&create("a", b"", 13), 10).unwrap();
        let cases: Vec<(i64, Vec<Event>, Vec<(i64, usize)>)> = vec![
            // Already seen before the watchers existed: skipped.
            (10, vec![put("a", 10)], vec![]),
            (
                11,
                vec![put("a", 11), put("p/x", 11)],
                vec![(a, 1), (prefix, 1)],
            ),
            (12, vec![put("b", 12)], vec![]),
            (
                13,
                vec![del("a", 13), put("p/y", 13)],
                vec![(a, 1), (prefix, 1), (future, 1)],
            ),
            // Replayed again (say after a reset race): skipped.
            (13, vec![del("a", 13)], vec![]),
        ];
        for (rev, events, want) in cases {
            let got: Vec<(i64, usize)> = ws
                .on_revision(rev, &events)
                .into_iter()
                .map(|(id, evs)| (id, evs.len()))
                .collect();
            assert_eq!(got, want, "revision {rev}");
        }
    }

    #[test]
    fn filters() {
        let mut ws = Watchers::default();
        let req = WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..create("a", b"", 0)
        };
        let id = ws.create(&req, 1).unwrap();
        assert!(ws.on_revision(2, &[put("a", 2)]).is_empty());
        assert_eq!(
            ws.on_revision(3, &[del("a", 3)]),
            vec![(id, vec![del("a", 3)])]
        );
    }

    #[test]
    fn unsync_and_progress() {
        let mut ws = Watchers::default();
        let req = WatchCreateRequest {
            progress_notify: true,
            ..create("a", b"", 0)
        };
        let id = ws.create(&req, 4).unwrap();
        assert_eq!(ws.progress_due(), vec![id]);
        ws.on_revision(5, &[put("a", 5)]);
        assert_eq!(ws.progress_due(), Vec::<i64>::new());
        assert_eq!(ws.progress_due(), vec![id]);
        ws.unsync_all();
        assert_eq!(ws.first_unsynced(), Some(id));
        assert!(ws.on_revision(6, &[put("a", 6)]).is_empty());
        assert_eq!(ws.get(id).unwrap().next_rev, 6);
    }
}
