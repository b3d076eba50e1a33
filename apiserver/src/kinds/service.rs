//! Services: defaults and validation as upstream, a cluster IP from the service range and node
//! ports from the node-port range, each held as its own store key so that no two services ever
//! get the same one, and the `kubectl get services` columns.

use std::net::Ipv4Addr;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult, FieldError};
use crate::registry::{Column, Kind, Subresource};
use crate::{State, table, validation};

const IP_KEYS: &str = "/registry/ranges/serviceips/";
const PORT_KEYS: &str = "/registry/ranges/servicenodeports/";

/// The service IP range (`--service-cluster-ip-range`), IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub base: u32,
    pub prefix: u8,
}

impl IpRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR like 10.96.0.0/12");
        let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = bits.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{s:?}: the prefix must be between /8 and /30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(IpRange {
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.base && ip < self.base + self.size() - 1
    }

    /// The first usable address: reserved for the `kubernetes` service, as upstream.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// A random address to try (never the network, broadcast or reserved first address).
    fn random(&self) -> Ipv4Addr {
        let span = self.size().saturating_sub(3).max(1);
        Ipv4Addr::from(self.base + 2 + rand::random_range(0..span))
    }
}

/// The node-port range (`--service-node-port-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: i32,
    pub last: i32,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range like 30000-32767");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (first, last): (i32, i32) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if !(1..=65535).contains(&first) || !(first..=65535).contains(&last) {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

fn service_type(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn has_node_ports(s: &Service) -> bool {
    matches!(service_type(s), "NodePort" | "LoadBalancer")
}

impl Kind for Service {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "service";
    const NAME_IS_LABEL: bool = true;
    const SHORT_NAMES: &'static [&'static str] = &["svc"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Status];
    const FIELDS: &'static [&'static str] = &["spec.clusterIP", "spec.type"];

    fn field(&self, field: &str) -> Option<String> {
        match field {
            "spec.clusterIP" => self.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
            "spec.type" => Some(service_type(self).to_string()),
            _ => None,
        }
    }

    fn prepare_for_create(&mut self) {
        self.status = Some(ServiceStatus {
            load_balancer: Some(Default::default()),
            conditions: None,
        });
    }

    fn apply_defaults(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        let type_ = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
        spec.session_affinity.get_or_insert_with(|| "None".into());
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            if p.target_port.is_none() {
                p.target_port = Some(IntOrString::Int(p.port));
            }
        }
        if type_ != "ExternalName" {
            spec.internal_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
            spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".into());
        }
        if matches!(type_.as_str(), "NodePort" | "LoadBalancer") {
            spec.external_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        if type_ == "LoadBalancer" {
            spec.allocate_load_balancer_node_ports.get_or_insert(true);
        }
        if let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty()) {
            spec.cluster_ips.get_or_insert_with(|| vec![ip]);
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let Some(spec) = &self.spec else {
            return vec![FieldError::required("spec", "")];
        };
        let mut errs = Vec::new();
        let type_ = service_type(self);
        let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
        if !types.contains(&type_) {
            errs.push(FieldError::not_supported("spec.type", type_, &types));
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        if ports.is_empty() && !headless && type_ != "ExternalName" {
            errs.push(FieldError::required("spec.ports", ""));
        }
        if type_ == "ExternalName" {
            match spec.external_name.as_deref() {
                None | Some("") => errs.push(FieldError::required("spec.externalName", "")),
                Some(n) if !miniorch_api::names::is_dns1123_subdomain(n.trim_end_matches('.')) => {
                    errs.push(FieldError::invalid(
                        "spec.externalName",
                        n,
                        miniorch_api::names::DNS1123_SUBDOMAIN_MSG,
                    ))
                }
                _ => {}
            }
        }
        if headless && matches!(type_, "NodePort" | "LoadBalancer") {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                "None",
                "may not be set to 'None' for LoadBalancer or NodePort services",
            ));
        }
        if let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            && ip.parse::<Ipv4Addr>().is_err()
        {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            validate_port(i, p, ports.len(), type_, &mut names, &mut seen, &mut errs);
        }
        if let Some(a) = spec.session_affinity.as_deref()
            && !matches!(a, "None" | "ClientIP")
        {
            errs.push(FieldError::not_supported(
                "spec.sessionAffinity",
                a,
                &["ClientIP", "None"],
            ));
        }
        errs.extend(validation::labels("spec.selector", spec.selector.as_ref()));
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        let ip = |s: &Service| {
            s.spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .filter(|ip| !ip.is_empty())
        };
        let (new_ip, old_ip) = (ip(self), ip(old));
        let to_external = service_type(self) == "ExternalName";
        if old_ip.is_some() && new_ip.is_some() && new_ip != old_ip && !to_external {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                new_ip.unwrap_or_default(),
                "may not change once set",
            ));
        }
        errs
    }

    fn prepare_for_update(&mut self, old: &Self) {
        self.status = old.status.clone();
        // An update that leaves clusterIP out keeps the allocated one (kubectl apply does).
        let old_spec = old.spec.clone().unwrap_or_default();
        if let Some(spec) = self.spec.as_mut() {
            let external = spec.type_.as_deref() == Some("ExternalName");
            if spec.cluster_ip.as_deref().unwrap_or("").is_empty() && !external {
                spec.cluster_ip = old_spec.cluster_ip.clone();
                spec.cluster_ips = old_spec.cluster_ips.clone();
            }
            // Node ports given before stay, port by port, unless the client sets another.
            for p in spec.ports.iter_mut().flatten() {
                if p.node_port.is_none() {
                    p.node_port = old_spec
                        .ports
                        .iter()
                        .flatten()
                        .find(|o| o.port == p.port && o.protocol == p.protocol)
                        .and_then(|o| o.node_port);
                }
            }
        }
    }

    fn prepare_for_subresource_update(&mut self, old: &Self, _sub: Subresource) {
        let status = self.status.take();
        *self = Service {
            status,
            ..old.clone()
        };
    }

    fn held_keys(&self) -> Vec<String> {
        let Some(spec) = &self.spec else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        if service_type(self) != "ExternalName"
            && let Some(ip) = spec
                .cluster_ip
                .as_deref()
                .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
        {
            keys.push(format!("{IP_KEYS}{ip}"));
        }
        if has_node_ports(self) {
            for p in spec.ports.iter().flatten() {
                if let Some(n) = p.node_port {
                    keys.push(format!("{PORT_KEYS}{n}"));
                }
            }
        }
        keys
    }

    fn allocate<'a>(
        &'a mut self,
        st: &'a State,
        _old: Option<&'a Self>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let node_ports = has_node_ports(self);
            let external = service_type(self) == "ExternalName";
            let name = self.metadata.name.clone().unwrap_or_default();
            let Some(spec) = self.spec.as_mut() else {
                return Ok(());
            };
            let range = st.services.ips;
            match spec.cluster_ip.clone().filter(|ip| !ip.is_empty()) {
                _ if external => {
                    spec.cluster_ip = None;
                    spec.cluster_ips = None;
                }
                Some(ip) if ip == "None" => spec.cluster_ips = Some(vec!["None".into()]),
                Some(ip) => {
                    if let Ok(addr) = ip.parse::<Ipv4Addr>()
                        && !range.contains(addr)
                        && !(addr == range.first() && name == "kubernetes")
                    {
                        return Err(ApiError::invalid(
                            "",
                            "Service",
                            &name,
                            &[FieldError::invalid(
                                "spec.clusterIPs",
                                &ip,
                                &format!(
                                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                    st.services.ips_text
                                ),
                            )],
                        ));
                    }
                    spec.cluster_ips = Some(vec![ip]);
                }
                None => {
                    let ip = free_key(st, IP_KEYS, || range.random().to_string()).await?;
                    spec.cluster_ip = Some(ip.clone());
                    spec.cluster_ips = Some(vec![ip]);
                }
            }
            let ports = st.services.node_ports;
            for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
                if !node_ports {
                    continue;
                }
                match p.node_port {
                    Some(n) if !(ports.first..=ports.last).contains(&n) => {
                        return Err(ApiError::invalid(
                            "",
                            "Service",
                            &name,
                            &[FieldError::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                n,
                                &format!(
                                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                                    ports.first, ports.last
                                ),
                            )],
                        ));
                    }
                    Some(_) => {}
                    None => {
                        let n = free_key(st, PORT_KEYS, || {
                            rand::random_range(ports.first..=ports.last).to_string()
                        })
                        .await?;
                        p.node_port = n.parse().ok();
                    }
                }
            }
            Ok(())
        })
    }

    fn held_key_taken(&self, key: &str) -> FieldError {
        if let Some(ip) = key.strip_prefix(IP_KEYS) {
            return FieldError::invalid(
                "spec.clusterIPs",
                ip,
                &format!("failed to allocate IP {ip}: provided IP is already allocated"),
            );
        }
        let port = key.strip_prefix(PORT_KEYS).unwrap_or(key);
        let i = self
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .position(|p| p.node_port.map(|n| n.to_string()).as_deref() == Some(port))
            .unwrap_or(0);
        match port.parse::<i32>() {
            Ok(n) => FieldError::invalid(
                format!("spec.ports[{i}].nodePort"),
                n,
                "provided port is already allocated",
            ),
            Err(_) => FieldError::invalid(
                format!("spec.ports[{i}].nodePort"),
                port,
                "provided port is already allocated",
            ),
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new(
                "Type",
                "string",
                "The type of the service (ClusterIP, NodePort, LoadBalancer or ExternalName).",
            ),
            Column::new("Cluster-IP", "string", "The IP address of the service."),
            Column::new("External-IP", "string", "The external IPs of the service."),
            Column::new("Port(s)", "string", "The ports the service listens on."),
            Column::age_column(),
            Column::new(
                "Selector",
                "string",
                "Route service traffic to pods with label keys and values matching this selector.",
            )
            .wide(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let type_ = service_type(self);
        let external = match type_ {
            "ExternalName" => spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" => {
                let ingress: Vec<String> = self
                    .status
                    .iter()
                    .flat_map(|s| s.load_balancer.iter())
                    .flat_map(|l| l.ingress.iter().flatten())
                    .filter_map(|i| i.ip.clone().or(i.hostname.clone()))
                    .chain(spec.external_ips.clone().unwrap_or_default())
                    .collect();
                if ingress.is_empty() {
                    "<pending>".into()
                } else {
                    ingress.join(",")
                }
            }
            _ => match spec.external_ips.as_deref() {
                Some(ips) if !ips.is_empty() => ips.join(","),
                _ => "<none>".into(),
            },
        };
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                match p.node_port {
                    Some(n) => format!("{}:{n}/{proto}", p.port),
                    None => format!("{}/{proto}", p.port),
                }
            })
            .collect();
        let selector = match &spec.selector {
            Some(s) if !s.is_empty() => s
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            _ => "<none>".into(),
        };
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(type_),
            json!(
                spec.cluster_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "<none>".into())
            ),
            json!(external),
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            }),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(selector),
        ]
    }
}

fn validate_port(
    i: usize,
    p: &ServicePort,
    count: usize,
    type_: &str,
    names: &mut std::collections::HashSet<String>,
    seen: &mut std::collections::HashSet<(i32, String)>,
    errs: &mut Vec<FieldError>,
) {
    let f = format!("spec.ports[{i}]");
    match p.name.as_deref().filter(|n| !n.is_empty()) {
        None if count > 1 => errs.push(FieldError::required(format!("{f}.name"), "")),
        None => {}
        Some(n) => {
            validation::dns_label(&format!("{f}.name"), n, errs);
            if !names.insert(n.to_string()) {
                errs.push(FieldError::duplicate(format!("{f}.name"), n));
            }
        }
    }
    if !(1..=65535).contains(&p.port) {
        errs.push(FieldError::invalid(
            format!("{f}.port"),
            p.port,
            "must be between 1 and 65535, inclusive",
        ));
    }
    let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
    if !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP") {
        errs.push(FieldError::not_supported(
            format!("{f}.protocol"),
            &proto,
            &["SCTP", "TCP", "UDP"],
        ));
    }
    if !seen.insert((p.port, proto.clone())) {
        errs.push(FieldError::duplicate(
            f.clone(),
            &format!("{}/{proto}", p.port),
        ));
    }
    match &p.target_port {
        Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => errs.push(FieldError::invalid(
            format!("{f}.targetPort"),
            *t,
            "must be between 1 and 65535, inclusive",
        )),
        Some(IntOrString::String(s))
            if s.len() > 15 || !miniorch_api::names::is_dns1123_label(s) =>
        {
            errs.push(FieldError::invalid(
                format!("{f}.targetPort"),
                s,
                "must be an IANA_SVC_NAME (at most 15 characters, lowercase alphanumerics or '-')",
            ))
        }
        _ => {}
    }
    if p.node_port.is_some() && !matches!(type_, "NodePort" | "LoadBalancer") {
        errs.push(FieldError::forbidden(
            format!("{f}.nodePort"),
            &format!("may not be used when `type` is '{type_}'"),
        ));
    }
}

/// A key under `prefix` that no one holds yet, trying random candidates.
async fn free_key(st: &State, prefix: &str, candidate: impl Fn() -> String) -> ApiResult<String> {
    for _ in 0..64 {
        let c = candidate();
        if st.store.get(&format!("{prefix}{c}")).await?.0.is_none() {
            return Ok(c);
        }
    }
    Err(ApiError::internal(
        "range is full: no free address or port left to allocate",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn svc(type_: Option<&str>, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: Default::default(),
            spec: Some(ServiceSpec {
                type_: type_.map(Into::into),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn port(n: i32) -> ServicePort {
        ServicePort {
            port: n,
            ..Default::default()
        }
    }

    #[test]
    fn ranges() {
        let r = IpRange::parse("10.96.0.0/12").unwrap();
        assert_eq!(r.first(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 100, 1, 2)));
        assert!(!r.contains(Ipv4Addr::new(10, 96, 0, 0)));
        assert!(!r.contains(Ipv4Addr::new(10, 112, 0, 1)));
        for _ in 0..100 {
            let ip = r.random();
            assert!(r.contains(ip) && ip != r.first());
        }
        assert!(IpRange::parse("10.96.0.0").is_err());
        assert_eq!(
            PortRange::parse("30000-32767").unwrap(),
            PortRange {
                first: 30000,
                last: 32767
            }
        );
        assert!(PortRange::parse("5-2").is_err());
    }

    #[test]
    fn defaults_and_validation() {
        let mut s = svc(None, vec![port(80)]);
        s.apply_defaults();
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(
            spec.ports.as_ref().unwrap()[0].target_port,
            Some(IntOrString::Int(80))
        );
        assert_eq!(
            spec.ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("TCP")
        );
        assert!(s.validate().is_empty());
        let two = svc(None, vec![port(80), port(0)]);
        let fields: Vec<String> = two.validate().iter().map(|e| e.field.clone()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.ports[0].name",
                "spec.ports[1].name",
                "spec.ports[1].port"
            ]
        );
        assert_eq!(
            svc(Some("Bogus"), vec![port(80)]).validate()[0].field,
            "spec.type"
        );
        assert_eq!(svc(None, vec![]).validate()[0].field, "spec.ports");
        let mut np = port(80);
        np.node_port = Some(30080);
        assert_eq!(
            svc(None, vec![np]).validate()[0].field,
            "spec.ports[0].nodePort"
        );
    }

    #[test]
    fn held_keys_and_columns() {
        let mut np = port(80);
        np.node_port = Some(30080);
        let mut s = svc(Some("NodePort"), vec![np]);
        s.spec.as_mut().unwrap().cluster_ip = Some("10.96.5.5".into());
        assert_eq!(
            s.held_keys(),
            vec![format!("{IP_KEYS}10.96.5.5"), format!("{PORT_KEYS}30080")]
        );
        assert_eq!(
            s.held_key_taken(&format!("{PORT_KEYS}30080")).field,
            "spec.ports[0].nodePort"
        );
        s.apply_defaults();
        let cells = s.cells(jiff::Timestamp::now());
        assert_eq!(cells[1], json!("NodePort"));
        assert_eq!(cells[2], json!("10.96.5.5"));
        assert_eq!(cells[4], json!("80:30080/TCP"));
    }

    #[test]
    fn updates_keep_the_cluster_ip() {
        let mut old = svc(None, vec![port(80)]);
        old.spec.as_mut().unwrap().cluster_ip = Some("10.96.5.5".into());
        let mut new = svc(None, vec![port(81)]);
        new.prepare_for_update(&old);
        assert_eq!(
            new.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.5.5")
        );
        new.spec.as_mut().unwrap().cluster_ip = Some("10.96.9.9".into());
        assert_eq!(
            new.validate_update(&old)[0].message,
            "Invalid value: \"10.96.9.9\": may not change once set"
        );
    }
}
