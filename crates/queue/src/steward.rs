//! Keeping a host's partitions in shape, from every member, in the background:
//!
//! - **Membership follows the cluster's.** A partition's leader compares the partition's members with those of a
//!   reference group (the coordination store's, whose membership is the cluster's: etcd's `MemberAdd` and
//!   `MemberRemove` change it). A member the cluster lost leaves the partition first; then a member the cluster
//!   gained joins as a learner, under the id the cluster gave it, and becomes a voter once its log has caught up.
//!   One change per partition per round, so a partition never changes two members at once. Ids are never
//!   reused (`MemberChange::Add`), and a node answers only for its own id, so a member removed, wiped and added
//!   back is a new member to every partition, never the old voter with its log gone.
//! - **Leaders spread over the members.** Each member counts the partitions every voter leads; a member that
//!   leads more than one partition above the least-loaded voter hands one of its partitions to that voter. Every
//!   member runs the same rule on its own leaderships, so the counts converge to within one of each other.
//!
//! The decisions are pure functions ([`membership_step`], [`leader_move`]) tested without a cluster; the loop
//! around them reads Raft metrics and runs membership changes and leadership transfers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use trestle_raft::{
    GroupId, MemberChange, Node, NodeId, PeerChannels, PeerNode, WatchReceiver as _, members_from_leader,
    transfer_leadership,
};

use crate::host::PartitionHandle;

/// A group's members as one member sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// Voters.
    pub voters: BTreeSet<NodeId>,
    /// Learners.
    pub learners: BTreeSet<NodeId>,
}

impl Members {
    fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// One membership change that brings a partition closer to the cluster's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStep {
    /// A cluster voter the partition lacks: add it as a learner.
    AddLearner(NodeId),
    /// A partition learner that is a cluster voter and has caught up: make it a voter.
    Promote(NodeId),
    /// A partition member the cluster no longer has: remove it.
    Remove(NodeId),
    /// The leader itself is no longer in the cluster: hand the leadership over, so the next leader removes it.
    HandOver,
}

/// The next change for a partition led by `leader` with `partition` members, given the cluster's `cluster`
/// members; `caught_up(id)` says whether a learner's log is close enough to the leader's to vote. `None`: nothing
/// to do. The leader never removes itself: a leader the cluster lost hands over first, once the others are set.
///
/// Members the cluster lost leave before new ones join: a removed member may be gone for good (stopped, its
/// data wiped), and while it stays a voter it counts in the partition's quorum without answering, so adding a
/// voter first would need every other member up to commit anything.
pub fn membership_step(
    leader: NodeId,
    cluster: &Members,
    partition: &Members,
    caught_up: impl Fn(NodeId) -> bool,
) -> Option<MemberStep> {
    let gone = partition
        .voters
        .iter()
        .chain(&partition.learners)
        .find(|id| **id != leader && !cluster.contains(**id));
    if let Some(&id) = gone {
        return Some(MemberStep::Remove(id));
    }
    if let Some(&id) = cluster.voters.iter().find(|id| !partition.contains(**id)) {
        return Some(MemberStep::AddLearner(id));
    }
    if let Some(&id) = partition
        .learners
        .iter()
        .find(|id| cluster.voters.contains(id) && caught_up(**id))
    {
        return Some(MemberStep::Promote(id));
    }
    (!cluster.contains(leader)).then_some(MemberStep::HandOver)
}

/// Which of its partitions `me` should hand to which voter, given each partition's leader: one partition, to
/// the voter leading the fewest (lowest id among equals), when `me` leads at least two more than it. `None`
/// while a partition has no leader or the counts are within one.
pub fn leader_move(
    me: NodeId,
    leaders: &BTreeMap<GroupId, Option<NodeId>>,
    voters: &BTreeSet<NodeId>,
) -> Option<(GroupId, NodeId)> {
    if !voters.contains(&me) || leaders.values().any(Option::is_none) {
        return None;
    }
    let mut counts: BTreeMap<NodeId, usize> = voters.iter().map(|v| (*v, 0)).collect();
    for leader in leaders.values().flatten() {
        *counts.entry(*leader).or_default() += 1;
    }
    let mine = counts.get(&me).copied().unwrap_or(0);
    let (&target, &fewest) = counts.iter().min_by_key(|(id, n)| (**n, **id))?;
    if target == me || mine < fewest + 2 {
        return None;
    }
    let group = leaders
        .iter()
        .find(|(_, leader)| **leader == Some(me))
        .map(|(group, _)| *group)?;
    Some((group, target))
}

/// How far behind the leader's log a learner may be and still be promoted.
const CATCH_UP_SLACK: u64 = 64;

fn members_of(raft: &trestle_raft::Raft) -> (Members, BTreeMap<NodeId, PeerNode>) {
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
    (Members { voters, learners }, nodes)
}

/// Runs the steward on `node` every `interval` until the node shuts down. `follow`: the group whose membership
/// the partitions follow (none: membership is left alone).
pub(crate) fn spawn(
    node: &Node,
    partitions: BTreeMap<GroupId, PartitionHandle>,
    follow: Option<GroupId>,
    interval: Duration,
) {
    let groups = node.groups().clone();
    let channels = node.peer_channels().clone();
    let me = node.id();
    node.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut cluster = None;
            if let Some((group, raft)) = follow.and_then(|g| Some((g, groups.raft(g).ok()?))) {
                let (mut members, nodes) = members_of(&raft);
                if members.contains(me) && leads_any(&partitions) {
                    confirm_still_member(me, &channels, &raft, group, &mut members).await;
                }
                cluster = Some((members, nodes));
            }
            let mut changing = false;
            if let Some((cluster, nodes)) = &cluster {
                // The reference group may be one of the partitions: it does not follow itself (read a moment
                // apart, its two views would disagree during its own changes, and the steward would "correct"
                // an operator's removal half-way through).
                for (group, partition) in partitions.iter().filter(|(g, _)| Some(**g) != follow) {
                    changing |= follow_membership(me, *group, partition, cluster, nodes).await;
                }
            }
            if !changing {
                balance_leaders(me, &partitions).await;
            }
        }
    });
}

fn leads_any(partitions: &BTreeMap<GroupId, PartitionHandle>) -> bool {
    partitions.values().any(|p| p.service().is_leader())
}

/// How long the reference group's leader has to say who its members are.
const ASK_MEMBERS_TIMEOUT: Duration = Duration::from_secs(1);

/// A member the cluster removed may never receive the entry that removes it (the leader stops replicating to it),
/// so its own view of the reference group can list it for good, and as a partition leader it would never hand
/// over. A node that leads partitions and sees itself in the cluster asks the reference group's leader; if the
/// leader does not list it, it is taken out of `members` (and hands its partitions over). When no leader
/// answers, the local view stands.
async fn confirm_still_member(
    me: NodeId,
    channels: &PeerChannels,
    raft: &trestle_raft::Raft,
    group: GroupId,
    members: &mut Members,
) {
    let leader = raft.metrics().borrow_watched().current_leader;
    if leader == Some(me) {
        return;
    }
    match members_from_leader(channels, raft, group, ASK_MEMBERS_TIMEOUT).await {
        Ok(listed) if !listed.iter().any(|(id, _)| *id == me) => {
            tracing::info!(group, me, "the cluster's leader no longer lists this member");
            members.voters.remove(&me);
            members.learners.remove(&me);
        }
        Ok(_) => {}
        Err(status) => tracing::debug!(group, %status, "membership not confirmed by a leader"),
    }
}

/// One membership step on a partition this node leads; whether the partition's membership differs from the
/// cluster's (a change is under way).
async fn follow_membership(
    me: NodeId,
    group: GroupId,
    partition: &PartitionHandle,
    cluster: &Members,
    nodes: &BTreeMap<NodeId, PeerNode>,
) -> bool {
    let service = partition.service();
    if !service.is_leader() {
        return false;
    }
    let metrics = service.raft().metrics().borrow_watched().clone();
    let (members, _) = members_of(service.raft());
    let last = metrics.last_log_index.unwrap_or(0);
    let caught_up = |id: NodeId| {
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
            .is_some_and(|matched| matched.index + CATCH_UP_SLACK >= last)
    };
    let Some(step) = membership_step(me, cluster, &members, caught_up) else {
        return false;
    };
    let change = match step {
        MemberStep::AddLearner(id) => match nodes.get(&id) {
            Some(node) => MemberChange::AddWithId {
                id,
                node: node.clone(),
                learner: true,
            },
            None => return true,
        },
        MemberStep::Promote(id) => MemberChange::Promote(id),
        MemberStep::Remove(id) => MemberChange::Remove(id),
        MemberStep::HandOver => {
            match transfer_leadership(service.raft(), group, None, Duration::from_secs(5)).await {
                Ok(to) => tracing::info!(group, to, "left the cluster: partition leadership handed over"),
                Err(e) => tracing::debug!(group, error = %e, "handover not done; next round"),
            }
            return true;
        }
    };
    match service.change_member(change).await {
        Ok(_) => tracing::info!(group, ?step, "queue partition follows the cluster's membership"),
        Err(status) => tracing::debug!(group, ?step, %status, "membership step not taken; next round"),
    }
    true
}

/// Hands one partition's leadership to a less loaded voter when this node leads too many.
async fn balance_leaders(me: NodeId, partitions: &BTreeMap<GroupId, PartitionHandle>) {
    let leaders: BTreeMap<GroupId, Option<NodeId>> = partitions
        .iter()
        .map(|(g, p)| (*g, p.service().current_leader()))
        .collect();
    let Some(first) = partitions.values().next() else {
        return;
    };
    let (members, _) = members_of(first.service().raft());
    // Only when every partition has the same voters and no learners (no membership change under way).
    let same = partitions.values().all(|p| {
        let (m, _) = members_of(p.service().raft());
        m.voters == members.voters && m.learners.is_empty()
    });
    if !same {
        return;
    }
    if let Some((group, target)) = leader_move(me, &leaders, &members.voters)
        && let Some(partition) = partitions.get(&group)
    {
        match transfer_leadership(
            partition.service().raft(),
            group,
            Some(target),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(leader) => tracing::info!(group, to = leader, "queue partition leadership spread"),
            Err(e) => tracing::debug!(group, error = %e, "leadership not moved; next round"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(voters: &[NodeId], learners: &[NodeId]) -> Members {
        Members {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
        }
    }

    #[test]
    fn a_member_the_cluster_gained_joins_as_a_learner_then_votes_once_caught_up() {
        let cluster = members(&[1, 2, 3, 4], &[]);
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2, 3], &[]), |_| true),
            Some(MemberStep::AddLearner(4))
        );
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2, 3], &[4]), |_| false),
            None
        );
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2, 3], &[4]), |id| id == 4),
            Some(MemberStep::Promote(4))
        );
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2, 3, 4], &[]), |_| true),
            None
        );
    }

    #[test]
    fn a_cluster_learner_is_not_promoted_in_the_partition() {
        // The cluster itself holds 4 as a learner: the partition keeps it as it is, learner or absent.
        let cluster = members(&[1, 2, 3], &[4]);
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2, 3], &[4]), |_| true),
            None
        );
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2, 3], &[]), |_| true),
            None
        );
    }

    #[test]
    fn a_member_the_cluster_lost_leaves_but_never_the_leader_itself() {
        let cluster = members(&[1, 2], &[]);
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2, 3], &[]), |_| true),
            Some(MemberStep::Remove(3))
        );
        assert_eq!(
            membership_step(3, &members(&[1, 2], &[]), &members(&[1, 2, 3], &[]), |_| true),
            Some(MemberStep::HandOver),
            "the leader the cluster lost hands over; the next leader removes it"
        );
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2], &[]), |_| true),
            None
        );
    }

    #[test]
    fn a_member_removed_and_added_back_leaves_under_its_old_id_before_joining_under_its_new_one() {
        // 3 was removed, wiped and added back as 4 (a new id at the same URL).
        let cluster = members(&[1, 2, 4], &[]);
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2, 3], &[]), |_| true),
            Some(MemberStep::Remove(3))
        );
        assert_eq!(
            membership_step(1, &cluster, &members(&[1, 2], &[]), |_| true),
            Some(MemberStep::AddLearner(4))
        );
    }

    fn leaders(of: &[(GroupId, Option<NodeId>)]) -> BTreeMap<GroupId, Option<NodeId>> {
        of.iter().copied().collect()
    }

    #[test]
    fn a_member_leading_two_more_than_another_hands_one_over() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let all_on_1 = leaders(&[(10, Some(1)), (11, Some(1)), (12, Some(1))]);
        assert_eq!(leader_move(1, &all_on_1, &voters), Some((10, 2)));
        assert_eq!(
            leader_move(2, &all_on_1, &voters),
            None,
            "only the overloaded member acts"
        );
        let spread = leaders(&[(10, Some(2)), (11, Some(1)), (12, Some(1))]);
        assert_eq!(leader_move(1, &spread, &voters), Some((11, 3)));
        let even = leaders(&[(10, Some(2)), (11, Some(1)), (12, Some(3))]);
        assert_eq!(leader_move(1, &even, &voters), None);
        let within_one = leaders(&[(10, Some(1)), (11, Some(1)), (12, Some(2)), (13, Some(3))]);
        assert_eq!(leader_move(1, &within_one, &voters), None);
    }

    #[test]
    fn nothing_moves_while_a_partition_has_no_leader_or_from_a_non_voter() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let leaderless = leaders(&[(10, Some(1)), (11, Some(1)), (12, None)]);
        assert_eq!(leader_move(1, &leaderless, &voters), None);
        let all_on_9 = leaders(&[(10, Some(9)), (11, Some(9)), (12, Some(9))]);
        assert_eq!(leader_move(9, &all_on_9, &voters), None);
    }
}
