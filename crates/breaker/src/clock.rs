//! Time as an injectable dependency.
//!
//! The state machines in [`crate::machine`] take the current time as an argument. The tower layers ask a
//! [`Clock`] for it, so tests can substitute [`ManualClock`] (or keep [`TokioClock`], which follows
//! `tokio::time::pause`/`advance`). Waiting (bulkhead queue, retry backoff, timeouts) always uses `tokio::time`, so
//! paused tokio time drives those too.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of monotonic time.
///
/// Implementations must never go backwards. The layers call `now` once or twice per request, so it should be cheap.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The default clock: `tokio::time::Instant::now()`, which follows tokio's paused test clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// `std::time::Instant::now()`. Does not follow tokio's paused clock. Equivalent to [`TokioClock`] in builds
/// without tokio's `test-util` feature, where tokio's clock *is* the standard one.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdClock;

impl Clock for StdClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone)]
pub struct ManualClock {
    origin: Instant,
    offset_nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that starts at the real current instant and then stands still.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves this clock (and every clone) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field(
                "offset",
                &Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst)),
            )
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

/// A shared, type-erased clock as the layers hold it.
#[allow(dead_code)] // unused when no layer needing a clock is enabled
pub(crate) type SharedClock = Arc<dyn Clock>;

/// A source of uniformly distributed numbers in `[0, 1)`, injected where a layer makes random decisions.
pub trait Random: Send + Sync + 'static {
    /// The next number, uniform in `[0, 1)`.
    fn next_f64(&self) -> f64;

    /// The next 64 random bits (used to seed per-call backoff jitter).
    fn next_u64(&self) -> u64 {
        (self.next_f64() * (u64::MAX as f64)) as u64
    }
}

/// Randomness from the thread-local generator of `rand`. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRandom;

impl Random for ThreadRandom {
    fn next_f64(&self) -> f64 {
        rand::random::<f64>()
    }

    fn next_u64(&self) -> u64 {
        rand::random::<u64>()
    }
}

/// A seeded, reproducible random source (for tests and simulations). Clones share the generator.
#[derive(Clone, Debug)]
pub struct SeededRandom {
    rng: Arc<parking_lot::Mutex<rand::rngs::StdRng>>,
}

impl SeededRandom {
    /// A generator seeded with `seed`; the same seed gives the same sequence.
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            rng: Arc::new(parking_lot::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed))),
        }
    }
}

impl Random for SeededRandom {
    fn next_f64(&self) -> f64 {
        use rand::Rng;
        self.rng.lock().random::<f64>()
    }

    fn next_u64(&self) -> u64 {
        use rand::RngCore;
        self.rng.lock().next_u64()
    }
}

#[allow(dead_code)] // unused when neither retry nor throttle is enabled
pub(crate) type SharedRandom = Arc<dyn Random>;
