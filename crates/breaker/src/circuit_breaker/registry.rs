use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

use super::CircuitBreakerHandle;
use crate::clock::{Clock, SharedClock, TokioClock};
use crate::config::ConfigError;
use crate::machine::{BreakerMachine, CircuitBreakerConfig};

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

/// Keeps one breaker per key, created on first use with a shared configuration. Clones share the breakers.
///
/// Breakers are never evicted: keys should come from a bounded set (upstream hosts, routes), not from clients.
pub struct BreakerRegistry<K> {
    inner: Arc<RegistryInner<K>>,
}

struct RegistryInner<K> {
    name: Arc<str>,
    prototype: BreakerMachine,
    clock: SharedClock,
    breakers: Mutex<HashMap<K, CircuitBreakerHandle>>,
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
        f.debug_struct("BreakerRegistry")
            .field("name", &self.inner.name)
            .field("breakers", &self.inner.breakers.lock().len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone + fmt::Display> BreakerRegistry<K> {
    /// A registry whose breakers are named `<name>/<key>` and configured with `config` (validated here once).
    pub fn new(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Self::with_clock(name, config, TokioClock)
    }

    /// The same, on the given clock.
    pub fn with_clock(
        name: impl Into<Arc<str>>,
        config: CircuitBreakerConfig,
        clock: impl Clock,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            inner: Arc::new(RegistryInner {
                name: name.into(),
                prototype: BreakerMachine::new(config)?,
                clock: Arc::new(clock),
                breakers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The breaker for `key`, created if needed.
    pub fn get(&self, key: &K) -> CircuitBreakerHandle {
        let mut breakers = self.inner.breakers.lock();
        if let Some(b) = breakers.get(key) {
            return b.clone();
        }
        let handle = CircuitBreakerHandle::from_machine(
            format!("{}/{}", self.inner.name, key).into(),
            self.inner.prototype.clone(),
            self.inner.clock.clone(),
        );
        breakers.insert(key.clone(), handle.clone());
        handle
    }

    /// The keys with a breaker, and their breakers.
    pub fn breakers(&self) -> Vec<(K, CircuitBreakerHandle)> {
        self.inner
            .breakers
            .lock()
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect()
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
