//! The replicated-service layer: what every service on a Raft group needs around its state machine, so that a
//! service (the coordination store, a work queue, your own) writes only its [`StateMachine`], its leader-only
//! requests ([`Service`]) and its API.
//!
//! A [`Replicated`] handle on each node, for one group, gives:
//! - **typed proposals with group commit** ([`Replicated::propose`]): concurrent commands leave as one entry
//!   (`proposer`), so one synced log write per replica serves many requests;
//! - **leader forwarding with the no-duplicate rule**: a follower forwards to the leader over the peer port and
//!   sends again only what the leader surely did not take (`retry`); a write whose fate is unknown is reported
//!   as such ([`Failure::LeaderLost`], [`Failure::TimedOut`]), never applied twice;
//! - **linearizable reads** ([`Replicated::read_barrier`]): read-index rounds shared by concurrent readers
//!   (`reads`);
//! - **leader-only requests** ([`Replicated::leader_request`]) and **membership changes**
//!   ([`Replicated::change_member`]), run on the leader wherever they arrive;
//! - **a leader clock** ([`Replicated::spawn_clock`], [`Service::on_clock`]) for time-driven commands;
//! - **metrics per group**: `trestle_raft_proposal_seconds`, `trestle_raft_batch_commands` and
//!   `trestle_raft_reads_per_round`, labelled with the group.
//!
//! Register the handle as the group's [`ForwardHandler`] when starting the group, so that the leader answers
//! what followers forward.

mod machine;
mod membership;
mod proposer;
mod reads;
mod retry;
mod service;

use openraft::async_runtime::WatchReceiver as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::ServerState;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;

pub use machine::StateMachine;
pub use membership::MemberChange;
use proposer::{BatchLimits, Proposer, SubmitBatch};
use reads::{Joined, ReadRounds};
use retry::retry_decision;
pub use service::{Failure, NoRequest, Service};

use crate::group::{ForwardError, ForwardHandler};
use crate::log_store::{decode, encode};
use crate::network::{ForwardFailure, PeerChannels, forward};
use crate::types::{CommandBytes, GroupId, NodeId, PeerNode, Raft};

/// The command type of a service's state machine.
pub type CommandOf<S> = <<S as Service>::Machine as StateMachine>::Command;
/// The response type of a service's state machine.
pub type ResponseOf<S> = <<S as Service>::Machine as StateMachine>::Response;

/// Settings of the replicated-service layer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicatedSettings {
    /// How long a proposal, a read barrier or a leader request may take, retries included. Default 5 s.
    pub request_timeout: Duration,
    /// Group commit: how many batches of commands this node keeps in flight (each one Raft entry, proposed here
    /// or forwarded to the leader); commands arriving meanwhile wait and leave together as the next batch.
    /// Default 1: the largest batches.
    pub proposal_pipeline: usize,
    /// Group commit: the most encoded bytes of commands in one entry (a single larger command still goes,
    /// alone). Default 1 MiB.
    pub max_batch_bytes: usize,
    /// Group commit: the most commands in one entry, which bounds how long one apply holds the state machine.
    /// Default 4096.
    pub max_batch_commands: usize,
}

impl Default for ReplicatedSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            proposal_pipeline: 1,
            max_batch_bytes: 1 << 20,
            max_batch_commands: 4096,
        }
    }
}

/// A [`ReplicatedSettings`] value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicatedSettingsError {
    /// A setting that must be positive is zero.
    #[error("{setting} must be greater than zero")]
    Zero {
        /// The setting's name.
        setting: &'static str,
    },
}

impl ReplicatedSettings {
    /// Checks the settings; the error names the offending one.
    pub fn validate(&self) -> Result<(), ReplicatedSettingsError> {
        let zero = |setting| Err(ReplicatedSettingsError::Zero { setting });
        if self.request_timeout.is_zero() {
            return zero("request_timeout");
        }
        if self.proposal_pipeline == 0 {
            return zero("proposal_pipeline");
        }
        if self.max_batch_bytes == 0 {
            return zero("max_batch_bytes");
        }
        if self.max_batch_commands == 0 {
            return zero("max_batch_commands");
        }
        Ok(())
    }
}

/// What a follower asks of the leader.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardOp<C, X> {
    Write(C),
    ReadIndex,
    Member(MemberChange),
    Leader(X),
}

#[derive(Serialize, Deserialize)]
enum ForwardReply<R, Y> {
    Written(R),
    ReadIndex(u64),
    /// The membership change is committed; the member's id.
    Member(NodeId),
    Leader(Y),
}

impl<R, Y> ForwardReply<R, Y> {
    fn kind(&self) -> &'static str {
        match self {
            ForwardReply::Written(_) => "Written",
            ForwardReply::ReadIndex(_) => "ReadIndex",
            ForwardReply::Member(_) => "Member",
            ForwardReply::Leader(_) => "Leader",
        }
    }
}

type Op<S> = ForwardOp<CommandOf<S>, <S as Service>::LeaderRequest>;
type Reply<S> = ForwardReply<ResponseOf<S>, <S as Service>::LeaderReply>;

fn unexpected<R, Y>(reply: &ForwardReply<R, Y>) -> Status {
    Status::internal(format!("unexpected reply from the leader: {}", reply.kind()))
}

enum Target {
    Local,
    Leader(PeerNode),
    Unknown,
    /// This node's Raft has stopped (the node is shutting down): nothing will be proposed here.
    Stopped,
}

/// The layer's metrics for one group, registered once (a label lookup per request would cost on the hot path).
struct GroupMetrics {
    proposal_seconds: metrics::Histogram,
    batch_commands: metrics::Histogram,
    reads_per_round: metrics::Histogram,
}

impl GroupMetrics {
    fn new(group: GroupId) -> Self {
        let group = group.to_string();
        Self {
            proposal_seconds: metrics::histogram!("trestle_raft_proposal_seconds", "group" => group.clone()),
            batch_commands: metrics::histogram!("trestle_raft_batch_commands", "group" => group.clone()),
            reads_per_round: metrics::histogram!("trestle_raft_reads_per_round", "group" => group),
        }
    }
}

struct Inner<S: Service> {
    node_id: NodeId,
    group: GroupId,
    metrics: GroupMetrics,
    raft: Raft,
    app: Arc<RwLock<S::Machine>>,
    service: S,
    proposer: Proposer<CommandOf<S>, ResponseOf<S>>,
    /// Group commit for the writes followers forward here: proposed on this node only, never forwarded again.
    /// `None`: this node no longer leads and proposed nothing (see [`Replicated::write_batch_here`]).
    forwarded: Proposer<CommandOf<S>, Option<ResponseOf<S>>>,
    reads: ReadRounds,
    channels: PeerChannels,
    settings: ReplicatedSettings,
    /// Counts calls that retry with jitter: each call's jitter is seeded from the node, the group and this count,
    /// so followers still spread out after a leader change while a simulation replays the same delays.
    jitter_calls: std::sync::atomic::AtomicU64,
}

/// The jitter seed of one call (SplitMix64 over the node, the group and the call's number).
fn jitter_seed(node_id: NodeId, group: GroupId, call: u64) -> u64 {
    let mut z = node_id ^ group.rotate_left(32) ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A service's handle on one node for one Raft group. Cheap to clone.
pub struct Replicated<S: Service> {
    inner: Arc<Inner<S>>,
}

impl<S: Service> Clone for Replicated<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Service> std::fmt::Debug for Replicated<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicated")
            .field("node_id", &self.inner.node_id)
            .field("group", &self.inner.group)
            .finish_non_exhaustive()
    }
}

impl<S: Service> Replicated<S> {
    /// Wraps a started group running `app` and starts its proposer task (so it must be called within a tokio
    /// runtime). The proposer ends when the last handle is dropped.
    pub fn new(
        node_id: NodeId,
        group: GroupId,
        raft: Raft,
        app: Arc<RwLock<S::Machine>>,
        channels: PeerChannels,
        service: S,
        settings: ReplicatedSettings,
    ) -> Self {
        let limits = BatchLimits {
            pipeline: settings.proposal_pipeline,
            max_commands: settings.max_batch_commands,
            max_bytes: settings.max_batch_bytes,
        };
        let inner = Arc::new_cyclic(|weak: &Weak<Inner<S>>| {
            // Weak: the task must not keep the handle alive; it ends when the last handle goes.
            let own = weak.clone();
            let submit: SubmitBatch<CommandOf<S>, ResponseOf<S>> = Arc::new(move |commands| {
                let weak = own.clone();
                Box::pin(async move {
                    let inner = weak.upgrade().ok_or_else(|| S::status(Failure::Stopped))?;
                    Replicated { inner }.write_batch(commands).await
                })
            });
            let here = weak.clone();
            let submit_here: SubmitBatch<CommandOf<S>, Option<ResponseOf<S>>> = Arc::new(move |commands| {
                let weak = here.clone();
                Box::pin(async move {
                    let inner = weak.upgrade().ok_or_else(|| S::status(Failure::Stopped))?;
                    Replicated { inner }.write_batch_here(commands).await
                })
            });
            Inner {
                node_id,
                group,
                metrics: GroupMetrics::new(group),
                raft,
                app,
                service,
                proposer: Proposer::spawn(submit, limits, || S::status(Failure::Stopped)),
                forwarded: Proposer::spawn(submit_here, limits, || S::status(Failure::Stopped)),
                reads: ReadRounds::default(),
                channels,
                settings,
                jitter_calls: std::sync::atomic::AtomicU64::new(0),
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

    /// The group's id.
    pub fn group(&self) -> GroupId {
        self.inner.group
    }

    /// The settings.
    pub fn settings(&self) -> &ReplicatedSettings {
        &self.inner.settings
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.inner.service
    }

    /// The state machine, for readers that hold its lock across several reads.
    pub fn app(&self) -> &Arc<RwLock<S::Machine>> {
        &self.inner.app
    }

    /// Reads the local state (no barrier: serializable; see [`Replicated::read_barrier`]).
    pub fn read<R>(&self, f: impl FnOnce(&S::Machine) -> R) -> R {
        f(&self.inner.app.read())
    }

    /// The group's leader as this node knows it, if it knows one.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow_watched().current_leader
    }

    /// Whether this node leads the group now.
    pub fn is_leader(&self) -> bool {
        matches!(self.target(), Target::Local)
    }

    fn target(&self) -> Target {
        let receiver = self.inner.raft.metrics();
        let metrics = receiver.borrow_watched();
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

    /// Proposes a command through Raft and returns its response once applied. Forwards to the leader when this
    /// node follows. Commands proposed concurrently on this node travel together (group commit).
    pub async fn propose(&self, command: CommandOf<S>) -> Result<ResponseOf<S>, Status> {
        let started = std::time::Instant::now();
        let result = self.inner.proposer.propose(command).await;
        self.inner
            .metrics
            .proposal_seconds
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Proposes `command` on this node alone, if it leads: no batching and no forwarding, for commands only the
    /// leader makes (its clock's). `Ok(None)`: this node does not lead (any more) and nothing was proposed.
    pub async fn propose_local(&self, command: &CommandOf<S>) -> Result<Option<ResponseOf<S>>, Status> {
        let bytes = encode(command).map_err(|e| Status::internal(e.to_string()))?;
        match self.inner.raft.client_write(CommandBytes(bytes)).await {
            Ok(response) => {
                let response: ResponseOf<S> = decode(&response.data)
                    .map_err(|e| Status::internal(format!("undecodable response: {e}")))?;
                self.inner.service.proposed_here(&response);
                Ok(Some(response))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
            // Appended here, then replaced by another leader's log: it may still commit through that leader.
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(S::status(Failure::LeaderLost))
            }
            Err(RaftError::APIError(e)) => Err(Status::internal(e.to_string())),
            // Shut down (a graceful stop) with the proposal in flight: it may have been appended and replicated,
            // and commit through the next leader. Ambiguous, as a lost leader.
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped)) => Err(S::status(Failure::LeaderLost)),
            Err(RaftError::Fatal(e)) => Err(S::status(Failure::RaftStopped(e.to_string()))),
        }
    }

    /// Runs a batch of commands as one entry, through the leader; their responses in order.
    async fn write_batch(&self, commands: Vec<CommandOf<S>>) -> Result<Vec<ResponseOf<S>>, Status> {
        let (command, count) = self.join(commands)?;
        let response = match self.with_leader(ForwardOp::Write(command)).await? {
            ForwardReply::Written(response) => response,
            other => return Err(unexpected(&other)),
        };
        split::<S>(response, count)
    }

    /// Runs a batch of forwarded commands as one entry on this node, if it still leads; their responses in
    /// order, or `None` for each when it does not and nothing was proposed.
    ///
    /// Never forwarded again: a follower's batch waits on this node's answer, so sending it back to the new
    /// leader — often that very follower, whose proposal pipeline it fills — deadlocks until the request
    /// timeout. The follower looks for the leader again instead.
    async fn write_batch_here(
        &self,
        commands: Vec<CommandOf<S>>,
    ) -> Result<Vec<Option<ResponseOf<S>>>, Status> {
        let (command, count) = self.join(commands)?;
        let deadline = Instant::now() + self.inner.settings.request_timeout;
        let response = match tokio::time::timeout_at(deadline, self.propose_local(&command)).await {
            Ok(outcome) => outcome?,
            Err(_elapsed) => return Err(S::status(Failure::TimedOut)),
        };
        match response {
            Some(response) => Ok(split::<S>(response, count)?.into_iter().map(Some).collect()),
            None => Ok((0..count).map(|_| None).collect()),
        }
    }

    /// One command standing for `commands` (itself when alone), and how many it stands for.
    fn join(&self, mut commands: Vec<CommandOf<S>>) -> Result<(CommandOf<S>, usize), Status> {
        let count = commands.len();
        self.inner.metrics.batch_commands.record(count as f64);
        let command = if count == 1 {
            commands.pop().ok_or_else(|| Status::internal("empty batch"))?
        } else {
            S::Machine::batch(commands)
        };
        Ok((command, count))
    }

    /// Waits until this node's state machine reflects every write acknowledged before the call (a read index
    /// from the leader, then the local apply catching up to it). Concurrent reads share read-index rounds.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        let answer = match self.inner.reads.join() {
            Joined::Wait(answer) => answer,
            Joined::RunRounds(answer) => {
                // This read runs rounds until nobody waits; in a task of its own, so that the rounds go on
                // for the others if this caller gives up.
                let this = self.clone();
                tokio::spawn(async move {
                    while let Some(round) = this.inner.reads.take_next() {
                        this.inner.metrics.reads_per_round.record(round.len() as f64);
                        let result = match this.with_leader(ForwardOp::ReadIndex).await {
                            Ok(ForwardReply::ReadIndex(index)) => Ok(index),
                            Ok(other) => Err(unexpected(&other)),
                            Err(status) => Err(status),
                        };
                        reads::answer(round, &result);
                    }
                });
                answer
            }
        };
        let index = answer.await.map_err(|_| S::status(Failure::Stopped))??;
        self.inner
            .raft
            .wait(Some(self.inner.settings.request_timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|_| S::status(Failure::TimedOut))?;
        Ok(())
    }

    /// Runs a leader-only request on the leader, here or forwarded, and returns its answer.
    pub async fn leader_request(&self, request: S::LeaderRequest) -> Result<S::LeaderReply, Status> {
        match self.with_leader(ForwardOp::Leader(request)).await? {
            ForwardReply::Leader(reply) => Ok(reply),
            other => Err(unexpected(&other)),
        }
    }

    /// Changes the group's membership through the leader. Returns the id of the member concerned.
    pub async fn change_member(&self, change: MemberChange) -> Result<NodeId, Status> {
        match self.with_leader(ForwardOp::Member(change)).await? {
            ForwardReply::Member(id) => Ok(id),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs the leader clock: [`Service::on_clock`] every `interval` and on every leadership change, until the
    /// group's Raft stops.
    pub fn spawn_clock(&self, interval: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut metrics = this.inner.raft.metrics();
            loop {
                // Biased: a fixed order keeps a simulation replayable.
                tokio::select! {
                    biased;
                    _ = tick.tick() => {}
                    changed = metrics.changed() => if changed.is_err() { return },
                }
                let leading = this.is_leader();
                this.inner.service.on_clock(&this, leading).await;
            }
        })
    }

    async fn forward_op(
        &self,
        leader: &PeerNode,
        op: &Op<S>,
        deadline: Instant,
    ) -> Result<Reply<S>, ForwardFailure> {
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
    async fn with_leader(&self, op: Op<S>) -> Result<Reply<S>, Status> {
        use backon::BackoffBuilder;
        let deadline = Instant::now() + self.inner.settings.request_timeout;
        // Jittered so that followers retrying after a leader change do not arrive in lockstep; seeded, so that the
        // same execution has the same delays.
        let call = self
            .inner
            .jitter_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(200))
            .with_jitter()
            .with_jitter_seed(jitter_seed(self.inner.node_id, self.inner.group, call))
            .without_max_times()
            .build();
        let idempotent = match &op {
            ForwardOp::ReadIndex => true,
            ForwardOp::Write(_) | ForwardOp::Member(_) => false,
            ForwardOp::Leader(request) => S::leader_request_is_idempotent(request),
        };
        loop {
            let leader_before = self.inner.raft.metrics().borrow_watched().current_leader;
            let outcome = match self.target() {
                // Bounded: openraft 0.9.25 never answered a proposal whose entry a snapshot replaced on a
                // deposed leader (its waiters were dropped only on apply or on a log conflict), and the bound
                // stays for any such case: without the deadline the write — and every write batched behind it —
                // would wait forever. Its fate is unknown.
                Target::Local => match tokio::time::timeout_at(deadline, self.execute_local(&op)).await {
                    Ok(outcome) => outcome?,
                    Err(_elapsed) => return Err(S::status(Failure::TimedOut)),
                },
                Target::Leader(leader) => match self.forward_op(&leader, &op, deadline).await {
                    Ok(reply) => Some(reply),
                    Err(failure) => {
                        retry_decision::<S>(idempotent, failure)?;
                        None
                    }
                },
                Target::Unknown => None,
                // A stopped node may still hold client connections for a moment: answer them now rather than
                // at the request deadline. Nothing was proposed, so clients may send it elsewhere.
                Target::Stopped => return Err(S::status(Failure::Stopped)),
            };
            if let Some(reply) = outcome {
                return Ok(reply);
            }
            let delay = delays.next().unwrap_or(Duration::from_millis(200));
            if Instant::now() + delay >= deadline {
                return Err(S::status(match self.target() {
                    Target::Unknown => Failure::NoLeader,
                    _ => Failure::TimedOut,
                }));
            }
            // Retry after the backoff, or as soon as a (new) leader is known: after a leader dies, every
            // request waiting here moves on the moment the election ends, not a backoff step later.
            tokio::select! {
                biased;
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
    async fn execute_local(&self, op: &Op<S>) -> Result<Option<Reply<S>>, Status> {
        Ok(match op {
            ForwardOp::Write(command) => self.propose_local(command).await?.map(ForwardReply::Written),
            ForwardOp::ReadIndex => self.read_index_local().await?.map(ForwardReply::ReadIndex),
            ForwardOp::Member(change) => membership::change_member_local::<S>(&self.inner.raft, change)
                .await?
                .map(ForwardReply::Member),
            ForwardOp::Leader(request) => self
                .inner
                .service
                .on_leader(self, request)
                .await?
                .map(ForwardReply::Leader),
        })
    }

    async fn read_index_local(&self) -> Result<Option<u64>, Status> {
        // ReadIndex: a quorum confirms the leadership after the request arrived. No clock is trusted.
        match self
            .inner
            .raft
            .get_read_log_id(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok((read_log_id, _applied)) => Ok(Some(read_log_id.log_id().index)),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => Ok(None),
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => Ok(None),
            Err(RaftError::Fatal(e)) => Err(S::status(Failure::RaftStopped(e.to_string()))),
        }
    }
}

/// The responses of a command standing for `count` (see [`Replicated::join`]), in order.
fn split<S: Service>(response: ResponseOf<S>, count: usize) -> Result<Vec<ResponseOf<S>>, Status> {
    if count == 1 {
        return Ok(vec![response]);
    }
    S::Machine::unbatch(response, count)
        .ok_or_else(|| Status::internal(format!("a batch of {count} commands did not answer as a batch")))
}

#[tonic::async_trait]
impl<S: Service> ForwardHandler for Replicated<S> {
    async fn forward(&self, payload: Vec<u8>) -> Result<Vec<u8>, ForwardError> {
        let op: Op<S> =
            decode(&payload).map_err(|e| ForwardError::from(Status::invalid_argument(e.to_string())))?;
        // A follower forwarded this because it believed we lead; if we do not, say so and it will look again.
        // Bounded for the reason given in `with_leader`; the follower's own deadline is usually shorter.
        let timeout = self.inner.settings.request_timeout;
        let work = async {
            match op {
                ForwardOp::Write(command) if self.is_leader() => {
                    // Into this leader's queue of forwarded writes: the followers' batches that arrive while an
                    // entry is in flight leave together as the next entry, one fsync per replica rather than one
                    // per follower batch. Proposed here or not at all: never forwarded on.
                    let response = self.inner.forwarded.propose(command).await?;
                    Ok(response.map(ForwardReply::Written))
                }
                ForwardOp::Write(_) => Ok(None),
                other => self.execute_local(&other).await,
            }
        };
        let stopped = S::status(Failure::Stopped);
        let reply = match tokio::time::timeout(timeout, work).await {
            Err(_elapsed) => return Err(ForwardError::from(S::status(Failure::TimedOut))),
            // This node stopped before it proposed anything (`Failure::Stopped` says so): the follower may send
            // the request to the next leader instead of failing it.
            Ok(Err(status)) if status.code() == stopped.code() && status.message() == stopped.message() => {
                return Err(ForwardError::unexecuted(status));
            }
            Ok(result) => result?,
        }
        .ok_or_else(|| ForwardError::unexecuted(S::status(Failure::NoLeader)))?;
        encode(&reply).map_err(|e| ForwardError::from(Status::internal(e.to_string())))
    }

    async fn caught_up(&self) -> Result<(), String> {
        self.read_barrier()
            .await
            .map_err(|status| status.message().to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A service with every default, for unit tests of the layer.
    pub(crate) struct Plain;

    impl StateMachine for Plain {
        type Command = u8;
        type Response = u8;
        fn apply(&mut self, _index: u64, command: u8) -> u8 {
            command
        }
        fn undecodable(&mut self, _index: u64, _error: String) -> u8 {
            0
        }
        fn batch(_commands: Vec<u8>) -> u8 {
            0
        }
        fn unbatch(_response: u8, _count: usize) -> Option<Vec<u8>> {
            None
        }
        fn snapshot(&self, _out: &mut dyn std::io::Write) -> Result<(), crate::SnapshotError> {
            Ok(())
        }
        fn restore(&mut self, _input: &mut dyn std::io::Read) -> Result<(), crate::SnapshotError> {
            Ok(())
        }
    }

    impl Service for Plain {
        type Machine = Plain;
        type LeaderRequest = NoRequest;
        type LeaderReply = NoRequest;
        async fn on_leader(
            &self,
            _host: &Replicated<Self>,
            request: &NoRequest,
        ) -> Result<Option<NoRequest>, Status> {
            match *request {}
        }
    }

    #[test]
    fn settings_name_the_offending_value() {
        assert_eq!(ReplicatedSettings::default().validate(), Ok(()));
        let settings = ReplicatedSettings {
            proposal_pipeline: 0,
            ..ReplicatedSettings::default()
        };
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "proposal_pipeline must be greater than zero"
        );
    }

    #[test]
    fn a_forwarded_request_keeps_its_kind_on_the_wire() {
        let op: Op<Plain> = ForwardOp::Write(7);
        let back: Op<Plain> = decode(&encode(&op).unwrap()).unwrap();
        assert!(matches!(back, ForwardOp::Write(7)));
    }
}
