//! Reading a resource path the way upstream's RequestInfoFactory does:
//! `/api/v1/namespaces/{ns}/{resource}/{name}/{subresource}` and
//! `/apis/{group}/{version}/...`, plus the verb implied by method and query.

use http::Method;

/// Where a resource request points.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What the client wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

/// Namespace subresources, which are not namespaced resources of their own.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Parses a path under `/api` or `/apis`; `None` if it names no resource (discovery paths
/// are routed before this).
pub fn parse(path: &str) -> Option<ResourcePath> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut p = ResourcePath {
        group: group.into(),
        version: version.into(),
        ..Default::default()
    };
    let mut rest: &[&str] = rest;
    if rest[0] == "namespaces" && rest.len() > 1 {
        p.namespace = Some(rest[1].to_string());
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        } else {
            // `/namespaces/{name}[/status|finalize]`: the namespace object itself.
            p.resource = "namespaces".into();
            p.name = p.namespace.take();
            p.subresource = rest.get(2).map(|s| s.to_string());
            return (rest.len() <= 3).then_some(p);
        }
    }
    match rest {
        [resource] => p.resource = resource.to_string(),
        [resource, name] => {
            p.resource = resource.to_string();
            p.name = Some(name.to_string());
        }
        [resource, name, sub] => {
            p.resource = resource.to_string();
            p.name = Some(name.to_string());
            p.subresource = Some(sub.to_string());
        }
        _ => return None,
    }
    Some(p)
}

/// The verb for `method` on `path`; `watch` is the `watch=true` query flag.
pub fn verb(method: &Method, path: &ResourcePath, watch: bool) -> Option<Verb> {
    let named = path.name.is_some();
    Some(match *method {
        Method::GET if watch => Verb::Watch,
        Method::GET if named => Verb::Get,
        Method::GET => Verb::List,
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE if named => Verb::Delete,
        Method::DELETE => Verb::DeleteCollection,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(
        group: &str,
        ns: Option<&str>,
        resource: &str,
        name: Option<&str>,
        sub: Option<&str>,
    ) -> ResourcePath {
        ResourcePath {
            group: group.into(),
            version: if group.is_empty() {
                "v1".into()
            } else {
                "v1".into()
            },
            namespace: ns.map(Into::into),
            resource: resource.into(),
            name: name.map(Into::into),
            subresource: sub.map(Into::into),
        }
    }

    #[test]
    fn paths_read_like_upstream() {
        let cases = [
            ("/api/v1/pods", Some(p("", None, "pods", None, None))),
            (
                "/api/v1/namespaces/default/pods",
                Some(p("", Some("default"), "pods", None, None)),
            ),
            (
                "/api/v1/namespaces/default/pods/web",
                Some(p("", Some("default"), "pods", Some("web"), None)),
            ),
            (
                "/api/v1/namespaces/default/pods/web/status",
                Some(p("", Some("default"), "pods", Some("web"), Some("status"))),
            ),
            (
                "/api/v1/namespaces",
                Some(p("", None, "namespaces", None, None)),
            ),
            (
                "/api/v1/namespaces/kube-system",
                Some(p("", None, "namespaces", Some("kube-system"), None)),
            ),
            (
                "/api/v1/namespaces/x/finalize",
                Some(p("", None, "namespaces", Some("x"), Some("finalize"))),
            ),
            (
                "/api/v1/nodes/n1/status",
                Some(p("", None, "nodes", Some("n1"), Some("status"))),
            ),
            (
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
                Some(ResourcePath {
                    group: "coordination.k8s.io".into(),
                    version: "v1".into(),
                    namespace: Some("kube-node-lease".into()),
                    resource: "leases".into(),
                    name: Some("n1".into()),
                    subresource: None,
                }),
            ),
            ("/api/v1/namespaces/default/pods/web/status/extra", None),
            ("/api/v1", None),
            ("/api/v1//pods", None),
            ("/healthz", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse(path), want, "{path}");
        }
    }

    #[test]
    fn verbs() {
        let list = p("", None, "pods", None, None);
        let one = p("", None, "pods", Some("a"), None);
        assert_eq!(verb(&Method::GET, &list, false), Some(Verb::List));
        assert_eq!(verb(&Method::GET, &list, true), Some(Verb::Watch));
        assert_eq!(verb(&Method::GET, &one, false), Some(Verb::Get));
        assert_eq!(
            verb(&Method::DELETE, &list, false),
            Some(Verb::DeleteCollection)
        );
        assert_eq!(verb(&Method::HEAD, &one, false), None);
    }
}
