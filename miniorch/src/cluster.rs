//! What `miniorch up` leaves in its data directory and `down`/`status` read back: the cluster
//! file (id, ports, node name), one pid file and one log file per component.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The components `up` starts, in start order (`down` stops them in reverse).
pub const COMPONENTS: &[&str] = &["store", "apiserver", "scheduler", "controller", "agent"];

/// Ports of one cluster, all on 127.0.0.1 (the agent API on the node IP).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Ports {
    pub store: u16,
    pub store_peer: u16,
    pub apiserver: u16,
    pub scheduler: u16,
    pub controller: u16,
    pub agent: u16,
    /// The agent API (logs, exec, stats); cluster files from before it get the standard port.
    #[serde(default = "default_kubelet_port")]
    pub kubelet: u16,
}

fn default_kubelet_port() -> u16 {
    Ports::DEFAULT.kubelet
}

impl Ports {
    /// Upstream's well-known ports.
    pub const DEFAULT: Ports = Ports {
        store: 2379,
        store_peer: 2380,
        apiserver: 6443,
        scheduler: 10259,
        controller: 10257,
        agent: 10248,
        kubelet: 10250,
    };

    /// Seven consecutive ports from `base` (for a second cluster, or tests).
    pub fn from_base(base: u16) -> anyhow::Result<Ports> {
        anyhow::ensure!(
            (1024..=u16::MAX - 7).contains(&base),
            "--port-base must be between 1024 and {}",
            u16::MAX - 7
        );
        Ok(Ports {
            store: base,
            store_peer: base + 1,
            apiserver: base + 2,
            scheduler: base + 3,
            controller: base + 4,
            agent: base + 5,
            kubelet: base + 6,
        })
    }

    pub fn named(&self) -> [(&'static str, u16); 7] {
        [
            ("store", self.store),
            ("store peer", self.store_peer),
            ("apiserver", self.apiserver),
            ("scheduler", self.scheduler),
            ("controller", self.controller),
            ("agent", self.agent),
            ("agent API", self.kubelet),
        ]
    }

    /// The first port something else already listens on.
    pub fn first_in_use(&self) -> Option<(&'static str, u16)> {
        self.named()
            .into_iter()
            .find(|(_, p)| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, *p))).is_err())
    }
}

/// The cluster file, `<data-dir>/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// Labels every container and network the agent makes, so `down` finds them.
    pub id: String,
    pub ports: Ports,
    pub node_name: String,
}

impl Cluster {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("cluster.json")
    }

    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Cluster>> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is damaged; remove it to start afresh", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(data_dir);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.apiserver)
    }
}

pub fn pid_file(data_dir: &Path, component: &str) -> PathBuf {
    data_dir.join("run").join(format!("{component}.pid"))
}

pub fn log_file(data_dir: &Path, component: &str) -> PathBuf {
    data_dir.join("logs").join(format!("{component}.log"))
}

/// The pid of a component if its process is alive and is that component (not a reused pid).
pub fn running_pid(data_dir: &Path, component: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(data_dir, component))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.first().is_some_and(|a| a.ends_with(b"miniorch"))
        && args.get(1).is_some_and(|a| *a == component.as_bytes());
    // A zombie has exited; it only waits to be reaped.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = state
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    (ours && !zombie).then_some(pid)
}

/// The kubeconfig `up` writes: plain HTTP to the local apiserver for now.
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: miniorch\n  cluster:\n    server: {server}\ncontexts:\n- name: miniorch\n  context:\n    cluster: miniorch\n    user: admin\n    namespace: default\ncurrent-context: miniorch\nusers:\n- name: admin\n  user: {{}}\n"
    )
}

/// A fresh cluster id: 8 hex digits.
pub fn new_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_a_base_are_consecutive() {
        let p = Ports::from_base(20000).unwrap();
        assert_eq!(
            (p.store, p.store_peer, p.apiserver, p.agent, p.kubelet),
            (20000, 20001, 20002, 20005, 20006)
        );
        assert!(Ports::from_base(80).is_err());
    }

    #[test]
    fn cluster_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Cluster::load(dir.path()).unwrap().is_none());
        let c = Cluster {
            id: new_id(),
            ports: Ports::DEFAULT,
            node_name: "n1".into(),
        };
        c.save(dir.path()).unwrap();
        let back = Cluster::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (back.id, back.ports, back.node_name),
            (c.id, c.ports, c.node_name)
        );
        // A cluster file from before the agent API had a port still loads.
        std::fs::write(
            Cluster::path(dir.path()),
            br#"{"id":"x","nodeName":"n1","ports":{"store":1,"storePeer":2,"apiserver":3,"scheduler":4,"controller":5,"agent":6}}"#,
        )
        .unwrap();
        assert_eq!(
            Cluster::load(dir.path()).unwrap().unwrap().ports.kubelet,
            10250
        );
        std::fs::write(Cluster::path(dir.path()), b"{oops").unwrap();
        assert!(Cluster::load(dir.path()).is_err());
    }

    #[test]
    fn kubeconfig_parses() {
        let k: kube::config::Kubeconfig =
            serde_saphyr::from_str(&kubeconfig("http://127.0.0.1:6443")).unwrap();
        assert_eq!(k.current_context.as_deref(), Some("miniorch"));
    }
}
