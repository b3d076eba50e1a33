//! One scheduling decision, as upstream's `schedulePod`: filter nodes round-robin from where
//! the last attempt stopped until enough feasible ones are found, score them with every score
//! plugin (normalized, weighted), and pick the best, breaking ties at random. On failure, the
//! [`FitError`] counts why each node was rejected, for the FailedScheduling event.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use rand::Rng;

use super::{CycleState, Framework, MAX_NODE_SCORE, NodeInfo, Status};

/// Upstream's `minFeasibleNodesToFind`: below this many nodes, all are checked.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// Upstream's `minFeasibleNodesPercentageToFind`.
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// Where the pod goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleResult {
    /// The chosen node.
    pub node: String,
    /// How many nodes were filtered.
    pub evaluated_nodes: usize,
    /// How many of them were feasible.
    pub feasible_nodes: usize,
}

/// Why no node was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cluster has no nodes.
    #[error("no nodes available to schedule pods")]
    NoNodes,
    /// Every node was rejected.
    #[error("{0}")]
    Unfit(FitError),
    /// A plugin failed; the attempt should be retried.
    #[error("{0}")]
    Internal(String),
}

/// Every node rejected, with the count of nodes per reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    /// All nodes in the cluster.
    pub num_all_nodes: usize,
    /// Reason → number of nodes rejected for it.
    pub reasons: BTreeMap<String, usize>,
    /// Whether some node was rejected only by resolvable reasons (preemption could help).
    pub resolvable: bool,
}

impl fmt::Display for FitError {
    /// Upstream's message: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) were
    /// unschedulable.` with the "count reason" strings sorted as text, as upstream sorts them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        parts.sort();
        write!(f, "0/{} nodes are available:", self.num_all_nodes)?;
        if !parts.is_empty() {
            write!(f, " {}.", parts.join(", "))?;
        }
        Ok(())
    }
}

/// Upstream's `numFeasibleNodesToFind`: all of a small cluster; of a large one, a percentage
/// (adaptive when 0: 50% minus 1% per 125 nodes, at least 5%), never fewer than 100 nodes.
pub fn num_feasible_nodes_to_find(percentage: u32, num_all_nodes: usize) -> usize {
    if num_all_nodes < MIN_FEASIBLE_NODES_TO_FIND {
        return num_all_nodes;
    }
    let percentage = match percentage as usize {
        0 => 50usize
            .saturating_sub(num_all_nodes / 125)
            .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND),
        p => p.min(100),
    };
    (num_all_nodes * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

impl Framework {
    /// Chooses a node for `pod` among `nodes`, starting the filter pass at `start` (round
    /// robin across attempts, so a big cluster is not always searched from the same end).
    /// Returns the decision and where the next attempt should start.
    pub fn schedule<R: Rng>(
        &self,
        cx: &CycleState,
        pod: &Pod,
        nodes: &[NodeInfo],
        start: usize,
        rng: &mut R,
    ) -> (Result<ScheduleResult, ScheduleError>, usize) {
        if nodes.is_empty() {
            return (Err(ScheduleError::NoNodes), 0);
        }
        let want = num_feasible_nodes_to_find(self.percentage_of_nodes_to_score, nodes.len());
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut resolvable = false;
        let mut processed = 0;
        for i in 0..nodes.len() {
            if feasible.len() >= want {
                break;
            }
            let node = &nodes[(start + i) % nodes.len()];
            processed += 1;
            match self.run_filters(cx, pod, node) {
                Status::Success => feasible.push(node),
                Status::Error(e) => {
                    return (Err(ScheduleError::Internal(e)), start % nodes.len());
                }
                rejected => {
                    resolvable |= matches!(rejected, Status::Unschedulable(_));
                    for r in rejected.reasons() {
                        *reasons.entry(r.clone()).or_insert(0) += 1;
                    }
                }
            }
        }
        let next = (start + processed) % nodes.len();
        if feasible.is_empty() {
            let err = FitError {
                num_all_nodes: nodes.len(),
                reasons,
                resolvable,
            };
            return (Err(ScheduleError::Unfit(err)), next);
        }
        let chosen = if feasible.len() == 1 {
            feasible[0]
        } else {
            let totals = self.prioritize(cx, pod, &feasible);
            feasible[select_host(&totals, rng)]
        };
        (
            Ok(ScheduleResult {
                node: chosen.name().to_string(),
                evaluated_nodes: processed,
                feasible_nodes: feasible.len(),
            }),
            next,
        )
    }

    /// The weighted sum of every score plugin's normalized score, per feasible node.
    pub fn prioritize(&self, cx: &CycleState, pod: &Pod, feasible: &[&NodeInfo]) -> Vec<i64> {
        let mut totals = vec![0i64; feasible.len()];
        for (plugin, weight) in &self.scores {
            let mut scores: Vec<i64> = feasible.iter().map(|n| plugin.score(cx, pod, n)).collect();
            plugin.normalize(&mut scores);
            for (total, s) in totals.iter_mut().zip(scores) {
                *total = total.saturating_add(s.clamp(0, MAX_NODE_SCORE).saturating_mul(*weight));
            }
        }
        totals
    }
}

/// The index of the highest score; among equals, each is equally likely (reservoir sampling,
/// as upstream's `selectHost`).
pub fn select_host<R: Rng>(scores: &[i64], rng: &mut R) -> usize {
    let mut best = 0;
    let mut ties = 0u32;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
            ties = 1;
        } else if *s == scores[best] {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::{Profile, Registry};
    use crate::testing::{node, pod};
    use k8s_openapi::api::core::v1::Node;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::sync::Arc;

    fn infos(nodes: Vec<Node>) -> Vec<NodeInfo> {
        nodes
            .into_iter()
            .map(|n| NodeInfo::new(Arc::new(n)))
            .collect()
    }

    fn schedule(nodes: &[NodeInfo], p: &Pod) -> Result<ScheduleResult, ScheduleError> {
        let fw = Registry::in_tree().build(&Profile::default()).unwrap();
        let cx = CycleState::new(p).unwrap();
        fw.schedule(&cx, p, nodes, 0, &mut StdRng::seed_from_u64(1))
            .0
    }

    #[test]
    fn picks_the_least_allocated_feasible_node() {
        let mut nodes = infos(vec![
            node("small").cpu_m(500).build(),
            node("big").cpu_m(4000).build(),
            node("cordoned").cpu_m(8000).unschedulable().build(),
        ]);
        let r = schedule(&nodes, &pod("web").cpu_m(250).build()).unwrap();
        assert_eq!(
            (r.node.as_str(), r.evaluated_nodes, r.feasible_nodes),
            ("big", 3, 2)
        );

        // Fill "big" so "small" becomes the roomier choice for a small pod.
        let hog = pod("hog").cpu_m(3900).build();
        nodes[1].add_pod(
            "uid-hog",
            Arc::new(hog.clone()),
            crate::framework::resources::pod_requests(&hog).unwrap(),
        );
        let r = schedule(&nodes, &pod("web").cpu_m(50).build()).unwrap();
        assert_eq!(r.node, "small");
    }

    #[test]
    fn failure_messages_as_upstream() {
        let cases: Vec<(&str, Vec<Node>, Pod, &str)> = vec![
            (
                "mixed reasons, sorted",
                vec![
                    node("n1").cpu_m(100).build(),
                    node("n2").cpu_m(8000).unschedulable().build(),
                    node("n3").cpu_m(8000).unschedulable().build(),
                ],
                pod("web").cpu_m(250).build(),
                "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) were unschedulable.",
            ),
            (
                "not ready",
                vec![node("n1").cpu_m(1000).ready("False").build()],
                pod("web").build(),
                "0/1 nodes are available: 1 node(s) were not ready.",
            ),
            (
                "two reasons on one node",
                vec![node("n1").cpu_m(100).mem_mi(10).build()],
                pod("web").cpu_m(250).mem_mi(20).build(),
                "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.",
            ),
            (
                "taint",
                vec![
                    node("n1")
                        .cpu_m(100)
                        .taint("dedicated", "db", "NoSchedule")
                        .build(),
                ],
                pod("web").build(),
                "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: db}.",
            ),
            (
                "no nodes",
                vec![],
                pod("web").build(),
                "no nodes available to schedule pods",
            ),
        ];
        for (name, nodes, p, want) in cases {
            let err = schedule(&infos(nodes), &p).unwrap_err();
            assert_eq!(err.to_string(), want, "{name}");
        }
    }

    #[test]
    fn resolvable_tells_whether_preemption_could_help() {
        let unresolvable = schedule(
            &infos(vec![node("n1").cpu_m(100).build()]),
            &pod("web").cpu_m(250).build(),
        );
        let Err(ScheduleError::Unfit(e)) = unresolvable else {
            panic!("{unresolvable:?}")
        };
        assert!(!e.resolvable, "bigger than the node");
        let mut nodes = infos(vec![node("n1").cpu_m(300).build()]);
        let hog = pod("hog").cpu_m(200).build();
        nodes[0].add_pod(
            "uid-hog",
            Arc::new(hog.clone()),
            crate::framework::resources::pod_requests(&hog).unwrap(),
        );
        let Err(ScheduleError::Unfit(e)) = schedule(&nodes, &pod("web").cpu_m(250).build()) else {
            panic!()
        };
        assert!(e.resolvable);
    }

    #[test]
    fn feasible_nodes_to_find_as_upstream() {
        for (pct, all, want) in [
            (0, 10, 10),
            (0, 99, 99),
            (0, 100, 100),
            (0, 1000, 420),
            (0, 5000, 500),
            (0, 6000, 300),
            (10, 500, 100),
            (50, 1000, 500),
            (100, 3000, 3000),
        ] {
            assert_eq!(
                num_feasible_nodes_to_find(pct, all),
                want,
                "{pct}% of {all}"
            );
        }
    }

    #[test]
    fn large_clusters_search_round_robin() {
        let nodes = infos(
            (0..300)
                .map(|i| node(&format!("n{i}")).cpu_m(1000).build())
                .collect(),
        );
        let fw = Registry::in_tree().build(&Profile::default()).unwrap();
        let p = pod("web").build();
        let cx = CycleState::new(&p).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let (r, next) = fw.schedule(&cx, &p, &nodes, 250, &mut rng);
        let r = r.unwrap();
        // 300 nodes: adaptive 48% = 144 nodes to find, starting at 250 and wrapping.
        assert_eq!((r.evaluated_nodes, r.feasible_nodes), (144, 144));
        assert_eq!(next, (250 + 144) % 300);
    }

    #[test]
    fn ties_are_broken_evenly() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = [0usize; 3];
        for _ in 0..3000 {
            seen[select_host(&[5, 9, 9], &mut rng)] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 1200 && seen[2] > 1200, "{seen:?}");
        assert_eq!(select_host(&[1, 3, 2], &mut rng), 1);
    }
}
