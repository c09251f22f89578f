//! Smoke runs: a real 3-node `trestle` cluster, about 15 s of `register` or `set` under partitions and kill -9,
//! checked, and the nemesis proven to have fired. As root the register run uses network namespaces (the `auto`
//! mode); the set run always uses the loopback proxy mode, so both network modes are exercised.
//!
//! The `trestle` binary comes from `TRESTLE_BIN`, else next to this test's executable or in its parent directory
//! (`target/debug/trestle` when the workspace is built). The seed is printed; `TRESTLE_JEPSEN_SEED=<n>` replays.

use std::path::PathBuf;
use std::time::Duration;

use trestle_jepsen::{NetMode, ScheduleConfig, TestConfig, Verdict, find_trestle, run_test};

fn seed() -> u64 {
    std::env::var("TRESTLE_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000)
                .unwrap_or(7)
        })
}

/// Why these tests cannot run here, if they cannot: no root *and* no usable loopback addresses.
fn cannot_run() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.to_owned()))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    if root {
        return None;
    }
    match std::net::TcpListener::bind("127.0.0.11:0") {
        Ok(_) => None,
        Err(e) => Some(format!("not root and 127.0.0.11 cannot be bound ({e})")),
    }
}

fn store(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("trestle-jepsen-smoke-{}-{name}", std::process::id()))
}

async fn smoke(workload: &str, net: NetMode) {
    if let Some(reason) = cannot_run() {
        eprintln!("skipped: {reason}");
        return;
    }
    let binary = find_trestle(None).unwrap_or_else(|e| panic!("{e}"));
    let seed = seed();
    eprintln!(
        "smoke {workload}: seed {seed} (replay with TRESTLE_JEPSEN_SEED={seed}), trestle {}",
        binary.display()
    );
    let mut config = TestConfig::default();
    config.workload = workload.into();
    config.nemesis = "partition,kill".into();
    config.nodes = 3;
    config.time_limit = Duration::from_secs(15);
    config.concurrency = 6;
    config.seed = seed;
    config.store = store(workload);
    config.net = net;
    config.trestle_bin = Some(binary);
    config.schedule = {
        let mut s = ScheduleConfig::default();
        s.warmup = Duration::from_secs(1);
        s.fault = (Duration::from_secs(3), Duration::from_secs(4));
        s.heal = (Duration::from_secs(2), Duration::from_secs(3));
        s
    };
    let started = std::time::Instant::now();
    let outcome = run_test(&config)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    eprintln!("{}", outcome.summary);
    eprintln!("smoke {workload}: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(
        outcome.verdict,
        Verdict::Valid,
        "seed {seed}: {}",
        outcome.summary
    );
    for group in ["partition", "kill"] {
        let fired = outcome
            .nemesis
            .groups
            .get(group)
            .map(|g| g.took_effect)
            .unwrap_or(0);
        assert!(
            fired > 0,
            "seed {seed}: {group} never took effect\n{}",
            outcome.summary
        );
    }
    assert!(
        outcome.report.stats.all.ok > 100,
        "seed {seed}: too few ops succeeded\n{}",
        outcome.summary
    );
    for file in [
        "history.jsonl",
        "results.json",
        "timeline.html",
        "latency.png",
        "throughput.png",
        "logs/n0.log",
    ] {
        assert!(
            outcome.dir.join(file).is_file(),
            "{file} missing in {}",
            outcome.dir.display()
        );
    }
    assert!(
        config
            .store
            .join(workload)
            .join("latest")
            .join("results.json")
            .is_file()
    );
    // Teardown left nothing behind: no namespace, no data directory, no ledger.
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let prefix = format!("jt{}", outcome.run_id);
    assert!(
        !netns.iter().any(|n| n.starts_with(&prefix)),
        "namespaces left: {netns:?}"
    );
    assert!(
        !std::env::temp_dir()
            .join(format!("trestle-jepsen-{}", outcome.run_id))
            .exists()
    );
    assert!(
        !std::env::temp_dir()
            .join("trestle-jepsen-runs")
            .join(&outcome.run_id)
            .exists()
    );
    let _ = std::fs::remove_dir_all(&config.store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_under_partitions_and_kills_is_linearizable() {
    smoke("register", NetMode::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_under_partitions_and_kills_loses_nothing_through_the_loopback_proxies() {
    smoke("set", NetMode::Loopback).await;
}
