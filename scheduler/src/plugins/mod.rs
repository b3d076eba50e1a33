//! The in-tree plugins, one file each, named as upstream's. Each is a unit struct with a `NAME`
//! and pure `filter`/`score` functions of the pod and a node snapshot.

pub mod node_name;
pub mod node_ready;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod taint_toleration;
