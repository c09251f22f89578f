//! ffmpeg command lines, built sans-IO, and [`run`], the thin shell that runs one.
//!
//! Every builder returns the arguments after ffmpeg's global flags; [`run`] adds `-nostdin -hide_banner
//! -nostats -loglevel error -y`. Paths are passed as `file:` URLs so that a name containing `:` or starting with
//! `-` is never read as a protocol or an option.
//!
//! How the pieces fit ([`chunk_args`] explains the flags that make it work):
//!
//! 1. [`chunk_args`] once per (chunk, rung): video only, to an MP4 file per chunk.
//! 2. [`audio_args`] once per upload: AAC-LC stereo 48 kHz in an `.m4a`, exactly as long as the video (silence
//!    when the source has no audio, so every rung has the same tracks; hls.js prefers consistent tracks).
//! 3. [`concat_list`] of one rung's chunk files, in order, written to a file; [`package_args`] joins them with
//!    the audio (`-c copy`, no re-encoding) into `index.m3u8`, `init.mp4` and `seg_00000.m4s`... in a directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ladder::Rung;
use super::plan::Chunk;
use super::probe::{MediaInfo, Rational};

/// AAC bitrate of every rung's audio, kbit/s.
pub const AUDIO_BITRATE_KBPS: u32 = 128;
/// Audio sample rate of every rung, Hz.
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;
/// Audio channels of every rung (stereo; surround sources are downmixed).
pub const AUDIO_CHANNELS: u32 = 2;
/// Name of the media playlist [`package_args`] writes in its directory.
pub const PLAYLIST: &str = "index.m3u8";
/// Name of the fMP4 initialization segment [`package_args`] writes (the playlist's `EXT-X-MAP`).
pub const INIT_SEGMENT: &str = "init.mp4";
/// ffmpeg's pattern for the media segments [`package_args`] writes: `seg_00000.m4s`, `seg_00001.m4s`, ...
pub const SEGMENT_PATTERN: &str = "seg_%05d.m4s";

const X264_PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

/// Where ffmpeg and ffprobe are and how hard they may work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tools {
    /// The ffmpeg program: a path, or a name looked up on `PATH` (`ffmpeg`).
    pub ffmpeg: PathBuf,
    /// The ffprobe program (`ffprobe`).
    pub ffprobe: PathBuf,
    /// Threads for decoding, filtering and encoding in one ffmpeg run (1: a worker runs one task per core).
    pub threads: u32,
    /// The x264 preset (`veryfast`).
    pub preset: String,
    /// How long [`super::probe`] lets ffprobe run (30 s).
    pub probe_timeout: Duration,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            threads: 1,
            preset: "veryfast".to_owned(),
            probe_timeout: Duration::from_secs(30),
        }
    }
}

/// [`Tools::validate`] found a bad setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolsError {
    /// A program path is empty.
    #[error("`{field}` must name a program")]
    EmptyPath {
        /// The field.
        field: &'static str,
    },
    /// The thread count is zero or above 64.
    #[error("`threads` must be between 1 and 64, got {threads}")]
    Threads {
        /// The count given.
        threads: u32,
    },
    /// The preset is not one of x264's.
    #[error("`preset` must be an x264 preset (ultrafast ... placebo), got {preset:?}")]
    Preset {
        /// The preset given.
        preset: String,
    },
    /// The probe timeout is zero.
    #[error("`probe_timeout` must be positive")]
    ZeroProbeTimeout,
}

impl Tools {
    /// Sets [`Tools::ffmpeg`].
    pub fn with_ffmpeg(mut self, ffmpeg: impl Into<PathBuf>) -> Self {
        self.ffmpeg = ffmpeg.into();
        self
    }

    /// Sets [`Tools::ffprobe`].
    pub fn with_ffprobe(mut self, ffprobe: impl Into<PathBuf>) -> Self {
        self.ffprobe = ffprobe.into();
        self
    }

    /// Sets [`Tools::threads`].
    pub fn with_threads(mut self, threads: u32) -> Self {
        self.threads = threads;
        self
    }

    /// Sets [`Tools::preset`].
    pub fn with_preset(mut self, preset: impl Into<String>) -> Self {
        self.preset = preset.into();
        self
    }

    /// Sets [`Tools::probe_timeout`].
    pub fn with_probe_timeout(mut self, probe_timeout: Duration) -> Self {
        self.probe_timeout = probe_timeout;
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ToolsError> {
        if self.ffmpeg.as_os_str().is_empty() {
            return Err(ToolsError::EmptyPath { field: "ffmpeg" });
        }
        if self.ffprobe.as_os_str().is_empty() {
            return Err(ToolsError::EmptyPath { field: "ffprobe" });
        }
        if !(1..=64).contains(&self.threads) {
            return Err(ToolsError::Threads {
                threads: self.threads,
            });
        }
        if !X264_PRESETS.contains(&self.preset.as_str()) {
            return Err(ToolsError::Preset {
                preset: self.preset.clone(),
            });
        }
        if self.probe_timeout.is_zero() {
            return Err(ToolsError::ZeroProbeTimeout);
        }
        Ok(())
    }
}

/// `path` as an ffmpeg `file:` URL, so that no name is read as a protocol (`concat:`, `http:`) or an option.
pub(crate) fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    url
}

/// Seconds with microseconds, the precision of ffmpeg's time options: `4.000000`.
fn seconds(duration: Duration) -> String {
    format!("{}.{:06}", duration.as_secs(), duration.subsec_micros())
}

fn args<const N: usize>(items: [&str; N]) -> impl Iterator<Item = OsString> {
    items.into_iter().map(OsString::from)
}

/// Transcodes one chunk of the source's video for one rung, to an MP4 file (no audio).
///
/// The flags that make chunks join into one stream with keyframes on every segment boundary:
/// - `-ss START` before `-i`: ffmpeg seeks to the keyframe before `START` and decodes up to it, dropping the
///   frames before (accurate seeking), so the chunk holds exactly the frames whose time is in
///   `[start, start + duration)` and its timestamps start at 0. `-t DURATION` after `-i` ends it.
/// - `-r FPS -fps_mode cfr`: constant frame rate equal to the source's (chosen by [`super::parse_ffprobe`]),
///   so every chunk's frames sit on the same grid and the joined timestamps are continuous.
/// - `-force_key_frames expr:gte(t,n_forced*SEGMENT)`: a keyframe on the first frame and on the first frame at
///   or after each multiple of the segment duration; chunks start at such multiples, so the keyframes land on
///   the global segment grid, the same in every rung. `-forced-idr 1` and x264's `open_gop=0` make them IDR
///   frames that close their GOP; `-sc_threshold 0` and `scenecut=0` stop x264 adding keyframes at scene
///   cuts (a scene cut would otherwise shift where the next GOP starts); `-g` is two segments long so x264
///   never places a keyframe of its own before a forced one.
/// - `-profile:v high -level:v` the rung's level, `yuv420p`: what [`Rung::codecs`] announces.
/// - `-b:v/-maxrate/-bufsize`: capped VBR from the rung.
///
/// MP4 rather than MPEG-TS for chunks: an MP4 records the chunk's exact duration (frame count × frame
/// duration) and, through its edit list, that the first frame is shown at 0 although B-frames make its decode
/// time earlier. The concat demuxer offsets each file by the previous files' durations, so exact durations
/// give continuous timestamps; MPEG-TS starts at 1.4 s and its duration is estimated from timestamps.
pub fn chunk_args(
    tools: &Tools,
    src: &Path,
    chunk: &Chunk,
    rung: &Rung,
    fps: Rational,
    segment: Duration,
    out: &Path,
) -> Vec<OsString> {
    let threads = tools.threads.to_string();
    let frames_per_segment = fps.frames_in(segment).max(1);
    let gop = (frames_per_segment * 2).to_string();
    let mut list: Vec<OsString> = Vec::with_capacity(64);
    list.extend(args(["-threads", &threads, "-ss", &seconds(chunk.start), "-i"]));
    list.push(file_url(src));
    list.extend(args(["-t", &seconds(chunk.duration)]));
    list.extend(args([
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        "-map_metadata",
        "-1",
        "-map_chapters",
        "-1",
    ]));
    list.extend(args(["-filter_threads", &threads]));
    let filter = format!(
        "scale={}:{}:flags=bicubic,setsar=1,format=yuv420p",
        rung.width, rung.height
    );
    list.extend(args(["-vf", &filter, "-r", &fps.to_string(), "-fps_mode", "cfr"]));
    list.extend(args([
        "-c:v",
        "libx264",
        "-preset",
        &tools.preset,
        "-profile:v",
        "high",
    ]));
    list.extend(args(["-level:v", &rung.level_arg(), "-pix_fmt", "yuv420p"]));
    list.extend(args([
        "-b:v",
        &format!("{}k", rung.video_kbps),
        "-maxrate",
        &format!("{}k", rung.max_kbps),
        "-bufsize",
        &format!("{}k", rung.bufsize_kbits),
    ]));
    let keyframes = format!("expr:gte(t,n_forced*{})", seconds(segment));
    list.extend(args([
        "-g",
        &gop,
        "-sc_threshold",
        "0",
        "-forced-idr",
        "1",
        "-force_key_frames",
        &keyframes,
    ]));
    list.extend(args([
        "-x264-params",
        "scenecut=0:open_gop=0",
        "-threads",
        &threads,
    ]));
    list.extend(args(["-f", "mp4"]));
    list.push(file_url(out));
    list
}

/// Encodes the upload's audio once, to AAC-LC stereo 48 kHz 128 kbit/s in an MP4 (`.m4a`) file, exactly as long
/// as the video ([`MediaInfo::video_duration`]) so that every rung ends with both tracks together.
///
/// With an audio track: its gaps are filled and its start padded to the video's (`aresample=async=1:
/// first_pts=0`), and silence pads it if it ends early (`apad`). Without one: a silent track
/// (`anullsrc`), so every rung has audio; hls.js prefers the same tracks throughout.
pub fn audio_args(tools: &Tools, src: &Path, info: &MediaInfo, out: &Path) -> Vec<OsString> {
    let threads = tools.threads.to_string();
    let duration = seconds(info.video_duration());
    let mut list: Vec<OsString> = Vec::with_capacity(40);
    if info.audio.is_some() {
        list.extend(args(["-threads", &threads, "-i"]));
        list.push(file_url(src));
        list.extend(args([
            "-map",
            "0:a:0",
            "-af",
            "aresample=async=1:first_pts=0,apad",
        ]));
    } else {
        let silence = format!("anullsrc=channel_layout=stereo:sample_rate={AUDIO_SAMPLE_RATE}");
        list.extend(args(["-f", "lavfi", "-i", &silence, "-map", "0:a:0"]));
    }
    list.extend(args([
        "-vn",
        "-sn",
        "-dn",
        "-map_metadata",
        "-1",
        "-map_chapters",
        "-1",
        "-t",
        &duration,
    ]));
    list.extend(args([
        "-c:a",
        "aac",
        "-b:a",
        &format!("{AUDIO_BITRATE_KBPS}k"),
        "-ac",
        &AUDIO_CHANNELS.to_string(),
        "-ar",
        &AUDIO_SAMPLE_RATE.to_string(),
        "-f",
        "mp4",
    ]));
    list.push(file_url(out));
    list
}

/// Joins one rung's chunks (listed in `concat_list`, a file holding [`concat_list`]'s text) with the audio
/// into fMP4 HLS in `out_dir`: [`PLAYLIST`], [`INIT_SEGMENT`] and segments named by [`SEGMENT_PATTERN`].
///
/// Nothing is re-encoded (`-c copy`); segments are cut at keyframes once `segment` has passed since the
/// previous cut, which [`chunk_args`] put exactly on the segment grid. `-avoid_negative_ts disabled` keeps the
/// first frame at 0: without it ffmpeg would shift every timestamp by the B-frame delay (2 frames) to make the
/// first decode time zero, moving all keyframes off the grid.
///
/// `out_dir` must not contain `%`: ffmpeg 5.1's HLS muxer reads `%d`-like sequences anywhere in the segment
/// path as the segment number and does not unescape `%%`.
pub fn package_args(
    tools: &Tools,
    concat_list: &Path,
    audio: &Path,
    segment: Duration,
    out_dir: &Path,
) -> Vec<OsString> {
    let _ = tools;
    let mut list: Vec<OsString> = Vec::with_capacity(48);
    list.extend(args(["-f", "concat", "-safe", "0", "-i"]));
    list.push(file_url(concat_list));
    list.push("-i".into());
    list.push(file_url(audio));
    list.extend(args([
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-c",
        "copy",
        "-map_metadata",
        "-1",
    ]));
    list.extend(args(["-avoid_negative_ts", "disabled"]));
    list.extend(args([
        "-f",
        "hls",
        "-hls_segment_type",
        "fmp4",
        "-hls_time",
        &seconds(segment),
    ]));
    list.extend(args([
        "-hls_list_size",
        "0",
        "-hls_playlist_type",
        "vod",
        "-hls_flags",
        "independent_segments",
    ]));
    list.extend(args([
        "-hls_fmp4_init_filename",
        INIT_SEGMENT,
        "-hls_segment_filename",
    ]));
    list.push(out_dir.join(SEGMENT_PATTERN).into_os_string());
    list.push(out_dir.join(PLAYLIST).into_os_string());
    list
}

/// The text of a concat-demuxer list (`ffconcat version 1.0`) of `files`, in order.
///
/// Each name is single-quoted, a `'` inside written as `'\''`. Use absolute paths: relative ones are read
/// relative to the list file's directory. A name that is not UTF-8 or holds a line break cannot be written
/// in a list; it is written lossily and ffmpeg then fails to open it (the chunk files are ours to name).
pub fn concat_list(files: &[PathBuf]) -> String {
    let mut text = String::from("ffconcat version 1.0\n");
    for file in files {
        text.push_str("file '");
        text.push_str(&file.to_string_lossy().replace('\'', r"'\''"));
        text.push_str("'\n");
    }
    text
}

/// Generates a demo clip: `testsrc2` pictures (and a 440 Hz `sine` when `with_audio`), H.264/AAC in MP4,
/// with a 3-second GOP that is deliberately not aligned to our segments, so that tests prove the pipeline
/// realigns keyframes. The picture is negated for 1.3 s out of every 2.6 s: hard scene cuts between segment
/// boundaries, where x264 would add keyframes of its own unless scene-cut detection is off. No `drawtext`:
/// a minimal machine may have no fonts.
pub fn test_clip_args(
    tools: &Tools,
    out: &Path,
    duration: Duration,
    width: u32,
    height: u32,
    fps: Rational,
    with_audio: bool,
) -> Vec<OsString> {
    let threads = tools.threads.to_string();
    let gop = fps.frames_in(Duration::from_secs(3)).max(1).to_string();
    let video = format!(
        "testsrc2=size={width}x{height}:rate={fps}:duration={},negate=enable='gte(mod(t,2.6),1.3)'",
        seconds(duration)
    );
    let mut list: Vec<OsString> = Vec::with_capacity(40);
    list.extend(args(["-f", "lavfi", "-i", &video]));
    if with_audio {
        let audio = format!(
            "sine=frequency=440:sample_rate={AUDIO_SAMPLE_RATE}:duration={}",
            seconds(duration)
        );
        list.extend(args(["-f", "lavfi", "-i", &audio, "-map", "0:v", "-map", "1:a"]));
        list.extend(args(["-c:a", "aac", "-b:a", "96k"]));
    }
    list.extend(args([
        "-c:v",
        "libx264",
        "-preset",
        &tools.preset,
        "-pix_fmt",
        "yuv420p",
        "-g",
        &gop,
    ]));
    list.extend(args(["-threads", &threads, "-f", "mp4"]));
    list.push(file_url(out));
    list
}

/// Generates an audio-only file (a 440 Hz tone in AAC, MP4/`.m4a`): an upload the pipeline must refuse.
pub fn test_tone_args(tools: &Tools, out: &Path, duration: Duration) -> Vec<OsString> {
    let _ = tools;
    let audio = format!(
        "sine=frequency=440:sample_rate={AUDIO_SAMPLE_RATE}:duration={}",
        seconds(duration)
    );
    let mut list: Vec<OsString> = args(["-f", "lavfi", "-i", &audio, "-c:a", "aac", "-f", "mp4"]).collect();
    list.push(file_url(out));
    list
}

/// Running ffmpeg failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FfmpegError {
    /// ffmpeg could not be started (not installed, not executable).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// ffmpeg exited with an error.
    #[error("ffmpeg failed ({status}): {stderr_tail}")]
    Failed {
        /// Its exit status.
        status: ExitStatus,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },
    /// ffmpeg ran past its time limit and was killed.
    #[error("ffmpeg took longer than {after:?} and was killed: {stderr_tail}")]
    Timeout {
        /// The limit.
        after: Duration,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },
    /// Waiting for ffmpeg failed.
    #[error("waiting for ffmpeg: {source}")]
    Wait {
        /// The cause.
        source: std::io::Error,
    },
}

/// The last lines a process wrote, bounded in count and length: what an error message needs, whatever the
/// process prints. Lines end at `\n` or `\r`; bytes that are not UTF-8 are replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StderrTail {
    lines: std::collections::VecDeque<String>,
    partial: Vec<u8>,
}

impl StderrTail {
    /// Lines kept.
    pub const MAX_LINES: usize = 20;
    /// Bytes kept of each line.
    pub const MAX_LINE: usize = 500;

    /// Adds one whole line.
    pub fn push(&mut self, line: &str) {
        self.feed(line.as_bytes());
        self.feed(b"\n");
    }

    /// Adds raw output, which may end in the middle of a line.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' || byte == b'\r' {
                self.end_line();
            } else if self.partial.len() < Self::MAX_LINE {
                self.partial.push(byte);
            }
        }
    }

    fn end_line(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.partial).trim_end().to_owned();
        self.partial.clear();
        if line.is_empty() {
            return;
        }
        if self.lines.len() == Self::MAX_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// Ends a last line that had no line break (the process exited).
    pub fn finish(&mut self) {
        self.end_line();
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }
}

impl std::fmt::Display for StderrTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<&str> = self.lines().collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Reads a child's stderr to its end into `tail`.
pub(crate) async fn read_tail_into(stderr: Option<tokio::process::ChildStderr>, tail: &mut StderrTail) {
    use tokio::io::AsyncReadExt;
    let Some(mut stderr) = stderr else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => tail.feed(&buf[..n]),
        }
    }
    tail.finish();
}

/// Runs ffmpeg with `args` (from the builders here) after `-nostdin -hide_banner -nostats -loglevel error -y`.
///
/// Succeeds when ffmpeg exits 0. Otherwise the error carries the exit status and the last lines of its stderr.
/// After `timeout` ffmpeg is killed ([`FfmpegError::Timeout`]); dropping the returned future kills it too.
pub async fn run(tools: &Tools, args: &[OsString], timeout: Duration) -> Result<(), FfmpegError> {
    let mut child = tokio::process::Command::new(&tools.ffmpeg)
        .args(["-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-y"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| FfmpegError::Spawn {
            program: tools.ffmpeg.clone(),
            source,
        })?;
    tracing::debug!(program = %tools.ffmpeg.display(), ?args, "running ffmpeg");
    let stderr = child.stderr.take();
    let mut tail = StderrTail::default();
    let outcome = tokio::time::timeout(timeout, async {
        read_tail_into(stderr, &mut tail).await;
        child.wait().await
    })
    .await;
    match outcome {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(FfmpegError::Failed {
            status,
            stderr_tail: tail.to_string(),
        }),
        Ok(Err(source)) => Err(FfmpegError::Wait { source }),
        Err(_) => {
            // Kill and reap it now rather than leave it to `kill_on_drop`.
            let _ = child.kill().await;
            Err(FfmpegError::Timeout {
                after: timeout,
                stderr_tail: tail.to_string(),
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::{default_ladder, parse_ffprobe};

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    /// The value following `flag` (the last occurrence).
    fn value(args: &[String], flag: &str) -> String {
        let at = args
            .iter()
            .rposition(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
        args[at + 1].clone()
    }

    #[test]
    fn chunk_args_seek_accurately_and_force_keyframes_on_the_segment_grid() {
        let tools = Tools::default();
        let chunk = Chunk {
            index: 2,
            start: Duration::from_secs(8),
            duration: Duration::from_millis(4012),
        };
        let rung = &default_ladder()[1];
        let fps = Rational::new(30000, 1001);
        let args = strings(&chunk_args(
            &tools,
            Path::new("/up/src.mov"),
            &chunk,
            rung,
            fps,
            Duration::from_secs(2),
            Path::new("/w/chunk_00002.mp4"),
        ));
        let input = args.iter().position(|a| a == "-i").unwrap();
        let seek = args.iter().position(|a| a == "-ss").unwrap();
        assert!(seek < input, "-ss before -i seeks the input: {args:?}");
        assert_eq!(args[input + 1], "file:/up/src.mov");
        assert_eq!(args[seek + 1], "8.000000");
        assert!(
            args.iter().position(|a| a == "-t").unwrap() > input,
            "-t after -i bounds the output"
        );
        assert_eq!(value(&args, "-t"), "4.012000");
        assert_eq!(value(&args, "-map"), "0:v:0");
        assert!(args.contains(&"-an".to_owned()));
        assert_eq!(
            value(&args, "-vf"),
            "scale=640:360:flags=bicubic,setsar=1,format=yuv420p"
        );
        assert_eq!(value(&args, "-r"), "30000/1001");
        assert_eq!(value(&args, "-fps_mode"), "cfr");
        assert_eq!(value(&args, "-c:v"), "libx264");
        assert_eq!(value(&args, "-preset"), "veryfast");
        assert_eq!(value(&args, "-profile:v"), "high");
        assert_eq!(value(&args, "-level:v"), "3.0");
        assert_eq!(
            (
                value(&args, "-b:v"),
                value(&args, "-maxrate"),
                value(&args, "-bufsize")
            ),
            ("800k".to_owned(), "1200k".to_owned(), "1600k".to_owned())
        );
        assert_eq!(value(&args, "-force_key_frames"), "expr:gte(t,n_forced*2.000000)");
        assert_eq!(value(&args, "-sc_threshold"), "0");
        assert_eq!(value(&args, "-forced-idr"), "1");
        assert_eq!(value(&args, "-x264-params"), "scenecut=0:open_gop=0");
        assert_eq!(value(&args, "-g"), "120", "two segments of 60 frames");
        assert_eq!(value(&args, "-threads"), "1");
        assert_eq!(value(&args, "-f"), "mp4");
        assert_eq!(args.last().unwrap(), "file:/w/chunk_00002.mp4");
    }

    fn info(json: &str) -> MediaInfo {
        parse_ffprobe(json.as_bytes()).unwrap()
    }

    #[test]
    fn audio_args_encode_the_source_track_or_silence_to_the_video_length() {
        let tools = Tools::default();
        let with_audio = info(
            r#"{"streams":[{"codec_type":"video","duration":"12.000000"},{"codec_type":"audio","duration":"12.5"}],
            "format":{"duration":"12.500000"}}"#,
        );
        let args = strings(&audio_args(
            &tools,
            Path::new("/up/a.mp4"),
            &with_audio,
            Path::new("/w/audio.m4a"),
        ));
        assert_eq!(value(&args, "-i"), "file:/up/a.mp4");
        assert_eq!(value(&args, "-map"), "0:a:0");
        assert_eq!(value(&args, "-af"), "aresample=async=1:first_pts=0,apad");
        assert_eq!(
            value(&args, "-t"),
            "12.000000",
            "the video's duration, not the container's"
        );
        assert_eq!(
            [
                value(&args, "-c:a"),
                value(&args, "-b:a"),
                value(&args, "-ac"),
                value(&args, "-ar")
            ],
            ["aac", "128k", "2", "48000"]
        );
        assert_eq!(args.last().unwrap(), "file:/w/audio.m4a");

        let silent = info(r#"{"streams":[{"codec_type":"video"}],"format":{"duration":"7.5"}}"#);
        let args = strings(&audio_args(
            &tools,
            Path::new("/up/a.mp4"),
            &silent,
            Path::new("/w/audio.m4a"),
        ));
        assert_eq!(value(&args, "-f"), "mp4");
        assert_eq!(
            value(&args, "-i"),
            "anullsrc=channel_layout=stereo:sample_rate=48000"
        );
        assert!(
            !args.iter().any(|a| a.contains("/up/a.mp4")),
            "the source is not read: {args:?}"
        );
        assert_eq!(value(&args, "-t"), "7.500000");
    }

    #[test]
    fn package_args_copy_into_fmp4_hls() {
        let args = strings(&package_args(
            &Tools::default(),
            Path::new("/w/240p/list.ffconcat"),
            Path::new("/w/audio.m4a"),
            Duration::from_secs(2),
            Path::new("/w/done/240p"),
        ));
        let expected = [
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            "file:/w/240p/list.ffconcat",
            "-i",
            "file:/w/audio.m4a",
            "-map",
            "0:v:0",
            "-map",
            "1:a:0",
            "-c",
            "copy",
            "-map_metadata",
            "-1",
            "-avoid_negative_ts",
            "disabled",
            "-f",
            "hls",
            "-hls_segment_type",
            "fmp4",
            "-hls_time",
            "2.000000",
            "-hls_list_size",
            "0",
            "-hls_playlist_type",
            "vod",
            "-hls_flags",
            "independent_segments",
            "-hls_fmp4_init_filename",
            "init.mp4",
            "-hls_segment_filename",
            "/w/done/240p/seg_%05d.m4s",
            "/w/done/240p/index.m3u8",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn concat_lists_quote_every_name() {
        let files = [
            PathBuf::from("/w/chunk_00000.mp4"),
            PathBuf::from("/w/it's here/chunk_00001.mp4"),
        ];
        assert_eq!(
            concat_list(&files),
            "ffconcat version 1.0\nfile '/w/chunk_00000.mp4'\nfile '/w/it'\\''s here/chunk_00001.mp4'\n"
        );
        assert_eq!(concat_list(&[]), "ffconcat version 1.0\n");
    }

    #[test]
    fn test_clips_have_a_misaligned_gop() {
        let tools = Tools::default().with_preset("ultrafast");
        let args = strings(&test_clip_args(
            &tools,
            Path::new("/t/clip.mp4"),
            Duration::from_secs(12),
            640,
            360,
            Rational::new(25, 1),
            true,
        ));
        assert_eq!(
            args[..4],
            [
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=640x360:rate=25/1:duration=12.000000,negate=enable='gte(mod(t,2.6),1.3)'"
            ]
        );
        assert!(args.contains(&"sine=frequency=440:sample_rate=48000:duration=12.000000".to_owned()));
        assert_eq!(value(&args, "-g"), "75");
        assert_eq!(value(&args, "-preset"), "ultrafast");
        assert!(!args.iter().any(|a| a.contains("drawtext")));
        let silent = strings(&test_clip_args(
            &tools,
            Path::new("/t/clip.mp4"),
            Duration::from_secs(1),
            64,
            64,
            Rational::new(30, 1),
            false,
        ));
        assert!(!silent.iter().any(|a| a.contains("sine") || a == "-c:a"));
        let tone = strings(&test_tone_args(
            &tools,
            Path::new("/t/tone.m4a"),
            Duration::from_secs(2),
        ));
        assert_eq!(
            value(&tone, "-i"),
            "sine=frequency=440:sample_rate=48000:duration=2.000000"
        );
    }

    #[test]
    fn tools_validate() {
        assert_eq!(Tools::default().validate(), Ok(()));
        assert_eq!(
            Tools::default().with_threads(0).validate(),
            Err(ToolsError::Threads { threads: 0 })
        );
        assert_eq!(
            Tools::default().with_preset("warp").validate(),
            Err(ToolsError::Preset {
                preset: "warp".into()
            })
        );
        assert_eq!(
            Tools::default().with_ffmpeg("").validate(),
            Err(ToolsError::EmptyPath { field: "ffmpeg" })
        );
        let zero = Tools::default().with_probe_timeout(Duration::ZERO).validate();
        assert_eq!(zero, Err(ToolsError::ZeroProbeTimeout));
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines_bounded() {
        let mut tail = StderrTail::default();
        for i in 0..30 {
            tail.feed(format!("line {i}\r\n").as_bytes());
        }
        tail.feed(&[b'x'; 2000]);
        tail.feed(b"\xff\xfe end");
        tail.finish();
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), StderrTail::MAX_LINES);
        assert_eq!(lines[0], "line 11");
        assert_eq!(lines[18], "line 29");
        assert_eq!(lines[19].len(), StderrTail::MAX_LINE, "a long line is cut");
        let mut split = StderrTail::default();
        split.feed(b"half a ");
        split.feed(b"line\nnext");
        split.finish();
        assert_eq!(split.to_string(), "half a line\nnext");
    }
}
