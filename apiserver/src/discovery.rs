//! API discovery, both forms kubectl understands: aggregated (`apidiscovery.k8s.io/v2`, one
//! request for everything; chosen by the `Accept` header) and legacy (`/api`, `/apis`, and one
//! `APIResourceList` per group-version).

use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::http::json_response;
use crate::registry::{Registry, ResourceInfo};

/// Which aggregated discovery version the client accepts, if any, in its order of preference.
fn aggregated_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for range in accept.split(',') {
        if !range.contains("as=APIGroupDiscoveryList") || !range.contains("g=apidiscovery.k8s.io") {
            continue;
        }
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        if params.contains(&"v=v2") {
            return Some("v2");
        }
        if params.contains(&"v=v2beta1") {
            return Some("v2beta1");
        }
    }
    None
}

fn aggregated(version: &str, items: Vec<Value>) -> Response {
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": format!("apidiscovery.k8s.io/{version}"),
            "metadata": {},
            "items": items,
        }),
    );
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    if let Ok(v) = http::HeaderValue::from_str(&ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let mut v = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        v["subresources"] = r
            .subresources
            .iter()
            .map(|(name, verbs, (g, ver, k))| {
                json!({"subresource": name, "responseKind": {"group": g, "version": ver, "kind": k}, "verbs": verbs})
            })
            .collect();
    }
    v
}

/// The aggregated discovery item of one group (`""` for core).
fn group_item(reg: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = reg
        .group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(_, version)| {
            let resources: Vec<Value> = reg
                .all()
                .filter(|r| r.group == group && r.version == version)
                .map(aggregated_resource)
                .collect();
            json!({"version": version, "freshness": "Current", "resources": resources})
        })
        .collect();
    json!({"metadata": {"name": group}, "versions": versions})
}

fn groups(reg: &Registry) -> Vec<&'static str> {
    let mut gs: Vec<&'static str> = reg
        .group_versions()
        .into_iter()
        .map(|(g, _)| g)
        .filter(|g| !g.is_empty())
        .collect();
    gs.dedup();
    gs
}

/// `GET /api`.
pub fn api(reg: &Registry, headers: &HeaderMap, server_address: &str) -> Response {
    if let Some(v) = aggregated_version(headers) {
        return aggregated(v, vec![group_item(reg, "")]);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }),
    )
}

fn api_group(reg: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = reg
        .group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// `GET /apis`.
pub fn apis(reg: &Registry, headers: &HeaderMap) -> Response {
    if let Some(v) = aggregated_version(headers) {
        return aggregated(
            v,
            groups(reg)
                .into_iter()
                .map(|g| group_item(reg, g))
                .collect(),
        );
    }
    let groups: Vec<Value> = groups(reg).into_iter().map(|g| api_group(reg, g)).collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

/// `GET /apis/{group}`, or `None` if no such group is served.
pub fn group(reg: &Registry, group: &str) -> Option<Response> {
    if !groups(reg).contains(&group) {
        return None;
    }
    let mut g = api_group(reg, group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(json_response(StatusCode::OK, &g))
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`: the legacy `APIResourceList`.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Response> {
    let infos: Vec<&ResourceInfo> = reg
        .all()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if infos.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in infos {
        let mut v = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            v["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            v["categories"] = json!(r.categories);
        }
        resources.push(v);
        for (name, verbs, (g, ver, k)) in &r.subresources {
            let mut s = json!({
                "name": format!("{}/{name}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": k,
                "verbs": verbs,
            });
            if *g != r.group || *ver != r.version {
                s["group"] = json!(g);
                s["version"] = json!(ver);
            }
            resources.push(s);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_accept_is_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json".parse().unwrap(),
        );
        assert_eq!(aggregated_version(&h), Some("v2"));
        h.insert(
            header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
                .parse()
                .unwrap(),
        );
        assert_eq!(aggregated_version(&h), Some("v2beta1"));
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert_eq!(aggregated_version(&h), None);
    }
}
