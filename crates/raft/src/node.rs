//! One node of the host: its RocksDB, its Raft groups, and its three listeners (clients, peers, health and
//! metrics). Which services run on it, and what its client port serves, is the application's choice.

use openraft::async_runtime::WatchReceiver as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use openraft::ServerState;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{Instrument, info, info_span, warn};

use crate::group::{GroupRegistry, StartGroupError, start_group};
use crate::log_store::open_db;
use crate::network::{PeerChannels, PeerService};
use crate::replicated::{MemberChange, Replicated, ReplicatedSettings, Service};
use crate::state_machine::GroupApp;
use crate::storage::{GroupStorage, NodeStorage};
use crate::tls::{TlsError, TlsFiles};
use crate::transport::{Listener, NodeNetwork};
use crate::types::{GroupId, NodeId, PeerNode, Raft, node_id_for};

/// Whether a node founds a new cluster or joins an existing one (etcd's `--initial-cluster-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    /// Found the cluster listed in `initial_cluster` (ignored once the node has data).
    #[default]
    New,
    /// Join a cluster that already added this node (`MemberAdd`); wait for its leader. A node whose data
    /// directory is new asks the members in `initial_cluster` for the id the cluster gave its peer URL (see
    /// [`NodeConfig::membership_group`]).
    Existing,
}

/// Raft timing and snapshot settings, applied to every group of the node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RaftSettings {
    /// Leader heartbeat interval. Default 50 ms.
    pub heartbeat_interval: Duration,
    /// Election timeout range. Default 100–200 ms. openraft adds a leader lease of the range's maximum for
    /// followers that saw a committed leader, so they campaign after 300–400 ms without heartbeats (6–8 missed
    /// heartbeats). A graceful stop hands leadership over instead (see [`Node::shutdown`]).
    pub election_timeout: (Duration, Duration),
    /// Take a snapshot after this many applied entries since the last one, plus a fixed per-node offset of up to
    /// half of it (see [`staggered_snapshot_interval`]). Default 10 000.
    pub snapshot_every: u64,
    /// Entries kept after a snapshot so slow followers catch up from the log, not a snapshot. Default 1 000.
    pub keep_after_snapshot: u64,
    /// Size of one snapshot chunk sent to a follower. Default 1 MiB.
    pub snapshot_chunk_bytes: u64,
    /// Time allowed for each chunk of a snapshot stream (a stream of n chunks gets n times this). Default 10 s.
    pub snapshot_chunk_timeout: Duration,
    /// Most entries in one AppendEntries. Default 64 (openraft's 300). openraft gives every AppendEntries one
    /// request timeout, including the follower's write, so the transport also caps each one at 1 MiB of entries
    /// (sending the rest next): a follower catching up on large values makes progress instead of timing out on
    /// the same batch forever.
    pub max_payload_entries: u64,
}

/// One node's snapshot interval: `every` plus an offset in `[0, every / 2)` fixed by the node id.
///
/// Members of a group apply the same entries, so with one interval they all serialize and write their whole
/// state at the same moment. Measured on 3 nodes sharing 2 cores and a disk: three 160 MB snapshots at once
/// stalled the Raft log for long enough that a follower campaigned and deposed the leader. Staggered, a snapshot
/// costs one member at a time while the others keep the quorum.
pub fn staggered_snapshot_interval(every: u64, node_id: NodeId) -> u64 {
    let spread = every / 2;
    if spread == 0 {
        return every;
    }
    // splitmix64's finalizer: ids that differ in a few bits (as in tests) still land far apart.
    let mut x = node_id;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    every.saturating_add(x % spread)
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(100), Duration::from_millis(200)),
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_chunk_timeout: Duration::from_secs(10),
            max_payload_entries: 64,
        }
    }
}

/// Everything one node needs to start. Build it, adjust fields, call [`NodeConfig::validate`] (done by
/// [`Node::start`] too).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Human-readable member name (etcd `--name`). Default `default`.
    pub name: String,
    /// Where the node keeps its data. Required.
    pub data_dir: PathBuf,
    /// Address the node's client-facing gRPC services listen on ([`Node::serve_clients`]). Default
    /// 127.0.0.1:2379.
    pub listen_client: SocketAddr,
    /// Client URLs announced to the cluster. Default: `http://` + `listen_client`.
    pub advertise_client_urls: Vec<String>,
    /// Address the Raft peer API listens on. Default 127.0.0.1:2380.
    pub listen_peer: SocketAddr,
    /// Peer URL announced to the cluster: a founder's id derives from it, a joining node is found by it.
    /// Default: `http://` + `listen_peer`.
    pub advertise_peer_url: String,
    /// Address of `/health` and `/metrics`; `None` to serve none. Default 127.0.0.1:2381.
    pub listen_metrics: Option<SocketAddr>,
    /// What `/metrics` answers with. The node records through the `metrics` facade and installs no recorder
    /// itself (that is the application's choice, once per process); give the installed recorder's renderer
    /// here, e.g. a `metrics-exporter-prometheus` handle's `render`. Default none: `/metrics` answers 404.
    pub metrics: Option<MetricsRenderer>,
    /// The founding members, `(name, peer URL)`, when `cluster_state` is `New`. Default: this node alone.
    pub initial_cluster: Vec<(String, String)>,
    /// New or existing cluster.
    pub cluster_state: ClusterState,
    /// The group whose membership is the cluster's: a node joining an existing cluster with a new data directory
    /// looks its id up there, by its peer URL, asking the group's leader. Default 0 (the coordination store's).
    pub membership_group: GroupId,
    /// How long a node joining an existing cluster with a new data directory keeps asking for its id before it
    /// gives up ([`NodeError::Join`]). Default 30 s.
    pub join_timeout: Duration,
    /// Raft settings.
    pub raft: RaftSettings,
    /// Where the Raft logs, votes and snapshots live. Default: RocksDB and files under `data_dir`.
    pub storage: NodeStorage,
    /// How the node listens and reaches its peers. Default: TCP.
    pub network: NodeNetwork,
    /// TLS for the client listener (etcd's `--cert-file`, ...). Default none: plain HTTP/2.
    pub client_tls: Option<TlsFiles>,
    /// TLS for the peer listener and for connections to peers (etcd's `--peer-cert-file`, ...); set
    /// `client_cert_auth` for mutual TLS between members. Default none. Peer URLs must then be `https://`.
    pub peer_tls: Option<TlsFiles>,
}

impl NodeConfig {
    /// A configuration with the documented defaults and the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let listen_client: SocketAddr = ([127, 0, 0, 1], 2379).into();
        let listen_peer: SocketAddr = ([127, 0, 0, 1], 2380).into();
        Self {
            name: "default".into(),
            data_dir: data_dir.into(),
            listen_client,
            advertise_client_urls: vec![format!("http://{listen_client}")],
            listen_peer,
            advertise_peer_url: format!("http://{listen_peer}"),
            listen_metrics: Some(([127, 0, 0, 1], 2381).into()),
            metrics: None,
            initial_cluster: Vec::new(),
            cluster_state: ClusterState::New,
            membership_group: 0,
            join_timeout: Duration::from_secs(30),
            raft: RaftSettings::default(),
            storage: NodeStorage::Disk,
            network: NodeNetwork::Tcp,
            client_tls: None,
            peer_tls: None,
        }
    }

    /// Checks the configuration; the error names the offending value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (min, max) = self.raft.election_timeout;
        if min >= max || min <= self.raft.heartbeat_interval {
            return Err(ConfigError::ElectionTimeout {
                min,
                max,
                heartbeat: self.raft.heartbeat_interval,
            });
        }
        for url in std::iter::once(&self.advertise_peer_url)
            .chain(&self.advertise_client_urls)
            .chain(self.initial_cluster.iter().map(|(_, u)| u))
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::BadUrl { url: url.clone() });
            }
        }
        if !self.initial_cluster.is_empty()
            && !self
                .initial_cluster
                .iter()
                .any(|(_, url)| node_id_for(url) == node_id_for(&self.advertise_peer_url))
        {
            return Err(ConfigError::NotInInitialCluster {
                peer_url: self.advertise_peer_url.clone(),
            });
        }
        let peer_scheme = if self.peer_tls.is_some() { "https" } else { "http" };
        for url in
            std::iter::once(&self.advertise_peer_url).chain(self.initial_cluster.iter().map(|(_, u)| u))
        {
            if !url.starts_with(&format!("{peer_scheme}://")) {
                return Err(ConfigError::Tls(TlsError::Scheme {
                    url: url.clone(),
                    expected: peer_scheme,
                }));
            }
        }
        for tls in self.client_tls.iter().chain(&self.peer_tls) {
            tls.validate()?;
        }
        if matches!(self.network, NodeNetwork::Custom { .. }) {
            let tcp_only = if self.client_tls.is_some() || self.peer_tls.is_some() {
                Some("TLS")
            } else if self.listen_metrics.is_some() {
                Some("the /health and /metrics listener (set listen_metrics to None)")
            } else {
                None
            };
            if let Some(what) = tcp_only {
                return Err(ConfigError::NeedsTcp { what });
            }
        }
        Ok(())
    }

    /// The id a founder with this configuration gets when its data directory is new (derived from its advertised
    /// peer URL). A node that joins an existing cluster gets the id `MemberAdd` gave it instead, and every node
    /// keeps the id its data directory was created with ([`Node::id`]).
    pub fn node_id(&self) -> NodeId {
        node_id_for(&self.advertise_peer_url)
    }

    /// The founding members, `(name, peer URL)`: `initial_cluster`, or this node alone when it is empty.
    pub fn founders(&self) -> Vec<(String, String)> {
        if self.initial_cluster.is_empty() {
            vec![(self.name.clone(), self.advertise_peer_url.clone())]
        } else {
            self.initial_cluster.clone()
        }
    }

    /// The founders' first membership, as every founder writes it alike: names and peer URLs only. Client URLs
    /// differ in what each founder knows at start, so they are published afterwards, through Raft.
    fn founding_membership(&self) -> std::collections::BTreeMap<NodeId, PeerNode> {
        self.founders()
            .into_iter()
            .map(|(name, url)| {
                (
                    node_id_for(&url),
                    PeerNode {
                        name,
                        peer_url: url,
                        client_urls: Vec::new(),
                    },
                )
            })
            .collect()
    }
}

/// A configuration the node refuses to start with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The election timeout range is empty or not above the heartbeat interval.
    #[error(
        "election timeout {min:?}..{max:?} must be a non-empty range above the heartbeat interval {heartbeat:?}"
    )]
    ElectionTimeout {
        /// Lower bound.
        min: Duration,
        /// Upper bound.
        max: Duration,
        /// Heartbeat interval.
        heartbeat: Duration,
    },
    /// A URL without an http:// or https:// scheme.
    #[error("URL {url:?} must start with http:// or https://")]
    BadUrl {
        /// The URL.
        url: String,
    },
    /// The initial cluster does not list this node's advertised peer URL.
    #[error("the initial cluster does not list this node's peer URL {peer_url}")]
    NotInInitialCluster {
        /// The node's peer URL.
        peer_url: String,
    },
    /// A TLS setting cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// openraft refused the Raft settings.
    #[error("Raft settings refused: {message}")]
    Raft {
        /// What openraft said.
        message: String,
    },
    /// A custom network was given with something only TCP provides.
    #[error("a custom network cannot serve {what}")]
    NeedsTcp {
        /// What needs TCP.
        what: &'static str,
    },
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The data directory could not be created or opened.
    #[error("data directory {path}: {message}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The node's storage is damaged: it must not take part as the member it was (see
    /// [`verify_storage`](crate::verify_storage)).
    #[error(
        "the data directory {path} is damaged, so this member must not rejoin with it: {damage}. Replace the \
         member: remove it (etcdctl member remove ID, from a healthy member), move this directory aside, add it \
         back (etcdctl member add NAME --peer-urls URL) and start it with --initial-cluster-state existing on an \
         empty directory; it receives everything from the others"
    )]
    StorageDamaged {
        /// The database directory.
        path: PathBuf,
        /// What is damaged.
        damage: crate::integrity::Damage,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A Raft group failed to start.
    #[error(transparent)]
    Group(#[from] StartGroupError),
    /// A service's settings are invalid.
    #[error("invalid service settings for group {group}: {source}")]
    ServiceSettings {
        /// The group.
        group: GroupId,
        /// What is wrong.
        source: crate::replicated::ReplicatedSettingsError,
    },
    /// A node joining an existing cluster with a new data directory could not learn its id: no leader of the
    /// membership group answered, or none lists its peer URL (it was not added with `MemberAdd`).
    #[error("joining an existing cluster as {peer_url}: {reason}")]
    Join {
        /// The node's advertised peer URL.
        peer_url: String,
        /// What the members answered last.
        reason: String,
    },
    /// A node started on a new data directory, but the cluster already lists its peer URL as a member that has
    /// run: its data was lost or moved. Started empty it could vote for a member missing acknowledged writes.
    #[error(
        "the data directory is new, but member {id:x} at {peer_url} has already run in this cluster (the leader at \
         {asked} lists its client URLs): its data was lost or moved. Restore the data directory, or replace the \
         member: remove it (etcdctl member remove {id:x}), add it back (etcdctl member add) and start it with \
         --initial-cluster-state existing"
    )]
    AlreadyBootstrapped {
        /// The node's advertised peer URL.
        peer_url: String,
        /// The member's id in the cluster.
        id: NodeId,
        /// The member whose leader answered.
        asked: String,
    },
    /// [`Node::serve_clients`] was called a second time: the client port serves one set of routes.
    #[error("the client port {addr} is already serving")]
    ClientsAlreadyServed {
        /// The client address.
        addr: SocketAddr,
    },
}

/// Renders the process's metrics in the Prometheus text format for a node's `/metrics`
/// ([`NodeConfig::metrics`]). Cheap to clone.
#[derive(Clone)]
pub struct MetricsRenderer(Arc<dyn Fn() -> String + Send + Sync>);

impl MetricsRenderer {
    /// A renderer calling `render` for each scrape.
    pub fn new(render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self(Arc::new(render))
    }

    /// The current metrics.
    pub fn render(&self) -> String {
        (self.0)()
    }
}

impl std::fmt::Debug for MetricsRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRenderer")
    }
}

/// A running node: the host of Raft groups. Dropping it does not stop it: call [`Node::shutdown`].
///
/// Starting one opens its database and serves the peer port (every group's Raft traffic) and `/health` and
/// `/metrics`; it hosts no group yet. The application then starts its services ([`Node::start_service`]),
/// founds their groups on a new cluster ([`Node::found_group`]) and serves its client API on the client port
/// ([`Node::serve_clients`]).
pub struct Node {
    config: NodeConfig,
    node_id: NodeId,
    storage: GroupStorage,
    /// Handles on the database the node holds itself (its storage's): shutdown waits for the others to go.
    db_handles_at_rest: usize,
    channels: PeerChannels,
    raft_config: Arc<openraft::Config>,
    groups: GroupRegistry,
    shutdown: CancellationToken,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    client_listener: parking_lot::Mutex<Option<Listener>>,
    client_server: parking_lot::Mutex<Option<Server>>,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Damage the background scrub found.
    damage: tokio::sync::watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.node_id)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// A server builder, with TLS when configured. A rejected TLS configuration fails the start: never fall back
/// to plain text.
fn server_builder(tls: Option<tonic::transport::ServerTlsConfig>) -> Result<Server, ConfigError> {
    let builder = Server::builder().tcp_nodelay(true);
    match tls {
        None => Ok(builder),
        Some(tls) => builder.tls_config(tls).map_err(|e| {
            ConfigError::Tls(TlsError::Rejected {
                message: e.to_string(),
            })
        }),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })
}

/// Binds a node port on `network`; returns the listener and the address bound.
async fn bind_port(network: &NodeNetwork, addr: SocketAddr) -> Result<(Listener, SocketAddr), NodeError> {
    match network {
        NodeNetwork::Tcp => {
            let listener = bind(addr).await?;
            let bound = listener
                .local_addr()
                .map_err(|source| NodeError::Bind { addr, source })?;
            Ok((Listener::Tcp(listener), bound))
        }
        NodeNetwork::Custom { listen, .. } => {
            let (bound, incoming) = listen(addr)
                .await
                .map_err(|source| NodeError::Bind { addr, source })?;
            Ok((Listener::Custom(incoming), bound))
        }
    }
}

/// openraft's configuration for every group of a node.
fn openraft_config(config: &NodeConfig, node_id: NodeId) -> Result<openraft::Config, ConfigError> {
    openraft::Config {
        cluster_name: "trestle".into(),
        heartbeat_interval: config.raft.heartbeat_interval.as_millis() as u64,
        election_timeout_min: config.raft.election_timeout.0.as_millis() as u64,
        election_timeout_max: config.raft.election_timeout.1.as_millis() as u64,
        install_snapshot_timeout: config.raft.snapshot_chunk_timeout.as_millis() as u64,
        snapshot_max_chunk_size: config.raft.snapshot_chunk_bytes,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(staggered_snapshot_interval(
            config.raft.snapshot_every,
            node_id,
        )),
        max_in_snapshot_log_to_keep: config.raft.keep_after_snapshot,
        max_payload_entries: config.raft.max_payload_entries,
        // A node that was cut off, paused or restarted asks whether it could win before it raises its term,
        // so it cannot depose a leader the rest of the group still follows.
        enable_pre_vote: Some(true),
        // Replicate entries as soon as they are written, while the leader's own fsync runs.
        broadcast_submitted_on_append: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| ConfigError::Raft {
        message: e.to_string(),
    })
}

impl Node {
    /// Opens the data directory and serves the peer port and the health and metrics endpoints. The client port
    /// is bound (so a taken port fails the start) and serves once [`Node::serve_clients`] is called.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        config.validate()?;
        let (storage, recorded_id) = match &config.storage {
            NodeStorage::Disk => {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::DataDir {
                    path: config.data_dir.clone(),
                    message: e.to_string(),
                })?;
                let db_path = config.data_dir.join("db");
                let db = open_db(&db_path).map_err(|e| match e.kind() {
                    rocksdb::ErrorKind::Corruption => NodeError::StorageDamaged {
                        path: db_path.clone(),
                        damage: crate::integrity::Damage::Database {
                            detail: e.into_string(),
                        },
                    },
                    _ => NodeError::DataDir {
                        path: db_path.clone(),
                        message: e.to_string(),
                    },
                })?;
                let started = std::time::Instant::now();
                // Reads every group's log: off the runtime's threads.
                let checked = db.clone();
                let verified = tokio::task::spawn_blocking(move || crate::integrity::verify(&checked))
                    .await
                    .map_err(|e| NodeError::DataDir {
                        path: db_path.clone(),
                        message: format!("checking the storage: {e}"),
                    })?
                    .map_err(|damage| NodeError::StorageDamaged {
                        path: db_path.clone(),
                        damage,
                    })?;
                info!(
                    groups = verified.groups,
                    entries = verified.entries,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "storage checked"
                );
                let data_dir_error = |e: std::io::Error| NodeError::DataDir {
                    path: db_path.clone(),
                    message: e.to_string(),
                };
                let mut recorded = crate::log_store::recorded_node_id(&db).map_err(data_dir_error)?;
                if recorded.is_none() && crate::log_store::holds_raft_state(&db).map_err(data_dir_error)? {
                    // Written by a version that derived every id from the peer URL and did not record it.
                    recorded = Some(config.node_id());
                }
                let storage = GroupStorage::rocksdb(db).map_err(|e| NodeError::DataDir {
                    path: config.data_dir.clone(),
                    message: format!("starting the WAL sync thread: {e}"),
                })?;
                (storage, recorded)
            }
            NodeStorage::Memory(memory) => (GroupStorage::memory(memory.clone()), None),
        };
        let peer_client_tls = match &config.peer_tls {
            Some(tls) => Some(tls.peer_client_config().map_err(ConfigError::from)?),
            None => None,
        };
        let channels = match &config.network {
            NodeNetwork::Tcp => PeerChannels::new(peer_client_tls),
            NodeNetwork::Custom { connect, .. } => {
                let connect = connect.clone();
                PeerChannels::with_connect(move |endpoint| connect(endpoint))
            }
        };
        // The id is chosen once, when the data directory is new, and kept: a member whose URL changes
        // (MemberUpdate, then a restart on the new URL) stays the same member. A founder derives it from its peer
        // URL; a node joining an existing cluster takes the one MemberAdd gave it, which is new on every add.
        let node_id = match recorded_id {
            Some(id) => id,
            None => {
                let id = match config.cluster_state {
                    ClusterState::New => {
                        // A new directory on disk (in-memory storage has no such thing: it is new on every
                        // start, and a simulation keeps it across a node's restarts).
                        if matches!(config.storage, NodeStorage::Disk) {
                            crate::join::refuse_if_bootstrapped(&config, &channels).await?;
                        }
                        config.node_id()
                    }
                    ClusterState::Existing => crate::join::own_id_from_cluster(&config, &channels).await?,
                };
                if let GroupStorage::RocksDb { db, .. } = &storage {
                    crate::log_store::record_node_id(db, id).map_err(|e| NodeError::DataDir {
                        path: config.data_dir.join("db"),
                        message: e.to_string(),
                    })?;
                }
                id
            }
        };
        let span = info_span!("node", id = node_id, name = %config.name);
        async move {
            let db_handles_at_rest = match &storage {
                GroupStorage::RocksDb { db, .. } => Arc::strong_count(db),
                _ => 0,
            };
            let raft_config = Arc::new(openraft_config(&config, node_id)?);

            let (peer_listener, peer_addr) = bind_port(&config.network, config.listen_peer).await?;
            let (client_listener, client_addr) = bind_port(&config.network, config.listen_client).await?;
            let metrics_listener = match config.listen_metrics {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            };
            let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

            let groups = GroupRegistry::default();
            let shutdown = CancellationToken::new();
            let mut tasks = Vec::new();

            let peer_server = server_builder(match &config.peer_tls {
                Some(tls) => Some(tls.server_config().map_err(ConfigError::from)?),
                None => None,
            })?;
            let client_server = server_builder(match &config.client_tls {
                Some(tls) => Some(tls.server_config().map_err(ConfigError::from)?),
                None => None,
            })?;

            let peer_routes = tonic::service::Routes::new(
                PeerService::new(node_id, groups.clone(), storage.snapshots()).into_server(),
            );
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = peer_listener.serve(peer_server, peer_routes, token).await {
                    warn!(error = %e, "peer server stopped");
                }
            }));
            if let Some(listener) = metrics_listener {
                tasks.push(spawn_http(
                    listener,
                    groups.clone(),
                    config.metrics.clone(),
                    node_id,
                    shutdown.clone(),
                ));
            }
            tasks.push(spawn_raft_gauges(groups.clone(), shutdown.clone()));
            let (damage_found, damage) = tokio::sync::watch::channel(None);
            if let GroupStorage::RocksDb { db, .. } = &storage {
                tasks.push(spawn_scrub(db.clone(), shutdown.clone(), damage_found));
            }

            info!(%client_addr, %peer_addr, ?metrics_addr, "node started");
            Ok(Self {
                config,
                node_id,
                storage,
                db_handles_at_rest,
                channels,
                raft_config,
                groups,
                shutdown,
                tasks: parking_lot::Mutex::new(tasks),
                client_listener: parking_lot::Mutex::new(Some(client_listener)),
                client_server: parking_lot::Mutex::new(Some(client_server)),
                client_addr,
                peer_addr,
                metrics_addr,
                damage,
            })
        }
        .instrument(span)
        .await
    }

    /// Serves `routes` on the client port (with the client TLS when configured) until the node shuts down.
    /// Called once, after the services behind the routes have started.
    pub fn serve_clients(&self, routes: tonic::service::Routes) -> Result<(), NodeError> {
        let (Some(listener), Some(server)) = (
            self.client_listener.lock().take(),
            self.client_server.lock().take(),
        ) else {
            return Err(NodeError::ClientsAlreadyServed {
                addr: self.client_addr,
            });
        };
        let token = self.shutdown.clone();
        let span = info_span!("node", id = self.node_id, name = %self.config.name);
        self.tasks.lock().push(tokio::spawn(
            async move {
                if let Err(e) = listener.serve(server, routes, token).await {
                    warn!(error = %e, "client server stopped");
                }
            }
            .instrument(span),
        ));
        Ok(())
    }

    /// Founds `raft`'s group on a new cluster: when this node was started with [`ClusterState::New`] and the
    /// group has no state yet, it initializes the group with the founding members ([`NodeConfig::founders`]).
    /// Every founder does the same with the identical membership, which makes this safe. Returns whether this
    /// node initialized the group.
    pub async fn found_group(&self, raft: &Raft) -> Result<bool, NodeError> {
        if self.config.cluster_state != ClusterState::New {
            return Ok(false);
        }
        let initialized = raft.is_initialized().await.map_err(|e| StartGroupError::Raft {
            group: 0,
            message: e.to_string(),
        })?;
        if initialized {
            return Ok(false);
        }
        let members = self.config.founding_membership();
        info!(members = members.len(), "founding a new group");
        match raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(e) => {
                // Another founder's first entry arrived first: the group exists.
                info!(error = %e, "initialize skipped");
                Ok(false)
            }
        }
    }

    /// Keeps this node's name and client URLs in `service`'s membership: `MemberAdd` knows only a joining
    /// node's peer URL, so once the group has a leader the node publishes the rest itself, as etcd members do.
    /// Watches every membership change until the node shuts down, and publishes again whenever the latest lacks
    /// them (a member removed and added back is a new entry without them).
    pub fn publish_attributes<S: Service>(&self, service: &Replicated<S>) {
        let task = spawn_publish_attributes(service.clone(), self.peer_node(), self.shutdown.clone());
        self.tasks.lock().push(task);
    }

    /// Runs `task` until the node shuts down (it is aborted then): a service's background work.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let token = self.shutdown.clone();
        self.tasks.lock().push(tokio::spawn(async move {
            // Biased here and below: a fixed order, so that a simulation replays the same interleaving.
            tokio::select! {
                biased;
                () = token.cancelled() => {}
                () = task => {}
            }
        }));
    }

    /// A token cancelled when the node starts shutting down: long-lived work of its services (streams,
    /// clocks) ends on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.node_id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The bound client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The bound peer address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The bound metrics address, if served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node's connections to its peers (one per peer URL, shared by every group).
    pub fn peer_channels(&self) -> &PeerChannels {
        &self.channels
    }

    /// The groups this node hosts.
    pub fn groups(&self) -> &GroupRegistry {
        &self.groups
    }

    /// Starts (or restarts) a bare Raft group on this node, over the same port and database as the others.
    /// The caller founds a new group ([`Node::found_group`]).
    pub async fn start_group<A: GroupApp>(
        &self,
        group: GroupId,
        app: Arc<RwLock<A>>,
        forward: Arc<dyn crate::group::ForwardHandler>,
    ) -> Result<Raft, NodeError> {
        let raft = start_group(
            self.node_id,
            group,
            &self.storage,
            self.channels.clone(),
            self.raft_config.clone(),
            app,
        )
        .await?;
        self.groups.insert(group, raft.clone(), forward);
        Ok(raft)
    }

    /// Starts (or restarts) a service of the replicated-service layer as Raft group `group` on this node, over
    /// the same port and database as the others, and registers it to answer what followers forward. The caller
    /// founds a new group ([`Node::found_group`]).
    pub async fn start_service<S: Service>(
        &self,
        group: GroupId,
        app: S::Machine,
        service: S,
        settings: ReplicatedSettings,
    ) -> Result<Replicated<S>, NodeError> {
        settings
            .validate()
            .map_err(|source| NodeError::ServiceSettings { group, source })?;
        let app = Arc::new(RwLock::new(app));
        let raft = start_group(
            self.node_id,
            group,
            &self.storage,
            self.channels.clone(),
            self.raft_config.clone(),
            app.clone(),
        )
        .await?;
        let replicated = Replicated::new(
            self.node_id,
            group,
            raft.clone(),
            app,
            self.channels.clone(),
            service,
            settings,
        );
        self.groups.insert(group, raft, Arc::new(replicated.clone()));
        Ok(replicated)
    }

    /// The key space of `group` on this node: give it to [`DiskBacked::open`](crate::DiskBacked::open) for a
    /// state machine whose state lives in the node's storage rather than in memory.
    pub fn key_space(&self, group: GroupId) -> Arc<dyn crate::keyspace::KeySpace> {
        self.storage.key_space(group)
    }

    /// This node as a Raft member (what the membership records for it).
    pub fn peer_node(&self) -> PeerNode {
        PeerNode {
            name: self.config.name.clone(),
            peer_url: self.config.advertise_peer_url.clone(),
            client_urls: self.config.advertise_client_urls.clone(),
        }
    }

    /// Resolves when one of the groups this node hosts at the time of the call stops on a fatal error — a
    /// RocksDB write failed, the disk is full — or when the background scrub finds the storage damaged, so the
    /// node can no longer keep its promises and must stop (nothing it acknowledged is lost: acknowledgements
    /// follow synced writes). Returns what went wrong. Never resolves for a healthy node that hosts no group.
    pub async fn fatal_error(&self) -> String {
        let watches: Vec<_> = self
            .groups
            .all()
            .into_iter()
            .map(|(group, raft)| Box::pin(group_fatal_error(raft, group)))
            .collect();
        let groups = async move {
            if watches.is_empty() {
                return std::future::pending().await;
            }
            futures::future::select_all(watches).await.0
        };
        let mut damage = self.damage.clone();
        let scrub = async move {
            loop {
                if let Some(found) = damage.borrow_and_update().clone() {
                    return format!("the storage is damaged: {found}");
                }
                if damage.changed().await.is_err() {
                    // The scrub ended without finding damage.
                    return std::future::pending().await;
                }
            }
        };
        tokio::select! {
            reason = groups => reason,
            reason = scrub => reason,
        }
    }

    /// Hands the leadership of every group this node leads to its best-placed voter, then stops serving, stops
    /// every group and closes the database. The groups keep a leader throughout: no election timeout is waited
    /// out. A group whose transfer fails (no other voter, or none took over within two election timeouts) is
    /// stopped anyway, and its followers elect a leader as after a crash.
    pub async fn shutdown(self) {
        info!(id = self.node_id, "shutting down");
        self.hand_over_leadership().await;
        self.shutdown.cancel();
        for (group, raft) in self.groups.all() {
            if let Err(e) = raft.shutdown().await {
                warn!(group, error = %e, "raft group did not stop cleanly");
            }
            self.groups.remove(group);
        }
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        // openraft's storage tasks and in-flight blocking writes finish a moment after `Raft::shutdown` returns,
        // each holding the database. Return only once ours are the last handles, so that the database is closed
        // and a restart in this process can open it again.
        if let GroupStorage::RocksDb { db, .. } = &self.storage {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while Arc::strong_count(db) > self.db_handles_at_rest {
                if tokio::time::Instant::now() >= deadline {
                    warn!(
                        handles = Arc::strong_count(db),
                        "database still in use after shutdown"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Last, the WAL sync thread ends and writes the WAL witness: a node restarted on this directory checks
        // its WAL against everything synced until now.
        let Self { storage, .. } = self;
        if let GroupStorage::RocksDb { wal, db, snapshots } = storage {
            drop((db, snapshots));
            if !wal.stop(Duration::from_secs(10)).await {
                warn!("the WAL sync thread did not end after shutdown");
            }
        }
    }
}

impl Node {
    /// Hands over the leadership of every group this node leads, all at once, each within two election timeouts.
    async fn hand_over_leadership(&self) {
        let timeout = self.handover_timeout();
        let transfers = self.groups.all().into_iter().filter_map(|(group, raft)| {
            let leads = raft.metrics().borrow_watched().current_leader == Some(self.node_id);
            leads.then_some(async move {
                match crate::leadership::transfer_leadership(&raft, group, None, timeout).await {
                    Ok(_) | Err(crate::leadership::TransferError::NoSuccessor { .. }) => {}
                    Err(e) => warn!(group, error = %e, "leadership not handed over before stopping"),
                }
            })
        });
        futures::future::join_all(transfers).await;
    }

    fn handover_timeout(&self) -> Duration {
        Duration::from_millis(self.raft_config.election_timeout_max.saturating_mul(2))
    }
}

/// Resolves when `raft`'s group stops: on a fatal error, or once it is shut down.
/// Scrubs the database once, in the background (see [`crate::integrity::scrub`]): damage found is recorded in
/// the directory, which is refused from then on, and reported through `found`.
fn spawn_scrub(
    db: Arc<rocksdb::DB>,
    token: CancellationToken,
    found: tokio::sync::watch::Sender<Option<String>>,
) -> JoinHandle<()> {
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            let stop = token.clone();
            let started = std::time::Instant::now();
            let scrubbed = tokio::task::spawn_blocking(move || {
                let result = crate::integrity::scrub(&db, &|| stop.is_cancelled());
                if let Err(damage) = &result
                    && let Err(e) = crate::integrity::mark_damaged(db.path(), damage)
                {
                    tracing::error!(error = %e, "recording the damage in the data directory failed");
                }
                result
            })
            .await;
            match scrubbed {
                Ok(Ok(_)) if token.is_cancelled() => {}
                Ok(Ok(verified)) => info!(
                    keys = verified.keys,
                    bytes = verified.bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "storage scrubbed: every block read"
                ),
                Ok(Err(damage)) => {
                    tracing::error!(%damage, "the scrub found the storage damaged: this member must be replaced");
                    let _ = found.send(Some(damage.to_string()));
                    // Keep the sender: the damage stays reported.
                    token.cancelled().await;
                }
                Err(e) => warn!(error = %e, "the storage scrub did not finish"),
            }
        }
        .instrument(span),
    )
}

async fn group_fatal_error(raft: Raft, group: GroupId) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_watched().running_state {
            return format!("raft group {group} stopped: {fatal}");
        }
        if metrics.changed().await.is_err() {
            return format!("raft group {group} stopped");
        }
    }
}

/// `/health` (etcd's JSON: healthy when every group on the node has a leader) and `/metrics` (what `metrics`
/// renders; 404 without a renderer).
fn spawn_http(
    listener: TcpListener,
    groups: GroupRegistry,
    metrics: Option<MetricsRenderer>,
    node_id: NodeId,
    token: CancellationToken,
) -> JoinHandle<()> {
    let health_groups = groups.clone();
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                match &metrics {
                    Some(renderer) => (StatusCode::OK, renderer.render()),
                    None => (
                        StatusCode::NOT_FOUND,
                        "no metrics recorder: the application embedding this node did not give one\n".into(),
                    ),
                }
            }),
        )
        .route(
            "/health",
            get(move || async move {
                let groups = health_groups.all();
                let leaderless: Vec<GroupId> = groups
                    .iter()
                    .filter(|(_, raft)| raft.metrics().borrow_watched().current_leader.is_none())
                    .map(|(group, _)| *group)
                    .collect();
                if groups.is_empty() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"health":"false","reason":"NO RAFT GROUPS"}"#.to_string(),
                    )
                } else if leaderless.is_empty() {
                    (StatusCode::OK, r#"{"health":"true","reason":""}"#.to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(r#"{{"health":"false","reason":"RAFT NO LEADER","groups":{leaderless:?}}}"#),
                    )
                }
            }),
        );
    let live_groups = groups.clone();
    let ready_groups = groups;
    let router = router
        .route("/livez", get(move || async move { livez(&live_groups) }))
        .route("/readyz", get(move || async move { readyz(&ready_groups).await }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
        {
            warn!(node_id, error = %e, "metrics server stopped");
        }
    })
}

/// `/livez`: local only (no peer is asked, so a partition or a lost quorum does not make an orchestrator
/// restart healthy members): 200 while no group hosted here has stopped on a fatal error.
fn livez(groups: &GroupRegistry) -> (StatusCode, String) {
    let stopped: Vec<String> = groups
        .all()
        .iter()
        .filter_map(
            |(group, raft)| match &raft.metrics().borrow_watched().running_state {
                Err(fatal) => Some(format!("raft group {group} stopped: {fatal}")),
                Ok(()) => None,
            },
        )
        .collect();
    if stopped.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, stopped.join("\n") + "\n")
    }
}

/// How long `/readyz` waits for a member to show it has caught up: under an orchestrator's default probe
/// timeout (Kubernetes: 1 s), so a member that cannot is reported unready rather than timing the probe out.
const READY_WAIT: Duration = Duration::from_millis(800);

/// `/readyz`: 200 once every group hosted here has a leader and this member has caught up with it (the
/// group's read barrier: a read index from the leader, and the local apply reaching it, within 0.8 s). A member
/// still installing a snapshot or replaying a long log is not ready, so a rolling update waits for it before
/// stopping the next one.
async fn readyz(groups: &GroupRegistry) -> (StatusCode, String) {
    let handlers = groups.handlers();
    if handlers.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no raft group is hosted yet\n".to_string(),
        );
    }
    let checks = handlers.into_iter().map(|(group, raft, handler)| async move {
        if raft.metrics().borrow_watched().current_leader.is_none() {
            return Err(format!("raft group {group}: no leader"));
        }
        match tokio::time::timeout(READY_WAIT, handler.caught_up()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(format!("raft group {group}: not caught up: {why}")),
            Err(_) => Err(format!(
                "raft group {group}: not caught up with the leader within {READY_WAIT:?}"
            )),
        }
    });
    let failures: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if failures.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, failures.join("\n") + "\n")
    }
}

/// Publishes each group's Raft state as Prometheus gauges.
fn spawn_raft_gauges(groups: GroupRegistry, token: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (group, raft) in groups.all() {
                let m = raft.metrics().borrow_watched().clone();
                let g = group.to_string();
                metrics::gauge!("trestle_raft_term", "group" => g.clone()).set(m.current_term as f64);
                metrics::gauge!("trestle_raft_leader", "group" => g.clone())
                    .set(m.current_leader.unwrap_or(0) as f64);
                metrics::gauge!("trestle_raft_is_leader", "group" => g.clone())
                    .set(if m.state == ServerState::Leader { 1.0 } else { 0.0 });
                metrics::gauge!("trestle_raft_last_log_index", "group" => g.clone())
                    .set(m.last_log_index.unwrap_or(0) as f64);
                metrics::gauge!("trestle_raft_applied_index", "group" => g.clone())
                    .set(m.last_applied.map_or(0, |id| id.index) as f64);
                metrics::gauge!("trestle_raft_snapshot_index", "group" => g)
                    .set(m.snapshot.map_or(0, |id| id.index) as f64);
            }
        }
    })
}

/// Publishes `me` into `service`'s membership once a leader is known (see [`Node::publish_attributes`]).
fn spawn_publish_attributes<S: Service>(
    service: Replicated<S>,
    me: PeerNode,
    token: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut metrics = service.raft().metrics();
        loop {
            let current = {
                let m = metrics.borrow_watched();
                if m.current_leader.is_some() {
                    Some(
                        m.membership_config
                            .membership()
                            .get_node(&service.node_id())
                            .cloned(),
                    )
                } else {
                    None
                }
            };
            match current {
                // Published: the name and client URLs are there (the peer URL is the membership's to keep). Keep
                // watching: a node catching up sees older memberships first (one where it was a member before
                // it was removed and added again, with its name), and the latest may still lack them.
                Some(Some(node)) if node.name == me.name && node.client_urls == me.client_urls => {}
                Some(Some(_)) => {
                    if let Err(status) = service
                        .change_member(MemberChange::SetAttributes(service.node_id(), me.clone()))
                        .await
                    {
                        warn!(%status, "could not publish member attributes; will retry");
                    }
                }
                // Not a member (yet), or no leader: wait for the next change.
                _ => {}
            }
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::staggered_snapshot_interval;

    #[test]
    fn snapshot_intervals_stay_in_range_and_differ_between_nodes() {
        let every = 10_000;
        let intervals: Vec<u64> = (1..=5).map(|id| staggered_snapshot_interval(every, id)).collect();
        assert!(
            intervals.iter().all(|i| (every..every + every / 2).contains(i)),
            "{intervals:?}"
        );
        let mut distinct = intervals.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            intervals.len(),
            "nodes 1..=5 share an interval: {intervals:?}"
        );
        // Deterministic: a restarted node keeps its interval.
        assert_eq!(staggered_snapshot_interval(every, 3), intervals[2]);
        // Huge intervals ("never" in etcd terms) do not wrap around to tiny ones.
        assert!(staggered_snapshot_interval(u64::MAX - 1, 7) >= u64::MAX - 1);
        // Too small to spread: unchanged.
        assert_eq!(staggered_snapshot_interval(1, 7), 1);
    }
}
