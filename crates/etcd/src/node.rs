//! An etcd node: a trestle-raft [`Node`] running the coordination store as group 0 and serving etcd's v3 API
//! on the node's client port.

use std::net::SocketAddr;
use std::path::PathBuf;

use tonic::service::RoutesBuilder;
use tracing::{Instrument, info_span};
use trestle_raft::{GroupId, Node, NodeConfig, NodeError, NodeId, StartGroupError, node_id_for};

use crate::api::{EtcdServer, EtcdSettings};
use crate::store::{Store, StoreApp, StoreService, StoreSettings, StoreSettingsError};

/// The cluster id of every member started with the cluster token `token` (`trestle serve
/// --initial-cluster-token`): the same on founders and on members that join later.
pub fn cluster_id_for_token(token: &str) -> u64 {
    node_id_for(&format!("cluster-token:{token}"))
}

/// The coordination store's group: the one whose membership is the cluster's (etcd's `MemberList`).
pub const STORE_GROUP: GroupId = 0;

/// Everything an etcd node needs to start: the host node's configuration, the store's and the API's. Build it
/// with [`EtcdNodeConfig::new`], adjust fields, and [`EtcdNode::start`] validates it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdNodeConfig {
    /// The host: data directory, listeners, cluster, Raft timing, TLS.
    pub node: NodeConfig,
    /// The store runtime: request timeout, group commit, leases.
    pub store: StoreSettings,
    /// The etcd API: cluster id (derived from the founders' peer URLs when left at 0), request size limit,
    /// watch progress interval.
    pub etcd: EtcdSettings,
}

impl EtcdNodeConfig {
    /// A configuration with the documented defaults and the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self::from_node(NodeConfig::new(data_dir))
    }

    /// The store and API defaults on the given host configuration.
    pub fn from_node(node: NodeConfig) -> Self {
        Self {
            node,
            store: StoreSettings::default(),
            etcd: EtcdSettings::default(),
        }
    }

    /// Checks the configuration; the error names the offending value.
    pub fn validate(&self) -> Result<(), EtcdNodeError> {
        self.node.validate().map_err(NodeError::from)?;
        self.store.validate()?;
        Ok(())
    }

    /// The cluster id every response header reports: `etcd.cluster_id`, or one derived from the founders' peer
    /// URLs (so every founder computes the same).
    pub fn cluster_id(&self) -> u64 {
        if self.etcd.cluster_id != 0 {
            return self.etcd.cluster_id;
        }
        let mut urls: Vec<String> = self.node.founders().into_iter().map(|(_, url)| url).collect();
        urls.sort_unstable();
        node_id_for(&urls.join(","))
    }
}

/// Why an etcd node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdNodeError {
    /// The host node could not start (configuration, data directory, ports, the store group).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The store settings are unusable.
    #[error("invalid store settings: {0}")]
    Store(#[from] StoreSettingsError),
}

/// A running etcd node. Dropping it does not stop it: call [`EtcdNode::shutdown`].
#[derive(Debug)]
pub struct EtcdNode {
    node: Node,
    store: Store,
    config: EtcdNodeConfig,
}

impl EtcdNode {
    /// Starts the host node and the store group, founds the cluster when `cluster_state` is `New`, and serves
    /// etcd's KV, Watch, Lease, Cluster and Maintenance services on the client port.
    pub async fn start(config: EtcdNodeConfig) -> Result<Self, EtcdNodeError> {
        Self::start_with_services(config, RoutesBuilder::default()).await
    }

    /// Like [`EtcdNode::start`], and also serves `extra` gRPC services on the client port next to etcd's (the
    /// `trestle` binary adds etcd's lock and election services this way).
    pub async fn start_with_services(
        config: EtcdNodeConfig,
        extra: RoutesBuilder,
    ) -> Result<Self, EtcdNodeError> {
        config.validate()?;
        let span = info_span!("etcd", peer_url = %config.node.advertise_peer_url);
        async move {
            let node = Node::start(config.node.clone()).await?;
            match Self::serve_store(&node, &config, extra).await {
                Ok(store) => Ok(Self { node, store, config }),
                Err(e) => {
                    // Stop what started (peer port, groups, database) so that nothing outlives the error.
                    node.shutdown().await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Starts the store group on `node`, founds it, and serves etcd's services and `extra` on the client port.
    async fn serve_store(
        node: &Node,
        config: &EtcdNodeConfig,
        mut extra: RoutesBuilder,
    ) -> Result<Store, EtcdNodeError> {
        let replicated = node
            .start_service(
                STORE_GROUP,
                open_store(node, STORE_GROUP)?,
                StoreService::new(config.store.clone()),
                config.store.replicated.clone(),
            )
            .await?;
        let store = Store::from_replicated(replicated.clone());
        node.spawn(join_quietly(store.spawn_lessor()));
        node.found_group(store.raft()).await?;
        node.publish_attributes(&replicated);

        let mut etcd_settings = config.etcd.clone();
        etcd_settings.cluster_id = config.cluster_id();
        let services = EtcdServer::new(store.clone(), etcd_settings)
            .with_shutdown(node.shutdown_token())
            .into_services();
        extra
            .add_service(services.kv)
            .add_service(services.watch)
            .add_service(services.lease)
            .add_service(services.cluster)
            .add_service(services.maintenance);
        node.serve_clients(extra.routes())?;
        Ok(store)
    }

    /// The host node (its groups, addresses, and where other services start beside the store).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EtcdNodeConfig {
        &self.config
    }

    /// The coordination store on this node.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This node's id (etcd's member id).
    pub fn id(&self) -> NodeId {
        self.node.id()
    }

    /// The bound client (etcd API) address.
    pub fn client_addr(&self) -> SocketAddr {
        self.node.client_addr()
    }

    /// The bound peer address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.node.peer_addr()
    }

    /// The bound health and metrics address, if served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.node.metrics_addr()
    }

    /// Starts (or restarts) another coordination-store keyspace as Raft group `group` on this node: its own
    /// log, revisions, leases and leader, over the same port and database as group 0. The caller founds a new
    /// group (`Node::found_group`).
    pub async fn start_store_group(&self, group: GroupId) -> Result<Store, NodeError> {
        let settings = &self.config.store;
        let store = Store::from_replicated(
            self.node
                .start_service(
                    group,
                    open_store(&self.node, group)?,
                    StoreService::new(settings.clone()),
                    settings.replicated.clone(),
                )
                .await?,
        );
        self.node.spawn(join_quietly(store.spawn_lessor()));
        Ok(store)
    }

    /// Resolves when a group of this node stops on a fatal error (see `Node::fatal_error`).
    pub async fn fatal_error(&self) -> String {
        self.node.fatal_error().await
    }

    /// Stops serving, stops every group and closes the database.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
    }
}

/// The store of `group` in the node's key space: its index rebuilt from what the key space holds.
fn open_store(node: &Node, group: GroupId) -> Result<StoreApp, NodeError> {
    StoreApp::open(node.key_space(group))
        .map_err(|source| NodeError::Group(StartGroupError::Storage { group, source }))
}

/// Waits for a task the node aborts at shutdown; a node's task ends only then, so its result says nothing.
async fn join_quietly(task: tokio::task::JoinHandle<()>) {
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut guard = AbortOnDrop(task);
    let _ = (&mut guard.0).await;
}
