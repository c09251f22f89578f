//! One queue partition's replicated state machine: a deterministic function from (state, command) to (state,
//! response), with no clock, IO or async of its own.
//!
//! Time comes in with each command ([`Command::now_ms`], the leader's clock). Before an operation takes effect
//! the partition's clock moves to that time (never back: an earlier time counts as the clock) and every deadline
//! that passed fires, in a fixed order: queue by queue in creation order, delays ending, then visibility
//! deadlines passing (back to ready, or dead-lettered/parked after the last delivery), then retention, then
//! idempotency keys expiring; each by time, then message id. This happens whatever the operation, even one that is
//! then refused: a refused operation changes nothing of its own.
//!
//! State lives in a [`Storage`] (each message's body and metadata, queues, remembered keys, barriers, the outbox);
//! in memory are only the indexes (`index.rs`: ready order, delays, in-flight deadlines, ages, FIFO groups,
//! idempotency keys), rebuilt by one scan on [`Partition::open`] and [`Partition::restore`]. An operation reads
//! what it needs from the storage (seeing the command's own writes first); a command's writes, its operations' and the
//! timers' and the partition record with the applied index, go to the storage as one batch.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use crate::barrier::{
    Barrier, BarrierId, BarrierRef, BarrierState, Fire, JoinInfo, MAX_BARRIER_TASKS, MAX_TASK_RESULT,
    OutboxEntry, Target, TaskOutcome,
};
use crate::command::{
    AckEntry, Command, Event, Op, Outcome, QueueStats, RedriveFilter, Redriven, Response, Sent,
};
use crate::error::{QueueError, SnapshotError};
use crate::index::QueueIndex;
use crate::message::{
    Body, DeadLetterInfo, Delivery, MAX_KEY_LEN, MessageId, MessageMeta, MessageState, NewMessage,
    PeekedMessage, Receipt, clip,
};
use crate::record::{self, DedupRecord, PartitionRecord, QueueRecord, key64};
use crate::settings::{MAX_VISIBILITY_TIMEOUT_MS, QueueSettings, validate_name};
use crate::storage::{Pairs, Storage, WriteBatch};

/// The longest delay a message or a nack may ask for (7 days).
pub const MAX_DELAY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// The most messages one receive, peek or redrive handles.
pub const MAX_BATCH: u32 = 10_000;

/// The reason recorded when a message's last delivery fails.
pub const REASON_MAX_DELIVERIES: &str = "max deliveries";

/// The magic at the start of a partition's snapshot.
const SNAPSHOT_MAGIC: &[u8; 8] = b"TRQUEUE1";

fn invalid(reason: impl Into<String>) -> QueueError {
    QueueError::InvalidRequest {
        reason: reason.into(),
    }
}

/// One queue partition: the queues it holds, their messages, barriers and outbox.
///
/// Drive it with [`Partition::apply`] (typed) or [`Partition::apply_encoded`] (bytes in, bytes out, as a Raft
/// group's application does), snapshot it with [`Partition::snapshot`] and [`Partition::restore`]; read it
/// locally with [`Partition::stats`], [`Partition::peek`], [`Partition::outbox`] and friends.
#[derive(Debug)]
pub struct Partition<S: Storage> {
    storage: S,
    /// This partition's id (its Raft group), named in the barrier references of its tasks.
    partition: u64,
    state: PartitionRecord,
    queues: BTreeMap<u32, QueueIndex>,
    names: BTreeMap<String, u32>,
    /// Open barriers → their target queues, which cannot be deleted meanwhile.
    open_barriers: BTreeMap<BarrierId, [String; 2]>,
    /// The current operation's writes, by key (`None`: delete), written as one batch by
    /// [`Partition::flush`]. Reads during the operation look here first.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The current command's events.
    events: Vec<Event>,
    /// Set when a storage read or write failed during a change: the indexes may no longer match the storage.
    poisoned: Option<String>,
}

/// Everything the indexes are rebuilt from.
#[derive(Default)]
struct Loaded {
    state: PartitionRecord,
    queues: BTreeMap<u32, QueueIndex>,
    names: BTreeMap<String, u32>,
    open_barriers: BTreeMap<BarrierId, [String; 2]>,
}

impl Loaded {
    fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Result<Self, String> {
        let mut loaded = Loaded::default();
        let mut dedups = Vec::new();
        let mut metas = Vec::new();
        for (key, value) in pairs {
            let what = key.first().copied().unwrap_or(0);
            let bad = |e: String| format!("record {key:?}: {e}");
            match what {
                record::STATE => loaded.state = record::decode(value).map_err(bad)?,
                record::QUEUE => {
                    let q: QueueRecord = record::decode(value).map_err(bad)?;
                    loaded.names.insert(q.name.clone(), q.id);
                    loaded
                        .queues
                        .insert(q.id, QueueIndex::new(q.id, q.name, q.settings));
                }
                record::META => {
                    metas.push(record::decode::<MessageMeta>(value).map_err(bad)?);
                }
                record::DEDUP => dedups.push(record::decode::<DedupRecord>(value).map_err(bad)?),
                record::BARRIER => {
                    let b: Barrier = record::decode(value).map_err(bad)?;
                    if b.state == BarrierState::Open {
                        loaded
                            .open_barriers
                            .insert(b.id, [b.completion.queue, b.failure.queue]);
                    }
                }
                record::BODY | record::OUTBOX => {}
                other => return Err(format!("unknown record kind {other:#x}")),
            }
        }
        for m in &metas {
            let q = loaded
                .queues
                .get_mut(&m.queue)
                .ok_or_else(|| format!("message {} of unknown queue {}", m.id, m.queue))?;
            q.insert(m);
        }
        for d in dedups {
            let q = loaded
                .queues
                .get_mut(&d.queue)
                .ok_or_else(|| format!("idempotency key of unknown queue {}", d.queue))?;
            q.remember(d.key, d.id, d.expires_ms);
        }
        Ok(loaded)
    }
}

impl<S: Storage> Partition<S> {
    /// Opens partition `partition` (its Raft group id) over `storage`, rebuilding the indexes from what it holds
    /// (empty storage: an empty partition).
    pub fn open(storage: S, partition: u64) -> Result<Self, SnapshotError> {
        let pairs = storage.scan_prefix(b"")?;
        let loaded = Loaded::from_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(SnapshotError::Invalid)?;
        let mut partition = Self {
            storage,
            partition,
            state: PartitionRecord::default(),
            queues: BTreeMap::new(),
            names: BTreeMap::new(),
            open_barriers: BTreeMap::new(),
            pending: BTreeMap::new(),
            events: Vec::new(),
            poisoned: None,
        };
        partition.install(loaded);
        Ok(partition)
    }

    fn install(&mut self, loaded: Loaded) {
        self.state = loaded.state;
        self.queues = loaded.queues;
        self.names = loaded.names;
        self.open_barriers = loaded.open_barriers;
        self.pending.clear();
        self.poisoned = None;
    }

    /// The same partition over another storage, and the storage it had: the indexes move over as they are, so
    /// `storage` must hold what the old one held (the same key space, seen through another handle).
    ///
    /// This is how a host that hands out its key space per command (trestle-raft's `DiskStateMachine` gives each
    /// entry a transaction) runs a partition: keep a `Partition<Detached>` between commands, and for each one
    /// attach a storage over the command's transaction, apply, and detach again. Moving costs nothing: no index is
    /// rebuilt.
    pub fn with_storage<T: Storage>(self, storage: T) -> (Partition<T>, S) {
        let Self {
            storage: old,
            partition,
            state,
            queues,
            names,
            open_barriers,
            pending,
            events,
            poisoned,
        } = self;
        (
            Partition {
                storage,
                partition,
                state,
                queues,
                names,
                open_barriers,
                pending,
                events,
                poisoned,
            },
            old,
        )
    }

    /// This partition's id.
    pub fn id(&self) -> u64 {
        self.partition
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The partition's clock: the latest command time applied (ms since the epoch).
    pub fn clock_ms(&self) -> u64 {
        self.state.clock_ms
    }

    /// The log index of the last applied command.
    pub fn last_applied(&self) -> u64 {
        self.state.last_index
    }

    /// The earliest time at which a deadline fires (a delay ends, a visibility deadline or a retention passes, a
    /// remembered idempotency key expires), if any: the host proposes [`Op::Tick`] then, so that timers act without
    /// other traffic.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.queues
            .values()
            .flat_map(|q| {
                [
                    q.delayed.first().map(|&(t, _)| t),
                    q.in_flight.first().map(|&(t, _)| t),
                    q.settings
                        .retention_ms
                        .and_then(|r| q.by_age.first().map(|&(sent, _)| sent.saturating_add(r))),
                    q.dedup_expiry.first().map(|(t, _)| *t),
                ]
            })
            .flatten()
            .min()
    }

    /// The queues, by name, with their settings.
    pub fn queues(&self) -> Vec<(String, QueueSettings)> {
        self.names
            .iter()
            .filter_map(|(name, id)| Some((name.clone(), self.queues.get(id)?.settings.clone())))
            .collect()
    }

    /// Applies a command from its bytes and returns the response's bytes (see [`Command::encode`]). Bytes that do
    /// not decode change nothing and answer [`QueueError::Undecodable`].
    pub fn apply_encoded(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        match Command::decode(command) {
            Ok(command) => self.apply(index, command),
            Err(e) => {
                if self.poisoned.is_none() {
                    self.state.last_index = self.state.last_index.max(index);
                    self.save_state();
                    self.flush();
                }
                Response {
                    outcome: Err(e),
                    events: Vec::new(),
                }
            }
        }
        .encode()
    }

    /// Applies one committed command at log `index`.
    pub fn apply(&mut self, index: u64, command: Command) -> Response {
        if let Some(detail) = &self.poisoned {
            return Response {
                outcome: Err(QueueError::Storage {
                    detail: detail.clone(),
                }),
                events: Vec::new(),
            };
        }
        self.events.clear();
        let now = self.state.clock_ms.max(command.now_ms);
        self.state.clock_ms = now;
        self.state.last_index = index;
        self.advance(now);
        let outcome = if self.poisoned.is_none() {
            self.apply_op(command.op, now)
        } else {
            Ok(Outcome::Ticked)
        };
        // One write batch per command, the partition's record (clock, last applied index) included: on a disk
        // that applies batches atomically, a command is applied wholly or not at all, together with its index.
        self.save_state();
        self.flush();
        let outcome = match &self.poisoned {
            Some(detail) => Err(QueueError::Storage {
                detail: detail.clone(),
            }),
            None => outcome,
        };
        Response {
            outcome,
            events: std::mem::take(&mut self.events),
        }
    }

    fn stage_put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    fn stage_delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// A key's value as the current operation sees it: its own writes first, then the storage.
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, QueueError> {
        match self.pending.get(key) {
            Some(value) => Ok(value.clone()),
            None => self
                .storage
                .get(key)
                .map_err(|e| QueueError::Storage { detail: e.0 }),
        }
    }

    /// A prefix scan as the current operation sees it: the storage's pairs with the operation's writes over them.
    fn scan(&self, prefix: &[u8]) -> Result<Pairs, QueueError> {
        let mut pairs: BTreeMap<Vec<u8>, Vec<u8>> = self
            .storage
            .scan_prefix(prefix)
            .map_err(|e| QueueError::Storage { detail: e.0 })?
            .into_iter()
            .collect();
        for (key, value) in self.pending.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match value {
                Some(value) => pairs.insert(key.clone(), value.clone()),
                None => pairs.remove(key),
            };
        }
        Ok(pairs.into_iter().collect())
    }

    fn save_state(&mut self) {
        self.stage_put(vec![record::STATE], record::encode(&self.state));
    }

    /// Writes the pending batch; a failure poisons the partition.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        for (key, value) in std::mem::take(&mut self.pending) {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        if let Err(e) = self.storage.write(batch) {
            self.poisoned.get_or_insert(e.0);
        }
    }

    fn apply_op(&mut self, op: Op, now: u64) -> Result<Outcome, QueueError> {
        match op {
            Op::Batch(ops) => Ok(Outcome::Batch(
                ops.into_iter().map(|op| self.apply_op(op, now)).collect(),
            )),
            Op::CreateQueue { name, settings } => self.create_queue(name, settings),
            Op::UpdateSettings { name, settings } => self.update_settings(&name, settings),
            Op::DeleteQueue { name } => self.delete_queue(&name, now),
            Op::Send { queue, messages } => self.send(&queue, messages, now),
            Op::Receive {
                queue,
                max,
                visibility_timeout_ms,
            } => self.receive(&queue, max, visibility_timeout_ms, now),
            Op::Ack { queue, acks } => self.ack(&queue, acks, now),
            Op::Nack {
                queue,
                receipts,
                retry_after_ms,
                error,
            } => self.nack(&queue, &receipts, retry_after_ms, error, now),
            Op::ExtendVisibility {
                queue,
                receipts,
                visibility_timeout_ms,
            } => self.extend(&queue, &receipts, visibility_timeout_ms, now),
            Op::Terminate {
                queue,
                receipts,
                reason,
            } => self.terminate(&queue, &receipts, &reason, now),
            Op::Redrive { queue, filter, max } => self.redrive(&queue, &filter, max),
            Op::Purge { queue } => self.purge(&queue, now),
            Op::Peek { queue, max } => self.peek(&queue, max).map(Outcome::Peeked),
            Op::Stats { queue } => self.stats(&queue).map(Outcome::Stats),
            Op::Tick => Ok(Outcome::Ticked),
            Op::SubmitBarrier {
                queue,
                tasks,
                completion,
                failure,
            } => self.submit_barrier(&queue, tasks, completion, failure, now),
            Op::CreateBarrier {
                tasks,
                completion,
                failure,
            } => self.create_barrier(tasks, completion, failure).map(|barrier| {
                self.state.next_barrier = barrier + 1;
                Outcome::BarrierCreated { barrier }
            }),
            Op::BarrierTaskDone {
                barrier,
                slot,
                outcome,
            } => self.barrier_task_done(barrier, slot, &outcome, now),
            Op::OutboxDone { seq } => self.outbox_done(seq),
        }
    }

    // ---- lookups -------------------------------------------------------------------------------------------------

    fn queue_id(&self, name: &str) -> Result<u32, QueueError> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| QueueError::UnknownQueue {
                name: name.to_owned(),
            })
    }

    fn queue(&self, id: u32) -> &QueueIndex {
        // Every id handed around comes from `names` or a message's metadata, both kept in step with `queues`.
        &self.queues[&id]
    }

    fn body(&self, id: MessageId) -> Result<Body, QueueError> {
        let bytes = self
            .read(&key64(record::BODY, id))?
            .ok_or_else(|| QueueError::Storage {
                detail: format!("message {id} has no body"),
            })?;
        record::decode(&bytes).map_err(|detail| QueueError::Storage { detail })
    }

    // ---- the one way messages change -----------------------------------------------------------------------------

    /// A message's metadata, as the current operation sees it.
    fn meta(&self, id: MessageId) -> Result<Option<MessageMeta>, QueueError> {
        self.read(&key64(record::META, id))?
            .map(|bytes| record::decode(&bytes).map_err(|detail| QueueError::Storage { detail }))
            .transpose()
    }

    /// Metadata of a message the indexes list: an absent one is a storage fault.
    fn stored_meta(&self, id: MessageId) -> Result<MessageMeta, QueueError> {
        self.meta(id)?.ok_or_else(|| QueueError::Storage {
            detail: format!("message {id} is indexed but not stored"),
        })
    }

    /// Metadata of messages the indexes list, read before a change.
    fn metas(&self, ids: impl IntoIterator<Item = MessageId>) -> Result<Vec<MessageMeta>, QueueError> {
        ids.into_iter().map(|id| self.stored_meta(id)).collect()
    }

    /// Takes a message out of the indexes to change it; [`Partition::put`] puts it back. A storage failure
    /// here (in the middle of a change) poisons the partition.
    fn take(&mut self, id: MessageId) -> Option<MessageMeta> {
        let meta = match self.meta(id) {
            Ok(meta) => meta?,
            Err(e) => {
                self.poisoned.get_or_insert(e.to_string());
                return None;
            }
        };
        self.unindex(&meta);
        Some(meta)
    }

    /// Takes a message whose metadata was read already out of the indexes.
    fn unindex(&mut self, meta: &MessageMeta) {
        if let Some(q) = self.queues.get_mut(&meta.queue) {
            q.remove(meta);
        }
    }

    /// Stores a message's metadata and indexes it.
    fn put(&mut self, meta: MessageMeta) {
        self.stage_put(key64(record::META, meta.id), record::encode(&meta));
        if let Some(q) = self.queues.get_mut(&meta.queue) {
            q.insert(&meta);
        }
    }

    /// Deletes a taken message's records.
    fn delete(&mut self, meta: &MessageMeta) {
        self.stage_delete(key64(record::META, meta.id));
        self.stage_delete(key64(record::BODY, meta.id));
    }

    /// Removes a message for good, failing its barrier task with `reason`. False when the message could not be
    /// read (the partition is poisoned).
    fn discard(&mut self, id: MessageId, reason: &str, now: u64) -> bool {
        let Some(meta) = self.take(id) else {
            return false;
        };
        self.delete(&meta);
        if let Some(task) = meta.barrier {
            self.task_outcome(task, TaskOutcome::Failed(reason.to_owned()), now);
        }
        true
    }

    /// Enqueues a validated message into queue `queue`.
    fn enqueue(&mut self, queue: u32, message: NewMessage, join: Option<JoinInfo>, now: u64) -> MessageId {
        let id = self.state.next_message;
        self.state.next_message += 1;
        let q = self.queue(queue);
        let (fifo, window) = (q.settings.fifo, q.settings.dedup_window_ms);
        let state = if message.delay_ms > 0 {
            MessageState::Delayed {
                until_ms: now.saturating_add(message.delay_ms),
            }
        } else {
            MessageState::Ready
        };
        if let Some(key) = &message.idempotency_key
            && window > 0
        {
            let expires_ms = now.saturating_add(window);
            self.stage_put(
                record::dedup_key(queue, key),
                record::encode(&DedupRecord {
                    queue,
                    key: key.clone(),
                    id,
                    expires_ms,
                }),
            );
            if let Some(q) = self.queues.get_mut(&queue) {
                q.remember(key.clone(), id, expires_ms);
            }
        }
        let body = Body {
            payload: message.payload,
            headers: message.headers,
            join,
        };
        self.stage_put(key64(record::BODY, id), record::encode(&body));
        self.put(MessageMeta {
            id,
            queue,
            state,
            priority: message.priority,
            group: if fifo { message.group } else { None },
            sent_at_ms: now,
            deliveries: 0,
            token: 0,
            deadline_ms: 0,
            last_error: None,
            dead_letter: None,
            barrier: message.barrier,
        });
        id
    }

    /// A taken message whose deliveries are over: to the dead-letter queue, or parked.
    fn exhaust(&mut self, mut meta: MessageMeta, reason: &str, now: u64) {
        let q = self.queue(meta.queue);
        let source = q.name.clone();
        let dlq = q
            .settings
            .dead_letter_queue
            .as_ref()
            .and_then(|name| self.names.get(name).copied());
        let reason = clip(reason);
        meta.dead_letter = Some(DeadLetterInfo {
            source: source.clone(),
            deliveries: meta.deliveries,
            last_error: meta.last_error.clone(),
            reason: reason.clone(),
            at_ms: now,
        });
        let (id, task) = (meta.id, meta.barrier);
        match dlq {
            Some(dlq) => {
                let to = self.queue(dlq).name.clone();
                meta.queue = dlq;
                meta.state = MessageState::Ready;
                meta.deliveries = 0;
                self.put(meta);
                self.events.push(Event::DeadLettered {
                    id,
                    from: source,
                    to,
                    reason: reason.clone(),
                });
            }
            None => {
                meta.state = MessageState::Parked;
                self.put(meta);
                self.events.push(Event::Parked {
                    id,
                    queue: source,
                    reason: reason.clone(),
                });
            }
        }
        if let Some(task) = task {
            self.task_outcome(task, TaskOutcome::Failed(reason), now);
        }
    }

    // ---- time ----------------------------------------------------------------------------------------------------

    /// Fires every deadline at or before `now`.
    fn advance(&mut self, now: u64) {
        let ids: Vec<u32> = self.queues.keys().copied().collect();
        for qid in ids {
            while let Some(&(until, id)) = self.queues.get(&qid).and_then(|q| q.delayed.first()) {
                if until > now {
                    break;
                }
                // A message the indexes list but the storage cannot give poisoned the partition: stop here
                // (the entry would stay first in the index forever).
                let Some(mut meta) = self.take(id) else {
                    return;
                };
                meta.state = MessageState::Ready;
                self.put(meta);
            }
            while let Some(&(deadline, id)) = self.queues.get(&qid).and_then(|q| q.in_flight.first()) {
                if deadline > now {
                    break;
                }
                let max = self.queue(qid).settings.max_deliveries;
                let Some(mut meta) = self.take(id) else {
                    return;
                };
                if meta.deliveries >= max {
                    self.exhaust(meta, REASON_MAX_DELIVERIES, now);
                } else {
                    meta.state = MessageState::Ready;
                    self.put(meta);
                }
            }
            if let Some(retention) = self.queues.get(&qid).and_then(|q| q.settings.retention_ms) {
                while let Some(&(sent, id)) = self.queues.get(&qid).and_then(|q| q.by_age.first()) {
                    if sent.saturating_add(retention) > now {
                        break;
                    }
                    if !self.discard(id, "retention expired", now) {
                        return;
                    }
                    let queue = self.queue(qid).name.clone();
                    self.events.push(Event::Expired { id, queue });
                }
            }
            while let Some((expires, key)) = self
                .queues
                .get(&qid)
                .and_then(|q| q.dedup_expiry.first().cloned())
            {
                if expires > now {
                    break;
                }
                self.stage_delete(record::dedup_key(qid, &key));
                if let Some(q) = self.queues.get_mut(&qid) {
                    q.forget(&key);
                }
            }
        }
    }

    // ---- queues --------------------------------------------------------------------------------------------------

    fn check_dead_letter_queue(&self, settings: &QueueSettings) -> Result<(), QueueError> {
        if let Some(dlq) = &settings.dead_letter_queue
            && !self.names.contains_key(dlq)
        {
            return Err(QueueError::InvalidSettings {
                field: "dead_letter_queue".to_owned(),
                reason: format!("no queue named {dlq:?} in this partition"),
            });
        }
        Ok(())
    }

    fn create_queue(&mut self, name: String, settings: QueueSettings) -> Result<Outcome, QueueError> {
        validate_name(&name)?;
        if self.names.contains_key(&name) {
            return Err(QueueError::QueueExists { name });
        }
        settings.validate(&name)?;
        self.check_dead_letter_queue(&settings)?;
        let id = self.state.next_queue;
        self.state.next_queue += 1;
        self.stage_put(
            record::queue_key(id),
            record::encode(&QueueRecord {
                id,
                name: name.clone(),
                settings: settings.clone(),
            }),
        );
        self.names.insert(name.clone(), id);
        self.queues.insert(id, QueueIndex::new(id, name, settings));
        Ok(Outcome::QueueCreated)
    }

    fn update_settings(&mut self, name: &str, settings: QueueSettings) -> Result<Outcome, QueueError> {
        let id = self.queue_id(name)?;
        settings.validate(name)?;
        self.queue(id).settings.check_update(&settings)?;
        self.check_dead_letter_queue(&settings)?;
        self.stage_put(
            record::queue_key(id),
            record::encode(&QueueRecord {
                id,
                name: name.to_owned(),
                settings: settings.clone(),
            }),
        );
        if let Some(q) = self.queues.get_mut(&id) {
            q.settings = settings;
        }
        Ok(Outcome::SettingsUpdated)
    }

    fn delete_queue(&mut self, name: &str, now: u64) -> Result<Outcome, QueueError> {
        let id = self.queue_id(name)?;
        if let Some(other) = self
            .queues
            .values()
            .find(|q| q.settings.dead_letter_queue.as_deref() == Some(name))
        {
            return Err(QueueError::QueueInUse {
                name: name.to_owned(),
                by: format!("the dead-letter queue of {:?}", other.name),
            });
        }
        if let Some((barrier, _)) = self
            .open_barriers
            .iter()
            .find(|(_, targets)| targets.iter().any(|t| t == name))
        {
            return Err(QueueError::QueueInUse {
                name: name.to_owned(),
                by: format!("a target of open barrier {barrier}"),
            });
        }
        let removed = self.remove_all(id, "queue deleted", now);
        let keys: Vec<String> = self.queue(id).dedup.keys().cloned().collect();
        for key in keys {
            self.stage_delete(record::dedup_key(id, &key));
        }
        self.stage_delete(record::queue_key(id));
        self.queues.remove(&id);
        self.names.remove(name);
        Ok(Outcome::QueueDeleted { removed })
    }

    fn remove_all(&mut self, queue: u32, reason: &str, now: u64) -> u64 {
        let ids: Vec<MessageId> = self.queue(queue).messages.iter().copied().collect();
        for &id in &ids {
            self.discard(id, reason, now);
        }
        ids.len() as u64
    }

    fn purge(&mut self, name: &str, now: u64) -> Result<Outcome, QueueError> {
        let id = self.queue_id(name)?;
        let removed = self.remove_all(id, "purged", now);
        Ok(Outcome::Purged { removed })
    }

    // ---- sending -------------------------------------------------------------------------------------------------

    /// Checks messages bound for queue `queue`. `internal` forbids what barrier-created messages may not carry.
    fn validate_messages(
        &self,
        queue: u32,
        messages: &[NewMessage],
        internal: bool,
    ) -> Result<(), QueueError> {
        let q = self.queue(queue);
        if messages.is_empty() {
            return Err(invalid("no messages"));
        }
        for (index, m) in messages.iter().enumerate() {
            let size = m.size();
            if size > q.settings.max_message_size as usize {
                return Err(QueueError::OversizedMessage {
                    queue: q.name.clone(),
                    index,
                    size,
                    max: q.settings.max_message_size,
                });
            }
            if m.delay_ms > MAX_DELAY_MS {
                return Err(invalid(format!(
                    "message {index}: delay {} ms is over the maximum of {MAX_DELAY_MS}",
                    m.delay_ms
                )));
            }
            for (what, key) in [("idempotency key", &m.idempotency_key), ("group key", &m.group)] {
                if let Some(key) = key
                    && (key.is_empty() || key.len() > MAX_KEY_LEN)
                {
                    return Err(invalid(format!(
                        "message {index}: {what} of {} bytes (1..={MAX_KEY_LEN})",
                        key.len()
                    )));
                }
            }
            if m.group.is_some() && !q.settings.fifo {
                return Err(invalid(format!(
                    "message {index}: a group key, but queue {:?} is not FIFO",
                    q.name
                )));
            }
            if internal && (m.idempotency_key.is_some() || m.barrier.is_some()) {
                return Err(invalid(format!(
                    "message {index}: a barrier's tasks and targets carry no idempotency key or barrier reference"
                )));
            }
            if let Some(task) = m.barrier
                && task.partition == self.partition
            {
                let barrier = self.load_barrier(task.barrier)?;
                if task.slot >= barrier.tasks {
                    return Err(invalid(format!(
                        "message {index}: slot {} of barrier {} which has {} tasks",
                        task.slot, task.barrier, barrier.tasks
                    )));
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, queue: &str, messages: Vec<NewMessage>, now: u64) -> Result<Outcome, QueueError> {
        let id = self.queue_id(queue)?;
        self.validate_messages(id, &messages, false)?;
        let mut sent = Vec::with_capacity(messages.len());
        for message in messages {
            let first = message
                .idempotency_key
                .as_ref()
                .and_then(|key| self.queue(id).dedup.get(key))
                .map(|&(first, _)| first);
            sent.push(match first {
                Some(first) => Sent {
                    id: first,
                    duplicate: true,
                },
                None => Sent {
                    id: self.enqueue(id, message, None, now),
                    duplicate: false,
                },
            });
        }
        Ok(Outcome::Sent(sent))
    }

    // ---- delivering ----------------------------------------------------------------------------------------------

    fn check_count(what: &str, max: u32) -> Result<(), QueueError> {
        if !(1..=MAX_BATCH).contains(&max) {
            return Err(invalid(format!("{what} {max} is outside 1..={MAX_BATCH}")));
        }
        Ok(())
    }

    fn check_timeout(timeout: u64) -> Result<(), QueueError> {
        if !(1..=MAX_VISIBILITY_TIMEOUT_MS).contains(&timeout) {
            return Err(invalid(format!(
                "visibility timeout {timeout} ms is outside 1..={MAX_VISIBILITY_TIMEOUT_MS}"
            )));
        }
        Ok(())
    }

    fn receive(
        &mut self,
        queue: &str,
        max: u32,
        visibility_timeout_ms: Option<u64>,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let qid = self.queue_id(queue)?;
        Self::check_count("max", max)?;
        let timeout = visibility_timeout_ms.unwrap_or(self.queue(qid).settings.visibility_timeout_ms);
        Self::check_timeout(timeout)?;
        // Taking a message from the ready order never adds another (a FIFO group's next waits for the ack), so
        // the first `max` entries are exactly what this receive delivers. Bodies are read before anything changes.
        let ids: Vec<MessageId> = self
            .queue(qid)
            .ready
            .iter()
            .take(max as usize)
            .map(|&(_, id)| id)
            .collect();
        let bodies = ids
            .iter()
            .map(|&id| self.body(id))
            .collect::<Result<Vec<_>, _>>()?;
        let metas = self.metas(ids)?;
        let deadline_ms = now.saturating_add(timeout);
        let mut deliveries = Vec::with_capacity(metas.len());
        for (mut meta, body) in metas.into_iter().zip(bodies) {
            let id = meta.id;
            self.unindex(&meta);
            self.state.next_token += 1;
            meta.deliveries += 1;
            meta.token = self.state.next_token;
            meta.deadline_ms = deadline_ms;
            meta.state = MessageState::InFlight { deadline_ms };
            deliveries.push(Delivery {
                receipt: Receipt {
                    id,
                    delivery: meta.deliveries,
                    token: meta.token,
                },
                deadline_ms,
                payload: body.payload,
                headers: body.headers,
                priority: meta.priority,
                group: meta.group.clone(),
                sent_at_ms: meta.sent_at_ms,
                dead_letter: meta.dead_letter.clone(),
                join: body.join,
                barrier: meta.barrier,
            });
            self.put(meta);
        }
        Ok(Outcome::Received(deliveries))
    }

    /// Checks that every receipt settles a delivery in flight in queue `queue`, each message once.
    fn check_receipts(&self, queue: &str, receipts: &[Receipt]) -> Result<u32, QueueError> {
        let qid = self.queue_id(queue)?;
        if receipts.is_empty() {
            return Err(invalid("no receipts"));
        }
        let mut seen = BTreeSet::new();
        for r in receipts {
            if !seen.insert(r.id) {
                return Err(invalid(format!("message {} appears twice", r.id)));
            }
            let meta =
                self.meta(r.id)?
                    .filter(|m| m.queue == qid)
                    .ok_or_else(|| QueueError::UnknownMessage {
                        queue: queue.to_owned(),
                        id: r.id,
                    })?;
            if meta.token != r.token {
                return Err(QueueError::StaleReceipt {
                    id: r.id,
                    delivery: r.delivery,
                    current: meta.deliveries,
                });
            }
            if !matches!(meta.state, MessageState::InFlight { .. }) {
                return Err(QueueError::ExpiredReceipt {
                    id: r.id,
                    delivery: r.delivery,
                    deadline_ms: meta.deadline_ms,
                });
            }
        }
        Ok(qid)
    }

    fn ack(&mut self, queue: &str, acks: Vec<AckEntry>, now: u64) -> Result<Outcome, QueueError> {
        let receipts: Vec<Receipt> = acks.iter().map(|a| a.receipt).collect();
        self.check_receipts(queue, &receipts)?;
        for a in &acks {
            if let Some(result) = &a.result
                && result.len() > MAX_TASK_RESULT
            {
                return Err(QueueError::ResultTooLarge {
                    id: a.receipt.id,
                    size: result.len(),
                    max: MAX_TASK_RESULT,
                });
            }
        }
        for a in acks {
            if let Some(meta) = self.take(a.receipt.id) {
                self.delete(&meta);
                if let Some(task) = meta.barrier {
                    self.task_outcome(task, TaskOutcome::Done(a.result.unwrap_or_default()), now);
                }
            }
        }
        Ok(Outcome::Acked)
    }

    fn nack(
        &mut self,
        queue: &str,
        receipts: &[Receipt],
        retry_after_ms: u64,
        error: Option<String>,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let qid = self.check_receipts(queue, receipts)?;
        if retry_after_ms > MAX_DELAY_MS {
            return Err(invalid(format!(
                "retry delay {retry_after_ms} ms is over the maximum of {MAX_DELAY_MS}"
            )));
        }
        let max = self.queue(qid).settings.max_deliveries;
        for r in receipts {
            let Some(mut meta) = self.take(r.id) else {
                continue;
            };
            if let Some(error) = &error {
                meta.last_error = Some(clip(error));
            }
            if meta.deliveries >= max {
                self.exhaust(meta, REASON_MAX_DELIVERIES, now);
            } else {
                meta.state = if retry_after_ms == 0 {
                    MessageState::Ready
                } else {
                    MessageState::Delayed {
                        until_ms: now.saturating_add(retry_after_ms),
                    }
                };
                self.put(meta);
            }
        }
        Ok(Outcome::Nacked)
    }

    fn extend(
        &mut self,
        queue: &str,
        receipts: &[Receipt],
        timeout: u64,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        self.check_receipts(queue, receipts)?;
        Self::check_timeout(timeout)?;
        let deadline_ms = now.saturating_add(timeout);
        for r in receipts {
            if let Some(mut meta) = self.take(r.id) {
                meta.deadline_ms = deadline_ms;
                meta.state = MessageState::InFlight { deadline_ms };
                self.put(meta);
            }
        }
        Ok(Outcome::Extended(vec![deadline_ms; receipts.len()]))
    }

    fn terminate(
        &mut self,
        queue: &str,
        receipts: &[Receipt],
        reason: &str,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        self.check_receipts(queue, receipts)?;
        for r in receipts {
            if let Some(mut meta) = self.take(r.id) {
                meta.last_error = Some(clip(reason));
                self.exhaust(meta, reason, now);
            }
        }
        Ok(Outcome::Terminated)
    }

    // ---- dead letters --------------------------------------------------------------------------------------------

    fn redrive(&mut self, queue: &str, filter: &RedriveFilter, max: u32) -> Result<Outcome, QueueError> {
        let qid = self.queue_id(queue)?;
        Self::check_count("max", max)?;
        let matches = |meta: &MessageMeta| {
            let Some(info) = &meta.dead_letter else {
                return false;
            };
            if matches!(meta.state, MessageState::InFlight { .. }) {
                return false;
            }
            if let Some(source) = &filter.source
                && *source != info.source
            {
                return false;
            }
            if let Some(text) = &filter.error_contains
                && !info.reason.contains(text.as_str())
                && !info
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains(text.as_str()))
            {
                return false;
            }
            true
        };
        // Everything is read before anything changes, up to one match past the count.
        let mut candidates = Vec::new();
        let mut more = false;
        for meta in self.queue(qid).dead.iter().map(|&id| self.stored_meta(id)) {
            let meta = meta?;
            if !matches(&meta) {
                continue;
            }
            if candidates.len() == max as usize {
                more = true;
                break;
            }
            candidates.push(meta);
        }
        let mut out = Redriven {
            more,
            ..Redriven::default()
        };
        for meta in candidates {
            let id = meta.id;
            let target = if meta.state == MessageState::Parked {
                Some(qid)
            } else {
                meta.dead_letter
                    .as_ref()
                    .and_then(|info| self.names.get(&info.source).copied())
            };
            let Some(target) = target else {
                let source = meta
                    .dead_letter
                    .as_ref()
                    .map(|i| i.source.clone())
                    .unwrap_or_default();
                out.skipped
                    .push((id, format!("its source queue {source:?} no longer exists")));
                continue;
            };
            if let Some(mut meta) = self.take(id) {
                meta.queue = target;
                meta.state = MessageState::Ready;
                meta.deliveries = 0;
                meta.dead_letter = None;
                self.put(meta);
                out.moved.push(id);
            }
        }
        Ok(Outcome::Redriven(out))
    }

    // ---- reading -------------------------------------------------------------------------------------------------

    /// A queue's counters at the partition's clock (a local read; propose [`Op::Stats`] for a linearizable one).
    pub fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let q = self.queue(self.queue_id(queue)?);
        Ok(QueueStats {
            depth: q.messages.len() as u64,
            ready: q.ready_count,
            in_flight: q.in_flight.len() as u64,
            delayed: q.delayed.len() as u64,
            parked: q.parked.len() as u64,
            dead_letters: q.dead.len() as u64,
            oldest_age_ms: q
                .by_age
                .first()
                .map_or(0, |&(sent, _)| self.state.clock_ms.saturating_sub(sent)),
        })
    }

    /// Up to `max` messages of a queue, changing nothing: first what a receive would deliver, in its order,
    /// then the rest that is not in flight (delayed, waiting in a FIFO group, parked) by id.
    pub fn peek(&self, queue: &str, max: u32) -> Result<Vec<PeekedMessage>, QueueError> {
        let q = self.queue(self.queue_id(queue)?);
        Self::check_count("max", max)?;
        let max = max as usize;
        let mut metas = self.metas(q.ready.iter().take(max).map(|&(_, id)| id))?;
        if metas.len() < max {
            // Then the rest, by id: what the ready order does not hold and is not in flight. Reads stop at `max`.
            let listed: BTreeSet<MessageId> = metas.iter().map(|m| m.id).collect();
            for &id in &q.messages {
                if metas.len() == max {
                    break;
                }
                if listed.contains(&id) {
                    continue;
                }
                let meta = self.stored_meta(id)?;
                if !matches!(meta.state, MessageState::InFlight { .. }) {
                    metas.push(meta);
                }
            }
        }
        metas
            .into_iter()
            .map(|meta| {
                let body = self.body(meta.id)?;
                Ok(PeekedMessage {
                    id: meta.id,
                    state: meta.state,
                    deliveries: meta.deliveries,
                    priority: meta.priority,
                    group: meta.group,
                    sent_at_ms: meta.sent_at_ms,
                    payload: body.payload,
                    headers: body.headers,
                    dead_letter: meta.dead_letter,
                })
            })
            .collect()
    }

    /// The outbox: outcomes of tasks of other partitions' barriers, waiting for the host to deliver them as
    /// [`Op::BarrierTaskDone`] to their home partition, then clear them with [`Op::OutboxDone`].
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, QueueError> {
        self.scan(&[record::OUTBOX])?
            .iter()
            .map(|(_, v)| record::decode(v).map_err(|detail| QueueError::Storage { detail }))
            .collect()
    }

    /// A barrier of this partition.
    pub fn barrier(&self, id: BarrierId) -> Result<Barrier, QueueError> {
        self.load_barrier(id)
    }

    // ---- barriers ------------------------------------------------------------------------------------------------

    fn load_barrier(&self, id: BarrierId) -> Result<Barrier, QueueError> {
        let bytes = self
            .read(&key64(record::BARRIER, id))?
            .ok_or(QueueError::UnknownBarrier { barrier: id })?;
        record::decode(&bytes).map_err(|detail| QueueError::Storage { detail })
    }

    fn check_target(&self, target: &Target) -> Result<(), QueueError> {
        let id = self.queue_id(&target.queue)?;
        self.validate_messages(id, std::slice::from_ref(&target.message), true)
    }

    /// Validates and stores a new open barrier; returns its id (the caller bumps the counter).
    fn create_barrier(
        &mut self,
        tasks: u32,
        completion: Target,
        failure: Target,
    ) -> Result<BarrierId, QueueError> {
        if !(1..=MAX_BARRIER_TASKS).contains(&tasks) {
            return Err(invalid(format!(
                "a barrier of {tasks} tasks (1..={MAX_BARRIER_TASKS})"
            )));
        }
        self.check_target(&completion)?;
        self.check_target(&failure)?;
        let id = self.state.next_barrier;
        self.open_barriers
            .insert(id, [completion.queue.clone(), failure.queue.clone()]);
        let barrier = Barrier {
            id,
            tasks,
            done: BTreeMap::new(),
            state: BarrierState::Open,
            completion,
            failure,
        };
        self.stage_put(key64(record::BARRIER, id), record::encode(&barrier));
        Ok(id)
    }

    fn submit_barrier(
        &mut self,
        queue: &str,
        tasks: Vec<NewMessage>,
        completion: Target,
        failure: Target,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let qid = self.queue_id(queue)?;
        self.validate_messages(qid, &tasks, true)?;
        let count = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
        let barrier = self.create_barrier(count, completion, failure)?;
        self.state.next_barrier = barrier + 1;
        let ids = tasks
            .into_iter()
            .enumerate()
            .map(|(slot, task)| {
                let task = task.with_barrier(BarrierRef {
                    partition: self.partition,
                    barrier,
                    slot: slot as u32,
                });
                self.enqueue(qid, task, None, now)
            })
            .collect();
        Ok(Outcome::BarrierSubmitted { barrier, tasks: ids })
    }

    fn barrier_task_done(
        &mut self,
        barrier: BarrierId,
        slot: u32,
        outcome: &TaskOutcome,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let b = self.load_barrier(barrier)?;
        if let TaskOutcome::Done(result) = outcome
            && result.len() > MAX_TASK_RESULT
        {
            return Err(QueueError::ResultTooLarge {
                id: 0,
                size: result.len(),
                max: MAX_TASK_RESULT,
            });
        }
        let counted = self.record_outcome(b, slot, outcome, now);
        Ok(Outcome::BarrierTaskRecorded { counted })
    }

    /// A settled barrier task: recorded here when its barrier is at home, put in the outbox otherwise.
    fn task_outcome(&mut self, task: BarrierRef, outcome: TaskOutcome, now: u64) {
        if task.partition != self.partition {
            let seq = self.state.next_outbox;
            self.state.next_outbox += 1;
            let entry = OutboxEntry { seq, task, outcome };
            self.stage_put(key64(record::OUTBOX, seq), record::encode(&entry));
            self.events.push(Event::Outbox(entry));
            return;
        }
        match self.load_barrier(task.barrier) {
            Ok(b) => {
                self.record_outcome(b, task.slot, &outcome, now);
            }
            // A local barrier is never deleted, so only a storage failure gets here.
            Err(QueueError::UnknownBarrier { .. }) => {}
            Err(e) => {
                self.poisoned.get_or_insert(e.to_string());
            }
        }
    }

    fn record_outcome(&mut self, mut b: Barrier, slot: u32, outcome: &TaskOutcome, now: u64) -> bool {
        let (counted, fire) = b.record(slot, outcome);
        if !counted {
            return false;
        }
        let (target, join, completed) = match fire {
            Fire::Nothing => (None, None, false),
            Fire::Complete(join) => (Some(b.completion.clone()), Some(join), true),
            Fire::Fail(join) => (Some(b.failure.clone()), Some(join), false),
        };
        if let Some(target) = target {
            let message = match self.names.get(&target.queue).copied() {
                Some(qid) => Some(self.enqueue(qid, target.message, join, now)),
                None => {
                    self.events.push(Event::BarrierUndeliverable {
                        barrier: b.id,
                        queue: target.queue,
                    });
                    None
                }
            };
            self.open_barriers.remove(&b.id);
            if completed {
                b.state = BarrierState::Completed { message };
                if let Some(message) = message {
                    self.events.push(Event::BarrierCompleted {
                        barrier: b.id,
                        message,
                    });
                }
            } else {
                b.state = BarrierState::Failed { message };
                if let Some(message) = message {
                    self.events.push(Event::BarrierFailed {
                        barrier: b.id,
                        message,
                    });
                }
            }
        }
        self.stage_put(key64(record::BARRIER, b.id), record::encode(&b));
        true
    }

    fn outbox_done(&mut self, seq: u64) -> Result<Outcome, QueueError> {
        let pairs = self.scan(&[record::OUTBOX])?;
        let upto = key64(record::OUTBOX, seq);
        for (key, _) in pairs {
            if key <= upto {
                self.stage_delete(key);
            }
        }
        Ok(Outcome::OutboxCleared)
    }

    // ---- snapshots -----------------------------------------------------------------------------------------------

    /// Writes the whole state to `out`: the magic `TRQUEUE1`, the number of records (u64 little-endian), then each
    /// record as key length (u32 LE), key, value length (u32 LE), value.
    pub fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
        let pairs = self.storage.scan_prefix(b"")?;
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&(pairs.len() as u64).to_le_bytes())?;
        for (key, value) in &pairs {
            for part in [key, value] {
                let len = u32::try_from(part.len())
                    .map_err(|_| SnapshotError::Invalid(format!("a record of {} bytes", part.len())))?;
                out.write_all(&len.to_le_bytes())?;
                out.write_all(part)?;
            }
        }
        out.flush()?;
        Ok(())
    }

    /// Replaces the whole state with the one `input` holds (what [`Partition::snapshot`] wrote). The snapshot is
    /// read and checked completely before anything changes: on an error the partition is as it was.
    pub fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::Invalid(format!(
                "starts with {magic:?}, not a queue partition's snapshot"
            )));
        }
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        let count = u64::from_le_bytes(word);
        let mut pairs = Vec::new();
        for _ in 0..count {
            let mut part = || -> Result<Vec<u8>, SnapshotError> {
                let mut len = [0u8; 4];
                input.read_exact(&mut len)?;
                let mut bytes = Vec::new();
                input
                    .take(u64::from(u32::from_le_bytes(len)))
                    .read_to_end(&mut bytes)?;
                if bytes.len() != u32::from_le_bytes(len) as usize {
                    return Err(SnapshotError::Invalid("truncated".to_owned()));
                }
                Ok(bytes)
            };
            let key = part()?;
            let value = part()?;
            pairs.push((key, value));
        }
        let loaded = Loaded::from_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(SnapshotError::Invalid)?;
        let mut batch = WriteBatch::default();
        for (key, _) in self.storage.scan_prefix(b"")? {
            batch.delete(key);
        }
        for (key, value) in pairs {
            batch.put(key, value);
        }
        self.storage.write(batch)?;
        self.install(loaded);
        Ok(())
    }
}

impl<S: Storage + PartialEq> PartialEq for Partition<S> {
    /// Equal stored state, indexes and id.
    fn eq(&self, other: &Self) -> bool {
        self.partition == other.partition
            && self.storage == other.storage
            && self.state == other.state
            && self.queues == other.queues
            && self.names == other.names
            && self.open_barriers == other.open_barriers
    }
}
