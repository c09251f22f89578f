//! A client for the etcd v3 API (Trestle's or etcd's own) that retries what is safe to retry.
//!
//! [`etcd_client::Client`] already holds the endpoint list, balances calls over it and reconnects; what it does
//! not do is retry. [`RetryingClient`] wraps it with one rule, the one etcd's own Go client follows: a call that
//! cannot change anything (a read, a lease's time to live, the member list) is retried on any transient failure;
//! a call that changes something (put, delete, txn, lease grant and revoke) is retried only when it surely never
//! reached a server's state machine — the connection could not be made, hyper gave the request back unsent, or
//! the server said it has no leader or is stopping.
//! When a write fails after it may have been applied, the caller gets [`ClientError::Indeterminate`] and decides
//! (read back, or make the write conditional): retrying blindly could apply it twice, and a compare-and-swap
//! would then report failure against its own success.
//!
//! Streams (watch, lease keep-alive) are reached through [`RetryingClient::inner`]; re-establishing a watch from
//! the last revision seen is the watcher's business (see trestle-lock's queue for an example).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use etcd_client::{
    DeleteOptions, DeleteResponse, GetOptions, GetResponse, LeaseGrantOptions, LeaseGrantResponse,
    LeaseRevokeResponse, LeaseTimeToLiveOptions, LeaseTimeToLiveResponse, MemberListResponse, PutOptions,
    PutResponse, StatusResponse, Txn, TxnResponse,
};
use tokio::time::Instant;

/// How [`RetryingClient`] retries.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The first delay between attempts; it doubles, with jitter, up to `max_delay`. Default 20 ms.
    pub min_delay: Duration,
    /// The longest delay between attempts. Default 500 ms.
    pub max_delay: Duration,
    /// How long one call may take, retries included, from its first attempt. An attempt still running then is
    /// abandoned: a read gives up, a write is reported indeterminate (it may have reached a server). Default
    /// 10 s (two Trestle request timeouts: a leader election and a retry fit).
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(500),
            give_up_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Checks the policy: delays above zero, `min_delay <= max_delay`.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.min_delay.is_zero() || self.min_delay > self.max_delay {
            return Err(ClientError::InvalidPolicy {
                reason: format!(
                    "min_delay ({:?}) must be above zero and at most max_delay ({:?})",
                    self.min_delay, self.max_delay
                ),
            });
        }
        Ok(())
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The policy is unusable.
    #[error("invalid retry policy: {reason}")]
    InvalidPolicy {
        /// What is wrong.
        reason: String,
    },
    /// A write failed after it may have been applied (the connection broke or the deadline passed while a server
    /// had it). It was not retried; read back to find out.
    #[error("the write may or may not have been applied (not retried): {source}")]
    Indeterminate {
        /// The failure.
        source: etcd_client::Error,
    },
    /// Still failing transiently when the policy's time ran out.
    #[error("gave up after {attempts} attempts in {elapsed:?}: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: etcd_client::Error,
    },
    /// A definite answer: the server refused the request (bad input, a compacted revision, a missing lease...)
    /// or the client could not be built.
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
}

/// What a call does, which decides what may be retried ([`RetryingClient::call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallKind {
    /// It changes nothing (a range read, opening a watch, a lease's time to live, the member list): retried on
    /// any transient failure.
    ReadOnly,
    /// Applied twice, it leaves the same state as once: a put-if-absent transaction, a put or delete of one's own
    /// key guarded by its create revision. Retried like a read. Its answer may still differ on a second
    /// attempt (a guarded delete that already happened now fails its compare): the caller reads it as such.
    Idempotent,
    /// Applied twice, it may differ from once (a plain put, a compare-and-swap, a lease grant): retried only
    /// when the failure proves it never reached a state machine, otherwise [`ClientError::Indeterminate`].
    Write,
}

/// What to do with a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Retry,
    Indeterminate,
    Final,
}

/// Decides, sans IO, whether a failed attempt is retried.
pub(crate) fn judge(kind: CallKind, error: &etcd_client::Error) -> Verdict {
    if !is_transient(error) {
        return Verdict::Final;
    }
    match kind {
        CallKind::ReadOnly | CallKind::Idempotent => Verdict::Retry,
        CallKind::Write if never_applied(error) => Verdict::Retry,
        CallKind::Write => Verdict::Indeterminate,
    }
}

/// A failure that another attempt, perhaps on another endpoint, may not have.
fn is_transient(error: &etcd_client::Error) -> bool {
    use tonic::Code;
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled
            ) || refused_by_go_away(status)
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// A failure that proves the request changed nothing: it never left this process (no connection, or hyper
/// gave it back unsent), or the server answered that it has no leader (etcd and Trestle both say so before proposing anything).
fn never_applied(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.message(),
                "etcdserver: no leader" | "etcdserver: server stopped"
            ) || never_sent(status)
        }
        _ => false,
    }
}

/// True when the request failed with the GOAWAY of a member stopping gracefully (tonic reports it as `Internal`):
/// another member may answer it. Not proof that a write did nothing: streams above the GOAWAY's last stream id
/// were not processed (RFC 9113, section 6.8), but h2 may fail a stream the server had taken with the same error
/// when the connection then closes, so a write failing this way is indeterminate.
fn refused_by_go_away(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err
            .downcast_ref::<h2::Error>()
            .is_some_and(|e| e.is_go_away() && e.is_remote())
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// True when `status` proves the request never left this process: the connection could not be made (tonic's
/// `ConnectError`), or hyper handed the request back unsent (`Canceled` is reported only for a request its
/// connection task never took; one lost after it was written fails with an HTTP/2 error instead).
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some()
            || err
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// An etcd v3 client that retries what is safe to retry (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct RetryingClient {
    inner: etcd_client::Client,
    policy: RetryPolicy,
}

impl std::fmt::Debug for RetryingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryingClient")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RetryingClient {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`). Like etcd-client's `connect`, it fails only on
    /// bad input or when no endpoint can be reached at all.
    pub async fn connect<E: AsRef<str>, S: AsRef<[E]>>(
        endpoints: S,
        options: Option<etcd_client::ConnectOptions>,
        policy: RetryPolicy,
    ) -> Result<Self, ClientError> {
        policy.validate()?;
        let inner = etcd_client::Client::connect(endpoints, options).await?;
        Ok(Self { inner, policy })
    }

    /// Wraps a connected etcd-client.
    pub fn new(inner: etcd_client::Client, policy: RetryPolicy) -> Result<Self, ClientError> {
        policy.validate()?;
        Ok(Self { inner, policy })
    }

    /// The wrapped client, for streams (watch, keep-alive) and calls not wrapped here.
    pub fn inner(&self) -> &etcd_client::Client {
        &self.inner
    }

    /// Runs `attempt` (given a clone of the wrapped client) under the retry rule for `kind`, within the policy's
    /// time: for calls this type does not wrap, and for crates that keep their own `etcd_client::Client` but
    /// follow the same rule (trestle-lock, trestle-election, the shard router's membership).
    pub async fn call<T, F, Fut>(&self, kind: CallKind, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0u32;
        let deadline = started + self.policy.give_up_after;
        loop {
            attempts += 1;
            // A server that has stopped may still hold a connection open and answer only at its own deadline;
            // the caller's budget bounds the attempt, not only the retries.
            let error = match tokio::time::timeout_at(deadline, attempt(self.inner.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(_) => {
                    let last = etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(format!(
                        "no answer within the retry policy's give_up_after ({:?})",
                        self.policy.give_up_after
                    )));
                    return Err(match kind {
                        CallKind::ReadOnly | CallKind::Idempotent => ClientError::GaveUp {
                            attempts,
                            elapsed: started.elapsed(),
                            last,
                        },
                        CallKind::Write => ClientError::Indeterminate { source: last },
                    });
                }
            };
            match judge(kind, &error) {
                Verdict::Final => return Err(ClientError::Etcd(error)),
                Verdict::Indeterminate => return Err(ClientError::Indeterminate { source: error }),
                Verdict::Retry => {}
            }
            let delay = delays.next().unwrap_or(self.policy.max_delay);
            if started.elapsed() + delay > self.policy.give_up_after {
                return Err(ClientError::GaveUp {
                    attempts,
                    elapsed: started.elapsed(),
                    last: error,
                });
            }
            tracing::debug!(%error, attempts, ?delay, "etcd call failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// etcd `Range`: retried on any transient failure.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, ClientError> {
        let key = key.into();
        self.call(CallKind::ReadOnly, |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    /// etcd `Put`: retried only when it surely changed nothing.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, ClientError> {
        let (key, value) = (key.into(), value.into());
        self.call(CallKind::Write, |mut c| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, options).await }
        })
        .await
    }

    /// etcd `DeleteRange`: retried only when it surely changed nothing.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteResponse, ClientError> {
        let key = key.into();
        self.call(CallKind::Write, |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.delete(key, options).await }
        })
        .await
    }

    /// etcd `Txn`: retried only when it surely changed nothing (a transaction is treated as a write).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, ClientError> {
        self.call(CallKind::Write, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// etcd `LeaseGrant`: retried only when it surely granted nothing.
    pub async fn lease_grant(
        &self,
        ttl: i64,
        options: Option<LeaseGrantOptions>,
    ) -> Result<LeaseGrantResponse, ClientError> {
        self.call(CallKind::Write, |mut c| {
            let options = options.clone();
            async move { c.lease_grant(ttl, options).await }
        })
        .await
    }

    /// etcd `LeaseRevoke`: retried only when it surely revoked nothing.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        self.call(CallKind::Write, |mut c| async move { c.lease_revoke(id).await })
            .await
    }

    /// etcd `LeaseTimeToLive`: retried on any transient failure.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        options: Option<LeaseTimeToLiveOptions>,
    ) -> Result<LeaseTimeToLiveResponse, ClientError> {
        self.call(CallKind::ReadOnly, |mut c| {
            let options = options.clone();
            async move { c.lease_time_to_live(id, options).await }
        })
        .await
    }

    /// etcd `MemberList`: retried on any transient failure.
    pub async fn member_list(&self) -> Result<MemberListResponse, ClientError> {
        self.call(CallKind::ReadOnly, |mut c| async move { c.member_list().await })
            .await
    }

    /// etcd `Status` of the endpoint a call lands on: retried on any transient failure.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call(CallKind::ReadOnly, |mut c| async move { c.status().await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn reads_retry_every_transient_failure_writes_only_those_that_changed_nothing() {
        use tonic::Code::{DeadlineExceeded, InvalidArgument, NotFound, Unavailable, Unknown};
        let broken = status(Unknown, "transport error");
        let late = status(DeadlineExceeded, "deadline");
        let lost = status(
            Unavailable,
            "etcdserver: request timed out, possibly due to previous leader failure",
        );
        let no_leader = status(Unavailable, "etcdserver: no leader");
        let stopping = status(Unavailable, "etcdserver: server stopped");
        for error in [&broken, &late, &lost, &no_leader, &stopping] {
            assert_eq!(judge(CallKind::ReadOnly, error), Verdict::Retry, "{error}");
            assert_eq!(judge(CallKind::Idempotent, error), Verdict::Retry, "{error}");
        }
        // An internal error is the server's bug or a corrupt answer, not something another attempt fixes.
        let internal = status(tonic::Code::Internal, "unexpected reply from the leader");
        for kind in [CallKind::ReadOnly, CallKind::Idempotent, CallKind::Write] {
            assert_eq!(judge(kind, &internal), Verdict::Final);
        }
        assert_eq!(judge(CallKind::Write, &no_leader), Verdict::Retry);
        assert_eq!(judge(CallKind::Write, &stopping), Verdict::Retry);
        for error in [&broken, &late, &lost] {
            assert_eq!(judge(CallKind::Write, error), Verdict::Indeterminate, "{error}");
        }
        for error in [
            status(InvalidArgument, "etcdserver: key is not provided"),
            status(NotFound, "etcdserver: requested lease not found"),
        ] {
            assert_eq!(judge(CallKind::ReadOnly, &error), Verdict::Final);
            assert_eq!(judge(CallKind::Write, &error), Verdict::Final);
        }
    }

    #[test]
    fn policies_are_validated() {
        assert!(RetryPolicy::default().validate().is_ok());
        let backwards = RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        assert!(matches!(
            backwards.validate(),
            Err(ClientError::InvalidPolicy { .. })
        ));
    }
}
