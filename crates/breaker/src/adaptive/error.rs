/// The adaptive concurrency limit was reached; the call was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit reached: {in_flight} calls in flight, limit {limit}")]
#[non_exhaustive]
pub struct ConcurrencyLimited {
    /// The limit at the time.
    pub limit: u32,
    /// Calls in flight at the time.
    pub in_flight: u32,
}
