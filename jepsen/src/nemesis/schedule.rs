//! The nemesis schedule: which faults happen when, computed from the seed alone (sans-IO).
//!
//! After a warm-up, the schedule alternates a fault window and a healed window until the time limit; the
//! requested nemeses take turns in an order shuffled by the seed, so each gets its share of windows. The concrete
//! targets (which nodes, which halves, how much delay) are drawn from the seed too, except the current leader,
//! which is looked up when the fault starts. The runner ends every run with a full heal, a quiet period and final
//! reads.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum NemesisKind {
    /// Split the nodes into two random halves.
    PartitionHalves,
    /// Cut one random node off from all others.
    PartitionOne,
    /// Cut the current leader off from all others.
    PartitionLeader,
    /// Every node sees a majority, but no two nodes the same one (5 nodes or more).
    PartitionRing,
    /// Two halves that only one node (the bridge) can reach both of.
    PartitionBridge,
    /// `kill -9` a minority of nodes; restart them when the window ends.
    Kill,
    /// SIGSTOP a minority of nodes; SIGCONT when the window ends.
    Pause,
    /// Delay (with jitter) on every peer link, through the proxies.
    Delay,
    /// Cut peer connections at random, through the proxies.
    Loss,
    /// Remove a random node from the cluster (MemberRemove), kill it and wipe its data; at the end of the window
    /// add it back (MemberAdd) and start it empty, to catch up from the others.
    Member,
    /// Skew the wall clock of a minority of nodes by up to ±30 s, or strobe it (jump back and forth every second),
    /// through libfaketime; reset when the window ends. Monotonic clocks are left alone, as an NTP step would.
    Clock,
    /// Kill a random node, damage its storage (cut its write-ahead log in half, or flip a byte in each of its table
    /// files) and start it on what is left: it must refuse. Then replace it as an operator does (MemberRemove and a
    /// wipe; at the end of the window MemberAdd and a start on an empty directory).
    Damage,
    /// Fill a random node's data volume (each node's data directory is a size-limited tmpfs in such runs): it must
    /// stop, saying the volume is full, and refuse to start while it is. When the window ends the space is freed
    /// and the node started again on its data.
    DiskFull,
}

impl NemesisKind {
    /// Every kind, in a fixed order.
    pub const ALL: [NemesisKind; 13] = [
        NemesisKind::PartitionHalves,
        NemesisKind::PartitionOne,
        NemesisKind::PartitionLeader,
        NemesisKind::PartitionRing,
        NemesisKind::PartitionBridge,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Delay,
        NemesisKind::Loss,
        NemesisKind::Member,
        NemesisKind::Clock,
        NemesisKind::Damage,
        NemesisKind::DiskFull,
    ];

    /// The name on the command line and in histories.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::PartitionHalves => "partition-halves",
            NemesisKind::PartitionOne => "partition-one",
            NemesisKind::PartitionLeader => "partition-leader",
            NemesisKind::PartitionRing => "partition-ring",
            NemesisKind::PartitionBridge => "partition-bridge",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Delay => "delay",
            NemesisKind::Loss => "loss",
            NemesisKind::Member => "member",
            NemesisKind::Clock => "clock",
            NemesisKind::Damage => "damage",
            NemesisKind::DiskFull => "disk-full",
        }
    }

    /// The fewest nodes it makes sense with.
    pub fn min_nodes(self) -> usize {
        match self {
            NemesisKind::PartitionRing => 5,
            _ => 3,
        }
    }
}

impl fmt::Display for NemesisKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A requested nemesis: a name from `--nemesis` and the kinds it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NemesisGroup {
    /// As given (`partition`, `kill`, ...).
    pub name: String,
    /// The kinds it draws from.
    pub kinds: Vec<NemesisKind>,
}

/// A `--nemesis` name that is unknown or not supported here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NemesisError {
    /// Not a nemesis.
    #[error(
        "unknown nemesis {0:?}: expected none, all, partition, partition-halves, partition-one, partition-leader, \
         partition-ring, partition-bridge, kill, pause, delay, loss, member, clock, damage, disk-full"
    )]
    Unknown(String),
    /// A nemesis this harness cannot provide, and why.
    #[error("nemesis {name:?} is not supported: {reason}")]
    Unsupported {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Too few nodes for it.
    #[error("nemesis {name:?} needs at least {min} nodes, not {nodes}")]
    TooFewNodes {
        /// The name.
        name: String,
        /// The minimum.
        min: usize,
        /// Nodes in the test.
        nodes: usize,
    },
}

/// Parses a `--nemesis` list (`partition,kill`) for `nodes` nodes. `partition` stands for every partition that fits
/// the node count; `all` for one group per supported kind; `none` for no faults.
pub fn parse_nemeses(list: &str, nodes: usize) -> Result<Vec<NemesisGroup>, NemesisError> {
    let mut groups: Vec<NemesisGroup> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kinds: Vec<NemesisKind> = match name {
            "none" => continue,
            "all" => {
                for k in NemesisKind::ALL.into_iter().filter(|k| k.min_nodes() <= nodes) {
                    groups.push(NemesisGroup {
                        name: k.name().into(),
                        kinds: vec![k],
                    });
                }
                continue;
            }
            "partition" => NemesisKind::ALL
                .into_iter()
                .filter(|k| k.name().starts_with("partition-") && k.min_nodes() <= nodes)
                .collect(),
            "clock-skew" => vec![NemesisKind::Clock],
            other => {
                let kind = NemesisKind::ALL
                    .into_iter()
                    .find(|k| k.name() == other)
                    .ok_or_else(|| NemesisError::Unknown(other.into()))?;
                if kind.min_nodes() > nodes {
                    return Err(NemesisError::TooFewNodes {
                        name: other.into(),
                        min: kind.min_nodes(),
                        nodes,
                    });
                }
                vec![kind]
            }
        };
        if kinds.is_empty() || nodes < 3 {
            return Err(NemesisError::TooFewNodes {
                name: name.into(),
                min: 3,
                nodes,
            });
        }
        if !groups.iter().any(|g| g.name == name) {
            groups.push(NemesisGroup {
                name: name.into(),
                kinds,
            });
        }
    }
    Ok(groups)
}

/// A fault with its targets.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// Cut these pairs `(a, b)`, `a < b`; `None` for [`NemesisKind::PartitionLeader`] (decided when it starts).
    Partition {
        /// Which partition.
        kind: NemesisKind,
        /// The cut links.
        cut: Option<BTreeSet<(usize, usize)>>,
        /// Human-readable grouping (`[0 2] [1]`).
        groups: String,
    },
    /// Kill these nodes; restart them at the stop.
    Kill(Vec<usize>),
    /// Pause these nodes; resume them at the stop.
    Pause(Vec<usize>),
    /// Delay every peer link.
    Delay {
        /// Fixed part.
        delay: Duration,
        /// Random extra part.
        jitter: Duration,
    },
    /// Cut peer connections with this probability per chunk of bytes.
    Loss(f64),
    /// Remove this node, then add it back empty.
    Member(usize),
    /// Move these nodes' wall clocks by `offset_s` seconds; with `strobe`, back and forth between `+offset_s` and
    /// `-offset_s` every second.
    Clock {
        /// The nodes.
        nodes: Vec<usize>,
        /// The offset, in seconds (never zero).
        offset_s: i64,
        /// Alternate the sign every second.
        strobe: bool,
    },
    /// Damage this node's storage while it is down; it must refuse to start, and is replaced.
    Damage {
        /// The node.
        node: usize,
        /// What is done to its files.
        how: StorageDamage,
    },
    /// Fill this node's data volume; free it at the stop.
    DiskFull(usize),
}

/// What the damage nemesis does to a stopped node's database directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageDamage {
    /// Cut the live write-ahead log to half its length.
    TruncateWal,
    /// Flip one byte in each table file (in the live write-ahead log when there is no table yet).
    FlipBytes,
}

impl StorageDamage {
    /// Its name in histories.
    pub fn name(self) -> &'static str {
        match self {
            StorageDamage::TruncateWal => "truncate-wal",
            StorageDamage::FlipBytes => "flip-bytes",
        }
    }
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> NemesisKind {
        match self {
            Fault::Partition { kind, .. } => *kind,
            Fault::Kill(_) => NemesisKind::Kill,
            Fault::Pause(_) => NemesisKind::Pause,
            Fault::Delay { .. } => NemesisKind::Delay,
            Fault::Loss(_) => NemesisKind::Loss,
            Fault::Member(_) => NemesisKind::Member,
            Fault::Clock { .. } => NemesisKind::Clock,
            Fault::Damage { .. } => NemesisKind::Damage,
            Fault::DiskFull(_) => NemesisKind::DiskFull,
        }
    }
}

/// One entry of the schedule.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Window {
    /// The group that asked for it.
    pub group: String,
    /// The fault.
    pub fault: Fault,
    /// When it starts, from the start of the workload.
    pub start: Duration,
    /// When it is healed.
    pub stop: Duration,
}

/// Timing of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleConfig {
    /// How long the workload runs.
    pub time_limit: Duration,
    /// Fault-free time at the start.
    pub warmup: Duration,
    /// A fault lasts between these.
    pub fault: (Duration, Duration),
    /// A healed gap lasts between these.
    pub heal: (Duration, Duration),
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            time_limit: Duration::from_secs(60),
            warmup: Duration::from_secs(2),
            fault: (Duration::from_secs(3), Duration::from_secs(6)),
            heal: (Duration::from_secs(2), Duration::from_secs(4)),
        }
    }
}

/// A [`ScheduleConfig`] whose ranges make no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {field}: {min:?}..{max:?} must be a non-empty range starting above zero")]
#[non_exhaustive]
pub struct ScheduleError {
    /// `fault` or `heal`.
    pub field: &'static str,
    /// Its lower end.
    pub min: Duration,
    /// Its upper end.
    pub max: Duration,
}

impl ScheduleConfig {
    /// Checks that the fault and heal ranges are ordered and not zero.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        for (field, (min, max)) in [("fault", self.fault), ("heal", self.heal)] {
            if min.is_zero() || max < min {
                return Err(ScheduleError { field, min, max });
            }
        }
        Ok(())
    }
}

fn between(rng: &mut ChaCha8Rng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo {
        lo
    } else {
        lo + (hi - lo).mul_f64(rng.random::<f64>())
    }
}

fn cut_between(a: &[usize], b: &[usize]) -> BTreeSet<(usize, usize)> {
    let mut cut = BTreeSet::new();
    for &x in a {
        for &y in b {
            cut.insert((x.min(y), x.max(y)));
        }
    }
    cut
}

fn show(group: &[usize]) -> String {
    let items: Vec<String> = group.iter().map(|i| format!("n{i}")).collect();
    format!("[{}]", items.join(" "))
}

/// Draws the targets of a fault of `kind` on `n` nodes.
pub fn draw_fault(rng: &mut ChaCha8Rng, kind: NemesisKind, n: usize) -> Fault {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let minority = |rng: &mut ChaCha8Rng, order: &[usize]| {
        let k = rng.random_range(1..=((n - 1) / 2).max(1));
        let mut v = order[..k].to_vec();
        v.sort_unstable();
        v
    };
    match kind {
        NemesisKind::PartitionHalves => {
            let (a, b) = order.split_at(n / 2);
            let (mut a, mut b) = (a.to_vec(), b.to_vec());
            a.sort_unstable();
            b.sort_unstable();
            Fault::Partition {
                kind,
                cut: Some(cut_between(&a, &b)),
                groups: format!("{} {}", show(&a), show(&b)),
            }
        }
        NemesisKind::PartitionOne => {
            let one = order[0];
            let mut rest = order[1..].to_vec();
            rest.sort_unstable();
            Fault::Partition {
                kind,
                cut: Some(cut_between(&[one], &rest)),
                groups: format!("{} {}", show(&[one]), show(&rest)),
            }
        }
        NemesisKind::PartitionLeader => Fault::Partition {
            kind,
            cut: None,
            groups: "[leader] [others]".into(),
        },
        NemesisKind::PartitionRing => {
            // Node at ring position p reaches positions within distance d: itself plus 2d nodes, a majority, and
            // no two nodes see the same majority.
            let d = (n / 2).div_ceil(2);
            let mut cut = BTreeSet::new();
            for p in 0..n {
                for q in p + 1..n {
                    let dist = (q - p).min(n - (q - p));
                    if dist > d {
                        let (x, y) = (order[p], order[q]);
                        cut.insert((x.min(y), x.max(y)));
                    }
                }
            }
            Fault::Partition {
                kind,
                cut: Some(cut),
                groups: format!("ring {}", show(&order)),
            }
        }
        NemesisKind::PartitionBridge => {
            let bridge = order[0];
            let rest = &order[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            let (mut a, mut b) = (a.to_vec(), b.to_vec());
            a.sort_unstable();
            b.sort_unstable();
            Fault::Partition {
                kind,
                cut: Some(cut_between(&a, &b)),
                groups: format!("{} <n{bridge}> {}", show(&a), show(&b)),
            }
        }
        NemesisKind::Kill => Fault::Kill(minority(rng, &order)),
        NemesisKind::Pause => Fault::Pause(minority(rng, &order)),
        NemesisKind::Delay => {
            let ms = rng.random_range(50..=200u64);
            Fault::Delay {
                delay: Duration::from_millis(ms),
                jitter: Duration::from_millis(ms / 2),
            }
        }
        NemesisKind::Loss => Fault::Loss(0.05),
        NemesisKind::Member => Fault::Member(order[0]),
        NemesisKind::DiskFull => Fault::DiskFull(order[0]),
        NemesisKind::Damage => Fault::Damage {
            node: order[0],
            how: if rng.random_bool(0.5) {
                StorageDamage::TruncateWal
            } else {
                StorageDamage::FlipBytes
            },
        },
        NemesisKind::Clock => {
            let magnitude = rng.random_range(1..=30i64);
            Fault::Clock {
                nodes: minority(rng, &order),
                offset_s: if rng.random_bool(0.5) {
                    magnitude
                } else {
                    -magnitude
                },
                strobe: rng.random_bool(0.5),
            }
        }
    }
}

/// The schedule for `groups` on `n` nodes: alternating fault and heal windows within the time limit.
pub fn schedule(seed: u64, groups: &[NemesisGroup], n: usize, config: &ScheduleConfig) -> Vec<Window> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6E65_6D65_7369_7321);
    let mut windows = Vec::new();
    if groups.is_empty() {
        return windows;
    }
    let mut turn: Vec<usize> = (0..groups.len()).collect();
    turn.shuffle(&mut rng);
    let mut t = config.warmup;
    let mut next = 0;
    loop {
        let length = between(&mut rng, config.fault);
        if t + length > config.time_limit {
            break;
        }
        let group = &groups[turn[next % turn.len()]];
        next += 1;
        let kind = group.kinds[rng.random_range(0..group.kinds.len())];
        windows.push(Window {
            group: group.name.clone(),
            fault: draw_fault(&mut rng, kind, n),
            start: t,
            stop: t + length,
        });
        t += length + between(&mut rng, config.heal);
    }
    windows
}

impl FromStr for NemesisKind {
    type Err = NemesisError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NemesisKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| NemesisError::Unknown(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> u64 {
        let seed = std::env::var("TRESTLE_JEPSEN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(42);
        println!("seed {seed}");
        seed
    }

    #[test]
    fn the_damage_nemesis_picks_one_node_and_both_kinds_of_damage() {
        assert_eq!(
            parse_nemeses("damage", 3).unwrap()[0].kinds,
            vec![NemesisKind::Damage]
        );
        let seed = seed();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut seen = BTreeSet::new();
        for _ in 0..64 {
            match draw_fault(&mut rng, NemesisKind::Damage, 5) {
                Fault::Damage { node, how } => {
                    assert!(node < 5, "seed {seed}: node {node}");
                    seen.insert(how.name());
                }
                other => panic!("seed {seed}: {other:?}"),
            }
        }
        assert_eq!(seen.len(), 2, "seed {seed}: {seen:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_every_group_gets_a_turn() {
        let seed = seed();
        let groups = parse_nemeses("partition,kill,pause", 3).unwrap_or_default();
        let config = ScheduleConfig {
            time_limit: Duration::from_secs(40),
            ..ScheduleConfig::default()
        };
        let a = schedule(seed, &groups, 3, &config);
        assert_eq!(a, schedule(seed, &groups, 3, &config));
        for g in ["partition", "kill", "pause"] {
            assert!(a.iter().any(|w| w.group == g), "{g} never scheduled: {a:?}");
        }
        for pair in a.windows(2) {
            assert!(pair[0].stop < pair[1].start, "faults overlap: {pair:?}");
        }
        assert!(a.last().is_some_and(|w| w.stop <= config.time_limit));
    }

    #[test]
    fn a_group_draws_all_its_kinds() {
        let seed = seed();
        let groups = parse_nemeses("partition", 3).unwrap_or_default();
        let config = ScheduleConfig {
            time_limit: Duration::from_secs(400),
            ..ScheduleConfig::default()
        };
        let kinds: std::collections::BTreeSet<NemesisKind> = schedule(seed, &groups, 3, &config)
            .iter()
            .map(|w| w.fault.kind())
            .collect();
        assert_eq!(kinds.len(), 4, "{kinds:?}");
    }

    #[test]
    fn partitions_cut_what_they_say() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed());
        for _ in 0..50 {
            let Fault::Partition { cut: Some(cut), .. } =
                draw_fault(&mut rng, NemesisKind::PartitionHalves, 5)
            else {
                panic!("halves has a cut")
            };
            assert_eq!(cut.len(), 6, "2 x 3 links cross halves of 5");
            let Fault::Partition { cut: Some(cut), .. } = draw_fault(&mut rng, NemesisKind::PartitionRing, 5)
            else {
                panic!("ring has a cut")
            };
            // Each node keeps two neighbours: 5 of the 10 links are cut, and each node loses exactly two.
            assert_eq!(cut.len(), 5);
            for v in 0..5 {
                assert_eq!(cut.iter().filter(|(a, b)| *a == v || *b == v).count(), 2);
            }
            let Fault::Partition { cut: Some(cut), .. } =
                draw_fault(&mut rng, NemesisKind::PartitionBridge, 3)
            else {
                panic!("bridge has a cut")
            };
            assert_eq!(cut.len(), 1, "3 nodes: the two ends lose each other only");
            let Fault::Kill(nodes) = draw_fault(&mut rng, NemesisKind::Kill, 5) else {
                panic!("kill")
            };
            assert!((1..=2).contains(&nodes.len()));
        }
    }

    #[test]
    fn nemesis_lists_parse_and_unsupported_ones_say_why() {
        let g = parse_nemeses("partition,kill", 3).unwrap_or_default();
        assert_eq!(g.len(), 2);
        assert!(!g[0].kinds.contains(&NemesisKind::PartitionRing), "ring needs 5");
        assert_eq!(parse_nemeses("partition", 5).map(|g| g[0].kinds.len()), Ok(5));
        assert_eq!(
            parse_nemeses("clock-skew", 3).map(|g| g[0].kinds.clone()),
            Ok(vec![NemesisKind::Clock])
        );
        assert!(matches!(
            parse_nemeses("partition-ring", 3),
            Err(NemesisError::TooFewNodes { .. })
        ));
        assert!(matches!(parse_nemeses("fire", 3), Err(NemesisError::Unknown(_))));
        assert_eq!(parse_nemeses("none", 3), Ok(vec![]));
        assert!(ScheduleConfig::default().validate().is_ok());
        let backwards = ScheduleConfig {
            fault: (Duration::from_secs(5), Duration::from_secs(1)),
            ..ScheduleConfig::default()
        };
        assert_eq!(backwards.validate().map_err(|e| e.field), Err("fault"));
    }
}
