//! The example service of the integration tests: named counters, written against the replicated-service layer
//! (a state machine and a service declaration, nothing else). Included by trestle-raft's tests and by
//! trestle-etcd's, which run it beside the coordination store.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use trestle_raft::{
    GroupId, NoRequest, Node, Replicated, ReplicatedSettings, Service, SnapshotError, StateMachine,
};

// ---- The whole service: a state machine and a service declaration. ----

/// A map of named counters.
#[derive(Default)]
pub struct Counters {
    pub values: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize)]
pub enum Command {
    Add { name: String, delta: i64 },
    Reset { name: String },
    Batch(Vec<Command>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
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

    fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<(), SnapshotError> {
        postcard::to_io(&self.values, out).map_err(SnapshotError::invalid)?;
        Ok(())
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> Result<(), SnapshotError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        self.values = postcard::from_bytes(&bytes).map_err(SnapshotError::invalid)?;
        Ok(())
    }
}

pub struct CounterService;

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

/// A random encoded command: mostly adds (some overflowing), some resets, some batches.
pub fn random_counter_command(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
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

/// The counters' group in the tests.
pub const COUNTERS: GroupId = 7;

/// Starts (or restarts) the counters service on `node` and founds its group on a new cluster.
pub async fn start_counters(node: &Node) -> Replicated<CounterService> {
    let service = node
        .start_service(
            COUNTERS,
            Counters::default(),
            CounterService,
            ReplicatedSettings::default(),
        )
        .await
        .expect("the counters service starts");
    node.found_group(service.raft()).await.expect("founding");
    service
}
