//! The results directory of a run: `store/<test>/<timestamp>/` with `history.jsonl`, `results.json`,
//! `summary.txt`, `timeline.html`, `latency.png`, `throughput.png` and `logs/n<i>.log`, and a `latest` link.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::checker::nemesis::NemesisReport;
use crate::checker::verdict::Verdict;
use crate::checker::{Details, Report};
use crate::error::HarnessError;
use crate::harness::cluster::NetMode;
use crate::harness::runner::TestConfig;
use crate::harness::{plot, timeline};
use crate::history::{History, Outcome};
use crate::nemesis::schedule::Window;

/// `2026-11-22T05:30:12.345Z` style, without separators that trouble shells: `20261122T053012.345Z`.
pub(crate) fn timestamp(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Creates `store/<test>/<timestamp>/` and points `store/<test>/latest` at it.
pub(crate) fn create_dir(store: &Path, test: &str) -> Result<PathBuf, HarnessError> {
    let parent = store.join(test);
    let mut dir = parent.join(timestamp(SystemTime::now()));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = parent.join(format!("{}-{n}", timestamp(SystemTime::now())));
    }
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io(&dir, e))?;
    let latest = parent.join("latest");
    let _ = std::fs::remove_file(&latest);
    if let Some(name) = dir.file_name() {
        std::os::unix::fs::symlink(name, &latest).map_err(|e| HarnessError::io(&latest, e))?;
    }
    Ok(dir)
}

/// What the results describe besides the history.
pub(crate) struct RunInfo<'a> {
    pub(crate) config: &'a TestConfig,
    pub(crate) run_id: &'a str,
    pub(crate) net: NetMode,
    pub(crate) binary: &'a Path,
    pub(crate) windows: &'a [Window],
    /// What to expect of the verdict, when not simply "valid" ([`Workload::expectation`](crate::Workload)).
    pub(crate) expectation: Option<&'static str>,
    /// The members' key-space hashes at the end.
    pub(crate) hash_kv: &'a super::hashkv::HashKvCheck,
}

/// Latency percentiles of successful operations, in milliseconds: p50, p95, p99, max.
fn latencies(history: &History) -> (usize, [f64; 4]) {
    let mut ms: Vec<f64> = history
        .ops()
        .iter()
        .filter(|op| op.outcome == Outcome::Ok)
        .filter_map(|op| Some((op.complete_time? - op.invoke_time?) as f64 / 1e6))
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() - 1) as f64 * q).round() as usize]
        }
    };
    (ms.len(), [at(0.5), at(0.95), at(0.99), at(1.0)])
}

/// Writes `results.json`, `summary.txt`, `timeline.html` and the plots; returns the summary.
pub(crate) fn write(
    dir: &Path,
    info: &RunInfo<'_>,
    history: &History,
    report: &Report,
    nemesis: &NemesisReport,
    verdict: Verdict,
) -> Result<String, HarnessError> {
    let c = info.config;
    let (ok_count, [p50, p95, p99, max]) = latencies(history);
    let span_s = history
        .ops()
        .iter()
        .filter_map(|op| op.complete_time)
        .max()
        .map(|t| t as f64 / 1e9)
        .unwrap_or(0.0)
        .max(1e-9);
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "trestle-jepsen test: workload {}, nemesis {}, {} nodes ({}), {} clients, {} s, seed {}",
        c.workload,
        c.nemesis,
        c.nodes,
        info.net.name(),
        c.concurrency,
        c.time_limit.as_secs(),
        c.seed
    );
    let _ = write!(summary, "{report}");
    if let Some(note) = info.expectation {
        let _ = writeln!(summary, "note: {note}");
    }
    let _ = write!(summary, "{nemesis}");
    let _ = write!(summary, "{}", info.hash_kv);
    let _ = writeln!(
        summary,
        "latency of ok ops: p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; \
         throughput {:.1} ok ops/s",
        ok_count as f64 / span_s
    );
    let _ = writeln!(summary, "results: {}", dir.display());
    let mut replay = format!(
        "replay: trestle-jepsen test --workload {} --nemesis {} --nodes {} --time-limit {} --concurrency {} \
         --seed {}",
        c.workload,
        c.nemesis,
        c.nodes,
        c.time_limit.as_secs(),
        c.concurrency,
        c.seed
    );
    if c.net != NetMode::Auto {
        replay.push_str(&format!(" --net {}", c.net.name()));
    }
    if c.op_timeout != TestConfig::default().op_timeout {
        replay.push_str(&format!(" --op-timeout-ms {}", c.op_timeout.as_millis()));
    }
    let _ = writeln!(summary, "{replay}");
    let _ = writeln!(summary, "overall: {verdict} (exit {})", verdict.exit_code());

    let groups: serde_json::Map<String, serde_json::Value> = nemesis
        .groups
        .iter()
        .map(|(name, g)| {
            (
                name.clone(),
                json!({"started": g.started, "took_effect": g.took_effect, "missed_windows": g.missed}),
            )
        })
        .collect();
    let by_f: serde_json::Map<String, serde_json::Value> = report
        .stats
        .by_f
        .iter()
        .map(|(f, n)| (f.clone(), json!({"ok": n.ok, "fail": n.fail, "info": n.info})))
        .collect();
    let windows: Vec<serde_json::Value> = info
        .windows
        .iter()
        .map(|w| {
            json!({"group": w.group, "kind": w.fault.kind().name(), "start_s": w.start.as_secs_f64(),
                   "stop_s": w.stop.as_secs_f64(), "fault": format!("{:?}", w.fault)})
        })
        .collect();
    // The cache workload's figures: convergence and what was checked after it.
    let cache = match &report.details {
        Details::Cache(r) => json!({
            "converged_after_s": r.converged_after.map(|d| d.as_secs_f64()),
            "bound_s": r.bound.as_secs_f64(),
            "sweeps": r.sweeps,
            "reads_checked": r.reads_checked,
            "reads_during_run": r.reads,
            "sets_acknowledged": r.sets,
            "deletes_acknowledged": r.deletes,
            "writes_indeterminate": r.indeterminate,
            "stale_during_run": r.stale_during_run,
            "stale_before_convergence": r.stale_before_convergence,
            "violations": r.violations(),
        }),
        _ => serde_json::Value::Null,
    };
    let results = json!({
        "verdict": verdict.to_string(),
        "exit_code": verdict.exit_code(),
        "seed": c.seed,
        "workload": c.workload,
        "model": report.model.name(),
        "nemesis": c.nemesis,
        "nodes": c.nodes,
        "concurrency": c.concurrency,
        "time_limit_s": c.time_limit.as_secs(),
        "op_timeout_ms": c.op_timeout.as_millis() as u64,
        "net": info.net.name(),
        "run_id": info.run_id,
        "trestle_bin": info.binary.display().to_string(),
        "checker": {"verdict": report.verdict.to_string(), "events": report.events, "keys": report.keys,
                    "ops": {"ok": report.stats.all.ok, "fail": report.stats.all.fail, "info": report.stats.all.info},
                    "by_f": by_f},
        "nemesis_check": {"verdict": nemesis.verdict.to_string(), "groups": groups},
        "schedule": windows,
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99, "max": max},
        "throughput_ok_per_s": ok_count as f64 / span_s,
        "expectation": info.expectation,
        "cache": cache,
        "summary": summary,
    });
    let write_file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| HarnessError::io(&path, e))
    };
    let pretty = serde_json::to_string_pretty(&results).unwrap_or_default();
    write_file("results.json", pretty.as_bytes())?;
    write_file("summary.txt", summary.as_bytes())?;
    let title = format!("{} / {} / seed {} / {}", c.workload, c.nemesis, c.seed, verdict);
    write_file(
        "timeline.html",
        timeline::render(history, c.concurrency, &title).as_bytes(),
    )?;
    if let Err(e) = plot::latency(history, &dir.join("latency.png")) {
        summary.push_str(&format!("(latency plot not written: {e})\n"));
    }
    if let Err(e) = plot::throughput(history, &dir.join("throughput.png")) {
        summary.push_str(&format!("(throughput plot not written: {e})\n"));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        assert_eq!(timestamp(t), "20261118T110640.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "19700101T000000.000Z");
    }
}
