//! The openraft type configuration: what a log entry carries and what applying it returns.

use std::io::Cursor;

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proto::cairnpb::{RaftBatch, RaftResponse};

/// Identifies a member. It is etcd's member ID, so it is also the Raft node id.
pub type MemberId = u64;

openraft::declare_raft_types!(
    /// Cairn's Raft types: entries carry etcd requests, applying them yields etcd responses.
    pub TypeConfig:
        D = Proposal,
        R = AppliedBatch,
        NodeId = MemberId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<MemberId>;
pub type Vote = openraft::Vote<MemberId>;
pub type StoredMembership = openraft::StoredMembership<MemberId, Member>;
pub type StorageError = openraft::StorageError<MemberId>;

/// What Raft knows of a member besides its id: etcd's member attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// Added as a voter (etcd's MemberAdd without `--learner`): it joins as a learner and is
    /// promoted as soon as it has caught up, so adding it never stalls the cluster.
    pub wants_vote: bool,
}

/// The client requests of one log entry. They travel as their protobuf encoding so that the
/// log holds exactly the bytes etcd's own messages would have.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal(pub RaftBatch);

impl Serialize for Proposal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        RaftBatch::decode(bytes.as_slice())
            .map(Proposal)
            .map_err(serde::de::Error::custom)
    }
}

/// The outcomes of applying one log entry: one per request of its batch (none for blank and
/// membership entries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedBatch(pub Vec<Applied>);

/// The outcome of applying one client request.
///
/// Errors are kept as a gRPC code and etcd's message: they are deterministic results of the
/// state machine (a compacted revision, a missing key), decided identically on every member.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Nothing to answer: the request was empty.
    Nothing,
    Response(RaftResponse),
    Rejected {
        code: i32,
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
enum AppliedWire {
    Nothing,
    Response(serde_bytes::ByteBuf),
    Rejected { code: i32, message: String },
}

impl Serialize for Applied {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            Applied::Nothing => AppliedWire::Nothing,
            Applied::Response(response) => {
                AppliedWire::Response(serde_bytes::ByteBuf::from(response.encode_to_vec()))
            }
            Applied::Rejected { code, message } => AppliedWire::Rejected {
                code: *code,
                message: message.clone(),
            },
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Applied {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match AppliedWire::deserialize(deserializer)? {
            AppliedWire::Nothing => Applied::Nothing,
            AppliedWire::Response(bytes) => Applied::Response(
                RaftResponse::decode(bytes.as_slice()).map_err(serde::de::Error::custom)?,
            ),
            AppliedWire::Rejected { code, message } => Applied::Rejected { code, message },
        })
    }
}

impl Applied {
    /// The etcd response, or the etcd error the state machine decided on.
    pub fn into_result(self) -> Result<Option<RaftResponse>, tonic::Status> {
        match self {
            Applied::Nothing => Ok(None),
            Applied::Response(response) => Ok(Some(response)),
            Applied::Rejected { code, message } => {
                Err(tonic::Status::new(tonic::Code::from_i32(code), message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cairnpb::{raft_request, raft_response, RaftRequest};
    use crate::proto::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};

    #[test]
    fn proposal_survives_the_log_encoding() {
        let proposal = Proposal(RaftBatch {
            requests: vec![RaftRequest {
                request: Some(raft_request::Request::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![0, 159, 146, 150],
                    ..Default::default()
                })),
            }],
        });
        let bytes = postcard::to_allocvec(&proposal).unwrap();
        let back: Proposal = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, proposal);
    }

    #[test]
    fn applied_keeps_responses_and_errors() {
        let cases = [
            Applied::Nothing,
            Applied::Response(RaftResponse {
                response: Some(raft_response::Response::Put(PutResponse {
                    header: Some(ResponseHeader {
                        revision: 7,
                        ..Default::default()
                    }),
                    prev_kv: None,
                })),
            }),
            Applied::Rejected {
                code: tonic::Code::OutOfRange as i32,
                message: "etcdserver: mvcc: required revision has been compacted".into(),
            },
        ];
        for applied in cases {
            let bytes = postcard::to_allocvec(&applied).unwrap();
            let back: Applied = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, applied);
        }
    }
}
