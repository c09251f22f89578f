//! The Raft type configuration shared by every group a node hosts.
//!
//! Every group replicates opaque commands (bytes) and answers with opaque results: the group's
//! [`GroupApp`](crate::GroupApp) gives them meaning. So one log store, one transport and one node id space
//! serve every service a node runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's id, unique in the cluster and never reused.
pub type NodeId = u64;

/// A Raft group's id, unique among the groups of a cluster.
pub type GroupId = u64;

/// How peers and clients reach a node: what Raft membership records for each member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// A human-readable name (etcd's `--name`).
    pub name: String,
    /// The peer (Raft) URL, e.g. `http://127.0.0.1:2380`.
    pub peer_url: String,
    /// The URLs its client-facing services answer on.
    pub client_urls: Vec<String>,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_url)
    }
}

/// The node id a founding member gets: derived from its advertised peer URL, so every founder writes the same
/// first membership without talking. Members added later get a new id on each add
/// ([`MemberChange::Add`](crate::MemberChange::Add)).
pub fn node_id_for(peer_url: &str) -> NodeId {
    fnv1a(peer_url.trim_end_matches('/').bytes())
}

/// The id a member added at `peer_url` gets when the group's log ends at `last_log_index` on the leader adding it.
/// A removal is a log entry, so a member removed and added back at the same URL gets a different id: the groups
/// that still list the old id cannot take the new, empty member for it. The added node learns its id from the
/// group's leader (see [`ClusterState::Existing`](crate::ClusterState::Existing)).
pub(crate) fn added_node_id(peer_url: &str, last_log_index: u64) -> NodeId {
    let url = peer_url.trim_end_matches('/').bytes();
    fnv1a(url.chain(*b"#").chain(last_log_index.to_be_bytes()))
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> NodeId {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Keep ids positive in signed renderings and never zero.
    (hash >> 1).max(1)
}

/// One command in a group's log: opaque bytes that the group's [`GroupApp`](crate::GroupApp) encoded and will
/// decode. Serialized as bytes, not as a sequence of numbers: entries are encoded on every append and every
/// replication, and element-wise encoding cost a tenth of a busy node's CPU. (The encoding is the same as a
/// `Vec<u8>`'s in postcard, so logs written before this type existed read unchanged.)
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for CommandBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandBytes({} bytes)", self.0.len())
    }
}

impl fmt::Display for CommandBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl From<Vec<u8>> for CommandBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every Trestle Raft group.
    pub TypeConfig:
        D = CommandBytes,
        R = Vec<u8>,
        NodeId = NodeId,
        Node = PeerNode,
        AsyncRuntime = crate::runtime::TrestleRuntime,
);

/// A Raft handle of one group. Every group's state machine is a [`GroupStateMachine`](crate::GroupStateMachine)
/// over its (type-erased) application, so handles of different services share one type.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::GroupStateMachine>;
/// The id of a leader (term and node), as a log id records it.
pub type LeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// An entry's payload.
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
/// A log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A storage error.
pub type StorageError = openraft::StorageError<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// Membership as stored with an entry's log id.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A group's membership configuration.
pub type Membership = openraft::Membership<NodeId, PeerNode>;

/// The log id of entry `index` written by the leader of `term` that is node `node`.
pub fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
    openraft::LogId::new(LeaderId { term, node_id: node }, index)
}

#[cfg(test)]
mod encoding_tests {
    use super::*;
    use crate::log_store::{decode, encode};

    #[test]
    fn bytes_encode_as_a_plain_vec_did_so_old_logs_still_read() {
        let raw: Vec<u8> = (0..=255).collect();
        let old = encode(&raw).expect("encodes");
        assert_eq!(encode(&CommandBytes(raw.clone())).expect("encodes"), old);
        assert_eq!(
            decode::<CommandBytes>(&old).expect("decodes"),
            CommandBytes(raw.clone())
        );
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn a_member_added_again_at_the_same_url_gets_another_id() {
        let url = "http://127.0.0.1:2380";
        let first = added_node_id(url, 10);
        assert_ne!(
            first,
            added_node_id(url, 12),
            "the removal in between is a log entry"
        );
        assert_ne!(first, node_id_for(url), "nor the id a founder at that URL had");
        assert_eq!(first, added_node_id(&format!("{url}/"), 10));
    }
}
