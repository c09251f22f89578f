//! A second service beside the coordination store: named counters as their own Raft group on the same nodes,
//! ports and disk, written against the replicated-service layer (a state machine, a service, nothing else). It
//! passes the `GroupApp` conformance suite, and keeps every acknowledged write through leader changes, snapshots
//! and restarts, with writes sent through every node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TestCluster, wait_for};
use rand::Rng;
use serde::{Deserialize, Serialize};
use trestle_raft::{
    GroupId, NoRequest, PutRequest, Replicated, ReplicatedSettings, Service, StateMachine, StoreApp,
    StoreCommand, testing::check_group_app,
};

// ---- The whole service: a state machine and a service declaration. ----

/// A map of named counters.
#[derive(Default)]
struct Counters {
    values: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize)]
enum Command {
    Add { name: String, delta: i64 },
    Reset { name: String },
    Batch(Vec<Command>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Reply {
    Value(i64),
    Refused(String),
    Batch(Vec<Reply>),
}

impl StateMachine for Counters {
    type Command = Command;
    type Response = Reply;

    fn apply(&mut self, _index: u64, command: Command) -> Reply {
        match command {
            Command::Add { name, delta } => {
                let value = self.values.entry(name).or_default();
                match value.checked_add(delta) {
                    Some(sum) => {
                        *value = sum;
                        Reply::Value(sum)
                    }
                    None => Reply::Refused(format!("{value} + {delta} overflows")),
                }
            }
            Command::Reset { name } => Reply::Value(self.values.remove(&name).unwrap_or(0)),
            Command::Batch(commands) => {
                Reply::Batch(commands.into_iter().map(|c| self.apply(0, c)).collect())
            }
        }
    }

    fn undecodable(&mut self, _index: u64, error: String) -> Reply {
        Reply::Refused(format!("undecodable command: {error}"))
    }

    fn batch(commands: Vec<Command>) -> Command {
        Command::Batch(commands)
    }

    fn unbatch(response: Reply, count: usize) -> Option<Vec<Reply>> {
        match response {
            Reply::Batch(replies) if replies.len() == count => Some(replies),
            _ => None,
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(&self.values).map_err(|e| e.to_string())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.values = postcard::from_bytes(snapshot).map_err(|e| format!("undecodable snapshot: {e}"))?;
        Ok(())
    }
}

struct CounterService;

impl Service for CounterService {
    type Machine = Counters;
    type LeaderRequest = NoRequest;
    type LeaderReply = NoRequest;

    async fn on_leader(
        &self,
        _host: &Replicated<Self>,
        request: &NoRequest,
    ) -> Result<Option<NoRequest>, tonic::Status> {
        match *request {}
    }
}

// ---- Its tests. ----

fn random_counter_command(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
    let one = |rng: &mut rand_chacha::ChaCha8Rng| {
        let name = format!("c{}", rng.random_range(0..4));
        if rng.random_ratio(1, 8) {
            Command::Reset { name }
        } else {
            // Now and then a delta large enough to overflow, which must be refused the same way everywhere.
            let delta = if rng.random_ratio(1, 20) {
                i64::MAX
            } else {
                rng.random_range(-5..=5)
            };
            Command::Add { name, delta }
        }
    };
    let command = if rng.random_ratio(1, 10) {
        Command::Batch((0..rng.random_range(1..4)).map(|_| one(rng)).collect())
    } else {
        one(rng)
    };
    postcard::to_allocvec(&command).unwrap()
}

fn random_store_command(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
    fn one(rng: &mut rand_chacha::ChaCha8Rng, depth: u32) -> StoreCommand {
        let key = |rng: &mut rand_chacha::ChaCha8Rng| format!("k{}", rng.random_range(0..6)).into_bytes();
        match rng.random_range(0..if depth == 0 { 7 } else { 6 }) {
            0 | 1 => StoreCommand::Put(PutRequest {
                key: key(rng),
                value: vec![b'v'; rng.random_range(0..8)],
                lease: if rng.random_ratio(1, 4) {
                    rng.random_range(1..4)
                } else {
                    0
                },
                prev_kv: rng.random_bool(0.5),
                ..Default::default()
            }),
            2 => StoreCommand::DeleteRange(trestle_raft::DeleteRangeRequest {
                key: key(rng),
                range_end: if rng.random_bool(0.3) {
                    b"k9".to_vec()
                } else {
                    Vec::new()
                },
                prev_kv: rng.random_bool(0.5),
            }),
            3 => StoreCommand::Txn(trestle_raft::TxnRequest {
                compare: vec![trestle_raft::Compare {
                    result: trestle_raft::CompareResult::Equal,
                    target: trestle_raft::CompareTarget::Version(rng.random_range(0..3)),
                    key: key(rng),
                    range_end: Vec::new(),
                }],
                success: vec![trestle_raft::RequestOp::Put(PutRequest {
                    key: key(rng),
                    value: b"t".to_vec(),
                    ..Default::default()
                })],
                failure: vec![trestle_raft::RequestOp::DeleteRange(
                    trestle_raft::DeleteRangeRequest {
                        key: key(rng),
                        ..Default::default()
                    },
                )],
            }),
            4 => StoreCommand::LeaseGrant {
                id: rng.random_range(1..4),
                ttl: rng.random_range(1..60),
            },
            5 => {
                if rng.random_bool(0.5) {
                    StoreCommand::LeaseRevoke {
                        id: rng.random_range(1..4),
                    }
                } else {
                    StoreCommand::Compact(rng.random_range(0..40))
                }
            }
            _ => StoreCommand::Batch((0..rng.random_range(1..4)).map(|_| one(rng, depth + 1)).collect()),
        }
    }
    postcard::to_allocvec(&one(rng, 0)).unwrap()
}

#[test]
fn counters_conform() {
    check_group_app("counters", Counters::default, random_counter_command);
}

#[test]
fn the_coordination_store_conforms() {
    check_group_app("store", StoreApp::default, random_store_command);
}

const COUNTERS: GroupId = 7;

async fn start_counters(cluster: &TestCluster, i: usize) -> Replicated<CounterService> {
    cluster
        .node(i)
        .start_service(
            COUNTERS,
            Counters::default(),
            CounterService,
            ReplicatedSettings::default(),
        )
        .await
        .expect("the counters service starts")
}

/// The node that leads the counters group, as all running members see it.
async fn counters_leader(services: &BTreeMap<usize, Replicated<CounterService>>) -> usize {
    wait_for("a counters leader", Duration::from_secs(10), || async {
        let leaders: BTreeSet<_> = services
            .values()
            .map(|s| s.raft().metrics().borrow().current_leader)
            .collect();
        let leader = (*leaders.iter().next()?)?;
        if leaders.len() != 1 {
            return None;
        }
        services
            .iter()
            .find(|(_, s)| s.node_id() == leader)
            .map(|(i, _)| *i)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_keep_every_acknowledged_add_through_leader_changes_snapshots_and_restarts() {
    let mut cluster = TestCluster::start(3).await;
    let mut services = BTreeMap::new();
    for i in 0..3 {
        services.insert(i, start_counters(&cluster, i).await);
    }
    let members: BTreeMap<_, _> = (0..3)
        .map(|i| (cluster.node(i).id(), cluster.node(i).peer_node()))
        .collect();
    services[&0].raft().initialize(members).await.unwrap();

    let add = || Command::Add {
        name: "plays".into(),
        delta: 1,
    };
    let (mut acknowledged, mut unknown) = (0i64, 0i64);
    for round in 0..3 {
        // Eight writers at once through every running node: followers forward, and concurrent adds on a node
        // leave together as one entry.
        let mut writers = tokio::task::JoinSet::new();
        for (w, service) in services.values().cycle().take(8).enumerate() {
            let service = service.clone();
            writers.spawn(async move {
                let mut outcomes = Vec::new();
                for _ in 0..10 + w {
                    outcomes.push(service.propose(add()).await);
                }
                outcomes
            });
        }
        while let Some(outcomes) = writers.join_next().await {
            for outcome in outcomes.unwrap() {
                match outcome {
                    Ok(Reply::Value(value)) => {
                        acknowledged += 1;
                        assert!(value >= 1, "{value}");
                    }
                    Ok(other) => panic!("an add answered {other:?}"),
                    // A write whose fate is unknown (none is expected while every node runs).
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                        unknown += 1;
                    }
                }
            }
        }
        // Each member takes a snapshot, so the restart below restores one and replays the log after it.
        for service in services.values() {
            service.raft().trigger().snapshot().await.unwrap();
        }
        // Stop the leader: the others elect a new one and keep counting; then bring it back.
        let leader = counters_leader(&services).await;
        services.remove(&leader);
        cluster.stop(leader).await;
        for service in services.values() {
            match service.propose(add()).await {
                Ok(_) => acknowledged += 1,
                Err(_) => unknown += 1,
            }
        }
        // The coordination store on the same nodes keeps serving meanwhile.
        cluster.wait_for_leader().await;
        let survivor = *services.keys().next().unwrap();
        cluster
            .node(survivor)
            .store()
            .propose(StoreCommand::Put(PutRequest {
                key: format!("round-{round}").into_bytes(),
                value: b"done".to_vec(),
                ..Default::default()
            }))
            .await
            .unwrap();
        cluster.restart(leader).await;
        services.insert(leader, start_counters(&cluster, leader).await);
    }

    // A linearizable read on every replica counts every acknowledged add, and at most the unknown ones more.
    for (i, service) in &services {
        service.read_barrier().await.unwrap();
        let value = service.read(|app| app.values.get("plays").copied().unwrap_or(0));
        assert!(
            value >= acknowledged && value <= acknowledged + unknown,
            "node {i}: {value} counted, {acknowledged} acknowledged, {unknown} unknown"
        );
    }
}
