//! A session: one lease kept alive in the background, whose loss every lock held through it can observe.

mod keepalive;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use trestle_etcd::CallKind;

use crate::LockError;

pub use keepalive::{KeepAliveAction, KeepAliveSchedule, LossReason};

/// The shortest session TTL accepted: below it, one slow keep-alive round trip would lose the lease.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(1);
/// The longest session TTL accepted: a crashed holder blocks its locks for up to the TTL, so a day is already
/// far longer than any sensible choice.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How a [`Session`] is set up.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionOptions {
    /// The lease TTL, in whole seconds. A crashed holder's locks are released at most this long after it died
    /// (plus the server's expiry check interval); a healthy holder needs keep-alives to get through within a
    /// third of it. Default 10 s. etcd raises TTLs below its minimum (2 s with default settings).
    pub ttl: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
        }
    }
}

impl SessionOptions {
    /// Options with the given TTL.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self { ttl }
    }

    /// Checks the options; the error names the offending value.
    pub fn validate(&self) -> Result<(), LockError> {
        if self.ttl < MIN_SESSION_TTL || self.ttl > MAX_SESSION_TTL || self.ttl.subsec_nanos() != 0 {
            return Err(LockError::InvalidTtl {
                ttl: self.ttl,
                min: MIN_SESSION_TTL,
                max: MAX_SESSION_TTL,
            });
        }
        Ok(())
    }
}

/// A clonable view of a session's fate: whether, and why, its lease is lost. Lock guards, permits and leaders
/// carry one so the holder can `select!` on [`LossSignal::lost`] next to its work.
#[derive(Clone, Debug)]
pub struct LossSignal {
    lease: i64,
    state: watch::Receiver<Option<LossReason>>,
}

impl LossSignal {
    /// Whether the session is lost.
    pub fn is_lost(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// Why the session was lost, if it was.
    pub fn reason(&self) -> Option<LossReason> {
        *self.state.borrow()
    }

    /// The session's lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Resolves when the session is lost (at once if it already is). Cancel-safe.
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            match state.wait_for(Option::is_some).await {
                Ok(reason) => reason.unwrap_or(LossReason::Closed),
                // The keep-alive task ended without a verdict: only possible when the runtime shuts down.
                Err(_) => LossReason::Closed,
            }
        }
    }

    /// The error to return when an operation finds the session lost.
    pub(crate) fn error(&self) -> LockError {
        LockError::SessionLost {
            lease: self.lease,
            reason: self.reason().unwrap_or(LossReason::Closed),
        }
    }
}

/// A lease with a TTL kept alive by a background task. Locks, semaphores and elections are tied to it: when the
/// lease is lost (expired, revoked, or the session closed) every lock key attached to it is deleted by the
/// server, and [`Session::loss`] tells the holder at once.
///
/// Dropping a session stops the keep-alive and revokes the lease in the background; [`Session::close`] does it
/// and waits.
pub struct Session {
    client: Client,
    lease: i64,
    ttl: Duration,
    loss: LossSignal,
    stop: CancellationToken,
    /// Set by [`Session::orphan`]: stop keeping the lease alive but do not revoke it.
    orphaned: Arc<AtomicBool>,
    keep_alive: Option<tokio::task::JoinHandle<()>>,
    /// For an attached session: holds the loss channel open (reporting nothing) while the session lives.
    _attached: Option<watch::Sender<Option<LossReason>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .field("lost", &self.loss.reason())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Grants a lease with the default options and keeps it alive.
    pub async fn new(client: Client) -> Result<Self, LockError> {
        Self::with_options(client, SessionOptions::default()).await
    }

    /// Grants a lease with `options` and keeps it alive.
    pub async fn with_options(client: Client, options: SessionOptions) -> Result<Self, LockError> {
        options.validate()?;
        let sent = Instant::now();
        let ttl = options.ttl.as_secs() as i64;
        // A grant is sent again only when it surely never arrived: a second lease would outlive this session.
        let granted = crate::queue::call(&client, CallKind::Write, |mut client| async move {
            client.lease_grant(ttl, None).await
        })
        .await?;
        if granted.ttl() <= 0 {
            return Err(LockError::Protocol {
                what: format!("lease grant answered TTL {}", granted.ttl()),
            });
        }
        let lease = granted.id();
        let ttl = Duration::from_secs(granted.ttl().unsigned_abs());
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let transport = EtcdLease {
            client: client.clone(),
            lease,
            stream: None,
        };
        let orphaned = Arc::new(AtomicBool::new(false));
        let keep_alive = tokio::spawn(drive(
            transport,
            KeepAliveSchedule::new(sent, ttl),
            tx,
            stop.clone(),
            orphaned.clone(),
        ));
        debug!(lease = format_args!("{lease:x}"), ?ttl, "session started");
        Ok(Self {
            client,
            lease,
            ttl,
            loss: LossSignal { lease, state: rx },
            stop,
            orphaned,
            keep_alive: Some(keep_alive),
            _attached: None,
        })
    }

    /// A session over a lease someone else keeps alive (etcd's `WithLease`): no keep-alive, no revoke on close,
    /// and loss is not detected locally. The lock and election gRPC services use it for the caller's lease.
    pub fn attach(client: Client, lease: i64) -> Self {
        let (tx, rx) = watch::channel(None);
        Self {
            client,
            lease,
            ttl: Duration::ZERO,
            loss: LossSignal { lease, state: rx },
            stop: CancellationToken::new(),
            orphaned: Arc::new(AtomicBool::new(true)),
            keep_alive: None,
            _attached: Some(tx),
        }
    }

    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The TTL the server granted (zero for an attached session).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The client the session talks through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The session's loss signal.
    pub fn loss(&self) -> &LossSignal {
        &self.loss
    }

    /// Whether the session is still alive (as far as the client can tell).
    pub fn is_alive(&self) -> bool {
        !self.loss.is_lost()
    }

    /// Stops the keep-alive without revoking the lease (etcd's `Orphan`): locks held through it stay held until
    /// the TTL runs out.
    pub async fn orphan(mut self) {
        self.orphaned.store(true, Ordering::SeqCst);
        self.stop.cancel();
        if let Some(task) = self.keep_alive.take() {
            let _ = task.await;
        }
    }

    /// Stops the keep-alive and revokes the lease (releasing every lock held through it), and waits for both.
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.keep_alive.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The keep-alive task revokes the lease when told to stop.
        self.stop.cancel();
    }
}

/// The keep-alive stream of one lease, as the driver needs it.
pub(crate) trait LeaseTransport: Send + 'static {
    /// Sends one keep-alive, opening a new stream first if there is none. `Ok(false)`: the server says the
    /// lease does not exist.
    fn send(&mut self) -> impl Future<Output = Result<bool, LockError>> + Send;
    /// Drops the current stream.
    fn reset(&mut self);
    /// The TTL of the next answer; `None` if the stream ended. Pending forever without a stream. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<i64>, LockError>> + Send;
    /// Revokes the lease, best-effort.
    fn revoke(&mut self) -> impl Future<Output = ()> + Send;
}

struct EtcdLease {
    client: Client,
    lease: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl LeaseTransport for EtcdLease {
    async fn send(&mut self) -> Result<bool, LockError> {
        if self.stream.is_none() {
            // Opening the stream sends a first keep-alive and reads its answer; a missing lease is reported as a
            // `LeaseKeepAliveError` by etcd-client.
            match self.client.lease_keep_alive(self.lease).await {
                Ok(stream) => self.stream = Some(stream),
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some((keeper, _)) = self.stream.as_mut() {
            keeper.keep_alive().await?;
        }
        Ok(true)
    }

    fn reset(&mut self) {
        self.stream = None;
    }

    async fn recv(&mut self) -> Result<Option<i64>, LockError> {
        match self.stream.as_mut() {
            Some((_, answers)) => Ok(answers.message().await?.map(|a| a.ttl())),
            None => std::future::pending().await,
        }
    }

    async fn revoke(&mut self) {
        let revoke = self.client.lease_revoke(self.lease);
        match tokio::time::timeout(Duration::from_secs(2), revoke).await {
            Ok(Ok(_)) => debug!(lease = format_args!("{:x}", self.lease), "lease revoked"),
            Ok(Err(e)) => {
                warn!(lease = format_args!("{:x}", self.lease), error = %e, "lease revoke failed; it expires after its TTL")
            }
            Err(_) => warn!(
                lease = format_args!("{:x}", self.lease),
                "lease revoke timed out; it expires after its TTL"
            ),
        }
    }
}

/// The thin async shell around [`KeepAliveSchedule`].
async fn drive<T: LeaseTransport>(
    mut transport: T,
    mut schedule: KeepAliveSchedule,
    state: watch::Sender<Option<LossReason>>,
    stop: CancellationToken,
    orphaned: Arc<AtomicBool>,
) {
    loop {
        match schedule.poll(Instant::now()) {
            KeepAliveAction::Lost(reason) => {
                warn!(?reason, "session lost");
                state.send_replace(Some(reason));
                return;
            }
            action @ (KeepAliveAction::Send | KeepAliveAction::Reconnect) => {
                if action == KeepAliveAction::Reconnect {
                    transport.reset();
                }
                let sent = tokio::select! {
                    _ = stop.cancelled() => Ok(Ok(true)),
                    sent = tokio::time::timeout_at(schedule.next_wakeup(), transport.send()) => sent,
                };
                match sent {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => schedule.on_ack(Instant::now(), 0),
                    Ok(Err(_)) | Err(_) => {
                        debug!("keep-alive not sent; retrying");
                        transport.reset();
                        schedule.on_error(Instant::now());
                    }
                }
            }
            KeepAliveAction::Wait => {}
        }
        tokio::select! {
            _ = stop.cancelled() => {
                schedule.close();
                if !orphaned.load(Ordering::SeqCst) {
                    transport.revoke().await;
                }
                state.send_replace(Some(LossReason::Closed));
                return;
            }
            _ = tokio::time::sleep_until(schedule.next_wakeup()) => {}
            answer = transport.recv() => match answer {
                Ok(Some(ttl)) => schedule.on_ack(Instant::now(), ttl),
                Ok(None) | Err(_) => {
                    transport.reset();
                    schedule.on_error(Instant::now());
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A lease server in the test's (paused) clock: answers each keep-alive after `delay` while `healthy`.
    #[derive(Clone)]
    struct FakeLease {
        healthy: Arc<AtomicBool>,
        sends: Arc<AtomicUsize>,
        revoked: Arc<AtomicBool>,
        pending: Arc<std::sync::Mutex<Vec<Instant>>>,
        delay: Duration,
    }

    impl LeaseTransport for FakeLease {
        async fn send(&mut self) -> Result<bool, LockError> {
            self.sends.fetch_add(1, Ordering::SeqCst);
            if self.healthy.load(Ordering::SeqCst)
                && let Ok(mut p) = self.pending.lock()
            {
                p.push(Instant::now() + self.delay);
            }
            Ok(true)
        }
        fn reset(&mut self) {}
        async fn recv(&mut self) -> Result<Option<i64>, LockError> {
            let next = self.pending.lock().ok().and_then(|p| p.first().copied());
            match next {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    if let Ok(mut p) = self.pending.lock() {
                        p.remove(0);
                    }
                    Ok(Some(3))
                }
                None => std::future::pending().await,
            }
        }
        async fn revoke(&mut self) {
            self.revoked.store(true, Ordering::SeqCst);
        }
    }

    fn fake(delay: Duration) -> FakeLease {
        FakeLease {
            healthy: Arc::new(AtomicBool::new(true)),
            sends: Arc::new(AtomicUsize::new(0)),
            revoked: Arc::new(AtomicBool::new(false)),
            pending: Arc::default(),
            delay,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_lease_lives_and_a_silent_one_is_lost_within_its_ttl() {
        let lease = fake(Duration::from_millis(30));
        let (tx, mut rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let start = Instant::now();
        let task = tokio::spawn(drive(
            lease.clone(),
            KeepAliveSchedule::new(start, Duration::from_secs(3)),
            tx,
            stop.clone(),
            Arc::new(AtomicBool::new(false)),
        ));
        // A minute of paused time with a healthy server: about one keep-alive per second, never lost.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(*rx.borrow(), None);
        let sends = lease.sends.load(Ordering::SeqCst);
        assert!((55..=61).contains(&sends), "{sends} keep-alives in 60 s");

        // The server goes silent: the session is lost no later than 3 s after the last acknowledged send.
        lease.healthy.store(false, Ordering::SeqCst);
        let silent_at = Instant::now();
        let reason = rx.wait_for(Option::is_some).await.map(|r| *r).ok().flatten();
        assert_eq!(reason, Some(LossReason::Expired));
        assert!(Instant::now() - silent_at <= Duration::from_secs(3));
        task.await.ok();
        assert!(!lease.revoked.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_revokes_and_reports_closed() {
        let lease = fake(Duration::from_millis(10));
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(drive(
            lease.clone(),
            KeepAliveSchedule::new(Instant::now(), Duration::from_secs(3)),
            tx,
            stop.clone(),
            Arc::new(AtomicBool::new(false)),
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
        task.await.ok();
        assert!(lease.revoked.load(Ordering::SeqCst));
        assert_eq!(*rx.borrow(), Some(LossReason::Closed));
    }

    #[test]
    fn ttl_bounds_are_checked() {
        for bad in [0, 500, 1_500] {
            let options = SessionOptions::with_ttl(Duration::from_millis(bad));
            assert!(
                matches!(options.validate(), Err(LockError::InvalidTtl { .. })),
                "{bad} ms"
            );
        }
        let huge = SessionOptions::with_ttl(MAX_SESSION_TTL + Duration::from_secs(1));
        assert!(matches!(huge.validate(), Err(LockError::InvalidTtl { .. })));
        assert!(SessionOptions::default().validate().is_ok());
    }
}
