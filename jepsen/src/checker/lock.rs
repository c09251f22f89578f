//! The lock checker: fencing tokens, mutual exclusion, and the appends the lock protects.
//!
//! The lock workload's operations (per key, one lock per key):
//! - `acquire`: completes `ok` with the fencing token (an integer) as its value;
//! - `release`: invoked with the token; `ok` means the holder still held the lock when the release took effect;
//! - `append`: invoked with `[token element]`: an append to a list guarded by the token (the protected resource);
//! - `read`: completes `ok` with the protected list, in the resource's order (the final read).

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::checker::linear::ModelError;
use crate::checker::verdict::Verdict;
use crate::history::value::Value;
use crate::history::{History, Op, Outcome, key_label, short};

/// One thing the lock checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockViolation {
    /// Two successful acquires returned the same token.
    DuplicateToken {
        /// The token.
        token: i64,
        /// The first acquire.
        first: String,
        /// The second acquire.
        second: String,
    },
    /// An acquire that began after another had completed got a token that is not larger.
    TokenWentBack {
        /// The earlier acquire and its token.
        earlier: String,
        /// The later acquire and its token.
        later: String,
    },
    /// Two holders at once: both acquired and both released successfully, and their holds overlap.
    TwoHolders {
        /// The first hold (acquire to release).
        first: String,
        /// The overlapping hold.
        second: String,
    },
    /// The protected list took an element with an older token after one with a newer token: a stale holder's
    /// write got through. This is what happens without fencing.
    StaleTokenAccepted {
        /// The element with the newer token, earlier in the list.
        newer: String,
        /// The element with the older token, later in the list.
        older: String,
    },
    /// An acknowledged append, completed before the final read began, is missing from it.
    LostAppend {
        /// The append.
        append: String,
    },
    /// The final read holds an element no append that could have succeeded wrote.
    UnexpectedElement {
        /// The element.
        element: String,
    },
}

impl fmt::Display for LockViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockViolation::DuplicateToken { token, first, second } => {
                write!(f, "token {token} granted twice: {first} and {second}")
            }
            LockViolation::TokenWentBack { earlier, later } => {
                write!(
                    f,
                    "tokens do not increase: {earlier} completed before {later} began"
                )
            }
            LockViolation::TwoHolders { first, second } => {
                write!(f, "two holders at once: {first} and {second}")
            }
            LockViolation::StaleTokenAccepted { newer, older } => write!(
                f,
                "a stale token was accepted: {older} comes after {newer} in the protected list (the resource did not \
                 fence; expected for lock-unfenced under pauses, a bug for a fenced lock)"
            ),
            LockViolation::LostAppend { append } => write!(f, "acknowledged append lost: {append}"),
            LockViolation::UnexpectedElement { element } => {
                write!(
                    f,
                    "the protected list holds {element}, which no successful append wrote"
                )
            }
        }
    }
}

/// What the lock checker found for one key.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockKeyReport {
    /// The key (`None` for an unkeyed history).
    pub key: Option<Value>,
    /// Invalid if a violation was found; unknown if appends were made but there is no successful read to check
    /// them against; else valid.
    pub verdict: Verdict,
    /// Successful acquires.
    pub acquires: usize,
    /// Acknowledged appends.
    pub appends: usize,
    /// What was wrong.
    pub violations: Vec<LockViolation>,
}

/// The lock checker's result over all keys.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockReport {
    /// Invalid if any key is, else unknown if any key is, else valid.
    pub verdict: Verdict,
    /// One report per key.
    pub keys: Vec<LockKeyReport>,
}

/// Checks a lock workload (see the module docs for its operations): no token granted twice, tokens strictly
/// increasing in real time, no two holders at once (holds with a successful release must not overlap), the
/// protected list in token order, and no acknowledged append lost.
pub fn check_lock(history: &History) -> Result<LockReport, ModelError> {
    check_lock_shaped(history, &LOCK_WORDS)
}

/// The operation names of a lock-shaped history: the election checker reuses this checker with `campaign`,
/// `resign` and `write`.
pub(crate) struct Words {
    pub(crate) acquire: &'static str,
    pub(crate) release: &'static str,
    pub(crate) append: &'static str,
    pub(crate) read: &'static str,
    pub(crate) model: &'static str,
}

const LOCK_WORDS: Words = Words {
    acquire: "acquire",
    release: "release",
    append: "append",
    read: "read",
    model: "lock",
};

/// [`check_lock`] with other operation names.
pub(crate) fn check_lock_shaped(history: &History, words: &Words) -> Result<LockReport, ModelError> {
    let mut keys = Vec::new();
    for (key, ops) in history.by_key() {
        keys.push(check_key(key.cloned(), &ops, words)?);
    }
    let verdict = keys.iter().fold(Verdict::Valid, |acc, k| acc.and(k.verdict));
    Ok(LockReport { verdict, keys })
}

fn token_of(op: &Op, v: &Value, what: &str) -> Result<i64, ModelError> {
    v.as_int().ok_or_else(|| ModelError {
        line: op.invoke_line,
        message: format!("{what} must be an integer token, not {}", short(v)),
    })
}

fn check_key(key: Option<Value>, ops: &[&Op], words: &Words) -> Result<LockKeyReport, ModelError> {
    let mut acquires: Vec<(&Op, i64)> = Vec::new();
    let mut releases: Vec<(&Op, i64)> = Vec::new();
    let mut appends: Vec<(&Op, i64, &Value)> = Vec::new();
    let mut final_read: Option<&Op> = None;
    for op in ops {
        match op.f.as_str() {
            f if f == words.acquire && op.outcome == Outcome::Ok => acquires.push((
                op,
                token_of(op, &op.result, &format!("a {}'s result", words.acquire))?,
            )),
            f if f == words.acquire => {}
            f if f == words.release => releases.push((
                op,
                token_of(op, &op.value, &format!("a {}'s value", words.release))?,
            )),
            f if f == words.append => match op.value.as_seq() {
                Some([t, element]) => appends.push((
                    op,
                    token_of(op, t, &format!("a {}'s token", words.append))?,
                    element,
                )),
                _ => {
                    return Err(ModelError {
                        line: op.invoke_line,
                        message: format!(
                            "a {}'s value must be [token element], not {}",
                            words.append,
                            short(&op.value)
                        ),
                    });
                }
            },
            f if f == words.read && op.outcome == Outcome::Ok => {
                if op.result.as_seq().is_none() {
                    return Err(ModelError {
                        line: op.invoke_line,
                        message: format!("a read must return the protected list, not {}", short(&op.result)),
                    });
                }
                if final_read.is_none_or(|r| r.call < op.call) {
                    final_read = Some(op);
                }
            }
            f if f == words.read => {}
            other => {
                return Err(ModelError {
                    line: op.invoke_line,
                    message: format!(
                        "the {} model knows {}, {}, {} and {}, not {other}",
                        words.model, words.acquire, words.release, words.append, words.read
                    ),
                });
            }
        }
    }
    let mut violations = Vec::new();
    let with_token = |op: &Op, t: i64| format!("{op} with token {t}");

    // No token granted twice.
    let mut by_token: HashMap<i64, &Op> = HashMap::new();
    for &(op, t) in &acquires {
        if let Some(first) = by_token.insert(t, op) {
            violations.push(LockViolation::DuplicateToken {
                token: t,
                first: first.to_string(),
                second: op.to_string(),
            });
        }
    }

    // Tokens strictly increase in real time: walk acquires by invocation, folding in those completed before.
    let mut by_call = acquires.clone();
    by_call.sort_by_key(|(op, _)| op.call);
    let mut by_ret = acquires.clone();
    by_ret.sort_by_key(|(op, _)| op.ret);
    let mut done = 0;
    let mut max_before: Option<(&Op, i64)> = None;
    for &(op, t) in &by_call {
        while let Some(&(prev, pt)) = by_ret.get(done) {
            if prev.ret.is_none_or(|r| r >= op.call) {
                break;
            }
            if max_before.is_none_or(|(_, m)| pt > m) {
                max_before = Some((prev, pt));
            }
            done += 1;
        }
        if let Some((prev, pt)) = max_before
            && pt >= t
        {
            violations.push(LockViolation::TokenWentBack {
                earlier: with_token(prev, pt),
                later: with_token(op, t),
            });
        }
    }

    // No two holders at once: a hold runs from the acquire's completion to the invocation of the same process's
    // next release of that token, when that release succeeded.
    let mut releases_of: HashMap<(i64, i64), Vec<&Op>> = HashMap::new();
    for &(rel, t) in &releases {
        releases_of.entry((rel.process, t)).or_default().push(rel);
    }
    let mut holds: Vec<(u64, u64, String)> = Vec::new();
    for &(acq, t) in &acquires {
        let Some(acq_ret) = acq.ret else { continue };
        let release = releases_of
            .get(&(acq.process, t))
            .and_then(|rels| rels.iter().filter(|r| r.call > acq_ret).min_by_key(|r| r.call));
        if let Some(rel) = release
            && rel.outcome == Outcome::Ok
        {
            holds.push((
                acq_ret,
                rel.call,
                format!(
                    "p{} holding token {t} (lines {}-{})",
                    acq.process, acq.invoke_line, rel.invoke_line
                ),
            ));
        }
    }
    holds.sort();
    let mut widest: Option<&(u64, u64, String)> = None;
    for h in &holds {
        if let Some(w) = widest
            && h.0 < w.1
        {
            violations.push(LockViolation::TwoHolders {
                first: w.2.clone(),
                second: h.2.clone(),
            });
        }
        if widest.is_none_or(|w| h.1 > w.1) {
            widest = Some(h);
        }
    }

    // The protected list: token order, nothing lost, nothing unexpected.
    let acked = appends.iter().filter(|a| a.0.outcome == Outcome::Ok).count();
    let mut verdict_if_clean = Verdict::Valid;
    match final_read {
        None if !appends.is_empty() => verdict_if_clean = Verdict::Unknown,
        None => {}
        Some(read) => {
            let listed = read.result.as_seq().unwrap_or_default();
            let mut token_of_element: HashMap<&Value, (i64, bool)> = HashMap::new();
            for &(op, t, element) in &appends {
                let e = token_of_element.entry(element).or_insert((t, false));
                e.1 |= op.outcome != Outcome::Fail;
            }
            let mut newest: Option<(i64, &Value)> = None;
            for element in listed {
                match token_of_element.get(element) {
                    Some(&(t, true)) => {
                        if let Some((nt, ne)) = newest
                            && t < nt
                        {
                            violations.push(LockViolation::StaleTokenAccepted {
                                newer: format!("{} (token {nt})", short(ne)),
                                older: format!("{} (token {t})", short(element)),
                            });
                        }
                        if newest.is_none_or(|(nt, _)| t > nt) {
                            newest = Some((t, element));
                        }
                    }
                    _ => violations.push(LockViolation::UnexpectedElement {
                        element: short(element),
                    }),
                }
            }
            let present: HashSet<&Value> = listed.iter().collect();
            for &(op, t, element) in &appends {
                let before_read = op.ret.is_some_and(|r| r < read.call);
                if op.outcome == Outcome::Ok && before_read && !present.contains(element) {
                    violations.push(LockViolation::LostAppend {
                        append: with_token(op, t),
                    });
                }
            }
        }
    }
    let verdict = if violations.is_empty() {
        verdict_if_clean
    } else {
        Verdict::Invalid
    };
    Ok(LockKeyReport {
        key,
        verdict,
        acquires: acquires.len(),
        appends: acked,
        violations,
    })
}

impl fmt::Display for LockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let acquires: usize = self.keys.iter().map(|k| k.acquires).sum();
        let appends: usize = self.keys.iter().map(|k| k.appends).sum();
        let violations: usize = self.keys.iter().map(|k| k.violations.len()).sum();
        writeln!(
            f,
            "lock: {} - {} keys; {acquires} acquires, {appends} appends acknowledged, violations: {violations}",
            self.verdict,
            self.keys.len()
        )?;
        let mut found = Vec::new();
        for k in &self.keys {
            let name = key_label(k.key.as_ref());
            if k.verdict == Verdict::Unknown {
                writeln!(
                    f,
                    "  {name}unknown - appends were made but there is no successful read"
                )?;
            }
            found.extend(k.violations.iter().map(|v| (name.clone(), v)));
        }
        write_findings(f, &found, LockViolation::kind)
    }
}

impl LockViolation {
    /// A short name of the kind of violation, for counts.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            LockViolation::DuplicateToken { .. } => "token granted twice",
            LockViolation::TokenWentBack { .. } => "token went back",
            LockViolation::TwoHolders { .. } => "two holders",
            LockViolation::StaleTokenAccepted { .. } => "stale token accepted",
            LockViolation::LostAppend { .. } => "append lost",
            LockViolation::UnexpectedElement { .. } => "unexpected element",
        }
    }
}

/// Writes the findings `(key label, violation)`: a count per kind when there are several kinds or many findings,
/// then at most 8, and at most 3 of a kind when there are several kinds (so one stale holder's many writes do not
/// hide a lost append).
pub(crate) fn write_findings<V: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    found: &[(String, &V)],
    kind: impl Fn(&V) -> &'static str,
) -> fmt::Result {
    let mut kinds: Vec<(&'static str, usize)> = Vec::new();
    for (_, v) in found {
        match kinds.iter_mut().find(|(k, _)| *k == kind(v)) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind(v), 1)),
        }
    }
    if kinds.len() > 1 || found.len() > 8 {
        let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "  by kind: {}", counts.join(", "))?;
    }
    let per_kind = if kinds.len() > 1 { 3 } else { 8 };
    let mut shown_of: Vec<(&'static str, usize)> = Vec::new();
    let mut shown = 0;
    for (name, v) in found {
        let k = kind(v);
        let of_kind = match shown_of.iter_mut().find(|(x, _)| *x == k) {
            Some((_, n)) => n,
            None => {
                shown_of.push((k, 0));
                &mut shown_of.last_mut().expect("just pushed").1
            }
        };
        if shown == 8 || *of_kind == per_kind {
            continue;
        }
        *of_kind += 1;
        shown += 1;
        writeln!(f, "  {name}{v}")?;
    }
    if shown < found.len() {
        writeln!(f, "  ... and {} more", found.len() - shown)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadOptions;

    fn check(edn: &str) -> LockReport {
        check_lock(&History::parse_edn(edn, &ReadOptions::default()).unwrap()).unwrap()
    }

    const GOOD: &str = "
        {:process 0 :type :invoke :f :acquire} {:process 0 :type :ok :f :acquire :value 1}
        {:process 0 :type :invoke :f :append :value [1 :a]} {:process 0 :type :ok :f :append :value [1 :a]}
        {:process 0 :type :invoke :f :release :value 1} {:process 0 :type :ok :f :release :value 1}
        {:process 1 :type :invoke :f :acquire} {:process 1 :type :ok :f :acquire :value 2}
        {:process 1 :type :invoke :f :append :value [2 :b]} {:process 1 :type :ok :f :append :value [2 :b]}
        {:process 1 :type :invoke :f :release :value 2} {:process 1 :type :ok :f :release :value 2}
        {:process 2 :type :invoke :f :read} {:process 2 :type :ok :f :read :value [:a :b]}";

    #[test]
    fn a_clean_run_is_valid() {
        let r = check(GOOD);
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!((r.keys[0].acquires, r.keys[0].appends), (2, 2));
    }

    #[test]
    fn duplicate_and_decreasing_tokens() {
        let r = check(&GOOD.replace(":value 2}", ":value 1}").replace("[2 :b]", "[1 :b]"));
        let v = &r.keys[0].violations;
        assert!(
            v.iter()
                .any(|v| matches!(v, LockViolation::DuplicateToken { token: 1, .. })),
            "{r}"
        );
        assert!(
            v.iter().any(|v| matches!(v, LockViolation::TokenWentBack { .. })),
            "{r}"
        );
        assert!(
            !v.iter().any(|v| matches!(v, LockViolation::TwoHolders { .. })),
            "{r}"
        );
    }

    #[test]
    fn overlapping_holds_are_two_holders() {
        let r = check(
            "{:process 0 :type :invoke :f :acquire} {:process 0 :type :ok :f :acquire :value 1}
             {:process 1 :type :invoke :f :acquire} {:process 1 :type :ok :f :acquire :value 2}
             {:process 0 :type :invoke :f :release :value 1} {:process 0 :type :ok :f :release :value 1}
             {:process 1 :type :invoke :f :release :value 2} {:process 1 :type :ok :f :release :value 2}",
        );
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(
            matches!(r.keys[0].violations[0], LockViolation::TwoHolders { .. }),
            "{r}"
        );
        // A failed release means the lease ran out: the overlap is not proven.
        let r = check(
            "{:process 0 :type :invoke :f :acquire} {:process 0 :type :ok :f :acquire :value 1}
             {:process 1 :type :invoke :f :acquire} {:process 1 :type :ok :f :acquire :value 2}
             {:process 0 :type :invoke :f :release :value 1} {:process 0 :type :fail :f :release :value 1}",
        );
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
    }

    #[test]
    fn stale_and_lost_appends() {
        let r = check(&GOOD.replace("[:a :b]", "[:b :a]"));
        assert!(
            matches!(
                r.keys[0].violations[..],
                [LockViolation::StaleTokenAccepted { .. }]
            ),
            "{r}"
        );
        assert!(r.to_string().contains("lock-unfenced"), "{r}");
        let r = check(&GOOD.replace("[:a :b]", "[:b]"));
        assert!(
            matches!(r.keys[0].violations[..], [LockViolation::LostAppend { .. }]),
            "{r}"
        );
        let r = check(&GOOD.replace("[:a :b]", "[:a :b :c]"));
        assert!(
            matches!(
                r.keys[0].violations[..],
                [LockViolation::UnexpectedElement { .. }]
            ),
            "{r}"
        );
    }

    #[test]
    fn appends_without_a_read_are_unknown() {
        let r = check(
            &GOOD
                .replace(":f :read :value [:a :b]", ":f :read :value nil")
                .replace(":type :ok :f :read", ":type :fail :f :read"),
        );
        assert_eq!(r.verdict, Verdict::Unknown, "{r}");
    }
}
