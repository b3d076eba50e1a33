//! miniorch-store: a Raft-replicated MVCC key-value store speaking the etcd v3 gRPC API, so
//! the real `etcdctl` and etcd clients (the apiserver among them) work against it.
//!
//! A member is wired as a checklist (see [`run`]): parse flags, bind ports, open the database
//! and the write-ahead log, rebuild the state machine, start Raft on its thread, serve the
//! etcd services to clients (on the serving threads) and the peer service to other members
//! (on the Raft thread), then run the lessor and the quota watch until shutdown.

pub mod config;
pub mod db;
pub mod error;
pub mod fuzz;
pub mod kv;
pub mod mvcc;
pub mod pb;
pub mod progress;
pub mod raft;
pub mod server;
pub mod thread;
pub mod validate;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

pub use config::Config;

use crate::config::ClusterState;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::etcdserverpb::watch_server::WatchServer;
use crate::pb::storepb::Empty;
use crate::pb::storepb::peer_client::PeerClient;
use crate::pb::storepb::peer_server::PeerServer;
use crate::pb::storepb::{InternalRequest, MemberAttributes, internal_request};
use crate::raft::network::{MAX_PEER_MESSAGE, Network};
use crate::raft::{Member, Raft};
use crate::server::{Limits, Node};

/// gRPC framing allowance on top of the largest request, as etcd allows.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

async fn bind(addrs: &[SocketAddr], flag: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} ({flag}); is the port already in use?")
        })?;
        out.push(l);
    }
    Ok(out)
}

/// Serves until `shutdown` is cancelled, then stops cleanly. Everything acknowledged to a
/// client is on disk before the answer is sent.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // 1. Flags.
    let plan = config.plan()?;

    // 2. Ports first, so a port in use is reported before anything is touched on disk.
    let client_listeners = bind(&plan.client_listen, "--listen-client-urls").await?;
    let peer_listeners = bind(&plan.peer_listen, "--listen-peer-urls").await?;

    // 3. The database, the log, and the state machine rebuilt from the database.
    let data_dir = plan.data_dir.clone();
    let cache = config.cache_bytes;
    let (db, log_store) = tokio::task::spawn_blocking(move || {
        let state = db::Db::open(&data_dir, cache)?;
        if raft::log_store::migrate_redb_log(&data_dir).map_err(anyhow::Error::msg)? {
            tracing::info!("moved the Raft log from raft.redb to the write-ahead log");
        }
        let log = raft::log_store::LogStore::open(&data_dir)?;
        anyhow::Ok((state, log))
    })
    .await
    .context("opening the database")??;
    let db = Arc::new(db);
    let kv_db = db.clone();
    let kv = tokio::task::spawn_blocking(move || kv::Kv::open(kv_db))
        .await
        .context("loading the state machine")?
        .context("loading the state machine")?;
    tracing::info!(
        path = %db.path.display(),
        revision = kv.revision(),
        "database open"
    );

    // 4. Who we are: fixed at the first start (a joining member asks the cluster).
    let (member_id, cluster_id) = match db.identity()? {
        Some(ids) => ids,
        None => {
            let ids = match plan.state {
                ClusterState::New => (plan.member_id, plan.cluster_id),
                ClusterState::Existing => find_self_in_cluster(&plan, &shutdown).await?,
            };
            db.set_identity(ids.0, ids.1)?;
            ids
        }
    };

    // 5. Raft.
    let raft_config = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat_interval,
        // openraft waits out a leader lease (election_timeout_max) and then a random timeout
        // in [min, max) before campaigning: 0.55 to 0.7 of etcd's "--election-timeout" here,
        // five heartbeats at least. A member that once lost an election to a longer log waits
        // 2 x max more at its next one, even when its log is the longest by then (openraft
        // 0.9 keeps that flag until it campaigns; fixed upstream in openraft#2087): with these
        // values a dead leader is still replaced within 1.4 election timeouts.
        election_timeout_min: config.election_timeout * 20 / 100,
        election_timeout_max: config.election_timeout * 35 / 100,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 1024,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count.max(1)),
        max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
        // Purge in batches, but small enough that a small --snapshot-count still purges.
        purge_batch_size: (config.snapshot_count / 2).clamp(1, 1024),
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;
    let log_progress = log_store.progress();
    let snap_dir = plan.data_dir.join("member").join("snap");
    let state_machine = raft::state_machine::StateMachine::new(kv.clone(), snap_dir);
    let network = Network::default();
    let raft_thread = thread::RuntimeThread::start("raft").context("starting the raft thread")?;
    let lanes = thread::Lanes::start("serve").context("starting the server threads")?;
    let raft_network = network.clone();
    let (raft, resumed) = raft_thread
        .run(async move {
            let mut log_store = log_store;
            let resumed = server::Resumed::read(&mut log_store).await?;
            let raft = Raft::new(
                member_id,
                Arc::new(raft_config),
                raft_network,
                log_store,
                state_machine,
            )
            .await?;
            anyhow::Ok((raft, resumed))
        })
        .await?
        .context("starting raft")?;
    if plan.state == ClusterState::New && !raft.is_initialized().await? {
        let members: BTreeMap<u64, Member> = plan
            .initial
            .iter()
            .map(|(id, (name, urls))| {
                (
                    *id,
                    Member {
                        name: name.clone(),
                        peer_urls: urls.clone(),
                    },
                )
            })
            .collect();
        // Every initial member proposes the same first entry, so they agree without talking.
        if let Err(e) = raft.initialize(members).await {
            tracing::warn!(error = %e, "cluster already initialised");
        }
    }

    // 6. The services.
    let min_lease_ttl = ((config.election_timeout * 3 / 2) as i64 + 999) / 1000;
    let identity = server::Identity {
        member_id,
        cluster_id,
        name: config.name.clone(),
        client_urls: plan.client_urls.clone(),
        token: config.initial_cluster_token.clone(),
    };
    let limits = Limits {
        max_request_bytes: config.max_request_bytes,
        max_txn_ops: config.max_txn_ops,
        quota_backend_bytes: config.quota_backend_bytes,
        watch_progress_interval: config
            .watch_progress_notify_interval
            .max(Duration::from_millis(100)),
        min_lease_ttl,
    };
    // The proposer is a Raft-side task: it goes on the Raft thread too. Forwarding writes to
    // the leader is gRPC client work: it goes with the servers.
    let (node_kv, node_raft) = (kv.clone(), raft.clone());
    let servers_runtime = lanes.first().clone();
    let node = raft_thread
        .run(async move {
            Arc::new(Node::new(
                node_kv,
                node_raft,
                log_progress,
                identity,
                limits,
                resumed,
                &servers_runtime,
            ))
        })
        .await?;
    let max_recv = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let mut servers = tokio::task::JoinSet::new();
    let client_threads = lanes.handles();
    for listener in client_listeners {
        let (node, stop, threads) = (node.clone(), shutdown.clone(), client_threads.clone());
        let serve = move |incoming| {
            Server::builder()
                .layer(tower::util::MapResponseLayer::new(
                    server::oversize::fix_oversize,
                ))
                .add_service(
                    KvServer::new(server::kv::KvService { node: node.clone() })
                        .max_decoding_message_size(max_recv),
                )
                .add_service(
                    WatchServer::new(server::watch::WatchService { node: node.clone() })
                        .max_decoding_message_size(max_recv),
                )
                .add_service(
                    LeaseServer::new(server::lease::LeaseService { node: node.clone() })
                        .max_decoding_message_size(max_recv),
                )
                .add_service(
                    ClusterServer::new(server::cluster::ClusterService { node: node.clone() })
                        .max_decoding_message_size(max_recv),
                )
                .add_service(
                    MaintenanceServer::new(server::maintenance::MaintenanceService {
                        node: node.clone(),
                    })
                    .max_decoding_message_size(max_recv),
                )
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        };
        let stop = shutdown.clone();
        servers.spawn(async move {
            // etcd's Go clients may send a URL as :authority; see `server::authority`.
            let fix = server::authority::FixAuthority::new;
            thread::serve(&threads, listener, fix, serve, stop)
                .await
                .context("client server")
        });
    }
    // Raft's own traffic is served on the Raft thread: an AppendEntries or a forwarded batch
    // of writes reaches openraft and the proposer without a hop between threads.
    let peer_threads = [raft_thread.handle().clone()];
    for listener in peer_listeners {
        let (node, stop, threads) = (node.clone(), shutdown.clone(), peer_threads.clone());
        let serve = move |incoming| {
            Server::builder()
                .add_service(
                    PeerServer::new(server::peer::PeerService { node: node.clone() })
                        .max_decoding_message_size(MAX_PEER_MESSAGE)
                        .max_encoding_message_size(MAX_PEER_MESSAGE),
                )
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        };
        let stop = shutdown.clone();
        servers.spawn(async move {
            thread::serve(&threads, listener, |s| s, serve, stop)
                .await
                .context("peer server")
        });
    }
    servers.spawn(run_background(server::lease::run_lessor(
        node.clone(),
        shutdown.clone(),
    )));
    servers.spawn(run_background(server::maintenance::watch_quota(
        node.clone(),
        shutdown.clone(),
    )));
    servers.spawn(run_background(publish_attributes(
        node.clone(),
        shutdown.clone(),
    )));
    tracing::info!(
        name = %config.name,
        member = format!("{member_id:x}"),
        clients = ?plan.client_urls,
        peers = ?plan.peer_urls,
        "serving"
    );

    // 7. Until shutdown, Raft stopping on a fatal error, or this member being removed.
    let mut metrics = raft.metrics();
    let mut was_member = false;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = network.removed.cancelled() => {
                break Err(anyhow::anyhow!(
                    "this member ({member_id:x}) was removed from the cluster; it stops serving"
                ));
            }
            changed = metrics.changed() => {
                if changed.is_err() {
                    break Err(anyhow::anyhow!("raft stopped"));
                }
                let (running, is_member) = {
                    let m = metrics.borrow();
                    let membership = m.membership_config.membership();
                    (m.running_state.clone(), membership.get_node(&member_id).is_some())
                };
                if let Err(fatal) = running {
                    let detail = kv.failure().unwrap_or_default();
                    break Err(anyhow::anyhow!("raft stopped: {fatal} {detail}"));
                }
                if is_member {
                    was_member = true;
                } else if was_member {
                    break Err(anyhow::anyhow!(
                        "this member ({member_id:x}) was removed from the cluster; it stops serving"
                    ));
                }
            }
            done = servers.join_next() => {
                if let Some(Ok(Err(e))) = done {
                    break Err(e);
                }
            }
        }
    };
    shutdown.cancel();
    while servers.join_next().await.is_some() {}
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    drop(raft_thread);
    tracing::info!("stopped");
    outcome
}

/// A member started with `--initial-cluster-state existing` finds the ID it was added under
/// (`etcdctl member add`) by asking the other members listed in `--initial-cluster`.
async fn find_self_in_cluster(
    plan: &config::Plan,
    shutdown: &CancellationToken,
) -> anyhow::Result<(u64, u64)> {
    let sorted = |urls: &[String]| {
        let mut u = urls.to_vec();
        u.sort();
        u
    };
    let mine = sorted(&plan.peer_urls);
    let others: Vec<&String> = plan
        .initial
        .values()
        .filter(|(_, urls)| sorted(urls) != mine)
        .flat_map(|(_, urls)| urls)
        .collect();
    if others.is_empty() {
        anyhow::bail!(
            "--initial-cluster-state existing needs the other members in --initial-cluster"
        );
    }
    let mut last_error = String::new();
    for _ in 0..20 {
        for url in &others {
            let reply = async {
                let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
                    .connect_timeout(Duration::from_secs(1));
                let mut client = PeerClient::new(endpoint.connect().await?);
                let reply = client.members(Empty {}).await?.into_inner();
                anyhow::Ok(reply)
            }
            .await;
            match reply {
                Ok(reply) => {
                    let members: BTreeMap<u64, Member> =
                        serde_json::from_slice(&reply.members_json)
                            .with_context(|| format!("member list from {url}"))?;
                    return match members.iter().find(|(_, m)| sorted(&m.peer_urls) == mine) {
                        Some((id, _)) => Ok((*id, reply.cluster_id)),
                        None => Err(anyhow::anyhow!(
                            "this member (peer URLs {:?}) is not in the cluster; add it first with `etcdctl member add`",
                            plan.peer_urls
                        )),
                    };
                }
                Err(e) => last_error = format!("{url}: {e}"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped while joining the cluster"),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    anyhow::bail!("cannot reach any member of --initial-cluster to join ({last_error})")
}

async fn run_background(f: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    f.await;
    Ok(())
}

/// Publishes this member's name and client URLs through Raft once there is a leader (and again
/// whenever they differ from what the cluster knows), as etcd does after starting.
async fn publish_attributes(node: Arc<Node>, shutdown: CancellationToken) {
    let mine = MemberAttributes {
        id: node.member_id,
        name: node.name.clone(),
        client_urls: node.client_urls.clone(),
    };
    loop {
        if node.kv.member_attributes().get(&node.member_id) == Some(&mine) {
            return;
        }
        let req = InternalRequest {
            request: Some(internal_request::Request::MemberAttributes(mine.clone())),
        };
        match node.propose(req).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "cannot publish member attributes yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // Until the first election ends: clients see "unstarted" members meanwhile.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
