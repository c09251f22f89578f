//! `trestle bench rolling-restart`: SIGTERM and restart each member of a running cluster in turn (Trestle or
//! etcd, started as separate processes on this machine), as a rolling update does, while clients write; then
//! check that every acknowledged write is there. Reports the longest time no write was acknowledged, the
//! slowest write, the errors, and the writes lost (which must be none).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use etcd_client::{Client, ConnectOptions, GetOptions};
use tokio::sync::Mutex;

use crate::bench_failover::{command_of, leader_endpoint, listener_pid, port_of, restart};

/// Options of `trestle bench rolling-restart`.
#[derive(Debug, Args)]
pub struct RollingRestartArgs {
    /// Comma-separated client URLs of a cluster whose members run on this machine (`http://127.0.0.1:PORT`).
    #[arg(long, env = "ETCDCTL_ENDPOINTS")]
    pub endpoints: String,
    /// Concurrent writers (each with its own connection to every member).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Milliseconds of writing before the first restart and after the last.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// A label printed with the results.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// What the writers saw.
#[derive(Debug, Default)]
struct Seen {
    /// Keys whose put was acknowledged.
    acknowledged: BTreeSet<String>,
    /// Keys whose put failed (their fate is unknown: they may or may not be there).
    failed: BTreeSet<String>,
    /// Times of every acknowledgement.
    acks: Vec<Instant>,
    slowest: Duration,
    errors: Vec<String>,
}

async fn writer(
    id: usize,
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Result<(), String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(300))
        .with_timeout(Duration::from_secs(5));
    let mut client = Client::connect(&endpoints, Some(options))
        .await
        .map_err(|e| format!("writer {id}: cannot connect: {e}"))?;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("trestle-bench-rolling/{id:03}/{seq:09}");
        seq += 1;
        let started = Instant::now();
        let result = client.put(key.as_str(), "x", None).await;
        let took = started.elapsed();
        let mut seen = seen.lock().await;
        seen.slowest = seen.slowest.max(took);
        match result {
            Ok(_) => {
                seen.acks.push(Instant::now());
                seen.acknowledged.insert(key);
            }
            Err(e) => {
                seen.errors.push(e.to_string());
                seen.failed.insert(key);
            }
        }
    }
    Ok(())
}

/// The longest time between two consecutive acknowledgements (of any writer) from `from` on.
fn longest_pause(acks: &mut [Instant], from: Instant, to: Instant) -> Duration {
    acks.sort_unstable();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for &ack in acks.iter().filter(|a| **a >= from) {
        longest = longest.max(ack.duration_since(last));
        last = ack;
    }
    longest.max(to.saturating_duration_since(last))
}

pub(crate) async fn run(args: RollingRestartArgs) -> Result<(), String> {
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let endpoints: Vec<String> = args.endpoints.split(',').map(|e| e.trim().to_string()).collect();
    leader_endpoint(&endpoints, Instant::now() + Duration::from_secs(30)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writers: Vec<_> = (0..args.clients)
        .map(|id| tokio::spawn(writer(id, endpoints.clone(), stop.clone(), seen.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;

    let started = Instant::now();
    for endpoint in &endpoints {
        let pid = listener_pid(port_of(endpoint)?)?;
        let (command, cwd) = command_of(pid)?;
        let stopped = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| format!("cannot signal {pid}: {e}"))?;
        // Wait for the process to go (its port closes), then start it again as it was and wait until the
        // cluster agrees on a leader with every member answering.
        while listener_pid(port_of(endpoint)?).is_ok() {
            if stopped.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "the member at {endpoint} did not stop within 30 s of SIGTERM"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        restart(&command, &cwd, endpoint).await?;
        leader_endpoint(&endpoints, Instant::now() + Duration::from_secs(30)).await?;
        println!(
            "restarted the member at {endpoint} (pid {pid}) in {:.2?}",
            stopped.elapsed()
        );
    }
    let finished = Instant::now();
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.map_err(|e| e.to_string())??;
    }

    // Every acknowledged key must be there.
    let mut client = Client::connect(&endpoints, None)
        .await
        .map_err(|e| format!("cannot connect to check: {e}"))?;
    let mut stored = BTreeSet::new();
    let mut from = "trestle-bench-rolling/".to_string();
    loop {
        let page = client
            .get(
                from.as_str(),
                Some(
                    GetOptions::new()
                        .with_range("trestle-bench-rolling0")
                        .with_keys_only()
                        .with_limit(10_000),
                ),
            )
            .await
            .map_err(|e| format!("cannot read the written keys back: {e}"))?;
        let keys: Vec<String> = page
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        let more = page.more();
        if let Some(last) = keys.last() {
            from = format!("{last}\0");
        }
        stored.extend(keys);
        if !more {
            break;
        }
    }
    let mut seen = seen.lock().await;
    let lost = seen.acknowledged.difference(&stored).count();
    let unknown_present = seen.failed.intersection(&stored).count();
    let pause = longest_pause(&mut seen.acks, started, finished);
    let errors: BTreeSet<&str> = seen.errors.iter().map(String::as_str).collect();
    // Leave no trace.
    client
        .delete(
            "trestle-bench-rolling/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| format!("cannot clean up: {e}"))?;
    println!(
        "{label:<8} rolling-restart members={members} clients={clients} restarts_took={took:.2?} \
         acknowledged={acked} errors={n_errors} (present anyway: {unknown_present}) lost={lost} \
         longest_pause={pause:.2?} slowest_write={slowest:.2?}",
        label = args.label,
        members = endpoints.len(),
        clients = args.clients,
        took = finished.duration_since(started),
        acked = seen.acknowledged.len(),
        n_errors = seen.errors.len(),
        slowest = seen.slowest,
    );
    if !errors.is_empty() {
        println!("{label:<8} errors seen: {errors:?}", label = args.label);
    }
    if lost > 0 {
        return Err(format!(
            "{lost} acknowledged writes are missing after the rolling restart"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_pause_counts_the_edges_of_the_window() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut acks = vec![at(50), at(10), at(300), at(320)];
        // Gaps from the window's start: 10, 40, 250, 20, then 80 to its end.
        assert_eq!(longest_pause(&mut acks, t0, at(400)), Duration::from_millis(250));
        // No acknowledgement at all: the whole window.
        assert_eq!(longest_pause(&mut [], t0, at(400)), Duration::from_millis(400));
        // Acknowledgements before the window do not count.
        let mut early = vec![at(5), at(390)];
        assert_eq!(
            longest_pause(&mut early, at(100), at(400)),
            Duration::from_millis(290)
        );
    }
}
