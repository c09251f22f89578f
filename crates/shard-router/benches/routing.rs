//! Lookup latency and load spread of the placement strategies.
//!
//! `cargo bench -p trestle-shard-router --bench routing` first prints the spread table (1M keys, exact counts), then
//! runs the Criterion latency benchmarks with short measurement times. Conditions are printed with the results.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group};
use trestle_shard_router::{JumpHash, Node, Placement, Rendezvous, ShardMap, ShardMapConfig};

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(|i| Node::new(format!("node-{i}"))).collect()
}

fn keys() -> Vec<String> {
    (0..4096).map(|i| format!("user:{i}")).collect()
}

fn latency(c: &mut Criterion) {
    let keys = keys();
    for n in [10usize, 100, 1000] {
        let ring = ShardMap::new(nodes(n)).expect("valid");
        let jump = JumpHash::new(nodes(n)).expect("valid");
        let rendezvous = Rendezvous::new(nodes(n)).expect("valid");
        let strategies: [(&str, &dyn Placement); 3] =
            [("ring-2000", &ring), ("jump", &jump), ("rendezvous", &rendezvous)];
        let mut group = c.benchmark_group(format!("{n} nodes"));
        for (name, s) in strategies {
            group.bench_with_input(BenchmarkId::new("route", name), &s, |b, s| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & 4095;
                    black_box(s.route(keys[i].as_bytes()).id());
                });
            });
            group.bench_with_input(BenchmarkId::new("replicas(3)", name), &s, |b, s| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & 4095;
                    black_box(s.replicas(keys[i].as_bytes(), 3));
                });
            });
        }
        group.finish();
    }
}

/// Standard deviation (as % of the mean) and peak (× the mean) of per-node key counts.
fn spread(s: &dyn Placement, keys: u64) -> (f64, f64) {
    let index: std::collections::HashMap<_, _> =
        s.nodes().iter().enumerate().map(|(i, n)| (n.id(), i)).collect();
    let mut counts = vec![0u64; s.nodes().len()];
    for k in 0..keys {
        counts[index[s.route(format!("user:{k}").as_bytes()).id()]] += 1;
    }
    let mean = keys as f64 / counts.len() as f64;
    let var = counts.iter().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / counts.len() as f64;
    let peak = counts.iter().copied().max().unwrap_or(0) as f64 / mean;
    (100.0 * var.sqrt() / mean, peak)
}

fn print_spread() {
    let keys = 1_000_000;
    println!("load spread, {keys} keys `user:<i>`, 100 equal nodes `node-<i>`:");
    println!("| strategy | std dev (% of mean) | peak (× mean) | build time |");
    println!("| --- | --- | --- | --- |");
    for vnodes in [10u32, 100, 160, 500, 1000, 2000] {
        let start = std::time::Instant::now();
        let map = ShardMap::with_config(
            nodes(100),
            ShardMapConfig::default().with_vnodes_per_weight(vnodes),
        )
        .expect("valid");
        let built = start.elapsed();
        let (std, peak) = spread(&map, keys);
        println!("| ring, {vnodes} vnodes | {std:.2} | {peak:.3} | {built:.1?} |");
    }
    let (std, peak) = spread(&JumpHash::new(nodes(100)).expect("valid"), keys);
    println!("| jump | {std:.2} | {peak:.3} | – |");
    let (std, peak) = spread(&Rendezvous::new(nodes(100)).expect("valid"), keys);
    println!("| rendezvous | {std:.2} | {peak:.3} | – |");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = latency
}

fn main() {
    println!(
        "conditions: {} CPUs, {} build, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::env::consts::ARCH
    );
    print_spread();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
