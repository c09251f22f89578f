//! Adaptive concurrency limit algorithms, in the spirit of Netflix's `concurrency-limits`.

use std::time::Duration;

use crate::config::{self, ConfigError};

/// One completed call, as a limit algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// How long the call took.
    pub rtt: Duration,
    /// Calls in flight when this one started (itself included).
    pub in_flight: u32,
    /// The call failed in a way that signals overload (classified a failure, or timed out).
    pub dropped: bool,
}

/// A concurrency limit that adapts to samples.
pub trait LimitAlgorithm: Send + 'static {
    /// The current limit (at least 1).
    fn limit(&self) -> u32;
    /// Learns from one completed call; returns the new limit.
    fn on_sample(&mut self, sample: Sample) -> u32;
}

/// Additive increase, multiplicative decrease settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AimdConfig {
    /// Starting limit. Default `20`.
    pub initial_limit: u32,
    /// Floor. Positive; default `1`.
    pub min_limit: u32,
    /// Ceiling. Default `200`.
    pub max_limit: u32,
    /// Factor applied on a drop. In `[0.5, 1)`; default `0.9`.
    pub backoff_ratio: f64,
    /// A call slower than this counts as a drop. Positive; default 5 s.
    pub timeout: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 1,
            max_limit: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AimdConfig {
    /// Sets the initial, minimum and maximum limits.
    pub fn with_limits(mut self, initial: u32, min: u32, max: u32) -> Self {
        self.initial_limit = initial;
        self.min_limit = min;
        self.max_limit = max;
        self
    }

    /// Sets [`backoff_ratio`](Self::backoff_ratio).
    pub fn with_backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_limits(self.initial_limit, self.min_limit, self.max_limit)?;
        if !(0.5..1.0).contains(&self.backoff_ratio) {
            return Err(ConfigError::OutOfRange {
                field: "backoff_ratio",
                range: "[0.5, 1)",
                value: self.backoff_ratio,
            });
        }
        config::positive_duration("timeout", self.timeout)
    }
}

fn check_limits(initial: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    config::positive("min_limit", u64::from(min))?;
    config::not_above("min_limit", u128::from(min), "initial_limit", u128::from(initial))?;
    config::not_above("initial_limit", u128::from(initial), "max_limit", u128::from(max))
}

/// AIMD: +1 when a call succeeds while the limit is being used (in flight at least half the limit), times
/// `backoff_ratio` on a drop or a timeout.
#[derive(Debug, Clone)]
pub struct Aimd {
    config: AimdConfig,
    limit: u32,
}

impl Aimd {
    /// An AIMD limit, if `config` is valid.
    pub fn new(config: AimdConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            limit: config.initial_limit,
            config,
        })
    }
}

impl LimitAlgorithm for Aimd {
    fn limit(&self) -> u32 {
        self.limit
    }

    fn on_sample(&mut self, sample: Sample) -> u32 {
        if sample.dropped || sample.rtt > self.config.timeout {
            self.limit =
                ((f64::from(self.limit) * self.config.backoff_ratio) as u32).max(self.config.min_limit);
        } else if u64::from(sample.in_flight) * 2 >= u64::from(self.limit) {
            self.limit = self.limit.saturating_add(1).min(self.config.max_limit);
        }
        self.limit
    }
}

/// Gradient settings (after Netflix's `Gradient2Limit`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GradientConfig {
    /// Starting limit. Default `20`.
    pub initial_limit: u32,
    /// Floor. Positive; default `1`.
    pub min_limit: u32,
    /// Ceiling. Default `200`.
    pub max_limit: u32,
    /// How much slower than the long-term RTT a call may be before the limit shrinks. At least 1; default `1.5`.
    pub rtt_tolerance: f64,
    /// Weight of a new value in the limit's moving average. In `(0, 1]`; default `0.2`.
    pub smoothing: f64,
    /// Samples in the long-term RTT average. Positive; default `600`.
    pub long_window: u32,
    /// Extra calls allowed above `limit * gradient` (headroom for growth). Default `4`.
    pub queue_size: u32,
}

impl Default for GradientConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 1,
            max_limit: 200,
            rtt_tolerance: 1.5,
            smoothing: 0.2,
            long_window: 600,
            queue_size: 4,
        }
    }
}

impl GradientConfig {
    /// Sets the initial, minimum and maximum limits.
    pub fn with_limits(mut self, initial: u32, min: u32, max: u32) -> Self {
        self.initial_limit = initial;
        self.min_limit = min;
        self.max_limit = max;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_limits(self.initial_limit, self.min_limit, self.max_limit)?;
        if !(self.rtt_tolerance.is_finite() && self.rtt_tolerance >= 1.0) {
            return Err(ConfigError::OutOfRange {
                field: "rtt_tolerance",
                range: "[1, inf)",
                value: self.rtt_tolerance,
            });
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(ConfigError::OutOfRange {
                field: "smoothing",
                range: "(0, 1]",
                value: self.smoothing,
            });
        }
        config::positive("long_window", u64::from(self.long_window))
    }
}

/// Gradient: compares each call's RTT with a long-term average; when calls get slower than `rtt_tolerance` times
/// the average the limit shrinks in proportion, otherwise it grows by up to `queue_size`.
#[derive(Debug, Clone)]
pub struct Gradient {
    config: GradientConfig,
    estimate: f64,
    long_rtt: Option<f64>,
}

impl Gradient {
    /// A gradient limit, if `config` is valid.
    pub fn new(config: GradientConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            estimate: f64::from(config.initial_limit),
            long_rtt: None,
            config,
        })
    }
}

impl LimitAlgorithm for Gradient {
    fn limit(&self) -> u32 {
        self.estimate as u32
    }

    fn on_sample(&mut self, sample: Sample) -> u32 {
        let rtt = sample.rtt.as_secs_f64().max(1e-9);
        let alpha = 2.0 / (f64::from(self.config.long_window) + 1.0);
        let long = match self.long_rtt {
            None => rtt,
            Some(prev) => prev * (1.0 - alpha) + rtt * alpha,
        };
        // Let the long-term average recover quickly after a period of high latency.
        let long = if long / rtt > 2.0 { long * 0.95 } else { long };
        self.long_rtt = Some(long);
        // An application that does not use its limit tells nothing about the backend's capacity.
        if f64::from(sample.in_flight) < self.estimate / 2.0 && !sample.dropped {
            return self.limit();
        }
        let gradient = (self.config.rtt_tolerance * long / rtt).clamp(0.5, 1.0);
        let gradient = if sample.dropped { 0.5 } else { gradient };
        let target = self.estimate * gradient + f64::from(self.config.queue_size);
        let smoothed = self.estimate * (1.0 - self.config.smoothing) + target * self.config.smoothing;
        self.estimate = smoothed.clamp(f64::from(self.config.min_limit), f64::from(self.config.max_limit));
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validate() {
        assert!(AimdConfig::default().with_backoff_ratio(1.0).validate().is_err());
        assert_eq!(
            AimdConfig::default().with_limits(10, 0, 20).validate(),
            Err(ConfigError::Zero { field: "min_limit" })
        );
        assert!(matches!(
            GradientConfig::default().with_limits(300, 1, 200).validate(),
            Err(ConfigError::Exceeds {
                field: "initial_limit",
                value: 300,
                ..
            })
        ));
    }

    #[test]
    fn gradient_shrinks_when_latency_rises_and_grows_when_it_recovers() {
        let mut g = Gradient::new(GradientConfig::default()).unwrap();
        let fast = Sample {
            rtt: Duration::from_millis(10),
            in_flight: 20,
            dropped: false,
        };
        for _ in 0..100 {
            g.on_sample(fast);
        }
        let grown = g.limit();
        assert!(grown > 20, "{grown}");
        let slow = Sample {
            rtt: Duration::from_millis(100),
            in_flight: grown,
            dropped: false,
        };
        for _ in 0..20 {
            g.on_sample(slow);
        }
        assert!(g.limit() < grown, "{} !< {grown}", g.limit());
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (0u64..10_000, 0u32..400, any::<bool>()).prop_map(|(ms, in_flight, dropped)| Sample {
            rtt: Duration::from_millis(ms),
            in_flight,
            dropped,
        })
    }

    proptest! {
        /// AIMD against its rules written as a plain model.
        #[test]
        fn aimd_matches_model(
            (min, initial, max) in (1u32..10, 0u32..50, 0u32..200).prop_map(|(a, b, c)| (a, a + b, a + b + c)),
            ratio in 0.5f64..1.0,
            samples in prop::collection::vec(sample(), 0..300),
        ) {
            let cfg = AimdConfig::default().with_limits(initial, min, max).with_backoff_ratio(ratio);
            let mut aimd = Aimd::new(cfg).unwrap();
            let mut model = initial;
            for s in samples {
                if s.dropped || s.rtt > Duration::from_secs(5) {
                    model = ((f64::from(model) * ratio).floor() as u32).max(min);
                } else if s.in_flight as u64 * 2 >= model as u64 {
                    model = (model + 1).min(max);
                }
                prop_assert_eq!(aimd.on_sample(s), model);
                prop_assert!((min..=max).contains(&aimd.limit()));
            }
        }

        /// Gradient never leaves [min, max].
        #[test]
        fn gradient_stays_in_bounds(
            (min, initial, max) in (1u32..10, 0u32..50, 0u32..200).prop_map(|(a, b, c)| (a, a + b, a + b + c)),
            samples in prop::collection::vec(sample(), 0..300),
        ) {
            let mut g = Gradient::new(GradientConfig::default().with_limits(initial, min, max)).unwrap();
            for s in samples {
                let l = g.on_sample(s);
                prop_assert!((min..=max).contains(&l), "{} not in {}..={}", l, min, max);
            }
        }
    }
}
