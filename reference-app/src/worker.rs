//! The transcode worker: takes [`Task`]s from the `transcode` queue with trestle-queue's worker runtime
//! (concurrency limit, visibility extended while ffmpeg runs, retries with backoff, graceful shutdown), encodes
//! with ffmpeg, stores the output at the origin and hands its digest to the task's join barrier.
//!
//! A worker killed mid-chunk loses nothing: the task's visibility deadline passes, another worker gets it, and its
//! output lands under the same content address. A task that keeps failing is dead-lettered after the queue's
//! maximum deliveries, which fails its barrier, which tells the coordinator (the video shows as failed, and an
//! operator can redrive the dead letter).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use trestle_queue::client::Delivery;
use trestle_queue::worker::{Handler, JobError};

use crate::media;
use crate::meta::Meta;
use crate::origin::{Digest, OriginClient};
use crate::tasks::{self, Task};

/// The transcode worker's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TranscodeConfig {
    /// Where sources are cached and outputs are written before upload.
    pub work_dir: PathBuf,
    /// ffmpeg and ffprobe.
    pub tools: media::Tools,
    /// The longest one encode may run before it is killed (and retried). Default 15 min.
    pub encode_timeout: Duration,
    /// How many sources the local cache keeps. Default 4.
    pub cached_sources: usize,
}

impl TranscodeConfig {
    /// The defaults, working in `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            tools: media::Tools::default(),
            encode_timeout: Duration::from_secs(15 * 60),
            cached_sources: 4,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.tools.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            !self.encode_timeout.is_zero(),
            "the encode timeout must be more than zero"
        );
        anyhow::ensure!(
            self.cached_sources > 0,
            "the source cache must hold at least one source"
        );
        Ok(())
    }
}

/// Faults an operator (or the operations view) switches on to watch the system handle them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Every encode fails (retryably), as if ffmpeg crashed: tasks are retried, then dead-lettered, and their
    /// videos fail.
    #[serde(default)]
    pub fail_encodes: bool,
}

/// The transcode [`Handler`].
#[derive(Clone)]
pub struct Transcoder {
    config: Arc<TranscodeConfig>,
    fail_encodes: Arc<AtomicBool>,
    origin: OriginClient,
    meta: Meta,
    downloads: Arc<tokio::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn retry(what: &str) -> impl FnOnce(String) -> JobError + '_ {
    move |e| JobError::Retry(format!("{what}: {e}"))
}

impl Transcoder {
    /// A transcoder storing at `origin` and recording progress in `meta`.
    pub async fn new(config: TranscodeConfig, origin: OriginClient, meta: Meta) -> anyhow::Result<Self> {
        let mut config = config;
        config.validate()?;
        config.work_dir = crate::pipeline::absolute_dir(&config.work_dir).await?;
        for dir in ["sources", "out"] {
            let path = config.work_dir.join(dir);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        }
        Ok(Self {
            config: Arc::new(config),
            fail_encodes: Arc::default(),
            origin,
            meta,
            downloads: Arc::default(),
        })
    }

    /// The faults switched on.
    pub fn faults(&self) -> Faults {
        Faults {
            fail_encodes: self.fail_encodes.load(Ordering::Relaxed),
        }
    }

    /// Switches faults on or off.
    pub fn set_faults(&self, faults: Faults) {
        self.fail_encodes.store(faults.fail_encodes, Ordering::Relaxed);
        tracing::warn!(?faults, "faults set");
    }

    /// `GET /faults` and `PUT /faults` (JSON [`Faults`]) on the worker's HTTP port.
    pub fn router(&self) -> axum::Router {
        async fn get(State(t): State<Transcoder>) -> axum::response::Response {
            axum::Json(t.faults()).into_response()
        }
        async fn put(
            State(t): State<Transcoder>,
            faults: Result<axum::Json<Faults>, axum::extract::rejection::JsonRejection>,
        ) -> axum::response::Response {
            match faults {
                Ok(axum::Json(faults)) => {
                    t.set_faults(faults);
                    axum::Json(t.faults()).into_response()
                }
                Err(e) => crate::http::Problem::bad_request(format!(
                    "expected JSON like {{\"fail_encodes\": true}}: {e}"
                ))
                .into_response(),
            }
        }
        axum::Router::new()
            .route("/faults", axum::routing::get(get).put(put))
            .with_state(self.clone())
    }

    /// The source `digest` on local disk, downloaded once however many tasks ask at the same time.
    async fn source(
        &self,
        digest: &Digest,
        trace: Option<&crate::http::TraceContext>,
    ) -> Result<PathBuf, JobError> {
        let path = self.config.work_dir.join("sources").join(digest.to_string());
        let gate = self.downloads.lock().await.entry(*digest).or_default().clone();
        let _held = gate.lock().await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        self.origin
            .download(digest, &path, trace)
            .await
            .map_err(|e| retry("downloading the source")(e.to_string()))?;
        self.evict_sources(&path).await;
        Ok(path)
    }

    /// Removes the oldest cached sources beyond the limit (never `keep`).
    async fn evict_sources(&self, keep: &Path) {
        let dir = self.config.work_dir.join("sources");
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            return;
        };
        let mut files = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let modified = entry.metadata().await.and_then(|m| m.modified()).ok();
            if entry.path() != keep && !entry.file_name().to_string_lossy().contains(".part") {
                files.push((modified, entry.path()));
            }
        }
        files.sort();
        let excess = (files.len() + 1).saturating_sub(self.config.cached_sources);
        for (_, path) in files.into_iter().take(excess) {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    /// Runs `task`; returns the digest of its output and the result its barrier gets.
    async fn run(&self, task: Task) -> Result<(Digest, Vec<u8>), JobError> {
        if self.fail_encodes.load(Ordering::Relaxed) {
            return Err(JobError::Retry("injected fault: encodes fail".into()));
        }
        let trace = task.trace().copied();
        let out_dir = tempfile::Builder::new()
            .prefix("job-")
            .tempdir_in(self.config.work_dir.join("out"))
            .map_err(|e| retry("creating a work directory")(e.to_string()))?;
        let tools = &self.config.tools;
        let colour_file = out_dir.path().join("colour.rgb");
        let (args, out, progress) = match &task {
            Task::EncodeChunk {
                video,
                source,
                chunk,
                rung,
                fps,
                segment_ms,
                ..
            } => {
                let src = self.source(source, trace.as_ref()).await?;
                let out = out_dir.path().join(format!("chunk-{:05}.mp4", chunk.index));
                let segment = Duration::from_millis(*segment_ms);
                let args = media::chunk_args(tools, &src, chunk, rung, *fps, segment, &out);
                (args, out, Some((video.clone(), rung.name.clone(), chunk.index)))
            }
            Task::EncodeAudio { source, info, .. } => {
                let src = self.source(source, trace.as_ref()).await?;
                let out = out_dir.path().join("audio.m4a");
                (media::audio_args(tools, &src, info, &out), out, None)
            }
            Task::SampleFrame {
                source,
                at_ms,
                width,
                height,
                ..
            } => {
                let src = self.source(source, trace.as_ref()).await?;
                let out = out_dir.path().join("frame.jpg");
                let at = Duration::from_millis(*at_ms);
                let args = media::frame_args(tools, &src, at, *width, *height, &out, &colour_file);
                (args, out, None)
            }
        };
        let started = std::time::Instant::now();
        media::run(tools, &args, self.config.encode_timeout)
            .await
            .map_err(|e| retry("ffmpeg failed")(e.to_string()))?;
        let kind = match &task {
            Task::EncodeChunk { .. } => "chunk",
            Task::EncodeAudio { .. } => "audio",
            Task::SampleFrame { .. } => "frame",
        };
        metrics::histogram!("transcode_encode_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        let stored = self
            .origin
            .put_file(&out, trace.as_ref())
            .await
            .map_err(|e| retry("storing the output at the origin")(e.to_string()))?;
        if let Some((video, rung, index)) = progress {
            self.meta
                .record_chunk(&video, &rung, index, &stored.digest)
                .await
                .map_err(|e| retry("recording progress")(e.to_string()))?;
        }
        metrics::counter!("transcode_tasks_done_total", "kind" => kind).increment(1);
        let result = match &task {
            Task::SampleFrame { .. } => {
                let raw = tokio::fs::read(&colour_file)
                    .await
                    .map_err(|e| retry("reading the frame's colour")(e.to_string()))?;
                let colour = media::FrameColour::from_raw(&raw).ok_or_else(|| {
                    JobError::Permanent(format!("ffmpeg measured {} colour bytes, not 3", raw.len()))
                })?;
                tasks::encode(&tasks::SampledFrame {
                    image: stored.digest,
                    colour,
                })
            }
            _ => stored.digest.to_string().into_bytes(),
        };
        Ok((stored.digest, result))
    }
}

impl Handler for Transcoder {
    async fn handle(&self, delivery: &Delivery) -> Result<Vec<u8>, JobError> {
        let task: Task = tasks::decode(&delivery.payload).map_err(|e| {
            tracing::error!(error = %e, "a task that is not ours: dead-lettered");
            JobError::Permanent(e.to_string())
        })?;
        let span = tracing::info_span!(
            "transcode",
            video = task.video(),
            trace_id = task.trace().map(|t| t.trace_hex()).unwrap_or_default(),
            delivery = delivery.receipt.as_ref().map_or(0, |r| r.delivery),
        );
        span.in_scope(|| tracing::info!("encoding"));
        let result = tracing::Instrument::instrument(self.run(task), span.clone()).await;
        match &result {
            Ok((digest, _)) => span.in_scope(|| tracing::info!(%digest, "encoded")),
            Err(e) => {
                metrics::counter!("transcode_tasks_failed_total").increment(1);
                span.in_scope(|| tracing::warn!(error = %e, "task failed"));
            }
        }
        result.map(|(_, result)| result)
    }
}
