//! Every `trestle serve` process answers `/health` and `/metrics` (the binary installs the Prometheus recorder
//! that the library's metrics go to), and the orchestrator's probes: `/livez` (local) and `/readyz` (caught up
//! with a leader).

mod common;

use std::time::Duration;

use common::ProcessCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trestle_raft::testing::wait_for;

/// One HTTP/1.1 GET; the status code and the body.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_health_probes_and_prometheus_metrics() {
    let mut cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    // A leader needs only a quorum: the client below balances over every endpoint, so wait for all of them.
    cluster
        .wait_until_every_node_answers(Duration::from_secs(20))
        .await;
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    client.put("metrics-probe", "1", None).await.unwrap();

    for i in 0..3 {
        let addr = cluster.http_addr(i);
        let health = wait_for("a healthy /health", Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { get(&addr, "/health").await.filter(|(status, _)| *status == 200) }
        })
        .await
        .unwrap_or_else(|e| panic!("node {i}: {e}\n{}", cluster.logs()));
        assert!(health.1.contains(r#""health":"true""#), "node {i}: {}", health.1);

        // The Raft gauges are published once a second.
        let metrics = wait_for("the Raft gauges in /metrics", Duration::from_secs(10), || {
            let addr = addr.clone();
            async move {
                get(&addr, "/metrics").await.filter(|(status, body)| {
                    *status == 200 && body.contains("trestle_raft_term{group=\"0\"}")
                })
            }
        })
        .await
        .unwrap_or_else(|e| panic!("node {i}: {e}\n{}", cluster.logs()));
        assert!(
            metrics.1.contains("# TYPE trestle_raft_leader gauge"),
            "node {i} renders no Prometheus text:\n{}",
            metrics.1
        );

        assert_eq!(get(&addr, "/livez").await, Some((200, "ok\n".into())), "node {i}");
        let ready = wait_for("a ready /readyz", Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { get(&addr, "/readyz").await.filter(|(status, _)| *status == 200) }
        })
        .await
        .unwrap_or_else(|e| panic!("node {i}: {e}\n{}", cluster.logs()));
        assert_eq!(ready.1, "ok\n", "node {i}");
    }

    // Alone, a member cannot catch up with any leader: not ready, but alive (a restart would not help).
    cluster.kill9(1);
    cluster.kill9(2);
    let addr = cluster.http_addr(0);
    let not_ready = wait_for("an unready /readyz", Duration::from_secs(15), || {
        let addr = addr.clone();
        async move { get(&addr, "/readyz").await.filter(|(status, _)| *status == 503) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(not_ready.1.contains("raft group"), "{}", not_ready.1);
    assert_eq!(get(&addr, "/livez").await, Some((200, "ok\n".into())));
}
