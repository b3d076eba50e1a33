//! The pure core of the proxy: Services and EndpointSlices in, `iptables-restore` input out,
//! with kube-proxy's chain layout and names so that `iptables-save` reads like a real node's:
//!
//! - nat `KUBE-SERVICES`: one rule per cluster IP / external IP / load balancer IP, jumping to
//!   the port's policy chain; the last rule sends node-local destinations to `KUBE-NODEPORTS`.
//! - `KUBE-SVC-<hash>` (all ready endpoints) and `KUBE-SVL-<hash>` (this node's, for the
//!   `Local` traffic policies) spread connections with `-m statistic --mode random`, after
//!   `-m recent` checks for ClientIP affinity; `KUBE-EXT-<hash>` handles external traffic.
//! - `KUBE-SEP-<hash>`: marks hairpin traffic for masquerade and DNATs to one endpoint.
//! - `KUBE-MARK-MASQ` / `KUBE-POSTROUTING`: mark now, masquerade on the way out.
//! - filter `KUBE-SERVICES` / `KUBE-EXTERNAL-SERVICES`: REJECT (no endpoints) or DROP (no local
//!   endpoints), so clients fail fast instead of timing out; `KUBE-FORWARD` lets marked and
//!   established traffic through a FORWARD policy of DROP (Docker sets one).
//!
//! Every chain the output names is declared in it, so one `iptables-restore --noflush` call
//! flushes and rebuilds exactly the proxy's chains, atomically, and deletes the stale ones.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use data_encoding::BASE32;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sha2::{Digest, Sha256};

use crate::model::{self, Endpoint, Ipv4Cidr, ServicePort};

/// The fwmark bit that asks `KUBE-POSTROUTING` to masquerade (upstream's bit 14).
pub const MASQ_MARK: &str = "0x4000";

/// Prefixes of the per-service chains the proxy owns in the nat table.
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-SEP-",
    "KUBE-FW-",
];

/// The fixed chains the proxy owns, per table.
pub const NAT_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];
/// The fixed filter chains the proxy owns.
pub const FILTER_CHAINS: [&str; 3] = ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD"];

/// What the rules depend on besides the API objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name: endpoints on it are "local".
    pub node_name: String,
    /// The pod network: traffic to a service from outside it is masqueraded (`None`: only
    /// hairpin and external traffic is).
    pub cluster_cidr: Option<Ipv4Cidr>,
    /// Masquerade all traffic to cluster IPs (upstream's `--masquerade-all`).
    pub masquerade_all: bool,
}

/// A jump from a built-in chain into one of the proxy's, installed once and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JumpRule {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The built-in chain.
    pub chain: &'static str,
    /// The proxy's chain it jumps to.
    pub target: &'static str,
    /// Why it is there, as upstream words it.
    pub comment: &'static str,
    /// Matches before the jump.
    pub matches: &'static [&'static str],
}

impl JumpRule {
    /// The rule as `iptables` arguments (after `-t TABLE -I/-C/-D CHAIN`).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = self.matches.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "-m",
                "comment",
                "--comment",
                self.comment,
                "-j",
                self.target,
            ]
            .map(String::from),
        );
        args
    }
}

const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];

/// Upstream's jumps into the proxy's chains.
pub const JUMP_RULES: [JumpRule; 8] = [
    JumpRule {
        table: "filter",
        chain: "INPUT",
        target: "KUBE-EXTERNAL-SERVICES",
        comment: "kubernetes externally-visible service portals",
        matches: NEW,
    },
    JumpRule {
        table: "filter",
        chain: "FORWARD",
        target: "KUBE-EXTERNAL-SERVICES",
        comment: "kubernetes externally-visible service portals",
        matches: NEW,
    },
    JumpRule {
        table: "filter",
        chain: "FORWARD",
        target: "KUBE-SERVICES",
        comment: "kubernetes service portals",
        matches: NEW,
    },
    JumpRule {
        table: "filter",
        chain: "OUTPUT",
        target: "KUBE-SERVICES",
        comment: "kubernetes service portals",
        matches: NEW,
    },
    JumpRule {
        table: "filter",
        chain: "FORWARD",
        target: "KUBE-FORWARD",
        comment: "kubernetes forwarding rules",
        matches: &[],
    },
    JumpRule {
        table: "nat",
        chain: "OUTPUT",
        target: "KUBE-SERVICES",
        comment: "kubernetes service portals",
        matches: &[],
    },
    JumpRule {
        table: "nat",
        chain: "PREROUTING",
        target: "KUBE-SERVICES",
        comment: "kubernetes service portals",
        matches: &[],
    },
    JumpRule {
        table: "nat",
        chain: "POSTROUTING",
        target: "KUBE-POSTROUTING",
        comment: "kubernetes postrouting rules",
        matches: &[],
    },
];

/// The `iptables-restore` input for these objects on this node (the seam DESIGN.md names).
pub fn render_iptables(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeConfig,
) -> String {
    let model = model::build(services, slices, &node.node_name);
    render(&model.ports, node, &BTreeSet::new())
}

/// kube-proxy's hash for a chain: sha256, base32, first 16 characters.
fn hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut s = BASE32.encode(&digest);
    s.truncate(16);
    s
}

/// The chain names of one service port.
struct Chains {
    svc: String,
    svl: String,
    ext: String,
}

impl Chains {
    fn of(p: &ServicePort) -> Chains {
        let h = hash(&format!("{}{}", p.name, p.protocol.as_str()));
        Chains {
            svc: format!("KUBE-SVC-{h}"),
            svl: format!("KUBE-SVL-{h}"),
            ext: format!("KUBE-EXT-{h}"),
        }
    }
}

/// The chain DNATing one service port's traffic to one endpoint.
fn sep_chain(p: &ServicePort, ep: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        hash(&format!("{}{}{}", p.name, p.protocol.as_str(), ep))
    )
}

/// The chance that rule `i` of the remaining `n` takes the connection, as upstream prints it.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// The text being assembled.
#[derive(Default)]
struct Out {
    filter_rules: Vec<String>,
    nat_chains: Vec<String>,
    nat_rules: Vec<String>,
}

impl Out {
    fn chain(&mut self, name: &str) {
        self.nat_chains.push(name.to_string());
    }
    fn nat(&mut self, rule: String) {
        self.nat_rules.push(rule);
    }
    fn filter(&mut self, rule: String) {
        self.filter_rules.push(rule);
    }
}

/// The `iptables-restore` input for a model; per-service chains in `existing_nat_chains` that
/// are no longer wanted are deleted in the same transaction.
pub fn render(
    ports: &[ServicePort],
    node: &NodeConfig,
    existing_nat_chains: &BTreeSet<String>,
) -> String {
    let mut out = Out::default();
    out.nat(format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    ));
    // Clear the mark so a packet that passes through again is not masqueraded twice.
    out.nat(format!(
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"
    ));
    out.nat(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
            .to_string(),
    );
    out.nat(format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"));
    for p in ports {
        render_port(p, node, &mut out);
    }
    out.nat(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"
            .to_string(),
    );
    out.filter("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".to_string());
    out.filter(format!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    ));
    out.filter(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            .to_string(),
    );

    let wanted: BTreeSet<&str> = out.nat_chains.iter().map(String::as_str).collect();
    let stale: Vec<&String> = existing_nat_chains
        .iter()
        .filter(|c| {
            SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)) && !wanted.contains(c.as_str())
        })
        .collect();

    let mut s = String::new();
    s.push_str("*filter\n");
    for c in FILTER_CHAINS {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for r in &out.filter_rules {
        let _ = writeln!(s, "{r}");
    }
    s.push_str("COMMIT\n*nat\n");
    for c in NAT_CHAINS
        .iter()
        .copied()
        .chain(out.nat_chains.iter().map(String::as_str))
    {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    // Declaring a stale chain flushes it, so nothing it holds keeps its targets alive.
    for c in &stale {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for r in &out.nat_rules {
        let _ = writeln!(s, "{r}");
    }
    for c in &stale {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The input that removes the proxy's chains (`--cleanup`), once the jumps into them are gone.
pub fn render_cleanup(
    existing_filter_chains: &BTreeSet<String>,
    existing_nat_chains: &BTreeSet<String>,
) -> String {
    let ours = |c: &&String, fixed: &[&str]| {
        fixed.contains(&c.as_str()) || SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p))
    };
    let mut s = String::new();
    for (table, existing, fixed) in [
        ("filter", existing_filter_chains, &FILTER_CHAINS[..]),
        ("nat", existing_nat_chains, &NAT_CHAINS[..]),
    ] {
        let chains: Vec<&String> = existing.iter().filter(|c| ours(c, fixed)).collect();
        let _ = writeln!(s, "*{table}");
        for c in &chains {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for c in &chains {
            let _ = writeln!(s, "-X {c}");
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// The rules of one service port.
fn render_port(p: &ServicePort, node: &NodeConfig, out: &mut Out) {
    let chains = Chains::of(p);
    let name = &p.name;
    let proto = p.protocol.as_str();
    let port = p.port;
    let external = p.externally_accessible();

    // Which endpoint sets the policies use, as upstream's CategorizeEndpoints.
    let uses_cluster = !p.internal_local || (external && !p.external_local);
    let uses_local = p.internal_local || (external && p.external_local);
    let cluster_eps: Vec<&Endpoint> = if uses_cluster {
        p.endpoints.iter().collect()
    } else {
        vec![]
    };
    let local_eps: Vec<&Endpoint> = if uses_local {
        p.endpoints.iter().filter(|e| e.local).collect()
    } else {
        vec![]
    };
    let reachable: BTreeSet<&Endpoint> = cluster_eps.iter().chain(&local_eps).copied().collect();
    let has_endpoints = !reachable.is_empty();
    let (internal_chain, has_internal) = if p.internal_local {
        (&chains.svl, !local_eps.is_empty())
    } else {
        (&chains.svc, !cluster_eps.is_empty())
    };
    let (external_policy_chain, has_external) = if p.external_local {
        (&chains.svl, !local_eps.is_empty())
    } else {
        (&chains.svc, !cluster_eps.is_empty())
    };
    let uses_svc = !cluster_eps.is_empty();
    let uses_svl = !local_eps.is_empty();
    let uses_ext = has_endpoints && external;
    let filter_target = |has: bool| {
        if !has_endpoints {
            Some(("REJECT", "has no endpoints"))
        } else if !has {
            Some(("DROP", "has no local endpoints"))
        } else {
            None
        }
    };

    // The cluster IP.
    if let Some(ip) = p.cluster_ip {
        match filter_target(has_internal) {
            None => out.nat(format!(
                "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {port} -j {internal_chain}"
            )),
            Some((target, why)) => out.filter(format!(
                "-A KUBE-SERVICES -m comment --comment \"{name} {why}\" -m {proto} -p {proto} -d {ip} --dport {port} -j {target}"
            )),
        }
    }

    // External and load balancer IPs, then the node port.
    let external_filter = filter_target(has_external);
    for (ips, what) in [
        (&p.external_ips, "external IP"),
        (&p.load_balancer_ips, "loadbalancer IP"),
    ] {
        for ip in ips {
            if has_endpoints {
                out.nat(format!(
                    "-A KUBE-SERVICES -m comment --comment \"{name} {what}\" -m {proto} -p {proto} -d {ip} --dport {port} -j {}",
                    chains.ext
                ));
            }
            if let Some((target, why)) = external_filter {
                out.filter(format!(
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} {why}\" -m {proto} -p {proto} -d {ip} --dport {port} -j {target}"
                ));
            }
        }
    }
    if let Some(node_port) = p.node_port {
        if has_endpoints {
            out.nat(format!(
                "-A KUBE-NODEPORTS -m comment --comment \"{name}\" -m {proto} -p {proto} --dport {node_port} -j {}",
                chains.ext
            ));
        }
        if let Some((target, why)) = external_filter {
            out.filter(format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} {why}\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j {target}"
            ));
        }
    }

    // The external traffic chain.
    if uses_ext {
        let ext = &chains.ext;
        out.chain(ext);
        if !p.external_local {
            // Endpoints may be on other nodes: replies must come back through this one.
            out.nat(format!(
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            ));
        } else if uses_svc {
            // Pods and the node itself may use any endpoint (only outside clients keep their
            // source address and need a local one).
            if let Some(cidr) = node.cluster_cidr {
                out.nat(format!(
                    "-A {ext} -m comment --comment \"pod traffic for {name} external destinations\" -s {cidr} -j {}",
                    chains.svc
                ));
            }
            out.nat(format!(
                "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            ));
            out.nat(format!(
                "-A {ext} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {}",
                chains.svc
            ));
        }
        if has_external {
            out.nat(format!("-A {ext} -j {external_policy_chain}"));
        }
    }

    // The policy chains.
    for (chain, eps, used) in [
        (&chains.svc, &cluster_eps, uses_svc),
        (&chains.svl, &local_eps, uses_svl),
    ] {
        if !used {
            continue;
        }
        out.chain(chain);
        if let Some(ip) = p
            .cluster_ip
            .filter(|_| chain == internal_chain && has_internal)
        {
            // Traffic from outside the pod network must come back through this node.
            let masq = if node.masquerade_all {
                Some(String::new())
            } else {
                node.cluster_cidr.map(|c| format!(" ! -s {c}"))
            };
            if let Some(source) = masq {
                out.nat(format!(
                    "-A {chain} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {port}{source} -j KUBE-MARK-MASQ"
                ));
            }
        }
        endpoint_rules(p, chain, eps, out);
    }

    // One chain per endpoint.
    for ep in reachable {
        let sep = sep_chain(p, ep);
        out.chain(&sep);
        // Hairpin: a pod reaching itself through the service must see the node as the source.
        out.nat(format!(
            "-A {sep} -m comment --comment \"{name}\" -s {} -j KUBE-MARK-MASQ",
            ep.ip
        ));
        let recent = if p.affinity_seconds.is_some() {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        out.nat(format!(
            "-A {sep} -m comment --comment \"{name}\"{recent} -m {proto} -p {proto} -j DNAT --to-destination {ep}"
        ));
    }
}

/// Affinity checks, then the probabilistic spread over `eps` (the last rule always matches).
fn endpoint_rules(p: &ServicePort, chain: &str, eps: &[&Endpoint], out: &mut Out) {
    let name = &p.name;
    if let Some(seconds) = p.affinity_seconds {
        for ep in eps {
            let sep = sep_chain(p, ep);
            out.nat(format!(
                "-A {chain} -m comment --comment \"{name} -> {ep}\" -m recent --name {sep} --rcheck --seconds {seconds} --reap -j {sep}"
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = sep_chain(p, ep);
        let chance = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {}",
                probability(n - i)
            )
        } else {
            String::new()
        };
        out.nat(format!(
            "-A {chain} -m comment --comment \"{name} -> {ep}\"{chance} -j {sep}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::*;

    fn node(cidr: Option<&str>) -> NodeConfig {
        NodeConfig {
            node_name: "n1".into(),
            cluster_cidr: cidr.map(|c| c.parse().unwrap()),
            masquerade_all: false,
        }
    }

    /// The rules of the output, without the fixed ones every output has.
    fn rules(text: &str) -> Vec<String> {
        let fixed = render(&[], &node(Some("10.244.0.0/16")), &BTreeSet::new());
        let fixed: BTreeSet<&str> = fixed.lines().collect();
        text.lines()
            .filter(|l| !fixed.contains(l))
            .map(String::from)
            .collect()
    }

    #[test]
    fn chain_names_are_upstreams() {
        // Names from kube-proxy's own iptables tests.
        assert_eq!(hash("ns1/svc1:p80tcp"), "XPGD46QRK7WJZT7O");
        let p = ServicePort {
            name: "ns1/svc1:p80".into(),
            protocol: model::Protocol::Tcp,
            cluster_ip: None,
            port: 80,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            endpoints: vec![],
        };
        let ep = Endpoint {
            ip: "10.180.0.1".parse().unwrap(),
            port: 80,
            local: false,
        };
        assert_eq!(sep_chain(&p, &ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
    }

    #[test]
    fn probabilities_are_printed_as_upstream() {
        let cases = [
            (2, "0.5000000000"),
            (3, "0.3333333333"),
            (4, "0.2500000000"),
            (7, "0.1428571429"),
        ];
        for (n, want) in cases {
            assert_eq!(probability(n), want);
        }
    }

    #[test]
    fn an_empty_cluster_still_has_the_fixed_chains() {
        let text = render_iptables(&[], &[], &node(None));
        assert_eq!(
            text,
            "*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS
COMMIT
"
        );
    }

    /// Each case: services, slices, the rules expected beyond the fixed ones.
    #[test]
    fn services_render_as_kube_proxy_does() {
        struct Case {
            name: &'static str,
            services: Vec<Service>,
            slices: Vec<EndpointSlice>,
            want: &'static str,
        }
        let cases = vec![
            Case {
                name: "cluster IP, two endpoints",
                services: vec![svc("ns1", "svc1", "172.30.0.41").port("p80", "TCP", 80)],
                slices: vec![
                    slice("ns1", "svc1", "p80", "TCP", 80)
                        .ep("10.180.0.1", "n1")
                        .ep("10.180.0.2", "n2"),
                ],
                want: r#":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-LXVODXWDISEETFEF - [0:0]
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -j KUBE-SEP-LXVODXWDISEETFEF
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment "ns1/svc1:p80" -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment "ns1/svc1:p80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-LXVODXWDISEETFEF -m comment --comment "ns1/svc1:p80" -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-LXVODXWDISEETFEF -m comment --comment "ns1/svc1:p80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80"#,
            },
            Case {
                name: "no endpoints: REJECT in filter, nothing in nat",
                services: vec![svc("ns1", "svc1", "172.30.0.41").port("p80", "UDP", 80)],
                slices: vec![slice("ns1", "svc1", "p80", "UDP", 80).ep_cond(
                    "10.180.0.1",
                    "n1",
                    Some(false),
                    None,
                )],
                want: r#"-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m udp -p udp -d 172.30.0.41 --dport 80 -j REJECT"#,
            },
            Case {
                name: "ClientIP affinity",
                services: vec![
                    svc("ns1", "s", "10.96.0.5")
                        .port("", "SCTP", 7)
                        .affinity(Some(600)),
                ],
                slices: vec![slice("ns1", "s", "", "SCTP", 7007).ep("10.244.1.5", "n1")],
                want: r#":KUBE-SVC-MOFYBHXWEUBH4GLR - [0:0]
:KUBE-SEP-F5JPH7W4FMVBUEBN - [0:0]
-A KUBE-SERVICES -m comment --comment "ns1/s cluster IP" -m sctp -p sctp -d 10.96.0.5 --dport 7 -j KUBE-SVC-MOFYBHXWEUBH4GLR
-A KUBE-SVC-MOFYBHXWEUBH4GLR -m comment --comment "ns1/s cluster IP" -m sctp -p sctp -d 10.96.0.5 --dport 7 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-MOFYBHXWEUBH4GLR -m comment --comment "ns1/s -> 10.244.1.5:7007" -m recent --name KUBE-SEP-F5JPH7W4FMVBUEBN --rcheck --seconds 600 --reap -j KUBE-SEP-F5JPH7W4FMVBUEBN
-A KUBE-SVC-MOFYBHXWEUBH4GLR -m comment --comment "ns1/s -> 10.244.1.5:7007" -j KUBE-SEP-F5JPH7W4FMVBUEBN
-A KUBE-SEP-F5JPH7W4FMVBUEBN -m comment --comment "ns1/s" -s 10.244.1.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-F5JPH7W4FMVBUEBN -m comment --comment "ns1/s" -m recent --name KUBE-SEP-F5JPH7W4FMVBUEBN --set -m sctp -p sctp -j DNAT --to-destination 10.244.1.5:7007"#,
            },
            Case {
                name: "NodePort and external IP, cluster policy",
                services: vec![
                    svc("ns2", "svc2", "172.30.0.42")
                        .kind("NodePort")
                        .node_port("p80", "TCP", 80, 3001)
                        .external_ips(&["192.168.99.11"]),
                ],
                slices: vec![slice("ns2", "svc2", "p80", "TCP", 8080).ep("10.180.0.2", "n2")],
                want: r#":KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SEP-RR5ESBN2QYJ2YHXN - [0:0]
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80" -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade traffic for ns2/svc2:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:8080" -j KUBE-SEP-RR5ESBN2QYJ2YHXN
-A KUBE-SEP-RR5ESBN2QYJ2YHXN -m comment --comment "ns2/svc2:p80" -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RR5ESBN2QYJ2YHXN -m comment --comment "ns2/svc2:p80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:8080"#,
            },
            Case {
                name: "NodePort without endpoints: REJECT for both",
                services: vec![
                    svc("ns2", "svc2", "172.30.0.42")
                        .kind("NodePort")
                        .node_port("p80", "TCP", 80, 3001),
                ],
                slices: vec![],
                want: r#"-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j REJECT"#,
            },
            Case {
                name: "externalTrafficPolicy Local with a local endpoint",
                services: vec![
                    svc("ns3", "svc3", "172.30.0.43")
                        .kind("LoadBalancer")
                        .node_port("p80", "TCP", 80, 3003)
                        .lb_ip("1.2.3.4")
                        .etp_local(),
                ],
                slices: vec![
                    slice("ns3", "svc3", "p80", "TCP", 80)
                        .ep("10.180.0.3", "n1")
                        .ep("10.180.0.4", "n2"),
                ],
                want: r#":KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVL-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-QWDKEFUM2O5ZNFM4 - [0:0]
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment "ns3/svc3:p80" -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "pod traffic for ns3/svc3:p80 external destinations" -s 10.244.0.0/16 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade LOCAL traffic for ns3/svc3:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "route LOCAL traffic for ns3/svc3:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVL-X27LE4BHSL4DOUIK
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.4:80" -j KUBE-SEP-QWDKEFUM2O5ZNFM4
-A KUBE-SVL-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment "ns3/svc3:p80" -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment "ns3/svc3:p80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-QWDKEFUM2O5ZNFM4 -m comment --comment "ns3/svc3:p80" -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-QWDKEFUM2O5ZNFM4 -m comment --comment "ns3/svc3:p80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80"#,
            },
            Case {
                name: "externalTrafficPolicy Local, no local endpoint: DROP external, still serve pods",
                services: vec![
                    svc("ns3", "svc3", "172.30.0.43")
                        .kind("NodePort")
                        .node_port("p80", "TCP", 80, 3003)
                        .etp_local(),
                ],
                slices: vec![slice("ns3", "svc3", "p80", "TCP", 80).ep("10.180.0.4", "n2")],
                want: r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns3/svc3:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3003 -j DROP
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SEP-QWDKEFUM2O5ZNFM4 - [0:0]
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment "ns3/svc3:p80" -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "pod traffic for ns3/svc3:p80 external destinations" -s 10.244.0.0/16 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade LOCAL traffic for ns3/svc3:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "route LOCAL traffic for ns3/svc3:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.4:80" -j KUBE-SEP-QWDKEFUM2O5ZNFM4
-A KUBE-SEP-QWDKEFUM2O5ZNFM4 -m comment --comment "ns3/svc3:p80" -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-QWDKEFUM2O5ZNFM4 -m comment --comment "ns3/svc3:p80" -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80"#,
            },
            Case {
                name: "internalTrafficPolicy Local without a local endpoint: DROP",
                services: vec![
                    svc("ns4", "svc4", "172.30.0.44")
                        .port("p80", "TCP", 80)
                        .itp_local(),
                ],
                slices: vec![slice("ns4", "svc4", "p80", "TCP", 80).ep("10.180.0.4", "n2")],
                want: r#"-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j REJECT"#,
            },
        ];
        for case in cases {
            let text = render_iptables(&case.services, &case.slices, &node(Some("10.244.0.0/16")));
            let got = rules(&text).join("\n");
            assert_eq!(
                got, case.want,
                "case {:?}; whole output:\n{text}",
                case.name
            );
        }
    }

    #[test]
    fn masquerade_all_and_no_cluster_cidr() {
        let services = [svc("ns1", "s", "10.96.0.5").port("p", "TCP", 80)];
        let slices = [slice("ns1", "s", "p", "TCP", 80).ep("10.244.1.5", "n1")];
        let text = render_iptables(&services, &slices, &node(None));
        assert!(
            !text.contains("cluster IP\" -m tcp -p tcp -d 10.96.0.5 --dport 80 -j KUBE-MARK-MASQ"),
            "{text}"
        );
        assert!(!text.contains("! -s"), "{text}");
        let mut all = node(None);
        all.masquerade_all = true;
        let text = render_iptables(&services, &slices, &all);
        assert!(
            text.contains(
                "\"ns1/s:p cluster IP\" -m tcp -p tcp -d 10.96.0.5 --dport 80 -j KUBE-MARK-MASQ"
            ),
            "{text}"
        );
    }

    #[test]
    fn stale_service_chains_are_deleted_and_foreign_chains_left_alone() {
        let services = [svc("ns1", "svc1", "172.30.0.41").port("p80", "TCP", 80)];
        let slices = [slice("ns1", "svc1", "p80", "TCP", 80).ep("10.180.0.1", "n1")];
        let model = model::build(&services, &slices, "n1");
        let existing: BTreeSet<String> = [
            "KUBE-SVC-XPGD46QRK7WJZT7O",
            "KUBE-SEP-OLDOLDOLDOLDOLDO",
            "KUBE-SVL-OLDOLDOLDOLDOLDO",
            "DOCKER",
            "KUBE-MARK-DROP",
        ]
        .map(String::from)
        .into();
        let text = render(&model.ports, &node(None), &existing);
        let deleted: Vec<&str> = text.lines().filter(|l| l.starts_with("-X")).collect();
        assert_eq!(
            deleted,
            [
                "-X KUBE-SEP-OLDOLDOLDOLDOLDO",
                "-X KUBE-SVL-OLDOLDOLDOLDOLDO"
            ]
        );
        assert!(text.contains(":KUBE-SEP-OLDOLDOLDOLDOLDO - [0:0]\n"));
        assert!(!text.contains("DOCKER") && !text.contains("KUBE-MARK-DROP"));
        // Deletions come after every rule, so nothing in the input still refers to them.
        let last_rule = text.rfind("\n-A ").unwrap();
        assert!(text.find("\n-X ").unwrap() > last_rule);
    }

    #[test]
    fn cleanup_removes_only_the_proxys_chains() {
        let filter: BTreeSet<String> = ["KUBE-SERVICES", "KUBE-FORWARD", "DOCKER-USER"]
            .map(String::from)
            .into();
        let nat: BTreeSet<String> = [
            "KUBE-SERVICES",
            "KUBE-SVC-AAAAAAAAAAAAAAAA",
            "KUBE-MARK-MASQ",
            "DOCKER",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            render_cleanup(&filter, &nat),
            "*filter
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-X KUBE-FORWARD
-X KUBE-SERVICES
COMMIT
*nat
:KUBE-MARK-MASQ - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]
-X KUBE-MARK-MASQ
-X KUBE-SERVICES
-X KUBE-SVC-AAAAAAAAAAAAAAAA
COMMIT
"
        );
    }

    #[test]
    fn jump_rules_read_as_iptables_arguments() {
        assert_eq!(
            JUMP_RULES[0].args().join(" "),
            "-m conntrack --ctstate NEW -m comment --comment kubernetes externally-visible service portals -j KUBE-EXTERNAL-SERVICES"
        );
    }
}
