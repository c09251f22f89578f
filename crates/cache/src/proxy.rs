//! The ambassador: a local process that speaks the memcached protocol (text and meta) to programs in any language
//! and does the [`Client`]'s work behind it: placement by consistent hashing, a copy in every zone, local-zone
//! reads with fallback, breakers, and request coalescing. `trestle cache proxy` runs it.
//!
//! **Coalescing.** Concurrent single-key reads of one key (`get k`, `mg k ...`) through the proxy share one
//! upstream read; a write or delete of the key that completes ends the sharing, so a read issued after a
//! write's reply never joins a read that started before it. Multi-key `get`s go out as one request per node
//! ([`Client::get_many`]), without coalescing.
//!
//! **What it answers.** The client keeps values, not memcached's item metadata, so the proxy answers what it can
//! honestly answer and refuses the rest with `SERVER_ERROR ... not supported by the proxy`:
//!
//! | request | through the proxy |
//! |---|---|
//! | `get`, `gets` | values from the cluster; client flags read as 0, `gets` reports CAS 0 |
//! | `set` | stored in every zone with its TTL (client flags are not kept); `STORED` once the configured zones acknowledged |
//! | `delete` | deleted in every zone; `DELETED` whether or not the key existed |
//! | `mg` | flags `v`, `k`, `O`, `q`, `s`, `f` (0), `b` |
//! | `ms` | flags `T`, `F` (ignored), `k`, `O`, `q`, `b`; plain set mode only |
//! | `md` | flags `I` (invalidate: stale for `get_or_load`, a miss for `get`), `k`, `O`, `q`, `b` |
//! | `mn`, `version`, `verbosity`, `quit` | as memcached |
//! | `stats` | the proxy's counters, and the progress of each warm-up (`warmup:<zone>:<node>:<field>`) |
//! | `add`, `replace`, `append`, `prepend`, `cas`, `incr`, `decr`, `touch`, `gat`, `ma`, `me`, `flush_all` | refused |
//!
//! A request the cluster cannot serve (every zone failed a read, too few acknowledgements for a write) is answered
//! `SERVER_ERROR` with the client's error, and the connection stays open.
//!
//! **Observing it.** [`serve_proxy_http`] serves `/metrics` (Prometheus text: the proxy's counters and its client's
//! reads, hits by zone, retries, nodes down and probes) and `/health` (503 when the proxy knows no node or every
//! node it knows is down).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::client::{Client, ClientError};
use crate::error::ConfigError;
use crate::protocol::{Command, Decoder, DecoderConfig, Frame, MetaFlags, StoreMode};

/// Limits of the proxy's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Most client connections open at once (default 1024).
    pub max_connections: usize,
    /// The decoder's limits (largest value, longest line); keep the largest value at the nodes'.
    pub decoder: DecoderConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            decoder: DecoderConfig::default(),
        }
    }
}

impl ProxyConfig {
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
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { name });
            }
        }
        Ok(())
    }
}

/// The proxy's counters.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Reads that joined another connection's read of the same key instead of going upstream.
    pub coalesced: AtomicU64,
    /// Requests answered `SERVER_ERROR` because the cluster failed them.
    pub upstream_errors: AtomicU64,
    /// Requests refused as not supported.
    pub unsupported: AtomicU64,
    /// Open client connections.
    pub connections: AtomicU64,
}

type ReadResult = Result<Option<Bytes>, ClientError>;

/// The proxy's shared state: the client, reads in flight, counters.
#[derive(Debug)]
pub struct Proxy {
    client: Client,
    config: ProxyConfig,
    inflight: Mutex<HashMap<Bytes, Shared<BoxFuture<'static, ReadResult>>>>,
    metrics: ProxyMetrics,
}

impl Proxy {
    /// A proxy in front of `client`.
    pub fn new(client: Client, config: ProxyConfig) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        Ok(Arc::new(Self {
            client,
            config,
            inflight: Mutex::default(),
            metrics: ProxyMetrics::default(),
        }))
    }

    /// The counters.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// The client behind the proxy.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The proxy's counters and its client's, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.metrics;
        let c = self.client.stats();
        let known = self.client.nodes().len() as u64;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (counter, gauge) = ("counter", "gauge");
        let rows: [(&str, &str, &str, u64); 18] = [
            (
                "proxy_requests_total",
                counter,
                "Requests answered.",
                load(&m.requests),
            ),
            (
                "proxy_coalesced_reads_total",
                counter,
                "Reads that joined another connection's read of the same key.",
                load(&m.coalesced),
            ),
            (
                "proxy_upstream_errors_total",
                counter,
                "Requests answered SERVER_ERROR because the cluster failed them.",
                load(&m.upstream_errors),
            ),
            (
                "proxy_unsupported_total",
                counter,
                "Requests refused as not supported by the proxy.",
                load(&m.unsupported),
            ),
            (
                "proxy_connections",
                gauge,
                "Open client connections.",
                load(&m.connections),
            ),
            (
                "client_reads_total",
                counter,
                "Reads by the proxy's client.",
                c.reads,
            ),
            (
                "client_local_hits_total",
                counter,
                "Reads answered by the local zone.",
                c.local_hits,
            ),
            (
                "client_other_zone_hits_total",
                counter,
                "Reads answered by another zone after a local miss or error.",
                c.other_zone_hits,
            ),
            (
                "client_misses_total",
                counter,
                "Reads that found nothing.",
                c.misses,
            ),
            (
                "client_read_errors_total",
                counter,
                "Reads that failed in every zone.",
                c.errors,
            ),
            (
                "client_writes_in_flight",
                gauge,
                "Zone writes in flight (background ones included).",
                c.writes_in_flight,
            ),
            (
                "client_retries_pending",
                gauge,
                "Zones being retried in the background after a missed write.",
                c.retries_pending,
            ),
            (
                "client_retries_done_total",
                counter,
                "Background retries a zone took.",
                c.retries_done,
            ),
            (
                "client_retries_abandoned_total",
                counter,
                "Background retries given up when the tombstone TTL passed.",
                c.retries_abandoned,
            ),
            (
                "client_retries_throttled_total",
                counter,
                "Retry attempts put off by the retry budget.",
                c.retries_throttled,
            ),
            ("client_nodes", gauge, "Cache nodes the client knows.", known),
            (
                "client_nodes_down",
                gauge,
                "Nodes skipped until a probe finds them back.",
                c.nodes_down,
            ),
            (
                "client_probes_total",
                counter,
                "Probes sent to nodes that were down.",
                c.probes,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP trestle_cache_{name} {help}\n# TYPE trestle_cache_{name} {kind}\ntrestle_cache_{name} {value}"
            );
        }
        out
    }

    /// Why the proxy cannot serve, if it cannot: it knows no node, or every node it knows is down.
    pub fn unhealthy(&self) -> Option<String> {
        let known = self.client.nodes().len() as u64;
        let down = self.client.stats().nodes_down;
        if known == 0 {
            Some("no cache node is known".into())
        } else if down >= known {
            Some(format!("every cache node ({known}) is down"))
        } else {
            None
        }
    }

    /// Reads `key`, sharing the read with concurrent readers of the same key.
    async fn read(&self, key: &Bytes) -> ReadResult {
        let (shared, joined) = {
            let mut inflight = self.inflight.lock();
            match inflight.get(key) {
                Some(shared) => (shared.clone(), true),
                None => {
                    let client = self.client.clone();
                    let owned = key.clone();
                    let shared = async move { client.get(&owned).await }.boxed().shared();
                    inflight.insert(key.clone(), shared.clone());
                    (shared, false)
                }
            }
        };
        if joined {
            self.metrics.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        let result = shared.clone().await;
        // The first to finish removes the entry, unless a write already replaced or removed it.
        let mut inflight = self.inflight.lock();
        if inflight.get(key).is_some_and(|s| s.ptr_eq(&shared)) {
            inflight.remove(key);
        }
        result
    }

    /// A write of `key` has completed: later reads must not join a read that started before it.
    fn written(&self, key: &[u8]) {
        self.inflight.lock().remove(key);
    }

    async fn set(&self, key: &Bytes, data: Bytes, exptime: i64) -> Result<(), ClientError> {
        let result = match ttl_of(exptime) {
            Some(ttl) => self.client.set(key, data, ttl).await,
            // Already expired: memcached stores nothing readable, so the proxy deletes.
            None => self.client.delete(key).await,
        };
        self.written(key);
        result
    }

    async fn delete(&self, key: &Bytes, invalidate: bool) -> Result<(), ClientError> {
        let result = if invalidate {
            self.client.invalidate(key).await
        } else {
            self.client.delete(key).await
        };
        self.written(key);
        result
    }
}

/// memcached's exptime as a TTL: `Some(ZERO)` for never, `None` for already expired.
fn ttl_of(exptime: i64) -> Option<Duration> {
    const RELATIVE_LIMIT: i64 = 60 * 60 * 24 * 30;
    match exptime {
        0 => Some(Duration::ZERO),
        e if e < 0 => None,
        e if e <= RELATIVE_LIMIT => Some(Duration::from_secs(e as u64)),
        e => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            (e > now).then(|| Duration::from_secs((e - now) as u64))
        }
    }
}

/// Serves `/metrics` ([`Proxy::render_metrics`]) and `/health` (200, or 503 with [`Proxy::unhealthy`]'s reason)
/// on `listener` until `shutdown` completes.
pub async fn serve_proxy_http(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let metrics = proxy.clone();
    let router = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.render_metrics() }))
        .route(
            "/health",
            get(move || async move {
                match proxy.unhealthy() {
                    None => (StatusCode::OK, r#"{"health":"true","reason":""}"#.to_owned()),
                    Some(reason) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(r#"{{"health":"false","reason":{reason:?}}}"#),
                    ),
                }
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the memcached protocol on `listener` through `proxy` until `shutdown` completes, then lets open
/// connections finish what they have read.
pub async fn serve_proxy(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(proxy.config.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "proxy accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracker.spawn(async move {
                let _ = stream
                    .write_all(b"SERVER_ERROR Too many open connections\r\n")
                    .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (proxy, token) = (proxy.clone(), token.clone());
        tracker.spawn(
            async move {
                proxy.metrics.connections.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = connection(stream, &proxy, &token).await {
                    debug!(error = %e, "proxy connection ended with an error");
                }
                proxy.metrics.connections.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            }
            .instrument(tracing::info_span!("cache_proxy_connection", %peer)),
        );
    }
    info!("cache proxy stopping: finishing open connections");
    token.cancel();
    tracker.close();
    tracker.wait().await;
}

async fn connection(mut stream: TcpStream, proxy: &Proxy, token: &CancellationToken) -> io::Result<()> {
    let mut decoder = Decoder::new(proxy.config.decoder);
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
        let mut close = false;
        while let Some(frame) = decoder.decode(&mut input) {
            proxy.metrics.requests.fetch_add(1, Ordering::Relaxed);
            close = execute(proxy, frame, &mut output).await;
            if close {
                break;
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        if input.len() > decoder.max_buffered() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request over the buffer limit",
            ));
        }
    }
}

fn line(out: &mut BytesMut, text: &[u8]) {
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

fn upstream_error(proxy: &Proxy, out: &mut BytesMut, error: &ClientError) {
    proxy.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
    // One line: the error's text without line breaks.
    let text = error.to_string().replace(['\r', '\n'], " ");
    line(out, format!("SERVER_ERROR {text}").as_bytes());
}

fn unsupported(proxy: &Proxy, out: &mut BytesMut, what: &str) {
    proxy.metrics.unsupported.fetch_add(1, Ordering::Relaxed);
    line(
        out,
        format!("SERVER_ERROR {what} is not supported by the proxy").as_bytes(),
    );
}

/// Executes one frame; true when the connection must close.
async fn execute(proxy: &Proxy, frame: Frame, out: &mut BytesMut) -> bool {
    let command = match frame {
        Frame::Command(command) => command,
        Frame::Error(error) => {
            line(out, error.reply().as_bytes());
            return error.closes_connection();
        }
    };
    match command {
        Command::Get { keys, cas } => get(proxy, keys, cas, out).await,
        Command::Store {
            mode: StoreMode::Set,
            key,
            exptime,
            data,
            noreply,
            ..
        } => match proxy.set(&key, data, exptime).await {
            Ok(()) if !noreply => line(out, b"STORED"),
            Ok(()) => {}
            Err(error) => upstream_error(proxy, out, &error),
        },
        Command::Delete { key, noreply } => match proxy.delete(&key, false).await {
            Ok(()) if !noreply => line(out, b"DELETED"),
            Ok(()) => {}
            Err(error) => upstream_error(proxy, out, &error),
        },
        Command::MetaGet { key, flags } => meta_get(proxy, key, &flags, out).await,
        Command::MetaSet { key, data, flags } => meta_set(proxy, key, data, &flags, out).await,
        Command::MetaDelete { key, flags } => {
            if let Some(flag) = flags.iter().find(|f| !b"IkOqb".contains(&f.flag)) {
                refuse_flag(proxy, out, "md", flag.flag);
                return false;
            }
            match proxy.delete(&key, flags.has(b'I')).await {
                Ok(()) if flags.has(b'q') => {}
                Ok(()) => meta_status(out, b"HD", &key, &flags),
                Err(error) => upstream_error(proxy, out, &error),
            }
        }
        Command::MetaNoop => line(out, b"MN"),
        Command::Version => line(out, format!("VERSION {}-proxy", crate::VERSION).as_bytes()),
        Command::Verbosity { noreply } => {
            if !noreply {
                line(out, b"OK");
            }
        }
        Command::Quit => return true,
        Command::Stats => stats(proxy, out),
        Command::Store { mode, .. } => {
            let name = match mode {
                StoreMode::Add => "add",
                StoreMode::Replace => "replace",
                StoreMode::Append => "append",
                StoreMode::Prepend => "prepend",
                _ => "cas",
            };
            unsupported(proxy, out, name);
        }
        Command::Arith { .. } => unsupported(proxy, out, "incr/decr"),
        Command::Touch { .. } => unsupported(proxy, out, "touch"),
        Command::GetAndTouch { .. } => unsupported(proxy, out, "gat"),
        Command::FlushAll { .. } => unsupported(proxy, out, "flush_all"),
        Command::MetaArith { .. } => unsupported(proxy, out, "ma"),
        Command::MetaDebug { .. } => unsupported(proxy, out, "me"),
        _ => unsupported(proxy, out, "this command"),
    }
    false
}

async fn get(proxy: &Proxy, keys: Vec<Bytes>, cas: bool, out: &mut BytesMut) {
    let value_line = |out: &mut BytesMut, key: &[u8], value: &Bytes| {
        out.put_slice(b"VALUE ");
        out.put_slice(key);
        let header = if cas {
            format!(" 0 {} 0", value.len())
        } else {
            format!(" 0 {}", value.len())
        };
        line(out, header.as_bytes());
        line(out, value);
    };
    if let [key] = &keys[..] {
        match proxy.read(key).await {
            Ok(Some(value)) => value_line(out, key, &value),
            Ok(None) => {}
            Err(error) => return upstream_error(proxy, out, &error),
        }
    } else {
        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        match proxy.client.get_many(&refs).await {
            Ok(found) => {
                for key in &keys {
                    if let Some(value) = found.get(key) {
                        value_line(out, key, value);
                    }
                }
            }
            Err(error) => return upstream_error(proxy, out, &error),
        }
    }
    line(out, b"END");
}

fn refuse_flag(proxy: &Proxy, out: &mut BytesMut, command: &str, flag: u8) {
    proxy.metrics.unsupported.fetch_add(1, Ordering::Relaxed);
    line(
        out,
        format!(
            "CLIENT_ERROR flag {} of {command} is not supported by the proxy",
            char::from(flag)
        )
        .as_bytes(),
    );
}

/// The flags every meta reply may echo: the key (`k`, base64 with `b`) and the opaque (`O`).
fn echo(out: &mut BytesMut, key: &[u8], flags: &MetaFlags) {
    for flag in flags.iter() {
        match flag.flag {
            b'k' => {
                out.put_slice(b" k");
                if flags.has(b'b') {
                    out.put_slice(crate::engine::base64_key(key).as_bytes());
                } else {
                    out.put_slice(key);
                }
            }
            b'b' if flags.has(b'k') => out.put_slice(b" b"),
            b'O' => {
                out.put_slice(b" O");
                out.put_slice(&flag.token);
            }
            _ => {}
        }
    }
}

fn meta_status(out: &mut BytesMut, status: &[u8], key: &[u8], flags: &MetaFlags) {
    out.put_slice(status);
    echo(out, key, flags);
    out.put_slice(b"\r\n");
}

async fn meta_get(proxy: &Proxy, key: Bytes, flags: &MetaFlags, out: &mut BytesMut) {
    if let Some(flag) = flags.iter().find(|f| !b"vkOqsfb".contains(&f.flag)) {
        return refuse_flag(proxy, out, "mg", flag.flag);
    }
    let value = match proxy.read(&key).await {
        Ok(value) => value,
        Err(error) => return upstream_error(proxy, out, &error),
    };
    let Some(value) = value else {
        if !flags.has(b'q') {
            meta_status(out, b"EN", &key, flags);
        }
        return;
    };
    let with_value = flags.has(b'v');
    if with_value {
        out.put_slice(format!("VA {}", value.len()).as_bytes());
    } else {
        out.put_slice(b"HD");
    }
    for flag in flags.iter() {
        match flag.flag {
            b's' => out.put_slice(format!(" s{}", value.len()).as_bytes()),
            b'f' => out.put_slice(b" f0"),
            _ => {}
        }
    }
    echo(out, &key, flags);
    out.put_slice(b"\r\n");
    if with_value {
        line(out, &value);
    }
}

async fn meta_set(proxy: &Proxy, key: Bytes, data: Bytes, flags: &MetaFlags, out: &mut BytesMut) {
    if let Some(flag) = flags.iter().find(|f| !b"TFkOqbM".contains(&f.flag)) {
        return refuse_flag(proxy, out, "ms", flag.flag);
    }
    if flags.token(b'M').is_some_and(|mode| !matches!(mode, b"S" | b"s")) {
        return unsupported(proxy, out, "ms modes other than set");
    }
    let Ok(ttl) = flags.number::<i64>(b'T').transpose() else {
        return line(out, b"CLIENT_ERROR bad token in command line format");
    };
    match proxy.set(&key, data, ttl.unwrap_or(0)).await {
        Ok(()) if flags.has(b'q') => {}
        Ok(()) => meta_status(out, b"HD", &key, flags),
        Err(error) => upstream_error(proxy, out, &error),
    }
}

fn stats(proxy: &Proxy, out: &mut BytesMut) {
    let m = &proxy.metrics;
    for (name, value) in [
        ("cmd_total", m.requests.load(Ordering::Relaxed)),
        ("coalesced_reads", m.coalesced.load(Ordering::Relaxed)),
        ("upstream_errors", m.upstream_errors.load(Ordering::Relaxed)),
        ("unsupported", m.unsupported.load(Ordering::Relaxed)),
        ("curr_connections", m.connections.load(Ordering::Relaxed)),
    ] {
        line(out, format!("STAT {name} {value}").as_bytes());
    }
    // The warm-ups of nodes that joined (the latest 32), one group of lines each, named `warmup:<zone>:<node>:`.
    for warm in proxy.client.warm_ups() {
        let prefix = format!("warmup:{}:{}", warm.zone, warm.node);
        let state = match warm.state {
            crate::WarmUpState::Running => "running",
            crate::WarmUpState::Done => "done",
            _ => "cancelled",
        };
        for (name, value) in [
            ("state", state.to_owned()),
            ("fraction_done", format!("{:.3}", warm.fraction_done())),
            ("keys_listed", warm.keys_listed.to_string()),
            ("keys_to_copy", warm.keys_to_copy.to_string()),
            ("keys_copied", warm.keys_copied.to_string()),
            ("keys_present", warm.keys_present.to_string()),
            ("keys_gone", warm.keys_gone.to_string()),
            ("errors", warm.errors.len().to_string()),
            ("elapsed_ms", warm.elapsed.as_millis().to_string()),
        ] {
            line(out, format!("STAT {prefix}:{name} {value}").as_bytes());
        }
    }
    line(out, format!("STAT version {}-proxy", crate::VERSION).as_bytes());
    line(out, b"END");
}
