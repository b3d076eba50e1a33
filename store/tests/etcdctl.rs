//! The real `etcdctl` (Debian package etcd-client) against `miniorch-store`: what users type,
//! and what etcdctl prints.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Kind, Server, etcdctl_path};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn b64(s: &str) -> String {
    // etcdctl's JSON output carries keys and values base64-encoded.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn put_get_del() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    assert_eq!(s.ctl_ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(s.ctl_ok(&["put", "foo", "baz"]), "OK\n");
    assert_eq!(s.ctl_ok(&["put", "foo2", "x"]), "OK\n");
    assert_eq!(s.ctl_ok(&["put", "other", "y"]), "OK\n");
    assert_eq!(s.ctl_ok(&["get", "foo"]), "foo\nbaz\n");
    assert_eq!(s.ctl_ok(&["get", "--prefix", "foo"]), "foo\nbaz\nfoo2\nx\n");
    assert_eq!(
        s.ctl_ok(&["get", "--prefix", "foo", "--print-value-only"]),
        "baz\nx\n"
    );
    // Revision 2 is the first write of a fresh store.
    assert_eq!(s.ctl_ok(&["get", "foo", "--rev", "2"]), "foo\nbar\n");
    assert_eq!(s.ctl_ok(&["get", "foo2", "--rev", "3"]), "");
    assert_eq!(
        s.ctl_ok(&["get", "--prefix", "foo", "--limit", "1"]),
        "foo\nbaz\n"
    );
    let limited = json(&s.ctl_ok(&["get", "--prefix", "foo", "--limit", "1", "-w", "json"]));
    assert_eq!(limited["more"], true);
    assert_eq!(limited["count"], 2);
    assert_eq!(limited["header"]["revision"], 5);
    assert_eq!(limited["kvs"][0]["key"], b64("foo"));
    assert_eq!(limited["kvs"][0]["value"], b64("baz"));
    assert_eq!(limited["kvs"][0]["create_revision"], 2);
    assert_eq!(limited["kvs"][0]["mod_revision"], 3);
    assert_eq!(limited["kvs"][0]["version"], 2);
    // etcdctl 3.4 has no --count-only (3.5 added it; the gRPC count_only is covered by the
    // semantics tests); the count of a range comes with every JSON answer.
    let counted = json(&s.ctl_ok(&["get", "--prefix", "fo", "--keys-only", "-w", "json"]));
    assert_eq!(counted["count"], 2);
    assert!(counted["kvs"][0].get("value").is_none());
    let all = s.ctl_ok(&["get", "", "--prefix", "--keys-only"]);
    assert_eq!(all, "foo\n\nfoo2\n\nother\n\n");
    assert_eq!(s.ctl_ok(&["del", "foo"]), "1\n");
    assert_eq!(s.ctl_ok(&["del", "foo"]), "0\n");
    assert_eq!(s.ctl_ok(&["get", "foo"]), "");
    assert_eq!(s.ctl_ok(&["put", "foo3", "z"]), "OK\n");
    assert_eq!(
        s.ctl_ok(&["del", "--prefix", "foo", "--prev-kv"]),
        "2\nfoo2\nx\nfoo3\nz\n"
    );
    assert_eq!(s.ctl_ok(&["get", "--prefix", "foo"]), "");
    assert_eq!(s.ctl_ok(&["get", "--prefix", ""]), "other\ny\n");
    // A historical read still sees what was deleted.
    assert_eq!(
        s.ctl_ok(&["get", "--prefix", "foo", "--rev", "5"]),
        "foo\nbaz\nfoo2\nx\n"
    );
}

/// Reads `etcdctl watch` output line by line while other clients write.
struct Watch {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(s: &Server, args: &[&str]) -> Watch {
        let mut child = Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(s.endpoint())
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl watch");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watch { child, lines }
    }

    /// The next `n` lines (fails rather than hanging forever if they never come).
    fn next(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.lines
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("watch printed only {i} of {n} expected lines"))
            })
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_live_history_prefix_and_prev_kv() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    s.ctl_ok(&["put", "w/a", "1"]); // rev 2
    s.ctl_ok(&["put", "w/a", "2"]); // rev 3
    s.ctl_ok(&["put", "x", "not watched"]); // rev 4
    s.ctl_ok(&["del", "w/a"]); // rev 5

    // From a past revision: the history first, then live events with no gap.
    let w = Watch::start(&s, &["--prefix", "w/", "--rev", "2", "--prev-kv"]);
    assert_eq!(w.next(3), ["PUT", "w/a", "1"]);
    assert_eq!(w.next(5), ["PUT", "w/a", "1", "w/a", "2"]);
    assert_eq!(w.next(5), ["DELETE", "w/a", "2", "w/a", ""]);
    s.ctl_ok(&["put", "w/b", "live"]);
    assert_eq!(w.next(3), ["PUT", "w/b", "live"]);
    s.ctl_ok(&["put", "w/b", "again"]);
    assert_eq!(w.next(5), ["PUT", "w/b", "live", "w/b", "again"]);

    // Live only, single key.
    let single = Watch::start(&s, &["w/c"]);
    // The watch is set up once etcdctl has connected; writes after the first event count.
    let mut seen = Vec::new();
    for i in 0..50 {
        s.ctl_ok(&["put", "w/c", &format!("v{i}")]);
        if let Ok(line) = single.lines.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
            break;
        }
    }
    assert_eq!(seen, ["PUT"]);
    let rest = single.next(2);
    assert_eq!(rest[0], "w/c");
    s.ctl_ok(&["del", "w/c"]);
    assert_eq!(single.next(3), ["DELETE", "w/c", ""]);
}

#[test]
fn watch_from_compacted_revision_is_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    for i in 0..5 {
        s.ctl_ok(&["put", "k", &i.to_string()]);
    }
    assert_eq!(s.ctl_ok(&["compact", "4"]), "compacted revision 4\n");
    let out = s.ctl(&["watch", "k", "--rev", "2"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("required revision has been compacted"),
        "etcdctl said: {text}"
    );
    let get = s.ctl(&["get", "k", "--rev", "3"]);
    assert!(!get.status.success());
    assert!(
        String::from_utf8_lossy(&get.stderr)
            .contains("etcdserver: mvcc: required revision has been compacted")
    );
    assert_eq!(s.ctl_ok(&["get", "k", "--rev", "4"]), "k\n2\n");
}

#[test]
fn txn_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    s.ctl_ok(&["put", "key", "v1"]); // rev 2
    s.ctl_ok(&["put", "key", "v2"]); // rev 3, version 2
    let txn = |input: &str| {
        let out = s.ctl_stdin(&["txn"], Some(input));
        assert!(
            out.status.success(),
            "txn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // (compares, success/failure branch taken)
    let cases = [
        ("mod(\"key\") = \"3\"", true),
        ("mod(\"key\") < \"3\"", false),
        ("mod(\"key\") > \"2\"", true),
        ("version(\"key\") = \"2\"", true),
        ("version(\"key\") = \"1\"", false),
        ("create(\"key\") = \"2\"", true),
        ("create(\"key\") != \"2\"", false),
        ("value(\"key\") = \"v2\"", true),
        ("create(\"missing\") = \"0\"", true),
        ("version(\"key\") = \"2\"\nmod(\"key\") = \"2\"", false),
    ];
    for (i, (cmp, ok)) in cases.iter().enumerate() {
        let input = format!("{cmp}\n\nput out/{i} success\n\nput out/{i} failure\n\n");
        let want = if *ok {
            "SUCCESS\n\nOK\n"
        } else {
            "FAILURE\n\nOK\n"
        };
        assert_eq!(txn(&input), want, "{cmp}");
        let value = if *ok { "success" } else { "failure" };
        assert_eq!(
            s.ctl_ok(&["get", &format!("out/{i}"), "--print-value-only"]),
            format!("{value}\n")
        );
    }
    // Several operations in one branch share one revision.
    let before = json(&s.ctl_ok(&["get", "key", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .unwrap();
    let out = txn("mod(\"key\") = \"3\"\n\nput a 1\nput b 2\ndel key\nget a\n\nput c 3\n\n");
    assert_eq!(out, "SUCCESS\n\nOK\n\nOK\n\n1\n\na\n1\n");
    let after = json(&s.ctl_ok(&["get", "a", "-w", "json"]));
    assert_eq!(after["header"]["revision"].as_i64().unwrap(), before + 1);
    assert_eq!(
        after["kvs"][0]["mod_revision"].as_i64().unwrap(),
        before + 1
    );
    assert_eq!(s.ctl_ok(&["get", "key"]), "");
    assert_eq!(s.ctl_ok(&["get", "c"]), "");
}

#[test]
fn endpoint_status_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    s.ctl_ok(&["put", "a", "1"]);
    let table = s.ctl_ok(&["endpoint", "status", "-w", "table"]);
    let header = table.lines().nth(1).expect("header row");
    for col in [
        "ENDPOINT",
        "ID",
        "VERSION",
        "DB SIZE",
        "IS LEADER",
        "RAFT TERM",
        "RAFT INDEX",
    ] {
        assert!(header.contains(col), "missing column {col}: {table}");
    }
    let row: Vec<String> = table
        .lines()
        .nth(3)
        .expect("data row")
        .split('|')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(row[0], s.endpoint(), "{table}");
    let id = u64::from_str_radix(&row[1], 16).expect("member ID in hex");
    assert_eq!(row[4], "true", "is leader: {table}");
    assert!(row[6].parse::<u64>().unwrap() >= 1, "raft term: {table}");
    assert!(row[7].parse::<u64>().unwrap() >= 2, "raft index: {table}");
    // The JSON form carries the store revision in its header.
    let status = json(&s.ctl_ok(&["endpoint", "status", "-w", "json"]));
    assert_eq!(status[0]["Status"]["header"]["revision"], 2);
    assert_eq!(
        status[0]["Status"]["header"]["member_id"].as_u64(),
        Some(id)
    );
    let health = s.ctl(&["endpoint", "health"]);
    assert!(health.status.success());
    // etcdctl 3.4 prints the health line on stderr.
    let said = String::from_utf8_lossy(&health.stdout).to_string()
        + &String::from_utf8_lossy(&health.stderr);
    assert!(said.contains("is healthy"), "{said}");
    // `snapshot save` accepts the stream (data padded to 512 bytes, then its SHA-256).
    let snap = dir.path().join("snap.db");
    let out = s.ctl(&["snapshot", "save", snap.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(&snap).unwrap().len() % 512, 32);
    let members = s.ctl_ok(&["member", "list"]);
    assert!(
        members.contains(&format!("started, m1, http://127.0.0.1:{}", s.peer_port)),
        "{members}"
    );
}

#[test]
fn leases() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    let granted = s.ctl_ok(&["lease", "grant", "60"]);
    // "lease 694d77aa9e38260f granted with TTL(60s)"
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    assert_eq!(s.ctl_ok(&["put", "--lease", &id, "leased", "v"]), "OK\n");
    let ttl = s.ctl_ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("attached keys([leased])\n"), "{ttl}");
    assert_eq!(
        s.ctl_ok(&["lease", "list"]),
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        s.ctl_ok(&["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        s.ctl_ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(s.ctl_ok(&["get", "leased"]), "");
    let gone = s.ctl_ok(&["lease", "timetolive", &id]);
    assert_eq!(gone, format!("lease {id} already expired\n"));
    let missing = s.ctl(&["put", "--lease", &id, "k", "v"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("etcdserver: requested lease not found")
    );

    // A lease nobody keeps alive expires, and its keys go with it.
    let short = s.ctl_ok(&["lease", "grant", "2"]);
    let id = short.split_whitespace().nth(1).unwrap().to_string();
    s.ctl_ok(&["put", "--lease", &id, "short", "v"]);
    let w = Watch::start(&s, &["short", "--rev", "1"]);
    assert_eq!(w.next(3), ["PUT", "short", "v"]);
    // The leader revokes it after its TTL: a DELETE event, whenever that is.
    assert_eq!(w.next(3), ["DELETE", "short", ""]);
    assert_eq!(s.ctl_ok(&["get", "short"]), "");
    assert_eq!(s.ctl_ok(&["lease", "list"]), "found 0 leases\n");
}

/// The same commands against a 3-member cluster, each through a different member: one leader
/// and equal raft indexes in `endpoint status`, reads that see writes made elsewhere, `txn`,
/// `watch --rev`, leases kept alive and expired by the leader only, `compaction`, and
/// membership changes.
#[test]
fn three_member_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ms = common::cluster(dir.path(), 3);
    let all = ms
        .iter()
        .map(|m| m.endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let status = || {
        let out = Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &all, "endpoint", "status", "-w", "table"])
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Rows: ENDPOINT | ID | VERSION | DB SIZE | IS LEADER | IS LEARNER | RAFT TERM | RAFT INDEX | ...
    let rows = |table: &str| -> Vec<Vec<String>> {
        table
            .lines()
            .filter(|l| l.starts_with("| http"))
            .map(|l| {
                l.split('|')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect()
    };

    // Writes through each member, reads through every other one.
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(
            m.ctl_ok(&["put", &format!("k{i}"), &format!("v{i}")]),
            "OK\n"
        );
    }
    for m in &ms {
        assert_eq!(
            m.ctl_ok(&["get", "k", "--prefix", "--print-value-only"]),
            "v0\nv1\nv2\n"
        );
    }
    // One leader, one term, and (once the followers have caught up) one raft index.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = status();
        let r = rows(&table);
        assert_eq!(r.len(), 3, "{table}");
        assert_eq!(
            r.iter().filter(|row| row[4] == "true").count(),
            1,
            "one leader: {table}"
        );
        let same = |col: usize| r.iter().all(|row| row[col] == r[0][col]);
        if same(6) && same(7) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "raft indexes never agreed: {table}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A transaction through a follower.
    let out = ms[1].ctl_stdin(
        &["txn"],
        Some("value(\"k0\") = \"v0\"\n\nput k0 swapped\n\nput k0 lost\n\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    assert_eq!(
        ms[2].ctl_ok(&["get", "k0", "--print-value-only"]),
        "swapped\n"
    );

    // A watch from an old revision through another member: history, then live events.
    let w = Watch::start(&ms[2], &["k0", "--rev", "1"]);
    assert_eq!(w.next(3), ["PUT", "k0", "v0"]);
    assert_eq!(w.next(3), ["PUT", "k0", "swapped"]);
    ms[0].ctl_ok(&["put", "k0", "live"]);
    assert_eq!(w.next(3), ["PUT", "k0", "live"]);

    // Leases: granted through one member, kept alive through another; a short one expires
    // (the leader revokes it) and takes its key along everywhere.
    let granted = ms[0].ctl_ok(&["lease", "grant", "60"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ms[1].ctl_ok(&["put", "--lease", &id, "leased", "v"]);
    assert_eq!(
        ms[2].ctl_ok(&["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    let ttl = ms[1].ctl_ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.ends_with("attached keys([leased])\n"), "{ttl}");
    let short = ms[2].ctl_ok(&["lease", "grant", "2"]);
    let short = short.split_whitespace().nth(1).unwrap().to_string();
    ms[2].ctl_ok(&["put", "--lease", &short, "short", "v"]);
    let gone = Watch::start(&ms[1], &["short", "--rev", "1"]);
    assert_eq!(gone.next(3), ["PUT", "short", "v"]);
    assert_eq!(gone.next(3), ["DELETE", "short", ""]);
    for m in &ms {
        assert_eq!(m.ctl_ok(&["get", "short"]), "");
    }

    // Compaction through a follower applies everywhere.
    let rev = json(&ms[0].ctl_ok(&["get", "k0", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .expect("revision");
    assert_eq!(
        ms[1].ctl_ok(&["compaction", &rev.to_string()]),
        format!("compacted revision {rev}\n")
    );
    for m in &ms {
        let old = m.ctl(&["get", "k0", "--rev", "2"]);
        assert!(
            String::from_utf8_lossy(&old.stderr)
                .contains("etcdserver: mvcc: required revision has been compacted"),
            "{}",
            String::from_utf8_lossy(&old.stderr)
        );
    }

    // Membership: a learner added and removed again; the list shows it in between.
    let out = ms[0].ctl_ok(&[
        "member",
        "add",
        "extra",
        "--peer-urls",
        "http://127.0.0.1:1",
        "--learner",
    ]);
    // "Member 5c9b4c8a2d4e1f00 added to cluster 3b1d..."
    assert!(
        out.starts_with("Member ") && out.contains(" added to cluster "),
        "{out}"
    );
    let id = out
        .split_whitespace()
        .nth(1)
        .expect("member id")
        .to_string();
    let listed = ms[1].ctl_ok(&["member", "list"]);
    assert!(
        listed.contains("unstarted") && listed.contains("http://127.0.0.1:1"),
        "{listed}"
    );
    ms[2].ctl_ok(&["member", "remove", &id]);
    let listed = ms[0].ctl_ok(&["member", "list"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
}
