//! namespace-controller: empties a deleted namespace. The apiserver marks a deleted namespace
//! `Terminating` and keeps it while `spec.finalizers` holds `kubernetes`; this controller
//! deletes every namespaced object in it, of every resource the API's discovery lists (so new
//! resources need no change here), reports progress in the namespace's status conditions as
//! upstream does, and once nothing is left removes `kubernetes` through
//! `PUT /api/v1/namespaces/{name}/finalize`, after which the apiserver removes the namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{ApiCapabilities, Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use tokio_util::sync::CancellationToken;

use super::{ControllerContext, ControllerError, Descriptor};
use crate::runtime::{self, FailureBackoff};

/// The controller's registry entry.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "namespace-controller",
    aliases: &["namespace"],
    enabled_by_default: true,
    start,
};

/// The finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";
/// How soon to look again while content is still going away (pods terminate gracefully).
const CONTENT_RECHECK: Duration = Duration::from_secs(2);

/// A resource to empty in each deleted namespace.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub resource: ApiResource,
    /// It supports `deletecollection` (one call), else objects are deleted one by one.
    pub collection: bool,
}

/// `resource.group`, or `resource` for the core group (upstream `GroupResource.String()`).
pub fn group_resource(r: &ApiResource) -> String {
    if r.group.is_empty() {
        r.plural.clone()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}

/// The namespaced resources that can be listed and deleted.
pub fn deletable(
    resources: impl IntoIterator<Item = (ApiResource, ApiCapabilities)>,
) -> Vec<Target> {
    let mut out: Vec<Target> = resources
        .into_iter()
        .filter(|(_, caps)| caps.scope == Scope::Namespaced)
        .filter(|(_, caps)| caps.supports_operation(verbs::LIST))
        .filter(|(_, caps)| {
            caps.supports_operation(verbs::DELETE)
                || caps.supports_operation(verbs::DELETE_COLLECTION)
        })
        .map(|(resource, caps)| Target {
            collection: caps.supports_operation(verbs::DELETE_COLLECTION),
            resource,
        })
        .collect();
    out.sort_by_key(|t| group_resource(&t.resource));
    out
}

/// What one pass of deleting content found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Discovery did not work; nothing was deleted.
    pub discovery_error: Option<String>,
    /// Resources whose deletion failed, with the error.
    pub failures: Vec<String>,
    /// Objects still present per resource (`pods`, `leases.coordination.k8s.io`).
    pub remaining: BTreeMap<String, usize>,
    /// Objects still present per finalizer they carry.
    pub finalizers: BTreeMap<String, usize>,
}

impl Outcome {
    /// Nothing left and nothing failed: the namespace can be finalized.
    pub fn done(&self) -> bool {
        self.discovery_error.is_none() && self.failures.is_empty() && self.remaining.is_empty()
    }
}

fn condition(type_: &str, failed: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if failed { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: None,
    }
}

/// Upstream's deletion conditions for an outcome (transition times left to [`merge_conditions`]).
pub fn conditions(o: &Outcome) -> Vec<NamespaceCondition> {
    let discovery = match &o.discovery_error {
        Some(e) => condition(
            "NamespaceDeletionDiscoveryFailure",
            true,
            "DiscoveryFailed",
            format!("Discovery failed for some groups, 1 failing: {e}"),
        ),
        None => condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
    };
    let parsing = condition(
        "NamespaceDeletionGroupVersionParsingFailure",
        false,
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed".into(),
    );
    let content = if o.failures.is_empty() {
        condition(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
        )
    } else {
        condition(
            "NamespaceDeletionContentFailure",
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                o.failures.len(),
                o.failures.join(", ")
            ),
        )
    };
    let remaining = if o.remaining.is_empty() {
        condition(
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
        )
    } else {
        let parts: Vec<String> = o
            .remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        condition(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", parts.join(", ")),
        )
    };
    let finalizers = if o.finalizers.is_empty() {
        condition(
            "NamespaceFinalizersRemaining",
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
        )
    } else {
        let parts: Vec<String> = o
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        condition(
            "NamespaceFinalizersRemaining",
            true,
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                parts.join(", ")
            ),
        )
    };
    vec![discovery, parsing, content, remaining, finalizers]
}

/// The namespace's conditions with `new` applied: a condition keeps its transition time while
/// its status stays; `None` when nothing changes.
pub fn merge_conditions(
    old: &[NamespaceCondition],
    new: Vec<NamespaceCondition>,
    now: Timestamp,
) -> Option<Vec<NamespaceCondition>> {
    let mut out: Vec<NamespaceCondition> = old
        .iter()
        .filter(|c| !new.iter().any(|n| n.type_ == c.type_))
        .cloned()
        .collect();
    let mut changed = false;
    for mut n in new {
        match old.iter().find(|c| c.type_ == n.type_) {
            Some(c) if c.status == n.status => {
                n.last_transition_time = c.last_transition_time.clone();
                changed |= c.reason != n.reason || c.message != n.message;
            }
            _ => {
                n.last_transition_time = Some(Time(now));
                changed = true;
            }
        }
        out.push(n);
    }
    changed.then_some(out)
}

/// The namespace with our finalizer removed from `spec.finalizers`, for `/finalize`.
pub fn finalized(ns: &Namespace) -> Namespace {
    let mut out = ns.clone();
    if let Some(f) = out.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        f.retain(|f| f != FINALIZER);
    }
    out
}

/// Whether the controller has work on this namespace.
pub fn needs_finalizing(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        && ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

struct Ctx {
    client: kube::Client,
    backoff: FailureBackoff,
    metrics: crate::metrics::Metrics,
}

fn start(
    cx: &mut ControllerContext<'_>,
    token: CancellationToken,
) -> Result<BoxFuture<'static, ()>, ControllerError> {
    let informer = cx.informers.namespaces();
    let store = informer.store();
    let sub = informer
        .subscribe()
        .ok_or(ControllerError::InformerStarted)?;
    let ctx = Arc::new(Ctx {
        client: cx.client.clone(),
        backoff: FailureBackoff::default(),
        metrics: cx.metrics.clone(),
    });
    let controller = Controller::for_shared_stream(sub, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(runtime::CONCURRENCY))
        .graceful_shutdown_on(token.cancelled_owned())
        .run(reconcile, error_policy, ctx);
    Ok(Box::pin(runtime::drain(DESCRIPTOR.name, controller)))
}

fn error_policy(ns: Arc<Namespace>, error: &ControllerError, ctx: Arc<Ctx>) -> Action {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let delay = ctx.backoff.failed(&name);
    tracing::warn!(namespace = name, error = %error, retry_in = ?delay, "namespace sync failed");
    Action::requeue(delay)
}

async fn discover(client: &kube::Client) -> Result<Vec<Target>, kube::Error> {
    let discovery = match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => d,
        Err(_) => Discovery::new(client.clone()).run().await?,
    };
    Ok(deletable(
        discovery.groups().flat_map(|g| g.recommended_resources()),
    ))
}

/// Deletes everything of `target` in `namespace`; returns what is left.
async fn empty(
    client: &kube::Client,
    namespace: &str,
    target: &Target,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &target.resource);
    let params = DeleteParams::background();
    if target.collection {
        api.delete_collection(&params, &ListParams::default())
            .await?;
    } else {
        for obj in api.list(&ListParams::default()).await? {
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = obj.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(api.list(&ListParams::default()).await?.items)
}

async fn delete_content(client: &kube::Client, namespace: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let targets = match discover(client).await {
        Ok(t) => t,
        Err(e) => {
            outcome.discovery_error = Some(e.to_string());
            return outcome;
        }
    };
    for target in &targets {
        let gr = group_resource(&target.resource);
        match empty(client, namespace, target).await {
            Ok(left) if left.is_empty() => {}
            Ok(left) => {
                for obj in &left {
                    for f in obj.metadata.finalizers.iter().flatten() {
                        *outcome.finalizers.entry(f.clone()).or_insert(0) += 1;
                    }
                }
                outcome.remaining.insert(gr, left.len());
            }
            // Gone with its namespace, or not servable after all: nothing to wait for.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {}
            Err(e) => outcome.failures.push(format!("{gr}: {e}")),
        }
    }
    outcome
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let timer = ctx.metrics.sync_timer(DESCRIPTOR.name);
    if !needs_finalizing(&ns) {
        timer.success();
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let outcome = delete_content(&ctx.client, &name).await;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut current = (*ns).clone();
    if let Some(merged) = merge_conditions(&old, conditions(&outcome), Timestamp::now()) {
        current
            .status
            .get_or_insert_with(Default::default)
            .conditions = Some(merged);
        current = match api
            .replace_status(&name, &PostParams::default(), &current)
            .await
        {
            Ok(updated) => updated,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        };
    }
    if let Some(e) = &outcome.discovery_error {
        return Err(ControllerError::Discovery(e.clone()));
    }
    if !outcome.failures.is_empty() {
        return Err(ControllerError::Content(outcome.failures.join(", ")));
    }
    if !outcome.done() {
        tracing::info!(namespace = name, remaining = ?outcome.remaining, "waiting for namespace content to go");
        ctx.backoff.succeeded(&name);
        timer.success();
        return Ok(Action::requeue(CONTENT_RECHECK));
    }
    match api
        .replace_subresource(
            "finalize",
            &name,
            &PostParams::default(),
            &finalized(&current),
        )
        .await
    {
        Ok(_) => tracing::info!(namespace = name, "namespace emptied and finalized"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    ctx.backoff.succeeded(&name);
    timer.success();
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    fn caps(scope: Scope, verbs: &[&str]) -> ApiCapabilities {
        ApiCapabilities {
            scope,
            subresources: vec![],
            operations: verbs.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn res(group: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: if group.is_empty() {
                "v1".into()
            } else {
                format!("{group}/v1")
            },
            kind: plural.into(),
            plural: plural.into(),
        }
    }

    #[test]
    fn only_namespaced_deletable_resources_are_emptied() {
        let all = vec![
            (
                res("", "pods"),
                caps(Scope::Namespaced, &["list", "delete", "deletecollection"]),
            ),
            (
                res("", "nodes"),
                caps(Scope::Cluster, &["list", "delete", "deletecollection"]),
            ),
            (
                res("coordination.k8s.io", "leases"),
                caps(Scope::Namespaced, &["list", "delete"]),
            ),
            (res("", "bindings"), caps(Scope::Namespaced, &["create"])),
            (
                res("", "events"),
                caps(Scope::Namespaced, &["list", "deletecollection"]),
            ),
        ];
        let got: Vec<(String, bool)> = deletable(all)
            .into_iter()
            .map(|t| (group_resource(&t.resource), t.collection))
            .collect();
        assert_eq!(
            got,
            [
                ("events".to_string(), true),
                ("leases.coordination.k8s.io".to_string(), false),
                ("pods".to_string(), true),
            ]
        );
    }

    #[test]
    fn conditions_report_progress_as_upstream() {
        let mut o = Outcome::default();
        o.remaining.insert("pods".into(), 2);
        o.finalizers.insert("example.com/keep".into(), 1);
        let cs = conditions(&o);
        let get = |t: &str| cs.iter().find(|c| c.type_ == t).unwrap();
        let remaining = get("NamespaceContentRemaining");
        assert_eq!(remaining.status, "True");
        assert_eq!(
            remaining.message.as_deref(),
            Some("Some resources are remaining: pods has 2 resource instances")
        );
        assert_eq!(
            get("NamespaceFinalizersRemaining").message.as_deref(),
            Some(
                "Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances"
            )
        );
        assert_eq!(get("NamespaceDeletionDiscoveryFailure").status, "False");
        assert!(!o.done());
        assert!(Outcome::default().done());
        assert_eq!(cs.len(), 5);
    }

    #[test]
    fn merging_keeps_transition_times_and_skips_no_ops() {
        let first = merge_conditions(&[], conditions(&Outcome::default()), t(1)).unwrap();
        assert!(
            first
                .iter()
                .all(|c| c.last_transition_time == Some(Time(t(1))))
        );
        assert!(merge_conditions(&first, conditions(&Outcome::default()), t(2)).is_none());
        let mut o = Outcome::default();
        o.remaining.insert("pods".into(), 1);
        let second = merge_conditions(&first, conditions(&o), t(3)).unwrap();
        let time = |cs: &[NamespaceCondition], ty: &str| {
            cs.iter()
                .find(|c| c.type_ == ty)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time(&second, "NamespaceContentRemaining"), Some(Time(t(3))));
        assert_eq!(
            time(&second, "NamespaceDeletionDiscoveryFailure"),
            Some(Time(t(1)))
        );
    }

    #[test]
    fn finalizing_removes_only_our_finalizer() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("team".into()),
                deletion_timestamp: Some(Time(t(0))),
                ..Default::default()
            },
            spec: Some(NamespaceSpec {
                finalizers: Some(vec!["kubernetes".into(), "other".into()]),
            }),
            status: None,
        };
        assert!(needs_finalizing(&ns));
        let f = finalized(&ns);
        assert_eq!(f.spec.unwrap().finalizers, Some(vec!["other".to_string()]));
        let mut alive = ns.clone();
        alive.metadata.deletion_timestamp = None;
        assert!(!needs_finalizing(&alive));
        let mut done = ns.clone();
        done.spec = Some(NamespaceSpec {
            finalizers: Some(vec![]),
        });
        assert!(!needs_finalizing(&done));
    }
}
