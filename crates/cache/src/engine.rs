//! Executes decoded commands against the [`Store`] and writes the replies: the node's protocol logic, without
//! I/O. The connection loop in `crate::server` calls [`Engine::execute`] once per [`Frame`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::metrics::NodeMetrics;
use crate::protocol::{ArithMode, Command, Frame, MetaFlags, StoreMode};
use crate::store::{ArithOutcome, DeleteOutcome, MetaGetOptions, Store, StoreOutcome};

/// The version the node reports: the memcached protocol level it implements, then its own.
pub const VERSION: &str = concat!("1.6.18-trestle-", env!("CARGO_PKG_VERSION"));

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Flush the replies and close (`quit`, or input the decoder cannot recover from).
    Close,
}

/// Connection counters, shown by `stats`.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    /// Open connections.
    pub current: AtomicU64,
    /// Connections accepted since the start.
    pub total: AtomicU64,
    /// Connections refused at the limit.
    pub rejected: AtomicU64,
}

/// The node's protocol logic over a store. Shared by all connections.
#[derive(Debug)]
pub struct Engine {
    store: Arc<Store>,
    metrics: Arc<NodeMetrics>,
    connections: Arc<ConnectionCounts>,
    started_unix: u64,
}

fn line(out: &mut BytesMut, text: &[u8]) {
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

fn num_str(n: impl std::fmt::Display) -> String {
    n.to_string()
}

impl Engine {
    /// An engine over `store`, counting into `metrics`.
    pub fn new(store: Arc<Store>, metrics: Arc<NodeMetrics>) -> Self {
        let started_unix = store.unix_now();
        Self {
            store,
            metrics,
            connections: Arc::default(),
            started_unix,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// The connection counters.
    pub fn connections(&self) -> &Arc<ConnectionCounts> {
        &self.connections
    }

    /// Executes one frame, appending its reply (if any) to `out`.
    pub fn execute(&self, frame: Frame, out: &mut BytesMut) -> Flow {
        let command = match frame {
            Frame::Command(command) => command,
            Frame::Error(error) => {
                if let crate::protocol::ProtocolError::TooLarge { key, .. } = &error {
                    self.store.delete(key);
                }
                line(out, error.reply().as_bytes());
                return if error.closes_connection() {
                    Flow::Close
                } else {
                    Flow::Continue
                };
            }
        };
        match command {
            Command::Get { keys, cas } => self.get(&keys, cas, None, out),
            Command::GetAndTouch { exptime, keys, cas } => self.get(&keys, cas, Some(exptime), out),
            Command::Store {
                mode,
                key,
                flags,
                exptime,
                data,
                noreply,
            } => {
                let reply: &[u8] = match self.store.store(mode, key, flags, exptime, data) {
                    StoreOutcome::Stored(_) => b"STORED",
                    StoreOutcome::NotStored => b"NOT_STORED",
                    StoreOutcome::Exists => b"EXISTS",
                    StoreOutcome::NotFound => b"NOT_FOUND",
                    _ => b"SERVER_ERROR object too large for cache",
                };
                if !noreply {
                    line(out, reply);
                }
            }
            Command::Delete { key, noreply } => {
                let reply: &[u8] = if self.store.delete(&key) {
                    b"DELETED"
                } else {
                    b"NOT_FOUND"
                };
                if !noreply {
                    line(out, reply);
                }
            }
            Command::Arith {
                mode,
                key,
                delta,
                noreply,
            } => {
                let reply = match self.store.arith(&key, mode, delta) {
                    ArithOutcome::Value { number, .. } => num_str(number),
                    ArithOutcome::NonNumeric => {
                        "CLIENT_ERROR cannot increment or decrement non-numeric value".to_owned()
                    }
                    _ => "NOT_FOUND".to_owned(),
                };
                if !noreply {
                    line(out, reply.as_bytes());
                }
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                let reply: &[u8] = if self.store.touch(&key, exptime) {
                    b"TOUCHED"
                } else {
                    b"NOT_FOUND"
                };
                if !noreply {
                    line(out, reply);
                }
            }
            Command::FlushAll { delay, noreply } => {
                self.store.flush(delay);
                if !noreply {
                    line(out, b"OK");
                }
            }
            Command::Stats => self.stats(out),
            Command::Version => line(out, format!("VERSION {VERSION}").as_bytes()),
            Command::Verbosity { noreply } => {
                if !noreply {
                    line(out, b"OK");
                }
            }
            Command::Quit => return Flow::Close,
            Command::MetaGet { key, flags } => self.meta_get(key, &flags, out),
            Command::MetaSet { key, data, flags } => self.meta_set(key, data, &flags, out),
            Command::MetaDelete { key, flags } => self.meta_delete(key, &flags, out),
            Command::MetaArith { key, flags } => self.meta_arith(key, &flags, out),
            Command::MetaNoop => line(out, b"MN"),
            Command::MetaDebug { key } => match self.store.debug(&key) {
                Some(info) => {
                    out.put_slice(b"ME ");
                    out.put_slice(&key);
                    let fetch = if info.fetched { "yes" } else { "no" };
                    let text = format!(
                        " exp={} la={} cas={} fetch={fetch} cls=1 size={}",
                        info.ttl, info.last_access, info.cas, info.size
                    );
                    line(out, text.as_bytes());
                }
                None => line(out, b"EN"),
            },
            Command::Metadump => crate::metadump::write(&self.store, out),
        }
        Flow::Continue
    }

    fn get(&self, keys: &[Bytes], cas: bool, touch: Option<i64>, out: &mut BytesMut) {
        for key in keys {
            match self.store.get(key, touch) {
                Some(hit) => {
                    self.metrics.hit();
                    out.put_slice(b"VALUE ");
                    out.put_slice(key);
                    let header = if cas {
                        format!(" {} {} {}", hit.flags, hit.value.len(), hit.cas)
                    } else {
                        format!(" {} {}", hit.flags, hit.value.len())
                    };
                    line(out, header.as_bytes());
                    line(out, &hit.value);
                }
                None => self.metrics.miss(),
            }
        }
        line(out, b"END");
    }

    fn stats(&self, out: &mut BytesMut) {
        let store = &self.store;
        let now = store.unix_now();
        let (hits, misses) = self.metrics.hits_misses();
        let stats: [(&str, String); 15] = [
            ("pid", num_str(std::process::id())),
            ("uptime", num_str(now.saturating_sub(self.started_unix))),
            ("time", num_str(now)),
            ("version", VERSION.to_owned()),
            (
                "curr_connections",
                num_str(self.connections.current.load(Ordering::Relaxed)),
            ),
            (
                "total_connections",
                num_str(self.connections.total.load(Ordering::Relaxed)),
            ),
            (
                "rejected_connections",
                num_str(self.connections.rejected.load(Ordering::Relaxed)),
            ),
            ("cmd_get", num_str(hits + misses)),
            ("get_hits", num_str(hits)),
            ("get_misses", num_str(misses)),
            ("limit_maxbytes", num_str(store.config().memory_bytes)),
            ("bytes", num_str(store.bytes())),
            ("curr_items", num_str(store.items())),
            ("total_items", num_str(store.total_items())),
            ("evictions", num_str(store.evictions())),
        ];
        for (name, value) in stats {
            line(out, format!("STAT {name} {value}").as_bytes());
        }
        line(out, b"END");
    }

    /// Appends the flags that echo request data (`O`, `k`, `b`), shared by every meta reply.
    fn echo_flags(out: &mut BytesMut, key: &[u8], flags: &MetaFlags, f: u8) {
        match f {
            b'O' => {
                if let Some(token) = flags.token(b'O') {
                    out.put_slice(b" O");
                    out.put_slice(token);
                }
            }
            b'k' => {
                out.put_slice(b" k");
                out.put_slice(key);
            }
            _ => {}
        }
    }

    fn bad_format(out: &mut BytesMut) {
        line(out, b"CLIENT_ERROR bad command line format");
    }

    fn meta_get(&self, key: Bytes, flags: &MetaFlags, out: &mut BytesMut) {
        let number = |f: u8| flags.number::<i64>(f).transpose();
        let (Ok(touch), Ok(vivify), Ok(recache)) = (number(b'T'), number(b'N'), number(b'R')) else {
            return Self::bad_format(out);
        };
        let options = MetaGetOptions {
            touch,
            vivify,
            recache,
        };
        let quiet = flags.has(b'q');
        let Some(hit) = self.store.meta_get(&key, options) else {
            self.metrics.miss();
            if !quiet {
                out.put_slice(b"EN");
                for flag in flags.iter() {
                    Self::echo_flags(out, &key, flags, flag.flag);
                }
                out.put_slice(b"\r\n");
            }
            return;
        };
        self.metrics.hit();
        let with_value = flags.has(b'v');
        if with_value {
            out.put_slice(format!("VA {}", hit.hit.value.len()).as_bytes());
        } else {
            out.put_slice(b"HD");
        }
        for flag in flags.iter() {
            match flag.flag {
                b'c' => out.put_slice(format!(" c{}", hit.hit.cas).as_bytes()),
                b'f' => out.put_slice(format!(" f{}", hit.hit.flags).as_bytes()),
                b'h' => out.put_slice(if hit.fetched_before { b" h1" } else { b" h0" }),
                b'l' => out.put_slice(format!(" l{}", hit.last_access).as_bytes()),
                b's' => out.put_slice(format!(" s{}", hit.hit.value.len()).as_bytes()),
                b't' => out.put_slice(format!(" t{}", hit.ttl).as_bytes()),
                f => Self::echo_flags(out, &key, flags, f),
            }
        }
        if hit.lost {
            out.put_slice(b" Z");
        }
        if hit.stale {
            out.put_slice(b" X");
        }
        if hit.win {
            out.put_slice(b" W");
        }
        out.put_slice(b"\r\n");
        if with_value {
            line(out, &hit.hit.value);
        }
    }

    fn meta_set(&self, key: Bytes, data: Bytes, flags: &MetaFlags, out: &mut BytesMut) {
        let (Ok(client_flags), Ok(ttl), Ok(compare)) = (
            flags.number::<u32>(b'F').transpose(),
            flags.number::<i64>(b'T').transpose(),
            flags.number::<u64>(b'C').transpose(),
        ) else {
            return Self::bad_format(out);
        };
        // memcached 1.6.18 takes the modes in upper case only, and ignores N (vivify) on ms.
        let mode = match flags.token(b'M').and_then(|t| t.first()).copied() {
            None | Some(b'S') => StoreMode::Set,
            Some(b'E') => StoreMode::Add,
            Some(b'A') => StoreMode::Append,
            Some(b'P') => StoreMode::Prepend,
            Some(b'R') => StoreMode::Replace,
            Some(_) => return line(out, b"CLIENT_ERROR invalid mode for ms M token"),
        };
        let outcome = self.store.meta_set(
            mode,
            key.clone(),
            client_flags.unwrap_or(0),
            ttl.unwrap_or(0),
            data,
            compare,
            flags.has(b'I'),
            None,
        );
        let (status, cas): (&[u8], _) = match outcome {
            StoreOutcome::Stored(cas) => (b"HD", Some(cas)),
            StoreOutcome::NotStored => (b"NS", None),
            StoreOutcome::Exists => (b"EX", None),
            StoreOutcome::NotFound => (b"NF", None),
            _ => return line(out, b"SERVER_ERROR object too large for cache"),
        };
        if flags.has(b'q') && status == b"HD" {
            return;
        }
        out.put_slice(status);
        for flag in flags.iter() {
            match (flag.flag, cas) {
                // memcached answers `c0` when nothing was stored.
                (b'c', cas) => out.put_slice(format!(" c{}", cas.unwrap_or(0)).as_bytes()),
                (f, _) => Self::echo_flags(out, &key, flags, f),
            }
        }
        out.put_slice(b"\r\n");
    }

    fn meta_delete(&self, key: Bytes, flags: &MetaFlags, out: &mut BytesMut) {
        let (Ok(compare), Ok(ttl)) = (
            flags.number::<u64>(b'C').transpose(),
            flags.number::<i64>(b'T').transpose(),
        ) else {
            return Self::bad_format(out);
        };
        let status: &[u8] = match self.store.meta_delete(&key, compare, flags.has(b'I'), ttl) {
            DeleteOutcome::Deleted => b"HD",
            DeleteOutcome::NotFound => b"NF",
            _ => b"EX",
        };
        if flags.has(b'q') && status == b"HD" {
            return;
        }
        out.put_slice(status);
        for flag in flags.iter() {
            Self::echo_flags(out, &key, flags, flag.flag);
        }
        out.put_slice(b"\r\n");
    }

    fn meta_arith(&self, key: Bytes, flags: &MetaFlags, out: &mut BytesMut) {
        let (Ok(vivify), Ok(initial), Ok(delta), Ok(compare), Ok(touch)) = (
            flags.number::<i64>(b'N').transpose(),
            flags.number::<u64>(b'J').transpose(),
            flags.number::<u64>(b'D').transpose(),
            flags.number::<u64>(b'C').transpose(),
            flags.number::<i64>(b'T').transpose(),
        ) else {
            return Self::bad_format(out);
        };
        let mode = match flags.token(b'M').and_then(|t| t.first()) {
            None | Some(b'I' | b'i' | b'+') => ArithMode::Incr,
            Some(b'D' | b'd' | b'-') => ArithMode::Decr,
            Some(_) => return line(out, b"CLIENT_ERROR invalid mode for ma M token"),
        };
        let vivify = vivify.map(|ttl| (ttl, initial.unwrap_or(0)));
        let outcome = self
            .store
            .meta_arith(&key, mode, delta.unwrap_or(1), vivify, compare, touch);
        let (number, cas, ttl) = match outcome {
            ArithOutcome::Value { number, cas, ttl } => (number, cas, ttl),
            ArithOutcome::NonNumeric => {
                return line(
                    out,
                    b"CLIENT_ERROR cannot increment or decrement non-numeric value",
                );
            }
            other => {
                let status: &[u8] = if other == ArithOutcome::Exists {
                    b"EX"
                } else {
                    b"NF"
                };
                out.put_slice(status);
                for flag in flags.iter() {
                    Self::echo_flags(out, &key, flags, flag.flag);
                }
                return out.put_slice(b"\r\n");
            }
        };
        let with_value = flags.has(b'v');
        if flags.has(b'q') && !with_value {
            return;
        }
        let text = num_str(number);
        if with_value {
            out.put_slice(format!("VA {}", text.len()).as_bytes());
        } else {
            out.put_slice(b"HD");
        }
        for flag in flags.iter() {
            match flag.flag {
                b'c' => out.put_slice(format!(" c{cas}").as_bytes()),
                b't' => out.put_slice(format!(" t{ttl}").as_bytes()),
                f => Self::echo_flags(out, &key, flags, f),
            }
        }
        out.put_slice(b"\r\n");
        if with_value {
            line(out, text.as_bytes());
        }
    }
}

/// Encodes a key for a meta command's `b` flag.
pub fn base64_key(key: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}
