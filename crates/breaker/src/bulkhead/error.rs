use std::time::Duration;

/// The bulkhead refused a call: every slot was busy and the wait queue was full (or disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead full: {max_concurrent} calls in flight and {max_queued} waiting")]
#[non_exhaustive]
pub struct BulkheadFull {
    /// The configured concurrency cap.
    pub max_concurrent: usize,
    /// The configured queue bound.
    pub max_queued: usize,
}

/// A call waited in the bulkhead's queue for the maximum wait without getting a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead: no slot free after waiting {max_wait:?}")]
#[non_exhaustive]
pub struct BulkheadTimeout {
    /// The configured maximum wait.
    pub max_wait: Duration,
}
