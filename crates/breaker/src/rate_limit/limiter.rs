use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Governor};

use super::RateLimited;
use crate::config::{self, ConfigError};

/// Decides whether a call with a given key may go ahead now.
///
/// Implementations must be cheap and must not block: the layer calls `check` on every request. A cluster-wide
/// limiter (a budget shared across replicas) implements this trait over its local view of the shared budget, for
/// example by leasing batches of tokens from a coordinator in the background.
pub trait RateLimiter<K: ?Sized>: Send + Sync + 'static {
    /// `Ok` to admit one call for `key`; `Err` with the time until one would be admitted.
    fn check(&self, key: &K) -> Result<(), RateLimited>;
}

/// A GCRA quota: `requests` per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Requests admitted per `per` on average. Positive; default `100`.
    pub requests: u32,
    /// The period. Positive; default 1 s.
    pub per: Duration,
    /// Requests admitted at once after a quiet period. Positive; default `requests`.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests: 100,
            per: Duration::from_secs(1),
            burst: 100,
        }
    }
}

impl RateLimitConfig {
    /// `requests` per `per`, burst equal to `requests`.
    pub fn new(requests: u32, per: Duration) -> Self {
        Self {
            requests,
            per,
            burst: requests,
        }
    }

    /// Sets [`burst`](Self::burst).
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.quota().map(|_| ())
    }

    fn quota(&self) -> Result<Quota, ConfigError> {
        let requests = NonZeroU32::new(self.requests).ok_or(ConfigError::Zero { field: "requests" })?;
        let burst = NonZeroU32::new(self.burst).ok_or(ConfigError::Zero { field: "burst" })?;
        config::positive_duration("per", self.per)?;
        let interval = self.per / requests.get();
        Quota::with_period(interval)
            .map(|q| q.allow_burst(burst))
            .ok_or(ConfigError::ZeroDuration {
                field: "per / requests",
                value: interval,
            })
    }
}

type Direct<C> = Governor<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as GovernorClock>::Instant>>;
type KeyedGov<K, C> = Governor<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as GovernorClock>::Instant>>;

/// One GCRA bucket for every request (governor's direct limiter). Ignores the key.
///
/// `C` is governor's clock: the default reads the real monotonic clock and does *not* follow `tokio::time::pause`;
/// tests use `governor::clock::FakeRelativeClock`.
pub struct GcraLimiter<C: GovernorClock = DefaultClock> {
    limiter: Direct<C>,
    clock: C,
}

impl<C: GovernorClock> fmt::Debug for GcraLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcraLimiter").finish_non_exhaustive()
    }
}

impl GcraLimiter {
    /// A limiter on the default clock.
    pub fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: GovernorClock + Clone> GcraLimiter<C> {
    /// A limiter on the given governor clock.
    pub fn with_clock(config: RateLimitConfig, clock: C) -> Result<Self, ConfigError> {
        let quota = config.quota()?;
        Ok(Self {
            limiter: Governor::direct_with_clock(quota, clock.clone()),
            clock,
        })
    }
}

impl<K: ?Sized, C> RateLimiter<K> for GcraLimiter<C>
where
    C: GovernorClock + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    fn check(&self, _key: &K) -> Result<(), RateLimited> {
        self.limiter
            .check()
            .map_err(|not_until| RateLimited::new(not_until.wait_time_from(self.clock.now())))
    }
}

/// One GCRA bucket per key (governor's keyed limiter on a `DashMap`).
///
/// Keys are kept until [`retain_recent`](Self::retain_recent) drops the ones whose bucket is full again; call it
/// periodically when keys come from clients.
pub struct KeyedGcraLimiter<K: Hash + Eq + Clone, C: GovernorClock = DefaultClock> {
    limiter: KeyedGov<K, C>,
    clock: C,
}

impl<K: Hash + Eq + Clone, C: GovernorClock> fmt::Debug for KeyedGcraLimiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedGcraLimiter").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> KeyedGcraLimiter<K> {
    /// A keyed limiter on the default clock; every key gets the same quota.
    pub fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: GovernorClock + Clone> KeyedGcraLimiter<K, C> {
    /// A keyed limiter on the given governor clock.
    pub fn with_clock(config: RateLimitConfig, clock: C) -> Result<Self, ConfigError> {
        let quota = config.quota()?;
        Ok(Self {
            limiter: Governor::new(quota, DashMapStateStore::default(), clock.clone()),
            clock,
        })
    }

    /// Forgets keys whose bucket has refilled (they behave exactly as new keys would).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }

    /// Number of keys currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

impl<K, C> RateLimiter<K> for KeyedGcraLimiter<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: GovernorClock + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| RateLimited::new(not_until.wait_time_from(self.clock.now())))
    }
}
