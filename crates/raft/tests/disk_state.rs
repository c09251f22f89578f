//! A service whose state lives on disk ([`DiskBacked`]): named counters kept in their group's key space of each
//! node's RocksDB. Every acknowledged add survives leader stops, snapshots, a follower that catches up by
//! installing a snapshot (the log it missed purged), and restarts; a restarted member reopens its state
//! instead of replaying the history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TestCluster, wait_for};
use serde::{Deserialize, Serialize};
use trestle_raft::WatchReceiver as _;
use trestle_raft::{
    DiskBacked, DiskStateMachine, GroupId, KeyRead, NoRequest, Node, Replicated, ReplicatedSettings, Service,
    SnapshotError, StateTxn,
};

const GROUP: GroupId = 11;

/// Named counters on disk. `applied` counts the commands this instance applied since it opened (shared with
/// the test, which checks that a restart does not apply the history again).
struct DiskCounters {
    applied: Arc<AtomicU64>,
}

#[derive(Serialize, Deserialize)]
enum Command {
    Add { name: String, delta: i64 },
    Batch(Vec<Command>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Reply {
    Value(i64),
    Refused(String),
    Batch(Vec<Reply>),
}

fn value_of(state: &dyn KeyRead, name: &str) -> Result<i64, String> {
    match state.get(name.as_bytes()).map_err(|e| e.to_string())? {
        None => Ok(0),
        Some(raw) => raw
            .try_into()
            .map(i64::from_le_bytes)
            .map_err(|raw: Vec<u8>| format!("a stored counter of {} bytes", raw.len())),
    }
}

impl DiskStateMachine for DiskCounters {
    type Command = Command;
    type Response = Reply;

    fn apply(&mut self, _index: u64, command: Command, state: &mut StateTxn<'_>) -> Reply {
        match command {
            Command::Add { name, delta } => {
                self.applied.fetch_add(1, Ordering::Relaxed);
                let current = match value_of(state, &name) {
                    Ok(value) => value,
                    Err(e) => return Reply::Refused(e),
                };
                match current.checked_add(delta) {
                    Some(sum) => {
                        state.put(name.into_bytes(), sum.to_le_bytes());
                        Reply::Value(sum)
                    }
                    None => Reply::Refused(format!("{current} + {delta} overflows")),
                }
            }
            Command::Batch(commands) => {
                Reply::Batch(commands.into_iter().map(|c| self.apply(0, c, state)).collect())
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

    fn load(&mut self, _state: &dyn KeyRead) -> Result<(), SnapshotError> {
        Ok(())
    }
}

struct DiskCounterService;

impl Service for DiskCounterService {
    type Machine = DiskBacked<DiskCounters>;
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

struct Running {
    service: Replicated<DiskCounterService>,
    applied: Arc<AtomicU64>,
}

async fn start(node: &Node) -> Running {
    let applied = Arc::new(AtomicU64::new(0));
    let machine = DiskBacked::open(
        DiskCounters {
            applied: applied.clone(),
        },
        node.key_space(GROUP),
    )
    .expect("the state opens");
    let service = node
        .start_service(GROUP, machine, DiskCounterService, ReplicatedSettings::default())
        .await
        .expect("the service starts");
    node.found_group(service.raft()).await.expect("founding");
    Running { service, applied }
}

async fn leader(running: &BTreeMap<usize, Running>) -> usize {
    wait_for("a leader", Duration::from_secs(10), || async {
        let leaders: BTreeSet<_> = running
            .values()
            .map(|r| r.service.raft().metrics().borrow_watched().current_leader)
            .collect();
        let leader = (*leaders.iter().next()?)?;
        if leaders.len() != 1 {
            return None;
        }
        running
            .iter()
            .find(|(_, r)| r.service.node_id() == leader)
            .map(|(i, _)| *i)
    })
    .await
}

fn add() -> Command {
    Command::Add {
        name: "plays".into(),
        delta: 1,
    }
}

/// Adds through every running member; returns (acknowledged, unknown).
async fn write(running: &BTreeMap<usize, Running>, per_member: usize) -> (i64, i64) {
    let mut writers = tokio::task::JoinSet::new();
    for r in running.values() {
        let service = r.service.clone();
        writers.spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..per_member {
                outcomes.push(service.propose(add()).await);
            }
            outcomes
        });
    }
    let (mut acknowledged, mut unknown) = (0, 0);
    while let Some(outcomes) = writers.join_next().await {
        for outcome in outcomes.unwrap() {
            match outcome {
                Ok(Reply::Value(_)) => acknowledged += 1,
                Ok(other) => panic!("an add answered {other:?}"),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                    unknown += 1;
                }
            }
        }
    }
    (acknowledged, unknown)
}

async fn counted(r: &Running) -> i64 {
    r.service.read_barrier().await.unwrap();
    r.service.read(|m| value_of(m.state(), "plays")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_on_disk_keep_every_acknowledged_add_and_restart_without_replaying() {
    let mut cluster = TestCluster::start(3).await;
    let mut running = BTreeMap::new();
    for i in 0..3 {
        running.insert(i, start(cluster.node(i)).await);
    }
    let (mut acknowledged, mut unknown) = write(&running, 20).await;

    // A follower stops; the others go on, snapshot and purge the log it would need: it must catch up by
    // installing a snapshot built from a frozen view of the leader's key space.
    let lead = leader(&running).await;
    let away = (lead + 1) % 3;
    running.remove(&away);
    cluster.stop(away).await;
    let (a, u) = write(&running, 30).await;
    (acknowledged, unknown) = (acknowledged + a, unknown + u);
    for r in running.values() {
        let raft = r.service.raft();
        raft.trigger().snapshot().await.unwrap();
        let snapshot = wait_for("a snapshot", Duration::from_secs(10), || async {
            raft.metrics().borrow_watched().snapshot
        })
        .await;
        raft.trigger().purge_log(snapshot.index).await.unwrap();
    }
    // The leader postpones a purge while a replication to the stopped member has those entries in flight; it
    // purges between retries. Writes keep it trying.
    let leader_raft = running[&lead].service.raft().clone();
    let purge_to = leader_raft.metrics().borrow_watched().snapshot.unwrap().index;
    let writer = running[&lead].service.clone();
    let outcomes = std::sync::Mutex::new((0, 0));
    wait_for("the leader to purge its log", Duration::from_secs(10), || async {
        let outcome = writer.propose(add()).await;
        let mut counts = outcomes.lock().unwrap();
        match outcome {
            Ok(_) => counts.0 += 1,
            Err(_) => counts.1 += 1,
        }
        let purged = leader_raft.metrics().borrow_watched().purged;
        purged.filter(|p| p.index >= purge_to).map(|_| ())
    })
    .await;
    let (a, u) = outcomes.into_inner().unwrap();
    (acknowledged, unknown) = (acknowledged + a, unknown + u);
    cluster.restart(away).await;
    running.insert(away, start(cluster.node(away)).await);
    let (a, u) = write(&running, 10).await;
    (acknowledged, unknown) = (acknowledged + a, unknown + u);
    let returned = running[&away].service.raft().clone();
    wait_for(
        "the returning member to install a snapshot",
        Duration::from_secs(10),
        || async { returned.metrics().borrow_watched().snapshot },
    )
    .await;

    // Every member counts every acknowledged add (and at most the unknown ones more).
    for (i, r) in &running {
        let value = counted(r).await;
        assert!(
            value >= acknowledged && value <= acknowledged + unknown,
            "node {i}: {value} counted, {acknowledged} acknowledged, {unknown} unknown"
        );
    }

    // Restart every member: each reopens its key space and applies none of the history again, though its last
    // snapshot is older than what it applied.
    for r in running.values() {
        r.service.raft().trigger().snapshot().await.unwrap();
    }
    let before = counted(&running[&0]).await;
    let (a, u) = write(&running, 5).await;
    (acknowledged, unknown) = (acknowledged + a, unknown + u);
    let after_writes = counted(&running[&0]).await;
    assert!(after_writes > before);
    running.clear();
    for i in 0..3 {
        cluster.stop(i).await;
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }
    for i in 0..3 {
        running.insert(i, start(cluster.node(i)).await);
    }
    for (i, r) in &running {
        let value = counted(r).await;
        assert_eq!(value, after_writes, "node {i} after the restart");
        assert_eq!(
            r.applied.load(Ordering::Relaxed),
            0,
            "node {i} applied history again after a restart"
        );
        assert!(value >= acknowledged && value <= acknowledged + unknown);
    }
    cluster.shutdown().await;
}
