//! Sliding windows: a ring of the last N calls, and time buckets.

use std::time::{Duration, Instant};

/// Totals over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Totals {
    /// Nothing failed and nothing was slow: no rate can reach a threshold.
    pub(crate) fn is_clean(self) -> bool {
        self.failures == 0 && self.slow == 0
    }
}

/// The last `size` calls, as a ring of flags. No allocation after construction.
#[derive(Debug, Clone)]
pub(crate) struct CountWindow {
    ring: Vec<u8>,
    next: usize,
    len: usize,
    failures: u64,
    slow: u64,
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

impl CountWindow {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            ring: vec![0; size.max(1)],
            next: 0,
            len: 0,
            failures: 0,
            slow: 0,
        }
    }

    pub(crate) fn record(&mut self, failed: bool, slow: bool) {
        if self.len == self.ring.len() {
            let old = self.ring[self.next];
            self.failures -= u64::from(old & FAILED);
            self.slow -= u64::from((old & SLOW) >> 1);
        } else {
            self.len += 1;
        }
        self.ring[self.next] = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        self.failures += u64::from(failed);
        self.slow += u64::from(slow);
        self.next += 1;
        if self.next == self.ring.len() {
            self.next = 0;
        }
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals {
            calls: self.len as u64,
            failures: self.failures,
            slow: self.slow,
        }
    }
}

/// Counters over the last `buckets` time slots of `width` each. A bucket is reused (and reset) when time moves past
/// it, so no allocation after construction.
///
/// Slots are numbered from the first instant the window saw (its origin); the window at `now` is the slot containing
/// `now` and the `buckets - 1` slots before it.
#[derive(Debug, Clone)]
pub(crate) struct TimeBuckets {
    slots: Vec<(u64, [u64; 3])>,
    width_nanos: u64,
    origin: Option<Instant>,
}

const EMPTY: u64 = u64::MAX;

impl TimeBuckets {
    pub(crate) fn new(size: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let width = (size.as_nanos() / u128::from(buckets)).max(1);
        Self {
            slots: vec![(EMPTY, [0; 3]); buckets as usize],
            width_nanos: u64::try_from(width).unwrap_or(u64::MAX),
            origin: None,
        }
    }

    fn slot_of(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let since = now.saturating_duration_since(origin).as_nanos();
        u64::try_from(since / u128::from(self.width_nanos)).unwrap_or(u64::MAX - 1)
    }

    pub(crate) fn add(&mut self, now: Instant, counts: [u64; 3]) {
        let slot = self.slot_of(now);
        let n = self.slots.len() as u64;
        let entry = &mut self.slots[(slot % n) as usize];
        if entry.0 != slot {
            *entry = (slot, [0; 3]);
        }
        for (total, add) in entry.1.iter_mut().zip(counts) {
            *total += add;
        }
    }

    pub(crate) fn totals(&mut self, now: Instant) -> [u64; 3] {
        let current = self.slot_of(now);
        let n = self.slots.len() as u64;
        let mut sum = [0u64; 3];
        for (slot, counts) in &self.slots {
            if *slot != EMPTY && *slot <= current && slot + n > current {
                for (total, add) in sum.iter_mut().zip(counts) {
                    *total += add;
                }
            }
        }
        sum
    }
}

/// Either kind of window, as the breaker uses it.
#[derive(Debug, Clone)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeBuckets),
}

impl Window {
    pub(crate) fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        match self {
            Window::Count(w) => w.record(failed, slow),
            Window::Time(w) => w.add(now, [1, u64::from(failed), u64::from(slow)]),
        }
    }

    /// `n` successes that were not slow, at `now`.
    pub(crate) fn record_successes(&mut self, now: Instant, n: u64) {
        match self {
            // Past `size` records, the ring holds only successes whatever came before.
            Window::Count(w) => {
                for _ in 0..n.min(w.ring.len() as u64) {
                    w.record(false, false);
                }
            }
            Window::Time(w) => w.add(now, [n, 0, 0]),
        }
    }

    pub(crate) fn totals(&mut self, now: Instant) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => {
                let [calls, failures, slow] = w.totals(now);
                Totals {
                    calls,
                    failures,
                    slow,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The ring agrees with "count the flags among the last `size` records".
        #[test]
        fn count_window_matches_model(size in 1usize..20, records in prop::collection::vec((any::<bool>(), any::<bool>()), 0..100)) {
            let mut w = CountWindow::new(size);
            for (i, &(f, s)) in records.iter().enumerate() {
                w.record(f, s);
                let start = (i + 1).saturating_sub(size);
                let last = &records[start..=i];
                let model = Totals {
                    calls: last.len() as u64,
                    failures: last.iter().filter(|r| r.0).count() as u64,
                    slow: last.iter().filter(|r| r.1).count() as u64,
                };
                prop_assert_eq!(w.totals(), model);
            }
        }

        /// Time buckets agree with "sum the events whose slot lies in the last `buckets` slots".
        #[test]
        fn time_buckets_match_model(buckets in 1u32..8, width_ms in 1u64..50, steps in prop::collection::vec((0u64..200, 0u64..3), 1..80)) {
            let origin = Instant::now();
            let width = Duration::from_millis(width_ms);
            let mut w = TimeBuckets::new(width * buckets, buckets);
            let mut events: Vec<(u64, u64)> = Vec::new();
            let mut t = 0u64;
            let mut first = None;
            for (dt, count) in steps {
                t += dt;
                let t0 = *first.get_or_insert(t);
                let now = origin + Duration::from_millis(t);
                w.add(now, [count, 0, 0]);
                events.push(((t - t0) / width_ms, count));
                let current = (t - t0) / width_ms;
                let model: u64 = events.iter().filter(|(slot, _)| slot + u64::from(buckets) > current).map(|e| e.1).sum();
                prop_assert_eq!(w.totals(now)[0], model);
            }
        }
    }
}
