//! Probing an upload: ffprobe's JSON read into [`MediaInfo`], and the checks that refuse an upload.
//!
//! [`parse_ffprobe`] is sans-IO: it takes the bytes that `ffprobe -v error -print_format json -show_format
//! -show_streams` printed and never panics on them, whatever they are. [`check`] turns a [`MediaInfo`] and the
//! [`UploadLimits`] into a decision, with a [`Refusal`] whose message can be shown to the uploader as is.
//! [`probe`] is the thin async shell that runs ffprobe.
//!
//! The video dimensions in [`VideoStream`] are the *displayed* ones: the sample aspect ratio is applied to the
//! width and a rotation of ±90° (phones record portrait video as rotated landscape) swaps width and height.
//! That is what the ladder must fit, because ffmpeg rotates the frames on decode before our scale filter.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ffmpeg::{StderrTail, Tools};

/// A fraction: a frame rate (`30000/1001`) or an aspect ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rational {
    /// Numerator.
    pub num: u32,
    /// Denominator.
    pub den: u32,
}

impl Rational {
    /// `num/den` as given (not reduced).
    pub const fn new(num: u32, den: u32) -> Self {
        Self { num, den }
    }

    /// Parses ffprobe's `25/1`, `30000/1001` or `16:15`, reduced to lowest terms. `None` for a zero
    /// denominator (ffprobe's `0/0` means unknown), a negative or malformed value, or terms beyond `u32`.
    pub fn parse(text: &str) -> Option<Self> {
        let (num, den) = text.trim().split_once(['/', ':'])?;
        let num: u64 = num.trim().parse().ok()?;
        let den: u64 = den.trim().parse().ok()?;
        if den == 0 {
            return None;
        }
        let g = gcd(num, den);
        Some(Self {
            num: u32::try_from(num / g).ok()?,
            den: u32::try_from(den / g).ok()?,
        })
    }

    /// Whether both terms are above zero.
    pub const fn is_positive(self) -> bool {
        self.num > 0 && self.den > 0
    }

    /// The value as a float (0 for a zero denominator).
    pub fn as_f64(self) -> f64 {
        if self.den == 0 {
            0.0
        } else {
            f64::from(self.num) / f64::from(self.den)
        }
    }

    /// How many whole periods of this rate (read as frames per second) it takes to reach `duration`,
    /// rounded up: the number of frames whose start time is before `duration`.
    pub fn frames_in(self, duration: Duration) -> u64 {
        if self.den == 0 {
            return 0;
        }
        let nanos = duration.as_nanos();
        let num = u128::from(self.num);
        let den = u128::from(self.den) * 1_000_000_000;
        u64::try_from((nanos * num).div_ceil(den)).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Common frame rates a measured average is snapped to when it is within 0.5% of one (a phone's variable
/// frame rate averages to `6407/214` for what is meant as 29.97).
const STANDARD_RATES: [Rational; 11] = [
    Rational::new(15, 1),
    Rational::new(24000, 1001),
    Rational::new(24, 1),
    Rational::new(25, 1),
    Rational::new(30000, 1001),
    Rational::new(30, 1),
    Rational::new(48000, 1001),
    Rational::new(48, 1),
    Rational::new(50, 1),
    Rational::new(60000, 1001),
    Rational::new(60, 1),
];

/// The frame rate to encode at: the average rate when known (the right one for variable frame rate), else
/// the base rate, snapped to the nearest standard rate within 0.5%.
fn choose_frame_rate(avg: Option<Rational>, base: Option<Rational>) -> Option<Rational> {
    let rate = avg
        .filter(|r| r.is_positive())
        .or(base.filter(|r| r.is_positive()))?;
    let value = rate.as_f64();
    let nearest = STANDARD_RATES.iter().copied().min_by(|a, b| {
        let da = (a.as_f64() - value).abs();
        let db = (b.as_f64() - value).abs();
        da.total_cmp(&db)
    });
    match nearest {
        Some(standard) if (standard.as_f64() - value).abs() <= value * 0.005 => Some(standard),
        _ => Some(rate),
    }
}

/// What ffprobe found in an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MediaInfo {
    /// ffprobe's `format_name`, e.g. `mov,mp4,m4a,3gp,3g2,mj2` or `matroska,webm`.
    pub container: String,
    /// The container's duration (zero when ffprobe could not tell).
    pub duration: Duration,
    /// The file's size in bytes.
    pub size_bytes: u64,
    /// The first video stream that is not an attached picture (cover art), if any.
    pub video: Option<VideoStream>,
    /// The first audio stream, if any.
    pub audio: Option<AudioStream>,
}

impl MediaInfo {
    /// The duration to plan chunks and audio with: the video stream's own duration when ffprobe reports one,
    /// else the container's. A container's duration can run past the last video frame (a longer audio track),
    /// and a chunk planned past the last frame would have nothing to encode.
    pub fn video_duration(&self) -> Duration {
        self.video
            .as_ref()
            .and_then(|v| v.duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(self.duration)
    }
}

/// A video stream, with its dimensions as displayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VideoStream {
    /// ffprobe's `codec_name` (`h264`, `hevc`, `vp9`, ...).
    pub codec: String,
    /// Displayed width in pixels: sample aspect ratio applied, and swapped with the height for ±90° rotation.
    pub width: u32,
    /// Displayed height in pixels.
    pub height: u32,
    /// Width of the coded frames, as stored.
    pub coded_width: u32,
    /// Height of the coded frames, as stored.
    pub coded_height: u32,
    /// Rotation to apply for display, in degrees clockwise: 0, 90, 180 or 270.
    pub rotation: u32,
    /// The frame rate to encode at (see [`Rational`]); `0/1` when ffprobe knew none.
    pub frame_rate: Rational,
    /// ffprobe's `pix_fmt` (`yuv420p`, `yuv420p10le`, ...); empty when unknown.
    pub pix_fmt: String,
    /// The stream's own duration, when the container records one.
    pub duration: Option<Duration>,
    /// The stream's frame count, when the container records one.
    pub frames: Option<u64>,
}

/// An audio stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AudioStream {
    /// ffprobe's `codec_name` (`aac`, `opus`, `mp3`, ...).
    pub codec: String,
    /// Samples per second (0 when unknown).
    pub sample_rate: u32,
    /// Channel count (0 when unknown).
    pub channels: u32,
}

/// Probing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// ffprobe could not read the file as media (a text file, a truncated MP4 without its index, ...).
    #[error("not a media file: {reason}")]
    NotMedia {
        /// ffprobe's error lines, without the file's path.
        reason: String,
    },
    /// ffprobe succeeded but printed something that is not the JSON it should print.
    #[error("ffprobe printed malformed output: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// ffprobe could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The ffprobe path used.
        program: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// ffprobe ran longer than allowed and was killed.
    #[error("ffprobe took longer than {after:?}")]
    Timeout {
        /// The time allowed ([`Tools::probe_timeout`]).
        after: Duration,
    },
}

// ffprobe's JSON, as far as we read it. Every field is optional: a missing one becomes "unknown", never an
// error, and unknown fields are ignored.
#[derive(Deserialize)]
struct RawDoc {
    #[serde(default)]
    streams: Vec<RawStream>,
    format: Option<RawFormat>,
}

#[derive(Deserialize, Default)]
struct RawFormat {
    format_name: Option<String>,
    duration: Option<String>,
    size: Option<String>,
}

#[derive(Deserialize)]
struct RawStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    sample_aspect_ratio: Option<String>,
    r_frame_rate: Option<String>,
    avg_frame_rate: Option<String>,
    pix_fmt: Option<String>,
    sample_rate: Option<String>,
    channels: Option<u32>,
    duration: Option<String>,
    nb_frames: Option<String>,
    #[serde(default)]
    disposition: RawDisposition,
    #[serde(default)]
    tags: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    side_data_list: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RawDisposition {
    #[serde(default)]
    attached_pic: u8,
}

/// Reads the JSON printed by `ffprobe -v error -print_format json -show_format -show_streams FILE`.
///
/// Unknown or missing fields become "unknown" values (zero, empty, `None`) for [`check`] to judge; only
/// output that is not such a JSON document at all is an error.
pub fn parse_ffprobe(json: &[u8]) -> Result<MediaInfo, ProbeError> {
    let doc: RawDoc = serde_json::from_slice(json).map_err(|e| ProbeError::Malformed {
        reason: e.to_string(),
    })?;
    let format = doc.format.ok_or_else(|| ProbeError::Malformed {
        reason: "no \"format\" section".into(),
    })?;
    let video = doc
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("video") && s.disposition.attached_pic == 0)
        .map(video_stream);
    let audio = doc
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("audio"))
        .map(|s| AudioStream {
            codec: s.codec_name.clone().unwrap_or_default(),
            sample_rate: s
                .sample_rate
                .as_deref()
                .and_then(|r| r.trim().parse().ok())
                .unwrap_or(0),
            channels: s.channels.unwrap_or(0),
        });
    let stream_duration = doc
        .streams
        .iter()
        .filter_map(|s| s.duration.as_deref().and_then(parse_seconds))
        .max();
    let duration = format
        .duration
        .as_deref()
        .and_then(parse_seconds)
        .filter(|d| !d.is_zero())
        .or(stream_duration)
        .unwrap_or(Duration::ZERO);
    Ok(MediaInfo {
        container: format.format_name.unwrap_or_default(),
        duration,
        size_bytes: format
            .size
            .as_deref()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        video,
        audio,
    })
}

fn video_stream(s: &RawStream) -> VideoStream {
    let coded_width = s.width.unwrap_or(0);
    let coded_height = s.height.unwrap_or(0);
    let mut width = coded_width;
    let height = coded_height;
    if let Some(sar) = s.sample_aspect_ratio.as_deref().and_then(Rational::parse)
        && sar.is_positive()
        && sar.num != sar.den
    {
        let scaled =
            (u64::from(coded_width) * u64::from(sar.num) + u64::from(sar.den) / 2) / u64::from(sar.den);
        width = u32::try_from(scaled).unwrap_or(u32::MAX);
    }
    let rotation = rotation(s);
    let (width, height) = if rotation % 180 == 90 {
        (height, width)
    } else {
        (width, height)
    };
    VideoStream {
        codec: s.codec_name.clone().unwrap_or_default(),
        width,
        height,
        coded_width,
        coded_height,
        rotation,
        frame_rate: choose_frame_rate(
            s.avg_frame_rate.as_deref().and_then(Rational::parse),
            s.r_frame_rate.as_deref().and_then(Rational::parse),
        )
        .unwrap_or(Rational::new(0, 1)),
        pix_fmt: s.pix_fmt.clone().unwrap_or_default(),
        duration: s.duration.as_deref().and_then(parse_seconds),
        frames: s.nb_frames.as_deref().and_then(|n| n.trim().parse().ok()),
    }
}

/// The display rotation in degrees clockwise, from the display matrix side data (ffmpeg 5+: `rotation`,
/// counter-clockwise) or the legacy `rotate` tag (clockwise), rounded to a quarter turn.
fn rotation(s: &RawStream) -> u32 {
    let from_matrix = s
        .side_data_list
        .iter()
        .find_map(|d| d.get("rotation").and_then(serde_json::Value::as_f64))
        .map(|ccw| -ccw);
    let from_tag = || {
        s.tags.get("rotate").and_then(|v| match v {
            serde_json::Value::String(t) => t.trim().parse::<f64>().ok(),
            other => other.as_f64(),
        })
    };
    let Some(degrees) = from_matrix.or_else(from_tag).filter(|d| d.is_finite()) else {
        return 0;
    };
    let quarters = (degrees / 90.0).round().rem_euclid(4.0);
    // `quarters` is one of 0, 1, 2, 3 here.
    (quarters as u32) * 90
}

/// Parses ffprobe's decimal seconds (`12.000000`) exactly; `None` for `N/A`, negatives or garbage.
pub(crate) fn parse_seconds(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut nanos: u32 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(Duration::new(secs, nanos))
}

/// What an upload may be. Defaults: 1 s to 10 min, at most 3840×2160 (either orientation) and at least
/// 64×64, at most 2 GiB, 1 to 60 frames per second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UploadLimits {
    /// Longest accepted duration (10 minutes).
    pub max_duration: Duration,
    /// Shortest accepted duration (1 second).
    pub min_duration: Duration,
    /// Largest width for landscape video; for portrait video it bounds the height (3840).
    pub max_width: u32,
    /// Largest height for landscape video; for portrait video it bounds the width (2160).
    pub max_height: u32,
    /// Smallest displayed width (64).
    pub min_width: u32,
    /// Smallest displayed height (64).
    pub min_height: u32,
    /// Largest file (2 GiB).
    pub max_bytes: u64,
    /// Lowest frame rate, frames per second (1).
    pub min_frame_rate: u32,
    /// Highest frame rate, frames per second (60).
    pub max_frame_rate: u32,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_secs(10 * 60),
            min_duration: Duration::from_secs(1),
            max_width: 3840,
            max_height: 2160,
            min_width: 64,
            min_height: 64,
            max_bytes: 2 << 30,
            min_frame_rate: 1,
            max_frame_rate: 60,
        }
    }
}

/// [`UploadLimits::validate`] found a bad limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UploadLimitsError {
    /// A limit that must be positive is zero.
    #[error("`{field}` must be greater than zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// A minimum is above its maximum.
    #[error("`{min_field}` ({min}) must not be above `{max_field}` ({max})")]
    MinAboveMax {
        /// The minimum's field.
        min_field: &'static str,
        /// Its value.
        min: String,
        /// The maximum's field.
        max_field: &'static str,
        /// Its value.
        max: String,
    },
}

impl UploadLimits {
    /// Sets [`UploadLimits::max_duration`].
    pub fn with_max_duration(mut self, max_duration: Duration) -> Self {
        self.max_duration = max_duration;
        self
    }

    /// Sets [`UploadLimits::min_duration`].
    pub fn with_min_duration(mut self, min_duration: Duration) -> Self {
        self.min_duration = min_duration;
        self
    }

    /// Sets [`UploadLimits::max_width`] and [`UploadLimits::max_height`].
    pub fn with_max_size(mut self, max_width: u32, max_height: u32) -> Self {
        self.max_width = max_width;
        self.max_height = max_height;
        self
    }

    /// Sets [`UploadLimits::max_bytes`].
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Checks that every maximum is positive and not below its minimum.
    pub fn validate(&self) -> Result<(), UploadLimitsError> {
        let zero = |field| Err(UploadLimitsError::Zero { field });
        if self.max_duration.is_zero() {
            return zero("max_duration");
        }
        if self.max_width == 0 {
            return zero("max_width");
        }
        if self.max_height == 0 {
            return zero("max_height");
        }
        if self.max_bytes == 0 {
            return zero("max_bytes");
        }
        if self.min_frame_rate == 0 {
            return zero("min_frame_rate");
        }
        let pairs: [(&'static str, String, &'static str, String, bool); 4] = [
            (
                "min_duration",
                format!("{:?}", self.min_duration),
                "max_duration",
                format!("{:?}", self.max_duration),
                self.min_duration > self.max_duration,
            ),
            (
                "min_width",
                self.min_width.to_string(),
                "max_height",
                self.max_height.to_string(),
                // Portrait video puts the width under `max_height`, so the minimum must fit both.
                self.min_width > self.max_height.min(self.max_width),
            ),
            (
                "min_height",
                self.min_height.to_string(),
                "max_height",
                self.max_height.to_string(),
                self.min_height > self.max_height.min(self.max_width),
            ),
            (
                "min_frame_rate",
                self.min_frame_rate.to_string(),
                "max_frame_rate",
                self.max_frame_rate.to_string(),
                self.min_frame_rate > self.max_frame_rate,
            ),
        ];
        for (min_field, min, max_field, max, bad) in pairs {
            if bad {
                return Err(UploadLimitsError::MinAboveMax {
                    min_field,
                    min,
                    max_field,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// Why an upload is refused. The messages are written for the person who uploaded the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No video stream (an audio file; a cover picture does not count).
    #[error("the file has no video track")]
    NoVideo,
    /// ffprobe found no duration (a still image, a raw stream without timing).
    #[error("the file's duration cannot be determined (is it a still image?)")]
    UnknownDuration,
    /// Shorter than [`UploadLimits::min_duration`].
    #[error("the video is too short: {duration:?}, the minimum is {min:?}")]
    TooShort {
        /// The video's duration.
        duration: Duration,
        /// The limit.
        min: Duration,
    },
    /// Longer than [`UploadLimits::max_duration`].
    #[error("the video is too long: {duration:?}, the maximum is {max:?}")]
    TooLong {
        /// The video's duration.
        duration: Duration,
        /// The limit.
        max: Duration,
    },
    /// Bigger than [`UploadLimits::max_bytes`].
    #[error("the file is too large: {size_bytes} bytes, the maximum is {max_bytes} bytes")]
    TooLarge {
        /// The file's size.
        size_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The frame rate is unknown, zero or outside the limits.
    #[error(
        "unsupported frame rate {num}/{den} ({:.3} fps): it must be between {min} and {max} fps",
        Rational::new(*num, *den).as_f64()
    )]
    FrameRate {
        /// Numerator of the frame rate.
        num: u32,
        /// Denominator of the frame rate.
        den: u32,
        /// The lowest rate accepted.
        min: u32,
        /// The highest rate accepted.
        max: u32,
    },
    /// The picture is larger than the limits.
    #[error(
        "the picture is too large: {width}x{height}, the maximum is {max_width}x{max_height} (or {max_height}x{max_width} for portrait video)"
    )]
    Resolution {
        /// Displayed width.
        width: u32,
        /// Displayed height.
        height: u32,
        /// The limit on the long side.
        max_width: u32,
        /// The limit on the short side.
        max_height: u32,
    },
    /// The picture is smaller than the limits (or ffprobe did not know its size).
    #[error("the picture is too small: {width}x{height}, the minimum is {min_width}x{min_height}")]
    TooSmall {
        /// Displayed width.
        width: u32,
        /// Displayed height.
        height: u32,
        /// The smallest width.
        min_width: u32,
        /// The smallest height.
        min_height: u32,
    },
    /// ffprobe did not recognise the video codec, so ffmpeg cannot decode it either.
    #[error("the video codec is not supported")]
    UnknownCodec,
}

/// Decides whether an upload can go through the pipeline.
///
/// Odd dimensions are accepted: every rung is scaled to even dimensions (see [`super::ladder_for`]).
pub fn check(info: &MediaInfo, limits: &UploadLimits) -> Result<(), Refusal> {
    let Some(video) = &info.video else {
        return Err(Refusal::NoVideo);
    };
    if video.codec.is_empty() || video.codec == "none" {
        return Err(Refusal::UnknownCodec);
    }
    let duration = info.duration;
    if duration.is_zero() {
        return Err(Refusal::UnknownDuration);
    }
    if duration < limits.min_duration {
        return Err(Refusal::TooShort {
            duration,
            min: limits.min_duration,
        });
    }
    if duration > limits.max_duration {
        return Err(Refusal::TooLong {
            duration,
            max: limits.max_duration,
        });
    }
    if info.size_bytes > limits.max_bytes {
        return Err(Refusal::TooLarge {
            size_bytes: info.size_bytes,
            max_bytes: limits.max_bytes,
        });
    }
    let rate = video.frame_rate;
    let (num, den) = (u64::from(rate.num), u64::from(rate.den));
    if !rate.is_positive()
        || num < u64::from(limits.min_frame_rate) * den
        || num > u64::from(limits.max_frame_rate) * den
    {
        return Err(Refusal::FrameRate {
            num: rate.num,
            den: rate.den,
            min: limits.min_frame_rate,
            max: limits.max_frame_rate,
        });
    }
    let (long, short) = (video.width.max(video.height), video.width.min(video.height));
    let (max_long, max_short) = (
        limits.max_width.max(limits.max_height),
        limits.max_width.min(limits.max_height),
    );
    if long > max_long || short > max_short {
        return Err(Refusal::Resolution {
            width: video.width,
            height: video.height,
            max_width: max_long,
            max_height: max_short,
        });
    }
    if video.width < limits.min_width || video.height < limits.min_height {
        return Err(Refusal::TooSmall {
            width: video.width,
            height: video.height,
            min_width: limits.min_width,
            min_height: limits.min_height,
        });
    }
    Ok(())
}

/// Most bytes of ffprobe output read; its JSON for a real file is a few kilobytes.
const MAX_PROBE_OUTPUT: usize = 4 << 20;

/// Runs ffprobe on `file` and parses its output.
///
/// A file ffprobe cannot read is [`ProbeError::NotMedia`] with ffprobe's error lines (the file's path
/// removed, so the reason can be shown to the uploader). ffprobe is killed after [`Tools::probe_timeout`].
pub async fn probe(tools: &Tools, file: &Path) -> Result<MediaInfo, ProbeError> {
    use tokio::io::AsyncReadExt;

    let metadata = tokio::fs::metadata(file).await.map_err(|source| ProbeError::Io {
        path: file.to_owned(),
        source,
    })?;
    let mut child = tokio::process::Command::new(&tools.ffprobe)
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(super::ffmpeg::file_url(file))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            program: tools.ffprobe.clone(),
            source,
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out = Vec::new();
    let mut tail = StderrTail::default();
    let outcome = tokio::time::timeout(tools.probe_timeout, async {
        let read_out = async {
            if let Some(stdout) = stdout {
                stdout.take(MAX_PROBE_OUTPUT as u64).read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (read, ()) = tokio::join!(read_out, super::ffmpeg::read_tail_into(stderr, &mut tail));
        (read, child.wait().await)
    })
    .await;
    let Ok((read, status)) = outcome else {
        let _ = child.kill().await;
        return Err(ProbeError::Timeout {
            after: tools.probe_timeout,
        });
    };
    let status = status.map_err(|source| ProbeError::Spawn {
        program: tools.ffprobe.clone(),
        source,
    })?;
    read.map_err(|source| ProbeError::Io {
        path: file.to_owned(),
        source,
    })?;
    if !status.success() {
        return Err(ProbeError::NotMedia {
            reason: not_media_reason(&tail, file, status),
        });
    }
    let mut info = parse_ffprobe(&out)?;
    if info.size_bytes == 0 {
        info.size_bytes = metadata.len();
    }
    Ok(info)
}

/// ffprobe's error lines made fit for the uploader: no `[mov,mp4,... @ 0x55d...]` prefixes, no file path.
fn not_media_reason(tail: &StderrTail, file: &Path, status: std::process::ExitStatus) -> String {
    let path = file.to_string_lossy();
    let url = super::ffmpeg::file_url(file).to_string_lossy().into_owned();
    let lines: Vec<String> = tail
        .lines()
        .map(|line| {
            let line = match line.split_once("] ") {
                Some((prefix, rest)) if prefix.starts_with('[') && prefix.contains(" @ ") => rest,
                _ => line,
            };
            let line = line
                .strip_prefix(url.as_str())
                .or_else(|| line.strip_prefix(path.as_ref()))
                .unwrap_or(line);
            line.trim_start_matches(':').trim().to_owned()
        })
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        format!("ffprobe failed ({status}) without a message")
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> MediaInfo {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ffprobe")
            .join(name);
        parse_ffprobe(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn parses_an_h264_aac_mp4() {
        let info = fixture("clip_640x360_25fps_aac.json");
        assert_eq!(info.container, "mov,mp4,m4a,3gp,3g2,mj2");
        assert_eq!(info.duration, Duration::from_secs(12));
        assert_eq!(info.size_bytes, 2_873_112);
        let video = info.video.as_ref().unwrap();
        assert_eq!(
            (video.codec.as_str(), video.width, video.height),
            ("h264", 640, 360)
        );
        assert_eq!(video.frame_rate, Rational::new(25, 1));
        assert_eq!(video.pix_fmt, "yuv420p");
        assert_eq!(video.frames, Some(300));
        assert_eq!(video.rotation, 0);
        let audio = info.audio.as_ref().unwrap();
        assert_eq!(
            (audio.codec.as_str(), audio.sample_rate, audio.channels),
            ("aac", 48000, 1)
        );
        assert_eq!(check(&info, &UploadLimits::default()), Ok(()));
    }

    #[test]
    fn audio_only_and_cover_art_have_no_video() {
        let info = fixture("audio_only.json");
        assert!(info.video.is_none());
        assert_eq!(info.audio.as_ref().unwrap().sample_rate, 44100);
        assert_eq!(check(&info, &UploadLimits::default()), Err(Refusal::NoVideo));
        // An MP3 with a cover picture has an mjpeg "video" stream flagged attached_pic.
        let info = fixture("mp3_cover_art.json");
        assert!(info.video.is_none());
        assert_eq!(info.audio.as_ref().unwrap().codec, "mp3");
        assert_eq!(check(&info, &UploadLimits::default()), Err(Refusal::NoVideo));
    }

    #[test]
    fn rotated_phone_video_is_portrait() {
        let info = fixture("rotated_portrait.json");
        let video = info.video.as_ref().unwrap();
        assert_eq!((video.coded_width, video.coded_height), (640, 360));
        assert_eq!((video.width, video.height, video.rotation), (360, 640, 90));
        assert_eq!(video.frame_rate, Rational::new(30, 1));
    }

    #[test]
    fn anamorphic_video_is_stretched_to_its_display_width() {
        let info = fixture("anamorphic_pal.json");
        let video = info.video.as_ref().unwrap();
        // 720x576 with 16:15 pixels shows as 768x576 (4:3).
        assert_eq!((video.width, video.height), (768, 576));
    }

    #[test]
    fn ntsc_mkv_without_audio() {
        let info = fixture("mkv_1080p_ntsc_no_audio.json");
        assert_eq!(info.container, "matroska,webm");
        assert_eq!(info.duration, Duration::from_millis(1001));
        let video = info.video.as_ref().unwrap();
        assert_eq!(video.frame_rate, Rational::new(30000, 1001));
        assert_eq!((video.width, video.height), (1920, 1080));
        assert!(info.audio.is_none());
        assert_eq!(check(&info, &UploadLimits::default()), Ok(()));
    }

    #[test]
    fn a_still_image_has_no_duration() {
        let info = fixture("still_png.json");
        assert_eq!(info.duration, Duration::ZERO);
        assert_eq!(
            check(&info, &UploadLimits::default()),
            Err(Refusal::UnknownDuration)
        );
    }

    #[test]
    fn malformed_output_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"{\"streams\": 5}",
            b"{}",
            &[0xff, 0xfe, 0x00],
        ] {
            assert!(
                matches!(parse_ffprobe(bad), Err(ProbeError::Malformed { .. })),
                "{bad:?}"
            );
        }
        // Missing and odd fields become unknowns.
        let info = parse_ffprobe(
            br#"{"streams":[{"codec_type":"video","avg_frame_rate":"0/0","r_frame_rate":"x"},
                {"codec_type":"audio","sample_rate":"lots"}],"format":{"duration":"N/A","size":"-1"}}"#,
        )
        .unwrap();
        let video = info.video.as_ref().unwrap();
        assert_eq!(
            (video.width, video.height, video.frame_rate),
            (0, 0, Rational::new(0, 1))
        );
        assert_eq!(info.audio.as_ref().unwrap().sample_rate, 0);
        assert_eq!((info.duration, info.size_bytes), (Duration::ZERO, 0));
    }

    #[test]
    fn rationals_parse_reduce_and_refuse_garbage() {
        assert_eq!(Rational::parse("50/2"), Some(Rational::new(25, 1)));
        assert_eq!(Rational::parse("16:15"), Some(Rational::new(16, 15)));
        assert_eq!(Rational::parse("30000/1001"), Some(Rational::new(30000, 1001)));
        assert_eq!(Rational::parse("0/1"), Some(Rational::new(0, 1)));
        for bad in ["0/0", "-25/1", "25", "", "a/b", "99999999999/1"] {
            assert_eq!(Rational::parse(bad), None, "{bad}");
        }
        assert_eq!(Rational::new(25, 1).frames_in(Duration::from_secs(4)), 100);
        assert_eq!(Rational::new(30000, 1001).frames_in(Duration::from_secs(4)), 120);
        assert_eq!(Rational::new(30000, 1001).frames_in(Duration::from_secs(2)), 60);
    }

    #[test]
    fn variable_frame_rates_snap_to_a_standard_one() {
        let avg = Rational::parse("6407/214");
        assert_eq!(
            choose_frame_rate(avg, Rational::parse("90000/1")),
            Some(Rational::new(30000, 1001))
        );
        assert_eq!(
            choose_frame_rate(Rational::parse("2997/100"), None),
            Some(Rational::new(30000, 1001))
        );
        assert_eq!(
            choose_frame_rate(Rational::parse("0/0"), Rational::parse("24/1")),
            Some(Rational::new(24, 1))
        );
        // Far from every standard rate: kept as is.
        assert_eq!(
            choose_frame_rate(Rational::parse("20/1"), None),
            Some(Rational::new(20, 1))
        );
        assert_eq!(choose_frame_rate(None, None), None);
    }

    #[test]
    fn seconds_parse_exactly() {
        assert_eq!(parse_seconds("12.012000"), Some(Duration::from_millis(12012)));
        assert_eq!(parse_seconds("2.037551"), Some(Duration::from_micros(2_037_551)));
        assert_eq!(parse_seconds("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_seconds(".5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_seconds("1.1234567891"), Some(Duration::new(1, 123_456_789)));
        for bad in ["N/A", "", ".", "-1.0", "1e3", "1.2.3", "nan"] {
            assert_eq!(parse_seconds(bad), None, "{bad}");
        }
    }

    fn video_info(width: u32, height: u32, rate: Rational, secs: u64) -> MediaInfo {
        let mut info = fixture("clip_640x360_25fps_aac.json");
        info.duration = Duration::from_secs(secs);
        let video = info.video.as_mut().unwrap();
        (video.width, video.height, video.frame_rate) = (width, height, rate);
        info
    }

    #[test]
    fn refusals_name_the_offending_values() {
        let limits = UploadLimits::default();
        let ok = Rational::new(25, 1);
        assert_eq!(check(&video_info(1920, 1080, ok, 60), &limits), Ok(()));
        assert_eq!(
            check(&video_info(2160, 3840, ok, 60), &limits),
            Ok(()),
            "portrait 4K fits"
        );
        assert_eq!(
            check(&video_info(1920, 1080, ok, 601), &limits),
            Err(Refusal::TooLong {
                duration: Duration::from_secs(601),
                max: Duration::from_secs(600)
            })
        );
        let short = check(&video_info(1920, 1080, ok, 0), &limits);
        assert_eq!(short, Err(Refusal::UnknownDuration));
        let mut tiny = video_info(1920, 1080, ok, 1);
        tiny.duration = Duration::from_millis(500);
        assert_eq!(
            check(&tiny, &limits),
            Err(Refusal::TooShort {
                duration: Duration::from_millis(500),
                min: Duration::from_secs(1)
            })
        );
        assert_eq!(
            check(&video_info(4096, 2160, ok, 60), &limits),
            Err(Refusal::Resolution {
                width: 4096,
                height: 2160,
                max_width: 3840,
                max_height: 2160
            })
        );
        assert!(matches!(
            check(&video_info(48, 64, ok, 60), &limits),
            Err(Refusal::TooSmall { width: 48, .. })
        ));
        for rate in [Rational::new(0, 1), Rational::new(120, 1), Rational::new(1, 2)] {
            let refusal = check(&video_info(640, 360, rate, 60), &limits).unwrap_err();
            assert_eq!(
                refusal,
                Refusal::FrameRate {
                    num: rate.num,
                    den: rate.den,
                    min: 1,
                    max: 60
                }
            );
        }
        let mut big = video_info(640, 360, ok, 60);
        big.size_bytes = 3 << 30;
        let refusal = check(&big, &limits).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::TooLarge {
                size_bytes: 3 << 30,
                max_bytes: 2 << 30
            }
        );
        assert_eq!(
            refusal.to_string(),
            "the file is too large: 3221225472 bytes, the maximum is 2147483648 bytes"
        );
        let odd = check(&video_info(641, 361, ok, 60), &limits);
        assert_eq!(odd, Ok(()), "odd dimensions are scaled to even ones");
        let rate = Refusal::FrameRate {
            num: 120,
            den: 1,
            min: 1,
            max: 60,
        }
        .to_string();
        assert_eq!(
            rate,
            "unsupported frame rate 120/1 (120.000 fps): it must be between 1 and 60 fps"
        );
    }

    #[test]
    fn limits_validate() {
        assert_eq!(UploadLimits::default().validate(), Ok(()));
        let zero = UploadLimits::default().with_max_bytes(0).validate();
        assert_eq!(zero, Err(UploadLimitsError::Zero { field: "max_bytes" }));
        let inverted = UploadLimits::default()
            .with_min_duration(Duration::from_secs(700))
            .validate();
        assert!(matches!(
            inverted,
            Err(UploadLimitsError::MinAboveMax {
                min_field: "min_duration",
                ..
            })
        ));
        let small = UploadLimits::default().with_max_size(32, 32).validate();
        assert!(matches!(
            small,
            Err(UploadLimitsError::MinAboveMax {
                min_field: "min_width",
                ..
            })
        ));
    }

    #[test]
    fn not_media_reasons_lose_addresses_and_paths() {
        let mut tail = StderrTail::default();
        tail.push("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5605bd95b1c0] moov atom not found");
        tail.push("file:/tmp/x/up.mp4: Invalid data found when processing input");
        let status = exit_status(1);
        let reason = not_media_reason(&tail, Path::new("/tmp/x/up.mp4"), status);
        assert_eq!(
            reason,
            "moov atom not found; Invalid data found when processing input"
        );
    }

    fn exit_status(code: i32) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        std::process::ExitStatus::from_raw(code << 8)
    }
}
