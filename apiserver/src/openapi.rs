//! The OpenAPI v3 documents kubectl reads before `apply` and `create -f`: an index of group
//! versions, and per group-version a document whose PATCH operations carry the kind
//! (`x-kubernetes-group-version-kind`) and a `fieldValidation` parameter. That tells kubectl
//! the server validates fields itself, so it sends `fieldValidation=Strict`.

use serde_json::{Map, Value, json};

use crate::registry::Registry;

/// A version string that changes when the served resources change.
fn hash(reg: &Registry) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut h);
    for r in reg.all() {
        (r.group, r.version, r.plural, r.kind).hash(&mut h);
    }
    format!("{:016X}", h.finish())
}

fn path_of(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`.
pub fn index(reg: &Registry) -> Value {
    let hash = hash(reg);
    let mut paths = Map::new();
    for (g, v) in reg.group_versions() {
        let p = path_of(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/{api/v1 | apis/group/version}`, or `None` if not served.
pub fn document(reg: &Registry, path: &str) -> Option<Value> {
    let path = path.trim_matches('/');
    let (group, version) = reg
        .group_versions()
        .into_iter()
        .find(|(g, v)| path_of(g, v) == path)?;
    let mut paths = Map::new();
    for r in reg
        .all()
        .filter(|r| r.group == group && r.version == version)
    {
        let item = if r.namespaced {
            format!("/{path}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{path}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = |verb: &str| {
            json!({
                "description": format!("{verb} the specified {}", r.kind),
                "operationId": format!("{verb}{}", r.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(item, json!({"get": op("read"), "put": op("replace"), "patch": op("patch"), "delete": op("delete")}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
