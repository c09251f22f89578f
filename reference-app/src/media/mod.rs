//! Media: probing uploads, the bitrate ladder, chunk plans, ffmpeg command lines and HLS playlists.
//!
//! The pipeline is chunked encoding in the style of Netflix's Archer: an upload is probed and checked, its
//! duration is cut into chunks, every (chunk, rung) pair is transcoded on its own (video only), the audio is
//! encoded once, and each rung's chunks are joined with the audio and packaged to fragmented-MP4 HLS. The
//! joins are clean only because every chunk starts at a multiple of the segment duration and every encode
//! forces a closed-GOP IDR frame at each segment boundary, with no scene-cut keyframes and a constant frame
//! rate equal to the source's (see [`chunk_args`]).
//!
//! Everything here except two functions is sans-IO: it parses text, builds argument vectors and makes
//! decisions, and is unit-tested synchronously. The two thin async shells are [`probe`] (runs ffprobe) and
//! [`run`] (runs ffmpeg with a timeout, keeping the tail of its stderr for the error).
//!
//! | module | what it does |
//! |---|---|
//! | `probe` | [`parse_ffprobe`] reads ffprobe's JSON into [`MediaInfo`]; [`check`] refuses uploads outside [`UploadLimits`] with a user-facing [`Refusal`]; [`probe`] runs ffprobe |
//! | `ladder` | the [`Rung`]s of the bitrate ladder: [`default_ladder`], and [`ladder_for`] a source (never upscale, keep its aspect), with each rung's H.264 level and HLS `CODECS` |
//! | `plan` | [`plan_chunks`] cuts a duration into [`Chunk`]s at multiples of the segment duration ([`ChunkPlan`], serde for queue messages) |
//! | `ffmpeg` | [`Tools`] (paths, threads, preset) and the argument builders [`chunk_args`], [`audio_args`], [`package_args`], [`concat_list`], [`test_clip_args`]; [`run`] |
//! | `images` | the image pipeline: [`sample_times`], [`frame_args`] (a thumbnail and the frame's average colour), [`sprite_args`] (the seek-preview sprite sheet), [`thumbnails_vtt`], and [`tags`] from [`FrameColour`]s |
//! | `hls` | [`master_playlist`] of [`Variant`]s, and [`parse_media_playlist`] / [`MediaPlaylist::render`] to rewrite a rung's playlist |
//!
//! What this does not do: HDR (every rung is 8-bit yuv420p and HDR sources are not tone-mapped), deinterlacing,
//! subtitles, or more than one audio track (the first one is used).

mod ffmpeg;
mod hls;
mod images;
mod ladder;
mod plan;
mod probe;

pub use ffmpeg::{
    AUDIO_BITRATE_KBPS, AUDIO_CHANNELS, AUDIO_SAMPLE_RATE, FfmpegError, INIT_SEGMENT, PLAYLIST,
    SEGMENT_PATTERN, StderrTail, Tools, ToolsError, audio_args, chunk_args, concat_list, package_args, run,
    test_clip_args, test_tone_args,
};
pub use hls::{Bandwidth, HlsError, MediaPlaylist, Segment, Variant, master_playlist, parse_media_playlist};
pub use images::{
    FrameColour, MAX_FRAMES, SPRITE_COLUMNS, frame_args, sample_times, sprite_args, tags, thumbnail_size,
    thumbnails_vtt,
};
pub use ladder::{Rung, default_ladder, h264_level, ladder_for};
pub use plan::{Chunk, ChunkPlan, MAX_CHUNKS, MAX_SEGMENT, MIN_SEGMENT, PlanError, plan_chunks};
pub use probe::{
    AudioStream, MediaInfo, ProbeError, Rational, Refusal, UploadLimits, UploadLimitsError, VideoStream,
    check, parse_ffprobe, probe,
};
