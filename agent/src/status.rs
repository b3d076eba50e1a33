//! The pod status the agent reports: phase, conditions, one status per container, IPs and start
//! time, computed from the pod and what the runtime has. Pure; the rules are upstream's
//! (`getPhase`, `GeneratePodReadyCondition` and friends in the kubelet).
//!
//! Fields the agent does not own (`qosClass`, `nominatedNodeName`, conditions set by others such
//! as `PodScheduled`) are kept from the current status. Times are whole seconds, as the API
//! stores them, so an unchanged pod computes an identical status and is not written again.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::runtime::{ObservedContainer, ObservedPod, ObservedState};
use crate::sync;

/// Conditions the agent owns; others are kept as they are.
const OWNED_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// Why a container could not be started, remembered by the agent between syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// Upstream's waiting reason (`ErrImageNeverPull`, `CreateContainerConfigError`, ...).
    pub reason: String,
    /// What went wrong.
    pub message: String,
    /// Failures in a row.
    pub count: u32,
    /// When the last one happened.
    pub at: Timestamp,
}

impl StartFailure {
    /// Whether the failure was a pull (`ErrImagePull`, or waiting on one: `ImagePullBackOff`).
    pub fn is_pull(&self) -> bool {
        self.reason == "ErrImagePull" || self.reason == "ImagePullBackOff"
    }

    /// How long until a failed pull may be tried again (upstream's image back-off: 10 s
    /// doubling up to 5 min); `None` when it may be tried now, and for other failures, which
    /// are retried at every sync.
    pub fn pull_retry_in(&self, now: Timestamp) -> Option<std::time::Duration> {
        if !self.is_pull() {
            return None;
        }
        let delay = crate::sync::BACKOFF_INITIAL
            .saturating_mul(1 << self.count.saturating_sub(1).min(10))
            .min(crate::sync::BACKOFF_MAX);
        let elapsed =
            std::time::Duration::try_from(now.duration_since(self.at)).unwrap_or_default();
        (elapsed < delay).then(|| delay - elapsed)
    }
}

/// What [`pod_status`] needs besides the pod and the runtime's view.
#[derive(Debug, Clone, Copy)]
pub struct StatusInputs<'a> {
    /// The node's IP.
    pub host_ip: &'a str,
    /// Start failures by container name.
    pub failures: &'a BTreeMap<String, StartFailure>,
    /// Now.
    pub now: Timestamp,
}

/// A timestamp as the API keeps it: whole seconds.
pub fn api_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// The status to report for `pod`.
pub fn pod_status(
    pod: &Pod,
    observed: Option<&ObservedPod>,
    inputs: &StatusInputs<'_>,
) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    // A finished pod's record is final: its containers may be gone by now, and what they did
    // must not turn back into "waiting".
    if matches!(old.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return old;
    }
    let mut status = old.clone();
    let spec = pod.spec.clone().unwrap_or_default();
    let empty = ObservedPod::default();
    let obs = observed.unwrap_or(&empty);

    // Init containers, in order; `done` stays true while each one succeeded.
    let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
    let mut init_statuses = Vec::new();
    let mut init_done = true;
    let mut unfinished_init = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let cs = container_status(pod, c, obs, inputs, has_init, true);
        let succeeded = matches!(
            &cs.state,
            Some(ContainerState { terminated: Some(t), .. }) if t.exit_code == 0
        );
        if !succeeded {
            init_done = false;
            unfinished_init.push(c.name.clone());
        }
        init_statuses.push(cs);
    }
    let app_statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(pod, c, obs, inputs, has_init, false))
        .collect();

    let phase = phase(pod, observed, &app_statuses, init_done);
    let now = api_time(inputs.now);

    let mut conditions: Vec<PodCondition> = old
        .conditions
        .iter()
        .flatten()
        .filter(|c| !OWNED_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    if !conditions.iter().any(|c| c.type_ == "PodScheduled") {
        conditions.insert(0, condition("PodScheduled", true, None, None));
    }
    let sandbox_ready = obs.sandbox().is_some_and(|s| s.running && s.ip.is_some());
    conditions.push(condition(
        "PodReadyToStartContainers",
        sandbox_ready,
        None,
        None,
    ));
    conditions.push(if init_done {
        condition("Initialized", true, None, None)
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                unfinished_init.join(" ")
            )),
        )
    });
    let unready: Vec<&str> = app_statuses
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let (containers_ready, ready) = if phase == "Succeeded" {
        let done = || condition("", false, Some("PodCompleted"), None);
        (done(), done())
    } else if !unready.is_empty() {
        let not_ready = || {
            condition(
                "",
                false,
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        };
        (not_ready(), not_ready())
    } else {
        let gates_unready: Vec<&str> = spec
            .readiness_gates
            .iter()
            .flatten()
            .map(|g| g.condition_type.as_str())
            .filter(|t| {
                !conditions
                    .iter()
                    .any(|c| c.type_ == *t && c.status == "True")
            })
            .collect();
        let ready = if gates_unready.is_empty() {
            condition("", true, None, None)
        } else {
            condition(
                "",
                false,
                Some("ReadinessGatesNotReady"),
                Some(format!(
                    "corresponding condition of pod readiness gate \"{}\" does not exist.",
                    gates_unready.join("\", \"")
                )),
            )
        };
        (condition("", true, None, None), ready)
    };
    conditions.push(PodCondition {
        type_: "ContainersReady".into(),
        ..containers_ready
    });
    conditions.push(PodCondition {
        type_: "Ready".into(),
        ..ready
    });
    // A condition keeps its transition time until its status changes; others' conditions are
    // left exactly as they are.
    for c in &mut conditions {
        let before = old.conditions.iter().flatten().find(|o| o.type_ == c.type_);
        let owned = OWNED_CONDITIONS.contains(&c.type_.as_str());
        c.last_transition_time = match before {
            Some(o) if !owned => o.last_transition_time.clone(),
            Some(o) if o.status == c.status => o.last_transition_time.clone().or(Some(now.clone())),
            _ => Some(now.clone()),
        };
    }

    status.phase = Some(phase.to_string());
    status.conditions = Some(conditions);
    status.container_statuses = Some(app_statuses);
    status.init_container_statuses = if init_statuses.is_empty() {
        old.init_container_statuses.filter(|s| !s.is_empty())
    } else {
        Some(init_statuses)
    };
    status.host_ip = Some(inputs.host_ip.to_string());
    status.host_ips = Some(vec![HostIP {
        ip: inputs.host_ip.to_string(),
    }]);
    if let Some(ip) = obs.sandbox().and_then(|s| s.ip.clone()) {
        status.pod_ips = Some(vec![PodIP { ip: ip.clone() }]);
        status.pod_ip = Some(ip);
    }
    if status.start_time.is_none() {
        status.start_time = Some(now);
    }
    if status.qos_class.is_none() {
        status.qos_class = Some(qos_class(pod).to_string());
    }
    status
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(String::from),
        message,
        ..Default::default()
    }
}

/// Upstream's `getPhase`, with terminal phases sticky.
fn phase(
    pod: &Pod,
    observed: Option<&ObservedPod>,
    apps: &[ContainerStatus],
    init_done: bool,
) -> &'static str {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => return "Succeeded",
        Some("Failed") => return "Failed",
        _ => {}
    }
    // An init container that failed for good fails the pod.
    let init_failed = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .any(|c| {
            observed
                .and_then(|o| o.attempts(&c.name).first().map(|a| a.state.clone()))
                .is_some_and(|s| {
                    matches!(s, ObservedState::Exited { exit_code, .. }
                        if exit_code != 0 && !sync::restarts(pod, exit_code))
                })
        });
    if init_failed {
        return "Failed";
    }
    if !init_done {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in apps {
        match &c.state {
            Some(ContainerState {
                running: Some(_), ..
            }) => running += 1,
            Some(ContainerState {
                terminated: Some(t),
                ..
            }) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            // Waiting to restart after a run counts as stopped, as upstream.
            _ if c
                .last_state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some()) =>
            {
                stopped += 1
            }
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped == 0 {
        return "Pending";
    }
    match sync::restart_policy(pod) {
        "Always" => "Running",
        _ if stopped == succeeded => "Succeeded",
        "Never" => "Failed",
        // OnFailure with a failure: it is restarting.
        _ => "Running",
    }
}

fn container_status(
    pod: &Pod,
    container: &Container,
    obs: &ObservedPod,
    inputs: &StatusInputs<'_>,
    has_init: bool,
    init: bool,
) -> ContainerStatus {
    let attempts = obs.attempts(&container.name);
    let latest = attempts.first().copied();
    let previous = attempts
        .iter()
        .skip(1)
        .find(|a| matches!(a.state, ObservedState::Exited { .. }));
    let failure = inputs.failures.get(&container.name);
    let mut status = ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: String::new(),
        restart_count: latest.map_or(0, |c| i32::try_from(c.attempt).unwrap_or(i32::MAX)),
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    let waiting = |reason: &str, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    };
    let Some(latest) = latest else {
        status.state = Some(match failure {
            Some(f) => waiting(&f.reason, Some(f.message.clone())),
            // Upstream's default: PodInitializing for every container of a pod with init
            // containers, ContainerCreating otherwise.
            None if has_init => waiting("PodInitializing", None),
            None => waiting("ContainerCreating", None),
        });
        return status;
    };
    status.image_id = docker_id(&latest.image_id);
    status.container_id = Some(docker_id(&latest.id));
    status.last_state = previous.map(|p| terminated_state(p));
    match &latest.state {
        ObservedState::Running { started_at } => {
            status.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: started_at.map(api_time),
                }),
                ..Default::default()
            });
            // Without probes (a later issue) a running container is ready and started.
            status.ready = !init;
            status.started = Some(true);
        }
        ObservedState::Created => {
            status.state = Some(waiting("ContainerCreating", None));
        }
        ObservedState::Exited { exit_code, .. } => {
            let restarting = sync::restarts(pod, *exit_code)
                && !matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
                && !(init && *exit_code == 0);
            if restarting {
                let delay = sync::backoff(latest.attempt, started(latest), finished(latest));
                status.state = Some(match failure {
                    Some(f) => waiting(&f.reason, Some(f.message.clone())),
                    None => waiting(
                        "CrashLoopBackOff",
                        Some(format!(
                            "back-off {} restarting failed container={} pod={}_{}({})",
                            human(delay),
                            container.name,
                            pod.metadata.name.as_deref().unwrap_or_default(),
                            pod.metadata.namespace.as_deref().unwrap_or_default(),
                            pod.metadata.uid.as_deref().unwrap_or_default(),
                        )),
                    ),
                });
                status.last_state = Some(terminated_state(latest));
            } else {
                status.state = Some(terminated_state(latest));
            }
        }
    }
    status
}

fn started(c: &ObservedContainer) -> Option<Timestamp> {
    match &c.state {
        ObservedState::Running { started_at } | ObservedState::Exited { started_at, .. } => {
            *started_at
        }
        ObservedState::Created => None,
    }
}

fn finished(c: &ObservedContainer) -> Option<Timestamp> {
    match &c.state {
        ObservedState::Exited { finished_at, .. } => *finished_at,
        _ => None,
    }
}

fn terminated_state(c: &ObservedContainer) -> ContainerState {
    let ObservedState::Exited {
        exit_code,
        reason,
        message,
        started_at,
        finished_at,
    } = &c.state
    else {
        return ContainerState::default();
    };
    let reason = reason.clone().unwrap_or_else(|| {
        if *exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string()
    });
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id: Some(docker_id(&c.id)),
            exit_code: *exit_code,
            reason: Some(reason),
            message: message.clone().filter(|m| !m.is_empty()),
            started_at: started_at.map(api_time),
            finished_at: finished_at.map(api_time),
            signal: None,
        }),
        ..Default::default()
    }
}

/// `docker://<id>`, the form upstream reports container and image ids in for Docker.
fn docker_id(id: &str) -> String {
    if id.is_empty() || id.contains("://") {
        id.to_string()
    } else {
        format!("docker://{id}")
    }
}

/// `10s`, `2m40s`, `5m0s`: Go's duration format, as upstream's back-off message prints it.
fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// Upstream's QoS class: BestEffort without any request or limit, Guaranteed when every
/// container limits CPU and memory to exactly what it requests, Burstable otherwise.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let containers: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let relevant = |m: &BTreeMap<String, _>| m.keys().any(|k| k == "cpu" || k == "memory");
        if relevant(&requests) || relevant(&limits) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let Some(limit) = limits.get(resource) else {
                guaranteed = false;
                continue;
            };
            // A missing request defaults to the limit.
            if let Some(request) = requests.get(resource) {
                let same = match resource {
                    "cpu" => {
                        miniorch_api::quantity::milli_value(request).ok()
                            == miniorch_api::quantity::milli_value(limit).ok()
                    }
                    _ => {
                        miniorch_api::quantity::value(request).ok()
                            == miniorch_api::quantity::value(limit).ok()
                    }
                };
                if !same {
                    guaranteed = false;
                }
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::tests::{PodExt, created, exited, observed, pod, running, sandbox, t};
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn inputs<'a>(failures: &'a BTreeMap<String, StartFailure>) -> StatusInputs<'a> {
        StatusInputs {
            host_ip: "192.168.1.10",
            failures,
            now: t(100),
        }
    }

    fn cond<'a>(s: &'a PodStatus, type_: &str) -> (&'a str, Option<&'a str>) {
        let c = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_}"));
        (c.status.as_str(), c.reason.as_deref())
    }

    fn state_of(s: &PodStatus, i: usize) -> String {
        let cs = &s.container_statuses.as_ref().unwrap()[i];
        let st = cs.state.as_ref().unwrap();
        if let Some(w) = &st.waiting {
            format!("waiting:{}", w.reason.as_deref().unwrap_or(""))
        } else if let Some(t) = &st.terminated {
            format!(
                "terminated:{}:{}",
                t.exit_code,
                t.reason.as_deref().unwrap_or("")
            )
        } else {
            "running".into()
        }
    }

    #[test]
    fn phases_states_and_readiness() {
        let none = BTreeMap::new();
        let mut never_pull = BTreeMap::new();
        never_pull.insert(
            "a".to_string(),
            StartFailure {
                reason: "ErrImageNeverPull".into(),
                message: "no image".into(),
                count: 1,
                at: t(0),
            },
        );
        let sb = || Some(sandbox(true));
        /// (what, pod, observed, failures, phase, states, Ready)
        type Case<'a> = (
            &'a str,
            Pod,
            Option<ObservedPod>,
            &'a BTreeMap<String, StartFailure>,
            &'a str,
            Vec<&'a str>,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing yet",
                pod(&["a"]),
                None,
                &none,
                "Pending",
                vec!["waiting:ContainerCreating"],
                "False",
            ),
            (
                "image missing",
                pod(&["a"]),
                Some(observed(sb(), vec![])),
                &never_pull,
                "Pending",
                vec!["waiting:ErrImageNeverPull"],
                "False",
            ),
            (
                "running",
                pod(&["a"]),
                Some(observed(sb(), vec![running("a", 0, 1)])),
                &none,
                "Running",
                vec!["running"],
                "True",
            ),
            (
                "one of two running",
                pod(&["a", "b"]),
                Some(observed(sb(), vec![running("a", 0, 1)])),
                &none,
                "Pending",
                vec!["running", "waiting:ContainerCreating"],
                "False",
            ),
            (
                "created",
                pod(&["a"]),
                Some(observed(sb(), vec![created("a", 0)])),
                &none,
                "Pending",
                vec!["waiting:ContainerCreating"],
                "False",
            ),
            (
                "Never, exit 0",
                pod(&["a"]).policy("Never"),
                Some(observed(sb(), vec![exited("a", 0, 0, 1, 2)])),
                &none,
                "Succeeded",
                vec!["terminated:0:Completed"],
                "False",
            ),
            (
                "Never, exit 3",
                pod(&["a"]).policy("Never"),
                Some(observed(sb(), vec![exited("a", 0, 3, 1, 2)])),
                &none,
                "Failed",
                vec!["terminated:3:Error"],
                "False",
            ),
            (
                "Never, one done one running",
                pod(&["a", "b"]).policy("Never"),
                Some(observed(
                    sb(),
                    vec![exited("a", 0, 0, 1, 2), running("b", 0, 1)],
                )),
                &none,
                "Running",
                vec!["terminated:0:Completed", "running"],
                "False",
            ),
            (
                "Always, crashed: back-off",
                pod(&["a"]),
                Some(observed(
                    sb(),
                    vec![exited("a", 1, 1, 95, 96), exited("a", 0, 1, 1, 2)],
                )),
                &none,
                "Running",
                vec!["waiting:CrashLoopBackOff"],
                "False",
            ),
            (
                "OnFailure, exit 0",
                pod(&["a"]).policy("OnFailure"),
                Some(observed(sb(), vec![exited("a", 0, 0, 1, 2)])),
                &none,
                "Succeeded",
                vec!["terminated:0:Completed"],
                "False",
            ),
            (
                "OnFailure, exit 1",
                pod(&["a"]).policy("OnFailure"),
                Some(observed(sb(), vec![exited("a", 0, 1, 1, 2)])),
                &none,
                "Running",
                vec!["waiting:CrashLoopBackOff"],
                "False",
            ),
            (
                "init running",
                pod(&["a"]).init(&["i"]),
                Some(observed(sb(), vec![running("i", 0, 1)])),
                &none,
                "Pending",
                vec!["waiting:PodInitializing"],
                "False",
            ),
            (
                "init failed, Never",
                pod(&["a"]).init(&["i"]).policy("Never"),
                Some(observed(sb(), vec![exited("i", 0, 1, 1, 2)])),
                &none,
                "Failed",
                vec!["waiting:PodInitializing"],
                "False",
            ),
            (
                "init done",
                pod(&["a"]).init(&["i"]),
                Some(observed(
                    sb(),
                    vec![exited("i", 0, 0, 1, 2), running("a", 0, 3)],
                )),
                &none,
                "Running",
                vec!["running"],
                "True",
            ),
        ];
        for (what, pod, obs, failures, phase, states, ready) in cases {
            let s = pod_status(&pod, obs.as_ref(), &inputs(failures));
            assert_eq!(s.phase.as_deref(), Some(phase), "{what}");
            let got: Vec<String> = (0..states.len()).map(|i| state_of(&s, i)).collect();
            assert_eq!(got, states, "{what}");
            assert_eq!(cond(&s, "Ready").0, ready, "{what}");
            assert_eq!(cond(&s, "PodScheduled").0, "True", "{what}");
        }
    }

    #[test]
    fn a_finished_pods_status_is_final() {
        let none = BTreeMap::new();
        let mut p = pod(&["a"]).policy("Never");
        let done = pod_status(
            &p,
            Some(&observed(
                Some(sandbox(true)),
                vec![exited("a", 0, 0, 1, 2)],
            )),
            &inputs(&none),
        );
        assert_eq!(done.phase.as_deref(), Some("Succeeded"));
        p.status = Some(done.clone());
        // Later its containers are gone (removed by hand, or the node was wiped).
        assert_eq!(pod_status(&p, None, &inputs(&none)), done);
    }

    #[test]
    fn container_details() {
        let none = BTreeMap::new();
        let p = pod(&["a"]);
        let obs = observed(
            Some(sandbox(true)),
            vec![running("a", 2, 50), exited("a", 1, 137, 40, 45)],
        );
        let s = pod_status(&p, Some(&obs), &inputs(&none));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        assert_eq!(cs.container_id.as_deref(), Some("docker://a-2"));
        assert_eq!(cs.image, "img-a");
        assert_eq!(cs.image_id, "docker://sha256:1");
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(
            (last.exit_code, last.reason.as_deref()),
            (137, Some("Error"))
        );
        assert_eq!(last.finished_at, Some(Time(t(45))));
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(
            s.pod_ips,
            Some(vec![PodIP {
                ip: "10.0.0.2".into()
            }])
        );
        assert_eq!(s.host_ip.as_deref(), Some("192.168.1.10"));
        assert_eq!(s.start_time, Some(Time(t(100))));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        for (c, want) in [
            ("PodReadyToStartContainers", ("True", None)),
            ("Initialized", ("True", None)),
            ("ContainersReady", ("True", None)),
            ("Ready", ("True", None)),
        ] {
            assert_eq!(cond(&s, c), want, "{c}");
        }
    }

    #[test]
    fn unchanged_pods_compute_the_same_status() {
        let none = BTreeMap::new();
        let mut p = pod(&["a"]);
        let obs = observed(Some(sandbox(true)), vec![running("a", 0, 1)]);
        let first = pod_status(&p, Some(&obs), &inputs(&none));
        p.status = Some(first.clone());
        let later = StatusInputs {
            now: t(500),
            ..inputs(&none)
        };
        assert_eq!(pod_status(&p, Some(&obs), &later), first);
        // A change moves only the conditions that changed.
        let crashed = observed(Some(sandbox(true)), vec![exited("a", 0, 1, 1, 499)]);
        let next = pod_status(
            &p,
            Some(&crashed),
            &StatusInputs {
                now: t(500),
                ..inputs(&none)
            },
        );
        let when = |s: &PodStatus, c: &str| {
            s.conditions
                .iter()
                .flatten()
                .find(|x| x.type_ == c)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(when(&next, "Ready"), Some(Time(t(500))));
        assert_eq!(when(&next, "Initialized"), Some(Time(t(100))));
        assert_eq!(next.start_time, Some(Time(t(100))));
    }

    #[test]
    fn others_conditions_are_kept() {
        let none = BTreeMap::new();
        let mut p = pod(&["a"]);
        p.status = Some(PodStatus {
            conditions: Some(vec![
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(t(5))),
                    ..Default::default()
                },
                PodCondition {
                    type_: "example.com/gate".into(),
                    status: "False".into(),
                    ..Default::default()
                },
            ]),
            qos_class: Some("Burstable".into()),
            ..Default::default()
        });
        p.spec.as_mut().unwrap().readiness_gates =
            Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
                condition_type: "example.com/gate".into(),
            }]);
        let obs = observed(Some(sandbox(true)), vec![running("a", 0, 1)]);
        let s = pod_status(&p, Some(&obs), &inputs(&none));
        let types: Vec<&str> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "PodScheduled",
                "example.com/gate",
                "PodReadyToStartContainers",
                "Initialized",
                "ContainersReady",
                "Ready"
            ]
        );
        assert_eq!(
            s.conditions.as_ref().unwrap()[0].last_transition_time,
            Some(Time(t(5)))
        );
        assert_eq!(cond(&s, "ContainersReady"), ("True", None));
        assert_eq!(cond(&s, "Ready"), ("False", Some("ReadinessGatesNotReady")));
        assert_eq!(s.qos_class.as_deref(), Some("Burstable"));
    }

    #[test]
    fn failed_pulls_back_off() {
        let failure = |reason: &str, count| StartFailure {
            reason: reason.into(),
            message: String::new(),
            count,
            at: t(0),
        };
        let secs = std::time::Duration::from_secs;
        for (reason, count, now, want) in [
            ("ErrImagePull", 1, 4, Some(secs(6))),
            ("ErrImagePull", 1, 10, None),
            ("ImagePullBackOff", 2, 5, Some(secs(15))),
            ("ErrImagePull", 9, 100, Some(secs(200))),
            ("ErrImageNeverPull", 5, 1, None),
            ("CreateContainerConfigError", 5, 1, None),
        ] {
            assert_eq!(
                failure(reason, count).pull_retry_in(t(now)),
                want,
                "{reason} {count} {now}"
            );
        }
    }

    #[test]
    fn qos_classes() {
        let res = |req: &[(&str, &str)], lim: &[(&str, &str)]| {
            let map = |kv: &[(&str, &str)]| {
                Some(
                    kv.iter()
                        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                        .collect(),
                )
            };
            Some(ResourceRequirements {
                requests: map(req),
                limits: map(lim),
                ..Default::default()
            })
        };
        for (what, resources, want) in [
            ("nothing", None, "BestEffort"),
            ("requests only", res(&[("cpu", "100m")], &[]), "Burstable"),
            (
                "limits only (requests default to them)",
                res(&[], &[("cpu", "1"), ("memory", "1Gi")]),
                "Guaranteed",
            ),
            (
                "equal",
                res(
                    &[("cpu", "1000m"), ("memory", "1Gi")],
                    &[("cpu", "1"), ("memory", "1Gi")],
                ),
                "Guaranteed",
            ),
            (
                "unequal",
                res(
                    &[("cpu", "500m"), ("memory", "1Gi")],
                    &[("cpu", "1"), ("memory", "1Gi")],
                ),
                "Burstable",
            ),
            ("cpu limit only", res(&[], &[("cpu", "1")]), "Burstable"),
        ] {
            let mut p = pod(&["a"]);
            p.spec.as_mut().unwrap().containers[0].resources = resources;
            assert_eq!(qos_class(&p), want, "{what}");
        }
    }
}
