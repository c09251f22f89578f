//! The fault schedule: drawn up front from the seed, so the same seed gives the same faults at the same
//! simulated times, then applied to the simulation by the driver.
//!
//! After a second of calm (the cluster elects its first leader), windows alternate: calm for 0.5–1.5 s, then one
//! fault for 0.5–3 s, undone at its end. A window never overlaps another, and a fault never takes out more
//! than a minority, so the cluster can always make progress once the fault is undone.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::client::Shared;
use super::{FiredFault, SimConfig, host_name};

/// The kinds of fault a run can draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SimFault {
    /// A minority is cut off: messages between it and the rest are dropped (turmoil `partition`, then
    /// `repair`). turmoil's TCP does not retransmit, so connections across the cut hang until keep-alive
    /// closes them and tonic reconnects.
    Partition,
    /// A minority is cut off, but messages are held and delivered late when it heals (turmoil `hold`, then
    /// `release`): long delays and bursts of stale messages.
    Hold,
    /// A node crashes (turmoil `crash`) and restarts later on its storage (`bounce`).
    Crash,
    /// A node restarts at once (turmoil `bounce`): its in-flight work is lost, its disk is not.
    Bounce,
    /// Random message loss on every link (turmoil's fail rate; a loss breaks that TCP connection).
    Loss,
}

impl SimFault {
    /// Every kind.
    pub const ALL: [SimFault; 5] = [
        SimFault::Partition,
        SimFault::Hold,
        SimFault::Crash,
        SimFault::Bounce,
        SimFault::Loss,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SimFault::Partition => "partition",
            SimFault::Hold => "hold",
            SimFault::Crash => "crash",
            SimFault::Bounce => "bounce",
            SimFault::Loss => "loss",
        }
    }

    /// Parses a comma-separated list of names, `all` or `none`.
    pub fn parse_list(list: &str) -> Result<Vec<SimFault>, String> {
        match list.trim() {
            "all" => return Ok(SimFault::ALL.to_vec()),
            "none" | "" => return Ok(Vec::new()),
            _ => {}
        }
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim) {
            let fault = SimFault::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown fault {name:?}: expected partition, hold, crash, bounce, loss, all or none"
                    )
                })?;
            if !out.contains(&fault) {
                out.push(fault);
            }
        }
        Ok(out)
    }
}

/// One change the schedule makes to the simulation. Nodes are indexes (host `n<i>`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Drop messages between `minority` and the other nodes.
    Partition(Vec<usize>),
    /// Undo a [`FaultAction::Partition`].
    Repair(Vec<usize>),
    /// Hold messages between `minority` and the other nodes.
    Hold(Vec<usize>),
    /// Deliver what a [`FaultAction::Hold`] held, and heal.
    Release(Vec<usize>),
    /// Crash a node.
    Crash(usize),
    /// Restart a crashed node.
    Restart(usize),
    /// Restart a running node at once.
    Bounce(usize),
    /// Start losing messages: a link breaks with this probability (per thousand) per message.
    LossOn(u32),
    /// Stop losing messages.
    LossOff,
}

impl fmt::Display for FaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = |ns: &[usize]| ns.iter().map(|n| host_name(*n)).collect::<Vec<_>>().join(",");
        match self {
            FaultAction::Partition(m) => write!(f, "partition {} from the rest", nodes(m)),
            FaultAction::Repair(m) => write!(f, "repair {}", nodes(m)),
            FaultAction::Hold(m) => write!(f, "hold messages of {}", nodes(m)),
            FaultAction::Release(m) => write!(f, "release {}", nodes(m)),
            FaultAction::Crash(n) => write!(f, "crash {}", host_name(*n)),
            FaultAction::Restart(n) => write!(f, "restart {}", host_name(*n)),
            FaultAction::Bounce(n) => write!(f, "bounce {}", host_name(*n)),
            FaultAction::LossOn(p) => write!(f, "loss on ({p}/1000 per message)"),
            FaultAction::LossOff => write!(f, "loss off"),
        }
    }
}

/// A scheduled action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    /// Simulated time.
    pub at: Duration,
    /// What to do.
    pub action: FaultAction,
}

/// The faults of a run, in time order: a pure function of the configuration (seed, nodes, duration, kinds).
pub fn fault_schedule(config: &SimConfig) -> Vec<FaultEvent> {
    // A stream of its own, so the schedule does not shift when the clients draw differently.
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5EED_FA17_5C4E_D01E);
    let mut events = Vec::new();
    if config.faults.is_empty() {
        return events;
    }
    let n = config.nodes;
    let ms = |rng: &mut ChaCha8Rng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    let mut t = Duration::from_secs(1);
    loop {
        t += ms(&mut rng, 500, 1500);
        let length = ms(&mut rng, 500, 3000);
        if t + length >= config.duration {
            break;
        }
        let Some(kind) = config.faults.choose(&mut rng).copied() else {
            break;
        };
        let minority = {
            let size = rng.random_range(1..=(n - 1) / 2);
            let mut all: Vec<usize> = (0..n).collect();
            let mut picked = Vec::with_capacity(size);
            for _ in 0..size {
                let i = rng.random_range(0..all.len());
                picked.push(all.swap_remove(i));
            }
            picked.sort_unstable();
            picked
        };
        let node = rng.random_range(0..n);
        let (start, end) = match kind {
            SimFault::Partition => (
                FaultAction::Partition(minority.clone()),
                Some(FaultAction::Repair(minority)),
            ),
            SimFault::Hold => (
                FaultAction::Hold(minority.clone()),
                Some(FaultAction::Release(minority)),
            ),
            SimFault::Crash => (FaultAction::Crash(node), Some(FaultAction::Restart(node))),
            SimFault::Bounce => (FaultAction::Bounce(node), None),
            SimFault::Loss => (
                FaultAction::LossOn(rng.random_range(5..=30)),
                Some(FaultAction::LossOff),
            ),
        };
        events.push(FaultEvent { at: t, action: start });
        if let Some(end) = end {
            events.push(FaultEvent {
                at: t + length,
                action: end,
            });
        }
        t += length;
    }
    events
}

/// Applies the schedule to a simulation and remembers what is in force, so healing undoes exactly that.
pub(super) struct Injector {
    schedule: Vec<FaultEvent>,
    next: usize,
    fired: Vec<FiredFault>,
    in_force: Vec<FaultAction>,
}

impl Injector {
    pub(super) fn new(schedule: Vec<FaultEvent>) -> Self {
        Injector {
            schedule,
            next: 0,
            fired: Vec::new(),
            in_force: Vec::new(),
        }
    }

    /// Applies every action due by `now`.
    pub(super) fn fire_due(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        shared: &Arc<Mutex<Shared>>,
        now: Duration,
    ) {
        while let Some(event) = self.schedule.get(self.next) {
            if event.at > now {
                break;
            }
            let action = event.action.clone();
            self.next += 1;
            self.apply(sim, shared, action, now);
        }
    }

    /// Undoes every fault in force (and skips the rest of the schedule).
    pub(super) fn heal_all(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        shared: &Arc<Mutex<Shared>>,
        now: Duration,
    ) {
        self.next = self.schedule.len();
        let in_force = std::mem::take(&mut self.in_force);
        for action in in_force.into_iter().rev() {
            let undo = match action {
                FaultAction::Partition(m) => FaultAction::Repair(m),
                FaultAction::Hold(m) => FaultAction::Release(m),
                FaultAction::Crash(n) => FaultAction::Restart(n),
                FaultAction::LossOn(_) => FaultAction::LossOff,
                _ => continue,
            };
            self.apply(sim, shared, undo, now);
        }
    }

    /// What was applied, in order.
    pub(super) fn into_fired(self) -> Vec<FiredFault> {
        self.fired
    }

    fn apply(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        shared: &Arc<Mutex<Shared>>,
        action: FaultAction,
        now: Duration,
    ) {
        let nodes = shared.lock().nodes.len();
        let rest = |m: &[usize]| (0..nodes).filter(|i| !m.contains(i)).collect::<Vec<_>>();
        match &action {
            FaultAction::Partition(m) => {
                for a in m {
                    for b in rest(m) {
                        sim.partition(host_name(*a), host_name(b));
                    }
                }
                self.in_force.push(action.clone());
            }
            FaultAction::Repair(m) => {
                for a in m {
                    for b in rest(m) {
                        sim.repair(host_name(*a), host_name(b));
                    }
                }
                self.in_force.retain(|f| f != &FaultAction::Partition(m.clone()));
            }
            FaultAction::Hold(m) => {
                for a in m {
                    for b in rest(m) {
                        sim.hold(host_name(*a), host_name(b));
                    }
                }
                self.in_force.push(action.clone());
            }
            FaultAction::Release(m) => {
                for a in m {
                    for b in rest(m) {
                        sim.release(host_name(*a), host_name(b));
                    }
                }
                self.in_force.retain(|f| f != &FaultAction::Hold(m.clone()));
            }
            FaultAction::Crash(n) => {
                sim.crash(host_name(*n));
                shared.lock().node_down(*n);
                self.in_force.push(action.clone());
            }
            FaultAction::Restart(n) => {
                // The slot is filled again when the software has booted.
                sim.bounce(host_name(*n));
                self.in_force.retain(|f| f != &FaultAction::Crash(*n));
            }
            FaultAction::Bounce(n) => {
                sim.bounce(host_name(*n));
                shared.lock().node_down(*n);
            }
            FaultAction::LossOn(p) => {
                sim.set_fail_rate(f64::from(*p) / 1000.0);
                self.in_force.push(action.clone());
            }
            FaultAction::LossOff => {
                sim.set_fail_rate(0.0);
                self.in_force.retain(|f| !matches!(f, FaultAction::LossOn(_)));
            }
        }
        self.fired.push(FiredFault { at: now, action });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_faults_stay_in_a_minority() {
        let mut config = SimConfig::with_seed(42);
        config.duration = Duration::from_secs(60);
        config.nodes = 5;
        let a = fault_schedule(&config);
        assert_eq!(a, fault_schedule(&config));
        assert_ne!(
            a,
            fault_schedule(&SimConfig {
                seed: 43,
                ..config.clone()
            })
        );
        assert!(a.len() > 10, "a minute should hold many windows: {a:?}");
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        for e in &a {
            assert!(e.at < config.duration);
            if let FaultAction::Partition(m) | FaultAction::Hold(m) = &e.action {
                assert!(!m.is_empty() && m.len() <= 2, "{m:?}");
            }
        }
        for kind in SimFault::ALL {
            let c = SimConfig {
                faults: vec![kind],
                ..config.clone()
            };
            assert!(!fault_schedule(&c).is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(SimFault::parse_list("all"), Ok(SimFault::ALL.to_vec()));
        assert_eq!(SimFault::parse_list("none"), Ok(vec![]));
        assert_eq!(
            SimFault::parse_list("crash, hold,crash"),
            Ok(vec![SimFault::Crash, SimFault::Hold])
        );
        assert!(SimFault::parse_list("kill").is_err());
    }
}
