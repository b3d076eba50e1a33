//! The scheduling framework, shaped like upstream's: one small trait per extension point
//! ([`FilterPlugin`], [`ScorePlugin`]), plugins that are pure functions of the pod and a
//! [`NodeInfo`] snapshot, a [`Status`] whose variants say how the framework reacts, and a
//! [`CycleState`] carrying what is computed once per scheduling attempt.
//!
//! [`Framework`] strings the plugins of a profile together; [`schedule`](Framework::schedule)
//! is the whole decision for one pod (filter, score, pick) with no I/O.

pub mod node_info;
pub mod registry;
pub mod resources;
mod schedule;

use k8s_openapi::api::core::v1::Pod;

pub use node_info::NodeInfo;
pub use registry::{Profile, Registry};
pub use resources::{PodRequests, ResourceError, Resources};
pub use schedule::{FitError, ScheduleError, ScheduleResult, num_feasible_nodes_to_find};

/// The highest score a plugin may give a node after normalizing.
pub const MAX_NODE_SCORE: i64 = 100;

/// A plugin's verdict on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The node passes this plugin.
    Success,
    /// The node cannot run the pod now, but could if pods left it (preemption could help).
    /// The framework counts the reasons per node for the FailedScheduling message and parks the
    /// pod until the cluster changes.
    Unschedulable(Vec<String>),
    /// The node cannot run the pod and removing pods would not change that (it is cordoned,
    /// tainted, not ready, the wrong node); only a change to the node itself can. Counted and
    /// parked as [`Status::Unschedulable`], but never a preemption candidate.
    UnresolvableUnschedulable(Vec<String>),
    /// The plugin failed unexpectedly: the whole attempt fails, the pod is retried with backoff,
    /// and nothing is counted against the node.
    Error(String),
}

impl Status {
    /// [`Status::Unschedulable`] with one reason.
    pub fn unschedulable(reason: impl Into<String>) -> Status {
        Status::Unschedulable(vec![reason.into()])
    }

    /// [`Status::UnresolvableUnschedulable`] with one reason.
    pub fn unresolvable(reason: impl Into<String>) -> Status {
        Status::UnresolvableUnschedulable(vec![reason.into()])
    }

    /// Whether the node passed.
    pub fn is_success(&self) -> bool {
        matches!(self, Status::Success)
    }

    /// The reasons a rejected node is counted under.
    pub fn reasons(&self) -> &[String] {
        match self {
            Status::Unschedulable(r) | Status::UnresolvableUnschedulable(r) => r,
            Status::Success | Status::Error(_) => &[],
        }
    }
}

/// What is computed once per scheduling attempt and shared by every plugin and node.
#[derive(Debug, Clone)]
pub struct CycleState {
    /// The pod's requests (for fitting) and non-zero requests (for scoring).
    pub requests: PodRequests,
}

impl CycleState {
    /// Prepares an attempt for `pod`; a pod whose resource quantities cannot be read cannot be
    /// scheduled anywhere, so that is an error here rather than on every node.
    pub fn new(pod: &Pod) -> Result<CycleState, ResourceError> {
        Ok(CycleState {
            requests: resources::pod_requests(pod)?,
        })
    }
}

/// A Filter extension point plugin: may the pod run on this node at all?
pub trait FilterPlugin: Send + Sync {
    /// The plugin's name, as in upstream's configuration.
    fn name(&self) -> &'static str;
    /// The verdict for `pod` on `node`.
    fn filter(&self, cx: &CycleState, pod: &Pod, node: &NodeInfo) -> Status;
}

/// A Score extension point plugin: how good is this (feasible) node for the pod?
pub trait ScorePlugin: Send + Sync {
    /// The plugin's name, as in upstream's configuration.
    fn name(&self) -> &'static str;
    /// A raw score; after [`normalize`](ScorePlugin::normalize) every score must be within
    /// `0..=MAX_NODE_SCORE` (the framework clamps stray values).
    fn score(&self, cx: &CycleState, pod: &Pod, node: &NodeInfo) -> i64;
    /// Rescales the raw scores of all feasible nodes (e.g. to reverse a count); default none.
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Upstream's `DefaultNormalizeScore`: scale to `0..=max` by the highest score, optionally
/// reversed so that a lower raw score ranks higher.
pub fn default_normalize(max: i64, reverse: bool, scores: &mut [i64]) {
    let highest = scores.iter().copied().max().unwrap_or(0);
    if highest == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = max);
        }
        return;
    }
    for s in scores.iter_mut() {
        let scaled = max * *s / highest;
        *s = if reverse { max - scaled } else { scaled };
    }
}

/// The plugins of one profile, in order, with their score weights.
pub struct Framework {
    pub(crate) filters: Vec<Box<dyn FilterPlugin>>,
    pub(crate) scores: Vec<(Box<dyn ScorePlugin>, i64)>,
    /// Percentage of nodes to look at before settling (0: upstream's adaptive default).
    pub(crate) percentage_of_nodes_to_score: u32,
}

impl Framework {
    /// A framework from explicit plugins (the registry builds the default profile).
    pub fn new(
        filters: Vec<Box<dyn FilterPlugin>>,
        scores: Vec<(Box<dyn ScorePlugin>, i64)>,
        percentage_of_nodes_to_score: u32,
    ) -> Framework {
        Framework {
            filters,
            scores,
            percentage_of_nodes_to_score: percentage_of_nodes_to_score.min(100),
        }
    }

    /// Runs the filters in order and stops at the first that rejects the node.
    pub fn run_filters(&self, cx: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        for f in &self.filters {
            let status = f.filter(cx, pod, node);
            if !status.is_success() {
                return match status {
                    Status::Error(e) => Status::Error(format!("{}: {e}", f.name())),
                    other => other,
                };
            }
        }
        Status::Success
    }

    /// The names of the filter plugins, in order.
    pub fn filter_names(&self) -> Vec<&'static str> {
        self.filters.iter().map(|f| f.name()).collect()
    }

    /// The names and weights of the score plugins, in order.
    pub fn score_names(&self) -> Vec<(&'static str, i64)> {
        self.scores.iter().map(|(s, w)| (s.name(), *w)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_as_upstream() {
        let cases: Vec<(Vec<i64>, bool, Vec<i64>)> = vec![
            (vec![0, 0], false, vec![0, 0]),
            (vec![0, 0], true, vec![100, 100]),
            (vec![1, 2, 4], false, vec![25, 50, 100]),
            (vec![1, 2, 4], true, vec![75, 50, 0]),
            (vec![], true, vec![]),
        ];
        for (mut input, reverse, want) in cases {
            default_normalize(MAX_NODE_SCORE, reverse, &mut input);
            assert_eq!(input, want);
        }
    }
}
