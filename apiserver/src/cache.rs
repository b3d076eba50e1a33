//! The watch cache, as kube-apiserver's cacher: one store watch per resource feeds an
//! in-memory copy of every object and a ring of recent events. LISTs are served from the copy
//! (after making sure it has caught up with the store, for consistent reads) and WATCHes from
//! the ring and then live, so a thousand watchers cost one store watch. Each object is encoded
//! once per change, not once per watcher. A watcher that falls behind is cut off; memory stays
//! bounded.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::errors::{ApiError, ApiResult};
use crate::handlers::{Filter, decode_stored, prefix};
use crate::registry::Kind;
use crate::storage::{Change, Etcd, Item, ProgressHandle, prefix_end};

/// Events kept by default for watches that start in the past (`--default-watch-cache-size`).
pub const DEFAULT_RING: usize = 4096;
/// Events queued for one watcher before it counts as too slow and is cut off.
pub const WATCHER_QUEUE: usize = 1024;
/// How long a consistent list waits for the cache to catch up before reading the store.
const CATCH_UP: Duration = Duration::from_secs(2);

/// One object as the cache holds it: encoded once, with what selectors look at.
#[derive(Debug)]
pub struct Cached {
    pub key: Vec<u8>,
    /// The object's JSON, resourceVersion included.
    pub json: Bytes,
    pub rv: i64,
    labels: Option<BTreeMap<String, String>>,
    /// `metadata.name`, `metadata.namespace` and the kind's selectable fields.
    fields: Vec<(&'static str, Option<String>)>,
}

impl Cached {
    fn new<K: Kind>(key: Vec<u8>, obj: &K, rv: i64) -> ApiResult<Self> {
        let json = serde_json::to_vec(obj)
            .map_err(|e| ApiError::internal(format!("cannot encode {}: {e}", K::KIND)))?;
        let meta = obj.metadata();
        let mut fields = vec![
            ("metadata.name", meta.name.clone()),
            ("metadata.namespace", meta.namespace.clone()),
        ];
        fields.extend(K::FIELDS.iter().map(|f| (*f, obj.field(f))));
        Ok(Cached {
            key,
            json: Bytes::from(json),
            rv,
            labels: meta.labels.clone(),
            fields,
        })
    }

    pub fn matches(&self, filter: &Filter) -> bool {
        filter.matches_parts(self.labels.as_ref(), |f| {
            self.fields
                .iter()
                .find(|(name, _)| *name == f)
                .and_then(|(_, v)| v.clone())
        })
    }

    /// Decodes the typed object (for Tables).
    pub fn object<K: Kind>(&self) -> ApiResult<K> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("cached {} cannot be decoded: {e}", K::KIND)))
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, shared by every watcher that sees it.
#[derive(Debug)]
pub struct CacheEvent {
    pub kind: EventType,
    /// The object after the change (for a deletion: the last version, at the deletion's revision).
    pub object: Arc<Cached>,
    /// The object before the change, for selectors that stop or start matching.
    pub prev: Option<Arc<Cached>>,
    pub rv: i64,
}

struct Watcher {
    id: u64,
    prefix: Vec<u8>,
    filter: Arc<Filter>,
    tx: mpsc::Sender<Arc<CacheEvent>>,
    cut: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Vec<u8>, Arc<Cached>>,
    ring: VecDeque<Arc<CacheEvent>>,
    /// Every change after this revision is in the ring.
    oldest: i64,
    /// Every change up to this revision is reflected.
    rv: i64,
    ready: bool,
    watchers: Vec<Watcher>,
    next_id: u64,
}

struct Shared {
    /// How many past events the ring keeps.
    ring_size: usize,
    state: Mutex<State>,
    rv: watch::Sender<i64>,
    progress: Mutex<Option<ProgressHandle>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping to serve; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cache of one resource.
pub struct Cacher<K> {
    shared: Arc<Shared>,
    store: Etcd,
    _kind: PhantomData<fn() -> K>,
}

/// How fresh a read from the cache must be (`resourceVersion` semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Whatever the cache has (`resourceVersion=0`).
    Any,
    /// At least as new as the store now (no `resourceVersion`: a consistent read).
    Latest,
    /// At least this revision.
    AtLeast(i64),
}

/// Where a cached watch starts.
pub enum Start {
    /// With the current objects as ADDED events.
    Now,
    /// After this revision.
    After(i64),
}

/// A watch served from the cache.
pub struct CacheWatch {
    /// Events to send first (current objects, or buffered changes).
    pub initial: Vec<Arc<CacheEvent>>,
    pub rx: mpsc::Receiver<Arc<CacheEvent>>,
    /// Set when the cache cut this watcher off (too slow, or the cache restarted).
    pub cut: Arc<AtomicBool>,
    /// The revision the initial events bring the watcher to.
    pub rv: i64,
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for CacheWatch {
    fn drop(&mut self) {
        self.shared.lock().watchers.retain(|w| w.id != self.id);
    }
}

impl<K: Kind> Cacher<K> {
    /// Starts filling the cache from the store; it keeps following the store until `shutdown`.
    pub fn start(
        store: Etcd,
        ring_size: usize,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Arc<Self> {
        let (rv, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            ring_size,
            state: Mutex::new(State::default()),
            rv,
            progress: Mutex::new(None),
        });
        let cacher = Arc::new(Cacher {
            shared: shared.clone(),
            store: store.clone(),
            _kind: PhantomData,
        });
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = feed::<K>(store, shared) => {}
            }
        });
        cacher
    }

    /// The objects in `namespace` (all if None) matching `filter`, and the revision they are
    /// at. None when the cache cannot answer (not filled yet, or did not catch up in time):
    /// read the store.
    pub async fn list(
        &self,
        namespace: Option<&str>,
        filter: &Filter,
        fresh: Freshness,
    ) -> Option<(Vec<Arc<Cached>>, i64)> {
        if !self.fresh(fresh).await {
            return None;
        }
        let st = self.shared.lock();
        if !st.ready {
            return None;
        }
        let p = prefix::<K>(namespace).into_bytes();
        let end = prefix_end(&p);
        let items = st
            .objects
            .range(p..end)
            .map(|(_, c)| c)
            .filter(|c| c.matches(filter))
            .cloned()
            .collect();
        Some((items, st.rv))
    }

    /// Waits until the cache is as fresh as asked.
    pub async fn fresh(&self, fresh: Freshness) -> bool {
        match fresh {
            Freshness::Any => true,
            Freshness::AtLeast(rv) => self.catch_up(rv).await,
            Freshness::Latest => match self.store.revision().await {
                Ok(target) => self.catch_up(target).await,
                Err(_) => false,
            },
        }
    }

    /// Waits until the cache reflects revision `target`, asking the store for progress.
    async fn catch_up(&self, target: i64) -> bool {
        let mut rx = self.shared.rv.subscribe();
        if *rx.borrow() >= target {
            return true;
        }
        if let Some(p) = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            p.request();
        }
        matches!(
            tokio::time::timeout(CATCH_UP, rx.wait_for(|rv| *rv >= target)).await,
            Ok(Ok(_))
        )
    }

    /// A watch of `namespace` (all if None) through `filter`; None when the cache cannot serve
    /// it (not filled yet, or `start` is older than the ring): watch the store instead.
    pub fn watch(
        &self,
        namespace: Option<&str>,
        filter: Arc<Filter>,
        start: Start,
    ) -> Option<CacheWatch> {
        let mut st = self.shared.lock();
        if !st.ready {
            return None;
        }
        let p = prefix::<K>(namespace).into_bytes();
        let initial: Vec<Arc<CacheEvent>> = match start {
            Start::Now => {
                let end = prefix_end(&p);
                st.objects
                    .range(p.clone()..end)
                    .map(|(_, c)| c)
                    .filter(|c| c.matches(&filter))
                    .map(|c| {
                        Arc::new(CacheEvent {
                            kind: EventType::Added,
                            object: c.clone(),
                            prev: None,
                            rv: c.rv,
                        })
                    })
                    .collect()
            }
            Start::After(rv) if rv < st.oldest => return None,
            Start::After(rv) => st
                .ring
                .iter()
                .filter(|e| e.rv > rv && e.object.key.starts_with(&p) && relevant(e, &filter))
                .cloned()
                .collect(),
        };
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let cut = Arc::new(AtomicBool::new(false));
        st.next_id += 1;
        let id = st.next_id;
        st.watchers.push(Watcher {
            id,
            prefix: p,
            filter,
            tx,
            cut: cut.clone(),
        });
        Some(CacheWatch {
            initial,
            rx,
            cut,
            rv: st.rv,
            id,
            shared: self.shared.clone(),
        })
    }

    /// How many watchers the cache is serving.
    pub fn watchers(&self) -> usize {
        self.shared.lock().watchers.len()
    }
}

/// Whether `filter` matches the object before or after the change.
fn relevant(e: &CacheEvent, filter: &Filter) -> bool {
    filter.is_empty()
        || e.object.matches(filter)
        || e.prev.as_ref().is_some_and(|p| p.matches(filter))
}

/// Fills and follows: list, then watch from the list's revision; start over on errors.
async fn feed<K: Kind>(store: Etcd, shared: Arc<Shared>) {
    let p = prefix::<K>(None).into_bytes();
    let end = prefix_end(&p);
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow::<K>(&store, &shared, &p, &end).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(kind = K::KIND, error = %e, "watch cache lost the store; refilling");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        restart(&shared, "the watch cache restarted: watch again");
        tokio::time::sleep(backoff).await;
    }
}

/// Cuts every watcher off and marks the cache empty.
fn restart(shared: &Shared, why: &str) {
    let mut st = shared.lock();
    st.ready = false;
    for w in st.watchers.drain(..) {
        w.cut.store(true, Ordering::Relaxed);
    }
    tracing::debug!(why, "watch cache reset");
}

async fn follow<K: Kind>(
    store: &Etcd,
    shared: &Shared,
    p: &[u8],
    end: &[u8],
) -> Result<(), String> {
    let page = store.range(p, end, 0, 0).await.map_err(|e| e.to_string())?;
    let mut objects = BTreeMap::new();
    for item in &page.items {
        match cached::<K>(item, item.mod_revision) {
            Ok(c) => {
                objects.insert(item.key.clone(), Arc::new(c));
            }
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(&item.key), error = %e, "skipping an object the cache cannot decode")
            }
        }
    }
    let (mut changes, progress) = store
        .watch(p, end, page.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    *shared.progress.lock().unwrap_or_else(|p| p.into_inner()) = Some(progress);
    {
        let mut st = shared.lock();
        st.objects = objects;
        st.ring.clear();
        st.oldest = page.revision;
        st.rv = page.revision;
        st.ready = true;
    }
    shared.rv.send_replace(page.revision);
    while let Some(batch) = changes.next().await {
        let batch = batch.map_err(|e| e.to_string())?;
        let mut st = shared.lock();
        for change in batch {
            apply::<K>(&mut st, shared.ring_size, change);
        }
        let rv = st.rv;
        drop(st);
        shared.rv.send_replace(rv);
    }
    Err("the store ended the watch".into())
}

fn cached<K: Kind>(item: &Item, rv: i64) -> ApiResult<Cached> {
    let obj: K = decode_stored(&item.value, rv)?;
    Cached::new(item.key.clone(), &obj, rv)
}

fn apply<K: Kind>(st: &mut State, ring_size: usize, change: Change) {
    let event = match change {
        Change::Progress(rev) => {
            st.rv = st.rv.max(rev);
            return;
        }
        Change::Put { item, .. } => {
            let object = match cached::<K>(&item, item.mod_revision) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a change the cache cannot decode");
                    st.rv = st.rv.max(item.mod_revision);
                    return;
                }
            };
            let prev = st.objects.insert(item.key.clone(), object.clone());
            let kind = if prev.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            };
            CacheEvent {
                kind,
                object,
                prev,
                rv: item.mod_revision,
            }
        }
        Change::Delete {
            key,
            revision,
            prev,
        } => {
            let last = st.objects.remove(&key);
            // The deleted object is reported at the deletion's revision.
            let value = prev
                .map(|p| p.value)
                .or_else(|| last.as_ref().map(|l| l.json.to_vec()));
            let Some(object) = value.and_then(|v| {
                cached::<K>(
                    &Item {
                        key: key.clone(),
                        value: v,
                        mod_revision: revision,
                        create_revision: 0,
                    },
                    revision,
                )
                .ok()
            }) else {
                st.rv = st.rv.max(revision);
                return;
            };
            CacheEvent {
                kind: EventType::Deleted,
                object: Arc::new(object),
                prev: last,
                rv: revision,
            }
        }
    };
    st.rv = st.rv.max(event.rv);
    let event = Arc::new(event);
    st.watchers.retain(|w| {
        if !event.object.key.starts_with(&w.prefix) || !relevant(&event, &w.filter) {
            return true;
        }
        match w.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                w.cut.store(true, Ordering::Relaxed);
                false
            }
        }
    });
    st.ring.push_back(event);
    while st.ring.len() > ring_size {
        if let Some(e) = st.ring.pop_front() {
            st.oldest = e.rv;
        }
    }
}
