//! The dependency graph (upstream's `GraphBuilder`): one node per object seen by a monitor, or
//! per owner only referenced so far (a *virtual* node, to be confirmed or refuted against the
//! API), linked owner → dependents by `metadata.ownerReferences`. It is pure: a [`Change`] goes
//! in, the [`Effect`]s it calls for (items for the work queues, absent owners, events) come out.
//! A single task applies changes in order, as upstream's single-threaded graph builder.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The finalizer the apiserver adds for a `propagationPolicy: Orphan` delete.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// ... and for `propagationPolicy: Foreground`.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// Where an object is and which one it is: an owner reference's coordinates plus the namespace
/// (empty for cluster-scoped objects). Field order is upstream's sort order: kind and version
/// before namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// `apps/v1`, `v1`.
    pub api_version: String,
    /// `Deployment`.
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The uid.
    pub uid: String,
}

/// The API group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

impl Identity {
    /// The owner a reference points to, guessed to live in `namespace` (the dependent's).
    pub fn of_reference(r: &OwnerReference, namespace: &str) -> Identity {
        Identity {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: namespace.to_string(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }

    /// Whether `r` names this object. Versions are not compared: one object is served at
    /// every version of its group, and a reference may use any of them.
    pub fn matches_reference(&self, r: &OwnerReference) -> bool {
        r.uid == self.uid
            && r.name == self.name
            && r.kind == self.kind
            && group_of(&r.api_version) == group_of(&self.api_version)
    }

    /// The same object at the same coordinates (versions not compared, as above).
    pub fn same_coordinates(&self, other: &Identity) -> bool {
        self.uid == other.uid
            && self.name == other.name
            && self.kind == other.kind
            && self.namespace == other.namespace
            && group_of(&self.api_version) == group_of(&other.api_version)
    }
}

impl fmt::Display for Identity {
    /// Upstream's `objectReference.String()`, as its events and logs show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}/{}, namespace: {}, name: {}, uid: {}]",
            self.api_version, self.kind, self.namespace, self.name, self.uid
        )
    }
}

/// What a monitor saw of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Its coordinates, with the version its monitor watches.
    pub identity: Identity,
    /// `metadata.ownerReferences`.
    pub owners: Vec<OwnerReference>,
    /// It has a `deletionTimestamp`.
    pub deleting: bool,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
}

/// An input to the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A monitor saw the object added or changed.
    Upsert(Observed),
    /// A monitor saw the object deleted.
    Delete(Identity),
    /// A worker found no object with this uid at these coordinates.
    VirtualDelete(Identity),
}

/// What the graph asks the collector to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Queue the node (by uid) for `attemptToDelete`.
    Delete(String),
    /// The same, after its failure backoff.
    DeleteLater(String),
    /// Queue the node for `attemptToOrphan`.
    Orphan(String),
    /// This owner is known not to exist (no need to ask the API again).
    Absent(Identity),
    /// Record upstream's `OwnerRefInvalidNamespace` warning on `dependent`: it names an owner
    /// that lives in another namespace.
    InvalidNamespace {
        /// The object with the bad reference.
        dependent: Identity,
        /// The owner as referenced (in the dependent's namespace).
        owner: Identity,
    },
}

/// One object (or virtual owner) in the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its coordinates (for a virtual node, as its first dependent named it).
    pub identity: Identity,
    /// Its owner references.
    pub owners: Vec<OwnerReference>,
    /// The uids of the nodes that name it as an owner.
    pub dependents: BTreeSet<String>,
    /// Seen by a monitor (not virtual).
    pub observed: bool,
    /// It has a `deletionTimestamp`.
    pub being_deleted: bool,
    /// Being deleted with `foregroundDeletion`: its dependents go first.
    pub deleting_dependents: bool,
    /// Last seen being deleted with `orphan` (to spot when that starts).
    orphaning: bool,
    /// Last seen being deleted with `foregroundDeletion`, and acted on.
    foreground: bool,
}

impl Node {
    fn new(identity: Identity, observed: bool) -> Node {
        Node {
            identity,
            owners: Vec::new(),
            dependents: BTreeSet::new(),
            observed,
            being_deleted: false,
            deleting_dependents: false,
            orphaning: false,
            foreground: false,
        }
    }
}

fn blocks(r: &OwnerReference) -> bool {
    r.block_owner_deletion == Some(true)
}

/// Owner references added, removed and changed (old, new), matched by uid.
pub fn references_diffs(
    old: &[OwnerReference],
    new: &[OwnerReference],
) -> (
    Vec<OwnerReference>,
    Vec<OwnerReference>,
    Vec<(OwnerReference, OwnerReference)>,
) {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for n in new {
        match old.iter().find(|o| o.uid == n.uid) {
            None => added.push(n.clone()),
            Some(o) if o != n => changed.push((o.clone(), n.clone())),
            Some(_) => {}
        }
    }
    let removed = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.uid == o.uid))
        .cloned()
        .collect();
    (added, removed, changed)
}

/// The owners → dependents graph, by uid.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
}

impl Graph {
    /// Applies one change; returns what it calls for.
    pub fn apply(&mut self, change: Change) -> Vec<Effect> {
        let mut fx = Vec::new();
        match change {
            Change::Upsert(o) => self.upsert(o, &mut fx),
            Change::Delete(identity) => {
                if self.nodes.contains_key(&identity.uid) {
                    self.observe(&identity, &mut fx);
                    self.remove(&identity, &mut fx);
                }
            }
            Change::VirtualDelete(identity) => self.virtual_delete(&identity, &mut fx),
        }
        fx
    }

    /// The node with this uid.
    pub fn node(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// How many nodes (objects and virtual owners) the graph holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The graph is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The dependents of `uid` whose reference to it has `blockOwnerDeletion`, with whether
    /// each is itself deleting its dependents.
    pub fn blocking_dependents(&self, uid: &str) -> Vec<(String, bool)> {
        let Some(n) = self.nodes.get(uid) else {
            return Vec::new();
        };
        n.dependents
            .iter()
            .filter_map(|d| self.nodes.get(d).map(|dep| (d, dep)))
            .filter(|(_, dep)| dep.owners.iter().any(|r| r.uid == uid && blocks(r)))
            .map(|(d, dep)| (d.clone(), dep.deleting_dependents))
            .collect()
    }

    /// The coordinates of the dependents of `uid`.
    pub fn dependents(&self, uid: &str) -> Vec<Identity> {
        self.nodes
            .get(uid)
            .into_iter()
            .flat_map(|n| n.dependents.iter())
            .filter_map(|d| self.nodes.get(d))
            .map(|d| d.identity.clone())
            .collect()
    }

    /// Whether some dependent of `uid` is deleting its own dependents (a possible cycle).
    pub fn a_dependent_deletes_its_dependents(&self, uid: &str) -> bool {
        self.nodes
            .get(uid)
            .into_iter()
            .flat_map(|n| n.dependents.iter())
            .filter_map(|d| self.nodes.get(d))
            .any(|d| d.deleting_dependents)
    }

    /// The safety net's periodic pass: every node with work pending is queued again (virtual
    /// owners to confirm, foreground deletions to finish, orphanings to finish).
    pub fn resync(&self) -> Vec<Effect> {
        let mut fx = Vec::new();
        let mut uids: Vec<&String> = self.nodes.keys().collect();
        uids.sort();
        for uid in uids {
            let n = &self.nodes[uid];
            if !n.observed || n.deleting_dependents {
                fx.push(Effect::Delete(uid.clone()));
            }
            if n.orphaning {
                fx.push(Effect::Orphan(uid.clone()));
            }
        }
        fx
    }

    fn upsert(&mut self, o: Observed, fx: &mut Vec<Effect>) {
        let uid = o.identity.uid.clone();
        self.observe(&o.identity, fx);
        let has = |f: &str| o.deleting && o.finalizers.iter().any(|x| x == f);
        let (orphan_now, foreground_now) = (has(ORPHAN_FINALIZER), has(FOREGROUND_FINALIZER));
        match self.nodes.get_mut(&uid) {
            None => {
                let mut n = Node::new(o.identity, true);
                n.owners = o.owners.clone();
                n.being_deleted = o.deleting;
                n.deleting_dependents = foreground_now;
                self.nodes.insert(uid.clone(), n);
                self.add_dependent_to_owners(&uid, &o.owners, fx);
            }
            Some(n) => {
                let (added, removed, changed) = references_diffs(&n.owners, &o.owners);
                n.being_deleted |= o.deleting;
                n.deleting_dependents = foreground_now;
                if !added.is_empty() || !removed.is_empty() || !changed.is_empty() {
                    n.owners = o.owners;
                    self.queue_unblocked_owners(&removed, &changed, fx);
                    self.add_dependent_to_owners(&uid, &added, fx);
                    self.remove_dependent_from_owners(&uid, &removed);
                }
            }
        }
        self.transitions(&uid, orphan_now, foreground_now, fx);
    }

    /// A monitor saw `identity`: a virtual node of that uid becomes observed, and if its guessed
    /// coordinates were wrong, the dependents that disagree are checked again.
    fn observe(&mut self, identity: &Identity, fx: &mut Vec<Effect>) {
        let Some(existing) = self.nodes.get(&identity.uid) else {
            return;
        };
        if existing.observed {
            return;
        }
        if !existing.identity.same_coordinates(identity) {
            let deps = existing.dependents.clone();
            let (_, invalid) = self.partition_dependents(&deps, identity);
            for dep in invalid {
                if !identity.namespace.is_empty()
                    && let Some(d) = self.nodes.get(&dep)
                    && d.identity.namespace != identity.namespace
                    && let Some(e) = self.invalid_namespace(&dep, &identity.uid)
                {
                    fx.push(e);
                }
                fx.push(Effect::Delete(dep));
            }
        }
        if let Some(n) = self.nodes.get_mut(&identity.uid) {
            n.identity = identity.clone();
            n.observed = true;
        }
    }

    /// Orphaning or foreground deletion starting on `uid` queues the work for it.
    fn transitions(
        &mut self,
        uid: &str,
        orphan_now: bool,
        foreground_now: bool,
        fx: &mut Vec<Effect>,
    ) {
        let Some(n) = self.nodes.get_mut(uid) else {
            return;
        };
        let orphan_starts = orphan_now && !n.orphaning;
        n.orphaning = orphan_now;
        if orphan_now {
            // One at a time: a foreground finalizer as well is acted on once orphaning is done
            // (it is not recorded as seen until then).
            if orphan_starts {
                fx.push(Effect::Orphan(uid.to_string()));
            }
            return;
        }
        let foreground_starts = foreground_now && !n.foreground;
        n.foreground = foreground_now;
        if foreground_starts {
            n.deleting_dependents = true;
            fx.extend(n.dependents.iter().cloned().map(Effect::Delete));
            fx.push(Effect::Delete(uid.to_string()));
        }
    }

    fn invalid_namespace(&self, dependent: &str, owner_uid: &str) -> Option<Effect> {
        let d = self.nodes.get(dependent)?;
        let r = d.owners.iter().find(|r| r.uid == owner_uid)?;
        Some(Effect::InvalidNamespace {
            dependent: d.identity.clone(),
            owner: Identity::of_reference(r, &d.identity.namespace),
        })
    }

    fn add_dependent_to_owners(
        &mut self,
        dep: &str,
        owners: &[OwnerReference],
        fx: &mut Vec<Effect>,
    ) {
        let Some(namespace) = self.nodes.get(dep).map(|d| d.identity.namespace.clone()) else {
            return;
        };
        let mut potentially_invalid = false;
        for r in owners {
            let Some(owner) = self.nodes.get_mut(&r.uid) else {
                // An owner not seen (yet): a virtual node, which a worker confirms or refutes.
                let mut v = Node::new(Identity::of_reference(r, &namespace), false);
                v.dependents.insert(dep.to_string());
                self.nodes.insert(r.uid.clone(), v);
                fx.push(Effect::Delete(r.uid.clone()));
                continue;
            };
            owner.dependents.insert(dep.to_string());
            if potentially_invalid {
                continue;
            }
            let owner_namespaced = !owner.identity.namespace.is_empty();
            let (observed, owner_namespace) = (owner.observed, owner.identity.namespace.clone());
            if owner_namespaced && owner_namespace != namespace {
                // Owners are looked up in the dependent's namespace (or cluster-wide).
                if observed && let Some(e) = self.invalid_namespace(dep, &r.uid) {
                    fx.push(e);
                }
                potentially_invalid = true;
            } else if !owner.identity.matches_reference(r) {
                potentially_invalid = true;
            } else if !owner_namespaced && owner_namespace != namespace && !observed {
                // A virtual cluster-scoped owner named from a namespaced dependent: it may be a
                // namespaced kind wrongly referenced by a cluster-scoped object.
                potentially_invalid = true;
            }
        }
        if potentially_invalid {
            fx.push(Effect::Delete(dep.to_string()));
        }
    }

    fn remove_dependent_from_owners(&mut self, dep: &str, owners: &[OwnerReference]) {
        for r in owners {
            if let Some(o) = self.nodes.get_mut(&r.uid) {
                o.dependents.remove(dep);
            }
        }
    }

    /// Owners that waited on a blocking reference that is now gone or no longer blocking
    /// may be able to finish.
    fn queue_unblocked_owners(
        &self,
        removed: &[OwnerReference],
        changed: &[(OwnerReference, OwnerReference)],
        fx: &mut Vec<Effect>,
    ) {
        let unblocked = removed.iter().filter(|r| blocks(r)).chain(
            changed
                .iter()
                .filter(|(o, n)| blocks(o) && !blocks(n))
                .map(|(_, n)| n),
        );
        for r in unblocked {
            if self.nodes.contains_key(&r.uid) {
                fx.push(Effect::Delete(r.uid.clone()));
            }
        }
    }

    /// Removes the node; its dependents and waiting owners are queued.
    fn remove(&mut self, identity: &Identity, fx: &mut Vec<Effect>) {
        let Some(n) = self.nodes.remove(&identity.uid) else {
            return;
        };
        self.remove_dependent_from_owners(&identity.uid, &n.owners);
        if !n.dependents.is_empty() {
            fx.push(Effect::Absent(identity.clone()));
        }
        fx.extend(n.dependents.iter().cloned().map(Effect::Delete));
        for r in &n.owners {
            if self
                .nodes
                .get(&r.uid)
                .is_some_and(|o| o.deleting_dependents)
            {
                fx.push(Effect::Delete(r.uid.clone()));
            }
        }
    }

    fn virtual_delete(&mut self, identity: &Identity, fx: &mut Vec<Effect>) {
        let Some(existing) = self.nodes.get(&identity.uid) else {
            return;
        };
        let deps = existing.dependents.clone();
        let (existing_identity, observed) = (existing.identity.clone(), existing.observed);
        let (matching, nonmatching) = self.partition_dependents(&deps, identity);
        let mut remove = true;
        if !observed {
            // Not sure of our own coordinates: dependents naming other ones keep the node.
            if !nonmatching.is_empty() {
                remove = false;
                if !matching.is_empty() {
                    fx.push(Effect::Absent(identity.clone()));
                    fx.extend(matching.into_iter().map(Effect::Delete));
                }
                if existing_identity.same_coordinates(identity)
                    && let Some(alt) = self.alternate_identity(&nonmatching, identity)
                    && let Some(n) = self.nodes.get_mut(&identity.uid)
                {
                    n.identity = alt;
                    fx.push(Effect::DeleteLater(identity.uid.clone()));
                }
            }
        } else if !existing_identity.same_coordinates(identity) {
            // An observed object is never removed on a lookup at other coordinates.
            remove = false;
            if !matching.is_empty() {
                fx.push(Effect::Absent(identity.clone()));
                fx.extend(matching.into_iter().map(Effect::Delete));
            }
        }
        if remove {
            self.remove(identity, fx);
        }
    }

    /// Dependents whose reference to `owner`'s uid matches its coordinates, and those with one
    /// that does not (a dependent may be in both).
    fn partition_dependents(
        &self,
        deps: &BTreeSet<String>,
        owner: &Identity,
    ) -> (Vec<String>, Vec<String>) {
        let (mut matching, mut nonmatching) = (Vec::new(), Vec::new());
        for uid in deps {
            let Some(d) = self.nodes.get(uid) else {
                continue;
            };
            let (mut found_match, mut found_mismatch) = (false, false);
            if !owner.namespace.is_empty() && owner.namespace != d.identity.namespace {
                found_mismatch = true;
            } else {
                for r in d.owners.iter().filter(|r| r.uid == owner.uid) {
                    if owner.matches_reference(r) {
                        found_match = true;
                    } else {
                        found_mismatch = true;
                    }
                }
            }
            if found_match {
                matching.push(uid.clone());
            }
            if found_mismatch {
                nonmatching.push(uid.clone());
            }
        }
        (matching, nonmatching)
    }

    /// Another identity the dependents give this uid, to try next: the first that sorts after
    /// the refuted one, else the first (upstream `getAlternateOwnerIdentity`).
    fn alternate_identity(&self, deps: &[String], absent: &Identity) -> Option<Identity> {
        let cluster_scoped = absent.namespace.is_empty();
        let mut seen: BTreeSet<Identity> = BTreeSet::new();
        for d in deps.iter().filter_map(|d| self.nodes.get(d)) {
            for r in d.owners.iter().filter(|r| r.uid == absent.uid) {
                if absent.matches_reference(r)
                    && (cluster_scoped || absent.namespace == d.identity.namespace)
                {
                    continue;
                }
                let mut alt = Identity::of_reference(r, &d.identity.namespace);
                if cluster_scoped
                    && alt.api_version == absent.api_version
                    && alt.kind == absent.kind
                {
                    alt.namespace.clear();
                }
                if alt != *absent {
                    seen.insert(alt);
                }
            }
        }
        seen.iter()
            .find(|a| *a > absent)
            .or_else(|| seen.iter().next())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: &str, ns: &str, name: &str) -> Identity {
        let api_version = match kind {
            "Deployment" | "ReplicaSet" => "apps/v1",
            _ => "v1",
        };
        Identity {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn owner_ref(owner: &Identity, blocking: bool) -> OwnerReference {
        OwnerReference {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
            block_owner_deletion: blocking.then_some(true),
            controller: None,
        }
    }

    fn seen(identity: &Identity, owners: Vec<OwnerReference>) -> Change {
        Change::Upsert(Observed {
            identity: identity.clone(),
            owners,
            deleting: false,
            finalizers: vec![],
        })
    }

    fn deleting(identity: &Identity, owners: Vec<OwnerReference>, finalizers: &[&str]) -> Change {
        Change::Upsert(Observed {
            identity: identity.clone(),
            owners,
            deleting: true,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
        })
    }

    fn del(uid: &Identity) -> Effect {
        Effect::Delete(uid.uid.clone())
    }

    #[test]
    fn owners_seen_first_link_their_dependents_without_work() {
        let (d, rs) = (
            id("Deployment", "default", "web"),
            id("ReplicaSet", "default", "web-1"),
        );
        let mut g = Graph::default();
        assert_eq!(g.apply(seen(&d, vec![])), vec![]);
        assert_eq!(g.apply(seen(&rs, vec![owner_ref(&d, true)])), vec![]);
        assert_eq!(
            g.node(&d.uid).unwrap().dependents,
            BTreeSet::from([rs.uid.clone()])
        );
        assert_eq!(g.dependents(&d.uid), vec![rs.clone()]);
        assert_eq!(g.blocking_dependents(&d.uid), vec![(rs.uid.clone(), false)]);
        // An update that changes nothing about owners or deletion does nothing.
        assert_eq!(g.apply(seen(&rs, vec![owner_ref(&d, true)])), vec![]);
    }

    #[test]
    fn an_unseen_owner_is_a_virtual_node_to_check() {
        let (d, rs) = (
            id("Deployment", "default", "web"),
            id("ReplicaSet", "default", "web-1"),
        );
        let mut g = Graph::default();
        assert_eq!(g.apply(seen(&rs, vec![owner_ref(&d, true)])), vec![del(&d)]);
        let v = g.node(&d.uid).unwrap();
        assert!(!v.observed);
        assert_eq!(
            v.identity, d,
            "coordinates from the reference and the dependent's namespace"
        );
        // The owner shows up: observed, nothing to do.
        assert_eq!(g.apply(seen(&d, vec![])), vec![]);
        assert!(g.node(&d.uid).unwrap().observed);
        // The worker refuted it instead: gone from the graph, its dependents checked.
        let mut g = Graph::default();
        g.apply(seen(&rs, vec![owner_ref(&d, true)]));
        assert_eq!(
            g.apply(Change::VirtualDelete(d.clone())),
            vec![Effect::Absent(d.clone()), del(&rs)]
        );
        assert!(g.node(&d.uid).is_none());
    }

    #[test]
    fn deleting_an_owner_queues_its_dependents() {
        let (d, rs, cm) = (
            id("Deployment", "default", "web"),
            id("ReplicaSet", "default", "web-1"),
            id("ConfigMap", "default", "settings"),
        );
        let mut g = Graph::default();
        g.apply(seen(&d, vec![]));
        g.apply(seen(&rs, vec![owner_ref(&d, true)]));
        g.apply(seen(&cm, vec![owner_ref(&d, false)]));
        let fx = g.apply(Change::Delete(d.clone()));
        assert_eq!(fx, vec![Effect::Absent(d.clone()), del(&cm), del(&rs)]);
        assert!(g.node(&d.uid).is_none());
        // A leaf going away has nothing to say.
        assert_eq!(g.apply(Change::Delete(rs.clone())), vec![]);
        // Nor does the delete of something never seen.
        assert_eq!(g.apply(Change::Delete(rs.clone())), vec![]);
    }

    #[test]
    fn foreground_deletion_queues_dependents_then_the_owner_when_one_goes() {
        let (d, rs, cm) = (
            id("Deployment", "default", "web"),
            id("ReplicaSet", "default", "web-1"),
            id("ConfigMap", "default", "settings"),
        );
        let mut g = Graph::default();
        g.apply(seen(&d, vec![]));
        g.apply(seen(&rs, vec![owner_ref(&d, true)]));
        g.apply(seen(&cm, vec![owner_ref(&d, false)]));
        let fx = g.apply(deleting(&d, vec![], &[FOREGROUND_FINALIZER]));
        assert_eq!(fx, vec![del(&cm), del(&rs), del(&d)]);
        assert!(g.node(&d.uid).unwrap().deleting_dependents);
        // Seen again (another update): already acted on.
        assert_eq!(
            g.apply(deleting(&d, vec![], &[FOREGROUND_FINALIZER])),
            vec![]
        );
        // A dependent going away wakes the waiting owner.
        assert_eq!(g.apply(Change::Delete(rs.clone())), vec![del(&d)]);
        assert_eq!(g.blocking_dependents(&d.uid), vec![]);
    }

    #[test]
    fn orphaning_starts_once_and_takes_precedence() {
        let d = id("Deployment", "default", "web");
        let mut g = Graph::default();
        g.apply(seen(&d, vec![]));
        let both = [ORPHAN_FINALIZER, FOREGROUND_FINALIZER];
        assert_eq!(
            g.apply(deleting(&d, vec![], &both)),
            vec![Effect::Orphan(d.uid.clone())]
        );
        assert_eq!(g.apply(deleting(&d, vec![], &both)), vec![]);
        // Orphaning done: the foreground part starts.
        assert_eq!(
            g.apply(deleting(&d, vec![], &[FOREGROUND_FINALIZER])),
            vec![del(&d)]
        );
        // The finalizer alone, without a deletionTimestamp, means nothing.
        let mut g = Graph::default();
        let c = Change::Upsert(Observed {
            identity: d.clone(),
            owners: vec![],
            deleting: false,
            finalizers: vec![ORPHAN_FINALIZER.into()],
        });
        assert_eq!(g.apply(c), vec![]);
    }

    #[test]
    fn first_sight_of_an_object_being_deleted_acts_as_a_transition() {
        // After a restart the collector sees everything for the first time.
        let (d, rs) = (
            id("Deployment", "default", "web"),
            id("ReplicaSet", "default", "web-1"),
        );
        let mut g = Graph::default();
        g.apply(seen(&rs, vec![owner_ref(&d, true)]));
        let fx = g.apply(deleting(&d, vec![], &[FOREGROUND_FINALIZER]));
        assert_eq!(fx, vec![del(&rs), del(&d)]);
        let o = id("Deployment", "default", "old");
        assert_eq!(
            g.apply(deleting(&o, vec![], &[ORPHAN_FINALIZER])),
            vec![Effect::Orphan(o.uid.clone())]
        );
        let mut pending = g.resync();
        pending.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(pending, vec![del(&d), Effect::Orphan(o.uid.clone())]);
    }

    #[test]
    fn owner_reference_changes_update_links_and_unblock_owners() {
        let (a, b, rs) = (
            id("Deployment", "default", "a"),
            id("Deployment", "default", "b"),
            id("ReplicaSet", "default", "web-1"),
        );
        let mut g = Graph::default();
        g.apply(seen(&a, vec![]));
        g.apply(seen(&b, vec![]));
        g.apply(seen(&rs, vec![owner_ref(&a, true)]));
        // Moved from a (blocking) to b: a may be waiting on it.
        let fx = g.apply(seen(&rs, vec![owner_ref(&b, false)]));
        assert_eq!(fx, vec![del(&a)]);
        assert!(g.node(&a.uid).unwrap().dependents.is_empty());
        assert_eq!(g.dependents(&b.uid), vec![rs.clone()]);
        // Made blocking, then not: the second change unblocks b.
        assert_eq!(g.apply(seen(&rs, vec![owner_ref(&b, true)])), vec![]);
        assert_eq!(
            g.apply(seen(&rs, vec![owner_ref(&b, false)])),
            vec![del(&b)]
        );
    }

    #[test]
    fn references_diffs_by_uid() {
        let (a, b, c) = (
            id("ConfigMap", "ns", "a"),
            id("ConfigMap", "ns", "b"),
            id("ConfigMap", "ns", "c"),
        );
        let old = vec![owner_ref(&a, true), owner_ref(&b, false)];
        let new = vec![owner_ref(&b, true), owner_ref(&c, false)];
        let (added, removed, changed) = references_diffs(&old, &new);
        assert_eq!(added, vec![owner_ref(&c, false)]);
        assert_eq!(removed, vec![owner_ref(&a, true)]);
        assert_eq!(changed, vec![(owner_ref(&b, false), owner_ref(&b, true))]);
        assert_eq!(references_diffs(&old, &old), (vec![], vec![], vec![]));
    }

    #[test]
    fn an_owner_in_another_namespace_is_reported_and_the_dependent_checked() {
        let owner = id("ConfigMap", "a", "owner");
        let dep = id("ConfigMap", "b", "dep");
        let report = Effect::InvalidNamespace {
            dependent: dep.clone(),
            owner: Identity {
                namespace: "b".into(),
                ..owner.clone()
            },
        };
        // Owner observed first.
        let mut g = Graph::default();
        g.apply(seen(&owner, vec![]));
        assert_eq!(
            g.apply(seen(&dep, vec![owner_ref(&owner, false)])),
            vec![report.clone(), del(&dep)]
        );
        // Dependent first: the virtual owner is guessed in "b"; seeing it in "a" reports too.
        let mut g = Graph::default();
        assert_eq!(
            g.apply(seen(&dep, vec![owner_ref(&owner, false)])),
            vec![del(&owner)]
        );
        assert_eq!(g.apply(seen(&owner, vec![])), vec![report, del(&dep)]);
        assert_eq!(g.node(&owner.uid).unwrap().identity, owner);
    }

    #[test]
    fn references_with_wrong_coordinates_are_checked() {
        let owner = id("ConfigMap", "ns", "owner");
        let dep = id("ConfigMap", "ns", "dep");
        let mut bad = owner_ref(&owner, false);
        bad.kind = "Secret".into();
        let mut g = Graph::default();
        g.apply(seen(&owner, vec![]));
        assert_eq!(g.apply(seen(&dep, vec![bad.clone()])), vec![del(&dep)]);
        // Another version of the same group is the same object.
        let dep2 = id("ConfigMap", "ns", "dep2");
        let mut other_version = owner_ref(&owner, false);
        other_version.api_version = "v2".into();
        assert_eq!(g.apply(seen(&dep2, vec![other_version])), vec![]);
    }

    #[test]
    fn a_refuted_virtual_owner_tries_another_identity_its_dependents_give() {
        let right = id("ConfigMap", "ns", "owner");
        let mut wrong = right.clone();
        wrong.kind = "Secret".into();
        let (d1, d2) = (id("ConfigMap", "ns", "d1"), id("ConfigMap", "ns", "d2"));
        let mut wrong_ref = owner_ref(&right, false);
        wrong_ref.kind = "Secret".into();
        let mut g = Graph::default();
        // d1 names it as a Secret (first: the virtual node takes those coordinates).
        assert_eq!(g.apply(seen(&d1, vec![wrong_ref])), vec![del(&wrong)]);
        assert_eq!(
            g.apply(seen(&d2, vec![owner_ref(&right, false)])),
            vec![del(&d2)]
        );
        // No Secret of that uid: d1 is checked, the node now tries the ConfigMap.
        let fx = g.apply(Change::VirtualDelete(wrong.clone()));
        assert_eq!(
            fx,
            vec![
                Effect::Absent(wrong.clone()),
                del(&d1),
                Effect::DeleteLater(right.uid.clone())
            ]
        );
        assert_eq!(g.node(&right.uid).unwrap().identity, right);
        // An observed object is not removed by a lookup at other coordinates.
        g.apply(seen(&right, vec![]));
        assert_eq!(
            g.apply(Change::VirtualDelete(wrong.clone())),
            vec![Effect::Absent(wrong.clone()), del(&d1)]
        );
        assert!(g.node(&right.uid).is_some());
    }

    #[test]
    fn identities_print_as_upstream() {
        let d = id("Deployment", "default", "web");
        assert_eq!(
            d.to_string(),
            "[apps/v1/Deployment, namespace: default, name: web, uid: uid-web]"
        );
        assert_eq!(group_of("apps/v1"), "apps");
        assert_eq!(group_of("v1"), "");
    }
}
