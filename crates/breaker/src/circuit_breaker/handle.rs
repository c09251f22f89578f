use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::CircuitOpen;
use crate::classify::Outcome;
use crate::clock::{Clock, SharedClock, TokioClock};
use crate::config::ConfigError;
use crate::machine::{
    Admission, BreakerMachine, BreakerMetrics, CircuitBreakerConfig, Permit, State, Transition,
};

/// A state change of a named breaker, as broadcast to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateChange {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// When (by the breaker's clock).
    pub at: Instant,
}

/// Keeps a hot atomic on a cache line of its own, away from the `Arc`'s reference counts and the lock.
#[repr(align(64))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// One deferred success, in the spare bits of the word.
const ONE_DEFERRED: u64 = 1 << Admission::SPARE_SHIFT;
/// The most deferred successes the word can count; beyond, successes go to the machine (which takes the count).
const MAX_DEFERRED: u64 = (1 << Admission::SPARE_BITS) - 1;

fn deferred_successes(word: u64) -> u64 {
    (word >> Admission::SPARE_SHIFT) & MAX_DEFERRED
}

/// Capacity of the state-change channel; a subscriber lagging further behind misses the oldest changes.
const EVENT_CAPACITY: usize = 64;

struct Counters {
    success: metrics::Counter,
    failure: metrics::Counter,
    ignored: metrics::Counter,
    rejected: metrics::Counter,
}

struct Shared {
    name: Arc<str>,
    /// `machine.admission()` with, in its spare bits, the number of deferred successes: successes that were not
    /// slow, counted here without the lock while the window held only successes (see [`Admission`]), not yet handed
    /// to the machine. Every operation on the machine first publishes `ask()` (so nothing is admitted or deferred
    /// from this word meanwhile), hands the deferred successes over, and finally publishes the new snapshot with a
    /// zero count. Calls in the closed, metrics-only and disabled states are admitted from this word.
    word: CacheLine<AtomicU64>,
    /// The configured slow-call duration (a copy, so the fast path needs no lock).
    slow_call_duration: Duration,
    machine: Mutex<BreakerMachine>,
    clock: SharedClock,
    events: broadcast::Sender<StateChange>,
    counters: Counters,
}

/// A circuit breaker: the state machine with a clock, events and metrics. Cheap to clone; clones share the breaker.
///
/// Metrics (through the `metrics` facade, labelled `breaker=<name>`): `trestle_breaker_calls_total{outcome}`
/// (`success`, `failure`, `ignored`), `trestle_breaker_rejected_total`, and
/// `trestle_breaker_transitions_total{from,to}`.
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreakerHandle {
    /// A breaker named `name` (for errors, events and metrics) on tokio's clock.
    pub fn new(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Self::with_clock(name, config, TokioClock)
    }

    /// A breaker on the given clock.
    pub fn with_clock(
        name: impl Into<Arc<str>>,
        config: CircuitBreakerConfig,
        clock: impl Clock,
    ) -> Result<Self, ConfigError> {
        Ok(Self::from_machine(
            name.into(),
            BreakerMachine::new(config)?,
            Arc::new(clock),
        ))
    }

    pub(crate) fn from_machine(name: Arc<str>, machine: BreakerMachine, clock: SharedClock) -> Self {
        let label = name.to_string();
        let counter = |outcome: &'static str| metrics::counter!("trestle_breaker_calls_total", "breaker" => label.clone(), "outcome" => outcome);
        let counters = Counters {
            success: counter("success"),
            failure: counter("failure"),
            ignored: counter("ignored"),
            rejected: metrics::counter!("trestle_breaker_rejected_total", "breaker" => label.clone()),
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self {
            shared: Arc::new(Shared {
                name,
                word: CacheLine(AtomicU64::new(machine.admission().to_bits())),
                slow_call_duration: machine.config().slow_call_duration,
                machine: Mutex::new(machine),
                clock,
                events,
                counters,
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// The current state.
    pub fn state(&self) -> State {
        // Deferred successes cannot change the state.
        self.shared.machine.lock().state()
    }

    /// Counts and rates over the current window.
    pub fn metrics(&self) -> BreakerMetrics {
        let now = self.shared.clock.now();
        self.locked(now, |m| m.metrics(now))
    }

    /// Subscribes to state changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.shared.events.subscribe()
    }

    /// Closes the breaker and clears its window.
    pub fn reset(&self) {
        self.operate(|m, _| m.reset());
    }

    /// Opens the breaker now, for the configured wait.
    pub fn trip(&self) {
        self.operate(|m, now| m.trip(now));
    }

    /// Rejects every call until [`reset`](Self::reset) (or another operator action).
    pub fn force_open(&self) {
        self.operate(|m, _| m.force_open());
    }

    /// Lets every call through and records nothing.
    pub fn disable(&self) {
        self.operate(|m, _| m.disable());
    }

    /// Lets every call through, records outcomes, never opens.
    pub fn metrics_only(&self) {
        self.operate(|m, _| m.metrics_only());
    }

    fn operate(&self, f: impl FnOnce(&mut BreakerMachine, Instant) -> Option<Transition>) {
        let now = self.shared.clock.now();
        let transition = self.locked(now, |m| f(m, now));
        self.emit(transition, now);
    }

    /// Runs `f` on the machine under its lock, after handing it the deferred successes; then publishes the new
    /// snapshot (still under the lock, so snapshots are published in the order of the machine's changes).
    fn locked<R>(&self, now: Instant, f: impl FnOnce(&mut BreakerMachine) -> R) -> R {
        let mut machine = self.shared.machine.lock();
        let ask = machine.admission().ask().to_bits();
        let word = self.shared.word.swap(ask, Ordering::AcqRel);
        let deferred = deferred_successes(word);
        if deferred > 0 {
            // They were counted under the current generation: nothing else changes the machine while the word
            // allows deferring. They cannot change the state either.
            if let Some(permit) = Admission::from_bits(word).permit() {
                let transition = machine.record_successes(permit, deferred, now);
                debug_assert!(transition.is_none(), "deferred successes changed the state");
            }
        }
        let result = f(&mut machine);
        self.shared
            .word
            .store(machine.admission().to_bits(), Ordering::Release);
        result
    }

    fn admission(&self) -> Admission {
        Admission::from_bits(self.shared.word.load(Ordering::Acquire))
    }

    /// Counts a success that was not slow without the lock, if the snapshot allows it; `false` if the machine must
    /// record it.
    fn defer_success(&self, permit: Permit) -> bool {
        let word = &self.shared.word;
        let mut current = word.load(Ordering::Acquire);
        loop {
            if !Admission::from_bits(current).defers_successes(permit)
                || deferred_successes(current) == MAX_DEFERRED
            {
                return false;
            }
            match word.compare_exchange_weak(
                current,
                current + ONE_DEFERRED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn emit(&self, transition: Option<Transition>, at: Instant) {
        if let Some(Transition { from, to }) = transition {
            tracing::info!(breaker = %self.shared.name, from = from.as_str(), to = to.as_str(), "circuit breaker state change");
            metrics::counter!(
                "trestle_breaker_transitions_total",
                "breaker" => self.shared.name.to_string(),
                "from" => from.as_str(),
                "to" => to.as_str()
            )
            .increment(1);
            // No subscriber is not an error.
            let _ = self.shared.events.send(StateChange {
                name: self.shared.name.clone(),
                from,
                to,
                at,
            });
        }
    }

    /// Asks to make one call. The guard must be completed (or dropped, which releases it).
    ///
    /// Fast path: in the closed, metrics-only and disabled states the permit comes from the admission snapshot,
    /// without the lock. Otherwise the machine decides (and may move from open to half-open).
    pub(crate) fn try_acquire(self) -> Result<CallGuard, CircuitOpen> {
        let now = self.shared.clock.now();
        if let Some(permit) = self.admission().permit() {
            return Ok(CallGuard {
                slow_at: now.checked_add(self.shared.slow_call_duration),
                handle: self,
                permit: Some(permit),
                start: now,
                from_snapshot: true,
            });
        }
        let (result, transition) = self.locked(now, |m| m.try_acquire(now));
        self.emit(transition, now);
        match result {
            Ok(permit) => Ok(CallGuard {
                slow_at: now.checked_add(self.shared.slow_call_duration),
                handle: self,
                permit: Some(permit),
                start: now,
                from_snapshot: false,
            }),
            Err(refused) => {
                self.shared.counters.rejected.increment(1);
                Err(CircuitOpen {
                    name: self.shared.name.clone(),
                    state: refused.state,
                    retry_after: refused.retry_after,
                })
            }
        }
    }
}

/// One permitted call in flight. Dropping it without [`complete`](Self::complete) (a cancelled call) gives its
/// half-open slot back without recording anything.
pub(crate) struct CallGuard {
    handle: CircuitBreakerHandle,
    permit: Option<Permit>,
    start: Instant,
    /// `start + slow_call_duration` (`None` if beyond what an `Instant` can hold): from then on the call is slow.
    /// Comparing instants is cheaper than computing the elapsed time, which only the machine needs.
    slow_at: Option<Instant>,
    /// Admitted from the snapshot in a state where the machine grants every call without counting it (closed,
    /// metrics-only, disabled): giving the permit back is a no-op, and so is recording an ignored outcome.
    from_snapshot: bool,
}

impl CallGuard {
    pub(crate) fn complete(mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            let shared = &self.handle.shared;
            match outcome {
                Outcome::Success => shared.counters.success.increment(1),
                Outcome::Failure => shared.counters.failure.increment(1),
                Outcome::Ignored => shared.counters.ignored.increment(1),
            }
            // Skip the lock when the machine would ignore the record: the permit is from an earlier generation or
            // the breaker is disabled, or the outcome is ignored in a state that does not count ignored calls.
            if !self.handle.admission().records(permit) || (self.from_snapshot && outcome == Outcome::Ignored)
            {
                return;
            }
            let now = shared.clock.now();
            let slow = self.slow_at.is_some_and(|at| now >= at);
            if outcome == Outcome::Success && !slow && self.handle.defer_success(permit) {
                return;
            }
            let elapsed: Duration = now.saturating_duration_since(self.start);
            let transition = self
                .handle
                .locked(now, |m| m.record(permit, outcome, elapsed, now));
            self.handle.emit(transition, now);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            // Only a half-open trial slot needs giving back; permits from the snapshot never hold one.
            if !self.from_snapshot {
                let now = self.handle.shared.clock.now();
                self.handle.locked(now, |m| m.release(permit));
            }
        }
    }
}
