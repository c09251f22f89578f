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

/// A cheap, coarse clock: a background thread stores the time every `resolution` (1 ms by default), and
/// [`now`](Clock::now) only loads it. Clones share the thread, which stops once the last clone is dropped.
///
/// Reading the operating system's monotonic clock costs 20–50 ns in a virtual machine, and a circuit breaker reads
/// the time twice per call (start and end, for slow-call detection), which alone exceeds a 50 ns budget. This clock
/// costs an atomic load. The price is resolution: an elapsed time is known to within `resolution` (more if the
/// machine is so loaded that the thread is not scheduled on time), which is fine for slow-call durations and windows
/// of seconds, and wrong for measuring sub-millisecond latencies (adaptive concurrency on a fast backend). It does
/// not follow `tokio::time::pause`; tests use [`ManualClock`].
#[derive(Clone)]
pub struct CoarseClock {
    origin: Instant,
    /// The time since `origin` ([`pack`]ed), as last stored by the thread; `None` if the thread could not be started (then
    /// `now` reads the standard clock).
    ticks: Option<Arc<AtomicU64>>,
    resolution: Duration,
}

impl CoarseClock {
    /// A clock updated every millisecond.
    pub fn new() -> Self {
        Self::with_resolution(Duration::from_millis(1))
    }

    /// A clock updated every `resolution` (at least 100 µs).
    pub fn with_resolution(resolution: Duration) -> Self {
        let resolution = resolution.max(Duration::from_micros(100));
        let origin = Instant::now();
        let ticks = Arc::new(AtomicU64::new(0));
        let weak = Arc::downgrade(&ticks);
        let spawned = std::thread::Builder::new()
            .name("trestle-coarse-clock".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(resolution);
                    let Some(ticks) = weak.upgrade() else { break };
                    ticks.store(pack(origin.elapsed()), Ordering::Release);
                }
            });
        Self {
            origin,
            ticks: spawned.is_ok().then_some(ticks),
            resolution,
        }
    }

    /// How often the time is refreshed.
    pub fn resolution(&self) -> Duration {
        self.resolution
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CoarseClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoarseClock")
            .field("resolution", &self.resolution)
            .field("ticking", &self.ticks.is_some())
            .finish()
    }
}

impl Clock for CoarseClock {
    fn now(&self) -> Instant {
        match &self.ticks {
            Some(ticks) => self.origin + unpack(ticks.load(Ordering::Acquire)),
            None => Instant::now(),
        }
    }
}

/// A duration as one word: seconds in the high 34 bits (five centuries), nanoseconds in the low 30, so that
/// unpacking needs no division.
fn pack(d: Duration) -> u64 {
    (d.as_secs().min((1 << 34) - 1) << 30) | u64::from(d.subsec_nanos())
}

fn unpack(word: u64) -> Duration {
    // The nanoseconds are below 10^9 < 2^30, so `Duration::new` does not carry.
    Duration::new(word >> 30, (word & ((1 << 30) - 1)) as u32)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::new(1, 999_999_999),
            Duration::new(86_400 * 365 * 100, 5),
        ] {
            assert_eq!(unpack(pack(d)), d);
        }
    }

    /// The coarse clock moves forward and never backwards. Waits on a condition (the clock moving), with a deadline,
    /// never a fixed sleep.
    #[test]
    fn coarse_clock_ticks_forward() {
        let clock = CoarseClock::with_resolution(Duration::from_micros(100));
        assert_eq!(clock.resolution(), Duration::from_micros(100));
        let start = clock.now();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = start;
        while last == start {
            assert!(Instant::now() < deadline, "the coarse clock never ticked");
            std::thread::yield_now();
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
        assert!(format!("{clock:?}").contains("ticking: true"));
    }
}
