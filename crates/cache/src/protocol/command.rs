use bytes::{BufMut, Bytes, BytesMut};

use super::meta::MetaFlags;

/// How a text storage command treats an existing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreMode {
    /// `set`: store unconditionally.
    Set,
    /// `add`: store only if absent.
    Add,
    /// `replace`: store only if present.
    Replace,
    /// `append`: add the data after the present value.
    Append,
    /// `prepend`: add the data before the present value.
    Prepend,
    /// `cas`: store only if the item's CAS value is still this one.
    Cas(u64),
}

/// Increment or decrement (text `incr`/`decr`, meta `ma` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArithMode {
    /// Add the delta.
    Incr,
    /// Subtract the delta, stopping at zero.
    Decr,
}

/// One memcached request.
///
/// Keys and data are [`Bytes`] split off the connection's buffer, so decoding copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `get`/`gets` (`cas: true` for `gets`).
    Get {
        /// The keys, in request order.
        keys: Vec<Bytes>,
        /// Whether to return CAS values.
        cas: bool,
    },
    /// `gat`/`gats`: get and touch.
    GetAndTouch {
        /// New expiration time, as memcached's exptime.
        exptime: i64,
        /// The keys.
        keys: Vec<Bytes>,
        /// Whether to return CAS values.
        cas: bool,
    },
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
    Store {
        /// The command.
        mode: StoreMode,
        /// The key.
        key: Bytes,
        /// Opaque client flags.
        flags: u32,
        /// Expiration time: 0 never, negative immediately, up to 30 days relative seconds, above an absolute Unix
        /// time.
        exptime: i64,
        /// The value.
        data: Bytes,
        /// `noreply`.
        noreply: bool,
    },
    /// `delete`.
    Delete {
        /// The key.
        key: Bytes,
        /// `noreply`.
        noreply: bool,
    },
    /// `incr`/`decr`.
    Arith {
        /// Which one.
        mode: ArithMode,
        /// The key.
        key: Bytes,
        /// The delta.
        delta: u64,
        /// `noreply`.
        noreply: bool,
    },
    /// `touch`.
    Touch {
        /// The key.
        key: Bytes,
        /// New expiration time.
        exptime: i64,
        /// `noreply`.
        noreply: bool,
    },
    /// `flush_all [delay]`.
    FlushAll {
        /// Seconds before everything stored up to then becomes invalid (0: now).
        delay: i64,
        /// `noreply`.
        noreply: bool,
    },
    /// `stats` (general statistics only).
    Stats,
    /// `version`.
    Version,
    /// `verbosity N`.
    Verbosity {
        /// `noreply`.
        noreply: bool,
    },
    /// `quit`: close the connection.
    Quit,
    /// `mg key flags*`: meta get.
    MetaGet {
        /// The key (decoded if the `b` flag was given).
        key: Bytes,
        /// The flags.
        flags: MetaFlags,
    },
    /// `ms key datalen flags*`: meta set.
    MetaSet {
        /// The key.
        key: Bytes,
        /// The value.
        data: Bytes,
        /// The flags.
        flags: MetaFlags,
    },
    /// `md key flags*`: meta delete.
    MetaDelete {
        /// The key.
        key: Bytes,
        /// The flags.
        flags: MetaFlags,
    },
    /// `ma key flags*`: meta arithmetic.
    MetaArith {
        /// The key.
        key: Bytes,
        /// The flags.
        flags: MetaFlags,
    },
    /// `mn`: meta no-op (answers `MN`, marks the end of a pipeline of quiet commands).
    MetaNoop,
    /// `me key`: meta debug.
    MetaDebug {
        /// The key.
        key: Bytes,
    },
    /// `lru_crawler metadump all`: one line per live item (URL-encoded key, expiry, last access, CAS, size),
    /// then `END`. Clients warming a joining node enumerate a peer's keys with it.
    Metadump,
}

impl Command {
    /// Writes the command in the protocol's wire form. Keys of meta commands are written as given (base64 ones
    /// must already be encoded and carry the `b` flag).
    pub fn encode(&self, out: &mut BytesMut) {
        fn line_end(out: &mut BytesMut, noreply: bool) {
            if noreply {
                out.put_slice(b" noreply");
            }
            out.put_slice(b"\r\n");
        }
        match self {
            Command::Get { keys, cas } | Command::GetAndTouch { keys, cas, .. } => {
                match (self, cas) {
                    (Command::GetAndTouch { exptime, .. }, true) => {
                        out.put_slice(format!("gats {exptime}").as_bytes())
                    }
                    (Command::GetAndTouch { exptime, .. }, false) => {
                        out.put_slice(format!("gat {exptime}").as_bytes())
                    }
                    (_, true) => out.put_slice(b"gets"),
                    (_, false) => out.put_slice(b"get"),
                }
                for key in keys {
                    out.put_u8(b' ');
                    out.put_slice(key);
                }
                out.put_slice(b"\r\n");
            }
            Command::Store {
                mode,
                key,
                flags,
                exptime,
                data,
                noreply,
            } => {
                let name: &[u8] = match mode {
                    StoreMode::Set => b"set",
                    StoreMode::Add => b"add",
                    StoreMode::Replace => b"replace",
                    StoreMode::Append => b"append",
                    StoreMode::Prepend => b"prepend",
                    StoreMode::Cas(_) => b"cas",
                };
                out.put_slice(name);
                out.put_u8(b' ');
                out.put_slice(key);
                out.put_slice(format!(" {flags} {exptime} {}", data.len()).as_bytes());
                if let StoreMode::Cas(cas) = mode {
                    out.put_slice(format!(" {cas}").as_bytes());
                }
                line_end(out, *noreply);
                out.put_slice(data);
                out.put_slice(b"\r\n");
            }
            Command::Delete { key, noreply } => {
                out.put_slice(b"delete ");
                out.put_slice(key);
                line_end(out, *noreply);
            }
            Command::Arith {
                mode,
                key,
                delta,
                noreply,
            } => {
                out.put_slice(if *mode == ArithMode::Incr {
                    b"incr "
                } else {
                    b"decr "
                });
                out.put_slice(key);
                out.put_slice(format!(" {delta}").as_bytes());
                line_end(out, *noreply);
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                out.put_slice(b"touch ");
                out.put_slice(key);
                out.put_slice(format!(" {exptime}").as_bytes());
                line_end(out, *noreply);
            }
            Command::FlushAll { delay, noreply } => {
                out.put_slice(format!("flush_all {delay}").as_bytes());
                line_end(out, *noreply);
            }
            Command::Stats => out.put_slice(b"stats\r\n"),
            Command::Version => out.put_slice(b"version\r\n"),
            Command::Verbosity { noreply } => {
                out.put_slice(b"verbosity 1");
                line_end(out, *noreply);
            }
            Command::Quit => out.put_slice(b"quit\r\n"),
            Command::MetaGet { key, flags } => meta_line(out, b"mg", key, None, flags),
            Command::MetaSet { key, data, flags } => {
                meta_line(out, b"ms", key, Some(data.len()), flags);
                out.put_slice(data);
                out.put_slice(b"\r\n");
            }
            Command::MetaDelete { key, flags } => meta_line(out, b"md", key, None, flags),
            Command::MetaArith { key, flags } => meta_line(out, b"ma", key, None, flags),
            Command::MetaNoop => out.put_slice(b"mn\r\n"),
            Command::MetaDebug { key } => {
                out.put_slice(b"me ");
                out.put_slice(key);
                out.put_slice(b"\r\n");
            }
            Command::Metadump => out.put_slice(b"lru_crawler metadump all\r\n"),
        }
    }
}

fn meta_line(out: &mut BytesMut, name: &[u8], key: &[u8], len: Option<usize>, flags: &MetaFlags) {
    out.put_slice(name);
    out.put_u8(b' ');
    out.put_slice(key);
    if let Some(len) = len {
        out.put_slice(format!(" {len}").as_bytes());
    }
    for flag in flags.iter() {
        out.put_u8(b' ');
        out.put_u8(flag.flag);
        out.put_slice(&flag.token);
    }
    out.put_slice(b"\r\n");
}
