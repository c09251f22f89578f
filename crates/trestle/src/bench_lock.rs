//! `trestle bench lock` (acquire-release cycles per second, with N contending clients) and
//! `trestle bench election-failover` (a leader process is SIGKILLed; how long until another candidate leads).
//! Against any etcd-v3 endpoint list, so the same workload runs against Trestle and etcd.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use etcd_client::Client;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use trestle_election::Election;
use trestle_lock::{Mutex, Session, SessionOptions};

/// Options of `trestle bench lock`.
#[derive(Debug, Args)]
pub struct LockBenchArgs {
    /// Comma-separated client URLs (Trestle or etcd).
    #[arg(long, env = "ETCDCTL_ENDPOINTS")]
    pub endpoints: String,
    /// Clients contending for the one lock, each with its own session.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Acquire-release cycles in total.
    #[arg(long, default_value_t = 500)]
    pub cycles: u64,
    /// A label printed with the results.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Options of `trestle bench election-failover`.
#[derive(Debug, Args)]
pub struct FailoverBenchArgs {
    /// Comma-separated client URLs (Trestle or etcd).
    #[arg(long, env = "ETCDCTL_ENDPOINTS")]
    pub endpoints: String,
    /// Failovers to measure.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Session TTL of the candidates, in seconds (etcd raises anything under 2).
    #[arg(long, default_value_t = 2)]
    pub ttl: u64,
    /// A label printed with the results.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Options of the hidden `trestle bench election-candidate` (the process the failover bench kills).
#[derive(Debug, Args)]
pub struct CandidateArgs {
    /// Client URLs.
    #[arg(long)]
    pub endpoints: String,
    /// Election name.
    #[arg(long)]
    pub name: String,
    /// Session TTL in seconds.
    #[arg(long)]
    pub ttl: u64,
}

fn endpoints(list: &str) -> Vec<String> {
    list.split(',').map(|e| e.trim().to_string()).collect()
}

async fn connect(list: &str) -> Result<Client, String> {
    Client::connect(endpoints(list), None)
        .await
        .map_err(|e| format!("cannot connect to {list}: {e}"))
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())
}

pub(crate) async fn lock(args: LockBenchArgs) -> Result<(), String> {
    if args.clients == 0 || args.cycles == 0 {
        return Err("--clients and --cycles must be at least 1".into());
    }
    let client = connect(&args.endpoints).await?;
    let name = format!("trestle-bench-lock-{}", std::process::id());
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let merged = Arc::new(tokio::sync::Mutex::new(histogram()?));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, name, next, merged, cycles) = (
            client.clone(),
            name.clone(),
            next.clone(),
            merged.clone(),
            args.cycles,
        );
        tasks.push(tokio::spawn(async move {
            let session = Session::with_options(client, SessionOptions::with_ttl(Duration::from_secs(10)))
                .await
                .map_err(|e| e.to_string())?;
            let mutex = Mutex::new(&session, &name).map_err(|e| e.to_string())?;
            let mut local = histogram()?;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < cycles {
                let t = Instant::now();
                let guard = mutex.lock().await.map_err(|e| e.to_string())?;
                guard.unlock().await.map_err(|e| e.to_string())?;
                let _ = local.record(t.elapsed().as_micros().max(1) as u64);
            }
            merged.lock().await.add(&local).map_err(|e| e.to_string())?;
            session.close().await;
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed();
    let h = merged.lock().await;
    let us = |q: f64| Duration::from_micros(h.value_at_quantile(q));
    println!(
        "{label:<8} lock clients={clients} cycles={n} throughput={tp:.1}/s p50={p50:.2?} p99={p99:.2?} elapsed={elapsed:.2?}",
        label = args.label,
        clients = args.clients,
        n = h.len(),
        tp = h.len() as f64 / elapsed.as_secs_f64(),
        p50 = us(0.5),
        p99 = us(0.99),
    );
    Ok(())
}

pub(crate) async fn election_failover(args: FailoverBenchArgs) -> Result<(), String> {
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let client = connect(&args.endpoints).await?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for round in 0..args.rounds {
        let name = format!("trestle-bench-election-{}-{round}", std::process::id());
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "bench",
                "election-candidate",
                "--endpoints",
                &args.endpoints,
                "--name",
                &name,
            ])
            .arg(format!("--ttl={}", args.ttl))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a candidate process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
                Ok(Ok(Some(line))) if line == "LEADING" => break,
                Ok(Ok(Some(_))) => {}
                _ => return Err("the candidate process did not become leader".into()),
            }
        }
        let session = Session::with_options(
            client.clone(),
            SessionOptions::with_ttl(Duration::from_secs(args.ttl)),
        )
        .await
        .map_err(|e| e.to_string())?;
        let election = Election::new(&session, &name).map_err(|e| e.to_string())?;
        let campaign = tokio::spawn(async move { election.campaign("successor").await.map(|l| l.detach()) });
        let pid = nix::unistd::Pid::from_raw(child.id().ok_or("candidate exited")? as i32);
        let killed = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(|e| e.to_string())?;
        campaign
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let took = killed.elapsed();
        let _ = child.wait().await;
        session.close().await;
        times.push(took);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{label:<8} election-failover rounds={rounds} ttl={ttl}s median={median:.2?} max={max:.2?} all={times:.2?}",
        label = args.label,
        rounds = times.len(),
        ttl = args.ttl,
        max = times[times.len() - 1],
    );
    Ok(())
}

pub(crate) async fn candidate(args: CandidateArgs) -> Result<(), String> {
    let client = connect(&args.endpoints).await?;
    let session = Session::with_options(client, SessionOptions::with_ttl(Duration::from_secs(args.ttl)))
        .await
        .map_err(|e| e.to_string())?;
    let leadership = Election::new(&session, &args.name)
        .map_err(|e| e.to_string())?
        .campaign("doomed")
        .await
        .map_err(|e| e.to_string())?;
    println!("LEADING");
    leadership.loss().lost().await;
    Ok(())
}
