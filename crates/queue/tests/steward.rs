//! The steward on three (then four) nodes: partition leaders spread over the members after they all landed on
//! one, and partitions follow the membership of a reference group (a member added joins every partition as a
//! voter and holds its data; a member removed leaves).
#![cfg(feature = "raft")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::Cluster;
use trestle_queue::server::{PARTITION_GROUP_BASE, QueueHostConfig};
use trestle_queue::{NewMessage, QueueSettings};
use trestle_raft::testing::wait_for;
use trestle_raft::{MemberChange, NodeId, WatchReceiver as _, transfer_leadership};

fn config(follow: Option<u64>) -> QueueHostConfig {
    let mut config = QueueHostConfig::default().with_partitions(3);
    config.follow_group = follow;
    config.steward_interval = Some(Duration::from_millis(200));
    config
}

fn leaders(cluster: &Cluster) -> Vec<Option<NodeId>> {
    cluster.hosts[0]
        .partitions()
        .values()
        .map(|p| p.service().current_leader())
        .collect()
}

fn voters(cluster: &Cluster, node: usize, group: u64) -> BTreeSet<NodeId> {
    let raft = cluster.hosts[node].partitions()[&group].service().raft().clone();
    let metrics = raft.metrics().borrow_watched().clone();
    metrics.membership_config.membership().voter_ids().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_leaders_spread_over_the_members() {
    let cluster = Cluster::start(config(None)).await;
    let ids: Vec<NodeId> = cluster.nodes.iter().map(|n| n.id()).collect();
    wait_for(
        "every partition to have a leader",
        Duration::from_secs(10),
        || async { leaders(&cluster).iter().all(Option::is_some).then_some(()) },
    )
    .await
    .unwrap();
    // Move every leadership to node 0 (the steward may already move one back: that is its job).
    for (group, partition) in cluster.hosts[0].partitions() {
        let Some(leader) = partition.service().current_leader() else {
            continue;
        };
        if leader == ids[0] {
            continue;
        }
        let at = ids.iter().position(|id| *id == leader).unwrap();
        let raft = cluster.hosts[at].partitions()[group].service().raft().clone();
        let _ = transfer_leadership(&raft, *group, Some(ids[0]), Duration::from_secs(5)).await;
    }
    wait_for(
        "one partition led by each member",
        Duration::from_secs(20),
        || async {
            let led: BTreeSet<NodeId> = leaders(&cluster).into_iter().flatten().collect();
            (led.len() == 3).then_some(())
        },
    )
    .await
    .unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_follow_the_reference_groups_membership() {
    // Partitions 1 and 2 follow partition 0's membership, which the test changes as an operator would change
    // the cluster's.
    let reference = PARTITION_GROUP_BASE;
    let mut cluster = Cluster::start(config(Some(reference))).await;
    let client = cluster.client();
    client
        .create_queue("jobs", 3, &QueueSettings::default())
        .await
        .unwrap();
    client
        .send(
            "jobs",
            (0..30).map(|i| NewMessage::new(format!("m{i}"))).collect(),
        )
        .await
        .unwrap();

    let joiner = cluster.start_joiner().await;
    let new_id = cluster.nodes[joiner].id();
    let reference_service = cluster.hosts[0].partitions()[&reference].service().clone();
    reference_service
        .change_member(MemberChange::Add {
            node: cluster.nodes[joiner].peer_node(),
            learner: true,
        })
        .await
        .unwrap();
    reference_service
        .change_member(MemberChange::Promote(new_id))
        .await
        .unwrap();

    let followers = [PARTITION_GROUP_BASE + 1, PARTITION_GROUP_BASE + 2];
    wait_for(
        "the new member to vote in every partition",
        Duration::from_secs(30),
        || async {
            followers
                .iter()
                .all(|g| voters(&cluster, 0, *g).contains(&new_id))
                .then_some(())
        },
    )
    .await
    .unwrap();
    // It holds the partitions' data: its own replica knows the queue and its messages.
    wait_for(
        "the new member's replicas to catch up",
        Duration::from_secs(30),
        || async {
            let depth: u64 = followers
                .iter()
                .map(|g| {
                    cluster.hosts[joiner].partitions()[g]
                        .local(|p| p.stats("jobs").map(|s| s.depth).unwrap_or(0))
                        .unwrap_or(0)
                })
                .sum();
            let total: u64 = cluster.hosts[0]
                .partitions()
                .iter()
                .filter(|(g, _)| followers.contains(g))
                .map(|(_, p)| {
                    p.local(|p| p.stats("jobs").map(|s| s.depth).unwrap_or(0))
                        .unwrap_or(0)
                })
                .sum();
            (depth == total).then_some(())
        },
    )
    .await
    .unwrap();

    // A member the reference group loses leaves every partition.
    let gone = cluster.nodes[2].id();
    reference_service
        .change_member(MemberChange::Remove(gone))
        .await
        .unwrap();
    wait_for(
        "the removed member to leave every partition",
        Duration::from_secs(30),
        || async {
            followers
                .iter()
                .all(|g| !voters(&cluster, 0, *g).contains(&gone))
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Through the new member alone, the queue still works.
    let via_new = cluster.client_of(joiner);
    let got = via_new
        .receive("jobs", 100, Duration::from_secs(2), None)
        .await
        .unwrap();
    assert!(!got.is_empty());
    cluster.stop().await;
}
