//! NodeReady: a node whose Ready condition is not `True` takes no new pods. Upstream reaches the
//! same result through TaintToleration and the `node.kubernetes.io/not-ready` and
//! `node.kubernetes.io/unreachable` `NoSchedule` taints the node-lifecycle controller adds; this
//! filter also covers the moment before those taints land, and lets through exactly the pods
//! that tolerate them (DaemonSet-style pods), so the two stay consistent.

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

use super::taint_toleration::tolerates;
use crate::framework::{CycleState, FilterPlugin, NodeInfo, Status};

/// The plugin.
pub struct NodeReady;

impl NodeReady {
    /// This plugin's name.
    pub const NAME: &'static str = "NodeReady";
    /// Upstream's reason (from its former node-condition predicate).
    pub const REASON: &'static str = "node(s) were not ready";
    /// The taint of a node whose Ready condition is `False` (or missing).
    pub const NOT_READY_TAINT: &'static str = "node.kubernetes.io/not-ready";
    /// The taint of a node whose Ready condition is `Unknown`.
    pub const UNREACHABLE_TAINT: &'static str = "node.kubernetes.io/unreachable";
}

/// The status of the node's Ready condition (`True`, `False`, `Unknown`), if it has one.
pub fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

impl FilterPlugin for NodeReady {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn filter(&self, _cx: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let key = match ready_status(node.node()) {
            Some("True") => return Status::Success,
            Some("Unknown") => Self::UNREACHABLE_TAINT,
            _ => Self::NOT_READY_TAINT,
        };
        let taint = Taint {
            key: key.into(),
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
    fn only_ready_nodes_unless_tolerated() {
        let not_ready = Status::unresolvable(NodeReady::REASON);
        let plain = pod("a").build();
        let tolerates_unreachable = pod("b")
            .tolerate(NodeReady::UNREACHABLE_TAINT, "Exists", "", "")
            .build();
        let cases = [
            ("True", &plain, Status::Success),
            ("False", &plain, not_ready.clone()),
            ("Unknown", &plain, not_ready.clone()),
            ("", &plain, not_ready.clone()),
            ("Unknown", &tolerates_unreachable, Status::Success),
            ("False", &tolerates_unreachable, not_ready.clone()),
        ];
        for (ready, p, want) in cases {
            let n = NodeInfo::new(Arc::new(node("n1").ready(ready).build()));
            let cx = CycleState::new(p).unwrap();
            assert_eq!(NodeReady.filter(&cx, p, &n), want, "ready={ready:?}");
        }
    }
}
