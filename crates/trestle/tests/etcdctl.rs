//! Compatibility: Debian's etcdctl 3.4 against a Trestle cluster of real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{ProcessCluster, etcdctl_path};

struct Etcdctl {
    endpoints: String,
}

impl Etcdctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(etcdctl_path());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg("--command-timeout=10s")
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        self.run_with_input(args, "")
    }

    fn run_with_input(&self, args: &[&str], input: &str) -> String {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl runs");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_3_4_works_against_trestle() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let ctl = Etcdctl {
        endpoints: cluster.endpoints().join(","),
    };

    assert_eq!(ctl.run(&["put", "/app/a", "1"]).trim(), "OK");
    ctl.run(&["put", "/app/b", "2"]);
    assert_eq!(ctl.run(&["get", "/app/", "--prefix"]), "/app/a\n1\n/app/b\n2\n");
    assert_eq!(
        ctl.run(&["get", "/app/", "--prefix", "--keys-only"])
            .split_whitespace()
            .count(),
        2
    );

    let txn = "value(\"/app/a\") = \"1\"\n\nput /app/a changed\n\nget /app/a\n\n";
    assert_eq!(ctl.run_with_input(&["txn"], txn).lines().next(), Some("SUCCESS"));
    assert_eq!(
        ctl.run(&["get", "/app/a", "--print-value-only"]).trim(),
        "changed"
    );

    // watch: a background etcdctl sees a put made after it started.
    let mut watcher = ctl
        .command(&["watch", "/w/", "--prefix"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut put_done = false;
    while !(seen.contains(&"PUT".to_string()) && seen.contains(&"/w/x".to_string())) {
        assert!(
            std::time::Instant::now() < deadline,
            "etcdctl watch saw only {seen:?}"
        );
        if !put_done {
            // The watch may not be registered yet; repeat the put until the watcher reports one.
            ctl.run(&["put", "/w/x", "y"]);
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            put_done = true;
            seen.push(line);
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();

    // Leases: grant, attach, keep-alive, time-to-live with keys, revoke.
    let granted = ctl.run(&["lease", "grant", "60"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(granted.contains("granted with TTL(60s)"), "{granted}");
    ctl.run(&["put", "/leased", "v", &format!("--lease={id}")]);
    let kept = ctl.run(&["lease", "keep-alive", "--once", &id]);
    assert!(kept.contains("keepalived with TTL(60)"), "{kept}");
    let ttl = ctl.run(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("/leased"),
        "{ttl}"
    );
    assert!(ctl.run(&["lease", "revoke", &id]).contains("revoked"));
    assert_eq!(ctl.run(&["get", "/leased"]), "");

    assert_eq!(ctl.run(&["del", "/app/", "--prefix"]).trim(), "2");

    let members = ctl.run(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for i in 0..3 {
        assert!(members.contains(&format!("node{i}")), "{members}");
    }
    // etcdctl 3.4's `endpoint status` sends the whole URL (with http://) as the HTTP/2 :authority, which the h2
    // crate under tonic rejects as malformed; with scheme-less endpoints etcdctl sends a valid authority.
    let bare = Etcdctl {
        endpoints: ctl.endpoints.replace("http://", ""),
    };
    let status = bare.run(&["endpoint", "status", "-w", "json"]);
    let leaders: Vec<&str> = status
        .split("\"leader\":")
        .skip(1)
        .map(|rest| rest.split(',').next().unwrap_or_default())
        .collect();
    assert_eq!(leaders.len(), 3, "{status}");
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "every member reports the same leader: {status}"
    );
    assert!(leaders[0].parse::<u64>().unwrap() != 0, "{status}");

    // Every member hashes its key space alike (etcd's HashKV, at each member's own current revision: no write is
    // in flight here).
    let hashes = bare.run(&["endpoint", "hashkv", "-w", "json"]);
    let values: Vec<&str> = hashes
        .split("\"hash\":")
        .skip(1)
        .map(|rest| rest.split([',', '}']).next().unwrap_or_default())
        .collect();
    assert_eq!(values.len(), 3, "{hashes}");
    assert!(values.iter().all(|h| *h == values[0]), "members differ: {hashes}");

    // No alarm is raised; defragmenting is answered (nothing to do), as etcd's maintenance routine expects.
    assert_eq!(bare.run(&["alarm", "list"]), "");
    let defrag = bare.run(&["defrag"]);
    assert_eq!(defrag.matches("Finished defragmenting").count(), 3, "{defrag}");

    // A backup with `snapshot save` (one endpoint), Trestle's own format behind etcd's framing.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let one = Etcdctl {
        endpoints: bare.endpoints.split(',').next().unwrap().to_string(),
    };
    ctl.run(&["put", "/backup", "yes"]);
    // A linearizable read through that member: it has applied the put before it answers.
    assert_eq!(one.run(&["get", "/backup", "--print-value-only"]).trim(), "yes");
    let saved = one
        .command(&["snapshot", "save", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let backup = std::fs::read(&file).unwrap();
    let store = trestle_etcd::decode_backup(&backup).expect("etcdctl saved a whole backup");
    assert_eq!(store.live_key_count(), 2, "the backup holds /w/x and /backup");

    // move-leader: the leader hands over to the member named (etcdctl finds the leader among the endpoints).
    let leader: u64 = leaders[0].parse().unwrap();
    let target = members
        .lines()
        .map(|l| l.split(',').next().unwrap().trim().to_string())
        .find(|id| u64::from_str_radix(id, 16).unwrap() != leader)
        .unwrap();
    let moved = bare.run(&["move-leader", &target]);
    assert!(moved.contains("Leadership transferred"), "{moved}");
    let status = bare.run(&["endpoint", "status", "-w", "json"]);
    assert!(
        status.contains(&format!(
            "\"leader\":{}",
            u64::from_str_radix(&target, 16).unwrap()
        )),
        "{status}"
    );
    // etcdctl 3.4 prints health results on stderr.
    let health = ctl.command(&["endpoint", "health"]).output().unwrap();
    let text = String::from_utf8_lossy(&health.stdout).to_string() + &String::from_utf8_lossy(&health.stderr);
    assert!(health.status.success(), "{text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
}

/// Reads a child's stdout lines on a thread.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn interrupt(child: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let _ = child.wait();
}

/// `etcdctl lock` and `etcdctl elect` use Trestle's lock and election services, and queue in the same lines as
/// the trestle-lock and trestle-election crates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_elect_against_trestle() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let ctl = Etcdctl {
        endpoints: cluster.endpoints().join(","),
    };

    // Lock, run a command while holding, release.
    let out = ctl.run(&["lock", "jobs", "echo", "ran-under-the-lock"]);
    assert!(out.contains("ran-under-the-lock"), "{out}");

    // While this crate's Mutex holds the lock, etcdctl waits; on unlock it gets it.
    let client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let session = trestle_lock::Session::new(client.clone()).await.unwrap();
    let guard = trestle_lock::Mutex::new(&session, "jobs")
        .unwrap()
        .lock()
        .await
        .unwrap();
    let mut waiting = ctl
        .command(&["lock", "jobs", "echo", "second"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let second = lines_of(&mut waiting);
    assert!(
        second.recv_timeout(Duration::from_millis(800)).is_err(),
        "etcdctl lock must wait while the lock is held"
    );
    guard.unlock().await.unwrap();
    let line = second
        .recv_timeout(Duration::from_secs(10))
        .expect("etcdctl got the lock");
    assert!(
        line.contains("second")
            || second
                .recv_timeout(Duration::from_secs(5))
                .is_ok_and(|l| l.contains("second"))
    );
    let _ = waiting.wait();

    // Elections: etcdctl leads, this crate observes; a second etcdctl takes over when the first is interrupted.
    let mut alice = ctl
        .command(&["elect", "office", "alice"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let alice_out = lines_of(&mut alice);
    let first = alice_out
        .recv_timeout(Duration::from_secs(10))
        .expect("alice elected");
    assert!(first.starts_with("office/"), "{first}");
    let office = trestle_election::Election::observer(client.clone(), "office").unwrap();
    let leader = office.leader().await.unwrap().expect("a leader");
    assert_eq!(leader.value, b"alice");
    let mut bob = ctl
        .command(&["elect", "office", "bob"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bob_out = lines_of(&mut bob);
    assert!(
        bob_out.recv_timeout(Duration::from_millis(800)).is_err(),
        "bob waits"
    );
    interrupt(&mut alice);
    let bob_first = bob_out
        .recv_timeout(Duration::from_secs(10))
        .expect("bob elected");
    assert!(bob_first.starts_with("office/"), "{bob_first}");
    let leader = office.leader().await.unwrap().expect("a leader");
    assert_eq!(leader.value, b"bob");
    // `etcdctl elect -l` observes the current leader.
    let mut listener = ctl
        .command(&["elect", "-l", "office"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let heard = lines_of(&mut listener);
    let mut lines = Vec::new();
    while lines.len() < 2 {
        lines.push(
            heard
                .recv_timeout(Duration::from_secs(10))
                .expect("etcdctl elect -l reports"),
        );
    }
    assert_eq!(lines[1], "bob");
    let _ = listener.kill();
    let _ = listener.wait();
    interrupt(&mut bob);
    session.close().await;
}
