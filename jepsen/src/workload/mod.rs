//! Workloads: what the clients do, as a [`Workload`] that generates operations and opens a [`Session`] per client
//! process that performs them against the cluster.
//!
//! A workload is plugged in by implementing the two traits and adding it to [`workload_by_name`]. Generation is
//! sans-IO and seeded (each client draws from its own seeded generator, so the seed fixes the operation mix); the
//! session does the I/O and classifies the outcome:
//!
//! - `ok`: it took effect; `fail`: it certainly did not (a read that errored, a CAS whose comparison failed, a
//!   request refused before it was sent);
//! - `info`: unknown (a timeout, a dropped connection after sending). The runner retires the process id after an
//!   `info` and continues with a fresh one (`id + concurrency`), with a fresh session.
//!
//! A session may keep per-process state (a lease, a lock's guard, a leadership): the `lock`, `lock-unfenced` and
//! `election` workloads do, and [`Session::plan`] lets that state pick the next operation (a holder appends, then
//! releases; a client without the lock acquires it).

mod barrier;
mod cache;
mod election;
mod lock;
mod queue;
mod register;
mod set;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use rand::RngCore;

use crate::checker::CheckModel;
use crate::history::EventType;
use crate::history::value::Value;

pub use barrier::BarrierWorkload;
pub use cache::CacheWorkload;
pub use election::ElectionWorkload;
pub use lock::LockWorkload;
pub use queue::QueueWorkload;
pub use register::RegisterWorkload;
pub use set::SetWorkload;

/// An operation to perform: the invocation's `f`, key and value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OpRequest {
    /// The function (`read`, `write`, `cas`, `add`, ...).
    pub f: String,
    /// The key, for workloads split per key.
    pub key: Option<Value>,
    /// The argument.
    pub value: Value,
}

impl OpRequest {
    /// An operation.
    pub fn new(f: impl Into<String>, key: Option<Value>, value: Value) -> OpRequest {
        OpRequest {
            f: f.into(),
            key,
            value,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Completion {
    /// `Ok`, `Fail` or `Info`.
    pub kind: EventType,
    /// The result (what a read saw; for writes, usually the value written).
    pub value: Value,
    /// Why it failed or is unknown.
    pub error: Option<String>,
}

impl Completion {
    /// It took effect with this result.
    pub fn ok(value: Value) -> Completion {
        Completion {
            kind: EventType::Ok,
            value,
            error: None,
        }
    }

    /// It certainly did not take effect.
    pub fn fail(value: Value, error: impl Into<String>) -> Completion {
        Completion {
            kind: EventType::Fail,
            value,
            error: Some(error.into()),
        }
    }

    /// Nobody knows whether it took effect.
    pub fn info(value: Value, error: impl Into<String>) -> Completion {
        Completion {
            kind: EventType::Info,
            value,
            error: Some(error.into()),
        }
    }
}

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One client process's connection to the cluster.
pub trait Session: Send {
    /// Performs `op`. The runner bounds it with the operation timeout (then it is `info`, or `fail` for an
    /// operation [`Workload::is_read_only`] says has no effect).
    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion>;

    /// The operation this process performs next, given the one the workload generated (the runner calls it
    /// before recording the invocation). A stateful session turns the generated operation into the one its state
    /// calls for: a lock client that holds nothing acquires, a holder appends the generated element, then
    /// releases. The default performs the generated operation.
    fn plan(&mut self, generated: OpRequest) -> OpRequest {
        generated
    }
}

/// A workload: an operation generator, a session factory and the checker model for its histories.
///
/// A minimal one, adding unique elements to a set through etcd Puts:
///
/// ```
/// use rand::{Rng, RngCore};
/// use trestle_jepsen::{BoxFuture, CheckModel, Completion, OpRequest, Session, Value, Workload};
///
/// struct Adds;
///
/// impl Workload for Adds {
///     fn name(&self) -> &'static str { "adds" }
///     fn model(&self) -> CheckModel { CheckModel::Set }
///     fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest {
///         let e = op_number as i64 * 10 + rng.random_range(0..10);
///         OpRequest::new("add", None, Value::Int(e))
///     }
///     fn is_read_only(&self, op: &OpRequest) -> bool { op.f == "read" }
///     fn final_ops(&self, _: u64) -> Vec<OpRequest> { vec![OpRequest::new("read", None, Value::Nil)] }
///     fn open(&self, client: etcd_client::Client) -> Box<dyn Session> { Box::new(AddSession(client)) }
/// }
///
/// struct AddSession(etcd_client::Client);
///
/// impl Session for AddSession {
///     fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
///         Box::pin(async move {
///             match self.0.put(format!("adds/{}", op.value), "", None).await {
///                 Ok(_) => Completion::ok(op.value.clone()),
///                 // A real workload tells "never sent" (fail) from "unknown" (info), and reads the set back.
///                 Err(e) => Completion::info(op.value.clone(), e.to_string()),
///             }
///         })
///     }
/// }
/// ```
pub trait Workload: Send + Sync {
    /// The name on the command line (`register`, `set`).
    fn name(&self) -> &'static str;

    /// The model `trestle-jepsen check --model` uses for its histories.
    fn model(&self) -> CheckModel;

    /// The next operation of a client. `op_number` counts operations over all clients (workloads use it to move
    /// on to fresh keys).
    fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest;

    /// Whether an operation has no effect (a timed-out read is then `fail`, not `info`).
    fn is_read_only(&self, op: &OpRequest) -> bool;

    /// Operations to run once the cluster is healed and quiet, each until it succeeds or a deadline passes
    /// (`ops_generated` is how many operations were generated).
    fn final_ops(&self, ops_generated: u64) -> Vec<OpRequest>;

    /// A session for a new client process.
    fn open(&self, client: etcd_client::Client) -> Box<dyn Session>;

    /// A session for a new client process that may also reach the cluster through `peer`, another node's client
    /// endpoint. The lock workloads write their protected resource through it while their lock session lives on
    /// `client`'s node, so that a holder whose session's node is stalled keeps writing, as a client of a separate
    /// store would. The default ignores `peer`.
    fn open_with_peer(&self, client: etcd_client::Client, peer: &str) -> Box<dyn Session> {
        let _ = peer;
        self.open(client)
    }

    /// A session for a new client process, given the endpoint `client` is connected to and, for the clients of
    /// the run (not the final operations), `peer` (see [`Workload::open_with_peer`]). Workloads that speak another
    /// API than etcd's on the client port (the queue's) connect to `endpoint` themselves. The default opens
    /// through [`Workload::open_with_peer`] when there is a peer, else [`Workload::open`].
    fn open_at(&self, client: etcd_client::Client, endpoint: &str, peer: Option<&str>) -> Box<dyn Session> {
        let _ = endpoint;
        match peer {
            Some(peer) => self.open_with_peer(client, peer),
            None => self.open(client),
        }
    }

    /// Extra `trestle serve` options every node is started with (the queue workloads host the queue with
    /// `--queue-partitions`). The default adds none.
    fn serve_args(&self) -> Vec<String> {
        Vec::new()
    }

    /// Prepares the cluster once it has a leader, before the clients start (the queue workloads create their
    /// queues); `endpoints` are every node's client endpoint. An error ends the run without a verdict. The
    /// default does nothing.
    fn setup<'a>(&'a self, endpoints: &'a [String]) -> BoxFuture<'a, Result<(), String>> {
        let _ = endpoints;
        Box::pin(async { Ok(()) })
    }

    /// What to expect of this workload's verdict, when that is not simply "valid" (the run's summary prints it
    /// next to the verdict): `lock-unfenced` is expected to be found invalid under faults.
    fn expectation(&self) -> Option<&'static str> {
        None
    }

    /// Whether every node also runs a cache node (`trestle cache serve`) beside `trestle serve`, which the
    /// nemeses treat as part of the node (a kill or a pause takes both; partitions cut the clients off from the
    /// cache nodes on the minority side). The default: no.
    fn hosts_cache(&self) -> bool {
        false
    }

    /// Called once every cache node accepts connections, before [`Workload::setup`] (only when
    /// [`Workload::hosts_cache`]): `nodes[i]` is where a client dials node `i`'s cache node. An error ends the run
    /// without a verdict. The default does nothing.
    fn attach_cache(&self, nodes: &[SocketAddr]) -> Result<(), String> {
        let _ = nodes;
        Ok(())
    }
}

/// The workloads `trestle-jepsen test --workload` knows.
pub const WORKLOADS: [&str; 8] = [
    "register",
    "set",
    "lock",
    "lock-unfenced",
    "election",
    "queue",
    "barrier",
    "cache",
];

/// The workload called `name`, if any.
pub fn workload_by_name(name: &str) -> Option<Arc<dyn Workload>> {
    match name {
        "register" => Some(Arc::new(RegisterWorkload::default())),
        "set" => Some(Arc::new(SetWorkload::default())),
        "lock" => Some(Arc::new(LockWorkload::fenced())),
        "lock-unfenced" => Some(Arc::new(LockWorkload::unfenced())),
        "election" => Some(Arc::new(ElectionWorkload::default())),
        "queue" => Some(Arc::new(QueueWorkload::default())),
        "barrier" => Some(Arc::new(BarrierWorkload::default())),
        "cache" => Some(Arc::new(CacheWorkload::default())),
        _ => None,
    }
}

/// Whether an error certainly happened before the request left the client (so a write did not take effect).
pub(crate) fn not_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("Connection refused") || text.contains("tcp connect error") || text.contains("InvalidUri")
}

/// `fail` when the request was never sent or has no effect, else `info`.
pub(crate) fn failure(e: &etcd_client::Error, read_only: bool, value: Value) -> Completion {
    if read_only || not_sent(e) {
        Completion::fail(value, e.to_string())
    } else {
        Completion::info(value, e.to_string())
    }
}
