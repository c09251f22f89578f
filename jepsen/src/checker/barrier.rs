//! The barrier checker: each barrier's completion message is enqueued once, only after all of its tasks were
//! acknowledged, and carries every task's result.
//!
//! Operations (see the `barrier` workload): `submit [b n]` (`ok` result `[b n partition barrier]`), `work` (`ok`:
//! tasks `[b slot partition id delivery]`), `finish` (value: the tasks acknowledged), `collect` (`ok`: completion
//! messages `[b partition id delivery completed barrier results]`), `settle` (their acks) and `drain` (`ok`
//! result `{queue, received [...], acked, empty}` for the tasks' or the completions' queue).
//!
//! Violations:
//! - a barrier whose completion arrived as more than one message (distinct message ids; a message delivered twice
//!   is at-least-once delivery, counted but allowed);
//! - a completion received although one of its tasks had no acknowledgement invoked before the receive completed
//!   (a task acknowledgement of unknown outcome counts as possibly done);
//! - a completion without every task's result (`r/<b>/<slot>` for each slot), or naming another barrier id than
//!   the submission returned;
//! - a failure message (no task can be dead-lettered: the queue allows the most deliveries), or a completion of a
//!   barrier never submitted;
//! - once a drain found both queues empty, a barrier submitted with `ok` whose completion never arrived (without
//!   such a drain: unknown).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::checker::linear::ModelError;
use crate::checker::queue::when;
use crate::checker::verdict::Verdict;
use crate::history::value::Value;
use crate::history::{History, Op, Outcome, short};

/// What the barrier checker found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BarrierReport {
    /// Invalid on any violation; unknown when a completion is missing and no drain found both queues empty.
    pub verdict: Verdict,
    /// Barriers whose submission was attempted.
    pub attempted: usize,
    /// Barriers submitted with `ok`.
    pub acknowledged: usize,
    /// Barriers whose submission was indeterminate (`info`).
    pub indeterminate: usize,
    /// Task deliveries.
    pub task_deliveries: usize,
    /// Tasks acknowledged with `ok` (distinct tasks).
    pub tasks_acked: usize,
    /// Barriers with a completion received.
    pub completed: usize,
    /// Completion deliveries (every delivery of every completion message).
    pub completion_deliveries: usize,
    /// Deliveries of a completion message beyond its first (at-least-once).
    pub duplicate_deliveries: usize,
    /// Barriers submitted with `ok` whose completion never arrived, though the queues were drained.
    pub missing: Vec<i64>,
    /// Whether a drain found both queues empty.
    pub drained: bool,
    /// Violations, described.
    pub violations: Vec<String>,
}

fn seq(v: &Value) -> &[Value] {
    v.as_seq().unwrap_or_default()
}

fn model_error(op: &Op, message: String) -> ModelError {
    ModelError {
        line: op.invoke_line,
        message,
    }
}

/// A completion message seen: `(partition, id)`, completed, the join's barrier id, results, and the op.
struct Seen<'h> {
    b: Option<i64>,
    message: (i64, i64),
    completed: bool,
    barrier: Option<i64>,
    results: BTreeMap<i64, &'h str>,
    op: &'h Op,
}

fn completion<'h>(item: &'h Value, op: &'h Op) -> Result<Seen<'h>, ModelError> {
    let bad = || {
        model_error(
            op,
            format!(
                "a completion is [b partition id delivery completed barrier results], not {}",
                short(item)
            ),
        )
    };
    let Some([b, p, id, _d, completed, barrier, results]) = item.as_seq() else {
        return Err(bad());
    };
    let mut map = BTreeMap::new();
    for pair in seq(results) {
        if let [Value::Int(slot), Value::Str(r)] = seq(pair) {
            map.insert(*slot, r.as_str());
        }
    }
    Ok(Seen {
        b: b.as_int(),
        message: (p.as_int().ok_or_else(bad)?, id.as_int().ok_or_else(bad)?),
        completed: *completed == Value::Bool(true),
        barrier: barrier.as_int(),
        results: map,
        op,
    })
}

/// `(b, slot)` of a task item `[b slot partition id delivery]`.
fn task(item: &Value) -> Option<(i64, i64)> {
    match item.as_seq()? {
        [b, slot, ..] => Some((b.as_int()?, slot.as_int()?)),
        _ => None,
    }
}

/// A submission: tasks, and the barrier id an `ok` returned.
#[derive(Default)]
struct Submitted {
    n: Option<i64>,
    outcome_ok: bool,
    info: bool,
    barrier: Option<i64>,
}

/// Checks a barrier history (see the module docs).
pub fn check_barrier(history: &History) -> Result<BarrierReport, ModelError> {
    let mut submits: BTreeMap<i64, Submitted> = BTreeMap::new();
    // Per task: the earliest invocation of an acknowledgement that may have taken effect.
    let mut first_ack: BTreeMap<(i64, i64), u64> = BTreeMap::new();
    let mut acked_ok: BTreeSet<(i64, i64)> = BTreeSet::new();
    let mut task_deliveries = 0;
    let mut seen: Vec<Seen<'_>> = Vec::new();
    let mut drained = false;
    let mut note_ack = |t: (i64, i64), op: &Op, ok: bool| {
        let e = first_ack.entry(t).or_insert(op.call);
        *e = (*e).min(op.call);
        if ok {
            acked_ok.insert(t);
        }
    };
    for op in history.ops() {
        match op.f.as_str() {
            "submit" => {
                let Some([Value::Int(b), Value::Int(n)]) = op.value.as_seq() else {
                    return Err(model_error(
                        op,
                        format!("submit takes [b n], not {}", short(&op.value)),
                    ));
                };
                let s = submits.entry(*b).or_default();
                s.n = Some(*n);
                s.info |= op.outcome == Outcome::Info;
                if op.outcome == Outcome::Ok {
                    s.outcome_ok = true;
                    s.barrier = seq(&op.result).get(3).and_then(Value::as_int);
                }
            }
            "work" if op.outcome == Outcome::Ok => task_deliveries += seq(&op.result).len(),
            "finish" if op.outcome != Outcome::Fail => {
                for item in seq(&op.value) {
                    if let Some(t) = task(item) {
                        note_ack(t, op, op.outcome == Outcome::Ok);
                    }
                }
            }
            "collect" if op.outcome == Outcome::Ok => {
                for item in seq(&op.result) {
                    seen.push(completion(item, op)?);
                }
            }
            "drain" if op.outcome == Outcome::Ok => {
                let received = op.result.get("received").map(seq).unwrap_or_default();
                let acked = op.result.get("acked") == Some(&Value::Bool(true));
                match op.result.get("queue").and_then(Value::as_name) {
                    Some("jepsen-tasks") => {
                        task_deliveries += received.len();
                        // The drain invoked its ack after its receive: its own invocation is earlier still.
                        for item in received {
                            if let Some(t) = task(item) {
                                note_ack(t, op, acked);
                            }
                        }
                    }
                    Some(_) => {
                        for item in received {
                            seen.push(completion(item, op)?);
                        }
                        drained |= op.result.get("empty") == Some(&Value::Bool(true));
                    }
                    None => {
                        return Err(model_error(
                            op,
                            format!("a drain names its queue: {}", short(&op.result)),
                        ));
                    }
                }
            }
            "work" | "finish" | "collect" | "settle" | "drain" => {}
            other => {
                return Err(model_error(
                    op,
                    format!(
                        "the barrier model knows submit, work, finish, collect, settle and drain, not {other}"
                    ),
                ));
            }
        }
    }

    let mut violations = Vec::new();
    let mut messages: BTreeMap<i64, BTreeSet<(i64, i64)>> = BTreeMap::new();
    let mut deliveries_of: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for c in &seen {
        *deliveries_of.entry(c.message).or_default() += 1;
        let Some(b) = c.b else {
            violations.push(format!(
                "a completion message that names no barrier: {}",
                when(c.op)
            ));
            continue;
        };
        messages.entry(b).or_default().insert(c.message);
        let Some(sub) = submits.get(&b) else {
            violations.push(format!(
                "barrier {b} was never submitted, yet its completion arrived: {}",
                when(c.op)
            ));
            continue;
        };
        if !c.completed {
            violations.push(format!(
                "barrier {b} failed (no task can be dead-lettered here): message {}/{} in {}",
                c.message.0,
                c.message.1,
                when(c.op)
            ));
            continue;
        }
        if let (Some(want), Some(got)) = (sub.barrier, c.barrier)
            && want != got
        {
            violations.push(format!(
                "barrier {b}: submitted as barrier {want}, completed as {got}"
            ));
        }
        let n = sub.n.unwrap_or(0);
        let too_early: Vec<i64> = (0..n)
            .filter(|&slot| {
                first_ack
                    .get(&(b, slot))
                    .is_none_or(|&at| c.op.ret.is_none_or(|r| at >= r))
            })
            .collect();
        if !too_early.is_empty() {
            violations.push(format!(
                "barrier {b}: completion received by {} before tasks {too_early:?} were acknowledged",
                when(c.op)
            ));
        }
        let wrong: Vec<i64> = (0..n)
            .filter(|&slot| c.results.get(&slot).copied() != Some(format!("r/{b}/{slot}").as_str()))
            .collect();
        if !wrong.is_empty() || c.results.len() != usize::try_from(n).unwrap_or(0) {
            violations.push(format!(
                "barrier {b}: the completion's results are wrong or missing for slots {wrong:?} ({} results for {n} \
                 tasks): {}",
                c.results.len(),
                when(c.op)
            ));
        }
    }
    for (b, ids) in &messages {
        if ids.len() > 1 {
            violations.push(format!(
                "barrier {b}: completion enqueued {} times (messages {})",
                ids.len(),
                ids.iter()
                    .map(|(p, id)| format!("{p}/{id}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let missing: Vec<i64> = submits
        .iter()
        .filter(|(b, s)| s.outcome_ok && !messages.contains_key(b))
        .map(|(b, _)| *b)
        .collect();
    violations.sort();
    violations.dedup();
    let verdict = if !violations.is_empty() || (drained && !missing.is_empty()) {
        Verdict::Invalid
    } else if !missing.is_empty() || !drained {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    Ok(BarrierReport {
        verdict,
        attempted: submits.len(),
        acknowledged: submits.values().filter(|s| s.outcome_ok).count(),
        indeterminate: submits.values().filter(|s| s.info && !s.outcome_ok).count(),
        task_deliveries,
        tasks_acked: acked_ok.len(),
        completed: messages.len(),
        completion_deliveries: seen.len(),
        duplicate_deliveries: deliveries_of.values().map(|n| n - 1).sum(),
        missing,
        drained,
        violations,
    })
}

impl fmt::Display for BarrierReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "barrier: {} - barriers attempted {}, acknowledged {}, indeterminate {}; completed {} (each once: {}), \
             missing {}, violations {}",
            self.verdict,
            self.attempted,
            self.acknowledged,
            self.indeterminate,
            self.completed,
            if self.violations.iter().any(|v| v.contains("enqueued")) {
                "no"
            } else {
                "yes"
            },
            self.missing.len(),
            self.violations.len(),
        )?;
        writeln!(
            f,
            "  {} task deliveries, {} tasks acknowledged; {} completion deliveries, {} of them repeated (at-least-once, \
             allowed)",
            self.task_deliveries, self.tasks_acked, self.completion_deliveries, self.duplicate_deliveries,
        )?;
        if !self.drained {
            writeln!(
                f,
                "  no drain found both queues empty: a missing completion cannot be told from a late one"
            )?;
        }
        if !self.missing.is_empty() {
            let shown: Vec<String> = self.missing.iter().take(10).map(i64::to_string).collect();
            writeln!(
                f,
                "  acknowledged barriers without a completion: {}",
                shown.join(" ")
            )?;
        }
        for v in self.violations.iter().take(8) {
            writeln!(f, "  {v}")?;
        }
        if self.violations.len() > 8 {
            writeln!(f, "  ... and {} more violations", self.violations.len() - 8)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadOptions;

    fn check(jsonl: &str) -> BarrierReport {
        check_barrier(&History::parse_jsonl(jsonl, &ReadOptions::default()).unwrap()).unwrap()
    }

    const SUBMIT: &str = r#"{"type":"invoke","process":0,"f":"submit","value":[7,2]}
{"type":"ok","process":0,"f":"submit","value":[7,2,1,40]}
{"type":"invoke","process":1,"f":"work","value":null}
{"type":"ok","process":1,"f":"work","value":[[7,0,1,100,1],[7,1,2,100,1]]}"#;
    const FINISH: &str = r#"{"type":"invoke","process":1,"f":"finish","value":[[7,0,1,100,1],[7,1,2,100,1]]}
{"type":"ok","process":1,"f":"finish","value":[[7,0,1,100,1],[7,1,2,100,1]]}"#;
    const COLLECT: &str = r#"{"type":"invoke","process":2,"f":"collect","value":null}
{"type":"ok","process":2,"f":"collect","value":[[7,1,9,1,true,40,[[0,"r/7/0"],[1,"r/7/1"]]]]}"#;
    const EMPTY: &str = r#"{"type":"invoke","process":9,"f":"drain","value":null}
{"type":"ok","process":9,"f":"drain","value":{"queue":"jepsen-done","received":[],"acked":true,"empty":true}}"#;

    #[test]
    fn a_completion_after_every_ack_with_every_result_is_valid() {
        let r = check(&format!("{SUBMIT}\n{FINISH}\n{COLLECT}\n{EMPTY}"));
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!(
            (r.acknowledged, r.completed, r.tasks_acked, r.task_deliveries),
            (1, 1, 2, 2)
        );
        // Delivered twice as the same message: allowed, counted.
        let again = COLLECT.replace("process\":2", "process\":3");
        let r = check(&format!("{SUBMIT}\n{FINISH}\n{COLLECT}\n{again}\n{EMPTY}"));
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!(r.duplicate_deliveries, 1);
    }

    #[test]
    fn two_messages_early_completion_and_missing_results_are_violations() {
        let twice = COLLECT
            .replace("process\":2", "process\":3")
            .replace("[7,1,9,", "[7,2,11,");
        let r = check(&format!("{SUBMIT}\n{FINISH}\n{COLLECT}\n{twice}\n{EMPTY}"));
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert!(r.to_string().contains("completion enqueued 2 times"), "{r}");

        let r = check(&format!("{SUBMIT}\n{COLLECT}\n{FINISH}\n{EMPTY}"));
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert!(r.violations[0].contains("before tasks [0, 1]"), "{r}");

        let partial = COLLECT.replace(r#",[1,"r/7/1"]"#, "");
        let r = check(&format!("{SUBMIT}\n{FINISH}\n{partial}\n{EMPTY}"));
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert!(r.violations[0].contains("slots [1]"), "{r}");

        let failed = COLLECT.replace("true", "false");
        assert_eq!(
            check(&format!("{SUBMIT}\n{FINISH}\n{failed}\n{EMPTY}")).verdict,
            Verdict::Invalid
        );
    }

    #[test]
    fn a_missing_completion_is_invalid_once_drained_else_unknown() {
        let r = check(&format!("{SUBMIT}\n{FINISH}\n{EMPTY}"));
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert_eq!(r.missing, vec![7]);
        assert_eq!(check(&format!("{SUBMIT}\n{FINISH}")).verdict, Verdict::Unknown);
    }
}
