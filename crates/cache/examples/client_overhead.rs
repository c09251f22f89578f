//! What replication and fallback cost over a plain single-node get: nodes in this process on loopback, one
//! request in flight at a time, latency percentiles over many requests.
//!
//! `cargo run --release -p trestle-cache --example client_overhead [requests]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use trestle_cache::{Ack, Client, ClientConfig, NodeConfig, NodeSpec, RunningNode, StoreConfig};

async fn node() -> RunningNode {
    let config =
        NodeConfig::new("127.0.0.1:0".parse().expect("addr")).with_store(StoreConfig::with_memory(64 << 20));
    RunningNode::start(config).await.expect("node")
}

async fn measure<F, Fut>(name: &str, requests: usize, mut op: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..requests / 10 {
        op(i).await;
    }
    let mut samples = Vec::with_capacity(requests);
    for i in 0..requests {
        let started = Instant::now();
        op(i).await;
        samples.push(started.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "| {name} | {:.1} | {:.1} | {:.1} |",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(0.999).as_secs_f64() * 1e6
    );
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let (a, b) = (node().await, node().await);
    let single = Client::new(ClientConfig::new(
        vec![NodeSpec::new("a", a.memcached_addr(), "z1")],
        "z1",
    ))
    .expect("client");
    let specs = vec![
        NodeSpec::new("a", a.memcached_addr(), "z1"),
        NodeSpec::new("b", b.memcached_addr(), "z2"),
    ];
    let replicated =
        Client::new(ClientConfig::new(specs.clone(), "z1").with_write_ack(Ack::All)).expect("client");
    let replicated_one =
        Client::new(ClientConfig::new(specs.clone(), "z1").with_write_ack(Ack::One)).expect("client");
    let no_repair = Client::new(ClientConfig::new(specs, "z1").with_read_repair(false)).expect("client");
    let value = Bytes::from(vec![b'x'; 100]);
    for i in 0..1000 {
        replicated
            .set(format!("k{i}").as_bytes(), value.clone(), Duration::ZERO)
            .await
            .expect("set");
    }
    // Keys only zone 2 holds: every read of them misses locally and falls back.
    let only_b = Client::new(ClientConfig::new(
        vec![NodeSpec::new("b", b.memcached_addr(), "z2")],
        "z2",
    ))
    .expect("client");
    for i in 0..1000 {
        only_b
            .set(format!("remote{i}").as_bytes(), value.clone(), Duration::ZERO)
            .await
            .expect("set");
    }
    println!(
        "{requests} requests each, 100-byte values, one in flight, nodes in this process on loopback, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("| operation | p50 us | p99 us | p99.9 us |\n|---|---|---|---|");
    measure("get, one node", requests, |i| {
        let c = single.clone();
        async move {
            c.get(format!("k{}", i % 1000).as_bytes()).await.expect("get");
        }
    })
    .await;
    measure("get, two zones, local hit", requests, |i| {
        let c = replicated.clone();
        async move {
            c.get(format!("k{}", i % 1000).as_bytes()).await.expect("get");
        }
    })
    .await;
    measure("get, two zones, local miss then other zone", requests, |i| {
        let c = no_repair.clone();
        async move {
            assert!(
                c.get(format!("remote{}", i % 1000).as_bytes())
                    .await
                    .expect("get")
                    .is_some()
            );
        }
    })
    .await;
    measure("set, one node", requests, |i| {
        let (c, v) = (single.clone(), value.clone());
        async move {
            c.set(format!("k{}", i % 1000).as_bytes(), v, Duration::ZERO)
                .await
                .expect("set")
        }
    })
    .await;
    measure("set, two zones, Ack::All", requests, |i| {
        let (c, v) = (replicated.clone(), value.clone());
        async move {
            c.set(format!("k{}", i % 1000).as_bytes(), v, Duration::ZERO)
                .await
                .expect("set")
        }
    })
    .await;
    measure("set, two zones, Ack::One", requests, |i| {
        let (c, v) = (replicated_one.clone(), value.clone());
        async move {
            c.set(format!("k{}", i % 1000).as_bytes(), v, Duration::ZERO)
                .await
                .expect("set")
        }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}
