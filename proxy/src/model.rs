//! What the proxy programs, as plain values: each Service port joined with the endpoints its
//! EndpointSlices list, the way kube-proxy's service and endpoints change trackers see them.
//! Odd objects (missing fields, bad IPs, names that are not DNS labels) are left out with a
//! reason, never a panic; only IPv4 is kept, because `iptables` programs IPv4 only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Service, ServicePort as ApiServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use miniorch_api::names::{is_dns1123_label, is_dns1123_subdomain};

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Upstream's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// A transport protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default when a port names none).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Reads the API's spelling; `None` means TCP, as the API defaults it.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lowercase name iptables and upstream's chain hashes use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// An IPv4 network such as `10.244.0.0/16` (the pod CIDR the masquerade rules test against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not a CIDR: expected ADDRESS/BITS, e.g. 10.244.0.0/16")
        })?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = match prefix.parse() {
            Ok(p) if p <= 32 => p,
            _ => return Err(format!("{prefix:?} is not a prefix length (0-32)")),
        };
        // Keep the network address, as iptables prints it back.
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The endpoint's (first) address.
    pub ip: Ipv4Addr,
    /// The port traffic is sent to.
    pub port: u16,
    /// Whether it runs on this node (for the `Local` traffic policies).
    pub local: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// One port of one Service, with what the proxy needs to program it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Upstream's ServicePortName: `ns/name:port`, or `ns/name` for an unnamed port.
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The virtual IP (`None` for a service the proxy only reaches through node ports).
    pub cluster_ip: Option<Ipv4Addr>,
    /// The service port.
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs`, reached like the cluster IP from outside.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// ClientIP session affinity: how long a client sticks to its endpoint.
    pub affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// Ready, not terminating endpoints, sorted and without duplicates.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Whether anything outside the cluster IP reaches it (node port, external or LB IPs).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// The model of everything to program, and what had to be left out.
#[derive(Debug, Default)]
pub struct Model {
    /// Service ports, sorted by name then protocol.
    pub ports: Vec<ServicePort>,
    /// Why some objects (or parts) were left out, one line each.
    pub skipped: Vec<String>,
}

/// Joins services with their slices into the ports to program for `node_name`.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
) -> Model {
    let mut model = Model::default();
    let by_service = index_slices(slices, &mut model.skipped);
    for svc in services {
        add_service(svc, &by_service, node_name, &mut model);
    }
    model
        .ports
        .sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    model
}

/// Slices keyed by (namespace, service name).
fn index_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    skipped: &mut Vec<String>,
) -> BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let meta = &slice.metadata;
        let ns = meta.namespace.as_deref().unwrap_or("");
        let name = meta.name.as_deref().unwrap_or("");
        let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            // Slices without the label belong to no service (as upstream ignores them).
            continue;
        };
        if slice.address_type != "IPv4" {
            if slice.address_type != "IPv6" {
                skipped.push(format!(
                    "endpointslice {ns}/{name}: address type {:?} is not proxied",
                    slice.address_type
                ));
            }
            continue;
        }
        out.entry((ns, service.as_str())).or_default().push(slice);
    }
    out
}

fn add_service(
    svc: &Service,
    slices: &BTreeMap<(&str, &str), Vec<&EndpointSlice>>,
    node_name: &str,
    model: &mut Model,
) {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    // Names end up in iptables comments: only well-formed ones, so nothing can break the input.
    if !is_dns1123_label(ns) || !is_dns1123_subdomain(name) {
        model.skipped.push(format!(
            "service {ns:?}/{name:?}: namespace or name is not a DNS name"
        ));
        return;
    }
    let Some(spec) = &svc.spec else { return };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return;
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => None,
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    model.skipped.push(format!(
                        "service {ns}/{name}: cluster IP {ip:?} is not an IP"
                    ));
                }
                return;
            }
        },
    };
    // A headless service has no virtual IP and nothing to proxy.
    if cluster_ip.is_none() {
        return;
    }
    let external_ips = parse_ips(
        spec.external_ips.iter().flatten().map(String::as_str),
        ns,
        name,
        "external IP",
        &mut model.skipped,
    );
    let lb_ips: Vec<&str> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref())
        .collect();
    let load_balancer_ips = if kind == "LoadBalancer" {
        parse_ips(
            lb_ips.into_iter(),
            ns,
            name,
            "load balancer IP",
            &mut model.skipped,
        )
    } else {
        Vec::new()
    };
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|s| u32::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let uses_node_ports = kind == "NodePort" || kind == "LoadBalancer";
    let own_slices = slices.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);

    for port in spec.ports.iter().flatten() {
        let Some(p) = check_port(port, ns, name, &mut model.skipped) else {
            continue;
        };
        let (port_name, protocol, port_num) = p;
        let node_port = if uses_node_ports {
            port.node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
        } else {
            None
        };
        let full_name = if port_name.is_empty() {
            format!("{ns}/{name}")
        } else {
            format!("{ns}/{name}:{port_name}")
        };
        let endpoints = endpoints_for(own_slices, port_name, protocol, node_name);
        model.ports.push(ServicePort {
            name: full_name,
            protocol,
            cluster_ip,
            port: port_num,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            affinity_seconds,
            external_local,
            internal_local,
            endpoints,
        });
    }
}

/// The port's name, protocol and number when they are usable.
fn check_port<'a>(
    port: &'a ApiServicePort,
    ns: &str,
    name: &str,
    skipped: &mut Vec<String>,
) -> Option<(&'a str, Protocol, u16)> {
    let port_name = port.name.as_deref().unwrap_or("");
    if !port_name.is_empty() && !is_dns1123_label(port_name) {
        skipped.push(format!(
            "service {ns}/{name}: port name {port_name:?} is not a DNS label"
        ));
        return None;
    }
    let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
        skipped.push(format!(
            "service {ns}/{name}: port {port_name:?} has unknown protocol {:?}",
            port.protocol.as_deref().unwrap_or("")
        ));
        return None;
    };
    let Some(num) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
        skipped.push(format!(
            "service {ns}/{name}: port {} is out of range",
            port.port
        ));
        return None;
    };
    Some((port_name, protocol, num))
}

fn parse_ips<'a>(
    ips: impl Iterator<Item = &'a str>,
    ns: &str,
    name: &str,
    what: &str,
    skipped: &mut Vec<String>,
) -> Vec<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for ip in ips {
        match ip.parse::<Ipv4Addr>() {
            Ok(ip) => {
                out.insert(ip);
            }
            // IPv6 addresses are simply not ours to program.
            Err(_) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {}
            Err(_) => skipped.push(format!("service {ns}/{name}: {what} {ip:?} is not an IP")),
        }
    }
    out.into_iter().collect()
}

/// The ready, non-terminating endpoints the slices list for one service port.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Endpoint> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let conditions = ep.conditions.as_ref();
            // The API says an unset `ready` means ready, and an unset `terminating` means not.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            // Upstream proxies to an endpoint's first address only.
            let Some(ip) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            out.insert(Endpoint {
                ip,
                port,
                local: ep.node_name.as_deref() == Some(node_name),
            });
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for Services and EndpointSlices in tests.

    use super::*;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
        SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{
        Endpoint as ApiEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A ClusterIP service `ns/name` at `ip`.
    pub fn svc(ns: &str, name: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                type_: Some("ClusterIP".into()),
                ports: Some(vec![]),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub trait SvcExt {
        fn port(self, name: &str, proto: &str, port: i32) -> Self;
        fn node_port(self, name: &str, proto: &str, port: i32, node_port: i32) -> Self;
        fn kind(self, kind: &str) -> Self;
        fn affinity(self, seconds: Option<i32>) -> Self;
        fn external_ips(self, ips: &[&str]) -> Self;
        fn lb_ip(self, ip: &str) -> Self;
        fn etp_local(self) -> Self;
        fn itp_local(self) -> Self;
    }

    impl SvcExt for Service {
        fn port(self, name: &str, proto: &str, port: i32) -> Self {
            self.node_port(name, proto, port, 0)
        }
        fn node_port(mut self, name: &str, proto: &str, port: i32, node_port: i32) -> Self {
            let spec = self.spec.get_or_insert_with(Default::default);
            spec.ports
                .get_or_insert_with(Vec::new)
                .push(ApiServicePort {
                    name: (!name.is_empty()).then(|| name.into()),
                    protocol: Some(proto.into()),
                    port,
                    node_port: (node_port != 0).then_some(node_port),
                    ..Default::default()
                });
            self
        }
        fn kind(mut self, kind: &str) -> Self {
            self.spec.get_or_insert_with(Default::default).type_ = Some(kind.into());
            self
        }
        fn affinity(mut self, seconds: Option<i32>) -> Self {
            let spec = self.spec.get_or_insert_with(Default::default);
            spec.session_affinity = Some("ClientIP".into());
            spec.session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: seconds,
                }),
            });
            self
        }
        fn external_ips(mut self, ips: &[&str]) -> Self {
            self.spec.get_or_insert_with(Default::default).external_ips =
                Some(ips.iter().map(|s| s.to_string()).collect());
            self
        }
        fn lb_ip(mut self, ip: &str) -> Self {
            self.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some(ip.into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            });
            self
        }
        fn etp_local(mut self) -> Self {
            self.spec
                .get_or_insert_with(Default::default)
                .external_traffic_policy = Some("Local".into());
            self
        }
        fn itp_local(mut self) -> Self {
            self.spec
                .get_or_insert_with(Default::default)
                .internal_traffic_policy = Some("Local".into());
            self
        }
    }

    /// A slice of service `ns/service` with one port.
    pub fn slice(
        ns: &str,
        service: &str,
        port_name: &str,
        proto: &str,
        port: i32,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{service}-abcde")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: Some(vec![EndpointPort {
                name: Some(port_name.into()),
                protocol: Some(proto.into()),
                port: Some(port),
                app_protocol: None,
            }]),
        }
    }

    pub trait SliceExt {
        fn ep(self, ip: &str, node: &str) -> Self;
        fn ep_cond(
            self,
            ip: &str,
            node: &str,
            ready: Option<bool>,
            terminating: Option<bool>,
        ) -> Self;
    }

    impl SliceExt for EndpointSlice {
        fn ep(self, ip: &str, node: &str) -> Self {
            self.ep_cond(ip, node, Some(true), Some(false))
        }
        fn ep_cond(
            mut self,
            ip: &str,
            node: &str,
            ready: Option<bool>,
            terminating: Option<bool>,
        ) -> Self {
            self.endpoints.push(ApiEndpoint {
                addresses: vec![ip.into()],
                conditions: Some(EndpointConditions {
                    ready,
                    serving: ready,
                    terminating,
                }),
                node_name: Some(node.into()),
                ..Default::default()
            });
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn ep(ip: &str, port: u16, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port,
            local,
        }
    }

    #[test]
    fn cidrs_parse_to_their_network() {
        let cases = [
            ("10.244.0.0/16", Ok("10.244.0.0/16")),
            ("10.244.3.7/16", Ok("10.244.0.0/16")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("10.0.0.1/32", Ok("10.0.0.1/32")),
            ("10.0.0.0", Err("not a CIDR")),
            ("10.0.0.0/33", Err("prefix length")),
            ("fd00::/8", Err("not an IPv4")),
        ];
        for (input, want) in cases {
            let got = input.parse::<Ipv4Cidr>().map(|c| c.to_string());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{input}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{input}: {g}"),
                (g, w) => panic!("{input}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn endpoints_are_ready_only_deduplicated_and_marked_local() {
        let services = [svc("ns1", "web", "10.96.0.10").port("http", "TCP", 80)];
        let slices = [
            slice("ns1", "web", "http", "TCP", 8080)
                .ep("10.244.1.3", "n1")
                .ep("10.244.2.2", "n2")
                .ep_cond("10.244.1.9", "n1", Some(false), Some(false))
                .ep_cond("10.244.1.8", "n1", Some(true), Some(true))
                .ep_cond("10.244.1.7", "n1", None, None),
            // A second slice repeating an endpoint, and one for another service.
            slice("ns1", "web", "http", "TCP", 8080).ep("10.244.2.2", "n2"),
            slice("ns1", "other", "http", "TCP", 8080).ep("10.244.5.5", "n1"),
        ];
        let m = build(&services, &slices, "n1");
        assert_eq!(m.ports.len(), 1);
        assert_eq!(m.ports[0].name, "ns1/web:http");
        assert_eq!(
            m.ports[0].endpoints,
            vec![
                ep("10.244.1.3", 8080, true),
                ep("10.244.1.7", 8080, true),
                ep("10.244.2.2", 8080, false)
            ]
        );
    }

    #[test]
    fn slice_ports_match_by_name_and_protocol() {
        let services = [svc("ns1", "dns", "10.96.0.10")
            .port("dns", "UDP", 53)
            .port("dns-tcp", "TCP", 53)
            .port("", "TCP", 9153)];
        let mut s = slice("ns1", "dns", "dns", "UDP", 1053).ep("10.244.1.2", "n1");
        s.ports
            .as_mut()
            .unwrap()
            .push(k8s_openapi::api::discovery::v1::EndpointPort {
                name: Some("dns-tcp".into()),
                protocol: None,
                port: Some(1054),
                app_protocol: None,
            });
        s.ports
            .as_mut()
            .unwrap()
            .push(k8s_openapi::api::discovery::v1::EndpointPort {
                name: None,
                protocol: Some("TCP".into()),
                port: Some(9154),
                app_protocol: None,
            });
        let m = build(&services, &[s], "n1");
        let got: Vec<(String, Protocol, Vec<u16>)> = m
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.protocol,
                    p.endpoints.iter().map(|e| e.port).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("ns1/dns".to_string(), Protocol::Tcp, vec![9154]),
                ("ns1/dns:dns".to_string(), Protocol::Udp, vec![1053]),
                ("ns1/dns:dns-tcp".to_string(), Protocol::Tcp, vec![1054]),
            ]
        );
    }

    #[test]
    fn odd_services_are_skipped_with_a_reason_not_a_panic() {
        let mut no_spec = svc("ns1", "a", "10.96.0.1");
        no_spec.spec = None;
        let mut no_meta = svc("ns1", "b", "10.96.0.2");
        no_meta.metadata = Default::default();
        let cases: Vec<(Service, &str)> = vec![
            (
                svc("ns1", "bad-ip", "10.96.0.300").port("p", "TCP", 80),
                "is not an IP",
            ),
            (
                svc("ns1", "bad-proto", "10.96.0.3").port("p", "ICMP", 80),
                "unknown protocol",
            ),
            (
                svc("ns1", "bad-port", "10.96.0.3").port("p", "TCP", 70000),
                "out of range",
            ),
            (
                svc("ns1", "bad-name", "10.96.0.3").port("a\"b", "TCP", 80),
                "not a DNS label",
            ),
            (
                svc("ns1", "x\n-A", "10.96.0.3").port("p", "TCP", 80),
                "not a DNS name",
            ),
            (
                svc("ns1", "bad-ext", "10.96.0.3")
                    .port("p", "TCP", 80)
                    .external_ips(&["nope"]),
                "external IP",
            ),
            (no_meta.port("p", "TCP", 80), "not a DNS name"),
        ];
        for (service, reason) in cases {
            let m = build(std::slice::from_ref(&service), &[], "n1");
            assert!(
                m.skipped.iter().any(|s| s.contains(reason)),
                "{:?}: {:?}",
                service.metadata.name,
                m.skipped
            );
        }
        // Not proxied, and not worth a complaint.
        for service in [
            no_spec,
            svc("ns1", "headless", "None").port("p", "TCP", 80),
            svc("ns1", "v6", "fd00::1").port("p", "TCP", 80),
            svc("ns1", "ext", "").kind("ExternalName"),
        ] {
            let m = build(&[service], &[], "n1");
            assert!(m.ports.is_empty() && m.skipped.is_empty(), "{m:?}");
        }
    }

    #[test]
    fn affinity_node_ports_and_policies_are_read() {
        let services = [
            svc("ns1", "a", "10.96.0.1")
                .port("p", "TCP", 80)
                .affinity(None),
            svc("ns1", "b", "10.96.0.2")
                .port("p", "TCP", 80)
                .affinity(Some(60)),
            svc("ns1", "c", "10.96.0.3")
                .kind("NodePort")
                .node_port("p", "TCP", 80, 30080)
                .etp_local()
                .itp_local(),
            // A node port on a ClusterIP service is not used.
            svc("ns1", "d", "10.96.0.4").node_port("p", "TCP", 80, 30081),
            svc("ns1", "e", "10.96.0.5")
                .kind("LoadBalancer")
                .node_port("p", "TCP", 80, 30082)
                .lb_ip("192.0.2.7"),
        ];
        let m = build(&services, &[], "n1");
        let p = |n: &str| m.ports.iter().find(|p| p.name == n).unwrap();
        assert_eq!(
            p("ns1/a:p").affinity_seconds,
            Some(DEFAULT_AFFINITY_SECONDS)
        );
        assert_eq!(p("ns1/b:p").affinity_seconds, Some(60));
        assert_eq!(p("ns1/c:p").affinity_seconds, None);
        assert_eq!(p("ns1/c:p").node_port, Some(30080));
        assert!(p("ns1/c:p").external_local && p("ns1/c:p").internal_local);
        assert_eq!(p("ns1/d:p").node_port, None);
        assert_eq!(p("ns1/e:p").node_port, Some(30082));
        assert_eq!(
            p("ns1/e:p").load_balancer_ips,
            vec![Ipv4Addr::new(192, 0, 2, 7)]
        );
    }
}
