//! Messages: what a producer sends, what a consumer receives (with its receipt), and what the partition stores
//! about each one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::barrier::{BarrierRef, JoinInfo};

/// A message's id: unique in its partition, assigned in send order (so it is also the message's age rank). It
/// stays the same when the message moves to the dead-letter queue and back.
pub type MessageId = u64;

/// The longest idempotency key or group key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// The longest error text or reason kept with a message; longer ones are cut (at a character boundary).
pub const MAX_ERROR_LEN: usize = 1024;

/// A message to send.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NewMessage {
    /// The body.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Headers, delivered with the message.
    pub headers: BTreeMap<String, String>,
    /// How long after the send the message becomes visible.
    pub delay_ms: u64,
    /// Higher is delivered first; equal priorities go oldest first.
    pub priority: u8,
    /// A repeated key within the queue's dedup window returns the first message's id and enqueues nothing.
    pub idempotency_key: Option<String>,
    /// The message group (FIFO queues only): in order, at most one in flight per group.
    pub group: Option<String>,
    /// The barrier slot this message is a task of (set by the partition for `SubmitBarrier`; set by the caller
    /// for a task of a barrier in another partition).
    pub barrier: Option<BarrierRef>,
}

impl NewMessage {
    /// A message with this payload and nothing else.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the delay.
    #[must_use]
    pub fn with_delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = ms;
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the message group.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Makes the message a task of a barrier (of another partition, usually).
    #[must_use]
    pub fn with_barrier(mut self, barrier: BarrierRef) -> Self {
        self.barrier = Some(barrier);
        self
    }

    /// The size the queue's `max_message_size` limits: payload plus header names and values.
    pub fn size(&self) -> usize {
        self.payload.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// Proof of one delivery, presented to ack, nack, extend or terminate it. A later delivery of the same message
/// invalidates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Receipt {
    /// The message.
    pub id: MessageId,
    /// Which delivery of it (1 for the first).
    pub delivery: u32,
    /// The delivery's token: unique in the partition, never reused.
    pub token: u64,
}

/// What a consumer receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Delivery {
    /// The receipt that settles this delivery.
    pub receipt: Receipt,
    /// When the message becomes visible again unless settled or extended (ms since the epoch).
    pub deadline_ms: u64,
    /// The body.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The headers.
    pub headers: BTreeMap<String, String>,
    /// The priority.
    pub priority: u8,
    /// The message group, if any.
    pub group: Option<String>,
    /// When it was sent (ms since the epoch).
    pub sent_at_ms: u64,
    /// Set when the message is a dead letter: where from, and why.
    pub dead_letter: Option<DeadLetterInfo>,
    /// Set when the message is a barrier's completion or failure task: the tasks' results.
    pub join: Option<JoinInfo>,
    /// Set when the message is a barrier's task.
    pub barrier: Option<BarrierRef>,
}

/// Why and from where a message was dead-lettered (or parked), with its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetterInfo {
    /// The queue it was exhausted in. Redrive returns it there.
    pub source: String,
    /// How many deliveries it had there.
    pub deliveries: u32,
    /// The last error a consumer reported (nack or terminate), if any.
    pub last_error: Option<String>,
    /// Why it left: `"max deliveries"` or the terminate reason.
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// Where a stored message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MessageState {
    /// Visible (a FIFO group's later messages wait behind its head).
    Ready,
    /// Invisible until the time (delay, or a nack's retry delay).
    Delayed {
        /// Visible from (ms since the epoch).
        until_ms: u64,
    },
    /// Delivered, not settled.
    InFlight {
        /// Visible again from (ms since the epoch).
        deadline_ms: u64,
    },
    /// Exhausted in a queue without a dead-letter queue: kept, never delivered until redriven.
    Parked,
}

/// A message as [`crate::Partition::peek`] shows it: no delivery, nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeekedMessage {
    /// The id.
    pub id: MessageId,
    /// Where it is.
    pub state: MessageState,
    /// Deliveries so far (in this queue).
    pub deliveries: u32,
    /// The priority.
    pub priority: u8,
    /// The group.
    pub group: Option<String>,
    /// When it was sent.
    pub sent_at_ms: u64,
    /// The body.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The headers.
    pub headers: BTreeMap<String, String>,
    /// Dead-letter history, if it is a dead letter or parked.
    pub dead_letter: Option<DeadLetterInfo>,
}

/// What the partition keeps about a message besides its body (stored under its own key, rewritten on each
/// change; the body is written once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageMeta {
    pub(crate) id: MessageId,
    pub(crate) queue: u32,
    pub(crate) state: MessageState,
    pub(crate) priority: u8,
    pub(crate) group: Option<String>,
    pub(crate) sent_at_ms: u64,
    pub(crate) deliveries: u32,
    /// The token of the newest delivery (0 before the first).
    pub(crate) token: u64,
    /// The deadline of the newest delivery.
    pub(crate) deadline_ms: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) dead_letter: Option<DeadLetterInfo>,
    pub(crate) barrier: Option<BarrierRef>,
}

/// A message's body: written at send, deleted with the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Body {
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) join: Option<JoinInfo>,
}

/// `text` cut to [`MAX_ERROR_LEN`] bytes at a character boundary.
pub(crate) fn clip(text: &str) -> String {
    if text.len() <= MAX_ERROR_LEN {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
