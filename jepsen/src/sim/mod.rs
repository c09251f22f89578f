//! Deterministic simulation of the Raft layer: real Trestle nodes on turmoil's simulated network.
//!
//! [`run_sim`] starts `nodes` turmoil hosts, each running what `trestle serve` runs for the coordination store
//! minus its listeners on real sockets, with its Raft state in memory (trestle-raft's `MemoryStorage`, one per
//! host, which outlives crashes): the store group (`trestle_raft::start_group`: openraft, the log store and the
//! group state machine), the [`Store`] and the
//! peer protocol ([`PeerService`] served over turmoil TCP, [`PeerChannels`] connecting over it). Client tasks on
//! every host read, write and compare-and-set a few keys through the store while a seeded schedule partitions,
//! holds, crashes, bounces and drops messages; then everything heals, the clients read, and the checkers judge.
//!
//! - `net`: turmoil TCP under tonic, both ways.
//! - `node`: one host's software (start the group on the host's storage, serve peers, run clients).
//! - `client`: the client tasks and the history they record.
//! - `invariants`: leaders per term, applied state agreeing across nodes, no acknowledged write lost.
//! - `schedule`: the fault schedule drawn from the seed.
//!
//! Everything random comes from the seed: the schedule and every client's operations (ChaCha8), turmoil's
//! message latencies and losses (`rng_seed`) and openraft's own draws (`trestle_raft::seed_thread_rng`); the
//! election timeouts are fixed per node instead of drawn; the nodes' storage is in memory and answers at once,
//! so no work runs on threads outside the simulation and nothing waits on real time. What still is not deterministic is written down in the crate README
//! ("Deterministic simulation").
//!
//! [`Store`]: trestle_etcd::Store
//! [`PeerService`]: trestle_raft::PeerService
//! [`PeerChannels`]: trestle_raft::PeerChannels

mod client;
mod invariants;
mod net;
mod node;
mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::checker::linear::{Limits, LinearReport, RegisterModel, check_linearizable};
use crate::checker::verdict::Verdict;
use crate::harness::stats::Stats;
use crate::history::History;

pub use invariants::SimViolation;
pub use schedule::{FaultAction, FaultEvent, SimFault, fault_schedule};

use client::{Phase, Shared};
use invariants::Invariants;

/// Settings of one simulated run. Build with [`SimConfig::default`] (or [`SimConfig::with_seed`]), adjust
/// fields, and [`run_sim`] checks them with [`SimConfig::validate`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimConfig {
    /// The seed of every random choice the simulation makes. Default 1.
    pub seed: u64,
    /// Cluster size: 3 or 5. Default 3.
    pub nodes: usize,
    /// Simulated time of workload and faults; healing, final reads and checks come after. Default 10 s.
    pub duration: Duration,
    /// The faults the schedule draws from; empty for none. Default: every kind.
    pub faults: Vec<SimFault>,
    /// Client tasks per node. Default 2.
    pub clients_per_node: usize,
    /// Keys in use at once; a fresh set every `key_period`. Default 3.
    pub keys: u64,
    /// Simulated time a key set is used before the clients move to fresh keys (keeps each key's history small
    /// for the linearizability search). Default 2 s.
    pub key_period: Duration,
    /// Values written are drawn from `0..values`. Default 5.
    pub values: i64,
    /// Simulated one-way message latency range. Default 1–10 ms (turmoil's exponential distribution inside).
    pub latency: (Duration, Duration),
    /// Snapshot after this many applied entries (a quarter of it is kept after each snapshot), so restarted and
    /// lagging nodes also catch up through snapshots. Default 500.
    pub snapshot_every: u64,
    /// How long the store waits for a leader, a proposal or a read barrier before giving up. Default 2 s.
    pub request_timeout: Duration,
    /// Simulated time of read-only operations after healing (the final reads). Default 1 s.
    pub final_reads: Duration,
    /// Simulated time allowed after healing for the nodes to agree (same leader, same applied index) and the
    /// clients to finish; past it the run is unknown. Default 15 s.
    pub settle_limit: Duration,
    /// Treat two leaders in one term as a violation. Default false: openraft's default leader id is
    /// (term, node id), which lets two nodes lead one after the other in the same term (see `LESSONS.md`), so
    /// it is reported in [`SimReport::leaders_per_term`] but is not a bug. Set it for a build with openraft's
    /// `single-term-leader` feature.
    pub strict_one_leader_per_term: bool,
    /// A deliberate bug planted in the recorded history, to show the checkers catch it. Default none.
    pub plant: Option<Plant>,
}

/// A deliberate fault planted to prove the checks are not vacuous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Plant {
    /// The fifth successful read is recorded with a value no client ever writes.
    PhantomRead,
    /// The first acknowledged write is entered in the lost-write ledger with a value no client writes, as if
    /// the store had acknowledged a write it then lost: every node must be found lacking it.
    PhantomAck,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            nodes: 3,
            duration: Duration::from_secs(10),
            faults: SimFault::ALL.to_vec(),
            clients_per_node: 2,
            keys: 3,
            key_period: Duration::from_secs(2),
            values: 5,
            latency: (Duration::from_millis(1), Duration::from_millis(10)),
            snapshot_every: 500,
            request_timeout: Duration::from_secs(2),
            final_reads: Duration::from_secs(1),
            settle_limit: Duration::from_secs(15),
            strict_one_leader_per_term: false,
            plant: None,
        }
    }
}

impl SimConfig {
    /// The defaults with the given seed.
    pub fn with_seed(seed: u64) -> Self {
        SimConfig {
            seed,
            ..SimConfig::default()
        }
    }

    /// Checks the configuration; the error names the offending value.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field: &'static str, value: String, reason: &str| {
            Err(SimError::Config {
                field,
                value,
                reason: reason.to_owned(),
            })
        };
        if self.nodes != 3 && self.nodes != 5 {
            return bad("nodes", self.nodes.to_string(), "must be 3 or 5");
        }
        if self.duration < Duration::from_secs(1) || self.duration > Duration::from_secs(3600) {
            return bad(
                "duration",
                format!("{:?}", self.duration),
                "must be between 1 s and 1 h of simulated time",
            );
        }
        if self.clients_per_node == 0 || self.clients_per_node > 16 {
            return bad(
                "clients_per_node",
                self.clients_per_node.to_string(),
                "must be 1 to 16",
            );
        }
        if self.keys == 0 || self.values < 2 {
            return bad(
                "keys/values",
                format!("{}/{}", self.keys, self.values),
                "need at least 1 key and 2 values",
            );
        }
        if self.key_period < Duration::from_millis(100) {
            return bad(
                "key_period",
                format!("{:?}", self.key_period),
                "must be at least 100 ms",
            );
        }
        if self.latency.0 > self.latency.1 || self.latency.1 > Duration::from_millis(40) {
            return bad(
                "latency",
                format!("{:?}..{:?}", self.latency.0, self.latency.1),
                "must be an ordered range with a maximum of at most 40 ms (the heartbeat is 50 ms)",
            );
        }
        if self.snapshot_every < 8 {
            return bad(
                "snapshot_every",
                self.snapshot_every.to_string(),
                "must be at least 8 entries",
            );
        }
        if self.request_timeout < Duration::from_millis(200) {
            return bad(
                "request_timeout",
                format!("{:?}", self.request_timeout),
                "must be at least 200 ms",
            );
        }
        if self.settle_limit < self.request_timeout * 2 {
            return bad(
                "settle_limit",
                format!("{:?}", self.settle_limit),
                "must be at least twice the request timeout",
            );
        }
        Ok(())
    }
}

/// Why a simulation could not run (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A configuration value is out of range.
    #[error("invalid simulation configuration: {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A host's software failed (it could not start its Raft group), or turmoil failed.
    #[error("simulation failed at {at:?} (seed {seed}): {message}")]
    Sim {
        /// The seed.
        seed: u64,
        /// Simulated time.
        at: Duration,
        /// What happened.
        message: String,
    },
    /// The recorded history was malformed (a bug in the recorder).
    #[error("the recorded history is malformed: {0}")]
    History(String),
}

/// A fault the schedule applied, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiredFault {
    /// Simulated time.
    pub at: Duration,
    /// What was done.
    pub action: FaultAction,
}

impl fmt::Display for FiredFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>7.3}s {}", self.at.as_secs_f64(), self.action)
    }
}

/// What a simulated run found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimReport {
    /// The seed (replay with the same configuration and this seed).
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Valid when every check passed; invalid on any violation; unknown when the nodes did not settle after
    /// healing or the linearizability search hit a bound.
    pub verdict: Verdict,
    /// Operation outcomes.
    pub stats: Stats,
    /// Acknowledged writes and compare-and-sets (each checked for on every node after healing).
    pub acknowledged_writes: usize,
    /// The linearizability checker's report.
    pub linear: LinearReport,
    /// Invariant violations (leaders, applied state, lost writes).
    pub violations: Vec<SimViolation>,
    /// Why the verdict is unknown, if it is.
    pub unknown: Vec<String>,
    /// Every term in which some node was seen leading, with the nodes (indexes) seen leading in it.
    pub leaders_per_term: BTreeMap<u64, BTreeSet<usize>>,
    /// The faults applied, in order (healing included).
    pub faults: Vec<FiredFault>,
    /// Node restarts (crash then restart, or bounce).
    pub restarts: usize,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Wall-clock time the run took.
    pub wall: Duration,
    /// The recorded history (JSON lines via [`crate::Event::to_json_line`] for `trestle-jepsen check`).
    pub history: History,
}

impl SimReport {
    /// Terms in which more than one node was seen leading.
    pub fn terms_with_several_leaders(&self) -> usize {
        self.leaders_per_term.values().filter(|n| n.len() > 1).count()
    }

    /// One line: seed, verdict, operations, faults.
    pub fn line(&self) -> String {
        format!(
            "seed {} {} ops {} (ok {}, fail {}, info {}) acked-writes {} faults {} restarts {} terms {} \
             sim {:.1}s wall {:.1}s",
            self.seed,
            self.verdict,
            self.stats.all.total(),
            self.stats.all.ok,
            self.stats.all.fail,
            self.stats.all.info,
            self.acknowledged_writes,
            self.faults.len(),
            self.restarts,
            self.leaders_per_term.len(),
            self.simulated.as_secs_f64(),
            self.wall.as_secs_f64(),
        )
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.line())?;
        for fault in &self.faults {
            writeln!(f, "  fault {fault}")?;
        }
        let several = self.terms_with_several_leaders();
        if several > 0 {
            writeln!(
                f,
                "  note: {several} term(s) saw more than one leader (allowed by openraft's (term, node id) leader ids)"
            )?;
        }
        write!(f, "{}", self.linear)?;
        for v in &self.violations {
            writeln!(f, "  violation: {v}")?;
        }
        for u in &self.unknown {
            writeln!(f, "  unknown: {u}")?;
        }
        Ok(())
    }
}

/// The name of node `i`'s turmoil host.
fn host_name(i: usize) -> String {
    format!("n{i}")
}

/// The port every node serves the peer protocol on.
const PEER_PORT: u16 = 2380;

/// The client port every host listens on (nothing connects to it: the clients run on the host).
const CLIENT_PORT: u16 = 2379;

/// Node `i`'s advertised peer URL (its Raft node id derives from it).
fn peer_url(i: usize) -> String {
    format!("http://{}:{PEER_PORT}", host_name(i))
}

/// Node `i`'s fixed election timeout: distinct per node so that no randomness comes from openraft.
fn election_timeout_ms(i: usize) -> u64 {
    150 + 40 * i as u64
}

/// Seeds openraft's random numbers on this thread while it lives.
struct SeededRaftRng;

impl SeededRaftRng {
    fn new(seed: u64) -> Self {
        trestle_raft::seed_thread_rng(Some(seed));
        Self
    }
}

impl Drop for SeededRaftRng {
    fn drop(&mut self) {
        trestle_raft::seed_thread_rng(None);
    }
}

/// Runs one simulation and checks it. Blocking: call it outside any tokio runtime (each turmoil host runs its
/// own). The seed should be printed by the caller before calling, so a hang or a panic can be replayed.
pub fn run_sim(config: &SimConfig) -> Result<SimReport, SimError> {
    config.validate()?;
    let wall = Instant::now();
    // turmoil runs every host on this thread: openraft's random draws (the phase of each node's first tick)
    // follow the seed too, until the run ends.
    let _rng = SeededRaftRng::new(config.seed ^ 0x0A7F_5EED_0A7F_5EED);
    let schedule = fault_schedule(config);
    let shared = Arc::new(Mutex::new(Shared::new(config)));

    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(config.seed)
        // The loop below decides when the run ends; turmoil only stops a run that has clients.
        .simulation_duration(Duration::from_secs(365 * 24 * 3600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(config.latency.0)
        .max_message_latency(config.latency.1)
        // A link broken by random message loss comes back with this probability per message sent on it.
        .repair_rate(0.2);
    let mut sim = builder.build();
    for i in 0..config.nodes {
        let ctx = node::NodeContext::new(config, i, shared.clone());
        sim.host(host_name(i), move || node::run(ctx.clone()));
    }

    let mut invariants = Invariants::new(config.nodes, config.strict_one_leader_per_term);
    let mut faults = schedule::Injector::new(schedule);
    let fail = |sim: &turmoil::Sim<'_>, message: String| SimError::Sim {
        seed: config.seed,
        at: sim.elapsed(),
        message,
    };
    // A read is a read barrier (the leader's read index, at most one request timeout) then a wait for the local
    // apply (another); a write is one proposal. Anything far beyond that is stuck.
    let overdue_limit = config.request_timeout * 3 + Duration::from_secs(1);
    let mut phase_started = Duration::ZERO;
    let mut steps: u64 = 0;
    loop {
        sim.step().map_err(|e| fail(&sim, e.to_string()))?;
        steps += 1;
        let now = sim.elapsed();
        let phase = shared.lock().phase;
        if phase == Phase::Run {
            faults.fire_due(&mut sim, &shared, now);
        }
        invariants.sample_leaders(&shared, now);
        if steps.is_multiple_of(20) {
            invariants.check_applied(&shared);
        }
        if steps.is_multiple_of(100) {
            invariants.check_overdue(&shared, now, overdue_limit);
        }
        match phase {
            Phase::Run if now >= config.duration => {
                faults.heal_all(&mut sim, &shared, now);
                shared.lock().phase = Phase::FinalReads;
                phase_started = now;
            }
            Phase::FinalReads if now >= phase_started + config.final_reads => {
                shared.lock().phase = Phase::Drain;
                phase_started = now;
            }
            Phase::Drain => {
                if invariants.settled(&shared) {
                    break;
                }
                if now >= phase_started + config.settle_limit {
                    invariants.not_settled(&shared, config.settle_limit);
                    break;
                }
            }
            _ => {}
        }
    }
    let simulated = sim.elapsed();
    invariants.check_overdue(&shared, simulated, overdue_limit);
    invariants.check_applied(&shared);
    invariants.check_final(&shared);

    let (history, acked) = {
        let mut s = shared.lock();
        s.phase = Phase::Done;
        let acked = s.acked.clone();
        (s.recorder.finish(simulated), acked)
    };
    invariants.check_acknowledged(&shared, &acked);
    let restarts = shared.lock().restarts();
    drop(sim);
    let history = History::from_events(history).map_err(|e| SimError::History(e.to_string()))?;
    let limits = Limits::default().time_limit(Duration::from_secs(30));
    let linear = check_linearizable(&history, RegisterModel::CasRegister, &limits)
        .map_err(|e| SimError::History(e.to_string()))?;
    let (violations, mut unknown, leaders_per_term) = invariants.into_parts();
    for (key, why) in &linear.unknown {
        unknown.push(format!(
            "linearizability of key {}: {why}",
            key.as_ref().map_or_else(|| "-".to_owned(), |k| k.to_string())
        ));
    }
    let mut verdict = linear.verdict;
    if !violations.is_empty() {
        verdict = verdict.and(Verdict::Invalid);
    }
    if !unknown.is_empty() {
        verdict = verdict.and(Verdict::Unknown);
    }
    Ok(SimReport {
        seed: config.seed,
        nodes: config.nodes,
        verdict,
        stats: Stats::of(&history),
        acknowledged_writes: acked.len(),
        linear,
        violations,
        unknown,
        leaders_per_term,
        faults: faults.into_fired(),
        restarts,
        simulated,
        wall: wall.elapsed(),
        history,
    })
}
