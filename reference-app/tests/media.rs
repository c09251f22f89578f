//! The media pipeline against the real ffmpeg and ffprobe: a generated clip whose GOP is not aligned to our
//! segments goes through probe, check, plan, per-(chunk, rung) encodes, one audio encode and packaging, and
//! the HLS output is checked with ffprobe, not trusted from exit codes: every segment of every rung starts
//! with a keyframe on the segment grid, no frame is lost or duplicated, the rungs agree segment for segment,
//! and the `CODECS` we announce is what the init segment says.
//!
//! Without ffmpeg these tests fail when `CI` is set and are skipped (with a message) otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use trestle_stream::media::{
    Bandwidth, FfmpegError, MediaInfo, ProbeError, Rational, Refusal, Rung, Tools, UploadLimits, Variant,
    audio_args, check, chunk_args, concat_list, default_ladder, ladder_for, master_playlist, package_args,
    parse_media_playlist, plan_chunks, probe, run, test_clip_args, test_tone_args,
};

const LIMIT: Duration = Duration::from_secs(60);

/// The tools, or `None` (test skipped) when ffmpeg is missing outside CI.
fn tools() -> Option<Tools> {
    let works = |program: &str| {
        Command::new(program)
            .arg("-version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if works("ffmpeg") && works("ffprobe") {
        return Some(Tools::default());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg and ffprobe must be on PATH under CI (Debian: apt-get install ffmpeg; scripts/bootstrap.sh)"
    );
    eprintln!("skipped: ffmpeg or ffprobe is not on PATH (Debian: apt-get install ffmpeg)");
    None
}

/// Runs ffprobe with `args` on `file`, returning its CSV lines.
fn ffprobe(args: &[&str], file: &Path) -> Vec<String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe {args:?} {file:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Video packets of a file as (pts seconds, keyframe), in presentation order.
fn video_packets(file: &Path) -> Vec<(f64, bool)> {
    let mut packets: Vec<(f64, bool)> = ffprobe(
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=p=0",
        ],
        file,
    )
    .iter()
    .map(|line| {
        let (pts, flags) = line.split_once(',').unwrap();
        (pts.parse().unwrap(), flags.contains('K'))
    })
    .collect();
    packets.sort_by(|a, b| a.0.total_cmp(&b.0));
    packets
}

/// `init.mp4` followed by the given segments, as one file ffprobe can read.
fn joined(dir: &Path, segments: &[&str], out: &Path) -> PathBuf {
    let mut bytes = std::fs::read(dir.join("init.mp4")).unwrap();
    for segment in segments {
        bytes.extend(std::fs::read(dir.join(segment)).unwrap());
    }
    std::fs::write(out, bytes).unwrap();
    out.to_owned()
}

/// The RFC 6381 string of the `avcC` box in an init segment: `avc1.PPCCLL`.
fn avc_codec_of(init: &Path) -> String {
    let bytes = std::fs::read(init).unwrap();
    let at = bytes.windows(4).position(|w| w == b"avcC").expect("no avcC box");
    // version, profile_idc, constraint flags, level_idc
    format!(
        "avc1.{:02x}{:02x}{:02x}",
        bytes[at + 5],
        bytes[at + 6],
        bytes[at + 7]
    )
}

struct Rendition {
    rung: Rung,
    dir: PathBuf,
}

/// The whole pipeline as the services run it, without the queue: encode every (chunk, rung), the audio,
/// then package each rung.
async fn transcode(
    tools: &Tools,
    src: &Path,
    info: &MediaInfo,
    rungs: &[Rung],
    segment: Duration,
    per_chunk: u32,
    work: &Path,
) -> Vec<Rendition> {
    let video = info.video.as_ref().unwrap();
    let plan = plan_chunks(info.video_duration(), segment, per_chunk).unwrap();
    // A quote and a space in the names prove the concat list's quoting.
    let chunk_root = work.join("chunk's dir");
    let hls_root = work.join("hls out");
    let mut jobs: Vec<Vec<OsString>> = Vec::new();
    for rung in rungs {
        std::fs::create_dir_all(chunk_root.join(&rung.name)).unwrap();
        std::fs::create_dir_all(hls_root.join(&rung.name)).unwrap();
        for chunk in &plan.chunks {
            let out = chunk_root.join(&rung.name).join(chunk.file_name());
            jobs.push(chunk_args(
                tools,
                src,
                chunk,
                rung,
                video.frame_rate,
                plan.segment,
                &out,
            ));
        }
    }
    let audio = work.join("audio.m4a");
    jobs.push(audio_args(tools, src, info, &audio));
    let runs = jobs.iter().map(|args| run(tools, args, LIMIT));
    futures::future::try_join_all(runs).await.unwrap();

    let mut renditions = Vec::new();
    for rung in rungs {
        let files: Vec<PathBuf> = plan
            .chunks
            .iter()
            .map(|c| chunk_root.join(&rung.name).join(c.file_name()))
            .collect();
        // Every chunk of a rung must carry the same SPS/PPS: `-c copy` keeps only the first one.
        let hashes: Vec<String> = files
            .iter()
            .map(|f| {
                ffprobe(
                    &[
                        "-select_streams",
                        "v:0",
                        "-show_streams",
                        "-show_data_hash",
                        "sha256",
                    ],
                    f,
                )
            })
            .map(|lines| {
                lines
                    .into_iter()
                    .find(|l| l.starts_with("extradata_hash="))
                    .unwrap()
            })
            .collect();
        assert!(
            hashes.windows(2).all(|w| w[0] == w[1]),
            "{}: chunk parameter sets differ: {hashes:?}",
            rung.name
        );
        let list = chunk_root.join(&rung.name).join("list.ffconcat");
        std::fs::write(&list, concat_list(&files)).unwrap();
        let dir = hls_root.join(&rung.name);
        run(
            tools,
            &package_args(tools, &list, &audio, plan.segment, &dir),
            LIMIT,
        )
        .await
        .unwrap();
        renditions.push(Rendition {
            rung: rung.clone(),
            dir,
        });
    }
    renditions
}

/// Checks one rendition and returns its segment durations.
fn check_rendition(
    r: &Rendition,
    fps: Rational,
    segment: f64,
    frames: usize,
    scratch: &Path,
) -> Vec<Duration> {
    let name = &r.rung.name;
    let text = std::fs::read_to_string(r.dir.join("index.m3u8")).unwrap();
    let playlist = parse_media_playlist(&text).unwrap();
    assert!(playlist.ended && playlist.independent_segments, "{name}: {text}");
    assert_eq!(playlist.map_uri.as_deref(), Some("init.mp4"), "{name}");
    assert_eq!(playlist.render(), text, "{name}: render(parse(x)) == x");
    let frame = 1.0 / fps.as_f64();

    // Every segment starts with a keyframe on the grid, and holds no other keyframe.
    let mut start = 0.0;
    for (i, seg) in playlist.segments.iter().enumerate() {
        let file = joined(&r.dir, &[&seg.uri], &scratch.join(format!("{name}-{i}.mp4")));
        let packets = video_packets(&file);
        let (first_pts, first_key) = packets[0];
        assert!(
            first_key,
            "{name} segment {i} starts with a non-keyframe at {first_pts}"
        );
        assert!(
            (first_pts - i as f64 * segment).abs() < frame,
            "{name} segment {i} starts at {first_pts}"
        );
        assert!(
            (first_pts - start).abs() < 1e-3,
            "{name} segment {i} starts at {first_pts}, expected {start}"
        );
        assert_eq!(
            packets.iter().filter(|p| p.1).count(),
            1,
            "{name} segment {i}: {packets:?}"
        );
        let last = packets.last().unwrap().0;
        let measured = last + frame - first_pts;
        let listed = seg.duration.as_secs_f64();
        assert!(
            (measured - listed).abs() < 1e-3,
            "{name} segment {i}: EXTINF {listed} vs frames {measured}"
        );
        start = last + frame;
    }

    // The whole rendition: every frame once, on the frame grid, keyframes at multiples of the segment.
    let uris: Vec<&str> = playlist.segments.iter().map(|s| s.uri.as_str()).collect();
    let all = joined(&r.dir, &uris, &scratch.join(format!("{name}-all.mp4")));
    let packets = video_packets(&all);
    assert_eq!(packets.len(), frames, "{name}: frame count");
    for (n, (pts, _)) in packets.iter().enumerate() {
        assert!(
            (pts - n as f64 * frame).abs() < 1e-3,
            "{name}: frame {n} at {pts}"
        );
    }
    for (pts, _) in packets.iter().filter(|p| p.1) {
        let k = (pts / segment).round();
        assert!(
            (pts - k * segment).abs() < frame,
            "{name}: keyframe at {pts} is off the {segment} s grid"
        );
    }

    // Both tracks, and the codecs and size we announce.
    let streams = ffprobe(
        &[
            "-show_entries",
            "stream=codec_name,profile,width,height,sample_rate,channels",
            "-of",
            "csv=p=0",
        ],
        &all,
    );
    assert_eq!(streams.len(), 2, "{name}: {streams:?}");
    assert!(
        streams[0].starts_with(&format!("h264,High,{},{}", r.rung.width, r.rung.height)),
        "{name}: {streams:?}"
    );
    assert_eq!(streams[1], "aac,LC,48000,2", "{name}");
    assert_eq!(
        avc_codec_of(&r.dir.join("init.mp4")),
        r.rung.video_codec(),
        "{name}: CODECS"
    );
    playlist.segments.iter().map(|s| s.duration).collect()
}

#[tokio::test]
async fn chunked_encode_puts_keyframes_on_every_segment_boundary_in_every_rung() {
    let Some(tools) = tools() else { return };
    let began = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("upload.mp4");
    let fps = Rational::new(25, 1);
    let generate = tools.clone().with_preset("ultrafast");
    let clip = test_clip_args(&generate, &src, Duration::from_secs(12), 640, 360, fps, true);
    run(&tools, &clip, LIMIT).await.unwrap();

    let info = probe(&tools, &src).await.unwrap();
    check(&info, &UploadLimits::default()).unwrap();
    let video = info.video.as_ref().unwrap();
    assert_eq!((video.width, video.height, video.frame_rate), (640, 360, fps));
    assert_eq!(info.duration, Duration::from_secs(12));
    // The source's keyframes are every 3 s: off our 2 s grid. Its scene cuts (every 1.3 s) are off it too:
    // the check that each segment holds exactly one keyframe proves x264 added none at them.
    let source_keys: Vec<f64> = video_packets(&src)
        .into_iter()
        .filter(|p| p.1)
        .map(|p| p.0)
        .collect();
    assert_eq!(source_keys, [0.0, 3.0, 6.0, 9.0]);

    let rungs = ladder_for(video, &default_ladder());
    let names: Vec<&str> = rungs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["240p", "360p"], "a 360p source is not upscaled");

    let segment = Duration::from_secs(2);
    let renditions = transcode(&tools, &src, &info, &rungs, segment, 2, tmp.path()).await;
    let mut durations = Vec::new();
    let mut variants = Vec::new();
    for r in &renditions {
        let d = check_rendition(r, fps, 2.0, 300, tmp.path());
        assert_eq!(d.len(), 6, "{}: {d:?}", r.rung.name);
        for one in &d {
            assert!(
                one.abs_diff(segment) < Duration::from_millis(1),
                "{}: {d:?}",
                r.rung.name
            );
        }
        let total: Duration = d.iter().sum();
        assert!(
            total.abs_diff(Duration::from_secs(12)) <= Duration::from_millis(40),
            "total {total:?}"
        );
        durations.push(d);
        let sizes: Vec<(u64, Duration)> = (0..6)
            .map(|i| {
                (
                    std::fs::metadata(r.dir.join(format!("seg_{i:05}.m4s")))
                        .unwrap()
                        .len(),
                    segment,
                )
            })
            .collect();
        let bandwidth = Bandwidth::measure(&sizes).unwrap();
        eprintln!(
            "{}: measured {bandwidth:?}, nominal peak {}",
            r.rung.name,
            r.rung.bandwidth()
        );
        variants.push(Variant::for_rung(
            &r.rung,
            format!("{}/index.m3u8", r.rung.name),
            fps,
            Some(bandwidth),
        ));
    }
    assert_eq!(durations[0], durations[1], "the rungs agree segment for segment");
    let master = master_playlist(&variants);
    assert!(
        master.contains(
            "RESOLUTION=426x240,FRAME-RATE=25.000,CODECS=\"avc1.64001e,mp4a.40.2\"\n240p/index.m3u8"
        )
    );
    assert!(
        master.contains(
            "RESOLUTION=640x360,FRAME-RATE=25.000,CODECS=\"avc1.64001e,mp4a.40.2\"\n360p/index.m3u8"
        )
    );
    eprintln!("pipeline test took {:?}", began.elapsed());
}

#[tokio::test]
async fn ntsc_video_without_audio_gets_every_frame_and_a_silent_track() {
    let Some(tools) = tools() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("upload.mp4");
    let fps = Rational::new(30000, 1001);
    // 150 frames: 5.005 s. The plan's last chunk (4 s..5.005 s) is shorter than the others.
    let clip = test_clip_args(
        &tools.clone().with_preset("ultrafast"),
        &src,
        Duration::from_millis(5005),
        320,
        180,
        fps,
        false,
    );
    run(&tools, &clip, LIMIT).await.unwrap();
    let info = probe(&tools, &src).await.unwrap();
    check(&info, &UploadLimits::default()).unwrap();
    assert!(info.audio.is_none());
    assert_eq!(info.video.as_ref().unwrap().frame_rate, fps);

    let rungs = ladder_for(info.video.as_ref().unwrap(), &default_ladder());
    assert_eq!(rungs.len(), 1);
    assert_eq!(
        (rungs[0].width, rungs[0].height),
        (320, 180),
        "smaller than 240p: kept at its size"
    );
    let renditions = transcode(&tools, &src, &info, &rungs, Duration::from_secs(2), 1, tmp.path()).await;
    let durations = check_rendition(&renditions[0], fps, 2.0, 150, tmp.path());
    // Keyframes on the first frame at or after each 2 s: 0, 2.002, 4.004; the rest in the last segment.
    assert_eq!(
        durations,
        [
            Duration::from_millis(2002),
            Duration::from_millis(2002),
            Duration::from_millis(1001)
        ]
    );
    let audio = ffprobe(
        &[
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=duration",
            "-of",
            "csv=p=0",
        ],
        &tmp.path().join("audio.m4a"),
    );
    let audio: f64 = audio[0].parse().unwrap();
    assert!(
        (audio - 5.005).abs() < 0.03,
        "silent track of the video's length, got {audio}"
    );
}

#[tokio::test]
async fn files_that_are_not_video_are_refused() {
    let Some(tools) = tools() else { return };
    let tmp = tempfile::tempdir().unwrap();

    let text = tmp.path().join("notes.mp4");
    std::fs::write(&text, "these are not the frames you are looking for\n").unwrap();
    match probe(&tools, &text).await {
        Err(ProbeError::NotMedia { reason }) => {
            assert!(reason.contains("Invalid data"), "{reason}");
            assert!(
                !reason.contains(&*tmp.path().to_string_lossy()),
                "the path is not shown: {reason}"
            );
        }
        other => panic!("a text file: {other:?}"),
    }

    let clip = tmp.path().join("clip.mp4");
    let args = test_clip_args(
        &tools,
        &clip,
        Duration::from_secs(2),
        160,
        90,
        Rational::new(25, 1),
        true,
    );
    run(&tools, &args, LIMIT).await.unwrap();
    let bytes = std::fs::read(&clip).unwrap();
    let truncated = tmp.path().join("truncated.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    match probe(&tools, &truncated).await {
        Err(ProbeError::NotMedia { reason }) => assert!(reason.contains("moov atom not found"), "{reason}"),
        other => panic!("a truncated MP4: {other:?}"),
    }

    let tone = tmp.path().join("song.m4a");
    run(
        &tools,
        &test_tone_args(&tools, &tone, Duration::from_secs(2)),
        LIMIT,
    )
    .await
    .unwrap();
    let info = probe(&tools, &tone).await.unwrap();
    assert!(info.audio.is_some());
    assert_eq!(check(&info, &UploadLimits::default()), Err(Refusal::NoVideo));

    let missing = probe(&tools, &tmp.path().join("missing.mp4")).await;
    assert!(matches!(missing, Err(ProbeError::Io { .. })), "{missing:?}");
}

#[tokio::test]
async fn ffmpeg_failures_carry_the_status_and_stderr_and_timeouts_kill() {
    let Some(tools) = tools() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.mp4");
    let args: Vec<OsString> = vec![
        "-i".into(),
        missing.clone().into(),
        "-f".into(),
        "null".into(),
        "-".into(),
    ];
    match run(&tools, &args, LIMIT).await {
        Err(FfmpegError::Failed { status, stderr_tail }) => {
            assert!(!status.success());
            assert!(stderr_tail.contains("No such file or directory"), "{stderr_tail}");
        }
        other => panic!("{other:?}"),
    }

    let endless: Vec<OsString> = [
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x64:rate=5",
        "-f",
        "null",
        "-",
    ]
    .map(OsString::from)
    .into();
    let began = Instant::now();
    let timed_out = run(&tools, &endless, Duration::from_millis(500)).await;
    assert!(
        matches!(timed_out, Err(FfmpegError::Timeout { .. })),
        "{timed_out:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(10));

    let absent = Tools::default().with_ffmpeg(tmp.path().join("no-ffmpeg"));
    assert!(matches!(
        run(&absent, &args, LIMIT).await,
        Err(FfmpegError::Spawn { .. })
    ));
}
