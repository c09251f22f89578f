//! Sans-IO state machines (and the hedging layer's latency histogram): no IO, no clock reads, no randomness of their own. Time (and, for the throttle, a random
//! number) is an argument. The tower layers wrap each in a mutex and feed it.

mod breaker;
mod budget;
mod latency;
mod limit;
mod throttle;
mod window;

pub use breaker::{
    Admission, BreakerMachine, BreakerMetrics, CircuitBreakerConfig, NotPermitted, Permit, SlidingWindow,
    State, Transition, WaitInOpen,
};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use latency::LatencyHistogram;
pub use limit::{Aimd, AimdConfig, Gradient, GradientConfig, LimitAlgorithm, Sample};
pub use throttle::{ThrottleConfig, ThrottleMachine};
