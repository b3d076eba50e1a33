//! Which resources the server has, from its discovery documents: turns what users type
//! (`pods`, `po`, `pod`, `deploy`, `deployments.apps`) or a manifest's apiVersion/kind into
//! API paths.

use futures::future::try_join_all;
use serde_json::Value;

use crate::api::Ctx;

/// One resource the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
}

impl ApiResource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The path of the collection (`name` None) or of one object.
    pub fn path(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        let mut p = match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.plural),
            None => format!("{base}/{}", self.plural),
        };
        if let Some(n) = name {
            p.push('/');
            p.push_str(n);
        }
        p
    }

    /// How kubectl names the resource in messages: `pod`, `deployment.apps`.
    pub fn kind_ref(&self) -> String {
        let k = self.kind.to_lowercase();
        if self.group.is_empty() {
            k
        } else {
            format!("{k}.{}", self.group)
        }
    }

    /// `pods`, `deployments.apps`.
    pub fn plural_ref(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Everything discovery reported.
#[derive(Debug, Clone, Default)]
pub struct Resources(pub Vec<ApiResource>);

impl Resources {
    pub async fn discover(ctx: &Ctx) -> anyhow::Result<Self> {
        let mut gvs = vec![("".to_string(), "v1".to_string())];
        let groups = ctx.get("/apis").await?;
        for g in groups["groups"].as_array().into_iter().flatten() {
            let name = g["name"].as_str().unwrap_or_default().to_string();
            if let Some(v) = g["preferredVersion"]["version"].as_str() {
                gvs.push((name, v.to_string()));
            }
        }
        let lists = try_join_all(gvs.iter().map(|(g, v)| {
            let path = if g.is_empty() {
                format!("/api/{v}")
            } else {
                format!("/apis/{g}/{v}")
            };
            async move { ctx.get(&path).await }
        }))
        .await?;
        let mut out = Vec::new();
        for ((group, version), list) in gvs.into_iter().zip(lists) {
            out.extend(parse_list(&group, &version, &list));
        }
        Ok(Resources(out))
    }

    /// The resource a user typed: plural, singular, short name or kind, optionally `.group`.
    pub fn find(&self, name: &str) -> Option<&ApiResource> {
        let name = name.to_lowercase();
        let (word, group) = match name.split_once('.') {
            Some((w, g)) => (w.to_string(), Some(g.to_string())),
            None => (name.clone(), None),
        };
        self.0.iter().find(|r| {
            group.as_ref().is_none_or(|g| *g == r.group)
                && (r.plural == word
                    || r.singular == word
                    || r.kind.to_lowercase() == word
                    || r.short_names.contains(&word))
        })
    }

    /// The resource of a manifest's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ApiResource> {
        self.0
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
    }
}

fn parse_list(group: &str, version: &str, list: &Value) -> Vec<ApiResource> {
    list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let plural = r["name"].as_str()?;
            if plural.contains('/') {
                return None;
            }
            Some(ApiResource {
                group: group.to_string(),
                version: version.to_string(),
                kind: r["kind"].as_str()?.to_string(),
                plural: plural.to_string(),
                singular: r["singularName"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .unwrap_or_else(|| r["kind"].as_str().unwrap_or_default().to_lowercase()),
                namespaced: r["namespaced"].as_bool().unwrap_or(false),
                short_names: r["shortNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resources() -> Resources {
        let core = json!({"resources": [
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "shortNames": ["po"]},
            {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod"},
            {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node", "shortNames": ["no"]}]});
        let apps = json!({"resources": [{"name": "deployments", "singularName": "deployment", "namespaced": true, "kind": "Deployment", "shortNames": ["deploy"]}]});
        let mut r = parse_list("", "v1", &core);
        r.extend(parse_list("apps", "v1", &apps));
        Resources(r)
    }

    #[test]
    fn names_resolve_like_kubectl() {
        let r = resources();
        for name in ["pods", "pod", "po", "Pod", "PODS"] {
            assert_eq!(r.find(name).unwrap().plural, "pods", "{name}");
        }
        assert_eq!(r.find("deploy").unwrap().kind_ref(), "deployment.apps");
        assert_eq!(r.find("deployments.apps").unwrap().plural, "deployments");
        assert!(r.find("deployments.batch").is_none());
        assert!(r.find("status").is_none());
        assert_eq!(
            r.by_kind("apps/v1", "Deployment").unwrap().plural,
            "deployments"
        );
    }

    #[test]
    fn paths() {
        let r = resources();
        assert_eq!(
            r.find("po").unwrap().path(Some("default"), Some("web")),
            "/api/v1/namespaces/default/pods/web"
        );
        assert_eq!(
            r.find("no").unwrap().path(Some("default"), None),
            "/api/v1/nodes"
        );
        assert_eq!(
            r.find("deploy").unwrap().path(None, None),
            "/apis/apps/v1/deployments"
        );
    }
}
