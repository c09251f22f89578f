//! Hedged requests: when the first attempt has not answered by a high percentile of recent latencies, send the
//! same request again and take whichever answers first; the other is cancelled (its future dropped).
//!
//! Only requests that the [`RetryPolicy`] calls idempotent, and can copy, are hedged. The delay is the configured
//! percentile of the latencies seen over the last one to two windows ([`LatencyHistogram`]), kept within
//! `[min_delay, max_delay]`; with fewer than `min_samples` latencies nothing is hedged. Each hedge is an extra
//! attempt and is withdrawn from a retry budget, its own or (with [`HedgeLayer::with_budget`]) the one a
//! [`RetryLayer`](crate::RetryLayer) uses, so hedges and retries together cannot amplify an outage.
//!
//! A first answer that the policy calls retryable (a failure worth another attempt) does not win while the other
//! attempt is still running; the last answer is returned whatever it is.
//!
//! The delay is recomputed every 16 latencies (and when older than the window), so calls read it without a lock.
//!
//! The latency recorded for a call is the original attempt's, when it answers first with a result that is not
//! retryable; when the hedge wins, the original's time so far (a lower bound of its latency).

mod future;
mod layer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use future::ResponseFuture;
pub use layer::HedgeLayer;
use parking_lot::Mutex;
use tower_service::Service;

use crate::BoxError;
use crate::clock::SharedClock;
use crate::config::{self, ConfigError};
use crate::machine::{LatencyHistogram, RetryBudgetConfig};
use crate::retry::{RetryPolicy, SharedRetryBudget};

/// Hedging settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HedgeConfig {
    /// Hedge after this percentile of recent latencies. `(0, 100]`; default `95`.
    pub percentile: f64,
    /// No hedging before the window holds this many latencies. Default `20`.
    pub min_samples: u32,
    /// The hedge delay is never shorter. Default 1 ms.
    pub min_delay: Duration,
    /// Nor longer. At least `min_delay`; default 10 s.
    pub max_delay: Duration,
    /// Latencies are kept for one to two of these. Positive; default 30 s.
    pub window: Duration,
    /// The layer's own budget for hedges, used unless [`HedgeLayer::with_budget`] shares a retry layer's; `None`:
    /// unlimited (not recommended). Default: [`RetryBudgetConfig::default`].
    pub budget: Option<RetryBudgetConfig>,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            percentile: 95.0,
            min_samples: 20,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_secs(10),
            window: Duration::from_secs(30),
            budget: Some(RetryBudgetConfig::default()),
        }
    }
}

impl HedgeConfig {
    /// Sets [`percentile`](Self::percentile).
    pub fn with_percentile(mut self, percentile: f64) -> Self {
        self.percentile = percentile;
        self
    }

    /// Sets [`min_samples`](Self::min_samples).
    pub fn with_min_samples(mut self, n: u32) -> Self {
        self.min_samples = n;
        self
    }

    /// Sets [`min_delay`](Self::min_delay) and [`max_delay`](Self::max_delay).
    pub fn with_delay_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max;
        self
    }

    /// Sets [`window`](Self::window).
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets [`budget`](Self::budget).
    pub fn with_budget(mut self, budget: Option<RetryBudgetConfig>) -> Self {
        self.budget = budget;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::percent("percentile", self.percentile, false)?;
        config::not_above(
            "min_delay (ns)",
            self.min_delay.as_nanos(),
            "max_delay (ns)",
            self.max_delay.as_nanos(),
        )?;
        config::positive_duration("window", self.window)?;
        if let Some(budget) = &self.budget {
            budget.validate()?;
        }
        Ok(())
    }
}

/// The delay is recomputed from the histogram every this many latencies (and on every latency while there is none,
/// and when it is older than the window); calls read it without a lock.
const REFRESH_EVERY: u32 = 16;

pub(crate) struct Shared {
    pub(crate) config: HedgeConfig,
    latencies: Mutex<Latencies>,
    /// The hedge delay as last computed, in ns + 1; `0`: no hedging.
    cached_delay: AtomicU64,
    /// When it was computed, in ns since `origin`.
    cached_at: AtomicU64,
    origin: Instant,
    pub(crate) budget: Option<SharedRetryBudget>,
    /// Whether this layer deposits its requests in the budget (its own budget), or a retry layer does (shared).
    pub(crate) deposits: bool,
    pub(crate) clock: SharedClock,
}

#[derive(Clone)]
struct Latencies {
    histogram: LatencyHistogram,
    since_refresh: u32,
}

impl Shared {
    fn new(
        config: HedgeConfig,
        histogram: LatencyHistogram,
        budget: Option<SharedRetryBudget>,
        deposits: bool,
        clock: SharedClock,
    ) -> Self {
        Self {
            origin: clock.now(),
            config,
            latencies: Mutex::new(Latencies {
                histogram,
                since_refresh: 0,
            }),
            cached_delay: AtomicU64::new(0),
            cached_at: AtomicU64::new(0),
            budget,
            deposits,
            clock,
        }
    }

    fn nanos_since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Recomputes the delay from the histogram and publishes it.
    fn refresh(&self, latencies: &mut Latencies, now: Instant) -> Option<Duration> {
        let c = &self.config;
        let delay = latencies
            .histogram
            .percentile(c.percentile, u64::from(c.min_samples), now)
            .map(|p| p.clamp(c.min_delay, c.max_delay));
        let encoded = delay.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1) + 1);
        self.cached_delay.store(encoded, Ordering::Release);
        self.cached_at
            .store(self.nanos_since_origin(now), Ordering::Release);
        latencies.since_refresh = 0;
        delay
    }

    /// The hedge delay now, if there are enough latencies: the published one unless it is older than the window.
    fn delay(&self, now: Instant) -> Option<Duration> {
        let age = self
            .nanos_since_origin(now)
            .saturating_sub(self.cached_at.load(Ordering::Acquire));
        if u128::from(age) > self.config.window.as_nanos() {
            return self.fresh_delay(now);
        }
        match self.cached_delay.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos - 1)),
        }
    }

    /// The hedge delay, recomputed now.
    fn fresh_delay(&self, now: Instant) -> Option<Duration> {
        let mut latencies = self.latencies.lock();
        self.refresh(&mut latencies, now)
    }

    /// Records one latency.
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let mut latencies = self.latencies.lock();
        latencies.histogram.record(latency, now);
        latencies.since_refresh += 1;
        if latencies.since_refresh >= REFRESH_EVERY || self.cached_delay.load(Ordering::Acquire) == 0 {
            self.refresh(&mut latencies, now);
        }
    }
}

/// Wraps a service with hedging. See the [module docs](self).
pub struct Hedge<S, P> {
    inner: S,
    policy: P,
    shared: Arc<Shared>,
}

impl<S: Clone, P: Clone> Clone for Hedge<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug, P> std::fmt::Debug for Hedge<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S, P> Hedge<S, P> {
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

impl<S, P, Req> Service<Req> for Hedge<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let now = self.shared.clock.now();
        if self.shared.deposits
            && let Some(budget) = &self.shared.budget
        {
            budget.deposit(now);
        }
        let hedge = if self.policy.is_idempotent(&req) {
            self.shared
                .delay(now)
                .and_then(|delay| Some((self.policy.clone_request(&req)?, delay)))
        } else {
            None
        };
        // The service polled ready makes the first attempt; a clone stays here for the next call.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let first = service.call(req);
        ResponseFuture::new(
            first,
            hedge.map(|(copy, delay)| (service, copy, delay)),
            self.policy.clone(),
            self.shared.clone(),
            now,
        )
    }
}
