//! Incremental decoding of requests: bytes in, [`Frame`]s out.
//!
//! The decoder takes what the connection has buffered and splits complete requests off its front, so pipelined
//! input yields several frames and a partial request waits for more bytes. A storage command's line is parsed as
//! soon as it arrives (so a bad line is answered at once, as memcached does) and the command waits for its data
//! block. A value over the size limit is answered at once and its data is discarded as it arrives, never buffered.

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};

use super::MAX_KEY_LEN;
use super::command::{ArithMode, Command, StoreMode};
use super::meta::{MA_FLAGS, MD_FLAGS, MG_FLAGS, MS_FLAGS, MetaFlag, MetaFlags};

/// Limits the decoder enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecoderConfig {
    /// The largest value accepted, in bytes; a larger one gets `SERVER_ERROR object too large for cache`.
    pub max_item_size: usize,
    /// The longest command line, in bytes; a longer one gets `CLIENT_ERROR line too long` and the connection
    /// closes (there is no way to find the next request).
    pub max_line_len: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_item_size: 1024 * 1024,
            max_line_len: 16 * 1024,
        }
    }
}

impl DecoderConfig {
    /// Sets the largest value.
    pub fn with_max_item_size(mut self, max_item_size: usize) -> Self {
        self.max_item_size = max_item_size;
        self
    }

    /// Sets the longest command line.
    pub fn with_max_line_len(mut self, max_line_len: usize) -> Self {
        self.max_line_len = max_line_len;
        self
    }
}

/// A request that could not be decoded, as the protocol reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Not a command (memcached's bare `ERROR`).
    #[error("unknown command or wrong number of arguments: {line:?}")]
    UnknownCommand {
        /// The offending line (lossy UTF-8, at most 64 bytes).
        line: String,
    },
    /// A command whose arguments do not parse.
    #[error("bad command line format: {line:?}")]
    BadFormat {
        /// The offending line (lossy UTF-8, at most 64 bytes).
        line: String,
    },
    /// `incr`/`decr` with a delta that is not an unsigned 64-bit number.
    #[error("invalid numeric delta argument {delta:?}")]
    InvalidDelta {
        /// The delta as sent.
        delta: String,
    },
    /// `touch` with an exptime that is not a number.
    #[error("invalid exptime argument {exptime:?}")]
    InvalidExptime {
        /// The exptime as sent.
        exptime: String,
    },
    /// A meta flag the command does not know.
    #[error("invalid meta flag {flag:?} for {command}")]
    InvalidFlag {
        /// The flag token.
        flag: String,
        /// The command (`mg`, `ms`, `md`, `ma`).
        command: &'static str,
    },
    /// A meta flag given twice.
    #[error("meta flag {flag:?} given twice to {command}")]
    DuplicateFlag {
        /// The flag token.
        flag: String,
        /// The command.
        command: &'static str,
    },
    /// A meta key marked base64 (`b`) that does not decode.
    #[error("cannot decode base64 key {key:?}")]
    KeyDecode {
        /// The key as sent.
        key: String,
    },
    /// A data block not followed by `\r\n` (its announced length was wrong).
    #[error("bad data chunk: the {len} data bytes are not followed by \\r\\n")]
    BadDataChunk {
        /// The announced length.
        len: usize,
    },
    /// A value over the size limit; its data is discarded (and, as memcached does, the key's old value is
    /// dropped).
    #[error("value of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The key of the refused value.
        key: Bytes,
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An error in a command with a data block, whose data is discarded.
    #[error("{error} (its {len} data bytes are discarded)")]
    WithData {
        /// The error.
        error: Box<ProtocolError>,
        /// The data block's length.
        len: usize,
    },
    /// A line over the length limit without a newline; the connection closes.
    #[error("command line of over {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
}

impl ProtocolError {
    /// The reply line memcached sends for this error, without `\r\n`.
    pub fn reply(&self) -> &'static str {
        match self {
            ProtocolError::UnknownCommand { .. } => "ERROR",
            ProtocolError::BadFormat { .. } => "CLIENT_ERROR bad command line format",
            ProtocolError::InvalidDelta { .. } => "CLIENT_ERROR invalid numeric delta argument",
            ProtocolError::InvalidExptime { .. } => "CLIENT_ERROR invalid exptime argument",
            // memcached 1.6.18 words these differently for mg/ms and md/ma.
            ProtocolError::InvalidFlag {
                command: "md" | "ma", ..
            }
            | ProtocolError::DuplicateFlag {
                command: "md" | "ma", ..
            } => "CLIENT_ERROR invalid or duplicate flag",
            ProtocolError::InvalidFlag { .. } => "CLIENT_ERROR invalid flag",
            ProtocolError::DuplicateFlag { .. } => "CLIENT_ERROR duplicate flag",
            ProtocolError::KeyDecode { .. } => "CLIENT_ERROR error decoding key",
            ProtocolError::BadDataChunk { .. } => "CLIENT_ERROR bad data chunk",
            ProtocolError::TooLarge { .. } => "SERVER_ERROR object too large for cache",
            ProtocolError::LineTooLong { .. } => "CLIENT_ERROR line too long",
            ProtocolError::WithData { error, .. } => error.reply(),
        }
    }

    /// Whether the connection must close after the reply.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProtocolError::LineTooLong { .. })
    }
}

/// One decoded request, or the error to answer in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// A well-formed command.
    Command(Command),
    /// A malformed one.
    Error(ProtocolError),
}

/// The request decoder of one connection. See the module docs.
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    /// A storage command whose line was read, waiting for its data block of this many bytes.
    pending: Option<(Command, usize)>,
    /// Bytes still to discard (the data of a refused value).
    swallow: usize,
}

impl Decoder {
    /// A decoder with these limits.
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            pending: None,
            swallow: 0,
        }
    }

    /// The limits.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Whether the decoder is in the middle of a request (a line without its data, or data being discarded).
    pub fn is_mid_request(&self) -> bool {
        self.pending.is_some() || self.swallow > 0
    }

    /// How many buffered bytes the decoder may need before it can finish the current request: the connection
    /// may cap its buffer at this.
    pub fn max_buffered(&self) -> usize {
        self.config.max_line_len + self.config.max_item_size + 2
    }

    /// Splits the next request off the front of `buf`. `None`: more bytes are needed (whatever was consumed is
    /// remembered).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            if self.swallow > 0 {
                let n = self.swallow.min(buf.len());
                buf.advance(n);
                self.swallow -= n;
                if self.swallow > 0 {
                    return None;
                }
            }
            if let Some((_, len)) = &self.pending {
                let len = *len;
                if buf.len() < len + 2 {
                    return None;
                }
                let (mut command, _) = self.pending.take()?;
                let mut data = buf.split_to(len + 2);
                if &data[len..] != b"\r\n" {
                    return Some(Frame::Error(ProtocolError::BadDataChunk { len }));
                }
                data.truncate(len);
                set_data(&mut command, data.freeze());
                return Some(Frame::Command(command));
            }
            let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > self.config.max_line_len {
                    buf.clear();
                    return Some(Frame::Error(ProtocolError::LineTooLong {
                        max: self.config.max_line_len,
                    }));
                }
                return None;
            };
            if newline > self.config.max_line_len {
                buf.clear();
                return Some(Frame::Error(ProtocolError::LineTooLong {
                    max: self.config.max_line_len,
                }));
            }
            let mut line = buf.split_to(newline + 1).freeze();
            line.truncate(newline);
            if line.last() == Some(&b'\r') {
                line.truncate(newline - 1);
            }
            match parse_line(&line) {
                Ok((command, None)) => return Some(Frame::Command(command)),
                Ok((command, Some(len))) => {
                    if len > self.config.max_item_size {
                        self.swallow = len + 2;
                        let key = match &command {
                            Command::Store { key, .. } | Command::MetaSet { key, .. } => key.clone(),
                            _ => Bytes::new(),
                        };
                        let max = self.config.max_item_size;
                        return Some(Frame::Error(ProtocolError::TooLarge { key, len, max }));
                    }
                    self.pending = Some((command, len));
                }
                Err(ProtocolError::WithData { error, len }) => {
                    self.swallow = len.saturating_add(2);
                    return Some(Frame::Error(*error));
                }
                Err(e) => return Some(Frame::Error(e)),
            }
        }
    }
}

fn set_data(command: &mut Command, bytes: Bytes) {
    match command {
        Command::Store { data, .. } | Command::MetaSet { data, .. } => *data = bytes,
        _ => {}
    }
}

fn excerpt(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned()
}

/// Splits on spaces (runs of them count as one), as memcached's tokenizer does.
fn tokens(line: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &b) in line.iter().enumerate() {
        match (b == b' ', start) {
            (true, Some(s)) => {
                out.push(line.slice(s..i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(line.slice(s..));
    }
    out
}

fn num<T: std::str::FromStr>(token: &[u8]) -> Option<T> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// A key as memcached 1.6 takes it: 1 to 250 bytes and no space (its tokenizer splits on spaces only). Control
/// characters are accepted, as memcached accepts them (its protocol notes advise against them, and load tools
/// such as memaslap send them).
fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && !key.contains(&b' ')
}

/// Parses one command line; `Some(len)` when a data block of `len` bytes follows.
fn parse_line(line: &Bytes) -> Result<(Command, Option<usize>), ProtocolError> {
    let toks = tokens(line);
    let unknown = || ProtocolError::UnknownCommand { line: excerpt(line) };
    let bad = || ProtocolError::BadFormat { line: excerpt(line) };
    let Some(name) = toks.first() else {
        return Err(unknown());
    };
    let noreply = toks.len() > 1 && toks.last().is_some_and(|t| &t[..] == b"noreply");
    let args = &toks[1..];
    let key_at = |i: usize| -> Result<Bytes, ProtocolError> {
        let key = args.get(i).ok_or_else(unknown)?;
        if valid_key(key) {
            Ok(key.clone())
        } else {
            Err(bad())
        }
    };
    let command = match &name[..] {
        b"get" | b"gets" => {
            if args.is_empty() {
                return Err(unknown());
            }
            let keys = (0..args.len()).map(key_at).collect::<Result<_, _>>()?;
            Command::Get {
                keys,
                cas: &name[..] == b"gets",
            }
        }
        b"gat" | b"gats" => {
            // `gat <exptime>` without keys is answered END, as memcached does.
            if args.is_empty() {
                return Err(unknown());
            }
            let exptime = num(&args[0]).ok_or_else(|| ProtocolError::InvalidExptime {
                exptime: excerpt(&args[0]),
            })?;
            let keys = (1..args.len()).map(key_at).collect::<Result<_, _>>()?;
            Command::GetAndTouch {
                exptime,
                keys,
                cas: &name[..] == b"gats",
            }
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            let is_cas = &name[..] == b"cas";
            let fixed = if is_cas { 5 } else { 4 };
            if args.len() != fixed + usize::from(noreply) {
                return Err(unknown());
            }
            let key = key_at(0)?;
            let flags = num(&args[1]).ok_or_else(bad)?;
            let exptime = num(&args[2]).ok_or_else(bad)?;
            let len: usize = num(&args[3]).ok_or_else(bad)?;
            let mode = match &name[..] {
                b"set" => StoreMode::Set,
                b"add" => StoreMode::Add,
                b"replace" => StoreMode::Replace,
                b"append" => StoreMode::Append,
                b"prepend" => StoreMode::Prepend,
                _ => StoreMode::Cas(num(&args[4]).ok_or_else(bad)?),
            };
            return Ok((
                Command::Store {
                    mode,
                    key,
                    flags,
                    exptime,
                    data: Bytes::new(),
                    noreply,
                },
                Some(len),
            ));
        }
        b"delete" => {
            let key = key_at(0)?;
            match args.len() - usize::from(noreply) {
                1 => {}
                2 if &args[1][..] == b"0" => {}
                _ => return Err(bad()),
            }
            Command::Delete { key, noreply }
        }
        b"incr" | b"decr" => {
            if args.len() != 2 + usize::from(noreply) {
                return Err(unknown());
            }
            let key = key_at(0)?;
            let delta = num(&args[1]).ok_or_else(|| ProtocolError::InvalidDelta {
                delta: excerpt(&args[1]),
            })?;
            let mode = if &name[..] == b"incr" {
                ArithMode::Incr
            } else {
                ArithMode::Decr
            };
            Command::Arith {
                mode,
                key,
                delta,
                noreply,
            }
        }
        b"touch" => {
            if args.len() != 2 + usize::from(noreply) {
                return Err(unknown());
            }
            let key = key_at(0)?;
            let exptime = num(&args[1]).ok_or_else(|| ProtocolError::InvalidExptime {
                exptime: excerpt(&args[1]),
            })?;
            Command::Touch {
                key,
                exptime,
                noreply,
            }
        }
        b"flush_all" => {
            let delay = match args.len() - usize::from(noreply) {
                0 => 0,
                1 => num(&args[0]).ok_or_else(bad)?,
                _ => return Err(unknown()),
            };
            Command::FlushAll { delay, noreply }
        }
        b"stats" if args.is_empty() => Command::Stats,
        // memcached ignores extra arguments to these.
        b"version" => Command::Version,
        b"verbosity" if (1..=2).contains(&args.len()) => {
            if !noreply && num::<u32>(&args[0]).is_none() {
                return Err(bad());
            }
            Command::Verbosity { noreply }
        }
        b"quit" => Command::Quit,
        // Only the metadump of every item: what a warming node needs to enumerate a peer's keys.
        b"lru_crawler" => match args {
            [sub, which] if &sub[..] == b"metadump" && matches!(&which[..], b"all" | b"hash") => {
                Command::Metadump
            }
            _ => return Err(bad()),
        },
        b"mn" => Command::MetaNoop,
        b"me" => {
            if args.len() != 1 {
                return Err(bad());
            }
            Command::MetaDebug { key: key_at(0)? }
        }
        b"mg" | b"md" | b"ma" => {
            if args.is_empty() {
                return Err(unknown());
            }
            let (allowed, command) = match &name[..] {
                b"mg" => (MG_FLAGS, "mg"),
                b"md" => (MD_FLAGS, "md"),
                _ => (MA_FLAGS, "ma"),
            };
            let flags = meta_flags(&args[1..], allowed, command)?;
            let key = meta_key(&args[0], &flags, line)?;
            match &name[..] {
                b"mg" => Command::MetaGet { key, flags },
                b"md" => Command::MetaDelete { key, flags },
                _ => Command::MetaArith { key, flags },
            }
        }
        b"ms" => {
            if args.len() < 2 || args[0].len() > MAX_KEY_LEN {
                return Err(bad());
            }
            let len: usize = num(&args[1]).ok_or_else(bad)?;
            // Once the length is known, memcached discards the data of a refused ms.
            let parsed = meta_flags(&args[2..], MS_FLAGS, "ms")
                .and_then(|flags| Ok((meta_key(&args[0], &flags, line)?, flags)));
            return match parsed {
                Ok((key, flags)) => Ok((
                    Command::MetaSet {
                        key,
                        data: Bytes::new(),
                        flags,
                    },
                    Some(len),
                )),
                Err(error) => Err(ProtocolError::WithData {
                    error: Box::new(error),
                    len,
                }),
            };
        }
        _ => return Err(unknown()),
    };
    Ok((command, None))
}

fn meta_flags(tokens: &[Bytes], allowed: &[u8], command: &'static str) -> Result<MetaFlags, ProtocolError> {
    let mut flags = MetaFlags::new();
    for token in tokens {
        let flag = token[0];
        if !allowed.contains(&flag) {
            return Err(ProtocolError::InvalidFlag {
                flag: excerpt(token),
                command,
            });
        }
        if flags.has(flag) {
            return Err(ProtocolError::DuplicateFlag {
                flag: excerpt(token),
                command,
            });
        }
        flags.push(MetaFlag::new(flag, token.slice(1..)));
    }
    Ok(flags)
}

fn meta_key(raw: &Bytes, flags: &MetaFlags, line: &Bytes) -> Result<Bytes, ProtocolError> {
    if raw.len() > MAX_KEY_LEN || !valid_key(raw) {
        return Err(ProtocolError::BadFormat { line: excerpt(line) });
    }
    if !flags.has(b'b') {
        return Ok(raw.clone());
    }
    match base64::engine::general_purpose::STANDARD.decode(raw) {
        Ok(key) if valid_key(&key) || (!key.is_empty() && key.len() <= MAX_KEY_LEN) => Ok(Bytes::from(key)),
        _ => Err(ProtocolError::KeyDecode { key: excerpt(raw) }),
    }
}
