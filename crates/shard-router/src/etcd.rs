//! Live membership from a key prefix on an etcd-v3 endpoint (Trestle or etcd).
//!
//! Each node registers a key `<prefix><node id>` under a lease, with a value such as `weight=2 zone=eu-west-1a`
//! (both fields optional, separated by spaces; see [`encode_node`]). While the node keeps the lease alive the key
//! exists; when it stops (crash, partition, shutdown) the lease expires, etcd deletes the key and every watcher
//! drops the node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use trestle_etcd::{CallKind, RetryPolicy, RetryingClient};

use crate::membership::Publisher;
use crate::{Membership, MembershipEvent, Node, NodeId, ShardError, ShardMap, ShardMapConfig};

/// Why the etcd membership could not start or a registration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The etcd client failed with a definite answer.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A request kept failing transiently until the retry policy's time ran out, or a write failed after it may
    /// have been applied (trestle-etcd's retry rule).
    #[error("etcd: {0}")]
    Retry(trestle_etcd::ClientError),
    /// The node set is not a valid map.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A registration value could not be parsed.
    #[error("invalid node record {value:?}: {reason}")]
    InvalidRecord {
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server cancelled the watch (for example because its start revision was compacted).
    #[error("watch cancelled at compact revision {compact_revision}: {reason}")]
    WatchCancelled {
        /// The server's reason.
        reason: String,
        /// The compaction revision, when that was the cause.
        compact_revision: i64,
    },
}

impl From<trestle_etcd::ClientError> for MembershipError {
    fn from(error: trestle_etcd::ClientError) -> Self {
        match error {
            trestle_etcd::ClientError::Etcd(error) => Self::Etcd(error),
            other => Self::Retry(other),
        }
    }
}

/// Every etcd call here follows trestle-etcd's retry rule with its default policy (reads and idempotent writes
/// retried on transient failures for up to 10 s; other writes only when they surely never arrived).
fn retrying(client: &Client) -> Result<RetryingClient, MembershipError> {
    Ok(RetryingClient::new(client.clone(), RetryPolicy::default())?)
}

/// Configuration of [`EtcdMembership`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdMembershipConfig {
    /// How maps are built.
    pub map: ShardMapConfig,
    /// Pause between attempts to re-read the prefix after the watch broke. Default 500 ms.
    pub retry_delay: Duration,
}

impl Default for EtcdMembershipConfig {
    fn default() -> Self {
        Self {
            map: ShardMapConfig::default(),
            retry_delay: Duration::from_millis(500),
        }
    }
}

impl EtcdMembershipConfig {
    /// Sets [`map`](Self::map).
    #[must_use]
    pub fn with_map(mut self, map: ShardMapConfig) -> Self {
        self.map = map;
        self
    }

    /// Sets [`retry_delay`](Self::retry_delay).
    #[must_use]
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ShardError::InvalidConfig`] for an invalid map configuration or a zero retry delay (which would spin
    /// against an unreachable endpoint).
    pub fn validate(&self) -> Result<(), ShardError> {
        self.map.validate()?;
        if self.retry_delay.is_zero() {
            return Err(ShardError::InvalidConfig {
                field: "retry_delay",
                value: format!("{:?}", self.retry_delay),
                reason: "must be above zero",
            });
        }
        Ok(())
    }
}

/// The registration value of `node`: `weight=<w>` and, if it has one, `zone=<z>`.
///
/// ```
/// use trestle_shard_router::{encode_node, parse_node, Node};
///
/// let node = Node::new("cache-1").with_weight(2).with_zone("eu-1a");
/// assert_eq!(encode_node(&node), "weight=2 zone=eu-1a");
/// assert_eq!(parse_node("cache-1", b"weight=2 zone=eu-1a")?, node);
/// assert_eq!(parse_node("cache-2", b"")?, Node::new("cache-2"));
/// # Ok::<(), trestle_shard_router::MembershipError>(())
/// ```
#[must_use]
pub fn encode_node(node: &Node) -> String {
    match node.zone() {
        Some(zone) => format!("weight={} zone={zone}", node.weight()),
        None => format!("weight={}", node.weight()),
    }
}

/// Parses a registration value (see [`encode_node`]); unknown fields are ignored so records can grow.
///
/// # Errors
/// [`MembershipError::InvalidRecord`] for non-UTF-8 values, a weight that is not a positive integer, or an empty
/// zone.
pub fn parse_node(id: &str, value: &[u8]) -> Result<Node, MembershipError> {
    let invalid = |reason| MembershipError::InvalidRecord {
        value: String::from_utf8_lossy(value).into_owned(),
        reason,
    };
    let text = std::str::from_utf8(value).map_err(|_| invalid("not UTF-8"))?;
    let mut node = Node::new(id);
    for field in text.split_whitespace() {
        match field.split_once('=') {
            Some(("weight", w)) => match w.parse::<u32>() {
                Ok(w) if w > 0 => node = node.with_weight(w),
                _ => return Err(invalid("weight must be an integer from 1 to 4294967295")),
            },
            Some(("zone", "")) => return Err(invalid("zone must not be empty")),
            Some(("zone", z)) => node = node.with_zone(z),
            _ => {}
        }
    }
    Ok(node)
}

/// A [`Membership`] that follows the keys under a prefix on an etcd-v3 endpoint.
///
/// [`connect`](Self::connect) reads the prefix once (so [`current`](Membership::current) is filled when it
/// returns) and then watches it from the next revision, so no change between the read and the watch is missed.
/// Each watch response (which may carry several events) becomes one new map. If the watch breaks or is cancelled,
/// the task re-reads the whole prefix after [`EtcdMembershipConfig::retry_delay`] and watches again, retrying until
/// it succeeds; a record that does not parse is logged and treated as absent. Dropping the membership stops the
/// task.
pub struct EtcdMembership {
    publisher: Arc<Publisher>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for EtcdMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMembership")
            .field("nodes", &self.current().map_or(0, |m| m.len()))
            .finish()
    }
}

impl Drop for EtcdMembership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdMembership {
    /// Connects to `endpoints` (such as `["http://127.0.0.1:2379"]`) and follows `prefix`.
    ///
    /// # Errors
    /// [`MembershipError::Etcd`] or [`MembershipError::Retry`] if the endpoint cannot be reached or read, [`MembershipError::Shard`] for an
    /// invalid configuration ([`EtcdMembershipConfig::validate`]).
    pub async fn connect<E: AsRef<str>, S: AsRef<[E]>>(
        endpoints: S,
        prefix: impl Into<String>,
        config: EtcdMembershipConfig,
    ) -> Result<Self, MembershipError> {
        let client = Client::connect(endpoints, None).await?;
        Self::with_client(client, prefix, config).await
    }

    /// Follows `prefix` with an existing client.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn with_client(
        mut client: Client,
        prefix: impl Into<String>,
        config: EtcdMembershipConfig,
    ) -> Result<Self, MembershipError> {
        config.validate()?;
        let prefix = prefix.into();
        let publisher = Arc::new(Publisher::new(config.map.clone())?);
        let revision = load(&mut client, &prefix, &publisher).await?;
        let task = tokio::spawn(run(
            client,
            prefix,
            Arc::clone(&publisher),
            revision,
            config.retry_delay,
        ));
        Ok(Self { publisher, task })
    }
}

impl Membership for EtcdMembership {
    fn watch(&self) -> watch::Receiver<Option<Arc<ShardMap>>> {
        self.publisher.watch()
    }

    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.publisher.subscribe()
    }
}

fn node_id(prefix: &str, key: &[u8]) -> Option<NodeId> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    match std::str::from_utf8(rest) {
        Ok(id) if !id.is_empty() => Some(NodeId::new(id)),
        _ => None,
    }
}

/// Reads the whole prefix and replaces the node set; returns the revision read.
async fn load(client: &mut Client, prefix: &str, publisher: &Publisher) -> Result<i64, MembershipError> {
    let response = retrying(client)?
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut set = BTreeMap::new();
    for kv in response.kvs() {
        let Some(id) = node_id(prefix, kv.key()) else {
            continue;
        };
        match parse_node(id.as_str(), kv.value()) {
            Ok(node) => {
                set.insert(id, node);
            }
            Err(e) => tracing::warn!(node = %id, error = %e, "ignoring invalid node record"),
        }
    }
    publisher.update(|nodes| {
        *nodes = set;
        Ok(())
    })?;
    Ok(revision)
}

async fn run(
    mut client: Client,
    prefix: String,
    publisher: Arc<Publisher>,
    mut revision: i64,
    retry: Duration,
) {
    loop {
        match follow(&mut client, &prefix, &publisher, &mut revision).await {
            Ok(()) => tracing::warn!(%prefix, "membership watch ended; re-reading"),
            Err(e) => tracing::warn!(%prefix, error = %e, "membership watch failed; re-reading"),
        }
        loop {
            tokio::time::sleep(retry).await;
            match load(&mut client, &prefix, &publisher).await {
                Ok(r) => {
                    revision = r;
                    break;
                }
                Err(e) => tracing::warn!(%prefix, error = %e, "membership re-read failed"),
            }
        }
    }
}

/// Applies watch responses until the stream ends or fails.
async fn follow(
    client: &mut Client,
    prefix: &str,
    publisher: &Publisher,
    revision: &mut i64,
) -> Result<(), MembershipError> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*revision + 1);
    let mut stream = retrying(client)?
        .call(CallKind::ReadOnly, |mut client| {
            let options = options.clone();
            async move { client.watch(prefix, Some(options)).await }
        })
        .await?;
    while let Some(response) = stream.message().await? {
        if response.canceled() {
            return Err(MembershipError::WatchCancelled {
                reason: response.cancel_reason().to_owned(),
                compact_revision: response.compact_revision(),
            });
        }
        let mut changes: Vec<(NodeId, Option<Node>)> = Vec::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            *revision = (*revision).max(kv.mod_revision());
            let Some(id) = node_id(prefix, kv.key()) else {
                continue;
            };
            let node = match event.event_type() {
                EventType::Put => match parse_node(id.as_str(), kv.value()) {
                    Ok(node) => Some(node),
                    Err(e) => {
                        tracing::warn!(node = %id, error = %e, "ignoring invalid node record");
                        None
                    }
                },
                EventType::Delete => None,
            };
            changes.push((id, node));
        }
        if changes.is_empty() {
            continue;
        }
        let applied = publisher.update(|nodes| {
            for (id, node) in changes {
                match node {
                    Some(node) => nodes.insert(id, node),
                    None => nodes.remove(&id),
                };
            }
            Ok(())
        });
        if let Err(e) = applied {
            tracing::error!(%prefix, error = %e, "membership change rejected; keeping the previous map");
        }
    }
    Ok(())
}

/// A node's registration under a lease, kept alive by a background task.
///
/// Dropping it (or [`abandon`](Self::abandon)) stops the renewals: the key disappears when the lease expires, as
/// after a crash. [`revoke`](Self::revoke) deletes it at once, as on a clean shutdown.
pub struct Registration {
    client: Client,
    lease: i64,
    keeper: JoinHandle<()>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("lease", &self.lease)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Registration {
    /// Registers `node` under `prefix` with a lease of `ttl` (whole seconds, at least 1) and renews it every third
    /// of the TTL.
    ///
    /// # Errors
    /// [`MembershipError::Etcd`] or [`MembershipError::Retry`] if the lease or the key cannot be written.
    pub async fn register(
        client: &Client,
        prefix: &str,
        node: &Node,
        ttl: Duration,
    ) -> Result<Self, MembershipError> {
        let mut client = client.clone();
        let retrying = retrying(&client)?;
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        // A grant whose answer is lost is not retried (it could leave a second lease); such a lease has no key
        // and expires on its own.
        let lease = retrying.lease_grant(ttl_secs, None).await?.id();
        let key = format!("{prefix}{}", node.id());
        let record = encode_node(node);
        // Our own key under our own new lease: writing it twice is writing it once.
        retrying
            .call(CallKind::Idempotent, |mut client| {
                let (key, record) = (key.clone(), record.clone());
                async move {
                    client
                        .put(key, record, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await?;
        let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
        let interval = Duration::from_secs(ttl_secs.unsigned_abs()) / 3;
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match responses.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    _ => break,
                }
            }
        });
        Ok(Self {
            client,
            lease,
            keeper,
        })
    }

    /// The lease id.
    #[must_use]
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Stops renewing; the node disappears when the lease expires.
    pub fn abandon(self) {}

    /// Revokes the lease, deleting the registration at once.
    ///
    /// # Errors
    /// [`MembershipError::Etcd`] or [`MembershipError::Retry`] if the revoke fails (the lease then still expires
    /// on its own).
    pub async fn revoke(self) -> Result<(), MembershipError> {
        self.keeper.abort();
        retrying(&self.client)?.lease_revoke(self.lease).await?;
        Ok(())
    }
}
