//! One test per operation of a partition, through the public API, with the clock driven by hand.

use trestle_queue::{
    AckEntry, BarrierRef, BarrierState, Command, Delivery, Event, JoinInfo, MemStorage, MessageState,
    NewMessage, Op, Outcome, Partition, QueueError, QueueSettings, RedriveFilter, Response, Target,
    TaskOutcome,
};

struct Harness {
    p: Partition<MemStorage>,
    index: u64,
    now: u64,
}

impl Harness {
    fn new() -> Self {
        Self::with_id(1)
    }

    fn with_id(id: u64) -> Self {
        Self {
            p: Partition::open(MemStorage::new(), id).expect("open"),
            index: 0,
            now: 1_000,
        }
    }

    fn full(&mut self, op: Op) -> Response {
        self.index += 1;
        self.p.apply(self.index, Command::new(self.now, op))
    }

    fn op(&mut self, op: Op) -> Result<Outcome, QueueError> {
        self.full(op).outcome
    }

    fn ok(&mut self, op: Op) -> Outcome {
        self.op(op).expect("operation refused")
    }

    fn create(&mut self, name: &str, settings: QueueSettings) {
        self.ok(Op::CreateQueue {
            name: name.into(),
            settings,
        });
    }

    fn send(&mut self, queue: &str, messages: Vec<NewMessage>) -> Vec<u64> {
        match self.ok(Op::Send {
            queue: queue.into(),
            messages,
        }) {
            Outcome::Sent(sent) => sent.iter().map(|s| s.id).collect(),
            other => panic!("{other:?}"),
        }
    }

    fn receive(&mut self, queue: &str, max: u32) -> Vec<Delivery> {
        match self.ok(Op::Receive {
            queue: queue.into(),
            max,
            visibility_timeout_ms: None,
        }) {
            Outcome::Received(d) => d,
            other => panic!("{other:?}"),
        }
    }

    fn ack(&mut self, queue: &str, d: &Delivery) -> Result<Outcome, QueueError> {
        self.op(Op::Ack {
            queue: queue.into(),
            acks: vec![AckEntry::from(d.receipt)],
        })
    }

    fn nack(&mut self, queue: &str, d: &Delivery, retry_after_ms: u64, error: &str) {
        self.ok(Op::Nack {
            queue: queue.into(),
            receipts: vec![d.receipt],
            retry_after_ms,
            error: Some(error.into()),
        });
    }

    fn stats(&self, queue: &str) -> trestle_queue::QueueStats {
        self.p.stats(queue).expect("stats")
    }
}

fn payloads(deliveries: &[Delivery]) -> Vec<&[u8]> {
    deliveries.iter().map(|d| d.payload.as_slice()).collect()
}

#[test]
fn create_update_and_delete_queues() {
    let mut h = Harness::new();
    h.create("dlq", QueueSettings::default());
    h.create("q", QueueSettings::default().with_dead_letter_queue(Some("dlq")));
    assert_eq!(
        h.op(Op::CreateQueue {
            name: "q".into(),
            settings: QueueSettings::default()
        }),
        Err(QueueError::QueueExists { name: "q".into() })
    );
    match h.op(Op::CreateQueue {
        name: "r".into(),
        settings: QueueSettings::default().with_dead_letter_queue(Some("missing")),
    }) {
        Err(QueueError::InvalidSettings { field, reason }) => {
            assert_eq!(field, "dead_letter_queue");
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.op(Op::CreateQueue {
            name: "bad name".into(),
            settings: QueueSettings::default()
        }),
        Err(QueueError::InvalidQueueName { .. })
    ));
    // FIFO is fixed; the rest may change.
    assert!(matches!(
        h.op(Op::UpdateSettings {
            name: "q".into(),
            settings: QueueSettings::default().with_fifo(true)
        }),
        Err(QueueError::InvalidSettings { field, .. }) if field == "fifo"
    ));
    h.ok(Op::UpdateSettings {
        name: "q".into(),
        settings: QueueSettings::default().with_max_deliveries(2),
    });
    assert_eq!(h.p.queues()[1].1.max_deliveries, 2);
    // A dead-letter queue in use cannot go.
    h.ok(Op::UpdateSettings {
        name: "q".into(),
        settings: QueueSettings::default().with_dead_letter_queue(Some("dlq")),
    });
    assert!(matches!(
        h.op(Op::DeleteQueue { name: "dlq".into() }),
        Err(QueueError::QueueInUse { .. })
    ));
    h.send("q", vec![NewMessage::new("a")]);
    assert_eq!(
        h.op(Op::DeleteQueue { name: "q".into() }),
        Ok(Outcome::QueueDeleted { removed: 1 })
    );
    assert_eq!(
        h.op(Op::Send {
            queue: "q".into(),
            messages: vec![NewMessage::new("a")]
        }),
        Err(QueueError::UnknownQueue { name: "q".into() })
    );
    h.ok(Op::DeleteQueue { name: "dlq".into() });
    assert!(
        h.p.storage().entries().keys().all(|k| k[0] == b's'),
        "only the partition's record is left"
    );
}

#[test]
fn a_refused_command_changes_nothing() {
    let mut h = Harness::new();
    h.create("q", QueueSettings::default().with_max_message_size(10));
    h.send("q", vec![NewMessage::new("x")]);
    let d = h.receive("q", 1);
    let before = h.p.storage().clone();
    let refused = [
        Op::Send {
            queue: "q".into(),
            messages: vec![NewMessage::new("ok"), NewMessage::new("much too large")],
        },
        Op::Ack {
            queue: "q".into(),
            acks: vec![
                AckEntry::from(d[0].receipt),
                AckEntry::from(trestle_queue::Receipt {
                    id: 99,
                    delivery: 1,
                    token: 1,
                }),
            ],
        },
        Op::Receive {
            queue: "q".into(),
            max: 0,
            visibility_timeout_ms: None,
        },
        Op::Nack {
            queue: "nope".into(),
            receipts: vec![d[0].receipt],
            retry_after_ms: 0,
            error: None,
        },
    ];
    for op in refused {
        assert!(h.op(op).is_err());
        let after = h.p.storage().clone();
        // The partition's own record (its last applied index) moves with every command.
        let without_state = |s: &MemStorage| {
            s.entries()
                .iter()
                .filter(|(k, _)| k[0] != b's')
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(without_state(&before), without_state(&after));
    }
    match h.op(Op::Send {
        queue: "q".into(),
        messages: vec![NewMessage::new("ok"), NewMessage::new("much too large")],
    }) {
        Err(QueueError::OversizedMessage {
            queue,
            index,
            size,
            max,
        }) => assert_eq!((queue.as_str(), index, size, max), ("q", 1, 14, 10)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.ack("q", &d[0]),
        Ok(Outcome::Acked),
        "the good receipt still works"
    );
}

#[test]
fn receive_goes_by_priority_then_age_and_respects_delays() {
    let mut h = Harness::new();
    h.create("q", QueueSettings::default());
    h.send(
        "q",
        vec![
            NewMessage::new("low-old"),
            NewMessage::new("high").with_priority(5),
            NewMessage::new("low-new"),
            NewMessage::new("delayed-high")
                .with_priority(9)
                .with_delay_ms(100),
        ],
    );
    assert_eq!(h.stats("q").delayed, 1);
    assert_eq!(payloads(&h.receive("q", 2)), vec![&b"high"[..], b"low-old"]);
    h.now += 100;
    assert_eq!(
        payloads(&h.receive("q", 5)),
        vec![&b"delayed-high"[..], b"low-new"]
    );
    assert!(h.receive("q", 5).is_empty());
}

#[test]
fn a_repeated_idempotency_key_returns_the_first_id_within_the_window() {
    let mut h = Harness::new();
    h.create("q", QueueSettings::default().with_dedup_window_ms(1_000));
    let first = h.send("q", vec![NewMessage::new("a").with_idempotency_key("k")]);
    let again = h.ok(Op::Send {
        queue: "q".into(),
        messages: vec![
            NewMessage::new("b").with_idempotency_key("k"),
            NewMessage::new("c").with_idempotency_key("k2"),
            NewMessage::new("d").with_idempotency_key("k2"),
        ],
    });
    let Outcome::Sent(sent) = again else { panic!() };
    assert_eq!((sent[0].id, sent[0].duplicate), (first[0], true));
    assert!(!sent[1].duplicate);
    assert_eq!(
        (sent[2].id, sent[2].duplicate),
        (sent[1].id, true),
        "a repeat within one batch"
    );
    assert_eq!(h.stats("q").depth, 2);
    // Acknowledged or not, the key is remembered for the window from the first send, then forgotten.
    let d = h.receive("q", 1);
    h.ack("q", &d[0]).expect("ack");
    assert_eq!(
        h.send("q", vec![NewMessage::new("e").with_idempotency_key("k")]),
        first
    );
    h.now += 1_000;
    assert_ne!(
        h.send("q", vec![NewMessage::new("f").with_idempotency_key("k")]),
        first
    );
}

#[test]
fn redelivery_counts_and_invalidates_old_receipts() {
    let mut h = Harness::new();
    h.create("q", QueueSettings::default().with_visibility_timeout_ms(100));
    h.send("q", vec![NewMessage::new("a")]);
    let first = h.receive("q", 1).remove(0);
    assert_eq!((first.receipt.delivery, first.deadline_ms), (1, h.now + 100));
    assert!(h.receive("q", 1).is_empty(), "invisible while in flight");
    assert_eq!(h.p.next_deadline_ms(), Some(1_100));
    h.now += 100;
    assert!(matches!(
        h.ack("q", &first),
        Err(QueueError::ExpiredReceipt { delivery: 1, deadline_ms, .. }) if deadline_ms == 1_100
    ));
    let second = h.receive("q", 1).remove(0);
    assert_eq!(second.receipt.delivery, 2);
    assert!(matches!(
        h.ack("q", &first),
        Err(QueueError::StaleReceipt {
            delivery: 1,
            current: 2,
            ..
        })
    ));
    assert_eq!(h.ack("q", &second), Ok(Outcome::Acked));
    assert!(matches!(
        h.ack("q", &second),
        Err(QueueError::UnknownMessage { .. })
    ));
    let text = QueueError::StaleReceipt {
        id: 1,
        delivery: 1,
        current: 2,
    }
    .to_string();
    assert!(text.contains("delivered again"), "{text}");
}

#[test]
fn extend_visibility_is_a_heartbeat() {
    let mut h = Harness::new();
    h.create("q", QueueSettings::default().with_visibility_timeout_ms(100));
    h.send("q", vec![NewMessage::new("a")]);
    let d = h.receive("q", 1).remove(0);
    h.now += 90;
    assert_eq!(
        h.op(Op::ExtendVisibility {
            queue: "q".into(),
            receipts: vec![d.receipt],
            visibility_timeout_ms: 100
        }),
        Ok(Outcome::Extended(vec![h.now + 100]))
    );
    h.now += 90;
    assert!(
        h.receive("q", 1).is_empty(),
        "still in flight after the original deadline"
    );
    assert_eq!(h.ack("q", &d), Ok(Outcome::Acked));
}

#[test]
fn nack_retries_then_dead_letters_with_history_and_redrive_brings_it_back() {
    let mut h = Harness::new();
    h.create("dlq", QueueSettings::default());
    h.create(
        "q",
        QueueSettings::default()
            .with_max_deliveries(2)
            .with_dead_letter_queue(Some("dlq")),
    );
    let id = h.send("q", vec![NewMessage::new("a")])[0];
    let d = h.receive("q", 1).remove(0);
    h.nack("q", &d, 50, "first failure");
    assert_eq!(h.stats("q").delayed, 1);
    assert!(h.receive("q", 1).is_empty());
    h.now += 50;
    let d = h.receive("q", 1).remove(0);
    assert_eq!(d.receipt.delivery, 2);
    let response = h.full(Op::Nack {
        queue: "q".into(),
        receipts: vec![d.receipt],
        retry_after_ms: 0,
        error: Some("second failure".into()),
    });
    assert_eq!(
        response.events,
        vec![Event::DeadLettered {
            id,
            from: "q".into(),
            to: "dlq".into(),
            reason: "max deliveries".into()
        }]
    );
    assert_eq!(h.stats("q").depth, 0);
    assert_eq!(h.stats("dlq").dead_letters, 1);
    let peeked = h.p.peek("dlq", 10).expect("peek");
    let info = peeked[0].dead_letter.clone().expect("history");
    assert_eq!(
        (info.source.as_str(), info.deliveries, info.last_error.as_deref()),
        ("q", 2, Some("second failure"))
    );
    // Redrive: a filter that matches nothing moves nothing; then one per command.
    let nothing = h.ok(Op::Redrive {
        queue: "dlq".into(),
        filter: RedriveFilter::all().with_error_containing("unrelated"),
        max: 10,
    });
    let Outcome::Redriven(r) = nothing else { panic!() };
    assert!(r.moved.is_empty());
    let Outcome::Redriven(r) = h.ok(Op::Redrive {
        queue: "dlq".into(),
        filter: RedriveFilter::all().with_error_containing("second"),
        max: 1,
    }) else {
        panic!()
    };
    assert_eq!((r.moved, r.more), (vec![id], false));
    let d = h.receive("q", 1).remove(0);
    assert_eq!((d.receipt.id, d.receipt.delivery, d.dead_letter), (id, 1, None));
}

#[test]
fn visibility_timeouts_exhaust_too_and_without_a_dead_letter_queue_the_message_is_parked() {
    let mut h = Harness::new();
    h.create(
        "q",
        QueueSettings::default()
            .with_max_deliveries(1)
            .with_visibility_timeout_ms(10),
    );
    let id = h.send("q", vec![NewMessage::new("a")])[0];
    h.receive("q", 1);
    h.now += 10;
    let response = h.full(Op::Tick);
    assert_eq!(
        response.events,
        vec![Event::Parked {
            id,
            queue: "q".into(),
            reason: "max deliveries".into()
        }]
    );
    let stats = h.stats("q");
    assert_eq!(
        (stats.depth, stats.parked, stats.dead_letters, stats.ready),
        (1, 1, 1, 0)
    );
    assert!(h.receive("q", 1).is_empty(), "parked messages are not delivered");
    assert_eq!(h.p.peek("q", 1).expect("peek")[0].state, MessageState::Parked);
    let Outcome::Redriven(r) = h.ok(Op::Redrive {
        queue: "q".into(),
        filter: RedriveFilter::default(),
        max: 10,
    }) else {
        panic!()
    };
    assert_eq!(r.moved, vec![id]);
    assert_eq!(h.receive("q", 1)[0].receipt.id, id);
}

#[test]
fn terminate_dead_letters_at_once_with_the_reason() {
    let mut h = Harness::new();
    h.create("dlq", QueueSettings::default());
    h.create("q", QueueSettings::default().with_dead_letter_queue(Some("dlq")));
    h.send("q", vec![NewMessage::new("poison")]);
    let d = h.receive("q", 1).remove(0);
    h.ok(Op::Terminate {
        queue: "q".into(),
        receipts: vec![d.receipt],
        reason: "cannot parse".into(),
    });
    let dead = h.receive("dlq", 1).remove(0);
    let info = dead.dead_letter.expect("history");
    assert_eq!((info.reason.as_str(), info.deliveries), ("cannot parse", 1));
}

#[test]
fn fifo_groups_deliver_in_order_one_at_a_time() {
    let mut h = Harness::new();
    h.create("f", QueueSettings::default().with_fifo(true));
    h.send(
        "f",
        vec![
            NewMessage::new("a1").with_group("a"),
            NewMessage::new("a2").with_group("a").with_priority(9),
            NewMessage::new("b1").with_group("b"),
            NewMessage::new("free"),
        ],
    );
    let first = h.receive("f", 10);
    assert_eq!(payloads(&first), vec![&b"a1"[..], b"b1", b"free"]);
    assert!(h.receive("f", 10).is_empty(), "a2 waits for a1");
    assert_eq!(h.stats("f").ready, 1);
    h.nack("f", &first[0], 0, "retry");
    assert_eq!(
        payloads(&h.receive("f", 10)),
        vec![&b"a1"[..]],
        "a1 again before a2"
    );
    assert!(matches!(
        h.op(Op::Send {
            queue: "f".into(),
            messages: vec![]
        }),
        Err(QueueError::InvalidRequest { .. })
    ));
    h.create("plain", QueueSettings::default());
    assert!(matches!(
        h.op(Op::Send {
            queue: "plain".into(),
            messages: vec![NewMessage::new("x").with_group("g")]
        }),
        Err(QueueError::InvalidRequest { .. })
    ));
}

#[test]
fn purge_peek_and_stats() {
    let mut h = Harness::new();
    h.create("q", QueueSettings::default());
    h.send(
        "q",
        vec![NewMessage::new("a"), NewMessage::new("b").with_header("h", "v")],
    );
    h.now += 500;
    h.send("q", vec![NewMessage::new("c").with_delay_ms(1_000)]);
    h.receive("q", 1);
    let stats = h.stats("q");
    assert_eq!(
        (
            stats.depth,
            stats.ready,
            stats.in_flight,
            stats.delayed,
            stats.oldest_age_ms
        ),
        (3, 1, 1, 1, 500)
    );
    let peeked = h.p.peek("q", 10).expect("peek");
    assert_eq!(peeked.len(), 2, "in-flight messages are not shown");
    assert_eq!(peeked[0].headers.get("h").map(String::as_str), Some("v"));
    assert_eq!(
        h.op(Op::Peek {
            queue: "q".into(),
            max: 10
        }),
        Ok(Outcome::Peeked(peeked))
    );
    assert_eq!(
        h.op(Op::Purge { queue: "q".into() }),
        Ok(Outcome::Purged { removed: 3 })
    );
    assert_eq!(h.stats("q"), trestle_queue::QueueStats::default());
}

#[test]
fn retention_expires_messages_and_says_so() {
    let mut h = Harness::new();
    h.create("q", QueueSettings::default().with_retention_ms(Some(1_000)));
    let id = h.send("q", vec![NewMessage::new("a")])[0];
    h.now += 999;
    assert!(h.full(Op::Tick).events.is_empty());
    h.now += 1;
    assert_eq!(
        h.full(Op::Tick).events,
        vec![Event::Expired {
            id,
            queue: "q".into()
        }]
    );
    assert_eq!(h.stats("q").depth, 0);
}

fn targets() -> (Target, Target) {
    (
        Target::new("done", NewMessage::new("all done")),
        Target::new("done", NewMessage::new("failed")),
    )
}

#[test]
fn a_barrier_completes_exactly_once_with_every_result() {
    let mut h = Harness::new();
    h.create("tasks", QueueSettings::default().with_visibility_timeout_ms(10));
    h.create("done", QueueSettings::default());
    let (completion, failure) = targets();
    let Outcome::BarrierSubmitted { barrier, tasks, .. } = h.ok(Op::SubmitBarrier {
        queue: "tasks".into(),
        tasks: vec![NewMessage::new("t0"), NewMessage::new("t1")],
        completion,
        failure,
        idempotency_key: None,
    }) else {
        panic!()
    };
    let d = h.receive("tasks", 2);
    assert_eq!(d[1].barrier.map(|b| b.slot), Some(1));
    h.ok(Op::Ack {
        queue: "tasks".into(),
        acks: vec![AckEntry {
            receipt: d[1].receipt,
            result: Some(b"r1".to_vec()),
        }],
    });
    // Task 0 times out and is delivered twice more: a stale consumer's ack is refused, the newest counts once.
    h.now += 10;
    let again = h.receive("tasks", 2);
    assert_eq!((again.len(), again[0].receipt.id), (1, tasks[0]));
    assert!(h.ack("tasks", &d[0]).is_err());
    let response = h.full(Op::Ack {
        queue: "tasks".into(),
        acks: vec![AckEntry {
            receipt: again[0].receipt,
            result: Some(b"r0".to_vec()),
        }],
    });
    let message = match response.events.as_slice() {
        [Event::BarrierCompleted { barrier: b, message }] if *b == barrier => *message,
        other => panic!("{other:?}"),
    };
    let completion = h.receive("done", 10);
    assert_eq!(completion.len(), 1);
    assert_eq!(completion[0].receipt.id, message);
    assert_eq!(
        completion[0].join,
        Some(JoinInfo::Completed {
            barrier,
            results: vec![b"r0".to_vec(), b"r1".to_vec()]
        })
    );
    // A repeated outcome (as a cross-partition delivery might repeat) changes nothing.
    assert_eq!(
        h.op(Op::BarrierTaskDone {
            barrier,
            slot: 0,
            outcome: TaskOutcome::Done(Vec::new())
        }),
        Ok(Outcome::BarrierTaskRecorded { counted: false })
    );
    assert_eq!(h.stats("done").depth, 1);
}

#[test]
fn a_dead_lettered_task_fails_the_barrier_once() {
    let mut h = Harness::new();
    h.create("tasks", QueueSettings::default().with_max_deliveries(1));
    h.create("done", QueueSettings::default());
    let (completion, failure) = targets();
    let Outcome::BarrierSubmitted { barrier, .. } = h.ok(Op::SubmitBarrier {
        queue: "tasks".into(),
        tasks: vec![
            NewMessage::new("t0"),
            NewMessage::new("t1"),
            NewMessage::new("t2"),
        ],
        completion,
        failure,
        idempotency_key: None,
    }) else {
        panic!()
    };
    let d = h.receive("tasks", 3);
    h.ok(Op::Ack {
        queue: "tasks".into(),
        acks: vec![AckEntry {
            receipt: d[0].receipt,
            result: Some(b"ok".to_vec()),
        }],
    });
    h.nack("tasks", &d[1], 0, "boom");
    h.nack("tasks", &d[2], 0, "boom too");
    let done = h.receive("done", 10);
    assert_eq!(
        payloads(&done),
        vec![&b"failed"[..]],
        "one failure task, no completion"
    );
    match &done[0].join {
        Some(JoinInfo::Failed {
            slot, reason, done, ..
        }) => {
            assert_eq!((*slot, reason.as_str()), (1, "max deliveries"));
            assert_eq!(done.get(&0).map(Vec::as_slice), Some(&b"ok"[..]));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.p.barrier(barrier).expect("barrier").state,
        BarrierState::Failed { message: Some(_) }
    ));
    assert!(
        matches!(
            h.op(Op::DeleteQueue { name: "done".into() }),
            Ok(Outcome::QueueDeleted { .. })
        ),
        "a closed barrier no longer holds its target queues"
    );
}

/// Found by the model test: the second exhausted task read the barrier from the storage, where the first one's
/// change was not written yet, and fired the failure task again.
#[test]
fn two_tasks_exhausted_in_one_tick_fail_their_barrier_once() {
    let mut h = Harness::new();
    h.create(
        "tasks",
        QueueSettings::default()
            .with_max_deliveries(1)
            .with_visibility_timeout_ms(10),
    );
    h.create("done", QueueSettings::default());
    let (completion, failure) = targets();
    h.ok(Op::SubmitBarrier {
        queue: "tasks".into(),
        tasks: vec![NewMessage::new("t0"), NewMessage::new("t1")],
        completion,
        failure,
        idempotency_key: None,
    });
    h.receive("tasks", 2);
    h.now += 10;
    let events = h.full(Op::Tick).events;
    let failed = events
        .iter()
        .filter(|e| matches!(e, Event::BarrierFailed { .. }))
        .count();
    assert_eq!(failed, 1, "{events:?}");
    assert_eq!(h.stats("done").depth, 1);
}

#[test]
fn barrier_tasks_in_another_partition_report_through_the_outbox() {
    let mut home = Harness::with_id(1);
    let mut other = Harness::with_id(2);
    home.create("done", QueueSettings::default());
    other.create("tasks", QueueSettings::default());
    let (completion, failure) = targets();
    let Outcome::BarrierCreated { barrier, .. } = home.ok(Op::CreateBarrier {
        tasks: 1,
        completion,
        failure,
        idempotency_key: None,
    }) else {
        panic!()
    };
    assert!(matches!(
        home.op(Op::DeleteQueue { name: "done".into() }),
        Err(QueueError::QueueInUse { .. })
    ));
    let task = BarrierRef {
        partition: 1,
        barrier,
        slot: 0,
    };
    other.send("tasks", vec![NewMessage::new("t").with_barrier(task)]);
    let d = other.receive("tasks", 1).remove(0);
    let response = other.full(Op::Ack {
        queue: "tasks".into(),
        acks: vec![AckEntry {
            receipt: d.receipt,
            result: Some(b"r".to_vec()),
        }],
    });
    assert!(matches!(response.events.as_slice(), [Event::Outbox(_)]));
    let outbox = other.p.outbox().expect("outbox");
    assert_eq!(outbox.len(), 1);
    // The host delivers at least once: twice here.
    for expected in [true, false] {
        assert_eq!(
            home.op(Op::BarrierTaskDone {
                barrier: outbox[0].task.barrier,
                slot: outbox[0].task.slot,
                outcome: outbox[0].outcome.clone()
            }),
            Ok(Outcome::BarrierTaskRecorded { counted: expected })
        );
    }
    other.ok(Op::OutboxDone { seq: outbox[0].seq });
    assert!(other.p.outbox().expect("outbox").is_empty());
    assert_eq!(home.stats("done").depth, 1);
    assert!(matches!(
        home.op(Op::BarrierTaskDone {
            barrier: 99,
            slot: 0,
            outcome: TaskOutcome::Done(Vec::new())
        }),
        Err(QueueError::UnknownBarrier { barrier: 99 })
    ));
}

#[test]
fn snapshot_restore_and_reopen_give_the_same_state() {
    let mut h = Harness::new();
    h.create("dlq", QueueSettings::default());
    h.create(
        "q",
        QueueSettings::default()
            .with_fifo(true)
            .with_dead_letter_queue(Some("dlq"))
            .with_max_deliveries(1),
    );
    h.send(
        "q",
        vec![
            NewMessage::new("a").with_group("g").with_idempotency_key("k"),
            NewMessage::new("b").with_group("g"),
            NewMessage::new("c").with_delay_ms(50),
        ],
    );
    let d = h.receive("q", 1);
    h.nack("q", &d[0], 0, "x");
    h.receive("q", 1);

    let mut bytes = Vec::new();
    h.p.snapshot(&mut bytes).expect("snapshot");
    let mut restored = Partition::open(MemStorage::new(), 1).expect("open");
    restored.restore(&mut bytes.as_slice()).expect("restore");
    assert!(restored == h.p, "restored from a snapshot");
    let reopened = Partition::open(h.p.storage().clone(), 1).expect("reopen");
    assert!(reopened == h.p, "rebuilt by a scan");

    // A bad snapshot changes nothing.
    let mut garbage: &[u8] = b"TRQUEUE1\x01\0\0\0\0\0\0\0\x01\0\0\0z\0\0\0\0";
    assert!(restored.restore(&mut garbage).is_err());
    assert!(restored == h.p);
}

#[test]
fn bytes_in_bytes_out_and_the_clock_never_goes_back() {
    let mut p = Partition::open(MemStorage::new(), 1).expect("open");
    let reply = p.apply_encoded(1, &[200, 1, 2]);
    let response = Response::decode(&reply).expect("decodes");
    assert!(matches!(response.outcome, Err(QueueError::Undecodable { .. })));
    let create = Command::new(
        5_000,
        Op::CreateQueue {
            name: "q".into(),
            settings: QueueSettings::default(),
        },
    );
    let reply = Response::decode(&p.apply_encoded(2, &create.encode())).expect("decodes");
    assert_eq!(reply.outcome, Ok(Outcome::QueueCreated));
    p.apply(3, Command::new(4_000, Op::Tick));
    assert_eq!((p.clock_ms(), p.last_applied()), (5_000, 3));
}

#[test]
fn a_partition_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Partition<MemStorage>>();
    send_sync::<Command>();
    send_sync::<Response>();
}

/// A storage over one command's transaction, as a host that hands out its key space per command provides: reads
/// go to the stored state, the command's batch is kept for the host to commit.
struct PerCommand<'a> {
    base: &'a MemStorage,
    batch: Option<trestle_queue::WriteBatch>,
}

impl trestle_queue::Storage for PerCommand<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, trestle_queue::StorageError> {
        self.base.get(key)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<trestle_queue::Pairs, trestle_queue::StorageError> {
        self.base.scan_prefix(prefix)
    }

    fn write(&mut self, batch: trestle_queue::WriteBatch) -> Result<(), trestle_queue::StorageError> {
        self.batch = Some(batch);
        Ok(())
    }
}

#[test]
fn a_host_can_attach_a_storage_per_command() {
    use trestle_queue::{Detached, Storage};
    let mut owned = Harness::new();
    let mut stored = MemStorage::new();
    let mut detached = Partition::open(MemStorage::new(), 1)
        .expect("open")
        .with_storage(Detached)
        .0;
    let ops = vec![
        Op::CreateQueue {
            name: "q".into(),
            settings: QueueSettings::default().with_visibility_timeout_ms(10),
        },
        Op::Send {
            queue: "q".into(),
            messages: vec![NewMessage::new("a"), NewMessage::new("b").with_priority(2)],
        },
        Op::Receive {
            queue: "q".into(),
            max: 1,
            visibility_timeout_ms: None,
        },
        Op::Tick,
        Op::Receive {
            queue: "q".into(),
            max: 5,
            visibility_timeout_ms: None,
        },
        Op::Peek {
            queue: "q".into(),
            max: 5,
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        owned.now += 10;
        let expected = owned.full(op.clone());
        let (mut attached, _) = detached.with_storage(PerCommand {
            base: &stored,
            batch: None,
        });
        let response = attached.apply(i as u64 + 1, Command::new(owned.now, op));
        let (back, txn) = attached.with_storage(Detached);
        detached = back;
        let batch = txn.batch.expect("one batch per command");
        stored.write(batch).expect("commit");
        assert_eq!(response, expected, "command {i}");
    }
    assert_eq!(&stored, owned.p.storage());
    let (reopened, _) = detached.with_storage(stored);
    assert!(reopened == owned.p);
}

/// A storage whose reads or writes can be made to fail.
#[derive(Default)]
struct Flaky {
    inner: MemStorage,
    fail_reads: bool,
    fail_writes: bool,
}

impl trestle_queue::Storage for Flaky {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, trestle_queue::StorageError> {
        if self.fail_reads {
            return Err(trestle_queue::StorageError("disk on fire".into()));
        }
        self.inner.get(key)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<trestle_queue::Pairs, trestle_queue::StorageError> {
        self.inner.scan_prefix(prefix)
    }

    fn write(&mut self, batch: trestle_queue::WriteBatch) -> Result<(), trestle_queue::StorageError> {
        if self.fail_writes {
            return Err(trestle_queue::StorageError("disk full".into()));
        }
        self.inner.write(batch)
    }
}

/// Changes the storage under a partition (moving it out and back in).
fn tweak(p: Partition<Flaky>, change: impl FnOnce(&mut Flaky)) -> Partition<Flaky> {
    let (detached, mut storage) = p.with_storage(trestle_queue::Detached);
    change(&mut storage);
    detached.with_storage(storage).0
}

fn flaky_partition() -> Partition<Flaky> {
    let mut p = Partition::open(Flaky::default(), 1).expect("open");
    let ops = [
        Op::CreateQueue {
            name: "q".into(),
            settings: QueueSettings::default().with_visibility_timeout_ms(10),
        },
        Op::Send {
            queue: "q".into(),
            messages: vec![NewMessage::new("a")],
        },
        Op::Receive {
            queue: "q".into(),
            max: 1,
            visibility_timeout_ms: None,
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        assert!(p.apply(i as u64 + 1, Command::new(0, op)).outcome.is_ok());
    }
    p
}

#[test]
fn a_storage_failure_stops_the_partition_instead_of_diverging_or_hanging() {
    // A read failing while a deadline fires: the tick answers the storage error, and so does every later command.
    let mut p = flaky_partition();
    p = tweak(p, |s| s.fail_reads = true);
    assert_eq!(p.storage_failure(), None);
    let response = p.apply(4, Command::new(10, Op::Tick));
    assert!(
        matches!(response.outcome, Err(QueueError::Storage { .. })),
        "{response:?}"
    );
    assert_eq!(p.storage_failure(), Some("disk on fire"));
    p = tweak(p, |s| s.fail_reads = false);
    let later = p.apply(5, Command::new(20, Op::Stats { queue: "q".into() }));
    assert!(matches!(later.outcome, Err(QueueError::Storage { .. })));

    // A write failing: the same.
    let mut p = flaky_partition();
    p = tweak(p, |s| s.fail_writes = true);
    let response = p.apply(4, Command::new(1, Op::Tick));
    assert!(matches!(response.outcome, Err(QueueError::Storage { .. })));
    p = tweak(p, |s| s.fail_writes = false);
    assert!(p.apply(5, Command::new(2, Op::Tick)).outcome.is_err());

    // A read failing before anything changed (a receive reads bodies first): refused, the partition goes on.
    let mut p = flaky_partition();
    p.apply(
        4,
        Command::new(
            1,
            Op::Send {
                queue: "q".into(),
                messages: vec![NewMessage::new("b")],
            },
        ),
    );
    p = tweak(p, |s| s.fail_reads = true);
    let response = p.apply(
        5,
        Command::new(
            2,
            Op::Receive {
                queue: "q".into(),
                max: 1,
                visibility_timeout_ms: None,
            },
        ),
    );
    assert!(matches!(response.outcome, Err(QueueError::Storage { .. })));
    p = tweak(p, |s| s.fail_reads = false);
    let response = p.apply(
        6,
        Command::new(
            3,
            Op::Receive {
                queue: "q".into(),
                max: 1,
                visibility_timeout_ms: None,
            },
        ),
    );
    assert!(matches!(response.outcome, Ok(Outcome::Received(d)) if d.len() == 1));
}

#[test]
fn a_retried_barrier_submission_creates_nothing_twice() {
    let mut h = Harness::new();
    h.create("tasks", QueueSettings::default().with_dedup_window_ms(1_000));
    h.create("done", QueueSettings::default());
    let (completion, failure) = targets();
    let submit = Op::SubmitBarrier {
        queue: "tasks".into(),
        tasks: vec![NewMessage::new("t0"), NewMessage::new("t1")],
        completion: completion.clone(),
        failure: failure.clone(),
        idempotency_key: Some("batch-7".into()),
    };
    let Outcome::BarrierSubmitted {
        barrier,
        tasks,
        duplicate: false,
    } = h.ok(submit.clone())
    else {
        panic!()
    };
    assert_eq!(
        h.ok(submit.clone()),
        Outcome::BarrierSubmitted {
            barrier,
            tasks: tasks.clone(),
            duplicate: true
        }
    );
    assert_eq!(h.stats("tasks").depth, 2);
    // After the window the key is forgotten: a new barrier.
    h.now += 1_000;
    assert!(matches!(
        h.ok(submit),
        Outcome::BarrierSubmitted { barrier: b, duplicate: false, .. } if b != barrier
    ));

    let create = Op::CreateBarrier {
        tasks: 3,
        completion,
        failure,
        idempotency_key: Some("remote-1".into()),
    };
    let Outcome::BarrierCreated { barrier, .. } = h.ok(create.clone()) else {
        panic!()
    };
    assert_eq!(
        h.ok(create),
        Outcome::BarrierCreated {
            barrier,
            duplicate: true
        }
    );
    // A message's key cannot pose as a barrier's.
    assert!(matches!(
        h.op(Op::Send {
            queue: "tasks".into(),
            messages: vec![NewMessage::new("x").with_idempotency_key("\0barrier:batch-7")]
        }),
        Err(QueueError::InvalidRequest { .. })
    ));
}
