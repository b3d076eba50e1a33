//! NodeName: a pod that names a node (`spec.nodeName`) fits only that node.

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{CycleState, FilterPlugin, NodeInfo, Status};

/// The plugin.
pub struct NodeName;

impl NodeName {
    /// Upstream's name.
    pub const NAME: &'static str = "NodeName";
    /// Upstream's reason.
    pub const REASON: &'static str = "node(s) didn't match the requested node name";
}

impl FilterPlugin for NodeName {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn filter(&self, _cx: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(wanted) if !wanted.is_empty() && wanted != node.name() => {
                Status::unresolvable(Self::REASON)
            }
            _ => Status::Success,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};
    use std::sync::Arc;

    #[test]
    fn only_the_named_node_fits() {
        let n1 = NodeInfo::new(Arc::new(node("n1").build()));
        for (p, want) in [
            (pod("a").build(), Status::Success),
            (pod("a").on("n1").build(), Status::Success),
            (
                pod("a").on("n2").build(),
                Status::unresolvable(NodeName::REASON),
            ),
        ] {
            let cx = CycleState::new(&p).unwrap();
            assert_eq!(NodeName.filter(&cx, &p, &n1), want);
        }
    }
}
