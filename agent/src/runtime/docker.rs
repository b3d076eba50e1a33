//! The Docker runtime (bollard): a pod is a `miniorch/pause` container on the cluster's bridge
//! network holding the pod IP, plus one container per spec container joined to its network and
//! IPC namespaces (`container:<pause>`), which also gives them the pod's hostname.
//!
//! Everything made carries labels naming the cluster, the node and the pod (upstream
//! dockershim's `io.kubernetes.*` names), and deterministic names
//! (`k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`), so a restarted agent finds what exists
//! instead of making it twice, and `miniorch down` removes a cluster by label.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig, Ipam,
    IpamConfig, NetworkCreateRequest, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use super::{
    ImageSource, ObservedContainer, ObservedPod, ObservedSandbox, ObservedState, PodRef, Runtime,
    RuntimeError, RuntimeInfo, StartedContainer,
};
use crate::images::IMAGE_LABEL;
use crate::spec::{self, ContainerPlan, PullPolicy, SandboxPlan};

/// Label keys on everything the agent makes.
pub mod labels {
    /// The cluster id (`miniorch down` removes by it).
    pub const CLUSTER: &str = "io.miniorch.cluster";
    /// The node whose agent made it (several agents may share one Docker engine).
    pub const NODE: &str = "io.miniorch.node";
    /// Pod name.
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    /// Pod namespace.
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// Pod uid: how the agent finds a pod's containers.
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    /// Name of the container in the pod spec (`POD` for the sandbox).
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// `podsandbox` or `container`.
    pub const KIND: &str = "io.kubernetes.docker.type";
    /// Attempt number (restart count).
    pub const ATTEMPT: &str = "io.kubernetes.container.restartCount";
    /// The pod's grace period in seconds.
    pub const GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
}

/// Docker's `com.docker.network.driver.mtu` option.
const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Longest a pull may take before it counts as failed.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// Shortest time between SIGTERM and SIGKILL (upstream's `minimumGracePeriodInSeconds`).
const MIN_GRACE: Duration = Duration::from_secs(2);
/// Slack on top of a stop's grace period before the Docker call itself times out.
const STOP_SLACK: Duration = Duration::from_secs(30);

/// Who this runtime is and where it puts pods.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Cluster id (labels, network name).
    pub cluster_id: String,
    /// Node name (labels).
    pub node_name: String,
    /// Node IP (the pod IP of host-network pods).
    pub node_ip: String,
    /// The sandbox image.
    pub pause_image: String,
    /// Subnet for the pod network when it has to be created (Docker picks one otherwise).
    pub pod_cidr: Option<String>,
}

/// The Docker runtime.
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    network: String,
    /// Inspections of containers whose state has not changed since, by id: a container that
    /// is running or has exited keeps its details, so one list call usually suffices. Docker
    /// events evict entries, because the engine's container list can still show a container
    /// as running for a moment after it has died.
    inspected: Arc<Mutex<Inspections>>,
}

/// Cached inspections, and the containers Docker reported a change for since.
#[derive(Default)]
struct Inspections {
    entries: HashMap<String, Cached>,
    /// Ids to inspect again whatever the list says.
    dirty: std::collections::HashSet<String>,
}

/// Ids marked dirty at most; beyond that everything is inspected afresh.
const MAX_DIRTY: usize = 10_000;

impl Inspections {
    /// The cached item of `id` if it is still valid for the listed `state`.
    fn lookup(&mut self, id: &str, state: &str) -> Option<Item> {
        if self.dirty.remove(id) {
            self.entries.remove(id);
            return None;
        }
        self.entries
            .get(id)
            .filter(|c| c.state == state)
            .map(|c| c.item.clone())
    }

    /// Docker reported a change of `id`.
    fn evict(&mut self, id: &str) {
        self.entries.remove(id);
        if self.dirty.len() >= MAX_DIRTY {
            self.dirty.clear();
            self.entries.clear();
        }
        self.dirty.insert(id.to_string());
    }

    /// Drops what is cached for pod `uid` except the ids in `keep`.
    fn retain(&mut self, uid: &str, keep: &[String]) {
        self.entries
            .retain(|id, c| c.uid != uid || keep.contains(id));
    }
}

fn lock(inspected: &Mutex<Inspections>) -> std::sync::MutexGuard<'_, Inspections> {
    // Entries are replaced whole, so a poisoned cache is still consistent.
    inspected.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
struct Cached {
    uid: String,
    state: String,
    item: Item,
}

#[derive(Clone)]
enum Item {
    Sandbox(ObservedSandbox),
    Container(ObservedContainer),
}

/// Connects to Docker at `host` (`unix://...`, `tcp://...`; default: `$DOCKER_HOST` or the
/// local socket) and settles the API version with the engine.
pub async fn connect(host: Option<&str>) -> Result<Docker, RuntimeError> {
    let docker = match host {
        Some(h) => Docker::connect_with_host(h),
        None => Docker::connect_with_defaults(),
    }
    .map_err(|e| RuntimeError::Backend(format!("cannot connect to Docker: {e}")))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| RuntimeError::Backend(format!("Docker does not answer: {e}")))
}

/// The network pods of cluster `cluster_id` join.
pub fn network_name(cluster_id: &str) -> String {
    format!("miniorch-{cluster_id}")
}

fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn backend(what: &str) -> impl FnOnce(DockerError) -> RuntimeError + '_ {
    move |e| RuntimeError::Backend(format!("{what}: {e}"))
}

/// A Docker timestamp; Docker's zero time (`0001-01-01T00:00:00Z`) means "never".
fn docker_time(s: Option<&str>) -> Option<Timestamp> {
    let t: Timestamp = s?.parse().ok()?;
    (t.as_second() > 0).then_some(t)
}

/// Docker name of attempt `attempt` of container `container` (`POD` for the sandbox).
pub fn container_name(pod: &Pod, container: &str, attempt: u32) -> String {
    format!(
        "k8s_{container}_{}_{}_{}_{attempt}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

impl DockerRuntime {
    /// A runtime over a connected client.
    pub fn new(docker: Docker, config: DockerConfig) -> Self {
        DockerRuntime {
            network: network_name(&config.cluster_id),
            docker,
            config,
            inspected: Arc::new(Mutex::new(Inspections::default())),
        }
    }

    /// The Docker client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Inspections> {
        lock(&self.inspected)
    }

    fn labels(
        &self,
        pod: &Pod,
        container: &str,
        kind: &str,
        attempt: u32,
        grace: Duration,
    ) -> HashMap<String, String> {
        let meta = &pod.metadata;
        HashMap::from([
            (labels::CLUSTER.into(), self.config.cluster_id.clone()),
            (labels::NODE.into(), self.config.node_name.clone()),
            (
                labels::POD_NAME.into(),
                meta.name.clone().unwrap_or_default(),
            ),
            (
                labels::POD_NAMESPACE.into(),
                meta.namespace.clone().unwrap_or_default(),
            ),
            (labels::POD_UID.into(), meta.uid.clone().unwrap_or_default()),
            (labels::CONTAINER_NAME.into(), container.into()),
            (labels::KIND.into(), kind.into()),
            (labels::ATTEMPT.into(), attempt.to_string()),
            (labels::GRACE.into(), grace.as_secs().to_string()),
        ])
    }

    /// Containers of this cluster and node (of one pod if `uid` is given), stopped ones too.
    async fn list(
        &self,
        uid: Option<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let mut label_filters = vec![
            format!("{}={}", labels::CLUSTER, self.config.cluster_id),
            format!("{}={}", labels::NODE, self.config.node_name),
        ];
        if let Some(uid) = uid {
            label_filters.push(format!("{}={uid}", labels::POD_UID));
        }
        let filters = HashMap::from([("label", label_filters)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(backend("listing containers"))
    }

    /// Creates a container named `name`; a leftover of the same name (an earlier agent died
    /// between create and start) is removed first.
    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, DockerError> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        match self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(r) => Ok(r.id),
            Err(e) if status_code(&e) == Some(409) => {
                self.remove(name)
                    .await
                    .map_err(|e| DockerError::DockerResponseServerError {
                        status_code: 409,
                        message: e.to_string(),
                    })?;
                Ok(self.docker.create_container(Some(options), body).await?.id)
            }
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(RuntimeError::Backend(format!(
                "removing container {id}: {e}"
            ))),
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // As upstream: even a zero grace period gives a process 2 s to exit on SIGTERM.
        let grace = grace.max(MIN_GRACE);
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        // The engine answers only once the container is down, up to the grace period later.
        let docker = self.docker.clone().with_timeout(grace + STOP_SLACK);
        match docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped; 404: already gone.
            Err(e) if matches!(status_code(&e), Some(304 | 404)) => Ok(()),
            Err(e) => Err(RuntimeError::Backend(format!(
                "stopping container {id}: {e}"
            ))),
        }
    }

    /// Makes `image` available per `policy`.
    async fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
    ) -> Result<ImageSource, RuntimeError> {
        let local = match self.docker.inspect_image(image).await {
            Ok(info) => Some(info),
            Err(e) if status_code(&e) == Some(404) => None,
            Err(e) => {
                return Err(RuntimeError::Backend(format!(
                    "inspecting image {image}: {e}"
                )));
            }
        };
        let built_here = local
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.labels.as_ref())
            .is_some_and(|l| l.contains_key(IMAGE_LABEL));
        match (policy, local.is_some()) {
            (PullPolicy::Never | PullPolicy::IfNotPresent, true) => Ok(ImageSource::Present),
            (PullPolicy::Never, false) => Err(RuntimeError::ErrImageNeverPull {
                image: image.into(),
            }),
            // miniorch's own images exist in no registry; pulling them could only fail.
            (PullPolicy::Always, true) if built_here => Ok(ImageSource::BuiltLocally),
            (_, present) => match self.pull(image).await {
                Ok(()) => Ok(ImageSource::Pulled),
                Err(error) if present => Ok(ImageSource::LocalAfterFailedPull { error }),
                Err(message) => Err(RuntimeError::ErrImagePull {
                    image: image.into(),
                    message,
                }),
            },
        }
    }

    async fn pull(&self, image: &str) -> Result<(), String> {
        let (repo, tag) = spec::split_image(image);
        // An empty tag would pull every tag of the repository.
        let options = if tag.starts_with("sha256:") {
            CreateImageOptionsBuilder::new().from_image(image).build()
        } else {
            CreateImageOptionsBuilder::new()
                .from_image(repo)
                .tag(tag)
                .build()
        };
        let pull = self
            .docker
            .create_image(Some(options), None, None)
            .try_for_each(|_| async { Ok(()) });
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}s", PULL_TIMEOUT.as_secs())),
        }
    }

    /// What one inspected container means for the agent.
    fn convert(&self, info: &ContainerInspectResponse) -> Option<(String, Item)> {
        let id = info.id.clone()?;
        let labels = info.config.as_ref()?.labels.as_ref()?;
        let uid = labels.get(labels::POD_UID)?.clone();
        let attempt = labels
            .get(labels::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let state = info.state.clone().unwrap_or_default();
        let running = matches!(
            state.status,
            Some(
                ContainerStateStatusEnum::RUNNING
                    | ContainerStateStatusEnum::PAUSED
                    | ContainerStateStatusEnum::RESTARTING
            )
        );
        if labels.get(labels::KIND).map(String::as_str) == Some("podsandbox") {
            let host_network = info
                .host_config
                .as_ref()
                .and_then(|h| h.network_mode.as_deref())
                == Some("host");
            let ip = if host_network {
                Some(self.config.node_ip.clone())
            } else {
                info.network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .and_then(|n| n.get(&self.network))
                    .and_then(|e| e.ip_address.clone())
                    .filter(|ip| !ip.is_empty())
            };
            return Some((
                uid,
                Item::Sandbox(ObservedSandbox {
                    id,
                    attempt,
                    running,
                    ip,
                }),
            ));
        }
        let started_at = docker_time(state.started_at.as_deref());
        let finished_at = docker_time(state.finished_at.as_deref());
        let error = state.error.clone().filter(|e| !e.is_empty());
        let exit_code = state
            .exit_code
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(0);
        let observed = match state.status {
            _ if running => ObservedState::Running { started_at },
            // A start that failed leaves the container "created" with an error (or "exited"
            // without ever having started): report it as a finished attempt, so restart
            // policy and back-off apply as to any other failure.
            Some(ContainerStateStatusEnum::CREATED) if error.is_none() && exit_code == 0 => {
                ObservedState::Created
            }
            _ if started_at.is_none() => ObservedState::Exited {
                exit_code: if exit_code == 0 { 128 } else { exit_code },
                reason: Some("StartError".into()),
                message: error,
                started_at: None,
                finished_at: finished_at.or_else(|| docker_time(info.created.as_deref())),
            },
            _ => ObservedState::Exited {
                exit_code,
                reason: state
                    .oom_killed
                    .unwrap_or(false)
                    .then(|| "OOMKilled".to_string()),
                message: error,
                started_at,
                finished_at,
            },
        };
        Some((
            uid,
            Item::Container(ObservedContainer {
                id,
                name: labels
                    .get(labels::CONTAINER_NAME)
                    .cloned()
                    .unwrap_or_default(),
                attempt,
                image: info
                    .config
                    .as_ref()
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default(),
                image_id: info.image.clone().unwrap_or_default(),
                state: observed,
            }),
        ))
    }

    async fn ensure_network(&self) -> Result<Option<String>, RuntimeError> {
        let subnet_of = |ipam: Option<&Ipam>| {
            ipam.and_then(|i| i.config.as_ref())
                .and_then(|c| c.iter().find_map(|c| c.subnet.clone()))
        };
        match self.docker.inspect_network(&self.network, None).await {
            Ok(net) => {
                let subnet = subnet_of(net.ipam.as_ref());
                if let (Some(want), Some(have)) = (&self.config.pod_cidr, &subnet)
                    && want != have
                {
                    tracing::warn!(network = %self.network, %want, %have, "the pod network exists with another subnet; keeping it");
                }
                return Ok(subnet);
            }
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => {
                return Err(RuntimeError::Backend(format!(
                    "inspecting network {}: {e}",
                    self.network
                )));
            }
        }
        // Pods should see the same MTU as the engine's default bridge (hosts behind tunnels
        // lower it, and a user-defined network would not follow).
        let mtu = self
            .docker
            .inspect_network("bridge", None)
            .await
            .ok()
            .and_then(|n| n.options)
            .and_then(|o| o.get(MTU_OPTION).cloned());
        let request = NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                labels::CLUSTER.to_string(),
                self.config.cluster_id.clone(),
            )])),
            ipam: self.config.pod_cidr.as_ref().map(|cidr| Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(cidr.clone()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: mtu.map(|m| HashMap::from([(MTU_OPTION.to_string(), m)])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => tracing::info!(network = %self.network, "created the pod network"),
            // Another agent on this engine made it meanwhile.
            Err(e) if status_code(&e) == Some(409) => {}
            Err(e) => {
                return Err(RuntimeError::Backend(format!(
                    "creating network {}: {e}",
                    self.network
                )));
            }
        }
        let net = self
            .docker
            .inspect_network(&self.network, None)
            .await
            .map_err(backend("inspecting the pod network"))?;
        Ok(subnet_of(net.ipam.as_ref()))
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    async fn prepare(&self) -> Result<RuntimeInfo, RuntimeError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(backend("asking Docker its version"))?;
        let pod_cidr = self.ensure_network().await?;
        Ok(RuntimeInfo {
            version: format!(
                "docker://{}",
                version.version.unwrap_or_else(|| "unknown".into())
            ),
            pod_cidr,
        })
    }

    async fn healthy(&self) -> Result<(), RuntimeError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(backend("pinging Docker"))
    }

    async fn run_sandbox(
        &self,
        pod: &Pod,
        plan: &SandboxPlan,
        attempt: u32,
    ) -> Result<ObservedSandbox, RuntimeError> {
        let image = &self.config.pause_image;
        let sandbox_error = |what: &str, e: &dyn std::fmt::Display| {
            RuntimeError::CreatePodSandboxError(format!("{what}: {e}"))
        };
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &plan.host_ports {
            port_bindings
                .entry(format!("{}/{}", p.container_port, p.protocol))
                .or_default()
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: p.host_ip.clone(),
                    host_port: Some(p.host_port.to_string()),
                });
        }
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            hostname: plan.hostname.clone(),
            domainname: plan.domainname.clone(),
            labels: Some(self.labels(pod, "POD", "podsandbox", attempt, plan.grace_period)),
            exposed_ports: (!port_bindings.is_empty())
                .then(|| port_bindings.keys().cloned().collect()),
            host_config: Some(HostConfig {
                network_mode: Some(if plan.host_network {
                    "host".into()
                } else {
                    self.network.clone()
                }),
                // App containers join this IPC namespace.
                ipc_mode: Some("shareable".into()),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = container_name(pod, "POD", attempt);
        let id = match self.create(&name, body).await {
            Ok(id) => id,
            // Creating from a missing image answers 404 (the only 404 of a create).
            Err(e) if status_code(&e) == Some(404) => {
                return Err(RuntimeError::CreatePodSandboxError(format!(
                    "the pause image {image} is not on this node (`miniorch up` loads it): {e}"
                )));
            }
            Err(e) => return Err(sandbox_error("creating the pause container", &e)),
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            let _ = self.remove(&id).await;
            return Err(sandbox_error("starting the pause container", &e));
        }
        let info = self
            .docker
            .inspect_container(&id, None)
            .await
            .map_err(|e| sandbox_error("inspecting the pause container", &e))?;
        match self.convert(&info) {
            Some((uid, Item::Sandbox(sandbox))) => {
                // The next observation of the pod need not inspect it again.
                self.cache().entries.insert(
                    id,
                    Cached {
                        uid,
                        state: "running".into(),
                        item: Item::Sandbox(sandbox.clone()),
                    },
                );
                Ok(sandbox)
            }
            _ => Err(RuntimeError::CreatePodSandboxError(
                "the pause container lost its labels".into(),
            )),
        }
    }

    async fn start_container(
        &self,
        pod: &Pod,
        sandbox: &ObservedSandbox,
        plan: &ContainerPlan,
        attempt: u32,
    ) -> Result<StartedContainer, RuntimeError> {
        let source = self.ensure_image(&plan.image, plan.pull_policy).await?;
        let r = &plan.resources;
        // Upstream's conversions: quota over a 100 ms period, shares = millicores * 1024 / 1000
        // with a floor of 2 (BestEffort).
        let (cpu_period, cpu_quota) = match r.cpu_limit_millis {
            Some(m) if m > 0 => (Some(100_000), Some((m * 100).max(1000))),
            _ => (None, None),
        };
        let cpu_shares = Some(r.cpu_request_millis.map_or(2, |m| (m * 1024 / 1000).max(2)));
        let namespace = format!("container:{}", sandbox.id);
        let body = ContainerCreateBody {
            image: Some(plan.image.clone()),
            entrypoint: plan.command.clone().filter(|c| !c.is_empty()),
            cmd: plan.args.clone().filter(|a| !a.is_empty()),
            env: Some(plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: plan.working_dir.clone(),
            tty: Some(plan.tty),
            open_stdin: Some(plan.stdin),
            stdin_once: Some(plan.stdin_once),
            user: plan.user.clone(),
            labels: Some(self.labels(pod, &plan.name, "container", attempt, plan.grace_period)),
            host_config: Some(HostConfig {
                network_mode: Some(namespace.clone()),
                ipc_mode: Some(namespace),
                memory: r.memory_limit,
                // No swap beyond the limit, as upstream.
                memory_swap: r.memory_limit,
                cpu_period,
                cpu_quota,
                cpu_shares,
                privileged: Some(plan.privileged),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = container_name(pod, &plan.name, attempt);
        let id = self
            .create(&name, body)
            .await
            .map_err(|e| RuntimeError::CreateContainerError(e.to_string()))?;
        if let Err(e) = self.docker.start_container(&id, None).await {
            // The failed attempt stays, so that its state tells what went wrong and the
            // restart policy decides what happens next.
            return Err(RuntimeError::RunContainerError(e.to_string()));
        }
        Ok(StartedContainer { id, image: source })
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.cache().entries.remove(id);
        self.remove(id).await
    }

    async fn stop_pod(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        let containers = self.list(Some(uid)).await?;
        let running = |sandbox: bool| {
            containers
                .iter()
                .filter(move |c| {
                    let is_sandbox = c
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(labels::KIND))
                        .map(String::as_str)
                        == Some("podsandbox");
                    is_sandbox == sandbox
                        && c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                })
                .filter_map(|c| c.id.clone())
                .collect::<Vec<_>>()
        };
        // App containers together, then the sandbox, so they never lose their network first.
        let stops = running(false)
            .into_iter()
            .map(|id| async move { self.stop(&id, grace).await });
        futures::future::try_join_all(stops).await?;
        for id in running(true) {
            self.stop(&id, grace).await?;
        }
        Ok(())
    }

    async fn kill_pod(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.stop_pod(uid, grace).await?;
        let containers = self.list(Some(uid)).await?;
        let (sandboxes, apps): (Vec<_>, Vec<_>) = containers.iter().partition(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(labels::KIND))
                .map(String::as_str)
                == Some("podsandbox")
        });
        let removals = apps
            .iter()
            .filter_map(|c| c.id.clone())
            .map(|id| async move { self.remove(&id).await });
        futures::future::try_join_all(removals).await?;
        for id in sandboxes.iter().filter_map(|c| c.id.clone()) {
            self.remove(&id).await?;
        }
        self.cache().retain(uid, &[]);
        Ok(())
    }

    async fn observe_pod(&self, uid: &str) -> Result<Option<ObservedPod>, RuntimeError> {
        let summaries = self.list(Some(uid)).await?;
        let Some(first) = summaries.first() else {
            self.cache().retain(uid, &[]);
            return Ok(None);
        };
        let label = |name: &str| {
            first
                .labels
                .as_ref()
                .and_then(|l| l.get(name))
                .cloned()
                .unwrap_or_default()
        };
        let mut pod = ObservedPod {
            uid: uid.to_string(),
            namespace: label(labels::POD_NAMESPACE),
            name: label(labels::POD_NAME),
            grace_period: label(labels::GRACE).parse().ok().map(Duration::from_secs),
            ..Default::default()
        };
        let mut seen = Vec::with_capacity(summaries.len());
        for summary in &summaries {
            let Some(id) = summary.id.clone() else {
                continue;
            };
            let state = summary.state.map(|s| s.to_string()).unwrap_or_default();
            seen.push(id.clone());
            let cached = self.cache().lookup(&id, &state);
            let item = match cached {
                Some(item) => item,
                None => {
                    let info = match self.docker.inspect_container(&id, None).await {
                        Ok(info) => info,
                        // Removed between the list and now.
                        Err(e) if status_code(&e) == Some(404) => continue,
                        Err(e) => {
                            return Err(RuntimeError::Backend(format!(
                                "inspecting container {id}: {e}"
                            )));
                        }
                    };
                    let Some((_, item)) = self.convert(&info) else {
                        continue;
                    };
                    // "created" may still turn into a failed start; everything else is
                    // settled until the listed state changes.
                    if state != "created" {
                        self.cache().entries.insert(
                            id.clone(),
                            Cached {
                                uid: uid.to_string(),
                                state,
                                item: item.clone(),
                            },
                        );
                    }
                    item
                }
            };
            match item {
                Item::Sandbox(s) => pod.sandboxes.push(s),
                Item::Container(c) => pod.containers.push(c),
            }
        }
        self.cache().retain(uid, &seen);
        pod.sandboxes.sort_by_key(|s| std::cmp::Reverse(s.attempt));
        Ok(Some(pod))
    }

    async fn list_pods(&self) -> Result<Vec<PodRef>, RuntimeError> {
        let mut pods: Vec<PodRef> = Vec::new();
        for c in self.list(None).await? {
            let Some(labels) = c.labels else { continue };
            let Some(uid) = labels.get(labels::POD_UID) else {
                continue;
            };
            if pods.iter().any(|p| &p.uid == uid) {
                continue;
            }
            pods.push(PodRef {
                uid: uid.clone(),
                namespace: labels
                    .get(labels::POD_NAMESPACE)
                    .cloned()
                    .unwrap_or_default(),
                name: labels.get(labels::POD_NAME).cloned().unwrap_or_default(),
            });
        }
        Ok(pods)
    }

    fn changes(&self) -> BoxStream<'static, Result<String, RuntimeError>> {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            (
                "label",
                vec![
                    format!("{}={}", labels::CLUSTER, self.config.cluster_id),
                    format!("{}={}", labels::NODE, self.config.node_name),
                ],
            ),
            (
                "event",
                ["start", "die", "oom", "destroy"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let inspected = self.inspected.clone();
        self.docker
            .events(Some(options))
            .filter_map(move |event| {
                let inspected = inspected.clone();
                async move {
                    match event {
                        Ok(e) => {
                            let actor = e.actor?;
                            if let Some(id) = &actor.id {
                                lock(&inspected).evict(id);
                            }
                            actor
                                .attributes
                                .and_then(|mut a| a.remove(labels::POD_UID))
                                .map(Ok)
                        }
                        Err(e) => Some(Err(RuntimeError::Backend(format!("Docker events: {e}")))),
                    }
                }
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times() {
        assert_eq!(docker_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(docker_time(None), None);
        assert_eq!(docker_time(Some("garbage")), None);
        assert_eq!(
            docker_time(Some("2024-05-01T10:00:00.123456789Z")).map(|t| t.as_second()),
            Some(1_714_557_600)
        );
    }

    #[test]
    fn names_are_deterministic() {
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("default".into()),
                uid: Some("1234".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            container_name(&pod, "POD", 0),
            "k8s_POD_web-1_default_1234_0"
        );
        assert_eq!(
            container_name(&pod, "web", 3),
            "k8s_web_web-1_default_1234_3"
        );
        assert_eq!(network_name("c1"), "miniorch-c1");
    }
}
