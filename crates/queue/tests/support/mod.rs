//! Three (or more) trestle-raft nodes on loopback, each hosting a queue's partitions and serving its gRPC API.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use trestle_queue::NewMessage;
use trestle_queue::client::{ClientConfig, QueueClient};
use trestle_queue::server::{QueueHost, QueueHostConfig};
use trestle_raft::WatchReceiver as _;
use trestle_raft::testing::{free_loopback_port, loopback_node_config, wait_for};
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
        let node_config = self.stop_node(i).await;
        self.add_back(i, node_config, reference).await
    }

    /// Stops node `i` (it leaves `nodes` and `hosts`; its endpoint stays) and returns its configuration.
    pub async fn stop_node(&mut self, i: usize) -> NodeConfig {
        let node = self.nodes.remove(i);
        let host = self.hosts.remove(i);
        let node_config = node.config().clone();
        drop(host);
        node.shutdown().await;
        node_config
    }

    /// Starts node `i` again on its data directory (stopped with [`Cluster::stop_node`]).
    pub async fn restart_node(&mut self, i: usize, node_config: NodeConfig) {
        let (node, host) = self.start_node(node_config).await;
        self.nodes.insert(i, node);
        self.hosts.insert(i, host);
    }

    /// The second half of [`Cluster::wipe_and_add_back`], for a node already stopped with
    /// [`Cluster::stop_node`]: its data directory is deleted, it is added back and started at index `i`.
    pub async fn add_back(&mut self, i: usize, mut node_config: NodeConfig, reference: GroupId) -> NodeId {
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
            // As etcd's MemberAdd: a member publishes its client URLs once it runs (a node on a new data
            // directory listed with them refuses to start, taking them for a member that has run).
            client_urls: Vec::new(),
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

/// The voters of `group` as node `node` sees them.
pub fn voters(cluster: &Cluster, node: usize, group: u64) -> BTreeSet<NodeId> {
    let raft = cluster.hosts[node].partitions()[&group].service().raft().clone();
    let metrics = raft.metrics().borrow_watched().clone();
    metrics.membership_config.membership().voter_ids().collect()
}

/// Sends `count` messages named `{prefix}{i}` one at a time; every one is acknowledged.
pub async fn send_acknowledged(
    client: &trestle_queue::client::QueueClient,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..count {
        let body = format!("{prefix}{i}");
        client
            .send("jobs", vec![NewMessage::new(body.clone())])
            .await
            .unwrap();
        sent.push(body);
    }
    sent
}

/// Receives until every message in `expected` came (each once: the visibility outlasts the test).
pub async fn receive_all(client: &trestle_queue::client::QueueClient, expected: &[String]) {
    let got = std::sync::Mutex::new(BTreeSet::new());
    let last_error = std::sync::Mutex::new(None::<String>);
    let missing = || {
        let got = got.lock().unwrap();
        expected
            .iter()
            .filter(|m| !got.contains(*m))
            .cloned()
            .collect::<Vec<_>>()
    };
    let done = wait_for(
        "every acknowledged message to be received",
        Duration::from_secs(30),
        || async {
            match client
                .receive(
                    "jobs",
                    100,
                    Duration::from_millis(200),
                    Some(Duration::from_secs(600)),
                )
                .await
            {
                Ok(batch) => {
                    let mut got = got.lock().unwrap();
                    got.extend(batch.into_iter().map(|d| String::from_utf8(d.payload).unwrap()));
                }
                Err(e) => *last_error.lock().unwrap() = Some(e.to_string()),
            }
            missing().is_empty().then_some(())
        },
    )
    .await;
    assert!(
        done.is_ok(),
        "acknowledged messages not received within 30 s (lost, or the queue unavailable: last receive error {:?}): \
         {:?}",
        last_error.lock().unwrap(),
        missing()
    );
}

/// No group of any node has stopped on a fatal error (openraft's "follower log reversion" among them).
pub async fn no_group_stopped(cluster: &Cluster) {
    for node in &cluster.nodes {
        let stopped = tokio::time::timeout(Duration::ZERO, node.fatal_error()).await;
        assert!(
            stopped.is_err(),
            "a group of node {} stopped: {stopped:?}",
            node.id()
        );
    }
}

/// After node 2 was replaced by the member `new_id`: waits until every partition of `partitions` has nodes 0, 1 and
/// `new_id` as its voters on every node (and not the old member), then stops node 0, so that the quorum is node 1
/// and the replacement, and receives every message of `sent` through them. Stops the cluster.
pub async fn the_replacement_holds_everything(
    mut cluster: Cluster,
    partitions: &[GroupId],
    new_id: NodeId,
    sent: &[String],
) {
    let expected: BTreeSet<NodeId> = [cluster.nodes[0].id(), cluster.nodes[1].id(), new_id].into();
    wait_for(
        "every partition to have the new member as a voter, and not the old one",
        Duration::from_secs(30),
        || async {
            partitions
                .iter()
                .all(|g| (0..3).all(|n| voters(&cluster, n, *g) == expected))
                .then_some(())
        },
    )
    .await
    .unwrap();
    no_group_stopped(&cluster).await;
    cluster.stop_node(0).await;
    cluster.endpoints.remove(0);
    receive_all(&cluster.client(), sent).await;
    no_group_stopped(&cluster).await;
    cluster.stop().await;
}
