//! Builders for unit tests: `pod("web").cpu_m(250).on("n1")`, `node("n1").cpu_m(2000)`, so a
//! table of cases reads like the situation it describes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus,
    ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Builds a container.
#[derive(Clone)]
pub struct ContainerBuilder(Container);

/// A container named `name` with no resources.
pub fn container(name: &str) -> ContainerBuilder {
    ContainerBuilder(Container {
        name: name.into(),
        image: Some("miniorch/demo:latest".into()),
        ..Default::default()
    })
}

fn set(map: &mut Option<BTreeMap<String, Quantity>>, name: &str, value: String) {
    map.get_or_insert_with(BTreeMap::new)
        .insert(name.to_string(), Quantity(value));
}

impl ContainerBuilder {
    /// Requests `value` of `name`.
    pub fn request(mut self, name: &str, value: &str) -> Self {
        let r = self
            .0
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        set(&mut r.requests, name, value.to_string());
        self
    }
    /// Requests `m` millicores.
    pub fn cpu_m(self, m: i64) -> Self {
        self.request("cpu", &format!("{m}m"))
    }
    /// Requests `mi` MiB.
    pub fn mem_mi(self, mi: i64) -> Self {
        self.request("memory", &format!("{mi}Mi"))
    }
    /// Limits CPU to `m` millicores (no request).
    pub fn cpu_limit_m(mut self, m: i64) -> Self {
        let r = self
            .0
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        set(&mut r.limits, "cpu", format!("{m}m"));
        self
    }
    /// Makes this (init) container a sidecar (`restartPolicy: Always`).
    pub fn sidecar(mut self) -> Self {
        self.0.restart_policy = Some("Always".into());
        self
    }
}

/// Builds a pod.
pub struct PodBuilder {
    pod: Pod,
    main: ContainerBuilder,
    main_used: bool,
    containers: Vec<Container>,
}

/// A pod `default/<name>` (uid `uid-<name>`) with one container of the same name.
pub fn pod(name: &str) -> PodBuilder {
    PodBuilder {
        pod: Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        },
        main: container(name),
        main_used: false,
        containers: vec![],
    }
}

impl PodBuilder {
    fn spec(&mut self) -> &mut PodSpec {
        self.pod.spec.get_or_insert_with(PodSpec::default)
    }
    /// The main container requests `value` of `name`.
    pub fn request(mut self, name: &str, value: &str) -> Self {
        self.main = self.main.request(name, value);
        self.main_used = true;
        self
    }
    /// The main container requests `m` millicores.
    pub fn cpu_m(self, m: i64) -> Self {
        self.request("cpu", &format!("{m}m"))
    }
    /// The main container requests `mi` MiB.
    pub fn mem_mi(self, mi: i64) -> Self {
        self.request("memory", &format!("{mi}Mi"))
    }
    /// Adds a container (the implicit main one is dropped unless it was given requests).
    pub fn container(mut self, c: ContainerBuilder) -> Self {
        self.containers.push(c.0);
        self
    }
    /// Adds an init container.
    pub fn init(mut self, c: ContainerBuilder) -> Self {
        self.spec()
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(c.0);
        self
    }
    /// Adds `m` millicores of pod overhead.
    pub fn overhead_cpu_m(mut self, m: i64) -> Self {
        set(&mut self.spec().overhead, "cpu", format!("{m}m"));
        self
    }
    /// Binds the pod to `node`.
    pub fn on(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.into());
        self
    }
    /// Puts the pod in `namespace`.
    pub fn ns(mut self, namespace: &str) -> Self {
        self.pod.metadata.namespace = Some(namespace.into());
        self
    }
    /// Sets the pod's priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.spec().priority = Some(p);
        self
    }
    /// Sets `spec.schedulerName`.
    pub fn scheduler(mut self, name: &str) -> Self {
        self.spec().scheduler_name = Some(name.into());
        self
    }
    /// Sets the phase.
    pub fn phase(mut self, phase: &str) -> Self {
        self.pod.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        self
    }
    /// Marks the pod as being deleted.
    pub fn terminating(mut self) -> Self {
        self.pod.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        self
    }
    /// Adds a scheduling gate.
    pub fn gate(mut self, name: &str) -> Self {
        self.spec()
            .scheduling_gates
            .get_or_insert_with(Vec::new)
            .push(k8s_openapi::api::core::v1::PodSchedulingGate { name: name.into() });
        self
    }
    /// Adds a toleration (`operator` is `Equal` or `Exists`; empty strings mean unset).
    pub fn tolerate(mut self, key: &str, operator: &str, value: &str, effect: &str) -> Self {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        self.spec()
            .tolerations
            .get_or_insert_with(Vec::new)
            .push(Toleration {
                key: opt(key),
                operator: opt(operator),
                value: opt(value),
                effect: opt(effect),
                toleration_seconds: None,
            });
        self
    }
    /// The pod.
    pub fn build(mut self) -> Pod {
        let mut containers = std::mem::take(&mut self.containers);
        if containers.is_empty() || self.main_used {
            containers.insert(0, self.main.0.clone());
        }
        self.spec().containers = containers;
        self.pod
    }
}

/// Builds a node.
pub struct NodeBuilder(Node);

/// A Ready node `name` with room for 110 pods and no CPU or memory until given some.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some([("pods".to_string(), Quantity("110".into()))].into()),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    })
}

impl NodeBuilder {
    /// Sets allocatable `name` to `value` (unparsed, so tests can give bad quantities).
    pub fn allocatable(mut self, name: &str, value: &str) -> Self {
        let status = self.0.status.get_or_insert_with(Default::default);
        set(&mut status.allocatable, name, value.to_string());
        self
    }
    /// Allocatable CPU in millicores.
    pub fn cpu_m(self, m: i64) -> Self {
        self.allocatable("cpu", &format!("{m}m"))
    }
    /// Allocatable memory in MiB.
    pub fn mem_mi(self, mi: i64) -> Self {
        self.allocatable("memory", &format!("{mi}Mi"))
    }
    /// Allocatable pod count.
    pub fn pods(self, n: i64) -> Self {
        self.allocatable("pods", &n.to_string())
    }
    /// Cordons the node.
    pub fn unschedulable(mut self) -> Self {
        self.0
            .spec
            .get_or_insert_with(Default::default)
            .unschedulable = Some(true);
        self
    }
    /// Sets the Ready condition's status (`True`, `False`, `Unknown`), or removes it (`""`).
    pub fn ready(mut self, status: &str) -> Self {
        let conditions = self
            .0
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "Ready");
        if !status.is_empty() {
            conditions.push(NodeCondition {
                type_: "Ready".into(),
                status: status.into(),
                ..Default::default()
            });
        }
        self
    }
    /// Adds a taint.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.0
            .spec
            .get_or_insert_with(Default::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(Taint {
                key: key.into(),
                value: (!value.is_empty()).then(|| value.to_string()),
                effect: effect.into(),
                time_added: None,
            });
        self
    }
    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }
    /// The node.
    pub fn build(self) -> Node {
        self.0
    }
}
