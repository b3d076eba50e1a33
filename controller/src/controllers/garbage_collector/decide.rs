//! The collector's pure decisions, on plain values: which resources to watch and where an owner
//! reference's kind is served (from discovery); how an owner lookup classifies a reference; what
//! to do with an object given its owners (upstream's `attemptToDeleteItem`); and the patches
//! it sends.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PropagationPolicy;
use kube::discovery::{ApiCapabilities, ApiResource, Scope, verbs};
use serde_json::{Value, json};

use super::graph::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER, group_of};

/// Resources upstream's collector never watches: many, short-lived, and nobody's owner.
pub const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

/// A served resource and its scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// The resource.
    pub resource: ApiResource,
    /// Namespaced (else cluster-scoped).
    pub namespaced: bool,
}

/// What discovery says: every kind at every served version (to resolve owner references), and
/// the resources to watch.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    by_kind: HashMap<(String, String, String), Served>,
    watched: Vec<ApiResource>,
}

/// A watched resource's key: `apps/v1/deployments`.
pub fn resource_key(r: &ApiResource) -> String {
    format!("{}/{}", r.api_version, r.plural)
}

fn served(resource: &ApiResource, caps: &ApiCapabilities) -> Served {
    Served {
        resource: resource.clone(),
        namespaced: caps.scope == Scope::Namespaced,
    }
}

impl Resources {
    /// From every resource at every version (`all`), and each group's preferred version
    /// (`preferred`). Watched: the preferred resources that can be listed, watched and deleted
    /// (upstream `GetDeletableResources`), but for [`IGNORED`].
    pub fn new(
        all: impl IntoIterator<Item = (ApiResource, ApiCapabilities)>,
        preferred: impl IntoIterator<Item = (ApiResource, ApiCapabilities)>,
    ) -> Resources {
        let mut by_kind = HashMap::new();
        for (r, caps) in all {
            by_kind.insert(
                (r.group.clone(), r.version.clone(), r.kind.clone()),
                served(&r, &caps),
            );
        }
        let mut watched: Vec<ApiResource> = Vec::new();
        for (r, caps) in preferred {
            by_kind
                .entry((r.group.clone(), r.version.clone(), r.kind.clone()))
                .or_insert_with(|| served(&r, &caps));
            let deletable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v));
            let ignored = IGNORED.iter().any(|(g, p)| *g == r.group && *p == r.plural);
            if deletable && !ignored {
                watched.push(r);
            }
        }
        watched.sort_by_key(resource_key);
        watched.dedup_by_key(|r| resource_key(r));
        Resources { by_kind, watched }
    }

    /// The resources to watch.
    pub fn watched(&self) -> &[ApiResource] {
        &self.watched
    }

    /// Where `kind` of `api_version` is served. A version no longer served falls back to
    /// another of the same group (preferably the watched one): the object is the same.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<&Served> {
        let group = group_of(api_version);
        let version = api_version.rsplit('/').next().unwrap_or(api_version);
        if let Some(s) =
            self.by_kind
                .get(&(group.to_string(), version.to_string(), kind.to_string()))
        {
            return Some(s);
        }
        let mut others: Vec<&Served> = self
            .by_kind
            .iter()
            .filter(|((g, _, k), _)| g == group && k == kind)
            .map(|(_, s)| s)
            .collect();
        others.sort_by_key(|s| {
            let watched = self
                .watched
                .iter()
                .any(|w| resource_key(w) == resource_key(&s.resource));
            (!watched, s.resource.version.clone())
        });
        others.into_iter().next()
    }
}

/// Where an owner reference stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists and is not waiting on its dependents.
    Solid,
    /// No such owner (absent, or another object now has its name).
    Dangling,
    /// The owner is being deleted in the foreground: it waits for its dependents to go.
    Waiting,
}

/// Classifies `reference` by what a live lookup of the owner by name returned.
pub fn classify(reference: &OwnerReference, found: Option<&ObjectMeta>) -> OwnerState {
    let Some(owner) = found else {
        return OwnerState::Dangling;
    };
    if owner.uid.as_deref() != Some(reference.uid.as_str()) {
        return OwnerState::Dangling;
    }
    let foreground = owner
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FOREGROUND_FINALIZER);
    if owner.deletion_timestamp.is_some() && foreground {
        OwnerState::Waiting
    } else {
        OwnerState::Solid
    }
}

/// What to do with an object whose owners were classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: it has no owners, or only live ones.
    Keep,
    /// A live owner remains: drop the references (by uid) to owners that are gone or
    /// deleting their dependents, and keep the object.
    RemoveReferences(Vec<String>),
    /// No live owner remains: delete it with this policy, first making its references
    /// non-blocking if `unblock` (to break a cycle of foreground deletions).
    Delete {
        /// The delete's propagationPolicy.
        policy: Policy,
        /// Set every `blockOwnerDeletion` to false first.
        unblock: bool,
    },
}

/// A delete's `propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Delete now; the collector removes the dependents afterwards.
    Background,
    /// Delete the dependents first.
    Foreground,
    /// Keep the dependents, without the reference.
    Orphan,
}

impl Policy {
    /// kube's value.
    pub fn propagation(self) -> PropagationPolicy {
        match self {
            Policy::Background => PropagationPolicy::Background,
            Policy::Foreground => PropagationPolicy::Foreground,
            Policy::Orphan => PropagationPolicy::Orphan,
        }
    }
}

/// Upstream's decision for an object with owners. `finalizers` are the object's own;
/// `has_dependents` and `a_dependent_deletes_its_dependents` come from the graph.
///
/// A dependent of an owner deleting in the foreground is itself deleted in the foreground when
/// it has dependents (upstream), or when its reference to that owner blocks the owner's
/// deletion, so that the owner also waits for what hangs below it.
pub fn plan(
    references: &[(OwnerReference, OwnerState)],
    finalizers: &[String],
    has_dependents: bool,
    a_dependent_deletes_its_dependents: bool,
) -> Plan {
    if references.is_empty() {
        return Plan::Keep;
    }
    let of = |state: OwnerState| {
        references
            .iter()
            .filter(move |(_, s)| *s == state)
            .map(|(r, _)| r)
    };
    let has_finalizer = |f: &str| finalizers.iter().any(|x| x == f);
    if of(OwnerState::Solid).next().is_some() {
        let stale: Vec<String> = of(OwnerState::Dangling)
            .chain(of(OwnerState::Waiting))
            .map(|r| r.uid.clone())
            .collect();
        return if stale.is_empty() {
            Plan::Keep
        } else {
            Plan::RemoveReferences(stale)
        };
    }
    let mut waiting = of(OwnerState::Waiting).peekable();
    if waiting.peek().is_some() && has_dependents {
        return Plan::Delete {
            policy: Policy::Foreground,
            unblock: a_dependent_deletes_its_dependents,
        };
    }
    let blocks_a_waiting_owner = waiting.any(|r| r.block_owner_deletion == Some(true));
    let policy = if has_finalizer(ORPHAN_FINALIZER) {
        Policy::Orphan
    } else if has_finalizer(FOREGROUND_FINALIZER) || blocks_a_waiting_owner {
        Policy::Foreground
    } else {
        Policy::Background
    };
    Plan::Delete {
        policy,
        unblock: false,
    }
}

/// `references` without those to the owners in `uids`; `None` if there is none to remove.
pub fn without_references(
    references: &[OwnerReference],
    uids: &[String],
) -> Option<Vec<OwnerReference>> {
    let kept: Vec<OwnerReference> = references
        .iter()
        .filter(|r| !uids.contains(&r.uid))
        .cloned()
        .collect();
    (kept.len() != references.len()).then_some(kept)
}

/// `references` with every `blockOwnerDeletion` false; `None` if none blocks.
pub fn unblocked(references: &[OwnerReference]) -> Option<Vec<OwnerReference>> {
    if !references
        .iter()
        .any(|r| r.block_owner_deletion == Some(true))
    {
        return None;
    }
    Some(
        references
            .iter()
            .cloned()
            .map(|mut r| {
                if r.block_owner_deletion == Some(true) {
                    r.block_owner_deletion = Some(false);
                }
                r
            })
            .collect(),
    )
}

/// `finalizers` without `finalizer`; `None` if it is not there.
pub fn without_finalizer(finalizers: &[String], finalizer: &str) -> Option<Vec<String>> {
    finalizers.iter().any(|f| f == finalizer).then(|| {
        finalizers
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect()
    })
}

/// A JSON merge patch setting the owner references, valid only at `resource_version` (a
/// concurrent writer makes it fail with 409 instead of being overwritten).
pub fn references_patch(references: &[OwnerReference], resource_version: &str) -> Value {
    let refs = if references.is_empty() {
        Value::Null
    } else {
        json!(references)
    };
    json!({"metadata": {"ownerReferences": refs, "resourceVersion": resource_version}})
}

/// The same for the finalizers.
pub fn finalizers_patch(finalizers: &[String], resource_version: &str) -> Value {
    let f = if finalizers.is_empty() {
        Value::Null
    } else {
        json!(finalizers)
    };
    json!({"metadata": {"finalizers": f, "resourceVersion": resource_version}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn r(uid: &str, blocking: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: format!("name-{uid}"),
            uid: uid.into(),
            block_owner_deletion: blocking.then_some(true),
            controller: None,
        }
    }

    fn meta(uid: &str, deleting: bool, finalizers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            deletion_timestamp: deleting.then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
            finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn owner_lookups_classify_as_upstream() {
        use OwnerState::*;
        let cases = [
            ("not found", None, Dangling),
            (
                "another object of that name",
                Some(meta("other", false, &[])),
                Dangling,
            ),
            ("alive", Some(meta("u", false, &[])), Solid),
            (
                "orphaning",
                Some(meta("u", true, &[ORPHAN_FINALIZER])),
                Solid,
            ),
            (
                "being deleted without finalizer",
                Some(meta("u", true, &[])),
                Solid,
            ),
            (
                "foreground finalizer, not deleted",
                Some(meta("u", false, &[FOREGROUND_FINALIZER])),
                Solid,
            ),
            (
                "deleting in the foreground",
                Some(meta("u", true, &["x", FOREGROUND_FINALIZER])),
                Waiting,
            ),
        ];
        for (what, found, want) in cases {
            assert_eq!(classify(&r("u", true), found.as_ref()), want, "{what}");
        }
    }

    #[test]
    fn plans_as_upstream() {
        use OwnerState::*;
        let bg = |policy| Plan::Delete {
            policy,
            unblock: false,
        };
        let none: &[&str] = &[];
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Vec<(OwnerReference, OwnerState)>,
            &[&str],
            bool,
            bool,
            Plan,
        )> = vec![
            ("no owners", vec![], none, false, false, Plan::Keep),
            (
                "a live owner",
                vec![(r("a", true), Solid)],
                none,
                false,
                false,
                Plan::Keep,
            ),
            (
                "a live owner and gone ones",
                vec![
                    (r("a", false), Solid),
                    (r("b", false), Dangling),
                    (r("c", true), Waiting),
                ],
                none,
                true,
                false,
                Plan::RemoveReferences(vec!["b".into(), "c".into()]),
            ),
            (
                "every owner gone",
                vec![(r("a", true), Dangling), (r("b", false), Dangling)],
                none,
                true,
                false,
                bg(Policy::Background),
            ),
            (
                "gone, but it was being orphaned",
                vec![(r("a", true), Dangling)],
                &[ORPHAN_FINALIZER],
                false,
                false,
                bg(Policy::Orphan),
            ),
            (
                "gone, foreground finalizer kept",
                vec![(r("a", true), Dangling)],
                &[FOREGROUND_FINALIZER],
                false,
                false,
                bg(Policy::Foreground),
            ),
            (
                "owner waits, non-blocking leaf",
                vec![(r("a", false), Waiting)],
                none,
                false,
                false,
                bg(Policy::Background),
            ),
            (
                "owner waits, blocking leaf",
                vec![(r("a", true), Waiting)],
                none,
                false,
                false,
                bg(Policy::Foreground),
            ),
            (
                "owner waits, non-blocking with dependents",
                vec![(r("a", false), Waiting), (r("b", false), Dangling)],
                none,
                true,
                false,
                bg(Policy::Foreground),
            ),
            (
                "owner waits, a dependent too: unblock to break the cycle",
                vec![(r("a", true), Waiting)],
                none,
                true,
                true,
                Plan::Delete {
                    policy: Policy::Foreground,
                    unblock: true,
                },
            ),
        ];
        for (what, refs, finalizers, has_deps, dep_deleting, want) in cases {
            let finalizers: Vec<String> = finalizers.iter().map(|f| f.to_string()).collect();
            assert_eq!(
                plan(&refs, &finalizers, has_deps, dep_deleting),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn patches_keep_what_is_not_removed() {
        let refs = vec![r("a", true), r("b", false)];
        assert_eq!(
            without_references(&refs, &["a".into()]),
            Some(vec![r("b", false)])
        );
        assert_eq!(without_references(&refs, &["zzz".into()]), None);
        assert_eq!(
            without_references(&refs, &["a".into(), "b".into()]),
            Some(vec![])
        );
        let un = unblocked(&refs).unwrap();
        assert_eq!(un[0].block_owner_deletion, Some(false));
        assert_eq!(un[1].block_owner_deletion, None);
        assert_eq!(unblocked(&un), None);

        let f: Vec<String> = vec!["orphan".into(), "example.com/keep".into()];
        assert_eq!(
            without_finalizer(&f, "orphan"),
            Some(vec!["example.com/keep".to_string()])
        );
        assert_eq!(without_finalizer(&f, "foregroundDeletion"), None);

        let p = references_patch(&[r("b", false)], "42");
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "b");
        assert_eq!(
            references_patch(&[], "42")["metadata"]["ownerReferences"],
            Value::Null
        );
        assert_eq!(
            finalizers_patch(&[], "7")["metadata"]["finalizers"],
            Value::Null
        );
        assert_eq!(
            finalizers_patch(&["x".into()], "7")["metadata"]["finalizers"],
            json!(["x"])
        );
    }

    fn res(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    fn caps(scope: Scope, verbs: &[&str]) -> ApiCapabilities {
        ApiCapabilities {
            scope,
            subresources: vec![],
            operations: verbs.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn watches_deletable_preferred_resources_and_resolves_every_version() {
        let full = ["get", "list", "watch", "delete", "create"];
        let deploy = (
            res("apps", "v1", "Deployment", "deployments"),
            caps(Scope::Namespaced, &full),
        );
        let hpa2 = (
            res(
                "autoscaling",
                "v2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
            ),
            caps(Scope::Namespaced, &full),
        );
        let hpa1 = (
            res(
                "autoscaling",
                "v1",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
            ),
            caps(Scope::Namespaced, &full),
        );
        let node = (res("", "v1", "Node", "nodes"), caps(Scope::Cluster, &full));
        let events = (
            res("", "v1", "Event", "events"),
            caps(Scope::Namespaced, &full),
        );
        let bindings = (
            res("", "v1", "Binding", "bindings"),
            caps(Scope::Namespaced, &["create"]),
        );
        let all = vec![
            deploy.clone(),
            hpa2.clone(),
            hpa1.clone(),
            node.clone(),
            events.clone(),
            bindings.clone(),
        ];
        let preferred = vec![deploy, hpa2, node, events, bindings];
        let rs = Resources::new(all, preferred);
        let keys: Vec<String> = rs.watched().iter().map(resource_key).collect();
        assert_eq!(
            keys,
            [
                "apps/v1/deployments",
                "autoscaling/v2/horizontalpodautoscalers",
                "v1/nodes"
            ]
        );
        let hpa = rs
            .resolve("autoscaling/v1", "HorizontalPodAutoscaler")
            .unwrap();
        assert_eq!(hpa.resource.version, "v1");
        let gone = rs
            .resolve("autoscaling/v2beta2", "HorizontalPodAutoscaler")
            .unwrap();
        assert_eq!(
            gone.resource.version, "v2",
            "falls back to the watched version"
        );
        assert!(!rs.resolve("v1", "Node").unwrap().namespaced);
        assert!(rs.resolve("apps/v1", "Deployment").unwrap().namespaced);
        assert!(rs.resolve("example.com/v1", "Widget").is_none());
        assert!(rs.resolve("", "").is_none());
    }
}
