//! The pure answer to one question, following CoreDNS's kubernetes plugin:
//!
//! - `svc.ns.svc.<domain>`: A/AAAA → the cluster IP; a headless service → its ready endpoints;
//!   an ExternalName service → a CNAME (followed when it points back into the cluster domain).
//! - `_port._proto.svc.ns.svc.<domain>`: SRV per matching port (and A/AAAA as for the service);
//!   SRV on the bare service name lists every port.
//! - `endpoint.svc.ns.svc.<domain>`: an endpoint by hostname, or by its IP with dashes.
//! - `a-b-c-d.ns.pod.<domain>`: that address ("pods insecure").
//! - the zone apex answers SOA and NS; unknown names are NXDOMAIN, known names without records
//!   of the asked type NOERROR with no answers — both with the SOA for negative caching.
//! - `in-addr.arpa`/`ip6.arpa`: PTR for service and endpoint addresses; other names, and
//!   every name outside the cluster domain, are not ours ([`Answer::NotOurs`]: forwarded or
//!   refused by the server).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use crate::view::{Endpoint, Kind, Port, View};

/// How many CNAMEs inside the cluster domain are followed before giving up (loops).
const MAX_CHASE: usize = 8;

/// The zone served and how long answers may be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The cluster domain as a lowercase FQDN, e.g. `cluster.local.`.
    pub domain: Name,
    /// TTL of every record (CoreDNS's default is 5 seconds).
    pub ttl: u32,
}

impl Zone {
    /// A zone for `domain` (e.g. `cluster.local`).
    pub fn new(domain: &str, ttl: u32) -> Result<Zone, String> {
        let trimmed = domain.trim_end_matches('.');
        if trimmed.is_empty() {
            return Err("the cluster domain must not be empty".into());
        }
        let mut name = Name::from_ascii(trimmed)
            .map_err(|e| format!("{domain:?} is not a domain name: {e}"))?
            .to_lowercase();
        name.set_fqdn(true);
        Ok(Zone { domain: name, ttl })
    }
}

/// An authoritative answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// NOERROR or NXDOMAIN.
    pub code: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA, on negative answers).
    pub authority: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
}

/// What to do with a question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Answer this, as the authority for the name.
    Authoritative(Response),
    /// Not a name this server is the authority for.
    NotOurs,
}

/// Answers `qtype` questions about `name` from `view`.
pub fn resolve(name: &Name, qtype: RecordType, view: &View, zone: &Zone) -> Answer {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    if zone.domain.zone_of(&name) {
        let mut r = cluster(&name, qtype, view, zone, 0);
        if r.answers.is_empty() {
            r.authority.push(soa(view, zone));
        }
        return Answer::Authoritative(r);
    }
    match reverse(&name, qtype, view, zone) {
        Some(r) => Answer::Authoritative(r),
        None => Answer::NotOurs,
    }
}

fn ok(answers: Vec<Record>) -> Response {
    Response {
        code: ResponseCode::NoError,
        answers,
        authority: vec![],
        additionals: vec![],
    }
}

fn nxdomain() -> Response {
    Response {
        code: ResponseCode::NXDomain,
        ..ok(vec![])
    }
}

fn record(name: &Name, zone: &Zone, data: RData) -> Record {
    Record::from_rdata(name.clone(), zone.ttl, data)
}

fn soa(view: &View, zone: &Zone) -> Record {
    let under = |label: &str| {
        Name::from_ascii(label)
            .and_then(|l| l.append_domain(&zone.domain))
            .unwrap_or_else(|_| zone.domain.clone())
    };
    record(
        &zone.domain,
        zone,
        RData::SOA(SOA::new(
            under("ns.dns"),
            under("hostmaster"),
            view.serial,
            7200,
            1800,
            86400,
            zone.ttl,
        )),
    )
}

/// `relative` (e.g. `web.ns1.svc`) as an FQDN in the zone.
fn in_zone(relative: &str, zone: &Zone) -> Option<Name> {
    Name::from_ascii(relative)
        .ok()?
        .append_domain(&zone.domain)
        .ok()
}

/// Address records of `ips` owned by `name`, for the asked type.
fn addresses(
    name: &Name,
    qtype: RecordType,
    ips: impl IntoIterator<Item = IpAddr>,
    zone: &Zone,
) -> Vec<Record> {
    ips.into_iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        })
        .map(|data| record(name, zone, data))
        .collect()
}

/// Names inside the cluster domain.
fn cluster(name: &Name, qtype: RecordType, view: &View, zone: &Zone, depth: usize) -> Response {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let relative = &labels[..labels
        .len()
        .saturating_sub(usize::from(zone.domain.num_labels()))];
    let l: Vec<&str> = relative.iter().map(String::as_str).collect();
    match l.as_slice() {
        [] => match qtype {
            RecordType::SOA => ok(vec![soa(view, zone)]),
            RecordType::NS => {
                let ns = in_zone("ns.dns", zone).unwrap_or_else(|| zone.domain.clone());
                ok(vec![record(name, zone, RData::NS(NS(ns)))])
            }
            _ => ok(vec![]),
        },
        ["svc"] | ["pod"] | [_, "pod"] => ok(vec![]),
        [ns, "svc"] if view.namespaces.contains(*ns) => ok(vec![]),
        [svc, ns, "svc"] => service(name, qtype, view, zone, ns, svc, None, depth),
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            let filter = (&port[1..], &proto[1..]);
            service(name, qtype, view, zone, ns, svc, Some(filter), depth)
        }
        [endpoint, svc, ns, "svc"] => {
            let Some(s) = view.services.get(&(ns.to_string(), svc.to_string())) else {
                return nxdomain();
            };
            let eps: Vec<&Endpoint> = s.endpoints.iter().filter(|e| e.name == *endpoint).collect();
            if eps.is_empty() {
                return nxdomain();
            }
            ok(addresses(name, qtype, eps.iter().map(|e| e.ip), zone))
        }
        [ip, _ns, "pod"] => match pod_ip(ip) {
            Some(ip) => ok(addresses(name, qtype, [ip], zone)),
            None => nxdomain(),
        },
        _ => nxdomain(),
    }
}

/// The address a pod label such as `10-244-1-5` (or `fd00--1`) spells.
fn pod_ip(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        return label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4);
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn port_matches(p: &Port, filter: Option<(&str, &str)>) -> bool {
    filter.is_none_or(|(name, proto)| p.name == name && p.protocol == proto)
}

#[allow(clippy::too_many_arguments)]
fn service(
    name: &Name,
    qtype: RecordType,
    view: &View,
    zone: &Zone,
    ns: &str,
    svc: &str,
    filter: Option<(&str, &str)>,
    depth: usize,
) -> Response {
    let Some(s) = view.services.get(&(ns.to_string(), svc.to_string())) else {
        return nxdomain();
    };
    let Some(svc_name) = in_zone(&format!("{svc}.{ns}.svc"), zone) else {
        return nxdomain();
    };
    match &s.kind {
        Kind::ExternalName(target) => {
            let Ok(mut target) = Name::from_ascii(target) else {
                return nxdomain();
            };
            target.set_fqdn(true);
            let mut r = ok(vec![record(
                name,
                zone,
                RData::CNAME(CNAME(target.clone())),
            )]);
            // Resolvers follow a CNAME to an outside name themselves; one into our own zone
            // is followed here, as CoreDNS does.
            if qtype != RecordType::CNAME && zone.domain.zone_of(&target) && depth < MAX_CHASE {
                let chased = cluster(&target, qtype, view, zone, depth + 1);
                r.answers.extend(chased.answers);
                r.additionals.extend(chased.additionals);
            }
            r
        }
        Kind::ClusterIp(ips) => {
            let ports: Vec<&Port> = s.ports.iter().filter(|p| port_matches(p, filter)).collect();
            if filter.is_some() && ports.is_empty() {
                return nxdomain();
            }
            if qtype != RecordType::SRV {
                return ok(addresses(name, qtype, ips.iter().copied(), zone));
            }
            let weight = srv_weight(ports.len());
            let answers = ports
                .iter()
                .map(|p| {
                    record(
                        name,
                        zone,
                        RData::SRV(SRV::new(0, weight, p.port, svc_name.clone())),
                    )
                })
                .collect();
            Response {
                additionals: addresses(&svc_name, RecordType::ANY, ips.iter().copied(), zone),
                ..ok(answers)
            }
        }
        Kind::Headless => {
            // Each endpoint with the ports that match.
            let eps: Vec<(&Endpoint, Vec<&Port>)> = s
                .endpoints
                .iter()
                .map(|e| {
                    (
                        e,
                        e.ports
                            .iter()
                            .filter(|p| port_matches(p, filter))
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, ports)| filter.is_none() || !ports.is_empty())
                .collect();
            // As CoreDNS: a headless service without ready endpoints has no name.
            if eps.is_empty() {
                return nxdomain();
            }
            if qtype != RecordType::SRV {
                return ok(addresses(name, qtype, eps.iter().map(|(e, _)| e.ip), zone));
            }
            let weight = srv_weight(eps.iter().map(|(_, p)| p.len()).sum());
            let mut r = ok(vec![]);
            for (ep, ports) in &eps {
                let Some(target) = in_zone(&format!("{}.{svc}.{ns}.svc", ep.name), zone) else {
                    continue;
                };
                for p in ports {
                    r.answers.push(record(
                        name,
                        zone,
                        RData::SRV(SRV::new(0, weight, p.port, target.clone())),
                    ));
                }
                r.additionals
                    .extend(addresses(&target, RecordType::ANY, [ep.ip], zone));
            }
            r
        }
    }
}

/// CoreDNS spreads a weight of 100 over the records of one priority.
fn srv_weight(n: usize) -> u16 {
    u16::try_from(100 / n.max(1)).unwrap_or(0)
}

/// PTR answers for addresses the view knows; `None` for everything else.
fn reverse(name: &Name, qtype: RecordType, view: &View, zone: &Zone) -> Option<Response> {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let ip = match labels
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [d, c, b, a, "in-addr", "arpa"] => {
            let octets = [a, b, c, d].map(|s| s.parse::<u8>().ok());
            let [Some(a), Some(b), Some(c), Some(d)] = octets else {
                return None;
            };
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
        [nibbles @ .., "ip6", "arpa"] if nibbles.len() == 32 => {
            let hex: String = nibbles.iter().rev().copied().collect();
            let value = u128::from_str_radix(&hex, 16).ok()?;
            IpAddr::V6(Ipv6Addr::from(value))
        }
        _ => return None,
    };
    let names = view.reverse.get(&ip)?;
    if qtype != RecordType::PTR {
        return None;
    }
    let answers = names
        .iter()
        .filter_map(|n| in_zone(n, zone))
        .map(|target| record(name, zone, RData::PTR(PTR(target))))
        .collect();
    Some(ok(answers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::testing::*;
    use serde_json::json;

    fn view() -> View {
        let services = [
            svc(
                "ns1",
                "web",
                json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                       "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
            ),
            svc(
                "ns1",
                "db",
                json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
            ),
            svc("ns1", "empty", json!({"clusterIP": "None"})),
            svc(
                "ns2",
                "ext",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
            svc(
                "ns2",
                "alias",
                json!({"type": "ExternalName", "externalName": "web.ns1.svc.cluster.local"}),
            ),
            svc(
                "ns2",
                "loop",
                json!({"type": "ExternalName", "externalName": "loop.ns2.svc.cluster.local"}),
            ),
        ];
        let slices = [
            slice(
                "ns1",
                "db",
                json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
                json!([{"addresses": ["10.244.1.5"], "hostname": "db-0"}, {"addresses": ["10.244.2.6"]}]),
            ),
            slice(
                "ns1",
                "web",
                json!([{"name": "http", "port": 8080}]),
                json!([{"addresses": ["10.244.1.9"]}]),
            ),
        ];
        View::build(&services, &slices, 42)
    }

    fn ask(name: &str, qtype: RecordType) -> Answer {
        let zone = Zone::new("cluster.local", 5).unwrap();
        resolve(&Name::from_ascii(name).unwrap(), qtype, &view(), &zone)
    }

    /// Each case: question, expected code, answer section, additional section.
    #[test]
    fn answers_follow_coredns() {
        use RecordType::*;
        const NOERROR: ResponseCode = ResponseCode::NoError;
        const NXDOMAIN: ResponseCode = ResponseCode::NXDomain;
        type Case<'a> = (
            &'a str,
            RecordType,
            ResponseCode,
            Vec<&'a str>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "web.ns1.svc.cluster.local.",
                A,
                NOERROR,
                vec!["web.ns1.svc.cluster.local. 5 IN A 10.96.0.10"],
                vec![],
            ),
            (
                "WEB.Ns1.svc.cluster.local",
                A,
                NOERROR,
                vec!["web.ns1.svc.cluster.local. 5 IN A 10.96.0.10"],
                vec![],
            ),
            (
                "web.ns1.svc.cluster.local.",
                AAAA,
                NOERROR,
                vec!["web.ns1.svc.cluster.local. 5 IN AAAA fd00::10"],
                vec![],
            ),
            ("web.ns1.svc.cluster.local.", TXT, NOERROR, vec![], vec![]),
            ("nope.ns1.svc.cluster.local.", A, NXDOMAIN, vec![], vec![]),
            ("web.nope.svc.cluster.local.", A, NXDOMAIN, vec![], vec![]),
            (
                "_http._tcp.web.ns1.svc.cluster.local.",
                SRV,
                NOERROR,
                vec![
                    "_http._tcp.web.ns1.svc.cluster.local. 5 IN SRV 0 100 80 web.ns1.svc.cluster.local.",
                ],
                vec![
                    "web.ns1.svc.cluster.local. 5 IN A 10.96.0.10",
                    "web.ns1.svc.cluster.local. 5 IN AAAA fd00::10",
                ],
            ),
            (
                "_http._udp.web.ns1.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                vec![],
                vec![],
            ),
            (
                "_http._tcp.web.ns1.svc.cluster.local.",
                A,
                NOERROR,
                vec!["_http._tcp.web.ns1.svc.cluster.local. 5 IN A 10.96.0.10"],
                vec![],
            ),
            (
                "web.ns1.svc.cluster.local.",
                SRV,
                NOERROR,
                vec![
                    "web.ns1.svc.cluster.local. 5 IN SRV 0 50 80 web.ns1.svc.cluster.local.",
                    "web.ns1.svc.cluster.local. 5 IN SRV 0 50 53 web.ns1.svc.cluster.local.",
                ],
                vec![
                    "web.ns1.svc.cluster.local. 5 IN A 10.96.0.10",
                    "web.ns1.svc.cluster.local. 5 IN AAAA fd00::10",
                ],
            ),
            (
                "db.ns1.svc.cluster.local.",
                A,
                NOERROR,
                vec![
                    "db.ns1.svc.cluster.local. 5 IN A 10.244.2.6",
                    "db.ns1.svc.cluster.local. 5 IN A 10.244.1.5",
                ],
                vec![],
            ),
            (
                "_pg._tcp.db.ns1.svc.cluster.local.",
                SRV,
                NOERROR,
                vec![
                    "_pg._tcp.db.ns1.svc.cluster.local. 5 IN SRV 0 50 5432 10-244-2-6.db.ns1.svc.cluster.local.",
                    "_pg._tcp.db.ns1.svc.cluster.local. 5 IN SRV 0 50 5432 db-0.db.ns1.svc.cluster.local.",
                ],
                vec![
                    "10-244-2-6.db.ns1.svc.cluster.local. 5 IN A 10.244.2.6",
                    "db-0.db.ns1.svc.cluster.local. 5 IN A 10.244.1.5",
                ],
            ),
            (
                "db-0.db.ns1.svc.cluster.local.",
                A,
                NOERROR,
                vec!["db-0.db.ns1.svc.cluster.local. 5 IN A 10.244.1.5"],
                vec![],
            ),
            (
                "10-244-2-6.db.ns1.svc.cluster.local.",
                A,
                NOERROR,
                vec!["10-244-2-6.db.ns1.svc.cluster.local. 5 IN A 10.244.2.6"],
                vec![],
            ),
            (
                "db-1.db.ns1.svc.cluster.local.",
                A,
                NXDOMAIN,
                vec![],
                vec![],
            ),
            (
                "10-244-1-9.web.ns1.svc.cluster.local.",
                A,
                NOERROR,
                vec!["10-244-1-9.web.ns1.svc.cluster.local. 5 IN A 10.244.1.9"],
                vec![],
            ),
            ("empty.ns1.svc.cluster.local.", A, NXDOMAIN, vec![], vec![]),
            (
                "ext.ns2.svc.cluster.local.",
                A,
                NOERROR,
                vec!["ext.ns2.svc.cluster.local. 5 IN CNAME example.com."],
                vec![],
            ),
            (
                "alias.ns2.svc.cluster.local.",
                A,
                NOERROR,
                vec![
                    "alias.ns2.svc.cluster.local. 5 IN CNAME web.ns1.svc.cluster.local.",
                    "web.ns1.svc.cluster.local. 5 IN A 10.96.0.10",
                ],
                vec![],
            ),
            (
                "10-244-1-5.ns1.pod.cluster.local.",
                A,
                NOERROR,
                vec!["10-244-1-5.ns1.pod.cluster.local. 5 IN A 10.244.1.5"],
                vec![],
            ),
            (
                "fd00--5.ns1.pod.cluster.local.",
                AAAA,
                NOERROR,
                vec!["fd00--5.ns1.pod.cluster.local. 5 IN AAAA fd00::5"],
                vec![],
            ),
            (
                "10-244-1-999.ns1.pod.cluster.local.",
                A,
                NXDOMAIN,
                vec![],
                vec![],
            ),
            ("ns1.svc.cluster.local.", A, NOERROR, vec![], vec![]),
            ("nope.svc.cluster.local.", A, NXDOMAIN, vec![], vec![]),
            ("svc.cluster.local.", A, NOERROR, vec![], vec![]),
            (
                "a.b.c.d.e.f.svc.cluster.local.",
                A,
                NXDOMAIN,
                vec![],
                vec![],
            ),
            (
                "web.ns1.svc.cluster.local.ns1.svc.cluster.local.",
                A,
                NXDOMAIN,
                vec![],
                vec![],
            ),
            ("other.cluster.local.", A, NXDOMAIN, vec![], vec![]),
            (
                "cluster.local.",
                NS,
                NOERROR,
                vec!["cluster.local. 5 IN NS ns.dns.cluster.local."],
                vec![],
            ),
            (
                "cluster.local.",
                SOA,
                NOERROR,
                vec![
                    "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5",
                ],
                vec![],
            ),
            (
                "10.0.96.10.in-addr.arpa.",
                PTR,
                NOERROR,
                vec!["10.0.96.10.in-addr.arpa. 5 IN PTR web.ns1.svc.cluster.local."],
                vec![],
            ),
            (
                "5.1.244.10.in-addr.arpa.",
                PTR,
                NOERROR,
                vec!["5.1.244.10.in-addr.arpa. 5 IN PTR db-0.db.ns1.svc.cluster.local."],
                vec![],
            ),
        ];
        for (name, qtype, code, answers, additionals) in cases {
            let Answer::Authoritative(r) = ask(name, qtype) else {
                panic!("{name} {qtype}: not answered");
            };
            let show = |rs: &[Record]| rs.iter().map(|r| r.to_string()).collect::<Vec<_>>();
            assert_eq!(r.code, code, "{name} {qtype}");
            assert_eq!(show(&r.answers), answers, "{name} {qtype}");
            assert_eq!(show(&r.additionals), additionals, "{name} {qtype}");
            // Negative answers carry the SOA, positive ones do not.
            assert_eq!(
                r.authority.len(),
                usize::from(r.answers.is_empty()),
                "{name} {qtype}"
            );
        }
    }

    #[test]
    fn cname_loops_stop() {
        let Answer::Authoritative(r) = ask("loop.ns2.svc.cluster.local.", RecordType::A) else {
            panic!("not answered");
        };
        assert_eq!(r.answers.len(), MAX_CHASE + 1);
    }

    #[test]
    fn other_names_are_not_ours() {
        for (name, qtype) in [
            ("example.com.", RecordType::A),
            ("cluster.local.example.com.", RecordType::A),
            ("local.", RecordType::SOA),
            ("1.2.3.4.in-addr.arpa.", RecordType::PTR),
            ("10.0.96.10.in-addr.arpa.", RecordType::A),
            ("x.10.0.96.10.in-addr.arpa.", RecordType::PTR),
        ] {
            assert_eq!(ask(name, qtype), Answer::NotOurs, "{name}");
        }
    }

    #[test]
    fn zones_are_checked() {
        assert_eq!(
            Zone::new("Cluster.Local.", 5).unwrap().domain.to_string(),
            "cluster.local."
        );
        assert!(Zone::new("", 5).is_err());
        assert!(Zone::new("a..b", 5).is_err());
    }
}
