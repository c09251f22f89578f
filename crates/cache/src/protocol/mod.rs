//! The memcached protocol, sans-IO: commands as values, a [`Decoder`] that turns bytes into them, and the reply
//! vocabulary both sides share.
//!
//! Nothing here reads a socket or a clock. The node's connection loop (`crate::server`) feeds bytes to a
//! [`Decoder`] and hands each [`Frame`] to [`crate::Engine`]; the client (`crate::client`) writes commands with
//! [`Command::encode`] and reads answers with [`ReplyDecoder`]. Keeping the parser free of I/O is what lets the
//! property tests throw arbitrary, truncated and pipelined input at it.
//!
//! Reply formats follow memcached 1.6's `doc/protocol.txt`, checked against memcached 1.6.18 by
//! `tests/conformance.rs`.

mod command;
mod decode;
mod meta;
mod reply;

pub use command::{ArithMode, Command, StoreMode};
pub use decode::{Decoder, DecoderConfig, Frame, ProtocolError};
pub use meta::{MetaFlag, MetaFlags};
pub use reply::{MetaReply, MetaStatus, ReplyDecoder, ReplyError};

/// The longest key memcached accepts, in bytes.
pub const MAX_KEY_LEN: usize = 250;
