//! Client-side adaptive throttling (Google SRE book, "Handling Overload").

use std::time::{Duration, Instant};

use super::window::TimeBuckets;
use crate::config::{self, ConfigError};

/// Adaptive throttling settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ThrottleConfig {
    /// The multiplier `K`: the backend may reject up to `(K - 1) / K` of requests before the client starts rejecting
    /// locally. At least 1; default `2` (the book's recommendation).
    pub k: f64,
    /// History the request and accept counts are kept over. Positive; default 2 minutes (the book's value).
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            k: 2.0,
            window: Duration::from_secs(120),
        }
    }
}

impl ThrottleConfig {
    /// Sets [`k`](Self::k).
    pub fn with_k(mut self, k: f64) -> Self {
        self.k = k;
        self
    }

    /// Sets [`window`](Self::window).
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.k.is_finite() && self.k >= 1.0) {
            return Err(ConfigError::OutOfRange {
                field: "k",
                range: "[1, inf)",
                value: self.k,
            });
        }
        config::positive_duration("window", self.window)
    }
}

const SLOTS: u32 = 12;

/// The throttle state machine. Time and randomness are arguments.
///
/// The probability of rejecting a request locally is `max(0, (requests - K * accepts) / (requests + 1))` over the
/// window, where `requests` counts every attempt (including those rejected locally) and `accepts` the ones the
/// backend accepted.
#[derive(Debug, Clone)]
pub struct ThrottleMachine {
    config: ThrottleConfig,
    buckets: TimeBuckets,
}

impl ThrottleMachine {
    /// A throttle, if `config` is valid.
    pub fn new(config: ThrottleConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            buckets: TimeBuckets::new(config.window, SLOTS),
            config,
        })
    }

    /// The current local rejection probability.
    pub fn reject_probability(&mut self, now: Instant) -> f64 {
        let [requests, accepts, _] = self.buckets.totals(now);
        let requests = requests as f64;
        ((requests - self.config.k * accepts as f64) / (requests + 1.0)).max(0.0)
    }

    /// Counts a request at `now` and decides whether it may be sent; `random` must be uniform in `[0, 1)`.
    /// Returns `Err(probability)` when it is rejected locally.
    pub fn admit(&mut self, now: Instant, random: f64) -> Result<(), f64> {
        let p = self.reject_probability(now);
        self.buckets.add(now, [1, 0, 0]);
        if random < p { Err(p) } else { Ok(()) }
    }

    /// Records that the backend accepted a request sent at (or completing at) `now`.
    pub fn record_accepted(&mut self, now: Instant) {
        self.buckets.add(now, [0, 1, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validate() {
        assert!(matches!(
            ThrottleConfig::default().with_k(0.5).validate(),
            Err(ConfigError::OutOfRange { field: "k", .. })
        ));
        assert!(
            ThrottleConfig::default()
                .with_window(Duration::ZERO)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn healthy_backend_is_never_throttled() {
        let mut t = ThrottleMachine::new(ThrottleConfig::default()).unwrap();
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(t.admit(now, 0.0).is_ok());
            t.record_accepted(now);
        }
        assert_eq!(t.reject_probability(now), 0.0);
    }

    proptest! {
        /// Against the formula over a model history; the probability stays in [0, 1).
        #[test]
        fn throttle_matches_model(
            k in 1.0f64..4.0,
            steps in prop::collection::vec((0u64..2_000, any::<bool>(), 0.0f64..1.0), 1..200),
        ) {
            let cfg = ThrottleConfig::default().with_k(k).with_window(Duration::from_secs(12));
            let mut m = ThrottleMachine::new(cfg).unwrap();
            let origin = Instant::now();
            let mut t = 0u64;
            let mut first = None;
            let mut events: Vec<(u64, bool)> = Vec::new(); // (slot, is_accept)
            for (dt, accepted, random) in steps {
                t += dt;
                let now = origin + Duration::from_millis(t);
                let slot = (t - *first.get_or_insert(t)) / 1000;
                let live = events.iter().filter(|e| e.0 + 12 > slot);
                let (req, acc) = live.fold((0f64, 0f64), |(r, a), e| if e.1 { (r, a + 1.0) } else { (r + 1.0, a) });
                let p = ((req - k * acc) / (req + 1.0)).max(0.0);
                prop_assert!((0.0..1.0).contains(&p));
                let got = m.admit(now, random);
                prop_assert_eq!(got.is_err(), random < p);
                events.push((slot, false));
                if got.is_ok() && accepted {
                    m.record_accepted(now);
                    events.push((slot, true));
                }
            }
        }
    }
}
