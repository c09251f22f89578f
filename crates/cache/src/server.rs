//! The node's network shell: the memcached protocol on TCP, and `/metrics` and `/health` on HTTP.
//!
//! [`serve`] accepts connections until its shutdown future completes. Shaped like mini-redis' server:
//!
//! - A semaphore caps open connections. Over the cap a connection is answered memcached's
//!   `SERVER_ERROR Too many open connections` and closed, rather than left waiting in the accept queue where a
//!   client cannot tell a full node from a dead one.
//! - Each connection reads into one buffer, decodes every complete request in it ([`Decoder`]), executes them
//!   ([`Engine`]) and writes all their replies with one write: pipelined requests cost one syscall each way. The
//!   buffer never holds more than one request (a line plus at most the largest value), as the decoder consumes
//!   what it reads and discards refused values as they arrive.
//! - Shutdown cancels a token every connection watches between reads: a connection finishes the requests it
//!   has read, writes their replies and closes. [`serve`] returns once every connection has (a task tracker).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::http::StatusCode;
use axum::routing::get;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::engine::{Engine, Flow};
use crate::error::ConfigError;
use crate::metrics::command_index;
use crate::protocol::{Decoder, DecoderConfig};

/// Limits of the TCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Most connections open at once (memcached's `-c`, default 1024).
    pub max_connections: usize,
    /// The decoder's limits (largest value, longest line). The largest value must match the store's.
    pub decoder: DecoderConfig,
    /// Replies are written once this many bytes have piled up, even mid-pipeline.
    pub write_threshold: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            decoder: DecoderConfig::default(),
            write_threshold: 256 * 1024,
        }
    }
}

impl ServerConfig {
    /// Sets the connection limit.
    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets the decoder's limits.
    pub fn with_decoder(mut self, decoder: DecoderConfig) -> Self {
        self.decoder = decoder;
        self
    }

    /// Checks that no limit is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max_connections", self.max_connections),
            ("max_item_size", self.decoder.max_item_size),
            ("max_line_len", self.decoder.max_line_len),
            ("write_threshold", self.write_threshold),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { name });
            }
        }
        Ok(())
    }
}

/// Serves the memcached protocol on `listener` until `shutdown` completes, then waits for open connections to
/// finish what they have read. Returns an error only for a configuration that cannot work.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConfigError> {
    config.validate()?;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let config = Arc::new(config);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine, try again.
                    warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };
        let counts = engine.connections().clone();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counts.rejected.fetch_add(1, Ordering::Relaxed);
            tracker.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        counts.current.fetch_add(1, Ordering::Relaxed);
        counts.total.fetch_add(1, Ordering::Relaxed);
        let (engine, config, token) = (engine.clone(), config.clone(), token.clone());
        let span = tracing::info_span!("cache_connection", %peer);
        tracker.spawn(
            async move {
                if let Err(e) = connection(stream, &engine, &config, &token).await {
                    debug!(error = %e, "connection ended with an error");
                }
                counts.current.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!("memcached listener stopping: finishing open connections");
    token.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"SERVER_ERROR Too many open connections\r\n")
        .await;
    let _ = stream.shutdown().await;
}

async fn connection(
    mut stream: TcpStream,
    engine: &Engine,
    config: &ServerConfig,
    token: &CancellationToken,
) -> io::Result<()> {
    let mut decoder = Decoder::new(config.decoder);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    loop {
        let read = tokio::select! {
            biased;
            () = token.cancelled() => return Ok(()),
            read = stream.read_buf(&mut input) => read?,
        };
        if read == 0 {
            return Ok(());
        }
        let mut flow = Flow::Continue;
        while let Some(frame) = decoder.decode(&mut input) {
            let index = command_index(&frame);
            let started = Instant::now();
            flow = engine.execute(frame, &mut output);
            engine.metrics().observe(index, started.elapsed());
            if flow == Flow::Close {
                break;
            }
            if output.len() >= config.write_threshold {
                stream.write_all(&output).await?;
                output.clear();
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if flow == Flow::Close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        // What remains is one incomplete request; the decoder bounds it, this is a second line of defence.
        if input.len() > decoder.max_buffered() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request over the buffer limit",
            ));
        }
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
    }
}

/// Serves `GET /metrics` (Prometheus text) and `GET /health` (`{"health":"true","reason":""}` while the node
/// runs) on `listener` until `shutdown` completes.
pub async fn serve_http(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move { engine.metrics().render(engine.store()) }),
        )
        .route(
            "/health",
            get(|| async { (StatusCode::OK, r#"{"health":"true","reason":""}"#) }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
