//! The etcd `Lease` service and the lessor. Grants and revokes go through Raft; expiry is
//! decided by the leader alone (it proposes a revoke when a lease runs out), so followers hand
//! keep-alives and TTL queries to the leader.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Leader, Node, status_to_etcd};
use crate::error::EtcdError;
use crate::mvcc::{LeaseState, MAX_LEASE_TTL};
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::pb::storepb::{InternalRequest, apply_result, internal_request};

/// The leader's view of when each lease runs out. Followers keep nothing: a new leader gives
/// every lease a full TTL, as etcd does on promotion.
#[derive(Debug, Default)]
pub struct Lessor {
    state: Mutex<LessorState>,
}

#[derive(Debug, Default)]
struct LessorState {
    leader: bool,
    deadlines: HashMap<i64, Instant>,
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, LessorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the deadlines in line with the granted leases and returns those that expired.
    /// Only a leader tracks deadlines and expires leases.
    pub fn tick(&self, leader: bool, leases: &BTreeMap<i64, LeaseState>, now: Instant) -> Vec<i64> {
        let mut st = self.lock();
        if !leader {
            st.leader = false;
            st.deadlines.clear();
            return Vec::new();
        }
        st.leader = true;
        st.deadlines.retain(|id, _| leases.contains_key(id));
        for (id, l) in leases {
            st.deadlines
                .entry(*id)
                .or_insert_with(|| now + ttl_duration(l.ttl));
        }
        let mut expired: Vec<i64> = st
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        expired
    }

    /// Restarts a lease's full TTL (keep-alive). False when this member does not track it.
    pub fn renew(&self, id: i64, ttl: i64, now: Instant) -> bool {
        let mut st = self.lock();
        if !st.leader {
            return false;
        }
        st.deadlines.insert(id, now + ttl_duration(ttl));
        true
    }

    /// Seconds left before the lease runs out, as etcd rounds them.
    pub fn remaining(&self, id: i64, ttl: i64, now: Instant) -> i64 {
        let st = self.lock();
        match st.deadlines.get(&id) {
            Some(d) => {
                let left = d.saturating_duration_since(now);
                // etcd reports whole seconds, rounding up a partial second.
                (left.as_millis() as i64 + 999) / 1000
            }
            None => ttl,
        }
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    // Capped so that adding it to an Instant cannot overflow (etcd's largest TTL is ~285 years).
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0).min(u64::from(u32::MAX)))
}

pub struct LeaseService {
    pub node: Arc<Node>,
}

impl LeaseService {
    /// A keep-alive answered by this member (the leader) or handed to the leader.
    async fn keep_alive_one(
        node: &Node,
        req: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, EtcdError> {
        let member = match node.leader() {
            Leader::Me => return Ok(local_keep_alive(node, req.id)),
            Leader::Other(m) => m,
            Leader::None => return Err(EtcdError::NoLeader),
        };
        let mut client = node.leader_client(Some(&member))?;
        let mut resp = client
            .lease_keep_alive(req)
            .await
            .map_err(status_to_etcd)?
            .into_inner();
        node.fill(&mut resp.header);
        Ok(resp)
    }
}

/// The leader's answer to a keep-alive: the renewed TTL, or 0 for an unknown lease.
pub fn local_keep_alive(node: &Node, id: i64) -> LeaseKeepAliveResponse {
    let ttl = match node.kv.leases().get(&id) {
        Some(l) => {
            // Right after an election the lessor may not track leases yet; its first tick
            // gives every lease a full TTL anyway.
            node.lessor.renew(id, l.ttl, Instant::now());
            l.ttl
        }
        None => 0,
    };
    LeaseKeepAliveResponse {
        header: Some(node.header(node.kv.revision())),
        id,
        ttl,
    }
}

/// The leader's answer to a TTL query.
pub fn local_time_to_live(node: &Node, req: &LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse {
    let leases = node.kv.leases();
    let header = Some(node.header(node.kv.revision()));
    match leases.get(&req.id) {
        None => LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        },
        Some(l) => LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: node.lessor.remaining(req.id, l.ttl, Instant::now()),
            granted_ttl: l.ttl,
            keys: if req.keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        },
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        req.ttl = req.ttl.max(self.node.limits.min_lease_ttl);
        if req.id == 0 {
            // Random positive 63-bit IDs: unique without coordination.
            req.id = (rand::random::<u64>() >> 1).max(1) as i64;
        }
        let r = self
            .node
            .propose(InternalRequest {
                request: Some(internal_request::Request::LeaseGrant(req)),
            })
            .await?;
        match r {
            apply_result::Result::LeaseGrant(mut g) => {
                self.node.fill(&mut g.header);
                Ok(Response::new(g))
            }
            _ => Err(EtcdError::Internal("unexpected apply result for lease grant".into()).into()),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = request.into_inner();
        let r = self
            .node
            .propose(InternalRequest {
                request: Some(internal_request::Request::LeaseRevoke(req)),
            })
            .await?;
        match r {
            apply_result::Result::LeaseRevoke(mut g) => {
                self.node.fill(&mut g.header);
                Ok(Response::new(g))
            }
            _ => Err(EtcdError::Internal("unexpected apply result for lease revoke".into()).into()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                let req = match input.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return,
                };
                let resp = Self::keep_alive_one(&node, req).await.map_err(Status::from);
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let member = match self.node.leader() {
            Leader::Me => return Ok(Response::new(local_time_to_live(&self.node, &req))),
            Leader::Other(m) => m,
            Leader::None => return Err(EtcdError::NoLeader.into()),
        };
        let mut client = self.node.leader_client(Some(&member))?;
        let mut resp = client.lease_time_to_live(req).await?.into_inner();
        self.node.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.node.kv.leases();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(self.node.kv.revision())),
            leases: leases.keys().map(|id| LeaseStatus { id: *id }).collect(),
        }))
    }
}

/// Expires leases while this member leads: proposes a revoke for each lease past its deadline.
pub async fn run_lessor(node: Arc<Node>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leader = matches!(node.leader(), Leader::Me);
        let expired = node.lessor.tick(leader, &node.kv.leases(), Instant::now());
        for id in expired {
            let req = InternalRequest {
                request: Some(internal_request::Request::LeaseRevoke(LeaseRevokeRequest {
                    id,
                })),
            };
            match node.propose(req).await {
                Ok(_) | Err(EtcdError::LeaseNotFound) => {
                    tracing::debug!(lease = id, "lease expired")
                }
                Err(e) => tracing::warn!(lease = id, error = %e, "cannot revoke expired lease"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn leases(ids: &[(i64, i64)]) -> BTreeMap<i64, LeaseState> {
        ids.iter()
            .map(|&(id, ttl)| {
                (
                    id,
                    LeaseState {
                        ttl,
                        keys: BTreeSet::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn expiry_only_on_leader() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let granted = leases(&[(1, 5), (2, 10)]);
        let s = Duration::from_secs(1);
        // (leader, seconds after t0, expired)
        let steps: &[(bool, u64, &[i64])] = &[
            (false, 0, &[]),
            (false, 100, &[]),
            // Becoming leader restarts every TTL.
            (true, 100, &[]),
            (true, 104, &[]),
            (true, 105, &[1]),
            (true, 110, &[1, 2]),
            (false, 111, &[]),
        ];
        for &(leader, at, want) in steps {
            let got = l.tick(leader, &granted, t0 + s * at as u32);
            assert_eq!(got, want, "leader {leader} at {at}");
        }
    }

    #[test]
    fn renew_and_remaining() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let granted = leases(&[(1, 5)]);
        assert!(!l.renew(1, 5, t0));
        l.tick(true, &granted, t0);
        assert_eq!(l.remaining(1, 5, t0 + Duration::from_millis(1500)), 4);
        assert!(l.renew(1, 5, t0 + Duration::from_secs(4)));
        assert!(
            l.tick(true, &granted, t0 + Duration::from_secs(8))
                .is_empty()
        );
        assert_eq!(l.tick(true, &granted, t0 + Duration::from_secs(9)), vec![1]);
        // A revoked lease is forgotten.
        assert!(
            l.tick(true, &leases(&[]), t0 + Duration::from_secs(9))
                .is_empty()
        );
    }
}
