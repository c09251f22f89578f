//! The `queue` workload, Jepsen's total-queue on trestle-queue: producers send unique values, consumers receive
//! and acknowledge them, and at the end, once the cluster is healed, the queue is drained.
//!
//! Every node is started with `--queue-partitions 3`; the setup creates the queue [`QUEUE`] with a shard in each
//! partition, a short visibility timeout (so deliveries abandoned by a crashed or timed-out consumer come back
//! within seconds) and the most deliveries a queue allows (so nothing is parked). Each client process talks to
//! its own node through a [`QueueClient`], which retries a request on that node for about a second while it
//! answers UNAVAILABLE (a send keeps its idempotency key across those retries).
//!
//! Operations (the values the checker reads are in brackets):
//!
//! - `send v`: one message, payload and idempotency key the decimal `v` (unique per operation); `ok` with
//!   `[v partition id]`. A refusal by the partition is `fail`; anything else (timeout, no leader, connection
//!   lost) is `info`: the message may or may not be in the queue.
//! - `receive`: up to 5 messages, long polling 300 ms; `ok` with `[[v partition id delivery] ...]`. The session
//!   then holds the deliveries, and its next operation is their `ack`.
//! - `ack [[v partition id delivery] ...]`: acknowledges what the last receive returned; `ok` means the removal
//!   committed; a stale or expired receipt (the message was delivered again meanwhile) is `fail`.
//! - `drain` (final operations only): the queue's stats; when it is empty, `ok` with `{empty true}`; otherwise
//!   receive up to 500 and acknowledge them: `ok` with `{received [...], acked bool, empty false}`; when nothing
//!   is ready yet (deliveries in flight until their visibility deadline) `fail`, and the runner retries.
//!
//! The `queue` checker (`checker/queue.rs`) reads the history.

use std::time::Duration;

use rand::{Rng, RngCore};
use trestle_queue::client::{ClientConfig, ClientError, Delivery, QueueClient, Receipt};
use trestle_queue::{NewMessage, QueueSettings};

use super::{BoxFuture, Completion, OpRequest, Session, Workload};
use crate::checker::CheckModel;
use crate::history::value::Value;

/// The queue the workload uses.
pub(crate) const QUEUE: &str = "jepsen-queue";
/// Partitions every node hosts (`--queue-partitions`), and the shards of each queue.
pub(crate) const PARTITIONS: u32 = 3;
/// How long a delivery stays invisible: short, so abandoned deliveries come back during the run and the drain.
pub(crate) const VISIBILITY_MS: u64 = 4_000;
/// How long a receive waits for a message.
const RECEIVE_WAIT: Duration = Duration::from_millis(300);
/// Messages per receive during the run.
const RECEIVE_MAX: u32 = 5;
/// Messages per receive during the drain.
pub(crate) const DRAIN_MAX: u32 = 500;

/// Settings of the queue workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueWorkload {}

impl Workload for QueueWorkload {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn model(&self) -> CheckModel {
        CheckModel::Queue
    }

    fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest {
        if rng.random_bool(0.5) {
            let v = i64::try_from(op_number).unwrap_or(i64::MAX);
            OpRequest::new("send", None, Value::Int(v))
        } else {
            OpRequest::new("receive", None, Value::Nil)
        }
    }

    fn is_read_only(&self, _op: &OpRequest) -> bool {
        // A receive makes its deliveries invisible; an ack or a send changes the queue.
        false
    }

    fn final_ops(&self, ops_generated: u64) -> Vec<OpRequest> {
        // At most half the operations were sends; each drain takes up to DRAIN_MAX, and once the queue is empty a
        // drain is one stats call.
        let drains = 10 + ops_generated / u64::from(DRAIN_MAX);
        (0..drains)
            .map(|_| OpRequest::new("drain", None, Value::Nil))
            .collect()
    }

    fn open(&self, _client: etcd_client::Client) -> Box<dyn Session> {
        Box::new(Unconnected)
    }

    fn open_at(&self, _client: etcd_client::Client, endpoint: &str, _peer: Option<&str>) -> Box<dyn Session> {
        match queue_client(endpoint) {
            Ok(client) => Box::new(QueueSession {
                client,
                held: Vec::new(),
            }),
            Err(_) => Box::new(Unconnected),
        }
    }

    fn serve_args(&self) -> Vec<String> {
        serve_args()
    }

    fn setup<'a>(&'a self, endpoints: &'a [String]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(create_queues(endpoints, &[QUEUE]))
    }
}

/// `trestle serve` options of the queue workloads.
pub(crate) fn serve_args() -> Vec<String> {
    vec!["--queue-partitions".into(), PARTITIONS.to_string()]
}

/// The settings of every queue the workloads create.
pub(crate) fn settings() -> QueueSettings {
    QueueSettings::default()
        .with_visibility_timeout_ms(VISIBILITY_MS)
        .with_max_deliveries(trestle_queue::MAX_DELIVERIES_LIMIT)
}

/// Creates `queues` through any of `endpoints` (an earlier attempt that took effect is fine).
pub(crate) async fn create_queues(endpoints: &[String], queues: &[&str]) -> Result<(), String> {
    let client = QueueClient::new(ClientConfig::new(endpoints.iter().cloned())).map_err(|e| e.to_string())?;
    for queue in queues {
        match client.create_queue(queue, PARTITIONS, &settings()).await {
            Ok(_) => {}
            Err(e) if matches!(e.refusal(), Some(trestle_queue::QueueError::QueueExists { .. })) => {}
            Err(e) => return Err(format!("creating queue {queue}: {e}")),
        }
    }
    Ok(())
}

/// A client of one node, retrying briefly there (the runner bounds each operation anyway).
pub(crate) fn queue_client(endpoint: &str) -> Result<QueueClient, ClientError> {
    let mut config = ClientConfig::new([endpoint.to_owned()]);
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_millis(1_500);
    config.retry_for = Duration::from_secs(1);
    QueueClient::new(config)
}

/// `fail` when the partition refused the request (it changed nothing), else `info`; a settle across partitions
/// that some of them carried out (`PartlySettled`) is `info`.
pub(crate) fn failure(e: &ClientError, value: Value) -> Completion {
    match e {
        // A settle across partitions that some of them carried out: part of it happened.
        ClientError::Refused {
            error: trestle_queue::QueueError::PartlySettled { .. },
            ..
        } => Completion::info(value, e.to_string()),
        ClientError::Refused { .. } | ClientError::Config(_) => Completion::fail(value, e.to_string()),
        _ => Completion::info(value, e.to_string()),
    }
}

/// A payload's value: the decimal integer it holds, else the text.
pub(crate) fn payload_value(payload: &[u8]) -> Value {
    let text = String::from_utf8_lossy(payload);
    text.parse::<i64>()
        .map(Value::Int)
        .unwrap_or_else(|_| Value::Str(text.into_owned()))
}

/// `[partition id delivery]` of a receipt.
pub(crate) fn receipt_value(r: &Receipt) -> [Value; 3] {
    [
        Value::Int(i64::try_from(r.partition).unwrap_or(i64::MAX)),
        Value::Int(i64::try_from(r.id).unwrap_or(i64::MAX)),
        Value::Int(i64::from(r.delivery)),
    ]
}

/// `[v partition id delivery]`.
fn delivery_value(d: &Delivery, r: &Receipt) -> Value {
    let mut items = vec![payload_value(&d.payload)];
    items.extend(receipt_value(r));
    Value::List(items)
}

pub(crate) fn int(u: u64) -> Value {
    Value::Int(i64::try_from(u).unwrap_or(i64::MAX))
}

/// A session whose node's endpoint was unusable: every operation fails without effect.
struct Unconnected;

impl Session for Unconnected {
    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move { Completion::fail(op.value.clone(), "no queue client for this endpoint") })
    }
}

struct QueueSession {
    client: QueueClient,
    /// What the last receive returned, not yet acknowledged: receipt and its `[v partition id delivery]`.
    held: Vec<(Receipt, Value)>,
}

impl Session for QueueSession {
    fn plan(&mut self, generated: OpRequest) -> OpRequest {
        if self.held.is_empty() {
            generated
        } else {
            let items = self.held.iter().map(|(_, v)| v.clone()).collect();
            OpRequest::new("ack", None, Value::List(items))
        }
    }

    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            match op.f.as_str() {
                "send" => {
                    let key = op.value.to_string();
                    let message = NewMessage::new(key.clone()).with_idempotency_key(key);
                    match self.client.send(QUEUE, vec![message]).await {
                        Ok(sent) => match sent.first().and_then(|s| s.id) {
                            Some(id) => Completion::ok(Value::List(vec![
                                op.value.clone(),
                                int(id.partition),
                                int(id.id),
                            ])),
                            None => Completion::info(op.value.clone(), "no message id in the reply"),
                        },
                        Err(e) => failure(&e, op.value.clone()),
                    }
                }
                "receive" => match self.client.receive(QUEUE, RECEIVE_MAX, RECEIVE_WAIT, None).await {
                    Ok(deliveries) => {
                        let mut got = Vec::new();
                        for d in &deliveries {
                            let Some(r) = d.receipt else { continue };
                            let v = delivery_value(d, &r);
                            self.held.push((r, v.clone()));
                            got.push(v);
                        }
                        Completion::ok(Value::List(got))
                    }
                    Err(e) => failure(&e, Value::Nil),
                },
                "ack" => {
                    // Whatever happens, these deliveries are settled or come back after their deadline.
                    let held = std::mem::take(&mut self.held);
                    let receipts: Vec<Receipt> = held.iter().map(|(r, _)| *r).collect();
                    match self.client.ack(QUEUE, &receipts, &[]).await {
                        Ok(()) => Completion::ok(op.value.clone()),
                        Err(e) => failure(&e, op.value.clone()),
                    }
                }
                "drain" => {
                    drain(
                        &self.client,
                        QUEUE,
                        tokio::time::Instant::now() + DRAIN_BUDGET,
                        Duration::ZERO,
                        delivery_value,
                        |_| Vec::new(),
                    )
                    .await
                }
                other => Completion::fail(op.value.clone(), format!("queue cannot do {other}")),
            }
        })
    }
}

/// How long a drain step may take in all: below the runner's bound on final operations (twice the operation
/// timeout, 4 s by default), so that what a step received is recorded even when its ack is slow. An ack still in
/// flight when the budget runs out is abandoned and reported as `acked false` (it may or may not commit). A step
/// that drains several queues (the barrier workload's) shares one budget between them.
pub(crate) const DRAIN_BUDGET: Duration = Duration::from_millis(3_000);
/// What a drain step keeps of its budget for the ack.
const ACK_RESERVE: Duration = Duration::from_millis(1_000);

/// One drain step on `queue`: `ok {empty true}` when the queue holds nothing; else up to [`DRAIN_MAX`] deliveries
/// received, each described by `describe`, and acknowledged with `results(delivery)` (`ok {received [...] acked
/// bool empty false}`); `fail` when nothing is ready yet (deliveries still in flight) or the first receive did
/// not answer in time. Once a receive returned something, it goes on receiving until `gather` has passed since
/// the start (messages that trickle in, as barrier completions do), then acknowledges everything at once. The
/// whole step ends by `deadline` (the step's start plus [`DRAIN_BUDGET`]), give or take the ack's last 300 ms.
pub(crate) async fn drain(
    client: &QueueClient,
    queue: &str,
    deadline: tokio::time::Instant,
    gather: Duration,
    describe: impl Fn(&Delivery, &Receipt) -> Value,
    results: impl Fn(&Delivery) -> Vec<u8>,
) -> Completion {
    let gather_until =
        (tokio::time::Instant::now() + gather).min(deadline.checked_sub(ACK_RESERVE).unwrap_or(deadline));
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let depth = match tokio::time::timeout(left(), client.stats(queue)).await {
        Ok(Ok(stats)) => stats.total.map_or(0, |t| t.depth),
        Ok(Err(e)) => return Completion::fail(Value::Nil, format!("stats: {e}")),
        Err(_) => return Completion::fail(Value::Nil, "stats: no answer within the drain's budget"),
    };
    if depth == 0 {
        return Completion::ok(drained(Vec::new(), true, true));
    }
    // A receive that failed or was abandoned may have made deliveries invisible: they come back after their
    // deadline.
    let first = client.receive(queue, DRAIN_MAX, RECEIVE_WAIT, None);
    let mut deliveries = match tokio::time::timeout(left().saturating_sub(ACK_RESERVE), first).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Completion::fail(Value::Nil, format!("receive: {e}")),
        Err(_) => return Completion::fail(Value::Nil, "receive: no answer within the drain's budget"),
    };
    while !deliveries.is_empty()
        && tokio::time::Instant::now() < gather_until
        && deliveries.len() < DRAIN_MAX as usize
    {
        let max = DRAIN_MAX - u32::try_from(deliveries.len()).unwrap_or(DRAIN_MAX);
        let more = client.receive(queue, max, RECEIVE_WAIT, None);
        match tokio::time::timeout(left().saturating_sub(ACK_RESERVE), more).await {
            Ok(Ok(more)) => deliveries.extend(more),
            // Acknowledge what was received.
            _ => break,
        }
    }
    if deliveries.is_empty() {
        return Completion::fail(
            Value::Nil,
            format!("{depth} messages in {queue}, none ready (in flight until their deadline)"),
        );
    }
    let deliveries: Vec<Delivery> = deliveries.into_iter().filter(|d| d.receipt.is_some()).collect();
    let receipts: Vec<Receipt> = deliveries.iter().filter_map(|d| d.receipt).collect();
    let values: Vec<Value> = deliveries
        .iter()
        .filter_map(|d| d.receipt.map(|r| describe(d, &r)))
        .collect();
    let res: Vec<Vec<u8>> = deliveries.iter().map(&results).collect();
    let ack = client.ack(queue, &receipts, &res);
    let acked = matches!(
        tokio::time::timeout(left().max(Duration::from_millis(300)), ack).await,
        Ok(Ok(()))
    );
    Completion::ok(drained(values, acked, false))
}

/// A drain's result.
pub(crate) fn drained(received: Vec<Value>, acked: bool, empty: bool) -> Value {
    Value::map(vec![
        (Value::Str("received".into()), Value::List(received)),
        (Value::Str("acked".into()), Value::Bool(acked)),
        (Value::Str("empty".into()), Value::Bool(empty)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::EventType;

    #[test]
    fn a_refusal_is_fail_but_a_partly_settled_ack_is_info() {
        let refused = ClientError::Refused {
            code: tonic::Code::FailedPrecondition,
            error: trestle_queue::QueueError::UnknownQueue { name: "q".into() },
        };
        assert_eq!(failure(&refused, Value::Nil).kind, EventType::Fail);
        let partly = ClientError::Refused {
            code: tonic::Code::Aborted,
            error: trestle_queue::QueueError::PartlySettled {
                settled: vec![(1, 2)],
                total: 2,
                partition: 3,
                reason: "stale receipt".into(),
            },
        };
        assert_eq!(failure(&partly, Value::Nil).kind, EventType::Info);
    }
}
