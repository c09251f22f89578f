//! The clients: tasks on the node hosts that read, write and compare-and-set a few keys through the node's
//! [`Store`], and the history they record (invoke / ok / fail / info, simulated time).
//!
//! A read is a read barrier (read index from the leader, local apply caught up) then a local read: `fail` when
//! the barrier fails, since a read has no effect. A write is a `Put` proposal and a compare-and-set a `Txn`
//! comparing the value: `ok` when applied (with the revision it landed at, for the lost-write check), `fail` when
//! applied with a definite "no" (the compare did not hold, or the store rejected it), `info` for any other error
//! (a timeout, a leader change, a dead forward: the write may have landed). A client on a crashed host never
//! completes its operation: the recorder closes it as `info` at the end. After an `info` a client takes a new
//! process id, as Jepsen's do.

use std::collections::BTreeMap;
use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trestle_etcd::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, Revision, Store,
    StoreCommand, StoreOutcome, StoreResult, TxnRequest,
};

use super::{Plant, SimConfig};
use crate::history::value::Value;
use crate::history::{Event, EventType, Process};

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Workload and faults.
    Run,
    /// Healed; clients only read.
    FinalReads,
    /// Clients finish what they started and stop.
    Drain,
    /// Checking.
    Done,
}

/// A write or compare-and-set the store acknowledged: `key` holds `value` as of `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Acked {
    pub(super) key: String,
    pub(super) value: i64,
    pub(super) revision: Revision,
}

/// One node's slot: its current store (none while it is down or starting).
#[derive(Debug, Default)]
pub(super) struct NodeSlot {
    pub(super) store: Option<Store>,
    pub(super) boots: usize,
}

/// Everything the hosts and the driver share. The simulation runs on one thread, so one mutex is plenty.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) phase: Phase,
    pub(super) nodes: Vec<NodeSlot>,
    pub(super) recorder: Recorder,
    pub(super) acked: Vec<Acked>,
    /// Operations invoked and not yet completed, per node (a crash forgets its node's: they never complete).
    pub(super) in_flight: Vec<usize>,
    plant: Option<Plant>,
    planted: bool,
    ok_reads: usize,
}

impl Shared {
    pub(super) fn new(config: &SimConfig) -> Self {
        Shared {
            phase: Phase::Run,
            nodes: (0..config.nodes).map(|_| NodeSlot::default()).collect(),
            recorder: Recorder::default(),
            acked: Vec::new(),
            in_flight: vec![0; config.nodes],
            plant: config.plant,
            planted: false,
            ok_reads: 0,
        }
    }

    /// Restarts so far (boots after the first, over every node).
    pub(super) fn restarts(&self) -> usize {
        self.nodes.iter().map(|n| n.boots.saturating_sub(1)).sum()
    }

    /// Node `n` crashed or is restarting: its store is gone and its clients' operations will never complete.
    pub(super) fn node_down(&mut self, n: usize) {
        self.nodes[n].store = None;
        self.in_flight[n] = 0;
        self.recorder.orphan(n);
    }

    /// The live stores, by node index.
    pub(super) fn stores(&self) -> Vec<(usize, Store)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.store.clone().map(|s| (i, s)))
            .collect()
    }
}

/// Where an open invocation was made.
#[derive(Clone, Debug)]
pub(super) struct OpenAt {
    /// The node whose store the client used.
    pub(super) node: usize,
    /// That node's Raft state at the invocation.
    pub(super) state: String,
    /// The node crashed or restarted since: the operation will never complete, and that is not its fault.
    pub(super) orphaned: bool,
}

/// An operation that has been running far longer than the store's request timeout allows.
#[derive(Clone, Debug)]
pub(super) struct Overdue {
    pub(super) process: i64,
    pub(super) f: String,
    pub(super) key: String,
    pub(super) invoked: Duration,
    pub(super) at: OpenAt,
}

/// The history as it is recorded, and the invocations still open.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    events: Vec<Event>,
    open: BTreeMap<i64, Event>,
    /// Where each open invocation was made (for reports on stuck operations).
    open_where: BTreeMap<i64, OpenAt>,
    next_process: i64,
}

impl Recorder {
    fn new_process(&mut self) -> i64 {
        let p = self.next_process;
        self.next_process += 1;
        p
    }

    fn invoke(&mut self, event: Event) {
        if let Process::Client(p) = event.process {
            self.open.insert(p, event.clone());
        }
        self.events.push(event);
    }

    fn complete(&mut self, event: Event) {
        if let Process::Client(p) = event.process {
            self.open.remove(&p);
            self.open_where.remove(&p);
        }
        self.events.push(event);
    }

    /// The invocations still open, one line each (for reports).
    pub(super) fn open_lines(&self) -> Vec<String> {
        self.open
            .iter()
            .map(|(p, e)| {
                format!(
                    "process {} {} key {} invoked at {:.3}s on {}",
                    e.process,
                    e.f,
                    e.key.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
                    e.time.unwrap_or_default() as f64 / 1e9,
                    self.open_where.get(p).map_or("?", |w| w.state.as_str())
                )
            })
            .collect()
    }

    /// Node `node` went down: its clients' open operations will never complete.
    fn orphan(&mut self, node: usize) {
        for at in self.open_where.values_mut() {
            if at.node == node {
                at.orphaned = true;
            }
        }
    }

    /// Open operations of live clients invoked before `before`.
    pub(super) fn overdue(&self, before: Duration) -> Vec<Overdue> {
        self.open
            .iter()
            .filter_map(|(p, e)| {
                let at = self.open_where.get(p)?;
                let invoked = Duration::from_nanos(e.time.unwrap_or_default());
                (!at.orphaned && invoked < before).then(|| Overdue {
                    process: *p,
                    f: e.f.clone(),
                    key: e.key.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
                    invoked,
                    at: at.clone(),
                })
            })
            .collect()
    }

    /// The history, every invocation still open closed as `info` at `end` (its client's host crashed).
    pub(super) fn finish(&mut self, end: Duration) -> Vec<Event> {
        let open = std::mem::take(&mut self.open);
        for (_, invoke) in open {
            let mut info = Event::new(
                EventType::Info,
                invoke.process.clone(),
                invoke.f.clone(),
                invoke.value,
            )
            .with_time(nanos(end))
            .with_error("never completed: its host crashed");
            info.key = invoke.key;
            self.events.push(info);
        }
        std::mem::take(&mut self.events)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Simulated time on the current host.
fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// What a client does next.
#[derive(Clone, Debug)]
enum Request {
    Read,
    Write(i64),
    Cas(i64, i64),
}

impl Request {
    fn f(&self) -> &'static str {
        match self {
            Request::Read => "read",
            Request::Write(_) => "write",
            Request::Cas(..) => "cas",
        }
    }

    fn value(&self) -> Value {
        match self {
            Request::Read => Value::Nil,
            Request::Write(v) => Value::Int(*v),
            Request::Cas(old, new) => Value::List(vec![Value::Int(*old), Value::Int(*new)]),
        }
    }
}

enum Completion {
    Ok(Value, Option<Revision>),
    Fail(String),
    Info(String),
}

/// The settings a client needs, copied out of the configuration.
#[derive(Clone, Debug)]
pub(super) struct ClientSettings {
    pub(super) keys: u64,
    pub(super) key_period: Duration,
    pub(super) values: i64,
    /// The end of the workload: final reads read the keys in use then.
    pub(super) run_until: Duration,
}

fn key_name(k: u64) -> String {
    format!("sim/r/{k}")
}

/// One client: runs operations against `store` until the run drains. `seed` is this client's own.
pub(super) async fn run(
    shared: std::sync::Arc<parking_lot::Mutex<Shared>>,
    node: usize,
    store: Store,
    settings: ClientSettings,
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut process = shared.lock().recorder.new_process();
    loop {
        let phase = shared.lock().phase;
        let request = match phase {
            Phase::Run => match rng.random_range(0..10) {
                0..=3 => Request::Read,
                4..=6 => Request::Write(rng.random_range(0..settings.values)),
                _ => Request::Cas(
                    rng.random_range(0..settings.values),
                    rng.random_range(0..settings.values),
                ),
            },
            Phase::FinalReads => Request::Read,
            Phase::Drain | Phase::Done => return,
        };
        let at = now().min(settings.run_until.saturating_sub(Duration::from_millis(1)));
        let epoch = (at.as_nanos() / settings.key_period.as_nanos().max(1)) as u64;
        let key = epoch * settings.keys + rng.random_range(0..settings.keys);
        let name = key_name(key);
        let invoke = Event::new(
            EventType::Invoke,
            Process::Client(process),
            request.f(),
            request.value(),
        )
        .with_key(Value::Int(i64::try_from(key).unwrap_or(i64::MAX)))
        .with_time(nanos(now()));
        let at_invoke = {
            let rx = store.raft().metrics();
            let m = rx.borrow_watched();
            OpenAt {
                node,
                state: format!(
                    "n{node} ({:?}, term {}, leader {:?})",
                    m.state, m.current_term, m.current_leader
                ),
                orphaned: false,
            }
        };
        {
            let mut s = shared.lock();
            s.in_flight[node] += 1;
            s.recorder.invoke(invoke.clone());
            s.recorder.open_where.insert(process, at_invoke);
        }
        let completion = perform(&store, &name, &request).await;
        let at = nanos(now());
        {
            let mut s = shared.lock();
            s.in_flight[node] = s.in_flight[node].saturating_sub(1);
            let (kind, value, error) = match completion {
                Completion::Ok(mut value, revision) => {
                    if let (Some(revision), Request::Write(v) | Request::Cas(_, v)) = (revision, &request) {
                        let mut value = *v;
                        if s.plant == Some(Plant::PhantomAck) && !s.planted {
                            s.planted = true;
                            value = settings.values + 1_000;
                        }
                        s.acked.push(Acked {
                            key: name.clone(),
                            value,
                            revision,
                        });
                    }
                    if matches!(request, Request::Read) {
                        s.ok_reads += 1;
                        if s.plant == Some(Plant::PhantomRead) && !s.planted && s.ok_reads == 5 {
                            s.planted = true;
                            value = Value::Int(settings.values + 1_000);
                        }
                    }
                    (EventType::Ok, value, None)
                }
                Completion::Fail(why) => (EventType::Fail, request.value(), Some(why)),
                Completion::Info(why) => (EventType::Info, request.value(), Some(why)),
            };
            let mut event = Event::new(kind, Process::Client(process), request.f(), value).with_time(at);
            event.key = invoke.key.clone();
            event.error = error;
            s.recorder.complete(event);
            if kind == EventType::Info {
                process = s.recorder.new_process();
            }
        }
        let pause = rng.random_range(5..40);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Runs one request against the store.
async fn perform(store: &Store, key: &str, request: &Request) -> Completion {
    match request {
        Request::Read => {
            if let Err(status) = store.read_barrier().await {
                return Completion::Fail(status.to_string());
            }
            let range = RangeRequest {
                key: key.as_bytes().to_vec(),
                ..RangeRequest::default()
            };
            match store.read(|app| app.store().range(&range)) {
                Ok(resp) => Completion::Ok(
                    resp.kvs.first().map(|kv| parse(&kv.value)).unwrap_or_default(),
                    None,
                ),
                Err(e) => Completion::Fail(e.to_string()),
            }
        }
        Request::Write(v) => {
            let put = StoreCommand::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: v.to_string().into_bytes(),
                ..PutRequest::default()
            });
            written(store.propose(put).await, Value::Int(*v), |o| {
                matches!(o, StoreOutcome::Put(_))
            })
        }
        Request::Cas(old, new) => {
            let txn = StoreCommand::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Value(old.to_string().into_bytes()),
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: new.to_string().into_bytes(),
                    ..PutRequest::default()
                })],
                failure: Vec::new(),
            });
            written(
                store.propose(txn).await,
                request.value(),
                |o| matches!(o, StoreOutcome::Txn(t) if t.succeeded),
            )
        }
    }
}

/// The completion of a write: `ok` when applied and `took` says it took effect, `fail` when applied without
/// effect, `info` when the outcome is unknown.
fn written(
    result: Result<StoreResult, tonic::Status>,
    value: Value,
    took: impl Fn(&StoreOutcome) -> bool,
) -> Completion {
    match result {
        Ok(StoreResult {
            revision,
            outcome: Ok(outcome),
            ..
        }) => {
            if took(&outcome) {
                Completion::Ok(value, Some(revision))
            } else {
                Completion::Fail("compare failed".to_owned())
            }
        }
        Ok(StoreResult { outcome: Err(e), .. }) => Completion::Fail(e.to_string()),
        Err(status) => Completion::Info(status.to_string()),
    }
}

fn parse(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    text.parse::<i64>()
        .map(Value::Int)
        .unwrap_or(Value::Str(text.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_invocations_close_as_info() {
        let mut r = Recorder::default();
        let p = r.new_process();
        r.invoke(
            Event::new(EventType::Invoke, Process::Client(p), "write", Value::Int(3)).with_key(Value::Int(0)),
        );
        let events = r.finish(Duration::from_secs(2));
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].kind, EventType::Info);
        assert_eq!(events[1].key, Some(Value::Int(0)));
        assert_eq!(events[1].time, Some(2_000_000_000));
        assert_eq!(parse(b"4"), Value::Int(4));
    }
}
