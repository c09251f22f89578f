//! The origin store: immutable files named by their SHA-256 digest, written atomically and durably, behind an HTTP
//! API; and [`OriginClient`], how the other services reach it.
//!
//! A write streams the body into a temporary file while hashing it, fsyncs the file, renames it to its digest's
//! name and fsyncs the directory, and only then answers `201` with the digest: an acknowledged blob survives a
//! crash, and a crash mid-write leaves only a temporary file, removed at the next start. Content addressing makes
//! writes idempotent (a retried upload lands on the same name) and every blob cacheable forever.
//!
//! Routes: `PUT /blobs` (body: the bytes; answers `{"digest", "size"}`), `GET /blobs/{digest}`,
//! `HEAD /blobs/{digest}`, plus `/health` and `/metrics`.

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::http::{CallError, ClientConfig, Problem, ServiceClient, TraceContext};

/// A blob's name: the SHA-256 of its bytes, as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The first two hex digits: the directory the blob lives in.
    fn fan_out(&self) -> String {
        format!("{:02x}", self.0[0])
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// A string that is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a SHA-256 digest (64 lowercase hex digits)")]
pub struct BadDigest {
    /// The offending input (its first 80 characters).
    pub input: String,
}

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, BadDigest> {
        let bad = || BadDigest {
            input: s.chars().take(80).collect(),
        };
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for Digest {
    type Error = BadDigest;
    fn try_from(s: String) -> Result<Self, BadDigest> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

/// Blobs on a local disk.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    max_blob: u64,
}

/// A write to the [`BlobStore`] that did not complete; nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The body is larger than the store accepts.
    #[error("the blob is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body could not be read.
    #[error("reading the body failed: {0}")]
    Body(String),
    /// The disk failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BlobStore {
    /// Opens (creating) the store under `root`; blobs above `max_blob` bytes are refused. Temporary files left by a
    /// crash are removed.
    pub async fn open(root: impl Into<PathBuf>, max_blob: u64) -> io::Result<Self> {
        let root = root.into();
        tokio::fs::create_dir_all(root.join("blobs")).await?;
        let tmp = root.join("tmp");
        if tokio::fs::try_exists(&tmp).await? {
            tokio::fs::remove_dir_all(&tmp).await?;
        }
        tokio::fs::create_dir_all(&tmp).await?;
        Ok(Self { root, max_blob })
    }

    /// Where `digest`'s blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.fan_out())
            .join(digest.to_string())
    }

    /// Streams `body` into the store; returns its digest and size once it is durable.
    pub async fn write<S, E>(&self, mut body: S) -> Result<(Digest, u64), WriteError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io_at(&tmp))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| WriteError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > self.max_blob {
                    return Err(WriteError::TooLarge { limit: self.max_blob });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io_at(&tmp))?;
            }
            file.sync_all().await.map_err(io_at(&tmp))?;
            drop(file);
            let digest = Digest(hasher.finalize().into());
            let path = self.path(&digest);
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.root.clone());
            let fresh_dir = !tokio::fs::try_exists(&dir).await.map_err(io_at(&dir))?;
            tokio::fs::create_dir_all(&dir).await.map_err(io_at(&dir))?;
            tokio::fs::rename(&tmp, &path).await.map_err(io_at(&path))?;
            sync_dir(&dir).await.map_err(io_at(&dir))?;
            if fresh_dir {
                let blobs = self.root.join("blobs");
                sync_dir(&blobs).await.map_err(io_at(&blobs))?;
            }
            Ok((digest, size))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Opens `digest`'s blob, if it is stored.
    pub async fn open_blob(&self, digest: &Digest) -> io::Result<Option<(tokio::fs::File, u64)>> {
        match tokio::fs::File::open(self.path(digest)).await {
            Ok(file) => {
                let len = file.metadata().await?.len();
                Ok(Some((file, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

/// The origin's answer to a write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// The origin service's routes over `store` (without `/health` and `/metrics`: see [`crate::http::finish`]).
pub fn router(store: BlobStore) -> Router {
    let store = Arc::new(store);
    Router::new()
        .route("/blobs", axum::routing::put(put_blob))
        .route("/blobs/{digest}", axum::routing::get(get_blob).head(head_blob))
        .with_state(store)
}

async fn put_blob(State(store): State<Arc<BlobStore>>, body: Body) -> Result<Response, Problem> {
    match store.write(body.into_data_stream()).await {
        Ok((digest, size)) => {
            metrics::counter!("origin_blobs_written_total").increment(1);
            metrics::counter!("origin_bytes_written_total").increment(size);
            Ok((StatusCode::CREATED, axum::Json(Stored { digest, size })).into_response())
        }
        Err(WriteError::TooLarge { limit }) => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "blob too large",
            format!("this origin stores blobs of at most {limit} bytes"),
        )),
        Err(WriteError::Body(e)) => Err(Problem::bad_request(format!("the body could not be read: {e}"))),
        Err(e @ WriteError::Io { .. }) => Err(Problem::internal(e.to_string())),
    }
}

fn parse_digest(s: &str) -> Result<Digest, Problem> {
    s.parse()
        .map_err(|e: BadDigest| Problem::bad_request(e.to_string()))
}

fn blob_headers(response: &mut Response, digest: &Digest, len: u64) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        headers.insert(header::ETAG, etag);
    }
}

async fn get_blob(
    State(store): State<Arc<BlobStore>>,
    UrlPath(digest): UrlPath<String>,
) -> Result<Response, Problem> {
    let digest = parse_digest(&digest)?;
    let Some((file, len)) = store
        .open_blob(&digest)
        .await
        .map_err(|e| Problem::internal(e.to_string()))?
    else {
        return Err(Problem::not_found(format!("no blob {digest}")));
    };
    metrics::counter!("origin_blobs_read_total").increment(1);
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    blob_headers(&mut response, &digest, len);
    Ok(response)
}

async fn head_blob(
    State(store): State<Arc<BlobStore>>,
    UrlPath(digest): UrlPath<String>,
) -> Result<Response, Problem> {
    let digest = parse_digest(&digest)?;
    let Some((_, len)) = store
        .open_blob(&digest)
        .await
        .map_err(|e| Problem::internal(e.to_string()))?
    else {
        return Err(Problem::not_found(format!("no blob {digest}")));
    };
    let mut response = StatusCode::OK.into_response();
    blob_headers(&mut response, &digest, len);
    Ok(response)
}

/// The other services' client of the origin. Downloads are checked against their digest.
#[derive(Debug, Clone)]
pub struct OriginClient {
    http: ServiceClient,
}

/// A failed origin call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The origin's bytes do not hash to the digest asked for.
    #[error("the origin's copy of {digest} hashes to {actual}")]
    Corrupt {
        /// Asked for.
        digest: Digest,
        /// Received.
        actual: Digest,
    },
    /// The origin's answer could not be read or parsed.
    #[error("bad answer from the origin: {0}")]
    Answer(String),
    /// A local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl OriginError {
    /// True when the blob does not exist at the origin.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Call(c) if c.status() == Some(StatusCode::NOT_FOUND))
    }
}

impl OriginClient {
    /// A client of the origin at `base`.
    pub fn new(base: impl Into<String>, config: &ClientConfig) -> anyhow::Result<Self> {
        Ok(Self {
            http: ServiceClient::new("origin", base, config)?,
        })
    }

    /// The HTTP client (its breaker, for the operations view).
    pub fn service(&self) -> &ServiceClient {
        &self.http
    }

    async fn put(&self, body: Body, trace: Option<&TraceContext>) -> Result<Stored, OriginError> {
        let response = self
            .http
            .call(http::Method::PUT, "/blobs", body, &[], trace)
            .await?;
        let bytes = crate::http::read_limited(response.into_body(), 4096)
            .await
            .map_err(|e| OriginError::Answer(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| OriginError::Answer(e.to_string()))
    }

    /// Stores `bytes`; idempotent.
    pub async fn put_bytes(&self, bytes: Bytes, trace: Option<&TraceContext>) -> Result<Stored, OriginError> {
        let expected = Digest::of(&bytes);
        let stored = self.put(Body::from(bytes), trace).await?;
        if stored.digest != expected {
            return Err(OriginError::Corrupt {
                digest: expected,
                actual: stored.digest,
            });
        }
        Ok(stored)
    }

    /// Stores the file at `path` (streamed); idempotent.
    pub async fn put_file(&self, path: &Path, trace: Option<&TraceContext>) -> Result<Stored, OriginError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| OriginError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        self.put(Body::from_stream(tokio_util::io::ReaderStream::new(file)), trace)
            .await
    }

    /// Reads `digest` whole (up to `limit` bytes), checked.
    pub async fn get_bytes(
        &self,
        digest: &Digest,
        limit: usize,
        trace: Option<&TraceContext>,
    ) -> Result<Bytes, OriginError> {
        let bytes = self
            .http
            .get_bytes(&format!("/blobs/{digest}"), limit, trace)
            .await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(OriginError::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Downloads `digest` to `path` (through a temporary file beside it, renamed when the digest checks).
    pub async fn download(
        &self,
        digest: &Digest,
        path: &Path,
        trace: Option<&TraceContext>,
    ) -> Result<(), OriginError> {
        let io_err = |source| OriginError::Io {
            path: path.to_path_buf(),
            source,
        };
        let response = self
            .http
            .call(
                http::Method::GET,
                &format!("/blobs/{digest}"),
                Body::empty(),
                &[],
                trace,
            )
            .await?;
        let tmp = path.with_extension(format!("part{:08x}", rand::random::<u32>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
            let mut hasher = Sha256::new();
            let mut body = response.into_body().into_data_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| OriginError::Answer(e.to_string()))?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io_err)?;
            }
            file.flush().await.map_err(io_err)?;
            let actual = Digest(hasher.finalize().into());
            if actual != *digest {
                return Err(OriginError::Corrupt {
                    digest: *digest,
                    actual,
                });
            }
            tokio::fs::rename(&tmp, path).await.map_err(io_err)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_only_lowercase_hex_of_the_right_length() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(
            d.to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        for bad in [
            "",
            "abc",
            &d.to_string().to_uppercase(),
            &format!("{d}0"),
            "../../etc/passwd",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn writes_are_content_addressed_idempotent_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 10).await.unwrap();
        let body = |parts: Vec<&'static [u8]>| {
            futures::stream::iter(
                parts
                    .into_iter()
                    .map(|p| Ok::<_, io::Error>(Bytes::from_static(p))),
            )
        };
        let (d1, n) = store.write(body(vec![b"hel", b"lo"])).await.unwrap();
        assert_eq!((d1, n), (Digest::of(b"hello"), 5));
        let (d2, _) = store.write(body(vec![b"hello"])).await.unwrap();
        assert_eq!(d1, d2);
        assert_eq!(std::fs::read(store.path(&d1)).unwrap(), b"hello");
        assert!(matches!(
            store.write(body(vec![b"0123456789", b"x"])).await,
            Err(WriteError::TooLarge { limit: 10 })
        ));
        // The refused write left no temporary file, and nothing was stored under its name.
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(
            store
                .open_blob(&Digest::of(b"0123456789x"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_crash_mid_write_leaves_only_a_temporary_file_that_the_next_start_removes() {
        let dir = tempfile::tempdir().unwrap();
        let _store = BlobStore::open(dir.path(), 10).await.unwrap();
        std::fs::write(dir.path().join("tmp").join("half-written"), b"hel").unwrap();
        let _store = BlobStore::open(dir.path(), 10).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
