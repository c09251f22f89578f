//! Several Raft groups in one process: one peer port and one RocksDB per node serve them all, and each group
//! keeps its own log, leader and data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use common::{TestCluster, wait_for};
use trestle_etcd::{PutRequest, RangeRequest, StoreCommand, StoreOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_share_ports_and_disk_but_not_data() {
    let mut cluster = TestCluster::start(3).await;
    let mut group1 = Vec::new();
    for i in 0..3 {
        group1.push(cluster.node(i).start_store_group(1).await.unwrap());
    }
    let members: BTreeMap<_, _> = (0..3)
        .map(|i| (cluster.node(i).id(), cluster.node(i).node().peer_node()))
        .collect();
    group1[0].raft().initialize(members).await.unwrap();

    let put = |key: &str| {
        StoreCommand::Put(PutRequest {
            key: key.into(),
            value: b"1".to_vec(),
            ..Default::default()
        })
    };
    // Through a node that may or may not lead group 1: forwarding works per group.
    let result = group1[2].propose(put("only-in-group-1")).await.unwrap();
    assert!(matches!(result.outcome, Ok(StoreOutcome::Put(_))));
    assert_eq!(result.revision, 2);
    cluster
        .node(1)
        .store()
        .propose(put("only-in-group-0"))
        .await
        .unwrap();

    let get = |key: &str| RangeRequest {
        key: key.into(),
        ..Default::default()
    };
    for (i, store) in group1.iter().enumerate() {
        store.read_barrier().await.unwrap();
        assert_eq!(
            store.read(|app| app.store().range(&get("only-in-group-1")).unwrap().count),
            1,
            "node {i}"
        );
        assert_eq!(
            store.read(|app| app.store().range(&get("only-in-group-0")).unwrap().count),
            0,
            "node {i}"
        );
        assert_eq!(store.raft().metrics().borrow_watched().id, cluster.node(i).id());
    }
    assert_eq!(cluster.node(0).node().groups().ids(), vec![0, 1]);

    // Both groups survive a restart of every node from the shared database.
    for i in 0..3 {
        cluster.stop(i).await;
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }
    let mut again = Vec::new();
    for i in 0..3 {
        again.push(cluster.node(i).start_store_group(1).await.unwrap());
    }
    let store = &again[0];
    wait_for(
        "group 1 to elect a leader after the restart",
        Duration::from_secs(10),
        || async { store.raft().metrics().borrow_watched().current_leader.map(|_| ()) },
    )
    .await;
    store.read_barrier().await.unwrap();
    assert_eq!(
        store.read(|app| app.store().range(&get("only-in-group-1")).unwrap().count),
        1
    );
    cluster.shutdown().await;
}
