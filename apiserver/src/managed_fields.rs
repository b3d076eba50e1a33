//! Field ownership (`metadata.managedFields`) and server-side apply, as upstream's
//! structured-merge-diff does them. Every write records, per manager, the fields it set
//! (`Update`); an apply (`Apply`) owns exactly the fields of its configuration, removes from
//! the object the fields it applied before and no longer applies (unless another manager owns
//! them too), and fails with a conflict when it would change a value another manager owns,
//! unless forced, which takes the field over.
//!
//! A field set is a set of paths in upstream's `fieldsV1` notation: `f:<field>`, then
//! `k:{"name":"web"}` for an element of a list keyed by its merge key, `v:<json>` for an element
//! of a set of primitives. Which list is which comes from the strategic merge table in
//! [`crate::patch`]; every other list is atomic and owned whole.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use serde_json::{Map, Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::patch::{self, ListStrategy, PatchType};
use crate::registry::{Kind, Subresource};

/// Longest manager name upstream accepts in `fieldManager`.
const MAX_MANAGER: usize = 128;

/// Fields no manager ever owns (upstream's `stripSet`): the server sets them.
const STRIPPED: &[&[&str]] = &[
    &["apiVersion"],
    &["kind"],
    &["metadata", "name"],
    &["metadata", "namespace"],
    &["metadata", "creationTimestamp"],
    &["metadata", "selfLink"],
    &["metadata", "uid"],
    &["metadata", "generation"],
    &["metadata", "resourceVersion"],
];

/// What a write did, as `managedFields[].operation` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A server-side apply: the manager owns exactly its configuration's fields.
    Apply,
    /// Any other write: the manager gains the fields it changed.
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "Apply" => Some(Operation::Apply),
            "Update" => Some(Operation::Update),
            _ => None,
        }
    }
}

/// Who writes, as upstream identifies a manager: its name, the operation and the subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub name: String,
    pub operation: Operation,
    pub subresource: Option<String>,
}

impl Manager {
    /// The manager of a request: `fieldManager`, else the User-Agent up to its first `/`
    /// (`kubectl/v1.32.5 (linux/amd64) ...` → `kubectl`), else `unknown`.
    pub fn of_request(
        field_manager: Option<&str>,
        user_agent: Option<&str>,
        operation: Operation,
        subresource: Option<&str>,
    ) -> ApiResult<Manager> {
        let name = match field_manager.filter(|m| !m.is_empty()) {
            Some(m) if m.len() > MAX_MANAGER => {
                return Err(ApiError::bad_request(format!(
                    "fieldManager: Too long: may not be more than {MAX_MANAGER} bytes"
                )));
            }
            Some(m) if m.chars().any(char::is_control) => {
                return Err(ApiError::bad_request(format!(
                    "fieldManager: Invalid value: {m:?}: must only contain printable characters"
                )));
            }
            Some(m) => m.to_string(),
            None => user_agent
                .and_then(|ua| ua.split('/').next())
                .map(|p| {
                    p.chars()
                        .filter(|c| !c.is_control())
                        .take(MAX_MANAGER)
                        .collect::<String>()
                })
                .filter(|p| !p.trim().is_empty())
                .unwrap_or_else(|| "unknown".to_string()),
        };
        Ok(Manager {
            name,
            operation,
            subresource: subresource.map(String::from),
        })
    }

    /// A write the server makes on its own behalf (bootstrap objects).
    pub fn system(name: &str) -> Manager {
        Manager {
            name: name.to_string(),
            operation: Operation::Update,
            subresource: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Paths and field sets

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pe {
    /// `f:name`: a field of an object.
    Field(String),
    /// `k:{"name":"web"}`: an element of a keyed list, by its key (canonical JSON object).
    Key(String),
    /// `v:"x"`: an element of a set of primitives, by its value (JSON).
    Value(String),
    /// `i:0`: an element by position (only read from entries written elsewhere).
    Index(usize),
}

impl Pe {
    fn field(name: &str) -> Pe {
        Pe::Field(name.to_string())
    }

    /// The key of a keyed-list element, its fields in name order as upstream writes them.
    fn key(fields: &Map<String, Value>) -> Pe {
        let mut pairs: Vec<(&String, &Value)> = fields.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
            .collect();
        Pe::Key(format!("{{{}}}", body.join(",")))
    }

    /// The `fieldsV1` form.
    pub fn notation(&self) -> String {
        match self {
            Pe::Field(f) => format!("f:{f}"),
            Pe::Key(k) => format!("k:{k}"),
            Pe::Value(v) => format!("v:{v}"),
            Pe::Index(i) => format!("i:{i}"),
        }
    }

    fn parse(s: &str) -> Option<Pe> {
        let (tag, rest) = s.split_at_checked(2)?;
        match tag {
            "f:" => Some(Pe::Field(rest.to_string())),
            "k:" => match serde_json::from_str::<Value>(rest).ok()? {
                Value::Object(m) if !m.is_empty() => Some(Pe::key(&m)),
                _ => None,
            },
            "v:" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| Pe::Value(v.to_string())),
            "i:" => rest.parse().ok().map(Pe::Index),
            _ => None,
        }
    }

    /// The form upstream prints in conflicts: `.image`, `[name="web"]`, `[="x"]`, `[0]`.
    fn display(&self) -> String {
        match self {
            Pe::Field(f) => format!(".{f}"),
            Pe::Key(k) => match serde_json::from_str::<Value>(k) {
                Ok(Value::Object(m)) => {
                    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("[{}]", parts.join(","))
                }
                _ => format!("[{k}]"),
            },
            Pe::Value(v) => format!("[={v}]"),
            Pe::Index(i) => format!("[{i}]"),
        }
    }

    /// The position of the element this step names in `list`.
    fn find(&self, list: &[Value]) -> Option<usize> {
        match self {
            Pe::Field(_) => None,
            Pe::Key(k) => {
                let Ok(Value::Object(key)) = serde_json::from_str::<Value>(k) else {
                    return None;
                };
                list.iter()
                    .position(|e| key.iter().all(|(f, v)| e.get(f) == Some(v)))
            }
            Pe::Value(v) => {
                let v: Value = serde_json::from_str(v).ok()?;
                list.iter().position(|e| *e == v)
            }
            Pe::Index(i) => (*i < list.len()).then_some(*i),
        }
    }
}

/// A field path from the object's root.
pub type Path = Vec<Pe>;

/// `.spec.template.spec.containers[name="web"].image`, as upstream prints a path.
pub fn path_string(path: &[Pe]) -> String {
    path.iter().map(Pe::display).collect()
}

/// A set of field paths: what one manager owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Path>);

impl FieldSet {
    /// The fields an object sets (upstream's `ToFieldSet`): every scalar, atomic list and
    /// empty object, and every element of a keyed list or set with what it holds. Objects
    /// with fields are not fields of their own: only what they hold is.
    pub fn of(obj: &Value) -> FieldSet {
        let mut out = BTreeSet::new();
        if let Value::Object(m) = obj {
            walk_map(m, &mut Vec::new(), &mut Vec::new(), &mut out);
        }
        out.retain(|p| {
            !STRIPPED
                .iter()
                .any(|s| s.len() == p.len() && s.iter().zip(p).all(|(a, b)| *b == Pe::field(a)))
        });
        FieldSet(out)
    }

    /// Reads a `fieldsV1` value; what is not upstream's notation is left out.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut out = BTreeSet::new();
        read_fields_v1(v, &mut Vec::new(), &mut out);
        FieldSet(out)
    }

    /// The `fieldsV1` value: a tree of steps, `{}` for a leaf, `".": {}` where a field with
    /// owned children is owned itself.
    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            children: BTreeMap<Pe, Node>,
        }
        fn render(node: &Node) -> Value {
            let mut m = Map::new();
            if node.member && !node.children.is_empty() {
                m.insert(".".to_string(), json!({}));
            }
            for (pe, child) in &node.children {
                m.insert(pe.notation(), render(child));
            }
            Value::Object(m)
        }
        let mut root = Node::default();
        for path in &self.0 {
            let mut node = &mut root;
            for pe in path {
                node = node.children.entry(pe.clone()).or_default();
            }
            node.member = true;
        }
        render(&root)
    }

    pub fn from_paths(paths: impl IntoIterator<Item = Path>) -> FieldSet {
        FieldSet(paths.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.0.iter()
    }

    pub fn contains(&self, path: &[Pe]) -> bool {
        self.0.contains(path)
    }

    /// Whether the set holds `prefix` or anything under it.
    pub fn owns_within(&self, prefix: &[Pe]) -> bool {
        self.0
            .range(prefix.to_vec()..)
            .next()
            .is_some_and(|p| p.starts_with(prefix))
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    fn filter(self, f: impl Fn(&Path) -> bool) -> FieldSet {
        FieldSet(self.0.into_iter().filter(|p| f(p)).collect())
    }
}

fn walk_map(
    m: &Map<String, Value>,
    path: &mut Path,
    names: &mut Vec<String>,
    out: &mut BTreeSet<Path>,
) {
    for (k, v) in m {
        if names.len() == 1 && names[0] == "metadata" && k == "managedFields" {
            continue;
        }
        path.push(Pe::field(k));
        names.push(k.clone());
        walk_value(v, path, names, out);
        names.pop();
        path.pop();
    }
}

fn walk_value(v: &Value, path: &mut Path, names: &mut Vec<String>, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => walk_map(m, path, names, out),
        Value::Array(list) => match element_steps(list, names) {
            Some(steps) => {
                for (pe, element) in steps.into_iter().zip(list) {
                    path.push(pe);
                    out.insert(path.clone());
                    if let Value::Object(m) = element {
                        walk_map(m, path, names, out);
                    }
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The steps naming each element of the list at `names` (field names from the root), or
/// `None` when the list is atomic: by its strategy, or because its elements cannot be told
/// apart (a missing or repeated key).
fn element_steps(list: &[Value], names: &[String]) -> Option<Vec<Pe>> {
    let steps: Vec<Pe> = match patch::list_strategy(names) {
        ListStrategy::Replace => return None,
        ListStrategy::MergeBy(key) => list
            .iter()
            .map(|e| match e.get(key)? {
                Value::Object(_) | Value::Array(_) | Value::Null => None,
                v => {
                    let mut m = Map::new();
                    m.insert(key.to_string(), v.clone());
                    Some(Pe::key(&m))
                }
            })
            .collect::<Option<_>>()?,
        ListStrategy::MergePrimitives => list
            .iter()
            .map(|e| match e {
                Value::Object(_) | Value::Array(_) => None,
                v => Some(Pe::Value(v.to_string())),
            })
            .collect::<Option<_>>()?,
    };
    let distinct: BTreeSet<&Pe> = steps.iter().collect();
    (distinct.len() == steps.len()).then_some(steps)
}

fn read_fields_v1(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(m) = v.as_object() else {
        return;
    };
    for (k, child) in m {
        if k == "." {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            continue;
        }
        let Some(pe) = Pe::parse(k) else {
            continue;
        };
        path.push(pe);
        match child.as_object() {
            Some(c) if c.is_empty() => {
                out.insert(path.clone());
            }
            _ => read_fields_v1(child, path, out),
        }
        path.pop();
    }
}

/// The value at `path`, if the object has it.
pub fn lookup<'a>(v: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = v;
    for pe in path {
        cur = match (pe, cur) {
            (Pe::Field(f), Value::Object(m)) => m.get(f)?,
            (pe, Value::Array(list)) => &list[pe.find(list)?],
            _ => return None,
        };
    }
    Some(cur)
}

fn lookup_mut<'a>(v: &'a mut Value, path: &[Pe]) -> Option<&'a mut Value> {
    let mut cur = v;
    for pe in path {
        cur = match (pe, cur) {
            (Pe::Field(f), Value::Object(m)) => m.get_mut(f)?,
            (pe, Value::Array(list)) => {
                let i = pe.find(list)?;
                &mut list[i]
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Removes the field or element at `path`; whether it was there.
pub fn remove(v: &mut Value, path: &[Pe]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (last, lookup_mut(v, parent)) {
        (Pe::Field(f), Some(Value::Object(m))) => m.remove(f).is_some(),
        (pe, Some(Value::Array(list))) => match pe.find(list) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// What a write changed (upstream's `Compare`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Fields of the new object that are new or hold a different value.
    pub changed: FieldSet,
    /// Fields of the old object the new one no longer has.
    pub removed: FieldSet,
}

impl Comparison {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

pub fn compare(old: &Value, new: &Value) -> Comparison {
    let filled = |v: &Value| v.as_object().is_some_and(|m| !m.is_empty());
    let changed = FieldSet::of(new).filter(|p| match (lookup(old, p), lookup(new, p)) {
        // An element's own presence is what its path owns; its fields count on their own.
        (Some(o), Some(n)) => !(filled(o) && filled(n)) && o != n,
        _ => true,
    });
    let removed = FieldSet::of(old).filter(|p| lookup(new, p).is_none());
    Comparison { changed, removed }
}

// ---------------------------------------------------------------------------------------------
// managedFields entries

/// One entry of `managedFields`, decoded.
#[derive(Debug, Clone)]
struct Owner {
    manager: String,
    operation: Operation,
    subresource: Option<String>,
    api_version: String,
    time: Option<Time>,
    set: FieldSet,
}

impl Owner {
    fn is(&self, m: &Manager) -> bool {
        self.is_entry(&m.name, m.operation, &m.subresource)
    }

    /// Whether this is the entry of `manager` for `operation` through `subresource`: one per
    /// such triple.
    fn is_entry(&self, manager: &str, operation: Operation, subresource: &Option<String>) -> bool {
        self.manager == manager && self.operation == operation && &self.subresource == subresource
    }

    /// The manager as upstream names it in a conflict (`printManager`).
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

fn decode(entries: &[ManagedFieldsEntry]) -> Vec<Owner> {
    let mut owners: Vec<Owner> = Vec::new();
    for e in entries {
        let Some(operation) = e.operation.as_deref().and_then(Operation::parse) else {
            continue;
        };
        let owner = Owner {
            manager: e.manager.clone().unwrap_or_default(),
            operation,
            subresource: e.subresource.clone().filter(|s| !s.is_empty()),
            api_version: e.api_version.clone().unwrap_or_default(),
            time: e.time.clone(),
            set: e
                .fields_v1
                .as_ref()
                .map(|f| FieldSet::from_fields_v1(&f.0))
                .unwrap_or_default(),
        };
        // One entry per manager: duplicates (written by a client) are merged.
        match owners
            .iter_mut()
            .find(|o| o.is_entry(&owner.manager, owner.operation, &owner.subresource))
        {
            Some(o) => o.set = o.set.union(&owner.set),
            None => owners.push(owner),
        }
    }
    owners
}

/// The entries, without empty ones, in upstream's order (operation, time, manager, ...).
fn encode(mut owners: Vec<Owner>) -> Vec<ManagedFieldsEntry> {
    owners.retain(|o| !o.set.is_empty());
    let seconds = |o: &Owner| o.time.as_ref().map_or(0, |t| t.0.as_second());
    owners.sort_by(|a, b| {
        (
            a.operation.as_str(),
            seconds(a),
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation.as_str(),
                seconds(b),
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    owners
        .into_iter()
        .map(|o| ManagedFieldsEntry {
            api_version: Some(o.api_version),
            fields_type: Some("FieldsV1".to_string()),
            fields_v1: Some(FieldsV1(o.set.to_fields_v1())),
            manager: Some(o.manager),
            operation: Some(o.operation.as_str().to_string()),
            subresource: o.subresource,
            time: o.time,
        })
        .collect()
}

fn entries_of(obj: &Value) -> Vec<ManagedFieldsEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(Value::Object(m)) = obj.get_mut("metadata") {
        m.remove("managedFields");
    }
    obj
}

/// The managedFields after an Update write of `new` over `old` (`{}` on create): the writer
/// gains the fields it changed, takes them from everyone else, and removed fields are
/// nobody's. `given` is what the new object carried: a client may set managedFields itself,
/// except through a subresource.
pub fn updated_entries(
    old: &Value,
    new: &Value,
    live: &[ManagedFieldsEntry],
    given: Option<&[ManagedFieldsEntry]>,
    manager: &Manager,
    api_version: &str,
    now: &Time,
) -> Vec<ManagedFieldsEntry> {
    let base = match given {
        Some(g) if !g.is_empty() && manager.subresource.is_none() => g,
        _ => live,
    };
    let cmp = compare(old, new);
    if cmp.is_empty() {
        return base.to_vec();
    }
    let mut owners = decode(base);
    for o in &mut owners {
        o.set = o.set.difference(&cmp.changed).difference(&cmp.removed);
    }
    if !cmp.changed.is_empty() {
        match owners.iter_mut().find(|o| o.is(manager)) {
            Some(o) => {
                o.set = o.set.union(&cmp.changed);
                o.api_version = api_version.to_string();
                o.time = Some(now.clone());
            }
            None => owners.push(Owner {
                manager: manager.name.clone(),
                operation: Operation::Update,
                subresource: manager.subresource.clone(),
                api_version: api_version.to_string(),
                time: Some(now.clone()),
                set: cmp.changed,
            }),
        }
    }
    encode(owners)
}

/// A server-side apply of `config` over `live` (`None` when it creates): the merged object,
/// with its managedFields. `has_status` says the kind has a `/status` subresource, whose
/// fields an apply to the main resource does not own (and the reverse).
#[allow(clippy::too_many_arguments)]
pub fn apply_config(
    live: Option<&Value>,
    config: &Value,
    manager: &Manager,
    api_version: &str,
    has_status: bool,
    force: bool,
    now: &Time,
) -> ApiResult<Value> {
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    let empty = json!({});
    let entries = live.map(entries_of).unwrap_or_default();
    let live = live.map(without_managed_fields).unwrap_or(empty);
    let config = without_managed_fields(config);
    let mut merged = patch::apply(PatchType::Apply, &live, &config)?;
    // What the write may change; the rest is reset after it (upstream's reset fields) and is
    // neither owned nor a conflict.
    let status = Pe::field("status");
    let in_scope = |p: &Path| {
        let in_status = p.first() == Some(&status);
        match manager.subresource.as_deref() {
            Some("status") => in_status,
            None if has_status => !in_status,
            _ => true,
        }
    };
    let applied = FieldSet::of(&config).filter(in_scope);
    let mut owners = decode(&entries);
    let last = owners
        .iter()
        .find(|o| o.is(manager))
        .map(|o| o.set.clone())
        .unwrap_or_default();
    // What this manager stopped applying goes, unless someone still owns it or under it.
    for path in last.difference(&applied).iter() {
        let kept = applied.owns_within(path)
            || owners
                .iter()
                .any(|o| !o.is(manager) && o.set.owns_within(path));
        if !kept {
            remove(&mut merged, path);
        }
    }
    let cmp = compare(&live, &merged);
    let cmp = Comparison {
        changed: cmp.changed.filter(in_scope),
        removed: cmp.removed.filter(in_scope),
    };
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for o in owners.iter().filter(|o| !o.is(manager)) {
        for p in o.set.intersection(&cmp.changed).iter() {
            conflicts.push((o.describe(), p.clone()));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    for o in &mut owners {
        if !o.is(manager) {
            o.set = o.set.difference(&cmp.changed);
        }
        o.set = o.set.difference(&cmp.removed);
    }
    match owners.iter_mut().find(|o| o.is(manager)) {
        Some(o) => {
            if !cmp.is_empty() || o.set != applied {
                o.time = Some(now.clone());
            }
            o.set = applied;
            o.api_version = api_version.to_string();
        }
        None => owners.push(Owner {
            manager: manager.name.clone(),
            operation: Operation::Apply,
            subresource: manager.subresource.clone(),
            api_version: api_version.to_string(),
            time: Some(now.clone()),
            set: applied,
        }),
    }
    let entries = serde_json::to_value(encode(owners))
        .map_err(|e| ApiError::internal(format!("cannot encode managedFields: {e}")))?;
    if let Some(Value::Object(m)) = merged.get_mut("metadata") {
        m.insert("managedFields".to_string(), entries);
    } else if let Value::Object(m) = &mut merged {
        m.insert("metadata".to_string(), json!({"managedFields": entries}));
    }
    Ok(merged)
}

/// 409 Conflict naming each field and who owns it, worded as upstream.
fn conflict_error(conflicts: &[(String, Path)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"),
                   "field": path_string(p)})
        })
        .collect();
    let message = match conflicts {
        [(m, p)] => format!(
            "Apply failed with 1 conflict: conflict with {m}: {}",
            path_string(p)
        ),
        _ => {
            let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for (m, p) in conflicts {
                by_manager.entry(m).or_default().push(path_string(p));
            }
            let mut lines = Vec::new();
            for (m, paths) in by_manager {
                lines.push(format!("conflicts with {m}:"));
                lines.extend(paths.into_iter().map(|p| format!("- {p}")));
            }
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    };
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({"causes": causes})),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed entry points for the handlers

fn has_status<K: Kind>() -> bool {
    K::SUBRESOURCES.contains(&Subresource::Status)
}

fn to_value<K: Kind>(obj: &K) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::internal(format!("cannot encode: {e}")))
}

/// Records an Update write of `new` over `old` (`None` on create) in `new`'s managedFields.
pub fn record_update<K: Kind>(old: Option<&K>, new: &mut K, manager: &Manager) -> ApiResult<()> {
    let old_v = match old {
        Some(o) => to_value(o)?,
        None => json!({}),
    };
    let live = old
        .and_then(|o| o.metadata().managed_fields.clone())
        .unwrap_or_default();
    let given = new.metadata().managed_fields.clone();
    let entries = updated_entries(
        &old_v,
        &to_value(&*new)?,
        &live,
        given.as_deref(),
        manager,
        K::API_VERSION,
        &crate::handlers::now(),
    );
    new.metadata_mut().managed_fields = (!entries.is_empty()).then_some(entries);
    Ok(())
}

/// The object a server-side apply of `config` makes from `live` (`None` when it creates),
/// with its managedFields; 409 when it would change fields other managers own, unless forced.
pub fn apply<K: Kind>(
    live: Option<&K>,
    config: &Value,
    manager: &Manager,
    force: bool,
) -> ApiResult<Value> {
    let live = live.map(to_value).transpose()?;
    apply_config(
        live.as_ref(),
        config,
        manager,
        K::API_VERSION,
        has_status::<K>(),
        force,
        &crate::handlers::now(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn later() -> Time {
        Time(jiff::Timestamp::from_second(1_700_000_100).unwrap())
    }

    fn applier(name: &str) -> Manager {
        Manager {
            name: name.into(),
            operation: Operation::Apply,
            subresource: None,
        }
    }

    fn updater(name: &str, sub: Option<&str>) -> Manager {
        Manager {
            name: name.into(),
            operation: Operation::Update,
            subresource: sub.map(String::from),
        }
    }

    fn deployment(replicas: i64, env: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "nginx",
                                              "ports": [{"containerPort": 80}], "env": env}]}}}})
    }

    fn paths(set: &FieldSet) -> Vec<String> {
        set.iter().map(|p| path_string(p)).collect()
    }

    fn owners_of(obj: &Value) -> Vec<(String, String, Option<String>, FieldSet)> {
        decode(&entries_of(obj))
            .into_iter()
            .map(|o| (o.manager, o.operation.as_str().into(), o.subresource, o.set))
            .collect()
    }

    #[test]
    fn field_sets_follow_list_strategies() {
        let obj = deployment(2, json!([{"name": "A", "value": "1"}]));
        let mut obj = obj;
        obj["metadata"]["finalizers"] = json!(["f1", "f2"]);
        obj["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["-v", "-v"]);
        obj["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
        let set = FieldSet::of(&obj);
        assert_eq!(
            paths(&set),
            vec![
                ".metadata.finalizers[=\"f1\"]",
                ".metadata.finalizers[=\"f2\"]",
                ".metadata.labels.app",
                ".spec.replicas",
                ".spec.selector.matchLabels.app",
                ".spec.template.metadata.labels.app",
                ".spec.template.spec.containers[name=\"web\"]",
                ".spec.template.spec.containers[name=\"web\"].args",
                ".spec.template.spec.containers[name=\"web\"].env[name=\"A\"]",
                ".spec.template.spec.containers[name=\"web\"].env[name=\"A\"].name",
                ".spec.template.spec.containers[name=\"web\"].env[name=\"A\"].value",
                ".spec.template.spec.containers[name=\"web\"].image",
                ".spec.template.spec.containers[name=\"web\"].name",
                ".spec.template.spec.containers[name=\"web\"].ports[containerPort=80]",
                ".spec.template.spec.containers[name=\"web\"].ports[containerPort=80].containerPort",
                ".spec.template.spec.containers[name=\"web\"].resources",
            ]
        );
        // Service ports key by port; lists with repeated keys are atomic.
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}],
                                  "template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
        assert_eq!(
            paths(&FieldSet::of(&svc)),
            vec![
                ".spec.ports[port=80]",
                ".spec.ports[port=80].port",
                ".spec.ports[port=80].targetPort",
                ".spec.template.spec.containers",
            ]
        );
    }

    #[test]
    fn server_set_metadata_and_managed_fields_are_nobodys() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "uid": "u", "resourceVersion": "3",
                         "generation": 1, "creationTimestamp": "2024-01-01T00:00:00Z",
                         "managedFields": [{"manager": "x"}], "annotations": {"a": "b"}},
            "data": {"k": "v"}});
        assert_eq!(
            paths(&FieldSet::of(&obj)),
            vec![".data.k", ".metadata.annotations.a"]
        );
    }

    #[test]
    fn fields_v1_round_trips_in_upstream_notation() {
        let set = FieldSet::of(&deployment(1, json!([{"name": "A", "value": "1"}])));
        let v = set.to_fields_v1();
        assert_eq!(v["f:spec"]["f:replicas"], json!({}));
        let web = &v["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert_eq!(web["."], json!({}));
        assert_eq!(web["f:image"], json!({}));
        assert_eq!(
            web["f:ports"]["k:{\"containerPort\":80}"]["f:containerPort"],
            json!({})
        );
        assert!(v["f:spec"].get(".").is_none(), "{v}");
        assert_eq!(FieldSet::from_fields_v1(&v), set);
        // Keys with several fields are written in name order; junk is left out.
        let read = FieldSet::from_fields_v1(&json!({
            "f:spec": {"f:ports": {"k:{\"protocol\":\"TCP\",\"port\":80}": {".": {}, "f:name": {}}}},
            "x:junk": {}, "k:notjson": {}}));
        assert_eq!(
            paths(&read),
            vec![
                ".spec.ports[port=80,protocol=\"TCP\"]",
                ".spec.ports[port=80,protocol=\"TCP\"].name"
            ]
        );
        assert!(
            read.to_fields_v1()["f:spec"]["f:ports"]
                .get("k:{\"port\":80,\"protocol\":\"TCP\"}")
                .is_some()
        );
    }

    #[test]
    fn compare_finds_changed_and_removed_fields() {
        let old = deployment(
            1,
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
        );
        let new = deployment(
            3,
            json!([{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]),
        );
        let cmp = compare(&old, &new);
        let env = ".spec.template.spec.containers[name=\"web\"].env";
        assert_eq!(
            paths(&cmp.changed),
            vec![
                ".spec.replicas".to_string(),
                format!("{env}[name=\"C\"]"),
                format!("{env}[name=\"C\"].name"),
                format!("{env}[name=\"C\"].value"),
            ]
        );
        assert_eq!(
            paths(&cmp.removed),
            vec![
                format!("{env}[name=\"B\"]"),
                format!("{env}[name=\"B\"].name"),
                format!("{env}[name=\"B\"].value"),
            ]
        );
        assert!(compare(&old, &old).is_empty());
    }

    #[test]
    fn remove_takes_out_fields_and_elements() {
        let mut obj = deployment(1, json!([{"name": "A", "value": "1"}, {"name": "B"}]));
        let container = vec![
            Pe::field("spec"),
            Pe::field("template"),
            Pe::field("spec"),
            Pe::field("containers"),
            Pe::Key("{\"name\":\"web\"}".into()),
        ];
        let mut env_b = container.clone();
        env_b.extend([Pe::field("env"), Pe::Key("{\"name\":\"B\"}".into())]);
        assert!(remove(&mut obj, &env_b));
        assert!(!remove(&mut obj, &env_b));
        let mut image = container.clone();
        image.push(Pe::field("image"));
        assert!(remove(&mut obj, &image));
        let c = &obj["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["env"], json!([{"name": "A", "value": "1"}]));
        assert!(c.get("image").is_none());
        assert!(!remove(&mut obj, &[]));
    }

    #[test]
    fn update_entries_record_what_each_write_changed() {
        let created = deployment(1, json!([]));
        let create = updated_entries(
            &json!({}),
            &created,
            &[],
            None,
            &updater("kubectl-create", None),
            "apps/v1",
            &now(),
        );
        assert_eq!(create.len(), 1);
        assert_eq!(create[0].manager.as_deref(), Some("kubectl-create"));
        assert_eq!(create[0].operation.as_deref(), Some("Update"));
        assert_eq!(create[0].fields_type.as_deref(), Some("FieldsV1"));
        assert_eq!(create[0].time, Some(now()));
        // A scale through /scale takes .spec.replicas from the creator.
        let scaled = deployment(5, json!([]));
        let scale = updated_entries(
            &created,
            &scaled,
            &create,
            Some(&create),
            &updater("kubectl", Some("scale")),
            "apps/v1",
            &later(),
        );
        let mut obj = scaled.clone();
        obj["metadata"]["managedFields"] = serde_json::to_value(&scale).unwrap();
        let owners = owners_of(&obj);
        assert_eq!(owners.len(), 2);
        assert!(
            !owners[0]
                .3
                .contains(&[Pe::field("spec"), Pe::field("replicas")])
        );
        assert_eq!(owners[1].0, "kubectl");
        assert_eq!(owners[1].2.as_deref(), Some("scale"));
        assert_eq!(paths(&owners[1].3), vec![".spec.replicas"]);
        // An unchanged write leaves the entries as they were.
        let same = updated_entries(
            &scaled,
            &scaled,
            &scale,
            Some(&scale),
            &updater("other", None),
            "apps/v1",
            &later(),
        );
        assert_eq!(same, scale);
        // A client may replace managedFields on the main resource, not through a subresource.
        let given = updated_entries(
            &scaled,
            &scaled,
            &scale,
            Some(&create),
            &updater("x", None),
            "apps/v1",
            &later(),
        );
        assert_eq!(given, create);
        let given = updated_entries(
            &scaled,
            &scaled,
            &scale,
            Some(&create),
            &updater("x", Some("status")),
            "apps/v1",
            &later(),
        );
        assert_eq!(given, scale);
    }

    #[test]
    fn apply_owns_its_config_and_prunes_what_it_dropped() {
        let config = deployment(
            2,
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
        );
        let created = apply_config(
            None,
            &config,
            &applier("kubectl"),
            "apps/v1",
            true,
            false,
            &now(),
        )
        .unwrap();
        let owners = owners_of(&created);
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].0.as_str(), owners[0].1.as_str()),
            ("kubectl", "Apply")
        );
        assert_eq!(owners[0].3, FieldSet::of(&config));
        // The server defaults a field nobody applied.
        let mut live = created.clone();
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
        // Dropping env B and the label removes them; the defaulted field stays.
        let mut config2 = deployment(2, json!([{"name": "A", "value": "1"}]));
        config2["metadata"]["labels"] = json!({"app": "web"});
        config2["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("ports");
        let out = apply_config(
            Some(&live),
            &config2,
            &applier("kubectl"),
            "apps/v1",
            true,
            false,
            &later(),
        )
        .unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["env"], json!([{"name": "A", "value": "1"}]));
        assert!(c.get("ports").is_none_or(|p| p == &json!([])), "{c}");
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(owners_of(&out)[0].3, FieldSet::of(&config2));
        // Re-applying the same config changes nothing, not even the entry's time.
        let again = apply_config(
            Some(&out),
            &config2,
            &applier("kubectl"),
            "apps/v1",
            true,
            false,
            &later(),
        )
        .unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn apply_keeps_what_another_manager_also_owns() {
        let config = deployment(2, json!([{"name": "A", "value": "1"}]));
        let first =
            apply_config(None, &config, &applier("a"), "apps/v1", true, false, &now()).unwrap();
        // Manager b applies the same env var: shared ownership, no conflict.
        let shared = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "env": [{"name": "A", "value": "1"}]}]}}}});
        let both = apply_config(
            Some(&first),
            &shared,
            &applier("b"),
            "apps/v1",
            true,
            false,
            &now(),
        )
        .unwrap();
        // a drops it: b still owns it, so it stays.
        let out = apply_config(
            Some(&both),
            &deployment(2, json!([])),
            &applier("a"),
            "apps/v1",
            true,
            false,
            &later(),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}])
        );
    }

    #[test]
    fn apply_conflicts_on_values_others_own_unless_forced() {
        let config = deployment(2, json!([]));
        let live = apply_config(
            None,
            &config,
            &applier("kubectl"),
            "apps/v1",
            true,
            false,
            &now(),
        )
        .unwrap();
        // Scaled to 5 through /scale by another manager.
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        let entries = updated_entries(
            &live,
            &scaled,
            &entries_of(&live),
            None,
            &updater("kubectl", Some("scale")),
            "apps/v1",
            &now(),
        );
        scaled["metadata"]["managedFields"] = serde_json::to_value(&entries).unwrap();
        let err = apply_config(
            Some(&scaled),
            &config,
            &applier("kubectl"),
            "apps/v1",
            true,
            false,
            &later(),
        )
        .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        );
        let status = err.status();
        assert_eq!(
            status["details"]["causes"][0]["reason"],
            "FieldManagerConflict"
        );
        assert_eq!(status["details"]["causes"][0]["field"], ".spec.replicas");
        // The same value is no conflict: both own it.
        let same = apply_config(
            Some(&scaled),
            &deployment(5, json!([])),
            &applier("kubectl"),
            "apps/v1",
            true,
            false,
            &later(),
        )
        .unwrap();
        let owners = owners_of(&same);
        assert!(
            owners
                .iter()
                .all(|o| o.3.contains(&[Pe::field("spec"), Pe::field("replicas")]))
        );
        // Forced, the applier takes it over.
        let forced = apply_config(
            Some(&scaled),
            &config,
            &applier("kubectl"),
            "apps/v1",
            true,
            true,
            &later(),
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        let owners = owners_of(&forced);
        assert_eq!(owners.len(), 1, "{owners:?}");
        assert_eq!(owners[0].1, "Apply");
    }

    #[test]
    fn conflicts_with_several_fields_are_grouped_by_manager() {
        let p = |f: &str| vec![Pe::field("spec"), Pe::field(f)];
        let err = conflict_error(&[
            ("\"b\" using v1".into(), p("x")),
            ("\"a\"".into(), p("y")),
            ("\"b\" using v1".into(), p("z")),
        ]);
        assert_eq!(
            err.message,
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.y\nconflicts with \"b\" using v1:\n- .spec.x\n- .spec.z"
        );
        assert_eq!(err.details.unwrap()["causes"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn apply_to_the_main_resource_does_not_own_status() {
        let config = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}, "status": {"replicas": 3}});
        let out =
            apply_config(None, &config, &applier("m"), "apps/v1", true, false, &now()).unwrap();
        assert_eq!(paths(&owners_of(&out)[0].3), vec![".spec.replicas"]);
        // Nor is a status value another manager set through /status a conflict.
        let mut live = out.clone();
        live["status"]["replicas"] = json!(1);
        let entries = updated_entries(
            &out,
            &live,
            &entries_of(&out),
            None,
            &updater("controller", Some("status")),
            "apps/v1",
            &later(),
        );
        live["metadata"]["managedFields"] = serde_json::to_value(&entries).unwrap();
        let again = apply_config(
            Some(&live),
            &config,
            &applier("m"),
            "apps/v1",
            true,
            false,
            &later(),
        )
        .unwrap();
        assert_eq!(owners_of(&again).len(), 2);
        let out = apply_config(None, &config, &applier("m"), "v1", false, false, &now()).unwrap();
        assert_eq!(owners_of(&out)[0].3.len(), 2);
    }

    #[test]
    fn managers_come_from_the_query_or_the_user_agent() {
        fn m(fm: Option<&str>, ua: Option<&str>) -> ApiResult<String> {
            Manager::of_request(fm, ua, Operation::Update, None).map(|m| m.name)
        }
        assert_eq!(m(Some("mine"), Some("kubectl/v1.32.5")).unwrap(), "mine");
        assert_eq!(
            m(None, Some("kubectl/v1.32.5 (linux/amd64) kubernetes/abc")).unwrap(),
            "kubectl"
        );
        assert_eq!(m(Some(""), Some("kube-rs/0.99")).unwrap(), "kube-rs");
        assert_eq!(m(None, None).unwrap(), "unknown");
        assert_eq!(m(None, Some("/x")).unwrap(), "unknown");
        let long = "x".repeat(129);
        assert_eq!(m(Some(&long), None).unwrap_err().code, 400);
        assert_eq!(m(Some("a\nb"), None).unwrap_err().code, 400);
    }
}
