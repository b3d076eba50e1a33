//! Shared pieces that no miniorch component should write twice: the process scaffolding every
//! binary uses, client configuration, label selectors, quantities and the Lease leader elector.
//! Kubernetes types are `k8s-openapi`'s and are never re-declared here.

pub mod client;
pub mod component;
pub mod events;
pub mod format;
pub mod health;
pub mod leader;
pub mod names;
pub mod paths;
pub mod quantity;
pub mod selector;
