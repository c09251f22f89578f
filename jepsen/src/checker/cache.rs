//! The cache checker: after the faults heal, no deleted key comes back and the zones converge within a bound.
//!
//! Operations (see the `cache` workload), each on a key except `sweep`:
//!
//! - `set v` (values unique) and `delete`: writes. `ok`: every zone the client waits for took it; `fail`: it
//!   surely reached no node; `info`: unknown, it may take effect at any time from its invocation on.
//! - `read`: `ok` with the value, or nil for a miss.
//! - `sweep` (the final operations, after the heal): the result lists `[key a b]`, each key's answer through zone
//!   `a`'s and zone `b`'s client (the value, nil, or `{error ...}`). A sweep *agrees* when no read failed and the
//!   two answers of every key are equal. Its outcome may be `fail` (the workload marks a sweep that did not agree
//!   so that the runner sweeps again): its reads are judged all the same.
//!
//! **The model**, per key. A read may return nil (a cache may lose a value: a killed node restarts empty); the
//! value of an acknowledged set unless an acknowledged write (a set or a delete) was invoked after the set
//! completed and completed before the read was invoked; or the value of a set of unknown outcome invoked before
//! the read completed. Anything else is one of:
//!
//! - **unexpected**: a value no set could have written (never written, or only by sets that failed). A
//!   violation, in any read.
//! - **superseded**: the value of an acknowledged set that an acknowledged delete followed (*a deleted key came
//!   back*) or that an acknowledged set replaced (*stale*). A violation in the sweeps from the first one that
//!   agrees (*convergence*) on. Before it, and in the reads during the run, such reads are counted, not
//!   violations: a zone that missed a write serves the old value until the client's background retry reaches it
//!   (crates/cache/README.md, "Deletes across zones").
//!
//! **Convergence**: the zones must agree within `bound` of the heal (the history's last `heal` nemesis event; the
//! first sweep's invocation when there is none). A sweep invoked later than that which still found the zones
//! answering a key differently is a violation. The report gives the time from the heal to the completion of the
//! first sweep that agreed (an upper bound on the convergence time). No sweep agreeing, and no disagreement
//! after the bound: unknown.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use crate::checker::linear::ModelError;
use crate::checker::verdict::Verdict;
use crate::history::value::Value;
use crate::history::{EventType, History, Op, Outcome, short};

/// The bound the `cache` workload's zones must agree within, from the heal: its tombstone TTL (15 s: a zone
/// that missed a set holds a tombstone and answers a miss, without falling back to the other zone, until the
/// tombstone expires), plus 10 s for the retries to land (breaker wait and retry pause, 200 ms each), the killed
/// nodes to restart and a loaded machine.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(25);

/// The zones of a sweep's answers, in order.
const ZONES: [&str; 2] = ["a", "b"];
/// Violations of each kind shown in the report.
const SHOWN: usize = 3;

/// What the cache checker found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheReport {
    /// Invalid on any violation; unknown when no sweep found the zones agreeing (and nothing was violated).
    pub verdict: Verdict,
    /// The bound the zones had to agree within.
    pub bound: Duration,
    /// Keys written.
    pub keys: usize,
    /// Sets acknowledged.
    pub sets: usize,
    /// Deletes acknowledged.
    pub deletes: usize,
    /// Writes of unknown outcome (`info`).
    pub indeterminate: usize,
    /// Successful reads during the run.
    pub reads: usize,
    /// Of those, reads of a superseded value (counted, not violations).
    pub stale_during_run: usize,
    /// Sweeps recorded (agreeing or not).
    pub sweeps: usize,
    /// Time from the heal to the completion of the first sweep that agreed, if one did.
    pub converged_after: Option<Duration>,
    /// Sweep reads judged from convergence on.
    pub reads_checked: usize,
    /// Sweep reads before convergence that returned a superseded value (counted, not violations).
    pub stale_before_convergence: usize,
    /// The first of those, described.
    pub first_stale_before_convergence: Option<String>,
    /// The last disagreement seen before convergence (or at all, without it), described.
    pub last_disagreement: Option<String>,
    /// Reads of a value no set could have written. Violations.
    pub unexpected: Vec<String>,
    /// Sweep reads from convergence on of a value an acknowledged delete followed. Violations.
    pub came_back: Vec<String>,
    /// Sweep reads from convergence on of a value an acknowledged set replaced. Violations.
    pub stale_after_convergence: Vec<String>,
    /// Sweeps invoked after the bound that found the zones disagreeing. Violations.
    pub late_disagreements: Vec<String>,
}

impl CacheReport {
    /// Every violation, of every kind.
    pub fn violations(&self) -> usize {
        self.unexpected.len()
            + self.came_back.len()
            + self.stale_after_convergence.len()
            + self.late_disagreements.len()
    }
}

/// How the model judges one read.
enum Judgement<'h> {
    Allowed,
    /// No set could have written the value.
    Unexpected,
    /// The value's set was acknowledged and an acknowledged write followed it before the read began: the latest
    /// delete among those writes if there is one, else the latest set.
    Superseded(&'h Op),
}

/// One key's writes, indexed so that judging a read costs a lookup and a binary search, not a scan: a long run
/// writes a key thousands of times and reads it thousands more.
#[derive(Default)]
struct KeyWrites<'h> {
    /// Every write of the key.
    all: Vec<&'h Op>,
    /// The sets, by the value they wrote.
    sets: HashMap<&'h Value, Vec<&'h Op>>,
    /// Acknowledged writes `(call, ret)`, by invocation.
    acked: Vec<(u64, u64)>,
    /// `acked_min_ret[i]`: the earliest completion among `acked[i..]`.
    acked_min_ret: Vec<u64>,
}

impl<'h> KeyWrites<'h> {
    fn push(&mut self, op: &'h Op) {
        self.all.push(op);
        if op.f == "set" {
            self.sets.entry(&op.value).or_default().push(op);
        }
    }

    /// Builds the index of acknowledged writes once every write is in.
    fn index(&mut self) {
        self.acked = self
            .all
            .iter()
            .filter(|w| w.outcome == Outcome::Ok)
            .filter_map(|w| Some((w.call, w.ret?)))
            .collect();
        self.acked.sort_unstable();
        self.acked_min_ret = vec![u64::MAX; self.acked.len()];
        let mut min = u64::MAX;
        for i in (0..self.acked.len()).rev() {
            min = min.min(self.acked[i].1);
            self.acked_min_ret[i] = min;
        }
    }

    /// Whether an acknowledged write was invoked after `done` and completed before `call`.
    fn acked_between(&self, done: u64, call: u64) -> bool {
        let first = self.acked.partition_point(|&(c, _)| c <= done);
        self.acked_min_ret.get(first).is_some_and(|&ret| ret < call)
    }

    /// The acknowledged write invoked after `done` and completed before `call` that superseded a value: the
    /// latest delete among them if there is one, else the latest set.
    fn superseding(&self, done: u64, call: u64) -> Option<&'h Op> {
        let later: Vec<&'h Op> = self
            .all
            .iter()
            .copied()
            .filter(|w| w.outcome == Outcome::Ok && w.call > done && w.ret.is_some_and(|r| r < call))
            .collect();
        later
            .iter()
            .copied()
            .filter(|w| w.f == "delete")
            .max_by_key(|w| w.call)
            .or_else(|| later.iter().copied().max_by_key(|w| w.call))
    }
}

/// Judges a read of `value` invoked at `call` and completed at `ret` (real-time positions) against the key's
/// writes.
fn judge<'h>(writes: &KeyWrites<'h>, value: &Value, call: u64, ret: Option<u64>) -> Judgement<'h> {
    if value.is_nil() {
        return Judgement::Allowed;
    }
    let sets: Vec<&Op> = writes
        .sets
        .get(value)
        .map(|sets| {
            sets.iter()
                .copied()
                .filter(|w| ret.is_none_or(|r| w.call < r))
                .collect()
        })
        .unwrap_or_default();
    if sets.iter().any(|s| s.outcome == Outcome::Info) {
        return Judgement::Allowed;
    }
    let mut superseded = None;
    for set in sets.iter().filter(|s| s.outcome == Outcome::Ok) {
        let Some(done) = set.ret else {
            return Judgement::Allowed;
        };
        if !writes.acked_between(done, call) {
            return Judgement::Allowed;
        }
        superseded = writes.superseding(done, call).or(superseded);
    }
    match superseded {
        Some(w) => Judgement::Superseded(w),
        None => Judgement::Unexpected,
    }
}

fn model_error(op: &Op, message: String) -> ModelError {
    ModelError {
        line: op.invoke_line,
        message,
    }
}

/// The key of a keyed operation.
fn key_of(op: &Op) -> Result<&Value, ModelError> {
    op.key
        .as_ref()
        .filter(|k| !k.is_nil())
        .ok_or_else(|| model_error(op, format!("a cache {} needs a key", op.f)))
}

fn is_error(answer: &Value) -> bool {
    answer.get("error").is_some()
}

/// A sweep's entries: `(key, [zone a's answer, zone b's answer])`.
fn entries(sweep: &Op) -> Result<Vec<(&Value, [&Value; 2])>, ModelError> {
    let Some(items) = sweep.result.as_seq() else {
        return Err(model_error(
            sweep,
            format!(
                "a sweep's result is a list of [key a b], not {}",
                short(&sweep.result)
            ),
        ));
    };
    items
        .iter()
        .map(|item| match item.as_seq() {
            Some([key, a, b]) => Ok((key, [a, b])),
            _ => Err(model_error(
                sweep,
                format!("a sweep's entry is [key a b], not {}", short(item)),
            )),
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Checks a cache history (see the module docs); the zones must agree within `bound` of the heal.
pub fn check_cache(history: &History, bound: Duration) -> Result<CacheReport, ModelError> {
    let mut writes: BTreeMap<&Value, KeyWrites<'_>> = BTreeMap::new();
    let mut reads: Vec<&Op> = Vec::new();
    let mut sweeps: Vec<&Op> = Vec::new();
    let mut report = CacheReport {
        verdict: Verdict::Unknown,
        bound,
        keys: 0,
        sets: 0,
        deletes: 0,
        indeterminate: 0,
        reads: 0,
        stale_during_run: 0,
        sweeps: 0,
        converged_after: None,
        reads_checked: 0,
        stale_before_convergence: 0,
        first_stale_before_convergence: None,
        last_disagreement: None,
        unexpected: Vec::new(),
        came_back: Vec::new(),
        stale_after_convergence: Vec::new(),
        late_disagreements: Vec::new(),
    };
    for op in history.ops() {
        match op.f.as_str() {
            "set" | "delete" => {
                let key = key_of(op)?;
                writes.entry(key).or_default().push(op);
                match (op.f.as_str(), op.outcome) {
                    ("set", Outcome::Ok) => report.sets += 1,
                    (_, Outcome::Ok) => report.deletes += 1,
                    (_, Outcome::Info) => report.indeterminate += 1,
                    _ => {}
                }
            }
            "read" => {
                key_of(op)?;
                if op.outcome == Outcome::Ok {
                    reads.push(op);
                }
            }
            // A sweep the runner gave up on (`fail` with its argument, or `info`) read nothing it could record.
            "sweep" => {
                if op.outcome == Outcome::Ok || (op.outcome == Outcome::Fail && op.result.as_seq().is_some())
                {
                    entries(op)?;
                    sweeps.push(op);
                }
            }
            other => {
                return Err(model_error(
                    op,
                    format!("the cache model knows set, delete, read and sweep, not {other}"),
                ));
            }
        }
    }
    report.keys = writes.len();
    writes.values_mut().for_each(KeyWrites::index);
    let none = KeyWrites::default();
    let writes_of = |key: &Value| writes.get(key).unwrap_or(&none);

    for op in &reads {
        let Some(key) = op.key.as_ref() else { continue };
        report.reads += 1;
        match judge(writes_of(key), &op.result, op.call, op.ret) {
            Judgement::Allowed => {}
            Judgement::Unexpected => report.unexpected.push(format!(
                "{} read {} that no set could have written: {op}",
                short(key),
                op.result
            )),
            Judgement::Superseded(_) => report.stale_during_run += 1,
        }
    }

    sweeps.sort_by_key(|s| s.call);
    report.sweeps = sweeps.len();
    let heal = history
        .others()
        .iter()
        .filter(|e| e.f == "heal" && e.kind == EventType::Info)
        .filter_map(|e| e.time)
        .max();
    let reference = heal.or_else(|| sweeps.first().and_then(|s| s.invoke_time));
    let since =
        |t: Option<u64>| -> Option<Duration> { Some(Duration::from_nanos(t?.saturating_sub(reference?))) };
    let mut converged = false;
    for sweep in &sweeps {
        let found = entries(sweep)?;
        let mut disagreement = None;
        let mut agrees = !found.is_empty();
        for &(key, [a, b]) in &found {
            if is_error(a) || is_error(b) {
                agrees = false;
            } else if a != b {
                agrees = false;
                disagreement.get_or_insert_with(|| format!("{}: zone a {a}, zone b {b}", short(key)));
            }
        }
        if agrees && !converged {
            converged = true;
            report.converged_after = since(sweep.complete_time);
        }
        if let Some(d) = &disagreement {
            let at = since(sweep.invoke_time);
            if let Some(at) = at.filter(|&at| at > bound) {
                report.late_disagreements.push(format!(
                    "{} after the heal (bound {}) the zones still disagreed on {d} ({sweep})",
                    secs(at),
                    secs(bound)
                ));
            }
            if !converged {
                report.last_disagreement = Some(match at {
                    Some(at) => format!("{d}, {} after the heal", secs(at)),
                    None => d.clone(),
                });
            }
        }
        for &(key, answers) in &found {
            for (zone, answer) in ZONES.into_iter().zip(answers) {
                if is_error(answer) {
                    continue;
                }
                if converged {
                    report.reads_checked += 1;
                }
                let what = || {
                    let at = since(sweep.invoke_time).map(|t| format!(" {} after the heal", secs(t)));
                    format!(
                        "{} read {answer} through zone {zone}{} ({sweep})",
                        short(key),
                        at.unwrap_or_default()
                    )
                };
                match judge(writes_of(key), answer, sweep.call, sweep.ret) {
                    Judgement::Allowed => {}
                    Judgement::Unexpected => report
                        .unexpected
                        .push(format!("{}, a value no set could have written", what())),
                    Judgement::Superseded(by) if converged => {
                        let line = format!("{}, after the zones agreed; superseded by {by}", what());
                        if by.f == "delete" {
                            report.came_back.push(line);
                        } else {
                            report.stale_after_convergence.push(line);
                        }
                    }
                    Judgement::Superseded(by) => {
                        report.stale_before_convergence += 1;
                        report
                            .first_stale_before_convergence
                            .get_or_insert_with(|| format!("{}; superseded by {by}", what()));
                    }
                }
            }
        }
    }
    report.verdict = if report.violations() > 0 {
        Verdict::Invalid
    } else if converged {
        Verdict::Valid
    } else {
        Verdict::Unknown
    };
    Ok(report)
}

impl fmt::Display for CacheReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cache: {} - {} keys; {} sets and {} deletes acknowledged, {} writes indeterminate; {} reads during the \
             run ({} of a superseded value)",
            self.verdict,
            self.keys,
            self.sets,
            self.deletes,
            self.indeterminate,
            self.reads,
            self.stale_during_run
        )?;
        match self.converged_after {
            Some(after) => writeln!(
                f,
                "  zones agreed on every key {} after the heal (bound {}); {} sweeps, {} reads checked from then \
                 on: {} came back after a delete, {} stale, {} unexpected",
                secs(after),
                secs(self.bound),
                self.sweeps,
                self.reads_checked,
                self.came_back.len(),
                self.stale_after_convergence.len(),
                self.unexpected.len()
            )?,
            None => writeln!(
                f,
                "  zones never agreed on every key ({} sweeps); last disagreement: {}",
                self.sweeps,
                self.last_disagreement.as_deref().unwrap_or("none seen")
            )?,
        }
        if self.stale_before_convergence > 0 {
            writeln!(
                f,
                "  before the zones agreed, {} sweep reads returned a superseded value (allowed then); first: {}",
                self.stale_before_convergence,
                self.first_stale_before_convergence.as_deref().unwrap_or("")
            )?;
        }
        for (what, list) in [
            ("late disagreement", &self.late_disagreements),
            ("came back", &self.came_back),
            ("stale after convergence", &self.stale_after_convergence),
            ("unexpected", &self.unexpected),
        ] {
            for line in list.iter().take(SHOWN) {
                writeln!(f, "  {what}: {line}")?;
            }
            if list.len() > SHOWN {
                writeln!(f, "  ... and {} more {what}", list.len() - SHOWN)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, Process};

    /// Builds histories: operations in sequence, each invoked and completed at once unless told otherwise.
    #[derive(Default)]
    struct H {
        events: Vec<Event>,
        process: i64,
        time: u64,
    }

    impl H {
        fn at(&mut self, secs: f64) -> &mut Self {
            self.time = (secs * 1e9) as u64;
            self
        }

        fn op(
            &mut self,
            kind: EventType,
            f: &str,
            key: Option<&str>,
            value: Value,
            result: Value,
        ) -> &mut Self {
            self.process += 1;
            let mut invoke = Event::new(EventType::Invoke, Process::Client(self.process), f, value);
            let mut done = Event::new(kind, Process::Client(self.process), f, result);
            if let Some(k) = key {
                invoke = invoke.with_key(Value::Str(k.into()));
                done = done.with_key(Value::Str(k.into()));
            }
            self.time += 1_000;
            self.events.push(invoke.with_time(self.time));
            self.time += 1_000;
            self.events.push(done.with_time(self.time));
            self
        }

        fn set(&mut self, kind: EventType, key: &str, v: i64) -> &mut Self {
            self.op(kind, "set", Some(key), Value::Int(v), Value::Int(v))
        }

        fn delete(&mut self, kind: EventType, key: &str) -> &mut Self {
            self.op(kind, "delete", Some(key), Value::Nil, Value::Nil)
        }

        fn read(&mut self, key: &str, got: Value) -> &mut Self {
            self.op(EventType::Ok, "read", Some(key), Value::Nil, got)
        }

        fn heal(&mut self) -> &mut Self {
            self.time += 1_000;
            let e = Event::new(
                EventType::Info,
                Process::Other("nemesis".into()),
                "heal",
                Value::Nil,
            );
            self.events.push(e.with_time(self.time));
            self
        }

        /// A sweep reading `(key, zone a, zone b)`; ok when they agree.
        fn sweep(&mut self, answers: &[(&str, Value, Value)]) -> &mut Self {
            let agree = answers.iter().all(|(_, a, b)| a == b && !is_error(a));
            let result = Value::List(
                answers
                    .iter()
                    .map(|(k, a, b)| Value::List(vec![Value::Str((*k).into()), a.clone(), b.clone()]))
                    .collect(),
            );
            let kind = if agree { EventType::Ok } else { EventType::Fail };
            self.op(kind, "sweep", None, Value::Int(0), result)
        }

        fn check(&self) -> CacheReport {
            let history = History::from_events(self.events.clone()).expect("history");
            check_cache(&history, Duration::from_secs(10)).expect("checks")
        }
    }

    fn int(v: i64) -> Value {
        Value::Int(v)
    }

    fn error() -> Value {
        Value::map(vec![(Value::Str("error".into()), Value::Str("timed out".into()))])
    }

    #[test]
    fn a_history_that_converges_to_its_last_writes_is_valid() {
        let mut h = H::default();
        h.set(EventType::Ok, "k1", 1)
            .set(EventType::Ok, "k1", 2)
            .set(EventType::Ok, "k2", 3)
            .delete(EventType::Ok, "k2")
            .read("k1", int(1)) // stale during the run: counted
            .heal()
            .at(1.0)
            .sweep(&[("k1", int(2), Value::Nil), ("k2", Value::Nil, Value::Nil)])
            .at(3.0)
            .sweep(&[("k1", int(2), int(2)), ("k2", Value::Nil, Value::Nil)])
            .sweep(&[("k1", Value::Nil, Value::Nil), ("k2", Value::Nil, Value::Nil)]);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!((r.sets, r.deletes, r.keys), (3, 1, 2));
        assert_eq!(r.stale_during_run, 1);
        assert_eq!(r.reads_checked, 8);
        let after = r.converged_after.expect("converged");
        assert!(
            after > Duration::from_secs(2) && after < Duration::from_secs(4),
            "{after:?}"
        );
        assert!(r.to_string().contains("zones agreed on every key 3.00 s"), "{r}");
    }

    #[test]
    fn a_deleted_key_read_back_after_convergence_is_invalid() {
        let mut h = H::default();
        h.set(EventType::Ok, "k", 1)
            .delete(EventType::Ok, "k")
            .heal()
            .sweep(&[("k", Value::Nil, Value::Nil)])
            .sweep(&[("k", int(1), int(1))]);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert_eq!(r.came_back.len(), 2, "{r}");
        assert!(
            r.to_string().contains("came back: \"k\" read 1 through zone a"),
            "{r}"
        );
    }

    #[test]
    fn a_deleted_key_read_back_before_convergence_is_counted_not_invalid() {
        let mut h = H::default();
        h.set(EventType::Ok, "k", 1)
            .delete(EventType::Ok, "k")
            .heal()
            .sweep(&[("k", int(1), Value::Nil)])
            .sweep(&[("k", Value::Nil, Value::Nil)]);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!(r.stale_before_convergence, 1);
        assert!(r.first_stale_before_convergence.is_some());
    }

    #[test]
    fn a_value_of_a_write_of_unknown_outcome_may_come_back_at_any_time() {
        let mut h = H::default();
        h.set(EventType::Info, "k", 1)
            .delete(EventType::Ok, "k")
            .set(EventType::Ok, "k", 2)
            .heal()
            .sweep(&[("k", int(1), int(1))]);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!(r.indeterminate, 1);
    }

    #[test]
    fn an_acknowledged_value_replaced_by_a_later_set_is_stale_after_convergence() {
        let mut h = H::default();
        h.set(EventType::Ok, "k", 1)
            .set(EventType::Ok, "k", 2)
            .heal()
            .sweep(&[("k", int(1), int(1))]);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert_eq!(r.stale_after_convergence.len(), 2, "{r}");
        assert!(r.came_back.is_empty());
    }

    #[test]
    fn values_nobody_wrote_or_only_failed_sets_wrote_are_unexpected_anywhere() {
        let mut h = H::default();
        h.set(EventType::Fail, "k", 1)
            .read("k", int(1))
            .read("k", int(7))
            .heal()
            .sweep(&[("k", Value::Nil, Value::Nil)]);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert_eq!(r.unexpected.len(), 2, "{r}");
    }

    #[test]
    fn zones_disagreeing_after_the_bound_is_invalid() {
        let mut h = H::default();
        h.set(EventType::Ok, "k", 1)
            .heal()
            .at(2.0)
            .sweep(&[("k", int(1), Value::Nil)])
            .at(12.0)
            .sweep(&[("k", int(1), Value::Nil)])
            .at(13.0)
            .sweep(&[("k", int(1), int(1))]);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert_eq!(r.late_disagreements.len(), 1, "{r}");
        assert!(
            r.to_string()
                .contains("late disagreement: 12.00 s after the heal"),
            "{r}"
        );
    }

    #[test]
    fn zones_that_never_agree_within_the_sweeps_leave_the_answer_unknown() {
        let mut h = H::default();
        h.set(EventType::Ok, "k", 1)
            .heal()
            .at(1.0)
            .sweep(&[("k", int(1), Value::Nil)])
            .sweep(&[("k", int(1), error())]);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Unknown, "{r}");
        assert!(r.to_string().contains("zones never agreed"), "{r}");
        // A read that failed is no agreement.
        assert_eq!(r.converged_after, None);
    }

    #[test]
    fn ops_outside_the_model_are_errors() {
        let mut h = H::default();
        h.op(EventType::Ok, "cas", Some("k"), Value::Nil, Value::Nil);
        let history = History::from_events(h.events.clone()).expect("history");
        assert!(check_cache(&history, CONVERGENCE_BOUND).is_err());
        let mut h = H::default();
        h.op(EventType::Ok, "sweep", None, Value::Nil, Value::Int(3));
        let history = History::from_events(h.events.clone()).expect("history");
        assert!(check_cache(&history, CONVERGENCE_BOUND).is_err());
    }
}
