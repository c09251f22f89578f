//! A partition on a Raft group of trestle-raft: its state in the group's key space of the node's RocksDB
//! ([`QueueMachine`], a `DiskStateMachine`), a leader clock that proposes [`Op::Tick`] when a deadline passes
//! ([`QueueService`]), and [`PartitionHandle`] to run operations from any node (followers forward to the leader).
//!
//! Commands cross the log in the partition's own versioned encoding ([`Command::encode`]): a replica that meets a
//! newer version answers [`QueueError::Undecodable`] and changes nothing.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use trestle_raft::{
    DiskBacked, DiskStateMachine, GroupId, KeyRead, NoRequest, Node, NodeError, Replicated,
    ReplicatedSettings, Service, SnapshotError, StateTxn,
};

use crate::storage::{Detached, Pairs, Storage, WriteBatch, WriteOp, prefix_end};
use crate::{Command, Event, Op, OutboxEntry, Outcome, Partition, QueueError, Response, StorageError};

/// How often the leader looks for passed deadlines (visibility timeouts, delays, retention, dedup windows).
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// A command or response in the partition's versioned encoding, as it crosses the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoded(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// One entry's transaction as the partition's storage.
struct Entry<'t, 'a>(&'t mut StateTxn<'a>);

/// The key space as a read-only storage, for loading the indexes.
struct Loading<'a>(&'a dyn KeyRead);

fn storage_error(e: std::io::Error) -> StorageError {
    StorageError(e.to_string())
}

fn scan(read: &dyn KeyRead, prefix: &[u8]) -> Result<Pairs, StorageError> {
    read.scan(prefix, prefix_end(prefix).as_deref(), usize::MAX)
        .map_err(storage_error)
}

impl Storage for Entry<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        KeyRead::get(&*self.0, key).map_err(storage_error)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StorageError> {
        scan(&*self.0, prefix)
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        for op in batch.into_ops() {
            match op {
                WriteOp::Put(key, value) => self.0.put(key, value),
                WriteOp::Delete(key) => self.0.delete(key),
            }
        }
        Ok(())
    }
}

impl Storage for Loading<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.get(key).map_err(storage_error)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StorageError> {
        scan(self.0, prefix)
    }

    fn write(&mut self, _batch: WriteBatch) -> Result<(), StorageError> {
        Err(StorageError("loading a partition writes nothing".into()))
    }
}

/// A partition as a trestle-raft `DiskStateMachine`: run it as `DiskBacked<QueueMachine>`.
#[derive(Debug)]
pub struct QueueMachine {
    id: u64,
    /// Detached between entries; `None` only before the first load.
    partition: Option<Partition<Detached>>,
    /// The index of the last entry applied here, so that waiting receives wake when an entry may have made a
    /// message deliverable instead of polling.
    applied: watch::Sender<u64>,
}

impl QueueMachine {
    /// Partition `id` (loaded from the key space when `DiskBacked::open` runs it).
    pub fn new(id: u64) -> Self {
        Self {
            id,
            partition: None,
            applied: watch::Sender::new(0),
        }
    }

    /// Changes whenever this replica applies an entry (its value: the entry's index).
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The partition between entries (its indexes: [`Partition::next_deadline_ms`], [`Partition::queues`], ...).
    pub fn partition(&self) -> Option<&Partition<Detached>> {
        self.partition.as_ref()
    }
}

impl DiskStateMachine for QueueMachine {
    type Command = Encoded;
    type Response = Encoded;

    fn apply(&mut self, index: u64, command: Encoded, state: &mut StateTxn<'_>) -> Encoded {
        let Some(detached) = self.partition.take() else {
            return Encoded(
                Response {
                    outcome: Err(QueueError::Storage {
                        detail: "the partition was not loaded".into(),
                    }),
                    events: Vec::new(),
                }
                .encode(),
            );
        };
        let (mut partition, _) = detached.with_storage(Entry(state));
        let reply = partition.apply_encoded(index, &command.0);
        self.partition = Some(partition.with_storage(Detached).0);
        self.applied.send_replace(index);
        Encoded(reply)
    }

    fn undecodable(&mut self, _index: u64, detail: String) -> Encoded {
        Encoded(
            Response {
                outcome: Err(QueueError::Undecodable { detail }),
                events: Vec::new(),
            }
            .encode(),
        )
    }

    fn batch(commands: Vec<Encoded>) -> Encoded {
        // Every command here was encoded by this node's proposer: they decode.
        let decoded: Vec<Command> = commands
            .iter()
            .filter_map(|c| Command::decode(&c.0).ok())
            .collect();
        Encoded(Command::batch(decoded).encode())
    }

    fn unbatch(response: Encoded, count: usize) -> Option<Vec<Encoded>> {
        let responses = Response::decode(&response.0).ok()?.unbatch(count)?;
        Some(responses.into_iter().map(|r| Encoded(r.encode())).collect())
    }

    fn load(&mut self, state: &dyn KeyRead) -> Result<(), SnapshotError> {
        let partition = Partition::open(Loading(state), self.id).map_err(SnapshotError::invalid)?;
        self.partition = Some(partition.with_storage(Detached).0);
        Ok(())
    }
}

/// The partitions of one host by partition id, for delivering outboxes: set once every partition started.
pub type Partitions = Arc<OnceLock<std::collections::BTreeMap<u64, PartitionHandle>>>;

/// The partition service: no leader requests; the leader clock proposes [`Op::Tick`] once a deadline passed and
/// delivers the outbox (barrier task outcomes for other partitions) when it knows them.
#[derive(Debug, Default)]
pub struct QueueService {
    partitions: Partitions,
    /// The queues whose gauges this node exports (as the partition's leader).
    exported: parking_lot::Mutex<std::collections::BTreeSet<String>>,
}

/// Milliseconds since the Unix epoch by this node's clock (a command's time; the partition never moves back).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Service for QueueService {
    type Machine = DiskBacked<QueueMachine>;
    type LeaderRequest = NoRequest;
    type LeaderReply = NoRequest;

    async fn on_leader(
        &self,
        _host: &Replicated<Self>,
        request: &NoRequest,
    ) -> Result<Option<NoRequest>, tonic::Status> {
        match *request {}
    }

    async fn on_clock(&self, host: &Replicated<Self>, leading: bool) {
        self.export_gauges(host, leading);
        if !leading {
            return;
        }
        let deadline = host.read(|m| m.machine().partition().and_then(Partition::next_deadline_ms));
        let now = now_ms();
        if deadline.is_some_and(|d| d <= now) {
            let tick = Encoded(Command::new(now, Op::Tick).encode());
            match host.propose_local(&tick).await {
                Ok(Some(reply)) => {
                    if let Ok(response) = Response::decode(&reply.0) {
                        record_events(host.group(), &response.events);
                    }
                }
                Ok(None) => {}
                Err(status) => tracing::debug!(%status, "tick not proposed"),
            }
        }
        if let Some(partitions) = self.partitions.get() {
            deliver_outbox(host, partitions).await;
        }
    }
}

impl QueueService {
    /// Per queue of the partition: `trestle_queue_partition_{depth,ready,in_flight,delayed,parked,dead_letters}`
    /// and `trestle_queue_partition_oldest_age_seconds`, labelled `queue` and `partition`, from the leader only
    /// (a former leader zeroes what it exported, so a sum over members counts each partition once).
    fn export_gauges(&self, host: &Replicated<Self>, leading: bool) {
        let mut exported = self.exported.lock();
        let partition = host.group().to_string();
        let set = |queue: &str, stats: &crate::QueueStats| {
            let labels = [("queue", queue.to_owned()), ("partition", partition.clone())];
            metrics::gauge!("trestle_queue_partition_depth", &labels).set(stats.depth as f64);
            metrics::gauge!("trestle_queue_partition_ready", &labels).set(stats.ready as f64);
            metrics::gauge!("trestle_queue_partition_in_flight", &labels).set(stats.in_flight as f64);
            metrics::gauge!("trestle_queue_partition_delayed", &labels).set(stats.delayed as f64);
            metrics::gauge!("trestle_queue_partition_parked", &labels).set(stats.parked as f64);
            metrics::gauge!("trestle_queue_partition_dead_letters", &labels).set(stats.dead_letters as f64);
            metrics::gauge!("trestle_queue_partition_oldest_age_seconds", &labels)
                .set(stats.oldest_age_ms as f64 / 1000.0);
        };
        let current: Vec<(String, crate::QueueStats)> = if leading {
            host.read(|m| {
                m.machine()
                    .partition()
                    .map(|p| {
                        p.queues()
                            .into_iter()
                            .filter_map(|(name, _)| p.stats(&name).ok().map(|s| (name, s)))
                            .collect()
                    })
                    .unwrap_or_default()
            })
        } else {
            Vec::new()
        };
        let now: std::collections::BTreeSet<String> = current.iter().map(|(q, _)| q.clone()).collect();
        for gone in exported.difference(&now) {
            set(gone, &crate::QueueStats::default());
        }
        for (queue, stats) in &current {
            set(queue, stats);
        }
        *exported = now;
    }
}

/// Counts and logs what applying a command made happen besides its outcome.
pub(crate) fn record_events(partition: u64, events: &[Event]) {
    for event in events {
        let (kind, queue) = match event {
            Event::DeadLettered { id, from, to, reason } => {
                tracing::info!(partition, id, from, to, reason, "message dead-lettered");
                ("dead_lettered", from.as_str())
            }
            Event::Parked { id, queue, reason } => {
                tracing::warn!(
                    partition,
                    id,
                    queue,
                    reason,
                    "message parked: its queue has no dead-letter queue"
                );
                ("parked", queue.as_str())
            }
            Event::Expired { id, queue } => {
                tracing::info!(partition, id, queue, "message expired (retention)");
                ("expired", queue.as_str())
            }
            Event::BarrierCompleted { barrier, .. } => {
                tracing::info!(partition, barrier, "barrier completed");
                ("barrier_completed", "")
            }
            Event::BarrierFailed { barrier, .. } => {
                tracing::info!(partition, barrier, "barrier failed");
                ("barrier_failed", "")
            }
            Event::Outbox(_) => ("outbox", ""),
            _ => ("other", ""),
        };
        metrics::counter!("trestle_queue_events_total", "event" => kind, "queue" => queue.to_owned())
            .increment(1);
    }
}

/// Delivers this partition's outbox to the barriers' home partitions, then clears what was delivered. Called by
/// the leader's clock; what fails is tried again on the next tick (recording an outcome twice is harmless).
async fn deliver_outbox(
    host: &Replicated<QueueService>,
    partitions: &std::collections::BTreeMap<u64, PartitionHandle>,
) {
    let entries: Vec<OutboxEntry> = match host.read(|m| crate::partition::read_outbox(&Loading(m.state()))) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "outbox unreadable");
            return;
        }
    };
    let mut delivered = None;
    for entry in entries {
        let Some(home) = partitions.get(&entry.task.partition) else {
            tracing::warn!(
                partition = entry.task.partition,
                "outbox entry for a partition this host does not run"
            );
            break;
        };
        let op = Op::BarrierTaskDone {
            barrier: entry.task.barrier,
            slot: entry.task.slot,
            outcome: entry.outcome.clone(),
        };
        match home.run(op).await {
            Ok(_) | Err(PartitionError::Refused(QueueError::UnknownBarrier { .. })) => {
                delivered = Some(entry.seq)
            }
            Err(e) => {
                tracing::debug!(error = %e, "outbox delivery failed; next tick tries again");
                break;
            }
        }
    }
    if let Some(seq) = delivered {
        let done = Encoded(Command::new(now_ms(), Op::OutboxDone { seq }).encode());
        if let Err(status) = host.propose_local(&done).await {
            tracing::debug!(%status, "outbox not cleared; delivered again later");
        }
    }
}

/// Why an operation on a partition did not happen, or may not have.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionError {
    /// The partition refused the operation; it changed nothing.
    #[error(transparent)]
    Refused(#[from] QueueError),
    /// The replicated-service layer failed (no leader, timed out, leader lost): for a write, its fate may be
    /// unknown (the status says which).
    #[error("{0}")]
    Unavailable(tonic::Status),
    /// The reply could not be decoded.
    #[error("undecodable reply: {0}")]
    Reply(QueueError),
}

/// Why a partition could not start on a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartPartitionError {
    /// Its state in the node's key space could not be loaded.
    #[error("queue partition {partition}: loading its state: {source}")]
    State {
        /// The partition.
        partition: u64,
        /// What failed.
        source: std::io::Error,
    },
    /// The node refused the group.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A partition running on a node: operations from any member, forwarded to the leader.
#[derive(Clone, Debug)]
pub struct PartitionHandle {
    service: Replicated<QueueService>,
    applied: watch::Receiver<u64>,
}

impl PartitionHandle {
    /// Starts (or restarts) partition `partition` as Raft group `group` on `node`, with its leader clock. The
    /// caller founds a new group (`Node::found_group`) or joins an existing one.
    pub async fn start(node: &Node, group: GroupId, partition: u64) -> Result<Self, StartPartitionError> {
        Self::start_among(
            node,
            group,
            partition,
            Partitions::default(),
            ReplicatedSettings::default(),
        )
        .await
    }

    /// Like [`PartitionHandle::start`], for one of several partitions of a host, with `settings` for its
    /// replicated service: once `partitions` is set, the leader delivers this partition's outbox to them.
    pub async fn start_among(
        node: &Node,
        group: GroupId,
        partition: u64,
        partitions: Partitions,
        settings: ReplicatedSettings,
    ) -> Result<Self, StartPartitionError> {
        let queue_machine = QueueMachine::new(partition);
        let applied = queue_machine.applied();
        let machine = DiskBacked::open(queue_machine, node.key_space(group))
            .map_err(|source| StartPartitionError::State { partition, source })?;
        let service = node
            .start_service(
                group,
                machine,
                QueueService {
                    partitions,
                    exported: parking_lot::Mutex::default(),
                },
                settings,
            )
            .await?;
        // The clock ends with the group's Raft.
        drop(service.spawn_clock(TICK_INTERVAL));
        Ok(Self { service, applied })
    }

    /// The replicated service underneath (its Raft handle, leadership, read barrier).
    pub fn service(&self) -> &Replicated<QueueService> {
        &self.service
    }

    /// Runs `op` at this node's time; its outcome and the events it caused.
    pub async fn run(&self, op: Op) -> Result<(Outcome, Vec<crate::Event>), PartitionError> {
        let command = Encoded(Command::new(now_ms(), op).encode());
        let reply = self
            .service
            .propose(command)
            .await
            .map_err(PartitionError::Unavailable)?;
        let response = Response::decode(&reply.0).map_err(PartitionError::Reply)?;
        record_events(self.service.group(), &response.events);
        Ok((response.outcome?, response.events))
    }

    /// Changes whenever this replica applies an entry: a receive waiting for messages waits on it.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Whether this member leads the partition now (its writes run here instead of being forwarded).
    pub fn leads(&self) -> bool {
        self.service.is_leader()
    }

    /// The partition's id (its group id).
    pub fn id(&self) -> u64 {
        self.service.group()
    }

    /// Reads this replica's partition between entries (may lag the leader; a hint, not a linearizable read).
    pub fn local<R>(&self, f: impl FnOnce(&Partition<Detached>) -> R) -> Option<R> {
        self.service.read(|m| m.machine().partition().map(f))
    }
}
