use std::sync::Arc;

use tower_layer::Layer;

use super::{Hedge, HedgeConfig, Shared};
use crate::clock::{Clock, SharedClock, TokioClock};
use crate::config::ConfigError;
use crate::machine::LatencyHistogram;
use crate::retry::SharedRetryBudget;

/// Applies hedging. Clones of the layer, and every service it makes, share the latency histogram and the budget.
#[derive(Clone)]
pub struct HedgeLayer<P> {
    policy: P,
    shared: Arc<Shared>,
}

impl<P> std::fmt::Debug for HedgeLayer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<P> HedgeLayer<P> {
    /// Hedges per `config` the requests `policy` calls idempotent (and can copy).
    pub fn new(config: HedgeConfig, policy: P) -> Result<Self, ConfigError> {
        config.validate()?;
        let budget = config.budget.clone().map(SharedRetryBudget::new).transpose()?;
        Ok(Self {
            policy,
            shared: Arc::new(Shared::new(
                config.clone(),
                LatencyHistogram::new(config.window)?,
                budget,
                true,
                Arc::new(TokioClock),
            )),
        })
    }

    /// The same layer with `budget`, `deposits` and `clock` changed (a new histogram if the layer was cloned).
    fn rebuild(self, budget: Option<SharedRetryBudget>, deposits: bool, clock: SharedClock) -> Self {
        let old = &self.shared;
        let histogram = old.latencies.lock().histogram.clone();
        Self {
            shared: Arc::new(Shared::new(
                old.config.clone(),
                histogram,
                budget,
                deposits,
                clock,
            )),
            policy: self.policy,
        }
    }

    /// Draws hedges from `budget` (typically [`RetryLayer::budget`](crate::RetryLayer::budget)) instead of the
    /// layer's own. The budget's owner deposits the requests: put the retry layer inside this one, so every attempt
    /// reaches it. `None`: unlimited hedges.
    pub fn with_budget(self, budget: Option<SharedRetryBudget>) -> Self {
        let clock = self.shared.clock.clone();
        self.rebuild(budget, false, clock)
    }

    /// Uses `clock` for latencies and the budget's window (default [`TokioClock`]; the hedge delay itself is a
    /// `tokio::time` sleep).
    pub fn with_clock(self, clock: impl Clock) -> Self {
        let (budget, deposits) = (self.shared.budget.clone(), self.shared.deposits);
        self.rebuild(budget, deposits, Arc::new(clock))
    }

    /// The current hedge delay, if enough latencies have been seen.
    pub fn delay(&self) -> Option<std::time::Duration> {
        self.shared.fresh_delay(self.shared.clock.now())
    }
}

impl<S, P: Clone> Layer<S> for HedgeLayer<P> {
    type Service = Hedge<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            policy: self.policy.clone(),
            shared: self.shared.clone(),
        }
    }
}
