use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tower_layer::Layer;

use super::{AdaptiveThrottle, Shared};
use crate::classify::AnyErrorIsFailure;
use crate::clock::{Clock, Random, ThreadRandom, TokioClock};
use crate::config::ConfigError;
use crate::machine::{ThrottleConfig, ThrottleMachine};

/// Applies adaptive throttling. Clones and every service made share the counts.
pub struct AdaptiveThrottleLayer<C = AnyErrorIsFailure> {
    shared: Arc<Shared>,
    classifier: C,
}

impl<C: Clone> Clone for AdaptiveThrottleLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C> fmt::Debug for AdaptiveThrottleLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveThrottleLayer").finish_non_exhaustive()
    }
}

impl AdaptiveThrottleLayer {
    /// Throttling per `config`, on tokio's clock and thread-local randomness.
    pub fn new(config: ThrottleConfig) -> Result<Self, ConfigError> {
        Self::with_clock_and_random(config, TokioClock, ThreadRandom)
    }

    /// The same with an injected clock and random source.
    pub fn with_clock_and_random(
        config: ThrottleConfig,
        clock: impl Clock,
        random: impl Random,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            shared: Arc::new(Shared {
                machine: Mutex::new(ThrottleMachine::new(config)?),
                clock: Arc::new(clock),
                random: Arc::new(random),
            }),
            classifier: AnyErrorIsFailure,
        })
    }
}

impl<C> AdaptiveThrottleLayer<C> {
    /// Uses `classifier` to decide which results were rejections by the backend.
    pub fn with_classifier<C2>(self, classifier: C2) -> AdaptiveThrottleLayer<C2> {
        AdaptiveThrottleLayer {
            shared: self.shared,
            classifier,
        }
    }

    /// The current local rejection probability.
    pub fn reject_probability(&self) -> f64 {
        let now = self.shared.clock.now();
        self.shared.machine.lock().reject_probability(now)
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveThrottleLayer<C> {
    type Service = AdaptiveThrottle<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveThrottle {
            inner,
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}
