#![doc = include_str!("../README.md")]
//!
//! # Map of the crate
//!
//! - [`Partition`]: one queue partition's replicated state machine (`partition/`): apply a [`Command`], get a
//!   [`Response`]; snapshot and restore.
//! - [`Command`], [`Op`], [`Response`], [`Outcome`], [`Event`]: what is replicated and what it returns, with their
//!   versioned encoding (`command.rs`).
//! - [`QueueSettings`]: a queue's settings and their validation (`settings.rs`).
//! - [`NewMessage`], [`Delivery`], [`Receipt`], [`PeekedMessage`], [`DeadLetterInfo`]: messages (`message.rs`).
//! - [`Barrier`], [`BarrierRef`], [`Target`], [`TaskOutcome`], [`JoinInfo`], [`OutboxEntry`]: join barriers,
//!   including tasks in other partitions (`barrier.rs`).
//! - [`Storage`], [`WriteBatch`], [`MemStorage`], [`storage::check_conformance`]: the ordered key-value store
//!   the state lives in (`storage.rs`); the layout of its records is in `record.rs`, the in-memory indexes in
//!   `index.rs`.
//! - [`QueueError`], [`StorageError`], [`SnapshotError`]: errors (`error.rs`).
//! - [`host`] (feature `raft`, on by default): a partition on a Raft group of trestle-raft, its state in the
//!   group's key space of the node's RocksDB, with a leader clock and a handle to run operations from any node.
//! - [`server`] (feature `raft`): [`server::QueueHost`] runs a cluster's partitions on a node and
//!   [`server::QueueApi`] serves the gRPC API over them (sharded queues, long polling, barriers across partitions).
//! - [`steward`] (feature `raft`): partitions follow the cluster's membership, and their leaders spread over
//!   the members.
//! - [`api`] (feature `grpc`, on by default): the gRPC wire types and how refusals travel as statuses.
//! - [`client`] (feature `grpc`): [`client::QueueClient`], over any members of a cluster.
//! - [`worker`] (feature `grpc`): [`worker::Worker`], a consumer runtime (concurrency, heartbeats, retries with
//!   backoff, dead-lettering, graceful shutdown).

#[cfg(feature = "grpc")]
pub mod api;
mod barrier;
#[cfg(feature = "grpc")]
pub mod client;
mod command;
mod error;
#[cfg(feature = "raft")]
pub mod host;
mod index;
mod message;
mod partition;
mod record;
#[cfg(feature = "raft")]
pub mod server;
mod settings;
#[cfg(feature = "raft")]
pub mod steward;
pub mod storage;
#[cfg(feature = "grpc")]
pub mod worker;

pub use barrier::{
    Barrier, BarrierId, BarrierRef, BarrierState, JoinInfo, MAX_BARRIER_TASKS, MAX_TASK_RESULT, OutboxEntry,
    Target, TaskOutcome,
};
pub use command::{
    AckEntry, Command, ENCODING_VERSION, Event, Op, Outcome, QueueStats, RedriveFilter, Redriven, Response,
    Sent,
};
pub use error::{QueueError, SnapshotError, StorageError};
pub use message::{
    DeadLetterInfo, Delivery, MAX_ERROR_LEN, MAX_KEY_LEN, MessageId, MessageState, NewMessage, PeekedMessage,
    Receipt,
};
pub use partition::{MAX_BATCH, MAX_DELAY_MS, Partition, REASON_MAX_DELIVERIES};
pub use settings::{
    MAX_DEDUP_WINDOW_MS, MAX_DELIVERIES_LIMIT, MAX_MESSAGE_SIZE_LIMIT, MAX_QUEUE_NAME_LEN,
    MAX_VISIBILITY_TIMEOUT_MS, MIN_RETENTION_MS, QueueSettings, validate_name,
};
pub use storage::{Detached, MemStorage, Pairs, Storage, WriteBatch, WriteOp};
