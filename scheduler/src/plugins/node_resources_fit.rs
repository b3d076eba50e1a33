//! NodeResourcesFit: the pod's requests must fit in what the node has left (allocatable minus
//! the requests of the pods bound or assumed there), and the pod count must stay under the
//! node's `pods` allocatable. Its score ranks the feasible nodes by a strategy:
//! `LeastAllocated` (spread, upstream's default) or `MostAllocated` (pack).

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, Resources, ScorePlugin, Status,
};

/// How the score ranks nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringStrategy {
    /// Prefer the node with the most room left after placing the pod.
    LeastAllocated,
    /// Prefer the node that is fullest after placing the pod.
    MostAllocated,
}

/// The plugin.
pub struct NodeResourcesFit {
    /// The scoring strategy.
    pub strategy: ScoringStrategy,
}

impl NodeResourcesFit {
    /// Upstream's name.
    pub const NAME: &'static str = "NodeResourcesFit";
    /// Upstream's reason when the node is at its pod limit.
    pub const TOO_MANY_PODS: &'static str = "Too many pods";
}

/// One resource the pod does not fit in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insufficient {
    /// The resource name (`cpu`, `memory`, `pods`, ...).
    pub resource: String,
    /// The pod asks for more than the node has in total, so evicting pods would not help.
    pub unresolvable: bool,
}

/// Upstream's `fitsRequest`: every resource the pod requests that the node cannot give.
pub fn insufficient_resources(req: &Resources, node: &NodeInfo) -> Vec<Insufficient> {
    let alloc = node.allocatable();
    let used = node.requested();
    let mut out = Vec::new();
    if used.pods.saturating_add(1) > alloc.pods {
        out.push(Insufficient {
            resource: "pods".into(),
            unresolvable: alloc.pods < 1,
        });
    }
    let mut check = |name: &str, want: i64, have: i64, taken: i64| {
        if want > 0 && want > have.saturating_sub(taken) {
            out.push(Insufficient {
                resource: name.to_string(),
                unresolvable: want > have,
            });
        }
    };
    check("cpu", req.milli_cpu, alloc.milli_cpu, used.milli_cpu);
    check("memory", req.memory, alloc.memory, used.memory);
    check(
        "ephemeral-storage",
        req.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
    );
    for (name, want) in &req.scalar {
        let have = alloc.scalar.get(name).copied().unwrap_or(0);
        let taken = used.scalar.get(name).copied().unwrap_or(0);
        check(name, *want, have, taken);
    }
    out
}

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn filter(&self, cx: &CycleState, _pod: &Pod, node: &NodeInfo) -> Status {
        let missing = insufficient_resources(&cx.requests.requests, node);
        if missing.is_empty() {
            return Status::Success;
        }
        let unresolvable = missing.iter().any(|m| m.unresolvable);
        let reasons = missing
            .into_iter()
            .map(|m| match m.resource.as_str() {
                "pods" => Self::TOO_MANY_PODS.to_string(),
                r => format!("Insufficient {r}"),
            })
            .collect();
        if unresolvable {
            Status::UnresolvableUnschedulable(reasons)
        } else {
            Status::Unschedulable(reasons)
        }
    }
}

/// Upstream's `leastRequestedScore`: the share left free, 0..=100.
fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

/// Upstream's `mostRequestedScore`: the share used, 0..=100.
fn most_requested(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 {
        return 0;
    }
    requested.min(capacity) * MAX_NODE_SCORE / capacity
}

impl ScorePlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// CPU and memory, weight 1 each, counting pods without requests at the defaults.
    fn score(&self, cx: &CycleState, _pod: &Pod, node: &NodeInfo) -> i64 {
        let pod = &cx.requests.non_zero;
        let used = node.non_zero_requested();
        let alloc = node.allocatable();
        let pairs = [
            (
                used.milli_cpu.saturating_add(pod.milli_cpu),
                alloc.milli_cpu,
            ),
            (used.memory.saturating_add(pod.memory), alloc.memory),
        ];
        let f = match self.strategy {
            ScoringStrategy::LeastAllocated => least_requested,
            ScoringStrategy::MostAllocated => most_requested,
        };
        pairs.iter().map(|(r, c)| f(*r, *c)).sum::<i64>() / pairs.len() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::resources::pod_requests;
    use crate::testing::{node, pod};
    use k8s_openapi::api::core::v1::Node;
    use std::sync::Arc;

    fn info(n: Node, pods: &[Pod]) -> NodeInfo {
        let mut info = NodeInfo::new(Arc::new(n));
        for p in pods {
            let uid = p.metadata.uid.clone().unwrap();
            info.add_pod(&uid, Arc::new(p.clone()), pod_requests(p).unwrap());
        }
        info
    }

    const FIT: NodeResourcesFit = NodeResourcesFit {
        strategy: ScoringStrategy::LeastAllocated,
    };

    #[test]
    fn filter_as_upstream() {
        let n = || node("n1").cpu_m(1000).mem_mi(1024);
        let busy = [pod("x").cpu_m(800).mem_mi(512).build()];
        let cases: Vec<(&str, NodeInfo, Pod, Status)> = vec![
            (
                "fits empty node",
                info(n().build(), &[]),
                pod("p").cpu_m(1000).build(),
                Status::Success,
            ),
            (
                "fits next to others",
                info(n().build(), &busy),
                pod("p").cpu_m(200).build(),
                Status::Success,
            ),
            (
                "cpu left too small",
                info(n().build(), &busy),
                pod("p").cpu_m(250).build(),
                Status::unschedulable("Insufficient cpu"),
            ),
            (
                "cpu and memory",
                info(n().build(), &busy),
                pod("p").cpu_m(250).mem_mi(600).build(),
                Status::Unschedulable(vec![
                    "Insufficient cpu".into(),
                    "Insufficient memory".into(),
                ]),
            ),
            (
                "bigger than the node",
                info(n().build(), &[]),
                pod("p").cpu_m(1500).build(),
                Status::unresolvable("Insufficient cpu"),
            ),
            (
                "no requests always fit",
                info(n().build(), &busy),
                pod("p").build(),
                Status::Success,
            ),
            (
                "pod limit",
                info(n().pods(1).build(), &busy),
                pod("p").build(),
                Status::unschedulable("Too many pods"),
            ),
            (
                "extended resource",
                info(n().allocatable("nvidia.com/gpu", "1").build(), &[]),
                pod("p").request("nvidia.com/gpu", "2").build(),
                Status::unresolvable("Insufficient nvidia.com/gpu"),
            ),
        ];
        for (name, node_info, p, want) in cases {
            let cx = CycleState::new(&p).unwrap();
            assert_eq!(FIT.filter(&cx, &p, &node_info), want, "{name}");
        }
    }

    #[test]
    fn least_allocated_prefers_room_most_allocated_prefers_packing() {
        let empty = info(node("empty").cpu_m(1000).mem_mi(1000).build(), &[]);
        let half = info(
            node("half").cpu_m(1000).mem_mi(1000).build(),
            &[pod("x").cpu_m(500).mem_mi(500).build()],
        );
        let p = pod("p").cpu_m(100).mem_mi(100).build();
        let cx = CycleState::new(&p).unwrap();
        // (1000-100)/1000 = 90 on both resources; (1000-600)/1000 = 40.
        assert_eq!(FIT.score(&cx, &p, &empty), 90);
        assert_eq!(FIT.score(&cx, &p, &half), 40);
        let most = NodeResourcesFit {
            strategy: ScoringStrategy::MostAllocated,
        };
        assert_eq!(most.score(&cx, &p, &empty), 10);
        assert_eq!(most.score(&cx, &p, &half), 60);

        // A pod without requests is scored as 100m / 200Mi.
        let bare = pod("b").build();
        let cx = CycleState::new(&bare).unwrap();
        let big = info(node("big").cpu_m(1000).mem_mi(2000).build(), &[]);
        assert_eq!(FIT.score(&cx, &bare, &big), (90 + 90) / 2);
        // No capacity scores zero rather than dividing by it.
        let none = info(node("none").build(), &[]);
        assert_eq!(FIT.score(&cx, &bare, &none), 0);
    }
}
