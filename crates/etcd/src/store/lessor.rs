//! The leader's lease clock: when each lease expires. Sans-IO: time comes in as an argument.
//!
//! Expiry is not replicated state. Only the group leader runs a lessor; it decides on its own monotonic clock
//! that a lease expired and proposes a revoke through Raft, so every replica deletes the lease's keys at the
//! same revision. A node that becomes leader gives every live lease a full TTL from that moment (as etcd does):
//! it cannot know how long the old leader's keep-alives left, and extending is safe where expiring is not.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::mvcc::{Lease, LeaseId};

/// Deadlines of the live leases, kept by the leader.
#[derive(Debug, Default)]
pub struct Lessor {
    deadlines: HashMap<LeaseId, (Instant, Duration)>,
    primary: bool,
}

impl Lessor {
    /// A lessor that is not primary (not on the leader) and tracks nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this lessor is the primary one (its node leads the store group).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// This node became leader: every live lease gets a full TTL from `now`.
    pub fn promote(&mut self, now: Instant, leases: &[Lease]) {
        self.primary = true;
        self.deadlines = leases
            .iter()
            .map(|l| (l.id, (now + ttl_of(l.ttl), ttl_of(l.ttl))))
            .collect();
    }

    /// This node stopped leading: forget every deadline (the next leader keeps them).
    pub fn demote(&mut self) {
        self.primary = false;
        self.deadlines.clear();
    }

    /// A lease was granted (applied): it expires a TTL after `now`.
    pub fn granted(&mut self, lease: &Lease, now: Instant) {
        if self.primary {
            self.deadlines
                .insert(lease.id, (now + ttl_of(lease.ttl), ttl_of(lease.ttl)));
        }
    }

    /// A lease was revoked (applied).
    pub fn revoked(&mut self, id: LeaseId) {
        self.deadlines.remove(&id);
    }

    /// Reconciles with the leases the state machine holds: a lease the lessor does not track yet (granted by an
    /// earlier leader and applied after this one took over) gets a full TTL from `now`; with `drop_unknown`, a
    /// tracked lease the state machine no longer has (revoked) is forgotten. Does nothing unless primary.
    pub fn sync(&mut self, now: Instant, leases: &[Lease], drop_unknown: bool) {
        if !self.primary {
            return;
        }
        for lease in leases {
            self.deadlines
                .entry(lease.id)
                .or_insert_with(|| (now + ttl_of(lease.ttl), ttl_of(lease.ttl)));
        }
        if drop_unknown {
            let live: std::collections::HashSet<LeaseId> = leases.iter().map(|l| l.id).collect();
            self.deadlines.retain(|id, _| live.contains(id));
        }
    }

    /// A keep-alive: the lease expires a full TTL after `now`. Returns the TTL, or `None` when the lease is
    /// unknown or has already expired (the revoke may still be on its way through Raft).
    pub fn renew(&mut self, id: LeaseId, now: Instant) -> Option<Duration> {
        let (deadline, ttl) = self.deadlines.get_mut(&id)?;
        if *deadline <= now {
            return None;
        }
        *deadline = now + *ttl;
        Some(*ttl)
    }

    /// How long until the lease expires, or `None` when unknown here.
    pub fn remaining(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        self.deadlines
            .get(&id)
            .map(|(deadline, _)| deadline.saturating_duration_since(now))
    }

    /// The leases whose deadline has passed, in id order. They stay tracked until their revoke is applied, so
    /// a keep-alive cannot resurrect them.
    pub fn expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut ids: Vec<_> = self
            .deadlines
            .iter()
            .filter(|(_, (d, _))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest deadline, to know when to look again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.values().map(|(d, _)| *d).min()
    }
}

fn ttl_of(seconds: i64) -> Duration {
    Duration::from_secs(seconds.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: LeaseId, ttl: i64) -> Lease {
        Lease { id, ttl }
    }

    #[test]
    fn only_the_primary_tracks_leases() {
        let now = Instant::now();
        let mut lessor = Lessor::new();
        lessor.granted(&lease(1, 5), now);
        assert_eq!(lessor.remaining(1, now), None);
        lessor.promote(now, &[lease(1, 5)]);
        assert_eq!(lessor.remaining(1, now), Some(Duration::from_secs(5)));
        lessor.demote();
        assert_eq!(
            lessor.expired(now + Duration::from_secs(60)),
            Vec::<LeaseId>::new()
        );
    }

    #[test]
    fn keep_alive_extends_and_expiry_is_final() {
        let t0 = Instant::now();
        let mut lessor = Lessor::new();
        lessor.promote(t0, &[]);
        lessor.granted(&lease(7, 10), t0);
        assert_eq!(
            lessor.renew(7, t0 + Duration::from_secs(8)),
            Some(Duration::from_secs(10))
        );
        assert!(lessor.expired(t0 + Duration::from_secs(17)).is_empty());
        assert_eq!(lessor.expired(t0 + Duration::from_secs(18)), vec![7]);
        assert_eq!(
            lessor.renew(7, t0 + Duration::from_secs(18)),
            None,
            "an expired lease cannot be renewed"
        );
        lessor.revoked(7);
        assert!(lessor.expired(t0 + Duration::from_secs(99)).is_empty());
    }

    #[test]
    fn sync_adopts_leases_applied_after_promotion_and_drops_revoked_ones() {
        let t0 = Instant::now();
        let mut lessor = Lessor::new();
        lessor.sync(t0, &[lease(1, 5)], true);
        assert_eq!(
            lessor.remaining(1, t0),
            None,
            "a follower's lessor tracks nothing"
        );
        lessor.promote(t0, &[]);
        let t1 = t0 + Duration::from_secs(1);
        lessor.sync(t1, &[lease(1, 5)], true);
        assert_eq!(lessor.remaining(1, t1), Some(Duration::from_secs(5)));
        lessor.sync(t1, &[], true);
        assert_eq!(lessor.remaining(1, t1), None);
    }

    #[test]
    fn a_new_leader_extends_every_lease() {
        let t0 = Instant::now();
        let mut lessor = Lessor::new();
        let later = t0 + Duration::from_secs(100);
        lessor.promote(later, &[lease(1, 3), lease(2, 30)]);
        assert_eq!(lessor.remaining(1, later), Some(Duration::from_secs(3)));
        assert_eq!(lessor.next_deadline(), Some(later + Duration::from_secs(3)));
    }
}
