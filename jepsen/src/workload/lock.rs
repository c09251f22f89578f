//! The `lock` and `lock-unfenced` workloads: clients take a [`trestle_lock::Mutex`] and, while holding it, add
//! unique elements to a protected set.
//!
//! Each client process has its own trestle-lock [`Session`](trestle_lock::Session) (a lease with a short TTL, so a
//! killed, paused or cut-off holder loses the lock within seconds), kept alive through its node `w mod N`, while
//! the protected set is written through the next node, `(w + 1) mod N` ([`Workload::open_with_peer`]): the lock
//! service and the resource are reached by different paths, so a holder whose session's node stalls can outlive
//! its lease and keep writing, which is the case fencing exists for. A process that holds nothing `acquire`s (the
//! result is the fencing token: the lock key's create revision); a holder `append`s `[token element]` one after
//! another for `hold_for` (4 s, longer than the 2 s TTL), then `release`s. The final `read` returns the protected set in the order its elements landed. Checked by the
//! lock checker ([`check_lock`](crate::checker::lock::check_lock)): tokens unique and increasing, no two holders at once, the set
//! in token order, no acknowledged append lost.
//!
//! - **`lock`** (fenced): each element is its own key, written in one transaction with the highest token, that
//!   applies only if the lock key is still ours ([`LockGuard::ownership_compare`]) **and** the stored highest
//!   token is not greater than ours (a value compare on a zero-padded token key, which is created first: etcd's
//!   value compare on a missing key fails). The read lists the elements by create revision.
//! - **`lock-unfenced`**: the set is a list of numbered slots and a length key; an append reads the length and
//!   writes the element into the next slot and the new length, checking nothing (neither ownership nor the
//!   session's loss signal), as a client that was paused between its check and its write would. The read lists
//!   the slots in order. A holder whose lease ran out while it was stalled (its node
//!   paused, cut off or killed) may still get its write through after the next holder's: the checker then finds
//!   a lost append or a stale token in the list. That is the expected outcome, shown to explain why `lock`
//!   fences.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use rand::{Rng, RngCore};
use tokio::time::Instant;
use trestle_lock::{LockError, LockGuard, Mutex, Session as LockSession, SessionOptions};

use super::{BoxFuture, Completion, OpRequest, Session, Workload, failure};
use crate::checker::CheckModel;
use crate::history::value::Value;

/// Bounds connecting to the resource's node.
const RESOURCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Width of the zero-padded token stored under the token key (so byte order is numeric order).
const TOKEN_WIDTH: usize = 20;

/// Settings of the lock workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockWorkload {
    /// Whether appends are fenced (`lock`) or plain read-modify-writes (`lock-unfenced`).
    pub fenced: bool,
    /// The lease TTL of each client's session: how soon a stalled holder loses the lock.
    pub ttl: Duration,
    /// How long an `acquire` waits in line before it gives up (`fail`, nothing left behind). Keep it below the
    /// operation timeout, or a long wait is recorded as `info` and retires the process.
    pub acquire_wait: Duration,
    /// How long a holder keeps appending before it releases. Longer than the TTL, so that a holder whose
    /// session's node stalls outlives its lease while still appending: the case fencing exists for.
    pub hold_for: Duration,
}

impl LockWorkload {
    /// The fenced `lock` workload.
    pub fn fenced() -> LockWorkload {
        LockWorkload {
            fenced: true,
            ttl: Duration::from_secs(2),
            acquire_wait: Duration::from_millis(1500),
            hold_for: Duration::from_secs(4),
        }
    }

    /// The `lock-unfenced` workload.
    pub fn unfenced() -> LockWorkload {
        LockWorkload {
            fenced: false,
            ..LockWorkload::fenced()
        }
    }

    fn root(&self) -> &'static str {
        if self.fenced {
            "jepsen/lock/"
        } else {
            "jepsen/lock-unfenced/"
        }
    }

    fn mutex_name(&self) -> String {
        format!("{}mutex", self.root())
    }

    /// The prefix of the set's keys: one per element (fenced) or per slot (unfenced).
    fn set_key(&self) -> String {
        format!("{}set/", self.root())
    }

    /// Fenced: the highest token written. Unfenced: the set's length.
    fn token_key(&self) -> String {
        format!("{}token", self.root())
    }
}

impl Workload for LockWorkload {
    fn name(&self) -> &'static str {
        if self.fenced { "lock" } else { "lock-unfenced" }
    }

    fn model(&self) -> CheckModel {
        CheckModel::Lock
    }

    fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest {
        // The element a holder appends (the session turns this into acquire / append / release, see `plan`).
        let e = i64::try_from(op_number).unwrap_or(i64::MAX / 1000) * 1000 + rng.random_range(0..1000);
        OpRequest::new("append", None, Value::Int(e))
    }

    fn is_read_only(&self, op: &OpRequest) -> bool {
        op.f == "read"
    }

    fn final_ops(&self, _ops_generated: u64) -> Vec<OpRequest> {
        vec![OpRequest::new("read", None, Value::Nil)]
    }

    fn open(&self, client: etcd_client::Client) -> Box<dyn Session> {
        Box::new(LockClient {
            resource: Some(client.clone()),
            peer: None,
            client,
            config: self.clone(),
            session: None,
            guard: None,
            held_since: Instant::now(),
            token_key_ready: false,
        })
    }

    fn open_with_peer(&self, client: etcd_client::Client, peer: &str) -> Box<dyn Session> {
        Box::new(LockClient {
            client,
            resource: None,
            peer: Some(peer.to_owned()),
            config: self.clone(),
            session: None,
            guard: None,
            held_since: Instant::now(),
            token_key_ready: false,
        })
    }

    fn expectation(&self) -> Option<&'static str> {
        if self.fenced {
            None
        } else {
            Some(
                "lock-unfenced is EXPECTED TO FAIL under faults: its appends are plain read-modify-writes that \
                 check neither lock ownership nor a fencing token, so a holder whose lease ran out while it was \
                 stalled (paused, cut off or killed node) can still write after the next holder, losing appends or \
                 putting a stale token's element after a newer one. INVALID here demonstrates why `lock` fences; \
                 VALID only means no stale write got through in this run.",
            )
        }
    }
}

struct LockClient {
    /// The lock session's connection (its node carries the keep-alives).
    client: etcd_client::Client,
    /// The protected resource's connection: to `peer` when given (connected on first use), else `client`.
    resource: Option<etcd_client::Client>,
    peer: Option<String>,
    config: LockWorkload,
    /// The trestle-lock session (a lease kept alive in the background), opened on the first acquire and again
    /// after it is lost.
    session: Option<LockSession>,
    guard: Option<LockGuard>,
    /// When the guard was granted.
    held_since: Instant,
    token_key_ready: bool,
}

fn token_of(guard: &LockGuard) -> i64 {
    i64::try_from(guard.fencing_token().value()).unwrap_or(i64::MAX)
}

fn padded(token: i64) -> String {
    format!("{token:0TOKEN_WIDTH$}")
}

impl LockClient {
    /// The connection to the protected resource.
    async fn resource(&mut self) -> Result<etcd_client::Client, String> {
        if let Some(c) = &self.resource {
            return Ok(c.clone());
        }
        let Some(peer) = self.peer.clone() else {
            return Ok(self.client.clone());
        };
        let options = etcd_client::ConnectOptions::new()
            .with_timeout(RESOURCE_TIMEOUT)
            .with_connect_timeout(RESOURCE_TIMEOUT);
        match tokio::time::timeout(
            RESOURCE_TIMEOUT,
            etcd_client::Client::connect([peer.as_str()], Some(options)),
        )
        .await
        {
            Ok(Ok(c)) => {
                self.resource = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => Err(format!("connecting to the resource at {peer}: {e}")),
            Err(_) => Err(format!("connecting to the resource at {peer}: timed out")),
        }
    }

    async fn acquire(&mut self) -> Completion {
        if self.session.as_ref().is_none_or(|s| !s.is_alive()) {
            self.session = None;
            let options = SessionOptions::with_ttl(self.config.ttl);
            match LockSession::with_options(self.client.clone(), options).await {
                Ok(s) => self.session = Some(s),
                Err(e) => return Completion::fail(Value::Nil, format!("no session: {e}")),
            }
        }
        let Some(session) = self.session.as_ref() else {
            return Completion::fail(Value::Nil, "no session");
        };
        let mutex = match Mutex::new(session, self.config.mutex_name()) {
            Ok(m) => m,
            Err(e) => return Completion::fail(Value::Nil, e.to_string()),
        };
        // Whatever goes wrong, no guard came back: this process does not hold the lock (a `fail`; the lock
        // checker only looks at successful acquires).
        match mutex.lock_timeout(self.config.acquire_wait).await {
            Ok(guard) => {
                let token = token_of(&guard);
                self.guard = Some(guard);
                self.held_since = Instant::now();
                Completion::ok(Value::Int(token))
            }
            Err(e) => {
                // The next attempt gets a fresh session (dropping this one revokes its lease in the background).
                // Reusing it would reuse the key `name/<lease>`: trestle-lock removes an abandoned attempt's key
                // with a background delete, and a next `lock()` through the same session can find that key still
                // there, be granted it, and lose it to the delete moments later (seen in a run: a guard returned,
                // and the next holder granted 0.1 s after).
                self.session = None;
                Completion::fail(Value::Nil, e.to_string())
            }
        }
    }

    /// Creates the token key (as token 0) if it does not exist yet.
    async fn init_token_key(&mut self, resource: &mut etcd_client::Client) -> Result<(), etcd_client::Error> {
        if self.token_key_ready {
            return Ok(());
        }
        let key = self.config.token_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, padded(0), None)]);
        resource.txn(txn).await?;
        self.token_key_ready = true;
        Ok(())
    }

    async fn append_fenced(&mut self, op: &OpRequest, token: i64, element: &Value) -> Completion {
        let mut resource = match self.resource().await {
            Ok(c) => c,
            Err(e) => return Completion::fail(op.value.clone(), e),
        };
        if let Err(e) = self.init_token_key(&mut resource).await {
            // The append itself was not sent.
            return Completion::fail(op.value.clone(), format!("initialising the token key: {e}"));
        }
        let Some(guard) = self.guard.as_ref() else {
            return Completion::fail(op.value.clone(), "not holding the lock");
        };
        let token_key = self.config.token_key();
        let txn = Txn::new()
            .when([
                guard.ownership_compare(),
                // stored <= ours, as stored < ours + 1 (etcd has no less-or-equal).
                Compare::value(
                    token_key.clone(),
                    CompareOp::Less,
                    padded(token.saturating_add(1)),
                ),
            ])
            .and_then([
                TxnOp::put(
                    format!("{}{element}", self.config.set_key()),
                    token.to_string(),
                    None,
                ),
                TxnOp::put(token_key, padded(token), None),
            ]);
        match resource.txn(txn).await {
            Ok(resp) if resp.succeeded() => Completion::ok(op.value.clone()),
            Ok(_) => {
                // Lost the lock (or a newer token wrote): stop holding; the next operation acquires again.
                self.guard = None;
                Completion::fail(
                    op.value.clone(),
                    "fenced: the lock is no longer ours or a newer token wrote",
                )
            }
            Err(e) => failure(&e, false, op.value.clone()),
        }
    }

    async fn append_unfenced(&mut self, op: &OpRequest, element: &Value) -> Completion {
        let mut resource = match self.resource().await {
            Ok(c) => c,
            Err(e) => return Completion::fail(op.value.clone(), e),
        };
        // Read the set's length, then write the element into the next slot and the new length: a plain
        // read-modify-write (one transaction without any compare), as an unfenced client of a store would do.
        let length_key = self.config.token_key();
        let length = match resource.get(length_key.clone(), None).await {
            Ok(resp) => resp
                .kvs()
                .first()
                .and_then(|kv| String::from_utf8_lossy(kv.value()).trim().parse::<i64>().ok())
                .unwrap_or(0),
            Err(e) => return Completion::fail(op.value.clone(), format!("reading the set's length: {e}")),
        };
        let slot = length + 1;
        let txn = Txn::new().and_then([
            TxnOp::put(
                format!("{}{}", self.config.set_key(), padded(slot)),
                element.to_string(),
                None,
            ),
            TxnOp::put(length_key, padded(slot), None),
        ]);
        match resource.txn(txn).await {
            Ok(_) => Completion::ok(op.value.clone()),
            Err(e) => failure(&e, false, op.value.clone()),
        }
    }

    async fn release(&mut self, op: &OpRequest) -> Completion {
        let Some(guard) = self.guard.take() else {
            return Completion::fail(op.value.clone(), "not holding the lock");
        };
        match guard.unlock().await {
            Ok(()) => Completion::ok(op.value.clone()),
            Err(e @ LockError::NotHeld { .. }) => Completion::fail(op.value.clone(), e.to_string()),
            Err(LockError::Etcd(e)) => failure(&e, false, op.value.clone()),
            Err(e) => Completion::info(op.value.clone(), e.to_string()),
        }
    }

    async fn read(&mut self) -> Completion {
        let mut resource = match self.resource().await {
            Ok(c) => c,
            Err(e) => return Completion::fail(Value::Nil, e),
        };
        if self.config.fenced {
            let prefix = self.config.set_key();
            match resource
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(resp) => {
                    let mut kvs: Vec<(i64, i64)> = resp
                        .kvs()
                        .iter()
                        .filter_map(|kv| {
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            let e = key.strip_prefix(&prefix)?.parse::<i64>().ok()?;
                            Some((kv.create_revision(), e))
                        })
                        .collect();
                    kvs.sort_unstable();
                    Completion::ok(Value::List(kvs.into_iter().map(|(_, e)| Value::Int(e)).collect()))
                }
                Err(e) => failure(&e, true, Value::Nil),
            }
        } else {
            let prefix = self.config.set_key();
            match resource
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(resp) => {
                    // Slots in order (the keys are zero-padded, so the server's key order is slot order).
                    let mut slots: Vec<(String, Value)> = resp
                        .kvs()
                        .iter()
                        .map(|kv| {
                            let text = String::from_utf8_lossy(kv.value()).into_owned();
                            let value = text.parse::<i64>().map(Value::Int).unwrap_or(Value::Str(text));
                            (String::from_utf8_lossy(kv.key()).into_owned(), value)
                        })
                        .collect();
                    slots.sort_by(|a, b| a.0.cmp(&b.0));
                    Completion::ok(Value::List(slots.into_iter().map(|(_, v)| v).collect()))
                }
                Err(e) => failure(&e, true, Value::Nil),
            }
        }
    }
}

impl Session for LockClient {
    fn plan(&mut self, generated: OpRequest) -> OpRequest {
        match &self.guard {
            None => OpRequest::new("acquire", None, Value::Nil),
            Some(guard) if self.held_since.elapsed() < self.config.hold_for => OpRequest::new(
                "append",
                None,
                Value::List(vec![Value::Int(token_of(guard)), generated.value]),
            ),
            Some(guard) => OpRequest::new("release", None, Value::Int(token_of(guard))),
        }
    }

    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            match (op.f.as_str(), op.value.as_seq()) {
                ("acquire", _) => self.acquire().await,
                ("append", Some([token, element])) => {
                    let Some(token) = token.as_int() else {
                        return Completion::fail(op.value.clone(), "the token must be an integer");
                    };
                    if self.config.fenced {
                        self.append_fenced(op, token, element).await
                    } else {
                        self.append_unfenced(op, element).await
                    }
                }
                ("release", _) => self.release(op).await,
                ("read", _) => self.read().await,
                (other, _) => Completion::fail(op.value.clone(), format!("lock cannot do {other}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pad_to_byte_order() {
        assert!(padded(9) < padded(10));
        assert_eq!(padded(12).len(), TOKEN_WIDTH);
    }
}
