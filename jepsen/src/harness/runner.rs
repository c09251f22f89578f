//! `trestle-jepsen test`: one run from start to verdict.
//!
//! Clean leftovers of dead runs; start the cluster; run the workload's clients and the nemesis schedule for the
//! time limit; heal everything, wait for the cluster to settle, run the final reads; tear the cluster down; check
//! the history; write the results directory. The cluster is owned by the run's future alone (clients get only
//! endpoints), so a panic or an interrupt that drops the future tears it down; a Ctrl-C or SIGTERM is caught and
//! turned into [`HarnessError::Interrupted`] after that teardown.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checker::linear::Limits;
use crate::checker::nemesis::{NemesisReport, check_nemesis};
use crate::checker::verdict::Verdict;
use crate::checker::{Report, check};
use crate::error::HarnessError;
use crate::harness::binary::find_trestle;
use crate::harness::cleanup::{clean_leftovers, new_run_id};
use crate::harness::cluster::{Cluster, ClusterSpec, NetMode};
use crate::harness::results::{self, RunInfo};
use crate::history::recorder::Recorder;
use crate::history::{Event, EventType, History, Process};
use crate::nemesis::Nemesis;
use crate::nemesis::schedule::{ScheduleConfig, parse_nemeses, schedule};
use crate::workload::{OpRequest, WORKLOADS, Workload, workload_by_name};

/// Everything `trestle-jepsen test` takes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TestConfig {
    /// A name from [`WORKLOADS`](crate::WORKLOADS): `register`, `set`, `lock`, `lock-unfenced`, `election`, `queue`,
    /// `barrier` or `cache`.
    pub workload: String,
    /// Comma-separated nemeses (`partition,kill`), `all` or `none`.
    pub nemesis: String,
    /// Cluster size.
    pub nodes: usize,
    /// How long the workload runs (faults included); final reads come after.
    pub time_limit: Duration,
    /// Client processes.
    pub concurrency: usize,
    /// The seed of every random choice.
    pub seed: u64,
    /// Results go to `<store>/<workload>/<timestamp>/`.
    pub store: PathBuf,
    /// The `trestle` binary; when `None`, found by [`find_trestle`].
    pub trestle_bin: Option<PathBuf>,
    /// Network mode.
    pub net: NetMode,
    /// A client operation that takes longer is abandoned (`info` for writes, `fail` for reads).
    pub op_timeout: Duration,
    /// Timing of fault windows (its `time_limit` is overwritten by this config's).
    pub schedule: ScheduleConfig,
    /// Print the progress line (stderr).
    pub progress: bool,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            workload: "register".into(),
            nemesis: "partition,kill".into(),
            nodes: 3,
            time_limit: Duration::from_secs(60),
            concurrency: 10,
            seed: 0,
            store: PathBuf::from("store"),
            trestle_bin: None,
            net: NetMode::Auto,
            op_timeout: Duration::from_secs(2),
            schedule: ScheduleConfig::default(),
            progress: true,
        }
    }
}

impl TestConfig {
    /// Checks the values; the error names the offending one.
    pub fn validate(&self) -> Result<(), HarnessError> {
        let bad = |field: &'static str, value: String, reason: &str| {
            Err(HarnessError::Config {
                field,
                value,
                reason: reason.into(),
            })
        };
        if workload_by_name(&self.workload).is_none() {
            return bad(
                "workload",
                self.workload.clone(),
                &format!("expected one of {}", WORKLOADS.join(", ")),
            );
        }
        if !(1..=9).contains(&self.nodes) {
            return bad("nodes", self.nodes.to_string(), "must be 1 to 9");
        }
        if self.concurrency == 0 || self.concurrency > 1000 {
            return bad("concurrency", self.concurrency.to_string(), "must be 1 to 1000");
        }
        if self.time_limit < Duration::from_secs(1) {
            return bad(
                "time-limit",
                format!("{:?}", self.time_limit),
                "must be at least 1 s",
            );
        }
        if self.op_timeout.is_zero() {
            return bad("op-timeout", "0".into(), "must be positive");
        }
        if let Err(e) = self.schedule.validate() {
            return bad("schedule", format!("{:?}", self.schedule), &e.to_string());
        }
        if let Err(e) = parse_nemeses(&self.nemesis, self.nodes) {
            return bad("nemesis", self.nemesis.clone(), &e.to_string());
        }
        Ok(())
    }
}

/// What a run found.
#[derive(Debug)]
#[non_exhaustive]
pub struct TestOutcome {
    /// Checker, nemesis and HashKV verdicts combined.
    pub verdict: Verdict,
    /// The results directory.
    pub dir: PathBuf,
    /// The one-screen summary (also in `summary.txt`).
    pub summary: String,
    /// The workload checker's report.
    pub report: Report,
    /// Whether the faults took effect.
    pub nemesis: NemesisReport,
    /// Whether every member held the same key space at the end.
    pub hash_kv: super::hashkv::HashKvCheck,
    /// The run id: every namespace and data directory the run made was named `jt<run id>...` /
    /// `trestle-jepsen-<run id>`.
    pub run_id: String,
    /// The network mode the run used.
    pub net: NetMode,
}

/// Aborts the spawned clients when dropped (on panic or interrupt too).
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs one test. Interrupts (Ctrl-C, SIGTERM) tear the cluster down and return [`HarnessError::Interrupted`].
pub async fn run_test(config: &TestConfig) -> Result<TestOutcome, HarnessError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| HarnessError::io("SIGTERM handler", e))?;
    tokio::select! {
        r = run(config) => r,
        _ = tokio::signal::ctrl_c() => Err(HarnessError::Interrupted { signal: "SIGINT" }),
        _ = term.recv() => Err(HarnessError::Interrupted { signal: "SIGTERM" }),
    }
}

/// Each node's data volume in runs with the disk-full nemesis: a tmpfs of this size (it takes memory only as it
/// fills).
const DISK_VOLUME_BYTES: u64 = 2 << 30;

/// Debian's multithreaded libfaketime, for whichever architecture is installed.
fn find_faketime() -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir("/usr/lib").ok()?;
    entries
        .flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
}

fn say(config: &TestConfig, line: &str) {
    if config.progress {
        eprintln!("{line}");
    }
}

async fn run(config: &TestConfig) -> Result<TestOutcome, HarnessError> {
    config.validate()?;
    let workload = workload_by_name(&config.workload).ok_or_else(|| HarnessError::Config {
        field: "workload",
        value: config.workload.clone(),
        reason: "unknown".into(),
    })?;
    let groups = parse_nemeses(&config.nemesis, config.nodes).map_err(|e| HarnessError::Config {
        field: "nemesis",
        value: config.nemesis.clone(),
        reason: e.to_string(),
    })?;
    let binary = find_trestle(config.trestle_bin.as_deref())?;
    let faketime = if groups
        .iter()
        .any(|g| g.kinds.contains(&crate::NemesisKind::Clock))
    {
        Some(find_faketime().ok_or_else(|| {
            HarnessError::Config {
                field: "nemesis",
                value: config.nemesis.clone(),
                reason: "the clock nemesis needs libfaketime (Debian package libfaketime: \
                     /usr/lib/<arch>/faketime/libfaketimeMT.so.1); scripts/bootstrap.sh installs it"
                    .into(),
            }
        })?)
    } else {
        None
    };
    let disk_volume = if groups
        .iter()
        .any(|g| g.kinds.contains(&crate::NemesisKind::DiskFull))
    {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(HarnessError::Config {
                field: "nemesis",
                value: config.nemesis.clone(),
                reason:
                    "the disk-full nemesis mounts a size-limited tmpfs as each node's data volume, which \
                     needs root: run as root, or leave disk-full out"
                        .into(),
            });
        }
        Some(DISK_VOLUME_BYTES)
    } else {
        None
    };
    for line in clean_leftovers() {
        say(config, &format!("cleanup: {line}"));
    }
    let dir = results::create_dir(&config.store, workload.name())?;
    let run_id = new_run_id();
    let spec = ClusterSpec {
        nodes: config.nodes,
        binary: binary.clone(),
        logs: dir.join("logs"),
        net: config.net,
        run_id: run_id.clone(),
        seed: config.seed,
        faketime,
        serve_args: workload.serve_args(),
        cache: workload.hosts_cache(),
        disk_volume,
    };
    let sched_config = ScheduleConfig {
        time_limit: config.time_limit,
        ..config.schedule.clone()
    };
    let windows = schedule(config.seed, &groups, config.nodes, &sched_config);
    let unscheduled: Vec<&str> = groups
        .iter()
        .filter(|g| !windows.iter().any(|w| w.group == g.name))
        .map(|g| g.name.as_str())
        .collect();
    if !unscheduled.is_empty() {
        say(
            config,
            &format!(
                "warning: the time limit leaves no fault window for {}; the nemesis checker will fail the run \
                 (raise --time-limit)",
                unscheduled.join(", ")
            ),
        );
    }

    let (cluster, mode, why) = Cluster::start(&spec).await?;
    say(
        config,
        &format!(
            "cluster: {} nodes, network {} ({why}), run id {run_id}, binary {}",
            config.nodes,
            mode.name(),
            binary.display()
        ),
    );
    let endpoints: Vec<String> = (0..cluster.len()).map(|i| cluster.endpoint(i)).collect();
    let cluster = tokio::sync::Mutex::new(cluster);
    let ready = cluster
        .lock()
        .await
        .wait_ready(Duration::from_secs(30), &dir)
        .await;
    if let Err(e) = ready {
        let tails = cluster.lock().await.log_tails(20);
        say(config, &tails);
        return Err(e);
    }
    if workload.hosts_cache() {
        let addrs = {
            let c = cluster.lock().await;
            c.wait_cache_ready(Duration::from_secs(30), &dir.join("logs"))
                .await?;
            c.cache_addrs()
        };
        if let Err(message) = workload.attach_cache(&addrs) {
            return Err(HarnessError::Command {
                command: format!("attaching the {} workload to the cache nodes", workload.name()),
                message,
            });
        }
    }

    if let Err(message) = workload.setup(&endpoints).await {
        return Err(HarnessError::Command {
            command: format!("setup of the {} workload", workload.name()),
            message,
        });
    }

    let rec = Arc::new(Recorder::new());
    let nemesis = Nemesis::new(Arc::clone(&rec));
    let stop = Arc::new(AtomicBool::new(false));
    let op_counter = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut clients = AbortOnDrop(Vec::new());
    for w in 0..config.concurrency {
        clients.0.push(tokio::spawn(client_loop(ClientCtx {
            worker: w,
            concurrency: config.concurrency,
            endpoint: endpoints[w % endpoints.len()].clone(),
            peer: endpoints[(w + 1) % endpoints.len()].clone(),
            workload: Arc::clone(&workload),
            rec: Arc::clone(&rec),
            stop: Arc::clone(&stop),
            counter: Arc::clone(&op_counter),
            seed: config.seed,
            op_timeout: config.op_timeout,
        })));
    }
    let progress = progress_line(config, &rec, &nemesis, t0);
    let chaos = async {
        nemesis.run(&cluster, &windows, t0).await;
        tokio::time::sleep_until(t0 + config.time_limit).await;
    };
    tokio::select! {
        () = chaos => {}
        () = progress => {}
    }
    stop.store(true, Ordering::SeqCst);
    for t in clients.0.drain(..) {
        let _ = t.await;
    }
    if config.progress && std::io::stderr().is_terminal() {
        eprintln!();
    }

    // Heal, settle, final reads.
    {
        let mut c = cluster.lock().await;
        nemesis.heal_all(&mut c).await;
        let settled = c.wait_ready(Duration::from_secs(20), &dir).await;
        say(
            config,
            &format!(
                "healed; cluster {}",
                if settled.is_ok() {
                    "settled"
                } else {
                    "did not settle within 20 s"
                }
            ),
        );
    }
    let generated = op_counter.load(Ordering::SeqCst);
    final_ops(
        &*workload,
        workload.final_ops(generated),
        &endpoints,
        &rec,
        config,
    )
    .await;
    // Every member must hold the same key space at one revision they all reached.
    let hash_kv = super::hashkv::compare(&endpoints, Duration::from_secs(20)).await;
    say(config, hash_kv.to_string().trim_end());
    {
        let mut c = cluster.lock().await;
        c.teardown();
    }
    say(config, "cluster torn down; checking");

    let history_path = dir.join("history.jsonl");
    rec.write_jsonl(&history_path)?;
    let history = History::from_events(rec.events()).map_err(|e| HarnessError::io(&history_path, e))?;
    let report = check(&history, workload.model(), &Limits::default())
        .map_err(|e| HarnessError::io(&history_path, e))?;
    let requested: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    let nemesis_report = check_nemesis(&history, &requested);
    let verdict = report.verdict.and(nemesis_report.verdict).and(hash_kv.verdict);
    let info = RunInfo {
        config,
        run_id: &run_id,
        net: mode,
        binary: &binary,
        windows: &windows,
        expectation: workload.expectation(),
        hash_kv: &hash_kv,
    };
    let summary = results::write(&dir, &info, &history, &report, &nemesis_report, verdict)?;
    Ok(TestOutcome {
        verdict,
        dir,
        summary,
        report,
        nemesis: nemesis_report,
        hash_kv,
        run_id,
        net: mode,
    })
}

async fn progress_line(config: &TestConfig, rec: &Recorder, nemesis: &Nemesis, t0: Instant) {
    if !config.progress {
        return std::future::pending().await;
    }
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let (ok, fail, info) = rec.counts();
        let status = nemesis.status.lock().map(|s| s.clone()).unwrap_or_default();
        let line = format!(
            "[{:>5.1}/{} s] {} ops: ok {ok} fail {fail} info {info} | nemesis: {status}",
            t0.elapsed().as_secs_f64(),
            config.time_limit.as_secs(),
            ok + fail + info,
        );
        if tty {
            eprint!("\r{line:<100}");
        } else if n.is_multiple_of(5) {
            eprintln!("{line}");
        }
    }
}

struct ClientCtx {
    worker: usize,
    concurrency: usize,
    endpoint: String,
    /// Another node's endpoint ([`Workload::open_with_peer`]).
    peer: String,
    workload: Arc<dyn Workload>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
    seed: u64,
    op_timeout: Duration,
}

async fn connect(endpoint: &str, timeout: Duration) -> Option<etcd_client::Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout);
    tokio::time::timeout(timeout, etcd_client::Client::connect([endpoint], Some(options)))
        .await
        .ok()?
        .ok()
}

/// Performs one operation as `process` and records it. Returns its completion type.
async fn perform(
    workload: &dyn Workload,
    session: &mut Box<dyn crate::workload::Session>,
    rec: &Recorder,
    process: i64,
    op: &OpRequest,
    timeout: Duration,
) -> EventType {
    let mut invoke = Event::new(
        EventType::Invoke,
        Process::Client(process),
        op.f.clone(),
        op.value.clone(),
    );
    invoke.key = op.key.clone();
    rec.record(invoke);
    let done = match tokio::time::timeout(timeout, session.invoke(op)).await {
        Ok(c) => c,
        Err(_) if workload.is_read_only(op) => crate::workload::Completion::fail(op.value.clone(), "timeout"),
        Err(_) => crate::workload::Completion::info(op.value.clone(), "timeout"),
    };
    let mut event = Event::new(done.kind, Process::Client(process), op.f.clone(), done.value);
    event.key = op.key.clone();
    event.error = done.error;
    rec.record(event);
    done.kind
}

async fn client_loop(ctx: ClientCtx) {
    let golden = 0x9E37_79B9_7F4A_7C15u64;
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (ctx.worker as u64 + 1).wrapping_mul(golden));
    let mut process = ctx.worker as i64;
    let mut session = None;
    while !ctx.stop.load(Ordering::SeqCst) {
        let s = match session.as_mut() {
            Some(s) => s,
            None => match connect(&ctx.endpoint, ctx.op_timeout).await {
                Some(client) => session.insert(ctx.workload.open_at(client, &ctx.endpoint, Some(&ctx.peer))),
                None => {
                    // The node is down: try again shortly (this is a client's retry pace, not a wait).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let n = ctx.counter.fetch_add(1, Ordering::SeqCst);
        let op = s.plan(ctx.workload.generate(&mut rng, n));
        let kind = perform(&*ctx.workload, s, &ctx.rec, process, &op, ctx.op_timeout).await;
        match kind {
            EventType::Info => {
                process += ctx.concurrency as i64;
                session = None;
            }
            EventType::Fail => {
                // Do not hammer an unreachable node.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {}
        }
    }
}

/// Runs each final operation until it succeeds, on any node, for at most 20 s each; every attempt is recorded
/// under a fresh process id.
async fn final_ops(
    workload: &dyn Workload,
    ops: Vec<OpRequest>,
    endpoints: &[String],
    rec: &Recorder,
    config: &TestConfig,
) {
    let mut process = (config.concurrency as i64) * 1_000_000;
    for (k, op) in ops.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut attempt = 0usize;
        while Instant::now() < deadline {
            let endpoint = &endpoints[(k + attempt) % endpoints.len()];
            attempt += 1;
            let Some(client) = connect(endpoint, config.op_timeout).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut session = workload.open_at(client, endpoint, None);
            process += 1;
            if perform(workload, &mut session, rec, process, op, config.op_timeout * 2).await == EventType::Ok
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
