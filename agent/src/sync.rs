//! The pod sync decision: given the pod as the API wants it and what the runtime has, what to
//! do next. Pure: [`sync_pod`] takes plain values and returns [`Action`]s, which the pod worker
//! applies; calling it again after they are applied converges (level-triggered).
//!
//! Rules follow upstream's kubelet: a sandbox first, init containers one at a time, then every
//! app container; exited containers restart per `restartPolicy` with the crash-loop back-off
//! (0 s, then 10 s doubling to 5 min; reset after a run of 10 min); a terminal pod is stopped
//! but kept; a deleted pod is killed, removed, then deleted for good.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::{ObservedContainer, ObservedPod, ObservedState};
use crate::spec;

/// First back-off after a crash that follows a restart.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A run this long resets the back-off (upstream: twice the longest back-off).
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// One step towards the pod the API wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make and start sandbox attempt `attempt`.
    CreateSandbox {
        /// Attempt number.
        attempt: u32,
    },
    /// Make and start attempt `attempt` of container `name` in the current sandbox.
    StartContainer {
        /// Name in the pod spec.
        name: String,
        /// Whether it is an init container.
        init: bool,
        /// Attempt number (its restart count).
        attempt: u32,
    },
    /// Remove a dead container attempt nobody needs any more.
    RemoveContainer {
        /// Runtime id.
        id: String,
    },
    /// Stop everything of the pod and keep it (a finished pod; a lost sandbox).
    StopPod {
        /// SIGTERM-to-SIGKILL delay.
        grace: Duration,
    },
    /// Stop everything of the pod and remove it.
    KillPod {
        /// SIGTERM-to-SIGKILL delay.
        grace: Duration,
    },
    /// Delete the pod object for good (its containers are gone).
    DeletePod,
}

/// What to do now, and when to look again if nothing else happens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Steps, in order; a failed step stops the ones after it.
    pub actions: Vec<Action>,
    /// Look again after this long (a back-off ending); `None`: only on changes or the resync.
    pub requeue_after: Option<Duration>,
}

/// What the pod's restart policy does with a container that exited with `exit_code`.
pub fn restarts(pod: &Pod, exit_code: i32) -> bool {
    match restart_policy(pod) {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// `Always` unless the pod says otherwise.
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// How long to wait before restarting a container whose attempt `attempt` ran from `started`
/// to `finished`: none for a first crash or after a long run, then doubling from 10 s to 5 min.
pub fn backoff(attempt: u32, started: Option<Timestamp>, finished: Option<Timestamp>) -> Duration {
    if let (Some(started), Some(finished)) = (started, finished)
        && finished.duration_since(started).as_secs() >= BACKOFF_RESET_AFTER.as_secs() as i64
    {
        return Duration::ZERO;
    }
    if attempt == 0 {
        return Duration::ZERO;
    }
    let shift = (attempt - 1).min(10);
    BACKOFF_INITIAL.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

/// When an exited attempt may restart, and whether that is now.
pub fn restart_due(attempt: &ObservedContainer, now: Timestamp) -> Result<(), Duration> {
    let ObservedState::Exited {
        started_at,
        finished_at,
        ..
    } = &attempt.state
    else {
        return Ok(());
    };
    let delay = backoff(attempt.attempt, *started_at, *finished_at);
    let Some(finished) = finished_at else {
        return Ok(());
    };
    let elapsed = now.duration_since(*finished);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    if elapsed >= delay {
        Ok(())
    } else {
        Err(delay - elapsed)
    }
}

/// Whether the pod has finished for good: its phase says so already, an init container failed
/// under `restartPolicy: Never`, or every app container exited and none will restart.
pub fn is_terminal(pod: &Pod, observed: Option<&ObservedPod>) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return true;
    }
    let Some(observed) = observed else {
        return false;
    };
    let Some(spec) = &pod.spec else {
        return false;
    };
    let exit_of = |c: &Container| match observed.attempts(&c.name).first() {
        Some(ObservedContainer {
            state: ObservedState::Exited { exit_code, .. },
            ..
        }) => Some(*exit_code),
        _ => None,
    };
    let init_failed = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| exit_of(c).is_some_and(|code| code != 0 && !restarts(pod, code)));
    if init_failed {
        return true;
    }
    !spec.containers.is_empty()
        && spec
            .containers
            .iter()
            .all(|c| exit_of(c).is_some_and(|code| !restarts(pod, code)))
}

/// The next steps for `pod` given what the runtime has.
pub fn sync_pod(pod: &Pod, observed: Option<&ObservedPod>, now: Timestamp) -> Plan {
    let grace = spec::grace_period(pod);
    let has_anything =
        observed.is_some_and(|o| !o.sandboxes.is_empty() || !o.containers.is_empty());

    if pod.metadata.deletion_timestamp.is_some() {
        let mut actions = Vec::new();
        if has_anything {
            actions.push(Action::KillPod { grace });
        }
        actions.push(Action::DeletePod);
        return Plan {
            actions,
            requeue_after: None,
        };
    }

    if is_terminal(pod, observed) {
        let running = observed.is_some_and(ObservedPod::anything_running);
        return Plan {
            actions: if running {
                vec![Action::StopPod { grace }]
            } else {
                vec![]
            },
            requeue_after: None,
        };
    }

    let Some(spec) = &pod.spec else {
        return Plan::default();
    };
    let empty = ObservedPod::default();
    let observed = observed.unwrap_or(&empty);

    let mut actions = Vec::new();
    match observed.sandbox() {
        None if observed.containers.is_empty() => {
            actions.push(Action::CreateSandbox { attempt: 0 });
        }
        // Containers without their sandbox, or a sandbox that died: start over, as upstream
        // does ("Pod sandbox changed, it will be killed and re-created").
        None => {
            return Plan {
                actions: vec![Action::KillPod { grace }],
                requeue_after: Some(Duration::ZERO),
            };
        }
        Some(sandbox) if !sandbox.running => {
            return Plan {
                actions: vec![Action::KillPod { grace }],
                requeue_after: Some(Duration::ZERO),
            };
        }
        Some(_) => {}
    }
    let fresh_sandbox = !actions.is_empty();

    // Dead attempts older than the newest two of each container are of no use (the newest
    // dead one feeds `lastState`).
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for old in observed.attempts(&container.name).iter().skip(2) {
            actions.push(Action::RemoveContainer { id: old.id.clone() });
        }
    }

    let mut requeue_after: Option<Duration> = None;
    let mut wait = |d: Duration| {
        requeue_after = Some(requeue_after.map_or(d, |r| r.min(d)));
    };

    // Init containers run one at a time, each to success, before any app container.
    for container in spec.init_containers.iter().flatten() {
        let latest = if fresh_sandbox {
            None
        } else {
            observed.attempts(&container.name).first().copied()
        };
        match latest {
            None => {
                actions.push(start(container, true, 0));
                return Plan {
                    actions,
                    requeue_after,
                };
            }
            Some(c) => match &c.state {
                ObservedState::Exited { exit_code: 0, .. } => continue,
                ObservedState::Exited { exit_code, .. } => {
                    if restarts(pod, *exit_code) {
                        match restart_due(c, now) {
                            Ok(()) => actions.push(start(container, true, c.attempt + 1)),
                            Err(left) => wait(left),
                        }
                    }
                    return Plan {
                        actions,
                        requeue_after,
                    };
                }
                ObservedState::Created => {
                    // Made but never started: a start that was cut short. Make it again.
                    actions.push(Action::RemoveContainer { id: c.id.clone() });
                    actions.push(start(container, true, c.attempt));
                    return Plan {
                        actions,
                        requeue_after,
                    };
                }
                ObservedState::Running { .. } => {
                    return Plan {
                        actions,
                        requeue_after,
                    };
                }
            },
        }
    }

    for container in &spec.containers {
        let latest = if fresh_sandbox {
            None
        } else {
            observed.attempts(&container.name).first().copied()
        };
        match latest {
            None => actions.push(start(container, false, 0)),
            Some(c) => match &c.state {
                ObservedState::Running { .. } => {}
                ObservedState::Created => {
                    actions.push(Action::RemoveContainer { id: c.id.clone() });
                    actions.push(start(container, false, c.attempt));
                }
                ObservedState::Exited { exit_code, .. } => {
                    if restarts(pod, *exit_code) {
                        match restart_due(c, now) {
                            Ok(()) => actions.push(start(container, false, c.attempt + 1)),
                            Err(left) => wait(left),
                        }
                    }
                }
            },
        }
    }
    Plan {
        actions,
        requeue_after,
    }
}

/// Containers waiting out a crash-loop back-off: (name, init, time left).
pub fn backing_off(
    pod: &Pod,
    observed: Option<&ObservedPod>,
    now: Timestamp,
) -> Vec<(String, bool, Duration)> {
    let (Some(spec), Some(observed)) = (&pod.spec, observed) else {
        return Vec::new();
    };
    if is_terminal(pod, Some(observed)) || pod.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let init = spec.init_containers.iter().flatten().map(|c| (c, true));
    init.chain(spec.containers.iter().map(|c| (c, false)))
        .filter_map(|(c, is_init)| {
            let latest = *observed.attempts(&c.name).first()?;
            let ObservedState::Exited { exit_code, .. } = latest.state else {
                return None;
            };
            if !restarts(pod, exit_code) || (is_init && exit_code == 0) {
                return None;
            }
            restart_due(latest, now)
                .err()
                .map(|left| (c.name.clone(), is_init, left))
        })
        .collect()
}

fn start(container: &Container, init: bool, attempt: u32) -> Action {
    Action::StartContainer {
        name: container.name.clone(),
        init,
        attempt,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runtime::ObservedSandbox;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub(crate) fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    /// A pod builder: `pod(&["web"]).init(&["setup"]).policy("Never")`.
    pub(crate) fn pod(containers: &[&str]) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("default".into()),
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|n| Container {
                        name: n.to_string(),
                        image: Some(format!("img-{n}")),
                        ..Default::default()
                    })
                    .collect(),
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub(crate) trait PodExt {
        fn init(self, names: &[&str]) -> Pod;
        fn policy(self, policy: &str) -> Pod;
        fn phase(self, phase: &str) -> Pod;
        fn deleting(self, grace: i64) -> Pod;
    }

    impl PodExt for Pod {
        fn init(mut self, names: &[&str]) -> Pod {
            self.spec.as_mut().unwrap().init_containers = Some(
                names
                    .iter()
                    .map(|n| Container {
                        name: n.to_string(),
                        image: Some(format!("img-{n}")),
                        ..Default::default()
                    })
                    .collect(),
            );
            self
        }
        fn policy(mut self, policy: &str) -> Pod {
            self.spec.as_mut().unwrap().restart_policy = Some(policy.into());
            self
        }
        fn phase(mut self, phase: &str) -> Pod {
            self.status = Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            self
        }
        fn deleting(mut self, grace: i64) -> Pod {
            self.metadata.deletion_timestamp = Some(Time(t(0)));
            self.metadata.deletion_grace_period_seconds = Some(grace);
            self
        }
    }

    pub(crate) fn sandbox(running: bool) -> ObservedSandbox {
        ObservedSandbox {
            id: "sb".into(),
            attempt: 0,
            running,
            ip: Some("10.0.0.2".into()),
        }
    }

    pub(crate) fn running(name: &str, attempt: u32, since: i64) -> ObservedContainer {
        ObservedContainer {
            id: format!("{name}-{attempt}"),
            name: name.into(),
            attempt,
            image: format!("img-{name}"),
            image_id: "sha256:1".into(),
            state: ObservedState::Running {
                started_at: Some(t(since)),
            },
        }
    }

    pub(crate) fn exited(
        name: &str,
        attempt: u32,
        code: i32,
        from: i64,
        to: i64,
    ) -> ObservedContainer {
        ObservedContainer {
            state: ObservedState::Exited {
                exit_code: code,
                reason: None,
                message: None,
                started_at: Some(t(from)),
                finished_at: Some(t(to)),
            },
            ..running(name, attempt, from)
        }
    }

    pub(crate) fn created(name: &str, attempt: u32) -> ObservedContainer {
        ObservedContainer {
            state: ObservedState::Created,
            ..running(name, attempt, 0)
        }
    }

    pub(crate) fn observed(
        sb: Option<ObservedSandbox>,
        containers: Vec<ObservedContainer>,
    ) -> ObservedPod {
        ObservedPod {
            uid: "uid-1".into(),
            namespace: "default".into(),
            name: "web-1".into(),
            sandboxes: sb.into_iter().collect(),
            containers,
            grace_period: None,
        }
    }

    fn start(name: &str, init: bool, attempt: u32) -> Action {
        Action::StartContainer {
            name: name.into(),
            init,
            attempt,
        }
    }

    fn remove(id: &str) -> Action {
        Action::RemoveContainer { id: id.into() }
    }

    const GRACE30: Duration = Duration::from_secs(30);

    #[test]
    fn sync_decisions() {
        let now = t(100);
        let secs = Duration::from_secs;
        /// (what, pod, observed, actions, requeue)
        type Case = (
            &'static str,
            Pod,
            Option<ObservedPod>,
            Vec<Action>,
            Option<Duration>,
        );
        let cases: Vec<Case> = vec![
            (
                "new pod: sandbox then every container",
                pod(&["a", "b"]),
                None,
                vec![
                    Action::CreateSandbox { attempt: 0 },
                    start("a", false, 0),
                    start("b", false, 0),
                ],
                None,
            ),
            (
                "new pod with init: sandbox then the first init container only",
                pod(&["a"]).init(&["i1", "i2"]),
                None,
                vec![Action::CreateSandbox { attempt: 0 }, start("i1", true, 0)],
                None,
            ),
            (
                "running pod: nothing to do",
                pod(&["a"]),
                Some(observed(Some(sandbox(true)), vec![running("a", 0, 1)])),
                vec![],
                None,
            ),
            (
                "a missing container is started",
                pod(&["a", "b"]),
                Some(observed(Some(sandbox(true)), vec![running("a", 0, 1)])),
                vec![start("b", false, 0)],
                None,
            ),
            (
                "init running: wait",
                pod(&["a"]).init(&["i1"]),
                Some(observed(Some(sandbox(true)), vec![running("i1", 0, 1)])),
                vec![],
                None,
            ),
            (
                "init done: next init",
                pod(&["a"]).init(&["i1", "i2"]),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("i1", 0, 0, 1, 2)],
                )),
                vec![start("i2", true, 0)],
                None,
            ),
            (
                "all init done: app containers",
                pod(&["a"]).init(&["i1"]),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("i1", 0, 0, 1, 2)],
                )),
                vec![start("a", false, 0)],
                None,
            ),
            (
                "init failed, policy Always: restart it at once the first time",
                pod(&["a"]).init(&["i1"]),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("i1", 0, 1, 1, 2)],
                )),
                vec![start("i1", true, 1)],
                None,
            ),
            (
                "init failed again: back off",
                pod(&["a"]).init(&["i1"]),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("i1", 1, 1, 95, 96)],
                )),
                vec![],
                Some(secs(6)),
            ),
            (
                "init failed, policy Never: terminal, sandbox stopped",
                pod(&["a"]).init(&["i1"]).policy("Never"),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("i1", 0, 1, 1, 2)],
                )),
                vec![Action::StopPod { grace: GRACE30 }],
                None,
            ),
            (
                "crash, policy Always: immediate first restart",
                pod(&["a"]),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("a", 0, 1, 1, 99)],
                )),
                vec![start("a", false, 1)],
                None,
            ),
            (
                "second crash: 10 s back-off, 5 s left",
                pod(&["a"]),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("a", 1, 1, 90, 95), exited("a", 0, 1, 1, 2)],
                )),
                vec![],
                Some(secs(5)),
            ),
            (
                "back-off over: restart",
                pod(&["a"]),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("a", 1, 1, 80, 90), exited("a", 0, 1, 1, 2)],
                )),
                vec![start("a", false, 2)],
                None,
            ),
            (
                "dead attempts beyond the newest two are removed",
                pod(&["a"]),
                Some(observed(
                    Some(sandbox(true)),
                    vec![
                        running("a", 3, 50),
                        exited("a", 2, 1, 40, 45),
                        exited("a", 1, 1, 20, 25),
                        exited("a", 0, 1, 1, 2),
                    ],
                )),
                vec![remove("a-1"), remove("a-0")],
                None,
            ),
            (
                "exit 0, policy OnFailure, others running: nothing",
                pod(&["a", "b"]).policy("OnFailure"),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("a", 0, 0, 1, 2), running("b", 0, 1)],
                )),
                vec![],
                None,
            ),
            (
                "exit 1, policy OnFailure: restart",
                pod(&["a"]).policy("OnFailure"),
                Some(observed(Some(sandbox(true)), vec![exited("a", 0, 1, 1, 2)])),
                vec![start("a", false, 1)],
                None,
            ),
            (
                "all done, policy Never: stop the sandbox",
                pod(&["a", "b"]).policy("Never"),
                Some(observed(
                    Some(sandbox(true)),
                    vec![exited("a", 0, 0, 1, 2), exited("b", 0, 3, 1, 2)],
                )),
                vec![Action::StopPod { grace: GRACE30 }],
                None,
            ),
            (
                "terminal and stopped: nothing",
                pod(&["a"]).policy("Never"),
                Some(observed(
                    Some(sandbox(false)),
                    vec![exited("a", 0, 0, 1, 2)],
                )),
                vec![],
                None,
            ),
            (
                "phase already terminal: never restarted even if Always",
                pod(&["a"]).phase("Failed"),
                Some(observed(
                    Some(sandbox(false)),
                    vec![exited("a", 0, 1, 1, 2)],
                )),
                vec![],
                None,
            ),
            (
                "sandbox died: kill and start over",
                pod(&["a"]),
                Some(observed(Some(sandbox(false)), vec![running("a", 0, 1)])),
                vec![Action::KillPod { grace: GRACE30 }],
                Some(Duration::ZERO),
            ),
            (
                "containers without a sandbox: kill and start over",
                pod(&["a"]),
                Some(observed(None, vec![running("a", 0, 1)])),
                vec![Action::KillPod { grace: GRACE30 }],
                Some(Duration::ZERO),
            ),
            (
                "created but never started: make it again",
                pod(&["a"]),
                Some(observed(Some(sandbox(true)), vec![created("a", 0)])),
                vec![remove("a-0"), start("a", false, 0)],
                None,
            ),
            (
                "deleted with containers: kill with its grace, then delete",
                pod(&["a"]).deleting(3),
                Some(observed(Some(sandbox(true)), vec![running("a", 0, 1)])),
                vec![Action::KillPod { grace: secs(3) }, Action::DeletePod],
                None,
            ),
            (
                "deleted with nothing left: delete",
                pod(&["a"]).deleting(3),
                None,
                vec![Action::DeletePod],
                None,
            ),
        ];
        for (what, pod, observed, actions, requeue) in cases {
            let plan = sync_pod(&pod, observed.as_ref(), now);
            assert_eq!(plan.actions, actions, "{what}");
            assert_eq!(plan.requeue_after, requeue, "{what}");
        }
    }

    #[test]
    fn backoff_doubles_to_five_minutes_and_resets_after_a_long_run() {
        let secs = Duration::from_secs;
        for (attempt, ran, want) in [
            (0, 1, secs(0)),
            (1, 1, secs(10)),
            (2, 1, secs(20)),
            (3, 1, secs(40)),
            (5, 1, secs(160)),
            (6, 1, secs(300)),
            (40, 1, secs(300)),
            (6, 600, secs(0)),
        ] {
            assert_eq!(
                backoff(attempt, Some(t(0)), Some(t(ran))),
                want,
                "attempt {attempt} ran {ran}"
            );
        }
    }

    #[test]
    fn crash_loops_are_reported() {
        let sb = Some(sandbox(true));
        let looping = observed(
            sb.clone(),
            vec![exited("a", 1, 1, 95, 96), running("b", 0, 1)],
        );
        assert_eq!(
            backing_off(&pod(&["a", "b"]), Some(&looping), t(100)),
            vec![("a".to_string(), false, Duration::from_secs(6))]
        );
        // Due now (restarted by the same sync), or never restarted: no back-off.
        let due = observed(sb.clone(), vec![exited("a", 0, 1, 1, 2)]);
        assert!(backing_off(&pod(&["a"]), Some(&due), t(100)).is_empty());
        assert!(backing_off(&pod(&["a"]).policy("Never"), Some(&looping), t(100)).is_empty());
    }

    #[test]
    fn terminal_pods() {
        let sb = Some(sandbox(true));
        for (what, pod, obs, want) in [
            ("nothing observed", pod(&["a"]), None, false),
            (
                "phase Succeeded",
                pod(&["a"]).phase("Succeeded"),
                None,
                true,
            ),
            (
                "Never, all exited",
                pod(&["a"]).policy("Never"),
                Some(observed(sb.clone(), vec![exited("a", 0, 2, 1, 2)])),
                true,
            ),
            (
                "Never, one running",
                pod(&["a", "b"]).policy("Never"),
                Some(observed(
                    sb.clone(),
                    vec![exited("a", 0, 2, 1, 2), running("b", 0, 1)],
                )),
                false,
            ),
            (
                "OnFailure, exit 0",
                pod(&["a"]).policy("OnFailure"),
                Some(observed(sb.clone(), vec![exited("a", 0, 0, 1, 2)])),
                true,
            ),
            (
                "OnFailure, exit 1",
                pod(&["a"]).policy("OnFailure"),
                Some(observed(sb.clone(), vec![exited("a", 0, 1, 1, 2)])),
                false,
            ),
            (
                "Always, exit 0",
                pod(&["a"]),
                Some(observed(sb.clone(), vec![exited("a", 0, 0, 1, 2)])),
                false,
            ),
        ] {
            assert_eq!(is_terminal(&pod, obs.as_ref()), want, "{what}");
        }
    }
}
