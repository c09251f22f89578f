//! `RetryingClient` against a real 3-node cluster: calls ride through a stopped leader and a dead endpoint, and
//! give up, with the last error, when no node is left.

mod common;

use std::time::Duration;

use common::{TestCluster, free_port};
use trestle_etcd::{ClientError, RetryPolicy, RetryingClient};

fn all_endpoints(cluster: &TestCluster) -> Vec<String> {
    cluster.members.iter().map(|m| m.client_url()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_ride_through_a_stopped_leader() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let client = RetryingClient::connect(all_endpoints(&cluster), None, RetryPolicy::default())
        .await
        .unwrap();
    client.put("before", "1", None).await.unwrap();
    cluster.stop(leader).await;
    // Every call: the stopped node refuses connections (retried, for writes too: nothing was sent), and the
    // survivors answer once they have elected a leader.
    for i in 0..20 {
        client.put(format!("k{i}"), format!("{i}"), None).await.unwrap();
        let got = client.get(format!("k{i}"), None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), format!("{i}").as_bytes());
    }
    assert_eq!(client.get("before", None).await.unwrap().kvs().len(), 1);
    assert_eq!(client.member_list().await.unwrap().members().len(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_in_the_list_is_passed_over() {
    let cluster = TestCluster::start(3).await;
    cluster.wait_for_leader().await;
    let mut endpoints = vec![format!("http://127.0.0.1:{}", free_port())];
    endpoints.extend(all_endpoints(&cluster));
    let client = RetryingClient::connect(endpoints, None, RetryPolicy::default())
        .await
        .unwrap();
    // The plain client underneath does stumble on the dead endpoint: the retries are what hide it.
    let mut plain = client.inner().clone();
    let mut plain_failures = 0;
    for i in 0..30 {
        if plain.put(format!("p{i}"), "v", None).await.is_err() {
            plain_failures += 1;
        }
    }
    println!("plain etcd-client: {plain_failures} of 30 puts failed");
    for i in 0..30 {
        client.put(format!("d{i}"), "v", None).await.unwrap();
    }
    let count = client
        .get(
            "d",
            Some(etcd_client::GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(count, 30);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_node_left_calls_give_up_in_time_with_the_last_error() {
    let mut cluster = TestCluster::start(3).await;
    cluster.wait_for_leader().await;
    let mut policy = RetryPolicy::default();
    policy.give_up_after = Duration::from_millis(600);
    let client = RetryingClient::connect(all_endpoints(&cluster), None, policy)
        .await
        .unwrap();
    client.put("k", "v", None).await.unwrap();
    for i in 0..3 {
        cluster.stop(i).await;
    }
    let started = std::time::Instant::now();
    let read = client.get("k", None).await.unwrap_err();
    assert!(
        matches!(read, ClientError::GaveUp { attempts, .. } if attempts > 1),
        "{read}"
    );
    // A write that could not connect changed nothing, so it is retried too, and gives up the same way.
    let write = client.put("k", "w", None).await.unwrap_err();
    assert!(matches!(write, ClientError::GaveUp { .. }), "{write}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
