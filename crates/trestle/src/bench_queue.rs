//! `trestle bench queue`: producers and consumers of 1 KiB messages, end to end (send, receive, ack), against a
//! Trestle queue, a RabbitMQ quorum queue (publisher confirms, manual acks) or a NATS JetStream work-queue stream
//! (file storage, explicit acks), with the same load shape for each. It reports the end-to-end throughput
//! (messages acknowledged by consumers per second) and the latency from the moment a producer started sending a
//! message (the time is written into the payload) to the moment the consumer's ack call returned.
//!
//! Each run makes its own queue (or stream) with a fresh name and deletes it at the end, so runs do not see each
//! other's messages. A command, not a test: its numbers depend on the machine, so it prints the conditions with
//! them, and a last `result` line of `key=value` pairs for scripts.
//!
//! Load shape: every producer sends a batch (`--send-batch` messages, one time stamp for the batch) and waits for
//! all of them to be acknowledged by the system before the next; every consumer takes up to `--receive-batch`
//! messages at a time and acknowledges them together. A RabbitMQ consumer gets deliveries pushed (up to its
//! prefetch) and a JetStream one pulls ahead while its acks travel; a Trestle consumer asks for its next batch while
//! the previous batch's ack commits (one ack in flight, as a worker runtime with two handlers would). Every
//! message's latency ends when its ack call returned. Producers pause while more than `--max-backlog` messages
//! are sent but not yet acknowledged by a consumer, so the latency measures the systems and not a queue that only
//! grows.
//!
//! What each system's acknowledgements mean is printed with the results: a Trestle send or ack returns once the
//! write is fsync'd on a majority of its partition's members; a RabbitMQ publisher confirm once the quorum queue's
//! majority has written (and fsync'd) it, while AMQP acks are not confirmed; a JetStream publish ack once a
//! majority has the message in its file store (fsync'd later, in the background), and its ack is not confirmed
//! unless `--nats-double-ack`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::task::{JoinHandle, JoinSet};

use trestle_queue::client::{ClientConfig, ClientError, QueueClient};
use trestle_queue::{NewMessage, QueueSettings};

/// The smallest payload: it carries the send time.
const STAMP_LEN: usize = 8;
/// How long an idle consumer waits for a message before it checks whether the run is over.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// Which system `trestle bench queue` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueueSystem {
    /// A Trestle cluster serving queues (`trestle serve --queue-partitions N`); endpoints are its client URLs.
    Trestle,
    /// A RabbitMQ cluster; endpoints are AMQP URIs (`amqp://guest:guest@127.0.0.1:5672/%2f`).
    Rabbitmq,
    /// A NATS cluster with JetStream; endpoints are NATS URLs (`nats://127.0.0.1:4222`).
    Nats,
}

impl QueueSystem {
    fn name(self) -> &'static str {
        match self {
            QueueSystem::Trestle => "trestle",
            QueueSystem::Rabbitmq => "rabbitmq",
            QueueSystem::Nats => "nats",
        }
    }
}

/// Options of `trestle bench queue`.
#[derive(Clone, Debug, Args)]
pub struct QueueBenchArgs {
    /// The system under test.
    #[arg(long, value_enum, default_value = "trestle")]
    pub system: QueueSystem,
    /// Comma-separated endpoints of the cluster (see `--system`); producers and consumers are spread over them.
    #[arg(long)]
    pub endpoints: String,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Concurrent consumers, each with its own connection.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of load before the measurement starts (not counted).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Payload size in bytes (at least 8: the send time).
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Messages a producer sends before it waits for their acknowledgements (Trestle: one Send request;
    /// RabbitMQ: publishes, then their confirms; NATS: publishes, then their publish acks).
    #[arg(long, default_value_t = 16)]
    pub send_batch: u32,
    /// Messages a consumer takes at a time and acknowledges together (Trestle: Receive's max, then one Ack;
    /// RabbitMQ: the prefetch count, acked with `multiple`; NATS: the pull batch, one ack each).
    #[arg(long, default_value_t = 32)]
    pub receive_batch: u32,
    /// Producers pause while more messages than this are sent but not yet acknowledged by a consumer.
    #[arg(long, default_value_t = 20_000)]
    pub max_backlog: u64,
    /// Trestle: partitions of the queue (1 to the cluster's `--queue-partitions`).
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,
    /// RabbitMQ quorum queue and NATS stream: replicas.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// NATS: confirm every ack with the server (AckAck) instead of sending it without an answer.
    #[arg(long)]
    pub nats_double_ack: bool,
    /// A label printed with the results.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueBenchError {
    /// An option is unusable.
    #[error("bench queue: {0}")]
    Options(String),
    /// The Trestle cluster refused or failed a request.
    #[error("trestle queue: {0}")]
    Trestle(#[from] ClientError),
    /// RabbitMQ refused or failed a request.
    #[error("rabbitmq: {context}: {source}")]
    Rabbitmq {
        /// What was being done.
        context: String,
        /// The client's error.
        source: lapin::Error,
    },
    /// NATS refused or failed a request.
    #[error("nats: {context}: {message}")]
    Nats {
        /// What was being done.
        context: String,
        /// The client's error.
        message: String,
    },
}

fn rabbit(context: impl Into<String>) -> impl FnOnce(lapin::Error) -> QueueBenchError {
    let context = context.into();
    move |source| QueueBenchError::Rabbitmq { context, source }
}

fn nats<E: std::fmt::Display>(context: impl Into<String>) -> impl FnOnce(E) -> QueueBenchError {
    let context = context.into();
    move |e| QueueBenchError::Nats {
        context,
        message: e.to_string(),
    }
}

/// What one run measured.
#[derive(Debug)]
pub struct QueueBenchReport {
    /// Messages acknowledged by consumers per second, in the measured window.
    pub acked_per_sec: f64,
    /// Messages whose send the system acknowledged per second, in the measured window.
    pub sent_per_sec: f64,
    /// End-to-end latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
    /// The slowest, microseconds.
    pub max_us: u64,
    /// Messages acknowledged by consumers in the window.
    pub acked: u64,
    /// Failed requests (each retried by the loop that made it).
    pub errors: u64,
    /// Sends acknowledged over the whole run, warm-up included.
    pub sent_total: u64,
    /// Messages acknowledged by consumers over the whole run, warm-up included.
    pub acked_total: u64,
}

/// The run's clock and counters, shared by every producer and consumer.
struct Run {
    epoch: Instant,
    /// Nanoseconds since `epoch` where the measured window starts and ends.
    from: u64,
    until: u64,
    sent: AtomicU64,
    acked: AtomicU64,
    /// The same over the whole run, warm-up and the last moments included (what the servers wrote).
    sent_total: AtomicU64,
    acked_total: AtomicU64,
    /// Sent (or being sent) and not yet acknowledged by a consumer.
    backlog: AtomicI64,
    errors: AtomicU64,
    stop: AtomicBool,
    max_backlog: i64,
    payload: usize,
}

impl Run {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn over(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.now() >= self.until
    }

    fn in_window(&self, t: u64) -> bool {
        (self.from..self.until).contains(&t)
    }

    /// A payload carrying `stamp` (nanoseconds since the epoch) in its first bytes.
    fn payload(&self, stamp: u64) -> Vec<u8> {
        let mut payload = vec![0x2a; self.payload];
        payload[..STAMP_LEN].copy_from_slice(&stamp.to_le_bytes());
        payload
    }

    /// Waits while the backlog is full, then counts `n` more messages in it; false when the run is over.
    async fn admit(&self, n: u32) -> bool {
        while self.backlog.load(Ordering::Relaxed) >= self.max_backlog {
            if self.over() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.backlog.fetch_add(i64::from(n), Ordering::Relaxed);
        !self.over()
    }

    fn sent(&self, n: u32) {
        self.sent_total.fetch_add(u64::from(n), Ordering::Relaxed);
        if self.in_window(self.now()) {
            self.sent.fetch_add(u64::from(n), Ordering::Relaxed);
        }
    }

    /// A send that failed: its messages leave the backlog (they may or may not be in the queue).
    async fn send_failed(&self, n: u32, error: impl std::fmt::Display) {
        self.backlog.fetch_sub(i64::from(n), Ordering::Relaxed);
        self.error(error).await;
    }

    async fn error(&self, error: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("bench queue: {error} (retrying)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// A consumer's ack of messages carrying these payloads returned at `at`: records their latencies.
    fn acked<'a>(
        &self,
        histogram: &mut Histogram<u64>,
        at: Instant,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) {
        let now = u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut n = 0;
        for payload in payloads {
            n += 1;
            self.acked_total.fetch_add(1, Ordering::Relaxed);
            if !self.in_window(now) {
                continue;
            }
            let stamp = payload
                .get(..STAMP_LEN)
                .and_then(|b| <[u8; STAMP_LEN]>::try_from(b).ok())
                .map_or(now, u64::from_le_bytes);
            histogram.saturating_record(now.saturating_sub(stamp) / 1_000);
            self.acked.fetch_add(1, Ordering::Relaxed);
        }
        self.backlog.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Latencies in microseconds, 1 us to 10 min, 3 significant digits.
fn histogram() -> Result<Histogram<u64>, QueueBenchError> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| QueueBenchError::Options(format!("latency histogram: {e}")))
}

/// Runs `trestle bench queue` and prints its report.
pub(crate) async fn run(args: QueueBenchArgs) -> Result<(), String> {
    let report = bench(&args).await.map_err(|e| e.to_string())?;
    print_report(&args, &report);
    Ok(())
}

/// Runs the benchmark once.
pub(crate) async fn bench(args: &QueueBenchArgs) -> Result<QueueBenchReport, QueueBenchError> {
    validate(args)?;
    let endpoints: Vec<String> = args
        .endpoints
        .split(',')
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    // A fresh queue name per run.
    let suffix = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    // The queue is deleted whether or not the run succeeded; the run's error comes first.
    let (result, cleanup) = match args.system {
        QueueSystem::Trestle => {
            let setup = trestle::Setup::new(args, &endpoints, &suffix).await?;
            let result = measure(args, &setup).await;
            (result, setup.cleanup().await)
        }
        QueueSystem::Rabbitmq => {
            let setup = rabbitmq::Setup::new(args, &endpoints, &suffix).await?;
            let result = measure(args, &setup).await;
            (result, setup.cleanup().await)
        }
        QueueSystem::Nats => {
            let setup = nats::Setup::new(args, &endpoints, &suffix).await?;
            let result = measure(args, &setup).await;
            (result, setup.cleanup().await)
        }
    };
    let report = result?;
    cleanup?;
    Ok(report)
}

fn validate(args: &QueueBenchArgs) -> Result<(), QueueBenchError> {
    let bad = |m: String| Err(QueueBenchError::Options(m));
    if args.endpoints.split(',').all(|e| e.trim().is_empty()) {
        return bad("--endpoints is empty: give the cluster's URLs, comma-separated".into());
    }
    if args.producers == 0 || args.consumers == 0 {
        return bad(format!(
            "--producers {} and --consumers {} must both be at least 1",
            args.producers, args.consumers
        ));
    }
    if args.duration == 0 {
        return bad("--duration must be at least 1 second".into());
    }
    if args.payload < STAMP_LEN || args.payload > 1024 * 1024 {
        return bad(format!(
            "--payload {} must be {STAMP_LEN} bytes (the send time) to 1 MiB",
            args.payload
        ));
    }
    let max_batch = trestle_queue::MAX_BATCH;
    if args.send_batch == 0 || args.send_batch > max_batch {
        return bad(format!(
            "--send-batch {} must be 1 to {max_batch}",
            args.send_batch
        ));
    }
    // RabbitMQ's prefetch count is a 16-bit number.
    if args.receive_batch == 0 || args.receive_batch > u32::from(u16::MAX).min(max_batch) {
        return bad(format!(
            "--receive-batch {} must be 1 to {}",
            args.receive_batch,
            u32::from(u16::MAX).min(max_batch)
        ));
    }
    if args.max_backlog < u64::from(args.send_batch) {
        return bad(format!(
            "--max-backlog {} must be at least --send-batch {}",
            args.max_backlog, args.send_batch
        ));
    }
    if args.partitions == 0 {
        return bad("--partitions must be at least 1".into());
    }
    if args.replicas == 0 {
        return bad("--replicas must be at least 1".into());
    }
    Ok(())
}

/// One system under test: makes producers and consumers over the queue it created.
trait System {
    type Producer: Producer;
    type Consumer: Consumer;
    fn producer(&self, i: usize) -> impl Future<Output = Result<Self::Producer, QueueBenchError>> + Send;
    fn consumer(&self, i: usize) -> impl Future<Output = Result<Self::Consumer, QueueBenchError>> + Send;
}

trait Producer: Send + 'static {
    /// Sends `batch` payloads and waits until the system acknowledged every one.
    fn send(&mut self, batch: Vec<Vec<u8>>) -> impl Future<Output = Result<(), QueueBenchError>> + Send;
}

trait Consumer: Send + 'static {
    /// Receives up to a batch (waiting at most about `IDLE_WAIT` for the first), acknowledges it and returns the
    /// batches whose acknowledgement finished (a consumer may return a batch at its next call).
    fn take(&mut self) -> impl Future<Output = Result<Vec<Acked>, QueueBenchError>> + Send;
}

/// Payloads a consumer acknowledged, and when its ack call returned.
struct Acked {
    payloads: Vec<Vec<u8>>,
    at: Instant,
}

impl Acked {
    fn now(payloads: Vec<Vec<u8>>) -> Vec<Self> {
        vec![Self {
            payloads,
            at: Instant::now(),
        }]
    }
}

/// Connects the producers and consumers, runs them through the warm-up and the measured window, and reports.
async fn measure<S: System>(args: &QueueBenchArgs, system: &S) -> Result<QueueBenchReport, QueueBenchError> {
    // Everyone connects before the clock starts.
    let mut producers = Vec::with_capacity(args.producers);
    for i in 0..args.producers {
        producers.push(system.producer(i).await?);
    }
    let mut consumers = Vec::with_capacity(args.consumers);
    for i in 0..args.consumers {
        consumers.push(system.consumer(i).await?);
    }
    let warmup = u64::try_from(Duration::from_secs(args.warmup).as_nanos()).unwrap_or(u64::MAX);
    let measured = u64::try_from(Duration::from_secs(args.duration).as_nanos()).unwrap_or(u64::MAX);
    let run = Arc::new(Run {
        epoch: Instant::now(),
        from: warmup,
        until: warmup.saturating_add(measured),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        sent_total: AtomicU64::new(0),
        acked_total: AtomicU64::new(0),
        backlog: AtomicI64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        max_backlog: i64::try_from(args.max_backlog).unwrap_or(i64::MAX),
        payload: args.payload,
    });
    let mut tasks = JoinSet::new();
    for mut producer in producers {
        let run = run.clone();
        let batch = args.send_batch;
        tasks.spawn(async move {
            while run.admit(batch).await {
                let stamp = run.now();
                let payloads = (0..batch).map(|_| run.payload(stamp)).collect();
                match producer.send(payloads).await {
                    Ok(()) => run.sent(batch),
                    Err(e) => run.send_failed(batch, e).await,
                }
            }
            None
        });
    }
    for mut consumer in consumers {
        let run = run.clone();
        let mut histogram = histogram()?;
        tasks.spawn(async move {
            while !run.over() {
                match consumer.take().await {
                    Ok(batches) => {
                        for batch in batches {
                            run.acked(&mut histogram, batch.at, batch.payloads.iter().map(Vec::as_slice));
                        }
                    }
                    Err(e) => run.error(e).await,
                }
            }
            Some(histogram)
        });
    }
    let mut all = histogram()?;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Some(h)) => all
                .add(&h)
                .map_err(|e| QueueBenchError::Options(format!("merging latencies: {e}")))?,
            Ok(None) => {}
            Err(e) => {
                run.stop.store(true, Ordering::Relaxed);
                return Err(QueueBenchError::Options(format!("a load task failed: {e}")));
            }
        }
    }
    let seconds = Duration::from_nanos(run.until - run.from).as_secs_f64();
    let acked = run.acked.load(Ordering::Relaxed);
    Ok(QueueBenchReport {
        acked_per_sec: acked as f64 / seconds,
        sent_per_sec: run.sent.load(Ordering::Relaxed) as f64 / seconds,
        p50_us: all.value_at_quantile(0.50),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
        acked,
        errors: run.errors.load(Ordering::Relaxed),
        sent_total: run.sent_total.load(Ordering::Relaxed),
        acked_total: run.acked_total.load(Ordering::Relaxed),
    })
}

fn print_report(args: &QueueBenchArgs, r: &QueueBenchReport) {
    let system = args.system.name();
    println!(
        "bench queue {system}{}: {} producers (batches of {}), {} consumers (batches of {}), {} B payloads, \
         {} s measured after {} s warm-up, backlog cap {}",
        if args.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", args.label)
        },
        args.producers,
        args.send_batch,
        args.consumers,
        args.receive_batch,
        args.payload,
        args.duration,
        args.warmup,
        args.max_backlog,
    );
    println!("  durability: {}", durability(args));
    println!(
        "  end to end: {:.0} msg/s acknowledged by consumers ({:.0} msg/s sends acknowledged); latency p50 {:.2} ms, \
         p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms; {} errors",
        r.acked_per_sec,
        r.sent_per_sec,
        r.p50_us as f64 / 1e3,
        r.p99_us as f64 / 1e3,
        r.p999_us as f64 / 1e3,
        r.max_us as f64 / 1e3,
        r.errors,
    );
    println!(
        "result system={system} label={} partitions={} producers={} consumers={} acked_per_s={:.0} sent_per_s={:.0} \
         p50_us={} p99_us={} p999_us={} max_us={} acked={} errors={} sent_total={} acked_total={}",
        if args.label.is_empty() { "-" } else { &args.label },
        if args.system == QueueSystem::Trestle {
            args.partitions.to_string()
        } else {
            "-".into()
        },
        args.producers,
        args.consumers,
        r.acked_per_sec,
        r.sent_per_sec,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.acked,
        r.errors,
        r.sent_total,
        r.acked_total,
    );
}

fn durability(args: &QueueBenchArgs) -> String {
    match args.system {
        QueueSystem::Trestle => format!(
            "a send and an ack return once fsync'd on a majority of the partition's 3 members ({} partitions)",
            args.partitions
        ),
        QueueSystem::Rabbitmq => format!(
            "quorum queue, {} replicas: a publisher confirm once a majority wrote and fsync'd the message; \
             consumer acks are not confirmed (AMQP)",
            args.replicas
        ),
        QueueSystem::Nats => format!(
            "JetStream file storage, {} replicas, work-queue retention: a publish ack once a majority stored the \
             message (the server fsyncs its files in the background); consumer acks {}",
            args.replicas,
            if args.nats_double_ack {
                "confirmed by the server (AckAck)"
            } else {
                "not confirmed"
            }
        ),
    }
}

mod trestle {
    //! The Trestle queue, through `trestle_queue::client::QueueClient`.

    use super::*;

    pub(super) struct Setup {
        endpoints: Vec<String>,
        admin: QueueClient,
        queue: String,
        receive_batch: u32,
    }

    /// A client whose first member is `endpoints[i % n]`, so that load is spread over the members.
    fn client(endpoints: &[String], i: usize) -> Result<QueueClient, QueueBenchError> {
        let n = endpoints.len();
        let rotated: Vec<String> = (0..n).map(|k| endpoints[(i + k) % n].clone()).collect();
        Ok(QueueClient::new(ClientConfig::new(rotated))?)
    }

    impl Setup {
        pub(super) async fn new(
            args: &QueueBenchArgs,
            endpoints: &[String],
            suffix: &str,
        ) -> Result<Self, QueueBenchError> {
            let admin = client(endpoints, 0)?;
            let queue = format!("bench-{suffix}");
            admin
                .create_queue(&queue, args.partitions, &QueueSettings::default())
                .await?;
            Ok(Self {
                endpoints: endpoints.to_vec(),
                admin,
                queue,
                receive_batch: args.receive_batch,
            })
        }

        pub(super) async fn cleanup(self) -> Result<(), QueueBenchError> {
            self.admin.delete_queue(&self.queue).await?;
            Ok(())
        }
    }

    pub(super) struct Worker {
        client: QueueClient,
        queue: String,
        max: u32,
        /// The previous batch's ack, committing while the next batch is asked for.
        acking: Option<JoinHandle<Result<Acked, ClientError>>>,
        /// A receive that failed while the previous batch's ack succeeded, reported at the next call.
        failed: Option<ClientError>,
    }

    impl System for Setup {
        type Producer = Worker;
        type Consumer = Worker;

        async fn producer(&self, i: usize) -> Result<Worker, QueueBenchError> {
            Ok(Worker {
                client: client(&self.endpoints, i)?,
                queue: self.queue.clone(),
                max: self.receive_batch,
                acking: None,
                failed: None,
            })
        }

        async fn consumer(&self, i: usize) -> Result<Worker, QueueBenchError> {
            self.producer(i).await
        }
    }

    impl Producer for Worker {
        async fn send(&mut self, batch: Vec<Vec<u8>>) -> Result<(), QueueBenchError> {
            let messages = batch.into_iter().map(NewMessage::new).collect();
            self.client.send(&self.queue, messages).await?;
            Ok(())
        }
    }

    /// Receives a batch while the previous one's ack commits (at most one ack in flight, as a worker runtime
    /// with a concurrency of two would), then starts this batch's ack. A batch counts when its ack returned.
    impl Consumer for Worker {
        async fn take(&mut self) -> Result<Vec<Acked>, QueueBenchError> {
            if let Some(e) = self.failed.take() {
                return Err(e.into());
            }
            let acking = self.acking.take();
            let previous = async move {
                match acking {
                    Some(task) => Some(task.await),
                    None => None,
                }
            };
            let receive = self.client.receive(&self.queue, self.max, IDLE_WAIT, None);
            let (received, previous) = tokio::join!(receive, previous);
            let mut done = Vec::new();
            match previous {
                Some(Ok(Ok(acked))) => done.push(acked),
                Some(Ok(Err(e))) => return Err(e.into()),
                Some(Err(e)) => return Err(QueueBenchError::Options(format!("an ack task failed: {e}"))),
                None => {}
            }
            let deliveries = match received {
                Ok(deliveries) => deliveries,
                // The previous batch is acknowledged all the same: count it, and report the error next time.
                Err(e) if !done.is_empty() => {
                    self.failed = Some(e);
                    return Ok(done);
                }
                Err(e) => return Err(e.into()),
            };
            if !deliveries.is_empty() {
                let receipts: Vec<_> = deliveries.iter().filter_map(|d| d.receipt).collect();
                let payloads = deliveries.into_iter().map(|d| d.payload).collect();
                let client = self.client.clone();
                let queue = self.queue.clone();
                self.acking = Some(tokio::spawn(async move {
                    client.ack(&queue, &receipts, &[]).await?;
                    Ok(Acked {
                        payloads,
                        at: Instant::now(),
                    })
                }));
            }
            Ok(done)
        }
    }
}

mod rabbitmq {
    //! A RabbitMQ quorum queue through `lapin`: publisher confirms, manual acks, a prefetch count.

    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

    use super::*;

    pub(super) struct Setup {
        endpoints: Vec<String>,
        admin: Connection,
        queue: String,
        prefetch: u16,
    }

    async fn connect(endpoint: &str) -> Result<Connection, QueueBenchError> {
        Connection::connect(endpoint, ConnectionProperties::default())
            .await
            .map_err(rabbit(format!("connecting to {endpoint}")))
    }

    impl Setup {
        pub(super) async fn new(
            args: &QueueBenchArgs,
            endpoints: &[String],
            suffix: &str,
        ) -> Result<Self, QueueBenchError> {
            let admin = connect(&endpoints[0]).await?;
            let channel = admin
                .create_channel()
                .await
                .map_err(rabbit("opening a channel"))?;
            let queue = format!("bench-{suffix}");
            let mut arguments = FieldTable::default();
            arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            arguments.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongInt(i32::try_from(args.replicas).unwrap_or(i32::MAX)),
            );
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    arguments,
                )
                .await
                .map_err(rabbit(format!("declaring the quorum queue {queue}")))?;
            Ok(Self {
                endpoints: endpoints.to_vec(),
                admin,
                queue,
                prefetch: u16::try_from(args.receive_batch).unwrap_or(u16::MAX),
            })
        }

        pub(super) async fn cleanup(self) -> Result<(), QueueBenchError> {
            let channel = self
                .admin
                .create_channel()
                .await
                .map_err(rabbit("opening a channel"))?;
            channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(rabbit(format!("deleting {}", self.queue)))?;
            let _ = self.admin.close(200, "done".into()).await;
            Ok(())
        }
    }

    pub(super) struct Publisher {
        _connection: Connection,
        channel: Channel,
        queue: String,
    }

    pub(super) struct Subscriber {
        _connection: Connection,
        consumer: lapin::Consumer,
        max: usize,
    }

    impl System for Setup {
        type Producer = Publisher;
        type Consumer = Subscriber;

        async fn producer(&self, i: usize) -> Result<Publisher, QueueBenchError> {
            let connection = connect(&self.endpoints[i % self.endpoints.len()]).await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(rabbit("opening a channel"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(rabbit("enabling publisher confirms"))?;
            Ok(Publisher {
                _connection: connection,
                channel,
                queue: self.queue.clone(),
            })
        }

        async fn consumer(&self, i: usize) -> Result<Subscriber, QueueBenchError> {
            let connection = connect(&self.endpoints[i % self.endpoints.len()]).await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(rabbit("opening a channel"))?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(rabbit("setting the prefetch count"))?;
            let consumer = channel
                .basic_consume(
                    self.queue.as_str().into(),
                    format!("bench-consumer-{i}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(rabbit(format!("consuming from {}", self.queue)))?;
            Ok(Subscriber {
                _connection: connection,
                consumer,
                max: usize::from(self.prefetch),
            })
        }
    }

    impl Producer for Publisher {
        async fn send(&mut self, batch: Vec<Vec<u8>>) -> Result<(), QueueBenchError> {
            let mut confirms = Vec::with_capacity(batch.len());
            for payload in &batch {
                let confirm = self
                    .channel
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        payload,
                        // Persistent (quorum queues store every message anyway).
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .map_err(rabbit("publishing"))?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                let confirmation = confirm.await.map_err(rabbit("waiting for a publisher confirm"))?;
                if confirmation.is_nack() {
                    return Err(QueueBenchError::Options("rabbitmq: a publish was nacked".into()));
                }
            }
            Ok(())
        }
    }

    impl Consumer for Subscriber {
        async fn take(&mut self) -> Result<Vec<Acked>, QueueBenchError> {
            let first = match tokio::time::timeout(IDLE_WAIT, self.consumer.next()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => {
                    return Err(QueueBenchError::Options(
                        "rabbitmq: the consumer was cancelled".into(),
                    ));
                }
                Ok(Some(delivery)) => delivery.map_err(rabbit("receiving"))?,
            };
            let mut deliveries = vec![first];
            // Whatever else has arrived, up to the prefetch count, is acknowledged with the same ack.
            while deliveries.len() < self.max {
                match self.consumer.next().now_or_never() {
                    Some(Some(delivery)) => deliveries.push(delivery.map_err(rabbit("receiving"))?),
                    _ => break,
                }
            }
            if let Some(last) = deliveries.last() {
                last.acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .map_err(rabbit("acking"))?;
            }
            Ok(Acked::now(deliveries.into_iter().map(|d| d.data).collect()))
        }
    }
}

mod nats {
    //! A NATS JetStream work-queue stream through `async-nats`: file storage, a shared durable pull consumer with
    //! explicit acks.

    use async_nats::jetstream::{self, consumer, stream};
    use bytes::Bytes;

    use super::*;

    pub(super) struct Setup {
        endpoints: Vec<String>,
        admin: jetstream::Context,
        stream: String,
        subject: String,
        batch: usize,
        double_ack: bool,
    }

    async fn connect(endpoint: &str) -> Result<jetstream::Context, QueueBenchError> {
        let client = async_nats::connect(endpoint)
            .await
            .map_err(nats(format!("connecting to {endpoint}")))?;
        Ok(jetstream::new(client))
    }

    impl Setup {
        pub(super) async fn new(
            args: &QueueBenchArgs,
            endpoints: &[String],
            suffix: &str,
        ) -> Result<Self, QueueBenchError> {
            let admin = connect(&endpoints[0]).await?;
            let name = format!("bench-{suffix}");
            let subject = format!("bench.{suffix}");
            let stream = admin
                .create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![subject.clone()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    num_replicas: usize::try_from(args.replicas).unwrap_or(usize::MAX),
                    ..Default::default()
                })
                .await
                .map_err(nats(format!("creating the stream {name}")))?;
            let max_ack_pending = (args.consumers as u64 * u64::from(args.receive_batch) * 2).max(1000);
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: i64::try_from(max_ack_pending).unwrap_or(i64::MAX),
                    ..Default::default()
                })
                .await
                .map_err(nats(format!("creating the consumer {name}")))?;
            Ok(Self {
                endpoints: endpoints.to_vec(),
                admin,
                stream: name,
                subject,
                batch: args.receive_batch as usize,
                double_ack: args.nats_double_ack,
            })
        }

        pub(super) async fn cleanup(self) -> Result<(), QueueBenchError> {
            self.admin
                .delete_stream(&self.stream)
                .await
                .map_err(nats(format!("deleting the stream {}", self.stream)))?;
            Ok(())
        }
    }

    pub(super) struct Publisher {
        context: jetstream::Context,
        subject: String,
    }

    pub(super) struct Puller {
        messages: consumer::pull::Stream,
        max: usize,
        double_ack: bool,
    }

    impl System for Setup {
        type Producer = Publisher;
        type Consumer = Puller;

        async fn producer(&self, i: usize) -> Result<Publisher, QueueBenchError> {
            Ok(Publisher {
                context: connect(&self.endpoints[i % self.endpoints.len()]).await?,
                subject: self.subject.clone(),
            })
        }

        async fn consumer(&self, i: usize) -> Result<Puller, QueueBenchError> {
            let context = connect(&self.endpoints[i % self.endpoints.len()]).await?;
            let consumer: consumer::PullConsumer = context
                .get_consumer_from_stream(&self.stream, &self.stream)
                .await
                .map_err(nats("looking up the consumer"))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.batch)
                .messages()
                .await
                .map_err(nats("pulling"))?;
            Ok(Puller {
                messages,
                max: self.batch,
                double_ack: self.double_ack,
            })
        }
    }

    impl Producer for Publisher {
        async fn send(&mut self, batch: Vec<Vec<u8>>) -> Result<(), QueueBenchError> {
            let mut acks = Vec::with_capacity(batch.len());
            for payload in batch {
                let ack = self
                    .context
                    .publish(self.subject.clone(), Bytes::from(payload))
                    .await
                    .map_err(nats("publishing"))?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(nats("waiting for a publish ack"))?;
            }
            Ok(())
        }
    }

    impl Consumer for Puller {
        async fn take(&mut self) -> Result<Vec<Acked>, QueueBenchError> {
            let first = match tokio::time::timeout(IDLE_WAIT, self.messages.next()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => return Err(QueueBenchError::Options("nats: the pull stream ended".into())),
                Ok(Some(message)) => message.map_err(nats("receiving"))?,
            };
            let mut messages = vec![first];
            while messages.len() < self.max {
                match self.messages.next().now_or_never() {
                    Some(Some(message)) => messages.push(message.map_err(nats("receiving"))?),
                    _ => break,
                }
            }
            for message in &messages {
                if self.double_ack {
                    message.double_ack().await.map_err(nats("acking"))?;
                } else {
                    message.ack().await.map_err(nats("acking"))?;
                }
            }
            Ok(Acked::now(
                messages.into_iter().map(|m| m.message.payload.to_vec()).collect(),
            ))
        }
    }
}
