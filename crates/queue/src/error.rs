//! What a command can be refused for. Every error carries the values that caused it, and a refused command changed
//! nothing of its own (the partition's clock still moved to the command's time; see [`crate::Partition`]).

use serde::{Deserialize, Serialize};

use crate::message::MessageId;

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// No queue of that name in this partition.
    #[error("unknown queue {name:?}")]
    UnknownQueue {
        /// The name asked for.
        name: String,
    },
    /// `CreateQueue` for a name that is taken.
    #[error("queue {name:?} already exists")]
    QueueExists {
        /// The name.
        name: String,
    },
    /// The queue cannot be deleted while something refers to it.
    #[error("queue {name:?} is in use: {by}")]
    QueueInUse {
        /// The queue.
        name: String,
        /// What refers to it.
        by: String,
    },
    /// A queue name that is empty, too long or has characters other than letters, digits, `-`, `_` and `.`.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A setting out of range, or a change that is not safe on an existing queue.
    #[error("invalid setting {field}: {reason}")]
    InvalidSettings {
        /// The field of [`crate::QueueSettings`].
        field: String,
        /// Why, with the value.
        reason: String,
    },
    /// A message larger than the queue's `max_message_size` (payload plus header names and values).
    #[error("message {index} of the batch is {size} bytes, over queue {queue:?}'s limit of {max} bytes")]
    OversizedMessage {
        /// The queue.
        queue: String,
        /// Position of the message in its batch.
        index: usize,
        /// Its size in bytes.
        size: usize,
        /// The queue's limit.
        max: u32,
    },
    /// A message or argument that is malformed in another way (an empty batch, a key too long, a group key on a
    /// queue that is not FIFO...).
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong, with the value.
        reason: String,
    },
    /// No such message in the queue: it was acknowledged, purged or expired already, or never existed.
    #[error("no message {id} in queue {queue:?} (already acknowledged, removed, or never sent)")]
    UnknownMessage {
        /// The queue.
        queue: String,
        /// The message id.
        id: MessageId,
    },
    /// The receipt is from an earlier delivery: the message was delivered again since, and only the newest
    /// receipt may settle it.
    #[error(
        "stale receipt for message {id}: it is from delivery {delivery}, the message was delivered again since \
         (delivery {current}); only the newest receipt may settle it"
    )]
    StaleReceipt {
        /// The message id.
        id: MessageId,
        /// The delivery the receipt is from.
        delivery: u32,
        /// The message's newest delivery.
        current: u32,
    },
    /// The receipt's delivery is over: its visibility deadline passed, or it was nacked; the message is waiting
    /// for its next delivery.
    #[error(
        "expired receipt for message {id}: delivery {delivery} ended (visibility deadline {deadline_ms} ms, or \
         nacked); the message will be delivered again"
    )]
    ExpiredReceipt {
        /// The message id.
        id: MessageId,
        /// The delivery the receipt is from.
        delivery: u32,
        /// That delivery's visibility deadline (ms since the epoch).
        deadline_ms: u64,
    },
    /// A task's result is larger than a barrier carries.
    #[error(
        "result of message {id} is {size} bytes, over the limit of {max} bytes for a barrier task's result"
    )]
    ResultTooLarge {
        /// The message id.
        id: MessageId,
        /// The result's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No such barrier in this partition.
    #[error("unknown barrier {barrier}")]
    UnknownBarrier {
        /// The barrier id.
        barrier: u64,
    },
    /// The bytes are not a command (or response) this version can read.
    #[error("undecodable: {detail}")]
    Undecodable {
        /// The decoder's complaint.
        detail: String,
    },
    /// The storage under the partition failed; the partition refuses every command from then on.
    #[error("storage: {detail}")]
    Storage {
        /// The storage's complaint.
        detail: String,
    },
    /// A settle (ack, nack, terminate) whose receipts name several partitions, where some partitions settled
    /// their receipts and another did not: each partition settles its part on its own, so a request across
    /// partitions is not all or nothing. The receipts not in `settled` were refused (a part whose fate is unknown,
    /// such as a partition without a leader, makes the answer that part's unavailability instead).
    #[error(
        "{} of {total} receipts were settled ({settled:?}, as (partition, message)); partition {partition} did not \
         settle its part: {reason}",
        settled.len()
    )]
    PartlySettled {
        /// The receipts settled, as (partition, message id).
        settled: Vec<(u64, MessageId)>,
        /// How many receipts the request had.
        total: usize,
        /// A partition that did not settle its part.
        partition: u64,
        /// Why it did not.
        reason: String,
    },
}

/// A failure of the [`crate::Storage`] under a partition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// Why a snapshot could not be written or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a queue partition's snapshot, or one this version cannot read.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// The storage refused the restored state.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}
