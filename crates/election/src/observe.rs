//! Following who leads, sans-IO: fed each leader seen (after reads and watch events), it says which ones to
//! report, so that observers get every change once, in order.

/// A leader as observers see it: the key that holds the election and the value it proclaims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderRecord {
    /// The leader's key (`name/<lease hex>`).
    pub key: Vec<u8>,
    /// The proclaimed value (usually the leader's identity or address).
    pub value: Vec<u8>,
    /// The key's create revision: which leadership this is. Larger for every later leader.
    pub create_revision: i64,
    /// The revision of the latest proclamation.
    pub mod_revision: i64,
    /// The leader's lease.
    pub lease: i64,
    /// How many times the key was written (1 + proclamations).
    pub version: i64,
}

impl LeaderRecord {
    pub(crate) fn from_kv(kv: &etcd_client::KeyValue) -> Self {
        Self {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
            version: kv.version(),
        }
    }
}

/// Deduplicates and orders what an observer reports.
#[derive(Debug, Default)]
pub struct LeaderTracker {
    last: Option<(i64, i64)>,
}

impl LeaderTracker {
    /// A tracker that has reported nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The leader seen now (`None`: nobody leads). Returns it if it is news: a later leadership, or a later
    /// proclamation of the current one. Stale sightings (from a read older than one already reported) and
    /// repeats return `None`.
    pub fn saw(&mut self, leader: Option<&LeaderRecord>) -> Option<LeaderRecord> {
        let leader = leader?;
        let position = (leader.create_revision, leader.mod_revision);
        if self.last.is_some_and(|last| position <= last) {
            return None;
        }
        self.last = Some(position);
        Some(leader.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(create: i64, modified: i64) -> LeaderRecord {
        LeaderRecord {
            key: format!("e/{create:x}").into_bytes(),
            value: format!("v{modified}").into_bytes(),
            create_revision: create,
            mod_revision: modified,
            lease: create,
            version: 1,
        }
    }

    proptest! {
        // Seeds are printed on failure; replay with PROPTEST_RNG_SEED.
        /// Sightings arrive in any order (reads and watches race); reports are strictly ordered, never repeat,
        /// and end on the newest leader seen.
        #[test]
        fn reports_are_ordered_unique_and_end_on_the_newest(
            sightings in proptest::collection::vec(proptest::option::of((1i64..20, 0i64..5)), 1..60)
        ) {
            let mut tracker = LeaderTracker::new();
            let mut reported: Vec<(i64, i64)> = Vec::new();
            let mut newest: Option<(i64, i64)> = None;
            for sighting in &sightings {
                let leader = sighting.map(|(c, m)| record(c, c + m));
                if let Some(l) = &leader {
                    let p = (l.create_revision, l.mod_revision);
                    newest = Some(newest.map_or(p, |n| n.max(p)));
                }
                if let Some(r) = tracker.saw(leader.as_ref()) {
                    reported.push((r.create_revision, r.mod_revision));
                }
            }
            prop_assert!(reported.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(reported.last().copied(), newest);
        }
    }
}
