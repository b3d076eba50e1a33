//! The queue of pods waiting for a node, as upstream's `PriorityQueue`: an active heap (higher
//! priority first, then first come), a backoff set (pods that failed recently wait 1 s, 2 s, 4 s
//! ... up to 10 s before another try), and the unschedulable pods, parked until the cluster
//! changes in a way that could help them (a node added or changed, a pod gone) or, at the
//! latest, for five minutes. Time is passed in, so every rule is tested with plain values.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

/// Upstream's `podInitialBackoffSeconds`.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Upstream's `podMaxBackoffSeconds`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Upstream's `podMaxInUnschedulablePodsDuration`.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(5 * 60);

/// `namespace/name`.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// A pod handed out for one scheduling attempt.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    /// The pod as last seen.
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// When the pod was first handed out (for the end-to-end latency metric).
    pub first_attempt: Instant,
}

/// Where a pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the active heap, under this sequence number.
    Active(u64),
    /// Waiting out its backoff until this time, under this sequence number.
    Backoff(Instant, u64),
    /// Parked since this time, until a cluster change or [`MAX_UNSCHEDULABLE`].
    Unschedulable(Instant),
    /// Being scheduled (handed out by [`SchedulingQueue::pop`] in this cycle).
    InFlight(u64),
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    place: Place,
    attempts: u32,
    /// When it entered the active heap (first come first served among equal priority).
    enqueued: Instant,
    first_attempt: Option<Instant>,
    /// When its last attempt failed (the backoff counts from there).
    failed_at: Option<Instant>,
}

/// An item of the active heap; stale items (the pod moved on) are skipped when popped.
#[derive(Debug, PartialEq, Eq)]
struct ActiveItem {
    priority: i32,
    enqueued: Reverse<Instant>,
    seq: Reverse<u64>,
    key: String,
}

impl Ord for ActiveItem {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.priority, self.enqueued, self.seq).cmp(&(other.priority, other.enqueued, other.seq))
    }
}

impl PartialOrd for ActiveItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Counts of pods per sub-queue, for `scheduler_pending_pods`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLengths {
    /// Ready to be tried.
    pub active: usize,
    /// Waiting out a backoff.
    pub backoff: usize,
    /// Parked until the cluster changes.
    pub unschedulable: usize,
    /// Being scheduled now.
    pub in_flight: usize,
}

/// The scheduling queue.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<ActiveItem>,
    backoff: BTreeSet<(Instant, u64, String)>,
    /// The parked pods, oldest first.
    unschedulable: BTreeSet<(Instant, String)>,
    seq: u64,
    /// Incremented by every pop.
    cycle: u64,
    /// The cycle during which the cluster last changed; a pod that fails an attempt started
    /// before that change might have fit after it, so it goes to backoff, not to sleep.
    move_request_cycle: u64,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether an update could change the scheduling outcome: the spec, labels or annotations
/// changed (status writes, including our own PodScheduled condition, do not count).
fn scheduling_relevant_update(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
}

/// Upstream's backoff: 1 s doubled per further attempt, at most 10 s.
pub fn backoff_duration(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF)
}

impl SchedulingQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn push_active(&mut self, key: &str, now: Instant) {
        let seq = self.next_seq();
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.place = Place::Active(seq);
        e.enqueued = now;
        self.active.push(ActiveItem {
            priority: priority(&e.pod),
            enqueued: Reverse(now),
            seq: Reverse(seq),
            key: key.to_string(),
        });
    }

    fn leave(&mut self, key: &str) {
        match self.entries.get(key).map(|e| e.place) {
            Some(Place::Backoff(at, seq)) => {
                self.backoff.remove(&(at, seq, key.to_string()));
            }
            Some(Place::Unschedulable(since)) => {
                self.unschedulable.remove(&(since, key.to_string()));
            }
            _ => {}
        }
    }

    /// Back to the active heap, or to backoff while its backoff has not expired.
    fn activate_or_backoff(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get(key) else {
            return;
        };
        let ready_at = e
            .failed_at
            .map(|t| t + backoff_duration(e.attempts))
            .unwrap_or(now);
        self.leave(key);
        if ready_at > now {
            let seq = self.next_seq();
            if let Some(e) = self.entries.get_mut(key) {
                e.place = Place::Backoff(ready_at, seq);
            }
            self.backoff.insert((ready_at, seq, key.to_string()));
        } else {
            self.push_active(key, now);
        }
    }

    /// A pending pod was added or updated. New pods go to the active heap; a parked pod whose
    /// spec changed gets another chance; otherwise only the stored object is refreshed.
    pub fn add_or_update(&mut self, pod: Arc<Pod>, now: Instant) {
        let key = pod_key(&pod);
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        place: Place::InFlight(0),
                        attempts: 0,
                        enqueued: now,
                        first_attempt: None,
                        failed_at: None,
                    },
                );
                self.push_active(&key, now);
            }
            Some(e) => {
                let relevant = scheduling_relevant_update(&e.pod, &pod);
                let priority_changed = priority(&e.pod) != priority(&pod);
                e.pod = pod;
                match e.place {
                    Place::Unschedulable(_) if relevant => self.activate_or_backoff(&key, now),
                    Place::Active(_) if priority_changed => self.push_active(&key, now),
                    _ => {}
                }
            }
        }
    }

    /// The pod is gone or no longer ours (deleted, bound, terminating).
    pub fn delete(&mut self, key: &str) {
        self.leave(key);
        self.entries.remove(key);
    }

    /// Whether the queue holds `key` in any state.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Moves expired backoffs to the active heap, and pods parked longer than
    /// [`MAX_UNSCHEDULABLE`] back into circulation.
    pub fn flush(&mut self, now: Instant) {
        while let Some((at, _, key)) = self.backoff.first().cloned() {
            if at > now {
                break;
            }
            self.backoff.pop_first();
            self.push_active(&key, now);
        }
        while let Some((since, key)) = self.unschedulable.first().cloned() {
            if now.duration_since(since) < MAX_UNSCHEDULABLE {
                break;
            }
            self.activate_or_backoff(&key, now);
        }
    }

    /// The next pod to try, if one is ready; it stays in flight until [`done`], or one of
    /// the `requeue_*` methods, or [`delete`] is called for it.
    ///
    /// [`done`]: SchedulingQueue::done
    /// [`delete`]: SchedulingQueue::delete
    pub fn pop(&mut self, now: Instant) -> Option<QueuedPod> {
        self.flush(now);
        while let Some(item) = self.active.pop() {
            let current = self.entries.get(&item.key).map(|e| e.place);
            if current != Some(Place::Active(item.seq.0)) {
                continue;
            }
            self.cycle += 1;
            let cycle = self.cycle;
            let e = self.entries.get_mut(&item.key)?;
            e.place = Place::InFlight(cycle);
            e.attempts = e.attempts.saturating_add(1);
            let first_attempt = *e.first_attempt.get_or_insert(now);
            return Some(QueuedPod {
                pod: e.pod.clone(),
                key: item.key,
                attempts: e.attempts,
                first_attempt,
            });
        }
        None
    }

    /// The attempt succeeded (the pod is assumed on a node): it leaves the queue.
    pub fn done(&mut self, key: &str) {
        if matches!(
            self.entries.get(key).map(|e| e.place),
            Some(Place::InFlight(_))
        ) {
            self.entries.remove(key);
        }
    }

    /// The attempt found no node: park the pod, unless the cluster changed while it was being
    /// tried (then it waits out its backoff and tries again).
    pub fn requeue_unschedulable(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        let Place::InFlight(cycle) = e.place else {
            return;
        };
        e.failed_at = Some(now);
        if self.move_request_cycle >= cycle {
            self.activate_or_backoff(key, now);
        } else {
            e.place = Place::Unschedulable(now);
            self.unschedulable.insert((now, key.to_string()));
        }
    }

    /// The attempt failed for a reason other than fit (an error, a failed bind): retry after
    /// the backoff. A pod no longer in the queue is put back with `pod`.
    pub fn requeue_backoff(&mut self, pod: Arc<Pod>, attempts: u32, now: Instant) {
        let key = pod_key(&pod);
        let e = self.entries.entry(key.clone()).or_insert(Entry {
            pod: pod.clone(),
            place: Place::InFlight(0),
            attempts,
            enqueued: now,
            first_attempt: Some(now),
            failed_at: None,
        });
        e.pod = pod;
        e.failed_at = Some(now);
        e.attempts = e.attempts.max(attempts);
        self.activate_or_backoff(&key, now);
    }

    /// The cluster changed in a way that may let parked pods fit: give them all another try
    /// (after their backoff).
    pub fn move_all_to_active_or_backoff(&mut self, now: Instant) {
        self.move_request_cycle = self.cycle;
        let parked: Vec<String> = self.unschedulable.iter().map(|(_, k)| k.clone()).collect();
        for key in parked {
            self.activate_or_backoff(&key, now);
        }
    }

    /// When the next pod becomes ready by itself (a backoff or the unschedulable timeout ends).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let backoff = self.backoff.first().map(|(at, _, _)| *at);
        let parked = self
            .unschedulable
            .first()
            .map(|(since, _)| *since + MAX_UNSCHEDULABLE);
        match (backoff, parked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a pod may be ready to pop now (the heap may hold stale items; `pop` skips them).
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// Pods per sub-queue.
    pub fn lengths(&self) -> QueueLengths {
        let mut l = QueueLengths::default();
        for e in self.entries.values() {
            match e.place {
                Place::Active(_) => l.active += 1,
                Place::Backoff(..) => l.backoff += 1,
                Place::Unschedulable(_) => l.unschedulable += 1,
                Place::InFlight(_) => l.in_flight += 1,
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pod;

    fn p(name: &str) -> Arc<Pod> {
        Arc::new(pod(name).build())
    }

    fn names(q: &mut SchedulingQueue, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| q.pop(now))
            .map(|qp| qp.pod.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn priority_then_first_come() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut q = SchedulingQueue::new();
        q.add_or_update(p("late-low"), t0 + s(2));
        q.add_or_update(p("early-low"), t0);
        q.add_or_update(Arc::new(pod("high").priority(1000).build()), t0 + s(3));
        assert_eq!(names(&mut q, t0 + s(4)), ["high", "early-low", "late-low"]);
        assert_eq!(q.lengths().in_flight, 3);
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let s = Duration::from_secs;
        for (attempts, want) in [
            (1, s(1)),
            (2, s(2)),
            (3, s(4)),
            (4, s(8)),
            (5, s(10)),
            (50, s(10)),
        ] {
            assert_eq!(backoff_duration(attempts), want, "{attempts}");
        }
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_change() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut q = SchedulingQueue::new();
        q.add_or_update(p("web"), t0);
        let first = q.pop(t0).unwrap();
        assert_eq!(first.attempts, 1);
        q.requeue_unschedulable("default/web", t0);
        assert!(
            q.pop(t0 + s(60)).is_none(),
            "parked, not retried on a timer"
        );
        assert_eq!(q.next_wakeup(), Some(t0 + MAX_UNSCHEDULABLE));

        // A node appears: the pod goes back, once its 1 s backoff has passed.
        q.move_all_to_active_or_backoff(t0 + s(61));
        assert_eq!(q.lengths().active, 1);
        let second = q.pop(t0 + s(61)).unwrap();
        assert_eq!(second.attempts, 2);

        // Failing right away again: a change now is still within the 2 s backoff.
        q.requeue_unschedulable("default/web", t0 + s(61));
        q.move_all_to_active_or_backoff(t0 + s(62));
        assert!(q.pop(t0 + s(62)).is_none());
        assert_eq!(q.next_wakeup(), Some(t0 + s(63)));
        assert!(q.pop(t0 + s(63)).is_some());
    }

    #[test]
    fn parked_pods_are_retried_after_five_minutes() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add_or_update(p("web"), t0);
        q.pop(t0).unwrap();
        q.requeue_unschedulable("default/web", t0);
        assert!(
            q.pop(t0 + MAX_UNSCHEDULABLE - Duration::from_secs(1))
                .is_none()
        );
        assert!(q.pop(t0 + MAX_UNSCHEDULABLE).is_some());
    }

    #[test]
    fn a_change_during_the_attempt_is_not_missed() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add_or_update(p("web"), t0);
        q.pop(t0).unwrap();
        // A node is added while "web" is being scheduled against the old snapshot.
        q.move_all_to_active_or_backoff(t0);
        q.requeue_unschedulable("default/web", t0);
        assert_eq!(q.lengths().backoff, 1, "retried after backoff, not parked");
    }

    #[test]
    fn updates_deletes_and_done() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add_or_update(p("web"), t0);
        q.add_or_update(p("web"), t0);
        assert_eq!(q.lengths().active, 1, "no duplicates");
        q.pop(t0).unwrap();
        q.requeue_unschedulable("default/web", t0);

        // A status-only update (our own PodScheduled condition) does not wake it...
        let mut status_only = pod("web").build();
        status_only.status.as_mut().unwrap().reason = Some("x".into());
        q.add_or_update(Arc::new(status_only), t0);
        assert_eq!(q.lengths().unschedulable, 1);
        // ...a spec change does.
        q.add_or_update(
            Arc::new(pod("web").cpu_m(10).build()),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(q.lengths().active, 1);

        q.delete("default/web");
        assert!(q.pop(t0 + Duration::from_secs(5)).is_none());
        assert!(!q.contains("default/web"));

        q.add_or_update(p("db"), t0);
        q.pop(t0).unwrap();
        q.done("default/db");
        assert_eq!(q.lengths(), QueueLengths::default());
    }

    #[test]
    fn failed_binds_come_back_after_backoff() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add_or_update(p("web"), t0);
        let qp = q.pop(t0).unwrap();
        q.done(&qp.key);
        q.requeue_backoff(qp.pod.clone(), qp.attempts, t0);
        assert!(q.pop(t0).is_none());
        let again = q.pop(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(again.attempts, 2);
    }
}
