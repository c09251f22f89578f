//! Leftovers: what a run created, written down as it is created, so that a later run can remove what a killed run
//! (SIGKILL, a power cut) could not.
//!
//! Each run keeps a ledger `$TMPDIR/trestle-jepsen-runs/<run id>`: the runner's pid, then one line per namespace
//! (`netns NAME`), per node process (`pid PID`) and per data volume (`mount PATH`, disk-full runs). A clean
//! teardown deletes the ledger. At start, every ledger whose runner is gone is replayed: processes whose command line
//! still names the run are killed, namespaces are deleted, volumes unmounted, and so is the run's data directory
//! (`$TMPDIR/trestle-jepsen-<run id>`) deleted. Nothing is matched by a broad name.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::netns;

fn ledger_dir() -> PathBuf {
    std::env::temp_dir().join("trestle-jepsen-runs")
}

/// A short id for a run: distinct between runs on one machine, used to prefix every name the run creates.
pub(crate) fn new_run_id() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mix = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    // Five base-36 characters keep namespace names short.
    let mut x = mix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    let mut id = String::new();
    for _ in 0..5 {
        let d = (x % 36) as u32;
        id.push(char::from_digit(d, 36).unwrap_or('x'));
        x /= 36;
    }
    id
}

/// The ledger of the current run.
#[derive(Debug)]
pub(crate) struct Ledger {
    path: PathBuf,
}

impl Ledger {
    /// Starts a ledger for `run_id`. Failing to write it only loses the ability to clean up after a SIGKILL.
    pub(crate) fn open(run_id: &str) -> Ledger {
        let dir = ledger_dir();
        let _ = fs::create_dir_all(&dir);
        let ledger = Ledger {
            path: dir.join(run_id),
        };
        ledger.append(&format!("runner {}", std::process::id()));
        ledger
    }

    pub(crate) fn append(&self, line: &str) {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&self.path) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Deletes the ledger (after a complete teardown).
    pub(crate) fn close(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn alive(pid: i32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Removes what runs whose runner died left behind (`trestle-jepsen clean`; every `test` does it first). Returns a
/// line per thing removed.
pub fn clean_leftovers() -> Vec<String> {
    let mut done = Vec::new();
    let Ok(entries) = fs::read_dir(ledger_dir()) else {
        return done;
    };
    for entry in entries.flatten() {
        let run_id = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let runner = text
            .lines()
            .find_map(|l| l.strip_prefix("runner "))
            .and_then(|p| p.trim().parse::<i32>().ok());
        if runner.is_some_and(alive) {
            continue;
        }
        for line in text.lines() {
            if let Some(pid) = line
                .strip_prefix("pid ")
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&run_id) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    done.push(format!("killed leftover node process {pid} of run {run_id}"));
                }
            }
        }
        for line in text.lines() {
            if let Some(ns) = line.strip_prefix("netns ")
                && netns::ip(&["netns", "del", ns.trim()]).is_ok()
            {
                done.push(format!("deleted leftover namespace {ns} of run {run_id}"));
            }
        }
        for line in text.lines() {
            // Lazily: a process of the run that could not be killed may still hold it.
            if let Some(volume) = line.strip_prefix("mount ")
                && std::process::Command::new("umount")
                    .args(["-l", volume.trim()])
                    .output()
                    .is_ok_and(|out| out.status.success())
            {
                done.push(format!("unmounted leftover volume {volume} of run {run_id}"));
            }
        }
        let data = std::env::temp_dir().join(format!("trestle-jepsen-{run_id}"));
        if fs::remove_dir_all(&data).is_ok() {
            done.push(format!(
                "deleted leftover data {} of run {run_id}",
                data.display()
            ));
        }
        let _ = fs::remove_file(entry.path());
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_short_and_differ() {
        let ids: std::collections::BTreeSet<String> = (0..50).map(|_| new_run_id()).collect();
        assert!(ids.iter().all(|id| id.len() == 5));
        assert!(ids.len() > 1);
    }
}
