//! The store's state on disk: the MVCC versions and history live in the group's key space of the node's RocksDB
//! and commit with the applied index. A member killed with SIGKILL, without a snapshot, comes back with every
//! revision it acknowledged; compaction removes the history from disk, not only from reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::{TestCluster, free_port, wait_for};
use etcd_client::{GetOptions, PutOptions};
use trestle_etcd::{EtcdNode, EtcdNodeConfig, RangeRequest, STORE_GROUP};
use trestle_raft::WatchReceiver as _;

/// Set in the child process: the data directory and ports of the member it runs until killed.
const CHILD: &str = "TRESTLE_ETCD_DISK_STATE_CHILD";

fn member_config(dir: &Path, client: u16, peer: u16) -> EtcdNodeConfig {
    let founders = vec![("solo".to_string(), format!("http://127.0.0.1:{peer}"))];
    let mut config = EtcdNodeConfig::from_node(trestle_etcd::testing::loopback_node_config(
        "solo", dir, client, peer, founders,
    ));
    // No snapshot: the restart has only the key space and the log.
    config.node.raft.snapshot_every = 1_000_000;
    config
}

fn spawn_member(test: &str, dir: &Path, client: u16, peer: u16) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(CHILD, format!("{}|{client}|{peer}", dir.display()))
        .spawn()
        .unwrap()
}

/// The child's part: run the member until the parent kills it.
async fn run_member(spec: &str) {
    let mut parts = spec.split('|');
    let dir = parts.next().unwrap();
    let client = parts.next().unwrap().parse().unwrap();
    let peer = parts.next().unwrap().parse().unwrap();
    let node = EtcdNode::start(member_config(Path::new(dir), client, peer))
        .await
        .unwrap();
    std::future::pending::<()>().await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_revisions_survive_a_sigkill_without_a_snapshot() {
    const TEST: &str = "acknowledged_revisions_survive_a_sigkill_without_a_snapshot";
    if let Ok(spec) = std::env::var(CHILD) {
        return run_member(&spec).await;
    }
    common::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("solo");
    let (client_port, peer_port) = (free_port(), free_port());
    let mut child = spawn_member(TEST, &dir, client_port, peer_port);
    let url = format!("http://127.0.0.1:{client_port}");
    let mut client = wait_for("the member to serve", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let mut client = etcd_client::Client::connect([url], None).await.ok()?;
            client.put("ready", "yes", None).await.ok()?;
            Some(client)
        }
    })
    .await;

    // Acknowledged writes of every kind: puts (some on a lease), overwrites, deletes, a compaction.
    let lease = client.lease_grant(600, None).await.unwrap().id();
    let mut acked = Vec::new();
    for i in 0..300 {
        let key = format!("k/{:02}", i % 40);
        let value = format!("v{i}");
        let options = (i % 7 == 0).then(|| PutOptions::new().with_lease(lease));
        let revision = client
            .put(key.clone(), value.clone(), options)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        acked.push((key, value, revision));
    }
    client.delete("k/39", None).await.unwrap();
    client.compact(100, None).await.unwrap();
    let last = client
        .put("last", "write", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // SIGKILL: no shutdown, no flush, no snapshot.
    child.kill().unwrap();
    child.wait().unwrap();

    let node = EtcdNode::start(member_config(&dir, client_port, peer_port))
        .await
        .unwrap();
    assert!(
        node.store().raft().metrics().borrow_watched().snapshot.is_none(),
        "restarted without any snapshot"
    );
    let store = node.store().clone();
    wait_for(
        "the store to reach the last acknowledged revision",
        Duration::from_secs(20),
        || async { (store.read(|app| app.store().revision()) >= last).then_some(()) },
    )
    .await;
    store.read(|app| {
        let view = app.store();
        assert_eq!(view.revision(), last, "nothing more, nothing less");
        assert_eq!(view.compact_revision(), 100);
        for (key, value, revision) in acked.iter().filter(|(_, _, r)| *r >= 100) {
            let got = view
                .range(&RangeRequest {
                    key: key.as_bytes().to_vec(),
                    revision: *revision,
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(got.kvs.len(), 1, "{key} at {revision}");
            assert_eq!(got.kvs[0].value, value.as_bytes(), "{key} at {revision}");
            assert_eq!(got.kvs[0].mod_revision, *revision);
        }
        // A key is on the lease when its last put was.
        let mut on_lease = std::collections::BTreeMap::new();
        for (i, (key, _, _)) in acked.iter().enumerate() {
            on_lease.insert(key.clone(), i % 7 == 0);
        }
        on_lease.remove("k/39");
        let expected: Vec<Vec<u8>> = on_lease
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(key, _)| key.into_bytes())
            .collect();
        assert_eq!(view.lease_keys(lease), expected);
    });
    let mut client = etcd_client::Client::connect([url.clone()], None).await.unwrap();
    let now = client
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(now.kvs().len(), 39, "k/39 stays deleted");
    let below = client
        .get("k/00", Some(GetOptions::new().with_revision(50)))
        .await;
    assert!(below.is_err(), "history below the compaction stays compacted");
    node.shutdown().await;
}

/// The history records below the compact revision left in the key space (the compact revision's own events
/// stay, as in etcd).
fn history_below(node: &EtcdNode, revision: i64) -> usize {
    let space = node.node().key_space(STORE_GROUP);
    let mut end = vec![b'r'];
    end.extend_from_slice(&(revision as u64).to_be_bytes());
    space.scan(b"r", Some(&end), usize::MAX).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_removes_history_from_disk_on_every_member() {
    let cluster = TestCluster::start(3).await;
    let mut client = cluster.any_client().await;
    let mut revision = 0;
    for i in 0..1000 {
        revision = client
            .put(format!("c/{}", i % 10), vec![b'x'; 64], None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    for (_, node) in cluster.running() {
        wait_for("every member to apply", Duration::from_secs(10), || async {
            (node.store().read(|app| app.store().revision()) >= revision).then_some(())
        })
        .await;
        assert!(history_below(node, revision) >= 990);
    }
    client.compact(revision, None).await.unwrap();
    // The compaction removes a bounded step of records per applied entry: a few more writes finish it.
    let mut last = 0;
    for i in 0..10 {
        last = client
            .put(format!("after/{i}"), "x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    for (_, node) in cluster.running() {
        wait_for(
            "every member to apply the writes after",
            Duration::from_secs(10),
            || async { (node.store().read(|app| app.store().revision()) >= last).then_some(()) },
        )
        .await;
        wait_for(
            "the history below the compaction to leave the disk",
            Duration::from_secs(10),
            || async {
                // Left: the newest version of each of the nine other keys.
                (history_below(node, revision) == 9).then_some(())
            },
        )
        .await;
        let (versions, size) = node.store().read(|app| {
            (
                app.store().index().retained_versions(),
                app.store().approximate_size(),
            )
        });
        assert_eq!(versions, 20, "the ten keys' last versions and the writes after");
        assert!(size < 3000, "the size counts what is retained: {size}");
    }
    cluster.shutdown().await;
}
