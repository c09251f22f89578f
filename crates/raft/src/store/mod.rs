//! The coordination store: Raft group 0 running [`StoreApp`], and the runtime around it that proposes writes
//! (forwarding them to the leader when this node follows), serves linearizable reads through a read index, and
//! runs the leader's lease clock.

mod app;
mod command;
mod lessor;

use std::sync::Arc;
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

use crate::group::{ForwardError, ForwardHandler};
use crate::log_store::{decode, encode};
use crate::mvcc::{LeaseId, MvccError};
use crate::network::{PeerChannels, forward};
use crate::types::{GroupId, NodeId, PeerNode, Raft};

/// etcd's answer when no leader can be reached in time.
pub(crate) fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

fn unexpected_reply(reply: &ForwardReply) -> Status {
    Status::internal(format!("unexpected reply from the leader: {reply:?}"))
}

/// etcd's answer when a request could not finish in time.
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
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            min_lease_ttl: 2,
            lease_check_interval: Duration::from_millis(250),
        }
    }
}

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
}

impl Store {
    /// Wraps a started group running `app`. Call [`Store::spawn_lessor`] to run the lease clock.
    pub fn new(
        node_id: NodeId,
        group: GroupId,
        raft: Raft,
        app: Arc<RwLock<StoreApp>>,
        channels: PeerChannels,
        settings: StoreSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_id,
                group,
                raft,
                app,
                lessor: Mutex::new(Lessor::new()),
                channels,
                settings,
            }),
        }
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
        let metrics = self.inner.raft.metrics().borrow().clone();
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
    ) -> Result<ForwardReply, Status> {
        let payload = encode(op).map_err(|e| Status::internal(e.to_string()))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = forward(
            &self.inner.channels,
            &leader.peer_url,
            self.inner.group,
            payload,
            left,
        )
        .await?;
        decode(&reply).map_err(|e| Status::internal(format!("undecodable forward reply: {e}")))
    }

    /// Runs `op` on the leader — here, or forwarded to it — until it answers or the request timeout passes.
    /// Retries, with jittered backoff, while the leader is unknown, changing or unreachable.
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
                Target::Local => self.execute_local(&op).await?,
                Target::Leader(leader) => match self.forward_op(&leader, &op, deadline).await {
                    Ok(reply) => Some(reply),
                    // The leader moved, stepped down or is unreachable: look again.
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        debug!(%status, "forward to leader failed; retrying");
                        None
                    }
                    Err(status) => return Err(status),
                },
                Target::Unknown => None,
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
    /// node is a follower.
    pub async fn propose(&self, command: StoreCommand) -> Result<StoreResult, Status> {
        let started = std::time::Instant::now();
        let reply = self.with_leader(ForwardOp::Write(command)).await;
        metrics::histogram!("trestle_store_proposal_seconds").record(started.elapsed().as_secs_f64());
        match reply? {
            ForwardReply::Written(result) => Ok(result),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Proposes on this node. `Ok(None)`: not the leader (any more); the caller looks for the leader again.
    async fn propose_local(&self, command: &StoreCommand) -> Result<Option<StoreResult>, Status> {
        let bytes = encode(command).map_err(|e| Status::internal(e.to_string()))?;
        match self.inner.raft.client_write(bytes).await {
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
        if let Ok(StoreOutcome::LeaseGranted(lease)) = &result.outcome {
            self.inner.lessor.lock().granted(lease, Instant::now());
        }
    }

    /// Waits until this node's state machine reflects every write acknowledged before the call (a read index
    /// from the leader, then the local apply catching up to it).
    pub async fn read_barrier(&self) -> Result<(), Status> {
        let index = match self.with_leader(ForwardOp::ReadIndex).await? {
            ForwardReply::ReadIndex(index) => index,
            other => return Err(unexpected_reply(&other)),
        };
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
        let reply = self
            .execute_local(&op)
            .await?
            .ok_or_else(|| ForwardError::from(no_leader()))?;
        encode(&reply).map_err(|e| ForwardError::from(Status::internal(e.to_string())))
    }
}
