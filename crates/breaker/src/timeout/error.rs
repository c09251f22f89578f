use std::time::Duration;

/// The call did not complete within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline of {budget:?} elapsed")]
#[non_exhaustive]
pub struct Elapsed {
    /// The time the call was given: the configured timeout or, if shorter, what was left of the propagated
    /// deadline. Zero if the deadline had already passed when the call arrived (it was not sent).
    pub budget: Duration,
}
