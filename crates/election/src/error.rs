//! What can go wrong in an election.

/// An error from [`Election`](crate::Election), [`Leadership`](crate::Leadership) or
/// [`LeaderElector`](crate::LeaderElector).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ElectionError {
    /// The election name is empty.
    #[error("the election name is empty; give it a non-empty name such as \"billing/scheduler\"")]
    EmptyName,
    /// This candidate is not (or no longer) the leader: resigned, deposed by the loss of its session, or its key
    /// was removed.
    #[error("not the leader of election {name:?} (key {key:?} is gone or was re-created)")]
    NotLeader {
        /// The election name.
        name: String,
        /// The leader key this candidate held.
        key: String,
    },
    /// Invalid configuration of a [`LeaderElector`](crate::LeaderElector).
    #[error("invalid elector configuration: {field} = {value} ({reason})")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },
    /// The session (lease) failed, or a lower-level queue operation did.
    #[error(transparent)]
    Lock(#[from] trestle_lock::LockError),
    /// A request to the etcd API failed.
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
}
