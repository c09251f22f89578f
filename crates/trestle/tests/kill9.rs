//! Durability under SIGKILL: every write a client saw acknowledged survives killing every node at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::ProcessCluster;
use etcd_client::{Client, GetOptions};
/// Keys whose put was acknowledged.
type Acked = std::sync::Mutex<BTreeSet<String>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_every_node() {
    let mut cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let acked = Arc::new(Acked::default());
    let mut writers = Vec::new();
    for w in 0..8 {
        let endpoints = vec![cluster.endpoint(w % 3)];
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let Ok(mut client) = Client::connect(endpoints, None).await else {
                return;
            };
            for i in 0.. {
                let key = format!("k/{w}/{i:06}");
                match tokio::time::timeout(Duration::from_secs(2), client.put(key.clone(), "v", None)).await {
                    Ok(Ok(_)) => {
                        acked.lock().unwrap().insert(key);
                    }
                    // The cluster died under us: stop writing.
                    _ => return,
                }
            }
        }));
    }
    // Let the writers get going, then kill every node at the same moment.
    common_wait(&acked, 300).await;
    for i in 0..3 {
        cluster.kill9(i);
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged: BTreeSet<String> = acked.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster
        .wait_until_every_node_answers(Duration::from_secs(20))
        .await;
    let mut client = Client::connect(cluster.endpoints(), None).await.unwrap();
    let stored = client
        .get("k/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let present: BTreeSet<String> = stored
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "{} writes acknowledged before kill -9, all present after restart ({} stored)",
        acknowledged.len(),
        present.len()
    );
}

async fn common_wait(acked: &Acked, at_least: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < at_least {
        assert!(tokio::time::Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
