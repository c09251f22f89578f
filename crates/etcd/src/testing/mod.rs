//! Helpers for tests of crates built on the etcd API (locks, elections, routers): an in-process Trestle cluster
//! on loopback ([`LocalCluster`]) and a real etcd process ([`EtcdProcess`]), so a test can run the same scenario
//! against both. trestle-raft's helpers (free ports, deadline waits) are re-exported. Enable the `testing`
//! feature in dev-dependencies only.

use std::path::PathBuf;
use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use tempfile::TempDir;
pub use trestle_raft::testing::{WaitTimedOut, free_loopback_port, loopback_node_config, wait_for};

use crate::node::{EtcdNode, EtcdNodeConfig, EtcdNodeError};

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
    nodes: Vec<Option<EtcdNode>>,
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
            let node = EtcdNode::start(cluster.config(i)).await?;
            cluster.nodes.push(Some(node));
        }
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    fn config(&self, i: usize) -> EtcdNodeConfig {
        let m = &self.members[i];
        let founders = self
            .members
            .iter()
            .map(|m| (m.name.clone(), m.peer_url()))
            .collect();
        EtcdNodeConfig::from_node(loopback_node_config(
            &m.name,
            &m.dir,
            m.client_port,
            m.peer_port,
            founders,
        ))
    }

    /// Every member's client URL, running or not (clients fail over between them).
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(LocalMember::client_url).collect()
    }

    /// The running node `i`, if it runs.
    pub fn node(&self, i: usize) -> Option<&EtcdNode> {
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
        let node = EtcdNode::start(self.config(i)).await?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// The index of the node all running nodes agree leads the store group (10 s deadline).
    pub async fn wait_for_leader(&self) -> Result<usize, LocalClusterError> {
        let leader = wait_for("an agreed leader", Duration::from_secs(10), || async {
            let mut agreed = None;
            for node in self.nodes.iter().flatten() {
                let leader = node.store().raft().metrics().borrow_watched().current_leader?;
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
    Node(#[from] EtcdNodeError),
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
