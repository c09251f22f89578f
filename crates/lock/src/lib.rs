//! # trestle-lock
//!
//! Fenced distributed locks and semaphores over etcd's v3 API. They run against a Trestle cluster or a real
//! etcd, and share locks with etcd's own clients (`etcdctl lock`, Go's `concurrency.Mutex`): the key layout is
//! the same.
//!
//! - [`Session`]: a lease with a TTL, kept alive in the background. Its [`LossSignal`] tells every holder at
//!   once when the lease is lost; closing it revokes the lease.
//! - [`Mutex`]: the lowest create revision under the lock's prefix holds; each waiter watches only the key
//!   ahead of it. [`Mutex::lock`] is cancel-safe, [`Mutex::try_lock`] never waits, [`Mutex::lock_timeout`] gives
//!   up cleanly. A [`LockGuard`] carries the [`FencingToken`].
//! - [`Semaphore`]: N permits on the same principles, for bulkheads across processes.
//! - [`FenceGate`]: the protected resource's half of fencing.
//!
//! ```no_run
//! use trestle_lock::{FenceGate, Mutex, Session, SessionOptions};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
//! let session = Session::with_options(client, SessionOptions::with_ttl(Duration::from_secs(10))).await?;
//! let lock = Mutex::new(&session, "reports/nightly")?;
//!
//! // The resource keeps its own gate (in a real system: in another process, with the highest token stored).
//! let storage = FenceGate::new();
//!
//! let guard = lock.lock().await?;
//! tokio::select! {
//!     _ = guard.loss().lost() => { /* the lease is gone: stop, someone else may hold the lock now */ }
//!     _ = async {
//!         storage.write(guard.fencing_token(), || { /* write the report */ })
//!     } => {}
//! }
//! guard.unlock().await?;
//! session.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Safety: what a lease-based lock guarantees, and what it cannot
//!
//! The server guarantees that at any revision at most one session's key is first in line: two holders never
//! both hold *according to the store*. A holder, though, acts on its belief, and a belief can go stale:
//!
//! - **Process pauses.** A holder stopped (GC, SIGSTOP, a swapped-out VM) for longer than the TTL loses its lease
//!   without running any code; the next waiter takes the lock; the old holder wakes and carries on writing.
//! - **Clock jumps and drift.** The session declares itself lost when no keep-alive was acknowledged for a TTL,
//!   measured on the client's monotonic clock from when each keep-alive was *sent* (so it errs early), while the
//!   server expires the lease on its own clock. Wall-clock jumps do not matter; clocks running at different
//!   *rates* would.
//! - **Network delay.** A write sent while holding may arrive after the lock has passed on.
//!
//! **Fencing tokens close the gap.** Each holder's token is the create revision of its key: strictly larger for
//! every later holder, across server leader failovers and full restarts, since revisions are replicated state.
//! If the protected resource refuses tokens older than the newest it has seen ([`FenceGate`], or a compare in
//! the resource's own transaction), a stale holder's write is rejected no matter how long it slept. Writes to the
//! same etcd/Trestle cluster can do better still: [`LockGuard::fenced_txn`] applies them only while the key is
//! ours, in one transaction.
//!
//! **Choosing the TTL.** It bounds how long a crashed holder blocks others (the next waiter acquires within the
//! TTL plus the server's expiry check) and must comfortably exceed the longest keep-alive round trip, since
//! keep-alives go out every third of it. 5–15 s suits most services; etcd raises anything under 2 s to its
//! minimum. Use the [`LossSignal`] to stop work promptly when the session ends.

mod error;
mod fence;
mod held;
mod mutex;
pub mod queue;
mod semaphore;
mod session;

pub use error::LockError;
pub use fence::{FenceGate, FencingToken, StaleToken};
pub use mutex::{LockGuard, Mutex};
pub use semaphore::{Permit, Semaphore};
pub use session::{
    KeepAliveAction, KeepAliveSchedule, LossReason, LossSignal, MAX_SESSION_TTL, MIN_SESSION_TTL, Session,
    SessionOptions,
};
