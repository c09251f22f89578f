//! Teardown: a Ctrl-C in the middle of `trestle-jepsen test` leaves no node process, namespace or data behind; the
//! leftovers of a runner killed with SIGKILL (which nothing can catch) are removed by `trestle-jepsen clean`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use trestle_jepsen::find_trestle;

fn store(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("trestle-jepsen-teardown-{}-{name}", std::process::id()))
}

/// Starts a long run and waits (at most 60 s) for the line naming its run id, once the cluster is up.
fn start(name: &str) -> (Child, String) {
    let binary = find_trestle(None).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_trestle-jepsen"))
        .args([
            "test",
            "--workload",
            "set",
            "--nemesis",
            "none",
            "--time-limit",
            "120",
            "--seed",
            "1",
        ])
        .arg("--store")
        .arg(store(name))
        .arg("--trestle-bin")
        .arg(&binary)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("stderr is piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("run id ").nth(1) {
                let _ = tx.send(rest.split(',').next().unwrap_or_default().trim().to_owned());
            }
        }
    });
    let run_id = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the run never said its run id: {e}"));
    (child, run_id)
}

/// What of run `run_id` is still there: namespaces and node processes.
fn leftovers(run_id: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("jt{run_id}")))
                .collect()
        })
        .unwrap_or_default();
    let marker = format!("trestle-jepsen-{run_id}");
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            found.push(format!("process {}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// Waits for `child` to exit, at most `timeout`.
fn wait(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Polls until nothing of the run is left, at most `timeout`; returns what is left.
fn gone(run_id: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = leftovers(run_id);
        if left.is_empty() || start.elapsed() >= timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_tears_the_cluster_down() {
    let (mut child, run_id) = start("sigint");
    assert!(!leftovers(&run_id).is_empty(), "the run should have nodes up");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap_or_else(|e| panic!("{e}"));
    let status = wait(&mut child, Duration::from_secs(30)).unwrap_or_else(|| panic!("no exit after SIGINT"));
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(gone(&run_id, Duration::from_secs(5)), Vec::<String>::new());
    assert!(
        !std::env::temp_dir()
            .join(format!("trestle-jepsen-{run_id}"))
            .exists()
    );
    let _ = std::fs::remove_dir_all(store("sigint"));
}

#[test]
fn leftovers_of_a_killed_runner_are_cleaned() {
    let (mut child, run_id) = start("sigkill");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap_or_else(|e| panic!("{e}"));
    let _ = wait(&mut child, Duration::from_secs(10));
    let left = leftovers(&run_id);
    assert!(
        !left.is_empty(),
        "a SIGKILLed runner cannot clean up, yet nothing was left"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_trestle-jepsen"))
        .arg("clean")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("left: {left:?}\nclean said:\n{text}");
    assert!(out.status.success());
    assert!(text.contains(&run_id), "{text}");
    assert_eq!(gone(&run_id, Duration::from_secs(5)), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(store("sigkill"));
    assert!(
        !std::env::temp_dir()
            .join(format!("trestle-jepsen-{run_id}"))
            .exists()
    );
}
