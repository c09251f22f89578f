//! The election checker: at most one leader per term, and no write of a deposed leader after its successor's.
//!
//! The election workload's operations (per key, one election per key):
//! - `campaign`: completes `ok` with the term, the leader key's create revision (an integer);
//! - `write`: invoked with `[term element]`: a write to the log, fenced on the leadership of that term;
//! - `resign`: invoked with the term; `ok` means the candidate still led when the resignation took effect;
//! - `read`: completes `ok` with the log's elements in the order they landed (the final read).
//!
//! An election is a lock whose token is the term, so this is the lock checker ([`check_lock`](crate::checker::lock::check_lock))
//! under other names, with the findings said in an election's words:
//!
//! - **one leader per term**: no two successful campaigns got the same term;
//! - **terms increase**: a campaign that began after another had completed got a larger term;
//! - **no two leaders at once**: two leaderships that both ended in a successful resignation do not overlap;
//! - **deposed leaders' writes rejected**: in the log, no write of an older term lands after a write of a newer
//!   one (a deposed leader's write landing after its successor's first write);
//! - **no lost writes**: every acknowledged write, completed before the final read began, is in it, and the log
//!   holds nothing a write that could have succeeded did not write.

use std::fmt;

use crate::checker::linear::ModelError;
use crate::checker::lock::{LockViolation, Words, check_lock_shaped, write_findings};
use crate::checker::verdict::Verdict;
use crate::history::value::Value;
use crate::history::{History, key_label};

const ELECTION_WORDS: Words = Words {
    acquire: "campaign",
    release: "resign",
    append: "write",
    read: "read",
    model: "election",
};

/// One thing the election checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElectionViolation {
    /// Two successful campaigns got the same term: two leaders in one term.
    TwoLeadersInTerm {
        /// The term.
        term: i64,
        /// The first campaign.
        first: String,
        /// The second campaign.
        second: String,
    },
    /// A campaign that began after another had completed got a term that is not larger.
    TermWentBack {
        /// The earlier campaign and its term.
        earlier: String,
        /// The later campaign and its term.
        later: String,
    },
    /// Two leaderships, both ended by a successful resignation, overlap in time.
    TwoLeadersAtOnce {
        /// The first leadership (campaign to resignation).
        first: String,
        /// The overlapping one.
        second: String,
    },
    /// A write of an older term landed in the log after a write of a newer term: a deposed leader's write got
    /// through after its successor had written.
    DeposedWriteLanded {
        /// The newer term's write, earlier in the log.
        newer: String,
        /// The older term's write, later in the log.
        older: String,
    },
    /// An acknowledged write, completed before the final read began, is missing from the log.
    LostWrite {
        /// The write.
        write: String,
    },
    /// The log holds an element that no write that could have succeeded wrote.
    UnexpectedEntry {
        /// The element.
        element: String,
    },
}

impl From<LockViolation> for ElectionViolation {
    fn from(v: LockViolation) -> Self {
        match v {
            LockViolation::DuplicateToken { token, first, second } => ElectionViolation::TwoLeadersInTerm {
                term: token,
                first,
                second,
            },
            LockViolation::TokenWentBack { earlier, later } => {
                ElectionViolation::TermWentBack { earlier, later }
            }
            LockViolation::TwoHolders { first, second } => {
                ElectionViolation::TwoLeadersAtOnce { first, second }
            }
            LockViolation::StaleTokenAccepted { newer, older } => {
                ElectionViolation::DeposedWriteLanded { newer, older }
            }
            LockViolation::LostAppend { append } => ElectionViolation::LostWrite { write: append },
            LockViolation::UnexpectedElement { element } => ElectionViolation::UnexpectedEntry { element },
        }
    }
}

impl fmt::Display for ElectionViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The lock checker describes operations as "... with token T"; here the token is the term.
        let term = |s: &str| s.replace("with token", "in term").replace("token", "term");
        match self {
            ElectionViolation::TwoLeadersInTerm {
                term: t,
                first,
                second,
            } => write!(f, "two leaders in term {t}: {} and {}", term(first), term(second)),
            ElectionViolation::TermWentBack { earlier, later } => write!(
                f,
                "terms do not increase: {} completed before {} began",
                term(earlier),
                term(later)
            ),
            ElectionViolation::TwoLeadersAtOnce { first, second } => write!(
                f,
                "two leaders at once: {} and {}",
                term(first).replace("holding", "leading in"),
                term(second).replace("holding", "leading in")
            ),
            ElectionViolation::DeposedWriteLanded { newer, older } => write!(
                f,
                "a deposed leader's write landed after its successor's: {} comes after {} in the log",
                term(older),
                term(newer)
            ),
            ElectionViolation::LostWrite { write } => write!(f, "acknowledged write lost: {}", term(write)),
            ElectionViolation::UnexpectedEntry { element } => write!(
                f,
                "the log holds {element}, which no write that could have succeeded wrote"
            ),
        }
    }
}

/// What the election checker found for one key.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ElectionKeyReport {
    /// The key (`None` for an unkeyed history).
    pub key: Option<Value>,
    /// Invalid if a violation was found; unknown if writes were made but there is no successful read; else valid.
    pub verdict: Verdict,
    /// Successful campaigns (terms led).
    pub terms: usize,
    /// Acknowledged writes.
    pub writes: usize,
    /// What was wrong.
    pub violations: Vec<ElectionViolation>,
}

/// The election checker's result over all keys.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ElectionReport {
    /// Invalid if any key is, else unknown if any key is, else valid.
    pub verdict: Verdict,
    /// One report per key.
    pub keys: Vec<ElectionKeyReport>,
}

/// Checks an election workload (see the module docs for its operations): one leader per term, terms increasing,
/// no two leaders at once, no write of a deposed leader after its successor's, no acknowledged write lost.
///
/// ```
/// use trestle_jepsen::{History, ReadOptions, Verdict, check_election};
///
/// // Leader of term 5 is deposed; its late write lands after the term-9 leader's write.
/// let h = History::parse_edn(
///     "{:process 0 :type :invoke :f :campaign} {:process 0 :type :ok :f :campaign :value 5}
///      {:process 1 :type :invoke :f :campaign} {:process 1 :type :ok :f :campaign :value 9}
///      {:process 1 :type :invoke :f :write :value [9 1]} {:process 1 :type :ok :f :write :value [9 1]}
///      {:process 0 :type :invoke :f :write :value [5 2]} {:process 0 :type :ok :f :write :value [5 2]}
///      {:process 2 :type :invoke :f :read} {:process 2 :type :ok :f :read :value [1 2]}",
///     &ReadOptions::default(),
/// )?;
/// let report = check_election(&h)?;
/// assert_eq!(report.verdict, Verdict::Invalid);
/// assert!(report.to_string().contains("deposed leader"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_election(history: &History) -> Result<ElectionReport, ModelError> {
    let lock = check_lock_shaped(history, &ELECTION_WORDS)?;
    let keys = lock
        .keys
        .into_iter()
        .map(|k| ElectionKeyReport {
            key: k.key,
            verdict: k.verdict,
            terms: k.acquires,
            writes: k.appends,
            violations: k.violations.into_iter().map(ElectionViolation::from).collect(),
        })
        .collect();
    Ok(ElectionReport {
        verdict: lock.verdict,
        keys,
    })
}

impl fmt::Display for ElectionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: usize = self.keys.iter().map(|k| k.terms).sum();
        let writes: usize = self.keys.iter().map(|k| k.writes).sum();
        let violations: usize = self.keys.iter().map(|k| k.violations.len()).sum();
        writeln!(
            f,
            "election: {} - {} keys; {terms} terms led, {writes} writes acknowledged, violations: {violations}",
            self.verdict,
            self.keys.len()
        )?;
        let mut found = Vec::new();
        for k in &self.keys {
            let name = key_label(k.key.as_ref());
            if k.verdict == Verdict::Unknown {
                writeln!(
                    f,
                    "  {name}unknown - writes were made but there is no successful read"
                )?;
            }
            found.extend(k.violations.iter().map(|v| (name.clone(), v)));
        }
        write_findings(f, &found, ElectionViolation::kind)
    }
}

impl ElectionViolation {
    /// A short name of the kind of violation, for counts.
    fn kind(&self) -> &'static str {
        match self {
            ElectionViolation::TwoLeadersInTerm { .. } => "two leaders in a term",
            ElectionViolation::TermWentBack { .. } => "term went back",
            ElectionViolation::TwoLeadersAtOnce { .. } => "two leaders at once",
            ElectionViolation::DeposedWriteLanded { .. } => "deposed leader's write landed",
            ElectionViolation::LostWrite { .. } => "write lost",
            ElectionViolation::UnexpectedEntry { .. } => "unexpected entry",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadOptions;

    fn check(edn: &str) -> ElectionReport {
        check_election(&History::parse_edn(edn, &ReadOptions::default()).unwrap()).unwrap()
    }

    const GOOD: &str = "
        {:process 0 :type :invoke :f :campaign} {:process 0 :type :ok :f :campaign :value 3}
        {:process 0 :type :invoke :f :write :value [3 10]} {:process 0 :type :ok :f :write :value [3 10]}
        {:process 0 :type :invoke :f :resign :value 3} {:process 0 :type :ok :f :resign :value 3}
        {:process 1 :type :invoke :f :campaign} {:process 1 :type :ok :f :campaign :value 7}
        {:process 1 :type :invoke :f :write :value [7 11]} {:process 1 :type :ok :f :write :value [7 11]}
        {:process 0 :type :invoke :f :campaign} {:process 0 :type :fail :f :campaign}
        {:process 1 :type :invoke :f :write :value [7 12]} {:process 1 :type :fail :f :write :value [7 12]}
        {:process 1 :type :invoke :f :resign :value 7} {:process 1 :type :fail :f :resign :value 7}
        {:process 2 :type :invoke :f :read} {:process 2 :type :ok :f :read :value [10 11]}";

    #[test]
    fn a_clean_election_is_valid() {
        let r = check(GOOD);
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert_eq!((r.keys[0].terms, r.keys[0].writes), (2, 2));
        assert!(r.to_string().contains("2 terms led"), "{r}");
    }

    #[test]
    fn two_leaders_in_one_term_and_at_once() {
        let r = check(
            "{:process 0 :type :invoke :f :campaign} {:process 1 :type :invoke :f :campaign}
             {:process 0 :type :ok :f :campaign :value 4} {:process 1 :type :ok :f :campaign :value 4}
             {:process 0 :type :invoke :f :resign :value 4} {:process 1 :type :invoke :f :resign :value 4}
             {:process 0 :type :ok :f :resign :value 4} {:process 1 :type :ok :f :resign :value 4}",
        );
        assert_eq!(r.verdict, Verdict::Invalid);
        let v = &r.keys[0].violations;
        assert!(
            v.iter()
                .any(|v| matches!(v, ElectionViolation::TwoLeadersInTerm { term: 4, .. })),
            "{r}"
        );
        assert!(
            v.iter()
                .any(|v| matches!(v, ElectionViolation::TwoLeadersAtOnce { .. })),
            "{r}"
        );
        assert!(r.to_string().contains("two leaders in term 4"), "{r}");
    }

    #[test]
    fn a_deposed_leaders_late_write_and_a_lost_write_are_caught() {
        let r = check(&GOOD.replace("[10 11]", "[11 10]"));
        assert!(
            matches!(
                r.keys[0].violations[..],
                [ElectionViolation::DeposedWriteLanded { .. }]
            ),
            "{r}"
        );
        assert!(r.to_string().contains("(term 3)"), "{r}");
        let r = check(&GOOD.replace("[10 11]", "[10]"));
        assert!(
            matches!(r.keys[0].violations[..], [ElectionViolation::LostWrite { .. }]),
            "{r}"
        );
        // The rejected write (fail) must not be there.
        let r = check(&GOOD.replace("[10 11]", "[10 11 12]"));
        assert!(
            matches!(
                r.keys[0].violations[..],
                [ElectionViolation::UnexpectedEntry { .. }]
            ),
            "{r}"
        );
    }

    #[test]
    fn lock_operations_are_not_election_operations() {
        let h = History::parse_edn(
            "{:process 0 :type :invoke :f :acquire} {:process 0 :type :ok :f :acquire :value 1}",
            &ReadOptions::default(),
        )
        .unwrap();
        let e = check_election(&h).unwrap_err();
        assert!(
            e.message.contains("campaign, resign, write and read"),
            "{}",
            e.message
        );
    }
}
