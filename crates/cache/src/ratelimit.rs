//! A rate limiter whose budget is shared by every process that uses it: counters on the cache nodes, kept with
//! the meta protocol's atomic arithmetic as Envoy's global rate-limit service keeps them in memcached.
//!
//! **The counter.** A key's budget for one window is one counter on one node: the node that holds
//! `prefix + key` in the limiter's zone (the client's placement). The first process to lease from it creates it
//! with the window as its TTL (`ma <key> N<window> J<n> D<n>`), so the window starts at the first request and
//! ends when the node expires the counter: processes need no agreed clock. Counters are not replicated: a copy per
//! zone would be a budget per zone.
//!
//! **Leases.** A process does not ask the node for every request: it adds [`ClusterRateLimitConfig::batch`] to the
//! counter at once and admits that many requests locally (fewer when the addition crossed the limit: the part
//! below it). So the processes together admit at most `requests` per window, and one round trip serves `batch`
//! requests. Tokens a process leased and did not use are lost to the others for that window; a smaller batch
//! wastes less and costs more round trips. Tokens expire with the counter's TTL as the node reported it, in whole
//! seconds, so a process may spend an old window's last tokens up to a second into the next.
//!
//! **Two ways to ask.** [`ClusterRateLimiter::acquire`] waits for a lease when it has no token (concurrent callers
//! share one). The [`RateLimiter`] trait's `check` must not wait: it answers from leased tokens, leases ahead in
//! the background when half a batch is left, and when a key has no token yet in this window it starts a lease and
//! refuses that request with a `retry_after` of one millisecond (a caller that can wait should use `acquire`).
//!
//! **When the cache is unreachable** (a lease times out or fails), the limiter falls back to a local per-key limit
//! ([`ClusterRateLimitConfig::local`], trestle-breaker's GCRA) for every key, says so once with a `warn` event, and
//! counts the requests it decides locally ([`RateLimitMetrics::local_decisions`]). After
//! [`ClusterRateLimitConfig::retry_after_failure`] the next request tries a lease again (still deciding locally
//! until one succeeds); the first success is logged at `info` and shared limits resume.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};
use trestle_breaker::rate_limit::{KeyedGcraLimiter, RateLimitConfig, RateLimited, RateLimiter};

use crate::client::Client;
use crate::protocol::{Command, MAX_KEY_LEN, MetaFlags, MetaStatus, ReplyDecoder};

/// A shared budget: `requests` per `window` for each key, across every process that uses the same prefix and
/// cache nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterRateLimitConfig {
    /// Requests admitted per key per window, by all processes together. Positive; default 100.
    pub requests: u64,
    /// The window: whole seconds, at least one (memcached TTLs are seconds). Default 1 s.
    pub window: Duration,
    /// Tokens leased per round trip, 1 to `requests`. Default 10.
    pub batch: u64,
    /// Prefix of the counters' keys. Default `rl:`.
    pub prefix: String,
    /// The zone whose nodes hold the counters; `None`: the client's local zone.
    pub zone: Option<String>,
    /// Longest wait for a lease before the cache counts as unreachable. Default 100 ms.
    pub timeout: Duration,
    /// How long to decide locally after a failed lease before trying the cache again. Default 1 s.
    pub retry_after_failure: Duration,
    /// The per-key limit of one process while the cache is unreachable. Default: `requests` per `window`, which
    /// lets each process alone use the whole budget; divide by the number of processes to stay within it.
    pub local: RateLimitConfig,
}

impl ClusterRateLimitConfig {
    /// `requests` per `window` per key, other settings at their defaults.
    pub fn new(requests: u64, window: Duration) -> Self {
        let local_requests = u32::try_from(requests).unwrap_or(u32::MAX);
        Self {
            requests,
            window,
            batch: 10.min(requests.max(1)),
            prefix: "rl:".to_owned(),
            zone: None,
            timeout: Duration::from_millis(100),
            retry_after_failure: Duration::from_secs(1),
            local: RateLimitConfig::new(local_requests, window),
        }
    }

    /// Sets the lease size.
    pub fn with_batch(mut self, batch: u64) -> Self {
        self.batch = batch;
        self
    }

    /// Sets the counters' key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the zone holding the counters.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the lease timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the pause after a failed lease.
    pub fn with_retry_after_failure(mut self, pause: Duration) -> Self {
        self.retry_after_failure = pause;
        self
    }

    /// Sets the local fallback limit.
    pub fn with_local(mut self, local: RateLimitConfig) -> Self {
        self.local = local;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), RateLimitConfigError> {
        if self.requests == 0 {
            return Err(RateLimitConfigError::Zero { field: "requests" });
        }
        if self.window < Duration::from_secs(1) || self.window.subsec_nanos() != 0 {
            return Err(RateLimitConfigError::Window { window: self.window });
        }
        if self.batch == 0 || self.batch > self.requests {
            return Err(RateLimitConfigError::Batch {
                batch: self.batch,
                requests: self.requests,
            });
        }
        if self.timeout.is_zero() {
            return Err(RateLimitConfigError::Zero { field: "timeout" });
        }
        self.local.validate().map_err(RateLimitConfigError::Local)
    }
}

/// A rate limiter configuration that cannot work, with the values that make it so.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitConfigError {
    /// A field that must be positive is zero.
    #[error("{field} must be positive")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// The window is not a whole number of seconds, at least one.
    #[error("the window must be whole seconds, at least 1 s, got {window:?}")]
    Window {
        /// The window given.
        window: Duration,
    },
    /// The batch is zero or over the budget.
    #[error("the batch must be between 1 and requests ({requests}), got {batch}")]
    Batch {
        /// The batch given.
        batch: u64,
        /// The budget.
        requests: u64,
    },
    /// The zone holding the counters is not among the client's.
    #[error("zone {zone:?} has no nodes in the client's configuration")]
    UnknownZone {
        /// The zone.
        zone: String,
    },
    /// The local fallback limit is invalid.
    #[error("local limit: {0}")]
    Local(trestle_breaker::ConfigError),
    /// Not called inside a tokio runtime (background leases need one).
    #[error("the limiter must be created inside a tokio runtime")]
    NoRuntime,
}

/// What the limiter has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitMetrics {
    /// Requests admitted (shared or local decisions).
    pub admitted: u64,
    /// Requests refused.
    pub refused: u64,
    /// Leases the cache answered.
    pub leases: u64,
    /// Leases that failed (timeout, connection, server error).
    pub lease_failures: u64,
    /// Requests decided by the local fallback limit.
    pub local_decisions: u64,
    /// Whether the limiter is deciding locally now.
    pub degraded: bool,
}

impl RateLimitMetrics {
    /// These counters in Prometheus' text format, for a process's `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in [
            ("admitted_total", "counter", "Requests admitted.", self.admitted),
            ("refused_total", "counter", "Requests refused.", self.refused),
            (
                "leases_total",
                "counter",
                "Token leases the cache answered.",
                self.leases,
            ),
            (
                "lease_failures_total",
                "counter",
                "Token leases that failed.",
                self.lease_failures,
            ),
            (
                "local_decisions_total",
                "counter",
                "Requests decided by the local limit while the cache was unreachable.",
                self.local_decisions,
            ),
            (
                "degraded",
                "gauge",
                "1 while the cache is unreachable and limits are local.",
                u64::from(self.degraded),
            ),
        ] {
            let name = format!("trestle_cache_ratelimit_{name}");
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}

type LeaseDone = Shared<BoxFuture<'static, ()>>;

#[derive(Default)]
struct KeyState {
    tokens: u64,
    valid_until: Option<Instant>,
    /// The window's budget is spent: refuse until then.
    blocked_until: Option<Instant>,
    /// A lease in flight; resolves when its result is in this state.
    leasing: Option<LeaseDone>,
}

#[derive(Default)]
struct Health {
    degraded: bool,
    retry_at: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    admitted: AtomicU64,
    refused: AtomicU64,
    leases: AtomicU64,
    lease_failures: AtomicU64,
    local_decisions: AtomicU64,
}

struct Inner {
    config: ClusterRateLimitConfig,
    client: Client,
    zone: String,
    addrs: HashMap<String, SocketAddr>,
    idle: Mutex<HashMap<SocketAddr, Vec<TcpStream>>>,
    keys: Mutex<HashMap<Bytes, KeyState>>,
    health: Mutex<Health>,
    local: KeyedGcraLimiter<Bytes>,
    counters: Counters,
    runtime: tokio::runtime::Handle,
}

/// A per-key rate limiter whose budget lives on the cache nodes. Cheap to clone.
#[derive(Clone)]
pub struct ClusterRateLimiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRateLimiter")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

enum Decision {
    Admit,
    Refuse(Duration),
    /// No token and the cache is reachable: wait for this lease.
    Wait(LeaseDone),
    Local,
}

impl ClusterRateLimiter {
    /// A limiter keeping its counters on `client`'s nodes (in `config.zone`, else the client's local zone). Must
    /// be called inside a tokio runtime: leases run on it.
    pub fn new(client: Client, config: ClusterRateLimitConfig) -> Result<Self, RateLimitConfigError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RateLimitConfigError::NoRuntime)?;
        let zone = config
            .zone
            .clone()
            .unwrap_or_else(|| client.config().local_zone.clone());
        if !client.config().nodes.iter().any(|n| n.zone == zone) {
            return Err(RateLimitConfigError::UnknownZone { zone });
        }
        let addrs = client
            .config()
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.addr))
            .collect();
        let local = KeyedGcraLimiter::new(config.local.clone()).map_err(RateLimitConfigError::Local)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                zone,
                addrs,
                idle: Mutex::default(),
                keys: Mutex::default(),
                health: Mutex::default(),
                local,
                counters: Counters::default(),
                runtime,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterRateLimitConfig {
        &self.inner.config
    }

    /// The counters so far.
    pub fn metrics(&self) -> RateLimitMetrics {
        let c = &self.inner.counters;
        RateLimitMetrics {
            admitted: c.admitted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            leases: c.leases.load(Ordering::Relaxed),
            lease_failures: c.lease_failures.load(Ordering::Relaxed),
            local_decisions: c.local_decisions.load(Ordering::Relaxed),
            degraded: self.inner.health.lock().degraded,
        }
    }

    /// Admits one request for `key`, waiting for a lease from the cache when this process holds no token for it
    /// (at most [`ClusterRateLimitConfig::timeout`]; then the local limit decides).
    pub async fn acquire(&self, key: &[u8]) -> Result<(), RateLimited> {
        // A lease that lands with nothing left decides on the next turn, so two turns suffice; a third guards
        // against a window that ended between them.
        for _ in 0..3 {
            match self.decide(key, false) {
                Decision::Admit => return self.admitted(),
                Decision::Refuse(after) => return self.refused(after),
                Decision::Local => return self.local(key),
                Decision::Wait(lease) => lease.await,
            }
        }
        self.refused(Duration::from_millis(1))
    }

    fn admitted(&self) -> Result<(), RateLimited> {
        self.inner.counters.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn refused(&self, after: Duration) -> Result<(), RateLimited> {
        self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
        Err(RateLimited::new(after))
    }

    fn local(&self, key: &[u8]) -> Result<(), RateLimited> {
        self.inner
            .counters
            .local_decisions
            .fetch_add(1, Ordering::Relaxed);
        match self.inner.local.check(&Bytes::copy_from_slice(key)) {
            Ok(()) => self.admitted(),
            Err(limited) => self.refused(limited.retry_after),
        }
    }

    /// Takes a token if one is held; otherwise says what to do, starting a lease when one is needed.
    fn decide(&self, key: &[u8], from_check: bool) -> Decision {
        let now = Instant::now();
        let (degraded, may_probe) = {
            let health = self.inner.health.lock();
            (health.degraded, health.retry_at.is_none_or(|at| now >= at))
        };
        let mut keys = self.inner.keys.lock();
        let state = keys.entry(Bytes::copy_from_slice(key)).or_default();
        if state.valid_until.is_some_and(|until| now >= until) {
            state.tokens = 0;
            state.valid_until = None;
        }
        if state.tokens > 0 {
            state.tokens -= 1;
            if state.tokens <= self.inner.config.batch / 2 && state.leasing.is_none() && !degraded {
                state.leasing = Some(self.start_lease(key));
            }
            return Decision::Admit;
        }
        if let Some(until) = state.blocked_until {
            if now < until {
                return Decision::Refuse(until - now);
            }
            state.blocked_until = None;
        }
        if degraded {
            if may_probe && state.leasing.is_none() {
                // Try the cache again in the background; decide locally meanwhile.
                self.inner.health.lock().retry_at = Some(now + self.inner.config.retry_after_failure);
                state.leasing = Some(self.start_lease(key));
            }
            return Decision::Local;
        }
        let lease = match &state.leasing {
            Some(lease) => lease.clone(),
            None => {
                let lease = self.start_lease(key);
                state.leasing = Some(lease.clone());
                lease
            }
        };
        if from_check {
            Decision::Refuse(Duration::from_millis(1))
        } else {
            Decision::Wait(lease)
        }
    }

    /// Spawns a lease for `key`; the returned future resolves once its result is recorded.
    fn start_lease(&self, key: &[u8]) -> LeaseDone {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let this = self.clone();
        let key = Bytes::copy_from_slice(key);
        self.inner.runtime.spawn(async move {
            this.lease(key).await;
            let _ = tx.send(());
        });
        rx.map(|_| ()).boxed().shared()
    }

    async fn lease(&self, key: Bytes) {
        let config = &self.inner.config;
        let result = tokio::time::timeout(config.timeout, self.increment(&key)).await;
        let now = Instant::now();
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", config.timeout)),
        };
        let mut keys = self.inner.keys.lock();
        let state = keys.entry(key.clone()).or_default();
        state.leasing = None;
        match result {
            Ok((count, ttl)) => {
                self.inner.counters.leases.fetch_add(1, Ordering::Relaxed);
                let before = count.saturating_sub(config.batch);
                let granted = config.batch.min(config.requests.saturating_sub(before));
                // The counter's TTL is its window's end; -1 (no TTL) would mean someone else wrote the key.
                let left = if ttl > 0 {
                    Duration::from_secs(ttl as u64)
                } else {
                    config.window
                };
                // Tokens left from a lease that straddled the window's end join the new window (at most half a
                // batch: leases ahead start there).
                state.valid_until = Some(now + left);
                state.tokens += granted;
                if state.tokens == 0 {
                    state.blocked_until = Some(now + left);
                }
                drop(keys);
                let mut health = self.inner.health.lock();
                if health.degraded {
                    health.degraded = false;
                    health.retry_at = None;
                    info!("rate limiter: the cache answers again; shared limits resume");
                }
            }
            Err(reason) => {
                drop(keys);
                self.inner.counters.lease_failures.fetch_add(1, Ordering::Relaxed);
                let mut health = self.inner.health.lock();
                health.retry_at = Some(now + config.retry_after_failure);
                if !health.degraded {
                    health.degraded = true;
                    warn!(
                        error = %reason,
                        zone = %self.inner.zone,
                        "rate limiter: the cache is unreachable; deciding with local limits"
                    );
                }
            }
        }
    }

    /// `ma` on the counter's node: adds a batch (creating the counter with the window as TTL), returns the new
    /// count and the seconds left.
    async fn increment(&self, key: &[u8]) -> Result<(u64, i64), String> {
        let config = &self.inner.config;
        let mut full = Vec::with_capacity(config.prefix.len() + key.len());
        full.extend_from_slice(config.prefix.as_bytes());
        full.extend_from_slice(key);
        let node = self
            .inner
            .client
            .node_for(&self.inner.zone, &full)
            .ok_or_else(|| format!("no node in zone {}", self.inner.zone))?;
        let addr = *self
            .inner
            .addrs
            .get(&node)
            .ok_or_else(|| format!("node {node} has no address"))?;
        let plain = full.len() <= MAX_KEY_LEN && full.iter().all(|&b| b > b' ' && b != 0x7f);
        let (wire, mut flags) = if plain {
            (Bytes::from(full), MetaFlags::new())
        } else if full.len() <= MAX_KEY_LEN / 4 * 3 {
            (
                Bytes::from(crate::engine::base64_key(&full)),
                MetaFlags::new().with(b'b'),
            )
        } else {
            return Err(format!("a key of {} bytes is too long for a counter", full.len()));
        };
        flags = flags
            .with_token(b'N', config.window.as_secs())
            .with_token(b'J', config.batch)
            .with_token(b'D', config.batch)
            .with(b'v')
            .with(b't');
        let mut out = BytesMut::new();
        Command::MetaArith { key: wire, flags }.encode(&mut out);
        Command::MetaNoop.encode(&mut out);
        let pooled = self.inner.idle.lock().get_mut(&addr).and_then(Vec::pop);
        let mut stream = match pooled {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("node {node} ({addr}): {e}"))?;
                let _ = stream.set_nodelay(true);
                stream
            }
        };
        stream
            .write_all(&out)
            .await
            .map_err(|e| format!("node {node} ({addr}): {e}"))?;
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::with_capacity(256);
        let mut answer = None;
        loop {
            while let Some(reply) = decoder.decode(&mut buf) {
                let reply = reply.map_err(|e| format!("node {node} ({addr}): {e}"))?;
                if reply.status != MetaStatus::Noop {
                    answer = Some(reply);
                    continue;
                }
                if buf.is_empty() {
                    self.inner.idle.lock().entry(addr).or_default().push(stream);
                }
                let reply = answer.ok_or_else(|| format!("node {node} ({addr}) answered nothing"))?;
                if reply.status != MetaStatus::Value {
                    return Err(format!("node {node} ({addr}) answered {:?}", reply.status));
                }
                let count = reply
                    .value
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| format!("node {node} ({addr}): counter is not a number"))?;
                let ttl = reply.flags.number::<i64>(b't').and_then(Result::ok).unwrap_or(-1);
                return Ok((count, ttl));
            }
            let read = stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("node {node} ({addr}): {e}"))?;
            if read == 0 {
                return Err(format!("node {node} ({addr}) closed the connection"));
            }
        }
    }
}

/// The trait's `check` does not wait: see the module documentation for what it does without a token.
impl<K> RateLimiter<K> for ClusterRateLimiter
where
    K: AsRef<[u8]> + ?Sized,
{
    fn check(&self, key: &K) -> Result<(), RateLimited> {
        let key = key.as_ref();
        match self.decide(key, true) {
            Decision::Admit => self.admitted(),
            Decision::Refuse(after) => self.refused(after),
            Decision::Local => self.local(key),
            // `decide` never asks `check` to wait.
            Decision::Wait(_) => self.refused(Duration::from_millis(1)),
        }
    }
}
