//! Locks and semaphores against a 3-node Trestle cluster and against etcd 3.4, including contention across OS
//! processes and a SIGKILLed holder.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, TxnOp};
use support::Backend;
use tokio::io::{AsyncBufReadExt, BufReader};
use trestle_lock::{LockError, LossReason, Mutex, Semaphore, Session, SessionOptions};

const FENCE_WIDTH: usize = 20;

fn padded(token: u64) -> String {
    format!("{token:0width$}", width = FENCE_WIDTH)
}

async fn session(client: &Client, ttl: Duration) -> Session {
    Session::with_options(client.clone(), SessionOptions::with_ttl(ttl))
        .await
        .expect("session")
}

/// One lock-protected, fenced increment of `{name}-counter`: the write applies only while we hold the lock AND
/// our token is newer than the last one the counter accepted. Returns (token, new value). Server calls are
/// retried while nodes come and go; the fence makes a retried write safe (it cannot apply twice).
async fn fenced_increment(client: &Client, lock: &Mutex, name: &str) -> (u64, i64) {
    let guard = lock.lock().await.expect("lock");
    let token = guard.fencing_token().value();
    let current = retry(|| {
        let mut kv = client.clone();
        async move { kv.get(format!("{name}-counter"), None).await }
    })
    .await;
    let value: i64 = current
        .kvs()
        .first()
        .and_then(|kv| kv.value_str().ok()?.parse().ok())
        .unwrap_or(0);
    let txn = etcd_client::Txn::new()
        .when([
            guard.ownership_compare(),
            Compare::value(format!("{name}-fence"), CompareOp::Less, padded(token)),
        ])
        .and_then([
            TxnOp::put(format!("{name}-counter"), (value + 1).to_string(), None),
            TxnOp::put(format!("{name}-fence"), padded(token), None),
        ]);
    let written = retry(|| {
        let mut kv = client.clone();
        let txn = txn.clone();
        async move { kv.txn(txn).await }
    })
    .await;
    if !written.succeeded() {
        // Only acceptable if an earlier attempt of this very write applied (its answer was lost).
        let fence = retry(|| {
            let mut kv = client.clone();
            async move { kv.get(format!("{name}-fence"), None).await }
        })
        .await;
        let fence = fence.kvs().first().map(|kv| kv.value().to_vec());
        assert_eq!(
            fence,
            Some(padded(token).into_bytes()),
            "a holder's fenced write was refused (token {token})"
        );
    }
    guard.unlock().await.expect("unlock");
    (token, value + 1)
}

/// Retries a call while the server is unavailable (a node stopped under the client), for up to 20 s.
async fn retry<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("server unavailable for 20 s: {e}"),
        }
    }
}

async fn prepare_counter(client: &Client, name: &str) {
    let mut kv = client.clone();
    kv.put(format!("{name}-counter"), "0", None).await.expect("put");
    kv.put(format!("{name}-fence"), padded(0), None)
        .await
        .expect("put");
}

/// Several processes, several tasks each, all incrementing one counter under the lock: every increment lands
/// exactly once, and ordered by fencing token the counter values run 1, 2, 3, ...
async fn contention_across_processes(backend: Backend) {
    const PROCESSES: usize = 3;
    const TASKS: usize = 3;
    const ROUNDS: usize = 4;
    let name = "contended";
    let client = backend.client().await;
    prepare_counter(&client, name).await;
    let mut children = Vec::new();
    for _ in 0..PROCESSES {
        children.push(spawn_child(
            &backend,
            "contend",
            name,
            &[("TASKS", TASKS), ("ROUNDS", ROUNDS)],
        ));
    }
    let mut results = Vec::new();
    for child in children {
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("child finishes in time")
            .expect("child runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // libtest may print its own words before ours on the same line.
        for line in stdout
            .lines()
            .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        {
            let mut parts = line.split(' ');
            let token: u64 = parts.next().and_then(|t| t.parse().ok()).expect("token");
            let value: i64 = parts.next().and_then(|t| t.parse().ok()).expect("value");
            results.push((token, value));
        }
    }
    let total = PROCESSES * TASKS * ROUNDS;
    assert_eq!(results.len(), total, "every increment reported");
    results.sort();
    let tokens: BTreeSet<u64> = results.iter().map(|(t, _)| *t).collect();
    assert_eq!(tokens.len(), total, "tokens are unique");
    let values: Vec<i64> = results.iter().map(|(_, v)| *v).collect();
    let expected: Vec<i64> = (1..=total as i64).collect();
    assert_eq!(
        values, expected,
        "ordered by token, the counter went 1, 2, 3, ... (no lost or double increment)"
    );
    support::wait_until_empty(&client, &format!("{name}/")).await;
}
on_both_backends!(contention_across_processes);

/// The holder process is killed with SIGKILL: the next waiter gets the lock within the TTL plus a small bound,
/// with a larger token.
async fn holder_killed(backend: Backend) {
    let name = "killed-holder";
    let client = backend.client().await;
    let ttl = backend.short_ttl();
    let mut child = spawn_child(&backend, "hold", name, &[("TTL", ttl.as_secs() as usize)]);
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let held_token: u64 = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("child reports")
            .expect("read")
            .expect("child alive");
        if let Some((_, token)) = line.split_once("HELD ") {
            break token.trim().parse().expect("token");
        }
    };
    let waiter_session = session(&client, Duration::from_secs(10)).await;
    let lock = Mutex::new(&waiter_session, name).expect("mutex");
    assert!(matches!(lock.try_lock().await, Err(LockError::WouldBlock { .. })));

    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    let killed_at = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill");
    let guard = lock
        .lock_timeout(ttl + Duration::from_secs(5))
        .await
        .expect("lock after the holder died");
    let waited = killed_at.elapsed();
    let _ = child.wait().await;
    println!("acquired {waited:?} after SIGKILL of the holder (TTL {ttl:?})");
    assert!(waited <= ttl + Duration::from_millis(1_500), "took {waited:?}");
    assert!(guard.fencing_token().value() > held_token);
    guard.unlock().await.expect("unlock");
    waiter_session.close().await;
}
on_both_backends!(holder_killed);

/// Dropping a pending `lock()` removes its key: the next contender is not blocked by the abandoned attempt.
async fn cancelled_lock_leaves_nothing(backend: Backend) {
    let name = "cancelled";
    let client = backend.client().await;
    let a = session(&client, Duration::from_secs(10)).await;
    let b = session(&client, Duration::from_secs(10)).await;
    let c = session(&client, Duration::from_secs(10)).await;
    let held = Mutex::new(&a, name)
        .expect("mutex")
        .lock()
        .await
        .expect("a locks");

    let b_lock = Mutex::new(&b, name).expect("mutex");
    let pending = tokio::spawn(async move { b_lock.lock().await.map(|_| ()) });
    trestle_etcd::testing::wait_for("b's key in line", Duration::from_secs(10), || async {
        (support::keys_under(&client, "cancelled/").await.len() == 2).then_some(())
    })
    .await
    .expect("b queued");
    pending.abort();
    trestle_etcd::testing::wait_for("b's key removed", Duration::from_secs(10), || async {
        (support::keys_under(&client, "cancelled/").await.len() == 1).then_some(())
    })
    .await
    .expect("b's key removed");

    // A timed-out attempt leaves nothing either.
    let c_lock = Mutex::new(&c, name).expect("mutex");
    let timed_out = c_lock.lock_timeout(Duration::from_millis(300)).await;
    assert!(
        matches!(timed_out, Err(LockError::Timeout { .. })),
        "{timed_out:?}"
    );
    trestle_etcd::testing::wait_for("c's key removed", Duration::from_secs(10), || async {
        (support::keys_under(&client, "cancelled/").await.len() == 1).then_some(())
    })
    .await
    .expect("c's key removed");

    held.unlock().await.expect("unlock");
    let next = c_lock
        .lock_timeout(Duration::from_secs(5))
        .await
        .expect("c locks at once");
    // The same key as c's abandoned attempt: its withdrawal finished before this attempt queued, so the lock is
    // really held (a late withdrawal would delete it under the guard).
    next.fenced_txn(vec![TxnOp::put("cancelled-data", "c", None)])
        .await
        .expect("c holds the lock it was granted");
    next.unlock().await.expect("unlock");
    for s in [a, b, c] {
        s.close().await;
    }
    support::wait_until_empty(&client, "cancelled/").await;
}
on_both_backends!(cancelled_lock_leaves_nothing);

/// The holder's lease is revoked behind its back: the guard's loss signal fires, its fenced writes are refused,
/// unlock reports the lock was not held, and the next contender gets the lock.
async fn session_lost_while_holding(backend: Backend) {
    let name = "lost";
    let client = backend.client().await;
    let holder_session = session(&client, Duration::from_secs(3)).await;
    let guard = Mutex::new(&holder_session, name)
        .expect("mutex")
        .lock()
        .await
        .expect("lock");
    let mut admin = client.clone();
    admin.lease_revoke(holder_session.lease()).await.expect("revoke");

    let reason = tokio::time::timeout(Duration::from_secs(5), guard.loss().lost())
        .await
        .expect("loss reported within the TTL");
    assert_eq!(reason, LossReason::NotFound);
    let write = guard
        .fenced_txn(vec![TxnOp::put("lost-data", "stale", None)])
        .await;
    assert!(matches!(write, Err(LockError::NotHeld { .. })), "{write:?}");
    assert!(matches!(guard.unlock().await, Err(LockError::NotHeld { .. })));
    let after = admin.get("lost-data", None).await.expect("get");
    assert!(after.kvs().is_empty(), "the stale write must not land");

    // A lost session cannot contend any more, and says why.
    let again = Mutex::new(&holder_session, name).expect("mutex").lock().await;
    assert!(matches!(again, Err(LockError::SessionLost { .. })), "{again:?}");

    let other = session(&client, Duration::from_secs(10)).await;
    let next = Mutex::new(&other, name)
        .expect("mutex")
        .lock_timeout(Duration::from_secs(5))
        .await
        .expect("lock");
    next.unlock().await.expect("unlock");
    other.close().await;
}
on_both_backends!(session_lost_while_holding);

/// N permits: N holders at once, the next waits until one is released; concurrent users never exceed N.
async fn semaphore_permits(backend: Backend) {
    let client = backend.client().await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session(&client, Duration::from_secs(10)).await);
    }
    let semaphores: Vec<Semaphore> = sessions
        .iter()
        .map(|s| Semaphore::new(s, "pool", 3).expect("semaphore"))
        .collect();
    let mut permits = Vec::new();
    for s in &semaphores[..3] {
        permits.push(s.acquire().await.expect("one of 3 permits"));
    }
    let fourth = semaphores[3].acquire_timeout(Duration::from_millis(500)).await;
    assert!(matches!(fourth, Err(LockError::Timeout { .. })), "{fourth:?}");
    let waiting = {
        let s = semaphores[3].clone();
        tokio::spawn(async move { s.acquire().await })
    };
    permits.remove(0).release().await.expect("release");
    let fourth = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("acquired after a release")
        .expect("task")
        .expect("permit");
    assert!(fourth.fencing_token() > permits[1].fencing_token());
    fourth.release().await.expect("release");
    for p in permits {
        p.release().await.expect("release");
    }

    // Twelve tasks, three permits: never more than three inside at once.
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let semaphore = semaphores[i % 4].clone();
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let permit = semaphore.acquire().await.expect("permit");
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Hold the permit for a moment of simulated work.
            tokio::time::sleep(Duration::from_millis(20)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            permit.release().await.expect("release");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert!(
        most.load(Ordering::SeqCst) <= 3,
        "{} inside at once",
        most.load(Ordering::SeqCst)
    );
    for s in sessions {
        s.close().await;
    }
    support::wait_until_empty(&client, "pool/").await;
}
on_both_backends!(semaphore_permits);

/// Bad input gets a typed error and leaves nothing behind.
async fn bad_input(backend: Backend) {
    let client = backend.client().await;
    let mut leases = client.clone();
    let before = leases.leases().await.expect("leases").leases().len();
    for ttl in [
        Duration::ZERO,
        Duration::from_millis(1_500),
        Duration::from_secs(100 * 24 * 3600),
    ] {
        let result = Session::with_options(client.clone(), SessionOptions::with_ttl(ttl)).await;
        assert!(matches!(result, Err(LockError::InvalidTtl { .. })), "{ttl:?}");
    }
    assert_eq!(
        leases.leases().await.expect("leases").leases().len(),
        before,
        "no lease granted"
    );
    let s = session(&client, Duration::from_secs(5)).await;
    assert!(matches!(Mutex::new(&s, ""), Err(LockError::EmptyName)));
    assert!(matches!(
        Semaphore::new(&s, "x", 0),
        Err(LockError::InvalidPermits { permits: 0 })
    ));
    assert!(matches!(Semaphore::new(&s, "", 2), Err(LockError::EmptyName)));
    // Unlocking what you no longer hold.
    let guard = Mutex::new(&s, "bad").expect("mutex").lock().await.expect("lock");
    let mut admin = client.clone();
    admin
        .delete("bad/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    assert!(matches!(guard.unlock().await, Err(LockError::NotHeld { .. })));
    s.close().await;
    assert_eq!(
        leases.leases().await.expect("leases").leases().len(),
        before,
        "session lease revoked"
    );
}
on_both_backends!(bad_input);

/// The Raft leader is stopped while tasks contend: every increment still lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_through_a_leader_failover() {
    let Backend::Trestle(mut cluster) = Backend::trestle().await else {
        unreachable!()
    };
    let name = "failover";
    let client = support::connect(&cluster.client_urls()).await;
    prepare_counter(&client, name).await;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let s = session(&client, Duration::from_secs(10)).await;
            let lock = Mutex::new(&s, name).expect("mutex");
            let mut results = Vec::new();
            for _ in 0..6 {
                results.push(fenced_increment(&client, &lock, name).await);
                done.fetch_add(1, Ordering::SeqCst);
            }
            s.close().await;
            results
        }));
    }
    trestle_etcd::testing::wait_for("some increments", Duration::from_secs(30), || async {
        (done.load(Ordering::SeqCst) >= 4).then_some(())
    })
    .await
    .expect("progress before the failover");
    let leader = cluster.wait_for_leader().await.expect("leader");
    cluster.stop(leader).await;
    let mut results = Vec::new();
    for t in tasks {
        results.extend(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("finish")
                .expect("task"),
        );
    }
    results.sort();
    let values: Vec<i64> = results.iter().map(|(_, v)| *v).collect();
    assert_eq!(values, (1..=24).collect::<Vec<i64>>());
}

/// etcd's own lock service and this crate queue in the same line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shares_locks_with_etcds_lock_service() {
    let backend = Backend::etcd().await;
    let client = backend.client().await;
    let ours = session(&client, Duration::from_secs(10)).await;
    let guard = Mutex::new(&ours, "shared")
        .expect("mutex")
        .lock()
        .await
        .expect("lock");
    let mut theirs = client.clone();
    let lease = theirs.lease_grant(10, None).await.expect("grant").id();
    let options = etcd_client::LockOptions::new().with_lease(lease);
    let blocked = tokio::time::timeout(
        Duration::from_millis(500),
        theirs.lock("shared", Some(options.clone())),
    )
    .await;
    assert!(blocked.is_err(), "etcd's lock must wait while we hold");
    let attempt = tokio::spawn(async move {
        theirs
            .lock("shared", Some(options))
            .await
            .map(|r| r.key().to_vec())
    });
    guard.unlock().await.expect("unlock");
    let key = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .expect("etcd's lock proceeds")
        .expect("task")
        .expect("lock");
    assert!(key.starts_with(b"shared/"));
    ours.close().await;
}

fn spawn_child(
    backend: &Backend,
    mode: &str,
    name: &str,
    numbers: &[(&str, usize)],
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TRESTLE_LOCK_CHILD", mode)
        .env("TRESTLE_LOCK_ENDPOINTS", backend.endpoints().join(","))
        .env("TRESTLE_LOCK_NAME", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in numbers {
        command.env(format!("TRESTLE_LOCK_{key}"), value.to_string());
    }
    command.spawn().expect("spawn child")
}

fn env_number(key: &str) -> usize {
    std::env::var(format!("TRESTLE_LOCK_{key}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Not a test: the body of the child processes the tests above start (`--ignored --exact child_process`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as a child process of the multi-process tests"]
async fn child_process() {
    let mode = std::env::var("TRESTLE_LOCK_CHILD").expect("started by a test");
    let endpoints: Vec<String> = std::env::var("TRESTLE_LOCK_ENDPOINTS")
        .expect("endpoints")
        .split(',')
        .map(str::to_owned)
        .collect();
    let name = std::env::var("TRESTLE_LOCK_NAME").expect("name");
    let client = support::connect(&endpoints).await;
    match mode.as_str() {
        "contend" => {
            let mut tasks = Vec::new();
            for _ in 0..env_number("TASKS") {
                let (client, name) = (client.clone(), name.clone());
                tasks.push(tokio::spawn(async move {
                    let s = session(&client, Duration::from_secs(10)).await;
                    let lock = Mutex::new(&s, &name).expect("mutex");
                    for _ in 0..env_number("ROUNDS") {
                        let (token, value) = fenced_increment(&client, &lock, &name).await;
                        println!("RESULT {token} {value}");
                    }
                    s.close().await;
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        }
        "hold" => {
            let s = session(&client, Duration::from_secs(env_number("TTL") as u64)).await;
            let guard = Mutex::new(&s, &name).expect("mutex").lock().await.expect("lock");
            println!("HELD {}", guard.fencing_token().value());
            std::future::pending::<()>().await;
        }
        other => panic!("unknown child mode {other}"),
    }
}
