//! One node as the client sees it: pooled connections, a timeout per request, and a circuit breaker.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trestle_breaker::Outcome;
use trestle_breaker::machine::{BreakerMachine, Permit};

use super::ClientError;
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
    timeout: Duration,
    breaker: Mutex<BreakerMachine>,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl NodeClient {
    pub(crate) fn new(
        id: String,
        addr: SocketAddr,
        max_idle: usize,
        max_open: usize,
        timeout: Duration,
        breaker: BreakerMachine,
    ) -> Self {
        Self {
            id,
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle,
            open: tokio::sync::Semaphore::new(max_open),
            timeout,
            breaker: Mutex::new(breaker),
        }
    }

    /// Sends `commands` then `mn`, and returns the replies before `MN` (quiet commands may answer nothing).
    /// Fails fast while the node's breaker is open; a timeout or I/O error counts against the breaker.
    pub(crate) async fn exchange(&self, commands: &[Command]) -> Result<Vec<MetaReply>, ClientError> {
        let permit = {
            let (result, _) = self.breaker.lock().try_acquire(now());
            result.map_err(|_| ClientError::CircuitOpen {
                node: self.id.clone(),
            })?
        };
        // If the caller drops this future mid-request, the permit goes back unrecorded (a half-open slot would
        // otherwise leak and keep the node skipped).
        let mut guard = PermitGuard {
            breaker: &self.breaker,
            permit: Some(permit),
        };
        let started = now();
        let result = match tokio::time::timeout(self.timeout, self.exchange_inner(commands)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                node: self.id.clone(),
                after: self.timeout,
            }),
        };
        let outcome = match &result {
            Ok(_) | Err(ClientError::Server { .. }) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        if let Some(permit) = guard.permit.take() {
            self.breaker
                .lock()
                .record(permit, outcome, started.elapsed(), now());
        }
        result
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
