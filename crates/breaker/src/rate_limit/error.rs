use std::time::Duration;

/// The rate limiter refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry after {retry_after:?}")]
#[non_exhaustive]
pub struct RateLimited {
    /// How long until a call with the same key would be admitted.
    pub retry_after: Duration,
}

impl RateLimited {
    /// A rejection that may be retried after `retry_after`.
    pub fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }
}
