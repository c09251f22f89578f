//! The client API's wire types (`proto/queue.proto`, package `trestle.queue.v1`), their conversion from and to
//! the partition's types, and how a partition's refusal travels as a gRPC status.
//!
//! A refusal ([`QueueError`]) becomes a status with the code a user expects (NOT_FOUND for an unknown queue,
//! FAILED_PRECONDITION for a stale receipt, ...) and the error itself, postcard-encoded, in the status details, so
//! a Rust client gets the typed error back ([`queue_error`]).

use std::collections::BTreeMap;

use tonic::{Code, Status};

use crate::{
    DeadLetterInfo, Delivery, JoinInfo, MessageState, NewMessage, PeekedMessage, QueueError, QueueSettings,
    QueueStats, Receipt,
};

/// The generated protobuf types and gRPC client and server of `trestle.queue.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("trestle.queue.v1");
}

/// The status a client sees for a partition's refusal: its code, the error's text, and the error in the details.
pub fn status_of(error: &QueueError) -> Status {
    let code = match error {
        QueueError::UnknownQueue { .. }
        | QueueError::UnknownMessage { .. }
        | QueueError::UnknownBarrier { .. } => Code::NotFound,
        QueueError::QueueExists { .. } => Code::AlreadyExists,
        QueueError::InvalidQueueName { .. }
        | QueueError::InvalidSettings { .. }
        | QueueError::OversizedMessage { .. }
        | QueueError::InvalidRequest { .. }
        | QueueError::ResultTooLarge { .. } => Code::InvalidArgument,
        QueueError::QueueInUse { .. }
        | QueueError::StaleReceipt { .. }
        | QueueError::ExpiredReceipt { .. } => Code::FailedPrecondition,
        // Part of the request took effect: not a plain refusal, which changes nothing.
        QueueError::PartlySettled { .. } => Code::Aborted,
        _ => Code::Internal,
    };
    let details = postcard::to_allocvec(error).unwrap_or_default();
    Status::with_details(code, error.to_string(), details.into())
}

/// The partition's error a status carries, if it carries one (see [`status_of`]).
pub fn queue_error(status: &Status) -> Option<QueueError> {
    if status.details().is_empty() {
        return None;
    }
    postcard::from_bytes(status.details()).ok()
}

/// An INVALID_ARGUMENT status for a request that cannot be turned into a partition's operation.
pub(crate) fn invalid(reason: impl Into<String>) -> Status {
    status_of(&QueueError::InvalidRequest {
        reason: reason.into(),
    })
}

fn opt_str(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// Settings from the wire: unset fields from `base` (the defaults on create, the current settings on update).
pub fn settings_from_proto(base: QueueSettings, s: Option<&proto::Settings>) -> QueueSettings {
    let Some(s) = s else { return base };
    let mut out = base;
    if let Some(v) = s.visibility_timeout_ms {
        out.visibility_timeout_ms = v;
    }
    if let Some(v) = s.max_deliveries {
        out.max_deliveries = v;
    }
    if let Some(v) = &s.dead_letter_queue {
        out.dead_letter_queue = opt_str(v);
    }
    if let Some(v) = s.retention_ms {
        out.retention_ms = (v != 0).then_some(v);
    }
    if let Some(v) = s.max_message_size {
        out.max_message_size = v;
    }
    if let Some(v) = s.dedup_window_ms {
        out.dedup_window_ms = v;
    }
    if let Some(v) = s.fifo {
        out.fifo = v;
    }
    out
}

/// Settings on the wire, every field set.
pub fn settings_to_proto(s: &QueueSettings) -> proto::Settings {
    proto::Settings {
        visibility_timeout_ms: Some(s.visibility_timeout_ms),
        max_deliveries: Some(s.max_deliveries),
        dead_letter_queue: Some(s.dead_letter_queue.clone().unwrap_or_default()),
        retention_ms: Some(s.retention_ms.unwrap_or(0)),
        max_message_size: Some(s.max_message_size),
        dedup_window_ms: Some(s.dedup_window_ms),
        fifo: Some(s.fifo),
    }
}

/// A message from the wire (a priority above 255 is refused).
pub fn message_from_proto(m: proto::Message) -> Result<NewMessage, Status> {
    let priority =
        u8::try_from(m.priority).map_err(|_| invalid(format!("priority {} is over 255", m.priority)))?;
    let mut out = NewMessage::new(m.payload)
        .with_delay_ms(m.delay_ms)
        .with_priority(priority);
    out.headers = m.headers.into_iter().collect();
    out.idempotency_key = opt_str(&m.idempotency_key);
    out.group = opt_str(&m.group);
    Ok(out)
}

/// A message on the wire.
pub fn message_to_proto(m: &NewMessage) -> proto::Message {
    proto::Message {
        payload: m.payload.clone(),
        headers: m.headers.clone().into_iter().collect(),
        delay_ms: m.delay_ms,
        priority: u32::from(m.priority),
        idempotency_key: m.idempotency_key.clone().unwrap_or_default(),
        group: m.group.clone().unwrap_or_default(),
    }
}

/// A receipt on the wire, naming its partition.
pub fn receipt_to_proto(partition: u64, r: Receipt) -> proto::Receipt {
    proto::Receipt {
        partition,
        id: r.id,
        delivery: r.delivery,
        token: r.token,
    }
}

/// A receipt from the wire, and its partition.
pub fn receipt_from_proto(r: &proto::Receipt) -> (u64, Receipt) {
    (
        r.partition,
        Receipt {
            id: r.id,
            delivery: r.delivery,
            token: r.token,
        },
    )
}

fn dead_letter_to_proto(d: &DeadLetterInfo) -> proto::DeadLetter {
    proto::DeadLetter {
        source: d.source.clone(),
        deliveries: d.deliveries,
        last_error: d.last_error.clone().unwrap_or_default(),
        reason: d.reason.clone(),
        at_ms: d.at_ms,
    }
}

fn join_to_proto(j: &JoinInfo) -> proto::Join {
    match j {
        JoinInfo::Completed { barrier, results } => proto::Join {
            barrier: *barrier,
            completed: true,
            results: (0u32..).zip(results.iter().cloned()).collect(),
            failed_slot: 0,
            reason: String::new(),
        },
        JoinInfo::Failed {
            barrier,
            slot,
            reason,
            done,
        } => proto::Join {
            barrier: *barrier,
            completed: false,
            results: done.clone().into_iter().collect(),
            failed_slot: *slot,
            reason: reason.clone(),
        },
    }
}

/// A delivery on the wire.
pub fn delivery_to_proto(partition: u64, d: Delivery) -> proto::Delivery {
    proto::Delivery {
        receipt: Some(receipt_to_proto(partition, d.receipt)),
        deadline_ms: d.deadline_ms,
        payload: d.payload,
        headers: d.headers.into_iter().collect(),
        priority: u32::from(d.priority),
        group: d.group.unwrap_or_default(),
        sent_at_ms: d.sent_at_ms,
        dead_letter: d.dead_letter.as_ref().map(dead_letter_to_proto),
        join: d.join.as_ref().map(join_to_proto),
    }
}

/// A peeked message on the wire.
pub fn peeked_to_proto(partition: u64, m: PeekedMessage) -> proto::Peeked {
    let (state, until_ms) = match m.state {
        MessageState::Ready => ("ready", 0),
        MessageState::Delayed { until_ms } => ("delayed", until_ms),
        MessageState::InFlight { deadline_ms } => ("in_flight", deadline_ms),
        MessageState::Parked => ("parked", 0),
    };
    proto::Peeked {
        id: Some(proto::MessageRef { partition, id: m.id }),
        state: state.to_owned(),
        until_ms,
        deliveries: m.deliveries,
        priority: u32::from(m.priority),
        group: m.group.unwrap_or_default(),
        sent_at_ms: m.sent_at_ms,
        payload: m.payload,
        headers: m.headers.into_iter().collect(),
        dead_letter: m.dead_letter.as_ref().map(dead_letter_to_proto),
    }
}

/// Counters on the wire.
pub fn stats_to_proto(s: &QueueStats) -> proto::Stats {
    proto::Stats {
        depth: s.depth,
        ready: s.ready,
        in_flight: s.in_flight,
        delayed: s.delayed,
        parked: s.parked,
        dead_letters: s.dead_letters,
        oldest_age_ms: s.oldest_age_ms,
    }
}

/// The sum of several partitions' counters (the oldest age is the largest).
pub fn add_stats(total: &mut proto::Stats, s: &proto::Stats) {
    total.depth += s.depth;
    total.ready += s.ready;
    total.in_flight += s.in_flight;
    total.delayed += s.delayed;
    total.parked += s.parked;
    total.dead_letters += s.dead_letters;
    total.oldest_age_ms = total.oldest_age_ms.max(s.oldest_age_ms);
}

/// Headers as the partition keeps them.
pub fn headers(h: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    h.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_its_code_and_its_typed_error() {
        let error = QueueError::StaleReceipt {
            id: 7,
            delivery: 1,
            current: 2,
        };
        let status = status_of(&error);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("stale receipt for message 7"),
            "{}",
            status.message()
        );
        assert_eq!(queue_error(&status), Some(error));
        assert_eq!(
            status_of(&QueueError::UnknownQueue { name: "q".into() }).code(),
            Code::NotFound
        );
        assert_eq!(queue_error(&Status::unavailable("no leader")), None);
    }

    #[test]
    fn unset_settings_keep_the_base_and_zero_retention_means_keep() {
        let base = QueueSettings::default().with_retention_ms(Some(5000));
        let changed = settings_from_proto(
            base.clone(),
            Some(&proto::Settings {
                max_deliveries: Some(3),
                retention_ms: Some(0),
                ..Default::default()
            }),
        );
        assert_eq!(changed.max_deliveries, 3);
        assert_eq!(changed.retention_ms, None);
        assert_eq!(changed.visibility_timeout_ms, base.visibility_timeout_ms);
        assert_eq!(
            settings_from_proto(base.clone(), Some(&settings_to_proto(&base))),
            base
        );
    }

    #[test]
    fn a_priority_over_255_is_refused() {
        let status = message_from_proto(proto::Message {
            priority: 256,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("priority 256"));
    }
}
