//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes no new pods, unless the pod
//! tolerates the `node.kubernetes.io/unschedulable:NoSchedule` taint (as DaemonSet pods do).

use k8s_openapi::api::core::v1::{Pod, Taint};

use super::taint_toleration::tolerates;
use crate::framework::{CycleState, FilterPlugin, NodeInfo, Status};

/// The plugin.
pub struct NodeUnschedulable;

impl NodeUnschedulable {
    /// Upstream's name.
    pub const NAME: &'static str = "NodeUnschedulable";
    /// Upstream's reason.
    pub const REASON: &'static str = "node(s) were unschedulable";
    /// The taint a cordoned node is treated as having.
    pub const TAINT_KEY: &'static str = "node.kubernetes.io/unschedulable";
}

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn filter(&self, _cx: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let cordoned = node
            .node()
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !cordoned {
            return Status::Success;
        }
        let taint = Taint {
            key: Self::TAINT_KEY.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref());
        if tolerates(tolerations.unwrap_or(&[]), &taint) {
            Status::Success
        } else {
            Status::unresolvable(Self::REASON)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};
    use std::sync::Arc;

    #[test]
    fn cordoned_nodes_take_only_tolerating_pods() {
        let open = NodeInfo::new(Arc::new(node("n1").build()));
        let cordoned = NodeInfo::new(Arc::new(node("n2").unschedulable().build()));
        let plain = pod("a").build();
        let tolerant = pod("b")
            .tolerate(NodeUnschedulable::TAINT_KEY, "Exists", "", "NoSchedule")
            .build();
        let cases = [
            (&plain, &open, Status::Success),
            (
                &plain,
                &cordoned,
                Status::unresolvable(NodeUnschedulable::REASON),
            ),
            (&tolerant, &cordoned, Status::Success),
        ];
        for (p, n, want) in cases {
            let cx = CycleState::new(p).unwrap();
            assert_eq!(NodeUnschedulable.filter(&cx, p, n), want, "{}", n.name());
        }
    }
}
