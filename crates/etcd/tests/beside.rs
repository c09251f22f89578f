//! Another service beside the coordination store: named counters (trestle-raft's example service,
//! `crates/raft/tests/support/counters.rs`) as their own Raft group on the etcd nodes' ports and disks. Both keep
//! serving through a leader change. The store's state machine passes the `GroupApp` conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../raft/tests/support/counters.rs"]
mod counters;

use std::time::Duration;

use common::{TestCluster, wait_for};
use counters::{COUNTERS, Command, CounterService, Reply};
use rand::Rng;
use trestle_etcd::{PutRequest, StoreApp, StoreCommand};
use trestle_raft::{Replicated, testing::check_group_app};

fn random_store_command(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
    fn one(rng: &mut rand_chacha::ChaCha8Rng, depth: u32) -> StoreCommand {
        let key = |rng: &mut rand_chacha::ChaCha8Rng| format!("k{}", rng.random_range(0..6)).into_bytes();
        match rng.random_range(0..if depth == 0 { 7 } else { 6 }) {
            0 | 1 => StoreCommand::Put(PutRequest {
                key: key(rng),
                value: vec![b'v'; rng.random_range(0..8)],
                lease: if rng.random_ratio(1, 4) {
                    rng.random_range(1..4)
                } else {
                    0
                },
                prev_kv: rng.random_bool(0.5),
                ..Default::default()
            }),
            2 => StoreCommand::DeleteRange(trestle_etcd::DeleteRangeRequest {
                key: key(rng),
                range_end: if rng.random_bool(0.3) {
                    b"k9".to_vec()
                } else {
                    Vec::new()
                },
                prev_kv: rng.random_bool(0.5),
            }),
            3 => StoreCommand::Txn(trestle_etcd::TxnRequest {
                compare: vec![trestle_etcd::Compare {
                    result: trestle_etcd::CompareResult::Equal,
                    target: trestle_etcd::CompareTarget::Version(rng.random_range(0..3)),
                    key: key(rng),
                    range_end: Vec::new(),
                }],
                success: vec![trestle_etcd::RequestOp::Put(PutRequest {
                    key: key(rng),
                    value: b"t".to_vec(),
                    ..Default::default()
                })],
                failure: vec![trestle_etcd::RequestOp::DeleteRange(
                    trestle_etcd::DeleteRangeRequest {
                        key: key(rng),
                        ..Default::default()
                    },
                )],
            }),
            4 => StoreCommand::LeaseGrant {
                id: rng.random_range(1..4),
                ttl: rng.random_range(1..60),
            },
            5 => {
                if rng.random_bool(0.5) {
                    StoreCommand::LeaseRevoke {
                        id: rng.random_range(1..4),
                    }
                } else {
                    StoreCommand::Compact(rng.random_range(0..40))
                }
            }
            _ => StoreCommand::Batch((0..rng.random_range(1..4)).map(|_| one(rng, depth + 1)).collect()),
        }
    }
    postcard::to_allocvec(&one(rng, 0)).unwrap()
}

#[test]
fn the_coordination_store_conforms() {
    check_group_app("store", StoreApp::default, random_store_command);
}

async fn start_counters(cluster: &TestCluster, i: usize) -> Replicated<CounterService> {
    counters::start_counters(cluster.node(i).node()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_the_store_share_nodes_through_a_leader_change() {
    let mut cluster = TestCluster::start(3).await;
    let mut services = Vec::new();
    for i in 0..3 {
        services.push(Some(start_counters(&cluster, i).await));
    }
    let add = || Command::Add {
        name: "plays".into(),
        delta: 1,
    };
    let mut acknowledged = 0;
    for service in services.iter().flatten() {
        assert!(matches!(service.propose(add()).await, Ok(Reply::Value(_))));
        acknowledged += 1;
    }
    assert_eq!(cluster.node(0).node().groups().ids(), vec![0, COUNTERS]);

    // Stop the store's leader; both groups go on with the two others.
    let leader = cluster.wait_for_leader().await;
    services[leader] = None;
    cluster.stop(leader).await;
    for service in services.iter().flatten() {
        assert!(matches!(service.propose(add()).await, Ok(Reply::Value(_))));
        acknowledged += 1;
    }
    let survivor = cluster.wait_for_leader().await;
    cluster
        .node(survivor)
        .store()
        .propose(StoreCommand::Put(PutRequest {
            key: b"after".to_vec(),
            value: b"the leader change".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap();

    // The stopped node comes back, restores both groups and catches up on each.
    cluster.restart(leader).await;
    let back = start_counters(&cluster, leader).await;
    wait_for(
        "the restarted node to catch up",
        Duration::from_secs(10),
        || async {
            back.read_barrier().await.ok()?;
            let plays = back.read(|c| c.values.get("plays").copied().unwrap_or(0));
            let key = cluster.node(leader).store().read(|app| {
                app.store()
                    .range(&trestle_etcd::RangeRequest {
                        key: b"after".to_vec(),
                        ..Default::default()
                    })
                    .map(|r| r.count)
            });
            (plays == acknowledged && key.ok() == Some(1)).then_some(())
        },
    )
    .await;
    cluster.shutdown().await;
}
