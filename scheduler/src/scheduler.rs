//! The scheduling loop: one task owns the cache and the queue, fed by watches of pods and nodes,
//! and schedules one pod at a time against the cache (no locks, no copies). The pod is
//! *assumed* on its node at once, and the binding call runs in the background so the next pod
//! need not wait for the apiserver; a failed binding un-assumes the pod and retries it.
//!
//! What the scheduler did is visible as upstream's: a `Scheduled` or `FailedScheduling` Event,
//! the pod's `PodScheduled` condition, and the metrics.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use miniorch_api::events::{EventRecorder, EventType, object_reference};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, NodeChange};
use crate::framework::{CycleState, Framework, ScheduleError};
use crate::metrics::Metrics;
use crate::queue::{QueuedPod, SchedulingQueue, pod_key};

/// At most this many bindings and failure reports run at once; more wait (backpressure).
const MAX_IN_FLIGHT_CALLS: usize = 64;
/// How often the queue and cache size metrics are refreshed.
const SIZES_EVERY: Duration = Duration::from_secs(1);
/// How long a shutdown waits for bindings already sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the scheduling loop stopped before it was told to.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A watch stream ended, which kube's retrying watcher never does on its own.
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// Whether this scheduler (named `scheduler_name`) is responsible for `pod`.
pub fn responsible_for(pod: &Pod, scheduler_name: &str) -> bool {
    match pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) {
        None | Some("") => scheduler_name == crate::framework::registry::DEFAULT_SCHEDULER_NAME,
        Some(name) => name == scheduler_name,
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The strategic-merge status patch that records why the pod is not scheduled, or `None` when
/// the pod already says exactly that (so repeated failures do not rewrite the pod).
pub fn unschedulable_condition_patch(
    pod: &Pod,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) -> Option<serde_json::Value> {
    let existing: Option<&PodCondition> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    if let Some(c) = existing
        && c.status == "False"
        && c.reason.as_deref() == Some(reason)
        && c.message.as_deref() == Some(message)
    {
        return None;
    }
    let transition = match existing {
        Some(c) if c.status == "False" => c.last_transition_time.clone().unwrap_or(Time(now)),
        _ => Time(now),
    };
    Some(serde_json::json!({
        "status": {
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": reason,
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": transition,
            }]
        }
    }))
}

/// A binding that failed, reported back to the loop.
struct BindFailed {
    pod: Arc<Pod>,
    attempts: u32,
}

/// The long-lived parts of the scheduler, shared with its background calls.
#[derive(Clone)]
pub struct Scheduler {
    client: kube::Client,
    framework: Arc<Framework>,
    scheduler_name: String,
    events: Arc<EventRecorder>,
    metrics: Metrics,
    synced: Arc<AtomicBool>,
    calls: Arc<Semaphore>,
}

/// What the loop owns.
struct State {
    cache: Cache,
    queue: SchedulingQueue,
    next_start: usize,
    rng: StdRng,
    /// Every pod seen, uid → key, to find the ones deleted while a watch was down.
    known_pods: HashMap<String, String>,
    /// Pending pods held back by `spec.schedulingGates`.
    gated: HashSet<String>,
    pods_relist: Option<HashSet<String>>,
    nodes_relist: Option<HashSet<String>>,
    pods_synced: bool,
    nodes_synced: bool,
    sizes_at: Instant,
}

impl State {
    fn new() -> State {
        State {
            cache: Cache::new(),
            queue: SchedulingQueue::new(),
            next_start: 0,
            rng: StdRng::from_os_rng(),
            known_pods: HashMap::new(),
            gated: HashSet::new(),
            pods_relist: None,
            nodes_relist: None,
            pods_synced: false,
            nodes_synced: false,
            sizes_at: Instant::now(),
        }
    }

    fn synced(&self) -> bool {
        self.pods_synced && self.nodes_synced
    }

    /// Applies a pod watch event; true when this completed the initial sync.
    fn pod_event(&mut self, ev: Event<Pod>, scheduler_name: &str, now: Instant) -> bool {
        match ev {
            Event::Init => self.pods_relist = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (&mut self.pods_relist, &pod.metadata.uid) {
                    seen.insert(uid.clone());
                }
                self.pod_seen(pod, scheduler_name, now);
            }
            Event::InitDone => {
                if let Some(seen) = self.pods_relist.take() {
                    let gone: Vec<(String, String)> = self
                        .known_pods
                        .iter()
                        .filter(|(uid, _)| !seen.contains(*uid))
                        .map(|(u, k)| (u.clone(), k.clone()))
                        .collect();
                    for (uid, key) in gone {
                        self.pod_gone(&uid, &key, now);
                    }
                }
                let first = !self.pods_synced;
                self.pods_synced = true;
                return first;
            }
            Event::Apply(pod) => self.pod_seen(pod, scheduler_name, now),
            Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.pod_gone(&uid, &pod_key(&pod), now);
            }
        }
        false
    }

    /// A pod exists as `pod`: bound ones count on their node, pending ones of ours queue up.
    fn pod_seen(&mut self, pod: Pod, scheduler_name: &str, now: Instant) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = pod_key(&pod);
        self.known_pods.insert(uid.clone(), key.clone());
        if node_name(&pod).is_some() {
            self.queue.delete(&key);
            if is_terminal(&pod) {
                if self.cache.remove_pod(&uid) {
                    self.queue.move_all_to_active_or_backoff(now);
                }
            } else {
                self.cache.add_or_update_pod(Arc::new(pod));
            }
            return;
        }
        if self.cache.is_assumed(&uid) {
            // An older, unbound version of a pod we already placed.
            return;
        }
        let ours = !is_terminal(&pod)
            && pod.metadata.deletion_timestamp.is_none()
            && responsible_for(&pod, scheduler_name);
        // Upstream's SchedulingGates: a gated pod waits outside the queue until its gates go.
        if ours && is_gated(&pod) {
            self.gated.insert(key.clone());
            self.queue.delete(&key);
            return;
        }
        self.gated.remove(&key);
        if ours {
            self.queue.add_or_update(Arc::new(pod), now);
        } else {
            self.queue.delete(&key);
        }
    }

    fn pod_gone(&mut self, uid: &str, key: &str, now: Instant) {
        self.known_pods.remove(uid);
        self.gated.remove(key);
        self.queue.delete(key);
        if self.cache.remove_pod(uid) {
            self.queue.move_all_to_active_or_backoff(now);
        }
    }

    /// Applies a node watch event; true when this completed the initial sync.
    fn node_event(&mut self, ev: Event<Node>, now: Instant) -> bool {
        let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        match ev {
            Event::Init => self.nodes_relist = Some(HashSet::new()),
            Event::InitApply(node) => {
                if let Some(seen) = &mut self.nodes_relist {
                    seen.insert(name(&node));
                }
                self.node_seen(node, now);
            }
            Event::InitDone => {
                if let Some(seen) = self.nodes_relist.take() {
                    let gone: Vec<String> = self
                        .cache
                        .nodes()
                        .iter()
                        .map(|n| n.name().to_string())
                        .filter(|n| !seen.contains(n))
                        .collect();
                    for n in gone {
                        self.cache.remove_node(&n);
                    }
                }
                let first = !self.nodes_synced;
                self.nodes_synced = true;
                return first;
            }
            Event::Apply(node) => self.node_seen(node, now),
            Event::Delete(node) => self.cache.remove_node(&name(&node)),
        }
        false
    }

    fn node_seen(&mut self, node: Node, now: Instant) {
        if self.cache.add_or_update_node(Arc::new(node)) != NodeChange::Irrelevant {
            self.queue.move_all_to_active_or_backoff(now);
        }
    }
}

impl Scheduler {
    /// A scheduler for the profile `scheduler_name` running `framework`. `synced` turns true
    /// once the caches are filled (for `/readyz`).
    pub fn new(
        client: kube::Client,
        framework: Framework,
        scheduler_name: String,
        events: Arc<EventRecorder>,
        metrics: Metrics,
        synced: Arc<AtomicBool>,
    ) -> Scheduler {
        Scheduler {
            client,
            framework: Arc::new(framework),
            scheduler_name,
            events,
            metrics,
            synced,
            calls: Arc::new(Semaphore::new(MAX_IN_FLIGHT_CALLS)),
        }
    }

    /// Watches, schedules and binds until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SchedulerError> {
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        let mut pods =
            pin!(watcher::watcher(pods_api, watcher::Config::default()).default_backoff());
        let mut nodes =
            pin!(watcher::watcher(nodes_api, watcher::Config::default()).default_backoff());
        let (failed_tx, mut failed_rx) = mpsc::channel::<BindFailed>(MAX_IN_FLIGHT_CALLS * 2);
        let mut st = State::new();
        tracing::info!(scheduler = self.scheduler_name, "scheduler started");
        loop {
            let now = Instant::now();
            let synced = st.synced();
            let wake = if !synced {
                now + Duration::from_secs(3600)
            } else if st.queue.has_active() {
                now
            } else {
                st.queue
                    .next_wakeup()
                    .unwrap_or(now + Duration::from_secs(3600))
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = pods.next() => match ev {
                    Some(Ok(ev)) => {
                        if st.pod_event(ev, &self.scheduler_name, Instant::now()) {
                            self.mark_synced(&st);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                    None => return Err(SchedulerError::WatchEnded("pod")),
                },
                ev = nodes.next() => match ev {
                    Some(Ok(ev)) => {
                        if st.node_event(ev, Instant::now()) {
                            self.mark_synced(&st);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "node watch failed; retrying"),
                    None => return Err(SchedulerError::WatchEnded("node")),
                },
                Some(failed) = failed_rx.recv() => self.bind_failed(&mut st, failed),
                _ = tokio::time::sleep_until(wake) => {
                    if synced {
                        self.schedule_one(&mut st, &failed_tx).await;
                    }
                }
            }
            if st.sizes_at.elapsed() >= SIZES_EVERY {
                st.sizes_at = Instant::now();
                self.metrics.sizes(
                    st.queue.lengths(),
                    st.gated.len(),
                    st.cache.nodes().len(),
                    st.cache.pod_count(),
                );
            }
        }
        // Let bindings already sent finish, so their pods do not look lost to the next leader.
        let drain = self.calls.acquire_many(MAX_IN_FLIGHT_CALLS as u32);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
        tracing::info!("scheduler stopped");
        Ok(())
    }

    fn mark_synced(&self, st: &State) {
        if st.synced() {
            tracing::info!(
                nodes = st.cache.nodes().len(),
                pods = st.known_pods.len(),
                "caches synced; scheduling"
            );
            self.synced.store(true, Ordering::SeqCst);
        }
    }

    /// One scheduling attempt for the next pod in the queue, if any is ready.
    async fn schedule_one(&self, st: &mut State, failed_tx: &mpsc::Sender<BindFailed>) {
        let now = Instant::now();
        let Some(qp) = st.queue.pop(now) else { return };
        let started = std::time::Instant::now();
        let cx = match CycleState::new(&qp.pod) {
            Ok(cx) => cx,
            Err(e) => {
                st.queue.requeue_unschedulable(&qp.key, now);
                self.metrics.attempt(
                    "unschedulable",
                    &self.scheduler_name,
                    started.elapsed().as_secs_f64(),
                );
                self.report_failure(qp.pod, "Unschedulable", e.to_string())
                    .await;
                return;
            }
        };
        let (result, next) =
            self.framework
                .schedule(&cx, &qp.pod, st.cache.nodes(), st.next_start, &mut st.rng);
        st.next_start = next;
        match result {
            Ok(r) => {
                st.cache.assume(&qp.pod, &r.node, cx.requests.clone());
                st.queue.done(&qp.key);
                tracing::debug!(
                    pod = qp.key,
                    node = r.node,
                    evaluated = r.evaluated_nodes,
                    feasible = r.feasible_nodes,
                    "assumed"
                );
                self.spawn_bind(qp, r.node, started, failed_tx.clone())
                    .await;
            }
            Err(ScheduleError::Internal(message)) => {
                st.queue.requeue_backoff(qp.pod.clone(), qp.attempts, now);
                self.metrics.attempt(
                    "error",
                    &self.scheduler_name,
                    started.elapsed().as_secs_f64(),
                );
                tracing::warn!(pod = qp.key, message, "scheduling attempt failed");
                self.report_failure(qp.pod, "SchedulerError", message).await;
            }
            Err(e) => {
                st.queue.requeue_unschedulable(&qp.key, now);
                self.metrics.attempt(
                    "unschedulable",
                    &self.scheduler_name,
                    started.elapsed().as_secs_f64(),
                );
                tracing::info!(pod = qp.key, reason = %e, "unable to schedule pod");
                self.report_failure(qp.pod, "Unschedulable", e.to_string())
                    .await;
            }
        }
    }

    /// Binds in the background; a failure comes back through `failed_tx`.
    async fn spawn_bind(
        &self,
        qp: QueuedPod,
        node: String,
        started: std::time::Instant,
        failed_tx: mpsc::Sender<BindFailed>,
    ) {
        let Ok(permit) = self.calls.clone().acquire_owned().await else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let bind_started = std::time::Instant::now();
            let result = this.bind(&qp.pod, &node).await;
            this.metrics
                .binding_duration
                .observe(bind_started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    this.metrics.attempt(
                        "scheduled",
                        &this.scheduler_name,
                        started.elapsed().as_secs_f64(),
                    );
                    this.metrics
                        .e2e_duration
                        .observe(qp.first_attempt.elapsed().as_secs_f64());
                    let message = format!("Successfully assigned {} to {node}", qp.key);
                    tracing::info!(pod = qp.key, node, "bound");
                    this.events
                        .record(
                            &object_reference(&*qp.pod),
                            EventType::Normal,
                            "Scheduled",
                            "Binding",
                            &message,
                        )
                        .await;
                }
                Err(e) => {
                    this.metrics.attempt(
                        "error",
                        &this.scheduler_name,
                        started.elapsed().as_secs_f64(),
                    );
                    tracing::warn!(pod = qp.key, node, error = %e, "binding rejected");
                    let message = format!(
                        "Binding rejected: {}",
                        miniorch_api::client::error_message(&e)
                    );
                    this.events
                        .record(
                            &object_reference(&*qp.pod),
                            EventType::Warning,
                            "FailedScheduling",
                            "Scheduling",
                            &message,
                        )
                        .await;
                    let _ = failed_tx
                        .send(BindFailed {
                            pod: qp.pod,
                            attempts: qp.attempts,
                        })
                        .await;
                }
            }
        });
    }

    /// `POST .../pods/<name>/binding`; the apiserver sets `spec.nodeName` and PodScheduled.
    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), kube::Error> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        api.create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map(|_| ())
    }

    fn bind_failed(&self, st: &mut State, failed: BindFailed) {
        let uid = failed.pod.metadata.uid.clone().unwrap_or_default();
        // Retry only if the pod is still ours to place: not deleted, not seen bound meanwhile.
        if st.cache.forget(&uid) {
            st.queue
                .requeue_backoff(failed.pod, failed.attempts, Instant::now());
        }
    }

    /// The FailedScheduling event and the PodScheduled=False condition, in the background.
    async fn report_failure(&self, pod: Arc<Pod>, reason: &'static str, message: String) {
        let Ok(permit) = self.calls.clone().acquire_owned().await else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            this.events
                .record(
                    &object_reference(&*pod),
                    EventType::Warning,
                    "FailedScheduling",
                    "Scheduling",
                    &message,
                )
                .await;
            let Some(patch) =
                unschedulable_condition_patch(&pod, reason, &message, jiff::Timestamp::now())
            else {
                return;
            };
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(this.client.clone(), &namespace);
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                tracing::warn!(pod = name, error = %e, "could not update the PodScheduled condition");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pod;

    #[test]
    fn responsibility() {
        let cases = [
            (pod("a").build(), "default-scheduler", true),
            (
                pod("a").scheduler("default-scheduler").build(),
                "default-scheduler",
                true,
            ),
            (
                pod("a").scheduler("other").build(),
                "default-scheduler",
                false,
            ),
            (pod("a").scheduler("other").build(), "other", true),
            (pod("a").build(), "other", false),
        ];
        for (p, me, want) in cases {
            assert_eq!(responsible_for(&p, me), want, "{me}");
        }
    }

    use crate::testing::node;

    fn state() -> State {
        let mut st = State::new();
        let now = Instant::now();
        st.pod_event(Event::Init, "default-scheduler", now);
        st.pod_event(Event::InitDone, "default-scheduler", now);
        st.node_event(Event::Init, now);
        st.node_event(Event::InitApply(node("n1").cpu_m(1000).build()), now);
        assert!(st.node_event(Event::InitDone, now));
        assert!(st.synced());
        st
    }

    #[test]
    fn which_pods_are_queued() {
        let now = Instant::now();
        let cases = [
            (pod("pending").build(), true),
            (pod("other-ns").ns("team").build(), true),
            (pod("bound").on("n1").build(), false),
            (pod("theirs").scheduler("gpu-scheduler").build(), false),
            (pod("deleting").terminating().build(), false),
            (pod("done").phase("Succeeded").build(), false),
            (pod("gated").gate("example.com/wait").build(), false),
        ];
        for (p, queued) in cases {
            let mut st = state();
            let key = pod_key(&p);
            st.pod_event(Event::Apply(p), "default-scheduler", now);
            assert_eq!(st.queue.contains(&key), queued, "{key}");
        }
    }

    #[test]
    fn gated_pods_wait_until_their_gates_go() {
        let now = Instant::now();
        let mut st = state();
        st.pod_event(
            Event::Apply(pod("web").gate("example.com/wait").build()),
            "default-scheduler",
            now,
        );
        assert!(!st.queue.contains("default/web"));
        assert_eq!(st.gated.len(), 1);
        st.pod_event(Event::Apply(pod("web").build()), "default-scheduler", now);
        assert!(st.queue.contains("default/web"));
        assert!(st.gated.is_empty());
    }

    #[test]
    fn bound_and_finished_pods_move_capacity() {
        let now = Instant::now();
        let mut st = state();
        let used = |st: &State| st.cache.node("n1").unwrap().requested().milli_cpu;
        st.pod_event(
            Event::Apply(pod("web").cpu_m(300).build()),
            "default-scheduler",
            now,
        );
        assert!(st.queue.contains("default/web"));
        // Bound (by us or anyone): out of the queue, counted on the node.
        st.pod_event(
            Event::Apply(pod("web").cpu_m(300).on("n1").build()),
            "default-scheduler",
            now,
        );
        assert!(!st.queue.contains("default/web"));
        assert_eq!(used(&st), 300);
        // Finished: the room comes back.
        st.pod_event(
            Event::Apply(pod("web").cpu_m(300).on("n1").phase("Succeeded").build()),
            "default-scheduler",
            now,
        );
        assert_eq!(used(&st), 0);
    }

    #[test]
    fn a_relist_forgets_what_was_deleted_meanwhile() {
        let now = Instant::now();
        let mut st = state();
        st.pod_event(
            Event::Apply(pod("a").cpu_m(100).on("n1").build()),
            "default-scheduler",
            now,
        );
        st.pod_event(Event::Apply(pod("b").build()), "default-scheduler", now);
        st.pod_event(Event::Init, "default-scheduler", now);
        assert!(
            !st.pod_event(Event::InitDone, "default-scheduler", now),
            "not the first sync"
        );
        assert_eq!(st.cache.node("n1").unwrap().requested().milli_cpu, 0);
        assert!(!st.queue.contains("default/b"));

        st.node_event(Event::Init, now);
        st.node_event(Event::InitDone, now);
        assert!(st.cache.nodes().is_empty());
    }

    #[test]
    fn an_assumed_pods_stale_update_does_not_requeue_it() {
        let now = Instant::now();
        let mut st = state();
        let web = pod("web").cpu_m(100).build();
        st.pod_event(Event::Apply(web.clone()), "default-scheduler", now);
        let qp = st.queue.pop(now).unwrap();
        let cx = CycleState::new(&qp.pod).unwrap();
        st.cache.assume(&qp.pod, "n1", cx.requests);
        st.queue.done(&qp.key);
        st.pod_event(Event::Apply(web), "default-scheduler", now);
        assert!(!st.queue.contains("default/web"));
    }

    #[test]
    fn condition_patch_only_when_it_changes() {
        let now = jiff::Timestamp::from_second(100).unwrap();
        let p = pod("web").build();
        let patch = unschedulable_condition_patch(&p, "Unschedulable", "0/1 nodes", now).unwrap();
        let c = &patch["status"]["conditions"][0];
        assert_eq!(c["type"], "PodScheduled");
        assert_eq!(c["status"], "False");
        assert_eq!(c["message"], "0/1 nodes");
        assert_eq!(c["lastTransitionTime"], "1970-01-01T00:01:40Z");

        let mut with = p.clone();
        with.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/1 nodes".into()),
            last_transition_time: Some(Time(jiff::Timestamp::from_second(5).unwrap())),
            ..Default::default()
        }]);
        assert!(unschedulable_condition_patch(&with, "Unschedulable", "0/1 nodes", now).is_none());
        let changed =
            unschedulable_condition_patch(&with, "Unschedulable", "0/2 nodes", now).unwrap();
        assert_eq!(
            changed["status"]["conditions"][0]["lastTransitionTime"], "1970-01-01T00:00:05Z",
            "still False: the transition time stays"
        );
    }
}
