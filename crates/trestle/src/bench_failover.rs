//! `trestle bench failover`: kill -9 (or SIGTERM, `--signal term`) the Raft leader of a running cluster (Trestle
//! or etcd, started as separate processes on this machine) while a client writes, and measure the time from the
//! signal to the first acknowledged write. The stopped member is restarted with its own command line before the
//! next round.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use etcd_client::{Client, ConnectOptions};

/// Options of `trestle bench failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Comma-separated client URLs of a cluster whose members run on this machine (`http://127.0.0.1:PORT`).
    #[arg(long, env = "ETCDCTL_ENDPOINTS")]
    pub endpoints: String,
    /// Leader kills to measure.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// A label printed with the results.
    #[arg(long, default_value = "")]
    pub label: String,
    /// How the leader is stopped: `kill` (SIGKILL, a crash) or `term` (SIGTERM, a graceful stop such as a rolling
    /// restart's: a member that hands its leadership over first costs no election timeout).
    #[arg(long, default_value = "kill", value_parser = ["kill", "term"])]
    pub signal: String,
}

/// The process listening on a loopback port, as `ss` reports it.
pub(crate) fn listener_pid(port: u16) -> Result<i32, String> {
    let output = std::process::Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .map_err(|e| format!("cannot run ss (iproute2): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| {
            format!("no process found listening on port {port} (run as the cluster's user or root)")
        })
}

/// The command line and working directory of a process, to start it again.
pub(crate) fn command_of(pid: i32) -> Result<(Vec<String>, PathBuf), String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| format!("process {pid}: {e}"))?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|e| format!("process {pid}: {e}"))?;
    if args.is_empty() {
        return Err(format!("process {pid} has no command line"));
    }
    Ok((args, cwd))
}

pub(crate) fn port_of(endpoint: &str) -> Result<u16, String> {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| format!("endpoint {endpoint} has no port"))
}

/// The endpoint of the member every endpoint names as leader, once all answer and agree.
pub(crate) async fn leader_endpoint(endpoints: &[String], deadline: Instant) -> Result<String, String> {
    loop {
        let mut leader = None;
        let mut agreed = true;
        let mut by_member = Vec::new();
        for endpoint in endpoints {
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(300))
                .with_timeout(Duration::from_millis(500));
            let status = async {
                let mut client = Client::connect([endpoint], Some(options)).await.ok()?;
                client.status().await.ok()
            }
            .await;
            match status {
                Some(status) => {
                    let member = status.header().map(|h| h.member_id());
                    by_member.push((member, endpoint.clone()));
                    if leader.is_some_and(|l| l != status.leader()) || status.leader() == 0 {
                        agreed = false;
                    }
                    leader = Some(status.leader());
                }
                None => agreed = false,
            }
        }
        if agreed
            && let Some(endpoint) = by_member
                .iter()
                .find(|(member, _)| *member == leader)
                .map(|(_, e)| e.clone())
        {
            return Ok(endpoint);
        }
        if Instant::now() >= deadline {
            return Err("the cluster did not agree on a leader within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the stopped member again with its own command line, until it stays up and answers. A process that
/// stopped gracefully may still hold its data directory's lock for a moment after its ports closed (etcd
/// does), and the new one then exits at once: it is started again.
pub(crate) async fn restart(command: &[String], cwd: &std::path::Path, endpoint: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut child = std::process::Command::new(&command[0])
            .args(&command[1..])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot restart {}: {e}", command[0]))?;
        let exited = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| format!("cannot watch {}: {e}", command[0]))?
            {
                break Some(status);
            }
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(200))
                .with_timeout(Duration::from_millis(300));
            let answers = async {
                let mut client = Client::connect([endpoint], Some(options)).await.ok()?;
                client.status().await.ok()
            }
            .await
            .is_some();
            if answers {
                break None;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the restarted member at {endpoint} did not answer within 30 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match exited {
            None => return Ok(()),
            Some(status) if Instant::now() < deadline => {
                tracing::debug!(%status, endpoint, "the restarted member exited at once; starting it again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Some(status) => {
                return Err(format!(
                    "the restarted member at {endpoint} keeps exiting ({status})"
                ));
            }
        }
    }
}

pub(crate) async fn run(args: FailoverArgs) -> Result<(), String> {
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let endpoints: Vec<String> = args.endpoints.split(',').map(|e| e.trim().to_string()).collect();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(200))
        .with_timeout(Duration::from_millis(300));
    let mut times = Vec::new();
    for round in 0..args.rounds {
        let leader = leader_endpoint(&endpoints, Instant::now() + Duration::from_secs(30)).await?;
        let pid = listener_pid(port_of(&leader)?)?;
        let (command, cwd) = command_of(pid)?;
        // Clients of the other members only: a fresh connection would otherwise wait for the dead one's timeout.
        let survivors: Vec<String> = endpoints.iter().filter(|e| **e != leader).cloned().collect();
        let mut client = Client::connect(&survivors, Some(options.clone()))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        client
            .put("trestle-bench-failover", "warm-up", None)
            .await
            .map_err(|e| format!("the cluster does not take writes before the kill: {e}"))?;
        let signal = match args.signal.as_str() {
            "term" => nix::sys::signal::Signal::SIGTERM,
            _ => nix::sys::signal::Signal::SIGKILL,
        };
        let killed = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| format!("cannot signal {pid}: {e}"))?;
        let took = loop {
            if client
                .put("trestle-bench-failover", format!("round {round}"), None)
                .await
                .is_ok()
            {
                break killed.elapsed();
            }
            if killed.elapsed() > Duration::from_secs(30) {
                return Err("no write was acknowledged within 30 s of the kill".into());
            }
        };
        times.push(took);
        // Let the stopped process exit and be reaped by whoever started it, then start it again, as it was.
        for _ in 0..500 {
            if std::fs::metadata(format!("/proc/{pid}")).is_err() || listener_pid(port_of(&leader)?).is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        restart(&command, &cwd, &leader).await?;
        println!(
            "round {round}: stopped the leader at {leader} (pid {pid}, {signal}); first acknowledged write after {took:.2?}"
        );
    }
    // Leave the cluster whole.
    leader_endpoint(&endpoints, Instant::now() + Duration::from_secs(30)).await?;
    let mut sorted = times.clone();
    sorted.sort();
    println!(
        "{label:<8} failover signal={signal} rounds={n} median={median:.2?} max={max:.2?} all={times:.2?}",
        label = args.label,
        signal = args.signal,
        n = sorted.len(),
        median = sorted[sorted.len() / 2],
        max = sorted[sorted.len() - 1],
    );
    Ok(())
}
