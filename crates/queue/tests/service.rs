//! The queue's gRPC API on three trestle-raft nodes, each hosting every partition, used through `QueueClient`
//! and `Worker` as an application would: sharded queues, typed refusals, long polling, retries and dead letters
//! through the worker, redrive, and a join barrier whose tasks spread over partitions.
#![cfg(feature = "raft")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tonic::Code;
use trestle_queue::client::{ClientError, Delivery, QueueClient};
use trestle_queue::server::QueueHostConfig;
use trestle_queue::worker::{Handler, JobError, Worker, WorkerConfig};
use trestle_queue::{NewMessage, QueueError, QueueSettings};
use trestle_raft::testing::wait_for;

mod support;

use support::Cluster;

const PARTITIONS: u32 = 3;

/// Creating a queue waits out the absence lease: shorter than the default keeps these tests quick, and still long
/// enough that the requests of a test trust earlier answers.
const ABSENCE_LEASE: Duration = Duration::from_millis(250);

async fn cluster() -> Cluster {
    Cluster::start(
        QueueHostConfig::default()
            .with_partitions(PARTITIONS)
            .with_absence_lease(ABSENCE_LEASE),
    )
    .await
}

/// Receives and acks everything `queue` holds, through long polls; the payloads.
async fn drain(client: &QueueClient, queue: &str) -> Vec<String> {
    let mut payloads = Vec::new();
    loop {
        let got = client
            .receive(queue, 50, Duration::from_millis(300), None)
            .await
            .unwrap();
        if got.is_empty() {
            return payloads;
        }
        let receipts: Vec<_> = got.iter().map(|d| d.receipt.unwrap()).collect();
        client.ack(queue, &receipts, &[]).await.unwrap();
        payloads.extend(got.iter().map(|d| String::from_utf8(d.payload.clone()).unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_queue_delivers_every_message_once_and_refuses_with_typed_errors() {
    let cluster = cluster().await;
    let client = cluster.client();
    let settings = QueueSettings::default()
        .with_max_message_size(1024)
        .with_dead_letter_queue(Some("jobs-dead"));
    let info = client.create_queue("jobs", PARTITIONS, &settings).await.unwrap();
    assert_eq!(info.partitions.len(), PARTITIONS as usize, "{info:?}");

    // Creating it again: ALREADY_EXISTS. Its dead-letter queue got a shard beside each of its shards.
    let again = client
        .create_queue("jobs", PARTITIONS, &settings)
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            ClientError::Refused {
                code: Code::AlreadyExists,
                ..
            }
        ),
        "{again:?}"
    );
    let listed = client.list_queues().await.unwrap();
    let dead = listed
        .iter()
        .find(|q| q.name == "jobs-dead")
        .expect("dead-letter queue listed");
    assert_eq!(dead.partitions, info.partitions);

    // 60 messages: unkeyed batches (each batch on one shard) and keyed ones (by key), one key repeated.
    let mut sent = BTreeSet::new();
    for batch in 0..5 {
        let messages = (0..6).map(|i| NewMessage::new(format!("b{batch}-{i}"))).collect();
        for s in client.send("jobs", messages).await.unwrap() {
            assert!(!s.duplicate);
            let id = s.id.unwrap();
            sent.insert((id.partition, id.id));
        }
    }
    for i in 0..30 {
        let m = NewMessage::new(format!("k{i}")).with_idempotency_key(format!("key-{i}"));
        let s = client.send("jobs", vec![m]).await.unwrap();
        let id = s[0].id.unwrap();
        sent.insert((id.partition, id.id));
    }
    let repeat = client
        .send(
            "jobs",
            vec![NewMessage::new("k0 again").with_idempotency_key("key-0")],
        )
        .await
        .unwrap();
    assert!(repeat[0].duplicate, "a repeated key enqueues nothing");
    assert_eq!(sent.len(), 60);
    let shards: BTreeSet<u64> = sent.iter().map(|r| r.0).collect();
    assert_eq!(
        shards.len(),
        PARTITIONS as usize,
        "messages spread over every shard: {shards:?}"
    );

    let stats = client.stats("jobs").await.unwrap();
    assert_eq!(stats.total.unwrap().depth, 60);
    assert_eq!(stats.partitions.len(), PARTITIONS as usize);

    let mut payloads = drain(&client, "jobs").await;
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 60, "every message once");
    assert_eq!(client.stats("jobs").await.unwrap().total.unwrap().depth, 0);

    // Refusals keep their meaning across the wire.
    let unknown = client.send("nope", vec![NewMessage::new("x")]).await.unwrap_err();
    assert!(
        matches!(unknown.refusal(), Some(QueueError::UnknownQueue { name }) if name == "nope"),
        "{unknown:?}"
    );
    let big = client
        .send("jobs", vec![NewMessage::new(vec![0u8; 2000])])
        .await
        .unwrap_err();
    assert!(
        matches!(
            big,
            ClientError::Refused {
                code: Code::InvalidArgument,
                error: QueueError::OversizedMessage { max: 1024, .. }
            }
        ),
        "{big:?}"
    );

    // A receipt made stale by a redelivery is refused.
    client.send("jobs", vec![NewMessage::new("slow")]).await.unwrap();
    let first = client
        .receive(
            "jobs",
            1,
            Duration::from_secs(5),
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let stale = first[0].receipt.unwrap();
    let second = client
        .receive("jobs", 1, Duration::from_secs(10), None)
        .await
        .unwrap();
    assert_eq!(
        second[0].receipt.unwrap().id,
        stale.id,
        "redelivered after its visibility timeout"
    );
    let refused = client.ack("jobs", &[stale], &[]).await.unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Refused {
                code: Code::FailedPrecondition,
                error: QueueError::StaleReceipt { .. }
            }
        ),
        "{refused:?}"
    );
    client
        .ack("jobs", &[second[0].receipt.unwrap()], &[])
        .await
        .unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_returns_a_message_sent_while_it_waits() {
    // Looking again only every 20 s: a receive answers sooner only because the entry that stored the message
    // woke it.
    let mut config = QueueHostConfig::default()
        .with_partitions(PARTITIONS)
        .with_absence_lease(ABSENCE_LEASE);
    config.poll_interval = Duration::from_secs(20);
    let cluster = Cluster::start(config).await;
    let client = cluster.client();
    client
        .create_queue("events", 2, &QueueSettings::default())
        .await
        .unwrap();
    for round in 0..3 {
        let waiting = {
            let client = client.clone();
            tokio::spawn(async move { client.receive("events", 1, Duration::from_secs(20), None).await })
        };
        // The receive is waiting (nothing to deliver yet); then a message arrives.
        let payload = format!("hello {round}");
        client
            .send("events", vec![NewMessage::new(payload.clone())])
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the long poll answers once the message is there, well before its 20 s wait")
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, payload.as_bytes());
        client
            .ack("events", &[got[0].receipt.unwrap()], &[])
            .await
            .unwrap();
    }
    cluster.stop().await;
}

/// Which node leads each partition, as every node sees it; `None` while they disagree or one knows no leader.
fn leaders(cluster: &Cluster) -> Option<Vec<(u64, usize)>> {
    let ids: Vec<u64> = cluster.hosts[0].partitions().keys().copied().collect();
    ids.into_iter()
        .map(|id| {
            let leaders: Vec<usize> = (0..cluster.hosts.len())
                .filter(|&i| cluster.hosts[i].partitions()[&id].leads())
                .collect();
            let known: BTreeSet<_> = (0..cluster.hosts.len())
                .map(|i| cluster.hosts[i].partitions()[&id].service().current_leader())
                .collect();
            (leaders.len() == 1 && known.len() == 1 && !known.contains(&None)).then(|| (id, leaders[0]))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_puts_unkeyed_sends_on_a_shard_it_leads() {
    let cluster = cluster().await;
    cluster
        .client()
        .create_queue("local", PARTITIONS, &QueueSettings::default())
        .await
        .unwrap();
    // Each member that leads a partition: its unkeyed sends go there (no forward). Sends during a leadership
    // change are not judged; each member needs 3 judged ones.
    let mut judged_members = 0;
    for node in 0..3 {
        let client = cluster.client_of(node);
        let mut judged = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while judged < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "leadership never settled around node {node}'s sends"
            );
            let before = wait_for(
                "every member to agree on the leaders",
                Duration::from_secs(30),
                || async { leaders(&cluster) },
            )
            .await
            .unwrap();
            let led: BTreeSet<u64> = before
                .iter()
                .filter(|&&(_, n)| n == node)
                .map(|&(id, _)| id)
                .collect();
            if led.is_empty() {
                break;
            }
            let sent = client
                .send("local", vec![NewMessage::new(format!("{node}/{judged}"))])
                .await
                .unwrap();
            if leaders(&cluster).as_ref() != Some(&before) {
                continue;
            }
            let partition = sent[0].id.unwrap().partition;
            assert!(
                led.contains(&partition),
                "node {node} leads {led:?} but put an unkeyed send on partition {partition} (leaders {before:?})"
            );
            judged += 1;
        }
        if judged > 0 {
            judged_members += 1;
        }
    }
    assert!(judged_members > 0, "no member led a partition");
    cluster.stop().await;
}

/// Fails `payload == "bad"` permanently, fails every other message's first delivery, and succeeds otherwise,
/// returning the payload reversed.
struct Flaky {
    failures: AtomicU32,
}

impl Handler for Flaky {
    async fn handle(&self, delivery: &Delivery) -> Result<Vec<u8>, JobError> {
        if delivery.payload == b"bad" {
            return Err(JobError::Permanent("cannot parse".into()));
        }
        if delivery.receipt.unwrap().delivery == 1 {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(JobError::Retry("transient".into()));
        }
        let mut out = delivery.payload.clone();
        out.reverse();
        Ok(out)
    }
}

fn worker_config(queue: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new(queue);
    config.wait = Duration::from_millis(200);
    config.base_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    config.heartbeat = Duration::from_millis(500);
    config.heartbeat_extend = Duration::from_secs(5);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_retries_dead_letters_permanent_failures_and_redrive_brings_them_back() {
    let cluster = cluster().await;
    let client = cluster.client();
    client
        .create_queue(
            "work",
            PARTITIONS,
            &QueueSettings::default().with_dead_letter_queue(Some("work-dead")),
        )
        .await
        .unwrap();
    let mut messages: Vec<NewMessage> = (0..20).map(|i| NewMessage::new(format!("job{i}"))).collect();
    messages.push(NewMessage::new("bad"));
    client.send("work", messages).await.unwrap();

    let handler = Flaky {
        failures: AtomicU32::new(0),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(client.clone(), worker_config("work")).unwrap();
    let running = tokio::spawn(worker.run(handler, async move {
        let _ = stop_rx.await;
    }));
    wait_for(
        "the queue to empty into acks and a dead letter",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let work = client.stats("work").await.ok()?.total?;
                let dead = client.stats("work-dead").await.ok()?.total?;
                (work.depth == 0 && dead.depth == 1).then_some(())
            }
        },
    )
    .await
    .unwrap();
    stop_tx.send(()).unwrap();
    let report = running.await.unwrap();
    assert_eq!(report.acked, 20, "{report:?}");
    assert_eq!(
        report.retried, 20,
        "every job failed its first delivery once: {report:?}"
    );
    assert_eq!(report.terminated, 1, "{report:?}");

    let peeked = client.peek("work-dead", 10).await.unwrap();
    assert_eq!(peeked.len(), 1);
    let dl = peeked[0].dead_letter.as_ref().expect("dead-letter history");
    assert_eq!(dl.source, "work");
    assert!(dl.reason.contains("cannot parse"), "{dl:?}");

    let redriven = client.redrive("work-dead", None, None, 10).await.unwrap();
    assert_eq!(redriven.moved.len(), 1);
    let back = client
        .receive("work", 1, Duration::from_secs(5), None)
        .await
        .unwrap();
    assert_eq!(back[0].payload, b"bad");
    cluster.stop().await;
}

struct Echo;

impl Handler for Echo {
    async fn handle(&self, delivery: &Delivery) -> Result<Vec<u8>, JobError> {
        Ok(delivery.payload.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_barrier_over_a_sharded_queue_joins_every_tasks_result() {
    let cluster = cluster().await;
    let client = cluster.client();
    client
        .create_queue("chunks", PARTITIONS, &QueueSettings::default())
        .await
        .unwrap();
    client
        .create_queue("joined", 1, &QueueSettings::default())
        .await
        .unwrap();
    let tasks: Vec<NewMessage> = (0..9).map(|i| NewMessage::new(format!("chunk{i}"))).collect();
    let submitted = client
        .submit_barrier(
            "chunks",
            tasks,
            ("joined", NewMessage::new("all chunks done")),
            ("joined", NewMessage::new("a chunk failed")),
            Some("video-1"),
        )
        .await
        .unwrap();
    let task_partitions: BTreeSet<u64> = submitted.tasks.iter().map(|t| t.partition).collect();
    assert_eq!(
        task_partitions.len(),
        PARTITIONS as usize,
        "tasks spread over every shard"
    );
    // Submitting again with the same key creates nothing new.
    let again = client
        .submit_barrier(
            "chunks",
            (0..9).map(|i| NewMessage::new(format!("chunk{i}"))).collect(),
            ("joined", NewMessage::new("all chunks done")),
            ("joined", NewMessage::new("a chunk failed")),
            Some("video-1"),
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.barrier, submitted.barrier);
    assert_eq!(
        client.stats("chunks").await.unwrap().total.unwrap().depth,
        9,
        "no task twice"
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(client.clone(), worker_config("chunks")).unwrap();
    let running = tokio::spawn(worker.run(Echo, async move {
        let _ = stop_rx.await;
    }));
    // The completion arrives once every task's outcome reached the barrier's partition (through the outboxes of
    // the other partitions).
    let done: Vec<Delivery> = wait_for("the join's completion message", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let got = client
                .receive("joined", 1, Duration::from_millis(200), None)
                .await
                .ok()?;
            (!got.is_empty()).then_some(got)
        }
    })
    .await
    .unwrap();
    stop_tx.send(()).unwrap();
    running.await.unwrap();
    assert_eq!(done[0].payload, b"all chunks done");
    let join = done[0].join.as_ref().expect("join results");
    assert!(join.completed);
    assert_eq!(join.results.len(), 9);
    for i in 0..9u32 {
        assert_eq!(join.results[&i], format!("chunk{i}").into_bytes(), "slot {i}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ack_across_partitions_that_one_refuses_names_what_the_others_settled() {
    let cluster = cluster().await;
    let client = cluster.client();
    client
        .create_queue("split", PARTITIONS, &QueueSettings::default())
        .await
        .unwrap();
    // Keyed sends spread over the partitions (each goes where its key hashes).
    let messages: Vec<NewMessage> = (0..16)
        .map(|k| NewMessage::new(format!("m{k}")).with_idempotency_key(format!("key-{k}")))
        .collect();
    client.send("split", messages).await.unwrap();
    let mut held = Vec::new();
    while held.len() < 16 {
        let got = client
            .receive("split", 16, Duration::from_secs(5), Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(!got.is_empty(), "16 messages were sent, {} received", held.len());
        held.extend(got.iter().filter_map(|d| d.receipt));
    }
    let short = held[0];
    let long = *held
        .iter()
        .find(|r| r.partition != short.partition)
        .expect("16 keys over 3 partitions use more than one");
    // `short` goes back to the queue and is delivered again: its first receipt is stale from then on.
    client
        .nack("split", &[short], Duration::ZERO, "again")
        .await
        .unwrap();
    wait_for(
        "the message to be delivered again",
        Duration::from_secs(30),
        || async {
            let got = client
                .receive(
                    "split",
                    1,
                    Duration::from_millis(500),
                    Some(Duration::from_secs(60)),
                )
                .await
                .unwrap();
            got.first()
                .and_then(|d| d.receipt)
                .filter(|r| r.id == short.id && r.partition == short.partition && r.delivery == 2)
        },
    )
    .await
    .unwrap();
    let err = client.ack("split", &[short, long], &[]).await.unwrap_err();
    match err.refusal() {
        Some(QueueError::PartlySettled {
            settled,
            total,
            partition,
            reason,
        }) => {
            assert_eq!(settled, &vec![(long.partition, long.id)]);
            assert_eq!(*total, 2);
            assert_eq!(*partition, short.partition);
            assert!(reason.contains("stale receipt"), "{reason}");
        }
        other => panic!("expected PartlySettled, got {other:?} ({err})"),
    }
    // Only the settled message is gone.
    let stats = client.stats("split").await.unwrap();
    assert_eq!(stats.total.unwrap().depth, 15, "{stats:?}");
    cluster.stop().await;
}
