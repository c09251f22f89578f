//! Statistics: how operations ended, per function, and what the other processes (the nemesis) did.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{History, Outcome};

/// Counts for one function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Completed `ok`.
    pub ok: usize,
    /// Completed `fail`.
    pub fail: usize,
    /// Completed `info`, or never completed.
    pub info: usize,
}

impl Counts {
    /// All operations.
    pub fn total(&self) -> usize {
        self.ok + self.fail + self.info
    }

    /// The share that completed `ok`, from 0 to 1 (0 when there are none).
    pub fn ok_rate(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            self.ok as f64 / self.total() as f64
        }
    }
}

/// Operation outcomes per function, and event counts of non-client processes per function.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Client operations per `f`.
    pub by_f: BTreeMap<String, Counts>,
    /// All client operations.
    pub all: Counts,
    /// Events of other processes (the nemesis), per `f`.
    pub others: BTreeMap<String, usize>,
}

impl Stats {
    /// Counts a history.
    pub fn of(history: &History) -> Stats {
        let mut s = Stats::default();
        for op in history.ops() {
            let c = s.by_f.entry(op.f.clone()).or_default();
            for c in [c, &mut s.all] {
                match op.outcome {
                    Outcome::Ok => c.ok += 1,
                    Outcome::Fail => c.fail += 1,
                    Outcome::Info => c.info += 1,
                }
            }
        }
        for e in history.others() {
            *s.others.entry(e.f.clone()).or_default() += 1;
        }
        s
    }

    /// Functions that were attempted but never succeeded: usually a sign the workload or the cluster was broken.
    pub fn never_ok(&self) -> Vec<&str> {
        self.by_f
            .iter()
            .filter(|(_, c)| c.ok == 0)
            .map(|(f, _)| f.as_str())
            .collect()
    }
}

/// A small table: `f`, ok, fail, info, ok rate; then the nemesis events.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {:<12} {:>8} {:>8} {:>8} {:>8}",
            "f", "ok", "fail", "info", "ok-rate"
        )?;
        let rows = self
            .by_f
            .iter()
            .map(|(name, c)| (name.as_str(), c))
            .chain([("all", &self.all)]);
        for (name, c) in rows {
            writeln!(
                f,
                "  {:<12} {:>8} {:>8} {:>8} {:>7.1}%",
                name,
                c.ok,
                c.fail,
                c.info,
                100.0 * c.ok_rate()
            )?;
        }
        if self.others.is_empty() {
            writeln!(f, "  nemesis: no events")?;
        } else {
            let list: Vec<String> = self
                .others
                .iter()
                .map(|(name, n)| format!("{name} x{n}"))
                .collect();
            writeln!(f, "  nemesis: {}", list.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadOptions;

    #[test]
    fn counts_per_f_and_nemesis() {
        let h = History::parse_edn(
            "{:process 0 :type :invoke :f :read} {:process 0 :type :ok :f :read :value 1}
             {:process 1 :type :invoke :f :write :value 1} {:process 1 :type :fail :f :write :value 1}
             {:process :nemesis :type :info :f :start-partition} {:process :nemesis :type :info :f :start-partition}
             {:process 2 :type :invoke :f :write :value 2}",
            &ReadOptions::default(),
        )
        .unwrap();
        let s = Stats::of(&h);
        assert_eq!(
            s.by_f["read"],
            Counts {
                ok: 1,
                fail: 0,
                info: 0
            }
        );
        assert_eq!(
            s.by_f["write"],
            Counts {
                ok: 0,
                fail: 1,
                info: 1
            }
        );
        assert_eq!(s.all.total(), 3);
        assert_eq!(s.others["start-partition"], 2);
        assert_eq!(s.never_ok(), vec!["write"]);
        let text = s.to_string();
        assert!(text.contains("start-partition x2"), "{text}");
    }
}
