//! A small latency histogram with a sliding window, for the hedging layer's percentile.

use std::time::{Duration, Instant};

use crate::config::{self, ConfigError};

/// Sub-buckets per power of two: latencies are kept to within 25 %.
const SUB_BITS: u32 = 2;
const SUB: usize = 1 << SUB_BITS;
/// Buckets: exact below `SUB` ns, then `SUB` per power of two up to 2^64 ns.
const BUCKETS: usize = 64 * SUB;

fn bucket_of(nanos: u64) -> usize {
    if nanos < SUB as u64 {
        return nanos as usize;
    }
    let exponent = 63 - nanos.leading_zeros();
    let sub = (nanos >> (exponent - SUB_BITS)) as usize & (SUB - 1);
    exponent as usize * SUB + sub
}

/// The largest latency (in ns) that falls in `bucket`.
fn bucket_max(bucket: usize) -> u64 {
    if bucket < SUB {
        return bucket as u64;
    }
    let exponent = (bucket / SUB) as u32;
    let sub = (bucket % SUB) as u64;
    let shift = exponent - SUB_BITS;
    let upper = (SUB as u128 + u128::from(sub) + 1) << shift;
    u64::try_from(upper - 1).unwrap_or(u64::MAX)
}

/// Latencies seen over the last one to two `window`s, in log-scaled buckets (at most 25 % apart): 2 × 256
/// counters, no allocation after construction. Time is an argument.
///
/// Time is cut into periods of `window`; the histogram holds the current period and the one before, so a quantile
/// reflects between one and two windows of history and old latencies age out without a per-sample timestamp.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    window: Duration,
    origin: Option<Instant>,
    /// `(period, counts, total)` for the two most recent periods, indexed by period parity.
    slots: [(u64, Box<[u32; BUCKETS]>, u64); 2],
}

impl LatencyHistogram {
    /// An empty histogram over windows of `window` (positive).
    pub fn new(window: Duration) -> Result<Self, ConfigError> {
        config::positive_duration("window", window)?;
        Ok(Self {
            window,
            origin: None,
            slots: [
                (u64::MAX, Box::new([0; BUCKETS]), 0),
                (u64::MAX, Box::new([0; BUCKETS]), 0),
            ],
        })
    }

    fn period(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let since = now.saturating_duration_since(origin).as_nanos();
        u64::try_from(since / self.window.as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn live(period: u64, current: u64) -> bool {
        period != u64::MAX && period <= current && period + 1 >= current
    }

    /// Records one latency at `now`.
    pub fn record(&mut self, latency: Duration, now: Instant) {
        let current = self.period(now);
        let slot = &mut self.slots[(current % 2) as usize];
        if slot.0 != current {
            slot.0 = current;
            slot.1.fill(0);
            slot.2 = 0;
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = &mut slot.1[bucket_of(nanos)];
        *bucket = bucket.saturating_add(1);
        slot.2 += 1;
    }

    /// Latencies recorded in the window at `now`.
    pub fn count(&mut self, now: Instant) -> u64 {
        let current = self.period(now);
        self.slots
            .iter()
            .filter(|s| Self::live(s.0, current))
            .map(|s| s.2)
            .sum()
    }

    /// The `percentile` (in `(0, 100]`) of the latencies in the window at `now`, rounded up to its bucket's upper
    /// end (so at most 25 % above the exact nearest-rank value); `None` with fewer than `min_samples` latencies (or
    /// none).
    pub fn percentile(&mut self, percentile: f64, min_samples: u64, now: Instant) -> Option<Duration> {
        let current = self.period(now);
        let live: Vec<usize> = (0..2).filter(|&i| Self::live(self.slots[i].0, current)).collect();
        let total: u64 = live.iter().map(|&i| self.slots[i].2).sum();
        if total == 0 || total < min_samples {
            return None;
        }
        // Nearest rank: the smallest latency with at least `percentile` % of the latencies at or below it.
        let rank = ((percentile / 100.0) * total as f64)
            .ceil()
            .clamp(1.0, total as f64) as u64;
        let mut seen = 0u64;
        for bucket in 0..BUCKETS {
            seen += live
                .iter()
                .map(|&i| u64::from(self.slots[i].1[bucket]))
                .sum::<u64>();
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_max(bucket)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut previous = None;
        for n in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket_of(n);
            assert!(n <= bucket_max(b), "{n} above its bucket's max {}", bucket_max(b));
            if let Some(p) = previous {
                assert!(b >= p);
            }
            previous = Some(b);
            assert!((bucket_max(b) as f64) < (n.max(1) as f64) * 1.25 + 1.0);
        }
        assert!(LatencyHistogram::new(Duration::ZERO).is_err());
    }

    proptest! {
        /// Against a model keeping every sample: the percentile is the bucket maximum of the nearest-rank sample among
        /// the samples of the current and previous periods.
        #[test]
        fn percentile_matches_model(
            window_ms in 1u64..50,
            percentile in prop_oneof![Just(50.0), Just(95.0), Just(99.0), Just(100.0), 0.1f64..100.0],
            min_samples in 0u64..5,
            steps in prop::collection::vec((0u64..40, 0u64..2_000_000, any::<bool>()), 1..150),
        ) {
            let origin = Instant::now();
            let mut h = LatencyHistogram::new(Duration::from_millis(window_ms)).unwrap();
            let mut samples: Vec<(u64, u64)> = Vec::new(); // (period, nanos)
            let mut t = 0u64;
            let mut first = None;
            for (dt, nanos, query) in steps {
                t += dt;
                let now = origin + Duration::from_millis(t);
                let t0 = *first.get_or_insert(t);
                let period = (t - t0) / window_ms;
                if query {
                    let mut live: Vec<u64> = samples.iter().filter(|s| s.0 + 1 >= period).map(|s| s.1).collect();
                    live.sort_unstable();
                    let want = if live.is_empty() || (live.len() as u64) < min_samples {
                        None
                    } else {
                        let rank = ((percentile / 100.0) * live.len() as f64).ceil().clamp(1.0, live.len() as f64) as usize;
                        Some(Duration::from_nanos(bucket_max(bucket_of(live[rank - 1]))))
                    };
                    prop_assert_eq!(h.percentile(percentile, min_samples, now), want);
                    prop_assert_eq!(h.count(now), live.len() as u64);
                } else {
                    h.record(Duration::from_nanos(nanos), now);
                    samples.push((period, nanos));
                }
            }
        }
    }
}
