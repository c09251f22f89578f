use std::sync::Arc;

use tower_layer::Layer;

use super::{Retry, RetryConfig, Shared, SharedRetryBudget};
use crate::clock::{Clock, Random, SharedClock, SharedRandom, ThreadRandom, TokioClock};
use crate::config::ConfigError;

/// Applies retries. Clones of the layer, and every service it makes, share one retry budget.
#[derive(Clone)]
pub struct RetryLayer<P> {
    policy: P,
    shared: Arc<Shared>,
    clock: SharedClock,
    random: SharedRandom,
}

impl<P> std::fmt::Debug for RetryLayer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<P> RetryLayer<P> {
    /// Retries per `config`, for requests and results `policy` allows.
    pub fn new(config: RetryConfig, policy: P) -> Result<Self, ConfigError> {
        config.validate()?;
        let budget = config.budget.clone().map(SharedRetryBudget::new).transpose()?;
        Ok(Self {
            policy,
            shared: Arc::new(Shared { config, budget }),
            clock: Arc::new(TokioClock),
            random: Arc::new(ThreadRandom),
        })
    }

    /// Uses `clock` for the retry budget's window.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Draws jitter seeds from `random` (e.g. [`crate::SeededRandom`] in tests).
    pub fn with_random(mut self, random: impl Random) -> Self {
        self.random = Arc::new(random);
        self
    }

    /// Retries still allowed by the budget now (`None` without a budget).
    pub fn budget_balance(&self) -> Option<f64> {
        let now = self.clock.now();
        self.shared.budget.as_ref().map(|b| b.balance(now))
    }

    /// The retry budget (`None` without one), to share with a [`HedgeLayer`](crate::HedgeLayer) so hedges and
    /// retries draw on the same budget.
    pub fn budget(&self) -> Option<SharedRetryBudget> {
        self.shared.budget.clone()
    }
}

impl<S, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            policy: self.policy.clone(),
            shared: self.shared.clone(),
            clock: self.clock.clone(),
            random: self.random.clone(),
        }
    }
}
