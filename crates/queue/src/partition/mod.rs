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
//!
//! Here: the partition, its reads and writes of the storage, and the dispatch of operations. The operations are in
//! `queues.rs` (queues), `delivery.rs` (send, receive, settle, redrive), `reading.rs` (stats, peek, outbox),
//! `barriers.rs`, `snapshot.rs`; `change.rs` has the one way a message changes and the clock.

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

mod barriers;
mod change;
mod delivery;
mod queues;
mod reading;
#[cfg(feature = "raft")]
pub(crate) use reading::read_outbox;
mod snapshot;

/// The longest delay a message or a nack may ask for (7 days).
pub const MAX_DELAY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// The most messages one receive, peek or redrive handles.
pub const MAX_BATCH: u32 = 10_000;

/// What a barrier's idempotency key is remembered under, in its queue's keys (a message's key cannot start with
/// a NUL).
const BARRIER_KEY_PREFIX: &str = "\0barrier:";

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

    /// Why the partition stopped, if its storage failed in the middle of a change: from then on every command
    /// answers [`QueueError::Storage`], and the host should stop the group (its state may no longer match the
    /// other replicas') and restore it from a snapshot.
    pub fn storage_failure(&self) -> Option<&str> {
        self.poisoned.as_deref()
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

    /// Stops the partition after a storage failure in the middle of a change.
    fn poison(&mut self, error: QueueError) {
        let detail = match error {
            QueueError::Storage { detail } => detail,
            other => other.to_string(),
        };
        self.poisoned.get_or_insert(detail);
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
                idempotency_key,
            } => self.submit_barrier(&queue, tasks, completion, failure, idempotency_key, now),
            Op::CreateBarrier {
                tasks,
                completion,
                failure,
                idempotency_key,
            } => self.create_barrier_op(tasks, completion, failure, idempotency_key, now),
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
