//! `trestle local-cluster`: N `trestle serve` processes on 127.0.0.1, supervised in the foreground.
//!
//! Node `i` (from 0) uses ports `port_base + 3i` (clients), `+1` (peers) and `+2` (/health, /metrics), and keeps
//! its data and log in `<data-dir>/node<i>/` and `<data-dir>/node<i>.log`. Restarted on the same data directory,
//! the cluster comes back with all its data (the founding step is skipped once a node has data).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Options of `trestle local-cluster`.
#[derive(Debug, Args)]
pub struct LocalClusterArgs {
    /// How many nodes (1 to 9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Where the nodes keep their data and logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The first port; each node takes three consecutive ports.
    #[arg(long, default_value_t = 2379)]
    pub port_base: u16,
    /// How long to wait for a leader before giving up, in seconds.
    #[arg(long, default_value_t = 60)]
    pub startup_timeout: u64,
    /// Work queue partitions every node hosts (`trestle serve --queue-partitions`); 0: no queue service.
    #[arg(long, default_value_t = 0)]
    pub queue_partitions: u32,
}

struct Ports {
    client: u16,
    peer: u16,
    metrics: u16,
}

fn ports(base: u16, i: u16) -> Ports {
    Ports {
        client: base + 3 * i,
        peer: base + 3 * i + 1,
        metrics: base + 3 * i + 2,
    }
}

/// Asks a node's `/health` over plain HTTP/1.1; true when it answers 200 (it knows a leader).
async fn healthy(port: u16) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    let request = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut reply)).await;
    reply.starts_with(b"HTTP/1.1 200")
}

fn stop(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

/// Runs the cluster until SIGINT/SIGTERM or until a node exits on its own.
pub(crate) async fn run(args: LocalClusterArgs) -> Result<(), String> {
    if !(1..=9).contains(&args.nodes) {
        return Err(format!("--nodes {} must be between 1 and 9", args.nodes));
    }
    if u32::from(args.port_base) + 3 * u32::from(args.nodes) > u32::from(u16::MAX) {
        return Err(format!(
            "--port-base {} leaves no room for {} nodes",
            args.port_base, args.nodes
        ));
    }
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the trestle binary: {e}"))?;
    let initial_cluster: Vec<String> = (0..args.nodes)
        .map(|i| format!("node{i}=http://127.0.0.1:{}", ports(args.port_base, i).peer))
        .collect();
    let initial_cluster = initial_cluster.join(",");

    let mut children = Vec::new();
    for i in 0..args.nodes {
        let p = ports(args.port_base, i);
        let log_path = args.data_dir.join(format!("node{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let child = Command::new(&exe)
            .arg("serve")
            .args(["--name", &format!("node{i}")])
            .arg("--data-dir")
            .arg(args.data_dir.join(format!("node{i}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", p.client)])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", p.peer)])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", p.metrics),
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--queue-partitions", &args.queue_partitions.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start node{i}: {e}"))?;
        children.push(child);
    }
    eprintln!(
        "started {} nodes; logs in {}/node<i>.log",
        args.nodes,
        args.data_dir.display()
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.startup_timeout);
    loop {
        let mut all = true;
        for i in 0..args.nodes {
            all &= healthy(ports(args.port_base, i).metrics).await;
        }
        if all {
            break;
        }
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                stop(&mut children);
                return Err(format!(
                    "node{i} exited during startup ({status}); see its log in {}",
                    args.data_dir.display()
                ));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            stop(&mut children);
            return Err(format!(
                "no leader within {}s; see the logs in {}",
                args.startup_timeout,
                args.data_dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let endpoints: Vec<String> = (0..args.nodes)
        .map(|i| format!("http://127.0.0.1:{}", ports(args.port_base, i).client))
        .collect();
    println!("ETCDCTL_ENDPOINTS={}", endpoints.join(","));
    eprintln!(
        "cluster ready; try: ETCDCTL_API=3 etcdctl --endpoints={} put hello world",
        endpoints.join(",")
    );
    eprintln!("Ctrl-C stops every node");

    let exited = {
        let waits = children
            .iter_mut()
            .enumerate()
            .map(|(i, c)| Box::pin(async move { (i, c.wait().await) }));
        tokio::select! {
            () = crate::serve::wait_for_stop_signal() => None,
            ((i, status), _, _) = futures::future::select_all(waits) => Some((i, status)),
        }
    };
    stop(&mut children);
    for child in &mut children {
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    match exited {
        None => {
            eprintln!("stopped");
            Ok(())
        }
        Some((i, status)) => Err(format!(
            "node{i} exited unexpectedly ({}); stopped the others; see {}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            args.data_dir.join(format!("node{i}.log")).display()
        )),
    }
}
