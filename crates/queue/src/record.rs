//! How a partition lays its state out in its [`crate::Storage`]: one key per record, each value one version byte
//! then postcard.
//!
//! | key | value |
//! | --- | --- |
//! | `s` | the partition's counters and clock ([`PartitionRecord`]) |
//! | `q` + queue id (u32, big-endian) | the queue's name and settings ([`QueueRecord`]) |
//! | `m` + message id (u64 BE) | the message's metadata (rewritten on each change) |
//! | `b` + message id | the message's body (written once) |
//! | `d` + queue id + idempotency key | a remembered key ([`DedupRecord`]) |
//! | `r` + barrier id (u64 BE) | a barrier ([`crate::Barrier`]) |
//! | `o` + sequence (u64 BE) | an outbox entry ([`crate::OutboxEntry`]) |

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::message::MessageId;
use crate::settings::QueueSettings;

/// The version byte in front of every stored value.
pub(crate) const RECORD_VERSION: u8 = 1;

pub(crate) const STATE: u8 = b's';
pub(crate) const QUEUE: u8 = b'q';
pub(crate) const META: u8 = b'm';
pub(crate) const BODY: u8 = b'b';
pub(crate) const DEDUP: u8 = b'd';
pub(crate) const BARRIER: u8 = b'r';
pub(crate) const OUTBOX: u8 = b'o';

/// The partition's counters and clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionRecord {
    pub(crate) clock_ms: u64,
    pub(crate) last_index: u64,
    pub(crate) next_message: u64,
    pub(crate) next_token: u64,
    pub(crate) next_queue: u32,
    pub(crate) next_barrier: u64,
    pub(crate) next_outbox: u64,
}

/// A queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueRecord {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) settings: QueueSettings,
}

/// A remembered idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupRecord {
    pub(crate) queue: u32,
    pub(crate) key: String,
    pub(crate) id: MessageId,
    pub(crate) expires_ms: u64,
}

pub(crate) fn key64(tag: u8, n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(tag);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub(crate) fn queue_key(id: u32) -> Vec<u8> {
    let mut key = vec![QUEUE];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn dedup_key(queue: u32, idempotency_key: &str) -> Vec<u8> {
    let mut key = vec![DEDUP];
    key.extend_from_slice(&queue.to_be_bytes());
    key.extend_from_slice(idempotency_key.as_bytes());
    key
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![RECORD_VERSION]).unwrap_or_else(|_| vec![RECORD_VERSION])
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("record version {v}; this version reads {RECORD_VERSION}")),
        None => Err("empty record".to_owned()),
    }
}
