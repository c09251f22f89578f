//! Smoke runs: a real 3-node `trestle` cluster, about 15 s of `register`, `set`, `lock`, `election`, `queue`,
//! `barrier` or `cache` under partitions and kill -9 (and SIGSTOP pauses for `lock` and `cache`), checked, and every
//! nemesis proven to have fired; one `register` run fills a node's disk instead (root only). As root the runs use network namespaces (the `auto` mode) except `set`, which always uses the loopback
//! proxy mode, so both network modes are exercised. They run in parallel (one test binary).
//!
//! The `trestle` binary comes from `TRESTLE_BIN`, else next to this test's executable or in its parent directory
//! (`target/debug/trestle` when the workspace is built). The seed is printed; `TRESTLE_JEPSEN_SEED=<n>` replays.

use std::path::PathBuf;
use std::time::Duration;

use trestle_jepsen::{Details, NetMode, ScheduleConfig, TestConfig, Verdict, find_trestle, run_test};

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

/// Whether this process runs as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.to_owned()))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

/// Whether this runs under CI, where a test that cannot run fails instead of skipping.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Why these tests cannot run here, if they cannot: no root *and* no usable loopback addresses.
fn cannot_run() -> Option<String> {
    if is_root() {
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

/// What a smoke run asks for.
struct Smoke {
    workload: &'static str,
    nemesis: &'static str,
    /// The nemesis groups that must have taken effect.
    groups: &'static [&'static str],
    net: NetMode,
    /// Fault windows (min, max) and heal windows (min, max): three groups need three windows in 15 s.
    fault: (Duration, Duration),
    heal: (Duration, Duration),
    /// Operations that must succeed, so that the checker had something to judge.
    min_ok: usize,
}

impl Smoke {
    fn new(workload: &'static str, net: NetMode) -> Smoke {
        Smoke {
            workload,
            nemesis: "partition,kill",
            groups: &["partition", "kill"],
            net,
            fault: (Duration::from_secs(3), Duration::from_secs(4)),
            heal: (Duration::from_secs(2), Duration::from_secs(3)),
            min_ok: 100,
        }
    }
}

async fn smoke(run: Smoke) -> Option<trestle_jepsen::TestOutcome> {
    let Smoke {
        workload,
        net,
        groups,
        ..
    } = run;
    if let Some(reason) = cannot_run() {
        // Under CI a run that cannot happen is a failure, never a silent pass.
        assert!(!in_ci(), "smoke {workload} cannot run under CI: {reason}");
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
    config.nemesis = run.nemesis.into();
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
        s.fault = run.fault;
        s.heal = run.heal;
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
    for &group in groups {
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
        outcome.report.stats.all.ok >= run.min_ok,
        "seed {seed}: too few ops succeeded (at least {} wanted)\n{}",
        run.min_ok,
        outcome.summary
    );
    let mut files = vec![
        "history.jsonl",
        "results.json",
        "timeline.html",
        "latency.png",
        "throughput.png",
        "logs/n0.log",
    ];
    if workload == "cache" {
        files.push("logs/cache0.log");
    }
    for file in files {
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
    Some(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_under_partitions_and_kills_is_linearizable() {
    smoke(Smoke::new("register", NetMode::Auto)).await;
}

/// A node whose data volume fills up (each node's data directory on a size-limited tmpfs, which needs root) stops
/// saying so and refuses to start while it is full; freed, it starts on its data and catches up. The register
/// stays linearizable: nothing acknowledged was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_a_full_disk_stops_the_node_and_loses_nothing() {
    if !is_root() {
        assert!(
            !in_ci(),
            "the disk-full smoke run needs root (it mounts a tmpfs per node) and CI has none"
        );
        eprintln!("skipped (not under CI): the disk-full smoke run needs root");
        return;
    }
    let mut run = Smoke::new("register", NetMode::Auto);
    run.nemesis = "disk-full";
    run.groups = &["disk-full"];
    smoke(run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_under_partitions_and_kills_loses_nothing_through_the_loopback_proxies() {
    smoke(Smoke::new("set", NetMode::Loopback)).await;
}

/// How many operations `f` completed `ok`.
fn ok_count(outcome: &trestle_jepsen::TestOutcome, f: &str) -> usize {
    outcome.report.stats.by_f.get(f).map(|c| c.ok).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_lock_under_partitions_kills_and_pauses_is_safe() {
    let mut run = Smoke::new("lock", NetMode::Auto);
    run.nemesis = "partition,kill,pause";
    run.groups = &["partition", "kill", "pause"];
    // Three windows fit in 15 s (1 + 3 x 3.2 + 2 x 1.9 < 15); a 3 s pause outlasts the 2 s lease TTL.
    run.fault = (Duration::from_secs(3), Duration::from_millis(3200));
    run.heal = (Duration::from_millis(1500), Duration::from_millis(1900));
    // A lock operation waits out holders (4 s each) and faults: on a loaded machine a 15 s run completes a few
    // dozen (29 in one run at a load average near 20), enough for two holders and their fenced appends.
    run.min_ok = 20;
    let Some(outcome) = smoke(run).await else {
        return;
    };
    // The lock moved between holders (each holds for 4 s), and the fenced appends went through.
    assert!(
        ok_count(&outcome, "acquire") >= 2,
        "the lock never moved\n{}",
        outcome.summary
    );
    assert!(ok_count(&outcome, "append") >= 10, "{}", outcome.summary);
    assert!(outcome.summary.contains("lock: VALID"), "{}", outcome.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_under_partitions_and_kills_has_one_leader_per_term() {
    let Some(outcome) = smoke(Smoke::new("election", NetMode::Auto)).await else {
        return;
    };
    // Leadership changed hands (each leader resigns after 3 s), and the leaders' fenced writes landed.
    assert!(
        ok_count(&outcome, "campaign") >= 2,
        "leadership never changed\n{}",
        outcome.summary
    );
    assert!(ok_count(&outcome, "write") > 50, "{}", outcome.summary);
    assert!(outcome.summary.contains("election: VALID"), "{}", outcome.summary);
}

/// Wall clocks skewed by up to ±30 s or strobed (libfaketime) on a minority, and pauses: locks stay safe, since
/// leases and Raft's timers run on the monotonic clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_lock_under_clock_skew_and_pauses_is_safe() {
    let mut run = Smoke::new("lock", NetMode::Auto);
    run.nemesis = "clock,pause";
    run.groups = &["clock", "pause"];
    let Some(outcome) = smoke(run).await else {
        return;
    };
    assert!(ok_count(&outcome, "append") > 50, "{}", outcome.summary);
    assert!(outcome.summary.contains("lock: VALID"), "{}", outcome.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_under_partitions_and_kills_loses_nothing_acknowledged() {
    let Some(outcome) = smoke(Smoke::new("queue", NetMode::Auto)).await else {
        return;
    };
    let Details::Queue(r) = &outcome.report.details else {
        panic!("the queue workload is checked by the queue checker");
    };
    let summary = &outcome.summary;
    // The faults did not stop the queue: sends were acknowledged and received, and the drain emptied it.
    assert!(r.acknowledged > 20, "{summary}");
    assert!(r.received >= r.acknowledged, "{summary}");
    assert!(r.acks > 20, "{summary}");
    assert!(r.drained && r.lost.is_empty(), "{summary}");
    assert!(
        r.unexpected.is_empty() && r.delivered_after_ack.is_empty(),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_under_partitions_and_kills_completes_each_batch_once() {
    let Some(outcome) = smoke(Smoke::new("barrier", NetMode::Auto)).await else {
        return;
    };
    let Details::Barrier(r) = &outcome.report.details else {
        panic!("the barrier workload is checked by the barrier checker");
    };
    let summary = &outcome.summary;
    assert!(r.acknowledged > 5, "{summary}");
    // Every acknowledged barrier completed, once (a barrier whose submission timed out may have too).
    assert!(r.completed >= r.acknowledged, "{summary}");
    assert!(
        r.drained && r.missing.is_empty() && r.violations.is_empty(),
        "{summary}"
    );
}

/// Cache nodes beside the cluster's nodes, killed (restarting empty), paused and cut off from the clients: after
/// the heal the zones agree within the bound, and no deleted key comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_under_partitions_kills_and_pauses_converges_and_keeps_deletes_deleted() {
    let mut run = Smoke::new("cache", NetMode::Auto);
    run.nemesis = "partition,kill,pause";
    run.groups = &["partition", "kill", "pause"];
    run.fault = (Duration::from_secs(3), Duration::from_millis(3200));
    run.heal = (Duration::from_millis(1500), Duration::from_millis(1900));
    let Some(outcome) = smoke(run).await else {
        return;
    };
    let Details::Cache(r) = &outcome.report.details else {
        panic!("the cache workload is checked by the cache checker");
    };
    let summary = &outcome.summary;
    // The faults did not stop the cache: writes were acknowledged, deletes among them.
    assert!(r.sets > 20 && r.deletes > 10, "{summary}");
    assert!(
        r.converged_after.is_some_and(|after| after <= r.bound),
        "{summary}"
    );
    assert!(r.reads_checked > 0, "{summary}");
    assert_eq!(r.violations(), 0, "{summary}");
}
