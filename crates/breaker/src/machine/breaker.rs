//! The circuit breaker as a sans-IO state machine.

use std::time::{Duration, Instant};

use super::window::{CountWindow, TimeBuckets, Totals, Window};
use crate::classify::Outcome;
use crate::config::{self, ConfigError};

/// How the breaker remembers recent calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `size` calls.
    Count {
        /// Number of calls remembered. Must be positive.
        size: u32,
    },
    /// The calls of the last `size`, kept in `buckets` equal slots (a call leaves the window when its whole slot
    /// does). Must both be positive.
    Time {
        /// Length of the window.
        size: Duration,
        /// Number of slots it is divided into.
        buckets: u32,
    },
}

/// How long the breaker stays open before letting trial calls through.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum WaitInOpen {
    /// Always the same wait.
    Fixed(Duration),
    /// `initial * multiplier^(n-1)` for the n-th consecutive opening without an intervening close, capped at `max`.
    Exponential {
        /// The first wait. Must be positive.
        initial: Duration,
        /// Growth per consecutive opening; at least 1.
        multiplier: f64,
        /// The cap; at least `initial`.
        max: Duration,
    },
}

impl WaitInOpen {
    /// The wait for the `n`-th consecutive opening (`n >= 1`).
    pub fn wait_for(&self, n: u32) -> Duration {
        match *self {
            WaitInOpen::Fixed(wait) => wait,
            WaitInOpen::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let factor = multiplier.powi(i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX));
                let nanos = (initial.as_nanos() as f64 * factor).round();
                if !nanos.is_finite() || nanos >= max.as_nanos() as f64 {
                    max
                } else {
                    Duration::from_nanos(nanos as u64)
                }
            }
        }
    }
}

/// Circuit breaker settings. Defaults follow Resilience4j.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// Open when at least this percentage of the calls in the window failed. `(0, 100]`; default `50`.
    pub failure_rate_threshold: f64,
    /// Open when at least this percentage of the calls in the window were slow. `(0, 100]`; default `100`.
    pub slow_call_rate_threshold: f64,
    /// A call taking at least this long is slow. Positive; default 60 s.
    pub slow_call_duration: Duration,
    /// The window the rates are computed over. Default: the last 100 calls.
    pub sliding_window: SlidingWindow,
    /// No decision is taken before the window holds this many calls. Positive; for a count window at most its size;
    /// default `100`.
    pub minimum_calls: u32,
    /// Trial calls let through in half-open; the breaker decides once they have all completed. Positive; default
    /// `10`.
    pub permitted_calls_in_half_open: u32,
    /// Wait in open before half-open. Default: fixed 60 s.
    pub wait_in_open: WaitInOpen,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(60),
            sliding_window: SlidingWindow::Count { size: 100 },
            minimum_calls: 100,
            permitted_calls_in_half_open: 10,
            wait_in_open: WaitInOpen::Fixed(Duration::from_secs(60)),
        }
    }
}

impl CircuitBreakerConfig {
    /// Sets [`failure_rate_threshold`](Self::failure_rate_threshold).
    pub fn with_failure_rate_threshold(mut self, percent: f64) -> Self {
        self.failure_rate_threshold = percent;
        self
    }

    /// Sets [`slow_call_rate_threshold`](Self::slow_call_rate_threshold) and
    /// [`slow_call_duration`](Self::slow_call_duration).
    pub fn with_slow_calls(mut self, percent: f64, duration: Duration) -> Self {
        self.slow_call_rate_threshold = percent;
        self.slow_call_duration = duration;
        self
    }

    /// Sets [`sliding_window`](Self::sliding_window).
    pub fn with_sliding_window(mut self, window: SlidingWindow) -> Self {
        self.sliding_window = window;
        self
    }

    /// Sets [`minimum_calls`](Self::minimum_calls).
    pub fn with_minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Sets [`permitted_calls_in_half_open`](Self::permitted_calls_in_half_open).
    pub fn with_permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.permitted_calls_in_half_open = calls;
        self
    }

    /// Sets [`wait_in_open`](Self::wait_in_open).
    pub fn with_wait_in_open(mut self, wait: WaitInOpen) -> Self {
        self.wait_in_open = wait;
        self
    }

    /// Checks every field; the error names the first offending one and its value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::percent("failure_rate_threshold", self.failure_rate_threshold, false)?;
        config::percent("slow_call_rate_threshold", self.slow_call_rate_threshold, false)?;
        config::positive_duration("slow_call_duration", self.slow_call_duration)?;
        config::positive("minimum_calls", u64::from(self.minimum_calls))?;
        config::positive(
            "permitted_calls_in_half_open",
            u64::from(self.permitted_calls_in_half_open),
        )?;
        match self.sliding_window {
            SlidingWindow::Count { size } => {
                config::positive("sliding_window.size", u64::from(size))?;
                config::not_above(
                    "minimum_calls",
                    u128::from(self.minimum_calls),
                    "sliding_window.size",
                    u128::from(size),
                )?;
            }
            SlidingWindow::Time { size, buckets } => {
                config::positive_duration("sliding_window.size", size)?;
                config::positive("sliding_window.buckets", u64::from(buckets))?;
                config::not_above(
                    "sliding_window.buckets",
                    u128::from(buckets),
                    "sliding_window.size (ns)",
                    size.as_nanos(),
                )?;
            }
        }
        match self.wait_in_open {
            WaitInOpen::Fixed(_) => {}
            WaitInOpen::Exponential {
                initial,
                multiplier,
                max,
            } => {
                config::positive_duration("wait_in_open.initial", initial)?;
                if !(multiplier.is_finite() && multiplier >= 1.0) {
                    return Err(ConfigError::OutOfRange {
                        field: "wait_in_open.multiplier",
                        range: "[1, inf)",
                        value: multiplier,
                    });
                }
                config::not_above(
                    "wait_in_open.initial (ns)",
                    initial.as_nanos(),
                    "wait_in_open.max (ns)",
                    max.as_nanos(),
                )?;
            }
        }
        Ok(())
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls flow; outcomes are recorded and may open the breaker.
    Closed,
    /// Calls are rejected until the wait is over.
    Open,
    /// A limited number of trial calls decide between closed and open.
    HalfOpen,
    /// Calls flow; nothing is recorded. Set by the operator.
    Disabled,
    /// Calls are rejected until the operator says otherwise.
    ForcedOpen,
    /// Calls flow and are recorded, but the breaker never opens. Set by the operator.
    MetricsOnly,
}

impl State {
    /// A short lowercase name, used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced_open",
            State::MetricsOnly => "metrics_only",
        }
    }
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
}

/// Permission to make one call. Give it back with [`BreakerMachine::record`] or [`BreakerMachine::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a permit must be recorded or released, or a half-open slot leaks"]
pub struct Permit {
    generation: u64,
}

/// A snapshot of how the machine admits and records calls, as one `u64` ([`to_bits`](Self::to_bits),
/// [`from_bits`](Self::from_bits)), so a concurrent wrapper can keep it in an atomic and serve the common case
/// without locking the machine.
///
/// - **Admission.** In the closed, metrics-only and disabled states [`BreakerMachine::try_acquire`] grants every
///   call and changes nothing, so a wrapper may mint the same permit from the snapshot ([`permit`](Self::permit)).
///   A call admitted from a snapshot that has just gone stale was admitted just before the change; its permit, from
///   the old generation, is ignored when it comes back. In every other state the wrapper must ask the machine.
/// - **Skipping records.** [`records`](Self::records) says when [`BreakerMachine::record`] would be a no-op.
/// - **Deferring successes.** When [`defers_successes`](Self::defers_successes) holds (closed or metrics-only, a
///   count window holding no failed and no slow call), a success that was not slow cannot change the state: it only
///   adds a success to a window of successes. A wrapper may count such successes and hand them over in one go with
///   [`BreakerMachine::record_successes`] before its next operation on the machine.
///
/// The snapshot changes only when the machine does, so a wrapper re-reads it after every operation on the machine.
/// Bits [`SPARE_SHIFT`](Self::SPARE_SHIFT)`..SPARE_SHIFT + `[`SPARE_BITS`](Self::SPARE_BITS) of the word are always
/// zero and ignored by [`from_bits`](Self::from_bits): a wrapper may keep its own counter there (the breaker layer
/// keeps its count of deferred successes), so that snapshot and counter change together in one atomic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission(u64);

impl Admission {
    /// Where the spare bits start.
    pub const SPARE_SHIFT: u32 = 2;
    /// How many spare bits there are.
    pub const SPARE_BITS: u32 = 22;
    const GENERATION_SHIFT: u32 = Self::SPARE_SHIFT + Self::SPARE_BITS;
    const CLASS_MASK: u64 = (1 << Self::SPARE_SHIFT) - 1;
    const ASK: u64 = 0;
    const FREE_RECORDED: u64 = 1;
    const FREE_UNRECORDED: u64 = 2;
    const FREE_CLEAN: u64 = 3;

    /// The snapshot as a word (spare bits zero).
    pub fn to_bits(self) -> u64 {
        self.0
    }

    /// A snapshot from [`to_bits`](Self::to_bits); the spare bits are ignored.
    pub fn from_bits(bits: u64) -> Self {
        let spare = ((1u64 << Self::SPARE_BITS) - 1) << Self::SPARE_SHIFT;
        Self(bits & !spare)
    }

    /// The same snapshot, except that the machine must be asked for every call: what a wrapper publishes while it
    /// is operating on the machine, so that no call is admitted, or success deferred, from a snapshot about to
    /// change.
    pub fn ask(self) -> Self {
        Self(self.0 & !Self::CLASS_MASK)
    }

    fn generation(self) -> u64 {
        self.0 >> Self::GENERATION_SHIFT
    }

    fn class(self) -> u64 {
        self.0 & Self::CLASS_MASK
    }

    /// The permit [`BreakerMachine::try_acquire`] would grant, if it grants every call without a state change;
    /// `None` if the machine must be asked.
    pub fn permit(self) -> Option<Permit> {
        (self.class() != Self::ASK).then_some(Permit {
            generation: self.generation(),
        })
    }

    /// Whether [`BreakerMachine::record`] of `permit` could change anything: `false` when the permit is from
    /// another generation than this snapshot's or when the breaker is disabled.
    pub fn records(self, permit: Permit) -> bool {
        permit.generation == self.generation() && self.class() != Self::FREE_UNRECORDED
    }

    /// Whether a success that was not slow, with a permit of this snapshot's generation, may be deferred (see the
    /// type's docs).
    pub fn defers_successes(self, permit: Permit) -> bool {
        permit.generation == self.generation() && self.class() == Self::FREE_CLEAN
    }
}

/// Why a call was not permitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPermitted {
    /// The state that refused it (`Open`, `HalfOpen` with every trial slot taken, or `ForcedOpen`).
    pub state: State,
    /// When the breaker is `Open`: how long until trial calls are let through.
    pub retry_after: Option<Duration>,
}

/// Counts and rates over the current window.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BreakerMetrics {
    /// The state.
    pub state: State,
    /// Calls recorded in the window (or, in half-open, among the trial calls).
    pub calls: u64,
    /// Of which failed.
    pub failed_calls: u64,
    /// Of which slow.
    pub slow_calls: u64,
    /// `failed_calls / calls` in percent; `None` below the minimum number of calls.
    pub failure_rate: Option<f64>,
    /// `slow_calls / calls` in percent; `None` below the minimum number of calls.
    pub slow_call_rate: Option<f64>,
    /// Calls rejected since the breaker was created.
    pub not_permitted_calls: u64,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen { issued: u32, totals: Totals },
    Disabled,
    ForcedOpen,
    MetricsOnly,
}

impl Mode {
    fn state(&self) -> State {
        match self {
            Mode::Closed => State::Closed,
            Mode::Open { .. } => State::Open,
            Mode::HalfOpen { .. } => State::HalfOpen,
            Mode::Disabled => State::Disabled,
            Mode::ForcedOpen => State::ForcedOpen,
            Mode::MetricsOnly => State::MetricsOnly,
        }
    }
}

/// The circuit breaker state machine. Time is an argument; it does no IO and never blocks.
///
/// Every state entry starts a new *generation*: a permit from an earlier generation is not counted when it comes
/// back (a call let through while closed that completes after the breaker opened does not decide a half-open trial).
/// Entering any state resets the window.
#[derive(Debug, Clone)]
pub struct BreakerMachine {
    config: CircuitBreakerConfig,
    mode: Mode,
    window: Window,
    generation: u64,
    consecutive_opens: u32,
    not_permitted: u64,
}

impl BreakerMachine {
    /// A closed breaker, if `config` is valid.
    pub fn new(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let window = Self::new_window(&config);
        Ok(Self {
            config,
            mode: Mode::Closed,
            window,
            generation: 0,
            consecutive_opens: 0,
            not_permitted: 0,
        })
    }

    fn new_window(config: &CircuitBreakerConfig) -> Window {
        match config.sliding_window {
            SlidingWindow::Count { size } => Window::Count(CountWindow::new(size as usize)),
            SlidingWindow::Time { size, buckets } => Window::Time(TimeBuckets::new(size, buckets)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    /// The current state. An `Open` breaker whose wait is over reports `Open` until the next call attempt moves it
    /// to `HalfOpen`.
    pub fn state(&self) -> State {
        self.mode.state()
    }

    /// Asks to make a call at `now`. May move `Open` to `HalfOpen` (returned as the transition).
    pub fn try_acquire(&mut self, now: Instant) -> (Result<Permit, NotPermitted>, Option<Transition>) {
        let mut transition = None;
        if let Mode::Open { until } = self.mode
            && now >= until
        {
            transition = self.enter(Mode::HalfOpen {
                issued: 0,
                totals: Totals::default(),
            });
        }
        let permit = Permit {
            generation: self.generation,
        };
        let result = match &mut self.mode {
            Mode::Closed | Mode::Disabled | Mode::MetricsOnly => Ok(permit),
            Mode::Open { until } => Err(NotPermitted {
                state: State::Open,
                retry_after: Some(until.saturating_duration_since(now)),
            }),
            Mode::HalfOpen { issued, .. } => {
                if *issued < self.config.permitted_calls_in_half_open {
                    *issued += 1;
                    Ok(permit)
                } else {
                    Err(NotPermitted {
                        state: State::HalfOpen,
                        retry_after: None,
                    })
                }
            }
            Mode::ForcedOpen => Err(NotPermitted {
                state: State::ForcedOpen,
                retry_after: None,
            }),
        };
        if result.is_err() {
            self.not_permitted += 1;
        }
        (result, transition)
    }

    /// What [`try_acquire`](Self::try_acquire) would do now, packed in a word a caller can mirror in an atomic and
    /// read without holding the machine: see [`Admission`]. Changes only when the state changes (every change
    /// starts a new generation), so it must be re-read after any call that returned a transition.
    pub fn admission(&self) -> Admission {
        let class = match (&self.mode, &self.window) {
            (Mode::Closed | Mode::MetricsOnly, Window::Count(window)) if window.totals().is_clean() => {
                Admission::FREE_CLEAN
            }
            (Mode::Closed | Mode::MetricsOnly, _) => Admission::FREE_RECORDED,
            (Mode::Disabled, _) => Admission::FREE_UNRECORDED,
            (Mode::Open { .. } | Mode::HalfOpen { .. } | Mode::ForcedOpen, _) => Admission::ASK,
        };
        Admission((self.generation << Admission::GENERATION_SHIFT) | class)
    }

    /// Records `n` successes that were not slow, as `n` calls of [`record`](Self::record) with `permit`, an
    /// [`Outcome::Success`] and no elapsed time would (returning the transition, if one of them made one), but
    /// without doing `n` times the work.
    pub fn record_successes(&mut self, permit: Permit, n: u64, now: Instant) -> Option<Transition> {
        let mut left = n;
        while left > 0 {
            if permit.generation != self.generation {
                return None;
            }
            match self.mode {
                Mode::MetricsOnly => {
                    self.window.record_successes(now, left);
                    return None;
                }
                // Nothing failed or was slow: more successes cannot trip.
                Mode::Closed if self.window.totals(now).is_clean() => {
                    self.window.record_successes(now, left);
                    return None;
                }
                Mode::Closed | Mode::HalfOpen { .. } => {}
                Mode::Open { .. } | Mode::Disabled | Mode::ForcedOpen => return None,
            }
            left -= 1;
            let transition = self.record(permit, Outcome::Success, Duration::ZERO, now);
            if transition.is_some() {
                return transition;
            }
            // A success never raises a rate. Once one has tripped nothing with the minimum number of calls
            // reached, the others cannot trip either.
            if matches!(self.mode, Mode::Closed)
                && self.window.totals(now).calls >= u64::from(self.config.minimum_calls)
            {
                self.window.record_successes(now, left);
                return None;
            }
        }
        None
    }

    /// Records the outcome of a permitted call that took `elapsed`. May open or close the breaker.
    pub fn record(
        &mut self,
        permit: Permit,
        outcome: Outcome,
        elapsed: Duration,
        now: Instant,
    ) -> Option<Transition> {
        if permit.generation != self.generation {
            return None;
        }
        let failed = outcome == Outcome::Failure;
        let slow = elapsed >= self.config.slow_call_duration;
        match &mut self.mode {
            Mode::Closed | Mode::MetricsOnly => {
                if outcome == Outcome::Ignored {
                    return None;
                }
                self.window.record(now, failed, slow);
                if matches!(self.mode, Mode::Closed) {
                    let totals = self.window.totals(now);
                    if totals.calls >= u64::from(self.config.minimum_calls) && self.exceeds(totals) {
                        return self.open(now);
                    }
                }
                None
            }
            Mode::HalfOpen { issued, totals } => {
                if outcome == Outcome::Ignored {
                    // The slot goes back: an ignored call says nothing about the backend.
                    *issued = issued.saturating_sub(1);
                    return None;
                }
                totals.calls += 1;
                totals.failures += u64::from(failed);
                totals.slow += u64::from(slow);
                let totals = *totals;
                if totals.calls >= u64::from(self.config.permitted_calls_in_half_open) {
                    if self.exceeds(totals) {
                        self.open(now)
                    } else {
                        self.enter(Mode::Closed)
                    }
                } else {
                    None
                }
            }
            Mode::Open { .. } | Mode::Disabled | Mode::ForcedOpen => None,
        }
    }

    /// Gives back a permit whose call never completed (cancelled). Frees its half-open slot; records nothing.
    pub fn release(&mut self, permit: Permit) {
        if permit.generation != self.generation {
            return;
        }
        if let Mode::HalfOpen { issued, .. } = &mut self.mode {
            *issued = issued.saturating_sub(1);
        }
    }

    fn exceeds(&self, totals: Totals) -> bool {
        let calls = totals.calls as f64;
        totals.calls > 0
            && (totals.failures as f64 * 100.0 >= self.config.failure_rate_threshold * calls
                || totals.slow as f64 * 100.0 >= self.config.slow_call_rate_threshold * calls)
    }

    fn open(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive_opens = self.consecutive_opens.saturating_add(1);
        let wait = self.config.wait_in_open.wait_for(self.consecutive_opens);
        let until = crate::config::saturating_add(now, wait);
        self.enter(Mode::Open { until })
    }

    fn enter(&mut self, mode: Mode) -> Option<Transition> {
        let from = self.mode.state();
        if matches!(
            mode,
            Mode::Closed | Mode::Disabled | Mode::ForcedOpen | Mode::MetricsOnly
        ) {
            self.consecutive_opens = 0;
        }
        self.mode = mode;
        self.generation += 1;
        self.window = Self::new_window(&self.config);
        let to = self.mode.state();
        Some(Transition { from, to })
    }

    /// Closes the breaker and clears its window (operator action).
    pub fn reset(&mut self) -> Option<Transition> {
        self.enter(Mode::Closed)
    }

    /// Opens the breaker now, for the configured wait (operator action).
    pub fn trip(&mut self, now: Instant) -> Option<Transition> {
        self.open(now)
    }

    /// Rejects every call until another operator action.
    pub fn force_open(&mut self) -> Option<Transition> {
        self.enter(Mode::ForcedOpen)
    }

    /// Lets every call through and records nothing.
    pub fn disable(&mut self) -> Option<Transition> {
        self.enter(Mode::Disabled)
    }

    /// Lets every call through and records outcomes, but never opens.
    pub fn metrics_only(&mut self) -> Option<Transition> {
        self.enter(Mode::MetricsOnly)
    }

    /// Counts and rates at `now`.
    pub fn metrics(&mut self, now: Instant) -> BreakerMetrics {
        let (totals, minimum) = match self.mode {
            Mode::HalfOpen { totals, .. } => (totals, u64::from(self.config.permitted_calls_in_half_open)),
            _ => (self.window.totals(now), u64::from(self.config.minimum_calls)),
        };
        let rate = |n: u64| {
            (totals.calls >= minimum && totals.calls > 0).then(|| n as f64 * 100.0 / totals.calls as f64)
        };
        BreakerMetrics {
            state: self.state(),
            calls: totals.calls,
            failed_calls: totals.failures,
            slow_calls: totals.slow,
            failure_rate: rate(totals.failures),
            slow_call_rate: rate(totals.slow),
            not_permitted_calls: self.not_permitted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validate_rejects_bad_values() {
        let bad = CircuitBreakerConfig::default().with_failure_rate_threshold(101.0);
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::PercentOutOfRange { field: "failure_rate_threshold", value, .. }) if value == 101.0
        ));
        let bad = CircuitBreakerConfig::default().with_failure_rate_threshold(f64::NAN);
        assert!(bad.validate().is_err());
        let bad = CircuitBreakerConfig::default().with_failure_rate_threshold(0.0);
        assert!(bad.validate().is_err());
        let bad = CircuitBreakerConfig::default().with_sliding_window(SlidingWindow::Count { size: 0 });
        assert_eq!(
            bad.validate(),
            Err(ConfigError::Zero {
                field: "sliding_window.size"
            })
        );
        let bad = CircuitBreakerConfig::default().with_sliding_window(SlidingWindow::Time {
            size: Duration::ZERO,
            buckets: 10,
        });
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::ZeroDuration {
                field: "sliding_window.size",
                ..
            })
        ));
        let bad = CircuitBreakerConfig::default().with_permitted_calls_in_half_open(0);
        assert_eq!(
            bad.validate(),
            Err(ConfigError::Zero {
                field: "permitted_calls_in_half_open"
            })
        );
        let bad = CircuitBreakerConfig::default().with_minimum_calls(101);
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Exceeds {
                field: "minimum_calls",
                value: 101,
                ..
            })
        ));
        let bad = CircuitBreakerConfig::default().with_wait_in_open(WaitInOpen::Exponential {
            initial: Duration::from_secs(1),
            multiplier: 0.5,
            max: Duration::from_secs(10),
        });
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::OutOfRange {
                field: "wait_in_open.multiplier",
                ..
            })
        ));
        assert!(BreakerMachine::new(CircuitBreakerConfig::default()).is_ok());
    }

    #[test]
    fn growing_wait() {
        let w = WaitInOpen::Exponential {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_millis(500),
        };
        assert_eq!(w.wait_for(1), Duration::from_millis(100));
        assert_eq!(w.wait_for(2), Duration::from_millis(200));
        assert_eq!(w.wait_for(3), Duration::from_millis(400));
        assert_eq!(w.wait_for(4), Duration::from_millis(500));
        assert_eq!(w.wait_for(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let cfg = CircuitBreakerConfig::default()
            .with_sliding_window(SlidingWindow::Count { size: 4 })
            .with_minimum_calls(4)
            .with_permitted_calls_in_half_open(2)
            .with_wait_in_open(WaitInOpen::Fixed(Duration::from_secs(1)));
        let mut m = BreakerMachine::new(cfg).unwrap();
        let t0 = Instant::now();
        for i in 0..4 {
            let (p, _) = m.try_acquire(t0);
            let outcome = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            let tr = m.record(p.unwrap(), outcome, Duration::ZERO, t0);
            if i == 3 {
                assert_eq!(
                    tr,
                    Some(Transition {
                        from: State::Closed,
                        to: State::Open
                    })
                );
            }
        }
        let (r, _) = m.try_acquire(t0 + Duration::from_millis(400));
        assert_eq!(
            r,
            Err(NotPermitted {
                state: State::Open,
                retry_after: Some(Duration::from_millis(600))
            })
        );
        let t1 = t0 + Duration::from_secs(1);
        let (a, tr) = m.try_acquire(t1);
        assert_eq!(
            tr,
            Some(Transition {
                from: State::Open,
                to: State::HalfOpen
            })
        );
        let (b, _) = m.try_acquire(t1);
        let (c, _) = m.try_acquire(t1);
        assert_eq!(
            c,
            Err(NotPermitted {
                state: State::HalfOpen,
                retry_after: None
            })
        );
        // A cancelled trial call gives its slot back.
        m.release(b.unwrap());
        let (b, _) = m.try_acquire(t1);
        assert_eq!(m.record(a.unwrap(), Outcome::Success, Duration::ZERO, t1), None);
        assert_eq!(
            m.record(b.unwrap(), Outcome::Success, Duration::ZERO, t1),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
    }

    #[test]
    fn operator_states() {
        let mut m = BreakerMachine::new(CircuitBreakerConfig::default()).unwrap();
        let now = Instant::now();
        m.force_open();
        assert_eq!(
            m.try_acquire(now).0,
            Err(NotPermitted {
                state: State::ForcedOpen,
                retry_after: None
            })
        );
        m.disable();
        for _ in 0..200 {
            let p = m.try_acquire(now).0.unwrap();
            assert_eq!(m.record(p, Outcome::Failure, Duration::ZERO, now), None);
        }
        assert_eq!(m.metrics(now).calls, 0);
        m.metrics_only();
        for _ in 0..200 {
            let p = m.try_acquire(now).0.unwrap();
            assert_eq!(m.record(p, Outcome::Failure, Duration::ZERO, now), None);
        }
        let metrics = m.metrics(now);
        assert_eq!(
            (metrics.state, metrics.calls, metrics.failure_rate),
            (State::MetricsOnly, 100, Some(100.0))
        );
        m.reset();
        assert_eq!(m.state(), State::Closed);
    }

    // ---- Model-based property test -------------------------------------------------------------------------------

    /// The reference: the same rules written as plainly as possible, keeping every recorded call in a `Vec`.
    #[derive(Debug)]
    enum ModelMode {
        Closed { calls: Vec<(Instant, bool, bool)> },
        Open { until: Instant },
        HalfOpen { issued: u32, results: Vec<(bool, bool)> },
    }

    struct Model {
        window: SlidingWindow,
        minimum: u64,
        failure_pct: f64,
        slow_pct: f64,
        slow_after: Duration,
        permitted: u32,
        initial_wait_ms: u64,
        max_wait_ms: u64,
        opens: u32,
        mode: ModelMode,
        generation: u64,
    }

    impl Model {
        fn state(&self) -> State {
            match self.mode {
                ModelMode::Closed { .. } => State::Closed,
                ModelMode::Open { .. } => State::Open,
                ModelMode::HalfOpen { .. } => State::HalfOpen,
            }
        }

        fn set(&mut self, mode: ModelMode) {
            if matches!(mode, ModelMode::Closed { .. }) {
                self.opens = 0;
            }
            self.mode = mode;
            self.generation += 1;
        }

        fn open(&mut self, now: Instant) {
            self.opens += 1;
            let wait = (self.initial_wait_ms << (self.opens - 1).min(20)).min(self.max_wait_ms);
            self.set(ModelMode::Open {
                until: now + Duration::from_millis(wait),
            });
        }

        fn trips(&self, calls: u64, failed: u64, slow: u64) -> bool {
            calls > 0
                && (failed as f64 * 100.0 >= self.failure_pct * calls as f64
                    || slow as f64 * 100.0 >= self.slow_pct * calls as f64)
        }

        fn acquire(&mut self, now: Instant) -> (Result<u64, NotPermitted>, bool) {
            let mut moved = false;
            if let ModelMode::Open { until } = self.mode
                && now >= until
            {
                self.set(ModelMode::HalfOpen {
                    issued: 0,
                    results: vec![],
                });
                moved = true;
            }
            let generation = self.generation;
            let r = match &mut self.mode {
                ModelMode::Closed { .. } => Ok(generation),
                ModelMode::Open { until } => Err(NotPermitted {
                    state: State::Open,
                    retry_after: Some(*until - now),
                }),
                ModelMode::HalfOpen { issued, .. } if *issued < self.permitted => {
                    *issued += 1;
                    Ok(generation)
                }
                ModelMode::HalfOpen { .. } => Err(NotPermitted {
                    state: State::HalfOpen,
                    retry_after: None,
                }),
            };
            (r, moved)
        }

        fn record(&mut self, generation: u64, outcome: Outcome, elapsed: Duration, now: Instant) {
            if generation != self.generation {
                return;
            }
            let failed = outcome == Outcome::Failure;
            let slow = elapsed >= self.slow_after;
            match &mut self.mode {
                ModelMode::Closed { calls } => {
                    if outcome == Outcome::Ignored {
                        return;
                    }
                    calls.push((now, failed, slow));
                    let in_window: Vec<(Instant, bool, bool)> = match self.window {
                        SlidingWindow::Count { size } => {
                            calls.iter().rev().take(size as usize).copied().collect()
                        }
                        SlidingWindow::Time { size, buckets } => {
                            let width = size.as_nanos() / u128::from(buckets);
                            let origin = calls[0].0;
                            let slot = |t: Instant| (t - origin).as_nanos() / width;
                            calls
                                .iter()
                                .filter(|c| slot(c.0) + u128::from(buckets) > slot(now))
                                .copied()
                                .collect()
                        }
                    };
                    let n = in_window.len() as u64;
                    let f = in_window.iter().filter(|c| c.1).count() as u64;
                    let s = in_window.iter().filter(|c| c.2).count() as u64;
                    if n >= self.minimum && self.trips(n, f, s) {
                        self.open(now);
                    }
                }
                ModelMode::HalfOpen { issued, results } => {
                    if outcome == Outcome::Ignored {
                        *issued -= 1;
                        return;
                    }
                    results.push((failed, slow));
                    if results.len() as u32 >= self.permitted {
                        let n = results.len() as u64;
                        let f = results.iter().filter(|c| c.0).count() as u64;
                        let s = results.iter().filter(|c| c.1).count() as u64;
                        if self.trips(n, f, s) {
                            self.open(now);
                        } else {
                            self.set(ModelMode::Closed { calls: vec![] });
                        }
                    }
                }
                ModelMode::Open { .. } => {}
            }
        }

        fn release(&mut self, generation: u64) {
            if generation == self.generation
                && let ModelMode::HalfOpen { issued, .. } = &mut self.mode
            {
                *issued -= 1;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Complete {
            which: usize,
            outcome: u8,
            elapsed_ms: u64,
        },
        Cancel {
            which: usize,
        },
        Advance {
            ms: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Acquire),
            3 => (any::<usize>(), 0u8..3, 0u64..30).prop_map(|(which, outcome, elapsed_ms)| Op::Complete { which, outcome, elapsed_ms }),
            1 => any::<usize>().prop_map(|which| Op::Cancel { which }),
            2 => (0u64..120).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    fn window() -> impl Strategy<Value = SlidingWindow> {
        prop_oneof![
            (1u32..8).prop_map(|size| SlidingWindow::Count { size }),
            (1u64..10, 1u32..5).prop_map(|(slot_ms, buckets)| SlidingWindow::Time {
                size: Duration::from_millis(slot_ms * u64::from(buckets)),
                buckets
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The machine agrees with the model on every permit decision, every retry-after and every state.
        #[test]
        fn breaker_matches_model(
            window in window(),
            minimum_seed in 1u32..8,
            failure_pct in prop_oneof![Just(100.0), Just(50.0), 1.0f64..100.0],
            slow_pct in prop_oneof![Just(100.0), 1.0f64..100.0],
            slow_ms in 1u64..40,
            permitted in 1u32..4,
            initial_wait_ms in 1u64..100,
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let minimum = match window {
                SlidingWindow::Count { size } => minimum_seed.min(size),
                _ => minimum_seed,
            };
            let cfg = CircuitBreakerConfig::default()
                .with_sliding_window(window)
                .with_minimum_calls(minimum)
                .with_failure_rate_threshold(failure_pct)
                .with_slow_calls(slow_pct, Duration::from_millis(slow_ms))
                .with_permitted_calls_in_half_open(permitted)
                .with_wait_in_open(WaitInOpen::Exponential {
                    initial: Duration::from_millis(initial_wait_ms),
                    multiplier: 2.0,
                    max: Duration::from_millis(initial_wait_ms * 4),
                });
            let mut machine = BreakerMachine::new(cfg).unwrap();
            let mut model = Model {
                window,
                minimum: u64::from(minimum),
                failure_pct,
                slow_pct,
                slow_after: Duration::from_millis(slow_ms),
                permitted,
                initial_wait_ms,
                max_wait_ms: initial_wait_ms * 4,
                opens: 0,
                mode: ModelMode::Closed { calls: vec![] },
                generation: 0,
            };
            let mut now = Instant::now();
            let mut outstanding: Vec<(Permit, u64)> = Vec::new();
            for (steps, op) in ops.into_iter().enumerate() {
                // Deferred successes, handed over in one go, do what as many single records would.
                if let Some(p) = machine.admission().permit() {
                    let n = (steps % 13) as u64;
                    let mut bulk = machine.clone();
                    let mut single = machine.clone();
                    let deferrable = bulk.admission().defers_successes(p);
                    let bulk_tr = bulk.record_successes(p, n, now);
                    let single_tr = (0..n).filter_map(|_| single.record(p, Outcome::Success, Duration::ZERO, now)).next();
                    prop_assert_eq!(bulk_tr, single_tr);
                    if deferrable {
                        prop_assert!(bulk_tr.is_none(), "a deferrable success changed the state");
                    }
                    prop_assert_eq!(bulk.admission(), single.admission());
                    prop_assert_eq!(bulk.metrics(now), single.metrics(now));
                }
                // The lock-free snapshot never disagrees with the machine.
                let admission = machine.admission();
                prop_assert_eq!(Admission::from_bits(admission.to_bits()), admission);
                match op {
                    Op::Acquire => {
                        let (got, tr) = machine.try_acquire(now);
                        if let Some(fast) = admission.permit() {
                            prop_assert_eq!(got, Ok(fast));
                            prop_assert!(tr.is_none());
                            prop_assert_eq!(machine.admission(), admission);
                        }
                        let (want, moved) = model.acquire(now);
                        prop_assert_eq!(tr.is_some(), moved);
                        match (got, want) {
                            (Ok(p), Ok(g)) => outstanding.push((p, g)),
                            (Err(a), Err(b)) => prop_assert_eq!(a, b),
                            (a, b) => prop_assert!(false, "machine {:?} vs model {:?}", a, b),
                        }
                    }
                    Op::Complete { which, outcome, elapsed_ms } if !outstanding.is_empty() => {
                        let (p, g) = outstanding.remove(which % outstanding.len());
                        let outcome = [Outcome::Success, Outcome::Failure, Outcome::Ignored][outcome as usize];
                        let elapsed = Duration::from_millis(elapsed_ms);
                        let before = machine.clone();
                        let tr = machine.record(p, outcome, elapsed, now);
                        if !admission.records(p) {
                            // Skipping the machine would have been right: nothing changed.
                            prop_assert!(tr.is_none());
                            prop_assert_eq!(machine.admission(), admission);
                            prop_assert_eq!(machine.clone().metrics(now), before.clone().metrics(now));
                        }
                        model.record(g, outcome, elapsed, now);
                    }
                    Op::Cancel { which } if !outstanding.is_empty() => {
                        let (p, g) = outstanding.remove(which % outstanding.len());
                        machine.release(p);
                        model.release(g);
                    }
                    Op::Advance { ms } => now += Duration::from_millis(ms),
                    _ => {}
                }
                prop_assert_eq!(machine.state(), model.state());
            }
        }
    }
}
