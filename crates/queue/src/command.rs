//! What a partition replicates ([`Command`]), what applying it returns ([`Response`]), and their encoding.
//!
//! Encoded, a command or response is one version byte ([`ENCODING_VERSION`]) followed by postcard. A replica that
//! meets a version it does not know answers [`QueueError::Undecodable`] and changes nothing, so a newer leader's
//! entries never crash an older follower.

use serde::{Deserialize, Serialize};

use crate::barrier::{BarrierId, OutboxEntry, Target, TaskOutcome};
use crate::error::QueueError;
use crate::message::{Delivery, MessageId, NewMessage, PeekedMessage, Receipt};
use crate::settings::QueueSettings;

/// The version byte in front of every encoded command and response.
pub const ENCODING_VERSION: u8 = 1;

/// One replicated command: an operation and the time the leader assigned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's clock when it proposed the command (ms since the epoch). The partition's clock never moves
    /// back: a time earlier than the partition's clock counts as the partition's clock.
    pub now_ms: u64,
    /// What to do.
    pub op: Op,
}

impl Command {
    /// `op` at `now_ms`.
    pub fn new(now_ms: u64, op: Op) -> Self {
        Self { now_ms, op }
    }

    /// The command's bytes: [`ENCODING_VERSION`], then postcard.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// A command from [`Command::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, QueueError> {
        decode(bytes)
    }

    /// Several commands as one (a proposer's group commit): an [`Op::Batch`] at the latest of their times, whose
    /// operations apply in order, each as if proposed alone. [`Response::unbatch`] splits its response.
    pub fn batch(commands: Vec<Command>) -> Command {
        let now_ms = commands.iter().map(|c| c.now_ms).max().unwrap_or(0);
        Command {
            now_ms,
            op: Op::Batch(commands.into_iter().map(|c| c.op).collect()),
        }
    }
}

/// An ack, with the task's result when the message is a barrier task (ignored otherwise).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckEntry {
    /// The delivery's receipt.
    pub receipt: Receipt,
    /// A barrier task's result (at most [`crate::MAX_TASK_RESULT`] bytes).
    pub result: Option<Vec<u8>>,
}

impl From<Receipt> for AckEntry {
    fn from(receipt: Receipt) -> Self {
        Self {
            receipt,
            result: None,
        }
    }
}

/// Which dead letters a redrive moves. Every set field must match; the default matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RedriveFilter {
    /// Only dead letters from this queue.
    pub source: Option<String>,
    /// Only dead letters whose last error or reason contains this text.
    pub error_contains: Option<String>,
}

impl RedriveFilter {
    /// Matches every dead letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only dead letters from `queue`.
    #[must_use]
    pub fn with_source(mut self, queue: impl Into<String>) -> Self {
        self.source = Some(queue.into());
        self
    }

    /// Only dead letters whose last error or reason contains `text`.
    #[must_use]
    pub fn with_error_containing(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }
}

/// An operation on a partition. Operations on messages name their queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// Creates a queue.
    CreateQueue {
        /// Its name.
        name: String,
        /// Its settings.
        settings: QueueSettings,
    },
    /// Replaces a queue's settings (everything but `fifo` may change).
    UpdateSettings {
        /// The queue.
        name: String,
        /// The new settings.
        settings: QueueSettings,
    },
    /// Deletes a queue and its messages (refused while it is another queue's dead-letter queue or an open
    /// barrier's target).
    DeleteQueue {
        /// The queue.
        name: String,
    },
    /// Enqueues messages, all or none.
    Send {
        /// The queue.
        queue: String,
        /// The messages.
        messages: Vec<NewMessage>,
    },
    /// Delivers up to `max` visible messages, by priority then age (FIFO groups: their head only).
    Receive {
        /// The queue.
        queue: String,
        /// At most this many (at least 1).
        max: u32,
        /// Visibility timeout for these deliveries instead of the queue's.
        visibility_timeout_ms: Option<u64>,
    },
    /// Settles deliveries: the messages are removed. All or none: one bad receipt refuses the command (send one
    /// `Ack` per receipt inside a [`Op::Batch`] to settle each on its own).
    Ack {
        /// The queue.
        queue: String,
        /// The receipts.
        acks: Vec<AckEntry>,
    },
    /// Ends deliveries without success: each message is delivered again after `retry_after_ms`, or, when that
    /// was its last delivery, dead-lettered (or parked). All or none.
    Nack {
        /// The queue.
        queue: String,
        /// The receipts.
        receipts: Vec<Receipt>,
        /// Delay before the next delivery.
        retry_after_ms: u64,
        /// The error, kept with the message.
        error: Option<String>,
    },
    /// Moves the visibility deadline of deliveries to `now + visibility_timeout_ms` (a heartbeat). All or none.
    ExtendVisibility {
        /// The queue.
        queue: String,
        /// The receipts.
        receipts: Vec<Receipt>,
        /// The new timeout from now.
        visibility_timeout_ms: u64,
    },
    /// Sends deliveries straight to the dead-letter queue (or parks them), with a reason. All or none.
    Terminate {
        /// The queue.
        queue: String,
        /// The receipts.
        receipts: Vec<Receipt>,
        /// Why.
        reason: String,
    },
    /// Moves up to `max` dead letters (or parked messages) of `queue` that match `filter` back to their source
    /// queue, oldest first, with a fresh delivery count. A caller rate-limits by the count per command.
    Redrive {
        /// The queue holding the dead letters.
        queue: String,
        /// Which.
        filter: RedriveFilter,
        /// At most this many.
        max: u32,
    },
    /// Removes every message of the queue, in flight or not.
    Purge {
        /// The queue.
        queue: String,
    },
    /// Reads up to `max` messages, in delivery order, changing nothing (through the log: linearizable).
    Peek {
        /// The queue.
        queue: String,
        /// At most this many.
        max: u32,
    },
    /// Reads the queue's counters (through the log: linearizable).
    Stats {
        /// The queue.
        queue: String,
    },
    /// Moves the clock: passed deadlines fire. Every command does that first; `Tick` does only that.
    Tick,
    /// Creates a barrier and sends its tasks into `queue`, in one step.
    SubmitBarrier {
        /// The queue of the tasks.
        queue: String,
        /// The tasks (1 to [`crate::MAX_BARRIER_TASKS`]; no idempotency keys).
        tasks: Vec<NewMessage>,
        /// Enqueued once all tasks are acknowledged.
        completion: Target,
        /// Enqueued instead when a task fails.
        failure: Target,
        /// A repeated key within the tasks queue's dedup window returns the first submission's barrier and tasks
        /// and creates nothing (a client's retry).
        idempotency_key: Option<String>,
    },
    /// Creates a barrier whose tasks are sent separately (to any partition, each with a
    /// [`crate::BarrierRef`] naming this partition, the barrier and its slot).
    CreateBarrier {
        /// How many tasks.
        tasks: u32,
        /// Enqueued once all tasks are acknowledged.
        completion: Target,
        /// Enqueued instead when a task fails.
        failure: Target,
        /// A repeated key within the completion queue's dedup window returns the first barrier and creates
        /// nothing.
        idempotency_key: Option<String>,
    },
    /// Records the outcome of a barrier's task that lives in another partition. Idempotent: the first outcome of
    /// a slot counts, repeats change nothing (the response says whether it counted).
    BarrierTaskDone {
        /// The barrier (in this partition).
        barrier: BarrierId,
        /// The task's slot.
        slot: u32,
        /// How it ended.
        outcome: TaskOutcome,
    },
    /// Clears the outbox up to and including `seq`, once the host has delivered those entries.
    OutboxDone {
        /// The last delivered entry.
        seq: u64,
    },
    /// Several operations in one command, applied in order, each as if proposed alone with the command's time.
    Batch(Vec<Op>),
}

/// What a send did for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The message's id (the first message's, for a duplicate).
    pub id: MessageId,
    /// Whether the idempotency key was seen within the dedup window: nothing was enqueued.
    pub duplicate: bool,
}

/// A queue's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// Every message stored: ready, delayed, in flight and parked.
    pub depth: u64,
    /// Visible messages (including FIFO messages waiting behind their group's head).
    pub ready: u64,
    /// Delivered, not settled.
    pub in_flight: u64,
    /// Invisible until a delay passes.
    pub delayed: u64,
    /// Exhausted messages kept because the queue has no dead-letter queue.
    pub parked: u64,
    /// Messages that are dead letters (arrived from another queue, or parked here).
    pub dead_letters: u64,
    /// Age of the oldest message, from its send (0 when empty).
    pub oldest_age_ms: u64,
}

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Redriven {
    /// The messages moved, in order.
    pub moved: Vec<MessageId>,
    /// Matching dead letters that could not move (their source queue is gone), with why.
    pub skipped: Vec<(MessageId, String)>,
    /// Whether matching dead letters are left for later commands (the redrive stops reading at the first one past
    /// its count, so that a command's work is bounded by its count, not by the dead-letter queue's size, when most
    /// dead letters match).
    pub more: bool,
}

/// The successful result of an [`Op`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// Queue created.
    QueueCreated,
    /// Settings replaced.
    SettingsUpdated,
    /// Queue deleted, with how many messages it held.
    QueueDeleted {
        /// Messages removed with it.
        removed: u64,
    },
    /// One entry per message sent, in order.
    Sent(Vec<Sent>),
    /// The deliveries (possibly none).
    Received(Vec<Delivery>),
    /// All acknowledged.
    Acked,
    /// All nacked.
    Nacked,
    /// The new deadline of each delivery, in order.
    Extended(Vec<u64>),
    /// All terminated.
    Terminated,
    /// What a redrive did.
    Redriven(Redriven),
    /// How many messages a purge removed.
    Purged {
        /// The count.
        removed: u64,
    },
    /// The messages, in delivery order.
    Peeked(Vec<PeekedMessage>),
    /// The counters.
    Stats(QueueStats),
    /// The clock moved.
    Ticked,
    /// A barrier and its tasks.
    BarrierSubmitted {
        /// The barrier.
        barrier: BarrierId,
        /// The tasks' ids, by slot.
        tasks: Vec<MessageId>,
        /// Whether the idempotency key was seen: nothing was created.
        duplicate: bool,
    },
    /// A barrier without tasks yet.
    BarrierCreated {
        /// The barrier.
        barrier: BarrierId,
        /// Whether the idempotency key was seen: nothing was created.
        duplicate: bool,
    },
    /// A task's outcome, and whether it counted (false for a repeat, or a closed barrier).
    BarrierTaskRecorded {
        /// Whether it counted.
        counted: bool,
    },
    /// Outbox cleared.
    OutboxCleared,
    /// One result per operation of a [`Op::Batch`], in order.
    Batch(Vec<Result<Outcome, QueueError>>),
}

/// Something that happened while applying a command besides its outcome: deadlines that fired and barriers
/// that fired. Hosts log and count these; they need no answer, except [`Event::Outbox`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// A message left `from` for its dead-letter queue `to`.
    DeadLettered {
        /// The message.
        id: MessageId,
        /// The queue it was exhausted in.
        from: String,
        /// Its dead-letter queue.
        to: String,
        /// Why.
        reason: String,
    },
    /// A message was exhausted in a queue without a dead-letter queue: it is parked there, not dropped.
    Parked {
        /// The message.
        id: MessageId,
        /// The queue.
        queue: String,
        /// Why.
        reason: String,
    },
    /// A message passed its queue's retention and was removed.
    Expired {
        /// The message.
        id: MessageId,
        /// The queue.
        queue: String,
    },
    /// A barrier's tasks were all done; its completion task was enqueued.
    BarrierCompleted {
        /// The barrier.
        barrier: BarrierId,
        /// The completion message.
        message: MessageId,
    },
    /// A barrier's task failed; its failure task was enqueued.
    BarrierFailed {
        /// The barrier.
        barrier: BarrierId,
        /// The failure message.
        message: MessageId,
    },
    /// A barrier's target queue was gone when it fired: nothing could be enqueued.
    BarrierUndeliverable {
        /// The barrier.
        barrier: BarrierId,
        /// The missing queue.
        queue: String,
    },
    /// A task's outcome for a barrier of another partition went to the outbox: deliver it.
    Outbox(OutboxEntry),
}

/// What applying a [`Command`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The operation's result. An error means the operation changed nothing.
    pub outcome: Result<Outcome, QueueError>,
    /// What else happened, in order (including deadlines that fired before the operation).
    pub events: Vec<Event>,
}

impl Response {
    /// The response's bytes: [`ENCODING_VERSION`], then postcard.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// A response from [`Response::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, QueueError> {
        decode(bytes)
    }

    /// The responses of a [`Command::batch`] of `count` commands, in order; `None` when this is not such a
    /// batch's response. The batch's events go with the first response (they belong to the batch as a whole).
    pub fn unbatch(self, count: usize) -> Option<Vec<Response>> {
        let Ok(Outcome::Batch(results)) = self.outcome else {
            return None;
        };
        if results.len() != count {
            return None;
        }
        let mut events = Some(self.events);
        Some(
            results
                .into_iter()
                .map(|outcome| Response {
                    outcome,
                    events: events.take().unwrap_or_default(),
                })
                .collect(),
        )
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding into a Vec fails only for types serde cannot describe; ours are plain data.
    postcard::to_extend(value, vec![ENCODING_VERSION]).unwrap_or_else(|_| vec![ENCODING_VERSION])
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, QueueError> {
    match bytes.split_first() {
        Some((&ENCODING_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| QueueError::Undecodable {
            detail: e.to_string(),
        }),
        Some((version, _)) => Err(QueueError::Undecodable {
            detail: format!("encoding version {version}; this version reads {ENCODING_VERSION}"),
        }),
        None => Err(QueueError::Undecodable {
            detail: "empty".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_and_unbatch() {
        let batch = Command::batch(vec![Command::new(5, Op::Tick), Command::new(3, Op::Tick)]);
        assert_eq!(batch.now_ms, 5);
        assert!(matches!(&batch.op, Op::Batch(ops) if ops.len() == 2));
        let response = Response {
            outcome: Ok(Outcome::Batch(vec![
                Ok(Outcome::Ticked),
                Err(QueueError::UnknownBarrier { barrier: 1 }),
            ])),
            events: vec![Event::Expired {
                id: 1,
                queue: "q".into(),
            }],
        };
        let split = response.clone().unbatch(2).expect("a batch of 2");
        assert_eq!(split[0].events.len(), 1);
        assert!(split[1].events.is_empty() && split[1].outcome.is_err());
        assert!(response.unbatch(3).is_none());
    }

    #[test]
    fn round_trip_and_version_check() {
        let command = Command::new(
            5,
            Op::Send {
                queue: "q".into(),
                messages: vec![NewMessage::new("hi").with_priority(3)],
            },
        );
        let bytes = command.encode();
        assert_eq!(bytes[0], ENCODING_VERSION);
        assert_eq!(Command::decode(&bytes), Ok(command));
        let mut newer = bytes.clone();
        newer[0] = ENCODING_VERSION + 1;
        assert!(matches!(
            Command::decode(&newer),
            Err(QueueError::Undecodable { .. })
        ));
        assert!(matches!(
            Command::decode(&[]),
            Err(QueueError::Undecodable { .. })
        ));
    }
}
