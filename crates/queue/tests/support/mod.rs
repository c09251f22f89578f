//! Three (or more) trestle-raft nodes on loopback, each hosting a queue's partitions and serving its gRPC API.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trestle_queue::client::{ClientConfig, QueueClient};
use trestle_queue::server::{QueueHost, QueueHostConfig};
use trestle_raft::testing::{free_loopback_port, loopback_node_config};
use trestle_raft::{ClusterState, Node, NodeConfig};

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub hosts: Vec<QueueHost>,
    pub endpoints: Vec<String>,
    founders: Vec<(String, String)>,
    config: QueueHostConfig,
    dir: tempfile::TempDir,
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

impl Cluster {
    /// Three founders hosting `config`'s partitions.
    pub async fn start(config: QueueHostConfig) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| (free_loopback_port(), free_loopback_port()))
            .collect();
        let founders: Vec<(String, String)> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| (format!("n{i}"), format!("http://127.0.0.1:{peer}")))
            .collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            hosts: Vec::new(),
            endpoints: Vec::new(),
            founders: founders.clone(),
            config,
            dir,
        };
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            let node_config = loopback_node_config(
                &format!("n{i}"),
                &cluster.dir.path().join(format!("n{i}")),
                client,
                peer,
                founders.clone(),
            );
            cluster.add(node_config).await;
        }
        cluster
    }

    /// Starts another node that joins the existing cluster (it hosts the partitions once they add it).
    pub async fn start_joiner(&mut self) -> usize {
        let i = self.nodes.len();
        let (client, peer) = (free_loopback_port(), free_loopback_port());
        let mut initial = self.founders.clone();
        initial.push((format!("n{i}"), format!("http://127.0.0.1:{peer}")));
        let mut node_config = loopback_node_config(
            &format!("n{i}"),
            &self.dir.path().join(format!("n{i}")),
            client,
            peer,
            initial,
        );
        node_config.cluster_state = ClusterState::Existing;
        self.add(node_config).await;
        i
    }

    async fn add(&mut self, node_config: NodeConfig) {
        let client = node_config.listen_client.port();
        let node = Node::start(node_config).await.expect("node starts");
        let host = QueueHost::start(&node, self.config.clone())
            .await
            .expect("partitions start");
        let mut routes = tonic::service::RoutesBuilder::default();
        routes.add_service(host.api().into_service());
        node.serve_clients(routes.routes()).expect("serving");
        self.endpoints.push(format!("http://127.0.0.1:{client}"));
        self.nodes.push(node);
        self.hosts.push(host);
    }

    pub fn client(&self) -> QueueClient {
        QueueClient::new(ClientConfig::new(self.endpoints.clone())).unwrap()
    }

    /// A client of node `i` alone.
    pub fn client_of(&self, i: usize) -> QueueClient {
        let mut config = ClientConfig::new([self.endpoints[i].clone()]);
        config.retry_for = Duration::from_secs(30);
        QueueClient::new(config).unwrap()
    }

    pub async fn stop(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}
