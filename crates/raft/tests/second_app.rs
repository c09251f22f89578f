//! A service on the host alone: named counters (`support/counters.rs`, written against the replicated-service
//! layer and nothing else) as the only Raft group of three nodes. It passes the `GroupApp` conformance suite,
//! and keeps every acknowledged write through leader changes, snapshots and restarts, with writes sent through
//! every node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/counters.rs"]
mod counters;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use common::{TestCluster, wait_for};
use counters::{Command, CounterService, Counters, Reply, random_counter_command};
use trestle_raft::{Replicated, testing::check_group_app};

#[test]
fn counters_conform() {
    check_group_app("counters", Counters::default, random_counter_command);
}

async fn start(cluster: &TestCluster, i: usize) -> Replicated<CounterService> {
    counters::start_counters(cluster.node(i)).await
}

/// The node that leads the counters group, as all running members see it.
async fn counters_leader(services: &BTreeMap<usize, Replicated<CounterService>>) -> usize {
    wait_for("a counters leader", Duration::from_secs(10), || async {
        let leaders: BTreeSet<_> = services
            .values()
            .map(|s| s.raft().metrics().borrow_watched().current_leader)
            .collect();
        let leader = (*leaders.iter().next()?)?;
        if leaders.len() != 1 {
            return None;
        }
        services
            .iter()
            .find(|(_, s)| s.node_id() == leader)
            .map(|(i, _)| *i)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_keep_every_acknowledged_add_through_leader_changes_snapshots_and_restarts() {
    keeps_every_acknowledged_add(TestCluster::start(3).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_nodes_that_keep_their_raft_state_in_memory() {
    keeps_every_acknowledged_add(TestCluster::start_in_memory(3).await).await;
}

async fn keeps_every_acknowledged_add(mut cluster: TestCluster) {
    let mut services = BTreeMap::new();
    for i in 0..3 {
        // Every founder founds the group alike (`Node::found_group`); the first entry is the same everywhere.
        services.insert(i, start(&cluster, i).await);
    }

    let add = || Command::Add {
        name: "plays".into(),
        delta: 1,
    };
    let (mut acknowledged, mut unknown) = (0i64, 0i64);
    for _round in 0..3 {
        // Eight writers at once through every running node: followers forward, and concurrent adds on a node
        // leave together as one entry.
        let mut writers = tokio::task::JoinSet::new();
        for (w, service) in services.values().cycle().take(8).enumerate() {
            let service = service.clone();
            writers.spawn(async move {
                let mut outcomes = Vec::new();
                for _ in 0..10 + w {
                    outcomes.push(service.propose(add()).await);
                }
                outcomes
            });
        }
        while let Some(outcomes) = writers.join_next().await {
            for outcome in outcomes.unwrap() {
                match outcome {
                    Ok(Reply::Value(value)) => {
                        acknowledged += 1;
                        assert!(value >= 1, "{value}");
                    }
                    Ok(other) => panic!("an add answered {other:?}"),
                    // A write whose fate is unknown (none is expected while every node runs).
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                        unknown += 1;
                    }
                }
            }
        }
        // Each member takes a snapshot, so the restart below restores one and replays the log after it.
        for service in services.values() {
            service.raft().trigger().snapshot().await.unwrap();
        }
        // Stop the leader: the others elect a new one and keep counting; then bring it back.
        let leader = counters_leader(&services).await;
        services.remove(&leader);
        cluster.stop(leader).await;
        for service in services.values() {
            match service.propose(add()).await {
                Ok(_) => acknowledged += 1,
                Err(_) => unknown += 1,
            }
        }
        cluster.restart(leader).await;
        services.insert(leader, start(&cluster, leader).await);
    }

    // A linearizable read on every replica counts every acknowledged add, and at most the unknown ones more.
    for (i, service) in &services {
        service.read_barrier().await.unwrap();
        let value = service.read(|app| app.values.get("plays").copied().unwrap_or(0));
        assert!(
            value >= acknowledged && value <= acknowledged + unknown,
            "node {i}: {value} counted, {acknowledged} acknowledged, {unknown} unknown"
        );
    }
}
