//! Join barriers: a batch of N tasks plus a completion task that is enqueued exactly once when all N are
//! acknowledged, or a failure task when one of them is dead-lettered (or parked, purged, expired).
//!
//! A barrier lives in one partition, its *home*; its tasks may live in any partition. Each task carries a
//! [`BarrierRef`] (home partition, barrier, slot). When a task is settled, its partition records the outcome:
//! directly when the barrier is at home, otherwise in its outbox ([`OutboxEntry`]), which the host delivers to the
//! home partition as a `BarrierTaskDone` command and then clears (`OutboxDone`). Delivery is at least once, and
//! recording is idempotent: the first outcome of a slot counts, later ones (a redelivered task acked twice, a
//! repeated `BarrierTaskDone`, an ack after the barrier failed) change nothing. The barrier fires once: its state
//! moves from open to completed or failed, never back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::message::{MessageId, NewMessage};

/// A barrier's id, unique in its home partition.
pub type BarrierId = u64;

/// The most tasks a barrier may have.
pub const MAX_BARRIER_TASKS: u32 = 10_000;
/// The largest result a task may hand its barrier, in bytes.
pub const MAX_TASK_RESULT: usize = 1024;

/// Which barrier slot a task fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BarrierRef {
    /// The partition the barrier lives in.
    pub partition: u64,
    /// The barrier.
    pub barrier: BarrierId,
    /// The task's slot, `0..tasks`.
    pub slot: u32,
}

/// How a barrier's task ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskOutcome {
    /// Acknowledged, with its result (at most [`MAX_TASK_RESULT`] bytes).
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Dead-lettered, parked, purged or expired.
    Failed(String),
}

/// A message to enqueue later, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Target {
    /// The queue (in the barrier's home partition).
    pub queue: String,
    /// The message.
    pub message: NewMessage,
}

impl Target {
    /// `message` into `queue`.
    pub fn new(queue: impl Into<String>, message: NewMessage) -> Self {
        Self {
            queue: queue.into(),
            message,
        }
    }
}

/// What a barrier's completion or failure task carries besides its own payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JoinInfo {
    /// Every task was acknowledged; their results in slot order.
    Completed {
        /// The barrier.
        barrier: BarrierId,
        /// Each task's result, by slot.
        results: Vec<Vec<u8>>,
    },
    /// A task failed.
    Failed {
        /// The barrier.
        barrier: BarrierId,
        /// The slot that failed.
        slot: u32,
        /// Why.
        reason: String,
        /// The results of the tasks done before, by slot.
        done: BTreeMap<u32, Vec<u8>>,
    },
}

/// Where a barrier is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BarrierState {
    /// Waiting for tasks.
    Open,
    /// All tasks done; the completion task was enqueued.
    Completed {
        /// The completion message (`None` if its queue was gone).
        message: Option<MessageId>,
    },
    /// A task failed; the failure task was enqueued.
    Failed {
        /// The failure message (`None` if its queue was gone).
        message: Option<MessageId>,
    },
}

/// A barrier as its home partition stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Barrier {
    /// Its id.
    pub id: BarrierId,
    /// How many tasks.
    pub tasks: u32,
    /// The tasks' message ids, by slot, when they were submitted with the barrier (empty otherwise).
    pub task_ids: Vec<MessageId>,
    /// Results of the tasks done so far, by slot.
    pub done: BTreeMap<u32, Vec<u8>>,
    /// Where it is.
    pub state: BarrierState,
    /// Enqueued when all tasks are done.
    pub completion: Target,
    /// Enqueued when a task fails.
    pub failure: Target,
}

/// What recording an outcome makes the barrier do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fire {
    /// Nothing (counted, or already known, or the barrier is closed).
    Nothing,
    /// Enqueue the completion task with this join.
    Complete(JoinInfo),
    /// Enqueue the failure task with this join.
    Fail(JoinInfo),
}

impl Barrier {
    /// Records `outcome` for `slot`. Returns whether it counted (the first outcome of an open barrier's slot) and
    /// what to fire. The caller sets the state once it has enqueued the task.
    pub(crate) fn record(&mut self, slot: u32, outcome: &TaskOutcome) -> (bool, Fire) {
        if self.state != BarrierState::Open || slot >= self.tasks || self.done.contains_key(&slot) {
            return (false, Fire::Nothing);
        }
        match outcome {
            TaskOutcome::Done(result) => {
                self.done.insert(slot, result.clone());
                if self.done.len() as u64 == u64::from(self.tasks) {
                    let results = self.done.values().cloned().collect();
                    (
                        true,
                        Fire::Complete(JoinInfo::Completed {
                            barrier: self.id,
                            results,
                        }),
                    )
                } else {
                    (true, Fire::Nothing)
                }
            }
            TaskOutcome::Failed(reason) => (
                true,
                Fire::Fail(JoinInfo::Failed {
                    barrier: self.id,
                    slot,
                    reason: reason.clone(),
                    done: self.done.clone(),
                }),
            ),
        }
    }
}

/// A task outcome for a barrier in another partition, waiting in this partition's outbox until the host has
/// delivered it (as `BarrierTaskDone` to `task.partition`) and cleared it (`OutboxDone`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutboxEntry {
    /// Its position in the outbox.
    pub seq: u64,
    /// The barrier slot.
    pub task: BarrierRef,
    /// The outcome.
    pub outcome: TaskOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barrier(tasks: u32) -> Barrier {
        Barrier {
            id: 7,
            tasks,
            task_ids: Vec::new(),
            done: BTreeMap::new(),
            state: BarrierState::Open,
            completion: Target::new("done", NewMessage::new("c")),
            failure: Target::new("done", NewMessage::new("f")),
        }
    }

    #[test]
    fn completes_once_with_results_in_slot_order() {
        let mut b = barrier(2);
        assert_eq!(
            b.record(1, &TaskOutcome::Done(b"one".to_vec())),
            (true, Fire::Nothing)
        );
        assert_eq!(
            b.record(1, &TaskOutcome::Done(b"again".to_vec())),
            (false, Fire::Nothing)
        );
        let (counted, fire) = b.record(0, &TaskOutcome::Done(b"zero".to_vec()));
        assert!(counted);
        assert_eq!(
            fire,
            Fire::Complete(JoinInfo::Completed {
                barrier: 7,
                results: vec![b"zero".to_vec(), b"one".to_vec()]
            })
        );
    }

    #[test]
    fn a_failure_fires_and_out_of_range_slots_do_not_count() {
        let mut b = barrier(3);
        assert_eq!(
            b.record(9, &TaskOutcome::Done(Vec::new())),
            (false, Fire::Nothing)
        );
        b.record(0, &TaskOutcome::Done(b"a".to_vec()));
        let (counted, fire) = b.record(2, &TaskOutcome::Failed("boom".into()));
        assert!(counted);
        assert!(matches!(fire, Fire::Fail(JoinInfo::Failed { slot: 2, .. })));
        b.state = BarrierState::Failed { message: Some(1) };
        assert_eq!(
            b.record(1, &TaskOutcome::Done(Vec::new())),
            (false, Fire::Nothing)
        );
    }
}
