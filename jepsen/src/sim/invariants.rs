//! The Raft invariants the driver checks while the simulation runs and after it heals.
//!
//! - **Leaders.** Every step, every live node's `raft.metrics()`: a node in state Leader is recorded for its
//!   current term, and its vote must be its own and committed (granted by a quorum). Two leaders in one term are
//!   reported per term; they are a violation only under [`SimConfig::strict_one_leader_per_term`], because
//!   openraft's default leader id (term, node id) allows them (see the field's docs).
//! - **Applied state never diverges.** Every few steps, each node's newly applied revisions are compared with
//!   what any other node applied at the same revision: the same events (key, value, create and mod revision,
//!   version). After a restart a node's revisions are checked again from the start, as it rebuilds them.
//! - **Same state at the end, nothing acknowledged lost.** After healing, once every node is up, follows the same
//!   leader and has applied the same index, all nodes hold the same keys and revision, and every acknowledged
//!   write is there at the revision its client was told.
//!
//! [`SimConfig::strict_one_leader_per_term`]: super::SimConfig::strict_one_leader_per_term

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use openraft::ServerState;
use parking_lot::Mutex;
use trestle_etcd::{Event, EventKind, RangeRequest, Revision, Store};

use super::client::{Acked, Shared};
use super::host_name;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimViolation {
    /// More than one node led in one term (only under the strict rule).
    TwoLeadersInTerm {
        /// The term.
        term: u64,
        /// The nodes (indexes) seen leading in it.
        nodes: Vec<usize>,
    },
    /// A node in state Leader whose vote is not its own committed vote.
    LeaderWithoutQuorumVote {
        /// The node.
        node: usize,
        /// Its term.
        term: u64,
        /// Its vote, as openraft prints it.
        vote: String,
    },
    /// Two nodes applied different events at one revision.
    Diverged {
        /// The revision.
        revision: Revision,
        /// The node that applied it first, and what it applied.
        first: (usize, String),
        /// The node that disagrees, and what it applied.
        other: (usize, String),
    },
    /// After healing and settling, two nodes hold different state.
    FinalStateDiffers {
        /// The reference node.
        node: usize,
        /// The node that differs.
        other: usize,
        /// How.
        detail: String,
    },
    /// A client operation ran far past the store's request timeout on a node that stayed up: `Store` promises
    /// an answer (possibly "timed out") within its request timeout.
    StuckOperation {
        /// The node whose store was called.
        node: usize,
        /// The client process.
        process: i64,
        /// `read`, `write` or `cas`.
        f: String,
        /// The key (its number).
        key: String,
        /// When it was invoked (simulated time).
        invoked: Duration,
        /// How long it had been running when the check gave up on it.
        running: Duration,
        /// The node's Raft state at the invocation.
        state: String,
        /// The node's Raft state when the operation was found stuck.
        now: String,
    },
    /// An acknowledged write is not where its client was told it landed.
    LostWrite {
        /// The key.
        key: String,
        /// The value acknowledged.
        value: i64,
        /// The revision acknowledged.
        revision: Revision,
        /// The node that lacks it.
        node: usize,
        /// What that node has at that revision.
        found: String,
    },
}

impl fmt::Display for SimViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimViolation::TwoLeadersInTerm { term, nodes } => {
                let names: Vec<String> = nodes.iter().map(|n| host_name(*n)).collect();
                write!(f, "term {term} had leaders {}", names.join(", "))
            }
            SimViolation::LeaderWithoutQuorumVote { node, term, vote } => write!(
                f,
                "{} leads in term {term} without its own committed vote (vote {vote})",
                host_name(*node)
            ),
            SimViolation::Diverged {
                revision,
                first,
                other,
            } => write!(
                f,
                "revision {revision} diverged: {} applied {}, {} applied {}",
                host_name(first.0),
                first.1,
                host_name(other.0),
                other.1
            ),
            SimViolation::FinalStateDiffers { node, other, detail } => write!(
                f,
                "after healing {} and {} differ: {detail}",
                host_name(*node),
                host_name(*other)
            ),
            SimViolation::StuckOperation {
                node,
                process,
                f: op,
                key,
                invoked,
                running,
                state,
                now,
            } => write!(
                f,
                "{op} of key {key} by process {process} on {} invoked at {:.3}s still had no answer {:.1}s later \
                 (the node was {state} at the invocation; now {now})",
                host_name(*node),
                invoked.as_secs_f64(),
                running.as_secs_f64()
            ),
            SimViolation::LostWrite {
                key,
                value,
                revision,
                node,
                found,
            } => write!(
                f,
                "acknowledged write {key} = {value} at revision {revision} is missing on {}: it has {found}",
                host_name(*node)
            ),
        }
    }
}

/// A short rendering of a revision's events.
fn render(events: &[Event]) -> String {
    if events.is_empty() {
        return "nothing".to_owned();
    }
    events
        .iter()
        .map(|e| {
            let kv = &e.kv;
            let key = String::from_utf8_lossy(&kv.key);
            match e.kind {
                EventKind::Put => format!(
                    "put {key}={} (create {}, mod {}, version {})",
                    String::from_utf8_lossy(&kv.value),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version
                ),
                EventKind::Delete => format!("delete {key} (mod {})", kv.mod_revision),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A node's revision and keys, or why they could not be read.
type NodeState = Result<(Revision, Vec<trestle_etcd::KeyValue>), String>;

/// What the driver knows about the nodes' Raft and applied state.
pub(super) struct Invariants {
    strict: bool,
    leaders: BTreeMap<u64, BTreeSet<usize>>,
    /// Per revision, the first node seen applying it and what it applied.
    applied: BTreeMap<Revision, (usize, Vec<Event>)>,
    /// Per node: revisions checked so far, and the boot they belong to.
    checked: Vec<(Revision, usize)>,
    settled: bool,
    violations: Vec<SimViolation>,
    reported_terms: BTreeSet<u64>,
    reported_votes: BTreeSet<(usize, u64)>,
    reported_stuck: BTreeSet<i64>,
    unknown: Vec<String>,
}

impl Invariants {
    pub(super) fn new(nodes: usize, strict: bool) -> Self {
        Invariants {
            strict,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            checked: vec![(0, 0); nodes],
            settled: false,
            violations: Vec::new(),
            reported_terms: BTreeSet::new(),
            reported_votes: BTreeSet::new(),
            reported_stuck: BTreeSet::new(),
            unknown: Vec::new(),
        }
    }

    /// Records who leads in which term right now.
    pub(super) fn sample_leaders(&mut self, shared: &Arc<Mutex<Shared>>, _now: Duration) {
        let stores = shared.lock().stores();
        for (i, store) in stores {
            let rx = store.raft().metrics();
            let m = rx.borrow_watched();
            if m.state != ServerState::Leader {
                continue;
            }
            let term = m.current_term;
            let leaders = self.leaders.entry(term).or_default();
            leaders.insert(i);
            if self.strict && leaders.len() > 1 && self.reported_terms.insert(term) {
                self.violations.push(SimViolation::TwoLeadersInTerm {
                    term,
                    nodes: leaders.iter().copied().collect(),
                });
            }
            let own = m.vote.leader_id.node_id == m.id && m.vote.committed;
            if !own && self.reported_votes.insert((i, term)) {
                self.violations.push(SimViolation::LeaderWithoutQuorumVote {
                    node: i,
                    term,
                    vote: m.vote.to_string(),
                });
            }
        }
    }

    /// Compares every node's newly applied revisions with what other nodes applied at them.
    pub(super) fn check_applied(&mut self, shared: &Arc<Mutex<Shared>>) {
        let nodes: Vec<(usize, Option<Store>, usize)> = {
            let s = shared.lock();
            s.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (i, n.store.clone(), n.boots))
                .collect()
        };
        for (i, store, boots) in nodes {
            let Some(store) = store else { continue };
            let (checked, boot) = self.checked[i];
            let from = if boot == boots { checked } else { 0 };
            let new: Vec<(Revision, Vec<Event>)> = store.read(|app| {
                let st = app.store();
                ((from + 1).max(2)..=st.revision())
                    .map(|r| (r, st.events_at(r).to_vec()))
                    .collect()
            });
            let mut last = from;
            for (revision, events) in new {
                last = revision;
                self.record_applied(i, revision, events);
            }
            self.checked[i] = (last, boots);
        }
    }

    /// Node `node` applied `events` at `revision`: the first node to do so sets what every other must match.
    fn record_applied(&mut self, node: usize, revision: Revision, events: Vec<Event>) {
        match self.applied.get(&revision) {
            None => {
                self.applied.insert(revision, (node, events));
            }
            Some((first, seen)) if *seen != events => {
                let v = SimViolation::Diverged {
                    revision,
                    first: (*first, render(seen)),
                    other: (node, render(&events)),
                };
                self.violations.push(v);
            }
            Some(_) => {}
        }
    }

    /// Reports every operation of a live client that has run longer than `limit` (once each).
    pub(super) fn check_overdue(&mut self, shared: &Arc<Mutex<Shared>>, now: Duration, limit: Duration) {
        let (overdue, stores) = {
            let s = shared.lock();
            (s.recorder.overdue(now.saturating_sub(limit)), s.stores())
        };
        for o in overdue {
            if self.reported_stuck.insert(o.process) {
                let current = stores
                    .iter()
                    .find(|(i, _)| *i == o.at.node)
                    .map(|(_, store)| {
                        let rx = store.raft().metrics();
                        let m = rx.borrow_watched();
                        format!(
                            "{:?}, term {}, applied {:?}, snapshot {:?}, purged {:?}",
                            m.state,
                            m.current_term,
                            m.last_applied.map(|id| id.index),
                            m.snapshot.map(|id| id.index),
                            m.purged.map(|id| id.index)
                        )
                    })
                    .unwrap_or_else(|| "down".to_owned());
                self.violations.push(SimViolation::StuckOperation {
                    node: o.at.node,
                    process: o.process,
                    f: o.f,
                    key: o.key,
                    invoked: o.invoked,
                    running: now.saturating_sub(o.invoked),
                    state: o.at.state,
                    now: current,
                });
            }
        }
    }

    /// Whether the cluster is quiet and agrees: every node up and following one leader, every node's applied
    /// index the leader's last log index, no client operation in flight.
    pub(super) fn settled(&mut self, shared: &Arc<Mutex<Shared>>) -> bool {
        let (stores, all_up, in_flight) = {
            let s = shared.lock();
            (
                s.stores(),
                s.nodes.iter().all(|n| n.store.is_some()),
                s.in_flight.iter().sum::<usize>(),
            )
        };
        // Operations already reported stuck may never finish; the others must have.
        if !all_up || (in_flight > 0 && self.reported_stuck.is_empty()) {
            return false;
        }
        let mut leader = None;
        let mut applied = None;
        let mut leader_last = None;
        for (_, store) in &stores {
            let rx = store.raft().metrics();
            let m = rx.borrow_watched();
            let Some(l) = m.current_leader else {
                return false;
            };
            if *leader.get_or_insert(l) != l || *applied.get_or_insert(m.last_applied) != m.last_applied {
                return false;
            }
            if m.state == ServerState::Leader {
                leader_last = Some(m.last_log_index);
            }
        }
        let caught_up = match (leader_last, applied) {
            (Some(last), Some(applied)) => last == applied.map(|id| id.index),
            _ => false,
        };
        if caught_up {
            self.settled = true;
        }
        caught_up
    }

    /// Records that the cluster did not settle in time, with each node's view.
    pub(super) fn not_settled(&mut self, shared: &Arc<Mutex<Shared>>, limit: Duration) {
        let s = shared.lock();
        let views: Vec<String> = s
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match &n.store {
                None => format!("{} down", host_name(i)),
                Some(store) => {
                    let rx = store.raft().metrics();
                    let m = rx.borrow_watched();
                    format!(
                        "{} {:?} term {} leader {:?} applied {:?} last log {:?}",
                        host_name(i),
                        m.state,
                        m.current_term,
                        m.current_leader,
                        m.last_applied.map(|id| id.index),
                        m.last_log_index
                    )
                }
            })
            .collect();
        self.unknown.push(format!(
            "the cluster did not settle within {limit:?} of healing ({} client operations in flight per node \
             {:?}: {}): {}",
            s.in_flight.iter().sum::<usize>(),
            s.in_flight,
            s.recorder.open_lines().join(", "),
            views.join("; ")
        ));
    }

    /// After settling: every node holds the same keys, values and revision.
    pub(super) fn check_final(&mut self, shared: &Arc<Mutex<Shared>>) {
        if !self.settled {
            return;
        }
        let stores = shared.lock().stores();
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..RangeRequest::default()
        };
        let states: Vec<(usize, NodeState)> = stores
            .iter()
            .map(|(i, store)| {
                let state = store.read(|app| {
                    let st = app.store();
                    st.range(&all)
                        .map(|r| (st.revision(), r.kvs))
                        .map_err(|e| e.to_string())
                });
                (*i, state)
            })
            .collect();
        let Some((first, reference)) = states.first() else {
            return;
        };
        for (other, state) in &states[1..] {
            let detail = match (reference, state) {
                (Ok(a), Ok(b)) if a == b => continue,
                (Ok((ra, ka)), Ok((rb, kb))) if ra != rb => format!("revision {ra} against {rb}"),
                (Ok((_, ka)), Ok((_, kb))) => {
                    let diff = ka
                        .iter()
                        .zip(kb)
                        .find(|(a, b)| a != b)
                        .map(|(a, b)| {
                            format!(
                                "{} = {} against {}",
                                String::from_utf8_lossy(&a.key),
                                String::from_utf8_lossy(&a.value),
                                String::from_utf8_lossy(&b.value)
                            )
                        })
                        .unwrap_or_else(|| format!("{} keys against {}", ka.len(), kb.len()));
                    format!("first difference: {diff}")
                }
                (Err(e), _) | (_, Err(e)) => format!("cannot read the state: {e}"),
            };
            self.violations.push(SimViolation::FinalStateDiffers {
                node: *first,
                other: *other,
                detail,
            });
        }
    }

    /// After settling: every acknowledged write is on every node, at its revision.
    pub(super) fn check_acknowledged(&mut self, shared: &Arc<Mutex<Shared>>, acked: &[Acked]) {
        let stores = shared.lock().stores();
        for (i, store) in &stores {
            let lost: Vec<SimViolation> = store.read(|app| {
                let st = app.store();
                acked
                    .iter()
                    .filter(|a| self.settled || st.revision() >= a.revision)
                    .filter_map(|a| {
                        let events = st.events_at(a.revision);
                        let there = events.iter().any(|e| {
                            e.kind == EventKind::Put
                                && e.kv.key == a.key.as_bytes()
                                && e.kv.value == a.value.to_string().as_bytes()
                        });
                        (!there).then(|| SimViolation::LostWrite {
                            key: a.key.clone(),
                            value: a.value,
                            revision: a.revision,
                            node: *i,
                            found: render(&events),
                        })
                    })
                    .collect()
            });
            self.violations.extend(lost);
        }
    }

    /// The violations, the reasons for an unknown verdict, and the leaders seen per term.
    pub(super) fn into_parts(self) -> (Vec<SimViolation>, Vec<String>, BTreeMap<u64, BTreeSet<usize>>) {
        (self.violations, self.unknown, self.leaders)
    }
}

#[cfg(test)]
mod tests {
    use trestle_etcd::KeyValue;

    use super::*;

    fn put(key: &str, value: &str, revision: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                value: value.as_bytes().to_vec(),
                lease: 0,
            },
            prev_kv: None,
        }
    }

    #[test]
    fn a_revision_applied_differently_is_a_divergence() {
        let mut inv = Invariants::new(3, false);
        inv.record_applied(0, 7, vec![put("k", "1", 7)]);
        inv.record_applied(1, 7, vec![put("k", "1", 7)]);
        inv.record_applied(1, 8, vec![put("k", "3", 8)]);
        assert!(inv.violations.is_empty());
        inv.record_applied(2, 7, vec![put("k", "2", 7)]);
        let (violations, _, _) = inv.into_parts();
        assert_eq!(violations.len(), 1, "{violations:?}");
        let text = violations[0].to_string();
        assert!(text.contains("revision 7 diverged"), "{text}");
        assert!(text.contains("n0 applied put k=1"), "{text}");
        assert!(text.contains("n2 applied put k=2"), "{text}");
        assert_eq!(render(&[]), "nothing");
    }
}
