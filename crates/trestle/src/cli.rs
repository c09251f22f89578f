//! The `trestle` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::bench::BenchCommand;
use crate::cache::CacheCommand;
use crate::local_cluster::LocalClusterArgs;
use crate::queue::QueueCommand;
use crate::serve::ServeArgs;
use crate::snapshot::SnapshotCommand;

/// The Trestle node and its command-line tool.
#[derive(Debug, Parser)]
#[command(name = "trestle", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `trestle`.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Run one node (etcd-compatible client API, Raft peer API, /health and /metrics).
    Serve(Box<ServeArgs>),
    /// Start N nodes as separate processes on 127.0.0.1 and keep them in the foreground.
    LocalCluster(LocalClusterArgs),
    /// Benchmarks against any etcd-v3 endpoint list (Trestle or etcd).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Backups: seed a new cluster from what `etcdctl snapshot save` wrote.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// A memcached-compatible cache node.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// The work queue's client: create queues, send, receive, stats, dead letters.
    #[command(subcommand)]
    Queue(QueueCommand),
}

/// Runs one parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_tracing();
    let mut builder = match &cli.command {
        Command::Cache(CacheCommand::Serve(args)) if args.threads == 1 => {
            tokio::runtime::Builder::new_current_thread()
        }
        Command::Cache(CacheCommand::Serve(args)) if args.threads > 1 => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(args.threads);
            builder
        }
        Command::Serve(args) if args.threads > 0 => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(args.threads);
            builder
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trestle: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime
            .block_on(crate::serve::serve(*args))
            .map_err(|e| e.to_string()),
        Command::LocalCluster(args) => runtime.block_on(crate::local_cluster::run(args)),
        Command::Snapshot(SnapshotCommand::Restore(args)) => runtime.block_on(crate::snapshot::restore(args)),
        Command::Cache(CacheCommand::Serve(args)) => runtime.block_on(crate::cache::serve(args)),
        Command::Cache(CacheCommand::Proxy(args)) => runtime.block_on(crate::cache::proxy(args)),
        Command::Cache(CacheCommand::Warmups(args)) => runtime.block_on(crate::cache::warmups(args)),
        Command::Bench(BenchCommand::Cache(args)) => runtime.block_on(crate::bench_cache::run(args)),
        Command::Queue(command) => runtime.block_on(crate::queue::run(command)),
        Command::Bench(BenchCommand::Kv(args)) => runtime.block_on(crate::bench::run(args)).map(|_| ()),
        Command::Bench(BenchCommand::Lock(args)) => runtime.block_on(crate::bench_lock::lock(args)),
        Command::Bench(BenchCommand::ElectionFailover(args)) => {
            runtime.block_on(crate::bench_lock::election_failover(args))
        }
        Command::Bench(BenchCommand::Failover(args)) => runtime.block_on(crate::bench_failover::run(args)),
        Command::Bench(BenchCommand::RollingRestart(args)) => {
            runtime.block_on(crate::bench_rolling::run(args))
        }
        Command::Bench(BenchCommand::ElectionCandidate(args)) => {
            runtime.block_on(crate::bench_lock::candidate(args))
        }
        Command::Bench(BenchCommand::Queue(args)) => runtime.block_on(crate::bench_queue::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("trestle: {message}");
            if let Some(hint) = hint_for(&message) {
                eprintln!("trestle: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do about a fatal error whose cause the operator can fix, when its message shows one.
fn hint_for(message: &str) -> Option<&'static str> {
    message.contains("No space left on device").then_some(
        "the data directory's volume is full: free space on it (or grow it), then start the node again; \
         everything it acknowledged is on disk, and it catches up from the other members",
    )
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_volume_gets_a_hint_and_other_errors_none() {
        let full =
            "data directory /d/db: IO error: No space left on device: While appending to file: /d/db/8.sst";
        assert!(hint_for(full).is_some_and(|h| h.contains("free space")));
        assert_eq!(hint_for("raft group 0 stopped: the log is damaged"), None);
    }
}
