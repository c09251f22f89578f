//! The upload service and pipeline coordinator (Netflix's Archer-style chunked encoding on Burns' work queue and
//! coordinated batch patterns).
//!
//! An upload is streamed to a local file under a size limit, probed with ffprobe and checked against the upload
//! limits: anything that is not a playable video is refused with the reason and leaves nothing behind. Accepted
//! sources go to the origin; the video's record is created in the store; its chunks are planned on multiples of
//! the HLS segment duration; and one join barrier per rendition is submitted to the sharded `transcode` queue (a
//! task per chunk), plus one for the audio track. When a rendition's barrier completes, the coordinator — a worker
//! on the `pipeline` queue — concatenates the rendition's chunks with the audio, packages fMP4 HLS, stores every
//! file at the origin under its digest, and records the rendition's playlist; the step that finds every rendition
//! assembled writes the master playlist and marks the video ready, once (a compare-and-swap on the record). A
//! barrier that fails (a task dead-lettered) marks the video failed with the reason.
//!
//! Routes: `POST /videos?title=...` (the body is the file), `GET /videos`, `GET /videos/{id}` (with progress:
//! chunks encoded per rendition), `POST /videos/{id}/retry` (a failed video's missing parts are submitted again),
//! plus `/health` and `/metrics`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{StatusCode, header};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use trestle_queue::client::{ClientError, Delivery, QueueClient};
use trestle_queue::worker::{Handler, JobError};
use trestle_queue::{NewMessage, QueueError, QueueSettings};

use crate::http::{Problem, TraceContext};
use crate::media;
use crate::meta::{self, Meta, MetaError, Rendition, Source, Status, Video};
use crate::origin::{Digest, OriginClient};
use crate::tasks::{self, Step, Task};

/// The coordinator's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PipelineConfig {
    /// Where uploads are spooled and renditions assembled.
    pub work_dir: PathBuf,
    /// ffmpeg and ffprobe.
    pub tools: media::Tools,
    /// What uploads may be.
    pub limits: media::UploadLimits,
    /// The rendition ladder (each video gets the rungs its source can fill).
    pub ladder: Vec<media::Rung>,
    /// The HLS segment duration. Default 2 s.
    pub segment: Duration,
    /// Segments per encoded chunk. Default 2 (4 s chunks).
    pub segments_per_chunk: u32,
    /// Partitions the `transcode` queue is sharded over. Default 3.
    pub transcode_partitions: u32,
    /// Deliveries of an encode task before it is dead-lettered. Default 3.
    pub max_deliveries: u32,
    /// How long packaging one rendition may run. Default 10 min.
    pub package_timeout: Duration,
}

impl PipelineConfig {
    /// The defaults, working in `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            tools: media::Tools::default(),
            limits: media::UploadLimits::default(),
            ladder: media::default_ladder(),
            segment: Duration::from_secs(2),
            segments_per_chunk: 2,
            transcode_partitions: 3,
            max_deliveries: 3,
            package_timeout: Duration::from_secs(600),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.tools.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.limits.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(!self.ladder.is_empty(), "the ladder needs at least one rung");
        anyhow::ensure!(
            self.segment >= Duration::from_millis(500) && self.segment <= Duration::from_secs(20),
            "the segment duration must be 0.5 s to 20 s, not {:?}",
            self.segment
        );
        anyhow::ensure!(
            (1..=30).contains(&self.segments_per_chunk),
            "segments per chunk must be 1 to 30, not {}",
            self.segments_per_chunk
        );
        anyhow::ensure!(
            self.transcode_partitions >= 1,
            "the transcode queue needs a partition"
        );
        anyhow::ensure!(self.max_deliveries >= 1, "max deliveries must be at least 1");
        anyhow::ensure!(
            !self.work_dir.to_string_lossy().contains('%'),
            "the work directory {} contains '%', which ffmpeg's HLS muxer reads as a segment number",
            self.work_dir.display()
        );
        Ok(())
    }
}

/// The coordinator: the upload API and the `pipeline` queue's handler share it.
#[derive(Clone)]
pub struct Coordinator {
    config: Arc<PipelineConfig>,
    meta: Meta,
    queue: QueueClient,
    origin: OriginClient,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs `call` until it succeeds, a partition refuses it (a refusal is an answer), or `budget` has passed, with
/// doubling pauses (100 ms to 5 s). Only for calls that are exact when repeated: creating a queue that may exist,
/// submitting a barrier with an idempotency key.
async fn persist<T, F, Fut>(budget: Duration, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if e.refusal().is_some() || tokio::time::Instant::now() + pause >= deadline => {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, ?pause, "the queue cluster failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How long the coordinator keeps trying to reach the queue cluster at start.
const STARTUP_BUDGET: Duration = Duration::from_secs(180);
/// How long one upload's barrier submissions keep trying.
const SUBMIT_BUDGET: Duration = Duration::from_secs(60);

/// Creates `name` unless it exists, trying for [`STARTUP_BUDGET`] while the cluster is unavailable.
async fn ensure_queue(
    queue: &QueueClient,
    name: &str,
    partitions: u32,
    settings: &QueueSettings,
) -> anyhow::Result<()> {
    match persist(STARTUP_BUDGET, || queue.create_queue(name, partitions, settings)).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.refusal(), Some(QueueError::QueueExists { .. })) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot create the queue {name}: {e}")),
    }
}

impl Coordinator {
    /// A coordinator; creates the pipeline's queues when they do not exist.
    pub async fn new(
        config: PipelineConfig,
        meta: Meta,
        queue: QueueClient,
        origin: OriginClient,
    ) -> anyhow::Result<Self> {
        let mut config = config;
        config.validate()?;
        config.work_dir = absolute_dir(&config.work_dir).await?;
        for dir in ["uploads", "assembly"] {
            let path = config.work_dir.join(dir);
            // Spooled uploads and half-assembled renditions of a previous run are garbage: their work is redone.
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                tokio::fs::remove_dir_all(&path)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot clear {}: {e}", path.display()))?;
            }
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        }
        let mut dead = QueueSettings::default();
        dead.max_deliveries = 1000;
        ensure_queue(&queue, tasks::TRANSCODE_DEAD_LETTERS, 1, &dead).await?;
        ensure_queue(&queue, tasks::PIPELINE_DEAD_LETTERS, 1, &dead).await?;
        ensure_queue(&queue, tasks::IMAGES_DEAD_LETTERS, 1, &dead).await?;
        let mut transcode = QueueSettings::default();
        transcode.visibility_timeout_ms = 60_000;
        transcode.max_deliveries = config.max_deliveries;
        transcode.dead_letter_queue = Some(tasks::TRANSCODE_DEAD_LETTERS.to_owned());
        ensure_queue(
            &queue,
            tasks::TRANSCODE_QUEUE,
            config.transcode_partitions,
            &transcode,
        )
        .await?;
        let mut images = transcode.clone();
        images.dead_letter_queue = Some(tasks::IMAGES_DEAD_LETTERS.to_owned());
        ensure_queue(&queue, tasks::IMAGES_QUEUE, config.transcode_partitions, &images).await?;
        let mut pipeline = QueueSettings::default();
        pipeline.visibility_timeout_ms = 120_000;
        pipeline.max_deliveries = 12;
        pipeline.dead_letter_queue = Some(tasks::PIPELINE_DEAD_LETTERS.to_owned());
        ensure_queue(&queue, tasks::PIPELINE_QUEUE, 1, &pipeline).await?;
        Ok(Self {
            config: Arc::new(config),
            meta,
            queue,
            origin,
        })
    }

    /// The HTTP routes (without `/health` and `/metrics`).
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/videos",
                axum::routing::post(upload)
                    .get(list)
                    .layer(DefaultBodyLimit::disable()),
            )
            .route("/videos/{id}", axum::routing::get(show))
            .route("/videos/{id}/retry", axum::routing::post(retry))
            .with_state(self.clone())
    }

    /// Spools `body` to a file, refusing more than the upload limit.
    async fn spool(&self, body: Body) -> Result<tempfile::TempPath, Problem> {
        let limit = self.config.limits.max_bytes;
        let file = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.config.work_dir.join("uploads"))
            .map_err(|e| Problem::internal(format!("cannot spool the upload: {e}")))?;
        let (file, path) = file.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut stream = body.into_data_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| Problem::bad_request(format!("the upload could not be read: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "upload too large",
                    format!("uploads may be at most {limit} bytes"),
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Problem::internal(format!("cannot spool the upload: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| Problem::internal(format!("cannot spool the upload: {e}")))?;
        if size == 0 {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not a playable video",
                "the upload is empty",
            ));
        }
        Ok(path)
    }

    /// Accepts an upload: validates it, stores it, records it and submits its encodes.
    async fn accept(&self, title: String, body: Body, trace: TraceContext) -> Result<Video, Problem> {
        let spooled = self.spool(body).await?;
        let info = media::probe(&self.config.tools, &spooled)
            .await
            .map_err(|e| match e {
                media::ProbeError::NotMedia { .. } => Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not a playable video",
                    e.to_string(),
                ),
                other => Problem::internal(format!("probing the upload failed: {other}")),
            })?;
        media::check(&info, &self.config.limits).map_err(|r| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not a playable video",
                r.to_string(),
            )
        })?;
        let Some(video_stream) = info.video.as_ref() else {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not a playable video",
                "the file has no video stream",
            ));
        };
        let plan = media::plan_chunks(
            info.video_duration(),
            self.config.segment,
            self.config.segments_per_chunk,
        )
        .map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not a playable video",
                e.to_string(),
            )
        })?;
        let rungs = media::ladder_for(video_stream, &self.config.ladder);
        let stored = self
            .origin
            .put_file(&spooled, Some(&trace))
            .await
            .map_err(|e| Problem::upstream(format!("storing the upload at the origin failed: {e}")))?;
        drop(spooled);
        let chunks = u32::try_from(plan.chunks.len()).unwrap_or(u32::MAX);
        let segment_ms = millis(self.config.segment);
        let video = Video {
            id: meta::new_id(),
            title,
            created_ms: meta::now_ms(),
            status: Status::Processing,
            source: Source {
                digest: stored.digest,
                size: stored.size,
                info: info.clone(),
            },
            segment_ms,
            renditions: rungs
                .iter()
                .map(|rung| Rendition {
                    rung: rung.clone(),
                    chunks,
                    playlist: None,
                    bandwidth: None,
                })
                .collect(),
            audio: None,
            master: None,
            failure: None,
            ready_ms: None,
            attempt: 0,
            images: None,
        };
        self.meta
            .create(&video)
            .await
            .map_err(|e| Problem::upstream(format!("recording the video failed: {e}")))?;
        self.submit_or_fail(&video, &plan, &rungs, trace).await?;
        metrics::counter!("pipeline_uploads_accepted_total").increment(1);
        tracing::info!(video = %video.id, chunks, renditions = rungs.len(), "upload accepted");
        Ok(video)
    }

    /// Submits the barriers of what `video` still lacks: the audio track's, and one per rendition without a
    /// playlist. Their idempotency keys name the video's attempt, so a client retry submits nothing twice and an
    /// operator's retry submits anew.
    async fn submit(
        &self,
        video: &Video,
        plan: &media::ChunkPlan,
        rungs: &[media::Rung],
        trace: TraceContext,
    ) -> Result<(), ClientError> {
        let step = |step: Step| NewMessage::new(tasks::encode(&step));
        let attempt = video.attempt;
        let audio = Task::EncodeAudio {
            video: video.id.clone(),
            source: video.source.digest,
            info: video.source.info.clone(),
            trace: Some(trace),
        };
        if video.audio.is_none() {
            self.barrier(
                tasks::TRANSCODE_QUEUE,
                vec![NewMessage::new(tasks::encode(&audio))],
                step(Step::AudioEncoded {
                    video: video.id.clone(),
                    trace: Some(trace),
                }),
                step(Step::Failed {
                    video: video.id.clone(),
                    what: "audio".into(),
                    attempt,
                    trace: Some(trace),
                }),
                &format!("{}/{attempt}/audio", video.id),
            )
            .await?;
        }
        if video.images.is_none() {
            self.submit_images(video, trace).await?;
        }
        let assembled = |name: &str| {
            video
                .renditions
                .iter()
                .any(|r| r.rung.name == name && r.playlist.is_some())
        };
        for rung in rungs.iter().filter(|r| !assembled(&r.name)) {
            let tasks: Vec<NewMessage> = plan
                .chunks
                .iter()
                .map(|chunk| {
                    let task = Task::EncodeChunk {
                        video: video.id.clone(),
                        source: video.source.digest,
                        chunk: *chunk,
                        rung: rung.clone(),
                        fps: video_fps(video),
                        segment_ms: video.segment_ms,
                        trace: Some(trace),
                    };
                    // No key: the queue spreads the chunks over its shards.
                    NewMessage::new(tasks::encode(&task))
                })
                .collect();
            self.barrier(
                tasks::TRANSCODE_QUEUE,
                tasks,
                step(Step::AssembleRendition {
                    video: video.id.clone(),
                    rendition: rung.name.clone(),
                    trace: Some(trace),
                }),
                step(Step::Failed {
                    video: video.id.clone(),
                    what: rung.name.clone(),
                    attempt,
                    trace: Some(trace),
                }),
                &format!("{}/{attempt}/{}", video.id, rung.name),
            )
            .await?;
        }
        Ok(())
    }

    /// [`Self::submit`]; if the queue cluster stays unavailable, the video is marked failed (an operator retries
    /// it) and the caller gets 503.
    async fn submit_or_fail(
        &self,
        video: &Video,
        plan: &media::ChunkPlan,
        rungs: &[media::Rung],
        trace: TraceContext,
    ) -> Result<(), Problem> {
        if let Err(e) = self.submit(video, plan, rungs, trace).await {
            let reason = format!("its encodes could not be queued: {e}");
            let _ = self.mark_failed(&video.id, video.attempt, &reason).await;
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue unavailable",
                reason,
            ));
        }
        Ok(())
    }

    /// Submits the image barrier: a thumbnail and colour sample every few seconds, and the poster (last).
    async fn submit_images(&self, video: &Video, trace: TraceContext) -> Result<(), ClientError> {
        let (width, height) = source_size(video);
        let duration = video.source.info.video_duration();
        let (_, times) = media::sample_times(duration);
        let thumb = media::thumbnail_size(width, height, THUMBNAIL_WIDTH);
        let poster = media::thumbnail_size(width, height, POSTER_WIDTH);
        let frame = |at: Duration, (w, h): (u32, u32)| {
            NewMessage::new(tasks::encode(&Task::SampleFrame {
                video: video.id.clone(),
                source: video.source.digest,
                at_ms: millis(at),
                width: w,
                height: h,
                trace: Some(trace),
            }))
        };
        let mut messages: Vec<NewMessage> = times.iter().map(|t| frame(*t, thumb)).collect();
        messages.push(frame(duration / 3, poster));
        let step = |step: Step| NewMessage::new(tasks::encode(&step));
        self.barrier(
            tasks::IMAGES_QUEUE,
            messages,
            step(Step::AssembleImages {
                video: video.id.clone(),
                trace: Some(trace),
            }),
            step(Step::Failed {
                video: video.id.clone(),
                what: "images".into(),
                attempt: video.attempt,
                trace: Some(trace),
            }),
            &format!("{}/{}/images", video.id, video.attempt),
        )
        .await
    }

    /// Submits a barrier of `messages` on `queue` whose completion and failure steps go to the pipeline queue, under
    /// idempotency key `key`: retried for [`SUBMIT_BUDGET`] while the cluster is unavailable, and exact however
    /// often it is retried.
    async fn barrier(
        &self,
        queue: &str,
        messages: Vec<NewMessage>,
        completion: NewMessage,
        failure: NewMessage,
        key: &str,
    ) -> Result<(), ClientError> {
        persist(SUBMIT_BUDGET, || {
            self.queue.submit_barrier(
                queue,
                messages.clone(),
                (tasks::PIPELINE_QUEUE, completion.clone()),
                (tasks::PIPELINE_QUEUE, failure.clone()),
                Some(key),
            )
        })
        .await
        .map(|_| ())
    }

    /// Tiles the sampled thumbnails into the sprite sheet, writes its WebVTT and the tags, and records them.
    async fn assemble_images(
        &self,
        id: &str,
        delivery: &Delivery,
        trace: Option<&TraceContext>,
    ) -> Result<(), JobError> {
        let retry = |what: &str, e: String| JobError::Retry(format!("{what}: {e}"));
        let video = self.meta.get(id).await.map_err(meta_error)?;
        if video.images.is_some() {
            return Ok(());
        }
        let join = delivery
            .join
            .as_ref()
            .ok_or_else(|| JobError::Permanent("the step carries no join results".into()))?;
        let mut frames: Vec<tasks::SampledFrame> = Vec::with_capacity(join.results.len());
        for slot in 0..u32::try_from(join.results.len()).unwrap_or(u32::MAX) {
            let bytes = join
                .results
                .get(&slot)
                .ok_or_else(|| JobError::Permanent(format!("the join has no result for frame {slot}")))?;
            frames.push(
                tasks::decode(bytes)
                    .map_err(|e| JobError::Permanent(format!("frame {slot}'s result: {e}")))?,
            );
        }
        let poster = frames
            .pop()
            .ok_or_else(|| JobError::Permanent("the image barrier had no tasks".into()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-images-"))
            .tempdir_in(self.config.work_dir.join("assembly"))
            .map_err(|e| retry("creating an assembly directory", e.to_string()))?;
        for (i, frame) in frames.iter().enumerate() {
            self.origin
                .download(&frame.image, &dir.path().join(format!("thumb_{i:03}.jpg")), trace)
                .await
                .map_err(|e| retry("downloading a thumbnail", e.to_string()))?;
        }
        let count = u32::try_from(frames.len()).unwrap_or(u32::MAX);
        let sprite_file = dir.path().join("sprite.jpg");
        let args = media::sprite_args(&self.config.tools, dir.path(), count, &sprite_file);
        media::run(&self.config.tools, &args, self.config.package_timeout)
            .await
            .map_err(|e| retry("tiling the sprite sheet", e.to_string()))?;
        let sprite = self
            .origin
            .put_file(&sprite_file, trace)
            .await
            .map_err(|e| retry("storing the sprite sheet", e.to_string()))?
            .digest;
        let (width, height) = source_size(&video);
        let duration = video.source.info.video_duration();
        let (interval, _) = media::sample_times(duration);
        let vtt = media::thumbnails_vtt(
            &format!("/b/{sprite}.jpg"),
            interval,
            count,
            duration,
            media::thumbnail_size(width, height, THUMBNAIL_WIDTH),
        );
        let vtt = self
            .origin
            .put_bytes(vtt.into(), trace)
            .await
            .map_err(|e| retry("storing the thumbnails' WebVTT", e.to_string()))?
            .digest;
        let colours: Vec<media::FrameColour> = frames.iter().map(|f| f.colour).collect();
        let images = meta::Images {
            poster: poster.image,
            sprite,
            thumbnails_vtt: vtt,
            tags: media::tags(&colours),
        };
        self.meta
            .update(id, |v| {
                if v.images.is_some() {
                    return Ok(None);
                }
                let mut next = v.clone();
                next.images = Some(images.clone());
                Ok(Some(next))
            })
            .await
            .map_err(meta_error)?;
        tracing::info!(video = id, tags = ?images.tags, "images assembled");
        Ok(())
    }

    /// Marks video `id` failed with `reason`, unless it is no longer processing or a retry replaced `attempt`.
    async fn mark_failed(&self, id: &str, attempt: u32, reason: &str) -> Result<Video, MetaError> {
        self.meta
            .update(id, |v| {
                if v.status != Status::Processing || v.attempt != attempt {
                    return Ok(None);
                }
                let mut next = v.clone();
                next.status = Status::Failed;
                next.failure = Some(reason.to_owned());
                Ok(Some(next))
            })
            .await
    }

    /// The last error of the newest dead letter of video `id` in the dead-letter queues of its tasks (best
    /// effort: the barrier's failure says which task failed and how, the dead letter what the worker last reported).
    async fn last_dead_letter_error(&self, id: &str) -> Option<String> {
        for queue in [tasks::TRANSCODE_DEAD_LETTERS, tasks::IMAGES_DEAD_LETTERS] {
            let Ok(peeked) = self.queue.peek(queue, 1000).await else {
                continue;
            };
            let error = peeked
                .iter()
                .rev()
                .filter(|p| tasks::decode::<Task>(&p.payload).is_ok_and(|t| t.video() == id))
                .find_map(|p| {
                    p.dead_letter
                        .as_ref()
                        .map(|d| d.last_error.clone())
                        .filter(|e| !e.is_empty())
                });
            if error.is_some() {
                return error;
            }
        }
        None
    }

    /// An operator's retry of a failed video: it goes back to processing under a new attempt, and the barriers of
    /// what it still lacks (renditions without a playlist, the audio track if missing) are submitted again. Its
    /// dead letters stay in the dead-letter queue for inspection (redriving them later encodes them again, which
    /// changes nothing: outputs are content-addressed and their barrier has already failed).
    async fn retry(&self, id: &str, trace: TraceContext) -> Result<Video, Problem> {
        let store_failed = |e: MetaError| match e {
            MetaError::NotFound { .. } => Problem::not_found(format!("no video {id}")),
            other => Problem::upstream(format!("the store failed: {other}")),
        };
        let current = self.meta.get(id).await.map_err(store_failed)?;
        if current.status != Status::Failed {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "not failed",
                format!(
                    "video {id} is {:?}; only a failed video can be retried",
                    current.status
                )
                .to_lowercase(),
            ));
        }
        let video = self
            .meta
            .update(id, |v| {
                if v.status != Status::Failed || v.attempt != current.attempt {
                    return Err(MetaError::Refused(format!(
                        "video {id} changed while being retried"
                    )));
                }
                let mut next = v.clone();
                next.status = Status::Processing;
                next.failure = None;
                next.attempt += 1;
                Ok(Some(next))
            })
            .await
            .map_err(|e| match e {
                MetaError::Refused(reason) => Problem::new(StatusCode::CONFLICT, "conflict", reason),
                other => store_failed(other),
            })?;
        let plan = media::plan_chunks(
            video.source.info.video_duration(),
            Duration::from_millis(video.segment_ms),
            self.config.segments_per_chunk,
        )
        .map_err(|e| Problem::internal(format!("re-planning video {id}: {e}")))?;
        let rungs: Vec<media::Rung> = video.renditions.iter().map(|r| r.rung.clone()).collect();
        self.submit_or_fail(&video, &plan, &rungs, trace).await?;
        metrics::counter!("pipeline_retries_total").increment(1);
        tracing::info!(video = id, attempt = video.attempt, "video retried");
        Ok(video)
    }

    /// Packages rendition `name` of `video` from its chunks (`digests`, in order) and the audio track; stores
    /// every file at the origin and returns the digest of its media playlist.
    async fn package(
        &self,
        video: &Video,
        name: &str,
        audio: &Digest,
        digests: &[Digest],
        trace: Option<&TraceContext>,
    ) -> Result<(Digest, Option<media::Bandwidth>), JobError> {
        let retry = |what: &str, e: String| JobError::Retry(format!("{what}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-{name}-", video.id))
            .tempdir_in(self.config.work_dir.join("assembly"))
            .map_err(|e| retry("creating an assembly directory", e.to_string()))?;
        let mut chunk_files = Vec::with_capacity(digests.len());
        for (i, digest) in digests.iter().enumerate() {
            let path = dir.path().join(format!("chunk-{i:05}"));
            self.origin
                .download(digest, &path, trace)
                .await
                .map_err(|e| retry("downloading a chunk", e.to_string()))?;
            chunk_files.push(path);
        }
        let audio_file = dir.path().join("audio");
        self.origin
            .download(audio, &audio_file, trace)
            .await
            .map_err(|e| retry("downloading the audio track", e.to_string()))?;
        let list = dir.path().join("chunks.txt");
        tokio::fs::write(&list, media::concat_list(&chunk_files))
            .await
            .map_err(|e| retry("writing the concat list", e.to_string()))?;
        let out = dir.path().join("hls");
        tokio::fs::create_dir_all(&out)
            .await
            .map_err(|e| retry("creating the output directory", e.to_string()))?;
        let segment = Duration::from_millis(video.segment_ms);
        let args = media::package_args(&self.config.tools, &list, &audio_file, segment, &out);
        media::run(&self.config.tools, &args, self.config.package_timeout)
            .await
            .map_err(|e| retry("packaging failed", e.to_string()))?;
        let text = tokio::fs::read_to_string(out.join(media::PLAYLIST))
            .await
            .map_err(|e| retry("reading the packaged playlist", e.to_string()))?;
        let mut playlist = media::parse_media_playlist(&text)
            .map_err(|e| JobError::Permanent(format!("ffmpeg wrote a playlist we cannot read: {e}")))?;
        let upload = async |file: &str, extension: &str| -> Result<String, JobError> {
            let stored = self
                .origin
                .put_file(&out.join(file), trace)
                .await
                .map_err(|e| retry("storing a segment", e.to_string()))?;
            Ok(format!("/b/{}.{extension}", stored.digest))
        };
        if let Some(map) = playlist.map_uri.clone() {
            playlist.map_uri = Some(upload(&map, "mp4").await?);
        }
        let mut sizes = Vec::with_capacity(playlist.segments.len());
        for segment in &mut playlist.segments {
            let size = tokio::fs::metadata(out.join(&segment.uri))
                .await
                .map_err(|e| retry("reading a segment", e.to_string()))?
                .len();
            sizes.push((size, segment.duration));
            segment.uri = upload(&segment.uri.clone(), "m4s").await?;
        }
        let stored = self
            .origin
            .put_bytes(playlist.render().into(), trace)
            .await
            .map_err(|e| retry("storing the playlist", e.to_string()))?;
        Ok((stored.digest, media::Bandwidth::measure(&sizes)))
    }

    async fn assemble(
        &self,
        id: &str,
        name: &str,
        delivery: &Delivery,
        trace: Option<&TraceContext>,
    ) -> Result<(), JobError> {
        let video = self.meta.get(id).await.map_err(meta_error)?;
        let rendition = video
            .renditions
            .iter()
            .find(|r| r.rung.name == name)
            .ok_or_else(|| JobError::Permanent(format!("video {id} has no rendition {name}")))?;
        if rendition.playlist.is_none() {
            let Some(audio) = video.audio else {
                return Err(JobError::Retry(format!(
                    "rendition {name} of {id} waits for the audio track"
                )));
            };
            let digests = join_digests(delivery, rendition.chunks)?;
            let started = std::time::Instant::now();
            let (playlist, bandwidth) = self.package(&video, name, &audio, &digests, trace).await?;
            metrics::histogram!("pipeline_package_seconds").record(started.elapsed().as_secs_f64());
            self.meta
                .update(id, |v| {
                    let mut next = v.clone();
                    let Some(r) = next.renditions.iter_mut().find(|r| r.rung.name == name) else {
                        return Ok(None);
                    };
                    if r.playlist.is_some() {
                        return Ok(None);
                    }
                    r.playlist = Some(playlist);
                    r.bandwidth = bandwidth;
                    Ok(Some(next))
                })
                .await
                .map_err(meta_error)?;
            tracing::info!(video = id, rendition = name, %playlist, "rendition assembled");
        }
        self.finish(id, trace).await
    }

    /// Writes the master playlist and marks the video ready when every rendition is assembled (once).
    async fn finish(&self, id: &str, trace: Option<&TraceContext>) -> Result<(), JobError> {
        let video = self.meta.get(id).await.map_err(meta_error)?;
        if video.master.is_some() || video.renditions.iter().any(|r| r.playlist.is_none()) {
            return Ok(());
        }
        let fps = video_fps(&video);
        let variants: Vec<media::Variant> = video
            .renditions
            .iter()
            .map(|r| {
                media::Variant::for_rung(&r.rung, format!("{}/index.m3u8", r.rung.name), fps, r.bandwidth)
            })
            .collect();
        let master = media::master_playlist(&variants);
        let stored = self
            .origin
            .put_bytes(master.into(), trace)
            .await
            .map_err(|e| JobError::Retry(format!("storing the master playlist: {e}")))?;
        let updated = self
            .meta
            .update(id, |v| {
                if v.master.is_some() || v.status == Status::Failed {
                    return Ok(None);
                }
                let mut next = v.clone();
                next.master = Some(stored.digest);
                next.status = Status::Ready;
                next.ready_ms = Some(meta::now_ms());
                Ok(Some(next))
            })
            .await
            .map_err(meta_error)?;
        if updated.master == Some(stored.digest) && updated.status == Status::Ready {
            metrics::counter!("pipeline_videos_ready_total").increment(1);
            let seconds = updated.ready_ms.unwrap_or(0).saturating_sub(updated.created_ms) as f64 / 1000.0;
            metrics::histogram!("pipeline_upload_to_ready_seconds").record(seconds);
            tracing::info!(video = id, seconds, "video ready");
        }
        Ok(())
    }
}

/// Seek-preview thumbnails' width.
const THUMBNAIL_WIDTH: u32 = 160;
/// The poster's width (at most).
const POSTER_WIDTH: u32 = 1280;

/// The source's displayed width and height (a probed upload always has a video stream; 640x360 otherwise).
fn source_size(video: &Video) -> (u32, u32) {
    video
        .source
        .info
        .video
        .as_ref()
        .map_or((640, 360), |v| (v.width, v.height))
}

/// The source's frame rate (every rendition keeps it).
fn video_fps(video: &Video) -> media::Rational {
    video
        .source
        .info
        .video
        .as_ref()
        .map_or(media::Rational { num: 25, den: 1 }, |v| v.frame_rate)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn meta_error(e: MetaError) -> JobError {
    match e {
        MetaError::NotFound { .. } | MetaError::Corrupt { .. } => JobError::Permanent(e.to_string()),
        other => JobError::Retry(other.to_string()),
    }
}

/// The chunk digests a rendition's completed barrier carries, in chunk order.
fn join_digests(delivery: &Delivery, chunks: u32) -> Result<Vec<Digest>, JobError> {
    let join = delivery
        .join
        .as_ref()
        .ok_or_else(|| JobError::Permanent("the step carries no join results".into()))?;
    (0..chunks)
        .map(|slot| {
            let bytes = join
                .results
                .get(&slot)
                .ok_or_else(|| JobError::Permanent(format!("the join has no result for chunk {slot}")))?;
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| JobError::Permanent(format!("chunk {slot}'s result is not a digest")))
        })
        .collect()
}

impl Handler for Coordinator {
    async fn handle(&self, delivery: &Delivery) -> Result<Vec<u8>, JobError> {
        let step: Step = tasks::decode(&delivery.payload).map_err(|e| {
            tracing::error!(error = %e, "a step that is not ours: dead-lettered");
            JobError::Permanent(e.to_string())
        })?;
        match step {
            Step::AudioEncoded { video, trace } => {
                let digest = join_digests(delivery, 1)?
                    .pop()
                    .ok_or_else(|| JobError::Permanent("no audio digest".into()))?;
                self.meta
                    .update(&video, |v| {
                        if v.audio.is_some() {
                            return Ok(None);
                        }
                        let mut next = v.clone();
                        next.audio = Some(digest);
                        Ok(Some(next))
                    })
                    .await
                    .map_err(meta_error)?;
                tracing::info!(
                    video,
                    trace_id = trace.map(|t| t.trace_hex()).unwrap_or_default(),
                    "audio encoded"
                );
            }
            Step::AssembleImages { video, trace } => {
                let span = tracing::info_span!(
                    "images",
                    video,
                    trace_id = trace.map(|t| t.trace_hex()).unwrap_or_default()
                );
                tracing::Instrument::instrument(self.assemble_images(&video, delivery, trace.as_ref()), span)
                    .await?;
            }
            Step::AssembleRendition {
                video,
                rendition,
                trace,
            } => {
                let span = tracing::info_span!(
                    "assemble",
                    video,
                    rendition,
                    trace_id = trace.map(|t| t.trace_hex()).unwrap_or_default()
                );
                tracing::Instrument::instrument(
                    self.assemble(&video, &rendition, delivery, trace.as_ref()),
                    span,
                )
                .await?;
            }
            Step::Failed {
                video, what, attempt, ..
            } => {
                let mut reason = delivery
                    .join
                    .as_ref()
                    .map(|j| format!("{what}: task {} failed: {}", j.failed_slot, j.reason))
                    .unwrap_or_else(|| format!("{what} failed"));
                if let Some(error) = self.last_dead_letter_error(&video).await {
                    reason.push_str(&format!("; last error: {error}"));
                }
                self.mark_failed(&video, attempt, &reason)
                    .await
                    .map_err(meta_error)?;
                metrics::counter!("pipeline_videos_failed_total").increment(1);
                tracing::warn!(video, %reason, "video failed");
            }
        }
        Ok(Vec::new())
    }
}

/// A video and how far its encodes are.
#[derive(Debug, Serialize)]
struct VideoView {
    #[serde(flatten)]
    video: Video,
    /// Chunks encoded per rendition.
    progress: HashMap<String, u32>,
}

async fn upload(
    State(c): State<Coordinator>,
    Query(query): Query<HashMap<String, String>>,
    axum::Extension(trace): axum::Extension<TraceContext>,
    body: Body,
) -> Result<Response, Problem> {
    let title = query.get("title").map(|t| t.trim()).unwrap_or_default();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(Problem::bad_request(
            "give the video a title of 1 to 200 characters: POST /videos?title=...",
        ));
    }
    let video = c.accept(title.to_owned(), body, trace).await?;
    let location = format!("/videos/{}", video.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(video),
    )
        .into_response())
}

async fn retry(
    State(c): State<Coordinator>,
    UrlPath(id): UrlPath<String>,
    axum::Extension(trace): axum::Extension<TraceContext>,
) -> Result<Response, Problem> {
    if !meta::valid_id(&id) {
        return Err(Problem::bad_request(format!(
            "{id:?} is not a video id (16 hex digits)"
        )));
    }
    let video = c.retry(&id, trace).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(video)).into_response())
}

async fn list(State(c): State<Coordinator>) -> Result<Response, Problem> {
    let videos = c
        .meta
        .list(1000)
        .await
        .map_err(|e| Problem::upstream(format!("the store failed: {e}")))?;
    Ok(axum::Json(videos).into_response())
}

async fn show(State(c): State<Coordinator>, UrlPath(id): UrlPath<String>) -> Result<Response, Problem> {
    if !meta::valid_id(&id) {
        return Err(Problem::bad_request(format!(
            "{id:?} is not a video id (16 hex digits)"
        )));
    }
    let video = c.meta.get(&id).await.map_err(|e| match e {
        MetaError::NotFound { .. } => Problem::not_found(format!("no video {id}")),
        other => Problem::upstream(format!("the store failed: {other}")),
    })?;
    let names: Vec<String> = video.renditions.iter().map(|r| r.rung.name.clone()).collect();
    let progress = c
        .meta
        .progress(&id, &names)
        .await
        .map_err(|e| Problem::upstream(format!("the store failed: {e}")))?
        .into_iter()
        .collect();
    Ok(axum::Json(VideoView { video, progress }).into_response())
}

/// Creates `dir` if needed and returns its absolute path: ffmpeg reads relative names in a concat list against the
/// list's directory, so every path handed to it is absolute.
pub async fn absolute_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    tokio::fs::canonicalize(dir)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", dir.display()))
}

/// Whether `path` exists (for health checks of the work directory).
pub fn work_dir_ok(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(format!("the work directory {} is gone", path.display()))
    }
}
