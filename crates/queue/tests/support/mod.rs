//! Three (or more) trestle-raft nodes on loopback, each hosting a queue's partitions and serving its gRPC API.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trestle_queue::client::{ClientConfig, QueueClient};
use trestle_queue::server::{QueueHost, QueueHostConfig};
use trestle_raft::testing::{free_loopback_port, loopback_node_config};
use trestle_raft::{ClusterState, GroupId, MemberChange, Node, NodeConfig, NodeId, PeerNode};

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

    /// Adds another node to `reference`'s membership as a learner (as an operator's MemberAdd would) and starts
    /// it to join the existing cluster (it hosts the partitions once they add it). Returns its index.
    pub async fn start_joiner(&mut self, reference: GroupId) -> usize {
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
        node_config.membership_group = reference;
        self.member_add(0, reference, &node_config, true).await;
        let (node, host) = self.start_node(node_config).await;
        self.endpoints.push(format!("http://127.0.0.1:{client}"));
        self.nodes.push(node);
        self.hosts.push(host);
        i
    }

    /// What an operator does to replace a member's disk: stops node `i` (already removed from `reference`'s
    /// membership), deletes its data directory, adds it back to `reference` as a voter at the same peer URL, and
    /// starts it empty to join the existing cluster. Returns the id it joined with.
    pub async fn wipe_and_add_back(&mut self, i: usize, reference: GroupId) -> NodeId {
        let node = self.nodes.remove(i);
        let host = self.hosts.remove(i);
        let mut node_config = node.config().clone();
        drop(host);
        node.shutdown().await;
        std::fs::remove_dir_all(&node_config.data_dir).unwrap();
        node_config.initial_cluster = self.founders.clone();
        node_config.cluster_state = ClusterState::Existing;
        node_config.membership_group = reference;
        self.member_add(0, reference, &node_config, false).await;
        let (node, host) = self.start_node(node_config).await;
        let id = node.id();
        self.nodes.insert(i, node);
        self.hosts.insert(i, host);
        id
    }

    /// MemberAdd of `node_config`'s node to `reference`, through node `via`.
    async fn member_add(&self, via: usize, reference: GroupId, node_config: &NodeConfig, learner: bool) {
        let service = self.hosts[via].partitions()[&reference].service().clone();
        let node = PeerNode {
            name: node_config.name.clone(),
            peer_url: node_config.advertise_peer_url.clone(),
            client_urls: node_config.advertise_client_urls.clone(),
        };
        service
            .change_member(MemberChange::Add { node, learner })
            .await
            .expect("member added");
    }

    async fn add(&mut self, node_config: NodeConfig) {
        let client = node_config.listen_client.port();
        let (node, host) = self.start_node(node_config).await;
        self.endpoints.push(format!("http://127.0.0.1:{client}"));
        self.nodes.push(node);
        self.hosts.push(host);
    }

    async fn start_node(&self, node_config: NodeConfig) -> (Node, QueueHost) {
        let node = Node::start(node_config).await.expect("node starts");
        let host = QueueHost::start(&node, self.config.clone())
            .await
            .expect("partitions start");
        let mut routes = tonic::service::RoutesBuilder::default();
        routes.add_service(host.api().into_service());
        node.serve_clients(routes.routes()).expect("serving");
        (node, host)
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
