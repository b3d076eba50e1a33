//! What the scheduler knows about one node: the Node itself, what it can give, and the pods
//! bound or assumed there with their requests already summed, so a filter is O(1) per node
//! instead of a walk over every pod in the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::resources::{PodRequests, Resources, node_allocatable};

/// A node and the running totals of the pods on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    node: Arc<Node>,
    name: String,
    allocatable: Resources,
    requested: Resources,
    non_zero_requested: Resources,
    pods: BTreeMap<String, (Arc<Pod>, PodRequests)>,
}

impl NodeInfo {
    /// A node with no pods. A node whose allocatable cannot be read offers nothing (and the
    /// cache logs why), rather than everything.
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let mut info = NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            node: Arc::new(Node::default()),
            allocatable: Resources::default(),
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: BTreeMap::new(),
        };
        info.set_node(node);
        info
    }

    /// Replaces the Node (an update from the apiserver); the pods stay.
    pub fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable = match node_allocatable(&node) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(node = self.name, error = %e, "node offers nothing to pods");
                Resources::default()
            }
        };
        self.node = node;
    }

    /// The Node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the node offers to pods in total.
    pub fn allocatable(&self) -> &Resources {
        &self.allocatable
    }

    /// The sum of the requests of the pods on the node (`pods` is their number).
    pub fn requested(&self) -> &Resources {
        &self.requested
    }

    /// The same sum with zero CPU/memory requests counted as the scoring defaults.
    pub fn non_zero_requested(&self) -> &Resources {
        &self.non_zero_requested
    }

    /// The pods on the node, by uid.
    pub fn pods(&self) -> impl Iterator<Item = &Arc<Pod>> {
        self.pods.values().map(|(p, _)| p)
    }

    /// Number of pods on the node.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// The pods with their requests, by uid, giving up the node.
    pub fn into_pods(self) -> BTreeMap<String, (Arc<Pod>, PodRequests)> {
        self.pods
    }

    /// Adds (or replaces) the pod with uid `uid`.
    pub fn add_pod(&mut self, uid: &str, pod: Arc<Pod>, requests: PodRequests) {
        self.remove_pod(uid);
        self.requested.add(&requests.requests);
        self.non_zero_requested.add(&requests.non_zero);
        self.pods.insert(uid.to_string(), (pod, requests));
    }

    /// Removes the pod with uid `uid`; false when it was not here.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        match self.pods.remove(uid) {
            Some((_, r)) => {
                self.requested.sub(&r.requests);
                self.non_zero_requested.sub(&r.non_zero);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::resources::pod_requests;
    use crate::testing::{node, pod};

    #[test]
    fn sums_follow_pods_in_and_out() {
        let mut info = NodeInfo::new(Arc::new(node("n1").cpu_m(1000).build()));
        let a = pod("a").cpu_m(250).build();
        let b = pod("b").cpu_m(100).build();
        info.add_pod("ua", Arc::new(a.clone()), pod_requests(&a).unwrap());
        info.add_pod("ub", Arc::new(b.clone()), pod_requests(&b).unwrap());
        info.add_pod("ub", Arc::new(b.clone()), pod_requests(&b).unwrap());
        assert_eq!(info.requested().milli_cpu, 350);
        assert_eq!(info.requested().pods, 2);
        assert!(info.remove_pod("ua"));
        assert!(!info.remove_pod("ua"));
        assert_eq!(info.requested().milli_cpu, 100);
        assert_eq!(info.non_zero_requested().memory, 200 * 1024 * 1024);
        assert_eq!(info.pod_count(), 1);
    }

    #[test]
    fn unreadable_allocatable_offers_nothing() {
        let n = node("n1").allocatable("cpu", "many").build();
        let info = NodeInfo::new(Arc::new(n));
        assert_eq!(info.allocatable(), &Resources::default());
        assert_eq!(info.name(), "n1");
    }
}
