use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::CircuitOpen;
use crate::classify::Outcome;
use crate::clock::{Clock, SharedClock, TokioClock};
use crate::config::ConfigError;
use crate::machine::{BreakerMachine, BreakerMetrics, CircuitBreakerConfig, Permit, State, Transition};

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
        self.shared.machine.lock().state()
    }

    /// Counts and rates over the current window.
    pub fn metrics(&self) -> BreakerMetrics {
        let now = self.shared.clock.now();
        self.shared.machine.lock().metrics(now)
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
        let transition = f(&mut self.shared.machine.lock(), now);
        self.emit(transition, now);
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
    pub(crate) fn try_acquire(&self) -> Result<CallGuard, CircuitOpen> {
        let now = self.shared.clock.now();
        let (result, transition) = self.shared.machine.lock().try_acquire(now);
        self.emit(transition, now);
        match result {
            Ok(permit) => Ok(CallGuard {
                handle: self.clone(),
                permit: Some(permit),
                start: now,
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
            let now = shared.clock.now();
            let elapsed: Duration = now.saturating_duration_since(self.start);
            let transition = shared.machine.lock().record(permit, outcome, elapsed, now);
            self.handle.emit(transition, now);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.handle.shared.machine.lock().release(permit);
        }
    }
}
