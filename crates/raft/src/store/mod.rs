//! The coordination store: Raft group 0 running [`StoreApp`], and the runtime around it that proposes writes
//! (forwarding them to the leader when this node follows), serves linearizable reads through a read index, and
//! runs the leader's lease clock.

mod app;
mod command;
mod lessor;
mod proposer;
mod reads;

use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::ServerState;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, warn};

pub use app::{RevisionEvents, StoreApp};
pub use command::{StoreCommand, StoreOutcome, StoreResult};
pub use lessor::Lessor;
use proposer::{BatchLimits, Proposer, SubmitBatch};
use reads::{Joined, ReadRounds};

use crate::group::{ForwardError, ForwardHandler};
use crate::log_store::{decode, encode};
use crate::mvcc::{LeaseId, MvccError};
use crate::network::{Delivery, ForwardFailure, PeerChannels, forward};
use crate::types::{CommandBytes, GroupId, NodeId, PeerNode, Raft};

/// etcd's answer when no leader can be reached in time.
pub(crate) fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

fn unexpected_reply(reply: &ForwardReply) -> Status {
    Status::internal(format!("unexpected reply from the leader: {reply:?}"))
}

/// etcd's answer when a request could not finish in time.
/// etcd's `ErrStopped`: this member is shutting down and did not take the request.
pub(crate) fn server_stopped() -> Status {
    Status::unavailable("etcdserver: server stopped")
}

pub(crate) fn timed_out() -> Status {
    Status::unavailable("etcdserver: request timed out")
}

/// Settings of the store runtime.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreSettings {
    /// How long a proposal or a read barrier may take before the client gets `request timed out`. Default 5 s.
    pub request_timeout: Duration,
    /// The smallest lease TTL granted, in seconds (shorter requests are raised to it). Default 2 s: well above
    /// the election timeout, so a leader change does not expire leases that were being kept alive.
    pub min_lease_ttl: i64,
    /// How often the leader looks for expired leases. Default 250 ms.
    pub lease_check_interval: Duration,
    /// Group commit: how many batches of writes this node keeps in flight (each one Raft entry, proposed here or
    /// forwarded to the leader); writes arriving meanwhile wait and leave together as the next batch. Default 1:
    /// the largest batches, and on a 2-core machine the best throughput at 16 and 256 clients of 1, 2 and 4.
    pub proposal_pipeline: usize,
    /// Group commit: the most encoded bytes of writes in one entry (a single larger write still goes, alone).
    /// Default 1 MiB.
    pub max_batch_bytes: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            min_lease_ttl: 2,
            lease_check_interval: Duration::from_millis(250),
            proposal_pipeline: 1,
            max_batch_bytes: 1 << 20,
        }
    }
}

/// The most writes in one entry: bounds the time one apply holds the store.
const MAX_BATCH_COMMANDS: usize = 4096;

/// A change to the group's membership (etcd's Cluster API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MemberChange {
    /// Add a member, as a learner or as a voter. Its id derives from its peer URL.
    Add {
        /// How to reach it (name and client URLs may be empty until it starts and publishes them).
        node: PeerNode,
        /// Add as a non-voting learner.
        learner: bool,
    },
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a member (voter or learner).
    Remove(NodeId),
    /// Record a member's name and client URLs (a starting node publishes its own).
    SetAttributes(NodeId, PeerNode),
}

/// What a follower asks of the store leader.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardOp {
    Write(StoreCommand),
    ReadIndex,
    KeepAlive(LeaseId),
    TimeToLive(LeaseId),
    Member(MemberChange),
}

impl ForwardOp {
    /// Whether doing it twice is the same as doing it once. Writes and membership changes are not: a retried
    /// compare-and-swap would fail against its own first, successful, attempt.
    fn is_idempotent(&self) -> bool {
        match self {
            ForwardOp::ReadIndex | ForwardOp::KeepAlive(_) | ForwardOp::TimeToLive(_) => true,
            ForwardOp::Write(_) | ForwardOp::Member(_) => false,
        }
    }
}

/// etcd's answer when a proposal's fate is unknown because the leader went away while it had it.
pub(crate) fn leader_lost() -> Status {
    Status::unavailable("etcdserver: request timed out, possibly due to previous leader failure")
}

/// Decides, after forwarding to the leader failed, whether to look for the leader and send again (`Ok`) or to
/// give the client an error. Requests the leader never acted on are always retried; idempotent ones are also
/// retried after transport failures; a write whose fate is unknown is never sent twice: the client gets etcd's
/// ambiguous `request timed out` and decides (as etcd's own clients do).
fn retry_decision(idempotent: bool, failure: ForwardFailure) -> Result<(), Status> {
    let ForwardFailure { status, delivery } = failure;
    let transient = matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    );
    match delivery {
        Delivery::Unexecuted => {
            debug!(%status, "the leader did not take the request; retrying");
            Ok(())
        }
        Delivery::Answered if transient && idempotent => Ok(()),
        Delivery::Answered => Err(status),
        Delivery::Unknown if idempotent => {
            debug!(%status, "forward to the leader failed; retrying");
            Ok(())
        }
        Delivery::Unknown => {
            warn!(%status, "the leader went away holding a write; its outcome is unknown");
            Err(if status.code() == tonic::Code::DeadlineExceeded {
                timed_out()
            } else {
                leader_lost()
            })
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Written(StoreResult),
    ReadIndex(u64),
    /// The TTL granted by the keep-alive, or `None` when the lease is gone.
    KeepAlive(Option<i64>),
    /// The remaining TTL in seconds, or `None` when unknown.
    TimeToLive(Option<i64>),
    /// The membership change is committed; the new member's id.
    Member(NodeId),
}

struct Inner {
    node_id: NodeId,
    group: GroupId,
    raft: Raft,
    app: Arc<RwLock<StoreApp>>,
    lessor: Mutex<Lessor>,
    proposer: Proposer,
    reads: ReadRounds,
    channels: PeerChannels,
    settings: StoreSettings,
}

/// A handle to the coordination store on this node. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node_id", &self.inner.node_id)
            .field("group", &self.inner.group)
            .finish()
    }
}

enum Target {
    Local,
    Leader(PeerNode),
    Unknown,
    /// This node's Raft has stopped (the node is shutting down): nothing will be proposed here.
    Stopped,
}

impl Store {
    /// Wraps a started group running `app` and starts its proposer task (so it must be called within a tokio
    /// runtime). Call [`Store::spawn_lessor`] to run the lease clock.
    pub fn new(
        node_id: NodeId,
        group: GroupId,
        raft: Raft,
        app: Arc<RwLock<StoreApp>>,
        channels: PeerChannels,
        settings: StoreSettings,
    ) -> Self {
        let limits = BatchLimits {
            pipeline: settings.proposal_pipeline,
            max_commands: MAX_BATCH_COMMANDS,
            max_bytes: settings.max_batch_bytes,
        };
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            // Weak: the task must not keep the store alive; it ends when the last handle goes.
            let weak = weak.clone();
            let submit: SubmitBatch = Arc::new(move |commands| {
                let weak = weak.clone();
                Box::pin(async move {
                    let inner = weak.upgrade().ok_or_else(proposer::stopped)?;
                    Store { inner }.write_batch(commands).await
                })
            });
            Inner {
                node_id,
                group,
                raft,
                app,
                lessor: Mutex::new(Lessor::new()),
                proposer: Proposer::spawn(submit, limits),
                reads: ReadRounds::default(),
                channels,
                settings,
            }
        });
        Self { inner }
    }

    /// The group's Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The settings.
    pub fn settings(&self) -> &StoreSettings {
        &self.inner.settings
    }

    /// Reads the local state (no barrier: serializable).
    pub fn read<R>(&self, f: impl FnOnce(&StoreApp) -> R) -> R {
        f(&self.inner.app.read())
    }

    /// The application behind the store (for readers that need to hold the lock across several reads).
    pub(crate) fn inner_app(&self) -> Arc<RwLock<StoreApp>> {
        self.inner.app.clone()
    }

    fn target(&self) -> Target {
        let receiver = self.inner.raft.metrics();
        let metrics = receiver.borrow();
        if metrics.running_state.is_err() {
            return Target::Stopped;
        }
        match metrics.current_leader {
            Some(id) if id == self.inner.node_id && metrics.state == ServerState::Leader => Target::Local,
            Some(id) => match metrics.membership_config.membership().get_node(&id) {
                Some(node) => Target::Leader(node.clone()),
                None => Target::Unknown,
            },
            None => Target::Unknown,
        }
    }

    async fn forward_op(
        &self,
        leader: &PeerNode,
        op: &ForwardOp,
        deadline: Instant,
    ) -> Result<ForwardReply, ForwardFailure> {
        let payload = encode(op).map_err(|e| ForwardFailure::answered(Status::internal(e.to_string())))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = forward(
            &self.inner.channels,
            &leader.peer_url,
            self.inner.group,
            payload,
            left,
        )
        .await?;
        decode(&reply).map_err(|e| {
            ForwardFailure::answered(Status::internal(format!("undecodable forward reply: {e}")))
        })
    }

    /// Runs `op` on the leader — here, or forwarded to it — until it answers or the request timeout passes.
    /// Retries, with jittered backoff, while the leader is unknown, changing or unreachable — but a write is
    /// sent again only when the previous attempt is known to have done nothing (see [`retry_decision`]).
    async fn with_leader(&self, op: ForwardOp) -> Result<ForwardReply, Status> {
        use backon::BackoffBuilder;
        let deadline = Instant::now() + self.inner.settings.request_timeout;
        // Jittered so that followers retrying after a leader change do not arrive in lockstep.
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(200))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let leader_before = self.inner.raft.metrics().borrow().current_leader;
            let outcome = match self.target() {
                // Bounded: openraft 0.9 never answers a proposal whose entry a snapshot replaced on a deposed
                // leader (its waiters are dropped only on apply or on a log conflict), so without the deadline
                // such a write — and every write batched behind it — would wait forever. Its fate is unknown,
                // as etcd's `request timed out` says.
                Target::Local => match tokio::time::timeout_at(deadline, self.execute_local(&op)).await {
                    Ok(outcome) => outcome?,
                    Err(_elapsed) => return Err(timed_out()),
                },
                Target::Leader(leader) => match self.forward_op(&leader, &op, deadline).await {
                    Ok(reply) => Some(reply),
                    Err(failure) => {
                        retry_decision(op.is_idempotent(), failure)?;
                        None
                    }
                },
                Target::Unknown => None,
                // A stopped node may still hold client connections for a moment: answer them now rather than
                // at the request deadline. Nothing was proposed, so clients may send it elsewhere.
                Target::Stopped => return Err(server_stopped()),
            };
            if let Some(reply) = outcome {
                return Ok(reply);
            }
            let delay = delays.next().unwrap_or(Duration::from_millis(200));
            if Instant::now() + delay >= deadline {
                return Err(match self.target() {
                    Target::Unknown => no_leader(),
                    _ => timed_out(),
                });
            }
            // Retry after the backoff, or as soon as a (new) leader is known: after a leader dies, every
            // request waiting here moves on the moment the election ends, not a backoff step later.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.leader_changes(leader_before) => {}
            }
        }
    }

    /// Resolves when this node learns of a leader other than `before`.
    async fn leader_changes(&self, before: Option<NodeId>) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if leader.is_some() && leader != before {
                return;
            }
            if metrics.changed().await.is_err() {
                // Raft stopped: nothing will change; let the backoff run out.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `op` on this node if it leads. `Ok(None)`: not the leader (any more).
    async fn execute_local(&self, op: &ForwardOp) -> Result<Option<ForwardReply>, Status> {
        Ok(match op {
            ForwardOp::Write(command) => self.propose_local(command).await?.map(ForwardReply::Written),
            ForwardOp::ReadIndex => self.read_index_local().await?.map(ForwardReply::ReadIndex),
            ForwardOp::Member(change) => self.change_member_local(change).await?.map(ForwardReply::Member),
            ForwardOp::KeepAlive(id) => matches!(self.target(), Target::Local)
                .then(|| ForwardReply::KeepAlive(self.keep_alive_local(*id))),
            ForwardOp::TimeToLive(id) => matches!(self.target(), Target::Local)
                .then(|| ForwardReply::TimeToLive(self.time_to_live_local(*id))),
        })
    }

    /// Proposes a command through Raft and returns its result once applied. Forwards to the leader when this
    /// node is a follower. Commands proposed concurrently on this node travel together (group commit).
    pub async fn propose(&self, command: StoreCommand) -> Result<StoreResult, Status> {
        let started = std::time::Instant::now();
        let result = self.inner.proposer.propose(command).await;
        metrics::histogram!("trestle_store_proposal_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// Runs a batch of commands as one entry, through the leader; their results in order.
    async fn write_batch(&self, mut commands: Vec<StoreCommand>) -> Result<Vec<StoreResult>, Status> {
        let count = commands.len();
        let command = if count == 1 {
            commands.pop().ok_or_else(|| Status::internal("empty batch"))?
        } else {
            StoreCommand::Batch(commands)
        };
        let result = match self.with_leader(ForwardOp::Write(command)).await? {
            ForwardReply::Written(result) => result,
            other => return Err(unexpected_reply(&other)),
        };
        if count == 1 {
            return Ok(vec![result]);
        }
        match result.outcome {
            Ok(StoreOutcome::Batch(results)) if results.len() == count => Ok(results),
            other => Err(Status::internal(format!(
                "a batch of {count} commands applied as {other:?}"
            ))),
        }
    }

    /// Proposes on this node (no batching: the entry is already what should be proposed). `Ok(None)`: not the
    /// leader (any more) and nothing was proposed; the caller looks for the leader again.
    async fn propose_local(&self, command: &StoreCommand) -> Result<Option<StoreResult>, Status> {
        let bytes = encode(command).map_err(|e| Status::internal(e.to_string()))?;
        match self.inner.raft.client_write(CommandBytes(bytes)).await {
            Ok(response) => {
                let result: StoreResult = decode(&response.data)
                    .map_err(|e| Status::internal(format!("undecodable result: {e}")))?;
                self.after_applied(&result);
                Ok(Some(result))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Status::internal(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("etcdserver: raft stopped: {e}"))),
        }
    }

    /// Keeps the leader's lessor in step with what its own proposals did.
    fn after_applied(&self, result: &StoreResult) {
        match &result.outcome {
            Ok(StoreOutcome::LeaseGranted(lease)) => self.inner.lessor.lock().granted(lease, Instant::now()),
            Ok(StoreOutcome::Batch(results)) => results.iter().for_each(|r| self.after_applied(r)),
            _ => {}
        }
    }

    /// Waits until this node's state machine reflects every write acknowledged before the call (a read index
    /// from the leader, then the local apply catching up to it).
    /// Concurrent reads share read-index rounds (see the `reads` module).
    pub async fn read_barrier(&self) -> Result<(), Status> {
        let answer = match self.inner.reads.join() {
            Joined::Wait(answer) => answer,
            Joined::RunRounds(answer) => {
                // This read runs rounds until nobody waits; in a task of its own, so that the rounds go on
                // for the others if this caller gives up.
                let store = self.clone();
                tokio::spawn(async move {
                    while let Some(round) = store.inner.reads.take_next() {
                        let result = match store.with_leader(ForwardOp::ReadIndex).await {
                            Ok(ForwardReply::ReadIndex(index)) => Ok(index),
                            Ok(other) => Err(unexpected_reply(&other)),
                            Err(status) => Err(status),
                        };
                        reads::answer(round, &result);
                    }
                });
                answer
            }
        };
        let index = answer.await.map_err(|_| proposer::stopped())??;
        self.inner
            .raft
            .wait(Some(self.inner.settings.request_timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|_| timed_out())?;
        Ok(())
    }

    async fn read_index_local(&self) -> Result<Option<u64>, Status> {
        match self.inner.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => Ok(Some(read_log_id.map_or(0, |id| id.index))),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Ok(None),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => Ok(None),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("etcdserver: raft stopped: {e}"))),
        }
    }

    /// Renews a lease on the leader. Returns the TTL in seconds; `NOT_FOUND` when the lease is gone.
    pub async fn keep_alive(&self, id: LeaseId) -> Result<i64, Status> {
        let ttl = match self.with_leader(ForwardOp::KeepAlive(id)).await? {
            ForwardReply::KeepAlive(ttl) => ttl,
            other => return Err(unexpected_reply(&other)),
        };
        ttl.ok_or_else(|| MvccError::LeaseNotFound { id }.into())
    }

    /// The lessor, promoted first when this node leads but the lease clock has not noticed yet (it looks only
    /// every `lease_check_interval`): a keep-alive arriving just after an election must find its lease, not be
    /// told it is gone. Only called on the leader.
    fn primary_lessor(&self) -> parking_lot::MutexGuard<'_, Lessor> {
        let promoted = self.inner.lessor.lock().is_primary();
        if promoted {
            return self.inner.lessor.lock();
        }
        // Read the leases before taking the lessor: never hold both locks at once.
        let leases = self.read(|app| app.store().leases());
        let mut lessor = self.inner.lessor.lock();
        if !lessor.is_primary() {
            lessor.promote(Instant::now(), &leases);
        }
        lessor
    }

    fn keep_alive_local(&self, id: LeaseId) -> Option<i64> {
        // The state machine decides whether the lease exists; the lessor only knows deadlines.
        let lease = self.read(|app| app.store().lease(id))?;
        let mut lessor = self.primary_lessor();
        let now = Instant::now();
        lessor.sync(now, std::slice::from_ref(&lease), false);
        lessor.renew(id, now).map(|ttl| ttl.as_secs() as i64)
    }

    /// The remaining TTL of a lease in seconds, as the leader's lessor sees it.
    pub async fn time_to_live(&self, id: LeaseId) -> Result<Option<i64>, Status> {
        match self.with_leader(ForwardOp::TimeToLive(id)).await? {
            ForwardReply::TimeToLive(ttl) => Ok(ttl),
            other => Err(unexpected_reply(&other)),
        }
    }

    fn time_to_live_local(&self, id: LeaseId) -> Option<i64> {
        let remaining = self.primary_lessor().remaining(id, Instant::now())?;
        // etcd rounds the remaining TTL up to whole seconds.
        Some(remaining.as_millis().div_ceil(1000) as i64)
    }

    /// Changes the membership through the leader. Returns the id of the member concerned.
    pub async fn change_member(&self, change: MemberChange) -> Result<NodeId, Status> {
        match self.with_leader(ForwardOp::Member(change)).await? {
            ForwardReply::Member(id) => Ok(id),
            other => Err(unexpected_reply(&other)),
        }
    }

    async fn change_member_local(&self, change: &MemberChange) -> Result<Option<NodeId>, Status> {
        use openraft::ChangeMembers;
        use std::collections::{BTreeMap, BTreeSet};
        let membership = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let is_voter = |id: NodeId| membership.voter_ids().any(|v| v == id);
        let is_learner = |id: NodeId| membership.learner_ids().any(|l| l == id);
        let not_found = || Status::not_found("etcdserver: member not found");
        let raft = &self.inner.raft;
        let (id, result) = match change {
            MemberChange::Add { node, learner } => {
                let id = crate::types::node_id_for(&node.peer_url);
                if membership.get_node(&id).is_some() {
                    return Err(Status::failed_precondition("etcdserver: peerURL exists"));
                }
                let added = raft.add_learner(id, node.clone(), false).await;
                let result = match (added, learner) {
                    (Ok(r), true) => Ok(r),
                    (Ok(_), false) => {
                        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                            .await
                    }
                    (Err(e), _) => Err(e),
                };
                (id, result)
            }
            MemberChange::Promote(id) => {
                if is_voter(*id) {
                    return Err(Status::failed_precondition(
                        "etcdserver: can only promote a learner member",
                    ));
                }
                if !is_learner(*id) {
                    return Err(not_found());
                }
                (
                    *id,
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), true)
                        .await,
                )
            }
            MemberChange::Remove(id) => {
                let change = if is_voter(*id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
                } else if is_learner(*id) {
                    ChangeMembers::RemoveNodes(BTreeSet::from([*id]))
                } else {
                    return Err(not_found());
                };
                (*id, raft.change_membership(change, false).await)
            }
            MemberChange::SetAttributes(id, node) => {
                if membership.get_node(id).is_none() {
                    return Err(not_found());
                }
                (
                    *id,
                    raft.change_membership(
                        ChangeMembers::SetNodes(BTreeMap::from([(*id, node.clone())])),
                        true,
                    )
                    .await,
                )
            }
        };
        match result {
            Ok(_) => Ok(Some(id)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
            // Another change (a member publishing its attributes, say) is still committing: try again shortly,
            // within the request's deadline.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) => Ok(None),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Status::failed_precondition(format!("etcdserver: {e}")))
            }
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("etcdserver: raft stopped: {e}"))),
        }
    }

    /// Runs the lease clock: while this node leads, expire leases whose deadline passed by proposing revokes.
    pub fn spawn_lessor(&self) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move { store.run_lessor().await })
    }

    async fn run_lessor(self) {
        let mut tick = tokio::time::interval(self.inner.settings.lease_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut metrics = self.inner.raft.metrics();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = metrics.changed() => if changed.is_err() { return },
            }
            let leading = matches!(self.target(), Target::Local);
            let now = Instant::now();
            let leases = self.read(|app| app.store().leases());
            let expired = {
                let mut lessor = self.inner.lessor.lock();
                match (leading, lessor.is_primary()) {
                    (true, false) => {
                        info!(
                            leases = leases.len(),
                            "became store leader: every lease gets a full TTL"
                        );
                        lessor.promote(now, &leases);
                    }
                    (false, true) => lessor.demote(),
                    _ => {}
                }
                if !leading {
                    continue;
                }
                lessor.sync(now, &leases, true);
                lessor.expired(now)
            };
            for id in expired {
                match self.propose_local(&StoreCommand::LeaseRevoke { id }).await {
                    Ok(Some(result)) => {
                        debug!(id, revision = result.revision, "lease expired");
                        self.inner.lessor.lock().revoked(id);
                        metrics::counter!("trestle_store_leases_expired_total").increment(1);
                    }
                    Ok(None) => break,
                    Err(status) => warn!(id, %status, "could not revoke an expired lease; will retry"),
                }
            }
        }
    }
}

#[tonic::async_trait]
impl ForwardHandler for Store {
    async fn forward(&self, payload: Vec<u8>) -> Result<Vec<u8>, ForwardError> {
        let op: ForwardOp =
            decode(&payload).map_err(|e| ForwardError::from(Status::invalid_argument(e.to_string())))?;
        // A follower forwarded this because it believed we lead; if we do not, say so and it will look again.
        // Bounded for the reason given in `with_leader`; the follower's own deadline is usually shorter.
        let timeout = self.inner.settings.request_timeout;
        let work = async {
            match op {
                ForwardOp::Write(command) if matches!(self.target(), Target::Local) => {
                    // Into this leader's own queue: the followers' batches and the local writes that arrive
                    // while an entry is in flight leave together as the next entry, one fsync per replica
                    // rather than one per follower batch.
                    let result = self.inner.proposer.propose(command).await?;
                    Ok(Some(ForwardReply::Written(result)))
                }
                ForwardOp::Write(_) => Ok(None),
                other => self.execute_local(&other).await,
            }
        };
        let reply = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_elapsed| ForwardError::from(timed_out()))??
            .ok_or_else(|| ForwardError::unexecuted(no_leader()))?;
        encode(&reply).map_err(|e| ForwardError::from(Status::internal(e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: tonic::Code, delivery: Delivery) -> ForwardFailure {
        ForwardFailure {
            status: Status::new(code, "x"),
            delivery,
        }
    }

    #[test]
    fn a_write_is_sent_again_only_when_the_leader_surely_did_nothing() {
        use tonic::Code::{DeadlineExceeded, InvalidArgument, Unavailable, Unknown};
        // Never reached the leader, or the leader said it did nothing: retry, write or not.
        for idempotent in [true, false] {
            assert!(retry_decision(idempotent, failure(Unavailable, Delivery::Unexecuted)).is_ok());
        }
        // The connection broke while the leader had it: a read index is asked again…
        assert!(retry_decision(true, failure(Unknown, Delivery::Unknown)).is_ok());
        assert!(retry_decision(true, failure(DeadlineExceeded, Delivery::Unknown)).is_ok());
        // …a write is not: its fate is unknown, and the client is told so in etcd's words.
        let lost = retry_decision(false, failure(Unknown, Delivery::Unknown)).unwrap_err();
        assert_eq!(lost.code(), Unavailable);
        assert!(lost.message().contains("possibly due to previous leader failure"));
        let late = retry_decision(false, failure(DeadlineExceeded, Delivery::Unknown)).unwrap_err();
        assert_eq!(late.message(), "etcdserver: request timed out");
        // A definite answer is the answer; only idempotent requests retry a transient one.
        assert_eq!(
            retry_decision(false, failure(InvalidArgument, Delivery::Answered))
                .unwrap_err()
                .code(),
            InvalidArgument
        );
        assert!(retry_decision(false, failure(Unavailable, Delivery::Answered)).is_err());
        assert!(retry_decision(true, failure(Unavailable, Delivery::Answered)).is_ok());
    }
}
