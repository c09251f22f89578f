//! Automatic compaction, as etcd's `--auto-compaction-mode` and `--auto-compaction-retention` do it. The leader
//! decides when and to which revision; the compaction itself is an ordinary replicated `Compact`. Sans IO: the
//! caller passes the time and the store's revisions on every tick of the leader clock.
//!
//! - **Periodic** (a retention window): the leader samples the current revision every tenth of the window (of an
//!   hour, for windows longer than an hour) and compacts to the newest sample at least one window old, so about
//!   a window of history is kept.
//! - **Revision** (a number of revisions): every five minutes the leader compacts to `current - retention`.
//!
//! A node that stops leading forgets its samples; a new leader starts sampling afresh (it keeps more history,
//! never less).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::mvcc::Revision;

/// How the store compacts its history on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AutoCompaction {
    /// Never (the default, as in etcd): clients compact.
    #[default]
    Off,
    /// Keep about this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(u64),
}

/// How often revision-mode compaction looks (etcd's five minutes).
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// Why `--auto-compaction-mode` and `--auto-compaction-retention` were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AutoCompactionError {
    /// A mode other than `periodic` and `revision`.
    #[error("auto-compaction mode {mode:?} is not one of periodic, revision")]
    Mode {
        /// What was given.
        mode: String,
    },
    /// A retention the mode cannot read.
    #[error(
        "auto-compaction retention {retention:?} is not a {expected} (periodic: hours as a number, or a duration such as 30m or 1h30m; revision: a number of revisions)"
    )]
    Retention {
        /// What was given.
        retention: String,
        /// What the mode expects.
        expected: &'static str,
    },
}

impl AutoCompaction {
    /// Parses etcd's flags: `mode` is `periodic` or `revision`; `retention` is `0` to turn compaction off, hours
    /// (`1`) or a duration (`30m`, `1h30m`) in periodic mode, a number of revisions in revision mode.
    pub fn parse(mode: &str, retention: &str) -> Result<Self, AutoCompactionError> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                if let Ok(hours) = retention.parse::<u64>() {
                    return Ok(match hours {
                        0 => Self::Off,
                        h => Self::Periodic(Duration::from_secs(h.saturating_mul(3600))),
                    });
                }
                match parse_go_duration(retention) {
                    Some(d) if d.is_zero() => Ok(Self::Off),
                    Some(d) => Ok(Self::Periodic(d)),
                    None => Err(AutoCompactionError::Retention {
                        retention: retention.to_string(),
                        expected: "duration",
                    }),
                }
            }
            "revision" => match retention.parse::<u64>() {
                Ok(0) => Ok(Self::Off),
                Ok(n) => Ok(Self::Revision(n)),
                Err(_) => Err(AutoCompactionError::Retention {
                    retention: retention.to_string(),
                    expected: "number of revisions",
                }),
            },
            other => Err(AutoCompactionError::Mode {
                mode: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for AutoCompaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => write!(f, "off"),
            Self::Periodic(d) => write!(f, "periodic, keeping {d:?}"),
            Self::Revision(n) => write!(f, "revision, keeping {n} revisions"),
        }
    }
}

/// A Go duration (`300ms`, `1.5h`, `1h30m`): what etcd's flag takes. `None` if it is not one.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The leader's compaction schedule. See the module docs.
#[derive(Debug)]
pub struct Compactor {
    policy: AutoCompaction,
    /// Periodic mode: (when, revision) samples, oldest first.
    samples: VecDeque<(Instant, Revision)>,
    /// When to look next; `None` until this node leads.
    next: Option<Instant>,
}

impl Compactor {
    /// A schedule for `policy`.
    pub fn new(policy: AutoCompaction) -> Self {
        Self {
            policy,
            samples: VecDeque::new(),
            next: None,
        }
    }

    /// One tick of the leader clock at `now`: whether this node leads, and the store's current and compact
    /// revisions. Returns the revision to compact to now, if any.
    pub fn tick(
        &mut self,
        now: Instant,
        leading: bool,
        revision: Revision,
        compacted: Revision,
    ) -> Option<Revision> {
        if !leading {
            self.samples.clear();
            self.next = None;
            return None;
        }
        let (interval, target) = match self.policy {
            AutoCompaction::Off => return None,
            AutoCompaction::Periodic(retention) => (retention.min(Duration::from_secs(3600)) / 10, None),
            AutoCompaction::Revision(keep) => (
                REVISION_CHECK_INTERVAL,
                Some(revision.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX))),
            ),
        };
        let next = *self.next.get_or_insert(match self.policy {
            // Sample at once; compact only after a check interval.
            AutoCompaction::Periodic(_) => now,
            _ => now + interval,
        });
        if now < next {
            return None;
        }
        self.next = Some(now + interval.max(Duration::from_millis(1)));
        let target = match (self.policy, target) {
            (AutoCompaction::Periodic(retention), _) => {
                self.samples.push_back((now, revision));
                let old_enough = self
                    .samples
                    .iter()
                    .rposition(|(at, _)| now.saturating_duration_since(*at) >= retention)?;
                let (_, target) = self.samples[old_enough];
                // Older samples can never be the target again.
                self.samples.drain(..old_enough);
                target
            }
            (_, Some(target)) => target,
            _ => return None,
        };
        (target > compacted).then_some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_as_etcd_reads_them() {
        let p = AutoCompaction::parse;
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(
            p("periodic", "2"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(7200)))
        );
        assert_eq!(
            p("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            p("periodic", "1h30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            p("periodic", "1.5h"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            p("periodic", "500ms"),
            Ok(AutoCompaction::Periodic(Duration::from_millis(500)))
        );
        assert_eq!(p("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        assert!(matches!(
            p("revision", "1h"),
            Err(AutoCompactionError::Retention { .. })
        ));
        assert!(matches!(
            p("periodic", "1d"),
            Err(AutoCompactionError::Retention { .. })
        ));
        assert!(matches!(
            p("periodic", ""),
            Err(AutoCompactionError::Retention { .. })
        ));
        assert!(matches!(p("hourly", "1"), Err(AutoCompactionError::Mode { .. })));
    }

    #[test]
    fn periodic_keeps_about_one_window_of_history() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = Compactor::new(AutoCompaction::Periodic(Duration::from_secs(100)));
        // Samples every 10 s; revision = 10 × seconds since start.
        let mut compactions = Vec::new();
        for s in 0..=250 {
            if let Some(rev) = c.tick(at(s), true, 10 * s as i64 + 1, 0) {
                compactions.push((s, rev));
            }
        }
        // The first compaction comes once a sample is a window old, to that sample's revision.
        assert_eq!(compactions[0], (100, 1));
        // Afterwards every 10 s, each to the revision of 100 s before.
        for (s, rev) in &compactions {
            assert_eq!(*rev, 10 * (*s as i64 - 100) + 1, "at {s} s");
        }
        assert_eq!(compactions.len(), 16);
    }

    #[test]
    fn revision_mode_compacts_every_five_minutes_to_current_minus_retention() {
        let t0 = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Revision(1000));
        assert_eq!(
            c.tick(t0, true, 5000, 0),
            None,
            "not before the first check interval"
        );
        assert_eq!(c.tick(t0 + Duration::from_secs(299), true, 5000, 0), None);
        assert_eq!(c.tick(t0 + REVISION_CHECK_INTERVAL, true, 5000, 0), Some(4000));
        // Nothing to do when the target is already compacted.
        assert_eq!(c.tick(t0 + 2 * REVISION_CHECK_INTERVAL, true, 4500, 4000), None);
        assert_eq!(
            c.tick(t0 + 3 * REVISION_CHECK_INTERVAL, true, 900, 0),
            None,
            "under the retention"
        );
    }

    #[test]
    fn a_follower_never_compacts_and_a_new_leader_starts_afresh() {
        let t0 = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Periodic(Duration::from_secs(10)));
        for s in 0..9 {
            assert_eq!(c.tick(t0 + Duration::from_secs(s), true, s as i64 + 1, 0), None);
        }
        assert_eq!(c.tick(t0 + Duration::from_secs(9), false, 10, 0), None);
        // Leading again: the old samples are gone, so nothing is a window old yet.
        assert_eq!(c.tick(t0 + Duration::from_secs(12), true, 13, 0), None);
        assert_eq!(c.tick(t0 + Duration::from_secs(22), true, 23, 0), Some(13));
        let mut off = Compactor::new(AutoCompaction::Off);
        assert_eq!(off.tick(t0 + Duration::from_secs(3600), true, 1_000_000, 0), None);
    }
}
