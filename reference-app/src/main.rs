//! `trestle-stream`: one binary, one service per process (`trestle-stream <service> --help`).
//!
//! The binary owns what is process-global: the tracing subscriber, the Prometheus recorder and the signal
//! handlers. The services live in the library (`trestle_stream::{origin, pipeline, worker, edge}`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use trestle_queue::client::{ClientConfig as QueueClientConfig, QueueClient};
use trestle_queue::worker::{Worker, WorkerConfig};
use trestle_stream::http::{self, ClientConfig};
use trestle_stream::{edge, meta, origin, pipeline, tasks, worker};

/// Trestle's reference app: a video streaming service built from the Trestle crates.
#[derive(Debug, Parser)]
#[command(name = "trestle-stream", version)]
struct Cli {
    #[command(subcommand)]
    service: Service,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// The origin store: content-addressed media files behind HTTP.
    Origin(OriginArgs),
    /// The upload API and pipeline coordinator (validates, plans, joins, assembles HLS).
    Pipeline(PipelineArgs),
    /// A transcode worker (ffmpeg on the `transcode` queue).
    Worker(WorkerArgs),
    /// The edge: playlists and segments to players through trestle-cache.
    Edge(EdgeArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// Address of this service's HTTP API (and `/health`, `/metrics`).
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// Trestle store (etcd v3 API) endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    store_endpoints: Vec<String>,
    /// Key prefix of the app's records in the store.
    #[arg(long, default_value = meta::DEFAULT_PREFIX)]
    store_prefix: String,
}

#[derive(Debug, Args)]
struct OriginArgs {
    #[command(flatten)]
    common: Common,
    /// Directory of the blobs.
    #[arg(long)]
    data_dir: PathBuf,
    /// The largest blob accepted, bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_blob: u64,
}

#[derive(Debug, Args)]
struct PipelineArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    store: StoreArgs,
    /// Work queue endpoints (`trestle serve --queue-partitions N` nodes), comma-separated; default: the store's.
    #[arg(long, value_delimiter = ',')]
    queue_endpoints: Vec<String>,
    /// The origin's URL.
    #[arg(long)]
    origin: String,
    /// Where uploads are spooled and renditions assembled.
    #[arg(long)]
    work_dir: PathBuf,
    /// Partitions the `transcode` queue is sharded over (at most the cluster's `--queue-partitions`).
    #[arg(long, default_value_t = 3)]
    transcode_partitions: u32,
    /// The HLS segment duration, milliseconds.
    #[arg(long, default_value_t = 2000)]
    segment_ms: u64,
    /// Segments per encoded chunk.
    #[arg(long, default_value_t = 2)]
    segments_per_chunk: u32,
    /// Renditions assembled at once.
    #[arg(long, default_value_t = 2)]
    assemblers: u32,
    /// The largest upload, bytes.
    #[arg(long)]
    max_upload: Option<u64>,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    store: StoreArgs,
    /// Work queue endpoints, comma-separated; default: the store's.
    #[arg(long, value_delimiter = ',')]
    queue_endpoints: Vec<String>,
    /// The origin's URL.
    #[arg(long)]
    origin: String,
    /// Where sources are cached and outputs written.
    #[arg(long)]
    work_dir: PathBuf,
    /// Encodes at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Threads per ffmpeg encode.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// The x264 preset (speed against size: ultrafast .. veryslow).
    #[arg(long, default_value = "veryfast")]
    preset: String,
}

#[derive(Debug, Args)]
struct EdgeArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    store: StoreArgs,
    /// The origin's URL.
    #[arg(long)]
    origin: String,
    /// A cache node, as ID=ADDR@ZONE (repeat, or separate with commas); none: discover them in the store.
    #[arg(long = "cache-node", value_delimiter = ',')]
    cache_nodes: Vec<String>,
    /// Key prefix the cache nodes registered under (`trestle cache serve --register-prefix`).
    #[arg(long, default_value = "/trestle/cache/nodes/")]
    cache_prefix: String,
    /// This edge's zone: read first.
    #[arg(long, default_value = "default")]
    zone: String,
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    Ok(handle)
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

fn queue_client(endpoints: &[String], store: &[String]) -> anyhow::Result<QueueClient> {
    let endpoints = if endpoints.is_empty() { store } else { endpoints };
    QueueClient::new(QueueClientConfig::new(endpoints.iter().cloned())).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn connect_meta(store: &StoreArgs) -> anyhow::Result<meta::Meta> {
    meta::Meta::connect(&store.store_endpoints, &store.store_prefix)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the store at {}: {e}",
                store.store_endpoints.join(",")
            )
        })
}

async fn run(service: Service) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    let shutdown = shutdown_on_signals();
    let stop = {
        let s = shutdown.clone();
        async move { s.cancelled().await }
    };
    let client = ClientConfig::default();
    match service {
        Service::Origin(args) => {
            let store = origin::BlobStore::open(&args.data_dir, args.max_blob)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", args.data_dir.display()))?;
            let dir = args.data_dir.clone();
            let health: http::HealthCheck = Arc::new(move || pipeline::work_dir_ok(&dir));
            let router = http::finish("origin", origin::router(store), Some(health), Some(metrics));
            let listener = http::bind(args.common.listen).await?;
            tracing::info!(addr = %args.common.listen, "origin serving");
            http::serve(listener, router, stop).await?;
        }
        Service::Pipeline(args) => {
            let meta = connect_meta(&args.store).await?;
            let queue = queue_client(&args.queue_endpoints, &args.store.store_endpoints)?;
            let origin = origin::OriginClient::new(&args.origin, &client)?;
            let mut config = pipeline::PipelineConfig::new(&args.work_dir);
            config.transcode_partitions = args.transcode_partitions;
            config.segment = Duration::from_millis(args.segment_ms);
            config.segments_per_chunk = args.segments_per_chunk;
            if let Some(max) = args.max_upload {
                config.limits.max_bytes = max;
            }
            let coordinator = pipeline::Coordinator::new(config, meta, queue.clone(), origin).await?;
            let mut steps = WorkerConfig::new(tasks::PIPELINE_QUEUE);
            steps.concurrency = args.assemblers;
            steps.wait = Duration::from_secs(5);
            steps.base_backoff = Duration::from_millis(500);
            steps.max_backoff = Duration::from_secs(30);
            let steps = Worker::new(queue, steps).map_err(|e| anyhow::anyhow!("{e}"))?;
            let work_dir = args.work_dir.clone();
            let health: http::HealthCheck = Arc::new(move || pipeline::work_dir_ok(&work_dir));
            let router = http::finish("pipeline", coordinator.router(), Some(health), Some(metrics));
            let listener = http::bind(args.common.listen).await?;
            tracing::info!(addr = %args.common.listen, "pipeline serving");
            let stop_steps = shutdown.clone();
            let steps = tokio::spawn(steps.run(coordinator, async move { stop_steps.cancelled().await }));
            http::serve(listener, router, stop).await?;
            let report = steps.await?;
            tracing::info!(?report, "pipeline steps stopped");
        }
        Service::Worker(args) => {
            let meta = connect_meta(&args.store).await?;
            let queue = queue_client(&args.queue_endpoints, &args.store.store_endpoints)?;
            let origin = origin::OriginClient::new(&args.origin, &client)?;
            let mut config = worker::TranscodeConfig::new(&args.work_dir);
            config.tools.threads = args.threads;
            config.tools.preset = args.preset.clone();
            let transcoder = worker::Transcoder::new(config, origin, meta).await?;
            let mut jobs = WorkerConfig::new(tasks::TRANSCODE_QUEUE);
            jobs.concurrency = args.concurrency;
            jobs.wait = Duration::from_secs(5);
            jobs.visibility_timeout = Some(Duration::from_secs(30));
            jobs.heartbeat = Duration::from_secs(5);
            jobs.heartbeat_extend = Duration::from_secs(30);
            jobs.base_backoff = Duration::from_secs(1);
            jobs.max_backoff = Duration::from_secs(30);
            let jobs = Worker::new(queue.clone(), jobs).map_err(|e| anyhow::anyhow!("{e}"))?;
            // The same process samples frames for the image pipeline, one at a time.
            let mut frames = WorkerConfig::new(tasks::IMAGES_QUEUE);
            frames.concurrency = 1;
            frames.wait = Duration::from_secs(5);
            frames.base_backoff = Duration::from_secs(1);
            frames.max_backoff = Duration::from_secs(30);
            let frames = Worker::new(queue, frames).map_err(|e| anyhow::anyhow!("{e}"))?;
            let work_dir = args.work_dir.clone();
            let health: http::HealthCheck = Arc::new(move || pipeline::work_dir_ok(&work_dir));
            let router = http::finish("worker", transcoder.router(), Some(health), Some(metrics));
            let listener = http::bind(args.common.listen).await?;
            tracing::info!(addr = %args.common.listen, concurrency = args.concurrency, "transcode worker running");
            let server = tokio::spawn(http::serve(listener, router, stop));
            let stop_frames = shutdown.clone();
            let frames =
                tokio::spawn(frames.run(transcoder.clone(), async move { stop_frames.cancelled().await }));
            let stop_jobs = shutdown.clone();
            let report = jobs
                .run(transcoder, async move { stop_jobs.cancelled().await })
                .await;
            shutdown.cancel();
            let frames_report = frames.await?;
            tracing::info!(?frames_report, "image sampling stopped");
            tracing::info!(?report, "transcode worker stopped");
            server.await??;
        }
        Service::Edge(args) => {
            let meta = connect_meta(&args.store).await?;
            let origin = origin::OriginClient::new(&args.origin, &client)?;
            let cache = if args.cache_nodes.is_empty() {
                trestle_cache::discover_client(
                    &args.store.store_endpoints,
                    &args.cache_prefix,
                    trestle_cache::ClientConfig::new(Vec::new(), &args.zone),
                )
                .await
                .map_err(|e| anyhow::anyhow!("cache discovery: {e}"))?
            } else {
                let nodes = args
                    .cache_nodes
                    .iter()
                    .map(|n| parse_node(n))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                trestle_cache::Client::new(trestle_cache::ClientConfig::new(nodes, &args.zone))
                    .map_err(|e| anyhow::anyhow!("cache client: {e}"))?
            };
            let health_cache = cache.clone();
            let health: http::HealthCheck = Arc::new(move || edge::cache_health(&health_cache));
            let edge = edge::Edge::new(edge::EdgeConfig::default(), cache, origin, meta)?;
            let router = http::finish("edge", edge.router(), Some(health), Some(metrics));
            let listener = http::bind(args.common.listen).await?;
            tracing::info!(addr = %args.common.listen, "edge serving");
            http::serve(listener, router, stop).await?;
        }
    }
    Ok(())
}

/// `ID=ADDR@ZONE`.
fn parse_node(spec: &str) -> anyhow::Result<trestle_cache::NodeSpec> {
    let bad = || anyhow::anyhow!("--cache-node {spec:?}: expected ID=ADDR@ZONE, e.g. c1=127.0.0.1:11211@a");
    let (id, rest) = spec.split_once('=').ok_or_else(bad)?;
    let (addr, zone) = rest.split_once('@').ok_or_else(bad)?;
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    if id.is_empty() || zone.is_empty() {
        return Err(bad());
    }
    Ok(trestle_cache::NodeSpec::new(id, addr, zone))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs written to files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trestle-stream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.service)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trestle-stream: {e:#}");
            ExitCode::FAILURE
        }
    }
}
