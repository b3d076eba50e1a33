//! The in-memory view DNS answers from: every Service with its ports and its ready endpoints,
//! rebuilt from the watchers' caches after each change (a pure function of the objects, as
//! CoreDNS's kubernetes plugin derives its records from its informers). Odd objects — missing
//! fields, bad IPs — are left out, never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A port: its name (may be empty), lowercase protocol and number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    /// The port's name (empty when unnamed).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The port number.
    pub port: u16,
}

/// One ready endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Its DNS label: the endpoint's hostname, or its IP with `.`/`:` as `-` (as CoreDNS).
    pub name: String,
    /// Its address.
    pub ip: IpAddr,
    /// The ports its slice lists.
    pub ports: Vec<Port>,
}

/// What a service name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A virtual IP per family.
    ClusterIp(Vec<IpAddr>),
    /// No virtual IP: the name resolves to the endpoints.
    Headless,
    /// An alias (`spec.externalName`), lowercased and without a trailing dot.
    ExternalName(String),
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    /// How its name resolves.
    pub kind: Kind,
    /// The service's ports.
    pub ports: Vec<Port>,
    /// Ready endpoints, sorted, without duplicates.
    pub endpoints: Vec<Endpoint>,
}

/// Everything DNS knows, indexed for lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Services by (namespace, name).
    pub services: BTreeMap<(String, String), Svc>,
    /// Namespaces holding at least one service.
    pub namespaces: BTreeSet<String>,
    /// Reverse lookups: address → names relative to the cluster domain (`svc.ns.svc`,
    /// `endpoint.svc.ns.svc`).
    pub reverse: BTreeMap<IpAddr, BTreeSet<String>>,
    /// The zone's SOA serial (changes when the view does).
    pub serial: u32,
}

impl View {
    /// Builds the view from the objects; `serial` becomes the SOA serial.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        serial: u32,
    ) -> View {
        let mut view = View {
            serial,
            ..View::default()
        };
        let mut endpoints: BTreeMap<(String, String), BTreeSet<Endpoint>> = BTreeMap::new();
        for slice in slices {
            let Some((key, eps)) = slice_endpoints(slice) else {
                continue;
            };
            endpoints.entry(key).or_default().extend(eps);
        }
        for svc in services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let Some(spec) = &svc.spec else { continue };
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                match spec.external_name.as_deref() {
                    Some(target) if !target.trim_end_matches('.').is_empty() => {
                        Kind::ExternalName(target.trim_end_matches('.').to_lowercase())
                    }
                    _ => continue,
                }
            } else {
                match spec.cluster_ip.as_deref() {
                    Some("None") => Kind::Headless,
                    // Not yet allocated, or not an address: nothing to answer with yet.
                    None | Some("") => continue,
                    Some(_) => {
                        let ips: Vec<IpAddr> = spec
                            .cluster_ips
                            .iter()
                            .flatten()
                            .chain(spec.cluster_ip.as_ref())
                            .filter_map(|ip| ip.parse().ok())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect();
                        if ips.is_empty() {
                            continue;
                        }
                        Kind::ClusterIp(ips)
                    }
                }
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(Port {
                        name: p.name.clone().unwrap_or_default().to_lowercase(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            let key = (ns.to_lowercase(), name.to_lowercase());
            let eps: Vec<Endpoint> = endpoints
                .remove(&key)
                .unwrap_or_default()
                .into_iter()
                .collect();
            let relative = format!("{}.{}.svc", key.1, key.0);
            if let Kind::ClusterIp(ips) = &kind {
                for ip in ips {
                    view.reverse
                        .entry(*ip)
                        .or_default()
                        .insert(relative.clone());
                }
            }
            for ep in &eps {
                view.reverse
                    .entry(ep.ip)
                    .or_default()
                    .insert(format!("{}.{relative}", ep.name));
            }
            view.namespaces.insert(key.0.clone());
            view.services.insert(
                key,
                Svc {
                    kind,
                    ports,
                    endpoints: eps,
                },
            );
        }
        view
    }
}

/// The (namespace, service) a slice belongs to and its ready endpoints.
fn slice_endpoints(slice: &EndpointSlice) -> Option<((String, String), Vec<Endpoint>)> {
    let ns = slice.metadata.namespace.as_ref()?;
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let ports: Vec<Port> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: p.name.clone().unwrap_or_default().to_lowercase(),
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let mut out = Vec::new();
    for ep in &slice.endpoints {
        // As CoreDNS: only an explicit `ready: false` hides an endpoint.
        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        let hostname = ep
            .hostname
            .as_deref()
            .filter(|h| miniorch_api::names::is_dns1123_label(h));
        for addr in &ep.addresses {
            let Ok(ip) = addr.parse::<IpAddr>() else {
                continue;
            };
            let name = match hostname {
                Some(h) => h.to_string(),
                None => addr.replace(['.', ':'], "-"),
            };
            out.push(Endpoint {
                name,
                ip,
                ports: ports.clone(),
            });
        }
    }
    Some(((ns.to_lowercase(), service.to_lowercase()), out))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Services and slices for tests, from compact JSON.

    use super::*;

    /// A service from its spec.
    pub fn svc(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }))
        .unwrap()
    }

    /// A slice of `service` with these ports and endpoints (raw JSON).
    pub fn slice(
        ns: &str,
        service: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": format!("{service}-x"),
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn services_endpoints_and_reverse_names() {
        let services = [
            svc(
                "ns1",
                "web",
                json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
            ),
            svc(
                "ns1",
                "db",
                json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
            ),
            svc(
                "ns2",
                "ext",
                json!({"type": "ExternalName", "externalName": "Example.COM."}),
            ),
            svc("ns2", "pending", json!({"ports": [{"port": 80}]})),
            svc("ns2", "bad-ip", json!({"clusterIP": "nope"})),
        ];
        let slices = [slice(
            "ns1",
            "db",
            json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
            json!([
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"]},
                {"addresses": ["10.244.1.7"], "conditions": {"ready": false}},
                {"addresses": ["not-an-ip"]},
            ]),
        )];
        let v = View::build(&services, &slices, 7);
        assert_eq!(v.services.len(), 3, "{:?}", v.services.keys());
        let db = &v.services[&("ns1".into(), "db".into())];
        assert_eq!(db.kind, Kind::Headless);
        let names: Vec<(&str, String)> = db
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.ip.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("10-244-1-6", "10.244.1.6".to_string()),
                ("db-0", "10.244.1.5".to_string())
            ]
        );
        assert_eq!(
            v.services[&("ns2".into(), "ext".into())].kind,
            Kind::ExternalName("example.com".into())
        );
        let rev = |ip: &str| {
            v.reverse[&ip.parse::<IpAddr>().unwrap()]
                .iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(rev("10.96.0.10"), ["web.ns1.svc"]);
        assert_eq!(rev("10.244.1.5"), ["db-0.db.ns1.svc"]);
        assert_eq!(v.namespaces, ["ns1", "ns2"].map(String::from).into());
    }

    #[test]
    fn odd_objects_are_skipped() {
        let mut no_meta = svc("ns1", "x", json!({"clusterIP": "10.96.0.1"}));
        no_meta.metadata = Default::default();
        let mut no_spec = svc("ns1", "y", json!({}));
        no_spec.spec = None;
        let unlabeled: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "ns1", "name": "s"}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]
        }))
        .unwrap();
        let v = View::build(&[no_meta, no_spec], &[unlabeled], 1);
        assert!(v.services.is_empty() && v.reverse.is_empty());
    }
}
