//! Deterministic simulation tests: real Trestle Raft nodes (log store and state machine on trestle-raft's
//! in-memory storage, openraft, the tonic peer protocol, the coordination store) on turmoil's simulated network, under partitions, held messages,
//! message loss, crashes and restarts; checked for Raft invariants and linearizability.
//!
//! Each test prints its seed first; replay one with
//! `trestle-jepsen sim --seeds 1 --first-seed <seed> --time 6 --faults <kinds> [--nodes 5]`.

use std::time::Duration;

use trestle_jepsen::Verdict;
use trestle_jepsen::sim::{
    FaultAction, Plant, SimConfig, SimFault, SimReport, SimViolation, fault_schedule, run_sim,
};

/// The tests' configuration: 6 s of simulated time, snapshots every 500 entries (the simulation's default), so
/// followers and deposed leaders also catch up through snapshots.
fn config(seed: u64, nodes: usize, faults: &[SimFault]) -> SimConfig {
    let mut c = SimConfig::with_seed(seed);
    c.nodes = nodes;
    c.duration = Duration::from_secs(6);
    c.faults = faults.to_vec();
    c
}

fn run(config: &SimConfig) -> SimReport {
    println!(
        "seed: {} (nodes {}, faults {:?})",
        config.seed, config.nodes, config.faults
    );
    let report = match run_sim(config) {
        Ok(r) => r,
        Err(e) => panic!("seed {}: the simulation could not run: {e}", config.seed),
    };
    print!("{report}");
    report
}

/// Valid, and not vacuously: operations of every kind succeeded, writes were acknowledged and checked, and
/// every scheduled fault fired at its scheduled time.
fn assert_valid(config: &SimConfig, report: &SimReport) {
    assert_eq!(report.verdict, Verdict::Valid, "seed {}:\n{report}", config.seed);
    for f in ["read", "write", "cas"] {
        let ok = report.stats.by_f.get(f).map_or(0, |c| c.ok);
        assert!(ok >= 20, "seed {}: only {ok} successful {f}s", config.seed);
    }
    assert!(report.acknowledged_writes >= 50, "seed {}", config.seed);
    assert!(report.linear.keys_decided >= 3, "seed {}", config.seed);
    assert!(!report.leaders_per_term.is_empty(), "seed {}", config.seed);
    let scheduled: Vec<(Duration, FaultAction)> = fault_schedule(config)
        .into_iter()
        .map(|e| (e.at, e.action))
        .collect();
    assert!(!scheduled.is_empty(), "seed {}: no fault scheduled", config.seed);
    let fired: Vec<(Duration, FaultAction)> = report
        .faults
        .iter()
        .take(scheduled.len())
        .map(|f| (f.at, f.action.clone()))
        .collect();
    assert_eq!(
        fired, scheduled,
        "seed {}: faults fired off schedule",
        config.seed
    );
}

fn fired(report: &SimReport, what: impl Fn(&FaultAction) -> bool) -> usize {
    report.faults.iter().filter(|f| what(&f.action)).count()
}

#[test]
fn partitions_and_held_messages_three_nodes() {
    for seed in [11, 12] {
        let c = config(seed, 3, &[SimFault::Partition, SimFault::Hold]);
        let report = run(&c);
        assert_valid(&c, &report);
        assert!(
            fired(&report, |a| matches!(
                a,
                FaultAction::Partition(_) | FaultAction::Hold(_)
            )) >= 1
        );
    }
}

#[test]
fn crashes_and_bounces_three_nodes() {
    for seed in [21, 22] {
        let c = config(seed, 3, &[SimFault::Crash, SimFault::Bounce]);
        let report = run(&c);
        assert_valid(&c, &report);
        assert!(report.restarts >= 1, "seed {seed}: no node restarted");
    }
}

#[test]
fn the_same_seed_gives_the_same_execution() {
    let seeded = cfg!(tokio_unstable);
    if !seeded {
        panic!(
            "built without `--cfg tokio_unstable` (set in .cargo/config.toml; a RUSTFLAGS variable replaces it): \
             tokio's select! is then unseeded and a replay is not the same execution"
        );
    }
    let c = config(
        41,
        3,
        &[
            SimFault::Partition,
            SimFault::Hold,
            SimFault::Crash,
            SimFault::Bounce,
            SimFault::Loss,
        ],
    );
    let (first, second) = (run(&c), run(&c));
    assert_valid(&c, &first);
    let ops = |r: &SimReport| -> Vec<String> { r.history.ops().iter().map(|op| format!("{op:?}")).collect() };
    let (a, b) = (ops(&first), ops(&second));
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        panic!(
            "seed {}: two runs recorded different histories ({} and {} operations); the first difference, operation \
             {i}:\n{:?}\n{:?}",
            c.seed,
            a.len(),
            b.len(),
            a.get(i),
            b.get(i)
        );
    }
    assert_eq!(format!("{:?}", first.faults), format!("{:?}", second.faults));
    assert_eq!(first.leaders_per_term, second.leaders_per_term);
    assert_eq!(first.simulated, second.simulated);
}

#[test]
fn loss_and_partitions_three_nodes() {
    let c = config(31, 3, &[SimFault::Loss, SimFault::Partition]);
    let report = run(&c);
    assert_valid(&c, &report);
}

#[test]
fn every_fault_five_nodes() {
    for seed in [41, 42] {
        let c = config(seed, 5, &SimFault::ALL);
        let report = run(&c);
        assert_valid(&c, &report);
    }
}

/// The checker inside the simulation is live: a read recorded with a value nobody wrote makes the run invalid,
/// on that key, through the linearizability checker.
#[test]
fn planted_phantom_read_is_caught() {
    let mut c = config(51, 3, &[]);
    c.duration = Duration::from_secs(3);
    c.plant = Some(Plant::PhantomRead);
    let report = run(&c);
    assert_eq!(report.verdict, Verdict::Invalid, "{report}");
    assert_eq!(report.linear.violations.len(), 1, "{report}");
    assert!(report.violations.is_empty(), "{report}");
}

/// The lost-write check is live: an acknowledgement of a write the store never made is reported missing on every
/// node, while the history itself stays linearizable.
#[test]
fn planted_phantom_ack_is_caught() {
    let mut c = config(52, 3, &[]);
    c.duration = Duration::from_secs(3);
    c.plant = Some(Plant::PhantomAck);
    let report = run(&c);
    assert_eq!(report.verdict, Verdict::Invalid, "{report}");
    assert_eq!(report.linear.verdict, Verdict::Valid, "{report}");
    let lost = report
        .violations
        .iter()
        .filter(|v| matches!(v, SimViolation::LostWrite { .. }))
        .count();
    assert_eq!(lost, 3, "one per node: {report}");
}

/// Regression test for the first bug the simulation found (replay: `trestle-jepsen sim --seeds 3 --first-seed
/// 401 --time 10 --faults partition,hold --snapshot-every 40`). A leader cut off in a minority keeps appending
/// its clients' writes; the majority elects another leader, moves on and snapshots; when the old leader rejoins
/// it catches up through the snapshot. openraft 0.9.25 truncates conflicting entries on a snapshot only when the
/// follower has an entry at the snapshot's last index, so here the pending entries are purged without their
/// waiters being told, and `Raft::client_write` never returns. The store used to wait for it without a bound,
/// and the group-commit pipeline then stalled every later write on that node. Now the request deadline bounds
/// the wait: those writes end with the ambiguous `request timed out`, and the node goes on.
#[test]
fn deposed_leader_catching_up_through_a_snapshot_answers_its_writes() {
    for seed in [401, 402, 403] {
        let mut c = config(seed, 3, &[SimFault::Partition, SimFault::Hold]);
        c.duration = Duration::from_secs(10);
        c.snapshot_every = 40;
        let report = run(&c);
        let stuck = report
            .violations
            .iter()
            .filter(|v| matches!(v, SimViolation::StuckOperation { .. }))
            .count();
        assert_eq!(stuck, 0, "seed {seed}:\n{report}");
        assert_valid(&c, &report);
    }
}
