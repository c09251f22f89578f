//! `trestle bench kv`: a put or range workload with N concurrent clients against any etcd-v3 endpoint list (a
//! Trestle cluster or a real etcd), reporting throughput and latency percentiles. A command, not a test: its
//! numbers depend on the machine, so it prints the conditions with them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use etcd_client::{Client, GetOptions};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

/// `trestle bench ...`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum BenchCommand {
    /// Key-value puts or ranges.
    Kv(KvBenchArgs),
    /// A work queue end to end (send, receive, ack): Trestle, RabbitMQ quorum queues or NATS JetStream.
    Queue(crate::bench_queue::QueueBenchArgs),
    /// Lock acquire-release cycles with N contending clients.
    Lock(crate::bench_lock::LockBenchArgs),
    /// Election failover: a leader process is SIGKILLed; time until another candidate leads.
    ElectionFailover(crate::bench_lock::FailoverBenchArgs),
    /// Raft leader failover: kill -9 the leader while writing; time to the first acknowledged write.
    Failover(crate::bench_failover::FailoverArgs),
    /// A rolling restart: SIGTERM and restart each member in turn while clients write; the longest write pause
    /// and the acknowledged writes lost (none expected).
    RollingRestart(crate::bench_rolling::RollingRestartArgs),
    /// A cache node over the meta protocol, or the replicated cache client (`--client`).
    Cache(crate::bench_cache::CacheBenchArgs),
    /// A candidate that leads until killed (used by `election-failover`).
    #[command(hide = true)]
    ElectionCandidate(crate::bench_lock::CandidateArgs),
}

/// Which operation the clients repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvOp {
    /// Put a random key of the key space.
    Put,
    /// Linearizable single-key read of a random key (the key space is written first).
    Range,
    /// Serializable (local) single-key read.
    RangeSerializable,
}

/// Options of `trestle bench kv`.
#[derive(Debug, Args)]
pub struct KvBenchArgs {
    /// Comma-separated client URLs of the cluster under test (Trestle or etcd).
    #[arg(long, env = "ETCDCTL_ENDPOINTS")]
    pub endpoints: String,
    /// The operation.
    #[arg(long, value_enum, default_value_t = KvOp::Put)]
    pub op: KvOp,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// gRPC connections the clients share (round-robin), like etcd's benchmark `--conns`.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// Total operations.
    #[arg(long, default_value_t = 20_000)]
    pub total: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// A label printed with the results (e.g. "trestle" or "etcd").
    #[arg(long, default_value = "")]
    pub label: String,
}

/// One benchmark's outcome.
#[derive(Debug, Clone)]
pub struct KvBenchReport {
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Successful operations per second.
    pub throughput: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
}

fn key(i: u64) -> String {
    format!("bench/{i:012}")
}

/// Runs the benchmark and prints one line of results.
pub(crate) async fn run(args: KvBenchArgs) -> Result<KvBenchReport, String> {
    if args.clients == 0 || args.conns == 0 || args.total == 0 || args.key_space == 0 {
        return Err("--clients, --conns, --total and --key-space must be at least 1".into());
    }
    let endpoints: Vec<String> = args.endpoints.split(',').map(|e| e.trim().to_string()).collect();
    let mut connections = Vec::new();
    for _ in 0..args.conns.min(args.clients) {
        connections.push(
            Client::connect(&endpoints, None)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", args.endpoints))?,
        );
    }
    let value = vec![b'v'; args.value_size];
    if args.op != KvOp::Put {
        // Reads need something to read: write the key space once (not timed).
        let mut client = connections[0].clone();
        for i in 0..args.key_space.min(args.total) {
            client
                .put(key(i), value.clone(), None)
                .await
                .map_err(|e| format!("preload failed: {e}"))?;
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let merged = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut client = connections[c % connections.len()].clone();
        let (next, errors, merged, value) = (next.clone(), errors.clone(), merged.clone(), value.clone());
        let (op, total, key_space) = (args.op, args.total, args.key_space);
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            // A cheap per-client sequence spreads keys without a shared random generator.
            let mut state = (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let k = key(state % key_space);
                let t = Instant::now();
                let result = match op {
                    KvOp::Put => client.put(k, value.clone(), None).await.map(|_| ()),
                    KvOp::Range => client.get(k, None).await.map(|_| ()),
                    KvOp::RangeSerializable => client
                        .get(k, Some(GetOptions::new().with_serializable()))
                        .await
                        .map(|_| ()),
                };
                match result {
                    Ok(()) => {
                        let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = merged.lock().await.add(&local);
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("a client task failed: {e}"))?;
    }
    let elapsed = started.elapsed();
    let histogram = merged.lock().await;
    let ok = histogram.len();
    let us = |q: f64| Duration::from_micros(histogram.value_at_quantile(q));
    let report = KvBenchReport {
        ok,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        throughput: ok as f64 / elapsed.as_secs_f64(),
        p50: us(0.5),
        p99: us(0.99),
        p999: us(0.999),
    };
    println!(
        "{label:<8} op={op:?} clients={clients} conns={conns} value={value}B ok={ok} errors={errors} \
         throughput={tp:.0}/s p50={p50:.2?} p99={p99:.2?} p999={p999:.2?} elapsed={el:.2?}",
        label = args.label,
        op = args.op,
        clients = args.clients,
        conns = connections.len(),
        value = args.value_size,
        ok = report.ok,
        errors = report.errors,
        tp = report.throughput,
        p50 = report.p50,
        p99 = report.p99,
        p999 = report.p999,
        el = report.elapsed,
    );
    Ok(report)
}
