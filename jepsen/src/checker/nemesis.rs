//! The nemesis checker: a run whose requested nemesis never took effect is not a test of that fault. Reads the
//! `nemesis` events the injector records (see `crate::nemesis`) and counts, per requested nemesis, the fault
//! windows started and those with evidence that the fault bit.

use std::collections::BTreeMap;
use std::fmt;

use crate::checker::verdict::Verdict;
use crate::history::value::Value;
use crate::history::{EventType, History};

/// Per requested nemesis: how many faults were scheduled and how many took effect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupFired {
    /// Fault windows started.
    pub started: usize,
    /// Of those, windows with evidence that the fault took effect.
    pub took_effect: usize,
    /// Windows without such evidence.
    pub missed: Vec<i64>,
}

/// The nemesis checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NemesisReport {
    /// Invalid when a requested nemesis never took effect.
    pub verdict: Verdict,
    /// By requested nemesis.
    pub groups: BTreeMap<String, GroupFired>,
}

/// Checks that every requested nemesis (by the group names of `--nemesis`) took effect at least once, from the
/// nemesis events of `history`.
pub fn check_nemesis(history: &History, requested: &[String]) -> NemesisReport {
    // window -> (group, any effect)
    let mut windows: BTreeMap<i64, (String, bool)> = BTreeMap::new();
    for e in history.others() {
        if e.kind != EventType::Info || !(e.f.starts_with("start-") || e.f.starts_with("stop-")) {
            continue;
        }
        let Some(window) = e.value.get("window").and_then(Value::as_int) else {
            continue;
        };
        let entry = windows.entry(window).or_insert_with(|| (String::new(), false));
        if let Some(g) = e.value.get("group").and_then(Value::as_name) {
            entry.0 = g.to_owned();
        }
        if e.value.get("effect") == Some(&Value::Bool(true)) {
            entry.1 = true;
        }
    }
    let mut groups: BTreeMap<String, GroupFired> = requested
        .iter()
        .map(|g| (g.clone(), GroupFired::default()))
        .collect();
    for (window, (group, effect)) in windows {
        let g = groups.entry(group).or_default();
        g.started += 1;
        if effect {
            g.took_effect += 1;
        } else {
            g.missed.push(window);
        }
    }
    let verdict = if requested
        .iter()
        .all(|r| groups.get(r).is_some_and(|g| g.took_effect > 0))
    {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    NemesisReport { verdict, groups }
}

/// `nemesis: VALID - partition 2/2 took effect, kill 1/1`.
impl fmt::Display for NemesisReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .groups
            .iter()
            .map(|(name, g)| {
                let mut s = format!("{name} {}/{} took effect", g.took_effect, g.started);
                if !g.missed.is_empty() {
                    let w: Vec<String> = g.missed.iter().map(|w| w.to_string()).collect();
                    s.push_str(&format!(" (no effect in windows {})", w.join(", ")));
                }
                s
            })
            .collect();
        let body = if parts.is_empty() {
            "no nemesis requested".to_owned()
        } else {
            parts.join("; ")
        };
        writeln!(f, "nemesis: {} - {body}", self.verdict)?;
        if self.verdict == Verdict::Invalid {
            writeln!(
                f,
                "  a requested nemesis never took effect: the run did not test what it was asked to"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadOptions;

    #[test]
    fn a_nemesis_that_never_bit_fails_the_run() {
        let h = History::parse_jsonl(
            r#"{"type":"invoke","process":"nemesis","f":"start-kill","value":{"window":0}}
{"type":"info","process":"nemesis","f":"start-kill","value":{"window":0,"group":"kill","effect":true}}
{"type":"invoke","process":"nemesis","f":"start-partition-one","value":{"window":1}}
{"type":"info","process":"nemesis","f":"start-partition-one","value":{"window":1,"group":"partition"}}
{"type":"info","process":"nemesis","f":"stop-partition-one","value":{"window":1,"effect":false}}"#,
            &ReadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = check_nemesis(&h, &["kill".into()]);
        assert_eq!(r.verdict, Verdict::Valid);
        let r = check_nemesis(&h, &["kill".into(), "partition".into()]);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.groups["partition"].missed, vec![1]);
        assert!(r.to_string().contains("partition 0/1 took effect"), "{r}");
        let r = check_nemesis(&h, &["pause".into()]);
        assert_eq!(
            r.verdict,
            Verdict::Invalid,
            "never scheduled counts as never took effect"
        );
    }
}
