//! A distributed counting semaphore: N permits shared by every process that uses the same name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, GetOptions, TxnOp, TxnResponse};
use tokio::time::Instant;

use crate::held::{CleanupOnDrop, HeldKey, PendingWithdrawals};
use crate::queue::{enqueue, get, guarded, name_prefix, wait_for_slot};
use crate::{FencingToken, LockError, LossSignal, Session};

/// A semaphore with a fixed number of permits, for bulkheads across processes (at most N concurrent calls to a
/// fragile backend from a whole fleet). The line works like [`Mutex`](crate::Mutex)'s: each acquisition puts a
/// key attached to the session's lease, and the N oldest keys hold permits.
///
/// Every process must use the same `permits` for a name: it is not stored, each contender applies its own.
/// A release wakes every waiter behind the released key (each does one count read); the mutex avoids that herd,
/// a semaphore cannot without a fixed successor.
#[derive(Clone)]
pub struct Semaphore {
    client: Client,
    name: String,
    prefix: Vec<u8>,
    permits: u32,
    lease: i64,
    loss: LossSignal,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Distinguishes several acquisitions through one session.
static ACQUISITION: AtomicU64 = AtomicU64::new(0);

impl Semaphore {
    /// A semaphore named `name` with `permits` permits, through `session`.
    pub fn new(session: &Session, name: impl AsRef<[u8]>, permits: u32) -> Result<Self, LockError> {
        if permits == 0 {
            return Err(LockError::InvalidPermits { permits });
        }
        Ok(Self {
            client: session.client().clone(),
            name: String::from_utf8_lossy(name.as_ref()).into_owned(),
            prefix: name_prefix(name.as_ref())?,
            permits,
            lease: session.lease(),
            loss: session.loss().clone(),
        })
    }

    /// The number of permits.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Waits for a permit. Cancel-safe like [`Mutex::lock`](crate::Mutex::lock).
    pub async fn acquire(&self) -> Result<Permit, LockError> {
        let mut key = self.prefix.clone();
        let sequence = ACQUISITION.fetch_add(1, Ordering::Relaxed);
        key.extend_from_slice(format!("{:x}-{sequence:x}-{:x}", self.lease, std::process::id()).as_bytes());
        // Every acquisition has its own key, so no later attempt can adopt this one.
        let mut cleanup = CleanupOnDrop::new(&self.client, &key, &PendingWithdrawals::default());
        let queued = guarded(&self.loss, enqueue(&self.client, &key, b"", self.lease)).await?;
        cleanup.queued_at(queued.revision);
        wait_for_slot(
            &self.client,
            &self.prefix,
            queued.revision,
            self.permits,
            &self.loss,
        )
        .await?;
        let mine = get(&self.client, &key, GetOptions::new()).await?;
        if mine
            .kvs()
            .first()
            .is_none_or(|kv| kv.create_revision() != queued.revision)
        {
            return Err(self.loss.error());
        }
        cleanup.disarm();
        Ok(Permit {
            held: HeldKey {
                client: self.client.clone(),
                key,
                revision: queued.revision,
                loss: self.loss.clone(),
                released: false,
            },
        })
    }

    /// Like [`acquire`](Self::acquire), giving up after `timeout` with [`LockError::Timeout`].
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit, LockError> {
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.acquire()).await {
            Ok(result) => result,
            Err(_) => Err(LockError::Timeout {
                name: self.name.clone(),
                waited: started.elapsed(),
            }),
        }
    }
}

/// One permit of a [`Semaphore`]. Release with [`release`](Self::release); dropping it releases in the
/// background.
#[derive(Debug)]
pub struct Permit {
    held: HeldKey,
}

impl Permit {
    /// A token that increases with every acquisition (not a mutual-exclusion fence: N holders share the range).
    pub fn fencing_token(&self) -> FencingToken {
        self.held.fencing_token()
    }

    /// The permit's key.
    pub fn key(&self) -> &[u8] {
        &self.held.key
    }

    /// A compare that holds only while this permit is held.
    pub fn ownership_compare(&self) -> Compare {
        self.held.ownership()
    }

    /// Runs `ops` in one transaction only while the permit is held.
    pub async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<TxnResponse, LockError> {
        self.held.fenced(ops).await
    }

    /// The session's loss signal.
    pub fn loss(&self) -> &LossSignal {
        &self.held.loss
    }

    /// Returns the permit.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.held.release().await
    }
}
