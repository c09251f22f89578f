//! The image pipeline's media side: frames sampled along a video, each a thumbnail and a colour measurement; the
//! thumbnails tiled into one seek-preview sprite sheet with its WebVTT; a poster; and tags derived from the
//! measurements. Argument builders and decisions are sans-IO; ffmpeg runs them through [`super::run`].

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Tools;
use super::ffmpeg::file_url;

/// Thumbnails per sprite-sheet row.
pub const SPRITE_COLUMNS: u32 = 5;
/// The most frames sampled from one video.
pub const MAX_FRAMES: u32 = 100;

/// When to sample frames of a video of `duration`: every `interval` (at least 2 s, more for long videos so that at
/// most [`MAX_FRAMES`] are taken), each at the middle of its interval so black first frames are skipped.
pub fn sample_times(duration: Duration) -> (Duration, Vec<Duration>) {
    let min = Duration::from_secs(2);
    let spread = duration / MAX_FRAMES;
    let interval = spread.max(min);
    let count = u32::try_from(duration.as_millis() / interval.as_millis().max(1))
        .unwrap_or(MAX_FRAMES)
        .clamp(1, MAX_FRAMES);
    let times = (0..count)
        .map(|i| interval * i + (interval / 2).min(duration / 2))
        .collect();
    (interval, times)
}

/// A thumbnail's size for a `width`×`height` source: `target_width` wide (never wider than the source), the
/// source's aspect, even dimensions.
pub fn thumbnail_size(width: u32, height: u32, target_width: u32) -> (u32, u32) {
    let w = target_width.min(width).max(2) & !1;
    let h = (u64::from(w) * u64::from(height.max(1)) / u64::from(width.max(1))).max(2) as u32 & !1;
    (w, h)
}

/// One frame at `at` from `src`: a `width`×`height` JPEG thumbnail at `thumb` and the frame's average colour as
/// three raw RGB bytes at `colour` (the frame scaled to one pixel by area averaging).
pub fn frame_args(
    tools: &Tools,
    src: &Path,
    at: Duration,
    width: u32,
    height: u32,
    thumb: &Path,
    colour: &Path,
) -> Vec<OsString> {
    let graph = format!(
        "[0:v]split=2[a][b];[a]scale={width}:{height}:flags=bicubic,setsar=1[t];[b]scale=1:1:flags=area,format=rgb24[c]"
    );
    let mut list: Vec<OsString> = [
        "-threads",
        &tools.threads.to_string(),
        "-ss",
        &format!("{:.3}", at.as_secs_f64()),
        "-i",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    list.push(file_url(src));
    for a in [
        "-frames:v",
        "1",
        "-filter_complex",
        &graph,
        "-map",
        "[t]",
        "-q:v",
        "4",
        "-f",
        "image2",
    ] {
        list.push(a.into());
    }
    list.push(file_url(thumb));
    for a in ["-map", "[c]", "-frames:v", "1", "-f", "rawvideo"] {
        list.push(a.into());
    }
    list.push(file_url(colour));
    list
}

/// The sprite sheet: thumbnails `dir/thumb_000.jpg`... (`count` of them) tiled [`SPRITE_COLUMNS`] wide, to `out`.
pub fn sprite_args(tools: &Tools, dir: &Path, count: u32, out: &Path) -> Vec<OsString> {
    let rows = count.div_ceil(SPRITE_COLUMNS).max(1);
    let mut list: Vec<OsString> = vec![
        "-threads".into(),
        tools.threads.to_string().into(),
        "-start_number".into(),
        "0".into(),
        "-i".into(),
    ];
    list.push(dir.join("thumb_%03d.jpg").into_os_string());
    for a in [
        "-frames:v",
        "1",
        "-vf",
        &format!("tile={SPRITE_COLUMNS}x{rows}"),
        "-q:v",
        "4",
        "-f",
        "image2",
    ] {
        list.push(a.into());
    }
    list.push(file_url(out));
    list
}

/// A frame's measurement, handed to the images barrier as the task's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameColour {
    /// Average red, green, blue.
    pub rgb: [u8; 3],
}

impl FrameColour {
    /// From the raw three bytes the frame command wrote; `None` unless exactly three.
    pub fn from_raw(bytes: &[u8]) -> Option<Self> {
        <[u8; 3]>::try_from(bytes).ok().map(|rgb| Self { rgb })
    }

    /// Luma (BT.601), 0 to 255.
    pub fn luma(&self) -> u8 {
        let [r, g, b] = self.rgb.map(f64::from);
        (0.299 * r + 0.587 * g + 0.114 * b).round().clamp(0.0, 255.0) as u8
    }

    /// The name of the colour's hue, or `None` when it is too grey to have one.
    pub fn hue_name(&self) -> Option<&'static str> {
        let [r, g, b] = self.rgb.map(|c| f64::from(c) / 255.0);
        let (max, min) = (r.max(g).max(b), r.min(g).min(b));
        let chroma = max - min;
        if chroma < 0.12 || max < 0.15 {
            return None;
        }
        let hue = if max == r {
            60.0 * (((g - b) / chroma).rem_euclid(6.0))
        } else if max == g {
            60.0 * ((b - r) / chroma + 2.0)
        } else {
            60.0 * ((r - g) / chroma + 4.0)
        };
        Some(match hue {
            h if !(20.0..340.0).contains(&h) => "red",
            h if h < 45.0 => "orange",
            h if h < 70.0 => "yellow",
            h if h < 165.0 => "green",
            h if h < 200.0 => "cyan",
            h if h < 260.0 => "blue",
            h if h < 300.0 => "purple",
            _ => "pink",
        })
    }
}

/// Searchable tags from the frames' measurements: `dark` or `bright` by average luma, `colourful` or `muted` by
/// how many frames have a hue, and the most common hue (`mostly-blue`).
pub fn tags(frames: &[FrameColour]) -> Vec<String> {
    if frames.is_empty() {
        return Vec::new();
    }
    let mut tags = Vec::new();
    let luma = frames.iter().map(|f| u32::from(f.luma())).sum::<u32>() / frames.len() as u32;
    if luma < 60 {
        tags.push("dark".to_owned());
    } else if luma > 170 {
        tags.push("bright".to_owned());
    }
    let hues: Vec<&str> = frames.iter().filter_map(FrameColour::hue_name).collect();
    tags.push(
        if hues.len() * 2 >= frames.len() {
            "colourful"
        } else {
            "muted"
        }
        .to_owned(),
    );
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for hue in hues {
        match counts.iter_mut().find(|(h, _)| *h == hue) {
            Some((_, n)) => *n += 1,
            None => counts.push((hue, 1)),
        }
    }
    if let Some((hue, _)) = counts.iter().max_by_key(|(h, n)| (*n, std::cmp::Reverse(*h))) {
        tags.push(format!("mostly-{hue}"));
    }
    tags
}

/// The WebVTT that maps each sampled interval to its thumbnail in the sprite at `sprite_uri` (`#xywh=`, the
/// media fragment players use for seek previews).
pub fn thumbnails_vtt(
    sprite_uri: &str,
    interval: Duration,
    count: u32,
    duration: Duration,
    size: (u32, u32),
) -> String {
    let mut out = String::from("WEBVTT\n");
    let stamp = |d: Duration| {
        let ms = d.as_millis();
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    };
    for i in 0..count {
        let start = interval * i;
        let end = if i + 1 == count {
            duration.max(start)
        } else {
            interval * (i + 1)
        };
        let (x, y) = ((i % SPRITE_COLUMNS) * size.0, (i / SPRITE_COLUMNS) * size.1);
        let _ = write!(
            out,
            "\n{} --> {}\n{sprite_uri}#xywh={x},{y},{},{}\n",
            stamp(start),
            stamp(end),
            size.0,
            size.1
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_the_video_and_are_bounded() {
        let (interval, times) = sample_times(Duration::from_secs(20));
        assert_eq!(interval, Duration::from_secs(2));
        assert_eq!(times.len(), 10);
        assert_eq!(times[0], Duration::from_secs(1));
        assert!(times.iter().all(|t| *t < Duration::from_secs(20)));
        let (interval, times) = sample_times(Duration::from_secs(3600));
        assert_eq!(times.len(), MAX_FRAMES as usize);
        assert_eq!(interval, Duration::from_secs(36));
        let (_, times) = sample_times(Duration::from_millis(1500));
        assert_eq!(times, vec![Duration::from_millis(750)]);
    }

    #[test]
    fn thumbnails_keep_the_aspect_with_even_sizes_and_never_upscale() {
        assert_eq!(thumbnail_size(1920, 1080, 160), (160, 90));
        assert_eq!(thumbnail_size(640, 360, 160), (160, 90));
        assert_eq!(thumbnail_size(1080, 1920, 160), (160, 284));
        assert_eq!(thumbnail_size(100, 50, 160), (100, 50));
    }

    #[test]
    fn colours_have_names_luma_and_tags() {
        let blue = FrameColour::from_raw(&[20, 40, 200]).unwrap();
        assert_eq!(blue.hue_name(), Some("blue"));
        let grey = FrameColour::from_raw(&[128, 128, 128]).unwrap();
        assert_eq!(grey.hue_name(), None);
        assert_eq!(grey.luma(), 128);
        assert!(FrameColour::from_raw(&[1, 2]).is_none());
        let dark = FrameColour::from_raw(&[10, 10, 12]).unwrap();
        assert_eq!(tags(&[dark, dark]), vec!["dark", "muted"]);
        assert_eq!(tags(&[blue, blue, grey]), vec!["colourful", "mostly-blue"]);
        assert!(tags(&[]).is_empty());
    }

    #[test]
    fn the_vtt_maps_each_interval_to_its_tile() {
        let vtt = thumbnails_vtt(
            "/b/abc.jpg",
            Duration::from_secs(2),
            7,
            Duration::from_millis(13_500),
            (160, 90),
        );
        assert!(vtt.starts_with("WEBVTT\n"));
        assert!(
            vtt.contains("00:00:00.000 --> 00:00:02.000\n/b/abc.jpg#xywh=0,0,160,90\n"),
            "{vtt}"
        );
        assert!(
            vtt.contains("00:00:10.000 --> 00:00:12.000\n/b/abc.jpg#xywh=0,90,160,90\n"),
            "{vtt}"
        );
        assert!(
            vtt.contains("00:00:12.000 --> 00:00:13.500\n/b/abc.jpg#xywh=160,90,160,90\n"),
            "{vtt}"
        );
    }
}
