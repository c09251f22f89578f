//! The edge: serves playlists and segments to players through trestle-cache, as a CDN's edge does.
//!
//! Every file a player fetches is an immutable origin blob: the master playlist and each rendition's playlist are
//! found through the video's record (a ready video's record never changes, so it is kept in process), segments and
//! init sections are addressed by digest (`/b/<digest>.m4s`). A blob is read with the cache client's
//! `get_or_load`: concurrent misses for one blob — in this process and, through the cache node's lease, across edge
//! replicas — fetch it from the origin once (coalesced cache fill), and the other zones are tried before the origin
//! when the local zone fails. When the whole cache is down the edge reads the origin directly and says so in its
//! metrics, so players keep playing.
//!
//! Routes: `GET /v/{id}/master.m3u8`, `GET /v/{id}/{rendition}/index.m3u8`, `GET /v/{id}/poster.jpg`,
//! `GET /v/{id}/thumbnails.vtt` (seek previews into a sprite sheet), `GET /b/{digest}.{m4s|mp4|jpg}`,
//! `GET /stats` (hit ratio), plus `/health` and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use serde::Serialize;

use crate::http::{Problem, TraceContext};
use crate::meta::{self, Meta, MetaError, Status, Video};
use crate::origin::{Digest, OriginClient};

/// The edge's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EdgeConfig {
    /// How long blobs stay in the cache. Default 24 h (they never change; this only bounds memory use with LRU).
    pub blob_ttl: Duration,
    /// The largest blob the edge serves. Default 16 MiB.
    pub max_blob: usize,
    /// Ready records kept in process. Default 10,000.
    pub max_records: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            blob_ttl: Duration::from_secs(24 * 3600),
            max_blob: 16 << 20,
            max_records: 10_000,
        }
    }
}

impl EdgeConfig {
    /// Checks the settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.blob_ttl >= Duration::from_secs(1),
            "the blob TTL must be at least 1 s"
        );
        anyhow::ensure!(
            self.max_blob > 0 && self.max_records > 0,
            "limits must be more than zero"
        );
        Ok(())
    }
}

/// Counters of the edge's reads.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    origin_fetches: AtomicU64,
    cache_bypassed: AtomicU64,
}

/// What `/stats` answers.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct EdgeStats {
    /// Blob requests served.
    pub requests: u64,
    /// Of those, how many this edge fetched from the origin (cache misses it filled).
    pub origin_fetches: u64,
    /// Of those, how many went to the origin because the cache failed.
    pub cache_bypassed: u64,
    /// `1 - origin_fetches / requests`.
    pub hit_ratio: f64,
}

/// The edge service.
#[derive(Clone)]
pub struct Edge {
    config: Arc<EdgeConfig>,
    cache: trestle_cache::Client,
    origin: OriginClient,
    meta: Meta,
    records: Arc<Mutex<HashMap<String, Arc<Video>>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Edge {
    /// An edge reading through `cache` from `origin`, finding videos in `meta`.
    pub fn new(
        config: EdgeConfig,
        cache: trestle_cache::Client,
        origin: OriginClient,
        meta: Meta,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        Ok(Self {
            config: Arc::new(config),
            cache,
            origin,
            meta,
            records: Arc::default(),
            counters: Arc::default(),
        })
    }

    /// The routes (without `/health` and `/metrics`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v/{id}/master.m3u8", axum::routing::get(master))
            .route("/v/{id}/poster.jpg", axum::routing::get(poster))
            .route("/v/{id}/thumbnails.vtt", axum::routing::get(thumbnails))
            .route("/v/{id}/{rendition}/index.m3u8", axum::routing::get(rendition))
            .route("/b/{file}", axum::routing::get(blob))
            .route("/stats", axum::routing::get(stats))
            .with_state(self.clone())
    }

    /// The hit ratio so far.
    pub fn stats(&self) -> EdgeStats {
        let requests = self.counters.requests.load(Ordering::Relaxed);
        let origin_fetches = self.counters.origin_fetches.load(Ordering::Relaxed);
        EdgeStats {
            requests,
            origin_fetches,
            cache_bypassed: self.counters.cache_bypassed.load(Ordering::Relaxed),
            hit_ratio: if requests == 0 {
                0.0
            } else {
                1.0 - origin_fetches as f64 / requests as f64
            },
        }
    }

    /// The ready video `id`.
    async fn ready_video(&self, id: &str) -> Result<Arc<Video>, Problem> {
        if !meta::valid_id(id) {
            return Err(Problem::bad_request(format!(
                "{id:?} is not a video id (16 hex digits)"
            )));
        }
        if let Some(video) = self.records.lock().get(id) {
            return Ok(video.clone());
        }
        let video = self.meta.get(id).await.map_err(|e| match e {
            MetaError::NotFound { .. } => Problem::not_found(format!("no video {id}")),
            other => Problem::upstream(format!("the store failed: {other}")),
        })?;
        if video.status != Status::Ready {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "not ready",
                format!("video {id} is {:?}, not ready to play", video.status).to_lowercase(),
            ));
        }
        let video = Arc::new(video);
        if video.images.is_none() {
            // Its images may still come: not kept, read again next time.
            return Ok(video);
        }
        let mut records = self.records.lock();
        if records.len() >= self.config.max_records {
            records.clear();
        }
        records.insert(id.to_owned(), video.clone());
        Ok(video)
    }

    /// Blob `digest`, through the cache; from the origin directly if the cache fails.
    async fn read(&self, digest: &Digest, trace: &TraceContext) -> Result<Bytes, Problem> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let key = format!("b:{digest}");
        let fetched = AtomicBool::new(false);
        let load = || async {
            fetched.store(true, Ordering::Relaxed);
            self.origin
                .get_bytes(digest, self.config.max_blob, Some(trace))
                .await
        };
        let result = self
            .cache
            .get_or_load(key.as_bytes(), self.config.blob_ttl, load)
            .await;
        let hit = !fetched.load(Ordering::Relaxed);
        if !hit {
            self.counters.origin_fetches.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!("edge_reads_total", "result" => if hit { "hit" } else { "miss" }).increment(1);
        match result {
            Ok(bytes) => Ok(bytes),
            Err(trestle_cache::ClientError::Load { message }) => {
                if message.contains("404") {
                    Err(Problem::not_found(format!("no file {digest}")))
                } else {
                    Err(Problem::upstream(format!("the origin failed: {message}")))
                }
            }
            Err(cache_error) => {
                // The cache itself failed: serve from the origin (counted), players keep playing.
                tracing::warn!(error = %cache_error, "cache failed; reading the origin directly");
                self.counters.cache_bypassed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("edge_cache_bypassed_total").increment(1);
                if hit {
                    self.counters.origin_fetches.fetch_add(1, Ordering::Relaxed);
                }
                self.origin
                    .get_bytes(digest, self.config.max_blob, Some(trace))
                    .await
                    .map_err(|e| {
                        if e.is_not_found() {
                            Problem::not_found(format!("no file {digest}"))
                        } else {
                            Problem::upstream(format!("the cache and the origin failed: {cache_error}; {e}"))
                        }
                    })
            }
        }
    }
}

fn media_response(bytes: Bytes, content_type: &'static str) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

const PLAYLIST: &str = "application/vnd.apple.mpegurl";

async fn master(
    State(edge): State<Edge>,
    UrlPath(id): UrlPath<String>,
    axum::Extension(trace): axum::Extension<TraceContext>,
) -> Result<Response, Problem> {
    let video = edge.ready_video(&id).await?;
    let digest = video
        .master
        .ok_or_else(|| Problem::internal(format!("video {id} is ready without a master playlist")))?;
    Ok(media_response(edge.read(&digest, &trace).await?, PLAYLIST))
}

async fn rendition(
    State(edge): State<Edge>,
    UrlPath((id, name)): UrlPath<(String, String)>,
    axum::Extension(trace): axum::Extension<TraceContext>,
) -> Result<Response, Problem> {
    let video = edge.ready_video(&id).await?;
    let digest = video
        .renditions
        .iter()
        .find(|r| r.rung.name == name)
        .and_then(|r| r.playlist)
        .ok_or_else(|| Problem::not_found(format!("video {id} has no rendition {name:?}")))?;
    Ok(media_response(edge.read(&digest, &trace).await?, PLAYLIST))
}

async fn blob(
    State(edge): State<Edge>,
    UrlPath(file): UrlPath<String>,
    axum::Extension(trace): axum::Extension<TraceContext>,
) -> Result<Response, Problem> {
    let (digest, content_type) = match file.rsplit_once('.') {
        Some((d, "m4s")) => (d, "video/iso.segment"),
        Some((d, "mp4")) => (d, "video/mp4"),
        Some((d, "jpg")) => (d, "image/jpeg"),
        _ => {
            return Err(Problem::bad_request(format!(
                "{file:?} is not <digest>.m4s, <digest>.mp4 or <digest>.jpg"
            )));
        }
    };
    let digest: Digest = digest
        .parse()
        .map_err(|e: crate::origin::BadDigest| Problem::bad_request(e.to_string()))?;
    Ok(media_response(edge.read(&digest, &trace).await?, content_type))
}

/// The video's images, or 404 while the image pipeline has not finished.
fn images_of(video: &Video) -> Result<&meta::Images, Problem> {
    video
        .images
        .as_ref()
        .ok_or_else(|| Problem::not_found(format!("video {} has no poster or thumbnails yet", video.id)))
}

async fn poster(
    State(edge): State<Edge>,
    UrlPath(id): UrlPath<String>,
    axum::Extension(trace): axum::Extension<TraceContext>,
) -> Result<Response, Problem> {
    let video = edge.ready_video(&id).await?;
    let digest = images_of(&video)?.poster;
    Ok(media_response(edge.read(&digest, &trace).await?, "image/jpeg"))
}

async fn thumbnails(
    State(edge): State<Edge>,
    UrlPath(id): UrlPath<String>,
    axum::Extension(trace): axum::Extension<TraceContext>,
) -> Result<Response, Problem> {
    let video = edge.ready_video(&id).await?;
    let digest = images_of(&video)?.thumbnails_vtt;
    Ok(media_response(edge.read(&digest, &trace).await?, "text/vtt"))
}

async fn stats(State(edge): State<Edge>) -> Response {
    axum::Json(edge.stats()).into_response()
}

/// The cache client's health: unhealthy when it knows no node.
pub fn cache_health(cache: &trestle_cache::Client) -> Result<(), String> {
    if cache.nodes().is_empty() {
        Err("no cache node is known".into())
    } else {
        Ok(())
    }
}
