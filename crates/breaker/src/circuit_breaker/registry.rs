use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::CircuitBreakerHandle;
use crate::clock::{Clock, SharedClock, TokioClock};
use crate::config::{self, ConfigError};
use crate::machine::{BreakerMachine, CircuitBreakerConfig, State};

/// Picks the breaker for a request.
pub trait SelectBreaker<Req>: Clone {
    /// The breaker guarding `req`.
    fn select(&self, req: &Req) -> CircuitBreakerHandle;
}

impl<Req> SelectBreaker<Req> for CircuitBreakerHandle {
    fn select(&self, _req: &Req) -> CircuitBreakerHandle {
        self.clone()
    }
}

/// Bounds on a [`BreakerRegistry`]: how many breakers it keeps and how long an unused one stays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// The most breakers kept. When a new key arrives with the registry full, idle breakers go first, then the
    /// least recently used closed one, and only if every breaker is open, half-open or forced open, the least
    /// recently used of those. Positive; default `10_000`.
    pub max_breakers: usize,
    /// A breaker unused for this long is evicted, unless it is open, half-open or forced open (it is still
    /// protecting its backend; keep this well above the wait in open). `None`: never for idleness. Positive;
    /// default 15 minutes.
    pub idle_timeout: Option<Duration>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            max_breakers: 10_000,
            idle_timeout: Some(Duration::from_secs(15 * 60)),
        }
    }
}

impl RegistryConfig {
    /// Sets [`max_breakers`](Self::max_breakers).
    pub fn with_max_breakers(mut self, max: usize) -> Self {
        self.max_breakers = max;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn with_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::positive("max_breakers", self.max_breakers as u64)?;
        if let Some(idle) = self.idle_timeout {
            config::positive_duration("idle_timeout", idle)?;
        }
        Ok(())
    }
}

/// Keeps one breaker per key, created on first use with a shared configuration. Clones share the breakers.
///
/// The registry is bounded ([`RegistryConfig`]): at most `max_breakers` breakers, and breakers unused for
/// `idle_timeout` are evicted (when a new key arrives, at most every half `idle_timeout`, or on
/// [`evict_idle`](Self::evict_idle)). An evicted breaker forgets its window; calls still holding it finish
/// against it, and the key's next call gets a new, closed breaker. Open, half-open and forced-open breakers are
/// evicted only when the registry is full of them.
pub struct BreakerRegistry<K> {
    inner: Arc<RegistryInner<K>>,
}

struct RegistryInner<K> {
    name: Arc<str>,
    prototype: BreakerMachine,
    clock: SharedClock,
    table: Mutex<Table<K>>,
    evicted: metrics::Counter,
}

struct Entry {
    handle: CircuitBreakerHandle,
    last_used: Instant,
}

struct Table<K> {
    entries: HashMap<K, Entry>,
    config: RegistryConfig,
    last_sweep: Option<Instant>,
}

/// Whether a breaker holds nothing worth keeping once idle: it lets calls through.
fn lets_calls_through(handle: &CircuitBreakerHandle) -> bool {
    matches!(
        handle.state(),
        State::Closed | State::Disabled | State::MetricsOnly
    )
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// Evicts idle breakers that let calls through; returns how many.
    fn sweep(&mut self, now: Instant) -> usize {
        self.last_sweep = Some(now);
        let Some(idle) = self.config.idle_timeout else {
            return 0;
        };
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            now.saturating_duration_since(e.last_used) < idle || !lets_calls_through(&e.handle)
        });
        before - self.entries.len()
    }

    fn sweep_due(&self, now: Instant) -> bool {
        match (self.config.idle_timeout, self.last_sweep) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(idle), Some(last)) => now.saturating_duration_since(last) >= idle / 2,
        }
    }

    /// Evicts the least recently used breaker, preferring those that let calls through.
    fn evict_one(&mut self) -> bool {
        let lru = |through: bool| {
            self.entries
                .iter()
                .filter(|(_, e)| !through || lets_calls_through(&e.handle))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
        };
        match lru(true).or_else(|| lru(false)) {
            Some(key) => self.entries.remove(&key).is_some(),
            None => false,
        }
    }
}

impl<K> Clone for BreakerRegistry<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for BreakerRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.inner.table.lock();
        f.debug_struct("BreakerRegistry")
            .field("name", &self.inner.name)
            .field("breakers", &table.entries.len())
            .field("config", &table.config)
            .finish()
    }
}

impl<K: Hash + Eq + Clone + fmt::Display> BreakerRegistry<K> {
    /// A registry whose breakers are named `<name>/<key>` and configured with `config` (validated here once), with
    /// the default bounds ([`RegistryConfig::default`]).
    pub fn new(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Self::with_clock(name, config, TokioClock)
    }

    /// The same, on the given clock (for the breakers and for idleness).
    pub fn with_clock(
        name: impl Into<Arc<str>>,
        config: CircuitBreakerConfig,
        clock: impl Clock,
    ) -> Result<Self, ConfigError> {
        let name: Arc<str> = name.into();
        Ok(Self {
            inner: Arc::new(RegistryInner {
                evicted: metrics::counter!("trestle_breaker_registry_evicted_total", "registry" => name.to_string()),
                name,
                prototype: BreakerMachine::new(config)?,
                clock: Arc::new(clock),
                table: Mutex::new(Table {
                    entries: HashMap::new(),
                    config: RegistryConfig::default(),
                    last_sweep: None,
                }),
            }),
        })
    }

    /// Sets the bounds (for every clone). Takes effect from the next new key or [`evict_idle`](Self::evict_idle).
    pub fn with_bounds(self, bounds: RegistryConfig) -> Result<Self, ConfigError> {
        bounds.validate()?;
        self.inner.table.lock().config = bounds;
        Ok(self)
    }

    /// The breaker for `key`, created if needed (which may evict others, see the type's docs).
    pub fn get(&self, key: &K) -> CircuitBreakerHandle {
        let now = self.inner.clock.now();
        let mut table = self.inner.table.lock();
        if let Some(entry) = table.entries.get_mut(key) {
            entry.last_used = now;
            return entry.handle.clone();
        }
        let mut evicted = 0;
        if table.sweep_due(now) || table.entries.len() >= table.config.max_breakers {
            evicted += table.sweep(now);
        }
        while table.entries.len() >= table.config.max_breakers && table.evict_one() {
            evicted += 1;
        }
        self.inner.evicted.increment(evicted as u64);
        let handle = CircuitBreakerHandle::from_machine(
            format!("{}/{}", self.inner.name, key).into(),
            self.inner.prototype.clone(),
            self.inner.clock.clone(),
        );
        table.entries.insert(
            key.clone(),
            Entry {
                handle: handle.clone(),
                last_used: now,
            },
        );
        handle
    }

    /// Evicts the breakers idle for `idle_timeout` that let calls through (closed, disabled, metrics-only); returns
    /// how many. Call it periodically if new keys are rare.
    pub fn evict_idle(&self) -> usize {
        let now = self.inner.clock.now();
        let evicted = self.inner.table.lock().sweep(now);
        self.inner.evicted.increment(evicted as u64);
        evicted
    }

    /// Forgets the breaker for `key`; returns it if there was one.
    pub fn remove(&self, key: &K) -> Option<CircuitBreakerHandle> {
        self.inner.table.lock().entries.remove(key).map(|e| e.handle)
    }

    /// The keys with a breaker, and their breakers.
    pub fn breakers(&self) -> Vec<(K, CircuitBreakerHandle)> {
        self.inner
            .table
            .lock()
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), e.handle.clone()))
            .collect()
    }

    /// Number of breakers kept.
    pub fn len(&self) -> usize {
        self.inner.table.lock().entries.len()
    }

    /// Whether no breaker is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Selects a breaker from a [`BreakerRegistry`] by a key taken from the request.
pub struct Keyed<K, F> {
    registry: BreakerRegistry<K>,
    key: F,
}

impl<K, F: Clone> Clone for Keyed<K, F> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, F> fmt::Debug for Keyed<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("registry", &self.registry.inner.name)
            .finish()
    }
}

impl<K, F> Keyed<K, F> {
    /// Breakers from `registry`, keyed by `key(request)`.
    pub fn new(registry: BreakerRegistry<K>, key: F) -> Self {
        Self { registry, key }
    }
}

impl<K, F, Req> SelectBreaker<Req> for Keyed<K, F>
where
    K: Hash + Eq + Clone + fmt::Display,
    F: Fn(&Req) -> K + Clone,
{
    fn select(&self, req: &Req) -> CircuitBreakerHandle {
        self.registry.get(&(self.key)(req))
    }
}
