//! Smoke runs of the work queue: a real 3-node `trestle serve --queue-partitions 3` cluster, about 15 s of the
//! `queue` workload (sends, receives and acks, then a drain) and of the `barrier` workload (join barriers, their
//! tasks and completions) under partitions and kill -9, checked, and both nemeses proven to have fired. The two run
//! in parallel (one test binary), as root in network namespaces, else through the loopback proxies.
//!
//! The `trestle` binary comes from `TRESTLE_BIN`, else next to this test's executable or in its parent directory.
//! The seed is printed; `TRESTLE_JEPSEN_SEED=<n>` replays.

use std::time::Duration;

use trestle_jepsen::{
    Details, NetMode, ScheduleConfig, TestConfig, TestOutcome, Verdict, find_trestle, run_test,
};

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
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    if root {
        return None;
    }
    match std::net::TcpListener::bind("127.0.0.11:0") {
        Ok(_) => None,
        Err(e) => Some(format!("not root and 127.0.0.11 cannot be bound ({e})")),
    }
}

/// Runs `workload` for 15 s under partitions and kills; `None` when it cannot run here (outside CI).
async fn smoke(workload: &'static str) -> Option<(u64, TestOutcome)> {
    if let Some(reason) = cannot_run() {
        let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(!in_ci, "smoke {workload} cannot run under CI: {reason}");
        eprintln!("skipped (not under CI): {reason}");
        return None;
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
    config.store =
        std::env::temp_dir().join(format!("trestle-jepsen-smoke-{}-{workload}", std::process::id()));
    config.net = NetMode::Auto;
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
        let fired = outcome.nemesis.groups.get(group).map_or(0, |g| g.took_effect);
        assert!(
            fired > 0,
            "seed {seed}: {group} never took effect\n{}",
            outcome.summary
        );
    }
    assert!(outcome.dir.join("history.jsonl").is_file());
    let _ = std::fs::remove_dir_all(&config.store);
    Some((seed, outcome))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_under_partitions_and_kills_loses_nothing_acknowledged() {
    let Some((seed, outcome)) = smoke("queue").await else {
        return;
    };
    let Details::Queue(r) = &outcome.report.details else {
        panic!("the queue workload is checked by the queue checker");
    };
    // The faults did not stop the queue: sends were acknowledged and received, and the drain emptied it.
    assert!(r.acknowledged > 20, "seed {seed}: {}", outcome.summary);
    assert!(r.received >= r.acknowledged, "seed {seed}: {}", outcome.summary);
    assert!(r.acks > 20, "seed {seed}: {}", outcome.summary);
    assert!(r.drained && r.lost.is_empty(), "seed {seed}: {}", outcome.summary);
    assert!(r.unexpected.is_empty() && r.delivered_after_ack.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_under_partitions_and_kills_completes_each_batch_once() {
    let Some((seed, outcome)) = smoke("barrier").await else {
        return;
    };
    let Details::Barrier(r) = &outcome.report.details else {
        panic!("the barrier workload is checked by the barrier checker");
    };
    assert!(r.acknowledged > 5, "seed {seed}: {}", outcome.summary);
    // Every acknowledged barrier completed, once (a barrier whose submission timed out may have too).
    assert!(r.completed >= r.acknowledged, "seed {seed}: {}", outcome.summary);
    assert!(
        r.drained && r.missing.is_empty() && r.violations.is_empty(),
        "seed {seed}: {}",
        outcome.summary
    );
}
