//! Backups: a member's Maintenance `Snapshot` (what `etcdctl snapshot save` stores) seeds a new three-member
//! cluster with every key, revision, lease and the compaction point; a damaged backup is refused whole.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestCluster, free_port, init_tracing, wait_for};
use etcd_client::{Client, GetOptions, PutOptions};
use trestle_etcd::{BackupError, EtcdNode, EtcdNodeConfig, decode_backup, restore_backup};

/// A key as a client sees it: key, value, create and mod revision, version, lease.
type Flat = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

async fn take_backup(client: &mut Client) -> Vec<u8> {
    let mut stream = client.snapshot().await.unwrap();
    let mut backup = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        backup.extend_from_slice(message.blob());
        if message.remaining_bytes() == 0 {
            break;
        }
    }
    backup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_seeds_a_new_cluster_with_everything_it_held() {
    init_tracing();
    let source = TestCluster::start(1).await;
    let mut client = source.client(0).await;
    for i in 0..30 {
        client
            .put(format!("k{:02}", i % 10), format!("v{i}"), None)
            .await
            .unwrap();
    }
    client.compact(5, None).await.unwrap();
    client.delete("k03", None).await.unwrap();
    let lease = client.lease_grant(600, None).await.unwrap().id();
    client
        .put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let before = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let backup = take_backup(&mut client).await;
    assert_eq!(
        (backup.len() - 32) % 512,
        0,
        "etcd's tools expect 512-byte pages and a SHA-256"
    );
    let store = decode_backup(&backup).unwrap();
    assert_eq!(store.revision(), before.header().unwrap().revision());
    source.shutdown().await;

    // Damage is refused whole: a flipped byte, a truncation, another tool's file.
    let mut flipped = backup.clone();
    flipped[100] ^= 1;
    assert!(matches!(
        decode_backup(&flipped),
        Err(BackupError::Checksum { .. })
    ));
    assert!(matches!(
        decode_backup(&backup[..backup.len() - 1]),
        Err(BackupError::Checksum { .. })
    ));
    assert!(matches!(
        decode_backup(b"SQLite format 3\0"),
        Err(BackupError::NotABackup { .. })
    ));

    // Three new members, seeded alike, then started.
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let founders: Vec<(String, String)> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| (format!("r{i}"), format!("http://127.0.0.1:{peer}")))
        .collect();
    let config = |i: usize| {
        let (client, peer) = ports[i];
        EtcdNodeConfig::from_node(trestle_etcd::testing::loopback_node_config(
            &format!("r{i}"),
            &root.path().join(format!("r{i}")),
            client,
            peer,
            founders.clone(),
        ))
    };
    for i in 0..3 {
        restore_backup(&backup, &config(i).node).await.unwrap();
    }
    // A second restore into the same directory is refused.
    assert!(matches!(
        restore_backup(&backup, &config(0).node).await,
        Err(BackupError::DataDirExists { .. })
    ));
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(EtcdNode::start(config(i)).await.unwrap());
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("http://127.0.0.1:{c}"))
        .collect();
    let mut restored = Client::connect(endpoints.clone(), None).await.unwrap();
    let after = wait_for("the restored cluster to serve", Duration::from_secs(10), || {
        let mut restored = restored.clone();
        async move {
            restored
                .get("", Some(GetOptions::new().with_all_keys()))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(
        after.header().unwrap().revision(),
        before.header().unwrap().revision()
    );
    let flat = |kvs: &[etcd_client::KeyValue]| -> Vec<Flat> {
        kvs.iter()
            .map(|kv| {
                let (key, value) = (kv.key().to_vec(), kv.value().to_vec());
                (
                    key,
                    value,
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect()
    };
    assert_eq!(flat(after.kvs()), flat(before.kvs()), "the restored keys differ");
    // History before the compaction point is gone, after it kept; the lease lives on.
    let compacted = restored
        .get("k01", Some(GetOptions::new().with_revision(4)))
        .await;
    assert!(compacted.unwrap_err().to_string().contains("compacted"));
    restored
        .get("k01", Some(GetOptions::new().with_revision(12)))
        .await
        .unwrap();
    assert!(restored.lease_time_to_live(lease, None).await.unwrap().ttl() > 0);
    // It is a cluster: writes go on, the membership is the new one.
    let put = restored.put("after", "restore", None).await.unwrap();
    assert_eq!(
        put.header().unwrap().revision(),
        before.header().unwrap().revision() + 1
    );
    let members = restored.member_list().await.unwrap();
    let mut names: Vec<_> = members.members().iter().map(|m| m.name().to_string()).collect();
    names.sort();
    assert_eq!(names, ["r0", "r1", "r2"]);
    for node in nodes {
        node.shutdown().await;
    }
}
