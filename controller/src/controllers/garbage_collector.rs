//! garbage-collector-controller: deletes what nobody owns any more, as upstream's garbage
//! collector does, for every resource the API's discovery lists.
//!
//! - *Monitors* watch the metadata of every resource that can be listed, watched and deleted
//!   (rediscovered every 30 s) and feed one [`graph::Graph`] of owners and dependents, built from
//!   `metadata.ownerReferences` by a single task.
//! - *attemptToDelete* workers take a node and ask the API: a dependent whose owners are all
//!   gone (looked up by name, uid compared) is deleted in the background; one whose owner
//!   deletes in the foreground is deleted too (in the foreground when it has dependents or
//!   blocks its owner); an owner deleting in the foreground (`foregroundDeletion` finalizer)
//!   loses the finalizer once no dependent blocks it, and the apiserver then removes it.
//! - *attemptToOrphan* workers take an owner being deleted with the `orphan` finalizer, remove
//!   the reference to it from each dependent, then remove the finalizer.
//!
//! Nothing is done before every monitor has listed its resource once. Everything is rebuilt from
//! list+watch on start, and every write is conditional (uid precondition or resourceVersion), so
//! the collector can be killed at any point and pick up where it left off. The decisions are
//! pure, in [`graph`] and [`decide`]; this file does the I/O.

pub mod decide;
pub mod graph;
pub mod queue;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams,
    Preconditions,
};
use kube::discovery::Discovery;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use miniorch_api::events::{EventRecorder, EventType, Reporter};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::decide::{OwnerState, Plan, Policy, Resources, Served, resource_key};
use self::graph::{
    Change, Effect, FOREGROUND_FINALIZER, Graph, Identity, ORPHAN_FINALIZER, Observed,
};
use self::queue::WorkQueue;
use super::{ControllerContext, ControllerError, Descriptor};
use crate::metrics::Metrics;

/// The controller's registry entry.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "garbage-collector-controller",
    aliases: &["garbagecollector"],
    enabled_by_default: true,
    start,
};

/// Workers per queue (upstream `--concurrent-gc-syncs`).
const WORKERS: usize = 20;
/// How often resources are rediscovered (upstream's `gc.Sync` period).
const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// How often every node with pending work is queued again, as a safety net.
const SAFETY_PERIOD: Duration = Duration::from_secs(300);
/// Watch events the graph builder may lag behind before monitors wait for it.
const CHANGES_BUFFER: usize = 1024;
/// Owners remembered as absent (upstream's `absentOwnerCache` size).
const ABSENT_OWNERS: usize = 500;
/// Attempts of a conditional patch that keeps meeting concurrent writers.
const CONFLICT_RETRIES: usize = 5;
/// Dependents patched at once when orphaning.
const PARALLEL_ORPHANS: usize = 10;
/// First and last wait between failed initial discoveries.
const DISCOVERY_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// An object's metadata: all the collector reads (kube asks for `PartialObjectMetadata`).
type Meta = PartialObjectMeta<DynamicObject>;

/// Why one attempt failed; the item is retried after its backoff.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// An apiserver call failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// Discovery does not (yet) list the kind a reference names.
    #[error("unable to get REST mapping for {api_version}/{kind}")]
    Mapping {
        /// The reference's apiVersion.
        api_version: String,
        /// The reference's kind.
        kind: String,
    },
    /// A cluster-scoped object names a namespaced owner: it can never be resolved.
    #[error("cluster-scoped objects cannot refer to namespaced owners")]
    NamespacedOwnerOfClusterScoped,
    /// A conditional patch kept conflicting.
    #[error("{0}: still changing after {CONFLICT_RETRIES} attempts; will retry later")]
    Conflicts(String),
    /// Some dependents could not be orphaned.
    #[error("orphaning the dependents of {owner} failed: {errors}")]
    Orphan {
        /// The owner.
        owner: String,
        /// What failed.
        errors: String,
    },
    /// The graph builder stopped (shutting down).
    #[error("the graph builder stopped")]
    Stopped,
}

/// What a worker does with an item once processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Finished with it.
    Done,
    /// Nothing to retry (gone, or an error retrying cannot fix).
    Forget,
}

/// What monitors tell the graph builder, in order.
enum Message {
    Change(Change),
    /// The monitor of this resource has listed everything once.
    Synced(String),
}

/// Owners known not to exist, by [`absent_key`]; the oldest is forgotten first. A uid is never
/// reused, so an entry never turns false.
#[derive(Default)]
struct AbsentOwners {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

impl AbsentOwners {
    fn insert(&mut self, key: String) {
        if self.keys.contains(&key) {
            return;
        }
        if self.order.len() >= ABSENT_OWNERS
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        self.order.push_back(key.clone());
        self.keys.insert(key);
    }

    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// The absent-owner cache key of an identity (version left out: the same object).
fn absent_key(id: &Identity) -> String {
    format!(
        "{}/{}/{}/{}/{}",
        graph::group_of(&id.api_version),
        id.kind,
        id.namespace,
        id.name,
        id.uid
    )
}

/// What a monitor reports of one object; `None` for an object without uid (never served).
fn observed(resource: &ApiResource, obj: &Meta) -> Option<Observed> {
    let m = &obj.metadata;
    let uid = m.uid.clone().filter(|u| !u.is_empty())?;
    Some(Observed {
        identity: Identity {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid,
        },
        owners: m.owner_references.clone().unwrap_or_default(),
        deleting: m.deletion_timestamp.is_some(),
        finalizers: m.finalizers.clone().unwrap_or_default(),
    })
}

struct Gc {
    client: kube::Client,
    graph: Mutex<Graph>,
    absent: Mutex<AbsentOwners>,
    resources: RwLock<Arc<Resources>>,
    deletes: Arc<WorkQueue>,
    orphans: Arc<WorkQueue>,
    changes: mpsc::Sender<Message>,
    /// Monitors that have not listed their resource yet.
    unsynced: Mutex<HashSet<String>>,
    /// True once every monitor started with has listed its resource into the graph.
    synced: watch::Sender<bool>,
    events: EventRecorder,
    metrics: Metrics,
    shutdown: CancellationToken,
}

fn start(
    cx: &mut ControllerContext<'_>,
    token: CancellationToken,
) -> Result<BoxFuture<'static, ()>, ControllerError> {
    let (changes, rx) = mpsc::channel(CHANGES_BUFFER);
    let gc = Arc::new(Gc {
        client: cx.client.clone(),
        graph: Mutex::new(Graph::default()),
        absent: Mutex::new(AbsentOwners::default()),
        resources: RwLock::new(Arc::new(Resources::default())),
        deletes: WorkQueue::new("garbage_collector_attempt_to_delete", token.clone()),
        orphans: WorkQueue::new("garbage_collector_attempt_to_orphan", token.clone()),
        changes,
        unsynced: Mutex::new(HashSet::new()),
        synced: watch::Sender::new(false),
        events: EventRecorder::new(
            cx.client.clone(),
            Reporter {
                component: DESCRIPTOR.name.into(),
                instance: cx.identity.clone(),
            },
        ),
        metrics: cx.metrics.clone(),
        shutdown: token,
    });
    Ok(Box::pin(gc.run(rx)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every resource at every version, and each group's preferred ones.
async fn discover(client: &kube::Client) -> Result<Resources, kube::Error> {
    let discovery = match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => d,
        Err(_) => Discovery::new(client.clone()).run().await?,
    };
    let mut all = Vec::new();
    let mut preferred = Vec::new();
    for g in discovery.groups() {
        for v in g.versions() {
            all.extend(g.versioned_resources(v));
        }
        preferred.extend(g.recommended_resources());
    }
    Ok(Resources::new(all, preferred))
}

/// The running monitors, by [`resource_key`].
#[derive(Default)]
struct Monitors {
    running: HashMap<String, (CancellationToken, JoinHandle<()>)>,
}

impl Monitors {
    /// Starts a monitor for each newly watched resource and stops those no longer listed;
    /// returns the keys started.
    fn sync(&mut self, gc: &Arc<Gc>, resources: &Resources) -> Vec<String> {
        let want: HashMap<String, &ApiResource> = resources
            .watched()
            .iter()
            .map(|r| (resource_key(r), r))
            .collect();
        let mut stopped = Vec::new();
        self.running.retain(|key, (token, _)| {
            let keep = want.contains_key(key);
            if !keep {
                token.cancel();
                stopped.push(key.clone());
            }
            keep
        });
        for key in stopped {
            tracing::info!(
                resource = key,
                "resource no longer served; stopping its monitor"
            );
            gc.mark_synced(&key);
        }
        let mut started = Vec::new();
        for (key, resource) in want {
            if self.running.contains_key(&key) {
                continue;
            }
            let token = gc.shutdown.child_token();
            let handle = tokio::spawn(gc.clone().monitor(resource.clone(), token.clone()));
            self.running.insert(key.clone(), (token, handle));
            started.push(key);
        }
        started.sort();
        started
    }

    async fn stop(self) {
        for (_, (token, handle)) in self.running {
            token.cancel();
            let _ = handle.await;
        }
    }
}

impl Gc {
    fn graph(&self) -> MutexGuard<'_, Graph> {
        lock(&self.graph)
    }

    async fn run(self: Arc<Self>, changes: mpsc::Receiver<Message>) {
        tracing::info!(controller = DESCRIPTOR.name, "controller started");
        let resources = {
            let mut delay = DISCOVERY_RETRY.0;
            loop {
                match discover(&self.client).await {
                    Ok(r) => break r,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "discovery failed");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(DISCOVERY_RETRY.1);
                    }
                }
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.clone().build_graph(changes));
        let mut monitors = Monitors::default();
        let started = monitors.sync(&self, &resources);
        tracing::info!(resources = ?started, "garbage collector watching");
        {
            let mut unsynced = lock(&self.unsynced);
            unsynced.extend(started);
            if unsynced.is_empty() {
                self.synced.send_replace(true);
            }
        }
        *self.resources.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(resources);

        let mut synced = self.synced.subscribe();
        let mut working = false;
        let mut tick = tokio::time::interval(RESYNC_PERIOD);
        tick.tick().await;
        let mut last_safety = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                ok = async { synced.wait_for(|s| *s).await.is_ok() }, if !working => {
                    if !ok {
                        break;
                    }
                    working = true;
                    tracing::info!("all resource monitors have synced; proceeding to collect garbage");
                    for _ in 0..WORKERS {
                        tasks.spawn(self.clone().delete_worker());
                        tasks.spawn(self.clone().orphan_worker());
                    }
                }
                _ = tick.tick() => {
                    match discover(&self.client).await {
                        Ok(resources) => {
                            let started = monitors.sync(&self, &resources);
                            if !started.is_empty() {
                                tracing::info!(resources = ?started, "watching new resources");
                            }
                            *self.resources.write().unwrap_or_else(|p| p.into_inner()) =
                                Arc::new(resources);
                        }
                        Err(e) => tracing::warn!(error = %e, "discovery failed; keeping the resources known"),
                    }
                    if !working {
                        let mut waiting: Vec<String> = lock(&self.unsynced).iter().cloned().collect();
                        waiting.sort();
                        tracing::info!(resources = ?waiting, "waiting for resource monitors to sync");
                    } else if last_safety.elapsed() >= SAFETY_PERIOD {
                        last_safety = tokio::time::Instant::now();
                        let fx = self.graph().resync();
                        self.apply_effects(fx);
                    }
                }
            }
        }
        monitors.stop().await;
        while tasks.join_next().await.is_some() {}
        tracing::info!(controller = DESCRIPTOR.name, "controller stopped");
    }

    /// `key`'s monitor listed everything (or was stopped): once none is left, work starts.
    fn mark_synced(&self, key: &str) {
        let mut unsynced = lock(&self.unsynced);
        if unsynced.remove(key) && unsynced.is_empty() {
            self.synced.send_replace(true);
        }
    }

    /// Sends to the graph builder, unless shutting down.
    async fn send(&self, m: Message) -> Result<(), GcError> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(GcError::Stopped),
            r = self.changes.send(m) => r.map_err(|_| GcError::Stopped),
        }
    }

    /// Watches one resource's metadata; reports every change, and at each (re)list the objects
    /// that went away meanwhile.
    async fn monitor(self: Arc<Self>, resource: ApiResource, token: CancellationToken) {
        let key = resource_key(&resource);
        let api: Api<Meta> = Api::all_with(self.client.clone(), &resource);
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut known: HashMap<String, Identity> = HashMap::new();
        let mut listing: Option<HashMap<String, Identity>> = None;
        let mut synced = false;
        loop {
            let event = tokio::select! {
                _ = token.cancelled() => return,
                e = stream.next() => e,
            };
            let mut out = Vec::new();
            match event {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(resource = key, error = %e, "watch failed; retrying");
                    continue;
                }
                Some(Ok(Event::Init)) => listing = Some(HashMap::new()),
                Some(Ok(Event::InitApply(obj))) => {
                    if let Some(o) = observed(&resource, &obj) {
                        listing
                            .get_or_insert_with(HashMap::new)
                            .insert(o.identity.uid.clone(), o.identity.clone());
                        out.push(Message::Change(Change::Upsert(o)));
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    let listed = listing.take().unwrap_or_default();
                    let mut gone: Vec<Identity> = known
                        .drain()
                        .filter(|(uid, _)| !listed.contains_key(uid))
                        .map(|(_, id)| id)
                        .collect();
                    gone.sort();
                    out.extend(
                        gone.into_iter()
                            .map(|id| Message::Change(Change::Delete(id))),
                    );
                    known = listed;
                    if !synced {
                        synced = true;
                        out.push(Message::Synced(key.clone()));
                    }
                }
                Some(Ok(Event::Apply(obj))) => {
                    if let Some(o) = observed(&resource, &obj) {
                        known.insert(o.identity.uid.clone(), o.identity.clone());
                        out.push(Message::Change(Change::Upsert(o)));
                    }
                }
                Some(Ok(Event::Delete(obj))) => {
                    if let Some(o) = observed(&resource, &obj) {
                        known.remove(&o.identity.uid);
                        out.push(Message::Change(Change::Delete(o.identity)));
                    }
                }
            }
            for m in out {
                if self.send(m).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Applies watch changes to the graph, one at a time and in order.
    async fn build_graph(self: Arc<Self>, mut changes: mpsc::Receiver<Message>) {
        loop {
            let m = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                m = changes.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            match m {
                Message::Change(c) => {
                    let fx = self.graph().apply(c);
                    self.apply_effects(fx);
                }
                Message::Synced(key) => self.mark_synced(&key),
            }
        }
    }

    fn apply_effects(self: &Arc<Self>, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Delete(uid) => self.deletes.add(&uid),
                Effect::DeleteLater(uid) => self.deletes.add_rate_limited(&uid),
                Effect::Orphan(uid) => self.orphans.add(&uid),
                Effect::Absent(id) => lock(&self.absent).insert(absent_key(&id)),
                Effect::InvalidNamespace { dependent, owner } => {
                    tracing::info!(item = %dependent, owner = %owner, "item references an owner but does not match namespaces");
                    let gc = self.clone();
                    tokio::spawn(
                        async move { gc.report_invalid_namespace(&dependent, &owner).await },
                    );
                }
            }
        }
    }

    async fn report_invalid_namespace(&self, dependent: &Identity, owner: &Identity) {
        let regarding = ObjectReference {
            api_version: Some(dependent.api_version.clone()),
            kind: Some(dependent.kind.clone()),
            namespace: (!dependent.namespace.is_empty()).then(|| dependent.namespace.clone()),
            name: Some(dependent.name.clone()),
            uid: Some(dependent.uid.clone()),
            ..Default::default()
        };
        let message = format!(
            "ownerRef {owner} does not exist in namespace {:?}",
            dependent.namespace
        );
        self.events
            .record(
                &regarding,
                EventType::Warning,
                "OwnerRefInvalidNamespace",
                "",
                &message,
            )
            .await;
    }

    async fn delete_worker(self: Arc<Self>) {
        while let Some(uid) = self.deletes.get().await {
            let timer = self.metrics.sync_timer(DESCRIPTOR.name);
            match self.attempt_to_delete(&uid).await {
                Ok(outcome) => {
                    timer.success();
                    let virtual_node = self.graph().node(&uid).is_some_and(|n| !n.observed);
                    if outcome == Outcome::Done && virtual_node {
                        // An owner the API has but no monitor has shown yet: look again later
                        // (it may also have come and gone during a relist).
                        self.deletes.add_rate_limited(&uid);
                    } else {
                        self.deletes.forget(&uid);
                    }
                }
                Err(e @ GcError::Mapping { .. }) => {
                    tracing::debug!(uid, error = %e, "error syncing item");
                    self.deletes.add_rate_limited(&uid);
                }
                Err(e) => {
                    tracing::warn!(uid, error = %e, "error syncing item");
                    self.deletes.add_rate_limited(&uid);
                }
            }
            self.deletes.done(&uid);
        }
    }

    async fn orphan_worker(self: Arc<Self>) {
        while let Some(uid) = self.orphans.get().await {
            let timer = self.metrics.sync_timer(DESCRIPTOR.name);
            match self.attempt_to_orphan(&uid).await {
                Ok(()) => {
                    timer.success();
                    self.orphans.forget(&uid);
                }
                Err(e) => {
                    tracing::warn!(uid, error = %e, "orphaning failed");
                    self.orphans.add_rate_limited(&uid);
                }
            }
            self.orphans.done(&uid);
        }
    }

    fn resolve(&self, api_version: &str, kind: &str) -> Result<Served, GcError> {
        let resources = self
            .resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        resources
            .resolve(api_version, kind)
            .cloned()
            .ok_or_else(|| GcError::Mapping {
                api_version: api_version.into(),
                kind: kind.into(),
            })
    }

    /// The API of `id`'s resource, in its namespace when namespaced.
    fn api(&self, id: &Identity) -> Result<Api<Meta>, GcError> {
        let served = self.resolve(&id.api_version, &id.kind)?;
        if !served.namespaced {
            return Ok(Api::all_with(self.client.clone(), &served.resource));
        }
        if id.namespace.is_empty() {
            // Only a cluster-scoped dependent names a namespaced owner without a namespace.
            return Err(GcError::NamespacedOwnerOfClusterScoped);
        }
        Ok(Api::namespaced_with(
            self.client.clone(),
            &id.namespace,
            &served.resource,
        ))
    }

    /// The live object at `id`'s coordinates, whatever its uid.
    async fn get(&self, id: &Identity) -> Result<Option<Meta>, GcError> {
        let api = self.api(id)?;
        if id.name.is_empty() {
            return Ok(None);
        }
        Ok(api.get_opt(&id.name).await?)
    }

    /// upstream `attemptToDeleteItem`.
    async fn attempt_to_delete(self: &Arc<Self>, uid: &str) -> Result<Outcome, GcError> {
        let Some(item) = self.graph().node(uid).cloned() else {
            return Ok(Outcome::Forget);
        };
        // Being deleted is a one-way trip: its dependents are handled once it is gone.
        if item.being_deleted && !item.deleting_dependents {
            return Ok(Outcome::Done);
        }
        let latest = match self.get(&item.identity).await {
            Err(e @ GcError::NamespacedOwnerOfClusterScoped) => {
                tracing::info!(item = %item.identity, error = %e, "not processing item");
                return Ok(Outcome::Forget);
            }
            Err(e) => return Err(e),
            Ok(Some(m)) if m.metadata.uid.as_deref() == Some(uid) => m,
            Ok(_) => {
                // Not there (or another object of that name): the graph learns it is absent.
                tracing::debug!(item = %item.identity, "item not found; generating a virtual delete event");
                self.send(Message::Change(Change::VirtualDelete(
                    item.identity.clone(),
                )))
                .await?;
                return Ok(Outcome::Forget);
            }
        };
        if item.deleting_dependents {
            return self.process_deleting_dependents(&item.identity).await;
        }
        let references = latest.metadata.owner_references.clone().unwrap_or_default();
        if references.is_empty() {
            return Ok(Outcome::Done);
        }
        let mut classified = Vec::with_capacity(references.len());
        for r in references {
            let state = match self.classify(&r, &item.identity).await {
                Err(e @ GcError::NamespacedOwnerOfClusterScoped) => {
                    tracing::info!(item = %item.identity, error = %e, "not processing item");
                    return Ok(Outcome::Forget);
                }
                other => other?,
            };
            classified.push((r, state));
        }
        let (has_dependents, a_dependent_deletes) = {
            let g = self.graph();
            (
                g.node(uid).is_some_and(|n| !n.dependents.is_empty()),
                g.a_dependent_deletes_its_dependents(uid),
            )
        };
        let finalizers = latest.metadata.finalizers.clone().unwrap_or_default();
        match decide::plan(
            &classified,
            &finalizers,
            has_dependents,
            a_dependent_deletes,
        ) {
            Plan::Keep => {}
            Plan::RemoveReferences(uids) => {
                tracing::info!(item = %item.identity, owners = ?uids, "item has at least one existing owner; removing references to the others");
                self.update(&item.identity, |m| {
                    let refs = m.owner_references.as_deref().unwrap_or_default();
                    let kept = decide::without_references(refs, &uids)?;
                    Some(decide::references_patch(
                        &kept,
                        m.resource_version.as_deref()?,
                    ))
                })
                .await?;
            }
            Plan::Delete { policy, unblock } => {
                if unblock {
                    tracing::info!(item = %item.identity, "an owner and a dependent of item both delete in the foreground; making its references non-blocking to avoid a cycle");
                    self.update(&item.identity, |m| {
                        let refs = m.owner_references.as_deref().unwrap_or_default();
                        let un = decide::unblocked(refs)?;
                        Some(decide::references_patch(
                            &un,
                            m.resource_version.as_deref()?,
                        ))
                    })
                    .await?;
                }
                tracing::info!(item = %item.identity, ?policy, "deleting item");
                self.delete(&item.identity, policy).await?;
            }
        }
        Ok(Outcome::Done)
    }

    /// An owner deleting in the foreground: waits for its blocking dependents, then loses the
    /// finalizer.
    async fn process_deleting_dependents(&self, owner: &Identity) -> Result<Outcome, GcError> {
        let blocking = self.graph().blocking_dependents(&owner.uid);
        if blocking.is_empty() {
            tracing::info!(item = %owner, "no dependent blocks it any more; removing the foregroundDeletion finalizer");
            self.remove_finalizer(owner, FOREGROUND_FINALIZER).await?;
            return Ok(Outcome::Done);
        }
        for (dep, deleting_its_own) in blocking {
            if !deleting_its_own {
                self.deletes.add(&dep);
            }
        }
        Ok(Outcome::Done)
    }

    /// Where one owner reference of `item` stands, asking the API unless the owner is known
    /// to be absent (upstream `isDangling`).
    async fn classify(&self, r: &OwnerReference, item: &Identity) -> Result<OwnerState, GcError> {
        if r.name.is_empty() || r.uid.is_empty() {
            return Ok(OwnerState::Dangling);
        }
        let cluster_key = absent_key(&Identity::of_reference(r, ""));
        let namespaced_key = absent_key(&Identity::of_reference(r, &item.namespace));
        {
            let absent = lock(&self.absent);
            if absent.contains(&cluster_key) || absent.contains(&namespaced_key) {
                return Ok(OwnerState::Dangling);
            }
        }
        let owner = Identity::of_reference(r, &item.namespace);
        let namespaced = self.resolve(&r.api_version, &r.kind)?.namespaced;
        let found = self.get(&owner).await?;
        let state = decide::classify(r, found.as_ref().map(|m| &m.metadata));
        if state == OwnerState::Dangling {
            lock(&self.absent).insert(if namespaced {
                namespaced_key
            } else {
                cluster_key
            });
        }
        Ok(state)
    }

    /// Deletes `id` with `policy`, only if it is still the object with that uid.
    async fn delete(&self, id: &Identity, policy: Policy) -> Result<(), GcError> {
        let params = DeleteParams {
            propagation_policy: Some(policy.propagation()),
            preconditions: Some(Preconditions {
                uid: Some(id.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api(id)?.delete(&id.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Patches the live object `id` with what `patch` makes of its metadata (a conditional
    /// merge patch; `None`: nothing to change), retrying on conflicts. Gone, or replaced by
    /// another object of that name: nothing to do.
    async fn update(
        &self,
        id: &Identity,
        patch: impl Fn(&ObjectMeta) -> Option<Value>,
    ) -> Result<(), GcError> {
        let api = self.api(id)?;
        for _ in 0..CONFLICT_RETRIES {
            let Some(latest) = self.get(id).await? else {
                return Ok(());
            };
            if latest.metadata.uid.as_deref() != Some(id.uid.as_str()) {
                return Ok(());
            }
            let Some(body) = patch(&latest.metadata) else {
                return Ok(());
            };
            match api
                .patch(&id.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(GcError::Conflicts(id.to_string()))
    }

    async fn remove_finalizer(&self, id: &Identity, finalizer: &str) -> Result<(), GcError> {
        self.update(id, |m| {
            let f =
                decide::without_finalizer(m.finalizers.as_deref().unwrap_or_default(), finalizer)?;
            Some(decide::finalizers_patch(&f, m.resource_version.as_deref()?))
        })
        .await
    }

    /// upstream `attemptToOrphanWorker`: every dependent loses its reference to the owner,
    /// then the owner loses the `orphan` finalizer.
    async fn attempt_to_orphan(&self, uid: &str) -> Result<(), GcError> {
        let (owner, dependents) = {
            let g = self.graph();
            let Some(n) = g.node(uid) else {
                return Ok(());
            };
            (n.identity.clone(), g.dependents(uid))
        };
        let count = dependents.len();
        let owner_uid = vec![owner.uid.clone()];
        let failures: Vec<String> = stream::iter(dependents)
            .map(|d| {
                let owner_uid = &owner_uid;
                async move {
                    let r = self
                        .update(&d, |m| {
                            let refs = m.owner_references.as_deref().unwrap_or_default();
                            let kept = decide::without_references(refs, owner_uid)?;
                            Some(decide::references_patch(
                                &kept,
                                m.resource_version.as_deref()?,
                            ))
                        })
                        .await;
                    r.err().map(|e| format!("{d}: {e}"))
                }
            })
            .buffer_unordered(PARALLEL_ORPHANS)
            .filter_map(|e| async move { e })
            .collect()
            .await;
        if !failures.is_empty() {
            return Err(GcError::Orphan {
                owner: owner.to_string(),
                errors: failures.join("; "),
            });
        }
        tracing::info!(item = %owner, dependents = count, "dependents orphaned; removing the orphan finalizer");
        self.remove_finalizer(&owner, ORPHAN_FINALIZER).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_owners_are_bounded_and_forget_the_oldest() {
        let mut a = AbsentOwners::default();
        for i in 0..ABSENT_OWNERS + 5 {
            a.insert(format!("k{i}"));
        }
        a.insert("k100".into());
        assert_eq!(a.keys.len(), ABSENT_OWNERS);
        assert_eq!(a.order.len(), ABSENT_OWNERS);
        assert!(!a.contains("k0") && !a.contains("k4"));
        assert!(a.contains("k5") && a.contains(&format!("k{}", ABSENT_OWNERS + 4)));
    }

    #[test]
    fn absent_keys_ignore_the_version() {
        let id = |v: &str| Identity {
            api_version: v.into(),
            kind: "HorizontalPodAutoscaler".into(),
            namespace: "ns".into(),
            name: "web".into(),
            uid: "u".into(),
        };
        assert_eq!(
            absent_key(&id("autoscaling/v1")),
            absent_key(&id("autoscaling/v2"))
        );
        assert_eq!(
            absent_key(&id("autoscaling/v1")),
            "autoscaling/HorizontalPodAutoscaler/ns/web/u"
        );
    }

    #[test]
    fn monitors_report_objects_with_their_resource_coordinates() {
        let resource = ApiResource {
            group: "apps".into(),
            version: "v1".into(),
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            plural: "replicasets".into(),
        };
        let obj: Meta = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u1",
                         "deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["foregroundDeletion"],
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                              "uid": "u0", "blockOwnerDeletion": true, "controller": true}]},
            "spec": {"replicas": 2}
        }))
        .unwrap();
        let o = observed(&resource, &obj).unwrap();
        assert_eq!(
            o.identity.to_string(),
            "[apps/v1/ReplicaSet, namespace: default, name: web-1, uid: u1]"
        );
        assert!(o.deleting);
        assert_eq!(o.finalizers, ["foregroundDeletion"]);
        assert_eq!(o.owners[0].uid, "u0");
        let no_uid: Meta =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert!(observed(&resource, &no_uid).is_none());
    }
}
