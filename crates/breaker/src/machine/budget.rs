//! A retry budget: retries capped at a fraction of recent requests, plus a small reserve.

use std::time::{Duration, Instant};

use super::window::TimeBuckets;
use crate::config::{self, ConfigError};

/// Retry budget settings (the shape of Finagle's and Linkerd's budgets).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryBudgetConfig {
    /// How long a request or retry counts towards the budget. Positive; default 10 s.
    pub ttl: Duration,
    /// Retries allowed per second of `ttl` regardless of traffic, so a quiet client can still retry. Default `10`.
    pub min_retries_per_sec: u32,
    /// Retries allowed as a percentage of requests within `ttl`. `[0, 100]`; default `20`.
    pub retry_percent: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 10,
            retry_percent: 20.0,
        }
    }
}

impl RetryBudgetConfig {
    /// Sets [`ttl`](Self::ttl).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets [`min_retries_per_sec`](Self::min_retries_per_sec).
    pub fn with_min_retries_per_sec(mut self, n: u32) -> Self {
        self.min_retries_per_sec = n;
        self
    }

    /// Sets [`retry_percent`](Self::retry_percent).
    pub fn with_retry_percent(mut self, percent: f64) -> Self {
        self.retry_percent = percent;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::positive_duration("ttl", self.ttl)?;
        config::percent("retry_percent", self.retry_percent, true)
    }
}

/// Number of time slots the budget's window is divided into.
const SLOTS: u32 = 10;

/// The retry budget state machine. Time is an argument.
///
/// Every original request is [deposited](Self::deposit); a retry may go ahead only if
/// [`try_withdraw`](Self::try_withdraw) says so. Withdraw *before* waiting out the backoff, so that retries sitting
/// in backoff already count (otherwise a burst of failures all pass the check before any retry is recorded).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    reserve: f64,
    buckets: TimeBuckets,
}

impl RetryBudget {
    /// A budget, if `config` is valid.
    pub fn new(config: RetryBudgetConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let reserve = f64::from(config.min_retries_per_sec) * config.ttl.as_secs_f64();
        Ok(Self {
            buckets: TimeBuckets::new(config.ttl, SLOTS),
            reserve,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RetryBudgetConfig {
        &self.config
    }

    /// Records an original request at `now`.
    pub fn deposit(&mut self, now: Instant) {
        self.buckets.add(now, [1, 0, 0]);
    }

    /// Retries still allowed at `now` (may be fractional).
    pub fn balance(&mut self, now: Instant) -> f64 {
        let [requests, retries, _] = self.buckets.totals(now);
        self.reserve + requests as f64 * self.config.retry_percent / 100.0 - retries as f64
    }

    /// Takes one retry from the budget if at least one is left; `false` means do not retry.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        if self.balance(now) >= 1.0 {
            self.buckets.add(now, [0, 1, 0]);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validate() {
        let bad = RetryBudgetConfig::default().with_retry_percent(150.0);
        assert!(
            matches!(bad.validate(), Err(ConfigError::PercentOutOfRange { value, .. }) if value == 150.0)
        );
        let bad = RetryBudgetConfig::default().with_ttl(Duration::ZERO);
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::ZeroDuration { field: "ttl", .. })
        ));
    }

    #[test]
    fn caps_retries_at_a_fraction_of_requests() {
        let cfg = RetryBudgetConfig::default()
            .with_min_retries_per_sec(0)
            .with_retry_percent(20.0);
        let mut b = RetryBudget::new(cfg).unwrap();
        let now = Instant::now();
        for _ in 0..100 {
            b.deposit(now);
        }
        let granted = (0..1000).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 20);
        // Once the window has passed, the budget is empty again (no requests, no reserve).
        assert!(!b.try_withdraw(now + Duration::from_secs(11)));
    }

    proptest! {
        /// Against a model that keeps every event: a withdrawal succeeds exactly when
        /// reserve + percent * requests - retries >= 1 over the events still in the window.
        #[test]
        fn budget_matches_model(
            min_per_sec in 0u32..3,
            percent in 0.0f64..=100.0,
            steps in prop::collection::vec((0u64..400, any::<bool>()), 1..200),
        ) {
            let ttl = Duration::from_secs(1);
            let cfg = RetryBudgetConfig::default().with_ttl(ttl).with_min_retries_per_sec(min_per_sec).with_retry_percent(percent);
            let mut b = RetryBudget::new(cfg).unwrap();
            let origin = Instant::now();
            let mut t = 0u64;
            let mut first = None;
            let mut events: Vec<(u64, bool)> = Vec::new(); // (slot, is_retry)
            for (dt, retry) in steps {
                t += dt;
                let now = origin + Duration::from_millis(t);
                let t0 = *first.get_or_insert(t);
                let slot = (t - t0) / 100; // 1 s in 10 slots
                if retry {
                    let live = events.iter().filter(|e| e.0 + 10 > slot);
                    let (req, ret) = live.fold((0u64, 0u64), |(a, b), e| if e.1 { (a, b + 1) } else { (a + 1, b) });
                    let allowed = f64::from(min_per_sec) + req as f64 * percent / 100.0 - ret as f64 >= 1.0;
                    prop_assert_eq!(b.try_withdraw(now), allowed);
                    if allowed {
                        events.push((slot, true));
                    }
                } else {
                    b.deposit(now);
                    events.push((slot, false));
                }
            }
        }
    }
}
