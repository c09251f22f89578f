/// Adaptive throttling rejected the call locally: the backend has recently been rejecting too many.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("throttled locally: backend rejecting, local rejection probability {probability:.3}")]
#[non_exhaustive]
pub struct Throttled {
    /// The rejection probability at the time.
    pub probability: f64,
}
