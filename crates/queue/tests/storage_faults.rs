//! Storage faults on a minority of a queue's members (Jepsen's 2025 analysis of NATS lost acknowledged writes
//! this way): a member whose table files have flipped bytes, or whose write-ahead log was cut short, refuses to
//! start instead of voting with a log that lacks what it acknowledged; it is replaced (removed, added back
//! empty), receives everything from the others, and no acknowledged message is lost, even when another original
//! member then goes.
#![cfg(feature = "raft")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Cluster, send_acknowledged};
use trestle_queue::QueueSettings;
use trestle_queue::server::{PARTITION_GROUP_BASE, QueueHostConfig};
use trestle_raft::testing::wait_for;
use trestle_raft::{Damage, MemberChange, Node, NodeError, WatchReceiver as _};

const REFERENCE: u64 = PARTITION_GROUP_BASE;
const PARTITIONS: [u64; 2] = [PARTITION_GROUP_BASE + 1, PARTITION_GROUP_BASE + 2];

fn config() -> QueueHostConfig {
    let mut config = QueueHostConfig::default().with_partitions(3);
    config.follow_group = Some(REFERENCE);
    config.steward_interval = Some(Duration::from_millis(200));
    config
}

/// The files in `dir` whose names end with `suffix`, by name.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

/// What a fault does to a stopped member's database directory.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// One byte flipped in the first data block of every table file.
    FlippedTableBytes,
    /// The live write-ahead log cut to half its length.
    TruncatedWal,
}

impl Fault {
    fn apply(self, db: &Path) {
        match self {
            Self::FlippedTableBytes => {
                let tables = files(db, ".sst");
                assert!(!tables.is_empty(), "no table files in {}", db.display());
                for table in tables {
                    let mut bytes = std::fs::read(&table).unwrap();
                    bytes[64] ^= 0x40;
                    std::fs::write(&table, bytes).unwrap();
                }
            }
            Self::TruncatedWal => {
                let wal = files(db, ".log").pop().expect("a write-ahead log");
                let len = std::fs::metadata(&wal).unwrap().len();
                assert!(len > 1024, "the WAL holds the messages ({len} bytes)");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&wal)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
        }
    }

    fn detected(self, damage: &Damage) -> bool {
        match self {
            Self::FlippedTableBytes => matches!(damage, Damage::Database { .. }),
            Self::TruncatedWal => matches!(damage, Damage::WalTruncated { .. }),
        }
    }
}

async fn a_damaged_minority_member_is_refused_and_replaced(fault: Fault) {
    let mut cluster = Cluster::start(config()).await;
    let client = cluster.client();
    client
        .create_queue("jobs", 3, &QueueSettings::default())
        .await
        .unwrap();
    let mut sent = send_acknowledged(&client, "before-", 40).await;
    let old_id = cluster.nodes[2].id();

    let node_config = cluster.stop_node(2).await;
    if matches!(fault, Fault::FlippedTableBytes) {
        // A restart moves what the WAL held into table files; more messages land in them while it runs.
        cluster.restart_node(2, node_config.clone()).await;
        sent.extend(send_acknowledged(&client, "between-", 10).await);
        cluster.stop_node(2).await;
    }
    let db = node_config.data_dir.join("db");
    fault.apply(&db);

    // The damaged member does not start: it never votes or leads with what it lost.
    match Node::start(node_config.clone()).await {
        Err(NodeError::StorageDamaged { damage, .. }) if fault.detected(&damage) => {
            let message = NodeError::StorageDamaged {
                path: db.clone(),
                damage,
            }
            .to_string();
            assert!(
                message.contains("member remove"),
                "the error says how to repair: {message}"
            );
        }
        Err(other) => panic!("{fault:?}: refused for another reason: {other}"),
        Ok(node) => {
            node.shutdown().await;
            panic!("{fault:?}: a damaged member started");
        }
    }

    // The others serve on; the operator replaces the member, which receives everything from them.
    let reference = cluster.hosts[0].partitions()[&REFERENCE].service().clone();
    // Retried as an operator would when a loaded cluster does not answer in time: a retry after a removal that
    // did take effect finds no such member.
    wait_for(
        "the damaged member to be removed",
        Duration::from_secs(30),
        || async {
            match reference.change_member(MemberChange::Remove(old_id)).await {
                Ok(_) => Some(()),
                Err(status) if status.code() == tonic::Code::NotFound => Some(()),
                Err(_) => None,
            }
        },
    )
    .await
    .unwrap();
    sent.extend(send_acknowledged(&client, "during-", 10).await);
    let removed = wait_for(
        "every live member to see the removal",
        Duration::from_secs(10),
        || async {
            (0..2)
                .all(|n| {
                    let raft = cluster.hosts[n].partitions()[&REFERENCE].service().raft().clone();
                    let metrics = raft.metrics().borrow_watched().clone();
                    metrics.membership_config.membership().get_node(&old_id).is_none()
                })
                .then_some(())
        },
    )
    .await;
    if removed.is_err() {
        let raft = cluster.hosts[0].partitions()[&REFERENCE].service().raft().clone();
        let metrics = raft.metrics().borrow_watched().clone();
        panic!(
            "the removed member is still listed: {:?}",
            metrics.membership_config
        );
    }
    let new_id = cluster.add_back(2, node_config, REFERENCE).await;
    assert_ne!(new_id, old_id);
    sent.extend(send_acknowledged(&client, "after-", 10).await);
    support::the_replacement_holds_everything(cluster, &PARTITIONS, new_id, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_with_flipped_bytes_in_its_tables_is_refused_and_replaced_from_the_others() {
    a_damaged_minority_member_is_refused_and_replaced(Fault::FlippedTableBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_wal_was_cut_short_is_refused_and_replaced_from_the_others() {
    a_damaged_minority_member_is_refused_and_replaced(Fault::TruncatedWal).await;
}
