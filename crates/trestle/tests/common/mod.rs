//! Real `trestle serve` processes on loopback, for tests that kill them.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use trestle_raft::testing::free_loopback_port as free_port;

pub struct ProcessCluster {
    pub root: tempfile::TempDir,
    /// Each node's (client, peer, metrics) ports.
    pub ports: Vec<(u16, u16, u16)>,
    pub children: Vec<Option<Child>>,
    /// A directory with `ca.pem`, `node.pem` and `node-key.pem`: when set, client and peer traffic use mutual TLS.
    pub tls: Option<PathBuf>,
    /// More `trestle serve` options, given to every node.
    pub extra_args: Vec<String>,
}

impl ProcessCluster {
    pub fn start(n: usize) -> Self {
        Self::start_with(n, None, Vec::new())
    }

    /// Every node also gets `args` (e.g. `--queue-partitions 3`).
    pub fn start_with_args(n: usize, args: &[&str]) -> Self {
        Self::start_with(n, None, args.iter().map(|a| (*a).to_owned()).collect())
    }

    /// Every node serves clients and peers over TLS with the certificates in `pki`, and requires client
    /// certificates on both ports (etcd's `--client-cert-auth`, `--peer-client-cert-auth`).
    pub fn start_tls(n: usize, pki: &Path) -> Self {
        Self::start_with(n, Some(pki.to_path_buf()), Vec::new())
    }

    fn start_with(n: usize, tls: Option<PathBuf>, extra_args: Vec<String>) -> Self {
        let root = tempfile::tempdir().unwrap();
        let ports = (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
        let mut cluster = Self {
            root,
            ports,
            children: Vec::new(),
            tls,
            extra_args,
        };
        for i in 0..n {
            let child = cluster.spawn(i);
            cluster.children.push(Some(child));
        }
        cluster
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node{i}"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node{i}.log"))
    }

    fn spawn(&self, i: usize) -> Child {
        let (client, peer, metrics) = self.ports[i];
        let scheme = self.scheme();
        let cluster: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(j, (_, p, _))| format!("node{j}={scheme}://127.0.0.1:{p}"))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_trestle"));
        command
            .arg("serve")
            .args(["--name", &format!("node{i}")])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &format!("{scheme}://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("{scheme}://127.0.0.1:{peer}")])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{metrics}")])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(&self.extra_args);
        if let Some(pki) = &self.tls {
            for prefix in ["", "peer-"] {
                command
                    .arg(format!("--{prefix}cert-file"))
                    .arg(pki.join("node.pem"))
                    .arg(format!("--{prefix}key-file"))
                    .arg(pki.join("node-key.pem"))
                    .arg(format!("--{prefix}trusted-ca-file"))
                    .arg(pki.join("ca.pem"))
                    // etcd's spelling: a bare flag means true.
                    .arg(format!("--{prefix}client-cert-auth"));
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("trestle starts")
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} is still running");
        self.children[i] = Some(self.spawn(i));
    }

    /// SIGKILL: no shutdown code runs; only what reached the disk survives.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Node `i`'s `/health` and `/metrics` address.
    pub fn http_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i].2)
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.ports.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.ports[i].0)
    }

    /// Waits until some node reports a leader through etcd's Status call.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for endpoint in self.endpoints() {
                if let Some(leader) = status_of(&endpoint).await.map(|s| s.leader()).filter(|l| *l != 0) {
                    return leader;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no leader within {timeout:?}; logs:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node answers a status call: after a restart, a leader needs only a quorum, and a
    /// client given every endpoint may otherwise pick one that is still starting.
    pub async fn wait_until_every_node_answers(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for endpoint in self.endpoints() {
            loop {
                if status_of(&endpoint).await.is_some() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    panic!(
                        "{endpoint} did not answer within {timeout:?}; logs:\n{}",
                        self.logs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn logs(&self) -> String {
        (0..self.ports.len())
            .map(|i| {
                let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- node{i} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill9(i);
        }
    }
}

pub fn etcdctl_path() -> &'static Path {
    let path = Path::new("/usr/bin/etcdctl");
    assert!(
        path.exists(),
        "etcdctl is missing: run scripts/bootstrap.sh (Debian package etcd-client)"
    );
    path
}

/// One node's Maintenance status, or `None` if it does not answer within half a second.
async fn status_of(endpoint: &str) -> Option<etcd_client::StatusResponse> {
    let wait = Duration::from_millis(500);
    let mut client = tokio::time::timeout(wait, etcd_client::Client::connect([endpoint], None))
        .await
        .ok()?
        .ok()?;
    tokio::time::timeout(wait, client.status()).await.ok()?.ok()
}
