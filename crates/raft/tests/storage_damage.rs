//! A node whose database is damaged where no start-up check reads — a table of a group's state — starts, and
//! its background scrub finds the damage: the node reports it as fatal (the binary stops on it), and the
//! directory is refused from then on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trestle_raft::testing::{free_loopback_port, loopback_node_config};
use trestle_raft::{Damage, Node, NodeError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_finds_a_damaged_block_stops_the_node_and_the_directory_is_refused_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    {
        let db = trestle_raft::open_db(&db_dir).unwrap();
        let cf = db
            .cf_handle("group_state")
            .expect("the key spaces' column family");
        for i in 0..2000u32 {
            db.put_cf(&cf, i.to_be_bytes(), [i as u8; 200]).unwrap();
        }
        db.flush_cf(&cf).unwrap();
    }
    let tables: Vec<_> = std::fs::read_dir(&db_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .collect();
    assert_eq!(tables.len(), 1, "{tables:?}");
    let mut bytes = std::fs::read(&tables[0]).unwrap();
    let middle = bytes.len() / 3;
    bytes[middle] ^= 0x08;
    std::fs::write(&tables[0], bytes).unwrap();

    let (client, peer) = (free_loopback_port(), free_loopback_port());
    let config = loopback_node_config(
        "n0",
        dir.path(),
        client,
        peer,
        vec![("n0".into(), format!("http://127.0.0.1:{peer}"))],
    );
    let node = Node::start(config.clone())
        .await
        .expect("no check at start reads that table");
    let reason = tokio::time::timeout(Duration::from_secs(30), node.fatal_error())
        .await
        .expect("the scrub reports the damage");
    assert!(reason.contains("the storage is damaged"), "{reason}");
    node.shutdown().await;

    match Node::start(config).await {
        Err(NodeError::StorageDamaged {
            damage: Damage::Found { detail },
            ..
        }) => assert!(detail.contains("Corruption"), "{detail}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(node) => {
            node.shutdown().await;
            panic!("a directory the scrub found damaged was used again");
        }
    }
}
