//! The work queue in `trestle serve --queue-partitions`: every send a client saw acknowledged survives SIGKILL,
//! first of one member under load, then of every member at once; and `trestle queue` reads it as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ProcessCluster;
use trestle_queue::client::{ClientConfig, QueueClient};
use trestle_queue::{NewMessage, QueueSettings};

/// Payloads whose send was acknowledged.
type Acked = Mutex<BTreeSet<String>>;

fn trestle_queue(args: &[&str], endpoints: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trestle"))
        .arg("queue")
        .args(args)
        .args(["--endpoints", &endpoints.join(",")])
        .output()
        .expect("trestle runs")
}

async fn wait_acked(acked: &Acked, at_least: usize, cluster: &ProcessCluster) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "senders stalled at {} acknowledged sends; logs:\n{}",
            acked.lock().unwrap().len(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_kill_9_of_one_member_then_of_all() {
    let mut cluster = ProcessCluster::start_with_args(3, &["--queue-partitions", "3"]);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let endpoints = cluster.endpoints();
    let client = QueueClient::new(ClientConfig::new(endpoints.clone())).unwrap();
    client
        .create_queue("jobs", 3, &QueueSettings::default())
        .await
        .expect("queue created once the partitions have leaders");

    let acked = Arc::new(Acked::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for w in 0..4 {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let payload = format!("w{w}-{i:06}");
                let message = NewMessage::new(payload.clone()).with_idempotency_key(payload.clone());
                // A failed send (its member died, the partition changed leader) may or may not have happened:
                // it is not counted, and the sender goes on.
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(5), client.send("jobs", vec![message])).await
                {
                    acked.lock().unwrap().insert(payload);
                }
            }
        }));
    }
    wait_acked(&acked, 200, &cluster).await;
    // One member dies mid-load (it leads some partitions); the others keep acknowledging.
    cluster.kill9(0);
    let before = acked.lock().unwrap().len();
    wait_acked(&acked, before + 200, &cluster).await;
    // Then every member at once.
    for i in 0..3 {
        cluster.kill9(i);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acknowledged: BTreeSet<String> = acked.lock().unwrap().clone();

    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster
        .wait_until_every_node_answers(Duration::from_secs(30))
        .await;

    let out = trestle_queue(&["stats", "jobs"], &endpoints);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats print JSON");
    assert!(
        stats["depth"].as_u64().unwrap() >= acknowledged.len() as u64,
        "{stats}"
    );

    let mut received = BTreeSet::new();
    let mut duplicates = 0;
    loop {
        let got = client
            .receive("jobs", 500, Duration::from_millis(500), None)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        let receipts: Vec<_> = got.iter().map(|d| d.receipt.unwrap()).collect();
        client.ack("jobs", &receipts, &[]).await.unwrap();
        for d in got {
            if !received.insert(String::from_utf8(d.payload).unwrap()) {
                duplicates += 1;
            }
        }
    }
    let lost: Vec<&String> = acknowledged.difference(&received).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged sends lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(duplicates, 0, "idempotency keys keep retried sends single");
    eprintln!(
        "{} sends acknowledged across kill -9 of one member then all, all received after restart ({} stored)",
        acknowledged.len(),
        received.len()
    );

    // The CLI says what is wrong and exits non-zero.
    let out = trestle_queue(&["stats", "missing"], &endpoints);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown queue \"missing\""), "{stderr}");
}
