//! Raft traffic between members: a gRPC client per peer (the `storepb.Peer` service on the
//! peer URL). Entries travel as protobuf `LogEntry`s and the small openraft envelopes as JSON.

// openraft's StorageError and RPCError are large by design; they are its API types.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::codec::{from_proto, to_proto};
use super::{Member, TypeConfig, Vote};
use crate::pb::storepb::RaftMessage;
use crate::pb::storepb::peer_client::PeerClient;

/// Largest message between members: a batch of entries or a snapshot chunk.
pub const MAX_PEER_MESSAGE: usize = 64 << 20;
/// Most bytes of entries in one AppendEntries (a single larger entry still goes alone): a
/// follower far behind catches up in calls it can write within a heartbeat or so, and no call
/// outgrows [`MAX_PEER_MESSAGE`].
const MAX_APPEND_BYTES: usize = 8 << 20;

/// The AppendEntries envelope without its entries.
#[derive(Serialize, Deserialize)]
pub struct AppendHead {
    pub vote: Vote,
    pub prev_log_id: Option<super::LogId>,
    pub leader_commit: Option<super::LogId>,
}

/// The InstallSnapshot envelope without its data.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHead {
    pub vote: Vote,
    pub meta: super::SnapshotMeta,
    pub offset: u64,
    pub done: bool,
}

/// What a member answers a vote request from a member it has removed (etcd's words).
pub const REMOVED_MESSAGE: &str =
    "etcdserver: the member has been permanently removed from the cluster";

/// Makes a client for each peer openraft talks to. openraft asks for a new client for every
/// replication stream and every leadership check (each linearizable read round), so the
/// connections are kept here, one per peer URL, and shared: a check costs one request on an
/// open HTTP/2 connection, not a TCP and HTTP/2 handshake.
#[derive(Clone, Default)]
pub struct Network {
    /// Cancelled when a peer says this member was removed from the cluster.
    pub removed: CancellationToken,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Network {
    fn channel(&self, url: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(url) {
            return Some(c.clone());
        }
        let channel = Endpoint::from_shared(url.to_string())
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(url.to_string(), channel.clone());
        Some(channel)
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    target: u64,
    client: Option<PeerClient<Channel>>,
    url: String,
    removed: CancellationToken,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerConnection {
        let url = node.peer_urls.first().cloned().unwrap_or_default();
        let client = self.channel(&url).map(|channel| {
            PeerClient::new(channel)
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE)
        });
        PeerConnection {
            target,
            client,
            url,
            removed: self.removed.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, Member, RaftError<u64, E>>;

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, NetworkError> {
    serde_json::to_vec(v).map_err(|e| NetworkError::new(&e))
}

impl PeerConnection {
    fn client(&self) -> Result<PeerClient<Channel>, Unreachable> {
        self.client.clone().ok_or_else(|| {
            Unreachable::new(&std::io::Error::other(format!(
                "bad peer URL {:?}",
                self.url
            )))
        })
    }

    /// Decodes an answer: the response, or the receiver's RaftError.
    fn answer<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        reply: RaftMessage,
    ) -> Result<T, RpcErr<E>> {
        if !reply.error_json.is_empty() {
            let e: RaftError<u64, E> = serde_json::from_slice(&reply.error_json)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            return Err(RPCError::RemoteError(RemoteError::new(self.target, e)));
        }
        serde_json::from_slice(&reply.json).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

/// What a failed call means to openraft. A peer that refuses or drops the connection is
/// unreachable, and openraft stops sending to it for a while (500 ms). A call that ran out of
/// time is only slow (a follower's disk busy syncing after a leader change): openraft retries
/// it at the next heartbeat, not after a back-off that would stall commits for half a second.
fn status_error<E: std::error::Error>(
    s: tonic::Status,
    action: RPCTypes,
    vote: &Vote,
    target: u64,
    option: &RPCOption,
) -> RpcErr<E> {
    match s.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
            action,
            id: vote.leader_id.voted_for().unwrap_or_default(),
            target,
            timeout: option.hard_ttl(),
        }),
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&s)),
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

fn with_deadline(msg: RaftMessage, option: &RPCOption) -> tonic::Request<RaftMessage> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(option.hard_ttl());
    req
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        let head_vote = rpc.vote;
        let head = AppendHead {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
        };
        let mut entries = Vec::with_capacity(rpc.entries.len());
        let mut bytes = 0;
        for e in &rpc.entries {
            let e = to_proto(e);
            bytes += prost::Message::encoded_len(&e);
            if bytes > MAX_APPEND_BYTES && !entries.is_empty() {
                // openraft sends again at once with at most this many entries.
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries.len() as u64),
                ));
            }
            entries.push(e);
        }
        let last = rpc.entries.last().map(|e| e.log_id.index);
        let n = rpc.entries.len();
        let msg = RaftMessage {
            json: json(&head)?,
            entries,
            ..RaftMessage::default()
        };
        tracing::trace!(to = self.target, ?last, n, "AppendEntries sent");
        let reply = self
            .client()?
            .append_entries(with_deadline(msg, &option))
            .await
            .map_err(|s| {
                status_error(s, RPCTypes::AppendEntries, &head_vote, self.target, &option)
            })?;
        tracing::trace!(to = self.target, ?last, "AppendEntries answered");
        self.answer(reply.into_inner())
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        let head_vote = rpc.vote;
        let head = SnapshotHead {
            vote: rpc.vote,
            meta: rpc.meta,
            offset: rpc.offset,
            done: rpc.done,
        };
        let msg = RaftMessage {
            json: json(&head)?,
            data: rpc.data,
            ..RaftMessage::default()
        };
        let reply = self
            .client()?
            .install_snapshot(with_deadline(msg, &option))
            .await
            .map_err(|s| {
                status_error(
                    s,
                    RPCTypes::InstallSnapshot,
                    &head_vote,
                    self.target,
                    &option,
                )
            })?;
        self.answer(reply.into_inner())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        let msg = RaftMessage {
            json: json(&rpc)?,
            ..RaftMessage::default()
        };
        let reply = self.client()?.vote(with_deadline(msg, &option)).await;
        if let Err(s) = &reply
            && s.message() == REMOVED_MESSAGE
        {
            // A removed member learns it when it campaigns, as in etcd.
            self.removed.cancel();
        }
        let reply =
            reply.map_err(|s| status_error(s, RPCTypes::Vote, &rpc.vote, self.target, &option))?;
        self.answer(reply.into_inner())
    }
}

/// Rebuilds an AppendEntries request received from a peer.
pub fn decode_append(msg: RaftMessage) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    let head: AppendHead = serde_json::from_slice(&msg.json).map_err(|e| e.to_string())?;
    let entries = msg
        .entries
        .into_iter()
        .map(from_proto)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(AppendEntriesRequest {
        vote: head.vote,
        prev_log_id: head.prev_log_id,
        entries,
        leader_commit: head.leader_commit,
    })
}

/// Rebuilds an InstallSnapshot request received from a peer.
pub fn decode_snapshot(msg: RaftMessage) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let head: SnapshotHead = serde_json::from_slice(&msg.json).map_err(|e| e.to_string())?;
    Ok(InstallSnapshotRequest {
        vote: head.vote,
        meta: head.meta,
        offset: head.offset,
        data: msg.data,
        done: head.done,
    })
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::pb::etcdserverpb::PutRequest;
    use crate::pb::storepb::{InternalRequest, Proposal, internal_request};
    use crate::raft::codec::log_id;
    use crate::raft::{Entry, Request};

    fn big_entry(index: u64) -> Entry {
        let put = InternalRequest {
            request: Some(internal_request::Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![b'v'; 3 << 20],
                ..Default::default()
            })),
        };
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Request::new(Proposal {
                requests: vec![put],
                id: 0,
            })),
        }
    }

    #[tokio::test]
    async fn too_many_bytes_of_entries_ask_openraft_for_fewer() {
        // No client: the size check comes before any call.
        let mut peer = PeerConnection {
            target: 2,
            client: None,
            url: String::new(),
            removed: CancellationToken::new(),
        };
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=4).map(big_entry).collect(),
        };
        match peer
            .append_entries(rpc, RPCOption::new(Duration::from_secs(1)))
            .await
        {
            Err(RPCError::PayloadTooLarge(p)) => assert_eq!(p.entries_hint(), 2),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        // One entry goes alone whatever its size (here: to no client, so unreachable).
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![big_entry(1)],
        };
        let r = peer
            .append_entries(rpc, RPCOption::new(Duration::from_secs(1)))
            .await;
        assert!(matches!(r, Err(RPCError::Unreachable(_))), "{r:?}");
    }
}
