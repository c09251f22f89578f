//! A key this session holds in a line (a lock, a permit, a leadership): its fencing token, the compare that
//! proves ownership inside a transaction, and its release.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnResponse};
use tracing::{debug, warn};

use trestle_etcd::CallKind;

use crate::queue::call;
use crate::{FencingToken, LockError, LossSignal};

/// The state shared by [`LockGuard`](crate::LockGuard) and [`Permit`](crate::Permit).
pub(crate) struct HeldKey {
    pub(crate) client: Client,
    pub(crate) key: Vec<u8>,
    pub(crate) revision: i64,
    pub(crate) loss: LossSignal,
    pub(crate) released: bool,
}

impl std::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldKey")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("revision", &self.revision)
            .field("released", &self.released)
            .finish_non_exhaustive()
    }
}

impl HeldKey {
    pub(crate) fn key_display(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    pub(crate) fn fencing_token(&self) -> FencingToken {
        FencingToken::new(self.revision.unsigned_abs())
    }

    pub(crate) fn ownership(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    /// Runs `then` only while the key is still ours (one transaction); [`LockError::NotHeld`] otherwise.
    pub(crate) async fn fenced(&self, then: Vec<TxnOp>) -> Result<TxnResponse, LockError> {
        let txn = Txn::new().when([self.ownership()]).and_then(then);
        let mut client = self.client.clone();
        let response = client.txn(txn).await?;
        if response.succeeded() {
            Ok(response)
        } else {
            Err(LockError::NotHeld {
                key: self.key_display(),
            })
        }
    }

    /// Deletes the key if it is still ours.
    pub(crate) async fn release(&mut self) -> Result<(), LockError> {
        self.released = true;
        let txn = Txn::new()
            .when([self.ownership()])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        // A delete of our own key guarded by its create revision: applied twice, the state is the same. After a
        // first attempt whose answer was lost, the second finds the key gone and reports it not held.
        let response = call(&self.client, CallKind::Idempotent, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await?;
        if response.succeeded() {
            debug!(key = %self.key_display(), "released");
            Ok(())
        } else {
            Err(LockError::NotHeld {
                key: self.key_display(),
            })
        }
    }
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(key = %self.key_display(), "dropped outside a runtime; the key goes when its lease does");
            return;
        };
        let mut held = HeldKey {
            client: self.client.clone(),
            key: std::mem::take(&mut self.key),
            revision: self.revision,
            loss: self.loss.clone(),
            released: true,
        };
        runtime.spawn(async move {
            if let Err(e) = held.release().await {
                debug!(key = %held.key_display(), error = %e, "background release found nothing to do");
            }
        });
    }
}

/// The background withdrawals of abandoned attempts on one key. The next attempt on the same key waits for
/// them ([`PendingWithdrawals::settle`]) so it never adopts a key that is about to be deleted under it.
#[derive(Clone, Default)]
pub struct PendingWithdrawals(std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl std::fmt::Debug for PendingWithdrawals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.0.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("PendingWithdrawals")
            .field("pending", &pending)
            .finish()
    }
}

impl PendingWithdrawals {
    /// Waits until every withdrawal started so far has finished.
    pub async fn settle(&self) {
        let handles = match self.0.lock() {
            Ok(mut handles) => std::mem::take(&mut *handles),
            Err(_) => Vec::new(),
        };
        for handle in handles {
            let _ = handle.await;
        }
    }

    fn push(&self, handle: tokio::task::JoinHandle<()>) {
        if let Ok(mut handles) = self.0.lock() {
            handles.retain(|h| !h.is_finished());
            handles.push(handle);
        }
    }
}

/// Withdraws a contender's key unless disarmed: keeps `lock()`, `acquire()` and `campaign()` cancel-safe (a dropped
/// future leaves no key that would block others until the lease ends). Once the attempt knows its key's create
/// revision ([`CleanupOnDrop::queued_at`]) only that incarnation of the key is deleted.
#[allow(missing_debug_implementations)]
pub struct CleanupOnDrop {
    client: Client,
    key: Vec<u8>,
    revision: Option<i64>,
    pending: PendingWithdrawals,
    armed: bool,
}

impl CleanupOnDrop {
    /// Armed for `key`: dropping it deletes the key in the background, registered in `pending`.
    pub fn new(client: &Client, key: &[u8], pending: &PendingWithdrawals) -> Self {
        Self {
            client: client.clone(),
            key: key.to_vec(),
            revision: None,
            pending: pending.clone(),
            armed: true,
        }
    }

    /// The attempt's key was created at `revision`: delete only that one.
    pub fn queued_at(&mut self, revision: i64) {
        self.revision = Some(revision);
    }

    /// The attempt succeeded: keep the key.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut client = self.client.clone();
        let key = std::mem::take(&mut self.key);
        let revision = self.revision;
        let handle = runtime.spawn(async move {
            let result = match revision {
                Some(revision) => client
                    .txn(
                        Txn::new()
                            .when([Compare::create_revision(key.clone(), CompareOp::Equal, revision)])
                            .and_then([TxnOp::delete(key.clone(), None)]),
                    )
                    .await
                    .map(|_| ()),
                // Abandoned while its enqueue was in flight: the key, if it was created, is this attempt's.
                None => client.delete(key.clone(), None).await.map(|_| ()),
            };
            if let Err(e) = result {
                warn!(key = %String::from_utf8_lossy(&key), error = %e, "could not remove an abandoned contender key; it goes when its lease does");
            }
        });
        self.pending.push(handle);
    }
}
