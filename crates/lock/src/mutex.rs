//! A distributed mutex in etcd's design, with fencing tokens.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnResponse};
use tokio::time::Instant;

use crate::held::{CleanupOnDrop, HeldKey};
use trestle_etcd::CallKind;

use crate::queue::{Contender, call, enqueue, get, guarded, header_revision, wait_for_turn};
use crate::{FencingToken, LockError, LossSignal, Session};

/// A named distributed lock. The lock is the line of keys under `name/`: each contender puts
/// `name/<lease in hex>` attached to its session's lease, the oldest key (lowest create revision) holds, and each
/// waiter watches only the key just ahead of it. The same layout as etcd's `concurrency.Mutex` and
/// `etcdctl lock`, so they share locks with this one.
///
/// One session contends once per name: a second `lock()` through the same session and name finds the same key
/// and returns at once, as in etcd (the lock is not counted; one unlock releases it).
#[derive(Clone, Debug)]
pub struct Mutex {
    line: Contender,
}

impl Mutex {
    /// A mutex named `name` (any non-empty bytes; a `/`-separated path is usual) through `session`.
    pub fn new(session: &Session, name: impl AsRef<[u8]>) -> Result<Self, LockError> {
        Ok(Self {
            line: Contender::new(session, name.as_ref())?,
        })
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.line.name
    }

    /// The key this session puts in the line.
    pub fn key(&self) -> &[u8] {
        &self.line.key
    }

    /// Waits until this session holds the lock. Cancel-safe: dropping the future removes the key it put (in the
    /// background), so an abandoned attempt does not block others. Fails with [`LockError::SessionLost`] if the
    /// session ends while waiting.
    pub async fn lock(&self) -> Result<LockGuard, LockError> {
        // An earlier abandoned attempt of this mutex may still be removing the same key: let it finish first.
        self.line.withdrawals.settle().await;
        let mut cleanup = CleanupOnDrop::new(&self.line.client, &self.line.key, &self.line.withdrawals);
        loop {
            let queued = guarded(
                &self.line.loss,
                enqueue(&self.line.client, &self.line.key, b"", self.line.lease),
            )
            .await?;
            cleanup.queued_at(queued.revision);
            wait_for_turn(
                &self.line.client,
                &self.line.prefix,
                queued.revision,
                &self.line.loss,
            )
            .await?;
            match self.confirm(queued.revision).await? {
                Some(guard) => {
                    cleanup.disarm();
                    return Ok(guard);
                }
                // The key was deleted while we waited, the session still lives (an operator, or the cleanup of
                // an earlier abandoned attempt by this session): queue again.
                None if !self.line.loss.is_lost() => continue,
                None => return Err(self.line.loss.error()),
            }
        }
    }

    /// Like [`lock`](Self::lock), giving up after `timeout` with [`LockError::Timeout`]; nothing is left behind.
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(result) => result,
            Err(_) => Err(LockError::Timeout {
                name: self.line.name.clone(),
                waited: started.elapsed(),
            }),
        }
    }

    /// Takes the lock if nobody holds it, else fails at once with [`LockError::WouldBlock`] (removing the key
    /// it put).
    pub async fn try_lock(&self) -> Result<LockGuard, LockError> {
        self.line.withdrawals.settle().await;
        let mut cleanup = CleanupOnDrop::new(&self.line.client, &self.line.key, &self.line.withdrawals);
        let queued = guarded(
            &self.line.loss,
            enqueue(&self.line.client, &self.line.key, b"", self.line.lease),
        )
        .await?;
        cleanup.queued_at(queued.revision);
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1)
            .with_keys_only();
        let owner = guarded(
            &self.line.loss,
            get(&self.line.client, &self.line.prefix, options),
        )
        .await?;
        match owner.kvs().first() {
            Some(kv) if kv.create_revision() == queued.revision => {
                let guard = self
                    .confirm(queued.revision)
                    .await?
                    .ok_or_else(|| self.line.loss.error())?;
                cleanup.disarm();
                Ok(guard)
            }
            other => {
                let holder = other
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .unwrap_or_default();
                // Withdraw now, not in the background, so a following lock() through this session cannot race
                // with the removal of the same key. Only our own key: compared on its create revision.
                let withdraw = Txn::new()
                    .when([Compare::create_revision(
                        self.line.key.clone(),
                        CompareOp::Equal,
                        queued.revision,
                    )])
                    .and_then([TxnOp::delete(self.line.key.clone(), None)]);
                call(&self.line.client, CallKind::Idempotent, |mut client| {
                    let txn = withdraw.clone();
                    async move { client.txn(txn).await }
                })
                .await?;
                cleanup.disarm();
                Err(LockError::WouldBlock {
                    name: self.line.name.clone(),
                    holder,
                })
            }
        }
    }

    /// Our turn came: make sure the key is still there (the lease may have ended while we waited). `None`: it is
    /// gone.
    async fn confirm(&self, revision: i64) -> Result<Option<LockGuard>, LockError> {
        let mine = get(&self.line.client, &self.line.key, GetOptions::new()).await?;
        header_revision(mine.header())?;
        match mine.kvs().first() {
            Some(kv) if kv.create_revision() == revision => Ok(Some(LockGuard {
                name: self.line.name.clone(),
                held: HeldKey {
                    client: self.line.client.clone(),
                    key: self.line.key.clone(),
                    revision,
                    loss: self.line.loss.clone(),
                    released: false,
                },
            })),
            _ => Ok(None),
        }
    }
}

/// Proof of holding a [`Mutex`]. Release with [`unlock`](Self::unlock); dropping it releases in the background
/// (best-effort; the lease's end releases it in any case).
#[derive(Debug)]
pub struct LockGuard {
    name: String,
    held: HeldKey,
}

impl LockGuard {
    /// The fencing token: the create revision of this holder's key. It strictly increases from one holder to the
    /// next, across server leader changes and restarts (revisions are part of the replicated state). Hand it to
    /// the protected resource with every write; see [`FenceGate`](crate::FenceGate).
    pub fn fencing_token(&self) -> FencingToken {
        self.held.fencing_token()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key that holds the lock.
    pub fn key(&self) -> &[u8] {
        &self.held.key
    }

    /// A compare that holds only while this guard owns the lock, for your own transactions on the same cluster.
    pub fn ownership_compare(&self) -> Compare {
        self.held.ownership()
    }

    /// Runs `ops` in one transaction guarded by ownership: they apply only if this guard still holds the lock,
    /// else [`LockError::NotHeld`] and nothing changes.
    pub async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<TxnResponse, LockError> {
        self.held.fenced(ops).await
    }

    /// The session's loss signal: `select!` on [`LossSignal::lost`] next to the protected work and stop it when
    /// it fires, since the lock may then pass to someone else.
    pub fn loss(&self) -> &LossSignal {
        &self.held.loss
    }

    /// Releases the lock. [`LockError::NotHeld`] if it was no longer held (the session ended).
    pub async fn unlock(mut self) -> Result<(), LockError> {
        self.held.release().await
    }

    /// Gives up the guard without releasing the lock, returning its key: the lock stays held until the key is
    /// deleted or its lease ends. For handing a lock to another party (etcd's lock service returns the key to its
    /// caller this way).
    pub fn detach(mut self) -> Vec<u8> {
        self.held.released = true;
        std::mem::take(&mut self.held.key)
    }
}
