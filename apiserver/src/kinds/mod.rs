//! Every kind the server serves, one file each, and the registry built from them.

pub mod configmap;
pub mod convert;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod event;
pub mod hpa;
pub mod job;
pub mod lease;
pub mod namespace;
pub mod node;
pub mod pod;
pub mod podtemplate;
pub mod replicaset;
pub mod secret;
pub mod service;
pub mod serviceaccount;
pub mod statefulset;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::handlers::Typed;
use crate::registry::Registry;

/// The registry of everything served.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.add(Typed::<Namespace>::endpoint());
    r.add(Typed::<Node>::endpoint());
    r.add(Typed::<Pod>::endpoint());
    r.add(Typed::<Event>::endpoint());
    r.add(Typed::<Lease>::endpoint());
    r.add(Typed::<Service>::endpoint());
    r.add(Typed::<Endpoints>::endpoint());
    r.add(Typed::<EndpointSlice>::endpoint());
    crate::metrics_api::register(&mut r);
    r.add(Typed::<ConfigMap>::endpoint());
    r.add(Typed::<Secret>::endpoint());
    r.add(Typed::<ServiceAccount>::endpoint());
    r.add(Typed::<Deployment>::endpoint());
    r.add(Typed::<ReplicaSet>::endpoint());
    r.add(Typed::<DaemonSet>::endpoint());
    r.add(Typed::<StatefulSet>::endpoint());
    r.add(Typed::<Job>::endpoint());
    r.add(Typed::<CronJob>::endpoint());
    r.add(Typed::<HorizontalPodAutoscaler>::endpoint());
    // Stored as autoscaling/v2, also served as autoscaling/v1.
    r.add(convert::Converted::<hpa::V1>::endpoint());
    r
}
