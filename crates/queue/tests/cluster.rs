//! A queue partition on three trestle-raft nodes, its state in each node's RocksDB: sends through every member
//! while the leader stops gracefully, a visibility timeout that redelivers by the leader clock alone, and a
//! full restart that keeps every message.
#![cfg(feature = "raft")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use trestle_queue::host::{PartitionError, PartitionHandle};
use trestle_queue::{AckEntry, MessageId, NewMessage, Op, Outcome, QueueSettings};
use trestle_raft::testing::{free_loopback_port, loopback_node_config, wait_for};
use trestle_raft::{Node, WatchReceiver as _};

const GROUP: u64 = 100;

struct Cluster {
    configs: Vec<trestle_raft::NodeConfig>,
    nodes: Vec<Option<Node>>,
    handles: Vec<Option<PartitionHandle>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        support::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| (free_loopback_port(), free_loopback_port()))
            .collect();
        let founders: Vec<(String, String)> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| (format!("n{i}"), format!("http://127.0.0.1:{peer}")))
            .collect();
        let configs = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                loopback_node_config(
                    &format!("n{i}"),
                    &dir.path().join(format!("n{i}")),
                    *client,
                    *peer,
                    founders.clone(),
                )
            })
            .collect();
        let mut cluster = Self {
            configs,
            nodes: vec![None, None, None],
            handles: vec![None, None, None],
            _dir: dir,
        };
        for i in 0..3 {
            cluster.start_node(i).await;
        }
        cluster
    }

    async fn start_node(&mut self, i: usize) {
        let node = Node::start(self.configs[i].clone()).await.expect("node starts");
        let handle = PartitionHandle::start(&node, GROUP, 1)
            .await
            .expect("partition starts");
        node.found_group(handle.service().raft()).await.expect("founding");
        self.nodes[i] = Some(node);
        self.handles[i] = Some(handle);
    }

    async fn stop(&mut self, i: usize) {
        self.handles[i] = None;
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    fn handle(&self, i: usize) -> &PartitionHandle {
        self.handles[i].as_ref().expect("running")
    }

    async fn leader(&self) -> usize {
        wait_for("a leader", Duration::from_secs(10), || async {
            let id = self.handles.iter().flatten().next()?.service().current_leader()?;
            self.handles
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| h.service().node_id() == id))
        })
        .await
        .unwrap()
    }
}

/// Drains the queue through `handle`, acking everything; the ids received.
async fn drain(handle: &PartitionHandle) -> Vec<MessageId> {
    let mut ids = Vec::new();
    loop {
        let (outcome, _) = handle
            .run(Op::Receive {
                queue: "jobs".into(),
                max: 100,
                visibility_timeout_ms: None,
            })
            .await
            .unwrap();
        let Outcome::Received(deliveries) = outcome else {
            panic!("{outcome:?}")
        };
        if deliveries.is_empty() {
            return ids;
        }
        let acks = deliveries.iter().map(|d| AckEntry::from(d.receipt)).collect();
        ids.extend(deliveries.iter().map(|d| d.receipt.id));
        assert_eq!(
            handle
                .run(Op::Ack {
                    queue: "jobs".into(),
                    acks
                })
                .await
                .unwrap()
                .0,
            Outcome::Acked
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_keeps_every_acknowledged_send_through_a_leader_stop_and_a_full_restart() {
    let mut cluster = Cluster::start().await;
    cluster.leader().await;
    let (outcome, _) = cluster
        .handle(1)
        .run(Op::CreateQueue {
            name: "jobs".into(),
            settings: QueueSettings::default(),
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::QueueCreated);
    // Creating it again is refused, and changes nothing.
    let again = cluster
        .handle(2)
        .run(Op::CreateQueue {
            name: "jobs".into(),
            settings: QueueSettings::default(),
        })
        .await;
    assert!(matches!(again, Err(PartitionError::Refused(_))), "{again:?}");

    // Producers on every member; the leader stops gracefully halfway.
    let mut acknowledged = BTreeSet::new();
    let mut unknown = 0usize;
    let send = |i: usize, n: usize| {
        let handle = cluster.handle(i).clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for k in 0..n {
                let message = NewMessage::new(format!("job {i}-{k}"));
                outcomes.push(
                    handle
                        .run(Op::Send {
                            queue: "jobs".into(),
                            messages: vec![message],
                        })
                        .await,
                );
            }
            outcomes
        })
    };
    let producers: Vec<_> = (0..3).map(|i| send(i, 30)).collect();
    let leader = cluster.leader().await;
    wait_for("some sends", Duration::from_secs(10), || async {
        let (outcome, _) = cluster
            .handle(leader)
            .run(Op::Stats { queue: "jobs".into() })
            .await
            .ok()?;
        matches!(outcome, Outcome::Stats(stats) if stats.depth >= 10).then_some(())
    })
    .await
    .unwrap();
    let outcomes = producers;
    cluster.stop(leader).await;
    for producer in outcomes {
        for outcome in producer.await.unwrap() {
            match outcome {
                Ok((Outcome::Sent(sent), _)) => acknowledged.extend(sent.iter().map(|s| s.id)),
                Ok((other, _)) => panic!("a send answered {other:?}"),
                Err(PartitionError::Unavailable(_)) => unknown += 1,
                Err(e) => panic!("a send failed: {e}"),
            }
        }
    }
    cluster.start_node(leader).await;

    // A received message not acked within its visibility timeout comes back, by the leader clock alone.
    let survivor = (leader + 1) % 3;
    let (outcome, _) = cluster
        .handle(survivor)
        .run(Op::Receive {
            queue: "jobs".into(),
            max: 1,
            visibility_timeout_ms: Some(300),
        })
        .await
        .unwrap();
    let Outcome::Received(first) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(first.len(), 1);
    let (id, deadline) = (first[0].receipt.id, first[0].deadline_ms);
    // Nothing is proposed here meanwhile: only the leader clock's tick can move the partition's clock past the
    // deadline (read locally, without a barrier).
    let handle = cluster.handle(survivor).clone();
    wait_for(
        "the leader clock to pass the visibility deadline",
        Duration::from_secs(10),
        || async {
            let clock = handle
                .service()
                .read(|m| m.machine().partition().map(|p| p.clock_ms()))?;
            (clock >= deadline).then_some(())
        },
    )
    .await
    .unwrap();
    let (outcome, _) = handle
        .run(Op::Peek {
            queue: "jobs".into(),
            max: 1000,
        })
        .await
        .unwrap();
    let Outcome::Peeked(messages) = outcome else {
        panic!("{outcome:?}")
    };
    let back = messages
        .iter()
        .find(|m| m.id == id)
        .expect("the message is still there");
    assert_eq!(back.state, trestle_queue::MessageState::Ready, "{back:?}");
    assert_eq!(back.deliveries, 1);

    // Every member stops, then starts again on its data.
    for i in 0..3 {
        cluster.stop(i).await;
    }
    for i in 0..3 {
        cluster.start_node(i).await;
    }
    cluster.leader().await;
    let drained = drain(cluster.handle(0)).await;
    let received: BTreeSet<MessageId> = drained.iter().copied().collect();
    assert_eq!(
        received.len(),
        drained.len(),
        "a message was delivered twice in one drain"
    );
    let lost: Vec<_> = acknowledged.difference(&received).collect();
    assert!(lost.is_empty(), "acknowledged sends lost: {lost:?}");
    assert!(
        received.len() <= acknowledged.len() + unknown,
        "{} received, {} acknowledged, {unknown} unknown",
        received.len(),
        acknowledged.len()
    );
    for i in 0..3 {
        let raft = cluster.handle(i).service().raft().clone();
        assert!(raft.metrics().borrow_watched().running_state.is_ok());
    }
    for i in 0..3 {
        cluster.stop(i).await;
    }
}
