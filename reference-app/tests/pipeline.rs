//! End to end, as real processes: a 3-node Trestle cluster (store and work queue), a cache node, and the app's
//! origin, pipeline coordinator, two transcode workers and edge. A generated 20-second clip whose keyframes are
//! not on the segment grid is uploaded; once ready, its master playlist, every rendition's playlist and every
//! segment are fetched through the edge, and each rendition is checked with ffprobe: keyframes on every 2-second
//! boundary, the right duration, audio present. Bad uploads are refused with problem details and leave nothing
//! behind. More tests kill, with SIGKILL, a worker while it encodes and a Trestle node during uploads (the videos
//! still become ready), and make every encode fail (the video fails with the reason; a retry recovers it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::{App, get, have_ffmpeg, in_ci, request};

/// Why the test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if !have_ffmpeg() {
        return Some("ffmpeg/ffprobe are not installed (scripts/bootstrap.sh installs them)".into());
    }
    if let Err(e) = support::trestle_bin() {
        return Some(e);
    }
    None
}

fn skip_or_fail() -> bool {
    if let Some(reason) = cannot_run() {
        assert!(!in_ci(), "cannot run under CI: {reason}");
        eprintln!("skipped (not under CI): {reason}");
        return true;
    }
    false
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Uploads `file` titled `title`; returns the video id.
async fn upload(app: &App, title: &str, file: &Path) -> String {
    let (status, body) = request(
        "POST",
        &format!("{}/videos?title={title}", app.pipeline_url),
        std::fs::read(file).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{}\n{}", String::from_utf8_lossy(&body), app.logs());
    json(&body)["id"].as_str().unwrap().to_owned()
}

/// Polls the video until it is ready (panics if it fails or takes longer than `timeout`); returns its record.
async fn wait_ready(app: &App, id: &str, timeout: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok((200, body)) = get(&format!("{}/videos/{id}", app.pipeline_url)).await {
            last = json(&body);
            match last["status"].as_str() {
                Some("ready") => return last,
                Some("failed") => panic!("video {id} failed: {last}\n{}", app.logs()),
                _ => {}
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "video {id} not ready within {timeout:?}: {last}\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Fetches rendition `name` of `id` through the edge into one fMP4 file (init section then segments); returns
/// the file and the segment durations the playlist declares.
async fn fetch_rendition(app: &App, id: &str, name: &str, into: &Path) -> (std::path::PathBuf, Vec<f64>) {
    let (status, body) = get(&format!("{}/v/{id}/{name}/index.m3u8", app.edge_url))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let playlist = String::from_utf8(body.to_vec()).unwrap();
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    let mut bytes = Vec::new();
    let mut durations = Vec::new();
    for line in playlist.lines() {
        let uri = if let Some(rest) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
            rest.trim_end_matches('"').to_owned()
        } else if let Some(d) = line.strip_prefix("#EXTINF:") {
            durations.push(
                d.trim_end_matches(',')
                    .split(',')
                    .next()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap(),
            );
            continue;
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            line.to_owned()
        };
        assert!(uri.starts_with("/b/"), "segments are content-addressed: {uri}");
        let (status, body) = get(&format!("{}{uri}", app.edge_url)).await.unwrap();
        assert_eq!(status, 200, "{uri}: {}", String::from_utf8_lossy(&body));
        bytes.extend_from_slice(&body);
    }
    let file = into.join(format!("{name}.mp4"));
    std::fs::write(&file, bytes).unwrap();
    (file, durations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_becomes_a_keyframe_aligned_hls_ladder_served_through_the_edge() {
    if skip_or_fail() {
        return;
    }
    let app = App::start(2).await;
    let work = tempfile::tempdir().unwrap();

    // Bad input first: each refused with problem details, and nothing is recorded.
    let text = work.path().join("notes.txt");
    std::fs::write(&text, "this is not a video\n").unwrap();
    let (status, body) = request(
        "POST",
        &format!("{}/videos?title=notes", app.pipeline_url),
        std::fs::read(&text).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["title"], "not a playable video");
    let (status, _) = request("POST", &format!("{}/videos", app.pipeline_url), b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400, "an upload without a title");
    let (status, _) = get(&format!("{}/videos/0123456789abcdef", app.pipeline_url))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = get(&format!("{}/videos/..%2Fetc", app.pipeline_url))
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (_, body) = get(&format!("{}/videos", app.pipeline_url)).await.unwrap();
    assert_eq!(
        json(&body).as_array().unwrap().len(),
        0,
        "refused uploads left a record"
    );

    let clip = work.path().join("clip.mp4");
    support::make_clip(&clip, 20);
    let started = std::time::Instant::now();
    let id = upload(&app, "Test%20pattern", &clip).await;
    let video = wait_ready(&app, &id, Duration::from_secs(240)).await;
    eprintln!("ready in {:.1} s: {video}", started.elapsed().as_secs_f64());
    let renditions: Vec<String> = video["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rung"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        renditions.len() >= 2,
        "a 360p source gets at least two rungs: {renditions:?}"
    );
    for name in &renditions {
        assert_eq!(
            video["progress"][name], video["renditions"][0]["chunks"],
            "every chunk of {name} recorded"
        );
    }

    let (status, body) = get(&format!("{}/v/{id}/master.m3u8", app.edge_url))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let master = String::from_utf8(body.to_vec()).unwrap();
    for name in &renditions {
        assert!(master.contains(&format!("{name}/index.m3u8")), "{master}");
    }
    assert!(master.contains("CODECS=\"avc1."), "{master}");

    let mut segment_counts = Vec::new();
    for name in &renditions {
        let (file, durations) = fetch_rendition(&app, &id, name, work.path()).await;
        let (keyframes, duration) = support::keyframes_and_duration(&file);
        assert!((duration - 20.0).abs() < 0.2, "{name}: duration {duration}");
        assert!(support::has_audio(&file), "{name} has no audio");
        // A keyframe on every 2-second boundary (within one frame), whatever the source's GOP was.
        for boundary in (0..10).map(|k| f64::from(k) * 2.0) {
            assert!(
                keyframes.iter().any(|t| (t - boundary).abs() < 0.041),
                "{name}: no keyframe at {boundary} s; keyframes {keyframes:?}"
            );
        }
        let total: f64 = durations.iter().sum();
        assert!(
            (total - 20.0).abs() < 0.2,
            "{name}: playlist durations {durations:?}"
        );
        assert!(durations.iter().all(|d| *d <= 2.05), "{name}: {durations:?}");
        segment_counts.push(durations.len());
    }
    assert!(
        segment_counts.windows(2).all(|w| w[0] == w[1]),
        "rungs differ: {segment_counts:?}"
    );

    // A second viewer is served from the cache.
    let (_, before) = get(&format!("{}/stats", app.edge_url)).await.unwrap();
    let before = json(&before);
    let (_, durations) = fetch_rendition(&app, &id, &renditions[0], work.path()).await;
    let (_, after) = get(&format!("{}/stats", app.edge_url)).await.unwrap();
    let after = json(&after);
    assert_eq!(
        before["origin_fetches"], after["origin_fetches"],
        "the second fetch went to the origin: {before} then {after}"
    );
    // The playlist, the init section and every segment were read, all from the cache.
    let reads = after["requests"].as_u64().unwrap() - before["requests"].as_u64().unwrap();
    assert_eq!(reads, 2 + durations.len() as u64, "{before} then {after}");
    assert!(after["hit_ratio"].as_f64().unwrap() > before["hit_ratio"].as_f64().unwrap());

    // The image pipeline: a poster, seek previews (WebVTT into a sprite sheet) and tags, once its barrier is done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let video = loop {
        let (_, body) = get(&format!("{}/videos/{id}", app.pipeline_url)).await.unwrap();
        let video = json(&body);
        if !video["images"].is_null() {
            break video;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no images: {video}\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let tags = video["images"]["tags"].as_array().unwrap();
    assert!(!tags.is_empty(), "{video}");
    let (status, poster) = get(&format!("{}/v/{id}/poster.jpg", app.edge_url)).await.unwrap();
    assert_eq!(status, 200);
    assert!(poster.starts_with(&[0xff, 0xd8]), "the poster is a JPEG");
    let (status, vtt) = get(&format!("{}/v/{id}/thumbnails.vtt", app.edge_url))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let vtt = String::from_utf8(vtt.to_vec()).unwrap();
    assert!(vtt.starts_with("WEBVTT"), "{vtt}");
    // 20 s sampled every 2 s: ten cues, each a 160x90 tile of one sprite sheet.
    assert_eq!(vtt.matches(" --> ").count(), 10, "{vtt}");
    let sprite = vtt
        .lines()
        .find(|l| l.starts_with("/b/"))
        .unwrap()
        .split('#')
        .next()
        .unwrap();
    assert!(vtt.contains("#xywh=640,90,160,90"), "{vtt}");
    let (status, sheet) = get(&format!("{}{sprite}", app.edge_url)).await.unwrap();
    assert_eq!(status, 200);
    let sheet_file = work.path().join("sprite.jpg");
    std::fs::write(&sheet_file, &sheet).unwrap();
    assert_eq!(
        support::image_size(&sheet_file),
        (800, 180),
        "5 columns by 2 rows of 160x90"
    );

    // Every service exports metrics.
    let (status, metrics) = get(&format!("{}/metrics", app.pipeline_url)).await.unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&metrics).contains("pipeline_videos_ready_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_encode_does_not_stop_the_video() {
    if skip_or_fail() {
        return;
    }
    let mut app = App::start(2).await;
    let work = tempfile::tempdir().unwrap();
    let clip = work.path().join("clip.mp4");
    support::make_clip(&clip, 12);
    let id = upload(&app, "Killed", &clip).await;
    // Kill worker 0 with SIGKILL while it runs an encode (it logged `encoding` more often than `encoded`), after
    // it has finished one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let log = app.workers[0].tail(10_000);
        let (started, done) = (
            log.matches(": encoding").count(),
            log.matches(": encoded").count(),
        );
        if done >= 1 && started > done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker 0 never got mid-encode\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.workers[0].kill9();
    wait_ready(&app, &id, Duration::from_secs(240)).await;
    // The task it held was delivered again, to the other worker.
    assert!(
        app.workers[1].tail(10_000).contains("delivery=2"),
        "no redelivery seen\n{}",
        app.logs()
    );
    let (status, _) = get(&format!("{}/v/{id}/master.m3u8", app.edge_url))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trestle_node_killed_during_uploads_loses_nothing() {
    if skip_or_fail() {
        return;
    }
    let mut app = App::start(2).await;
    let work = tempfile::tempdir().unwrap();
    let clip = work.path().join("clip.mp4");
    support::make_clip(&clip, 8);
    // The first upload is acknowledged (its record and its barriers committed); then a store and queue node dies
    // with SIGKILL, and the second upload goes to what is left of the cluster.
    let first = upload(&app, "Before", &clip).await;
    app.nodes[0].kill9();
    let second = upload(&app, "After", &clip).await;
    for id in [&first, &second] {
        wait_ready(&app, id, Duration::from_secs(240)).await;
        let (status, _) = get(&format!("{}/v/{id}/master.m3u8", app.edge_url))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    // The node comes back and the cluster keeps serving.
    app.nodes[0].start();
    let (_, body) = get(&format!("{}/videos", app.pipeline_url)).await.unwrap();
    assert_eq!(json(&body).as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_keeps_failing_fails_the_video_and_a_retry_recovers_it() {
    if skip_or_fail() {
        return;
    }
    let app = App::start(2).await;
    let work = tempfile::tempdir().unwrap();
    let clip = work.path().join("clip.mp4");
    support::make_clip(&clip, 4);
    let faults = |on: bool| {
        let workers = app.workers.len();
        let urls: Vec<String> = (0..workers)
            .map(|i| format!("http://{}/faults", app.worker_addrs[i]))
            .collect();
        async move {
            for url in urls {
                let body = format!("{{\"fail_encodes\": {on}}}").into_bytes();
                let (status, body) = support::put_json(&url, body).await.unwrap();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            }
        }
    };
    let (status, _) = support::put_json(
        &format!("http://{}/faults", app.worker_addrs[0]),
        b"nope".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "a malformed fault switch is refused");

    faults(true).await;
    let id = upload(&app, "Doomed", &clip).await;
    // Every encode fails; after the queue's three deliveries each task is dead-lettered, its barrier fails, and
    // the video shows as failed with the reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let failed = loop {
        let (_, body) = get(&format!("{}/videos/{id}", app.pipeline_url)).await.unwrap();
        let video = json(&body);
        if video["status"] == "failed" {
            break video;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not failed: {video}\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let reason = failed["failure"].as_str().unwrap();
    assert!(reason.contains("injected fault"), "{reason}");
    let (status, _) = get(&format!("{}/v/{id}/master.m3u8", app.edge_url))
        .await
        .unwrap();
    assert_eq!(status, 409, "a failed video does not play");

    // The operator fixes the cause and retries: the video completes.
    faults(false).await;
    let (status, body) = request(
        "POST",
        &format!("{}/videos/{id}/retry", app.pipeline_url),
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let video = wait_ready(&app, &id, Duration::from_secs(240)).await;
    assert_eq!(video["attempt"], 1);
    let (status, _) = request(
        "POST",
        &format!("{}/videos/{id}/retry", app.pipeline_url),
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 409, "a ready video cannot be retried");
}
