//! The `barrier` workload: join barriers (a batch of tasks and a completion message, Celery's chords) on
//! trestle-queue under faults.
//!
//! Two queues, each with a shard in every partition: [`TASKS`] and [`DONE`]. Operations (the values the checker
//! reads are in brackets):
//!
//! - `submit [b n]`: a barrier of `n` tasks (2 to 5) in [`TASKS`], payload `t/<b>/<slot>`, with the completion
//!   message `done/<b>` and the failure message `failed/<b>`, both to [`DONE`], and the idempotency key
//!   `barrier-<b>` (unique per operation); `ok` with `[b n partition barrier]`, the barrier's home partition and
//!   id. A refusal is `fail`, anything else `info`.
//! - `work`: receives up to 4 tasks; `ok` with `[[b slot partition id delivery] ...]`. The session's next operation
//!   is `finish` with the same list: it acknowledges them, each with its result `r/<b>/<slot>`, in one ack; an
//!   ack that some of the tasks' partitions carried out and another refused is `info`, not `fail`.
//! - `collect`: receives up to 4 completion (or failure) messages; `ok` with `[[b partition id delivery completed
//!   barrier results] ...]`, where `completed` and `barrier` come from the message's join and `results` lists
//!   `[slot result]` pairs. The session's next operation is `settle`, acknowledging them.
//! - `drain` (final operations only): drains [`TASKS`] first (acknowledging each task with its result), then
//!   [`DONE`] (receiving for 2 s once a completion arrived, since they trickle in), as the queue workload's drain
//!   does, with `queue` naming which in the result. Once both are empty it waits (failing, so the runner retries)
//!   until every barrier submitted with `ok` had its completion received, for at most 60 s without any arriving:
//!   completions are enqueued by the barrier's home partition after the last task's ack, possibly sent from
//!   another partition. The drain that ends the wait says `empty`; later ones return at once (`finished`). Any
//!   60 s without progress (nothing received, whatever the reason) end the drain without `empty`: a completion
//!   still missing is then unknown.
//!
//! The `barrier` checker (`checker/barrier.rs`) reads the history.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, RngCore};
use tokio::time::Instant;
use trestle_queue::NewMessage;
use trestle_queue::client::{Delivery, QueueClient, Receipt};

use super::queue::{
    DRAIN_BUDGET, create_queues, drain, failure, int, queue_client, receipt_value, serve_args,
};
use super::{BoxFuture, Completion, OpRequest, Session, Workload};
use crate::checker::CheckModel;
use crate::history::value::Value;

/// The tasks' queue.
pub(crate) const TASKS: &str = "jepsen-tasks";
/// The queue of completion and failure messages.
pub(crate) const DONE: &str = "jepsen-done";
/// How long a receive waits for a message.
const RECEIVE_WAIT: Duration = Duration::from_millis(300);
/// How long the drain waits for completions still missing once both queues are empty, without any arriving.
const COMPLETION_WAIT: Duration = Duration::from_secs(60);
/// How long a drain of the completions' queue goes on receiving once one arrived (they trickle in as the home
/// partitions complete barriers).
const COMPLETION_GATHER: Duration = Duration::from_secs(2);

/// Barriers the clients saw submitted and completed, so the drain knows when it may stop. The checker uses the
/// history alone.
#[derive(Debug, Default)]
struct Book {
    submitted: BTreeSet<i64>,
    completed: BTreeSet<i64>,
    /// When the drain last saw progress (a task or a completion received), once it started.
    progress: Option<Instant>,
    /// The drain found both queues empty and nothing more to wait for: later drains have nothing to do.
    finished: bool,
}

/// Settings of the barrier workload.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BarrierWorkload {
    book: Arc<Mutex<Book>>,
}

impl Workload for BarrierWorkload {
    fn name(&self) -> &'static str {
        "barrier"
    }

    fn model(&self) -> CheckModel {
        CheckModel::Barrier
    }

    fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest {
        let roll = rng.random_range(0..4);
        if roll == 0 {
            let b = i64::try_from(op_number).unwrap_or(i64::MAX);
            let n = rng.random_range(2..=5);
            OpRequest::new("submit", None, Value::List(vec![Value::Int(b), Value::Int(n)]))
        } else if roll == 3 {
            OpRequest::new("collect", None, Value::Nil)
        } else {
            OpRequest::new("work", None, Value::Nil)
        }
    }

    fn is_read_only(&self, _op: &OpRequest) -> bool {
        false
    }

    fn final_ops(&self, ops_generated: u64) -> Vec<OpRequest> {
        // A quarter of the operations submit up to 5 tasks each; a drain takes up to DRAIN_MAX tasks, or the
        // completions that arrive within COMPLETION_GATHER. Drains after the finished one return at once.
        let drains = 50 + ops_generated / 10;
        (0..drains)
            .map(|_| OpRequest::new("drain", None, Value::Nil))
            .collect()
    }

    fn open(&self, _client: etcd_client::Client) -> Box<dyn Session> {
        Box::new(Unusable)
    }

    fn open_at(&self, _client: etcd_client::Client, endpoint: &str, _peer: Option<&str>) -> Box<dyn Session> {
        match queue_client(endpoint) {
            Ok(client) => Box::new(BarrierSession {
                client,
                held: Held::Nothing,
                book: Arc::clone(&self.book),
            }),
            Err(_) => Box::new(Unusable),
        }
    }

    fn serve_args(&self) -> Vec<String> {
        serve_args()
    }

    fn setup<'a>(&'a self, endpoints: &'a [String]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(create_queues(endpoints, &[TASKS, DONE]))
    }
}

struct Unusable;

impl Session for Unusable {
    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move { Completion::fail(op.value.clone(), "no queue client for this endpoint") })
    }
}

/// What the session's last receive returned, not yet acknowledged.
enum Held {
    Nothing,
    /// Tasks: receipt, `[b slot partition id delivery]`, result.
    Tasks(Vec<(Receipt, Value, Vec<u8>)>),
    /// Completion messages: receipt, description.
    Done(Vec<(Receipt, Value)>),
}

struct BarrierSession {
    client: QueueClient,
    held: Held,
    book: Arc<Mutex<Book>>,
}

/// `(b, slot)` of a task's payload `t/<b>/<slot>`.
fn task_of(payload: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.strip_prefix("t/")?.split('/');
    let b = parts.next()?.parse().ok()?;
    let slot = parts.next()?.parse().ok()?;
    Some((b, slot))
}

/// A task's result.
fn result_of(b: i64, slot: i64) -> String {
    format!("r/{b}/{slot}")
}

/// `[b slot partition id delivery]` (b and slot are the payload's text when it is not a task's).
fn task_value(d: &Delivery, r: &Receipt) -> Value {
    let mut items = match task_of(&d.payload) {
        Some((b, slot)) => vec![Value::Int(b), Value::Int(slot)],
        None => vec![
            Value::Str(String::from_utf8_lossy(&d.payload).into_owned()),
            Value::Nil,
        ],
    };
    items.extend(receipt_value(r));
    Value::List(items)
}

fn task_result(d: &Delivery) -> Vec<u8> {
    task_of(&d.payload)
        .map(|(b, slot)| result_of(b, slot).into_bytes())
        .unwrap_or_default()
}

/// `[b partition id delivery completed barrier results]`; `b` from the payload (`done/<b>` or `failed/<b>`, else the
/// text), `completed`, `barrier` and `results` (`[[slot result] ...]` by slot) from its join (nil without one).
fn done_value(d: &Delivery, r: &Receipt) -> Value {
    let text = String::from_utf8_lossy(&d.payload);
    let b = text
        .strip_prefix("done/")
        .or_else(|| text.strip_prefix("failed/"))
        .and_then(|b| b.parse::<i64>().ok())
        .map_or_else(|| Value::Str(text.clone().into_owned()), Value::Int);
    let mut items = vec![b];
    items.extend(receipt_value(r));
    match &d.join {
        Some(join) => {
            let mut results: Vec<(u32, &Vec<u8>)> = join.results.iter().map(|(k, v)| (*k, v)).collect();
            results.sort();
            items.push(Value::Bool(join.completed));
            items.push(int(join.barrier));
            items.push(Value::List(
                results
                    .into_iter()
                    .map(|(slot, r)| {
                        Value::List(vec![
                            Value::Int(i64::from(slot)),
                            Value::Str(String::from_utf8_lossy(r).into_owned()),
                        ])
                    })
                    .collect(),
            ));
        }
        None => items.extend([Value::Nil, Value::Nil, Value::Nil]),
    }
    Value::List(items)
}

impl BarrierSession {
    fn note_completions(&self, values: &[Value]) {
        if let Ok(mut book) = self.book.lock() {
            for v in values {
                if let Some(b) = v.as_seq().and_then(|s| s.first()).and_then(Value::as_int) {
                    book.completed.insert(b);
                }
            }
        }
    }

    async fn submit(&mut self, op: &OpRequest) -> Completion {
        let (b, n) = match op.value.as_seq() {
            Some([Value::Int(b), Value::Int(n)]) => (*b, *n),
            _ => return Completion::fail(op.value.clone(), "submit takes [b n]"),
        };
        let tasks = (0..n)
            .map(|slot| NewMessage::new(format!("t/{b}/{slot}")))
            .collect();
        let completion = NewMessage::new(format!("done/{b}"));
        let failed = NewMessage::new(format!("failed/{b}"));
        let key = format!("barrier-{b}");
        match self
            .client
            .submit_barrier(TASKS, tasks, (DONE, completion), (DONE, failed), Some(&key))
            .await
        {
            Ok(r) => {
                if let Ok(mut book) = self.book.lock() {
                    book.submitted.insert(b);
                }
                Completion::ok(Value::List(vec![
                    Value::Int(b),
                    Value::Int(n),
                    int(r.partition),
                    int(r.barrier),
                ]))
            }
            Err(e) => failure(&e, op.value.clone()),
        }
    }

    async fn drain(&mut self) -> Completion {
        // The drain gives up once it has gone COMPLETION_WAIT without progress, whatever the reason (a partition
        // that never answers again, say): a missing completion is then unknown, not waited for forever.
        if let Ok(mut book) = self.book.lock() {
            let since = *book.progress.get_or_insert_with(Instant::now);
            if since.elapsed() >= COMPLETION_WAIT {
                book.finished = true;
            }
        }
        if self.book.lock().is_ok_and(|b| b.finished) {
            return Completion::ok(Value::map(vec![
                (Value::Str("finished".into()), Value::Bool(true)),
                (Value::Str("queue".into()), Value::Str(DONE.into())),
            ]));
        }
        // One budget for both queues: the runner cuts a final operation at twice the operation timeout, and a cut
        // step's acknowledged deliveries would never be recorded.
        let deadline = Instant::now() + DRAIN_BUDGET;
        let tasks = drain(
            &self.client,
            TASKS,
            deadline,
            Duration::ZERO,
            task_value,
            task_result,
        )
        .await;
        if !is_empty_drain(&tasks) {
            self.progressed(&tasks);
            return tagged(tasks, TASKS);
        }
        let done = drain(
            &self.client,
            DONE,
            deadline,
            COMPLETION_GATHER,
            done_value,
            |_| Vec::new(),
        )
        .await;
        if !is_empty_drain(&done) {
            if let Some(received) = done.value.get("received").and_then(Value::as_seq) {
                self.note_completions(received);
            }
            self.progressed(&done);
            return tagged(done, DONE);
        }
        let Ok(mut book) = self.book.lock() else {
            return tagged(done, DONE);
        };
        let missing = book.submitted.difference(&book.completed).count();
        let since = *book.progress.get_or_insert_with(Instant::now);
        if missing > 0 && since.elapsed() < COMPLETION_WAIT {
            return Completion::fail(
                Value::Nil,
                format!(
                    "both queues empty; waiting for the completions of {missing} barriers ({:.0} s without one)",
                    since.elapsed().as_secs_f64()
                ),
            );
        }
        book.finished = true;
        tagged(done, DONE)
    }

    /// Restarts the drain's wait when `c` received something.
    fn progressed(&self, c: &Completion) {
        let received = c
            .value
            .get("received")
            .and_then(Value::as_seq)
            .is_some_and(|r| !r.is_empty());
        if received && let Ok(mut book) = self.book.lock() {
            book.progress = Some(Instant::now());
        }
    }
}

fn is_empty_drain(c: &Completion) -> bool {
    c.kind == crate::history::EventType::Ok && c.value.get("empty") == Some(&Value::Bool(true))
}

/// Adds `queue` to a drain's result.
fn tagged(mut c: Completion, queue: &str) -> Completion {
    if let Value::Map(entries) = &c.value {
        let mut entries = entries.clone();
        entries.push((Value::Str("queue".into()), Value::Str(queue.into())));
        c.value = Value::map(entries);
    }
    c
}

impl Session for BarrierSession {
    fn plan(&mut self, generated: OpRequest) -> OpRequest {
        match &self.held {
            Held::Nothing => generated,
            Held::Tasks(t) => OpRequest::new(
                "finish",
                None,
                Value::List(t.iter().map(|x| x.1.clone()).collect()),
            ),
            Held::Done(d) => OpRequest::new(
                "settle",
                None,
                Value::List(d.iter().map(|x| x.1.clone()).collect()),
            ),
        }
    }

    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            match op.f.as_str() {
                "submit" => self.submit(op).await,
                "work" => match self.client.receive(TASKS, 4, RECEIVE_WAIT, None).await {
                    Ok(deliveries) => {
                        let mut held = Vec::new();
                        for d in &deliveries {
                            let Some(r) = d.receipt else { continue };
                            held.push((r, task_value(d, &r), task_result(d)));
                        }
                        let values = held.iter().map(|x| x.1.clone()).collect();
                        if !held.is_empty() {
                            self.held = Held::Tasks(held);
                        }
                        Completion::ok(Value::List(values))
                    }
                    Err(e) => failure(&e, Value::Nil),
                },
                "collect" => match self.client.receive(DONE, 4, RECEIVE_WAIT, None).await {
                    Ok(deliveries) => {
                        let mut held = Vec::new();
                        for d in &deliveries {
                            let Some(r) = d.receipt else { continue };
                            held.push((r, done_value(d, &r)));
                        }
                        let values: Vec<Value> = held.iter().map(|x| x.1.clone()).collect();
                        self.note_completions(&values);
                        if !held.is_empty() {
                            self.held = Held::Done(held);
                        }
                        Completion::ok(Value::List(values))
                    }
                    Err(e) => failure(&e, Value::Nil),
                },
                "finish" | "settle" => {
                    let (queue, receipts, results) = match std::mem::replace(&mut self.held, Held::Nothing) {
                        Held::Tasks(t) => (
                            TASKS,
                            t.iter().map(|x| x.0).collect::<Vec<_>>(),
                            t.into_iter().map(|x| x.2).collect::<Vec<_>>(),
                        ),
                        Held::Done(d) => (DONE, d.iter().map(|x| x.0).collect(), Vec::new()),
                        Held::Nothing => return Completion::fail(op.value.clone(), "nothing held"),
                    };
                    match self.client.ack(queue, &receipts, &results).await {
                        Ok(()) => Completion::ok(op.value.clone()),
                        Err(e) => failure(&e, op.value.clone()),
                    }
                }
                "drain" => self.drain().await,
                other => Completion::fail(op.value.clone(), format!("barrier cannot do {other}")),
            }
        })
    }
}
