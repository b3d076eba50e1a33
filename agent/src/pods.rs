//! Running the pods bound to this node: a watch on `spec.nodeName=<node>` feeds a cache of
//! pods, runtime change notices and a periodic resync wake per-pod workers, and each worker
//! loops "observe → [`sync_pod`] → act → observe → [`pod_status`] → write if changed".
//!
//! One worker per pod uid serialises everything done to that pod; pods proceed in parallel.
//! Nothing is killed before the first complete list of pods from the API, so a restarted agent
//! adopts what it finds instead of tearing it down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::{Recorder, pod_ref};
use crate::runtime::{ImageSource, ObservedPod, ObservedSandbox, ObservedState, Runtime};
use crate::spec::{self, PodFacts};
use crate::status::{StartFailure, StatusInputs, pod_status};
use crate::sync::{Action, sync_pod};

/// Safety-net resync: every pod is looked at at least this often.
pub const RESYNC: Duration = Duration::from_secs(10);
/// Wait after a failed runtime or API call before trying again.
const RETRY: Duration = Duration::from_secs(2);
/// Runtime change notices queued at most; more are dropped (the resync catches up).
const CHANGE_QUEUE: usize = 1024;

/// Why an API write failed, as far as the worker cares.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The pod is gone (or is another pod now).
    #[error("the pod is gone")]
    Gone,
    /// Anything else; retried later.
    #[error("{0}")]
    Other(String),
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 404 || s.code == 409 => ApiError::Gone,
            _ => ApiError::Other(e.to_string()),
        }
    }
}

/// The two writes a worker makes to the API, behind a trait so workers can be tested against
/// a recording fake.
#[async_trait::async_trait]
pub trait PodApi: Send + Sync + 'static {
    /// Writes `status` as the pod's status and returns the pod as stored.
    async fn patch_status(&self, pod: &Pod, status: &PodStatus) -> Result<Pod, ApiError>;
    /// Deletes the pod for good (grace period 0, only if its uid still matches).
    async fn delete(&self, pod: &Pod) -> Result<(), ApiError>;
}

/// [`PodApi`] over the apiserver.
pub struct KubePodApi(pub kube::Client);

#[async_trait::async_trait]
impl PodApi for KubePodApi {
    async fn patch_status(&self, pod: &Pod, status: &PodStatus) -> Result<Pod, ApiError> {
        let api: Api<Pod> = Api::namespaced(
            self.0.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        // The uid makes the patch fail on a pod that was replaced by one of the same name.
        let patch = serde_json::json!({
            "metadata": { "uid": pod.metadata.uid },
            "status": status,
        });
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        Ok(api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?)
    }

    async fn delete(&self, pod: &Pod) -> Result<(), ApiError> {
        let api: Api<Pod> = Api::namespaced(
            self.0.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match ApiError::from(e) {
                // Already gone is what we wanted.
                ApiError::Gone => Ok(()),
                other => Err(other),
            },
        }
    }
}

/// What a worker knows about the node.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// Node IP.
    pub ip: String,
    /// Allocatable CPU (downward API default).
    pub cpu_millis: i64,
    /// Allocatable memory (downward API default).
    pub memory_bytes: i64,
}

/// The pod side of the agent.
pub struct PodManager {
    runtime: Arc<dyn Runtime>,
    api: Arc<dyn PodApi>,
    node: NodeIdentity,
    recorder: Recorder,
    state: Mutex<ManagerState>,
}

#[derive(Default)]
struct ManagerState {
    /// Pods bound here, by uid, as last seen on the watch.
    pods: HashMap<String, Arc<Pod>>,
    /// Buffer of a re-list in progress.
    relist: Option<HashMap<String, Arc<Pod>>>,
    /// Running workers, by pod uid.
    workers: HashMap<String, Arc<Notify>>,
    /// Whether a complete list of the node's pods has been seen.
    synced: bool,
}

/// What a worker does after one sync.
enum Next {
    /// The pod is gone from the API and the runtime.
    Exit,
    /// Sleep until notified or this long passes.
    Wait(Duration),
}

/// What a worker remembers between syncs.
struct WorkerState {
    uid: String,
    /// The freshest copy of the pod known (the watch's, or what our own write returned).
    latest: Option<Arc<Pod>>,
    /// Why containers could not start, by name.
    failures: BTreeMap<String, StartFailure>,
}

fn resource_version(pod: &Pod) -> Option<u64> {
    pod.metadata.resource_version.as_deref()?.parse().ok()
}

impl PodManager {
    /// A manager for `node`.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        api: Arc<dyn PodApi>,
        node: NodeIdentity,
        recorder: Recorder,
    ) -> Arc<Self> {
        Arc::new(PodManager {
            runtime,
            api,
            node,
            recorder,
            state: Mutex::new(ManagerState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ManagerState> {
        // Every update is a single insert or remove, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches the node's pods and runs them until `shutdown`.
    pub async fn run(self: Arc<Self>, client: kube::Client, shutdown: CancellationToken) {
        let pods: Api<Pod> = Api::all(client);
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node.name));
        let mut events = watcher(pods, config).default_backoff().boxed();
        let (changes_tx, mut changes) = tokio::sync::mpsc::channel::<String>(CHANGE_QUEUE);
        tokio::spawn(forward_changes(
            self.runtime.clone(),
            changes_tx,
            shutdown.clone(),
        ));
        // The first complete list wakes every pod already; the resync follows a period later.
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        let listed = matches!(event, watcher::Event::InitDone);
                        self.on_watch_event(event, &shutdown);
                        // A complete list tells which of the runtime's pods are orphans.
                        if listed {
                            self.collect_orphans(&shutdown).await;
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                    None => return,
                },
                Some(uid) = changes.recv() => self.wake(&uid, &shutdown),
                _ = resync.tick() => self.resync(&shutdown).await,
            }
        }
    }

    /// Applies one watch event to the cache and wakes the workers concerned.
    pub fn on_watch_event(
        self: &Arc<Self>,
        event: watcher::Event<Pod>,
        shutdown: &CancellationToken,
    ) {
        let mut touched = Vec::new();
        {
            let mut state = self.lock();
            match event {
                watcher::Event::Init => state.relist = Some(HashMap::new()),
                watcher::Event::InitApply(pod) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        state
                            .relist
                            .get_or_insert_with(HashMap::new)
                            .insert(uid, Arc::new(pod));
                    }
                }
                watcher::Event::InitDone => {
                    let fresh = state.relist.take().unwrap_or_default();
                    touched.extend(state.pods.keys().cloned());
                    touched.extend(fresh.keys().cloned());
                    state.pods = fresh;
                    state.synced = true;
                }
                watcher::Event::Apply(pod) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        state.pods.insert(uid.clone(), Arc::new(pod));
                        touched.push(uid);
                    }
                }
                watcher::Event::Delete(pod) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        state.pods.remove(&uid);
                        touched.push(uid);
                    }
                }
            }
        }
        for uid in touched {
            self.wake(&uid, shutdown);
        }
    }

    /// Wakes (or starts) the worker of pod `uid`.
    fn wake(self: &Arc<Self>, uid: &str, shutdown: &CancellationToken) {
        let notify = {
            let mut state = self.lock();
            if let Some(notify) = state.workers.get(uid) {
                notify.clone()
            } else {
                let notify = Arc::new(Notify::new());
                state.workers.insert(uid.to_string(), notify.clone());
                tokio::spawn(
                    self.clone()
                        .work(uid.to_string(), notify.clone(), shutdown.clone()),
                );
                notify
            }
        };
        notify.notify_one();
    }

    /// Wakes every pod, and starts workers for runtime pods the API no longer has.
    async fn resync(self: &Arc<Self>, shutdown: &CancellationToken) {
        let (uids, synced): (Vec<String>, bool) = {
            let state = self.lock();
            (state.pods.keys().cloned().collect(), state.synced)
        };
        for uid in &uids {
            self.wake(uid, shutdown);
        }
        if synced {
            self.collect_orphans(shutdown).await;
        }
    }

    /// Starts workers for the runtime's pods the API does not have (they remove them).
    async fn collect_orphans(self: &Arc<Self>, shutdown: &CancellationToken) {
        match self.runtime.list_pods().await {
            Ok(found) => {
                let orphans: Vec<String> = {
                    let state = self.lock();
                    found
                        .into_iter()
                        .map(|p| p.uid)
                        .filter(|uid| !state.pods.contains_key(uid))
                        .collect()
                };
                for uid in orphans {
                    self.wake(&uid, shutdown);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the runtime's pods"),
        }
    }

    /// Removes a worker that found nothing left to do, unless its pod came back meanwhile.
    fn retire(&self, uid: &str) -> bool {
        let mut state = self.lock();
        if state.pods.contains_key(uid) {
            return false;
        }
        state.workers.remove(uid);
        true
    }

    /// The number of running workers.
    pub fn workers(&self) -> usize {
        self.lock().workers.len()
    }

    /// The pod `namespace/name` bound here, as last seen (the agent API looks pods up by name).
    pub fn pod_named(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.lock()
            .pods
            .values()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }

    async fn work(self: Arc<Self>, uid: String, notify: Arc<Notify>, shutdown: CancellationToken) {
        let mut worker = WorkerState {
            uid: uid.clone(),
            latest: None,
            failures: BTreeMap::new(),
        };
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let wait = match self.sync(&mut worker).await {
                Next::Exit => {
                    if self.retire(&uid) {
                        return;
                    }
                    continue;
                }
                Next::Wait(wait) => wait,
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass over pod `worker.uid`.
    async fn sync(&self, worker: &mut WorkerState) -> Next {
        let (cached, synced) = {
            let state = self.lock();
            (state.pods.get(&worker.uid).cloned(), state.synced)
        };
        // Our own status write may be newer than what the watch has delivered so far.
        let pod = match (cached, worker.latest.take()) {
            (Some(c), Some(l)) if matches!((resource_version(&l), resource_version(&c)), (Some(ours), Some(watched)) if ours > watched) => {
                Some(l)
            }
            (c, _) => c,
        };
        let observed = match self.runtime.observe_pod(&worker.uid).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(uid = %worker.uid, error = %e, "cannot observe pod");
                worker.latest = pod;
                return Next::Wait(RETRY);
            }
        };
        let Some(pod) = pod else {
            return self.sync_gone(worker, observed, synced).await;
        };
        worker.latest = Some(pod.clone());
        let now = Timestamp::now();
        let plan = sync_pod(&pod, observed.as_ref(), now);
        let started = std::time::Instant::now();
        if !plan.actions.is_empty() {
            tracing::debug!(pod = ?pod.metadata.name, actions = ?plan.actions, "syncing pod");
        }
        let mut acted = false;
        let mut deleted = false;
        let mut requeue = plan.requeue_after;
        for (name, init, _) in crate::sync::backing_off(&pod, observed.as_ref(), now) {
            let message = format!(
                "Back-off restarting failed container {name} in pod {}_{}({})",
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                worker.uid
            );
            self.recorder
                .warning(&pod_ref(&pod, Some((&name, init))), "BackOff", message);
        }
        let mut sandbox = observed.as_ref().and_then(|o| o.sandbox().cloned());
        for action in &plan.actions {
            acted = true;
            let ok = match action {
                Action::CreateSandbox { attempt } => {
                    match self.create_sandbox(&pod, *attempt).await {
                        Some(s) => {
                            sandbox = Some(s);
                            true
                        }
                        None => false,
                    }
                }
                Action::StartContainer {
                    name,
                    init,
                    attempt,
                } => {
                    if let Some(wait) = self
                        .start_container(worker, &pod, sandbox.as_ref(), name, *init, *attempt)
                        .await
                    {
                        requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                    }
                    true
                }
                Action::RemoveContainer { id } => {
                    if let Err(e) = self.runtime.remove_container(id).await {
                        tracing::warn!(pod = ?pod.metadata.name, error = %e, "cannot remove an old container");
                    }
                    true
                }
                Action::StopPod { grace } => {
                    self.killing_events(&pod, observed.as_ref());
                    self.report(
                        &pod,
                        self.runtime.stop_pod(&worker.uid, *grace).await,
                        "stop",
                    )
                }
                Action::KillPod { grace } => {
                    if pod.metadata.deletion_timestamp.is_none() {
                        self.recorder.normal(
                            &pod_ref(&pod, None),
                            "SandboxChanged",
                            "Pod sandbox changed, it will be killed and re-created.",
                        );
                    }
                    self.killing_events(&pod, observed.as_ref());
                    self.report(
                        &pod,
                        self.runtime.kill_pod(&worker.uid, *grace).await,
                        "kill",
                    )
                }
                Action::DeletePod => match self.api.delete(&pod).await {
                    Ok(()) => {
                        deleted = true;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(pod = ?pod.metadata.name, error = %e, "cannot delete the pod");
                        false
                    }
                },
            };
            if !ok {
                return Next::Wait(RETRY.max(plan.requeue_after.unwrap_or_default()));
            }
        }
        if deleted || pod.metadata.deletion_timestamp.is_some() {
            // The watch's Delete event brings the worker back to find nothing left.
            return Next::Wait(RESYNC);
        }
        let observed = if acted {
            match self.runtime.observe_pod(&worker.uid).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(uid = %worker.uid, error = %e, "cannot observe pod");
                    return Next::Wait(RETRY);
                }
            }
        } else {
            observed
        };
        // A container that runs again has overcome its last start failure.
        if let Some(o) = &observed {
            worker.failures.retain(|name, _| {
                !o.attempts(name)
                    .first()
                    .is_some_and(|c| matches!(c.state, ObservedState::Running { .. }))
            });
        }
        let inputs = StatusInputs {
            host_ip: &self.node.ip,
            failures: &worker.failures,
            now,
        };
        let status = pod_status(&pod, observed.as_ref(), &inputs);
        if pod.status.as_ref() != Some(&status) {
            let acting = started.elapsed();
            match self.api.patch_status(&pod, &status).await {
                Ok(stored) => {
                    tracing::debug!(
                        pod = ?pod.metadata.name,
                        phase = ?status.phase,
                        ?acting,
                        writing = ?(started.elapsed() - acting),
                        "pod status written"
                    );
                    worker.latest = Some(Arc::new(stored));
                }
                Err(ApiError::Gone) => return Next::Wait(RESYNC),
                Err(e) => {
                    tracing::warn!(pod = ?pod.metadata.name, error = %e, "cannot write the pod status");
                    return Next::Wait(RETRY);
                }
            }
        }
        Next::Wait(requeue.unwrap_or(RESYNC).min(RESYNC))
    }

    /// A pod the API no longer has: its containers go, gently.
    async fn sync_gone(
        &self,
        worker: &mut WorkerState,
        observed: Option<ObservedPod>,
        synced: bool,
    ) -> Next {
        let Some(observed) = observed else {
            return Next::Exit;
        };
        // Before the first complete list, "not in the cache" means "not listed yet".
        if !synced {
            return Next::Wait(RESYNC);
        }
        let grace = observed.grace_period.unwrap_or(spec::DEFAULT_GRACE_PERIOD);
        tracing::info!(pod = %format!("{}/{}", observed.namespace, observed.name), uid = %worker.uid, "removing the containers of a pod the API no longer has");
        match self.runtime.kill_pod(&worker.uid, grace).await {
            Ok(()) => Next::Wait(Duration::ZERO),
            Err(e) => {
                tracing::warn!(uid = %worker.uid, error = %e, "cannot remove the containers of a deleted pod");
                Next::Wait(RETRY)
            }
        }
    }

    fn report(
        &self,
        pod: &Pod,
        result: Result<(), crate::runtime::RuntimeError>,
        what: &str,
    ) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(pod = ?pod.metadata.name, error = %e, "cannot {what} the pod");
                self.recorder.warning(
                    &pod_ref(pod, None),
                    "FailedKillPod",
                    format!("error killing pod: {e}"),
                );
                false
            }
        }
    }

    fn killing_events(&self, pod: &Pod, observed: Option<&ObservedPod>) {
        let Some(observed) = observed else { return };
        for c in &observed.containers {
            if matches!(c.state, ObservedState::Running { .. }) {
                let init = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.init_containers.iter().flatten())
                    .any(|i| i.name == c.name);
                self.recorder.normal(
                    &pod_ref(pod, Some((&c.name, init))),
                    "Killing",
                    format!("Stopping container {}", c.name),
                );
            }
        }
    }

    async fn create_sandbox(&self, pod: &Pod, attempt: u32) -> Option<ObservedSandbox> {
        let plan = spec::sandbox_plan(pod);
        match self.runtime.run_sandbox(pod, &plan, attempt).await {
            Ok(sandbox) => Some(sandbox),
            Err(e) => {
                tracing::warn!(pod = ?pod.metadata.name, error = %e, "cannot create the pod sandbox");
                self.recorder.warning(
                    &pod_ref(pod, None),
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e}"),
                );
                None
            }
        }
    }

    async fn start_container(
        &self,
        worker: &mut WorkerState,
        pod: &Pod,
        sandbox: Option<&ObservedSandbox>,
        name: &str,
        init: bool,
        attempt: u32,
    ) -> Option<Duration> {
        let spec = pod.spec.as_ref()?;
        let container = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == name)?;
        let object = pod_ref(pod, Some((name, init)));
        let sandbox = sandbox?;
        let now = Timestamp::now();
        // A failed pull is not retried before its back-off ends.
        if let Some(failure) = worker.failures.get_mut(name)
            && let Some(left) = failure.pull_retry_in(now)
        {
            let image = container.image.as_deref().unwrap_or_default();
            failure.reason = "ImagePullBackOff".into();
            failure.message = format!("Back-off pulling image \"{image}\"");
            self.recorder
                .normal(&object, "BackOff", failure.message.clone());
            return Some(left);
        }
        let count = worker.failures.get(name).map_or(0, |f| f.count) + 1;
        let facts = PodFacts {
            pod_ip: sandbox.ip.as_deref(),
            host_ip: &self.node.ip,
            node_cpu_millis: self.node.cpu_millis,
            node_memory_bytes: self.node.memory_bytes,
        };
        let plan = match spec::container_plan(pod, container, &facts) {
            Ok(plan) => plan,
            Err(e) => {
                self.recorder
                    .warning(&object, "Failed", format!("Error: {e}"));
                worker.failures.insert(
                    name.to_string(),
                    StartFailure {
                        reason: "CreateContainerConfigError".into(),
                        message: e.to_string(),
                        count,
                        at: now,
                    },
                );
                return None;
            }
        };
        match self
            .runtime
            .start_container(pod, sandbox, &plan, attempt)
            .await
        {
            Ok(started) => {
                worker.failures.remove(name);
                let image = &plan.image;
                match started.image {
                    ImageSource::Present | ImageSource::BuiltLocally => self.recorder.normal(
                        &object,
                        "Pulled",
                        format!("Container image \"{image}\" already present on machine"),
                    ),
                    ImageSource::Pulled => {
                        self.recorder.normal(&object, "Pulled", format!("Successfully pulled image \"{image}\""))
                    }
                    ImageSource::LocalAfterFailedPull { error } => self.recorder.warning(
                        &object,
                        "Pulled",
                        format!("Pulling image \"{image}\" failed ({error}); using the image already present on machine"),
                    ),
                }
                self.recorder
                    .normal(&object, "Created", format!("Created container: {name}"));
                self.recorder
                    .normal(&object, "Started", format!("Started container {name}"));
            }
            Err(e) => {
                tracing::info!(pod = ?pod.metadata.name, container = name, error = %e, "container did not start");
                self.recorder
                    .warning(&object, "Failed", format!("Error: {}: {e}", e.reason()));
                worker.failures.insert(
                    name.to_string(),
                    StartFailure {
                        reason: e.reason().into(),
                        message: e.to_string(),
                        count,
                        at: now,
                    },
                );
            }
        }
        None
    }
}

/// Forwards the runtime's change notices, subscribing again whenever the stream breaks.
async fn forward_changes(
    runtime: Arc<dyn Runtime>,
    tx: tokio::sync::mpsc::Sender<String>,
    shutdown: CancellationToken,
) {
    loop {
        let mut changes = runtime.changes();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                item = changes.next() => match item {
                    Some(Ok(uid)) => {
                        tracing::debug!(%uid, "runtime change");
                        // Full: drop it; the periodic resync looks at every pod anyway.
                        let _ = tx.try_send(uid);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "runtime events broke; subscribing again");
                        break;
                    }
                    None => break,
                },
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::sync::tests::{PodExt, pod, running, sandbox};
    use k8s_openapi::api::core::v1::PodStatus;

    /// Records status writes and deletions; each write bumps the resourceVersion.
    #[derive(Default)]
    struct FakeApi {
        written: Mutex<Vec<(String, PodStatus)>>,
        deleted: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl PodApi for FakeApi {
        async fn patch_status(&self, pod: &Pod, status: &PodStatus) -> Result<Pod, ApiError> {
            let mut written = self.written.lock().unwrap();
            written.push((
                pod.metadata.name.clone().unwrap_or_default(),
                status.clone(),
            ));
            let mut stored = pod.clone();
            stored.status = Some(status.clone());
            stored.metadata.resource_version = Some((100 + written.len()).to_string());
            Ok(stored)
        }
        async fn delete(&self, pod: &Pod) -> Result<(), ApiError> {
            self.deleted
                .lock()
                .unwrap()
                .push(pod.metadata.name.clone().unwrap_or_default());
            Ok(())
        }
    }

    impl FakeApi {
        fn last_phase(&self) -> Option<String> {
            self.written
                .lock()
                .unwrap()
                .last()
                .and_then(|(_, s)| s.phase.clone())
        }
        fn last_waiting_reason(&self) -> Option<String> {
            let written = self.written.lock().unwrap();
            let (_, status) = written.last()?;
            status.container_statuses.as_ref()?[0]
                .state
                .as_ref()?
                .waiting
                .as_ref()?
                .reason
                .clone()
        }
    }

    struct Harness {
        runtime: Arc<FakeRuntime>,
        api: Arc<FakeApi>,
        manager: Arc<PodManager>,
        shutdown: CancellationToken,
    }

    fn harness(runtime: FakeRuntime) -> Harness {
        let runtime = Arc::new(runtime);
        let api = Arc::new(FakeApi::default());
        let (recorder, _events) = Recorder::channel();
        let node = NodeIdentity {
            name: "n1".into(),
            ip: "192.168.1.10".into(),
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
        };
        let manager = PodManager::new(runtime.clone(), api.clone(), node, recorder);
        Harness {
            runtime,
            api,
            manager,
            shutdown: CancellationToken::new(),
        }
    }

    impl Harness {
        fn list(&self, pods: Vec<Pod>) {
            self.manager
                .on_watch_event(watcher::Event::Init, &self.shutdown);
            for p in pods {
                self.manager
                    .on_watch_event(watcher::Event::InitApply(p), &self.shutdown);
            }
            self.manager
                .on_watch_event(watcher::Event::InitDone, &self.shutdown);
        }

        /// Waits (bounded, not timed) until `done` holds.
        async fn until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
            for _ in 0..500 {
                if done(self) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!(
                "gave up waiting for {what}; calls: {:?}",
                self.runtime.calls()
            );
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    #[tokio::test]
    async fn a_bound_pod_runs_reports_and_is_deleted_gracefully() {
        let h = harness(FakeRuntime::new());
        let mut p = pod(&["a", "b"]);
        p.metadata.resource_version = Some("1".into());
        h.list(vec![p.clone()]);
        h.until("Running status", |h| {
            h.api.last_phase().as_deref() == Some("Running")
        })
        .await;
        assert_eq!(
            h.runtime.calls(),
            vec![
                "run_sandbox web-1 0",
                "start_container web-1 a 0",
                "start_container web-1 b 0"
            ]
        );
        let (_, status) = h.api.written.lock().unwrap().last().cloned().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.88.0.1"));
        assert_eq!(status.host_ip.as_deref(), Some("192.168.1.10"));

        // Nothing changes on a resync: no runtime call, no write.
        let writes = h.api.written.lock().unwrap().len();
        h.runtime.clear_calls();
        h.manager.resync(&h.shutdown).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(h.runtime.calls().is_empty(), "{:?}", h.runtime.calls());
        assert_eq!(h.api.written.lock().unwrap().len(), writes);

        // Graceful deletion: kill with the pod's grace period, then delete the object.
        p.metadata.resource_version = Some("500".into());
        h.manager
            .on_watch_event(watcher::Event::Apply(p.clone().deleting(7)), &h.shutdown);
        h.until("deletion", |h| !h.api.deleted.lock().unwrap().is_empty())
            .await;
        assert_eq!(h.runtime.calls(), vec!["kill_pod uid-1 7s"]);
        h.manager
            .on_watch_event(watcher::Event::Delete(p.deleting(7)), &h.shutdown);
        h.until("the worker to finish", |h| h.manager.workers() == 0)
            .await;
    }

    #[tokio::test]
    async fn exits_restart_or_finish_per_policy() {
        let h = harness(FakeRuntime::new());
        h.list(vec![pod(&["a"]).policy("Never")]);
        h.until("Running", |h| {
            h.api.last_phase().as_deref() == Some("Running")
        })
        .await;
        h.runtime.clear_calls();
        h.runtime.exit("uid-1", "a", 0);
        h.manager.wake("uid-1", &h.shutdown);
        h.until("Succeeded", |h| {
            h.api.last_phase().as_deref() == Some("Succeeded")
        })
        .await;
        // The finished pod's sandbox is stopped, nothing is restarted.
        h.until("the sandbox stop", |h| {
            h.runtime.calls().iter().any(|c| c.starts_with("stop_pod"))
        })
        .await;
        assert!(
            !h.runtime
                .calls()
                .iter()
                .any(|c| c.starts_with("start_container"))
        );

        let h = harness(FakeRuntime::new());
        h.list(vec![pod(&["a"])]);
        h.until("Running", |h| {
            h.api.last_phase().as_deref() == Some("Running")
        })
        .await;
        h.runtime.exit("uid-1", "a", 1);
        h.manager.wake("uid-1", &h.shutdown);
        // First crash: restarted at once as attempt 1.
        h.until("the restart", |h| {
            h.runtime
                .calls()
                .contains(&"start_container web-1 a 1".to_string())
        })
        .await;
        h.runtime.exit("uid-1", "a", 1);
        h.manager.wake("uid-1", &h.shutdown);
        h.until("CrashLoopBackOff", |h| {
            h.api.last_waiting_reason().as_deref() == Some("CrashLoopBackOff")
        })
        .await;
    }

    #[tokio::test]
    async fn missing_images_leave_the_pod_pending_with_the_reason() {
        let h = harness(FakeRuntime::new().without_image("img-a"));
        let mut p = pod(&["a"]);
        p.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("Never".into());
        h.list(vec![p]);
        h.until("ErrImageNeverPull", |h| {
            h.api.last_waiting_reason().as_deref() == Some("ErrImageNeverPull")
        })
        .await;
        assert_eq!(h.api.last_phase().as_deref(), Some("Pending"));
    }

    #[tokio::test]
    async fn a_restarted_agent_adopts_its_pods_and_removes_orphans() {
        let runtime = FakeRuntime::new();
        let mut adopted =
            crate::sync::tests::observed(Some(sandbox(true)), vec![running("a", 0, 1)]);
        adopted.uid = "uid-1".into();
        runtime.insert(adopted);
        let mut orphan =
            crate::sync::tests::observed(Some(sandbox(true)), vec![running("a", 0, 1)]);
        orphan.uid = "uid-gone".into();
        orphan.grace_period = Some(Duration::from_secs(3));
        runtime.insert(orphan);
        let h = harness(runtime);

        // Before the first complete list nothing is killed, even on a resync.
        h.manager.resync(&h.shutdown).await;
        h.manager.wake("uid-gone", &h.shutdown);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(h.runtime.calls().is_empty(), "{:?}", h.runtime.calls());

        h.list(vec![pod(&["a"])]);
        h.until("Running", |h| {
            h.api.last_phase().as_deref() == Some("Running")
        })
        .await;
        h.manager.resync(&h.shutdown).await;
        h.until("the orphan's removal", |h| {
            h.runtime
                .calls()
                .contains(&"kill_pod uid-gone 3s".to_string())
        })
        .await;
        assert!(
            !h.runtime
                .calls()
                .iter()
                .any(|c| c.starts_with("run_sandbox") || c.starts_with("start_container"))
        );
    }
}
