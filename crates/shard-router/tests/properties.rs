//! Property tests of placement, rebalancing, bounded loads, zones and hot keys.
//!
//! Every test prints its seed; replay a failure with `PROPTEST_RNG_SEED=<seed>`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use trestle_shard_router::{
    BoundedLoad, BoundedLoadConfig, HotKeyConfig, HotKeyDetector, JumpHash, Node, Placement, Rendezvous,
    ShardMap, ShardMapConfig, key_position,
};

fn config(cases: u32) -> Config {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64
        });
    eprintln!("proptest seed {seed}; replay with PROPTEST_RNG_SEED={seed}");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// 1 to `max` distinct nodes with weights 1..=4 and zones among `zones`.
fn nodes(max: usize, zones: u8) -> impl Strategy<Value = Vec<Node>> {
    prop::collection::btree_map("[a-z]{1,6}", (1u32..=4, 0..zones), 1..=max).prop_map(|m| {
        m.into_iter()
            .map(|(id, (w, z))| Node::new(id).with_weight(w).with_zone(format!("z{z}")))
            .collect()
    })
}

fn small(vnodes: u32) -> ShardMapConfig {
    ShardMapConfig::default().with_vnodes_per_weight(vnodes)
}

fn keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..64)
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn every_key_maps_to_a_node_and_replicas_are_distinct(
        nodes in nodes(12, 4), vnodes in 1u32..64, keys in keys(), n in 0usize..16,
    ) {
        let ids: HashSet<_> = nodes.iter().map(|n| n.id().clone()).collect();
        let map = ShardMap::with_config(nodes, small(vnodes)).expect("valid nodes");
        for key in &keys {
            let owner = map.route(key);
            prop_assert!(ids.contains(owner.id()));
            let replicas = map.replicas(key, n);
            prop_assert_eq!(replicas.len(), n.min(ids.len()));
            let distinct: HashSet<_> = replicas.iter().map(|r| r.id()).collect();
            prop_assert_eq!(distinct.len(), replicas.len());
            if let Some(first) = replicas.first() {
                prop_assert_eq!(first.id(), owner.id());
            }
        }
    }

    #[test]
    fn zone_spread_holds_when_enough_zones_exist(
        nodes in nodes(16, 6), keys in keys(), n in 1usize..6,
    ) {
        let zones: HashSet<_> = nodes.iter().map(|n| n.zone().map(str::to_owned)).collect();
        let map = ShardMap::with_config(nodes, small(16)).expect("valid nodes");
        for key in &keys {
            let replicas = map.replicas(key, n);
            let used: HashSet<_> = replicas.iter().map(|r| r.zone()).collect();
            // n distinct zones whenever n zones exist; otherwise every zone.
            prop_assert_eq!(used.len(), n.min(zones.len()).min(replicas.len()));
        }
    }

    #[test]
    fn adding_or_removing_a_node_moves_only_the_planned_ranges(
        nodes in nodes(10, 3), vnodes in 1u32..40, keys in keys(), weight in 1u32..4,
    ) {
        let before = ShardMap::with_config(nodes, small(vnodes)).expect("valid nodes");
        let after = before.with_node(Node::new("NEW").with_weight(weight)).expect("new id");
        let plan = before.plan_to(&after);
        prop_assert!(plan.moves().iter().all(|m| m.to == "NEW"));
        for key in &keys {
            let (old, new) = (before.route(key).id(), after.route(key).id());
            match plan.find(key_position(key)) {
                Some(m) => {
                    prop_assert_eq!(&m.from, old);
                    prop_assert_eq!(&m.to, new);
                    prop_assert!(old != new);
                }
                None => prop_assert_eq!(old, new),
            }
        }
        let back = after.plan_to(&before);
        prop_assert!(back.moves().iter().all(|m| m.from == "NEW"));
        for key in &keys {
            let moved = after.route(key).id() != before.route(key).id();
            prop_assert_eq!(moved, back.find(key_position(key)).is_some());
        }
    }

    #[test]
    fn bounded_loads_never_exceed_the_bound(
        nodes in nodes(8, 2), factor in prop::sample::select(vec![1.0, 1.1, 1.25, 1.5, 2.0]),
        ops in prop::collection::vec((any::<bool>(), 0u8..6, any::<u16>()), 1..300),
    ) {
        let map = Arc::new(ShardMap::with_config(nodes, small(8)).expect("valid nodes"));
        let total_weight = u128::from(map.total_weight());
        let loads = BoundedLoad::new(Arc::clone(&map), BoundedLoadConfig::default().with_balance_factor(factor))
            .expect("valid factor");
        let factor_milli = (factor * 1000.0).round() as u128;
        let mut guards = Vec::new();
        for (acquire, key, pick) in ops {
            if acquire || guards.is_empty() {
                let total_after = u128::from(loads.total()) + 1;
                let guard = loads.acquire([key]);
                let node = guard.node().clone();
                let load = u128::from(loads.load(node.id().as_str()).unwrap_or(u64::MAX));
                let bound = (factor_milli * total_after * u128::from(node.weight())).div_ceil(1000 * total_weight);
                prop_assert!(load <= bound, "{} carries {} > bound {}", node.id(), load, bound);
                guards.push(guard);
            } else {
                drop(guards.swap_remove(usize::from(pick) % guards.len()));
            }
            prop_assert_eq!(loads.total(), guards.len() as u64);
        }
        drop(guards);
        prop_assert_eq!(loads.total(), 0);
    }

    #[test]
    fn jump_and_rendezvous_keep_their_promises(
        nodes in nodes(12, 1), keys in keys(), n in 0usize..14,
    ) {
        let unweighted: Vec<Node> = nodes.iter().map(|n| Node::new(n.id().clone())).collect();
        let jump = JumpHash::new(unweighted.clone()).expect("valid");
        let rendezvous = Rendezvous::new(nodes.clone()).expect("valid");
        let strategies: [&dyn Placement; 2] = [&jump, &rendezvous];
        for s in strategies {
            for key in &keys {
                let owner = s.route(key);
                prop_assert!(s.nodes().iter().any(|n| n.id() == owner.id()));
                let replicas = s.replicas(key, n);
                prop_assert_eq!(replicas.len(), n.min(nodes.len()));
                let distinct: HashSet<_> = replicas.iter().map(|r| r.id()).collect();
                prop_assert_eq!(distinct.len(), replicas.len());
                if let Some(first) = replicas.first() {
                    prop_assert_eq!(first.id(), owner.id());
                }
            }
        }
        // Jump: growing by one shard moves keys only to the new shard.
        let grown = jump.with_shard(Node::new("NEW")).expect("new id");
        for key in &keys {
            let (old, new) = (jump.route(key).id(), grown.route(key).id());
            prop_assert!(old == new || new == "NEW");
        }
        // Rendezvous: removing a node moves only that node's keys.
        if nodes.len() > 1 {
            let gone = nodes[0].id().clone();
            let smaller = Rendezvous::new(nodes[1..].to_vec()).expect("valid");
            for key in &keys {
                let (old, new) = (rendezvous.route(key).id(), smaller.route(key).id());
                prop_assert!(old == new || *old == gone);
            }
        }
    }

    #[test]
    fn space_saving_never_underestimates_and_tracks_heavy_keys(
        stream in prop::collection::vec(0u16..200, 1..3000), capacity in 4usize..32,
        skew in prop::collection::vec(0u16..4, 0..3000),
    ) {
        let config = HotKeyConfig::default().with_capacity(capacity);
        let mut detector = HotKeyDetector::new(config).expect("valid");
        let mut truth: HashMap<u16, u64> = HashMap::new();
        // Mix a uniform stream with a few heavy keys.
        for key in stream.iter().chain(skew.iter()) {
            detector.observe(&key.to_le_bytes());
            *truth.entry(*key).or_default() += 1;
        }
        let total = detector.total();
        let tracked: HashMap<Vec<u8>, _> =
            detector.top(capacity).into_iter().map(|h| (h.key.clone(), h)).collect();
        prop_assert!(tracked.len() <= capacity);
        for (key, &count) in &truth {
            let bytes = key.to_le_bytes().to_vec();
            if let Some(h) = tracked.get(&bytes) {
                prop_assert!(h.estimate >= count && h.guaranteed() <= count);
            }
            if count * capacity as u64 > total {
                prop_assert!(tracked.contains_key(&bytes), "heavy key {} ({} of {}) not tracked", key, count, total);
            }
        }
    }
}
