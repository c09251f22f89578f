//! # trestle-election
//!
//! Leader election over etcd's v3 API: against a Trestle cluster or a real etcd, compatible with etcd's own
//! election service and `etcdctl elect` (the same key layout).
//!
//! - [`Election`]: [`campaign`](Election::campaign) (waits to lead), [`leader`](Election::leader),
//!   [`observe`](Election::observe) (leaders in order, ending on the current one).
//! - [`Leadership`]: [`proclaim`](Leadership::proclaim), [`resign`](Leadership::resign), the loss signal of its
//!   session (leadership ends the moment the lease does), and [`fenced_txn`](Leadership::fenced_txn), which
//!   applies writes only while still leading, so a deposed leader's writes are rejected.
//! - [`LeaderElector`]: run-while-leader work, cancelled when leadership is lost, in the spirit of Kubernetes
//!   client-go.
//!
//! ```no_run
//! use std::sync::Arc;
//! use trestle_election::{ElectorConfig, LeaderCallbacks, LeaderElector, Leading};
//! use tokio_util::sync::CancellationToken;
//!
//! struct Compactor;
//!
//! impl LeaderCallbacks for Compactor {
//!     async fn on_started_leading(&self, leading: Leading) {
//!         loop {
//!             tokio::select! {
//!                 () = leading.cancelled() => return,
//!                 () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
//!                     // Only a current leader's write lands.
//!                     let op = etcd_client::TxnOp::put("compactor/last-run", "now", None);
//!                     if leading.leadership().fenced_txn(vec![op]).await.is_err() {
//!                         return;
//!                     }
//!                 }
//!             }
//!         }
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
//! let elector = LeaderElector::new(client, ElectorConfig::new("compactor", "host-a"))?;
//! let shutdown = CancellationToken::new();
//! elector.run(Arc::new(Compactor), shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Safety is that of [`trestle_lock`]'s locks: a leader that pauses past its TTL may still believe it leads. Guard
//! every write with [`Leadership::fenced_txn`] (same cluster) or the term's fencing token (elsewhere).

mod election;
mod elector;
mod error;
mod observe;

pub use election::{Election, Leadership};
pub use elector::{ElectorConfig, LeaderCallbacks, LeaderElector, Leading};
pub use error::ElectionError;
pub use observe::{LeaderRecord, LeaderTracker};
