//! Handing a group's leadership to another voter: what a graceful stop does on every group it leads (so the
//! group does not wait out an election timeout), and what etcd's `MoveLeader` asks for.
//!
//! openraft runs the transfer: the leader stops taking writes, sends the target its log and a `TransferLeader`
//! request, and the target, once its log is flushed up to the leader's, campaigns at once.

use openraft::async_runtime::WatchReceiver as _;
use std::time::Duration;

use openraft::{RaftMetrics, ServerState};

use crate::types::{GroupId, NodeId, Raft, TypeConfig};

/// Why leadership could not be handed over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// This node does not lead the group.
    #[error("this node does not lead raft group {group}")]
    NotLeader {
        /// The group.
        group: GroupId,
    },
    /// The requested target is not a voter of the group.
    #[error("node {target:x} is not a voter of raft group {group}")]
    NotAVoter {
        /// The group.
        group: GroupId,
        /// The requested target.
        target: NodeId,
    },
    /// The group has no other voter.
    #[error("raft group {group} has no other voter to hand its leadership to")]
    NoSuccessor {
        /// The group.
        group: GroupId,
    },
    /// No other node took the leadership in time.
    #[error("leadership of raft group {group} did not move to node {target:x} within {timeout:?}")]
    TimedOut {
        /// The group.
        group: GroupId,
        /// The node asked to take over.
        target: NodeId,
        /// How long it was given.
        timeout: Duration,
    },
    /// The group's Raft has stopped.
    #[error("raft group {group} stopped: {message}")]
    Stopped {
        /// The group.
        group: GroupId,
        /// What openraft said.
        message: String,
    },
}

/// The voter best placed to lead next, as the leader sees it: the one whose log matches the leader's furthest,
/// the lowest id among equals. `None` when the group has no other voter or this node does not lead.
pub fn best_successor(metrics: &RaftMetrics<TypeConfig>) -> Option<NodeId> {
    let replication = metrics.replication.as_ref()?;
    metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != metrics.id)
        .max_by(|a, b| {
            let matched = |id: &NodeId| replication.get(id).copied().flatten();
            // Furthest matched log first; then the lower id (reversed, since `max_by` keeps the last maximum).
            matched(a).cmp(&matched(b)).then(b.cmp(a))
        })
}

/// Hands the leadership of `group` (led by this node, through `raft`) to `target`, or to the
/// [`best_successor`] when `target` is `None`, and waits up to `timeout` for another node to lead. Returns the
/// new leader (normally the target; another voter can win the election the target starts).
pub async fn transfer_leadership(
    raft: &Raft,
    group: GroupId,
    target: Option<NodeId>,
    timeout: Duration,
) -> Result<NodeId, TransferError> {
    let metrics = raft.metrics().borrow_watched().clone();
    if metrics.state != ServerState::Leader || metrics.current_leader != Some(metrics.id) {
        return Err(TransferError::NotLeader { group });
    }
    let me = metrics.id;
    let target = match target {
        Some(target) => {
            let voter = target != me
                && metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == target);
            if !voter {
                return Err(TransferError::NotAVoter { group, target });
            }
            target
        }
        None => best_successor(&metrics).ok_or(TransferError::NoSuccessor { group })?,
    };
    raft.trigger()
        .transfer_leader(target)
        .await
        .map_err(|e| TransferError::Stopped {
            group,
            message: e.to_string(),
        })?;
    let moved = raft
        .wait(Some(timeout))
        .metrics(
            |m| m.current_leader.is_some_and(|leader| leader != me),
            "leadership moved",
        )
        .await;
    match moved {
        Ok(m) => {
            let leader = m.current_leader.unwrap_or(target);
            tracing::info!(group, from = me, to = leader, "leadership handed over");
            metrics::counter!("trestle_raft_leadership_transfers_total", "group" => group.to_string())
                .increment(1);
            Ok(leader)
        }
        Err(openraft::metrics::WaitError::Timeout(..)) => Err(TransferError::TimedOut {
            group,
            target,
            timeout,
        }),
        Err(e) => Err(TransferError::Stopped {
            group,
            message: e.to_string(),
        }),
    }
}
