//! The scheduler's cache: one [`NodeInfo`] per node with the pods bound there summed, kept up to
//! date incrementally from the watch events (O(1) per event), plus the pods *assumed* on a node
//! whose binding is still in flight, so the next pod already sees the room they take.
//!
//! Pods bound to a node the cache has not seen (yet, or any more) are kept aside and counted in
//! as soon as the node shows up, as upstream keeps them on an "imaginary" node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::framework::NodeInfo;
use crate::framework::resources::{PodRequests, pod_requests};

/// Where a pod in the cache is.
#[derive(Debug, Clone)]
struct PodState {
    node: String,
    /// Placed by us and not yet confirmed by the watch.
    assumed: bool,
}

/// Nodes and the pods on them.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Pods on nodes not in `nodes`, by node name then uid.
    orphans: HashMap<String, BTreeMap<String, (Arc<Pod>, PodRequests)>>,
    pods: HashMap<String, PodState>,
}

/// What a node event changed, so the caller knows whether parked pods deserve another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChange {
    /// A node the cache did not know.
    Added,
    /// A change that can affect scheduling (capacity, cordon, taints, labels, conditions).
    Relevant,
    /// Nothing the scheduler looks at (e.g. a heartbeat).
    Irrelevant,
}

/// Whether a node update can change where pods fit (upstream's node update queueing hints).
pub fn node_change_is_relevant(old: &Node, new: &Node) -> bool {
    let spec = |n: &Node| n.spec.as_ref().map(|s| (s.unschedulable, s.taints.clone()));
    let status = |n: &Node| {
        n.status.as_ref().map(|s| {
            let conditions: Vec<(String, String)> = s
                .conditions
                .iter()
                .flatten()
                .map(|c| (c.type_.clone(), c.status.clone()))
                .collect();
            (s.allocatable.clone(), s.capacity.clone(), conditions)
        })
    };
    spec(old) != spec(new)
        || status(old) != status(new)
        || old.metadata.labels != new.metadata.labels
}

fn requests_of(pod: &Pod) -> PodRequests {
    pod_requests(pod).unwrap_or_else(|e| {
        tracing::warn!(pod = pod.metadata.name, error = %e, "counting a bound pod as requesting nothing");
        PodRequests {
            requests: crate::framework::Resources {
                pods: 1,
                ..Default::default()
            },
            non_zero: crate::framework::Resources {
                pods: 1,
                ..Default::default()
            },
        }
    })
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The known nodes, for one scheduling attempt.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// Number of pods known (bound or assumed).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// A node was added or updated.
    pub fn add_or_update_node(&mut self, node: Arc<Node>) -> NodeChange {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            let relevant = node_change_is_relevant(self.nodes[i].node(), &node);
            self.nodes[i].set_node(node);
            return if relevant {
                NodeChange::Relevant
            } else {
                NodeChange::Irrelevant
            };
        }
        let mut info = NodeInfo::new(node);
        for (uid, (pod, req)) in self.orphans.remove(&name).unwrap_or_default() {
            info.add_pod(&uid, pod, req);
        }
        self.index.insert(name, self.nodes.len());
        self.nodes.push(info);
        NodeChange::Added
    }

    /// A node was deleted; its pods wait aside in case it comes back (or the pods go).
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let info = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            let moved = self.nodes[i].name().to_string();
            self.index.insert(moved, i);
        }
        let pods = info.into_pods();
        if !pods.is_empty() {
            self.orphans.insert(name.to_string(), pods);
        }
    }

    fn place(&mut self, node: &str, uid: &str, pod: Arc<Pod>, req: PodRequests) {
        match self.index.get(node) {
            Some(&i) => self.nodes[i].add_pod(uid, pod, req),
            None => {
                self.orphans
                    .entry(node.to_string())
                    .or_default()
                    .insert(uid.to_string(), (pod, req));
            }
        }
    }

    fn unplace(&mut self, node: &str, uid: &str) {
        match self.index.get(node) {
            Some(&i) => {
                self.nodes[i].remove_pod(uid);
            }
            None => {
                if let Some(o) = self.orphans.get_mut(node) {
                    o.remove(uid);
                    if o.is_empty() {
                        self.orphans.remove(node);
                    }
                }
            }
        }
    }

    /// A pod bound to `spec.nodeName` and not finished was seen: count it there (confirming an
    /// assumed pod, or moving it if the binding went elsewhere).
    pub fn add_or_update_pod(&mut self, pod: Arc<Pod>) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let uid = uid(&pod);
        if let Some(old) = self.pods.get(&uid).cloned()
            && old.node != node
        {
            self.unplace(&old.node, &uid);
        }
        let req = requests_of(&pod);
        self.place(&node, &uid, pod, req);
        self.pods.insert(
            uid,
            PodState {
                node,
                assumed: false,
            },
        );
    }

    /// A pod was deleted or finished: its node gets the room back. True when it was counted.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(state) = self.pods.remove(uid) else {
            return false;
        };
        self.unplace(&state.node, uid);
        true
    }

    /// Counts `pod` on `node` before the binding is confirmed.
    pub fn assume(&mut self, pod: &Pod, node: &str, requests: PodRequests) {
        let mut assumed = pod.clone();
        assumed.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
        let uid = uid(pod);
        self.place(node, &uid, Arc::new(assumed), requests);
        self.pods.insert(
            uid,
            PodState {
                node: node.to_string(),
                assumed: true,
            },
        );
    }

    /// Undoes [`assume`](Cache::assume) after a failed binding. False when the pod is no longer
    /// assumed (the watch confirmed it bound, or it was deleted), so nothing is to be retried.
    pub fn forget(&mut self, uid: &str) -> bool {
        match self.pods.get(uid) {
            Some(s) if s.assumed => {
                self.remove_pod(uid);
                true
            }
            _ => false,
        }
    }

    /// Whether the pod is assumed (placed by us, binding not yet seen).
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|s| s.assumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};

    fn n(name: &str) -> Arc<Node> {
        Arc::new(node(name).cpu_m(1000).build())
    }

    fn cpu_used(c: &Cache, node: &str) -> i64 {
        c.node(node).unwrap().requested().milli_cpu
    }

    #[test]
    fn bound_pods_count_on_their_node() {
        let mut c = Cache::new();
        assert_eq!(c.add_or_update_node(n("n1")), NodeChange::Added);
        c.add_or_update_pod(Arc::new(pod("a").cpu_m(200).on("n1").build()));
        c.add_or_update_pod(Arc::new(pod("a").cpu_m(200).on("n1").build()));
        assert_eq!(cpu_used(&c, "n1"), 200);
        assert!(c.remove_pod("uid-a"));
        assert!(!c.remove_pod("uid-a"));
        assert_eq!(cpu_used(&c, "n1"), 0);
    }

    #[test]
    fn pods_on_unknown_nodes_wait_for_them() {
        let mut c = Cache::new();
        c.add_or_update_pod(Arc::new(pod("a").cpu_m(300).on("n2").build()));
        assert!(c.nodes().is_empty());
        c.add_or_update_node(n("n2"));
        assert_eq!(cpu_used(&c, "n2"), 300);
        c.add_or_update_node(n("n1"));
        c.remove_node("n2");
        assert_eq!(c.nodes().len(), 1);
        assert_eq!(c.nodes()[0].name(), "n1");
        assert_eq!(c.node("n1").map(|i| i.name()), Some("n1"));
        c.add_or_update_node(n("n2"));
        assert_eq!(
            cpu_used(&c, "n2"),
            300,
            "the pod is still counted when the node returns"
        );
        c.remove_node("n2");
        assert!(c.remove_pod("uid-a"));
        c.add_or_update_node(n("n2"));
        assert_eq!(cpu_used(&c, "n2"), 0);
    }

    #[test]
    fn assume_confirm_and_forget() {
        let mut c = Cache::new();
        c.add_or_update_node(n("n1"));
        let web = pod("web").cpu_m(400).build();
        c.assume(&web, "n1", pod_requests(&web).unwrap());
        assert!(c.is_assumed("uid-web"));
        assert_eq!(cpu_used(&c, "n1"), 400);
        assert!(c.forget("uid-web"));
        assert_eq!(cpu_used(&c, "n1"), 0);

        c.assume(&web, "n1", pod_requests(&web).unwrap());
        c.add_or_update_pod(Arc::new(pod("web").cpu_m(400).on("n1").build()));
        assert!(!c.is_assumed("uid-web"));
        assert!(
            !c.forget("uid-web"),
            "confirmed: a late bind error changes nothing"
        );
        assert_eq!(cpu_used(&c, "n1"), 400);
    }

    #[test]
    fn a_binding_elsewhere_moves_the_pod() {
        let mut c = Cache::new();
        c.add_or_update_node(n("n1"));
        c.add_or_update_node(n("n2"));
        let web = pod("web").cpu_m(400).build();
        c.assume(&web, "n1", pod_requests(&web).unwrap());
        c.add_or_update_pod(Arc::new(pod("web").cpu_m(400).on("n2").build()));
        assert_eq!((cpu_used(&c, "n1"), cpu_used(&c, "n2")), (0, 400));
    }

    #[test]
    fn node_relevance() {
        let base = node("n1").cpu_m(1000).build();
        let mut heartbeat = base.clone();
        heartbeat.metadata.resource_version = Some("9".into());
        let cases = [
            (heartbeat, false),
            (node("n1").cpu_m(2000).build(), true),
            (node("n1").cpu_m(1000).unschedulable().build(), true),
            (node("n1").cpu_m(1000).ready("False").build(), true),
            (
                node("n1").cpu_m(1000).taint("a", "", "NoSchedule").build(),
                true,
            ),
            (node("n1").cpu_m(1000).label("zone", "a").build(), true),
        ];
        for (new, want) in cases {
            assert_eq!(node_change_is_relevant(&base, &new), want, "{new:?}");
        }
    }
}
