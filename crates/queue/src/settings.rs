//! A queue's settings, their bounds, and which changes are safe on an existing queue.

use serde::{Deserialize, Serialize};

use crate::error::QueueError;

/// The longest visibility timeout (12 hours, as SQS).
pub const MAX_VISIBILITY_TIMEOUT_MS: u64 = 12 * 60 * 60 * 1000;
/// The largest `max_message_size` a queue may set (a message travels in one Raft entry).
pub const MAX_MESSAGE_SIZE_LIMIT: u32 = 8 * 1024 * 1024;
/// The longest dedup window (7 days).
pub const MAX_DEDUP_WINDOW_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// The shortest retention (1 second).
pub const MIN_RETENTION_MS: u64 = 1000;
/// The most deliveries a queue may allow a message.
pub const MAX_DELIVERIES_LIMIT: u32 = 10_000;

/// A queue's settings. Start from [`QueueSettings::default`] and change fields with the `with_*` methods; a
/// partition validates them ([`QueueSettings::validate`]) on `CreateQueue` and `UpdateSettings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueSettings {
    /// How long a received message stays invisible before it is delivered again, unless the receive names
    /// another (1 ms to 12 hours). Default 30 s.
    pub visibility_timeout_ms: u64,
    /// How many deliveries a message gets: when the last one fails (nack or deadline), the message goes to the
    /// dead-letter queue, or is parked in this queue when there is none (1 to 10,000). Default 10.
    pub max_deliveries: u32,
    /// The queue, in the same partition, that receives this queue's dead letters. Without one, exhausted
    /// messages are parked (kept, reported, redrivable), never dropped. Default none.
    pub dead_letter_queue: Option<String>,
    /// How long a message is kept after it was sent before it expires (reported as an event), in whatever state.
    /// `None` keeps messages until they are settled. At least 1 s. Default `None`.
    pub retention_ms: Option<u64>,
    /// The largest message accepted: payload plus header names and values, in bytes (1 to 8 MiB). Default
    /// 256 KiB.
    pub max_message_size: u32,
    /// How long an idempotency key is remembered after its first send; 0 turns deduplication off (up to 7
    /// days). Default 5 minutes.
    pub dedup_window_ms: u64,
    /// Per-key FIFO: messages with the same group key are delivered in order, at most one in flight per group.
    /// Fixed when the queue is created. Default off.
    pub fifo: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            visibility_timeout_ms: 30_000,
            max_deliveries: 10,
            dead_letter_queue: None,
            retention_ms: None,
            max_message_size: 256 * 1024,
            dedup_window_ms: 5 * 60 * 1000,
            fifo: false,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> QueueError {
    QueueError::InvalidSettings {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl QueueSettings {
    /// Sets `visibility_timeout_ms`.
    #[must_use]
    pub fn with_visibility_timeout_ms(mut self, ms: u64) -> Self {
        self.visibility_timeout_ms = ms;
        self
    }

    /// Sets `max_deliveries`.
    #[must_use]
    pub fn with_max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = max;
        self
    }

    /// Sets `dead_letter_queue`.
    #[must_use]
    pub fn with_dead_letter_queue(mut self, queue: Option<impl Into<String>>) -> Self {
        self.dead_letter_queue = queue.map(Into::into);
        self
    }

    /// Sets `retention_ms`.
    #[must_use]
    pub fn with_retention_ms(mut self, ms: Option<u64>) -> Self {
        self.retention_ms = ms;
        self
    }

    /// Sets `max_message_size`.
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: u32) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets `dedup_window_ms`.
    #[must_use]
    pub fn with_dedup_window_ms(mut self, ms: u64) -> Self {
        self.dedup_window_ms = ms;
        self
    }

    /// Sets `fifo`.
    #[must_use]
    pub fn with_fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    /// Checks every field against its bounds, for a queue named `queue` (its dead-letter queue cannot be itself).
    /// Whether the dead-letter queue exists is the partition's check.
    pub fn validate(&self, queue: &str) -> Result<(), QueueError> {
        if !(1..=MAX_VISIBILITY_TIMEOUT_MS).contains(&self.visibility_timeout_ms) {
            return Err(invalid(
                "visibility_timeout_ms",
                format!(
                    "{} is outside 1..={MAX_VISIBILITY_TIMEOUT_MS}",
                    self.visibility_timeout_ms
                ),
            ));
        }
        if !(1..=MAX_DELIVERIES_LIMIT).contains(&self.max_deliveries) {
            return Err(invalid(
                "max_deliveries",
                format!("{} is outside 1..={MAX_DELIVERIES_LIMIT}", self.max_deliveries),
            ));
        }
        if let Some(dlq) = &self.dead_letter_queue {
            validate_name(dlq).map_err(|e| invalid("dead_letter_queue", e.to_string()))?;
            if dlq == queue {
                return Err(invalid(
                    "dead_letter_queue",
                    format!("{dlq:?} is the queue itself"),
                ));
            }
        }
        if let Some(retention) = self.retention_ms
            && retention < MIN_RETENTION_MS
        {
            return Err(invalid(
                "retention_ms",
                format!("{retention} is below the minimum of {MIN_RETENTION_MS}"),
            ));
        }
        if !(1..=MAX_MESSAGE_SIZE_LIMIT).contains(&self.max_message_size) {
            return Err(invalid(
                "max_message_size",
                format!(
                    "{} is outside 1..={MAX_MESSAGE_SIZE_LIMIT}",
                    self.max_message_size
                ),
            ));
        }
        if self.dedup_window_ms > MAX_DEDUP_WINDOW_MS {
            return Err(invalid(
                "dedup_window_ms",
                format!(
                    "{} is over the maximum of {MAX_DEDUP_WINDOW_MS}",
                    self.dedup_window_ms
                ),
            ));
        }
        Ok(())
    }

    /// Checks that an existing queue may move from `self` to `new`: everything but `fifo` may change (in-flight
    /// messages keep their deadlines, remembered keys their expiry; new values apply from the next command).
    pub fn check_update(&self, new: &Self) -> Result<(), QueueError> {
        if self.fifo != new.fifo {
            return Err(invalid(
                "fifo",
                format!(
                    "cannot change from {} to {} on an existing queue (messages already queued were ordered \
                     the other way); create a new queue",
                    self.fifo, new.fifo
                ),
            ));
        }
        Ok(())
    }
}

/// The longest queue name.
pub const MAX_QUEUE_NAME_LEN: usize = 128;

/// Checks a queue name: 1 to 128 characters among ASCII letters, digits, `-`, `_` and `.`.
pub fn validate_name(name: &str) -> Result<(), QueueError> {
    let reason = if name.is_empty() {
        "empty".to_owned()
    } else if name.len() > MAX_QUEUE_NAME_LEN {
        format!("{} bytes, over {MAX_QUEUE_NAME_LEN}", name.len())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        format!("character {c:?} (allowed: ASCII letters, digits, '-', '_', '.')")
    } else {
        return Ok(());
    };
    Err(QueueError::InvalidQueueName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(QueueSettings::default().validate("q"), Ok(()));
    }

    #[test]
    fn each_bound_names_its_field() {
        let cases = [
            (
                QueueSettings::default().with_visibility_timeout_ms(0),
                "visibility_timeout_ms",
            ),
            (
                QueueSettings::default().with_visibility_timeout_ms(MAX_VISIBILITY_TIMEOUT_MS + 1),
                "visibility_timeout_ms",
            ),
            (QueueSettings::default().with_max_deliveries(0), "max_deliveries"),
            (
                QueueSettings::default().with_dead_letter_queue(Some("q")),
                "dead_letter_queue",
            ),
            (
                QueueSettings::default().with_dead_letter_queue(Some("a b")),
                "dead_letter_queue",
            ),
            (
                QueueSettings::default().with_retention_ms(Some(10)),
                "retention_ms",
            ),
            (
                QueueSettings::default().with_max_message_size(0),
                "max_message_size",
            ),
            (
                QueueSettings::default().with_max_message_size(MAX_MESSAGE_SIZE_LIMIT + 1),
                "max_message_size",
            ),
            (
                QueueSettings::default().with_dedup_window_ms(MAX_DEDUP_WINDOW_MS + 1),
                "dedup_window_ms",
            ),
        ];
        for (settings, field) in cases {
            match settings.validate("q") {
                Err(QueueError::InvalidSettings { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn fifo_is_fixed() {
        let old = QueueSettings::default();
        assert!(old.check_update(&old.clone().with_fifo(true)).is_err());
        assert!(old.check_update(&old.clone().with_max_deliveries(3)).is_ok());
    }

    #[test]
    fn names() {
        assert!(validate_name("jobs.v1-a_b").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(129)).is_err());
    }
}
