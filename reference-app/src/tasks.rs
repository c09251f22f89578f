//! The messages of the media pipeline, as JSON payloads on the work queue.
//!
//! Two queues carry them:
//! - `transcode` (sharded; transcode workers consume it): [`Task`]s, one per chunk and rendition, and one audio
//!   encode per video. Each task's result, handed to its join barrier on ack, is the digest of what it wrote to the
//!   origin.
//! - `pipeline` (the coordinator consumes it): [`Step`]s, the completion and failure tasks of the barriers. A
//!   rendition's barrier completes with [`Step::AssembleRendition`] once all of its chunks are encoded; the audio
//!   barrier with [`Step::AudioEncoded`]; any barrier whose task was dead-lettered with [`Step::Failed`].

use serde::{Deserialize, Serialize};

use crate::http::TraceContext;
use crate::media;
use crate::origin::Digest;

/// The queue of encode tasks.
pub const TRANSCODE_QUEUE: &str = "transcode";
/// The queue of image tasks (frames sampled for thumbnails, the poster and tags).
pub const IMAGES_QUEUE: &str = "images";
/// Where the images queue's dead letters go.
pub const IMAGES_DEAD_LETTERS: &str = "images-dead";
/// The queue of the coordinator's steps.
pub const PIPELINE_QUEUE: &str = "pipeline";
/// Where the transcode queue's dead letters go (an operator redrives them from there).
pub const TRANSCODE_DEAD_LETTERS: &str = "transcode-dead";
/// Where the pipeline queue's dead letters go.
pub const PIPELINE_DEAD_LETTERS: &str = "pipeline-dead";

/// One piece of encoding work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Encode chunk `index` (video only) of the source into `rung`.
    EncodeChunk {
        /// The video.
        video: String,
        /// The source at the origin.
        source: Digest,
        /// The chunk: its index, start and duration in the source.
        chunk: media::Chunk,
        /// The rendition.
        rung: media::Rung,
        /// The source's frame rate (the output keeps it).
        fps: media::Rational,
        /// The HLS segment duration: a keyframe at each of its multiples.
        segment_ms: u64,
        /// The upload's trace, so the encode shows up under it.
        trace: Option<TraceContext>,
    },
    /// Encode the audio track (or a silent one when the source has none) of the whole source.
    EncodeAudio {
        /// The video.
        video: String,
        /// The source at the origin.
        source: Digest,
        /// The source as probed (its audio stream, if any, and the video's duration, which the track matches).
        info: media::MediaInfo,
        /// The upload's trace.
        trace: Option<TraceContext>,
    },
    /// Take the frame at `at_ms` as a `width`×`height` JPEG and measure its average colour (the images queue).
    SampleFrame {
        /// The video.
        video: String,
        /// The source at the origin.
        source: Digest,
        /// Where in the source, milliseconds.
        at_ms: u64,
        /// The image's width.
        width: u32,
        /// The image's height.
        height: u32,
        /// The upload's trace.
        trace: Option<TraceContext>,
    },
}

/// What a [`Task::SampleFrame`] hands its barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampledFrame {
    /// The JPEG at the origin.
    pub image: Digest,
    /// The frame's average colour.
    pub colour: media::FrameColour,
}

impl Task {
    /// The video it belongs to.
    pub fn video(&self) -> &str {
        match self {
            Self::EncodeChunk { video, .. }
            | Self::EncodeAudio { video, .. }
            | Self::SampleFrame { video, .. } => video,
        }
    }

    /// The trace it carries.
    pub fn trace(&self) -> Option<&TraceContext> {
        match self {
            Self::EncodeChunk { trace, .. }
            | Self::EncodeAudio { trace, .. }
            | Self::SampleFrame { trace, .. } => trace.as_ref(),
        }
    }
}

/// One step of the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// Every chunk of `rendition` is encoded (the delivery's join results are the chunks' digests, in order):
    /// package it as HLS; if it is the last, write the master playlist and mark the video ready.
    AssembleRendition {
        /// The video.
        video: String,
        /// The rendition's name.
        rendition: String,
        /// The upload's trace.
        trace: Option<TraceContext>,
    },
    /// The audio track is encoded (the join result is its digest).
    AudioEncoded {
        /// The video.
        video: String,
        /// The upload's trace.
        trace: Option<TraceContext>,
    },
    /// Every frame of the video is sampled (the join results are [`SampledFrame`]s, the poster last): tile the
    /// sprite sheet, write its WebVTT, derive the tags.
    AssembleImages {
        /// The video.
        video: String,
        /// The upload's trace.
        trace: Option<TraceContext>,
    },
    /// A task of the video's barrier `what` was dead-lettered or terminated (the join says which and why).
    Failed {
        /// The video.
        video: String,
        /// Which barrier: a rendition's name or `audio`.
        what: String,
        /// The video's attempt that submitted the barrier (a failure of an attempt a retry replaced is ignored).
        #[serde(default)]
        attempt: u32,
        /// The upload's trace.
        trace: Option<TraceContext>,
    },
}

/// Encodes a message as its JSON payload.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Tasks and steps hold strings, integers and digests only: serialization cannot fail.
    serde_json::to_vec(message).unwrap_or_default()
}

/// A payload that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("not a pipeline message: {reason}")]
pub struct BadMessage {
    /// Why.
    pub reason: String,
}

/// Decodes a payload.
pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, BadMessage> {
    serde_json::from_slice(payload).map_err(|e| BadMessage {
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tasks_and_steps_round_trip_and_garbage_is_refused() {
        let task = Task::EncodeAudio {
            video: "00000000000000aa".into(),
            source: Digest::of(b"x"),
            info: media::parse_ffprobe(
                br#"{"format":{"format_name":"mov,mp4","duration":"20.0","size":"1000"},"streams":[{"codec_type":"video","codec_name":"h264","width":640,"height":360,"r_frame_rate":"25/1","avg_frame_rate":"25/1","pix_fmt":"yuv420p"}]}"#,
            )
            .unwrap(),
            trace: Some(TraceContext::new_root()),
        };
        assert_eq!(decode::<Task>(&encode(&task)).unwrap(), task);
        let plan = media::plan_chunks(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(2),
            2,
        )
        .unwrap();
        let chunk = Task::EncodeChunk {
            video: "00000000000000aa".into(),
            source: Digest::of(b"x"),
            chunk: plan.chunks[1],
            rung: media::default_ladder()[0].clone(),
            fps: media::Rational { num: 25, den: 1 },
            segment_ms: 2000,
            trace: None,
        };
        assert_eq!(decode::<Task>(&encode(&chunk)).unwrap(), chunk);
        let step = Step::AssembleRendition {
            video: "00000000000000aa".into(),
            rendition: "360p".into(),
            trace: None,
        };
        assert_eq!(decode::<Step>(&encode(&step)).unwrap(), step);
        assert!(decode::<Task>(b"{\"kind\":\"encode_chunk\"}").is_err());
        assert!(decode::<Step>(b"\xff").is_err());
    }
}
