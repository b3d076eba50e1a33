//! What the server serves: each resource kind, described once. A [`Kind`] ties a k8s-openapi
//! type to its upstream behaviour (defaults, validation, status handling, field selectors,
//! table columns, deletion); the [`Registry`] indexes them for routing, discovery and OpenAPI.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use futures::future::BoxFuture;

use crate::errors::{ApiResult, FieldError};
use crate::handlers::Endpoint;

/// A subresource a kind serves, for routing and discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: get, update and patch of `.status` only.
    Status,
    /// `pods/binding`: assign a pod to a node.
    Binding,
    /// `namespaces/finalize`: update `spec.finalizers`.
    Finalize,
    /// `/scale` (autoscaling/v1 Scale): read and set `spec.replicas`.
    Scale,
    /// `pods/log`: the container's log, from the node's agent.
    Log,
    /// `pods/exec`: a command in a container, through the node's agent.
    Exec,
    /// `pods/eviction` (policy/v1 Eviction): a delete that respects disruption budgets.
    Eviction,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Binding => "binding",
            Subresource::Finalize => "finalize",
            Subresource::Scale => "scale",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Eviction => "eviction",
        }
    }

    /// (group, version, kind) of what the subresource takes and returns, for discovery.
    pub fn response_kind<K: Kind>(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Subresource::Status | Subresource::Finalize => (K::GROUP, K::VERSION, K::KIND),
            Subresource::Binding => ("", "v1", "Binding"),
            Subresource::Scale => ("autoscaling", "v1", "Scale"),
            Subresource::Log => ("", "v1", "Pod"),
            Subresource::Exec => ("", "v1", "PodExecOptions"),
            Subresource::Eviction => ("policy", "v1", "Eviction"),
        }
    }

    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Subresource::Status => &["get", "patch", "update"],
            Subresource::Binding => &["create"],
            Subresource::Finalize => &["update"],
            Subresource::Scale => &["get", "patch", "update"],
            Subresource::Log => &["get"],
            Subresource::Exec => &["create", "get"],
            Subresource::Eviction => &["create"],
        }
    }
}

/// A server-side printing column (`kubectl get` headers), as upstream's printers.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Column {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
}

impl Column {
    pub const fn new(name: &'static str, type_: &'static str, description: &'static str) -> Self {
        Column {
            name,
            type_,
            format: "",
            description,
            priority: 0,
        }
    }
    pub const fn wide(self) -> Self {
        Column {
            priority: 1,
            ..self
        }
    }
    pub const fn name_column() -> Self {
        Column {
            name: "Name",
            type_: "string",
            format: "name",
            description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically.",
            priority: 0,
        }
    }
    pub const fn age_column() -> Self {
        Column::new(
            "Age",
            "string",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        )
    }
}

/// How a DELETE proceeds for one object.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteDecision {
    /// Remove it from the store now.
    Now,
    /// Keep it, updated (deletionTimestamp set, phase changed...): someone finishes the job
    /// (the agent for a running pod, the namespace controller, a finalizer's owner).
    Graceful,
}

/// A resource kind as the API serves it. Types come from k8s-openapi; this trait adds upstream's
/// "strategy": what the server does on create, update and delete of that kind.
pub trait Kind:
    k8s_openapi::Resource
    + k8s_openapi::ListableResource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + PartialEq
    + Send
    + Sync
    + 'static
{
    const NAMESPACED: bool;
    const SINGULAR: &'static str;
    /// Names must be DNS-1123 labels (namespaces) rather than subdomains (most kinds).
    const NAME_IS_LABEL: bool = false;
    const SHORT_NAMES: &'static [&'static str] = &[];
    const CATEGORIES: &'static [&'static str] = &[];
    const SUBRESOURCES: &'static [Subresource] = &[];
    /// Field selectors beyond `metadata.name` and `metadata.namespace`.
    const FIELDS: &'static [&'static str] = &[];
    /// Whether `metadata.generation` counts spec changes.
    const TRACKS_GENERATION: bool = false;
    /// Whether a PUT of a missing object creates it.
    const CREATE_ON_UPDATE: bool = false;

    /// The value of a field selector field (`metadata.*` is handled for every kind).
    fn field(&self, _field: &str) -> Option<String> {
        None
    }

    /// Create: reset what clients may not set (status for most kinds).
    fn prepare_for_create(&mut self) {}

    /// Upstream's defaulting (runs on create and on every update).
    fn apply_defaults(&mut self) {}

    /// Field errors of a new object (the name is checked by the caller).
    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }

    /// Field errors of an update; by default the new object must be valid.
    fn validate_update(&self, _old: &Self) -> Vec<FieldError> {
        self.validate()
    }

    /// Update of the main resource: keep what only subresources change (status).
    fn prepare_for_update(&mut self, _old: &Self) {}

    /// Update through a subresource (`/status`, `/finalize`): only what it governs may change;
    /// everything else comes from `old`. Scale and binding handlers build the new object from
    /// the old one themselves.
    fn prepare_for_subresource_update(&mut self, old: &Self, sub: Subresource) {
        if !matches!(sub, Subresource::Scale | Subresource::Binding) {
            *self = old.clone();
        }
    }

    /// For kinds with a scale subresource: spec.replicas, status.replicas and the selector
    /// as a string (`app=web`).
    fn scale(&self) -> Option<(i32, i32, String)> {
        None
    }

    /// Sets spec.replicas (the scale subresource's write).
    fn set_replicas(&mut self, _replicas: i32) {}

    /// Whether the spec differs, for `generation`.
    fn spec_changed(&self, _old: &Self) -> bool {
        false
    }

    /// DELETE of a live object: mark it for a graceful end or remove it now. `grace` is the
    /// request's gracePeriodSeconds, if any.
    fn on_delete(&mut self, _grace: Option<i64>, _now: &Time) -> ApiResult<DeleteDecision> {
        Ok(DeleteDecision::Now)
    }

    /// Whether an object marked for deletion may now be removed: no grace period left to wait
    /// for and every finalizer done (upstream's `ShouldDeleteDuringUpdate`).
    fn ready_to_remove(&self) -> bool {
        let m = self.metadata();
        m.deletion_timestamp.is_some()
            && m.deletion_grace_period_seconds.unwrap_or(0) == 0
            && m.finalizers.as_ref().is_none_or(Vec::is_empty)
    }

    /// Keys this object holds in the store besides its own, each unique cluster-wide (allocated
    /// cluster IPs and node ports): written with it, released with it.
    fn held_keys(&self) -> Vec<String> {
        Vec::new()
    }

    /// Fills in what must be allocated (a free IP, a free port) before validation; `old` is the
    /// stored object on update. May read the store; uniqueness is enforced when writing.
    fn allocate<'a>(
        &'a mut self,
        _st: &'a crate::State,
        _old: Option<&'a Self>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// The error for a held key (asked for by the client) that another object holds.
    fn held_key_taken(&self, key: &str) -> FieldError {
        FieldError::invalid("metadata", key, "is already allocated")
    }

    /// Columns of `kubectl get`, after Name (added by the table code) and with Age where it
    /// goes; see [`Kind::cells`].
    fn columns() -> Vec<Column> {
        vec![Column::name_column(), Column::age_column()]
    }

    /// One row's cells in [`Kind::columns`] order.
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            Value::from(self.metadata().name.clone().unwrap_or_default()),
            Value::from(crate::table::age(
                self.metadata().creation_timestamp.as_ref(),
                now,
            )),
        ]
    }
}

/// The verbs of every stored resource.
pub const STORED_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Static facts about one resource, for routing and discovery.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// What discovery says clients may do with it.
    pub verbs: &'static [&'static str],
    /// (name, verbs, response (group, version, kind)).
    pub subresources: Vec<(
        &'static str,
        &'static [&'static str],
        (&'static str, &'static str, &'static str),
    )>,
}

impl ResourceInfo {
    pub fn of<K: Kind>() -> Self {
        ResourceInfo {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            singular: K::SINGULAR,
            namespaced: K::NAMESPACED,
            short_names: K::SHORT_NAMES,
            categories: K::CATEGORIES,
            verbs: STORED_VERBS,
            subresources: K::SUBRESOURCES
                .iter()
                .map(|s| (s.name(), s.verbs(), s.response_kind::<K>()))
                .collect(),
        }
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        self.verbs
    }

    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Upstream's version priority (kube-aware ordering): GA before beta before alpha, higher
/// numbers first, so a group's preferred version (the first one discovery lists) is its newest
/// stable one: autoscaling/v2 before autoscaling/v1.
fn version_priority(v: &str) -> (u8, std::cmp::Reverse<u32>, std::cmp::Reverse<u32>) {
    use std::cmp::Reverse;
    let parse = || -> Option<(u8, u32, u32)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u32 = rest[..digits].parse().ok()?;
        let (stage, minor) = match &rest[digits..] {
            "" => (0, "0"),
            s if s.starts_with("beta") => (1, &s[4..]),
            s if s.starts_with("alpha") => (2, &s[5..]),
            _ => return None,
        };
        Some((stage, major, minor.parse().ok()?))
    };
    match parse() {
        Some((stage, major, minor)) => (stage, Reverse(major), Reverse(minor)),
        None => (3, Reverse(0), Reverse(0)),
    }
}

/// Every resource the server serves, by group/version and plural.
#[derive(Default)]
pub struct Registry {
    /// In discovery order: core first, then by group, version and plural.
    endpoints: Vec<Arc<dyn Endpoint>>,
    index: BTreeMap<(String, String, String), usize>,
}

impl Registry {
    pub fn add(&mut self, endpoint: Arc<dyn Endpoint>) {
        self.endpoints.push(endpoint);
        self.endpoints.sort_by_key(|e| {
            let i = e.info();
            (i.group, version_priority(i.version), i.version, i.plural)
        });
        self.index = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(n, e)| {
                let i = e.info();
                (
                    (
                        i.group.to_string(),
                        i.version.to_string(),
                        i.plural.to_string(),
                    ),
                    n,
                )
            })
            .collect();
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<dyn Endpoint>> {
        self.index
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .map(|&i| &self.endpoints[i])
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<dyn Endpoint>> {
        self.endpoints.iter()
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceInfo> {
        self.endpoints.iter().map(|e| e.info())
    }

    /// Group → versions served, in discovery order (core first, then by name).
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut gv: Vec<(&'static str, &'static str)> =
            self.all().map(|i| (i.group, i.version)).collect();
        gv.dedup();
        gv
    }
}

#[cfg(test)]
mod tests {
    use super::version_priority;

    #[test]
    fn versions_order_as_upstream() {
        let mut v = vec!["v1", "v2beta1", "v1alpha1", "v2", "v10", "v1beta2", "foo"];
        v.sort_by_key(|v| version_priority(v));
        assert_eq!(
            v,
            ["v10", "v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]
        );
    }
}
