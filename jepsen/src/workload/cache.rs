//! The `cache` workload: trestle-cache's replicated client against the cache nodes (`trestle cache serve`) that
//! the harness runs beside every `trestle serve` node ([`Workload::hosts_cache`]). Checked by the `cache` checker
//! (`checker/cache.rs`): after the faults heal, no deleted key comes back, and the two zones agree on every key
//! within `checker::cache::CONVERGENCE_BOUND` of the heal.
//!
//! Node `i`'s cache node is in zone `a` when `i` is even, `b` when it is odd. The workload builds two
//! `trestle_cache::Client`s over all of them, one whose local zone is `a` and one whose local zone is `b`, each
//! shared by the client processes of its zone, as the processes of one service share a client. Both acknowledge
//! a write only once every zone took it (`Ack::All`), and use short waits so that convergence has a short bound:
//! a request timeout of 500 ms, a breaker that opens at half of the last 10 calls failing (at least 3) and probes
//! again after a fixed 200 ms, background retries paused at most 200 ms and not capped by a retry budget, and
//! tombstones that live `TOMBSTONE_TTL` (15 s: longer than a fault window, 6 s at most, so a delete that a zone
//! missed during one is retried until it lands).
//!
//! Each client process takes a writer slot when its session opens (the lowest free one; it is given back when the
//! session ends, after an `info`), and the slot owns `KEYS_PER_WRITER` keys, `cache/<slot*4 + j>`: only that
//! session writes them, so a key's writes never overlap, except with one of unknown outcome left behind by the
//! slot's previous session. The process's zone is its slot's parity. Operations (the generator draws the function
//! and a number; the session turns the number into a key: one of its own for writes, any key for reads):
//!
//! - `set v` (40%): `v` is unique (the run's operation number), stored as its decimal text with no expiry; `ok`
//!   when both zones took it; `fail` when every zone's breaker was open (nothing was sent); `info` otherwise (a
//!   zone may have taken it, and the client retries the other with a tombstone).
//! - `delete` (20%): `Client::delete` (a tombstone in every zone), classified the same way.
//! - `read` (40%): `Client::get`; `ok` with the value or nil (a miss), `fail` on error.
//! - `sweep i` (the final operations, after the heal; no key): every key of every slot ever taken, read through
//!   both clients at once; the result lists `[key a b]`, each answer the value, nil or `{error ...}`. `ok` when
//!   both zones answered every key alike; otherwise `fail`, with what was read, so that the runner sweeps again
//!   (for up to 20 s per final operation). The first sweep runs until the zones agree; `STABLE_SWEEPS` more
//!   follow, each after `SWEEP_SPACING`, reading every key again.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, RngCore};
use trestle_breaker::{CircuitBreakerConfig, SlidingWindow, WaitInOpen};
use trestle_cache::{Ack, Client, ClientConfig, ClientError, NodeSpec};

use super::{BoxFuture, Completion, OpRequest, Session, Workload};
use crate::checker::CheckModel;
use crate::history::value::Value;

/// Keys each writer slot owns.
pub(crate) const KEYS_PER_WRITER: usize = 4;
/// How long delete tombstones live, and so how long a zone that missed a write is retried.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(15);
/// Time allowed for one request to one node.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a node's breaker stays open before it is probed again.
const BREAKER_WAIT: Duration = Duration::from_millis(200);
/// The longest pause between background retries.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Sweeps after the first one that finds the zones agreeing.
pub(crate) const STABLE_SWEEPS: i64 = 5;
/// The pause before each of those sweeps.
pub(crate) const SWEEP_SPACING: Duration = Duration::from_millis(500);
/// The zones, by node parity.
pub(crate) const ZONES: [&str; 2] = ["a", "b"];

/// The zone of node `i`.
pub(crate) fn zone_of(i: usize) -> &'static str {
    ZONES[i % ZONES.len()]
}

/// The name of key number `index`.
pub(crate) fn key_name(index: usize) -> String {
    format!("cache/{index}")
}

/// The `cache` workload (see the module docs).
#[derive(Default)]
#[non_exhaustive]
pub struct CacheWorkload {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// One client per zone, local zone `a` then `b`; set by [`Workload::attach_cache`].
    clients: OnceLock<[Client; 2]>,
    writers: Mutex<Writers>,
}

#[derive(Default)]
struct Writers {
    /// Slots given back by ended sessions.
    free: Vec<usize>,
    /// Slots ever handed out: keys `0..taken * KEYS_PER_WRITER` exist.
    taken: usize,
}

impl Shared {
    fn keys(&self) -> usize {
        self.writers.lock().taken * KEYS_PER_WRITER
    }
}

/// A client with `local` as its local zone and the workload's settings.
fn client_config(nodes: &[NodeSpec], local: &str) -> ClientConfig {
    let breaker = CircuitBreakerConfig::default()
        .with_failure_rate_threshold(50.0)
        .with_sliding_window(SlidingWindow::Count { size: 10 })
        .with_minimum_calls(3)
        .with_permitted_calls_in_half_open(1)
        .with_wait_in_open(WaitInOpen::Fixed(BREAKER_WAIT));
    ClientConfig::new(nodes.to_vec(), local)
        .with_write_ack(Ack::All)
        .with_timeout(REQUEST_TIMEOUT)
        .with_breaker(breaker)
        .with_max_retry_pause(MAX_RETRY_PAUSE)
        .with_retry_budget(None)
        .with_tombstone_ttl(TOMBSTONE_TTL)
}

impl Workload for CacheWorkload {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn model(&self) -> CheckModel {
        CheckModel::Cache
    }

    fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest {
        let v = i64::try_from(op_number).unwrap_or(i64::MAX);
        // The key is drawn here and mapped by the session (its own keys for writes, any key for reads).
        let pick = Some(Value::Int(rng.random_range(0..1_000_000)));
        match rng.random_range(0..10) {
            0..4 => OpRequest::new("set", pick, Value::Int(v)),
            4..6 => OpRequest::new("delete", pick, Value::Nil),
            _ => OpRequest::new("read", pick, Value::Nil),
        }
    }

    fn is_read_only(&self, op: &OpRequest) -> bool {
        matches!(op.f.as_str(), "read" | "sweep")
    }

    fn final_ops(&self, _ops_generated: u64) -> Vec<OpRequest> {
        (0..=STABLE_SWEEPS)
            .map(|i| OpRequest::new("sweep", None, Value::Int(i)))
            .collect()
    }

    /// A sweeper: the final operations' session.
    fn open(&self, _client: etcd_client::Client) -> Box<dyn Session> {
        Box::new(Sweeper {
            shared: Arc::clone(&self.shared),
        })
    }

    /// The run's client processes (`peer` given) write and read; the final operations (no `peer`) sweep.
    fn open_at(&self, client: etcd_client::Client, _endpoint: &str, peer: Option<&str>) -> Box<dyn Session> {
        if peer.is_none() {
            return self.open(client);
        }
        let slot = {
            let mut writers = self.shared.writers.lock();
            writers.free.sort_unstable_by(|a, b| b.cmp(a));
            match writers.free.pop() {
                Some(slot) => slot,
                None => {
                    writers.taken += 1;
                    writers.taken - 1
                }
            }
        };
        Box::new(Writer {
            shared: Arc::clone(&self.shared),
            slot,
        })
    }

    fn hosts_cache(&self) -> bool {
        true
    }

    fn attach_cache(&self, nodes: &[SocketAddr]) -> Result<(), String> {
        if nodes.len() < ZONES.len() {
            return Err(format!(
                "the cache workload needs a node in each of its {} zones, so at least {} nodes, not {}",
                ZONES.len(),
                ZONES.len(),
                nodes.len()
            ));
        }
        let specs: Vec<NodeSpec> = nodes
            .iter()
            .enumerate()
            .map(|(i, addr)| NodeSpec::new(format!("n{i}"), *addr, zone_of(i)))
            .collect();
        let a = Client::new(client_config(&specs, ZONES[0])).map_err(|e| e.to_string())?;
        let b = Client::new(client_config(&specs, ZONES[1])).map_err(|e| e.to_string())?;
        self.shared
            .clients
            .set([a, b])
            .map_err(|_| "the cache clients were already attached".to_owned())
    }
}

/// Whether a failed write surely reached no node: every zone's breaker was open, so nothing was sent.
fn never_sent(e: &ClientError) -> bool {
    match e {
        ClientError::NoNodes | ClientError::CircuitOpen { .. } => true,
        // The client returns as soon as too few zones can acknowledge: only when every zone has answered (and
        // none took the write) is nothing left in flight.
        ClientError::NotEnoughAcks { acked: 0, errors, .. } => {
            errors.len() >= ZONES.len() && errors.iter().all(never_sent)
        }
        _ => false,
    }
}

fn write_outcome(result: Result<(), ClientError>, value: Value) -> Completion {
    match result {
        Ok(()) => Completion::ok(value),
        Err(e) if never_sent(&e) => Completion::fail(value, e.to_string()),
        Err(e) => Completion::info(value, e.to_string()),
    }
}

/// What a read returned: the integer a set stored, else the text.
fn read_value(bytes: Option<&[u8]>) -> Value {
    match bytes {
        None => Value::Nil,
        Some(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            text.parse::<i64>()
                .map(Value::Int)
                .unwrap_or_else(|_| Value::Str(text.into_owned()))
        }
    }
}

/// A session whose workload has no clients (attach failed): every operation fails without effect.
fn unattached() -> Completion {
    Completion::fail(Value::Nil, "the cache workload has no clients")
}

/// A client process of the run: writes its slot's keys, reads any.
struct Writer {
    shared: Arc<Shared>,
    slot: usize,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.writers.lock().free.push(self.slot);
    }
}

impl Writer {
    fn client(&self) -> Option<&Client> {
        self.shared.clients.get().map(|c| &c[self.slot % c.len()])
    }
}

impl Session for Writer {
    fn plan(&mut self, generated: OpRequest) -> OpRequest {
        let pick = generated
            .key
            .as_ref()
            .and_then(Value::as_int)
            .map_or(0, i64::unsigned_abs);
        let pick = usize::try_from(pick).unwrap_or(0);
        let index = match generated.f.as_str() {
            "read" => pick % self.shared.keys().max(1),
            _ => self.slot * KEYS_PER_WRITER + pick % KEYS_PER_WRITER,
        };
        OpRequest::new(generated.f, Some(Value::Str(key_name(index))), generated.value)
    }

    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            let Some(client) = self.client() else {
                return unattached();
            };
            let Some(key) = op.key.as_ref().and_then(Value::as_name) else {
                return Completion::fail(op.value.clone(), "no key");
            };
            match op.f.as_str() {
                "set" => {
                    let text = op.value.to_string();
                    let result = client
                        .set(key.as_bytes(), text.into_bytes().into(), Duration::ZERO)
                        .await;
                    write_outcome(result, op.value.clone())
                }
                "delete" => write_outcome(client.delete(key.as_bytes()).await, op.value.clone()),
                "read" => match client.get(key.as_bytes()).await {
                    Ok(v) => Completion::ok(read_value(v.as_deref())),
                    Err(e) => Completion::fail(Value::Nil, e.to_string()),
                },
                other => Completion::fail(op.value.clone(), format!("cache cannot do {other}")),
            }
        })
    }
}

/// The final operations' session: sweeps every key through both zones.
struct Sweeper {
    shared: Arc<Shared>,
}

/// One zone's answer in a sweep.
fn answer(result: Result<Option<impl std::ops::Deref<Target = [u8]>>, ClientError>) -> Value {
    match result {
        Ok(v) => read_value(v.as_deref()),
        Err(e) => Value::map(vec![(Value::Str("error".into()), Value::Str(e.to_string()))]),
    }
}

impl Session for Sweeper {
    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            if op.f != "sweep" {
                return Completion::fail(Value::Nil, format!("a sweeper cannot do {}", op.f));
            }
            let Some([a, b]) = self.shared.clients.get() else {
                return unattached();
            };
            if op.value.as_int().is_some_and(|i| i > 0) {
                tokio::time::sleep(SWEEP_SPACING).await;
            }
            let reads = (0..self.shared.keys()).map(|i| async move {
                let key = key_name(i);
                let (x, y) = tokio::join!(a.get(key.as_bytes()), b.get(key.as_bytes()));
                (key, answer(x), answer(y))
            });
            let answers = futures::future::join_all(reads).await;
            let (mut differ, mut errors, mut first) = (0, 0, None);
            for (key, x, y) in &answers {
                let failed = [x, y].iter().filter(|v| v.get("error").is_some()).count();
                errors += failed;
                if failed == 0 && x != y {
                    differ += 1;
                    first.get_or_insert_with(|| format!("{key}: zone a {x}, zone b {y}"));
                }
            }
            let result = Value::List(
                answers
                    .into_iter()
                    .map(|(key, x, y)| Value::List(vec![Value::Str(key), x, y]))
                    .collect(),
            );
            if differ == 0 && errors == 0 {
                Completion::ok(result)
            } else {
                let first = first.map(|f| format!(" (first: {f})")).unwrap_or_default();
                Completion::fail(
                    result,
                    format!("zones disagree on {differ} keys{first}; {errors} reads failed"),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_certainly_not_done_only_when_no_zone_was_asked() {
        let open = |node: &str| ClientError::CircuitOpen { node: node.into() };
        let timeout = ClientError::Timeout {
            node: "n1".into(),
            after: REQUEST_TIMEOUT,
        };
        let acks = |acked, errors| ClientError::NotEnoughAcks {
            needed: 2,
            acked,
            errors,
        };
        assert!(never_sent(&acks(0, vec![open("n0"), open("n1")])));
        // The other zone's write may still be in flight.
        assert!(!never_sent(&acks(0, vec![open("n0")])));
        assert!(!never_sent(&acks(0, vec![open("n0"), timeout.clone()])));
        assert!(!never_sent(&acks(1, vec![open("n0")])));
        assert!(!never_sent(&timeout));
    }

    #[test]
    fn reads_are_integers_or_text() {
        assert_eq!(read_value(Some(b"42")), Value::Int(42));
        assert_eq!(read_value(Some(b"x")), Value::Str("x".into()));
        assert_eq!(read_value(None), Value::Nil);
    }

    #[test]
    fn writers_own_disjoint_keys_and_give_their_slot_back() {
        let w = CacheWorkload::default();
        w.shared.writers.lock().taken = 2;
        let mut first = Writer {
            shared: Arc::clone(&w.shared),
            slot: 0,
        };
        let mut second = Writer {
            shared: Arc::clone(&w.shared),
            slot: 1,
        };
        let owned = |s: &mut Writer| -> Vec<Value> {
            (0..20)
                .filter_map(|n| {
                    s.plan(OpRequest::new("set", Some(Value::Int(n)), Value::Int(n)))
                        .key
                })
                .collect()
        };
        let (a, b) = (owned(&mut first), owned(&mut second));
        assert!(a.iter().all(|k| !b.contains(k)), "{a:?} {b:?}");
        assert_eq!(
            first
                .plan(OpRequest::new("set", Some(Value::Int(5)), Value::Nil))
                .key,
            Some(Value::Str("cache/1".into()))
        );
        drop(first);
        assert_eq!(w.shared.writers.lock().free, vec![0]);
    }
}
