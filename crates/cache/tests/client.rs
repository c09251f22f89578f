//! The client against real nodes on loopback: two zones of two nodes each. Zone fallback, read repair, a node
//! killed during load, acknowledgement levels, multi-get with one request per node, coalesced loading across
//! callers and across clients, and configuration checks.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use support::{Raw, eventually};
use trestle_breaker::{CircuitBreakerConfig, RetryBudgetConfig, SlidingWindow, WaitInOpen};
use trestle_cache::{
    Ack, Client, ClientConfig, ClientConfigError, ClientError, NodeConfig, NodeSpec, ProbeConfig,
    RunningNode, StoreConfig,
};

struct Cluster {
    nodes: HashMap<String, RunningNode>,
    specs: Vec<NodeSpec>,
}

async fn cluster() -> Cluster {
    let mut nodes = HashMap::new();
    let mut specs = Vec::new();
    for (id, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
        let config = NodeConfig::new("127.0.0.1:0".parse().expect("addr"))
            .with_store(StoreConfig::with_memory(32 << 20));
        let node = RunningNode::start(config).await.expect("node");
        specs.push(NodeSpec::new(id, node.memcached_addr(), zone));
        nodes.insert(id.to_owned(), node);
    }
    Cluster { nodes, specs }
}

impl Cluster {
    fn client(&self, zone: &str, ack: Ack) -> Client {
        // A timeout well above the default: the tests share a busy machine, and a live node that misses a 250 ms
        // deadline would fail a write these tests expect to succeed.
        let config = ClientConfig::new(self.specs.clone(), zone)
            .with_write_ack(ack)
            .with_timeout(Duration::from_secs(1));
        Client::new(config).expect("client")
    }

    /// Asks one node directly.
    async fn raw_get(&self, id: &str, key: &str) -> String {
        let mut raw = Raw::connect(self.nodes[id].memcached_addr()).await;
        raw.exchange(format!("mg {key} v\r\n").as_bytes()).await
    }

    async fn kill(&mut self, id: &str) {
        let node = self.nodes.remove(id).expect("node exists");
        node.shutdown().await;
    }
}

fn key(i: usize) -> String {
    format!("user:{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_zone_and_reads_stay_local() {
    let cluster = cluster().await;
    let client = cluster.client("a", Ack::All);
    client
        .set(b"k", Bytes::from_static(b"v"), Duration::ZERO)
        .await
        .expect("set");
    let a = client.node_for("a", b"k").expect("zone a");
    let b = client.node_for("b", b"k").expect("zone b");
    assert_eq!(cluster.raw_get(&a, "k").await, "VA 1\r\nv\r\n");
    assert_eq!(cluster.raw_get(&b, "k").await, "VA 1\r\nv\r\n");
    assert_eq!(
        client.get(b"k").await.expect("get"),
        Some(Bytes::from_static(b"v"))
    );
    client.delete(b"k").await.expect("delete");
    // A delete leaves a tombstone in every zone: an empty value with the tombstone flags.
    let tombstone = format!("VA 0 f{}\r\n\r\n", trestle_cache::TOMBSTONE_FLAGS);
    for node in [&a, &b] {
        let mut raw = Raw::connect(cluster.nodes[node].memcached_addr()).await;
        assert_eq!(raw.exchange(b"mg k v f\r\n").await, tombstone, "{node}");
    }
    assert_eq!(client.get(b"k").await.expect("get"), None);
    // Keys memcached would refuse travel base64-encoded.
    let odd = b"a key with spaces \x00 and more";
    client
        .set(odd, Bytes::from_static(b"odd"), Duration::from_secs(60))
        .await
        .expect("set");
    assert_eq!(
        client.get(odd).await.expect("get"),
        Some(Bytes::from_static(b"odd"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_miss_falls_back_to_the_other_zone_and_repairs() {
    let cluster = cluster().await;
    // Written only in zone b (as if zone a had lost it).
    let b_node = cluster.client("b", Ack::All).node_for("b", b"r").expect("zone b");
    let mut raw = Raw::connect(cluster.nodes[&b_node].memcached_addr()).await;
    assert_eq!(raw.exchange(b"ms r 5 T300 F9\r\nvalue\r\n").await, "HD\r\n");
    let client = cluster.client("a", Ack::One);
    assert_eq!(
        client.get(b"r").await.expect("get"),
        Some(Bytes::from_static(b"value"))
    );
    let a_node = client.node_for("a", b"r").expect("zone a");
    let addr = cluster.nodes[&a_node].memcached_addr();
    let repaired = eventually(Duration::from_secs(5), async || {
        let mut raw = Raw::connect(addr).await;
        raw.exchange(b"mg r v f\r\n").await == "VA 5 f9\r\nvalue\r\n"
    })
    .await;
    assert!(repaired, "the local zone was not repaired");
    let mut raw = Raw::connect(addr).await;
    let ttl = raw.exchange(b"mg r t\r\n").await;
    let ttl: i64 = ttl
        .trim()
        .strip_prefix("HD t")
        .expect("ttl")
        .parse()
        .expect("number");
    assert!((290..=300).contains(&ttl), "repair kept the TTL: {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_load_fails_only_its_own_requests() {
    let mut cluster = cluster().await;
    let writer = cluster.client("a", Ack::All);
    for i in 0..200 {
        writer
            .set(key(i).as_bytes(), Bytes::from(format!("v{i}")), Duration::ZERO)
            .await
            .expect("set");
    }
    let client = cluster.client("a", Ack::All);
    let victim = "a1";
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut read_errors = 0;
            let mut wrong = 0;
            let mut write_errors: Vec<(String, ClientError)> = Vec::new();
            let mut rounds = 0;
            // Runs until two whole rounds have started after the kill.
            let mut after_kill = 0;
            while after_kill < 2 {
                if stop.load(Ordering::Relaxed) {
                    after_kill += 1;
                }
                for i in 0..200 {
                    let k = key(i);
                    match client.get(k.as_bytes()).await {
                        Ok(Some(v)) if v == format!("v{i}").as_bytes() => {}
                        Ok(_) => wrong += 1,
                        Err(_) => read_errors += 1,
                    }
                    if let Err(e) = client
                        .set(k.as_bytes(), Bytes::from(format!("v{i}")), Duration::ZERO)
                        .await
                    {
                        write_errors.push((k, e));
                    }
                }
                rounds += 1;
            }
            (read_errors, wrong, write_errors, rounds)
        })
    };
    // Kill the node while the load runs.
    let client_probe = client.clone();
    let running = eventually(Duration::from_secs(10), async || {
        client_probe.get(b"user:0").await.is_ok_and(|v| v.is_some())
    })
    .await;
    assert!(running);
    cluster.kill(victim).await;
    // The load runs two more rounds, each over every key, after the kill.
    stop.store(true, Ordering::Relaxed);
    let (read_errors, wrong, write_errors, rounds) = load.await.expect("load task");
    assert!(rounds >= 2);
    assert_eq!(read_errors, 0, "reads fall back to zone b");
    assert_eq!(wrong, 0, "no read returned a wrong value or missed");
    // With Ack::All a write fails when the victim held its key, and only then.
    for (k, error) in &write_errors {
        assert_eq!(
            client.node_for("a", k.as_bytes()).as_deref(),
            Some(victim),
            "{k}: {error}"
        );
    }
    let victim_keys = (0..200)
        .filter(|i| client.node_for("a", key(*i).as_bytes()).as_deref() == Some(victim))
        .count();
    assert!(
        victim_keys > 0 && !write_errors.is_empty(),
        "the victim held {victim_keys} keys"
    );
    // Ack::One writes succeed through zone b.
    let lenient = cluster.client("a", Ack::One);
    for i in 0..200 {
        lenient
            .set(key(i).as_bytes(), Bytes::from_static(b"x"), Duration::ZERO)
            .await
            .expect("Ack::One write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_skips_a_dead_node_without_waiting() {
    let mut cluster = cluster().await;
    let client = cluster.client("a", Ack::All);
    cluster.kill("a1").await;
    let dead_keys: Vec<String> = (0..200)
        .map(key)
        .filter(|k| client.node_for("a", k.as_bytes()).as_deref() == Some("a1"))
        .collect();
    assert!(dead_keys.len() >= 10, "a1 holds {} keys", dead_keys.len());
    let mut refused = 0;
    let mut skipped = 0;
    for k in &dead_keys {
        let Err(ClientError::NotEnoughAcks { errors, acked, .. }) = client
            .set(k.as_bytes(), Bytes::from_static(b"x"), Duration::ZERO)
            .await
        else {
            panic!("an Ack::All write to a dead node's key succeeded");
        };
        // Ack::All fails as soon as one zone has failed: zone b's acknowledgement may not be counted yet.
        assert!(acked <= 1);
        for error in errors {
            match error {
                ClientError::Io { node, .. } => {
                    assert_eq!(node, "a1");
                    refused += 1;
                }
                ClientError::CircuitOpen { node } => {
                    assert_eq!(node, "a1");
                    skipped += 1;
                }
                other => panic!("unexpected error {other}"),
            }
        }
    }
    // The breaker opens after its minimum of 5 calls at 100% failures; from then on a1 is skipped.
    assert_eq!(refused, 5, "calls that reached the dead node");
    assert_eq!(skipped, dead_keys.len() - 5);
    // Reads of those keys fall back to zone b. (Zone b's writes finish in the background: the last may still be
    // in flight when the failed write returned.)
    let refs: Vec<&[u8]> = dead_keys.iter().map(|k| k.as_bytes()).collect();
    let all = eventually(Duration::from_secs(5), async || {
        client.get_many(&refs).await.expect("multi-get falls back").len() == dead_keys.len()
    })
    .await;
    assert!(all, "multi-get did not find every key in zone b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_get_sends_one_request_per_node() {
    let cluster = cluster().await;
    let client = cluster.client("a", Ack::All);
    let keys: Vec<String> = (0..50).map(key).collect();
    for k in &keys[..40] {
        client
            .set(k.as_bytes(), Bytes::from(k.clone()), Duration::ZERO)
            .await
            .expect("set");
    }
    let before: HashMap<String, u64> = cluster
        .nodes
        .iter()
        .map(|(id, n)| (id.clone(), mn_count(n)))
        .collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let found = client.get_many(&refs).await.expect("get_many");
    assert_eq!(found.len(), 40);
    for k in &keys[..40] {
        assert_eq!(found[k.as_bytes()], k.as_bytes());
    }
    // Each exchange ends with one `mn`: each zone-a node got exactly one request, and the 10 missing keys one
    // more request per zone-b node that holds some of them.
    for (id, node) in &cluster.nodes {
        let requests = mn_count(node) - before[id];
        if id.starts_with('a') {
            assert_eq!(requests, 1, "{id}");
        } else {
            assert!(requests <= 1, "{id}: {requests}");
        }
    }
}

fn mn_count(node: &RunningNode) -> u64 {
    let text = node.engine().metrics().render(node.engine().store());
    text.lines()
        .find(|l| l.starts_with(r#"trestle_cache_command_duration_seconds_count{command="mn"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_load_once_across_callers_and_clients() {
    let cluster = cluster().await;
    let loads = Arc::new(AtomicUsize::new(0));
    // Two clients, as two processes would have.
    let clients = [cluster.client("a", Ack::All), cluster.client("a", Ack::All)];
    let gate = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (client, loads, gate) = (clients[i % 2].clone(), loads.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            client
                .get_or_load(b"hot", Duration::from_secs(60), || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    // A slow origin: the others must wait for this load, not start their own.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::convert::Infallible>(Bytes::from_static(b"loaded"))
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await.expect("task").expect("get_or_load"),
            Bytes::from_static(b"loaded")
        );
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "one load for 20 concurrent misses in two clients"
    );
    // The value is in both zones.
    let b = clients[0].node_for("b", b"hot").expect("zone b");
    assert_eq!(cluster.raw_get(&b, "hot").await, "VA 6\r\nloaded\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_value_is_served_stale_while_one_caller_refreshes() {
    let cluster = cluster().await;
    let client = cluster.client("a", Ack::All);
    client
        .set(b"page", Bytes::from_static(b"old"), Duration::from_secs(60))
        .await
        .expect("set");
    client.invalidate(b"page").await.expect("invalidate");
    assert_eq!(
        client.get(b"page").await.expect("get"),
        None,
        "plain get treats stale as a miss"
    );
    let loads = Arc::new(AtomicUsize::new(0));
    // The refresher's load lasts until the second caller has had its answer (a fixed sleep raced it under load).
    let release = Arc::new(tokio::sync::Notify::new());
    let refresher = {
        let (client, loads, release) = (client.clone(), loads.clone(), release.clone());
        tokio::spawn(async move {
            client
                .get_or_load(b"page", Duration::from_secs(60), || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok::<_, std::convert::Infallible>(Bytes::from_static(b"new"))
                })
                .await
        })
    };
    // Once the refresher is loading (it won the token), a second client gets the stale value at once.
    let other = cluster.client("a", Ack::All);
    let loading = eventually(Duration::from_secs(5), async || loads.load(Ordering::SeqCst) == 1).await;
    assert!(loading, "the refresher never started loading");
    let stale = other
        .get_or_load(b"page", Duration::from_secs(60), || async {
            Err::<Bytes, _>("the second caller must not load")
        })
        .await
        .expect("stale value");
    assert_eq!(stale, Bytes::from_static(b"old"));
    release.notify_one();
    assert_eq!(
        refresher.await.expect("task").expect("refresh"),
        Bytes::from_static(b"new")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(
        client.get(b"page").await.expect("get"),
        Some(Bytes::from_static(b"new"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_zone_down_reads_and_writes_go_to_the_other() {
    let mut cluster = cluster().await;
    let client = cluster.client("a", Ack::All);
    for i in 0..50 {
        client
            .set(key(i).as_bytes(), Bytes::from(format!("v{i}")), Duration::ZERO)
            .await
            .expect("set");
    }
    cluster.kill("a1").await;
    cluster.kill("a2").await;
    for i in 0..50 {
        let value = client.get(key(i).as_bytes()).await.expect("zone b answers");
        assert_eq!(value, Some(Bytes::from(format!("v{i}"))));
    }
    let keys: Vec<String> = (0..50).map(key).collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    assert_eq!(client.get_many(&refs).await.expect("multi-get").len(), 50);
    // One zone of two can acknowledge Ack::One, not Ack::Quorum (two of two).
    let one = cluster.client("a", Ack::One);
    one.set(b"new", Bytes::from_static(b"n"), Duration::ZERO)
        .await
        .expect("Ack::One");
    let quorum = cluster.client("a", Ack::Quorum);
    let err = quorum
        .set(b"new", Bytes::from_static(b"n"), Duration::ZERO)
        .await
        .expect_err("no quorum");
    assert!(
        matches!(err, ClientError::NotEnoughAcks { needed: 2, .. }),
        "{err}"
    );
    // With every zone down, reads fail instead of reporting a miss.
    cluster.kill("b1").await;
    cluster.kill("b2").await;
    let err = client.get(b"user:1").await.expect_err("nothing answers");
    assert!(
        matches!(err, ClientError::AllZonesFailed { ref errors } if errors.len() == 2),
        "{err}"
    );
}

async fn node_at(addr: &str) -> RunningNode {
    let config = NodeConfig::new(addr.parse().expect("addr")).with_store(StoreConfig::with_memory(32 << 20));
    RunningNode::start(config).await.expect("node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_fast_until_a_background_probe_finds_it_back() {
    let first = node_at("127.0.0.1:0").await;
    let addr = first.memcached_addr();
    let breaker = CircuitBreakerConfig::default()
        .with_sliding_window(SlidingWindow::Count { size: 5 })
        .with_minimum_calls(3)
        .with_wait_in_open(WaitInOpen::Fixed(Duration::from_millis(200)));
    let timeout = Duration::from_secs(2);
    let config = ClientConfig::new(vec![NodeSpec::new("n1", addr, "a")], "a")
        .with_timeout(timeout)
        .with_breaker(breaker);
    let client = Client::new(config).expect("client");
    client
        .set(b"k", Bytes::from_static(b"v"), Duration::ZERO)
        .await
        .expect("set");
    first.shutdown().await;
    // Three refused connections open the breaker: the node is down.
    for _ in 0..3 {
        client.get(b"k").await.expect_err("the node is gone");
    }
    assert_eq!(client.stats().nodes_down, 1, "{:?}", client.stats());
    // From now on requests fail fast, without a connection attempt, however long the node stays away: a probe
    // (every 160 to 240 ms) is what tries it.
    let probed = eventually(Duration::from_secs(10), async || client.stats().probes >= 3).await;
    assert!(probed, "no probes: {:?}", client.stats());
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let err = client.get(b"k").await.expect_err("still gone");
        assert!(
            matches!(&err, ClientError::AllZonesFailed { errors } if matches!(errors[..], [ClientError::CircuitOpen { .. }])),
            "{err}"
        );
    }
    assert!(
        started.elapsed() < timeout,
        "100 requests to a down node took {:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().nodes_down, 1);
    // Back on the same port (empty): a probe finds it and requests flow again.
    let _back = node_at(&addr.to_string()).await;
    let found = eventually(Duration::from_secs(10), async || client.stats().nodes_down == 0).await;
    assert!(found, "the node was not found back: {:?}", client.stats());
    client
        .set(b"k", Bytes::from_static(b"again"), Duration::ZERO)
        .await
        .expect("set after the node is back");
    assert_eq!(
        client.get(b"k").await.expect("get"),
        Some(Bytes::from_static(b"again"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_retries_to_a_recovering_zone_stay_within_the_retry_budget() {
    let a = node_at("127.0.0.1:0").await;
    let b = node_at("127.0.0.1:0").await;
    let b_addr = b.memcached_addr();
    // A breaker that never opens and no probing: every retry attempt goes to the network, so the budget alone
    // limits them. The budget: no share of traffic, a reserve of 10 retries per 1 s window.
    let breaker = CircuitBreakerConfig::default()
        .with_sliding_window(SlidingWindow::Count { size: 1000 })
        .with_minimum_calls(1000);
    let budget = RetryBudgetConfig::default()
        .with_ttl(Duration::from_secs(1))
        .with_min_retries_per_sec(10)
        .with_retry_percent(0.0);
    let specs = vec![
        NodeSpec::new("a1", a.memcached_addr(), "a"),
        NodeSpec::new("b1", b_addr, "b"),
    ];
    let config = ClientConfig::new(specs, "a")
        .with_write_ack(Ack::One)
        .with_timeout(Duration::from_secs(1))
        .with_breaker(breaker)
        .with_probe(ProbeConfig::disabled())
        .with_max_retry_pause(Duration::from_millis(200))
        .with_retry_budget(Some(budget));
    let client = Client::new(config).expect("client");
    b.shutdown().await;
    const KEYS: u64 = 50;
    for i in 0..KEYS {
        client
            .delete(format!("k{i}").as_bytes())
            .await
            .expect("zone a acknowledges");
    }
    let registered = eventually(Duration::from_secs(10), async || {
        client.stats().retries_pending == KEYS
    })
    .await;
    assert!(registered, "{:?}", client.stats());
    let _back = node_at(&b_addr.to_string()).await;
    let back_at = std::time::Instant::now();
    let drained = eventually(Duration::from_secs(30), async || {
        client.stats().retries_pending == 0
    })
    .await;
    let took = back_at.elapsed();
    let stats = client.stats();
    assert!(drained, "retries still pending: {stats:?}");
    assert_eq!(stats.retries_done, KEYS, "{stats:?}");
    assert_eq!(stats.retries_abandoned, 0, "{stats:?}");
    assert!(stats.retries_throttled > 0, "{stats:?}");
    // At most 10 attempts per window of at least 0.9 s (the budget's 1 s cut in ten slots): 50 retries need five
    // windows, so at least 3.6 s from the first attempt; 2.5 s allows for one batch taken just before the node
    // came back. A slower machine only makes this longer. Without the budget all 50 land within one 200 ms pause.
    assert!(
        took >= Duration::from_millis(2500),
        "50 retries landed in {took:?}: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_trial_call_gives_its_half_open_slot_back() {
    // A node that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let breaker = CircuitBreakerConfig::default()
        .with_sliding_window(SlidingWindow::Count { size: 1 })
        .with_minimum_calls(1)
        .with_permitted_calls_in_half_open(1)
        .with_wait_in_open(WaitInOpen::Fixed(Duration::from_millis(20)));
    // Requests themselves try the node again (background probing would skip it until a probe answers).
    let config = ClientConfig::new(vec![NodeSpec::new("silent", addr, "a")], "a")
        .with_timeout(Duration::from_millis(100))
        .with_breaker(breaker)
        .with_probe(ProbeConfig::disabled());
    let client = Client::new(config).expect("client");
    let open = |e: &ClientError| matches!(e, ClientError::AllZonesFailed { errors } if matches!(errors[..], [ClientError::CircuitOpen { .. }]));
    // The timeout opens the breaker.
    let err = client.get(b"k").await.expect_err("timeout");
    assert!(
        matches!(&err, ClientError::AllZonesFailed { errors } if matches!(errors[..], [ClientError::Timeout { .. }])),
        "{err}"
    );
    assert!(open(&client.get(b"k").await.expect_err("open")));
    // Once the wait is over a trial call is let through; the caller gives up on it (drops the future).
    let admitted = eventually(Duration::from_secs(5), async || {
        tokio::time::timeout(Duration::from_millis(5), client.get(b"k"))
            .await
            .is_err()
    })
    .await;
    assert!(admitted, "no trial call was let through");
    // The slot came back: the next call is let through too, instead of failing fast forever.
    let next = tokio::time::timeout(Duration::from_millis(5), client.get(b"k")).await;
    assert!(next.is_err(), "the half-open slot leaked: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_share_a_few_connections() {
    let cluster = cluster().await;
    let config = ClientConfig::new(cluster.specs.clone(), "a")
        .with_max_connections_per_node(4)
        .with_timeout(Duration::from_secs(5));
    let client = Client::new(config).expect("client");
    client
        .set(b"k", Bytes::from_static(b"v"), Duration::ZERO)
        .await
        .expect("set");
    let node = client.node_for("a", b"k").expect("node");
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get(b"k").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("task").expect("get"),
            Some(Bytes::from_static(b"v"))
        );
    }
    let engine = cluster.nodes[&node].engine();
    let total = engine.connections().total.load(Ordering::Relaxed);
    assert!(total <= 4, "{total} connections opened to {node}");
}

#[test]
fn config_validation_names_the_problem() {
    let addr = "127.0.0.1:1".parse().expect("addr");
    assert_eq!(
        ClientConfig::new(vec![], "a").validate(),
        Err(ClientConfigError::NoNodes)
    );
    let dup = vec![NodeSpec::new("n", addr, "a"), NodeSpec::new("n", addr, "b")];
    assert_eq!(
        ClientConfig::new(dup, "a").validate(),
        Err(ClientConfigError::DuplicateNode { id: "n".into() })
    );
    let one = vec![NodeSpec::new("n", addr, "a")];
    assert_eq!(
        ClientConfig::new(one.clone(), "z").validate(),
        Err(ClientConfigError::UnknownLocalZone {
            zone: "z".into(),
            zones: vec!["a".into()]
        })
    );
    assert_eq!(
        ClientConfig::new(one.clone(), "a")
            .with_timeout(Duration::ZERO)
            .validate(),
        Err(ClientConfigError::Zero { name: "timeout" })
    );
    assert!(ClientConfig::new(one.clone(), "a").validate().is_ok());
    assert!(matches!(
        ClientConfig::new(one.clone(), "a")
            .with_probe(ProbeConfig::default().with_jitter(1.0))
            .validate(),
        Err(ClientConfigError::Invalid {
            name: "probe.jitter",
            ..
        })
    ));
    assert!(matches!(
        ClientConfig::new(one.clone(), "a")
            .with_retry_budget(Some(RetryBudgetConfig::default().with_retry_percent(101.0)))
            .validate(),
        Err(ClientConfigError::RetryBudget(_))
    ));
    assert!(matches!(
        ClientConfig::new(one.clone(), "a")
            .with_tombstone_ttl(Duration::from_millis(500))
            .validate(),
        Err(ClientConfigError::Invalid {
            name: "tombstone_ttl",
            ..
        })
    ));
    assert_eq!(
        ClientConfig::new(one.clone(), "a")
            .with_near_cache(trestle_cache::NearCacheConfig::default().with_capacity_bytes(0))
            .validate(),
        Err(ClientConfigError::Zero {
            name: "near_cache.capacity_bytes"
        })
    );
    assert_eq!(
        ClientConfig::new(one.clone(), "a")
            .with_warm_up(trestle_cache::WarmUpConfig::default().with_batch(0))
            .validate(),
        Err(ClientConfigError::Zero {
            name: "warm_up.batch"
        })
    );
    let bad_detector = trestle_shard_router::HotKeyConfig::default().with_hot_fraction(2.0);
    assert!(matches!(
        ClientConfig::new(one, "a")
            .with_hot_keys(trestle_cache::HotKeysConfig::default().with_detector(bad_detector))
            .validate(),
        Err(ClientConfigError::Invalid {
            name: "hot_keys.detector",
            ..
        })
    ));
    assert_eq!(Ack::Quorum.needed(3), 2);
    assert_eq!(Ack::All.needed(3), 3);
    assert_eq!(Ack::One.needed(3), 1);
}
