//! The whole app as real processes on loopback: a 3-node `trestle serve` cluster with queue partitions, a
//! `trestle cache serve` node, and the `trestle-stream` services (origin, pipeline, workers, edge).
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Whether the suite runs under CI (where a test that cannot run must fail).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `trestle` binary: `TRESTLE_BIN`, else beside this test's target directory (`cargo nextest run --workspace`
/// builds it there).
pub fn trestle_bin() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("TRESTLE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("trestle");
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    Err(format!(
        "no trestle binary (looked at {}); build the workspace (`cargo nextest run --workspace`) or set TRESTLE_BIN",
        looked.join(", ")
    ))
}

/// Whether ffmpeg and ffprobe are on PATH.
pub fn have_ffmpeg() -> bool {
    ["ffmpeg", "ffprobe"].iter().all(|tool| {
        Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A named child process whose output goes to a log file; killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    command: Vec<String>,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String], logs: &Path) -> Self {
        let log = logs.join(format!("{name}.log"));
        let mut proc = Self {
            name: name.to_owned(),
            child: None,
            log,
            command: std::iter::once(program.display().to_string())
                .chain(args.iter().cloned())
                .collect(),
        };
        proc.start();
        proc
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.command[0]));
        self.child = Some(child);
    }

    /// SIGKILL: nothing of the process's shutdown runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of its log.
    pub fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `url` until it answers 200, or panics with `context()` after `timeout`.
pub async fn wait_ok(url: &str, timeout: Duration, context: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = get(url).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not answer 200 within {timeout:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// A request; returns the status and the body.
pub async fn request(method: &str, url: &str, body: Vec<u8>) -> Result<(u16, bytes::Bytes), String> {
    request_typed(method, url, body, "application/octet-stream").await
}

/// A PUT whose body is JSON.
pub async fn put_json(url: &str, body: Vec<u8>) -> Result<(u16, bytes::Bytes), String> {
    request_typed("PUT", url, body, "application/json").await
}

async fn request_typed(
    method: &str,
    url: &str,
    body: Vec<u8>,
    content_type: &str,
) -> Result<(u16, bytes::Bytes), String> {
    use http_body_util::BodyExt;
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(60), client().request(request))
        .await
        .map_err(|_| format!("{method} {url} timed out"))?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

pub async fn get(url: &str) -> Result<(u16, bytes::Bytes), String> {
    request("GET", url, Vec::new()).await
}

/// The app and everything under it.
pub struct App {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Proc>,
    pub cache: Proc,
    pub origin: Proc,
    pub pipeline: Proc,
    pub workers: Vec<Proc>,
    pub edge: Proc,
    pub store_endpoints: String,
    pub origin_url: String,
    pub pipeline_url: String,
    pub edge_url: String,
    pub worker_args: Vec<Vec<String>>,
    /// Each worker's HTTP address (`/health`, `/metrics`, `/faults`).
    pub worker_addrs: Vec<String>,
}

impl App {
    /// Starts everything and waits until each service answers `/health`.
    pub async fn start(workers: usize) -> Self {
        let trestle = trestle_bin().unwrap_or_else(|e| panic!("{e}"));
        let stream = PathBuf::from(env!("CARGO_BIN_EXE_trestle-stream"));
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();

        let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (free_port(), free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, _))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect();
        let nodes: Vec<Proc> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer, metrics))| {
                let args: Vec<String> = [
                    "serve",
                    "--name",
                    &format!("n{i}"),
                    "--data-dir",
                    &dir.path().join(format!("n{i}")).display().to_string(),
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--listen-metrics-urls",
                    &format!("http://127.0.0.1:{metrics}"),
                    "--initial-cluster",
                    &initial.join(","),
                    "--queue-partitions",
                    "3",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                Proc::spawn(&format!("n{i}"), &trestle, &args, &logs)
            })
            .collect();
        let store_endpoints = ports
            .iter()
            .map(|(c, _, _)| format!("http://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");

        let (memcached, cache_metrics) = (free_port(), free_port());
        let cache = Proc::spawn(
            "cache",
            &trestle,
            &strings(&[
                "cache",
                "serve",
                "--memcached-listen",
                &format!("127.0.0.1:{memcached}"),
                "--metrics-listen",
                &format!("127.0.0.1:{cache_metrics}"),
                "--memory",
                &(256u64 << 20).to_string(),
                "--max-item-size",
                &(3u64 << 20).to_string(),
            ]),
            &logs,
        );

        let origin_port = free_port();
        let origin_url = format!("http://127.0.0.1:{origin_port}");
        let origin = Proc::spawn(
            "origin",
            &stream,
            &strings(&[
                "origin",
                "--listen",
                &format!("127.0.0.1:{origin_port}"),
                "--data-dir",
                &dir.path().join("origin").display().to_string(),
            ]),
            &logs,
        );
        let store_args = |service: &str, port: u16| -> Vec<String> {
            strings(&[
                service,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store-endpoints",
                &store_endpoints,
                "--origin",
                &origin_url,
            ])
        };

        for (i, (_, _, metrics)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{metrics}/health");
            let node = &nodes[i];
            wait_ok(&url, Duration::from_secs(120), || node.tail(30)).await;
        }
        wait_ok(
            &format!("http://127.0.0.1:{cache_metrics}/health"),
            Duration::from_secs(60),
            || cache.tail(30),
        )
        .await;
        wait_ok(&format!("{origin_url}/health"), Duration::from_secs(60), || {
            origin.tail(30)
        })
        .await;

        let pipeline_port = free_port();
        let mut args = store_args("pipeline", pipeline_port);
        args.extend(strings(&[
            "--work-dir",
            &dir.path().join("pipeline").display().to_string(),
        ]));
        let pipeline = Proc::spawn("pipeline", &stream, &args, &logs);
        let pipeline_url = format!("http://127.0.0.1:{pipeline_port}");
        wait_ok(
            &format!("{pipeline_url}/health"),
            Duration::from_secs(120),
            || pipeline.tail(30),
        )
        .await;

        let mut worker_args = Vec::new();
        let mut worker_addrs = Vec::new();
        let workers: Vec<Proc> = (0..workers)
            .map(|i| {
                let port = free_port();
                worker_addrs.push(format!("127.0.0.1:{port}"));
                let mut args = store_args("worker", port);
                args.extend(strings(&[
                    "--work-dir",
                    &dir.path().join(format!("worker{i}")).display().to_string(),
                    "--preset",
                    "ultrafast",
                ]));
                worker_args.push(args.clone());
                Proc::spawn(&format!("worker{i}"), &stream, &args, &logs)
            })
            .collect();

        for (i, addr) in worker_addrs.iter().enumerate() {
            let worker = &workers[i];
            wait_ok(&format!("http://{addr}/health"), Duration::from_secs(60), || {
                worker.tail(30)
            })
            .await;
        }

        let edge_port = free_port();
        let mut args = store_args("edge", edge_port);
        args.extend(strings(&[
            "--cache-node",
            &format!("c1=127.0.0.1:{memcached}@default"),
        ]));
        let edge = Proc::spawn("edge", &stream, &args, &logs);
        let edge_url = format!("http://127.0.0.1:{edge_port}");
        wait_ok(&format!("{edge_url}/health"), Duration::from_secs(60), || {
            edge.tail(30)
        })
        .await;

        Self {
            dir,
            nodes,
            cache,
            origin,
            pipeline,
            workers,
            edge,
            store_endpoints,
            origin_url,
            pipeline_url,
            edge_url,
            worker_args,
            worker_addrs,
        }
    }

    /// Every process's last log lines.
    pub fn logs(&self) -> String {
        let mut all: Vec<&Proc> = self.nodes.iter().collect();
        all.extend([&self.cache, &self.origin, &self.pipeline, &self.edge]);
        all.extend(self.workers.iter());
        all.iter()
            .map(|p| format!("--- {} ---\n{}", p.name, p.tail(25)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Generates a `seconds`-long 640x360 25 fps H.264/AAC test clip whose GOP (3 s) is not aligned to 2 s segments.
pub fn make_clip(path: &Path, seconds: u32) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size=640x360:rate=25:duration={seconds}"),
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:sample_rate=48000:duration={seconds}"),
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "75",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "96k", "-shortest"])
        .arg(path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg could not make the test clip");
}

/// The pts (seconds) of every video keyframe in `file`, and its duration, from ffprobe.
pub fn keyframes_and_duration(file: &Path) -> (Vec<f64>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
        ])
        .args(["-show_entries", "format=duration", "-of", "json"])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keyframes = json["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["flags"].as_str().is_some_and(|f| f.starts_with('K')))
        .map(|p| p["pts_time"].as_str().unwrap().parse::<f64>().unwrap())
        .collect();
    let duration = json["format"]["duration"].as_str().unwrap().parse().unwrap();
    (keyframes, duration)
}

/// Whether `file` has an audio stream.
pub fn has_audio(file: &Path) -> bool {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout).contains("aac")
}

/// An image's width and height, from ffprobe.
pub fn image_size(file: &Path) -> (u32, u32) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim().split(',').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}
