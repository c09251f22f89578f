//! Queues on a node: [`QueueHost`] runs a cluster's queue partitions as Raft groups of a trestle-raft node, and
//! [`QueueApi`] serves the client API (`proto/queue.proto`) over them from any member.
//!
//! Every member hosts every partition (partition `i` is Raft group [`PARTITION_GROUP_BASE`]` + i`), so every
//! member answers every request: writes go to the partition's leader, here or forwarded. A queue has shards in one or
//! more partitions, chosen when it is created; which partitions hold a queue is read from the partitions themselves, so
//! there is no catalog to keep consistent (from the local replicas, after a read barrier on a partition whose local
//! replica does not know the queue, since that replica may only lag). A partition found that way to hold no shard of
//! the queue is trusted to hold none for [`QueueHostConfig::absence_lease`] without asking again, and creating a shard
//! waits that long (and an eighth more, for clocks that run at slightly different rates) before it returns, so that
//! once a queue's creation has returned no member still trusts an older answer. A queue's dead-letter queue gets a
//! shard in each of the queue's partitions (a dead letter moves within its partition).
//!
//! Sending: messages with a FIFO group or an idempotency key go to the shard their key hashes to (a repeated key
//! meets its first send); a batch of other messages goes whole to one shard, so it is all or nothing: one this
//! member leads when there is one (no forward), in turn among them, else in turn among all.
//! Receiving: shards this member leads first, then the others, each in turn; a shard whose local replica shows
//! nothing deliverable is skipped. Long polling waits for the next entry the local replicas apply (at most
//! [`QueueHostConfig::poll_interval`], and that long after a receive that found nothing, so that waiting consumers
//! do not wake each other with empty receives) and looks again, until a message shows or the wait ends.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tonic::{Request, Response, Status};
use trestle_raft::{GroupId, Node, ReplicatedSettings};

use crate::api::{self, invalid, proto, status_of};
use crate::host::{PartitionError, PartitionHandle, Partitions, StartPartitionError};
use crate::{
    AckEntry, BarrierRef, NewMessage, Op, Outcome, QueueError, QueueSettings, RedriveFilter, Target,
};

/// Queue partition `i` is Raft group `PARTITION_GROUP_BASE + i` (the coordination store is group 0).
pub const PARTITION_GROUP_BASE: GroupId = 1 << 20;
/// The most partitions a host runs.
pub const MAX_PARTITIONS: u32 = 256;

/// Batches of commands a member keeps in flight per partition (group commit). Queue traffic (sends, receives and
/// acks from many clients at once) moved more messages, with a shorter p99, at 2 and at 4 than at the store's 1
/// (measurements in the crate's README, Benchmark).
pub const QUEUE_PROPOSAL_PIPELINE: usize = 4;

/// How a node hosts queues. Start from [`QueueHostConfig::default`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QueueHostConfig {
    /// How many partitions the cluster has (1 to [`MAX_PARTITIONS`]). Every member must be started with the
    /// same number; a queue has shards in up to this many. Default 3.
    pub partitions: u32,
    /// The longest a receive waits for a message (a request asking for more waits this long). Default 20 s.
    pub max_wait: Duration,
    /// The longest a waiting receive goes without looking at the local replicas again; it also looks after each
    /// entry they apply. Default 20 ms.
    pub poll_interval: Duration,
    /// The group whose membership every partition follows (the coordination store's, group 0, whose
    /// membership is the cluster's): members added to it later join the partitions, removed ones leave them.
    /// `None` leaves partition membership alone. Default `Some(0)`.
    pub follow_group: Option<GroupId>,
    /// How often the steward (membership following, spreading leaders over members) looks; `None` turns it
    /// off. Default 1 s.
    pub steward_interval: Option<Duration>,
    /// How long this member trusts a partition's answer, read after a read barrier, that it holds no shard of a
    /// queue, before asking again (so that a queue on fewer partitions than the cluster has costs no barrier per
    /// request). Creating a shard waits this long and an eighth more before it returns, so that no member still
    /// trusts an answer from before it. Zero asks every time and makes creation return at once. Default 1 s.
    pub absence_lease: Duration,
    /// The replicated-service settings of every partition (request timeout, group commit). Default
    /// `ReplicatedSettings::default()` with a `proposal_pipeline` of [`QUEUE_PROPOSAL_PIPELINE`].
    pub replicated: ReplicatedSettings,
}

impl Default for QueueHostConfig {
    fn default() -> Self {
        Self {
            partitions: 3,
            max_wait: Duration::from_secs(20),
            poll_interval: Duration::from_millis(20),
            follow_group: Some(0),
            steward_interval: Some(Duration::from_secs(1)),
            absence_lease: Duration::from_secs(1),
            replicated: {
                let mut replicated = ReplicatedSettings::default();
                replicated.proposal_pipeline = QUEUE_PROPOSAL_PIPELINE;
                replicated
            },
        }
    }
}

/// A [`QueueHostConfig`] field out of bounds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueHostConfigError {
    /// `partitions` is 0 or above [`MAX_PARTITIONS`].
    #[error("queue partitions must be 1 to {MAX_PARTITIONS}, not {0}")]
    Partitions(u32),
    /// `poll_interval` is zero or above `max_wait`.
    #[error("queue poll interval {poll:?} must be above zero and at most the longest wait {max_wait:?}")]
    PollInterval {
        /// The poll interval.
        poll: Duration,
        /// The longest wait.
        max_wait: Duration,
    },
}

impl QueueHostConfig {
    /// Sets `partitions`.
    #[must_use]
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets `replicated`.
    #[must_use]
    pub fn with_replicated(mut self, replicated: ReplicatedSettings) -> Self {
        self.replicated = replicated;
        self
    }

    /// Sets `absence_lease`.
    #[must_use]
    pub fn with_absence_lease(mut self, lease: Duration) -> Self {
        self.absence_lease = lease;
        self
    }

    /// Checks the fields; the error names the offending value.
    pub fn validate(&self) -> Result<(), QueueHostConfigError> {
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(QueueHostConfigError::Partitions(self.partitions));
        }
        if self.poll_interval.is_zero() || self.poll_interval > self.max_wait {
            return Err(QueueHostConfigError::PollInterval {
                poll: self.poll_interval,
                max_wait: self.max_wait,
            });
        }
        Ok(())
    }
}

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueHostError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] QueueHostConfigError),
    /// A partition could not start.
    #[error(transparent)]
    Partition(#[from] StartPartitionError),
}

/// A node's queue partitions. Cheap to clone.
#[derive(Clone, Debug)]
pub struct QueueHost {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: QueueHostConfig,
    /// By partition id, ascending.
    partitions: BTreeMap<u64, PartitionHandle>,
    /// Rotates unkeyed sends and the first shard a receive tries.
    turn: AtomicUsize,
    /// What this member's receives are asking each shard for right now.
    asking: AskTable,
    /// Partitions known to hold no shard of a queue, for a while.
    absent: AbsenceCache,
}

/// By queue: the partitions that a read barrier showed to hold no shard of it, each with the instant until which
/// that answer is trusted ([`QueueHostConfig::absence_lease`] after the barrier began).
#[derive(Debug, Default)]
struct AbsenceCache(parking_lot::Mutex<HashMap<String, HashMap<u64, Instant>>>);

/// The most queues an [`AbsenceCache`] remembers (requests may name any number of queues that do not exist).
const ABSENCE_CACHE_QUEUES: usize = 4096;

impl AbsenceCache {
    /// Whether partition `partition` is trusted to hold no shard of `queue` at `now`.
    fn trusted(&self, queue: &str, partition: u64, now: Instant) -> bool {
        self.0
            .lock()
            .get(queue)
            .and_then(|partitions| partitions.get(&partition))
            .is_some_and(|&until| now < until)
    }

    /// Remembers that `partition` holds no shard of `queue`, trusted until `until`. When the cache is full it
    /// forgets expired answers first, and remembers nothing new if that frees no room.
    fn remember(&self, queue: &str, partition: u64, until: Instant) {
        let mut cache = self.0.lock();
        if !cache.contains_key(queue) && cache.len() >= ABSENCE_CACHE_QUEUES {
            let now = Instant::now();
            cache.retain(|_, partitions| {
                partitions.retain(|_, until| now < *until);
                !partitions.is_empty()
            });
            if cache.len() >= ABSENCE_CACHE_QUEUES {
                return;
            }
        }
        cache
            .entry(queue.to_owned())
            .or_default()
            .insert(partition, until);
    }
}

/// By (partition, queue): how many messages this member's receives are asking that shard for right now. A
/// receive asks a shard only while the others ask for fewer than its local replica shows ready, so that consumers
/// waiting on one member do not all propose a receive for the same few messages.
#[derive(Clone, Debug, Default)]
struct AskTable(Arc<parking_lot::Mutex<HashMap<(u64, String), u64>>>);

impl AskTable {
    /// Counts `count` more messages asked of shard `partition` of `queue`, unless receives already ask for at
    /// least the `ready` messages it shows (`None`: unknown, always asked). The share is given back on drop.
    fn ask(&self, partition: u64, queue: &str, count: u32, ready: Option<usize>) -> Option<Asking> {
        let key = (partition, queue.to_owned());
        let mut table = self.0.lock();
        let total = table.get(&key).copied().unwrap_or(0);
        if ready.is_some_and(|ready| total >= ready as u64) {
            return None;
        }
        table.insert(key.clone(), total + u64::from(count));
        Some(Asking {
            table: self.clone(),
            key,
            count: u64::from(count),
        })
    }

    #[cfg(test)]
    fn total(&self, partition: u64, queue: &str) -> u64 {
        self.0
            .lock()
            .get(&(partition, queue.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// A receive's share of an [`AskTable`], given back when it is dropped.
struct Asking {
    table: AskTable,
    key: (u64, String),
    count: u64,
}

impl Drop for Asking {
    fn drop(&mut self) {
        let mut table = self.table.0.lock();
        if let Some(total) = table.get_mut(&self.key) {
            *total = total.saturating_sub(self.count);
            if *total == 0 {
                table.remove(&self.key);
            }
        }
    }
}

impl QueueHost {
    /// Starts (or restarts) every partition on `node` and founds them on a new cluster.
    pub async fn start(node: &Node, config: QueueHostConfig) -> Result<Self, QueueHostError> {
        config.validate()?;
        let shared = Partitions::default();
        let mut partitions = BTreeMap::new();
        for i in 0..u64::from(config.partitions) {
            let group = PARTITION_GROUP_BASE + i;
            let handle =
                PartitionHandle::start_among(node, group, group, shared.clone(), config.replicated.clone())
                    .await?;
            node.found_group(handle.service().raft())
                .await
                .map_err(StartPartitionError::Node)?;
            partitions.insert(group, handle);
        }
        // Set once: the outbox deliveries of every partition now reach the others.
        let _ = shared.set(partitions.clone());
        if let Some(interval) = config.steward_interval {
            crate::steward::spawn(node, partitions.clone(), config.follow_group, interval);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                partitions,
                turn: AtomicUsize::new(0),
                asking: AskTable::default(),
                absent: AbsenceCache::default(),
            }),
        })
    }

    /// The partitions, by id.
    pub fn partitions(&self) -> &BTreeMap<u64, PartitionHandle> {
        &self.inner.partitions
    }

    /// The gRPC service over this host (add it to the node's client routes).
    pub fn api(&self) -> QueueApi {
        let slot = HostSlot::default();
        slot.set(self.clone());
        QueueApi { slot }
    }

    fn partition(&self, id: u64) -> Result<&PartitionHandle, Status> {
        self.inner
            .partitions
            .get(&id)
            .ok_or_else(|| invalid(format!("no partition {id} on this cluster")))
    }

    /// The partitions `name` gets when created with `count` shards: consecutive from one its name hashes to.
    fn placement(&self, name: &str, count: u32) -> Vec<u64> {
        let ids: Vec<u64> = self.inner.partitions.keys().copied().collect();
        let start = usize::try_from(hash_of(name) % ids.len() as u64).unwrap_or(0);
        let mut chosen: Vec<u64> = (0..count as usize)
            .map(|i| ids[(start + i) % ids.len()])
            .collect();
        chosen.sort_unstable();
        chosen
    }

    /// The partitions holding `queue`. This member's replicas answer for the partitions where they know the
    /// queue; a replica that does not may only lag (a member catching up after it joined or restarted, or not
    /// yet added to that partition), and a partial list would skip shards (a receive or a stats call that finds
    /// the queue empty) or send a keyed message to another shard than its key's. So each partition whose replica
    /// does not know the queue is read again after a read barrier (the leader confirms its commit index and the
    /// replica applies up to it: no log entry, and concurrent requests share the round), unless such a read
    /// showed it without a shard of the queue less than [`QueueHostConfig::absence_lease`] ago; one that cannot
    /// answer fails the request.
    async fn shards(&self, queue: &str) -> Result<Vec<u64>, Status> {
        let lease = self.inner.config.absence_lease;
        let now = Instant::now();
        let mut shards = Vec::new();
        let mut unknown = Vec::new();
        for (id, p) in &self.inner.partitions {
            if p.local(|part| part.stats(queue).is_ok()).unwrap_or(false) {
                shards.push(*id);
            } else if lease.is_zero() || !self.inner.absent.trusted(queue, *id, now) {
                unknown.push((*id, p));
            }
        }
        let asked = unknown.iter().map(|(id, p)| async move {
            let asked_at = Instant::now();
            p.service().read_barrier().await?;
            let knows = p.local(|part| part.stats(queue).is_ok()).ok_or_else(|| {
                Status::unavailable(format!("partition {id} is not loaded on this member yet"))
            })?;
            if !knows && !lease.is_zero() {
                self.inner.absent.remember(queue, *id, asked_at + lease);
            }
            Ok::<_, Status>((*id, knows))
        });
        for answer in join_all(asked).await {
            let (id, knows) = answer?;
            if knows {
                shards.push(id);
            }
        }
        if shards.is_empty() {
            return Err(status_of(&QueueError::UnknownQueue { name: queue.into() }));
        }
        shards.sort_unstable();
        Ok(shards)
    }

    /// Waits until no member trusts an answer, read before shards were just created, that their partitions hold
    /// none (see [`QueueHostConfig::absence_lease`]).
    async fn outlast_absence_leases(&self) {
        let lease = self.inner.config.absence_lease;
        if !lease.is_zero() {
            tokio::time::sleep(lease + lease / 8).await;
        }
    }

    /// The settings of `queue` in partition `id`, by this member's replica.
    fn local_settings(&self, id: u64, queue: &str) -> Option<QueueSettings> {
        self.inner.partitions.get(&id)?.local(|part| {
            part.queues()
                .into_iter()
                .find(|(name, _)| name == queue)
                .map(|(_, s)| s)
        })?
    }

    async fn run(&self, id: u64, op: Op) -> Result<Outcome, Status> {
        match self.partition(id)?.run(op).await {
            Ok((outcome, _)) => Ok(outcome),
            Err(e) => Err(partition_status(e)),
        }
    }

    fn next_turn(&self) -> usize {
        self.inner.turn.fetch_add(1, Ordering::Relaxed)
    }

    async fn create_queue(&self, req: proto::CreateQueueRequest) -> Result<proto::QueueInfo, Status> {
        crate::validate_name(&req.name).map_err(|e| status_of(&e))?;
        let count = req.partitions.max(1);
        if count > self.inner.config.partitions {
            return Err(invalid(format!(
                "queue {:?} asks for {count} partitions; this cluster has {}",
                req.name, self.inner.config.partitions
            )));
        }
        let settings = api::settings_from_proto(QueueSettings::default(), req.settings.as_ref());
        settings.validate(&req.name).map_err(|e| status_of(&e))?;
        // Whatever happens from here on may have created shards (a failed request's proposal may still commit).
        let created = self.create_shards(req.name, settings, count).await;
        self.outlast_absence_leases().await;
        created
    }

    /// [`Self::create_queue`] once the request is validated.
    async fn create_shards(
        &self,
        name: String,
        settings: QueueSettings,
        count: u32,
    ) -> Result<proto::QueueInfo, Status> {
        let placement = self.placement(&name, count);
        if let Some(dlq) = &settings.dead_letter_queue {
            self.ensure_dead_letter_shards(dlq, &placement, &mut false)
                .await?;
        }
        let mut existed = 0;
        for &id in &placement {
            let op = Op::CreateQueue {
                name: name.clone(),
                settings: settings.clone(),
            };
            match self.partition(id)?.run(op).await {
                Ok(_) => {}
                Err(PartitionError::Refused(QueueError::QueueExists { .. })) => {
                    self.partition(id)?.service().read_barrier().await?;
                    if self.local_settings(id, &name).as_ref() != Some(&settings) {
                        return Err(status_of(&QueueError::QueueExists { name }));
                    }
                    existed += 1;
                }
                Err(e) => return Err(partition_status(e)),
            }
        }
        if existed == placement.len() {
            return Err(status_of(&QueueError::QueueExists { name }));
        }
        Ok(proto::QueueInfo {
            name,
            partitions: placement,
            settings: Some(api::settings_to_proto(&settings)),
        })
    }

    /// Gives dead-letter queue `dlq` a shard in each of `placement`, with the settings of an existing shard.
    /// Sets `proposed` when it proposes one, even if the request then fails (the caller then waits out absence
    /// leases before it answers).
    async fn ensure_dead_letter_shards(
        &self,
        dlq: &str,
        placement: &[u64],
        proposed: &mut bool,
    ) -> Result<(), Status> {
        let existing = self.shards(dlq).await.unwrap_or_default();
        let settings = existing
            .first()
            .and_then(|&id| self.local_settings(id, dlq))
            .unwrap_or_default();
        for &id in placement {
            if existing.contains(&id) {
                continue;
            }
            let op = Op::CreateQueue {
                name: dlq.to_owned(),
                settings: settings.clone(),
            };
            *proposed = true;
            match self.partition(id)?.run(op).await {
                Ok(_) | Err(PartitionError::Refused(QueueError::QueueExists { .. })) => {}
                Err(e) => return Err(partition_status(e)),
            }
        }
        Ok(())
    }

    async fn update_queue(&self, req: proto::UpdateQueueRequest) -> Result<proto::QueueInfo, Status> {
        let mut proposed_shards = false;
        let updated = self.update_shards(req, &mut proposed_shards).await;
        if proposed_shards {
            self.outlast_absence_leases().await;
        }
        updated
    }

    /// [`Self::update_queue`]; sets `proposed_shards` when it proposes a dead-letter queue's new shard.
    async fn update_shards(
        &self,
        req: proto::UpdateQueueRequest,
        proposed_shards: &mut bool,
    ) -> Result<proto::QueueInfo, Status> {
        let shards = self.shards(&req.name).await?;
        let mut last = None;
        for &id in &shards {
            self.partition(id)?.service().read_barrier().await?;
            let current = self.local_settings(id, &req.name).ok_or_else(|| {
                status_of(&QueueError::UnknownQueue {
                    name: req.name.clone(),
                })
            })?;
            let settings = api::settings_from_proto(current, req.settings.as_ref());
            if let Some(dlq) = &settings.dead_letter_queue {
                self.ensure_dead_letter_shards(dlq, &[id], proposed_shards)
                    .await?;
            }
            self.run(
                id,
                Op::UpdateSettings {
                    name: req.name.clone(),
                    settings: settings.clone(),
                },
            )
            .await?;
            last = Some(settings);
        }
        Ok(proto::QueueInfo {
            name: req.name,
            partitions: shards,
            settings: last.as_ref().map(api::settings_to_proto),
        })
    }

    async fn delete_queue(&self, name: String) -> Result<u64, Status> {
        let mut removed = 0;
        for id in self.shards(&name).await? {
            match self.run(id, Op::DeleteQueue { name: name.clone() }).await? {
                Outcome::QueueDeleted { removed: r } => removed += r,
                other => return Err(unexpected(&other)),
            }
        }
        Ok(removed)
    }

    async fn list_queues(&self) -> Result<Vec<proto::QueueInfo>, Status> {
        let mut queues: BTreeMap<String, proto::QueueInfo> = BTreeMap::new();
        for (id, partition) in &self.inner.partitions {
            partition.service().read_barrier().await?;
            for (name, settings) in partition.local(|p| p.queues()).unwrap_or_default() {
                let info = queues.entry(name.clone()).or_insert_with(|| proto::QueueInfo {
                    name,
                    partitions: Vec::new(),
                    settings: Some(api::settings_to_proto(&settings)),
                });
                info.partitions.push(*id);
            }
        }
        Ok(queues.into_values().collect())
    }

    async fn send(&self, req: proto::SendRequest) -> Result<Vec<proto::Sent>, Status> {
        if req.messages.is_empty() {
            return Err(invalid("a send needs at least one message"));
        }
        let shards = self.shards(&req.queue).await?;
        let unkeyed_shard = self.in_turn(&shards, self.next_turn())[0];
        // Per shard: the messages and their positions in the request.
        let mut by_shard: BTreeMap<u64, (Vec<NewMessage>, Vec<usize>)> = BTreeMap::new();
        for (i, m) in req.messages.into_iter().enumerate() {
            let message = api::message_from_proto(m)?;
            let key = message.group.as_deref().or(message.idempotency_key.as_deref());
            let shard = match key {
                Some(key) => shards[usize::try_from(hash_of(key) % shards.len() as u64).unwrap_or(0)],
                None => unkeyed_shard,
            };
            let entry = by_shard.entry(shard).or_default();
            entry.0.push(message);
            entry.1.push(i);
        }
        let total: usize = by_shard.values().map(|(m, _)| m.len()).sum();
        let sends = by_shard.into_iter().map(|(id, (messages, positions))| {
            let queue = req.queue.clone();
            async move {
                let outcome = self.run(id, Op::Send { queue, messages }).await?;
                Ok::<_, Status>((id, outcome, positions))
            }
        });
        let mut sent = vec![proto::Sent::default(); total];
        for result in join_all(sends).await {
            let (id, outcome, positions) = result?;
            let Outcome::Sent(each) = outcome else {
                return Err(unexpected(&outcome));
            };
            for (s, i) in each.into_iter().zip(positions) {
                sent[i] = proto::Sent {
                    id: Some(proto::MessageRef {
                        partition: id,
                        id: s.id,
                    }),
                    duplicate: s.duplicate,
                };
            }
        }
        Ok(sent)
    }

    async fn receive(&self, req: proto::ReceiveRequest) -> Result<Vec<proto::Delivery>, Status> {
        let max = req.max.max(1);
        if max > crate::MAX_BATCH {
            return Err(invalid(format!("max {max} is over {}", crate::MAX_BATCH)));
        }
        let wait = Duration::from_millis(req.wait_ms).min(self.inner.config.max_wait);
        let deadline = Instant::now() + wait;
        let visibility = (req.visibility_timeout_ms != 0).then_some(req.visibility_timeout_ms);
        let shards = self.shards(&req.queue).await?;
        let order = self.in_turn(&shards, self.next_turn());
        let mut applied = order
            .iter()
            .map(|&id| self.partition(id).map(PartitionHandle::applied))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        loop {
            // Entries applied from here on wake the wait below; the ones before are looked at in this pass.
            for a in &mut applied {
                a.borrow_and_update();
            }
            let mut skipped = Vec::new();
            // Receives that found nothing: another consumer was first, or the local replica's hint lagged.
            let mut missed = false;
            for &id in &order {
                let left = max - u32::try_from(out.len()).unwrap_or(max);
                if left == 0 {
                    break;
                }
                let ready = self.partition(id)?.local(|p| p.deliverable_count(&req.queue));
                if ready == Some(0) {
                    skipped.push(id);
                    continue;
                }
                // Other receives of this member already ask this shard for all it shows: this one waits for
                // their entry instead of adding one that would find nothing.
                let Some(_asking) = self.inner.asking.ask(id, &req.queue, left, ready) else {
                    continue;
                };
                let op = Op::Receive {
                    queue: req.queue.clone(),
                    max: left,
                    visibility_timeout_ms: visibility,
                };
                match self.run(id, op).await? {
                    Outcome::Received(deliveries) => {
                        missed |= deliveries.is_empty();
                        let again = deliveries.iter().filter(|d| d.receipt.delivery > 1).count();
                        let labels = [("queue", req.queue.clone())];
                        metrics::counter!("trestle_queue_deliveries_total", &labels)
                            .increment(deliveries.len() as u64);
                        metrics::counter!("trestle_queue_redeliveries_total", &labels)
                            .increment(again as u64);
                        out.extend(deliveries.into_iter().map(|d| api::delivery_to_proto(id, d)));
                    }
                    other => return Err(unexpected(&other)),
                }
            }
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            // A shard skipped by its hint may have received a message since (its entry already seen above):
            // look again at once. Shards just asked are asked again only after another entry.
            let ready_now = skipped.iter().any(|&id| {
                self.inner
                    .partitions
                    .get(&id)
                    .and_then(|p| p.local(|p| p.deliverable_count(&req.queue)))
                    .is_some_and(|n| n > 0)
            });
            if ready_now {
                continue;
            }
            let nap = self.inner.config.poll_interval.min(deadline - now);
            if missed || applied.is_empty() {
                // Not on the next entry: every consumer waiting here would wake on each other's empty receives
                // (each one an entry) and ask again, a storm of log entries that deliver nothing.
                tokio::time::sleep(nap).await;
                continue;
            }
            let next_entry = futures::future::select_all(applied.iter_mut().map(|a| Box::pin(a.changed())));
            if let Ok((Err(_stopped), _, _)) = tokio::time::timeout(nap, next_entry).await {
                // A partition's state machine is gone (the node stops): no more wake-ups from it, so look again
                // only after the nap instead of at once, over and over.
                tokio::time::sleep(nap).await;
            }
        }
    }

    /// `shards` in the order a request tries them: those this member leads first (their writes run here instead
    /// of being forwarded), then the others, each part rotated by `turn`.
    fn in_turn(&self, shards: &[u64], turn: usize) -> Vec<u64> {
        let (mut here, mut there): (Vec<u64>, Vec<u64>) = shards
            .iter()
            .partition(|id| self.inner.partitions.get(id).is_some_and(PartitionHandle::leads));
        for part in [&mut here, &mut there] {
            if !part.is_empty() {
                let by = turn % part.len();
                part.rotate_left(by);
            }
        }
        here.extend(there);
        here
    }

    /// Runs `make(receipts of one partition)` on each partition the receipts name, in parallel. When some
    /// partitions settle their part and another does not, the error is [`QueueError::PartlySettled`], naming
    /// the receipts settled.
    async fn settle<F>(&self, receipts: &[proto::Receipt], make: F) -> Result<Vec<(u64, Outcome)>, Status>
    where
        F: Fn(Vec<(usize, crate::Receipt)>) -> Op,
    {
        if receipts.is_empty() {
            return Err(invalid("no receipts"));
        }
        let mut by_partition: BTreeMap<u64, Vec<(usize, crate::Receipt)>> = BTreeMap::new();
        for (i, r) in receipts.iter().enumerate() {
            let (partition, receipt) = api::receipt_from_proto(r);
            self.partition(partition)?;
            by_partition.entry(partition).or_default().push((i, receipt));
        }
        let runs = by_partition.into_iter().map(|(id, rs)| {
            let ids: Vec<u64> = rs.iter().map(|(_, r)| r.id).collect();
            let op = make(rs);
            async move { (id, ids, self.run(id, op).await) }
        });
        let mut settled = Vec::new();
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        for (id, ids, result) in join_all(runs).await {
            match result {
                Ok(outcome) => {
                    settled.extend(ids.into_iter().map(|m| (id, m)));
                    outcomes.push((id, outcome));
                }
                Err(status) => failures.push((id, status)),
            }
        }
        if failures.is_empty() {
            return Ok(outcomes);
        }
        // A part whose fate is unknown (no leader, timed out) makes the whole request's fate unknown: that status
        // as it is, so that the client retries (a receipt settled meanwhile then reads as unknown, which a retried
        // ack counts as done).
        if let Some(i) = failures
            .iter()
            .position(|(_, status)| api::queue_error(status).is_none())
        {
            return Err(failures.swap_remove(i).1);
        }
        let (partition, status) = failures.swap_remove(0);
        if settled.is_empty() {
            // Refused everywhere: nothing changed.
            return Err(status);
        }
        // Some partitions settled their part and another refused: the refusal alone would tell the caller that
        // nothing changed.
        Err(status_of(&QueueError::PartlySettled {
            settled,
            total: receipts.len(),
            partition,
            reason: status.message().to_owned(),
        }))
    }

    async fn barrier(
        &self,
        req: proto::SubmitBarrierRequest,
    ) -> Result<proto::SubmitBarrierResponse, Status> {
        let target = |t: Option<proto::Target>, what: &str| -> Result<Target, Status> {
            let t = t.ok_or_else(|| invalid(format!("a barrier needs a {what} target")))?;
            let message = api::message_from_proto(t.message.unwrap_or_default())?;
            Ok(Target::new(t.queue, message))
        };
        let completion = target(req.completion, "completion")?;
        let failure = target(req.failure, "failure")?;
        let tasks: Vec<NewMessage> = req
            .tasks
            .into_iter()
            .map(api::message_from_proto)
            .collect::<Result<_, _>>()?;
        let key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key);
        let (task_shards, completion_shards, failure_shards) = futures::try_join!(
            self.shards(&req.queue),
            self.shards(&completion.queue),
            self.shards(&failure.queue)
        )?;
        // Home: a partition holding both targets, preferring one that also holds the tasks' queue.
        let homes: Vec<u64> = completion_shards
            .iter()
            .copied()
            .filter(|p| failure_shards.contains(p))
            .collect();
        let Some(&home) = homes.iter().find(|p| task_shards.contains(p)).or(homes.first()) else {
            return Err(invalid(format!(
                "queues {:?} and {:?} share no partition; a barrier's completion and failure queues must",
                completion.queue, failure.queue
            )));
        };
        if task_shards == [home] {
            let op = Op::SubmitBarrier {
                queue: req.queue,
                tasks,
                completion,
                failure,
                idempotency_key: key,
            };
            return match self.run(home, op).await? {
                Outcome::BarrierSubmitted {
                    barrier,
                    tasks,
                    duplicate,
                } => Ok(proto::SubmitBarrierResponse {
                    partition: home,
                    barrier,
                    tasks: tasks
                        .into_iter()
                        .map(|id| proto::MessageRef { partition: home, id })
                        .collect(),
                    duplicate,
                }),
                other => Err(unexpected(&other)),
            };
        }
        // Tasks spread over the queue's shards, each naming the barrier at home.
        let count = u32::try_from(tasks.len()).map_err(|_| invalid("too many tasks"))?;
        let op = Op::CreateBarrier {
            tasks: count,
            completion,
            failure,
            idempotency_key: key,
        };
        let (barrier, duplicate) = match self.run(home, op).await? {
            Outcome::BarrierCreated { barrier, duplicate } => (barrier, duplicate),
            other => return Err(unexpected(&other)),
        };
        let mut by_shard: BTreeMap<u64, (Vec<NewMessage>, Vec<usize>)> = BTreeMap::new();
        for (slot, mut task) in (0u32..).zip(tasks) {
            task.barrier = Some(BarrierRef {
                partition: home,
                barrier,
                slot,
            });
            // A retried submission (same barrier) sends each task again: its key within the tasks queue's dedup
            // window enqueues it once.
            task.idempotency_key = Some(format!("barrier/{home}/{barrier}/{slot}"));
            let shard = task_shards[slot as usize % task_shards.len()];
            let entry = by_shard.entry(shard).or_default();
            entry.0.push(task);
            entry.1.push(slot as usize);
        }
        // The shards' sends in parallel: the submission waits for the slowest partition, not for their sum.
        let sends = by_shard.into_iter().map(|(id, (messages, slots))| {
            let queue = req.queue.clone();
            async move {
                let outcome = self.run(id, Op::Send { queue, messages }).await?;
                Ok::<_, Status>((id, outcome, slots))
            }
        });
        let mut refs = vec![proto::MessageRef::default(); count as usize];
        for result in join_all(sends).await {
            let (id, outcome, slots) = result?;
            match outcome {
                Outcome::Sent(sent) => {
                    for (s, slot) in sent.into_iter().zip(slots) {
                        refs[slot] = proto::MessageRef {
                            partition: id,
                            id: s.id,
                        };
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(proto::SubmitBarrierResponse {
            partition: home,
            barrier,
            tasks: refs,
            duplicate,
        })
    }
}

/// A status for an operation that failed on a partition.
fn partition_status(e: PartitionError) -> Status {
    match e {
        PartitionError::Refused(e) | PartitionError::Reply(e) => status_of(&e),
        PartitionError::Unavailable(status) => status,
    }
}

fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!("unexpected outcome {outcome:?}"))
}

/// A stable hash (the same on every member and release): 64-bit FNV-1a of the UTF-8 bytes.
fn hash_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where a [`QueueApi`] finds its host: set once the host started, so the service can be routed before.
#[derive(Clone, Debug, Default)]
pub struct HostSlot(Arc<std::sync::OnceLock<QueueHost>>);

impl HostSlot {
    /// Gives the service its host (later calls change nothing).
    pub fn set(&self, host: QueueHost) {
        let _ = self.0.set(host);
    }

    fn get(&self) -> Result<&QueueHost, Status> {
        self.0
            .get()
            .ok_or_else(|| Status::unavailable("queue partitions are starting; retry"))
    }
}

/// The gRPC service of `trestle.queue.v1.Queue` over a [`QueueHost`]. Every call is counted in
/// `trestle_queue_requests_total{op, code}` and timed in `trestle_queue_request_duration_seconds{op}`.
#[derive(Clone, Debug)]
pub struct QueueApi {
    slot: HostSlot,
}

impl QueueApi {
    /// A service that answers UNAVAILABLE until `slot` is set: for a node whose client routes are built before
    /// its groups start.
    pub fn pending(slot: HostSlot) -> Self {
        Self { slot }
    }

    /// The tonic service, ready for a router.
    pub fn into_service(self) -> proto::queue_server::QueueServer<Self> {
        proto::queue_server::QueueServer::new(self)
            .max_decoding_message_size(crate::MAX_MESSAGE_SIZE_LIMIT as usize * 2)
    }
}

/// Runs `f` on the host, counting and timing it as `op`.
async fn observed<T, F>(
    slot: &HostSlot,
    op: &'static str,
    f: impl FnOnce(QueueHost) -> F,
) -> Result<Response<T>, Status>
where
    F: std::future::Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    let result = match slot.get() {
        Ok(host) => {
            let mut fut = pin!(f(host.clone()));
            fut.as_mut().await
        }
        Err(status) => Err(status),
    };
    let code = match &result {
        Ok(_) => "ok",
        Err(status) => code_name(status.code()),
    };
    metrics::counter!("trestle_queue_requests_total", "op" => op, "code" => code).increment(1);
    metrics::histogram!("trestle_queue_request_duration_seconds", "op" => op)
        .record(start.elapsed().as_secs_f64());
    if let Err(status) = &result {
        tracing::debug!(op, code, message = status.message(), "queue request refused");
    }
    result.map(Response::new)
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        InvalidArgument => "invalid_argument",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        FailedPrecondition => "failed_precondition",
        Unavailable => "unavailable",
        DeadlineExceeded => "deadline_exceeded",
        Internal => "internal",
        _ => "other",
    }
}

#[tonic::async_trait]
impl proto::queue_server::Queue for QueueApi {
    async fn create_queue(
        &self,
        request: Request<proto::CreateQueueRequest>,
    ) -> Result<Response<proto::CreateQueueResponse>, Status> {
        observed(&self.slot, "create_queue", |h| async move {
            let queue = h.create_queue(request.into_inner()).await?;
            Ok(proto::CreateQueueResponse { queue: Some(queue) })
        })
        .await
    }

    async fn update_queue(
        &self,
        request: Request<proto::UpdateQueueRequest>,
    ) -> Result<Response<proto::UpdateQueueResponse>, Status> {
        observed(&self.slot, "update_queue", |h| async move {
            let queue = h.update_queue(request.into_inner()).await?;
            Ok(proto::UpdateQueueResponse { queue: Some(queue) })
        })
        .await
    }

    async fn delete_queue(
        &self,
        request: Request<proto::DeleteQueueRequest>,
    ) -> Result<Response<proto::DeleteQueueResponse>, Status> {
        observed(&self.slot, "delete_queue", |h| async move {
            let removed = h.delete_queue(request.into_inner().name).await?;
            Ok(proto::DeleteQueueResponse { removed })
        })
        .await
    }

    async fn list_queues(
        &self,
        _request: Request<proto::ListQueuesRequest>,
    ) -> Result<Response<proto::ListQueuesResponse>, Status> {
        observed(&self.slot, "list_queues", |h| async move {
            Ok(proto::ListQueuesResponse {
                queues: h.list_queues().await?,
            })
        })
        .await
    }

    async fn send(
        &self,
        request: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        observed(&self.slot, "send", |h| async move {
            Ok(proto::SendResponse {
                sent: h.send(request.into_inner()).await?,
            })
        })
        .await
    }

    async fn receive(
        &self,
        request: Request<proto::ReceiveRequest>,
    ) -> Result<Response<proto::ReceiveResponse>, Status> {
        observed(&self.slot, "receive", |h| async move {
            Ok(proto::ReceiveResponse {
                deliveries: h.receive(request.into_inner()).await?,
            })
        })
        .await
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::SettleResponse>, Status> {
        observed(&self.slot, "ack", |h| async move {
            let req = request.into_inner();
            let results = req.results;
            let queue = req.queue;
            h.settle(&req.receipts, |rs| Op::Ack {
                queue: queue.clone(),
                acks: rs
                    .into_iter()
                    .map(|(i, receipt)| AckEntry {
                        receipt,
                        result: results.get(i).filter(|r| !r.is_empty()).cloned(),
                    })
                    .collect(),
            })
            .await?;
            Ok(proto::SettleResponse {})
        })
        .await
    }

    async fn nack(
        &self,
        request: Request<proto::NackRequest>,
    ) -> Result<Response<proto::SettleResponse>, Status> {
        observed(&self.slot, "nack", |h| async move {
            let req = request.into_inner();
            let error = (!req.error.is_empty()).then_some(req.error);
            h.settle(&req.receipts, |rs| Op::Nack {
                queue: req.queue.clone(),
                receipts: rs.into_iter().map(|(_, r)| r).collect(),
                retry_after_ms: req.retry_after_ms,
                error: error.clone(),
            })
            .await?;
            Ok(proto::SettleResponse {})
        })
        .await
    }

    async fn extend(
        &self,
        request: Request<proto::ExtendRequest>,
    ) -> Result<Response<proto::ExtendResponse>, Status> {
        observed(&self.slot, "extend", |h| async move {
            let req = request.into_inner();
            // Positions of each partition's receipts, to put the deadlines back in request order.
            let mut positions: HashMap<u64, Vec<usize>> = HashMap::new();
            for (i, r) in req.receipts.iter().enumerate() {
                positions.entry(r.partition).or_default().push(i);
            }
            let outcomes = h
                .settle(&req.receipts, |rs| Op::ExtendVisibility {
                    queue: req.queue.clone(),
                    receipts: rs.into_iter().map(|(_, r)| r).collect(),
                    visibility_timeout_ms: req.visibility_timeout_ms,
                })
                .await?;
            let mut deadlines = vec![0; req.receipts.len()];
            for (id, outcome) in outcomes {
                let Outcome::Extended(each) = outcome else {
                    return Err(unexpected(&outcome));
                };
                for (d, i) in each.into_iter().zip(positions.remove(&id).unwrap_or_default()) {
                    deadlines[i] = d;
                }
            }
            Ok(proto::ExtendResponse {
                deadlines_ms: deadlines,
            })
        })
        .await
    }

    async fn terminate(
        &self,
        request: Request<proto::TerminateRequest>,
    ) -> Result<Response<proto::SettleResponse>, Status> {
        observed(&self.slot, "terminate", |h| async move {
            let req = request.into_inner();
            h.settle(&req.receipts, |rs| Op::Terminate {
                queue: req.queue.clone(),
                receipts: rs.into_iter().map(|(_, r)| r).collect(),
                reason: req.reason.clone(),
            })
            .await?;
            Ok(proto::SettleResponse {})
        })
        .await
    }

    async fn redrive(
        &self,
        request: Request<proto::RedriveRequest>,
    ) -> Result<Response<proto::RedriveResponse>, Status> {
        observed(&self.slot, "redrive", |h| async move {
            let req = request.into_inner();
            let mut filter = RedriveFilter::all();
            if !req.source.is_empty() {
                filter = filter.with_source(req.source);
            }
            if !req.error_contains.is_empty() {
                filter = filter.with_error_containing(req.error_contains);
            }
            let mut left = req.max.max(1);
            let mut response = proto::RedriveResponse::default();
            for id in h.shards(&req.queue).await? {
                if left == 0 {
                    response.more = true;
                    break;
                }
                let op = Op::Redrive {
                    queue: req.queue.clone(),
                    filter: filter.clone(),
                    max: left,
                };
                let Outcome::Redriven(r) = h.run(id, op).await? else {
                    return Err(Status::internal("unexpected redrive outcome"));
                };
                left -= u32::try_from(r.moved.len()).unwrap_or(left).min(left);
                response.moved.extend(
                    r.moved
                        .into_iter()
                        .map(|m| proto::MessageRef { partition: id, id: m }),
                );
                response.skipped += u32::try_from(r.skipped.len()).unwrap_or(u32::MAX);
                response.more |= r.more;
            }
            Ok(response)
        })
        .await
    }

    async fn purge(
        &self,
        request: Request<proto::PurgeRequest>,
    ) -> Result<Response<proto::PurgeResponse>, Status> {
        observed(&self.slot, "purge", |h| async move {
            let queue = request.into_inner().queue;
            let mut removed = 0;
            for id in h.shards(&queue).await? {
                match h.run(id, Op::Purge { queue: queue.clone() }).await? {
                    Outcome::Purged { removed: r } => removed += r,
                    other => return Err(unexpected(&other)),
                }
            }
            Ok(proto::PurgeResponse { removed })
        })
        .await
    }

    async fn peek(
        &self,
        request: Request<proto::PeekRequest>,
    ) -> Result<Response<proto::PeekResponse>, Status> {
        observed(&self.slot, "peek", |h| async move {
            let req = request.into_inner();
            let max = req.max.max(1);
            let mut messages = Vec::new();
            for id in h.shards(&req.queue).await? {
                let left = max - u32::try_from(messages.len()).unwrap_or(max);
                if left == 0 {
                    break;
                }
                match h
                    .run(
                        id,
                        Op::Peek {
                            queue: req.queue.clone(),
                            max: left,
                        },
                    )
                    .await?
                {
                    Outcome::Peeked(found) => {
                        messages.extend(found.into_iter().map(|m| api::peeked_to_proto(id, m)));
                    }
                    other => return Err(unexpected(&other)),
                }
            }
            Ok(proto::PeekResponse { messages })
        })
        .await
    }

    async fn stats(
        &self,
        request: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        observed(&self.slot, "stats", |h| async move {
            let queue = request.into_inner().queue;
            let mut total = proto::Stats::default();
            let mut partitions = Vec::new();
            for id in h.shards(&queue).await? {
                match h.run(id, Op::Stats { queue: queue.clone() }).await? {
                    Outcome::Stats(s) => {
                        let s = api::stats_to_proto(&s);
                        api::add_stats(&mut total, &s);
                        partitions.push(proto::PartitionStats {
                            partition: id,
                            stats: Some(s),
                        });
                    }
                    other => return Err(unexpected(&other)),
                }
            }
            let labels = [("queue", queue)];
            metrics::gauge!("trestle_queue_depth", &labels).set(total.depth as f64);
            metrics::gauge!("trestle_queue_in_flight", &labels).set(total.in_flight as f64);
            metrics::gauge!("trestle_queue_dead_letters", &labels).set(total.dead_letters as f64);
            Ok(proto::StatsResponse {
                total: Some(total),
                partitions,
            })
        })
        .await
    }

    async fn submit_barrier(
        &self,
        request: Request<proto::SubmitBarrierRequest>,
    ) -> Result<Response<proto::SubmitBarrierResponse>, Status> {
        observed(&self.slot, "submit_barrier", |h| async move {
            h.barrier(request.into_inner()).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds_are_checked() {
        assert!(QueueHostConfig::default().validate().is_ok());
        let e = QueueHostConfig::default()
            .with_partitions(0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("not 0"), "{e}");
        assert!(
            QueueHostConfig::default()
                .with_partitions(MAX_PARTITIONS + 1)
                .validate()
                .is_err()
        );
        let c = QueueHostConfig {
            poll_interval: Duration::ZERO,
            ..QueueHostConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn an_absence_answer_is_trusted_for_its_queue_and_partition_until_it_expires() {
        let cache = AbsenceCache::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        cache.remember("jobs", 3, later);
        assert!(cache.trusted("jobs", 3, now));
        assert!(!cache.trusted("jobs", 4, now), "another partition");
        assert!(!cache.trusted("job", 3, now), "another queue");
        assert!(!cache.trusted("jobs", 3, later), "expired");
    }

    #[test]
    fn a_full_absence_cache_forgets_expired_answers_and_remembers_no_more_live_ones() {
        let cache = AbsenceCache::default();
        let now = Instant::now();
        let live = now + Duration::from_secs(60);
        for i in 0..ABSENCE_CACHE_QUEUES - 1 {
            cache.remember(&format!("q{i}"), 1, live);
        }
        cache.remember("old", 1, now);
        cache.remember("new", 1, live);
        assert!(cache.trusted("new", 1, now), "the expired answer made room");
        cache.remember("newer", 1, live);
        assert!(!cache.trusted("newer", 1, now), "full of live answers");
        cache.remember("q0", 2, live);
        assert!(
            cache.trusted("q0", 2, now),
            "a queue it remembers takes more partitions"
        );
    }

    #[test]
    fn a_receive_asks_a_shard_only_while_the_others_ask_for_less_than_it_shows() {
        let table = AskTable::default();
        let first = table.ask(7, "jobs", 32, Some(16)).expect("nobody asks yet");
        assert!(
            table.ask(7, "jobs", 32, Some(16)).is_none(),
            "32 asked already cover 16 ready"
        );
        assert!(
            table.ask(7, "jobs", 32, Some(40)).is_some(),
            "40 ready: room for another"
        );
        assert_eq!(
            table.total(7, "jobs"),
            32,
            "the second share went back when it was dropped"
        );
        assert!(
            table.ask(8, "jobs", 1, Some(1)).is_some(),
            "another shard is counted apart"
        );
        assert!(
            table.ask(7, "other", 1, Some(1)).is_some(),
            "another queue is counted apart"
        );
        let unknown = table
            .ask(7, "jobs", 32, None)
            .expect("an unknown count is always asked");
        assert_eq!(table.total(7, "jobs"), 64);
        drop((first, unknown));
        assert_eq!(table.total(7, "jobs"), 0);
        assert!(table.0.lock().is_empty(), "nothing left behind");
    }

    #[test]
    fn the_hash_is_stable() {
        // Placement and key routing must agree across members and releases.
        assert_eq!(hash_of(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_of("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(hash_of("a"), hash_of("b"));
    }
}
