//! The set checker: every acknowledged add must be in the final read.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::checker::linear::ModelError;
use crate::checker::verdict::Verdict;
use crate::history::value::Value;
use crate::history::{History, Op, Outcome, key_label, short};

/// What the set checker found for one key.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SetKeyReport {
    /// The key (`None` for an unkeyed history).
    pub key: Option<Value>,
    /// Valid, invalid, or unknown when there is no successful read.
    pub verdict: Verdict,
    /// Distinct values whose add was attempted.
    pub attempted: usize,
    /// Distinct values whose add was acknowledged.
    pub acknowledged: usize,
    /// Acknowledged before the final read began, yet absent from it. A violation.
    pub lost: Vec<Value>,
    /// Present in the final read but never added, or only ever added by operations that failed. A violation.
    pub unexpected: Vec<Value>,
    /// Present although the add's outcome was unknown (`info`): the add took effect. Fine.
    pub recovered: Vec<Value>,
    /// Acknowledged only after the final read began, and absent from it: concurrent with the read. Fine.
    pub concurrent_absent: Vec<Value>,
    /// The final read's line, if there was one.
    pub final_read_line: Option<usize>,
}

/// The set checker's result over all keys.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SetReport {
    /// Invalid if any key is, else unknown if any key is, else valid.
    pub verdict: Verdict,
    /// One report per key.
    pub keys: Vec<SetKeyReport>,
}

/// Checks a set workload: `add` operations (the value is the element) and `read` operations whose result is the
/// whole set (a list or set). The final read is the successful read invoked last.
///
/// An add acknowledged before the final read began must be in it (else *lost*); an element in the final read must
/// have been added by an operation that did not fail (else *unexpected*); an element whose add was `info` and that
/// is present is *recovered*. Without a successful read the verdict is unknown.
pub fn check_set(history: &History) -> Result<SetReport, ModelError> {
    let mut keys = Vec::new();
    for (key, ops) in history.by_key() {
        keys.push(check_key(key.cloned(), &ops)?);
    }
    let verdict = keys.iter().fold(Verdict::Valid, |acc, k| acc.and(k.verdict));
    Ok(SetReport { verdict, keys })
}

fn check_key(key: Option<Value>, ops: &[&Op]) -> Result<SetKeyReport, ModelError> {
    let mut final_read: Option<&Op> = None;
    // For each element: whether some attempt did not fail, and its earliest acknowledgement (which decides
    // whether the final read had to see it).
    let mut adds: HashMap<&Value, (bool, Option<u64>)> = HashMap::new();
    for op in ops {
        match op.f.as_str() {
            "add" => {
                let e = adds.entry(&op.value).or_insert((false, None));
                if op.outcome != Outcome::Fail {
                    e.0 = true;
                }
                if op.outcome == Outcome::Ok {
                    let ret = op.ret.unwrap_or(u64::MAX);
                    e.1 = Some(e.1.map_or(ret, |r| r.min(ret)));
                }
            }
            "read" => {
                if op.outcome == Outcome::Ok {
                    if op.result.as_seq().is_none() {
                        return Err(ModelError {
                            line: op.invoke_line,
                            message: format!(
                                "a set read must return a list or set, not {}",
                                short(&op.result)
                            ),
                        });
                    }
                    if final_read.is_none_or(|r| r.call < op.call) {
                        final_read = Some(op);
                    }
                }
            }
            other => {
                return Err(ModelError {
                    line: op.invoke_line,
                    message: format!("the set model knows add and read, not {other}"),
                });
            }
        }
    }
    let mut report = SetKeyReport {
        key,
        verdict: Verdict::Unknown,
        attempted: adds.len(),
        acknowledged: adds.values().filter(|a| a.1.is_some()).count(),
        lost: Vec::new(),
        unexpected: Vec::new(),
        recovered: Vec::new(),
        concurrent_absent: Vec::new(),
        final_read_line: None,
    };
    let Some(read) = final_read else {
        report.verdict = Verdict::Unknown;
        return Ok(report);
    };
    report.final_read_line = read.complete_line;
    let present: BTreeSet<&Value> = read.result.as_seq().unwrap_or_default().iter().collect();
    for (value, &(effective, acked_at)) in &adds {
        let here = present.contains(value);
        match acked_at {
            Some(at) if !here && at < read.call => report.lost.push((*value).clone()),
            Some(_) if !here => report.concurrent_absent.push((*value).clone()),
            _ => {}
        }
        if here && !effective {
            report.unexpected.push((*value).clone());
        }
        if here && effective && acked_at.is_none() {
            report.recovered.push((*value).clone());
        }
    }
    for value in &present {
        if !adds.contains_key(value) {
            report.unexpected.push((*value).clone());
        }
    }
    for list in [
        &mut report.lost,
        &mut report.unexpected,
        &mut report.recovered,
        &mut report.concurrent_absent,
    ] {
        list.sort();
    }
    report.verdict = if report.lost.is_empty() && report.unexpected.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    Ok(report)
}

fn some(values: &[Value]) -> String {
    let shown: Vec<String> = values.iter().take(10).map(short).collect();
    let more = if values.len() > 10 {
        format!(" ... and {} more", values.len() - 10)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(" "))
}

impl fmt::Display for SetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sum = |g: fn(&SetKeyReport) -> usize| self.keys.iter().map(g).sum::<usize>();
        writeln!(
            f,
            "set: {} - {} keys; {} adds acknowledged, {} lost, {} unexpected, {} recovered, {} acknowledged during \
             the final read and absent from it",
            self.verdict,
            self.keys.len(),
            sum(|k| k.acknowledged),
            sum(|k| k.lost.len()),
            sum(|k| k.unexpected.len()),
            sum(|k| k.recovered.len()),
            sum(|k| k.concurrent_absent.len()),
        )?;
        for (shown, k) in self
            .keys
            .iter()
            .filter(|k| k.verdict != Verdict::Valid)
            .enumerate()
        {
            if shown == 3 {
                writeln!(f, "  ... and more keys")?;
                break;
            }
            let name = key_label(k.key.as_ref());
            if k.final_read_line.is_none() {
                writeln!(f, "  {name}unknown - no successful read")?;
                continue;
            }
            if !k.lost.is_empty() {
                writeln!(f, "  {name}lost {}", some(&k.lost))?;
            }
            if !k.unexpected.is_empty() {
                writeln!(f, "  {name}unexpected {}", some(&k.unexpected))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadOptions;

    fn check(edn: &str) -> SetReport {
        check_set(&History::parse_edn(edn, &ReadOptions::default()).unwrap()).unwrap()
    }

    #[test]
    fn lost_unexpected_recovered() {
        let r = check(
            "{:process 0 :type :invoke :f :add :value 1} {:process 0 :type :ok :f :add :value 1}
             {:process 0 :type :invoke :f :add :value 2} {:process 0 :type :ok :f :add :value 2}
             {:process 1 :type :invoke :f :add :value 3} {:process 1 :type :info :f :add :value 3}
             {:process 2 :type :invoke :f :add :value 4} {:process 2 :type :fail :f :add :value 4}
             {:process 3 :type :invoke :f :read :value nil}
             {:process 4 :type :invoke :f :add :value 6}
             {:process 4 :type :ok :f :add :value 6}
             {:process 3 :type :ok :f :read :value #{1 3 4 5}}",
        );
        let k = &r.keys[0];
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(k.lost, vec![Value::Int(2)]);
        assert_eq!(k.unexpected, vec![Value::Int(4), Value::Int(5)]);
        assert_eq!(k.recovered, vec![Value::Int(3)]);
        assert_eq!(k.concurrent_absent, vec![Value::Int(6)]);
        assert!(r.to_string().contains("lost 2"), "{r}");
    }

    #[test]
    fn complete_set_is_valid_and_no_read_is_unknown() {
        let adds = "{:process 0 :type :invoke :f :add :value 1} {:process 0 :type :ok :f :add :value 1}";
        assert_eq!(check(adds).verdict, Verdict::Unknown);
        let r = check(&format!(
            "{adds} {{:process 1 :type :invoke :f :read}} {{:process 1 :type :ok :f :read :value [1]}}"
        ));
        assert_eq!(r.verdict, Verdict::Valid);
    }

    #[test]
    fn bad_ops_are_model_errors() {
        let h = History::parse_edn(
            "{:process 0 :type :invoke :f :del :value 1}",
            &ReadOptions::default(),
        )
        .unwrap();
        assert!(check_set(&h).is_err());
        let h = History::parse_edn(
            "{:process 0 :type :invoke :f :read} {:process 0 :type :ok :f :read :value 3}",
            &ReadOptions::default(),
        )
        .unwrap();
        assert!(check_set(&h).is_err());
    }
}
