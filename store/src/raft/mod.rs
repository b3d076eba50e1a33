//! The Raft layer (openraft 0.9, storage-v2): the type configuration, what a log entry carries
//! and how it is encoded, the durable log ([`log_store`]), the state machine
//! ([`state_machine`]) and the transport between members ([`network`]).

pub mod codec;
pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;
pub mod wal;

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pb::storepb::{Proposal, ProposalResult};

openraft::declare_raft_types!(
    /// How miniorch-store instantiates openraft.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, Member>;

/// A cluster member as Raft knows it: how to reach it. Client URLs and the name are published
/// separately once the member runs (as etcd does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// The state-machine commands carried by a log entry, with their protobuf encoding: encoded
/// once where proposed (or received so from the leader), then written to the log and sent to
/// every follower as they are. Clones share both.
#[derive(Clone, Default, PartialEq)]
pub struct Request(Arc<Carried>);

#[derive(Default, PartialEq)]
struct Carried {
    proposal: Proposal,
    encoded: Bytes,
}

impl Request {
    pub fn new(proposal: Proposal) -> Request {
        let encoded = proposal.encode_to_vec().into();
        Request(Arc::new(Carried { proposal, encoded }))
    }

    pub fn decode(encoded: Bytes) -> Result<Request, prost::DecodeError> {
        let proposal = Proposal::decode(encoded.clone())?;
        Ok(Request(Arc::new(Carried { proposal, encoded })))
    }

    pub fn proposal(&self) -> &Proposal {
        &self.0.proposal
    }

    pub fn encoded(&self) -> &Bytes {
        &self.0.encoded
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.proposal.fmt(f)
    }
}

/// What applying a [`Request`] returned, one result per command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response(pub ProposalResult);

// openraft wants serde on its payloads; they are protobuf messages, so they travel as the
// protobuf bytes.
impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.encoded())
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        Request::decode(bytes.into()).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        Message::decode(bytes.as_slice())
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// Wraps an I/O failure for openraft, naming what was being done.
pub fn io_error(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::PutRequest;
    use crate::pb::storepb::{InternalRequest, internal_request};

    #[test]
    fn request_serde_round_trip() {
        let r = Request::new(Proposal {
            requests: vec![InternalRequest {
                request: Some(internal_request::Request::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![0, 1, 2],
                    ..Default::default()
                })),
            }],
            id: 42,
        });
        let json = serde_json::to_string(&r).unwrap();
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
