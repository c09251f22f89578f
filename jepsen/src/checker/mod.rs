//! One entry point for every checker, and the one-screen summary the CLI prints.

pub(crate) mod barrier;
pub(crate) mod cache;
pub(crate) mod election;
pub(crate) mod linear;
pub(crate) mod lock;
pub(crate) mod nemesis;
pub(crate) mod queue;
pub(crate) mod set;
pub(crate) mod verdict;

use std::fmt;
use std::str::FromStr;

use crate::checker::barrier::{BarrierReport, check_barrier};
use crate::checker::cache::{CONVERGENCE_BOUND, CacheReport, check_cache};
use crate::checker::election::{ElectionReport, check_election};
use crate::checker::linear::{Limits, LinearReport, ModelError, RegisterModel, check_linearizable};
use crate::checker::lock::{LockReport, check_lock};
use crate::checker::queue::{QueueReport, check_queue};
use crate::checker::set::{SetReport, check_set};
use crate::checker::verdict::Verdict;
use crate::harness::stats::Stats;
use crate::history::History;

/// The models `trestle-jepsen check --model` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckModel {
    /// Linearizable read/write register per key.
    Register,
    /// Linearizable read/write/compare-and-set register per key.
    CasRegister,
    /// Set: adds and a final read.
    Set,
    /// Fenced lock: acquire, release, append, final read.
    Lock,
    /// Leader election: campaign, write, resign, final read.
    Election,
    /// Work queue (Jepsen's total-queue): send, receive, ack, final drain.
    Queue,
    /// Join barriers over a work queue: submit, work, finish, collect, settle, final drain.
    Barrier,
    /// Replicated cache: set, delete, read, final sweeps through both zones.
    Cache,
}

impl CheckModel {
    /// Every model, in the order the CLI lists them.
    pub const ALL: [CheckModel; 8] = [
        CheckModel::Register,
        CheckModel::CasRegister,
        CheckModel::Set,
        CheckModel::Lock,
        CheckModel::Election,
        CheckModel::Queue,
        CheckModel::Barrier,
        CheckModel::Cache,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CheckModel::Register => "register",
            CheckModel::CasRegister => "cas-register",
            CheckModel::Set => "set",
            CheckModel::Lock => "lock",
            CheckModel::Election => "election",
            CheckModel::Queue => "queue",
            CheckModel::Barrier => "barrier",
            CheckModel::Cache => "cache",
        }
    }
}

impl fmt::Display for CheckModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model {0:?}: expected register, cas-register, set, lock, election, queue, barrier or cache")]
pub struct UnknownModel(pub String);

impl FromStr for CheckModel {
    type Err = UnknownModel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckModel::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownModel(s.to_owned()))
    }
}

/// What a checker found, by kind.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Details {
    /// From [`check_linearizable`].
    Linear(LinearReport),
    /// From [`check_set`].
    Set(SetReport),
    /// From [`check_lock`].
    Lock(LockReport),
    /// From [`check_election`].
    Election(ElectionReport),
    /// From [`check_queue`].
    Queue(QueueReport),
    /// From [`check_barrier`].
    Barrier(BarrierReport),
    /// From [`check_cache`], with [`CONVERGENCE_BOUND`].
    Cache(CacheReport),
}

/// The result of checking a history against a model.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// The model.
    pub model: CheckModel,
    /// The overall answer (statistics never change it).
    pub verdict: Verdict,
    /// Events read.
    pub events: usize,
    /// Keys in the history.
    pub keys: usize,
    /// Outcome counts.
    pub stats: Stats,
    /// The checker's own report.
    pub details: Details,
}

/// Checks `history` against `model`; `limits` bound the linearizability search.
///
/// ```
/// use trestle_jepsen::{CheckModel, History, Limits, ReadOptions, Verdict, check};
///
/// let h = History::parse_jsonl(
///     r#"{"type":"invoke","process":0,"f":"add","value":1}
/// {"type":"ok","process":0,"f":"add","value":1}
/// {"type":"invoke","process":1,"f":"read","value":null}
/// {"type":"ok","process":1,"f":"read","value":[1]}"#,
///     &ReadOptions::default(),
/// )?;
/// let report = check(&h, CheckModel::Set, &Limits::default())?;
/// assert_eq!(report.verdict, Verdict::Valid);
/// println!("{report}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check(history: &History, model: CheckModel, limits: &Limits) -> Result<Report, ModelError> {
    let details = match model {
        CheckModel::Register => {
            Details::Linear(check_linearizable(history, RegisterModel::Register, limits)?)
        }
        CheckModel::CasRegister => {
            Details::Linear(check_linearizable(history, RegisterModel::CasRegister, limits)?)
        }
        CheckModel::Set => Details::Set(check_set(history)?),
        CheckModel::Lock => Details::Lock(check_lock(history)?),
        CheckModel::Election => Details::Election(check_election(history)?),
        CheckModel::Queue => Details::Queue(check_queue(history)?),
        CheckModel::Barrier => Details::Barrier(check_barrier(history)?),
        CheckModel::Cache => Details::Cache(check_cache(history, CONVERGENCE_BOUND)?),
    };
    let verdict = match &details {
        Details::Linear(r) => r.verdict,
        Details::Set(r) => r.verdict,
        Details::Lock(r) => r.verdict,
        Details::Election(r) => r.verdict,
        Details::Queue(r) => r.verdict,
        Details::Barrier(r) => r.verdict,
        Details::Cache(r) => r.verdict,
    };
    Ok(Report {
        model,
        verdict,
        events: history.event_count(),
        keys: history.by_key().len(),
        stats: Stats::of(history),
        details,
    })
}

/// The one-screen summary.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history: {} events, {} ops over {} keys (ok {}, fail {}, info {})",
            self.events,
            self.stats.all.total(),
            self.keys,
            self.stats.all.ok,
            self.stats.all.fail,
            self.stats.all.info
        )?;
        write!(f, "{}", self.stats)?;
        let never = self.stats.never_ok();
        if !never.is_empty() {
            writeln!(f, "  warning: never succeeded: {}", never.join(", "))?;
        }
        match &self.details {
            Details::Linear(r) => write!(f, "{r}")?,
            Details::Set(r) => write!(f, "{r}")?,
            Details::Lock(r) => write!(f, "{r}")?,
            Details::Election(r) => write!(f, "{r}")?,
            Details::Queue(r) => write!(f, "{r}")?,
            Details::Barrier(r) => write!(f, "{r}")?,
            Details::Cache(r) => write!(f, "{r}")?,
        }
        writeln!(
            f,
            "verdict: {} (model {}, exit {})",
            self.verdict,
            self.model,
            self.verdict.exit_code()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_round_trip() {
        for m in CheckModel::ALL {
            assert_eq!(m.name().parse::<CheckModel>(), Ok(m));
        }
        assert!("queues".parse::<CheckModel>().is_err());
    }
}
