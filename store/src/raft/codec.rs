//! How a Raft log entry is encoded on disk and between members: a protobuf `LogEntry` whose
//! normal payload is the state-machine command itself (compact and cheap to decode);
//! membership changes, rare and small, are JSON.

use openraft::{CommittedLeaderId, EntryPayload};
use prost::Message;

use super::{Entry, LogId, Request};
use crate::pb::storepb::{Empty, LogEntry, log_entry};

/// Why bytes could not be decoded into an entry.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a log entry: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("bad membership in log entry: {0}")]
    Membership(#[from] serde_json::Error),
    #[error("log entry has no payload")]
    NoPayload,
}

pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    to_proto(entry).encode_to_vec()
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    from_proto(LogEntry::decode(bytes)?)
}

pub fn to_proto(entry: &Entry) -> LogEntry {
    let payload = match &entry.payload {
        EntryPayload::Blank => log_entry::Payload::Blank(Empty {}),
        EntryPayload::Normal(r) => log_entry::Payload::Normal(r.encoded().clone()),
        EntryPayload::Membership(m) => log_entry::Payload::MembershipJson(
            // A Membership is plain maps and sets of integers and strings.
            serde_json::to_vec(m).unwrap_or_default(),
        ),
    };
    LogEntry {
        term: entry.log_id.leader_id.term,
        leader_node_id: entry.log_id.leader_id.node_id,
        index: entry.log_id.index,
        payload: Some(payload),
    }
}

pub fn from_proto(e: LogEntry) -> Result<Entry, DecodeError> {
    let payload = match e.payload.ok_or(DecodeError::NoPayload)? {
        log_entry::Payload::Blank(_) => EntryPayload::Blank,
        log_entry::Payload::Normal(r) => EntryPayload::Normal(Request::decode(r)?),
        log_entry::Payload::MembershipJson(j) => {
            EntryPayload::Membership(serde_json::from_slice(&j)?)
        }
    };
    Ok(Entry {
        log_id: log_id(e.term, e.leader_node_id, e.index),
        payload,
    })
}

pub fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node_id), index)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::pb::etcdserverpb::PutRequest;
    use crate::pb::storepb::{InternalRequest, Proposal, internal_request};
    use crate::raft::Member;

    #[test]
    fn round_trips() {
        let put = InternalRequest {
            request: Some(internal_request::Request::Put(PutRequest {
                key: b"/registry/pods/default/a".to_vec(),
                value: b"{}".to_vec(),
                ..Default::default()
            })),
        };
        let members = BTreeMap::from([(
            7u64,
            Member {
                name: "a".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
            },
        )]);
        let membership = openraft::Membership::new(vec![BTreeSet::from([7u64])], members);
        let entries = [
            Entry {
                log_id: log_id(1, 7, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 7, 2),
                payload: EntryPayload::Normal(Request::new(Proposal {
                    requests: vec![put.clone(), put],
                    id: 7,
                })),
            },
            Entry {
                log_id: log_id(2, 7, 3),
                payload: EntryPayload::Membership(membership),
            },
        ];
        for e in entries {
            let back = decode_entry(&encode_entry(&e)).unwrap();
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_entry(&[0xff, 0xff, 0xff]).is_err());
        assert!(matches!(decode_entry(&[]), Err(DecodeError::NoPayload)));
    }
}
