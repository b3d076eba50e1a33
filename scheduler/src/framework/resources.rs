//! Resource arithmetic for scheduling: what a pod requests (upstream `resource.PodRequests`:
//! containers summed, init containers as a peak, sidecars added, overhead on top) and what a
//! node can give (`status.allocatable`), as plain integers (CPU in millicores, the rest in units).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use miniorch_api::quantity;

/// Upstream's `DefaultMilliCPURequest`: what scoring assumes for a container without a CPU request.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Upstream's `DefaultMemoryRequest` (200 MiB): what scoring assumes without a memory request.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Local ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Number of pods (allocatable `pods`, or 1 per pod when requested).
    pub pods: i64,
    /// Extended and hugepages resources (`nvidia.com/gpu`, `hugepages-2Mi`), by name.
    pub scalar: BTreeMap<String, i64>,
}

/// A quantity in a pod or node that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: resource {resource} has an invalid quantity {value:?}")]
pub struct ResourceError {
    /// Where it was found, e.g. `container web requests`.
    pub place: String,
    /// The resource name.
    pub resource: String,
    /// The text that did not parse.
    pub value: String,
}

/// Resources the scheduler tracks as scalars: extended resources (a domain prefix) and hugepages.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-") || (name.contains('/') && !name.starts_with("kubernetes.io/"))
}

impl Resources {
    /// Reads a `ResourceList`; unknown plain names (not tracked by the scheduler) are skipped.
    pub fn from_list(
        list: Option<&BTreeMap<String, Quantity>>,
        place: &str,
    ) -> Result<Resources, ResourceError> {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            let err = || ResourceError {
                place: place.to_string(),
                resource: name.clone(),
                value: q.0.clone(),
            };
            match name.as_str() {
                "cpu" => r.milli_cpu = quantity::milli_value(q).map_err(|_| err())?,
                "memory" => r.memory = quantity::value(q).map_err(|_| err())?,
                "ephemeral-storage" => {
                    r.ephemeral_storage = quantity::value(q).map_err(|_| err())?
                }
                "pods" => r.pods = quantity::value(q).map_err(|_| err())?,
                n if is_scalar(n) => {
                    r.scalar
                        .insert(n.to_string(), quantity::value(q).map_err(|_| err())?);
                }
                _ => {}
            }
        }
        Ok(r)
    }

    /// Adds `other` into `self` (saturating: bad input must not overflow into nonsense).
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        self.pods = self.pods.saturating_add(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Subtracts `other` from `self` (used when a pod leaves a node).
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        self.pods = self.pods.saturating_sub(other.pods);
        for (k, v) in &other.scalar {
            if let Some(e) = self.scalar.get_mut(k) {
                *e = e.saturating_sub(*v);
                if *e == 0 {
                    self.scalar.remove(k);
                }
            }
        }
    }

    /// Raises each amount of `self` to at least the one in `other`.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        self.pods = self.pods.max(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }
}

/// A container's requests; a resource with only a limit requests its limit, as the apiserver's
/// defaulting would have made it.
fn container_requests(c: &Container, kind: &str) -> Result<Resources, ResourceError> {
    let res = c.resources.as_ref();
    let place = format!("{kind} {}", c.name);
    let mut requests = Resources::from_list(res.and_then(|r| r.requests.as_ref()), &place)?;
    let limits = Resources::from_list(res.and_then(|r| r.limits.as_ref()), &place)?;
    let requested = |name: &str| {
        res.and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key(name))
    };
    if !requested("cpu") {
        requests.milli_cpu = limits.milli_cpu;
    }
    if !requested("memory") {
        requests.memory = limits.memory;
    }
    if !requested("ephemeral-storage") {
        requests.ephemeral_storage = limits.ephemeral_storage;
    }
    for (k, v) in limits.scalar {
        requests.scalar.entry(k).or_insert(v);
    }
    Ok(requests)
}

/// The scoring view of a container's requests: zero CPU or memory counts as the defaults, so
/// pods without requests still spread out.
fn non_zero(mut r: Resources) -> Resources {
    if r.milli_cpu == 0 {
        r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
    }
    if r.memory == 0 {
        r.memory = DEFAULT_MEMORY_REQUEST;
    }
    r
}

/// What a pod takes from its node: the requests for fitting and the non-zero requests for
/// scoring. `pods` is 1 in both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// Upstream `PodRequests`.
    pub requests: Resources,
    /// Upstream `GetNonzeroRequests` summed the same way.
    pub non_zero: Resources,
}

/// Computes a pod's requests as upstream: regular containers and sidecars (restartable init
/// containers) run together; each other init container runs alone after the sidecars started
/// before it; the pod needs the larger of the two, plus its overhead.
pub fn pod_requests(pod: &Pod) -> Result<PodRequests, ResourceError> {
    let one_pod = Resources {
        pods: 1,
        ..Default::default()
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(PodRequests {
            requests: one_pod.clone(),
            non_zero: one_pod,
        });
    };
    let mut requests = Resources::default();
    let mut non_zero_requests = Resources::default();
    for c in &spec.containers {
        let r = container_requests(c, "container")?;
        non_zero_requests.add(&non_zero(r.clone()));
        requests.add(&r);
    }
    let mut sidecars = Resources::default();
    let mut sidecars_non_zero = Resources::default();
    let mut init_peak = Resources::default();
    let mut init_peak_non_zero = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, "init container")?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars_non_zero.add(&non_zero(r.clone()));
            sidecars.add(&r);
            // A sidecar starting also needs room next to those before it.
            init_peak.max_with(&sidecars);
            init_peak_non_zero.max_with(&sidecars_non_zero);
        } else {
            let mut alone = r.clone();
            alone.add(&sidecars);
            init_peak.max_with(&alone);
            let mut alone_nz = non_zero(r);
            alone_nz.add(&sidecars_non_zero);
            init_peak_non_zero.max_with(&alone_nz);
        }
    }
    requests.add(&sidecars);
    non_zero_requests.add(&sidecars_non_zero);
    requests.max_with(&init_peak);
    non_zero_requests.max_with(&init_peak_non_zero);
    let overhead = Resources::from_list(spec.overhead.as_ref(), "pod overhead")?;
    requests.add(&overhead);
    non_zero_requests.add(&overhead);
    requests.pods = 1;
    non_zero_requests.pods = 1;
    Ok(PodRequests {
        requests,
        non_zero: non_zero_requests,
    })
}

/// What a node offers to pods: `status.allocatable`, or `status.capacity` when the node reports
/// no allocatable.
pub fn node_allocatable(node: &Node) -> Result<Resources, ResourceError> {
    let status = node.status.as_ref();
    let list = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    let name = node.metadata.name.as_deref().unwrap_or("");
    Resources::from_list(list, &format!("node {name} allocatable"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{container, node, pod};

    const MI: i64 = 1024 * 1024;

    #[test]
    fn pod_requests_as_upstream() {
        /// name, pod, (cpu, memory) requested, (cpu, memory) for scoring
        type Case = (&'static str, Pod, (i64, i64), (i64, i64));
        let cases: Vec<Case> = vec![
            ("no requests", pod("a").build(), (0, 0), (100, 200 * MI)),
            (
                "one container",
                pod("a").cpu_m(250).mem_mi(64).build(),
                (250, 64 * MI),
                (250, 64 * MI),
            ),
            (
                "containers add up",
                pod("a")
                    .container(container("x").cpu_m(100))
                    .container(container("y").cpu_m(300).mem_mi(10))
                    .build(),
                (400, 10 * MI),
                (400, 210 * MI),
            ),
            (
                "init container peak wins",
                pod("a")
                    .cpu_m(100)
                    .init(container("init").cpu_m(500))
                    .build(),
                (500, 0),
                (500, 200 * MI),
            ),
            (
                "sidecars add to containers and to later init containers",
                pod("a")
                    .cpu_m(100)
                    .init(container("side").cpu_m(200).sidecar())
                    .init(container("late").cpu_m(250))
                    .build(),
                (450, 0),
                (450, 400 * MI),
            ),
            (
                "limit only counts as request",
                pod("a").container(container("x").cpu_limit_m(700)).build(),
                (700, 0),
                (700, 200 * MI),
            ),
            (
                "overhead is added",
                pod("a").cpu_m(100).overhead_cpu_m(50).build(),
                (150, 0),
                (150, 200 * MI),
            ),
        ];
        for (name, p, (cpu, mem), (nz_cpu, nz_mem)) in cases {
            let r = pod_requests(&p).unwrap();
            assert_eq!(
                (r.requests.milli_cpu, r.requests.memory),
                (cpu, mem),
                "{name}"
            );
            assert_eq!(
                (r.non_zero.milli_cpu, r.non_zero.memory),
                (nz_cpu, nz_mem),
                "{name} non-zero"
            );
            assert_eq!(r.requests.pods, 1, "{name}");
        }
    }

    #[test]
    fn extended_resources_and_bad_quantities() {
        let p = pod("a").request("nvidia.com/gpu", "2").build();
        assert_eq!(
            pod_requests(&p).unwrap().requests.scalar["nvidia.com/gpu"],
            2
        );
        let bad = pod("a").request("cpu", "lots").build();
        let e = pod_requests(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container a: resource cpu has an invalid quantity \"lots\""
        );
    }

    #[test]
    fn allocatable_falls_back_to_capacity() {
        let n = node("n1").cpu_m(2000).mem_mi(1024).pods(110).build();
        let a = node_allocatable(&n).unwrap();
        assert_eq!((a.milli_cpu, a.memory, a.pods), (2000, 1024 * MI, 110));
        let mut only_capacity = n.clone();
        let status = only_capacity.status.as_mut().unwrap();
        status.capacity = status.allocatable.take();
        assert_eq!(node_allocatable(&only_capacity).unwrap(), a);
    }

    #[test]
    fn arithmetic_saturates_and_cleans_up() {
        let mut a = Resources {
            milli_cpu: i64::MAX,
            scalar: [("x/y".to_string(), 1)].into(),
            ..Default::default()
        };
        a.add(&Resources {
            milli_cpu: 5,
            ..Default::default()
        });
        assert_eq!(a.milli_cpu, i64::MAX);
        a.sub(&Resources {
            scalar: [("x/y".to_string(), 1)].into(),
            ..Default::default()
        });
        assert!(a.scalar.is_empty());
    }
}
