//! Finding cache nodes through the Trestle store (or any etcd v3 API): a node registers its address under a
//! prefix with a lease ([`register_node`]), so it disappears when the node stops renewing; a client lists the
//! prefix when it starts ([`discover_nodes`]) and builds its [`ClientConfig`](crate::ClientConfig) from it.
//!
//! Records are trestle-shard-router's: the key is `<prefix><memcached address>`, the value `weight=1 zone=<zone>`
//! ([`trestle_shard_router::encode_node`]). [`discover_nodes`] is a snapshot; [`discover_client`] builds a
//! client that follows the prefix (trestle-shard-router's `EtcdMembership` watches it) as nodes come and go.

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::GetOptions;
use trestle_shard_router::{
    EtcdMembership, EtcdMembershipConfig, Membership, Node, Registration, parse_node,
};

use crate::client::{Client, ClientConfig, ClientConfigError, NodeSpec};

/// Why registration or discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The store could not be reached or refused the request.
    #[error("store at {endpoints:?}: {message}")]
    Store {
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// What failed.
        message: String,
    },
    /// The client's configuration (other than its nodes) is invalid.
    #[error("client configuration: {0}")]
    Config(#[from] ClientConfigError),
    /// A record under the prefix is not a cache node's.
    #[error("record {key:?} is not a cache node: {reason}")]
    BadRecord {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

async fn connect(endpoints: &[String]) -> Result<etcd_client::Client, DiscoveryError> {
    etcd_client::Client::connect(endpoints, None)
        .await
        .map_err(|e| DiscoveryError::Store {
            endpoints: endpoints.to_vec(),
            message: e.to_string(),
        })
}

/// Registers the node listening on `addr` in `zone` under `prefix`, on a lease of `ttl` renewed in the
/// background. Keep the returned [`Registration`] alive while the node runs; revoke it at shutdown so clients
/// stop finding the node at once rather than when the lease expires.
pub async fn register_node(
    endpoints: &[String],
    prefix: &str,
    addr: SocketAddr,
    zone: &str,
    ttl: Duration,
) -> Result<Registration, DiscoveryError> {
    let client = connect(endpoints).await?;
    let node = Node::new(addr.to_string()).with_zone(zone);
    Registration::register(&client, prefix, &node, ttl)
        .await
        .map_err(|e| DiscoveryError::Store {
            endpoints: endpoints.to_vec(),
            message: e.to_string(),
        })
}

/// Lists the nodes registered under `prefix`, sorted by id.
pub async fn discover_nodes(endpoints: &[String], prefix: &str) -> Result<Vec<NodeSpec>, DiscoveryError> {
    let mut client = connect(endpoints).await?;
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| DiscoveryError::Store {
            endpoints: endpoints.to_vec(),
            message: e.to_string(),
        })?;
    let mut nodes = Vec::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let bad = |reason: String| DiscoveryError::BadRecord {
            key: key.clone(),
            reason,
        };
        let id = key.strip_prefix(prefix).unwrap_or(&key);
        let addr: SocketAddr = id
            .parse()
            .map_err(|_| bad(format!("{id:?} is not a socket address")))?;
        let node = parse_node(id, kv.value()).map_err(|e| bad(e.to_string()))?;
        let zone = node.zone().ok_or_else(|| bad("no zone".into()))?;
        nodes.push(NodeSpec::new(id, addr, zone));
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nodes)
}

/// A client that follows the nodes registered under `prefix`: it starts with the nodes registered now (none is
/// allowed: requests fail with [`ClientError::NoNodes`](crate::ClientError::NoNodes) until one registers) and
/// applies every later registration and expiry as [`Client::update_nodes`] does, warm-up of joining nodes
/// included. `config`'s own node list is ignored. If the watch breaks, the prefix is read again and watched
/// anew, retrying every 500 ms.
pub async fn discover_client(
    endpoints: &[String],
    prefix: &str,
    config: ClientConfig,
) -> Result<Client, DiscoveryError> {
    config.validate_settings()?;
    let membership = EtcdMembership::connect(endpoints, prefix, EtcdMembershipConfig::default())
        .await
        .map_err(|e| DiscoveryError::Store {
            endpoints: endpoints.to_vec(),
            message: e.to_string(),
        })?;
    let nodes = crate::client::specs_from_map(membership.current().as_deref());
    let client = Client::build(config.with_nodes(nodes))?;
    client.follow(membership);
    Ok(client)
}
