//! HLS playlists: the master playlist that lists the rungs, and media playlists read and written back.
//!
//! ffmpeg writes each rung's media playlist ([`super::package_args`]); the assembler reads it with
//! [`parse_media_playlist`], may rewrite the segment and init URIs (to content-addressed names, say), and
//! writes it back with [`MediaPlaylist::render`]. [`master_playlist`] is ours alone. Both are sans-IO.
//!
//! The parser reads the VOD playlists ffmpeg writes: `EXTINF` segments with one `EXT-X-MAP`. Tags that change
//! how segments are fetched or decoded (`EXT-X-BYTERANGE`, `EXT-X-KEY`, `EXT-X-DISCONTINUITY`, a second
//! `EXT-X-MAP`) are refused rather than silently dropped; other unknown tags and comments are ignored.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ladder::Rung;
use super::probe::{Rational, parse_seconds};

/// One rung as the master playlist lists it (`EXT-X-STREAM-INF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// The rung's media playlist, relative to the master playlist (`360p/index.m3u8`).
    pub uri: String,
    /// Peak bit rate in bits per second (`BANDWIDTH`).
    pub bandwidth: u64,
    /// Average bit rate in bits per second (`AVERAGE-BANDWIDTH`), if known.
    pub average_bandwidth: Option<u64>,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// `CODECS`, e.g. `avc1.64001e,mp4a.40.2` ([`Rung::codecs`]).
    pub codecs: String,
    /// Frame rate (`FRAME-RATE`, written with three decimals).
    pub frame_rate: Rational,
}

impl Variant {
    /// The variant of `rung` at `uri`: its size and codecs, with `bandwidth` if measured
    /// ([`Bandwidth::measure`]) or else the rung's nominal rates.
    pub fn for_rung(
        rung: &Rung,
        uri: impl Into<String>,
        frame_rate: Rational,
        bandwidth: Option<Bandwidth>,
    ) -> Self {
        let bandwidth = bandwidth.unwrap_or(Bandwidth {
            peak: rung.bandwidth(),
            average: rung.average_bandwidth(),
        });
        Self {
            uri: uri.into(),
            bandwidth: bandwidth.peak,
            average_bandwidth: Some(bandwidth.average),
            width: rung.width,
            height: rung.height,
            codecs: rung.codecs(),
            frame_rate,
        }
    }
}

/// A rung's measured bit rates, in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// The highest segment bit rate (`BANDWIDTH`).
    pub peak: u64,
    /// Total bits over total duration (`AVERAGE-BANDWIDTH`).
    pub average: u64,
}

impl Bandwidth {
    /// Measures from each segment's size in bytes and duration; `None` when there is no segment with a
    /// duration. As RFC 8216 asks, `peak` is the largest segment's bits over its duration.
    pub fn measure(segments: &[(u64, Duration)]) -> Option<Self> {
        let mut peak: u64 = 0;
        let mut bytes: u128 = 0;
        let mut nanos: u128 = 0;
        for &(size, duration) in segments {
            if duration.is_zero() {
                continue;
            }
            let rate = u128::from(size) * 8 * 1_000_000_000 / duration.as_nanos();
            peak = peak.max(u64::try_from(rate).unwrap_or(u64::MAX));
            bytes += u128::from(size);
            nanos += duration.as_nanos();
        }
        if nanos == 0 {
            return None;
        }
        let average = u64::try_from(bytes * 8 * 1_000_000_000 / nanos).unwrap_or(u64::MAX);
        Some(Self { peak, average })
    }
}

/// Characters that would end a line or a quoted attribute are percent-encoded in URIs, and dropped from
/// quoted attributes, so no value can inject a line into a playlist.
fn safe_uri(uri: &str) -> String {
    uri.replace('\r', "%0D").replace('\n', "%0A").replace('"', "%22")
}

fn safe_quoted(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '"' | '\r' | '\n'))
        .collect()
}

/// The master playlist: `#EXT-X-VERSION:7`, `#EXT-X-INDEPENDENT-SEGMENTS`, then one `EXT-X-STREAM-INF` per
/// variant in the order given (players start with the first listed).
pub fn master_playlist(variants: &[Variant]) -> String {
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let _ = write!(text, "#EXT-X-STREAM-INF:BANDWIDTH={}", v.bandwidth);
        if let Some(average) = v.average_bandwidth {
            let _ = write!(text, ",AVERAGE-BANDWIDTH={average}");
        }
        let _ = writeln!(
            text,
            ",RESOLUTION={}x{},FRAME-RATE={:.3},CODECS=\"{}\"\n{}",
            v.width,
            v.height,
            v.frame_rate.as_f64(),
            safe_quoted(&v.codecs),
            safe_uri(&v.uri)
        );
    }
    text
}

/// A media playlist: one rung's segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaPlaylist {
    /// `EXT-X-VERSION`, if given.
    pub version: Option<u32>,
    /// `EXT-X-TARGETDURATION`: no segment's duration, rounded, exceeds it.
    pub target_duration: u64,
    /// `EXT-X-MEDIA-SEQUENCE` (0 when absent).
    pub media_sequence: u64,
    /// `EXT-X-PLAYLIST-TYPE` (`VOD`), if given.
    pub playlist_type: Option<String>,
    /// Whether `EXT-X-INDEPENDENT-SEGMENTS` is present.
    pub independent_segments: bool,
    /// The URI of the initialization segment (`EXT-X-MAP`), for fMP4.
    pub map_uri: Option<String>,
    /// The segments in order.
    pub segments: Vec<Segment>,
    /// Whether the playlist is complete (`EXT-X-ENDLIST`).
    pub ended: bool,
}

/// One media segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    /// Its URI, relative to the playlist.
    pub uri: String,
    /// Its duration (`EXTINF`).
    pub duration: Duration,
}

impl MediaPlaylist {
    /// The sum of the segment durations.
    pub fn duration(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// Writes the playlist back as text, durations with microseconds as ffmpeg writes them.
    pub fn render(&self) -> String {
        let mut text = String::from("#EXTM3U\n");
        if let Some(version) = self.version {
            let _ = writeln!(text, "#EXT-X-VERSION:{version}");
        }
        let _ = writeln!(text, "#EXT-X-TARGETDURATION:{}", self.target_duration);
        let _ = writeln!(text, "#EXT-X-MEDIA-SEQUENCE:{}", self.media_sequence);
        if let Some(kind) = &self.playlist_type {
            let _ = writeln!(text, "#EXT-X-PLAYLIST-TYPE:{}", safe_quoted(kind));
        }
        if self.independent_segments {
            text.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        }
        if let Some(map) = &self.map_uri {
            let _ = writeln!(text, "#EXT-X-MAP:URI=\"{}\"", safe_uri(map));
        }
        for segment in &self.segments {
            let d = segment.duration;
            let _ = writeln!(
                text,
                "#EXTINF:{}.{:06},\n{}",
                d.as_secs(),
                d.subsec_micros(),
                safe_uri(&segment.uri)
            );
        }
        if self.ended {
            text.push_str("#EXT-X-ENDLIST\n");
        }
        text
    }
}

/// A media playlist could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlsError {
    /// The text does not start with `#EXTM3U`.
    #[error("not an HLS playlist (no #EXTM3U on the first line)")]
    NotPlaylist,
    /// A tag's value could not be read.
    #[error("line {line}: cannot read {text:?}")]
    BadTag {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A tag this parser does not support (see the module docs).
    #[error("line {line}: unsupported tag {tag}")]
    Unsupported {
        /// 1-based line number.
        line: usize,
        /// The tag.
        tag: String,
    },
    /// A URI line without an `EXTINF` before it.
    #[error("line {line}: segment {uri:?} has no #EXTINF")]
    UriWithoutExtinf {
        /// 1-based line number.
        line: usize,
        /// The URI.
        uri: String,
    },
    /// An `EXTINF` not followed by a URI.
    #[error("line {line}: #EXTINF without a segment URI")]
    ExtinfWithoutUri {
        /// 1-based line number of the `EXTINF`.
        line: usize,
    },
    /// No `EXT-X-TARGETDURATION`.
    #[error("no #EXT-X-TARGETDURATION")]
    MissingTargetDuration,
}

/// Reads a media playlist (see the module docs for what is supported).
pub fn parse_media_playlist(text: &str) -> Result<MediaPlaylist, HlsError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    match lines.next() {
        Some((_, first)) if first.trim_start_matches('\u{feff}') == "#EXTM3U" => {}
        _ => return Err(HlsError::NotPlaylist),
    }
    let mut playlist = MediaPlaylist {
        version: None,
        target_duration: 0,
        media_sequence: 0,
        playlist_type: None,
        independent_segments: false,
        map_uri: None,
        segments: Vec::new(),
        ended: false,
    };
    let mut target_duration = None;
    let mut pending: Option<(usize, Duration)> = None;
    for (number, line) in lines {
        let bad = || HlsError::BadTag {
            line: number,
            text: line.to_owned(),
        };
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('#') {
            let Some((_, duration)) = pending.take() else {
                return Err(HlsError::UriWithoutExtinf {
                    line: number,
                    uri: line.to_owned(),
                });
            };
            playlist.segments.push(Segment {
                uri: line.to_owned(),
                duration,
            });
            continue;
        }
        if !line.starts_with("#EXT") {
            continue; // A comment.
        }
        let (tag, value) = line.split_once(':').unwrap_or((line, ""));
        if let (Some((extinf_line, _)), "#EXTINF") = (pending, tag) {
            return Err(HlsError::ExtinfWithoutUri { line: extinf_line });
        }
        match tag {
            "#EXTINF" => {
                let duration = value.split(',').next().and_then(parse_seconds).ok_or_else(bad)?;
                pending = Some((number, duration));
            }
            "#EXT-X-VERSION" => playlist.version = Some(value.trim().parse().map_err(|_| bad())?),
            "#EXT-X-TARGETDURATION" => target_duration = Some(value.trim().parse().map_err(|_| bad())?),
            "#EXT-X-MEDIA-SEQUENCE" => playlist.media_sequence = value.trim().parse().map_err(|_| bad())?,
            "#EXT-X-PLAYLIST-TYPE" => playlist.playlist_type = Some(value.trim().to_owned()),
            "#EXT-X-INDEPENDENT-SEGMENTS" => playlist.independent_segments = true,
            "#EXT-X-ENDLIST" => playlist.ended = true,
            "#EXT-X-MAP" => {
                if playlist.map_uri.is_some() || !playlist.segments.is_empty() {
                    return Err(HlsError::Unsupported {
                        line: number,
                        tag: "a second or late #EXT-X-MAP".into(),
                    });
                }
                if attribute(value, "BYTERANGE").is_some() {
                    return Err(HlsError::Unsupported {
                        line: number,
                        tag: "#EXT-X-MAP with BYTERANGE".into(),
                    });
                }
                playlist.map_uri = Some(attribute(value, "URI").ok_or_else(bad)?);
            }
            "#EXT-X-BYTERANGE" | "#EXT-X-KEY" | "#EXT-X-DISCONTINUITY" | "#EXT-X-GAP" | "#EXT-X-PART" => {
                return Err(HlsError::Unsupported {
                    line: number,
                    tag: tag.to_owned(),
                });
            }
            _ => {}
        }
    }
    if let Some((line, _)) = pending {
        return Err(HlsError::ExtinfWithoutUri { line });
    }
    playlist.target_duration = target_duration.ok_or(HlsError::MissingTargetDuration)?;
    Ok(playlist)
}

/// The value of `NAME=...` in an attribute list, quoted (`URI="init.mp4"`) or not.
fn attribute(list: &str, name: &str) -> Option<String> {
    let mut rest = list;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let (value, after) = quoted.split_once('"')?;
            (value, after.strip_prefix(',').unwrap_or(after))
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        if key.trim() == name {
            return Some(value.to_owned());
        }
        rest = next;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::default_ladder;

    /// What ffmpeg 5.1 wrote for one rung of the 12-second test clip.
    const FFMPEG_PLAYLIST: &str = "#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI=\"init.mp4\"
#EXTINF:2.000000,
seg_00000.m4s
#EXTINF:2.000000,
seg_00001.m4s
#EXTINF:2.002000,
seg_00002.m4s
#EXT-X-ENDLIST
";

    #[test]
    fn parses_what_ffmpeg_writes_and_renders_it_back_identically() {
        let playlist = parse_media_playlist(FFMPEG_PLAYLIST).unwrap();
        assert_eq!(playlist.version, Some(7));
        assert_eq!(playlist.target_duration, 2);
        assert_eq!(playlist.playlist_type.as_deref(), Some("VOD"));
        assert!(playlist.independent_segments && playlist.ended);
        assert_eq!(playlist.map_uri.as_deref(), Some("init.mp4"));
        assert_eq!(
            playlist.segments,
            [
                Segment {
                    uri: "seg_00000.m4s".into(),
                    duration: Duration::from_secs(2)
                },
                Segment {
                    uri: "seg_00001.m4s".into(),
                    duration: Duration::from_secs(2)
                },
                Segment {
                    uri: "seg_00002.m4s".into(),
                    duration: Duration::from_millis(2002)
                },
            ]
        );
        assert_eq!(playlist.duration(), Duration::from_millis(6002));
        assert_eq!(playlist.render(), FFMPEG_PLAYLIST);
    }

    #[test]
    fn rewritten_uris_round_trip() {
        let mut playlist = parse_media_playlist(FFMPEG_PLAYLIST).unwrap();
        playlist.map_uri = Some("/media/sha256/ab12.mp4".into());
        for (i, segment) in playlist.segments.iter_mut().enumerate() {
            segment.uri = format!("/media/sha256/{i:04}.m4s");
        }
        let text = playlist.render();
        assert!(text.contains("#EXT-X-MAP:URI=\"/media/sha256/ab12.mp4\"\n"));
        assert_eq!(parse_media_playlist(&text).unwrap(), playlist);
        // A URI cannot inject a line.
        playlist.segments[0].uri = "evil\n#EXT-X-ENDLIST".into();
        let reparsed = parse_media_playlist(&playlist.render()).unwrap();
        assert_eq!(reparsed.segments[0].uri, "evil%0A#EXT-X-ENDLIST");
    }

    #[test]
    fn malformed_playlists_are_errors() {
        assert_eq!(parse_media_playlist(""), Err(HlsError::NotPlaylist));
        assert_eq!(parse_media_playlist("hello\n"), Err(HlsError::NotPlaylist));
        assert_eq!(
            parse_media_playlist("#EXTM3U\n#EXTINF:2,\na.m4s\n"),
            Err(HlsError::MissingTargetDuration)
        );
        assert_eq!(
            parse_media_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:2\na.m4s\n"),
            Err(HlsError::UriWithoutExtinf {
                line: 3,
                uri: "a.m4s".into()
            })
        );
        assert_eq!(
            parse_media_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n"),
            Err(HlsError::ExtinfWithoutUri { line: 3 })
        );
        assert_eq!(
            parse_media_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n#EXTINF:2,\na\n"),
            Err(HlsError::ExtinfWithoutUri { line: 3 })
        );
        assert!(matches!(
            parse_media_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:two\n"),
            Err(HlsError::BadTag { line: 2, .. })
        ));
        assert!(matches!(
            parse_media_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:-1,\na\n"),
            Err(HlsError::BadTag { line: 3, .. })
        ));
        assert!(matches!(
            parse_media_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-BYTERANGE:100@0\n"),
            Err(HlsError::Unsupported { line: 3, .. })
        ));
        assert!(matches!(
            parse_media_playlist(
                "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"i.mp4\",BYTERANGE=\"5@0\"\n"
            ),
            Err(HlsError::Unsupported { line: 3, .. })
        ));
        assert!(matches!(
            parse_media_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:BYTES=1\n"),
            Err(HlsError::BadTag { line: 3, .. })
        ));
    }

    #[test]
    fn comments_crlf_and_unknown_tags_are_tolerated() {
        let text = "#EXTM3U\r\n# a comment\r\n#EXT-X-TARGETDURATION:6\r\n#EXT-X-ALLOW-CACHE:YES\r\n\
                    #EXTINF:5.5,title\r\nhttp://cdn/a.ts\r\n";
        let playlist = parse_media_playlist(text).unwrap();
        assert_eq!(
            playlist.segments,
            [Segment {
                uri: "http://cdn/a.ts".into(),
                duration: Duration::from_millis(5500)
            }]
        );
        assert!(!playlist.ended);
        assert_eq!(playlist.map_uri, None);
    }

    #[test]
    fn master_playlist_lists_each_rung() {
        let ladder = default_ladder();
        let fps = Rational::new(30000, 1001);
        let measured = Bandwidth::measure(&[
            (150_000, Duration::from_secs(2)),
            (50_000, Duration::from_secs(2)),
        ]);
        assert_eq!(
            measured,
            Some(Bandwidth {
                peak: 600_000,
                average: 400_000
            })
        );
        let variants = [
            Variant::for_rung(&ladder[0], "240p/index.m3u8", fps, measured),
            Variant::for_rung(&ladder[1], "360p/index.m3u8", fps, None),
        ];
        assert_eq!(
            master_playlist(&variants),
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=600000,AVERAGE-BANDWIDTH=400000,RESOLUTION=426x240,FRAME-RATE=29.970,\
             CODECS=\"avc1.64001e,mp4a.40.2\"\n240p/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=1328000,AVERAGE-BANDWIDTH=928000,RESOLUTION=640x360,FRAME-RATE=29.970,\
             CODECS=\"avc1.64001e,mp4a.40.2\"\n360p/index.m3u8\n"
        );
        let mut odd = variants[0].clone();
        odd.average_bandwidth = None;
        odd.codecs = "avc1\"\n".into();
        odd.uri = "a\nb".into();
        assert_eq!(
            master_playlist(&[odd]),
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=426x240,FRAME-RATE=29.970,CODECS=\"avc1\"\na%0Ab\n"
        );
    }

    #[test]
    fn bandwidth_needs_a_duration() {
        assert_eq!(Bandwidth::measure(&[]), None);
        assert_eq!(Bandwidth::measure(&[(100, Duration::ZERO)]), None);
    }
}
