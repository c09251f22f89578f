//! The cluster-wide rate limiter: two "gateways" (two clients, two limiters) share one budget on a cache node;
//! with the node gone or silent they fall back to local limits and say so; they return to the shared budget when
//! the node answers again.

use std::time::Duration;

use tokio::net::TcpListener;
use trestle_breaker::rate_limit::{RateLimitConfig, RateLimiter};
use trestle_cache::{
    Client, ClientConfig, ClusterRateLimitConfig, ClusterRateLimiter, NodeConfig, NodeSpec, RunningNode,
    StoreConfig,
};

async fn node(addr: &str) -> RunningNode {
    let config = NodeConfig::new(addr.parse().expect("addr")).with_store(StoreConfig::with_memory(64 << 20));
    RunningNode::start(config).await.expect("node starts")
}

fn gateway(addr: std::net::SocketAddr, config: ClusterRateLimitConfig) -> ClusterRateLimiter {
    let client = Client::new(
        ClientConfig::new(vec![NodeSpec::new("n1", addr, "east")], "east")
            .with_timeout(Duration::from_millis(200)),
    )
    .expect("client");
    ClusterRateLimiter::new(client, config).expect("limiter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_budget_per_key() {
    let node = node("127.0.0.1:0").await;
    let config = ClusterRateLimitConfig::new(50, Duration::from_secs(60)).with_batch(5);
    let (a, b) = (
        gateway(node.memcached_addr(), config.clone()),
        gateway(node.memcached_addr(), config),
    );
    let (mut admitted_a, mut admitted_b) = (0, 0);
    for _ in 0..100 {
        admitted_a += u32::from(a.acquire(b"user:1").await.is_ok());
        admitted_b += u32::from(b.acquire(b"user:1").await.is_ok());
    }
    // Leases of 5 from a budget of 50, taken alternately: exactly the budget, split between the two.
    assert_eq!(admitted_a + admitted_b, 50, "a {admitted_a}, b {admitted_b}");
    assert!(
        admitted_a >= 10 && admitted_b >= 10,
        "a {admitted_a}, b {admitted_b}"
    );
    // The refusal says when the window ends.
    let refused = a.acquire(b"user:1").await.expect_err("spent");
    assert!(
        refused.retry_after > Duration::from_secs(55) && refused.retry_after <= Duration::from_secs(60),
        "{refused:?}"
    );
    // Another key has its own budget.
    assert!(a.acquire(b"user:2").await.is_ok());
    let counter = node.engine().store().get(b"rl:user:1", None).expect("counter");
    let count: u64 = std::str::from_utf8(&counter.value)
        .expect("utf8")
        .trim()
        .parse()
        .expect("number");
    assert!(count >= 50, "counter {count}");
    let metrics = a.metrics();
    assert!(
        !metrics.degraded && metrics.lease_failures == 0 && metrics.local_decisions == 0,
        "{metrics:?}"
    );
    assert_eq!(metrics.admitted, u64::from(admitted_a) + 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trait_check_leases_in_the_background_and_keeps_the_shared_count() {
    let node = node("127.0.0.1:0").await;
    let config = ClusterRateLimitConfig::new(20, Duration::from_secs(60)).with_batch(4);
    let (a, b) = (
        gateway(node.memcached_addr(), config.clone()),
        gateway(node.memcached_addr(), config),
    );
    // No token yet: refused at once with a 1 ms hint while the lease is fetched.
    let first = RateLimiter::<str>::check(&a, "user:9").expect_err("no lease yet");
    assert_eq!(first.retry_after, Duration::from_millis(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut admitted = 0;
    // A refusal longer than the 1 ms hint means the window's budget is spent, for the rest of the window.
    let mut spent = [false, false];
    while spent != [true, true] {
        for (i, limiter) in [&a, &b].into_iter().enumerate() {
            match RateLimiter::<str>::check(limiter, "user:9") {
                Ok(()) => admitted += 1,
                Err(e) => spent[i] |= e.retry_after > Duration::from_secs(1),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not spent in 5 s; admitted {admitted}"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(admitted, 20);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_node_down_it_decides_locally_and_returns_when_the_node_is_back() {
    // A node's address, then the node gone: connections are refused.
    let first = node("127.0.0.1:0").await;
    let addr = first.memcached_addr();
    first.shutdown().await;
    let config = ClusterRateLimitConfig::new(100, Duration::from_secs(60))
        .with_local(RateLimitConfig::new(3, Duration::from_secs(3600)))
        .with_retry_after_failure(Duration::ZERO);
    let limiter = gateway(addr, config);
    // The first acquire waits for its lease, which fails: local limits decide from then on.
    let results: Vec<bool> = futures_results(&limiter, b"user:1", 4).await;
    assert_eq!(results, [true, true, true, false]);
    let metrics = limiter.metrics();
    assert!(metrics.degraded, "{metrics:?}");
    assert!(metrics.lease_failures >= 1, "{metrics:?}");
    assert_eq!(metrics.local_decisions, 4, "{metrics:?}");
    assert!(metrics.render().contains("trestle_cache_ratelimit_degraded 1"));

    // The node comes back on the same address: a background probe finds it, shared limits resume.
    let back = node(&addr.to_string()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while limiter.metrics().degraded {
        assert!(tokio::time::Instant::now() < deadline, "still degraded after 5 s");
        let _ = limiter.acquire(b"user:2").await;
        tokio::task::yield_now().await;
    }
    let before = limiter.metrics().local_decisions;
    assert!(limiter.acquire(b"user:3").await.is_ok());
    assert_eq!(limiter.metrics().local_decisions, before, "decided by the cache");
    assert!(back.engine().store().get(b"rl:user:3", None).is_some());
    back.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_counts_as_down_after_the_timeout() {
    // Accepts connections and never answers, as a paused (SIGSTOPped) node would.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let config = ClusterRateLimitConfig::new(100, Duration::from_secs(60))
        .with_timeout(Duration::from_millis(50))
        .with_local(RateLimitConfig::new(2, Duration::from_secs(3600)));
    let limiter = gateway(addr, config);
    let results = futures_results(&limiter, b"user:1", 3).await;
    assert_eq!(results, [true, true, false]);
    let metrics = limiter.metrics();
    assert!(metrics.degraded && metrics.lease_failures == 1, "{metrics:?}");
    held.abort();
}

#[test]
fn invalid_configurations_name_the_value() {
    let error = ClusterRateLimitConfig::new(10, Duration::from_millis(1500))
        .validate()
        .expect_err("fractional window");
    assert!(error.to_string().contains("1.5s"), "{error}");
    let error = ClusterRateLimitConfig::new(10, Duration::from_secs(1))
        .with_batch(11)
        .validate()
        .expect_err("batch over budget");
    assert!(error.to_string().contains("11"), "{error}");
}

async fn futures_results(limiter: &ClusterRateLimiter, key: &[u8], n: usize) -> Vec<bool> {
    let mut results = Vec::new();
    for _ in 0..n {
        results.push(limiter.acquire(key).await.is_ok());
    }
    results
}
