//! A runtime in memory that records every call: the unit tests' stand-in for Docker, and the
//! seed of the hollow mode for scale tests. Containers "run" until a test makes them exit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::broadcast;

use super::{
    ImageSource, ObservedContainer, ObservedPod, ObservedSandbox, ObservedState, PodRef, Runtime,
    RuntimeError, RuntimeInfo, StartedContainer,
};
use crate::spec::{ContainerPlan, PullPolicy, SandboxPlan};

/// The recording fake.
pub struct FakeRuntime {
    state: Mutex<State>,
    changes: broadcast::Sender<String>,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, ObservedPod>,
    calls: Vec<String>,
    images: BTreeSet<String>,
    next_id: u64,
    next_ip: u8,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// An empty runtime where every image is present unless [`FakeRuntime::without_image`].
    pub fn new() -> Self {
        FakeRuntime {
            state: Mutex::new(State::default()),
            changes: broadcast::channel(256).0,
        }
    }

    /// Makes `image` count as missing (it cannot be pulled either).
    pub fn without_image(self, image: &str) -> Self {
        self.lock().images.insert(image.to_string());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread cannot leave the state half-written: every change is one
        // statement, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls made so far, as `verb args` lines.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Makes the running attempt of container `name` of pod `uid` exit with `code`.
    pub fn exit(&self, uid: &str, name: &str, code: i32) {
        let mut state = self.lock();
        if let Some(pod) = state.pods.get_mut(uid) {
            let now = Timestamp::now();
            for c in pod.containers.iter_mut().filter(|c| c.name == name) {
                if let ObservedState::Running { started_at } = c.state {
                    c.state = ObservedState::Exited {
                        exit_code: code,
                        reason: None,
                        message: None,
                        started_at,
                        finished_at: Some(now),
                    };
                }
            }
        }
        let _ = self.changes.send(uid.to_string());
    }

    /// Puts a pod in the runtime as if an earlier agent had made it.
    pub fn insert(&self, pod: ObservedPod) {
        self.lock().pods.insert(pod.uid.clone(), pod);
    }

    fn record(&self, call: String) {
        self.lock().calls.push(call);
    }
}

fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn prepare(&self) -> Result<RuntimeInfo, RuntimeError> {
        self.record("prepare".into());
        Ok(RuntimeInfo {
            version: "fake://1.0".into(),
            pod_cidr: Some("10.88.0.0/16".into()),
        })
    }

    async fn healthy(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn run_sandbox(
        &self,
        pod: &Pod,
        plan: &SandboxPlan,
        attempt: u32,
    ) -> Result<ObservedSandbox, RuntimeError> {
        let r = pod_ref(pod);
        self.record(format!("run_sandbox {} {attempt}", r.name));
        let mut state = self.lock();
        state.next_id += 1;
        state.next_ip = state.next_ip.wrapping_add(1);
        let sandbox = ObservedSandbox {
            id: format!("sandbox-{}", state.next_id),
            attempt,
            running: true,
            ip: Some(format!("10.88.0.{}", state.next_ip)),
        };
        let entry = state
            .pods
            .entry(r.uid.clone())
            .or_insert_with(|| ObservedPod {
                uid: r.uid.clone(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                ..Default::default()
            });
        entry.grace_period = Some(plan.grace_period);
        entry.sandboxes.insert(0, sandbox.clone());
        Ok(sandbox)
    }

    async fn start_container(
        &self,
        pod: &Pod,
        _sandbox: &ObservedSandbox,
        plan: &ContainerPlan,
        attempt: u32,
    ) -> Result<StartedContainer, RuntimeError> {
        let r = pod_ref(pod);
        self.record(format!(
            "start_container {} {} {attempt}",
            r.name, plan.name
        ));
        let mut state = self.lock();
        if state.images.contains(&plan.image) {
            return Err(match plan.pull_policy {
                PullPolicy::Never => RuntimeError::ErrImageNeverPull {
                    image: plan.image.clone(),
                },
                _ => RuntimeError::ErrImagePull {
                    image: plan.image.clone(),
                    message: "no registry".into(),
                },
            });
        }
        state.next_id += 1;
        let id = format!("container-{}", state.next_id);
        let pod = state
            .pods
            .get_mut(&r.uid)
            .ok_or_else(|| RuntimeError::Backend("no sandbox".into()))?;
        pod.containers.push(ObservedContainer {
            id: id.clone(),
            name: plan.name.clone(),
            attempt,
            image: plan.image.clone(),
            image_id: "sha256:fake".into(),
            state: ObservedState::Running {
                started_at: Some(Timestamp::now()),
            },
        });
        Ok(StartedContainer {
            id,
            image: ImageSource::Present,
        })
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(format!("remove_container {id}"));
        for pod in self.lock().pods.values_mut() {
            pod.containers.retain(|c| c.id != id);
        }
        Ok(())
    }

    async fn stop_pod(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.record(format!("stop_pod {uid} {}s", grace.as_secs()));
        let now = Timestamp::now();
        if let Some(pod) = self.lock().pods.get_mut(uid) {
            for c in &mut pod.containers {
                if let ObservedState::Running { started_at } = c.state {
                    c.state = ObservedState::Exited {
                        exit_code: 137,
                        reason: None,
                        message: None,
                        started_at,
                        finished_at: Some(now),
                    };
                }
            }
            for s in &mut pod.sandboxes {
                s.running = false;
            }
        }
        Ok(())
    }

    async fn kill_pod(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.record(format!("kill_pod {uid} {}s", grace.as_secs()));
        self.lock().pods.remove(uid);
        Ok(())
    }

    async fn observe_pod(&self, uid: &str) -> Result<Option<ObservedPod>, RuntimeError> {
        Ok(self.lock().pods.get(uid).cloned())
    }

    async fn list_pods(&self) -> Result<Vec<PodRef>, RuntimeError> {
        Ok(self
            .lock()
            .pods
            .values()
            .map(|p| PodRef {
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            })
            .collect())
    }

    fn changes(&self) -> BoxStream<'static, Result<String, RuntimeError>> {
        let rx = self.changes.subscribe();
        tokio_stream_from(rx).boxed()
    }
}

/// The broadcast receiver as a stream; a lagging receiver just misses changes (the resync
/// catches up), as a dropped runtime event would.
fn tokio_stream_from(
    rx: broadcast::Receiver<String>,
) -> impl futures::Stream<Item = Result<String, RuntimeError>> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(uid) => return Some((Ok(uid), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
