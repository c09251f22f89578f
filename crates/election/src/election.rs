//! Campaigning, proclaiming, resigning and observing, in etcd's `concurrency.Election` design.

use std::sync::atomic::{AtomicBool, Ordering};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;
use trestle_etcd::CallKind;
use trestle_lock::queue::{
    CleanupOnDrop, Contender, call, enqueue, get, guarded, header_revision, wait_for_turn,
};
use trestle_lock::{FencingToken, LossSignal, Session};

use crate::{ElectionError, LeaderRecord, LeaderTracker};

/// One election (a name) seen through one session. Candidates put `name/<lease hex>` with their value; the
/// oldest key leads; each candidate watches only the key ahead of it. Compatible with etcd's own election
/// service and `etcdctl elect`.
#[derive(Clone, Debug)]
pub struct Election {
    line: Contender,
}

impl Election {
    /// The election `name` through `session`.
    pub fn new(session: &Session, name: impl AsRef<[u8]>) -> Result<Self, ElectionError> {
        let line = Contender::new(session, name.as_ref()).map_err(|_| ElectionError::EmptyName)?;
        Ok(Self { line })
    }

    /// A read-only view of the election `name` (for [`leader`](Self::leader) and [`observe`](Self::observe)),
    /// without a session; campaigning through it fails with a lost session.
    pub fn observer(client: Client, name: impl AsRef<[u8]>) -> Result<Self, ElectionError> {
        let session = Session::attach(client, 0);
        let mut line = Contender::new(&session, name.as_ref()).map_err(|_| ElectionError::EmptyName)?;
        // An observer has no key in the line.
        line.key = Vec::new();
        Ok(Self { line })
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.line.name
    }

    /// Waits until this session leads, proclaiming `value`. If the session already campaigns (its key exists),
    /// the value is updated and the wait continues from the same place in line. Cancel-safe: dropping the
    /// future withdraws the candidacy.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership, ElectionError> {
        let value = value.into();
        // An earlier abandoned campaign of this election may still be withdrawing the same key.
        self.line.withdrawals.settle().await;
        let mut cleanup = CleanupOnDrop::new(&self.line.client, &self.line.key, &self.line.withdrawals);
        let queued = guarded(
            &self.line.loss,
            enqueue(&self.line.client, &self.line.key, &value, self.line.lease),
        )
        .await?;
        cleanup.queued_at(queued.revision);
        let leadership = Leadership {
            client: self.line.client.clone(),
            name: self.line.name.clone(),
            key: self.line.key.clone(),
            revision: queued.revision,
            lease: self.line.lease,
            loss: self.line.loss.clone(),
            resigned: AtomicBool::new(false),
        };
        if queued.existed && queued.value != value {
            leadership.proclaim(value).await?;
        }
        wait_for_turn(
            &self.line.client,
            &self.line.prefix,
            queued.revision,
            &self.line.loss,
        )
        .await?;
        let mine = get(&self.line.client, &self.line.key, GetOptions::new()).await?;
        if mine
            .kvs()
            .first()
            .is_none_or(|kv| kv.create_revision() != queued.revision)
        {
            leadership.resigned.store(true, Ordering::SeqCst);
            return Err(ElectionError::NotLeader {
                name: self.line.name.clone(),
                key: leadership.key_display(),
            });
        }
        cleanup.disarm();
        debug!(election = %self.line.name, revision = queued.revision, "elected");
        Ok(leadership)
    }

    /// The current leader, if anyone leads (a linearizable read).
    pub async fn leader(&self) -> Result<Option<LeaderRecord>, ElectionError> {
        Ok(self.read_leader().await?.0)
    }

    async fn read_leader(&self) -> Result<(Option<LeaderRecord>, i64), ElectionError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let response = get(&self.line.client, &self.line.prefix, options).await?;
        let revision = header_revision(response.header())?;
        Ok((response.kvs().first().map(LeaderRecord::from_kv), revision))
    }

    /// A stream of leaders: the current one first (if any), then every new leader and every proclamation, in
    /// order, each once. It ends with an error if the server cannot be reached for long; drop it to stop.
    pub fn observe(&self) -> ReceiverStream<Result<LeaderRecord, ElectionError>> {
        let (tx, rx) = mpsc::channel(16);
        let election = self.clone();
        tokio::spawn(async move {
            let mut tracker = LeaderTracker::new();
            loop {
                let step = election.observe_once(&mut tracker, &tx).await;
                match step {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// One round: read the leader, report it, follow it until it goes. `Ok(false)`: the observer hung up.
    async fn observe_once(
        &self,
        tracker: &mut LeaderTracker,
        tx: &mpsc::Sender<Result<LeaderRecord, ElectionError>>,
    ) -> Result<bool, ElectionError> {
        let (leader, revision) = self.read_leader().await?;
        let (watched_key, prefix) = match &leader {
            Some(leader) => {
                if let Some(news) = tracker.saw(Some(leader))
                    && tx.send(Ok(news)).await.is_err()
                {
                    return Ok(false);
                }
                (leader.key.clone(), false)
            }
            None => (self.line.prefix.clone(), true),
        };
        let mut options = WatchOptions::new().with_start_revision(revision + 1);
        if prefix {
            options = options.with_prefix();
        }
        let mut stream = call(&self.line.client, CallKind::ReadOnly, |mut client| {
            let options = options.clone();
            let key = watched_key.clone();
            async move { client.watch(key, Some(options)).await }
        })
        .await?;
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = tx.closed() => return Ok(false),
            };
            let Ok(Some(response)) = message else {
                return Ok(true);
            };
            if response.canceled() {
                return Ok(true);
            }
            for event in response.events() {
                match (event.event_type(), event.kv()) {
                    // Somebody campaigned into an empty election, or the followed leader went: look again.
                    (EventType::Put, _) if prefix => return Ok(true),
                    (EventType::Delete, _) => return Ok(true),
                    (EventType::Put, Some(kv)) => {
                        if let Some(news) = tracker.saw(Some(&LeaderRecord::from_kv(kv)))
                            && tx.send(Ok(news)).await.is_err()
                        {
                            return Ok(false);
                        }
                    }
                    (EventType::Put, None) => return Ok(true),
                }
            }
        }
    }
}

/// This session leads the election. Tied to the session: when its lease is lost, leadership is lost at the same
/// moment ([`loss`](Self::loss) fires) and the server deletes the leader key, letting the next candidate lead.
/// Dropping it resigns in the background.
pub struct Leadership {
    client: Client,
    name: String,
    key: Vec<u8>,
    revision: i64,
    lease: i64,
    loss: LossSignal,
    resigned: AtomicBool,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name)
            .field("key", &self.key_display())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    fn key_display(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    fn not_leader(&self) -> ElectionError {
        ElectionError::NotLeader {
            name: self.name.clone(),
            key: self.key_display(),
        }
    }

    /// The leader key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The leader key's create revision: identifies this term of leadership; larger for every later leader.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The lease the leadership is tied to.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The term's fencing token (its create revision), for resources outside this cluster.
    pub fn fencing_token(&self) -> FencingToken {
        FencingToken::new(self.revision.unsigned_abs())
    }

    /// The session's loss signal: stop leading the moment it fires.
    pub fn loss(&self) -> &LossSignal {
        &self.loss
    }

    /// A compare that holds only while this leadership lasts (the leader key exists with our create revision).
    pub fn leader_compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    /// Runs `ops` in one transaction only while this candidate still leads: a deposed leader's writes are
    /// rejected with [`ElectionError::NotLeader`] and change nothing.
    pub async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<TxnResponse, ElectionError> {
        let mut client = self.client.clone();
        let response = client
            .txn(Txn::new().when([self.leader_compare()]).and_then(ops))
            .await?;
        if response.succeeded() {
            Ok(response)
        } else {
            Err(self.not_leader())
        }
    }

    /// Publishes a new value without losing the leadership; [`ElectionError::NotLeader`] if it was lost.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<(), ElectionError> {
        if self.resigned.load(Ordering::SeqCst) {
            return Err(self.not_leader());
        }
        let put = TxnOp::put(
            self.key.clone(),
            value.into(),
            Some(PutOptions::new().with_lease(self.lease)),
        );
        let txn = Txn::new().when([self.leader_compare()]).and_then([put]);
        // A put of our own key guarded by its create revision: applied twice, the same as once.
        let response = call(&self.client, CallKind::Idempotent, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// Gives up this handle without resigning: the leadership lasts until the key is deleted or its lease ends.
    /// For handing leadership to another party (etcd's election service returns the leader key to its caller).
    pub fn detach(self) {
        self.resigned.store(true, Ordering::SeqCst);
    }

    /// Gives up the leadership (the next candidate takes over at once). [`ElectionError::NotLeader`] if it was
    /// already lost or resigned.
    pub async fn resign(&self) -> Result<(), ElectionError> {
        if self.resigned.swap(true, Ordering::SeqCst) {
            return Err(self.not_leader());
        }
        let txn = Txn::new()
            .when([self.leader_compare()])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        // A delete of our own key guarded by its create revision (see trestle-lock's release).
        let response = call(&self.client, CallKind::Idempotent, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await?;
        if response.succeeded() {
            debug!(election = %self.name, "resigned");
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if self.resigned.load(Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when([self.leader_compare()])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        runtime.spawn(async move {
            let _ = client.txn(txn).await;
        });
    }
}
