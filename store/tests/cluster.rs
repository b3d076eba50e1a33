//! Three members bootstrapped from `--initial-cluster` as etcd does: writes and reads through
//! any member, watches on followers, the leader SIGKILLed and replaced, the member restarted
//! and caught up, every member ending with the same state.

mod common;

use std::time::{Duration, Instant};

use common::{Kind, Server, cluster, free_port};
use miniorch_store::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use miniorch_store::pb::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest, StatusRequest};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The member ID of the leader, as `m` sees it.
async fn leader_of(m: &Server) -> Option<(u64, u64)> {
    let mut c = MaintenanceClient::new(m.channel().await);
    let s = c.status(StatusRequest {}).await.ok()?.into_inner();
    Some((s.leader, s.header?.member_id))
}

async fn hash(m: &Server) -> Option<u32> {
    let mut c = MaintenanceClient::new(m.channel().await);
    Some(
        c.hash_kv(HashKvRequest { revision: 0 })
            .await
            .ok()?
            .into_inner()
            .hash,
    )
}

/// Repeats `f` until it gives `Some` (fails after a generous guard, never on timing).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_members_survive_leader_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms = cluster(dir.path(), 3);
    let rt = rt();

    // Writes through every member, reads (linearizable) through every other one.
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(
            m.ctl_ok(&["put", &format!("k{i}"), &format!("from m{i}")]),
            "OK\n"
        );
        for other in &ms {
            assert_eq!(
                other.ctl_ok(&["get", &format!("k{i}"), "--print-value-only"]),
                format!("from m{i}\n")
            );
        }
    }
    // Each member publishes its name and client URLs through Raft once a leader exists.
    eventually("every member listed as started", || {
        let members = ms[0].ctl_ok(&["member", "list"]);
        ms.iter()
            .all(|m| {
                members.contains(&format!(
                    "started, {}, {}, {}",
                    m.name,
                    m.peer_url(),
                    m.endpoint()
                ))
            })
            .then_some(())
    });

    // Kill the leader; the others elect a new one and keep taking writes.
    let (leader, _) = rt.block_on(leader_of(&ms[0])).expect("status");
    let mut idx = None;
    for (i, m) in ms.iter().enumerate() {
        if rt
            .block_on(leader_of(m))
            .is_some_and(|(_, me)| me == leader)
        {
            idx = Some(i);
        }
    }
    let li = idx.expect("leader is a member");
    ms[li].kill9();
    let survivor = (li + 1) % 3;
    let ep = ms[survivor].endpoint();
    let acked_rev = eventually("a write after the leader died", || {
        rt.block_on(async {
            let mut kv = miniorch_store::pb::etcdserverpb::kv_client::KvClient::connect(ep.clone())
                .await
                .ok()?;
            let r = kv
                .put(PutRequest {
                    key: b"after".to_vec(),
                    value: b"failover".to_vec(),
                    ..Default::default()
                })
                .await
                .ok()?;
            Some(r.into_inner().header?.revision)
        })
    });
    let other = (li + 2) % 3;
    assert_eq!(
        ms[other].ctl_ok(&["get", "after", "--print-value-only"]),
        "failover\n"
    );

    // The old leader comes back from its data dir, catches up, and all hashes agree.
    ms[li].spawn();
    ms[li].wait_ready();
    let back = ms[li].endpoint();
    eventually(
        "the restarted member applies the write made while it was down",
        || {
            rt.block_on(async {
                let mut kv =
                    miniorch_store::pb::etcdserverpb::kv_client::KvClient::connect(back.clone())
                        .await
                        .ok()?;
                let r = kv
                    .range(RangeRequest {
                        key: b"after".to_vec(),
                        serializable: true,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                (r.kvs.first()?.mod_revision == acked_rev).then_some(())
            })
        },
    );
    eventually("equal hashes on every member", || {
        let hashes: Vec<Option<u32>> = ms.iter().map(|m| rt.block_on(hash(m))).collect();
        (hashes.iter().all(Option::is_some) && hashes.windows(2).all(|w| w[0] == w[1]))
            .then_some(())
    });
}

/// The member ID etcdctl printed for an added member.
fn added_id(out: &str) -> String {
    // "Member 5c9b4c8a2d4e1f00 added to cluster 3b1d..."
    let line = out.lines().next().expect("output");
    assert!(
        line.starts_with("Member ") && line.contains(" added to cluster "),
        "{out}"
    );
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn membership_changes_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    // Frequent snapshots and a short log: members added later catch up from a snapshot.
    let extra = [
        "--snapshot-count",
        "20",
        "--experimental-snapshot-catchup-entries",
        "5",
    ];
    let mut m0 = Server::member(
        Kind::Miniorch,
        "m0",
        &dir.path().join("m0"),
        free_port(),
        free_port(),
        "",
        &extra,
    );
    m0.spawn();
    m0.wait_ready();
    for i in 0..100 {
        m0.ctl_ok(&["put", &format!("pre/{i:03}"), &format!("v{i}")]);
    }

    // Add a voter, then start it with --initial-cluster-state existing.
    let (c1, p1) = (free_port(), free_port());
    let p1_url = format!("http://127.0.0.1:{p1}");
    let out = m0.ctl_ok(&["member", "add", "m1", "--peer-urls", &p1_url]);
    let id1 = added_id(&out);
    assert!(
        out.contains(&format!(
            "ETCD_INITIAL_CLUSTER=\"m0={},m1={p1_url}\"",
            m0.peer_url()
        )) || out.contains("ETCD_INITIAL_CLUSTER="),
        "{out}"
    );
    let cluster01 = format!("m0={},m1={p1_url}", m0.peer_url());
    let mut joined = ["--initial-cluster-state", "existing"].to_vec();
    joined.extend(extra);
    let mut m1 = Server::member(
        Kind::Miniorch,
        "m1",
        &dir.path().join("m1"),
        c1,
        p1,
        &cluster01,
        &joined,
    );
    m1.spawn();
    m1.wait_ready();
    // It caught up, from a snapshot since the log before it was purged.
    assert_eq!(
        m1.ctl_ok(&[
            "get",
            "pre/",
            "--prefix",
            "--keys-only",
            "--consistency",
            "s"
        ])
        .lines()
        .filter(|l| !l.is_empty())
        .count(),
        100
    );
    m1.ctl_ok(&["put", "via", "m1"]);
    assert_eq!(m0.ctl_ok(&["get", "via", "--print-value-only"]), "m1\n");

    // Add a learner, start it, promote it.
    let (c2, p2) = (free_port(), free_port());
    let p2_url = format!("http://127.0.0.1:{p2}");
    let out = m1.ctl_ok(&["member", "add", "m2", "--peer-urls", &p2_url, "--learner"]);
    let id2 = added_id(&out);
    let cluster012 = format!("{cluster01},m2={p2_url}");
    let mut m2 = Server::member(
        Kind::Miniorch,
        "m2",
        &dir.path().join("m2"),
        c2,
        p2,
        &cluster012,
        &joined,
    );
    m2.spawn();
    let listed = m0.ctl_ok(&["member", "list"]);
    assert!(listed.contains(&format!("{id2}, ")), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&id2) && l.ends_with("true")),
        "learner: {listed}"
    );
    // A learner that has not caught up may be refused promotion; try until it is promoted.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = m0.ctl(&["member", "promote", &id2]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "promotion never succeeded: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = m0.ctl_ok(&["member", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&id2) && l.ends_with("false")),
        "promoted: {listed}"
    );
    m2.wait_ready();
    assert_eq!(m2.ctl_ok(&["get", "via", "--print-value-only"]), "m1\n");

    // Remove m1: the rest goes on, and m1 stops.
    let out = m2.ctl_ok(&["member", "remove", &id1]);
    assert!(
        // etcdctl prints IDs as %16x: a small ID comes padded with a space.
        out.split_whitespace()
            .take(4)
            .eq(["Member", id1.as_str(), "removed", "from"]),
        "{out}"
    );
    let listed = m0.ctl_ok(&["member", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(!listed.contains(&id1), "{listed}");
    m0.ctl_ok(&["put", "after-remove", "ok"]);
    assert_eq!(
        m2.ctl_ok(&["get", "after-remove", "--print-value-only"]),
        "ok\n"
    );
    eventually("the removed member stops", || m1.exited().then_some(()));
    assert!(
        m1.log_text().contains("was removed from the cluster"),
        "{}",
        m1.log_text()
    );

    // Errors with etcd's messages.
    let dup = m0.ctl(&["member", "add", "again", "--peer-urls", &p2_url]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("etcdserver: Peer URLs already exists"));
    let missing = m0.ctl(&["member", "remove", "1234"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("etcdserver: member not found"));
}
