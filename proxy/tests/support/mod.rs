//! Shared by the proxy's kernel tests: a lab of two network namespaces joined by a veth pair —
//! "node" (where rules are programmed) and "pods" (TCP servers standing in for endpoints) —
//! removed when dropped, pass or fail. Needs root and `ip`/`iptables` (scripts/install-deps).

// setns(2): std has no way to move a thread into a network namespace, and a socket made by
// that thread stays in it — which is what lets one test process be both client and server.
#![allow(unsafe_code)]
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use miniorch_proxy::apply::Commands;

pub const NODE_IP: &str = "10.250.0.1";
pub const POD_IP: &str = "10.250.0.2";
/// Generous bound so a broken rule fails the test instead of hanging it (not a timing assertion).
pub const CONNECT_LIMIT: Duration = Duration::from_secs(20);

pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/install-deps installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces and a veth pair, removed on drop.
pub struct Lab {
    pub node: String,
    pub pods: String,
    stop: Arc<AtomicBool>,
}

impl Lab {
    pub fn new() -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            node: format!("miniorch-test-proxy-{id}-node"),
            pods: format!("miniorch-test-proxy-{id}-pods"),
            stop: Arc::new(AtomicBool::new(false)),
        };
        run(&["ip", "netns", "add", &lab.node]);
        run(&["ip", "netns", "add", &lab.pods]);
        run(&[
            "ip", "-n", &lab.node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", &lab.pods,
        ]);
        for (ns, ip) in [(&lab.node, NODE_IP), (&lab.pods, POD_IP)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Cluster IPs need a route to exist before OUTPUT's DNAT rewrites them.
        run(&[
            "ip",
            "-n",
            &lab.node,
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            "eth0",
        ]);
        // The node forwards NodePort traffic back out to the pods.
        run(&[
            "ip",
            "netns",
            "exec",
            &lab.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        lab
    }

    pub fn iptables(&self) -> Commands {
        Commands {
            netns: Some(self.node.clone()),
            iptables: None,
        }
    }

    pub fn save(&self, table: &str) -> String {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.node,
            "iptables-save",
            "-t",
            table,
        ])
    }

    /// Servers in "pods" on `ports`, each answering "<port> <client ip>" and closing.
    pub fn serve(&self, ports: &[u16]) {
        for &port in ports {
            let stop = self.stop.clone();
            let listener = in_netns(&self.pods, move || {
                TcpListener::bind((POD_IP, port)).expect("bind in the pods namespace")
            });
            listener.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, peer)) => {
                            let _ = writeln!(s, "{port} {}", peer.ip());
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    }

    /// Connects from namespace `ns` and returns what the server said.
    pub fn get(&self, ns: &str, addr: &str) -> std::io::Result<String> {
        let addr: SocketAddr = addr.parse().unwrap();
        in_netns(ns, move || {
            let mut s = TcpStream::connect_timeout(&addr, CONNECT_LIMIT)?;
            s.set_read_timeout(Some(CONNECT_LIMIT))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out.trim().to_string())
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for ns in [&self.node, &self.pods] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns only changes this thread's network namespace; the fd is valid while
        // `file` lives, and the thread ends when `f` returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}
