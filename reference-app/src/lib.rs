//! `trestle-stream`: Trestle's reference app, a video streaming service assembled from the Trestle crates.
//!
//! # Map of the crate
//!
//! Each service is a module with its configuration, its HTTP routes and what runs it; the binary (`src/main.rs`)
//! starts one service per process.
//!
//! - [`media`]: the media toolkit (sans-IO where it can be): probing and validating uploads with ffprobe, the
//!   rendition ladder, chunk plans aligned to the HLS segment duration, ffmpeg command lines and HLS playlists.
//! - [`origin`]: the origin store, content-addressed files written atomically (and fsync'd) behind an HTTP API, and
//!   its client.
//! - [`meta`]: video records in the Trestle store (etcd's v3 API): status, renditions, progress, written with
//!   compare-and-swap transactions.
//! - [`tasks`]: the messages that travel on the work queue (chunk and audio encodes, rendition assembly, failures).
//! - [`pipeline`]: the upload service and pipeline coordinator: validates uploads, plans chunks, submits join
//!   barriers on the sharded `transcode` queue, and assembles each rendition's HLS playlist when its barrier
//!   completes.
//! - [`worker`]: the transcode worker: encodes chunks and audio with ffmpeg on the work queue's worker runtime.
//! - [`edge`]: the edge, serving playlists and segments through trestle-cache with coalesced cache fill.
//! - [`http`]: what every HTTP service shares: problem details, `/health`, `/metrics`, request ids and
//!   `traceparent`, and the client (timeouts and circuit breakers) used between services.

pub mod edge;
pub mod http;
pub mod media;
pub mod meta;
pub mod origin;
pub mod pipeline;
pub mod tasks;
pub mod worker;
