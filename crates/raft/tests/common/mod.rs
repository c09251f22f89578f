//! A cluster of in-process host nodes on loopback for integration tests: nodes with no group until a test
//! starts its services on them.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use trestle_raft::{MemoryStorage, Node, NodeConfig, NodeStorage};

pub use trestle_raft::testing::free_loopback_port as free_port;

pub struct Member {
    /// The member's storage when it runs in memory (kept across its restarts).
    pub memory: Option<MemoryStorage>,
    pub name: String,
    pub client: u16,
    pub peer: u16,
    pub dir: PathBuf,
}

impl Member {
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }
}

pub struct TestCluster {
    pub members: Vec<Member>,
    pub nodes: Vec<Option<Node>>,
    _root: TempDir,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout` (see
/// [`trestle_raft::testing::wait_for`]).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match trestle_raft::testing::wait_for(what, timeout, check).await {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

impl TestCluster {
    /// Starts `n` founding members (host nodes, no group yet) on RocksDB.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, false).await
    }

    /// Starts `n` founding members with their Raft state in memory.
    pub async fn start_in_memory(n: usize) -> Self {
        Self::start_with(n, true).await
    }

    async fn start_with(n: usize, in_memory: bool) -> Self {
        init_tracing();
        let root = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                memory: in_memory.then(MemoryStorage::new),
                name: format!("n{i}"),
                client: free_port(),
                peer: free_port(),
                dir: root.path().join(format!("n{i}")),
            })
            .collect();
        let mut cluster = Self {
            members,
            nodes: Vec::new(),
            _root: root,
        };
        for i in 0..n {
            let node = cluster.start_node(i).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    pub fn config(&self, i: usize) -> NodeConfig {
        let m = &self.members[i];
        let founders = self
            .members
            .iter()
            .map(|m| (m.name.clone(), m.peer_url()))
            .collect();
        let mut config =
            trestle_raft::testing::loopback_node_config(&m.name, &m.dir, m.client, m.peer, founders);
        if let Some(memory) = &m.memory {
            config.storage = NodeStorage::Memory(memory.clone());
        }
        config
    }

    pub async fn start_node(&self, i: usize) -> Node {
        Node::start(self.config(i)).await.expect("node starts")
    }

    pub async fn restart(&mut self, i: usize) {
        let node = self.start_node(i).await;
        self.nodes[i] = Some(node);
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}
