//! From a pod spec to what the runtime is asked to run: the sandbox's hostname and host ports,
//! each container's command, environment (with `$(VAR)` expansion and the downward API),
//! resources and pull policy. Pure functions over the pod and a few facts about the node.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use miniorch_api::quantity;

/// Grace period when the pod does not give one (upstream's default).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// The cluster's DNS domain, for a pod's `hostname.subdomain.ns.svc.<domain>` name.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// What the sandbox needs from the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxPlan {
    /// The pod's hostname (`None` with the host's network, which keeps the node's).
    pub hostname: Option<String>,
    /// The pod's domain name, when it has a subdomain.
    pub domainname: Option<String>,
    /// Whether the pod uses the node's network namespace.
    pub host_network: bool,
    /// Container ports published on the node (`hostPort`).
    pub host_ports: Vec<HostPort>,
    /// The grace period to label the pod's containers with.
    pub grace_period: Duration,
}

/// A container port published on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Port inside the pod.
    pub container_port: u16,
    /// Port on the node.
    pub host_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Address on the node to bind, if not all.
    pub host_ip: Option<String>,
}

/// When to pull a container's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time a container starts.
    Always,
    /// Pull only if the image is missing.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// Resource settings of a container, as plain numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (the container's share under contention).
    pub cpu_request_millis: Option<i64>,
}

/// One container as the runtime should run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    /// Name in the pod spec.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// When to pull it.
    pub pull_policy: PullPolicy,
    /// Replaces the image's entrypoint (and then drops its default arguments).
    pub command: Option<Vec<String>>,
    /// Replaces the image's default arguments.
    pub args: Option<Vec<String>>,
    /// Environment, in order, values expanded.
    pub env: Vec<(String, String)>,
    /// Working directory, if not the image's.
    pub working_dir: Option<String>,
    /// Allocate a TTY.
    pub tty: bool,
    /// Keep stdin open.
    pub stdin: bool,
    /// Close stdin after the first attach detaches.
    pub stdin_once: bool,
    /// Resource limits and shares.
    pub resources: Resources,
    /// Run privileged.
    pub privileged: bool,
    /// `uid[:gid]` to run as, if not the image's user.
    pub user: Option<String>,
    /// The grace period to label the container with.
    pub grace_period: Duration,
}

/// Facts the downward API and resource defaults need.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    /// The pod IP, once the sandbox has it.
    pub pod_ip: Option<&'a str>,
    /// The node's IP.
    pub host_ip: &'a str,
    /// The node's allocatable CPU, the value of `limits.cpu` when no limit is set.
    pub node_cpu_millis: i64,
    /// The node's allocatable memory, the value of `limits.memory` when no limit is set.
    pub node_memory_bytes: i64,
}

/// Why a container's configuration cannot be made (upstream's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An environment source miniorch cannot read yet.
    #[error("{0} is not supported by miniorch yet (env {1:?})")]
    Unsupported(&'static str, String),
    /// A downward-API field that does not exist.
    #[error("unsupported fieldRef {path:?} (env {name:?})")]
    BadFieldPath {
        /// The variable.
        name: String,
        /// The field path.
        path: String,
    },
    /// A resource field that does not exist or a quantity that does not parse.
    #[error("unsupported resourceFieldRef {resource:?} (env {name:?}): {why}")]
    BadResource {
        /// The variable.
        name: String,
        /// The resource.
        resource: String,
        /// Why.
        why: String,
    },
}

/// The pod's grace period: `deletionGracePeriodSeconds` once it is being deleted, otherwise
/// `terminationGracePeriodSeconds`, otherwise 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod.metadata.deletion_grace_period_seconds.or_else(|| {
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
    });
    match seconds {
        Some(s) => Duration::from_secs(u64::try_from(s).unwrap_or(0)),
        None => DEFAULT_GRACE_PERIOD,
    }
}

/// The pod's hostname: `spec.hostname` or the pod name, cut to 63 characters without a
/// trailing `-` or `.` (as upstream's `truncatePodHostnameIfNeeded`).
pub fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    if name.len() <= 63 {
        return name;
    }
    let mut cut: String = name.chars().take(63).collect();
    while cut.ends_with(['-', '.']) {
        cut.pop();
    }
    cut
}

/// What the sandbox of `pod` needs.
pub fn sandbox_plan(pod: &Pod) -> SandboxPlan {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let domainname = spec
        .subdomain
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|sub| format!("{sub}.{namespace}.svc.{CLUSTER_DOMAIN}"));
    let mut host_ports = Vec::new();
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for port in container.ports.iter().flatten() {
            let (Some(host_port), Ok(container_port)) =
                (port.host_port, u16::try_from(port.container_port))
            else {
                continue;
            };
            let Ok(host_port) = u16::try_from(host_port) else {
                continue;
            };
            if host_port == 0 {
                continue;
            }
            host_ports.push(HostPort {
                container_port,
                host_port,
                protocol: port
                    .protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .to_ascii_lowercase(),
                host_ip: port.host_ip.clone().filter(|ip| !ip.is_empty()),
            });
        }
    }
    SandboxPlan {
        hostname: (!host_network).then(|| pod_hostname(pod)),
        domainname: domainname.filter(|_| !host_network),
        // With the node's network the ports are the node's already.
        host_ports: if host_network { Vec::new() } else { host_ports },
        host_network,
        grace_period: grace_period(pod),
    }
}

/// The pull policy the apiserver would have defaulted: `Always` for `:latest` or no tag,
/// `IfNotPresent` otherwise.
pub fn pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        Some("Never") => PullPolicy::Never,
        _ => {
            let image = container.image.as_deref().unwrap_or_default();
            let (_, tag) = split_image(image);
            if tag == "latest" {
                PullPolicy::Always
            } else {
                PullPolicy::IfNotPresent
            }
        }
    }
}

/// Splits an image reference into repository and tag (or `sha256:` digest); the tag defaults
/// to `latest`. A `:` before the last `/` belongs to a registry host's port.
pub fn split_image(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// What the runtime should run for `container` of `pod`.
pub fn container_plan(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts<'_>,
) -> Result<ContainerPlan, ConfigError> {
    let env = environment(pod, container, facts)?;
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|items| items.iter().map(|s| expand(s, &lookup)).collect::<Vec<_>>())
    };
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref());
    let milli = |map: Option<&BTreeMap<String, _>>, key: &str| {
        map.and_then(|m| m.get(key))
            .and_then(|q| quantity::milli_value(q).ok())
    };
    let bytes = |map: Option<&BTreeMap<String, _>>, key: &str| {
        map.and_then(|m| m.get(key))
            .and_then(|q| quantity::value(q).ok())
    };
    let security = container.security_context.as_ref();
    let pod_security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let uid = security
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_security.and_then(|s| s.run_as_user));
    let gid = security
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_security.and_then(|s| s.run_as_group));
    let user = match (uid, gid) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        // A group alone keeps the image's user, as the runtime's user syntax requires one.
        (None, _) => None,
    };
    Ok(ContainerPlan {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        pull_policy: pull_policy(container),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().filter(|d| !d.is_empty()),
        tty: container.tty.unwrap_or(false),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        resources: Resources {
            memory_limit: bytes(limits, "memory"),
            cpu_limit_millis: milli(limits, "cpu"),
            // Upstream defaults a missing request to the limit.
            cpu_request_millis: milli(requests, "cpu").or_else(|| milli(limits, "cpu")),
        },
        privileged: security.and_then(|s| s.privileged).unwrap_or(false),
        user,
        grace_period: grace_period(pod),
        env,
    })
}

/// The container's environment in order: each value expanded against the variables before it.
fn environment(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts<'_>,
) -> Result<Vec<(String, String)>, ConfigError> {
    if let Some(from) = container.env_from.as_ref().and_then(|f| f.first()) {
        let what = if from.secret_ref.is_some() {
            "envFrom secretRef"
        } else {
            "envFrom configMapRef"
        };
        return Err(ConfigError::Unsupported(
            what,
            from.prefix.clone().unwrap_or_default(),
        ));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = env_value(pod, container, var, facts, &env)?;
        match env.iter_mut().find(|(k, _)| *k == var.name) {
            Some(slot) => slot.1 = value,
            None => env.push((var.name.clone(), value)),
        }
    }
    Ok(env)
}

fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    facts: &PodFacts<'_>,
    before: &[(String, String)],
) -> Result<String, ConfigError> {
    let Some(from) = &var.value_from else {
        let lookup: BTreeMap<&str, &str> = before
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        return Ok(expand(var.value.as_deref().unwrap_or_default(), &lookup));
    };
    if let Some(field) = &from.field_ref {
        return field_value(pod, &field.field_path, facts).ok_or_else(|| {
            ConfigError::BadFieldPath {
                name: var.name.clone(),
                path: field.field_path.clone(),
            }
        });
    }
    if let Some(resource) = &from.resource_field_ref {
        let target = match resource.container_name.as_deref().filter(|n| !n.is_empty()) {
            None => container,
            Some(name) => pod
                .spec
                .iter()
                .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
                .find(|c| c.name == name)
                .ok_or_else(|| ConfigError::BadResource {
                    name: var.name.clone(),
                    resource: resource.resource.clone(),
                    why: format!("no container named {name:?}"),
                })?,
        };
        return resource_value(target, &resource.resource, resource.divisor.as_ref(), facts)
            .map_err(|why| ConfigError::BadResource {
                name: var.name.clone(),
                resource: resource.resource.clone(),
                why,
            });
    }
    if from.config_map_key_ref.is_some() {
        return Err(ConfigError::Unsupported(
            "configMapKeyRef",
            var.name.clone(),
        ));
    }
    if from.secret_key_ref.is_some() {
        return Err(ConfigError::Unsupported("secretKeyRef", var.name.clone()));
    }
    Ok(String::new())
}

/// The downward API's `fieldRef` values.
fn field_value(pod: &Pod, path: &str, facts: &PodFacts<'_>) -> Option<String> {
    let meta = &pod.metadata;
    let map_key = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(rest.to_string())
    };
    // A missing label or annotation reads as empty, as upstream.
    if let Some(key) = map_key("metadata.labels['") {
        return Some(
            meta.labels
                .as_ref()
                .and_then(|m| m.get(&key))
                .cloned()
                .unwrap_or_default(),
        );
    }
    if let Some(key) = map_key("metadata.annotations['") {
        return Some(
            meta.annotations
                .as_ref()
                .and_then(|m| m.get(&key))
                .cloned()
                .unwrap_or_default(),
        );
    }
    let spec = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.unwrap_or_default().to_string(),
        _ => return None,
    })
}

/// The downward API's `resourceFieldRef` values: limits default to the node's allocatable,
/// values are divided by the divisor and rounded up, as upstream.
fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    facts: &PodFacts<'_>,
) -> Result<String, String> {
    let resources = container.resources.as_ref();
    let get = |kind: &str, name: &str| {
        let map = match kind {
            "limits" => resources.and_then(|r| r.limits.as_ref()),
            _ => resources.and_then(|r| r.requests.as_ref()),
        };
        map.and_then(|m| m.get(name)).cloned()
    };
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| "expected limits.<name> or requests.<name>".to_string())?;
    if kind != "limits" && kind != "requests" {
        return Err("expected limits.<name> or requests.<name>".into());
    }
    let bad = |e: quantity::QuantityError| e.to_string();
    match name {
        "cpu" => {
            let millis = match get(kind, "cpu") {
                Some(q) => quantity::milli_value(&q).map_err(bad)?,
                None if kind == "limits" => facts.node_cpu_millis,
                None => 0,
            };
            let divisor = match divisor {
                Some(d) => quantity::milli_value(d).map_err(bad)?,
                None => 1000,
            };
            if divisor <= 0 {
                return Err("divisor must be positive".into());
            }
            Ok(div_ceil(millis, divisor).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match get(kind, name) {
                Some(q) => quantity::value(&q).map_err(bad)?,
                None if kind == "limits" && name == "memory" => facts.node_memory_bytes,
                None => 0,
            };
            let divisor = match divisor {
                Some(d) => quantity::value(d).map_err(bad)?,
                None => 1,
            };
            if divisor <= 0 {
                return Err("divisor must be positive".into());
            }
            Ok(div_ceil(bytes, divisor).to_string())
        }
        _ => Err(format!("unknown resource {name:?}")),
    }
}

fn div_ceil(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0 && a > 0)
}

/// Upstream's `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// left as written, `$$` is an escaped `$`.
pub fn expand(input: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            // A trailing `$` is kept as is.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, EnvVarSource, ObjectFieldSelector, PodSpec, ResourceFieldSelector,
        ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(name: &str, containers: Vec<Container>) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers,
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("miniorch/demo:latest".into()),
            ..Default::default()
        }
    }

    const FACTS: PodFacts<'static> = PodFacts {
        pod_ip: Some("10.1.0.5"),
        host_ip: "192.168.1.10",
        node_cpu_millis: 2000,
        node_memory_bytes: 8 << 30,
    };

    #[test]
    fn expansion_follows_upstream() {
        let vars: BTreeMap<&str, &str> = [("A", "1"), ("B", "two")].into();
        for (input, want) in [
            ("plain", "plain"),
            ("$(A)", "1"),
            ("x$(A)y$(B)z", "x1ytwoz"),
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$", "$"),
            ("a$b", "a$b"),
            ("$(A", "$(A"),
            ("$()", "$()"),
            ("é$(A)é", "é1é"),
            ("$é", "$é"),
        ] {
            assert_eq!(expand(input, &vars), want, "{input:?}");
        }
    }

    #[test]
    fn images_split_into_repository_and_tag() {
        for (image, repo, tag) in [
            ("busybox", "busybox", "latest"),
            ("busybox:1.36", "busybox", "1.36"),
            ("miniorch/demo:latest", "miniorch/demo", "latest"),
            ("localhost:5000/web", "localhost:5000/web", "latest"),
            ("localhost:5000/web:v2", "localhost:5000/web", "v2"),
            ("web@sha256:abc", "web", "sha256:abc"),
        ] {
            assert_eq!(split_image(image), (repo, tag), "{image}");
        }
    }

    #[test]
    fn pull_policies_default_like_the_apiserver() {
        for (image, policy, want) in [
            ("demo", None, PullPolicy::Always),
            ("demo:latest", None, PullPolicy::Always),
            ("demo:1.0", None, PullPolicy::IfNotPresent),
            ("demo:latest", Some("Never"), PullPolicy::Never),
            ("demo:1.0", Some("Always"), PullPolicy::Always),
        ] {
            let c = Container {
                image: Some(image.into()),
                image_pull_policy: policy.map(String::from),
                ..container("c")
            };
            assert_eq!(pull_policy(&c), want, "{image} {policy:?}");
        }
    }

    #[test]
    fn hostnames_are_cut_to_a_dns_label() {
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        for (name, hostname, want) in [
            ("web-1", None, "web-1"),
            ("web-1", Some("custom"), "custom"),
            (long.as_str(), None, "a".repeat(62).as_str()),
        ] {
            let mut p = pod(name, vec![container("c")]);
            p.spec.as_mut().unwrap().hostname = hostname.map(String::from);
            assert_eq!(pod_hostname(&p), want, "{name}");
        }
    }

    #[test]
    fn sandbox_plans() {
        let mut c = container("web");
        c.ports = Some(vec![
            ContainerPort {
                container_port: 8080,
                host_port: Some(30080),
                ..Default::default()
            },
            ContainerPort {
                container_port: 53,
                host_port: Some(5353),
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            ContainerPort {
                container_port: 9090,
                ..Default::default()
            },
        ]);
        let mut p = pod("web-1", vec![c]);
        p.spec.as_mut().unwrap().subdomain = Some("svc".into());
        p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(5);
        let plan = sandbox_plan(&p);
        assert_eq!(plan.hostname.as_deref(), Some("web-1"));
        assert_eq!(
            plan.domainname.as_deref(),
            Some("svc.default.svc.cluster.local")
        );
        assert_eq!(plan.grace_period, Duration::from_secs(5));
        assert_eq!(
            plan.host_ports,
            vec![
                HostPort {
                    container_port: 8080,
                    host_port: 30080,
                    protocol: "tcp".into(),
                    host_ip: None
                },
                HostPort {
                    container_port: 53,
                    host_port: 5353,
                    protocol: "udp".into(),
                    host_ip: None
                },
            ]
        );
        p.spec.as_mut().unwrap().host_network = Some(true);
        let plan = sandbox_plan(&p);
        assert!(plan.host_network && plan.hostname.is_none() && plan.host_ports.is_empty());
    }

    #[test]
    fn grace_periods() {
        let mut p = pod("p", vec![]);
        assert_eq!(grace_period(&p), DEFAULT_GRACE_PERIOD);
        p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(7);
        assert_eq!(grace_period(&p), Duration::from_secs(7));
        p.metadata.deletion_grace_period_seconds = Some(2);
        assert_eq!(grace_period(&p), Duration::from_secs(2));
        p.metadata.deletion_grace_period_seconds = Some(-4);
        assert_eq!(grace_period(&p), Duration::ZERO);
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    api_version: None,
                }),
                ..Default::default()
            }),
        }
    }

    fn resource(name: &str, res: &str, divisor: Option<&str>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    resource: res.into(),
                    divisor: divisor.map(|d| Quantity(d.into())),
                    container_name: None,
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn environments_expand_in_order_with_the_downward_api() {
        let mut c = container("web");
        c.env = Some(vec![
            env("GREETING", "hello $(NAME)"),
            field("NAME", "metadata.name"),
            env("MSG", "$(NAME) says $(GREETING) on $(NODE)"),
            field("NODE", "spec.nodeName"),
            field("IP", "status.podIP"),
            field("HOST", "status.hostIP"),
            field("APP", "metadata.labels['app']"),
            field("NONE", "metadata.annotations['x']"),
            resource("CPU", "limits.cpu", None),
            resource("MEM_MI", "limits.memory", Some("1Mi")),
            resource("REQ_M", "requests.cpu", Some("1m")),
            env("NAME", "override"),
        ]);
        c.resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
            limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
            ..Default::default()
        });
        c.command = Some(vec!["/demo".into(), "$(MSG)".into()]);
        c.args = Some(vec!["$(IP)".into(), "$$(IP)".into()]);
        let p = pod("web-1", vec![c.clone()]);
        let plan = container_plan(&p, &c, &FACTS).expect("plan");
        let got: Vec<(&str, &str)> = plan
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("GREETING", "hello $(NAME)"),
                ("NAME", "override"),
                ("MSG", "web-1 says hello $(NAME) on $(NODE)"),
                ("NODE", "n1"),
                ("IP", "10.1.0.5"),
                ("HOST", "192.168.1.10"),
                ("APP", "web"),
                ("NONE", ""),
                ("CPU", "2"),
                ("MEM_MI", "64"),
                ("REQ_M", "250"),
            ]
        );
        assert_eq!(
            plan.command,
            Some(vec![
                "/demo".to_string(),
                "web-1 says hello $(NAME) on $(NODE)".into()
            ])
        );
        assert_eq!(
            plan.args,
            Some(vec!["10.1.0.5".to_string(), "$(IP)".into()])
        );
        assert_eq!(
            plan.resources,
            Resources {
                memory_limit: Some(64 << 20),
                cpu_limit_millis: None,
                cpu_request_millis: Some(250)
            }
        );
        assert_eq!(plan.pull_policy, PullPolicy::Always);
    }

    #[test]
    fn unreadable_environments_are_config_errors() {
        let mut bad_field = container("c");
        bad_field.env = Some(vec![field("X", "spec.nope")]);
        let mut bad_resource = container("c");
        bad_resource.env = Some(vec![resource("X", "limits.gpu", None)]);
        let mut zero_divisor = container("c");
        zero_divisor.env = Some(vec![resource("X", "limits.cpu", Some("0"))]);
        let mut config_map = container("c");
        config_map.env = Some(vec![EnvVar {
            name: "X".into(),
            value: None,
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(Default::default()),
                ..Default::default()
            }),
        }]);
        for c in [bad_field, bad_resource, zero_divisor, config_map] {
            let p = pod("p", vec![c.clone()]);
            assert!(container_plan(&p, &c, &FACTS).is_err(), "{:?}", c.env);
        }
    }

    #[test]
    fn users_and_limits() {
        let mut c = container("c");
        c.security_context = Some(k8s_openapi::api::core::v1::SecurityContext {
            run_as_user: Some(1000),
            privileged: Some(true),
            ..Default::default()
        });
        c.resources = Some(ResourceRequirements {
            limits: Some([("cpu".to_string(), Quantity("1500m".into()))].into()),
            ..Default::default()
        });
        let mut p = pod("p", vec![c.clone()]);
        p.spec.as_mut().unwrap().security_context =
            Some(k8s_openapi::api::core::v1::PodSecurityContext {
                run_as_group: Some(3000),
                ..Default::default()
            });
        let plan = container_plan(&p, &c, &FACTS).unwrap();
        assert_eq!(plan.user.as_deref(), Some("1000:3000"));
        assert!(plan.privileged);
        assert_eq!(plan.resources.cpu_limit_millis, Some(1500));
        assert_eq!(plan.resources.cpu_request_millis, Some(1500));
    }
}
