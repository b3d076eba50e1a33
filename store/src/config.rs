//! Command-line configuration with etcd's flag names and defaults, and the pure parsing of what
//! they mean: URLs, the initial cluster, member and cluster IDs.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// How `miniorch-store` (or `miniorch store`) is configured. Flags mirror etcd's.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "miniorch-store",
    version,
    about = "Raft-replicated key-value store speaking the etcd v3 API"
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: <name>.etcd].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, default_value = "http://localhost:2379")]
    pub listen_client_urls: String,

    /// This member's client URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,

    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,

    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping, `name=url,...`
    /// [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long)]
    pub initial_cluster: Option<String>,

    /// Initial cluster state: `new` bootstraps a cluster, `existing` joins one.
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,

    /// Initial cluster token, which makes member and cluster IDs unique per cluster.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to time out.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed transactions to trigger a snapshot (the log before it is purged).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Entries kept in the log after a snapshot, so slow followers catch up from the log.
    #[arg(long = "experimental-snapshot-catchup-entries", default_value_t = 5000)]
    pub snapshot_catchup_entries: u64,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1_572_864)]
    pub max_request_bytes: usize,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Raise an alarm when the database file exceeds this size in bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    pub quota_backend_bytes: i64,

    /// Period of progress notifications to watchers that asked for them (etcd's duration
    /// syntax: 500ms, 10s, 10m, 1h).
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub watch_progress_notify_interval: Duration,

    /// Memory for the database page cache, in bytes. Pages it drops are still in the
    /// kernel's page cache, so a small one costs a read syscall, not a disk read.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub cache_bytes: usize,
}

/// A configuration error, in terms of the flag that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {detail}")]
    Flag { flag: &'static str, detail: String },
}

fn flag_err(flag: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Flag {
        flag,
        detail: detail.into(),
    }
}

/// Whether this member starts a cluster or joins one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// What the flags mean once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub data_dir: PathBuf,
    pub client_listen: Vec<SocketAddr>,
    pub peer_listen: Vec<SocketAddr>,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    /// Initial members by ID: (name, peer URLs).
    pub initial: BTreeMap<u64, (String, Vec<String>)>,
    pub member_id: u64,
    pub cluster_id: u64,
    pub state: ClusterState,
}

impl Config {
    /// Checks the flags and derives the plan (resolves listen addresses).
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        if self.name.is_empty() {
            return Err(flag_err("name", "must not be empty"));
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)));
        let client_urls = parse_urls("advertise-client-urls", &self.advertise_client_urls)?;
        let peer_urls = parse_urls(
            "initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
        )?;
        let client_listen = listen_addrs("listen-client-urls", &self.listen_client_urls)?;
        let peer_listen = listen_addrs("listen-peer-urls", &self.listen_peer_urls)?;
        let cluster = match &self.initial_cluster {
            Some(c) => c.clone(),
            None => peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(","),
        };
        let members = parse_initial_cluster(&cluster)?;
        let Some(mine) = members.get(&self.name) else {
            return Err(flag_err(
                "initial-cluster",
                format!("has no member named {:?} (this member's --name)", self.name),
            ));
        };
        let mut mine_sorted = mine.clone();
        mine_sorted.sort();
        let mut advertised = peer_urls.clone();
        advertised.sort();
        if mine_sorted != advertised {
            return Err(flag_err(
                "initial-cluster",
                format!(
                    "member {:?} has peer URLs {:?} but --initial-advertise-peer-urls is {:?}",
                    self.name, mine, peer_urls
                ),
            ));
        }
        let mut initial = BTreeMap::new();
        for (name, urls) in &members {
            let id = member_id(urls, &self.initial_cluster_token);
            if initial.insert(id, (name.clone(), urls.clone())).is_some() {
                return Err(flag_err(
                    "initial-cluster",
                    format!("member {name:?} repeats another member's peer URLs"),
                ));
            }
        }
        let member_id = member_id(&peer_urls, &self.initial_cluster_token);
        let cluster_id = cluster_id(initial.keys().copied());
        let state = match self.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(flag_err(
                    "initial-cluster-state",
                    format!("{other:?} is neither \"new\" nor \"existing\""),
                ));
            }
        };
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(flag_err(
                "election-timeout",
                "must be at least 5 times --heartbeat-interval (and the interval above 0)",
            ));
        }
        Ok(Plan {
            data_dir,
            client_listen,
            peer_listen,
            client_urls,
            peer_urls,
            initial,
            member_id,
            cluster_id,
            state,
        })
    }
}

/// Splits and checks a comma-separated URL list (http only).
pub fn parse_urls(flag: &'static str, s: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for raw in s.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        host_port(flag, raw)?;
        out.push(raw.trim_end_matches('/').to_string());
    }
    if out.is_empty() {
        return Err(flag_err(flag, "no URL given"));
    }
    Ok(out)
}

/// The host and port of an `http://host:port` URL.
pub fn host_port(flag: &'static str, url: &str) -> Result<(String, u16), ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| flag_err(flag, format!("{url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(flag_err(
                flag,
                format!("{url:?}: TLS is not supported yet; use http://"),
            ));
        }
        _ => return Err(flag_err(flag, format!("{url:?} must start with http://"))),
    }
    let host = uri
        .host()
        .ok_or_else(|| flag_err(flag, format!("{url:?} has no host")))?;
    let port = uri
        .port_u16()
        .ok_or_else(|| flag_err(flag, format!("{url:?} has no port")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, port))
}

/// Addresses to listen on for a URL list; `localhost` means the loopback address as in etcd.
pub fn listen_addrs(flag: &'static str, s: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for url in parse_urls(flag, s)? {
        let (host, port) = host_port(flag, &url)?;
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| flag_err(flag, format!("cannot resolve {host:?}: {e}")))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| flag_err(flag, format!("{host:?} resolves to no address")))?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Parses `name=url,name=url,...`; a name may repeat to give a member several URLs.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(flag_err(
                "initial-cluster",
                format!("{part:?} is not name=url"),
            ));
        };
        if name.is_empty() {
            return Err(flag_err(
                "initial-cluster",
                format!("{part:?} has an empty name"),
            ));
        }
        let url = parse_urls("initial-cluster", url)?.remove(0);
        members.entry(name.to_string()).or_default().push(url);
    }
    if members.is_empty() {
        return Err(flag_err("initial-cluster", "no member given"));
    }
    Ok(members)
}

/// FNV-1a, 64 bits: a stable hash so every member derives the same IDs from the same flags.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A member's ID from its peer URLs and the cluster token (as etcd derives it, with a
/// different hash). Never 0, which means "no member" in the API.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    fnv1a(&b).max(1)
}

/// The cluster's ID from its initial members' IDs.
pub fn cluster_id(ids: impl IntoIterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = ids.into_iter().collect();
    ids.sort_unstable();
    let b: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    fnv1a(&b).max(1)
}

/// Parses Go-style durations: `500ms`, `10s`, `10m`, `1h`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?}: missing unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("{s:?}: expected a number"));
        }
        let n: u64 = rest[..digits].parse().map_err(|e| format!("{s:?}: {e}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            other => return Err(format!("{s:?}: unknown unit {other:?}")),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_match_etcd() {
        let c = Config::parse_from(["miniorch-store"]);
        let p = c.plan().unwrap();
        assert_eq!(p.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(p.client_listen, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(p.peer_listen, vec!["127.0.0.1:2380".parse().unwrap()]);
        assert_eq!(p.initial.len(), 1);
        assert_eq!(p.state, ClusterState::New);
        let (name, urls) = &p.initial[&p.member_id];
        assert_eq!(
            (name.as_str(), urls.as_slice()),
            ("default", &["http://localhost:2380".to_string()][..])
        );
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn initial_cluster_parsing() {
        let cases: Vec<(&str, Result<Vec<(&str, usize)>, &str>)> = vec![
            ("a=http://h:1", Ok(vec![("a", 1)])),
            (
                "a=http://h:1,b=http://h:2,a=http://h:3",
                Ok(vec![("a", 2), ("b", 1)]),
            ),
            ("a", Err("is not name=url")),
            ("=http://h:1", Err("empty name")),
            ("a=ftp://h:1", Err("must start with http://")),
            ("a=https://h:1", Err("TLS is not supported")),
            ("a=http://h", Err("has no port")),
            ("", Err("no member")),
        ];
        for (input, want) in cases {
            let got = parse_initial_cluster(input);
            match (got, want) {
                (Ok(m), Ok(w)) => {
                    let m: Vec<(&str, usize)> =
                        m.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
                    assert_eq!(m, w, "{input}");
                }
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = member_id(&["http://10.0.0.1:2380".into()], "etcd-cluster");
        let b = member_id(&["http://10.0.0.2:2380".into()], "etcd-cluster");
        let a2 = member_id(&["http://10.0.0.1:2380".into()], "other");
        assert_ne!(a, b);
        assert_ne!(a, a2);
        assert_eq!(
            a,
            member_id(&["http://10.0.0.1:2380".into()], "etcd-cluster")
        );
        assert_eq!(cluster_id([a, b]), cluster_id([b, a]));
    }

    #[test]
    fn plan_errors_name_the_flag() {
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (
                vec![
                    "--name",
                    "x",
                    "--initial-cluster",
                    "y=http://localhost:2380",
                ],
                "--initial-cluster",
            ),
            (
                vec!["--listen-client-urls", "localhost:2379"],
                "--listen-client-urls",
            ),
            (vec!["--election-timeout", "100"], "--election-timeout"),
            (vec!["--name", ""], "--name"),
        ];
        for (args, flag) in cases {
            let c =
                Config::parse_from(std::iter::once("miniorch-store").chain(args.iter().copied()));
            let e = c.plan().unwrap_err();
            assert!(e.to_string().starts_with(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Some(Duration::from_millis(500))),
            ("10s", Some(Duration::from_secs(10))),
            ("10m", Some(Duration::from_secs(600))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("10", None),
            ("s", None),
            ("5d", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s).ok(), want, "{s}");
        }
    }
}
