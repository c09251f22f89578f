//! The coordination store: [`StoreApp`] on trestle-raft's replicated-service layer, plus what etcd adds there: lease keep-alives and TTLs answered by the leader, the leader's lease clock, and etcd's words for
//! the layer's failures.

mod alarm;
mod app;
mod command;
mod compactor;
mod lessor;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, warn};

pub use alarm::{AlarmAction, AlarmKind, AlarmMember};
pub use app::{RevisionEvents, StoreApp};
pub use command::{StoreCommand, StoreOutcome, StoreResult};
pub use compactor::{AutoCompaction, AutoCompactionError, Compactor, REVISION_CHECK_INTERVAL};
pub use lessor::Lessor;

use crate::mvcc::{LeaseId, MvccError};
use trestle_raft::PeerChannels;
use trestle_raft::{Failure, MemberChange, Replicated, ReplicatedSettings, ReplicatedSettingsError, Service};
use trestle_raft::{ForwardError, ForwardHandler};
use trestle_raft::{GroupId, NodeId, Raft};

/// Settings of the store runtime.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreSettings {
    /// The replicated-service layer's settings: the request timeout (after which a client gets `request timed
    /// out`; default 5 s) and group commit (default: one batch in flight, at most 1 MiB; on a 2-core machine the
    /// best throughput at 16 and 256 clients of 1, 2 and 4).
    pub replicated: ReplicatedSettings,
    /// The smallest lease TTL granted, in seconds (shorter requests are raised to it). Default 2 s: well above
    /// the election timeout, so a leader change does not expire leases that were being kept alive.
    pub min_lease_ttl: i64,
    /// How often the leader looks for expired leases (and at its compaction schedule). Default 250 ms.
    pub lease_check_interval: Duration,
    /// Compacting the history without a client asking (etcd's `--auto-compaction-mode` and
    /// `--auto-compaction-retention`). Default off, as in etcd.
    pub auto_compaction: AutoCompaction,
    /// The space quota in bytes (etcd's `--quota-backend-bytes`), measured as the store's approximate size
    /// (keys, values and retained history). A write that would pass it raises a `NoSpace` alarm and is refused
    /// with `mvcc: database space exceeded`, as is every write needing space until an operator compacts and
    /// disarms the alarm. 0: no quota. Default [`DEFAULT_QUOTA_BYTES`].
    pub quota_bytes: u64,
}

/// etcd's default space quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            replicated: ReplicatedSettings::default(),
            min_lease_ttl: 2,
            lease_check_interval: Duration::from_millis(250),
            auto_compaction: AutoCompaction::Off,
            quota_bytes: DEFAULT_QUOTA_BYTES,
        }
    }
}

impl StoreSettings {
    /// Checks the settings; the error names the offending value.
    pub fn validate(&self) -> Result<(), StoreSettingsError> {
        self.replicated.validate()?;
        if self.min_lease_ttl < 1 {
            return Err(StoreSettingsError::MinLeaseTtl {
                seconds: self.min_lease_ttl,
            });
        }
        if self.lease_check_interval.is_zero() {
            return Err(StoreSettingsError::LeaseCheckInterval);
        }
        Ok(())
    }
}

/// Store settings the store refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreSettingsError {
    /// A replicated-service setting is unusable.
    #[error(transparent)]
    Replicated(#[from] ReplicatedSettingsError),
    /// A minimum lease TTL below one second.
    #[error("minimum lease TTL {seconds}s must be at least 1s")]
    MinLeaseTtl {
        /// The value given.
        seconds: i64,
    },
    /// A lease check interval of zero.
    #[error("the lease check interval must be above zero")]
    LeaseCheckInterval,
}

/// What only the store's leader answers: its lessor knows the leases' deadlines.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LeaseRequest {
    KeepAlive(LeaseId),
    TimeToLive(LeaseId),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LeaseReply {
    /// The TTL granted by the keep-alive, or `None` when the lease is gone.
    KeepAlive(Option<i64>),
    /// The remaining TTL in seconds, or `None` when unknown.
    TimeToLive(Option<i64>),
}

/// The coordination store as a service of the replicated-service layer.
pub(crate) struct StoreService {
    lessor: Mutex<Lessor>,
    compactor: Mutex<Compactor>,
    settings: StoreSettings,
}

impl StoreService {
    pub(crate) fn new(settings: StoreSettings) -> Self {
        Self {
            lessor: Mutex::new(Lessor::new()),
            compactor: Mutex::new(Compactor::new(settings.auto_compaction)),
            settings,
        }
    }

    /// Proposes the compaction the schedule asks for now, if any (on the leader).
    async fn auto_compact(&self, host: &Replicated<Self>, leading: bool) {
        let (revision, compacted) = host.read(|app| (app.store().revision(), app.store().compact_revision()));
        let target = self
            .compactor
            .lock()
            .tick(Instant::now(), leading, revision, compacted);
        let Some(target) = target else { return };
        match host.propose_local(&StoreCommand::Compact(target)).await {
            Ok(Some(_)) => {
                info!(revision = target, policy = %self.settings.auto_compaction, "auto-compacted");
                metrics::counter!("trestle_store_auto_compactions_total").increment(1);
            }
            Ok(None) => {}
            Err(status) => {
                warn!(revision = target, %status, "auto-compaction failed; the schedule tries again")
            }
        }
    }
}

impl Service for StoreService {
    type Machine = StoreApp;
    type LeaderRequest = LeaseRequest;
    type LeaderReply = LeaseReply;

    /// etcd's words: its clients match on them (clientv3 turns "etcdserver: request timed out" into
    /// `ErrTimeout`, for one).
    fn status(failure: Failure) -> Status {
        match failure {
            Failure::NoLeader => Status::unavailable("etcdserver: no leader"),
            Failure::TimedOut => Status::unavailable("etcdserver: request timed out"),
            Failure::LeaderLost => {
                Status::unavailable("etcdserver: request timed out, possibly due to previous leader failure")
            }
            Failure::Stopped => Status::unavailable("etcdserver: server stopped"),
            Failure::RaftStopped(e) => Status::unavailable(format!("etcdserver: raft stopped: {e}")),
            Failure::MemberExists => Status::failed_precondition("etcdserver: peerURL exists"),
            Failure::MemberNotFound => Status::not_found("etcdserver: member not found"),
            Failure::NotALearner => {
                Status::failed_precondition("etcdserver: can only promote a learner member")
            }
            other => {
                let status = other.status();
                Status::new(status.code(), format!("etcdserver: {}", status.message()))
            }
        }
    }

    fn leader_request_is_idempotent(_request: &LeaseRequest) -> bool {
        // A keep-alive sent twice renews twice: the same as once.
        true
    }

    async fn on_leader(
        &self,
        host: &Replicated<Self>,
        request: &LeaseRequest,
    ) -> Result<Option<LeaseReply>, Status> {
        if !host.is_leader() {
            return Ok(None);
        }
        Ok(Some(match *request {
            LeaseRequest::KeepAlive(id) => LeaseReply::KeepAlive(self.keep_alive_local(host, id)),
            LeaseRequest::TimeToLive(id) => LeaseReply::TimeToLive(self.time_to_live_local(host, id)),
        }))
    }

    /// Keeps the leader's lessor in step with what its own proposals did.
    fn proposed_here(&self, result: &StoreResult) {
        match &result.outcome {
            Ok(StoreOutcome::LeaseGranted(lease)) => self.lessor.lock().granted(lease, Instant::now()),
            Ok(StoreOutcome::Batch(results)) => results.iter().for_each(|r| self.proposed_here(r)),
            _ => {}
        }
    }

    /// The leader clock: while this node leads, compact on the schedule (if any) and expire leases whose
    /// deadline passed by proposing revokes.
    async fn on_clock(&self, host: &Replicated<Self>, leading: bool) {
        self.auto_compact(host, leading).await;
        let now = Instant::now();
        let leases = host.read(|app| app.store().leases());
        let expired = {
            let mut lessor = self.lessor.lock();
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
                return;
            }
            lessor.sync(now, &leases, true);
            lessor.expired(now)
        };
        for id in expired {
            match host.propose_local(&StoreCommand::LeaseRevoke { id }).await {
                Ok(Some(result)) => {
                    debug!(id, revision = result.revision, "lease expired");
                    self.lessor.lock().revoked(id);
                    metrics::counter!("trestle_store_leases_expired_total").increment(1);
                }
                Ok(None) => break,
                Err(status) => warn!(id, %status, "could not revoke an expired lease; will retry"),
            }
        }
    }
}

impl StoreService {
    /// The lessor, promoted first when this node leads but the lease clock has not noticed yet (it looks only
    /// every `lease_check_interval`): a keep-alive arriving just after an election must find its lease, not be
    /// told it is gone. Only called on the leader.
    fn primary_lessor(&self, host: &Replicated<Self>) -> parking_lot::MutexGuard<'_, Lessor> {
        let promoted = self.lessor.lock().is_primary();
        if promoted {
            return self.lessor.lock();
        }
        // Read the leases before taking the lessor: never hold both locks at once.
        let leases = host.read(|app| app.store().leases());
        let mut lessor = self.lessor.lock();
        if !lessor.is_primary() {
            lessor.promote(Instant::now(), &leases);
        }
        lessor
    }

    fn keep_alive_local(&self, host: &Replicated<Self>, id: LeaseId) -> Option<i64> {
        // The state machine decides whether the lease exists; the lessor only knows deadlines.
        let lease = host.read(|app| app.store().lease(id))?;
        let mut lessor = self.primary_lessor(host);
        let now = Instant::now();
        lessor.sync(now, std::slice::from_ref(&lease), false);
        lessor.renew(id, now).map(|ttl| ttl.as_secs() as i64)
    }

    fn time_to_live_local(&self, host: &Replicated<Self>, id: LeaseId) -> Option<i64> {
        let remaining = self.primary_lessor(host).remaining(id, Instant::now())?;
        // etcd rounds the remaining TTL up to whole seconds.
        Some(remaining.as_millis().div_ceil(1000) as i64)
    }
}

fn unexpected_reply(reply: &LeaseReply) -> Status {
    Status::internal(format!("unexpected reply from the leader: {reply:?}"))
}

/// A handle to the coordination store on this node. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    replicated: Replicated<StoreService>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node_id", &self.replicated.node_id())
            .field("group", &self.replicated.group())
            .finish()
    }
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
        let replicated = settings.replicated.clone();
        let service = StoreService::new(settings);
        Self::from_replicated(Replicated::new(
            node_id, group, raft, app, channels, service, replicated,
        ))
    }

    /// The store around its started service.
    pub(crate) fn from_replicated(replicated: Replicated<StoreService>) -> Self {
        Self { replicated }
    }

    /// The group's Raft handle.
    pub fn raft(&self) -> &Raft {
        self.replicated.raft()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.replicated.node_id()
    }

    /// The store group's leader as this node knows it, if it knows one.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.replicated.current_leader()
    }

    /// The settings.
    pub fn settings(&self) -> &StoreSettings {
        &self.replicated.service().settings
    }

    /// Reads the local state (no barrier: serializable).
    pub fn read<R>(&self, f: impl FnOnce(&StoreApp) -> R) -> R {
        self.replicated.read(f)
    }

    /// The application behind the store (for readers that need to hold the lock across several reads).
    pub(crate) fn inner_app(&self) -> Arc<RwLock<StoreApp>> {
        self.replicated.app().clone()
    }

    /// Proposes a command through Raft and returns its result once applied. Forwards to the leader when this
    /// node is a follower. Commands proposed concurrently on this node travel together (group commit).
    pub async fn propose(&self, command: StoreCommand) -> Result<StoreResult, Status> {
        self.check_quota(&command).await?;
        self.replicated.propose(command).await
    }

    /// Refuses a write that would take the store past its quota, raising this member's `NoSpace` alarm (the
    /// alarm, replicated, then makes every member refuse such writes until it is cleared).
    async fn check_quota(&self, command: &StoreCommand) -> Result<(), Status> {
        let quota = self.settings().quota_bytes;
        if quota == 0 || !alarm::needs_space(command) {
            return Ok(());
        }
        let (size, alarmed) = self.read(|app| (app.store().approximate_size(), app.out_of_space()));
        let after = size.saturating_add(alarm::approximate_cost(command)) as u64;
        if alarmed || after <= quota {
            // Raised already: applying refuses the write (on every member alike).
            return Ok(());
        }
        warn!(
            size,
            quota, "the store reached its space quota: raising the NOSPACE alarm"
        );
        metrics::counter!("trestle_store_quota_exceeded_total").increment(1);
        let raise = StoreCommand::Alarm {
            action: AlarmAction::Activate,
            member: self.node_id(),
            alarm: AlarmKind::NoSpace,
        };
        if let Err(status) = self.replicated.propose(raise).await {
            warn!(%status, "could not raise the NOSPACE alarm");
        }
        Err(MvccError::NoSpace.into())
    }

    /// Waits until this node's state machine reflects every write acknowledged before the call (a read index
    /// from the leader, then the local apply catching up to it). Concurrent reads share read-index rounds.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        self.replicated.read_barrier().await
    }

    /// Renews a lease on the leader. Returns the TTL in seconds; `NOT_FOUND` when the lease is gone.
    pub async fn keep_alive(&self, id: LeaseId) -> Result<i64, Status> {
        let ttl = match self
            .replicated
            .leader_request(LeaseRequest::KeepAlive(id))
            .await?
        {
            LeaseReply::KeepAlive(ttl) => ttl,
            other => return Err(unexpected_reply(&other)),
        };
        ttl.ok_or_else(|| MvccError::LeaseNotFound { id }.into())
    }

    /// The remaining TTL of a lease in seconds, as the leader's lessor sees it.
    pub async fn time_to_live(&self, id: LeaseId) -> Result<Option<i64>, Status> {
        match self
            .replicated
            .leader_request(LeaseRequest::TimeToLive(id))
            .await?
        {
            LeaseReply::TimeToLive(ttl) => Ok(ttl),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Changes the membership through the leader. Returns the id of the member concerned.
    pub async fn change_member(&self, change: MemberChange) -> Result<NodeId, Status> {
        self.replicated.change_member(change).await
    }

    /// Runs the lease clock: while this node leads, expire leases whose deadline passed by proposing revokes.
    pub fn spawn_lessor(&self) -> tokio::task::JoinHandle<()> {
        self.replicated.spawn_clock(self.settings().lease_check_interval)
    }
}

#[tonic::async_trait]
impl ForwardHandler for Store {
    async fn forward(&self, payload: Vec<u8>) -> Result<Vec<u8>, ForwardError> {
        self.replicated.forward(payload).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layers_failures_speak_etcds_words() {
        let lost = StoreService::status(Failure::LeaderLost);
        assert_eq!(lost.code(), tonic::Code::Unavailable);
        assert_eq!(
            lost.message(),
            "etcdserver: request timed out, possibly due to previous leader failure"
        );
        assert_eq!(
            StoreService::status(Failure::TimedOut).message(),
            "etcdserver: request timed out"
        );
        assert_eq!(
            StoreService::status(Failure::NoLeader).message(),
            "etcdserver: no leader"
        );
        assert_eq!(
            StoreService::status(Failure::Stopped).message(),
            "etcdserver: server stopped"
        );
        assert_eq!(
            StoreService::status(Failure::MemberNotFound).code(),
            tonic::Code::NotFound
        );
        let refused = StoreService::status(Failure::MembershipRefused("learner not caught up".into()));
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert_eq!(refused.message(), "etcdserver: learner not caught up");
    }
}
