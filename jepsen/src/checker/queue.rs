//! The queue checker, Jepsen's total-queue for an at-least-once queue with acknowledgements.
//!
//! Operations (see the `queue` workload): `send v` (`ok` result `[v partition id]`), `receive` (`ok` result: a
//! list of deliveries `[v partition id delivery]`), `ack` (value: the deliveries acknowledged) and `drain` (`ok`
//! result `{received [...], acked bool, empty bool}`).
//!
//! - **lost**: a send acknowledged (`ok`) whose value no receive or drain ever returned, once a drain found the
//!   queue empty. A violation. Without such a drain the answer is unknown.
//! - **unexpected**: a value received that no send attempted, or whose every send failed. A violation.
//! - **delivered after its ack**: a message delivered by a receive invoked after an acknowledgement of that
//!   message completed with `ok` (the ack had committed). A violation.
//! - Reported, not violations: duplicates (a value delivered more than once: at-least-once delivery), values
//!   stored as more than one message, indeterminate sends (`info`) that were received (recovered) or not, acks
//!   reported `ok` although a later delivery of the message had already been received (a stale receipt accepted,
//!   or the client's retry of an ambiguous ack finding the message already gone, which the client counts as done).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::checker::linear::ModelError;
use crate::checker::verdict::Verdict;
use crate::history::value::Value;
use crate::history::{History, Op, Outcome, short};

/// One delivery seen in the history.
#[derive(Clone, Debug)]
struct Seen<'h> {
    value: &'h Value,
    message: (i64, i64),
    delivery: i64,
    op: &'h Op,
}

/// A value's deliveries and the message ids they carried.
type PerValue = (usize, BTreeSet<(i64, i64)>);

/// What the queue checker found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QueueReport {
    /// Invalid when something was lost, unexpected or delivered after its ack; unknown when nothing was lost
    /// only because no drain found the queue empty.
    pub verdict: Verdict,
    /// Distinct values whose send was attempted.
    pub attempted: usize,
    /// Distinct values whose send was acknowledged.
    pub acknowledged: usize,
    /// Distinct values whose every send failed.
    pub failed: usize,
    /// Distinct values whose send was indeterminate (`info`) and never acknowledged.
    pub indeterminate: usize,
    /// Of those, received all the same.
    pub recovered: usize,
    /// Deliveries in the history (receives and drains).
    pub deliveries: usize,
    /// Distinct values received.
    pub received: usize,
    /// Of those, received during the final drain.
    pub received_in_drain: usize,
    /// Deliveries of a value beyond its first (at-least-once).
    pub duplicates: usize,
    /// Values delivered more than once.
    pub duplicated_values: usize,
    /// Values stored as more than one message (message ids).
    pub multi_message_values: usize,
    /// Acknowledgements that completed `ok` (messages).
    pub acks: usize,
    /// Acks reported `ok` although a later delivery of the message had already been received.
    pub late_acks: usize,
    /// Whether a drain found the queue empty.
    pub drained: bool,
    /// Acknowledged sends never received. A violation (once drained).
    pub lost: Vec<Value>,
    /// Values received that no send could have enqueued. A violation.
    pub unexpected: Vec<Value>,
    /// Messages delivered again after an ack of theirs committed, described. A violation.
    pub delivered_after_ack: Vec<String>,
}

fn seq(v: &Value) -> &[Value] {
    v.as_seq().unwrap_or_default()
}

/// `(v, (partition, id), delivery)` of a `[v partition id delivery]` item.
fn delivery(item: &Value) -> Option<(&Value, (i64, i64), i64)> {
    match item.as_seq()? {
        [v, p, id, d, ..] => Some((v, (p.as_int()?, id.as_int()?), d.as_int()?)),
        _ => None,
    }
}

fn model_error(op: &Op, message: String) -> ModelError {
    ModelError {
        line: op.invoke_line,
        message,
    }
}

/// Checks a queue history (see the module docs).
pub fn check_queue(history: &History) -> Result<QueueReport, ModelError> {
    // Per value: whether some send did not fail, whether one was acknowledged, whether one was indeterminate.
    let mut sends: BTreeMap<&Value, (bool, bool, bool)> = BTreeMap::new();
    let mut seen: Vec<Seen<'_>> = Vec::new();
    let mut in_drain: BTreeSet<&Value> = BTreeSet::new();
    // Per message: the earliest completion of an ok ack, and the acked delivery number, with the op.
    let mut acked: BTreeMap<(i64, i64), Vec<(i64, &Op)>> = BTreeMap::new();
    let mut drained = false;
    for op in history.ops() {
        match op.f.as_str() {
            "send" => {
                let e = sends.entry(&op.value).or_insert((false, false, false));
                e.0 |= op.outcome != Outcome::Fail;
                e.1 |= op.outcome == Outcome::Ok;
                e.2 |= op.outcome == Outcome::Info;
            }
            "receive" if op.outcome == Outcome::Ok => {
                for item in seq(&op.result) {
                    let (value, message, d) = delivery(item).ok_or_else(|| {
                        model_error(
                            op,
                            format!("a delivery is [v partition id delivery], not {}", short(item)),
                        )
                    })?;
                    seen.push(Seen {
                        value,
                        message,
                        delivery: d,
                        op,
                    });
                }
            }
            "ack" if op.outcome == Outcome::Ok => {
                for item in seq(&op.value) {
                    let (_, message, d) = delivery(item).ok_or_else(|| {
                        model_error(
                            op,
                            format!("an ack names [v partition id delivery], not {}", short(item)),
                        )
                    })?;
                    acked.entry(message).or_default().push((d, op));
                }
            }
            "drain" if op.outcome == Outcome::Ok => {
                let received = op.result.get("received").map(seq).unwrap_or_default();
                let was_acked = op.result.get("acked") == Some(&Value::Bool(true));
                for item in received {
                    let (value, message, d) = delivery(item).ok_or_else(|| {
                        model_error(
                            op,
                            format!("a delivery is [v partition id delivery], not {}", short(item)),
                        )
                    })?;
                    seen.push(Seen {
                        value,
                        message,
                        delivery: d,
                        op,
                    });
                    in_drain.insert(value);
                    if was_acked {
                        acked.entry(message).or_default().push((d, op));
                    }
                }
                drained |= op.result.get("empty") == Some(&Value::Bool(true));
            }
            "receive" | "ack" | "drain" => {}
            other => {
                return Err(model_error(
                    op,
                    format!("the queue model knows send, receive, ack and drain, not {other}"),
                ));
            }
        }
    }

    // Per value: deliveries, and the messages they were.
    let mut per_value: BTreeMap<&Value, PerValue> = BTreeMap::new();
    for s in &seen {
        let e = per_value.entry(s.value).or_default();
        e.0 += 1;
        e.1.insert(s.message);
    }
    let mut report = QueueReport {
        verdict: Verdict::Valid,
        attempted: sends.len(),
        acknowledged: sends.values().filter(|s| s.1).count(),
        failed: sends.values().filter(|s| !s.0).count(),
        indeterminate: sends.values().filter(|s| s.2 && !s.1).count(),
        recovered: sends
            .iter()
            .filter(|(v, s)| s.2 && !s.1 && per_value.contains_key(*v))
            .count(),
        deliveries: seen.len(),
        received: per_value.len(),
        received_in_drain: in_drain.len(),
        duplicates: per_value.values().map(|(n, _)| n - 1).sum(),
        duplicated_values: per_value.values().filter(|(n, _)| *n > 1).count(),
        multi_message_values: per_value.values().filter(|(_, ids)| ids.len() > 1).count(),
        acks: acked.len(),
        late_acks: 0,
        drained,
        lost: Vec::new(),
        unexpected: Vec::new(),
        delivered_after_ack: Vec::new(),
    };
    for (value, s) in &sends {
        if s.1 && !per_value.contains_key(value) {
            report.lost.push((*value).clone());
        }
    }
    for value in per_value.keys() {
        if !sends.get(value).is_some_and(|s| s.0) {
            report.unexpected.push((*value).clone());
        }
    }
    for s in &seen {
        let Some(acks) = acked.get(&s.message) else {
            continue;
        };
        for &(d, ack) in acks {
            // The ack had committed before this receive was invoked.
            if ack.ret.is_some_and(|r| r < s.op.call) {
                report.delivered_after_ack.push(format!(
                    "{} (message {}/{}) delivered again (delivery {}) by {} after its ack of delivery {} by {}",
                    short(s.value),
                    s.message.0,
                    s.message.1,
                    s.delivery,
                    when(s.op),
                    d,
                    when(ack)
                ));
            }
            // A later delivery was received before this ack was invoked: its receipt was stale.
            if s.delivery > d && s.op.ret.is_some_and(|r| r < ack.call) {
                report.late_acks += 1;
            }
        }
    }
    report.delivered_after_ack.sort();
    report.delivered_after_ack.dedup();
    let violated = !report.unexpected.is_empty() || !report.delivered_after_ack.is_empty();
    report.verdict = if violated || (drained && !report.lost.is_empty()) {
        Verdict::Invalid
    } else if !drained {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    Ok(report)
}

/// `p3 receive (ok, lines 5-6, 1.204-1.330 s)`: the process, the function, where and when.
pub(crate) fn when(op: &Op) -> String {
    let outcome = match op.outcome {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
    };
    let lines = match op.complete_line {
        Some(end) if end > 0 => format!(", lines {}-{end}", op.invoke_line),
        _ => String::new(),
    };
    let secs = |t: u64| t as f64 / 1e9;
    let times = match (op.invoke_time, op.complete_time) {
        (Some(a), Some(b)) => format!(", {:.3}-{:.3} s", secs(a), secs(b)),
        (Some(a), None) => format!(", from {:.3} s", secs(a)),
        _ => String::new(),
    };
    format!("p{} {} ({outcome}{lines}{times})", op.process, op.f)
}

pub(crate) fn some(values: &[Value]) -> String {
    let shown: Vec<String> = values.iter().take(10).map(short).collect();
    let more = if values.len() > 10 {
        format!(" ... and {} more", values.len() - 10)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(" "))
}

impl fmt::Display for QueueReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "queue: {} - sends attempted {}, acknowledged {}, failed {}, indeterminate {} ({} received anyway); \
             lost {}, unexpected {}, delivered after their ack {}",
            self.verdict,
            self.attempted,
            self.acknowledged,
            self.failed,
            self.indeterminate,
            self.recovered,
            self.lost.len(),
            self.unexpected.len(),
            self.delivered_after_ack.len(),
        )?;
        writeln!(
            f,
            "  {} deliveries of {} values ({} in the final drain); duplicates {} over {} values (at-least-once, \
             allowed); values stored as several messages {}; messages acknowledged {}; acks ok after a later \
             delivery {}",
            self.deliveries,
            self.received,
            self.received_in_drain,
            self.duplicates,
            self.duplicated_values,
            self.multi_message_values,
            self.acks,
            self.late_acks,
        )?;
        if !self.drained {
            writeln!(
                f,
                "  no drain found the queue empty: lost messages cannot be told from unread ones"
            )?;
        }
        if !self.lost.is_empty() {
            writeln!(f, "  lost {}", some(&self.lost))?;
        }
        if !self.unexpected.is_empty() {
            writeln!(f, "  unexpected {}", some(&self.unexpected))?;
        }
        for line in self.delivered_after_ack.iter().take(5) {
            writeln!(f, "  {line}")?;
        }
        if self.delivered_after_ack.len() > 5 {
            writeln!(
                f,
                "  ... and {} more delivered after their ack",
                self.delivered_after_ack.len() - 5
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadOptions;

    fn check(jsonl: &str) -> QueueReport {
        check_queue(&History::parse_jsonl(jsonl, &ReadOptions::default()).unwrap()).unwrap()
    }

    const EMPTY_DRAIN: &str = r#"{"type":"invoke","process":9,"f":"drain","value":null}
{"type":"ok","process":9,"f":"drain","value":{"received":[],"acked":true,"empty":true}}"#;

    #[test]
    fn lost_unexpected_recovered_and_duplicates() {
        let r = check(&format!(
            r#"{{"type":"invoke","process":0,"f":"send","value":1}}
{{"type":"ok","process":0,"f":"send","value":[1,0,1]}}
{{"type":"invoke","process":0,"f":"send","value":2}}
{{"type":"ok","process":0,"f":"send","value":[2,0,2]}}
{{"type":"invoke","process":1,"f":"send","value":3}}
{{"type":"info","process":1,"f":"send","value":3}}
{{"type":"invoke","process":2,"f":"send","value":4}}
{{"type":"fail","process":2,"f":"send","value":4}}
{{"type":"invoke","process":3,"f":"receive","value":null}}
{{"type":"ok","process":3,"f":"receive","value":[[1,0,1,1],[3,1,7,1],[4,0,3,1]]}}
{{"type":"invoke","process":3,"f":"receive","value":null}}
{{"type":"ok","process":3,"f":"receive","value":[[1,0,1,2]]}}
{EMPTY_DRAIN}"#
        ));
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert_eq!(r.lost, vec![Value::Int(2)]);
        assert_eq!(r.unexpected, vec![Value::Int(4)]);
        assert_eq!((r.recovered, r.duplicates, r.duplicated_values), (1, 1, 1));
        assert_eq!(
            (r.attempted, r.acknowledged, r.failed, r.indeterminate),
            (4, 2, 1, 1)
        );
        assert!(r.to_string().contains("lost 2"), "{r}");
    }

    #[test]
    fn everything_received_is_valid_and_without_an_empty_drain_unknown() {
        let run = r#"{"type":"invoke","process":0,"f":"send","value":1}
{"type":"ok","process":0,"f":"send","value":[1,0,1]}
{"type":"invoke","process":0,"f":"send","value":2}
{"type":"ok","process":0,"f":"send","value":[2,1,1]}
{"type":"invoke","process":1,"f":"receive","value":null}
{"type":"ok","process":1,"f":"receive","value":[[1,0,1,1]]}
{"type":"invoke","process":1,"f":"ack","value":[[1,0,1,1]]}
{"type":"ok","process":1,"f":"ack","value":[[1,0,1,1]]}"#;
        let r = check(run);
        assert_eq!(r.verdict, Verdict::Unknown, "{r}");
        assert_eq!(r.lost, vec![Value::Int(2)]);
        let drain = r#"{"type":"invoke","process":9,"f":"drain","value":null}
{"type":"ok","process":9,"f":"drain","value":{"received":[[2,1,1,1]],"acked":true,"empty":false}}"#;
        let r = check(&format!("{run}\n{drain}\n{EMPTY_DRAIN}"));
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!((r.received, r.received_in_drain, r.acks), (2, 1, 2));
    }

    #[test]
    fn a_delivery_after_a_committed_ack_is_a_violation_but_a_concurrent_one_is_not() {
        let base = r#"{"type":"invoke","process":0,"f":"send","value":1}
{"type":"ok","process":0,"f":"send","value":[1,0,5]}
{"type":"invoke","process":1,"f":"receive","value":null}
{"type":"ok","process":1,"f":"receive","value":[[1,0,5,1]]}
{"type":"invoke","process":1,"f":"ack","value":[[1,0,5,1]]}"#;
        // Invoked while the ack was in flight: it may have been ordered before the ack.
        let concurrent = format!(
            r#"{base}
{{"type":"invoke","process":2,"f":"receive","value":null}}
{{"type":"ok","process":1,"f":"ack","value":[[1,0,5,1]]}}
{{"type":"ok","process":2,"f":"receive","value":[[1,0,5,2]]}}
{EMPTY_DRAIN}"#
        );
        let r = check(&concurrent);
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!(r.duplicates, 1);
        let after = format!(
            r#"{base}
{{"type":"ok","process":1,"f":"ack","value":[[1,0,5,1]]}}
{{"type":"invoke","process":2,"f":"receive","value":null}}
{{"type":"ok","process":2,"f":"receive","value":[[1,0,5,2]]}}
{EMPTY_DRAIN}"#
        );
        let r = check(&after);
        assert_eq!(r.verdict, Verdict::Invalid, "{r}");
        assert_eq!(r.delivered_after_ack.len(), 1);
        assert!(r.to_string().contains("delivered again (delivery 2)"), "{r}");
        // An ack that failed committed nothing.
        let failed = after.replacen(
            r#""type":"ok","process":1,"f":"ack""#,
            r#""type":"fail","process":1,"f":"ack""#,
            1,
        );
        assert_eq!(check(&failed).verdict, Verdict::Valid);
    }

    #[test]
    fn an_ack_after_a_later_delivery_is_counted() {
        let r = check(&format!(
            r#"{{"type":"invoke","process":0,"f":"send","value":1}}
{{"type":"ok","process":0,"f":"send","value":[1,0,5]}}
{{"type":"invoke","process":1,"f":"receive","value":null}}
{{"type":"ok","process":1,"f":"receive","value":[[1,0,5,1]]}}
{{"type":"invoke","process":2,"f":"receive","value":null}}
{{"type":"ok","process":2,"f":"receive","value":[[1,0,5,2]]}}
{{"type":"invoke","process":1,"f":"ack","value":[[1,0,5,1]]}}
{{"type":"ok","process":1,"f":"ack","value":[[1,0,5,1]]}}
{EMPTY_DRAIN}"#
        ));
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!(r.late_acks, 1);
    }

    #[test]
    fn malformed_operations_are_model_errors() {
        let h = History::parse_jsonl(
            r#"{"type":"invoke","process":0,"f":"pop","value":null}"#,
            &ReadOptions::default(),
        )
        .unwrap();
        assert!(check_queue(&h).is_err());
        let h = History::parse_jsonl(
            r#"{"type":"invoke","process":0,"f":"receive","value":null}
{"type":"ok","process":0,"f":"receive","value":[5]}"#,
            &ReadOptions::default(),
        )
        .unwrap();
        assert!(check_queue(&h).is_err());
    }
}
