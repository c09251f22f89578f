//! An operation's storage reads are bounded by its own size (its batch, its count), not by the queue's, and every
//! command is written as one batch: counted through a `Storage` wrapper over a queue of thousands of messages.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use trestle_queue::{
    AckEntry, Command, MemStorage, NewMessage, Op, Outcome, Pairs, Partition, QueueSettings, RedriveFilter,
    Storage, StorageError, WriteBatch,
};

/// Counts reads (gets, and pairs returned by scans) and write batches.
#[derive(Default)]
struct Counting {
    inner: MemStorage,
    reads: AtomicU64,
    writes: u64,
}

impl Storage for Counting {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StorageError> {
        let pairs = self.inner.scan_prefix(prefix)?;
        self.reads.fetch_add(pairs.len() as u64, Ordering::Relaxed);
        Ok(pairs)
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        self.writes += 1;
        self.inner.write(batch)
    }
}

const MESSAGES: u64 = 3_000;

#[test]
fn reads_per_operation_do_not_grow_with_the_queue() {
    let mut p = Partition::open(Counting::default(), 1).expect("open");
    let index = Cell::new(0);
    let apply = |p: &mut Partition<Counting>, now: u64, op: Op| {
        index.set(index.get() + 1);
        let before = p.storage().reads.load(Ordering::Relaxed);
        let outcome = p
            .apply(index.get(), Command::new(now, op))
            .outcome
            .expect("applies");
        (outcome, p.storage().reads.load(Ordering::Relaxed) - before)
    };
    apply(
        &mut p,
        0,
        Op::CreateQueue {
            name: "dead".into(),
            settings: QueueSettings::default(),
        },
    );
    apply(
        &mut p,
        0,
        Op::CreateQueue {
            name: "q".into(),
            settings: QueueSettings::default()
                .with_max_deliveries(1)
                .with_dead_letter_queue(Some("dead")),
        },
    );
    for chunk in 0..MESSAGES / 100 {
        let messages = (0..100)
            .map(|i| NewMessage::new(format!("{chunk}-{i}")))
            .collect();
        apply(
            &mut p,
            1,
            Op::Send {
                queue: "q".into(),
                messages,
            },
        );
    }

    let (_, reads) = apply(
        &mut p,
        2,
        Op::Peek {
            queue: "q".into(),
            max: 10,
        },
    );
    assert!(reads <= 20, "peek of 10 read {reads} records");

    let (outcome, reads) = apply(
        &mut p,
        2,
        Op::Receive {
            queue: "q".into(),
            max: 10,
            visibility_timeout_ms: None,
        },
    );
    assert!(reads <= 20, "receive of 10 read {reads} records");
    let Outcome::Received(deliveries) = outcome else {
        panic!()
    };
    let acks = deliveries.iter().map(|d| AckEntry::from(d.receipt)).collect();
    let (_, reads) = apply(
        &mut p,
        3,
        Op::Ack {
            queue: "q".into(),
            acks,
        },
    );
    assert!(reads <= 20, "ack of 10 read {reads} records");

    // Everything else is delivered once and times out: all of it dead-letters in one tick.
    apply(
        &mut p,
        4,
        Op::Receive {
            queue: "q".into(),
            max: 10_000,
            visibility_timeout_ms: Some(10),
        },
    );
    let (_, reads) = apply(&mut p, 14, Op::Tick);
    assert!(
        reads >= MESSAGES - 10,
        "the tick moved every message ({reads} reads)"
    );
    assert_eq!(p.stats("dead").expect("stats").dead_letters, MESSAGES - 10);

    let (outcome, reads) = apply(
        &mut p,
        15,
        Op::Redrive {
            queue: "dead".into(),
            filter: RedriveFilter::all(),
            max: 10,
        },
    );
    assert!(reads <= 30, "redrive of 10 read {reads} records");
    let Outcome::Redriven(r) = outcome else { panic!() };
    assert!(r.more && r.moved.len() == 10);
}
