//! # trestle
//!
//! The Trestle node: one binary, `trestle`, that hosts Trestle's services (today the Raft coordination store,
//! later the queue and cache nodes) and is also their command-line tool.
//!
//! - `trestle serve` runs one node, configured by etcd-style flags, `TRESTLE_*` environment variables or a
//!   TOML file ([`ServeArgs`]).
//! - `trestle local-cluster` runs N nodes as separate processes on 127.0.0.1 for development and the README's
//!   quick start ([`LocalClusterArgs`]).
//! - `trestle bench kv` measures put and range throughput and latency against any etcd-v3 endpoints
//!   ([`KvBenchArgs`]).
//!
//! The command line lives in this library so the binary stays a thin shell and tests can drive it.

mod bench;
mod bench_cache;
mod bench_failover;
mod bench_lock;
mod bench_queue;
mod bench_rolling;
mod cache;
mod cli;
pub mod coordination;
mod local_cluster;
mod queue;
mod serve;
mod snapshot;

pub use bench::{BenchCommand, KvBenchArgs, KvBenchReport, KvOp};
pub use bench_cache::CacheBenchArgs;
pub use bench_failover::FailoverArgs;
pub use bench_lock::{CandidateArgs, FailoverBenchArgs, LockBenchArgs};
pub use bench_queue::{QueueBenchArgs, QueueBenchError, QueueBenchReport, QueueSystem};
pub use bench_rolling::RollingRestartArgs;
pub use cache::{CacheCommand, CacheProxyArgs, CacheServeArgs, WriteAck};
pub use cli::{Cli, Command, run};
pub use local_cluster::LocalClusterArgs;
pub use queue::{
    QueueAckArgs, QueueCommand, QueueCreateArgs, QueueListArgs, QueueNackArgs, QueueNameArgs, QueuePeekArgs,
    QueueReceiveArgs, QueueRedriveArgs, QueueSendArgs, QueueTarget,
};
pub use serve::{ServeArgs, ServeError, coordination_routes, parse_url_addr};
pub use snapshot::{RestoreArgs, SnapshotCommand};
