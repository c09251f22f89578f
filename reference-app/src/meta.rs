//! Video records in the Trestle store, through etcd's v3 API (so a real etcd works as well).
//!
//! Keys, under a configurable prefix (default `/trestle-stream/`):
//! - `v/<video id>`: the [`Video`] record as JSON: title, status, source, renditions and their playlists.
//! - `c/<video id>/<rung>/<chunk index>`: the digest of an encoded chunk, written by the worker that encoded it;
//!   counting them is the pipeline's progress.
//!
//! Every change of a record is a compare-and-swap on its modification revision ([`Meta::update`]), so concurrent
//! writers (two rungs finishing at once, a redelivered task) never lose each other's changes, and the step that
//! marks a video ready happens once. Calls go through trestle-etcd's `RetryingClient`: reads and idempotent writes
//! are retried on another member when one dies; a compare-and-swap whose fate is unknown is read again and
//! redone, which the compare makes safe.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use trestle_etcd::{CallKind, RetryPolicy, RetryingClient};

use crate::media;
use crate::origin::Digest;

/// Where a video is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Uploaded and validated; its renditions are being encoded.
    Processing,
    /// Every rendition and the master playlist are at the origin: it plays.
    Ready,
    /// The pipeline gave up (see [`Video::failure`]); an operator can redrive its dead letters.
    Failed,
}

/// What the upload was, as probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The uploaded file at the origin.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// What ffprobe found in it.
    pub info: media::MediaInfo,
}

/// One rendition (rung of the ladder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendition {
    /// The rung: name, size, rates, H.264 level.
    pub rung: media::Rung,
    /// How many chunks it is encoded in.
    pub chunks: u32,
    /// Its media playlist at the origin, once assembled.
    pub playlist: Option<Digest>,
    /// Its bit rates measured from its segments, once assembled (the master playlist announces them).
    pub bandwidth: Option<media::Bandwidth>,
}

/// The image pipeline's output for a video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Images {
    /// The poster (JPEG) at the origin.
    pub poster: Digest,
    /// The seek-preview sprite sheet (JPEG) at the origin.
    pub sprite: Digest,
    /// The WebVTT mapping times to the sprite's tiles, at the origin.
    pub thumbnails_vtt: Digest,
    /// Searchable tags derived from the frames.
    pub tags: Vec<String>,
}

/// A video's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Video {
    /// Its id (16 hex digits).
    pub id: String,
    /// Its title.
    pub title: String,
    /// Milliseconds since the Unix epoch at upload.
    pub created_ms: u64,
    /// Where it is.
    pub status: Status,
    /// The upload.
    pub source: Source,
    /// The HLS segment duration in milliseconds (every rung's keyframes sit on its multiples).
    pub segment_ms: u64,
    /// The renditions.
    pub renditions: Vec<Rendition>,
    /// The encoded audio track at the origin, once encoded.
    pub audio: Option<Digest>,
    /// The master playlist at the origin, once every rendition is assembled.
    pub master: Option<Digest>,
    /// Why the pipeline gave up.
    pub failure: Option<String>,
    /// Milliseconds since the Unix epoch when it became ready.
    pub ready_ms: Option<u64>,
    /// How many times an operator retried it after a failure (0: never).
    #[serde(default)]
    pub attempt: u32,
    /// Poster, seek previews and tags, once the image pipeline is done (the video may be ready before).
    #[serde(default)]
    pub images: Option<Images>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The store could not be reached, refused the call, or a write's fate is unknown.
    #[error("the store failed: {0}")]
    Store(#[from] trestle_etcd::ClientError),
    /// A stored record could not be parsed.
    #[error("the record at {key} is not valid: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// No such video.
    #[error("no video {id}")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// A video with this id exists already.
    #[error("video {id} exists already")]
    Exists {
        /// The id.
        id: String,
    },
    /// The change was refused by its own rule.
    #[error("{0}")]
    Refused(String),
    /// Too many concurrent changes in a row.
    #[error("video {id} kept changing under {attempts} attempts to update it")]
    Contended {
        /// The video.
        id: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// The video records, over an etcd v3 client.
#[derive(Clone)]
pub struct Meta {
    client: RetryingClient,
    prefix: String,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/trestle-stream/";

impl Meta {
    /// Connects to the store at `endpoints` (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, MetaError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = RetryingClient::connect(endpoints, Some(options), RetryPolicy::default()).await?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// The underlying etcd client (watches, elections, locks share it).
    pub fn client(&self) -> &etcd_client::Client {
        self.client.inner()
    }

    fn video_key(&self, id: &str) -> String {
        format!("{}v/{id}", self.prefix)
    }

    fn chunk_prefix(&self, id: &str, rung: &str) -> String {
        format!("{}c/{id}/{rung}/", self.prefix)
    }

    fn parse(key: &[u8], value: &[u8]) -> Result<Video, MetaError> {
        serde_json::from_slice(value).map_err(|e| MetaError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
    }

    fn encode(video: &Video) -> Vec<u8> {
        // A `Video` has no map with non-string keys and no float: serialization cannot fail.
        serde_json::to_vec(video).unwrap_or_default()
    }

    /// Creates `video`; refused if its id exists.
    pub async fn create(&self, video: &Video) -> Result<(), MetaError> {
        let key = self.video_key(&video.id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, Self::encode(video), None)]);
        // Put-if-absent: idempotent. A retry that finds the key finds ours only if the record is ours byte for
        // byte (ids are random: another video never has this one's).
        let response = self
            .client
            .call(CallKind::Idempotent, |c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await?;
        if !response.succeeded() && self.get(&video.id).await.ok().as_ref() != Some(video) {
            return Err(MetaError::Exists { id: video.id.clone() });
        }
        Ok(())
    }

    /// The video `id` and its record's modification revision.
    pub async fn get_with_revision(&self, id: &str) -> Result<(Video, i64), MetaError> {
        let key = self.video_key(id);
        let response = self
            .client
            .call(CallKind::ReadOnly, |c| {
                let key = key.clone();
                async move { c.kv_client().get(key, None).await }
            })
            .await?;
        let kv = response
            .kvs()
            .first()
            .ok_or_else(|| MetaError::NotFound { id: id.to_owned() })?;
        Ok((Self::parse(kv.key(), kv.value())?, kv.mod_revision()))
    }

    /// The video `id`.
    pub async fn get(&self, id: &str) -> Result<Video, MetaError> {
        Ok(self.get_with_revision(id).await?.0)
    }

    /// Every video, newest first (at most `limit`).
    pub async fn list(&self, limit: usize) -> Result<Vec<Video>, MetaError> {
        let prefix = format!("{}v/", self.prefix);
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let response = self
            .client
            .call(CallKind::ReadOnly, |c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { c.kv_client().get(prefix, Some(options)).await }
            })
            .await?;
        response
            .kvs()
            .iter()
            .map(|kv| Self::parse(kv.key(), kv.value()))
            .collect()
    }

    /// Changes video `id` with `change` (given the current record; `Ok(None)` leaves it as it is), as a
    /// compare-and-swap retried on conflict. Returns the record as stored afterwards.
    pub async fn update<F>(&self, id: &str, mut change: F) -> Result<Video, MetaError>
    where
        F: FnMut(&Video) -> Result<Option<Video>, MetaError>,
    {
        const ATTEMPTS: u32 = 32;
        let key = self.video_key(id);
        for _ in 0..ATTEMPTS {
            let (current, revision) = self.get_with_revision(id).await?;
            let Some(next) = change(&current)? else {
                return Ok(current);
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key.clone(), Self::encode(&next), None)]);
            let outcome = self
                .client
                .call(CallKind::Write, |c| {
                    let txn = txn.clone();
                    async move { c.kv_client().txn(txn).await }
                })
                .await;
            match outcome {
                Ok(response) if response.succeeded() => return Ok(next),
                Ok(_) => {}
                // Unknown whether it applied: read again; if it did, `change` sees its own result and says so.
                Err(trestle_etcd::ClientError::Indeterminate { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(MetaError::Contended {
            id: id.to_owned(),
            attempts: ATTEMPTS,
        })
    }

    /// Records that chunk `index` of `rung` of video `id` was encoded to `digest` (idempotent).
    pub async fn record_chunk(
        &self,
        id: &str,
        rung: &str,
        index: u32,
        digest: &Digest,
    ) -> Result<(), MetaError> {
        let key = format!("{}{index:06}", self.chunk_prefix(id, rung));
        let value = digest.to_string();
        // The same key and value every time: idempotent.
        self.client
            .call(CallKind::Idempotent, |c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.kv_client().put(key, value, None).await }
            })
            .await?;
        Ok(())
    }

    /// How many chunks of each of `rungs` of video `id` are encoded.
    pub async fn progress(&self, id: &str, rungs: &[String]) -> Result<BTreeMap<String, u32>, MetaError> {
        let mut out = BTreeMap::new();
        for rung in rungs {
            let prefix = self.chunk_prefix(id, rung);
            let response = self
                .client
                .call(CallKind::ReadOnly, |c| {
                    let prefix = prefix.clone();
                    async move {
                        c.kv_client()
                            .get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
                            .await
                    }
                })
                .await?;
            out.insert(rung.clone(), u32::try_from(response.count()).unwrap_or(u32::MAX));
        }
        Ok(out)
    }
}

/// A new video id: 16 random hex digits.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whether `id` has the shape of a video id (so it can be put in a key or a path).
pub fn valid_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_checked() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        for bad in ["", "../x", "0123456789ABCDEF", "0123456789abcdef0"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
