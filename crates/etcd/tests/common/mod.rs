//! A cluster of in-process nodes on loopback for integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use tempfile::TempDir;
use trestle_etcd::{EtcdNode, EtcdNodeConfig};
use trestle_raft::{ClusterState, NodeId};

pub use trestle_etcd::testing::free_loopback_port as free_port;

pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    pub dir: PathBuf,
}

impl Member {
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }
}

pub struct TestCluster {
    pub members: Vec<Member>,
    pub nodes: Vec<Option<EtcdNode>>,
    pub tune: fn(&mut EtcdNodeConfig),
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
/// [`trestle_etcd::testing::wait_for`]).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match trestle_etcd::testing::wait_for(what, timeout, check).await {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

impl TestCluster {
    pub async fn start(n: usize) -> Self {
        Self::start_tuned(n, |_| {}).await
    }

    pub async fn start_tuned(n: usize, tune: fn(&mut EtcdNodeConfig)) -> Self {
        init_tracing();
        let root = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("n{i}"),
                client: free_port(),
                peer: free_port(),
                dir: root.path().join(format!("n{i}")),
            })
            .collect();
        let mut cluster = Self {
            members,
            nodes: Vec::new(),
            tune,
            _root: root,
        };
        for i in 0..n {
            let node = cluster.start_node(i, ClusterState::New).await;
            cluster.nodes.push(Some(node));
        }
        cluster.wait_for_leader().await;
        cluster
    }

    pub fn config(&self, i: usize, state: ClusterState) -> EtcdNodeConfig {
        let m = &self.members[i];
        let founders = self
            .members
            .iter()
            .map(|m| (m.name.clone(), m.peer_url()))
            .collect();
        let mut config = EtcdNodeConfig::from_node(trestle_etcd::testing::loopback_node_config(
            &m.name, &m.dir, m.client, m.peer, founders,
        ));
        config.node.cluster_state = state;
        (self.tune)(&mut config);
        config
    }

    pub async fn start_node(&self, i: usize, state: ClusterState) -> EtcdNode {
        EtcdNode::start(self.config(i, state)).await.expect("node starts")
    }

    pub async fn restart(&mut self, i: usize) {
        let node = self.start_node(i, ClusterState::New).await;
        self.nodes[i] = Some(node);
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    pub fn node(&self, i: usize) -> &EtcdNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &EtcdNode)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// The index of the node every running node agrees leads the store group.
    pub async fn wait_for_leader(&self) -> usize {
        wait_for("an agreed leader", Duration::from_secs(10), || async {
            let leaders: Vec<Option<NodeId>> = self
                .running()
                .map(|(_, n)| n.store().raft().metrics().borrow_watched().current_leader)
                .collect();
            let first = leaders.first().copied().flatten()?;
            if !leaders.iter().all(|l| *l == Some(first)) {
                return None;
            }
            self.running().find(|(_, n)| n.id() == first).map(|(i, _)| i)
        })
        .await
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.running()
            .map(|(i, _)| self.members[i].client_url())
            .collect()
    }

    pub async fn client(&self, i: usize) -> etcd_client::Client {
        etcd_client::Client::connect([self.members[i].client_url()], None)
            .await
            .expect("client connects")
    }

    pub async fn any_client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), None)
            .await
            .expect("client connects")
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}
