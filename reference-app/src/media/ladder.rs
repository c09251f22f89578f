//! The bitrate ladder: which renditions ("rungs") an upload gets, and how each is announced in HLS.
//!
//! [`default_ladder`] is the full 16:9 ladder; [`ladder_for`] fits it to a source: each rung's box is turned to
//! the source's orientation, the source is scaled to fit inside it keeping its aspect ratio (even dimensions,
//! as yuv420p needs), rungs that would upscale are dropped, and the lowest rung is always kept. Each rung
//! carries the H.264 level its size and frame rate need ([`h264_level`]), which both the encoder
//! ([`super::chunk_args`]) and the playlist's `CODECS` ([`Rung::codecs`]) use, so they agree.

use serde::{Deserialize, Serialize};

use super::ffmpeg::AUDIO_BITRATE_KBPS;
use super::probe::{Rational, VideoStream};

/// One rendition of the ladder: H.264 High profile video at a size and bitrate, with the shared AAC audio.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Rung {
    /// The rung's name, also a path component: `240p`, `360p`, ...
    pub name: String,
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Average video bitrate, kbit/s (`-b:v`).
    pub video_kbps: u32,
    /// Peak video bitrate, kbit/s (`-maxrate`).
    pub max_kbps: u32,
    /// Rate-control buffer, kbit (`-bufsize`).
    pub bufsize_kbits: u32,
    /// H.264 `level_idc`: ten times the level (`31` is level 3.1).
    pub level: u8,
}

impl Rung {
    /// A rung with a peak of 1.5× the average bitrate, a buffer of 2× the average, and the level that its size
    /// needs at 30 frames per second ([`ladder_for`] sets the level for the source's frame rate).
    pub fn new(name: impl Into<String>, width: u32, height: u32, video_kbps: u32) -> Self {
        let max_kbps = video_kbps.saturating_mul(3) / 2;
        Self {
            name: name.into(),
            width,
            height,
            video_kbps,
            max_kbps,
            bufsize_kbits: video_kbps.saturating_mul(2),
            level: h264_level(width, height, Rational::new(30, 1), max_kbps),
        }
    }

    /// The level as x264's `-level` takes it: `3.1`.
    pub fn level_arg(&self) -> String {
        format!("{}.{}", self.level / 10, self.level % 10)
    }

    /// The video's RFC 6381 codec string: `avc1.` then profile_idc 100 (High), no constraint flags, and the
    /// level in hex, e.g. `avc1.64001f` for level 3.1. It is what x264 writes in the stream's `avcC` box.
    pub fn video_codec(&self) -> String {
        format!("avc1.6400{:02x}", self.level)
    }

    /// The HLS `CODECS` attribute: the video's codec string and AAC-LC (`mp4a.40.2`).
    pub fn codecs(&self) -> String {
        format!("{},mp4a.40.2", self.video_codec())
    }

    /// The nominal peak bit rate of the rung in bits per second (peak video plus audio), for `BANDWIDTH`
    /// before the segments exist. The measured [`super::Bandwidth`] of the real segments is better.
    pub fn bandwidth(&self) -> u64 {
        (u64::from(self.max_kbps) + u64::from(AUDIO_BITRATE_KBPS)) * 1000
    }

    /// The nominal average bit rate in bits per second (average video plus audio), for `AVERAGE-BANDWIDTH`.
    pub fn average_bandwidth(&self) -> u64 {
        (u64::from(self.video_kbps) + u64::from(AUDIO_BITRATE_KBPS)) * 1000
    }
}

/// The full ladder, lowest first: 240p 400k, 360p 800k, 480p 1400k, 720p 2800k (16:9).
pub fn default_ladder() -> Vec<Rung> {
    vec![
        Rung::new("240p", 426, 240, 400),
        Rung::new("360p", 640, 360, 800),
        Rung::new("480p", 854, 480, 1400),
        Rung::new("720p", 1280, 720, 2800),
    ]
}

/// The rungs of `full` for a source: never upscaled, the source's aspect ratio kept (to the nearest even
/// dimensions), and at least the lowest rung, which gets the source's own size (rounded down to even) if
/// the source is smaller than it. A portrait source fits each rung's box turned on its side (a 1080×1920
/// phone video gets 720×1280 for `720p`). Levels are set for the source's frame rate.
pub fn ladder_for(info: &VideoStream, full: &[Rung]) -> Vec<Rung> {
    let mut full = full.to_vec();
    full.sort_by_key(|r| u64::from(r.width) * u64::from(r.height));
    let fps = if info.frame_rate.is_positive() {
        info.frame_rate
    } else {
        Rational::new(30, 1)
    };
    let (src_w, src_h) = (u64::from(info.width.max(2)), u64::from(info.height.max(2)));
    let portrait = src_h > src_w;
    let mut out: Vec<Rung> = Vec::with_capacity(full.len());
    for rung in &full {
        let (box_w, box_h) = if portrait {
            (u64::from(rung.height), u64::from(rung.width))
        } else {
            (u64::from(rung.width), u64::from(rung.height))
        };
        // Scale factor min(box_w / src_w, box_h / src_h), compared without division.
        let (w, h) = if box_w * src_h <= box_h * src_w {
            (box_w, div_round(src_h * box_w, src_w))
        } else {
            (div_round(src_w * box_h, src_h), box_h)
        };
        let upscale = w > src_w || h > src_h;
        let (w, h) = if upscale {
            if !out.is_empty() {
                continue;
            }
            (src_w, src_h)
        } else {
            (w, h)
        };
        let (w, h) = (even(w, src_w), even(h, src_h));
        let mut fitted = rung.clone();
        fitted.width = w;
        fitted.height = h;
        fitted.level = h264_level(w, h, fps, rung.max_kbps);
        out.push(fitted);
        if upscale {
            // The source is smaller than the lowest rung: that one rung at the source's size is all.
            break;
        }
    }
    out
}

fn div_round(num: u64, den: u64) -> u64 {
    (num + den / 2) / den.max(1)
}

/// `value` rounded up to even, at least 2 and not above `limit` (rounded down to even).
fn even(value: u64, limit: u64) -> u32 {
    let mut v = value.div_ceil(2) * 2;
    if v > limit {
        v = limit / 2 * 2;
    }
    u32::try_from(v.max(2)).unwrap_or(u32::MAX - 1)
}

/// H.264 levels from 3.0 up: (level_idc, max macroblocks per second, max frame size in macroblocks, max video
/// bit rate in kbit/s for the High profile, i.e. 1.25× the table's). ITU-T H.264 Table A-1. Level 3.0 is the
/// floor: every player supports it, and lower levels would only restrict the decoded picture buffer.
const LEVELS: [(u8, u64, u64, u64); 11] = [
    (30, 40_500, 1_620, 12_500),
    (31, 108_000, 3_600, 17_500),
    (32, 216_000, 5_120, 25_000),
    (40, 245_760, 8_192, 25_000),
    (41, 245_760, 8_192, 62_500),
    (42, 522_240, 8_704, 62_500),
    (50, 589_824, 22_080, 168_750),
    (51, 983_040, 36_864, 300_000),
    (52, 2_073_600, 36_864, 300_000),
    (60, 4_177_920, 139_264, 300_000),
    (61, 8_355_840, 139_264, 300_000),
];

/// The lowest H.264 level (`level_idc`, at least 30) whose limits hold a `width`×`height` picture at `fps`
/// with a peak bit rate of `max_kbps`: frame size in macroblocks, each side at most √(8 × frame size),
/// macroblocks per second, and bit rate. 61 when none does.
pub fn h264_level(width: u32, height: u32, fps: Rational, max_kbps: u32) -> u8 {
    let mbs_w = u64::from(width).div_ceil(16);
    let mbs_h = u64::from(height).div_ceil(16);
    let frame = mbs_w * mbs_h;
    let per_second = if fps.den == 0 {
        0
    } else {
        (frame * u64::from(fps.num)).div_ceil(u64::from(fps.den))
    };
    for (level, max_mbps, max_fs, max_kbps_level) in LEVELS {
        let side_ok = mbs_w * mbs_w <= 8 * max_fs && mbs_h * mbs_h <= 8 * max_fs;
        if frame <= max_fs && side_ok && per_second <= max_mbps && u64::from(max_kbps) <= max_kbps_level {
            return level;
        }
    }
    61
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::parse_ffprobe;

    fn source(width: u32, height: u32, fps: Rational) -> VideoStream {
        let json = format!(
            r#"{{"streams":[{{"codec_type":"video","codec_name":"h264","width":{width},"height":{height},
            "avg_frame_rate":"{fps}"}}],"format":{{"duration":"10.0"}}}}"#
        );
        parse_ffprobe(json.as_bytes()).unwrap().video.unwrap()
    }

    fn sizes(rungs: &[Rung]) -> Vec<(&str, u32, u32)> {
        rungs
            .iter()
            .map(|r| (r.name.as_str(), r.width, r.height))
            .collect()
    }

    const FPS25: Rational = Rational::new(25, 1);

    #[test]
    fn default_ladder_is_16_by_9_lowest_first() {
        let ladder = default_ladder();
        assert_eq!(
            sizes(&ladder),
            [
                ("240p", 426, 240),
                ("360p", 640, 360),
                ("480p", 854, 480),
                ("720p", 1280, 720)
            ]
        );
        let kbps: Vec<_> = ladder
            .iter()
            .map(|r| (r.video_kbps, r.max_kbps, r.bufsize_kbits))
            .collect();
        assert_eq!(
            kbps,
            [
                (400, 600, 800),
                (800, 1200, 1600),
                (1400, 2100, 2800),
                (2800, 4200, 5600)
            ]
        );
        let codecs: Vec<_> = ladder.iter().map(Rung::codecs).collect();
        assert_eq!(
            codecs,
            [
                "avc1.64001e,mp4a.40.2",
                "avc1.64001e,mp4a.40.2",
                "avc1.64001f,mp4a.40.2",
                "avc1.64001f,mp4a.40.2"
            ]
        );
        assert_eq!(ladder[0].bandwidth(), 728_000);
        assert_eq!(ladder[0].average_bandwidth(), 528_000);
        assert_eq!(ladder[3].level_arg(), "3.1");
    }

    #[test]
    fn a_1080p_source_gets_every_rung() {
        let rungs = ladder_for(&source(1920, 1080, FPS25), &default_ladder());
        assert_eq!(sizes(&rungs), sizes(&default_ladder()));
    }

    #[test]
    fn a_480p_source_is_never_upscaled() {
        let rungs = ladder_for(&source(854, 480, FPS25), &default_ladder());
        assert_eq!(
            sizes(&rungs),
            [("240p", 426, 240), ("360p", 640, 360), ("480p", 854, 480)]
        );
        // 640x480 (4:3) keeps its aspect: narrower pictures inside the 16:9 boxes.
        let rungs = ladder_for(&source(640, 480, FPS25), &default_ladder());
        assert_eq!(
            sizes(&rungs),
            [("240p", 320, 240), ("360p", 480, 360), ("480p", 640, 480)]
        );
    }

    #[test]
    fn a_vertical_source_gets_portrait_rungs() {
        let rungs = ladder_for(&source(1080, 1920, FPS25), &default_ladder());
        assert_eq!(
            sizes(&rungs),
            [
                ("240p", 240, 426),
                ("360p", 360, 640),
                ("480p", 480, 854),
                ("720p", 720, 1280)
            ]
        );
        // Levels follow the macroblock count, which does not depend on orientation.
        let levels: Vec<_> = rungs.iter().map(|r| r.level).collect();
        assert_eq!(levels, [30, 30, 30, 31]);
    }

    #[test]
    fn odd_and_wide_sources_get_even_dimensions() {
        let rungs = ladder_for(&source(641, 361, FPS25), &default_ladder());
        assert_eq!(sizes(&rungs), [("240p", 426, 240), ("360p", 640, 360)]);
        // 2.39:1 film fits the width of each box.
        let rungs = ladder_for(&source(1920, 804, FPS25), &default_ladder());
        assert_eq!(
            sizes(&rungs),
            [
                ("240p", 426, 178),
                ("360p", 640, 268),
                ("480p", 854, 358),
                ("720p", 1280, 536)
            ]
        );
        for rung in &rungs {
            assert_eq!((rung.width % 2, rung.height % 2), (0, 0));
        }
    }

    #[test]
    fn a_tiny_source_keeps_one_rung_at_its_own_size() {
        let rungs = ladder_for(&source(321, 181, FPS25), &default_ladder());
        assert_eq!(sizes(&rungs), [("240p", 320, 180)]);
        assert_eq!(rungs[0].video_kbps, 400);
        // Even a nonsense size never yields an empty ladder or zero dimensions.
        let rungs = ladder_for(&source(0, 0, FPS25), &default_ladder());
        assert_eq!(sizes(&rungs), [("240p", 2, 2)]);
    }

    #[test]
    fn levels_follow_size_rate_and_bitrate() {
        let fps30 = Rational::new(30, 1);
        let fps60 = Rational::new(60, 1);
        assert_eq!(h264_level(426, 240, fps30, 600), 30);
        assert_eq!(h264_level(854, 480, Rational::new(25, 1), 2100), 30);
        assert_eq!(h264_level(854, 480, fps30, 2100), 31, "1620 MBs x 30 > 40500");
        assert_eq!(h264_level(1280, 720, fps30, 4200), 31);
        assert_eq!(h264_level(1280, 720, fps60, 4200), 32);
        assert_eq!(h264_level(1920, 1080, fps30, 8000), 40);
        assert_eq!(h264_level(1920, 1080, fps60, 8000), 42);
        assert_eq!(h264_level(3840, 2160, fps30, 20000), 51);
        assert_eq!(h264_level(3840, 2160, fps60, 20000), 52);
        assert_eq!(
            h264_level(640, 360, fps30, 20000),
            32,
            "bit rate alone raises the level"
        );
        let rungs = ladder_for(&source(1280, 720, Rational::new(60, 1)), &default_ladder());
        let levels: Vec<_> = rungs.iter().map(|r| r.level).collect();
        assert_eq!(levels, [30, 31, 31, 32]);
        assert_eq!(rungs[3].codecs(), "avc1.640020,mp4a.40.2");
    }
}
