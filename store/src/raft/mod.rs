//! The Raft layer (openraft 0.9, storage-v2): the type configuration, what a log entry carries
//! and how it is encoded, the durable log ([`log_store`]), the state machine
//! ([`state_machine`]) and the transport between members ([`network`]).

pub mod codec;
pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;
pub mod wal;

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

/// The state-machine commands carried by a log entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request(pub Proposal);

/// What applying a [`Request`] returned, one result per command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response(pub ProposalResult);

/// openraft wants serde on its payloads; they are protobuf messages, so they travel as the
/// protobuf bytes.
macro_rules! serde_as_protobuf {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0.encode_to_vec())
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
                Message::decode(bytes.as_slice())
                    .map(Self)
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_protobuf!(Request);
serde_as_protobuf!(Response);

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
        let r = Request(Proposal {
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
