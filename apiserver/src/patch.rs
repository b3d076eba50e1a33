//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch (what
//! `kubectl apply` and `cordon` send) and apply patches. Strategic merge needs to know which
//! lists merge by which key; upstream reads that from Go struct tags, here from [`merge_key`].

use serde_json::{Map, Value};

use crate::errors::{ApiError, ApiResult};

/// The patch types of `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    /// Server-side apply (`application/apply-patch+yaml`).
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> ApiResult<Self> {
        match ct {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies `patch` to `original`.
pub fn apply(kind: PatchType, original: &Value, patch: &Value) -> ApiResult<Value> {
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut out = original.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is malformed: {e}")))?;
            let mut out = original.clone();
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::invalid_patch(format!("the JSON patch could not be applied: {e}"))
            })?;
            Ok(out)
        }
        PatchType::Strategic | PatchType::Apply => {
            let (Some(o), Some(p)) = (original.as_object(), patch.as_object()) else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            let mut path = Vec::new();
            Ok(merge_map(o, p, &mut path)?
                .map(Value::Object)
                .unwrap_or(Value::Object(Map::new())))
        }
    }
}

/// The merge key of the list at `path` (field names from the root, list indices left out), or
/// `Merge` for lists of primitives that union, as upstream's `patchMergeKey` struct tags.
/// Server-side apply reads the same table: keyed lists are its associative lists, primitive
/// merge lists its sets, and the rest are atomic.
pub(crate) fn list_strategy(path: &[String]) -> ListStrategy {
    let last = path.last().map(String::as_str).unwrap_or("");
    let parent = path
        .len()
        .checked_sub(2)
        .map(|i| path[i].as_str())
        .unwrap_or("");
    let key = match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
        | "secrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "hostAliases" | "podIPs" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "finalizers" => return ListStrategy::MergePrimitives,
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            "containerPort"
        }
        "ports" if path.len() == 2 && parent == "spec" => "port",
        _ => return ListStrategy::Replace,
    };
    ListStrategy::MergeBy(key)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    /// The list is replaced whole (atomic).
    Replace,
    /// Elements are objects merged by this key field.
    MergeBy(&'static str),
    /// Elements are primitives, merged as a set.
    MergePrimitives,
}

/// Merges patch map `p` into `o`; `None` means the patch deletes the map (`$patch: delete`).
fn merge_map(
    o: &Map<String, Value>,
    p: &Map<String, Value>,
    path: &mut Vec<String>,
) -> ApiResult<Option<Map<String, Value>>> {
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => return Ok(Some(strip_directives(p))),
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type {other:?} in $patch"
            )));
        }
    }
    let mut out = o.clone();
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    let mut retain: Option<Vec<String>> = None;
    for (k, pv) in p {
        if k == "$patch" {
            continue;
        }
        if k == "$retainKeys" {
            let keys = pv.as_array().ok_or_else(|| {
                ApiError::bad_request("$retainKeys must be a list of field names")
            })?;
            retain = Some(
                keys.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
            );
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            let order = pv
                .as_array()
                .ok_or_else(|| ApiError::bad_request(format!("{k} must be a list")))?;
            orders.push((field.to_string(), order.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = pv
                .as_array()
                .ok_or_else(|| ApiError::bad_request(format!("{k} must be a list")))?;
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        path.push(k.clone());
        let merged = match (out.get(k), pv) {
            (_, Value::Null) => None,
            (Some(Value::Object(ov)), Value::Object(pm)) => {
                merge_map(ov, pm, path)?.map(Value::Object)
            }
            (Some(Value::Array(ol)), Value::Array(pl)) => {
                Some(Value::Array(merge_list(ol, pl, path)?))
            }
            (_, Value::Object(pm)) => merge_map(&Map::new(), pm, path)?.map(Value::Object),
            (_, Value::Array(pl)) => Some(Value::Array(merge_list(&[], pl, path)?)),
            (_, v) => Some(v.clone()),
        };
        path.pop();
        match merged {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                out.remove(k);
            }
        }
    }
    for (field, order) in orders {
        path.push(field.clone());
        let strategy = list_strategy(path);
        path.pop();
        if let Some(Value::Array(list)) = out.get_mut(&field) {
            reorder(list, &order, strategy);
        }
    }
    if let Some(keys) = retain {
        out.retain(|k, _| keys.contains(k) || p.contains_key(k));
    }
    Ok(Some(out))
}

fn merge_list(o: &[Value], p: &[Value], path: &mut Vec<String>) -> ApiResult<Vec<Value>> {
    match list_strategy(path) {
        ListStrategy::Replace => Ok(p.iter().map(strip_value).collect()),
        ListStrategy::MergePrimitives => {
            let mut out = o.to_vec();
            for v in p {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeBy(key) => {
            // `[{"$patch": "replace"}, ...]` replaces the whole list.
            if p.iter()
                .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                return Ok(p
                    .iter()
                    .filter(|e| e.get("$patch").is_none())
                    .map(strip_value)
                    .collect());
            }
            let mut out = o.to_vec();
            for pe in p {
                let Some(pm) = pe.as_object() else {
                    return Err(ApiError::bad_request(format!(
                        "list {} merges by {key:?}: its elements must be objects",
                        path.join(".")
                    )));
                };
                let Some(kv) = pm.get(key) else {
                    return Err(ApiError::bad_request(format!(
                        "an element of {} has no merge key {key:?}",
                        path.join(".")
                    )));
                };
                let pos = out.iter().position(|e| e.get(key) == Some(kv));
                match (
                    pos,
                    merge_map(
                        pos.and_then(|i| out[i].as_object()).unwrap_or(&Map::new()),
                        pm,
                        path,
                    )?,
                ) {
                    (Some(i), Some(m)) => out[i] = Value::Object(m),
                    (Some(i), None) => {
                        out.remove(i);
                    }
                    (None, Some(m)) => out.push(Value::Object(m)),
                    (None, None) => {}
                }
            }
            Ok(out)
        }
    }
}

/// Orders `list` as `order` says (elements named there first, in that order; others after,
/// keeping their relative order).
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let rank = |v: &Value| -> usize {
        order
            .iter()
            .position(|o| match strategy {
                ListStrategy::MergeBy(key) => o.get(key).is_some() && o.get(key) == v.get(key),
                _ => o == v,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(|v| rank(v));
}

fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(l) => Value::Array(l.iter().map(strip_value).collect()),
        other => other.clone(),
    }
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(o: Value, p: Value) -> Value {
        apply(PatchType::Strategic, &o, &p).unwrap()
    }

    #[test]
    fn kubectl_apply_patch_from_the_wire_reference() {
        let live = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
            "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "sidecar", "image": "busybox"}]}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null},
            "template": {"spec": {"$setElementOrder/containers": [{"name": "web"}],
            "containers": [{"$setElementOrder/env": [{"name": "B"}], "env": [{"name": "B", "value": "3"}, {"$patch": "delete", "name": "A"}],
                            "name": "web", "ports": [{"containerPort": 8080}, {"$patch": "delete", "containerPort": 80}]},
                           {"$patch": "delete", "name": "sidecar"}]}}}});
        let out = smp(live, patch);
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["image"], "nginx");
        assert_eq!(containers[0]["env"], json!([{"name": "B", "value": "3"}]));
        assert_eq!(containers[0]["ports"], json!([{"containerPort": 8080}]));
    }

    #[test]
    fn lists_merge_or_replace_by_field() {
        // Unknown lists are replaced; containers merge by name; finalizers union.
        let o = json!({"spec": {"containers": [{"name": "a", "image": "x", "args": ["1", "2"]}]},
                       "metadata": {"finalizers": ["f1"]}});
        let p = json!({"spec": {"containers": [{"name": "a", "args": ["3"]}, {"name": "b", "image": "y"}]},
                       "metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]}});
        let out = smp(o, p);
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "x", "args": ["3"]}, {"name": "b", "image": "y"}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["f2"]));
    }

    #[test]
    fn null_deletes_and_replace_directive() {
        let o = json!({"spec": {"unschedulable": true, "podCIDR": "10.0.0.0/24"}});
        assert_eq!(
            smp(o.clone(), json!({"spec": {"unschedulable": null}})),
            json!({"spec": {"podCIDR": "10.0.0.0/24"}})
        );
        assert_eq!(
            smp(o, json!({"spec": {"$patch": "replace", "taints": []}})),
            json!({"spec": {"taints": []}})
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let o = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let out = smp(
            o,
            json!({"spec": {"ports": [{"port": 80, "name": "http"}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 8080, "name": "http"}])
        );
    }

    #[test]
    fn merge_and_json_patch() {
        let o = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = apply(
            PatchType::Merge,
            &o,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        let out = apply(
            PatchType::Json,
            &o,
            &json!([{"op": "replace", "path": "/metadata/labels/a", "value": "9"}]),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"]["a"], "9");
        assert_eq!(
            apply(
                PatchType::Json,
                &o,
                &json!([{"op": "remove", "path": "/nope"}])
            )
            .unwrap_err()
            .code,
            422
        );
        assert_eq!(
            apply(PatchType::Json, &o, &json!({"op": "x"}))
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            apply(PatchType::Strategic, &o, &json!([1]))
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn malformed_merge_lists_are_errors() {
        let o = json!({"spec": {"containers": []}});
        assert_eq!(
            apply(
                PatchType::Strategic,
                &o,
                &json!({"spec": {"containers": [1]}})
            )
            .unwrap_err()
            .code,
            400
        );
        assert_eq!(
            apply(
                PatchType::Strategic,
                &o,
                &json!({"spec": {"containers": [{"image": "x"}]}})
            )
            .unwrap_err()
            .code,
            400
        );
    }
}
