//! Decoding meta replies, for the client side.

use bytes::{Bytes, BytesMut};

use super::meta::{MetaFlag, MetaFlags};

/// The status word of a meta reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaStatus {
    /// `VA`: a value follows.
    Value,
    /// `HD`: success, no value.
    Stored,
    /// `EN`: miss.
    Miss,
    /// `NF`: not found.
    NotFound,
    /// `NS`: not stored.
    NotStored,
    /// `EX`: CAS mismatch.
    Exists,
    /// `MN`: the no-op's answer.
    Noop,
}

/// One meta reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetaReply {
    /// The status.
    pub status: MetaStatus,
    /// The returned flags, in order (win/lose/stale tokens `W`, `Z`, `X` appear as bare flags).
    pub flags: MetaFlags,
    /// The value, for `VA`.
    pub value: Option<Bytes>,
}

impl MetaReply {
    /// Whether this caller won the right to recache (`W`).
    pub fn won(&self) -> bool {
        self.flags.has(b'W')
    }

    /// Whether another caller already holds the win token (`Z`).
    pub fn lost(&self) -> bool {
        self.flags.has(b'Z')
    }

    /// Whether the item is stale (`X`).
    pub fn stale(&self) -> bool {
        self.flags.has(b'X')
    }
}

/// A reply that is an error, or that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// `ERROR`, `CLIENT_ERROR ...` or `SERVER_ERROR ...` from the server.
    #[error("server answered {line:?}")]
    Server {
        /// The line.
        line: String,
    },
    /// Not a meta reply.
    #[error("malformed reply {line:?}")]
    Malformed {
        /// The line (at most 64 bytes).
        line: String,
    },
}

/// Decodes meta replies incrementally (like [`super::Decoder`], for the other direction).
#[derive(Debug, Default)]
pub struct ReplyDecoder {
    /// A `VA` line read, waiting for this many value bytes.
    pending: Option<(MetaFlags, usize)>,
}

impl ReplyDecoder {
    /// A new decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits the next reply off `buf`; `None` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<MetaReply, ReplyError>> {
        if let Some((_, len)) = &self.pending {
            if buf.len() < len + 2 {
                return None;
            }
            let (flags, len) = self.pending.take()?;
            let mut data = buf.split_to(len + 2);
            if &data[len..] != b"\r\n" {
                return Some(Err(ReplyError::Malformed {
                    line: "value without \\r\\n".into(),
                }));
            }
            data.truncate(len);
            return Some(Ok(MetaReply {
                status: MetaStatus::Value,
                flags,
                value: Some(data.freeze()),
            }));
        }
        let newline = buf.iter().position(|&b| b == b'\n')?;
        let mut line = buf.split_to(newline + 1).freeze();
        line.truncate(line.len() - 1);
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        let malformed = || ReplyError::Malformed {
            line: String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned(),
        };
        let mut parts = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
        let Some(word) = parts.next() else {
            return Some(Err(malformed()));
        };
        if word == b"ERROR" || word == b"CLIENT_ERROR" || word == b"SERVER_ERROR" {
            return Some(Err(ReplyError::Server {
                line: String::from_utf8_lossy(&line).into_owned(),
            }));
        }
        let status = match word {
            b"VA" => MetaStatus::Value,
            b"HD" => MetaStatus::Stored,
            b"EN" => MetaStatus::Miss,
            b"NF" => MetaStatus::NotFound,
            b"NS" => MetaStatus::NotStored,
            b"EX" => MetaStatus::Exists,
            b"MN" => MetaStatus::Noop,
            _ => return Some(Err(malformed())),
        };
        let len = if status == MetaStatus::Value {
            match parts
                .next()
                .and_then(|t| std::str::from_utf8(t).ok()?.parse::<usize>().ok())
            {
                Some(len) => Some(len),
                None => return Some(Err(malformed())),
            }
        } else {
            None
        };
        let mut flags = MetaFlags::new();
        for token in parts {
            let start = token.as_ptr() as usize - line.as_ptr() as usize;
            flags.push(MetaFlag::new(
                token[0],
                line.slice(start + 1..start + token.len()),
            ));
        }
        match len {
            Some(len) => {
                self.pending = Some((flags, len));
                self.decode(buf)
            }
            None => Some(Ok(MetaReply {
                status,
                flags,
                value: None,
            })),
        }
    }
}
