use std::sync::Arc;
use std::time::Duration;

use crate::machine::State;

/// The circuit breaker refused a call without sending it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{name}` is {}: call not permitted{}", state.as_str(), RetryAfter(*retry_after))]
#[non_exhaustive]
pub struct CircuitOpen {
    /// The breaker's name.
    pub name: Arc<str>,
    /// Its state: `Open`, `HalfOpen` (every trial slot taken) or `ForcedOpen`.
    pub state: State,
    /// When `Open`: the time until trial calls are let through.
    pub retry_after: Option<Duration>,
}

struct RetryAfter(Option<Duration>);

impl std::fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "; retry after {d:?}"),
            None => Ok(()),
        }
    }
}
