//! A barrier whose tasks live in other partitions: outcomes travel through the outboxes and reach the home
//! partition repeated and in any order, as an at-least-once host delivers them. Whatever the order, the barrier
//! fires exactly once, and completes exactly when the first outcome delivered for every slot was a success.
//!
//! # Reproducing a failure
//!
//! proptest prints the shrunk case and saves its seed in `crates/queue/tests/barrier_spread.proptest-regressions`;
//! running `cargo nextest run -p trestle-queue --test barrier_spread` again replays it first.

use std::collections::BTreeMap;

use proptest::prelude::*;
use trestle_queue::{
    AckEntry, BarrierRef, BarrierState, Command, Event, MemStorage, NewMessage, Op, OutboxEntry, Outcome,
    Partition, QueueSettings, RedriveFilter, Response, Target, TaskOutcome,
};

const HOME: u64 = 1;

/// What happens to a task in its partition.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Acknowledged.
    Acked,
    /// Nacked on its only delivery: parked, a failure.
    Parked,
    /// Parked, then redriven and acknowledged: a failure, then a success, for the same slot.
    ParkedThenAcked,
}

struct Node {
    p: Partition<MemStorage>,
    index: u64,
}

impl Node {
    fn new(id: u64) -> Self {
        Self {
            p: Partition::open(MemStorage::new(), id).expect("open"),
            index: 0,
        }
    }

    fn apply(&mut self, op: Op) -> Response {
        self.index += 1;
        self.p.apply(self.index, Command::new(self.index, op))
    }

    fn ok(&mut self, op: Op) -> Outcome {
        self.apply(op).outcome.expect("applies")
    }

    fn receive_one(&mut self, queue: &str) -> trestle_queue::Delivery {
        match self.ok(Op::Receive {
            queue: queue.into(),
            max: 1,
            visibility_timeout_ms: None,
        }) {
            Outcome::Received(mut d) if d.len() == 1 => d.remove(0),
            other => panic!("{other:?}"),
        }
    }
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![4 => Just(Fate::Acked), 1 => Just(Fate::Parked), 1 => Just(Fate::ParkedThenAcked)]
}

proptest! {
    #[test]
    fn a_spread_barrier_fires_once_whatever_the_delivery_order(
        fates in prop::collection::vec(fate(), 1..6),
        order in prop::collection::vec((any::<u64>(), 1usize..4), 12),
    ) {
        let mut home = Node::new(HOME);
        let mut others = [Node::new(2), Node::new(3)];
        home.ok(Op::CreateQueue { name: "done".into(), settings: QueueSettings::default() });
        // One queue per task, so that a redrive moves only that task.
        for (slot, node) in (0..fates.len()).map(|slot| (slot, slot % 2)) {
            others[node].ok(Op::CreateQueue {
                name: format!("tasks{slot}"),
                settings: QueueSettings::default().with_max_deliveries(1),
            });
        }
        let Outcome::BarrierCreated { barrier, .. } = home.ok(Op::CreateBarrier {
            tasks: fates.len() as u32,
            completion: Target::new("done", NewMessage::new("complete")),
            failure: Target::new("done", NewMessage::new("failed")),
            idempotency_key: None,
        }) else {
            panic!()
        };

        // Each task runs its fate in one of the other partitions; their outboxes fill.
        for (slot, fate) in fates.iter().enumerate() {
            let node = &mut others[slot % 2];
            let queue = format!("tasks{slot}");
            let task = BarrierRef { partition: HOME, barrier, slot: slot as u32 };
            node.ok(Op::Send { queue: queue.clone(), messages: vec![NewMessage::new("t").with_barrier(task)] });
            let d = node.receive_one(&queue);
            let result = Some(vec![slot as u8]);
            match fate {
                Fate::Acked => {
                    node.ok(Op::Ack { queue, acks: vec![AckEntry { receipt: d.receipt, result }] });
                }
                Fate::Parked | Fate::ParkedThenAcked => {
                    node.ok(Op::Nack {
                        queue: queue.clone(),
                        receipts: vec![d.receipt],
                        retry_after_ms: 0,
                        error: Some("failed".into()),
                    });
                    if matches!(fate, Fate::ParkedThenAcked) {
                        node.ok(Op::Redrive { queue: queue.clone(), filter: RedriveFilter::all(), max: 10 });
                        let d = node.receive_one(&queue);
                        node.ok(Op::Ack { queue, acks: vec![AckEntry { receipt: d.receipt, result }] });
                    }
                }
            }
        }
        let mut entries: Vec<(usize, OutboxEntry)> = Vec::new();
        for (n, node) in others.iter().enumerate() {
            entries.extend(node.p.outbox().expect("outbox").into_iter().map(|e| (n, e)));
        }
        // Each entry delivered one to three times, in an order drawn from `order`.
        let mut deliveries: Vec<(u64, usize)> = Vec::new();
        for (i, _) in entries.iter().enumerate() {
            let (key, times) = order[i % order.len()];
            for t in 0..times {
                deliveries.push((key.wrapping_add((t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)), i));
            }
        }
        deliveries.sort();
        let mut first: BTreeMap<u32, bool> = BTreeMap::new();
        let mut fired = Vec::new();
        for &(_, i) in &deliveries {
            let entry = &entries[i].1;
            let done = matches!(entry.outcome, TaskOutcome::Done(_));
            let response = home.apply(Op::BarrierTaskDone {
                barrier: entry.task.barrier,
                slot: entry.task.slot,
                outcome: entry.outcome.clone(),
            });
            let Ok(Outcome::BarrierTaskRecorded { counted }) = response.outcome else {
                panic!("{response:?}")
            };
            let closed = fired
                .iter()
                .any(|e| matches!(e, Event::BarrierFailed { .. } | Event::BarrierCompleted { .. }));
            let fresh = !first.contains_key(&entry.task.slot);
            prop_assert_eq!(counted, fresh && !closed, "counted only a slot's first outcome while open");
            if fresh && !closed {
                first.insert(entry.task.slot, done);
            }
            fired.extend(response.events);
        }
        for (n, node) in others.iter_mut().enumerate() {
            if let Some(last) = entries.iter().filter(|(m, _)| *m == n).map(|(_, e)| e.seq).max() {
                node.ok(Op::OutboxDone { seq: last });
            }
            prop_assert!(node.p.outbox().expect("outbox").is_empty());
        }

        prop_assert_eq!(fired.len(), 1, "fired exactly once: {:?}", fired);
        let completes = first.len() == fates.len() && first.values().all(|&done| done);
        let state = home.p.barrier(barrier).expect("barrier").state;
        prop_assert_eq!(matches!(state, BarrierState::Completed { .. }), completes);
        prop_assert_eq!(matches!(fired[0], Event::BarrierCompleted { .. }), completes);
        prop_assert_eq!(home.p.stats("done").expect("stats").depth, 1);
    }
}
