//! `trestle bench cache`: load for a cache node over the meta protocol, and the cost of the replicated client.
//!
//! - **Node** (default): `--concurrency` connections to one node (a Trestle node or memcached 1.6), each with one
//!   request in flight, a mix of `mg` and `ms` (90% gets by default) over a key space written first, so gets hit.
//!   Reports throughput and p50/p99/p999 latency as the load generator sees it (round trip on the socket).
//! - **Client** (`--client`): the same load through `trestle_cache::Client`, one phase after another: a plain
//!   single-node get (a client that knows only the first node), a replicated get that hits the local zone, a
//!   replicated get that misses the local zone and falls back to the other one, a single-node set and a replicated
//!   set acknowledged by every zone. The difference between phases is the overhead of replication and fallback.
//!
//! A command, not a test: its numbers depend on the machine, so it prints the conditions with them. Randomness is
//! seeded (`--seed`, printed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trestle_cache::protocol::{MetaFlags, MetaStatus};
use trestle_cache::{Ack, Client, ClientConfig, Command, NodeSpec, ReplyDecoder};

/// Options of `trestle bench cache`.
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct CacheBenchArgs {
    /// Nodes' memcached addresses. Node mode uses the first; client mode puts the first in zone `a` and the
    /// second (if given) in zone `b`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:11211")]
    pub nodes: Vec<SocketAddr>,
    /// Measure through the replicated client instead of raw meta commands.
    #[arg(long)]
    pub client: bool,
    /// Concurrent connections (node mode) or callers (client mode), each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Share of gets in node mode (the rest are sets).
    #[arg(long, default_value_t = 0.9)]
    pub get_ratio: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys (written before the load, so gets hit).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Seed of the key and operation choice (random if not given; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Client mode: the client's per-request timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// A small, fast, seeded generator (xorshift64*): the choice of keys need not be strong, only repeatable.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

fn key(prefix: &str, i: u64) -> Bytes {
    Bytes::from(format!("{prefix}{i:010}"))
}

/// One phase's outcome.
struct Phase {
    ops: u64,
    errors: u64,
    misses: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Phase {
    fn print(&self, name: &str) {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64;
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
            self.ops as f64 / self.elapsed.as_secs_f64(),
            us(0.50),
            us(0.99),
            us(0.999),
            self.errors,
            self.misses,
        );
    }
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

/// What one load task counted.
struct Tally {
    ops: u64,
    errors: u64,
    misses: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Self, String> {
        Ok(Self {
            ops: 0,
            errors: 0,
            misses: 0,
            latency: histogram()?,
        })
    }

    /// Records one call that began at `begun`: `Ok(false)` is a miss. A failed call (a timeout, or a breaker
    /// failing fast) is counted apart: it is neither an operation nor a latency sample, so fast failures cannot
    /// pass for throughput.
    fn record(&mut self, begun: Instant, result: Result<bool, String>) {
        match result {
            Ok(hit) => {
                let _ = self.latency.record(begun.elapsed().as_micros().max(1) as u64);
                self.ops += 1;
                self.misses += u64::from(!hit);
            }
            Err(_) => self.errors += 1,
        }
    }
}

/// Runs `concurrency` copies of `worker` (each with its own seeded generator) until the phase's end.
async fn run_phase<W, Fut>(args: &CacheBenchArgs, seed: u64, worker: W) -> Result<Phase, String>
where
    W: Fn(Rng, Instant) -> Fut,
    Fut: std::future::Future<Output = Result<Tally, String>> + Send + 'static,
{
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tokio::spawn(worker(rng, until))
        })
        .collect();
    let mut phase = Phase {
        ops: 0,
        errors: 0,
        misses: 0,
        elapsed: Duration::ZERO,
        latency: histogram()?,
    };
    for task in tasks {
        let tally = task.await.map_err(|e| e.to_string())??;
        phase.ops += tally.ops;
        phase.errors += tally.errors;
        phase.misses += tally.misses;
        phase.latency.add(tally.latency).map_err(|e| e.to_string())?;
    }
    phase.elapsed = started.elapsed();
    Ok(phase)
}

/// One connection speaking the meta protocol, one request at a time.
struct MetaConn {
    stream: TcpStream,
    out: BytesMut,
    buf: BytesMut,
    decoder: ReplyDecoder,
}

impl MetaConn {
    async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            out: BytesMut::with_capacity(8192),
            buf: BytesMut::with_capacity(8192),
            decoder: ReplyDecoder::new(),
        })
    }

    /// Sends one command and returns its reply's status.
    async fn call(&mut self, command: &Command) -> Result<MetaStatus, String> {
        self.out.clear();
        command.encode(&mut self.out);
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(reply) = self.decoder.decode(&mut self.buf) {
                return reply.map(|r| r.status).map_err(|e| e.to_string());
            }
            if self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed".into());
            }
        }
    }
}

fn meta_get(key: Bytes) -> Command {
    Command::MetaGet {
        key,
        flags: MetaFlags::new().with(b'v'),
    }
}

fn meta_set(key: Bytes, value: Bytes) -> Command {
    Command::MetaSet {
        key,
        data: value,
        flags: MetaFlags::new(),
    }
}

fn conditions(args: &CacheBenchArgs, seed: u64) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "trestle bench cache: {}",
        if args.client {
            "client"
        } else {
            "node (meta protocol)"
        }
    );
    println!(
        "conditions: {cores} cores visible to this process, load average {}, {} build",
        load.join(" "),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "load: {} concurrent, one request in flight each, {} s per phase, {} keys, {}-byte values, seed {seed}",
        args.concurrency, args.seconds, args.keys, args.value_size
    );
    println!("nodes: {:?}", args.nodes);
    if args.client {
        println!("client timeout: {} ms per request", args.timeout_ms);
    }
    println!(
        "(latency: microseconds, each request's round trip as the load generator sees it; failed requests are \
         counted under errors only, not in ops/s or latency)"
    );
}

/// Runs the benchmark and prints its report.
pub(crate) async fn run(args: CacheBenchArgs) -> Result<(), String> {
    if args.nodes.is_empty()
        || args.concurrency == 0
        || args.seconds == 0
        || args.keys == 0
        || args.timeout_ms == 0
    {
        return Err("--nodes, --concurrency, --seconds, --keys and --timeout-ms must be positive".into());
    }
    if !(0.0..=1.0).contains(&args.get_ratio) {
        return Err(format!(
            "--get-ratio must be between 0 and 1, got {}",
            args.get_ratio
        ));
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    conditions(&args, seed);
    let value = Bytes::from(vec![b'v'; args.value_size]);
    if args.client {
        client_phases(&args, seed, value).await
    } else {
        node_phase(&args, seed, value).await
    }
}

async fn node_phase(args: &CacheBenchArgs, seed: u64, value: Bytes) -> Result<(), String> {
    let addr = args.nodes[0];
    let mut conn = MetaConn::connect(addr).await?;
    for i in 0..args.keys {
        conn.call(&meta_set(key("bench:", i), value.clone())).await?;
    }
    let (keys, ratio) = (args.keys, args.get_ratio);
    let phase = run_phase(args, seed, |mut rng, until| {
        let value = value.clone();
        async move {
            let mut conn = MetaConn::connect(addr).await?;
            let mut tally = Tally::new()?;
            while Instant::now() < until {
                let key = key("bench:", rng.below(keys));
                let begun = Instant::now();
                let result = if rng.chance(ratio) {
                    conn.call(&meta_get(key)).await.map(|s| s == MetaStatus::Value)
                } else {
                    conn.call(&meta_set(key, value.clone()))
                        .await
                        .map(|s| s == MetaStatus::Stored)
                };
                tally.record(begun, result);
            }
            Ok(tally)
        }
    })
    .await?;
    println!("| phase | ops/s | p50 | p99 | p999 | errors | misses |\n|---|---|---|---|---|---|---|");
    phase.print(&format!("mg/ms {:.0}% gets", ratio * 100.0));
    Ok(())
}

fn client_of(specs: Vec<NodeSpec>, local: &str, ack: Ack, timeout: Duration) -> Result<Client, String> {
    let concurrency = 1024;
    Client::new(
        ClientConfig::new(specs, local)
            .with_write_ack(ack)
            .with_read_repair(false)
            .with_timeout(timeout)
            .with_max_connections_per_node(concurrency),
    )
    .map_err(|e| e.to_string())
}

/// Writes one preload key, trying up to three times (a write can time out on a busy machine); the third failure
/// stops the benchmark, since its reads would then miss.
async fn preload(client: &Client, key: &Bytes, value: &Bytes) -> Result<(), String> {
    let mut attempt = 1;
    loop {
        match client.set(key, value.clone(), Duration::ZERO).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 3 => {
                return Err(format!(
                    "writing preload key {} failed 3 times (last: {e}); is every node up?",
                    String::from_utf8_lossy(key)
                ));
            }
            Err(_) => attempt += 1,
        }
    }
}

async fn client_phases(args: &CacheBenchArgs, seed: u64, value: Bytes) -> Result<(), String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let a = NodeSpec::new("a-1", args.nodes[0], "a");
    let single = client_of(vec![a.clone()], "a", Ack::One, timeout)?;
    let replicated = match args.nodes.get(1) {
        Some(&addr) => {
            let b = NodeSpec::new("b-1", addr, "b");
            Some((
                client_of(vec![a.clone(), b.clone()], "a", Ack::All, timeout)?,
                client_of(vec![a, b], "b", Ack::All, timeout)?,
            ))
        }
        None => None,
    };
    // Keys in every zone for hits; keys only in zone a for the fallback phase (read from zone b).
    for i in 0..args.keys {
        match &replicated {
            Some((both, _)) => preload(both, &key("bench:", i), &value).await?,
            None => preload(&single, &key("bench:", i), &value).await?,
        }
        if replicated.is_some() {
            preload(&single, &key("only-a:", i), &value).await?;
        }
    }
    println!("| phase | ops/s | p50 | p99 | p999 | errors | misses |\n|---|---|---|---|---|---|---|");
    let keys = args.keys;
    let get = |client: Client, prefix: &'static str| {
        move |mut rng: Rng, until: Instant| {
            let client = client.clone();
            async move {
                let mut tally = Tally::new()?;
                while Instant::now() < until {
                    let key = key(prefix, rng.below(keys));
                    let begun = Instant::now();
                    let result = client.get(&key).await;
                    tally.record(begun, result.map(|v| v.is_some()).map_err(|e| e.to_string()));
                }
                Ok(tally)
            }
        }
    };
    let set = |client: Client| {
        let value = value.clone();
        move |mut rng: Rng, until: Instant| {
            let (client, value) = (client.clone(), value.clone());
            async move {
                let mut tally = Tally::new()?;
                while Instant::now() < until {
                    let key = key("bench:", rng.below(keys));
                    let begun = Instant::now();
                    let result = client.set(&key, value.clone(), Duration::ZERO).await;
                    tally.record(begun, result.map(|()| true).map_err(|e| e.to_string()));
                }
                Ok(tally)
            }
        }
    };
    run_phase(args, seed, get(single.clone(), "bench:"))
        .await?
        .print("get, single node");
    if let Some((from_a, from_b)) = &replicated {
        run_phase(args, seed, get(from_a.clone(), "bench:"))
            .await?
            .print("get, 2 zones, local hit");
        run_phase(args, seed, get(from_b.clone(), "only-a:"))
            .await?
            .print("get, 2 zones, local miss, fallback hit");
    }
    run_phase(args, seed, set(single.clone()))
        .await?
        .print("set, single node");
    if let Some((from_a, _)) = &replicated {
        run_phase(args, seed, set(from_a.clone()))
            .await?
            .print("set, 2 zones, Ack::All");
    }
    Ok(())
}
