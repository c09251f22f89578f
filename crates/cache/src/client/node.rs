//! One node as the client sees it: pooled connections, a timeout per request, a circuit breaker, and the
//! background probe that finds a failed node back.
//!
//! When the breaker opens and probing is on ([`ProbeConfig`]), the node is marked down: every request fails fast
//! ([`ClientError::CircuitOpen`]) without touching the network, and one task per node sends `mn` after the
//! breaker's wait for that consecutive failure, scaled by a random factor (so that many clients do not probe a
//! recovering node in step). The first probe answered closes the breaker and requests flow again; no request ever
//! waits for a timeout to learn that the node is still gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trestle_breaker::machine::{BreakerMachine, Permit, State};
use trestle_breaker::{Outcome, Random, WaitInOpen};

use super::ClientError;
use super::config::{ClientConfig, ProbeConfig};
use crate::protocol::{Command, MetaReply, MetaStatus, ReplyDecoder};

/// A node's connections and breaker.
#[derive(Debug)]
pub(crate) struct NodeClient {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    idle: Mutex<Vec<TcpStream>>,
    max_idle: usize,
    /// Caps the connections open to the node at once; a request waits for one (within its timeout).
    open: tokio::sync::Semaphore,
    /// The breaker, the down mark and the timeout, shared with the node's probe.
    health: Arc<Health>,
}

/// What the request path and the node's probe share.
#[derive(Debug)]
struct Health {
    id: String,
    addr: SocketAddr,
    timeout: Duration,
    breaker: Mutex<BreakerMachine>,
    /// Set while the breaker is open and a probe runs: requests fail fast.
    down: AtomicBool,
    probe: ProbeConfig,
    wait: WaitInOpen,
    probes: Arc<AtomicU64>,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl NodeClient {
    /// A node named `id` at `addr`, with `config`'s connection limits, timeout and probing; probes sent are
    /// counted in `probes` (shared by the client's nodes).
    pub(crate) fn new(
        id: String,
        addr: SocketAddr,
        config: &ClientConfig,
        breaker: BreakerMachine,
        probes: Arc<AtomicU64>,
    ) -> Self {
        let wait = breaker.config().wait_in_open;
        Self {
            health: Arc::new(Health {
                id: id.clone(),
                addr,
                timeout: config.timeout,
                breaker: Mutex::new(breaker),
                down: AtomicBool::new(false),
                probe: config.probe.clone(),
                wait,
                probes,
            }),
            id,
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle: config.max_idle_connections,
            open: tokio::sync::Semaphore::new(config.max_connections_per_node),
        }
    }

    /// Whether the node is skipped now: its breaker opened and no probe has found it back yet.
    pub(crate) fn is_down(&self) -> bool {
        self.health.down.load(Ordering::Acquire)
    }

    /// Sends `commands` then `mn`, and returns the replies before `MN` (quiet commands may answer nothing).
    /// Fails fast while the node is down or its breaker is open; a timeout or I/O error counts against the
    /// breaker.
    pub(crate) async fn exchange(&self, commands: &[Command]) -> Result<Vec<MetaReply>, ClientError> {
        let open = || ClientError::CircuitOpen {
            node: self.id.clone(),
        };
        if self.is_down() {
            return Err(open());
        }
        let permit = {
            let (result, _) = self.health.breaker.lock().try_acquire(now());
            result.map_err(|_| open())?
        };
        // If the caller drops this future mid-request, the permit goes back unrecorded (a half-open slot would
        // otherwise leak and keep the node skipped).
        let mut guard = PermitGuard {
            breaker: &self.health.breaker,
            permit: Some(permit),
        };
        let started = now();
        let result = match tokio::time::timeout(self.health.timeout, self.exchange_inner(commands)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                node: self.id.clone(),
                after: self.health.timeout,
            }),
        };
        let outcome = match &result {
            Ok(_) | Err(ClientError::Server { .. }) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        if let Some(permit) = guard.permit.take() {
            let transition = self
                .health
                .breaker
                .lock()
                .record(permit, outcome, started.elapsed(), now());
            if transition.is_some_and(|t| t.to == State::Open) {
                self.went_down();
            }
        }
        result
    }

    /// The breaker just opened: with probing on, mark the node down, drop its idle connections (they lead to a
    /// process that stopped answering) and start its probe.
    fn went_down(&self) {
        if !self.health.probe.enabled || self.health.down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.idle.lock().clear();
        tracing::warn!(node = %self.id, addr = %self.addr, "cache node failing: skipped until a probe answers");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe_until_back(Arc::downgrade(&self.health)));
        } else {
            // No runtime to probe on (cannot happen from an async request): fall back to the breaker's own
            // half-open trials.
            self.health.down.store(false, Ordering::Release);
        }
    }

    async fn exchange_inner(&self, commands: &[Command]) -> Result<Vec<MetaReply>, ClientError> {
        let io = |e: std::io::Error| ClientError::Io {
            node: self.id.clone(),
            message: e.to_string(),
        };
        let _slot = self.open.acquire().await.map_err(|_| ClientError::Io {
            node: self.id.clone(),
            message: "client closed".into(),
        })?;
        let pooled = self.idle.lock().pop();
        let mut stream = match pooled {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(self.addr).await.map_err(io)?;
                let _ = stream.set_nodelay(true);
                stream
            }
        };
        let mut out = BytesMut::new();
        for command in commands {
            command.encode(&mut out);
        }
        Command::MetaNoop.encode(&mut out);
        stream.write_all(&out).await.map_err(io)?;
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::with_capacity(4096);
        let mut replies = Vec::new();
        loop {
            while let Some(reply) = decoder.decode(&mut buf) {
                match reply {
                    Ok(reply) if reply.status == MetaStatus::Noop => {
                        if buf.is_empty() {
                            let mut idle = self.idle.lock();
                            if idle.len() < self.max_idle {
                                idle.push(stream);
                            }
                        }
                        return Ok(replies);
                    }
                    Ok(reply) => replies.push(reply),
                    Err(error) => {
                        return Err(ClientError::Server {
                            node: self.id.clone(),
                            error,
                        });
                    }
                }
            }
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err(ClientError::Io {
                    node: self.id.clone(),
                    message: "connection closed".into(),
                });
            }
        }
    }
}

impl NodeClient {
    /// Lists the node's keys with `lru_crawler metadump all`, on a connection of its own (the reply can be
    /// long), within `within`. Not counted by the breaker: listing is a background job's request.
    pub(crate) async fn list_keys(&self, within: Duration) -> Result<Vec<Vec<u8>>, ClientError> {
        let io = |e: std::io::Error| ClientError::Io {
            node: self.id.clone(),
            message: e.to_string(),
        };
        let work = async {
            let mut stream = TcpStream::connect(self.addr).await.map_err(io)?;
            let mut out = BytesMut::new();
            Command::Metadump.encode(&mut out);
            stream.write_all(&out).await.map_err(io)?;
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut keys = Vec::new();
            loop {
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line = buf.split_to(end + 1);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line == b"END" {
                        return Ok(keys);
                    }
                    let Some(rest) = line.strip_prefix(b"key=") else {
                        return Err(ClientError::Server {
                            node: self.id.clone(),
                            error: crate::protocol::ReplyError::Server {
                                line: String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned(),
                            },
                        });
                    };
                    let encoded = rest.split(|&b| b == b' ').next().unwrap_or_default();
                    if let Some(key) = crate::metadump::url_decode(encoded) {
                        keys.push(key);
                    }
                }
                if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                    return Err(ClientError::Io {
                        node: self.id.clone(),
                        message: "connection closed during metadump".into(),
                    });
                }
            }
        };
        tokio::time::timeout(within, work).await.unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                node: self.id.clone(),
                after: within,
            })
        })
    }
}

/// Probes a node that went down until it answers `mn` (then closes its breaker and marks it up), or until the node
/// leaves the client (its [`NodeClient`] is dropped).
async fn probe_until_back(health: Weak<Health>) {
    let mut opening = 1;
    loop {
        let wait = {
            let Some(health) = health.upgrade() else { return };
            jittered(health.wait.wait_for(opening), health.probe.jitter, random_unit())
        };
        tokio::time::sleep(wait).await;
        let Some(health) = health.upgrade() else { return };
        health.probes.fetch_add(1, Ordering::Relaxed);
        let answered = tokio::time::timeout(health.timeout, ping(health.addr))
            .await
            .is_ok_and(|r| r.is_ok());
        if answered {
            health.breaker.lock().reset();
            health.down.store(false, Ordering::Release);
            tracing::info!(node = %health.id, probes = opening, "cache node answers again");
            return;
        }
        opening = opening.saturating_add(1);
    }
}

/// Sends `mn` on a connection of its own and waits for `MN`.
async fn ping(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    stream.write_all(b"mn\r\n").await?;
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if buf.windows(4).any(|w| w == b"MN\r\n") {
            return Ok(());
        }
        if buf.len() > 4096 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no MN in the reply to mn",
            ));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// `wait` scaled by a factor in `[1 - jitter, 1 + jitter]` chosen by `unit` (in `[0, 1)`).
pub(crate) fn jittered(wait: Duration, jitter: f64, unit: f64) -> Duration {
    let factor = 1.0 - jitter + 2.0 * jitter * unit.clamp(0.0, 1.0);
    wait.mul_f64(factor.max(0.0))
}

/// A number in `[0, 1)`.
fn random_unit() -> f64 {
    trestle_breaker::ThreadRandom.next_f64()
}

struct PermitGuard<'a> {
    breaker: &'a Mutex<BreakerMachine>,
    permit: Option<Permit>,
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.lock().release(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_moves_a_wait_within_its_fraction_either_way() {
        let wait = Duration::from_millis(1000);
        assert_eq!(jittered(wait, 0.2, 0.0), Duration::from_millis(800));
        assert_eq!(jittered(wait, 0.2, 0.5), wait);
        assert_eq!(jittered(wait, 0.0, 0.9), wait);
        let high = jittered(wait, 0.2, 0.999_999);
        assert!(
            high > Duration::from_millis(1199) && high <= Duration::from_millis(1200),
            "{high:?}"
        );
        for _ in 0..1000 {
            let w = jittered(wait, 0.5, random_unit());
            assert!(
                w >= Duration::from_millis(500) && w <= Duration::from_millis(1500),
                "{w:?}"
            );
        }
    }
}
