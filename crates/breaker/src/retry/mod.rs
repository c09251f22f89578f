//! Retries with exponential backoff and jitter (`backon`), only for idempotent requests with retryable results, and
//! within a [`RetryBudget`] shared by every clone of the layer.
//!
//! The budget is charged *before* the backoff wait, so retries waiting in backoff already count against it (an
//! outage cannot queue up a wave of retries that all passed the check). When retries are exhausted, not allowed, or
//! over budget, the last result is returned as it was (errors boxed).
//!
//! Requests are copied with [`RetryPolicy::clone_request`]; HTTP requests whose body cannot be cloned (tonic's) are
//! buffered first by a [`BufferBodyLayer`] outside the retry layer. Jitter is drawn from an injected [`Random`](crate::Random) (one seed per call), so
//! tests are reproducible.

mod buffer;
mod future;
mod layer;
mod policy;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use backon::BackoffBuilder;
pub use buffer::{BodyTooLarge, BufferBody, BufferBodyLayer, BufferedBody};
pub use future::ResponseFuture;
pub use layer::RetryLayer;
use parking_lot::Mutex;
pub use policy::{
    GrpcRetryPolicy, HttpRetryPolicy, Idempotent, RetryFailures, RetryPolicy, clone_http_request,
};
use tower_service::Service;

use crate::BoxError;
use crate::clock::{SharedClock, SharedRandom};
use crate::config::{self, ConfigError};
use crate::machine::{RetryBudget, RetryBudgetConfig};

/// Retry settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Retries after the first attempt. Default `3`.
    pub max_retries: usize,
    /// First backoff. Positive; default 100 ms.
    pub min_delay: Duration,
    /// Backoff cap. At least `min_delay`; default 10 s.
    pub max_delay: Duration,
    /// Backoff growth per retry. At least 1; default `2`.
    pub factor: f32,
    /// Adds a random jitter in `(0, delay)` to each backoff. Default `true`.
    pub jitter: bool,
    /// The retry budget, shared by every clone of the layer; `None` disables it (not recommended). Default:
    /// [`RetryBudgetConfig::default`].
    pub budget: Option<RetryBudgetConfig>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            factor: 2.0,
            jitter: true,
            budget: Some(RetryBudgetConfig::default()),
        }
    }
}

impl RetryConfig {
    /// Sets [`max_retries`](Self::max_retries).
    pub fn with_max_retries(mut self, n: usize) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the backoff delays.
    pub fn with_backoff(mut self, min_delay: Duration, max_delay: Duration, factor: f32) -> Self {
        self.min_delay = min_delay;
        self.max_delay = max_delay;
        self.factor = factor;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`budget`](Self::budget).
    pub fn with_budget(mut self, budget: Option<RetryBudgetConfig>) -> Self {
        self.budget = budget;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::positive_duration("min_delay", self.min_delay)?;
        config::not_above(
            "min_delay (ns)",
            self.min_delay.as_nanos(),
            "max_delay (ns)",
            self.max_delay.as_nanos(),
        )?;
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(ConfigError::OutOfRange {
                field: "factor",
                range: "[1, inf)",
                value: f64::from(self.factor),
            });
        }
        if let Some(budget) = &self.budget {
            budget.validate()?;
        }
        Ok(())
    }

    pub(crate) fn backoff(&self, seed: u64) -> backon::ExponentialBackoff {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .with_max_times(self.max_retries);
        let builder = if self.jitter {
            builder.with_jitter().with_jitter_seed(seed)
        } else {
            builder
        };
        builder.build()
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RetryConfig,
    pub(crate) budget: Option<SharedRetryBudget>,
}

/// A retry budget shared by layers: the [`RetryLayer`] that made it and, through
/// [`RetryLayer::budget`], a [`HedgeLayer`](crate::HedgeLayer), whose hedges are extra attempts like retries.
/// Cheap to clone; clones share the budget.
#[derive(Debug, Clone)]
pub struct SharedRetryBudget {
    budget: Arc<Mutex<RetryBudget>>,
}

impl SharedRetryBudget {
    /// A budget, if `config` is valid.
    pub fn new(config: RetryBudgetConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            budget: Arc::new(Mutex::new(RetryBudget::new(config)?)),
        })
    }

    /// Records an original request at `now`.
    pub fn deposit(&self, now: std::time::Instant) {
        self.budget.lock().deposit(now);
    }

    /// Takes one extra attempt from the budget if one is left.
    pub fn try_withdraw(&self, now: std::time::Instant) -> bool {
        self.budget.lock().try_withdraw(now)
    }

    /// Extra attempts still allowed at `now`.
    pub fn balance(&self, now: std::time::Instant) -> f64 {
        self.budget.lock().balance(now)
    }
}

/// Wraps a service with retries. See the [module docs](self).
pub struct Retry<S, P> {
    inner: S,
    policy: P,
    shared: Arc<Shared>,
    clock: SharedClock,
    random: SharedRandom,
}

impl<S: Clone, P: Clone> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            shared: self.shared.clone(),
            clock: self.clock.clone(),
            random: self.random.clone(),
        }
    }
}

impl<S: std::fmt::Debug, P> std::fmt::Debug for Retry<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S, P> Retry<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, Req> Service<Req> for Retry<S, P>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    P: RetryPolicy<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        let shared = self.shared.clone();
        let clock = self.clock.clone();
        let mut backoff = shared.config.backoff(self.random.next_u64());
        if let Some(budget) = &shared.budget {
            budget.deposit(clock.now());
        }
        Box::pin(async move {
            // A copy to retry from, only for requests that may be retried at all.
            let template = if policy.is_idempotent(&req) {
                policy.clone_request(&req)
            } else {
                None
            };
            // The first attempt uses the service that was polled ready.
            let mut result = service.call(req).await.map_err(Into::into);
            while let Some(template) = &template {
                let shed = matches!(&result, Err(e) if crate::reject::is_local_rejection(&**e));
                if shed || !policy.is_retryable(result.as_ref()) {
                    break;
                }
                let Some(req) = policy.clone_request(template) else {
                    break;
                };
                let Some(delay) = backoff.next() else { break };
                if let Some(budget) = &shared.budget
                    && !budget.try_withdraw(clock.now())
                {
                    metrics::counter!("trestle_retry_budget_exhausted_total").increment(1);
                    break;
                }
                metrics::counter!("trestle_retry_attempts_total").increment(1);
                tokio::time::sleep(delay).await;
                if let Err(e) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
                    return Err(e.into());
                }
                result = service.call(req).await.map_err(Into::into);
            }
            result
        })
    }
}
