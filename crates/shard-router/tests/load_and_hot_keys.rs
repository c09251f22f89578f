//! Bounded loads and hot keys, through the public API.

use std::collections::HashMap;
use std::sync::Arc;

use trestle_shard_router::{
    BoundedLoad, BoundedLoadConfig, HotKeyConfig, HotKeyDetector, HotKeySplit, Node, ShardError, ShardMap,
};

fn map(n: usize) -> Arc<ShardMap> {
    Arc::new(ShardMap::new((0..n).map(|i| Node::new(format!("n{i}")))).expect("valid"))
}

#[test]
fn one_hot_key_is_spread_within_the_bound() {
    let loads = BoundedLoad::new(map(10), BoundedLoadConfig::default()).expect("valid");
    let guards: Vec<_> = (0..1000).map(|_| loads.acquire("hot")).collect();
    let mut per_node: HashMap<String, u64> = HashMap::new();
    for g in &guards {
        *per_node.entry(g.node().id().to_string()).or_default() += 1;
    }
    // 1000 units at most 125 per node: the overflow filled at least 8 nodes.
    assert!(per_node.len() >= 8, "{per_node:?}");
    assert!(
        per_node.values().all(|&l| l <= 125),
        "⌈1.25 × 1000 / 10⌉ = 125: {per_node:?}"
    );
    assert_eq!(loads.total(), 1000);
    drop(guards);
    assert_eq!(loads.total(), 0);
    assert_eq!(loads.load("n0"), Some(0));
    assert_eq!(loads.load("nope"), None);
}

#[test]
fn an_idle_cluster_routes_to_the_owner() {
    let map = map(5);
    let loads = BoundedLoad::new(Arc::clone(&map), BoundedLoadConfig::default()).expect("valid");
    for i in 0..100 {
        let key = format!("k{i}");
        let guard = loads.acquire(&key);
        assert_eq!(guard.node().id(), map.route(&key).id());
    }
}

#[test]
fn heavier_nodes_get_more_room() {
    let map = Arc::new(ShardMap::new([Node::new("big").with_weight(3), Node::new("small")]).expect("valid"));
    let loads = BoundedLoad::new(map, BoundedLoadConfig::default().with_balance_factor(1.0)).expect("valid");
    let guards: Vec<_> = (0..400).map(|i| loads.acquire(format!("k{}", i % 3))).collect();
    assert_eq!(loads.load("big"), Some(300));
    assert_eq!(loads.load("small"), Some(100));
    assert_eq!(loads.capacity("big"), Some(301));
    drop(guards);
}

#[test]
fn bad_balance_factors_are_rejected() {
    for factor in [0.99, f64::NAN, f64::INFINITY, -1.0, 1001.0] {
        let result = BoundedLoad::new(map(2), BoundedLoadConfig::default().with_balance_factor(factor));
        assert!(
            matches!(
                result,
                Err(ShardError::InvalidConfig {
                    field: "balance_factor",
                    ..
                })
            ),
            "{factor} accepted"
        );
    }
}

#[test]
fn detector_finds_hot_keys_and_forgets_them() {
    let mut detector = HotKeyDetector::new(HotKeyConfig::default()).expect("valid");
    // 5% of 20 000 observations on one key, 2% on another, the rest spread over 5000 keys.
    for i in 0..20_000u32 {
        let key = match i % 100 {
            0..=4 => b"hot-a".to_vec(),
            5..=6 => b"hot-b".to_vec(),
            _ => format!("cold-{}", i % 5000).into_bytes(),
        };
        detector.observe(&key);
    }
    let hot: Vec<Vec<u8>> = detector.hot_keys().into_iter().map(|h| h.key).collect();
    assert_eq!(hot, [b"hot-a".to_vec(), b"hot-b".to_vec()]);
    let top = &detector.top(1)[0];
    assert!(top.estimate >= 1000 && top.guaranteed() <= 1000);

    detector.decay();
    assert_eq!(detector.total(), 10_000);
    detector.clear();
    assert!(!detector.is_hot(b"hot-a"));
    assert!(detector.top(5).is_empty());
}

#[test]
fn nothing_is_hot_before_enough_observations() {
    let mut detector =
        HotKeyDetector::new(HotKeyConfig::default().with_min_observations(100)).expect("valid");
    for _ in 0..99 {
        assert!(!detector.observe(b"only"));
    }
    assert!(detector.observe(b"only"));
}

#[test]
fn bad_hot_key_configs_are_rejected() {
    assert!(HotKeyDetector::new(HotKeyConfig::default().with_capacity(0)).is_err());
    assert!(HotKeyDetector::new(HotKeyConfig::default().with_hot_fraction(0.0)).is_err());
    assert!(HotKeyDetector::new(HotKeyConfig::default().with_hot_fraction(f64::NAN)).is_err());
    assert!(HotKeySplit::new(0).is_err());
}

#[test]
fn split_spreads_reads_evenly_over_k_replicas() {
    let eight = map(8);
    let split = HotKeySplit::new(4).expect("valid");
    let mut reads: HashMap<String, u32> = HashMap::new();
    for spread in 0..4000u64 {
        *reads
            .entry(split.read_target(&eight, "celebrity", spread).id().to_string())
            .or_default() += 1;
    }
    assert_eq!(reads.len(), 4);
    assert!(reads.values().all(|&r| r == 1000));
    let targets: Vec<String> = split
        .targets(&eight, "celebrity")
        .iter()
        .map(|n| n.id().to_string())
        .collect();
    assert!(targets.iter().all(|t| reads.contains_key(t)));
    // On a map smaller than the fan-out, every node shares the reads.
    let small = map(2);
    let two: std::collections::HashSet<_> = (0..10u64)
        .map(|s| split.read_target(&small, "celebrity", s).id().clone())
        .collect();
    assert_eq!(two.len(), 2);
}
