//! Helpers for tests that run real nodes on loopback (this crate's, and those of crates built on it), and the
//! conformance suite for [`GroupApp`](crate::GroupApp) implementations ([`check_group_app`]).

mod conformance;

pub use conformance::check_group_app;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::node::{ClusterState, Node, NodeConfig, NodeError};

/// A free loopback port below the kernel's ephemeral range (32768 and up on Linux), so no outgoing connection
/// of a concurrently running test can take it between this check and the node's bind. Concurrent test
/// processes start from different points of the range.
pub fn free_loopback_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed) * 13) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`. Never a fixed sleep: the wait
/// ends as soon as the condition holds (polled every 20 ms).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, WaitTimedOut>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WaitTimedOut {
                what: what.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A condition did not hold within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}")]
pub struct WaitTimedOut {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub timeout: Duration,
}

/// A founding member on 127.0.0.1 with the given ports, no metrics listener and the documented defaults otherwise:
/// the configuration every loopback test cluster starts from.
pub fn loopback_node_config(
    name: &str,
    data_dir: &std::path::Path,
    client_port: u16,
    peer_port: u16,
    initial_cluster: Vec<(String, String)>,
) -> NodeConfig {
    let mut config = NodeConfig::new(data_dir);
    config.name = name.to_owned();
    config.listen_client = ([127, 0, 0, 1], client_port).into();
    config.advertise_client_urls = vec![format!("http://127.0.0.1:{client_port}")];
    config.listen_peer = ([127, 0, 0, 1], peer_port).into();
    config.advertise_peer_url = format!("http://127.0.0.1:{peer_port}");
    config.listen_metrics = None;
    config.cluster_state = ClusterState::New;
    config.initial_cluster = initial_cluster;
    config
}

/// One member of a [`LocalCluster`].
#[derive(Debug)]
struct LocalMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

impl LocalMember {
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// A Trestle cluster of in-process nodes on loopback, in a temporary directory removed on drop. For tests of
/// crates built on the etcd API (locks, elections, routers) that want a real Raft cluster.
#[derive(Debug)]
pub struct LocalCluster {
    members: Vec<LocalMember>,
    nodes: Vec<Option<Node>>,
    _root: TempDir,
}

impl LocalCluster {
    /// Starts `n` founding members and waits (10 s deadline) until they agree on a leader.
    pub async fn start(n: usize) -> Result<Self, LocalClusterError> {
        let root = tempfile::tempdir().map_err(|e| LocalClusterError::Io(e.to_string()))?;
        let members = (0..n)
            .map(|i| LocalMember {
                name: format!("n{i}"),
                client_port: free_loopback_port(),
                peer_port: free_loopback_port(),
                dir: root.path().join(format!("n{i}")),
            })
            .collect();
        let mut cluster = Self {
            members,
            nodes: Vec::new(),
            _root: root,
        };
        for i in 0..n {
            let node = Node::start(cluster.config(i)).await?;
            cluster.nodes.push(Some(node));
        }
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    fn config(&self, i: usize) -> NodeConfig {
        let m = &self.members[i];
        let founders = self
            .members
            .iter()
            .map(|m| (m.name.clone(), m.peer_url()))
            .collect();
        loopback_node_config(&m.name, &m.dir, m.client_port, m.peer_port, founders)
    }

    /// Every member's client URL, running or not (clients fail over between them).
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(LocalMember::client_url).collect()
    }

    /// The running node `i`, if it runs.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    /// Stops node `i` (gracefully; its data stays).
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i).and_then(Option::take) {
            node.shutdown().await;
        }
    }

    /// Starts node `i` again on its data directory.
    pub async fn restart(&mut self, i: usize) -> Result<(), LocalClusterError> {
        let node = Node::start(self.config(i)).await?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// The index of the node all running nodes agree leads the store group (10 s deadline).
    pub async fn wait_for_leader(&self) -> Result<usize, LocalClusterError> {
        let leader = wait_for("an agreed leader", Duration::from_secs(10), || async {
            let mut agreed = None;
            for node in self.nodes.iter().flatten() {
                let leader = node.store().raft().metrics().borrow().current_leader?;
                if agreed.is_some_and(|a| a != leader) {
                    return None;
                }
                agreed = Some(leader);
            }
            let leader = agreed?;
            self.nodes
                .iter()
                .position(|n| n.as_ref().is_some_and(|n| n.id() == leader))
        })
        .await?;
        Ok(leader)
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// Why a [`LocalCluster`] or [`EtcdProcess`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalClusterError {
    /// A node failed to start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A condition was not reached in time.
    #[error(transparent)]
    Timeout(#[from] WaitTimedOut),
    /// A file or process operation failed.
    #[error("{0}")]
    Io(String),
}

/// A single-member etcd (the `etcd` binary on `PATH`, e.g. Debian's `etcd-server`) on loopback ports, with its
/// data in a temporary directory; killed on drop. Lets a test run the same scenario against Trestle and etcd.
#[derive(Debug)]
pub struct EtcdProcess {
    child: std::process::Child,
    client_url: String,
    _dir: TempDir,
}

impl EtcdProcess {
    /// Whether an `etcd` binary is on `PATH`.
    pub fn available() -> bool {
        std::process::Command::new("etcd")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts etcd and waits (20 s deadline) until it answers a status request.
    pub async fn start() -> Result<Self, LocalClusterError> {
        let dir = tempfile::tempdir().map_err(|e| LocalClusterError::Io(e.to_string()))?;
        let client_url = format!("http://127.0.0.1:{}", free_loopback_port());
        let peer_url = format!("http://127.0.0.1:{}", free_loopback_port());
        let log = std::fs::File::create(dir.path().join("etcd.log"))
            .map_err(|e| LocalClusterError::Io(e.to_string()))?;
        let child = std::process::Command::new("etcd")
            .arg("--name=e0")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e0={peer_url}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| LocalClusterError::Io(format!("cannot start etcd: {e}")))?;
        let process = Self {
            child,
            client_url,
            _dir: dir,
        };
        let url = process.client_url.clone();
        wait_for("etcd to answer", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let mut client = etcd_client::Client::connect([url], None).await.ok()?;
                client.status().await.ok().map(|_| ())
            }
        })
        .await?;
        Ok(process)
    }

    /// Its client URL.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
