//! Membership changes of a group, run on its leader.

use openraft::async_runtime::WatchReceiver as _;
use std::collections::{BTreeMap, BTreeSet};

use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::service::{Failure, Service};
use crate::types::{NodeId, PeerNode, Raft};

/// A change to a group's membership (etcd's Cluster API for the coordination store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MemberChange {
    /// Add a member, as a learner or as a voter, under a new id (never one the group has had before: a member
    /// removed and added back at the same URL is a new member). No member may have its peer URL already.
    Add {
        /// How to reach it (name and client URLs may be empty until it starts and publishes them). In the
        /// membership group (`NodeConfig::membership_group`) leave the client URLs empty, as etcd's MemberAdd
        /// does: a node on a new data directory refuses to start when that group lists its peer URL with client
        /// URLs, which it takes to mean that the member has run before (`NodeError::AlreadyBootstrapped`).
        node: PeerNode,
        /// Add as a non-voting learner.
        learner: bool,
    },
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a member (voter or learner).
    Remove(NodeId),
    /// Record a member's name and client URLs (a starting node publishes its own). The peer URL is the
    /// membership's (moved only by [`MemberChange::UpdatePeerUrl`]), whatever the given node says.
    SetAttributes(NodeId, PeerNode),
    /// Move a member to another peer URL (etcd's MemberUpdate): it keeps its id, name and client URLs, and the
    /// others reach it at the new URL; restart it advertising that URL, on its data directory.
    UpdatePeerUrl(NodeId, String),
    /// Add a member under the id another group gave it: a group that follows the cluster's membership (a queue
    /// partition) adds the cluster's members as they are. No member may have the id or the peer URL already.
    AddWithId {
        /// The member's id in the cluster.
        id: NodeId,
        /// How to reach it.
        node: PeerNode,
        /// Add as a non-voting learner.
        learner: bool,
    },
}

/// Runs `change` on this node, which believes it leads. `Ok(None)`: not the leader (any more), or another
/// change is still committing; the caller tries again within its deadline.
pub(crate) async fn change_member_local<S: Service>(
    raft: &Raft,
    change: &MemberChange,
) -> Result<Option<NodeId>, Status> {
    let membership = raft
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .clone();
    let is_voter = |id: NodeId| membership.voter_ids().any(|v| v == id);
    let is_learner = |id: NodeId| membership.learner_ids().any(|l| l == id);
    let (id, result) = match change {
        MemberChange::Add { node, learner } | MemberChange::AddWithId { node, learner, .. } => {
            let id = match change {
                MemberChange::AddWithId { id, .. } => *id,
                _ => {
                    let last_log_index = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
                    crate::types::added_node_id(&node.peer_url, last_log_index)
                }
            };
            let url = node.peer_url.trim_end_matches('/');
            let taken = membership
                .nodes()
                .any(|(other, n)| *other == id || n.peer_url.trim_end_matches('/') == url);
            if taken {
                return Err(S::status(Failure::MemberExists));
            }
            let added = raft.add_learner(id, node.clone(), false).await;
            let result = match (added, learner) {
                (Ok(r), true) => Ok(r),
                (Ok(_), false) => {
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                        .await
                }
                (Err(e), _) => Err(e),
            };
            (id, result)
        }
        MemberChange::Promote(id) => {
            if is_voter(*id) {
                return Err(S::status(Failure::NotALearner));
            }
            if !is_learner(*id) {
                return Err(S::status(Failure::MemberNotFound));
            }
            (
                *id,
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), true)
                    .await,
            )
        }
        MemberChange::Remove(id) => {
            let change = if is_voter(*id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
            } else if is_learner(*id) {
                ChangeMembers::RemoveNodes(BTreeSet::from([*id]))
            } else {
                return Err(S::status(Failure::MemberNotFound));
            };
            let mut result = raft.change_membership(change, false).await;
            // A change that lands while the removal is joint can settle it with the member kept as a learner
            // (openraft flattens a committed joint configuration for the next change, retaining removed voters
            // when that change retains). A removed member must not stay listed: MemberAdd at its URL would be
            // refused, and groups following this one would keep it. Remove what is left of it.
            if let Ok(response) = &result
                && response
                    .membership
                    .as_ref()
                    .is_some_and(|m| m.get_node(id).is_some())
            {
                result = raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false)
                    .await;
            }
            (*id, result)
        }
        MemberChange::UpdatePeerUrl(id, url) => {
            let Some(current) = membership.get_node(id) else {
                return Err(S::status(Failure::MemberNotFound));
            };
            let taken = membership.nodes().any(|(other, node)| {
                other != id && (node.peer_url == *url || *other == crate::types::node_id_for(url))
            });
            if taken {
                return Err(S::status(Failure::MemberExists));
            }
            let node = PeerNode {
                peer_url: url.clone(),
                ..current.clone()
            };
            (
                *id,
                raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(*id, node)])), true)
                    .await,
            )
        }
        MemberChange::SetAttributes(id, node) => {
            let Some(current) = membership.get_node(id) else {
                return Err(S::status(Failure::MemberNotFound));
            };
            let node = PeerNode {
                peer_url: current.peer_url.clone(),
                ..node.clone()
            };
            (
                *id,
                raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(*id, node)])), true)
                    .await,
            )
        }
    };
    match result {
        Ok(_) => Ok(Some(id)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
        // Another change (a member publishing its attributes, say) is still committing: try again shortly,
        // within the request's deadline.
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        ))) => Ok(None),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(S::status(Failure::MembershipRefused(e.to_string())))
        }
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
            Err(S::status(Failure::LeaderLost))
        }
        Err(RaftError::APIError(e)) => Err(S::status(Failure::MembershipRefused(e.to_string()))),
        Err(RaftError::Fatal(e)) => Err(S::status(Failure::RaftStopped(e.to_string()))),
    }
}
