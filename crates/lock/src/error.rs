//! What can go wrong with sessions, locks and semaphores.

use std::time::Duration;

/// An error from a [`Session`](crate::Session), [`Mutex`](crate::Mutex) or [`Semaphore`](crate::Semaphore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// A lock or semaphore name is empty (it would share the key space of every other lock).
    #[error("the lock name is empty; give every lock a non-empty name such as \"jobs/nightly\"")]
    EmptyName,
    /// The session TTL is outside what a lease-based lock can use.
    #[error("session TTL of {ttl:?} is out of range: use between {min:?} and {max:?} (whole seconds)")]
    InvalidTtl {
        /// The TTL asked for.
        ttl: Duration,
        /// The smallest accepted.
        min: Duration,
        /// The largest accepted.
        max: Duration,
    },
    /// A semaphore needs at least one permit.
    #[error("a semaphore needs at least one permit, got {permits}")]
    InvalidPermits {
        /// The number asked for.
        permits: u32,
    },
    /// The session's lease expired or was revoked: every lock held through it is gone.
    #[error("the session's lease {lease:x} is gone ({reason}); locks held through it are released")]
    SessionLost {
        /// The lease id.
        lease: i64,
        /// Why it was lost.
        reason: crate::LossReason,
    },
    /// `try_lock` found the lock held by someone else.
    #[error("lock {name:?} is held by another session (holder key {holder:?})")]
    WouldBlock {
        /// The lock name.
        name: String,
        /// The key of the current holder.
        holder: String,
    },
    /// A lock or permit was not acquired before the deadline; nothing was left behind.
    #[error("gave up waiting for {name:?} after {waited:?}")]
    Timeout {
        /// The lock or semaphore name.
        name: String,
        /// How long it waited.
        waited: Duration,
    },
    /// An operation that needs ownership found the key gone or re-created: the lock is not held (any more).
    #[error("lock key {key:?} is not held by this session (released, expired or taken over)")]
    NotHeld {
        /// The lock key.
        key: String,
    },
    /// The server answered in a way the protocol does not allow (for example, a response without a header).
    #[error("unexpected response from the server: {what}")]
    Protocol {
        /// What was wrong.
        what: String,
    },
    /// A request to the etcd API failed with a definite answer.
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A request kept failing transiently until the retry policy's time ran out (or, for a write that is not
    /// idempotent, failed after it may have been applied).
    #[error("etcd request failed: {0}")]
    Retry(trestle_etcd::ClientError),
}

impl From<trestle_etcd::ClientError> for LockError {
    fn from(error: trestle_etcd::ClientError) -> Self {
        match error {
            trestle_etcd::ClientError::Etcd(error) => Self::Etcd(error),
            other => Self::Retry(other),
        }
    }
}

impl LockError {
    /// Whether retrying the same call may succeed (server or network trouble), as opposed to a usage error or a
    /// lost session (which needs a new session first).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Etcd(_) | Self::Retry(_) | Self::Timeout { .. } | Self::WouldBlock { .. }
        )
    }
}
