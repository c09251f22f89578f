//! The cache client: placement, replication across zones, fallback, read repair, coalesced loading.
//!
//! - **Placement.** Each zone's nodes form a consistent-hash ring ([`trestle_shard_router::ShardMap`]); a key
//!   lives on one node per zone, and every zone holds a full copy.
//! - **Writes** ([`Client::set`], [`Client::delete`], [`Client::invalidate`]) go to every zone at once and return
//!   when [`ClientConfig::write_ack`] zones have acknowledged; the other writes finish in the background.
//! - **Reads** ([`Client::get`], [`Client::get_many`]) go to the local zone first and fall back to the next zone
//!   on a miss or an error; a value found elsewhere is written back to the local zone (read repair, with `add`
//!   semantics so it never overwrites a newer local value).
//! - **Failures** are per node: a timeout per request, and a circuit breaker from trestle-breaker that fails
//!   fast while a node is down and lets a trial request through after its wait.
//! - **Coalescing** ([`Client::get_or_load`]): concurrent misses in one process share one load, and across
//!   processes the meta protocol's tokens elect one loader (`mg ... N<lease>`: the first caller gets `W`, the others
//!   `Z` and wait for its value), and serve a value invalidated with [`Client::invalidate`] stale (`X`) to everyone
//!   but the one caller that refreshes it.
//!
//! Keys that memcached accepts as they are (up to 250 bytes, no spaces or control characters) are sent as they
//! are, so other memcached clients see the same keys; other keys are sent base64-encoded with the `b` flag.

mod config;
mod node;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use trestle_breaker::machine::BreakerMachine;
use trestle_shard_router::{Node, ShardMap};

pub use config::{Ack, ClientConfig, ClientConfigError, NodeSpec};
use node::NodeClient;

use crate::protocol::{Command, MAX_KEY_LEN, MetaFlags, MetaReply, MetaStatus, ReplyError};

/// A request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node did not answer in time.
    #[error("node {node} did not answer within {after:?}")]
    Timeout {
        /// The node.
        node: String,
        /// The timeout.
        after: Duration,
    },
    /// Connecting, writing or reading failed.
    #[error("node {node}: {message}")]
    Io {
        /// The node.
        node: String,
        /// What failed.
        message: String,
    },
    /// The node's circuit breaker is open: it failed recently and is not asked until its wait is over.
    #[error("node {node} is skipped: its circuit breaker is open")]
    CircuitOpen {
        /// The node.
        node: String,
    },
    /// The node answered with an error.
    #[error("node {node}: {error}")]
    Server {
        /// The node.
        node: String,
        /// The error.
        error: ReplyError,
    },
    /// Too few zones acknowledged a write.
    #[error("{acked} of the {needed} acknowledgements needed; errors: {errors:?}")]
    NotEnoughAcks {
        /// Needed.
        needed: usize,
        /// Received.
        acked: usize,
        /// The failures.
        errors: Vec<ClientError>,
    },
    /// Every zone failed a read.
    #[error("every zone failed: {errors:?}")]
    AllZonesFailed {
        /// One error per zone.
        errors: Vec<ClientError>,
    },
    /// The loader of [`Client::get_or_load`] failed.
    #[error("loading the value failed: {message}")]
    Load {
        /// The loader's error, as text.
        message: String,
    },
}

struct Zone {
    name: String,
    map: ShardMap,
    nodes: HashMap<String, Arc<NodeClient>>,
}

impl Zone {
    fn node(&self, key: &[u8]) -> &Arc<NodeClient> {
        let id = self.map.route(key).id();
        &self.nodes[id.as_str()]
    }
}

type LoadResult = Result<Bytes, ClientError>;

struct Inner {
    config: ClientConfig,
    /// Local zone first.
    zones: Vec<Zone>,
    /// Loads in flight in this process, by key: latecomers subscribe instead of loading.
    loads: Mutex<HashMap<Bytes, broadcast::Sender<LoadResult>>>,
}

/// The cache client. Cheap to clone (one shared state); every method takes `&self`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A key as sent: as is if memcached accepts it, else base64 with the `b` flag.
fn wire_key(key: &[u8]) -> (Bytes, MetaFlags) {
    let plain = !key.is_empty() && key.len() <= MAX_KEY_LEN && key.iter().all(|&b| b > b' ' && b != 0x7f);
    if plain {
        (Bytes::copy_from_slice(key), MetaFlags::new())
    } else {
        (
            Bytes::from(crate::engine::base64_key(key)),
            MetaFlags::new().with(b'b'),
        )
    }
}

fn ttl_secs(ttl: Duration) -> u64 {
    // A sub-second TTL rounds up: 0 would mean "never expires".
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// Removes a key's in-process load when its leader finishes or is cancelled.
struct LoadGuard<'a> {
    loads: &'a Mutex<HashMap<Bytes, broadcast::Sender<LoadResult>>>,
    key: Bytes,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.loads.lock().remove(&self.key);
    }
}

impl Client {
    /// A client for `config` (validated). Connections are opened on first use.
    pub fn new(config: ClientConfig) -> Result<Self, ClientConfigError> {
        config.validate()?;
        let mut zones = Vec::new();
        for name in config.zones() {
            let specs: Vec<&NodeSpec> = config.nodes.iter().filter(|n| n.zone == name).collect();
            let map = ShardMap::new(specs.iter().map(|n| Node::new(n.id.as_str()).with_zone(&n.zone)))
                .map_err(|e| ClientConfigError::Placement {
                    zone: name.clone(),
                    reason: e.to_string(),
                })?;
            let mut nodes = HashMap::new();
            for spec in specs {
                let breaker = BreakerMachine::new(config.breaker.clone())
                    .map_err(|e| ClientConfigError::Breaker(e.to_string()))?;
                let node = NodeClient::new(
                    spec.id.clone(),
                    spec.addr,
                    config.max_idle_connections,
                    config.max_connections_per_node,
                    config.timeout,
                    breaker,
                );
                nodes.insert(spec.id.clone(), Arc::new(node));
            }
            zones.push(Zone { name, map, nodes });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                zones,
                loads: Mutex::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The id of the node holding `key` in `zone`, if the zone exists.
    pub fn node_for(&self, zone: &str, key: &[u8]) -> Option<String> {
        self.inner
            .zones
            .iter()
            .find(|z| z.name == zone)
            .map(|z| z.node(key).id.clone())
    }

    /// Reads `key`: the local zone first, then each other zone on a miss or an error. A value invalidated with
    /// [`Client::invalidate`] counts as a miss here ([`Client::get_or_load`] serves it stale). Fails only when
    /// every zone failed.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, ClientError> {
        let (wire, base) = wire_key(key);
        let mut errors = Vec::new();
        for (index, zone) in self.inner.zones.iter().enumerate() {
            let flags = base.clone().with(b'v').with(b'f').with(b't');
            let command = Command::MetaGet {
                key: wire.clone(),
                flags,
            };
            match zone.node(key).exchange(&[command]).await {
                Ok(replies) => {
                    let Some(reply) = replies.into_iter().next() else {
                        continue;
                    };
                    // A stale value, or the empty placeholder of a load in progress, is a miss here.
                    let placeholder = reply.lost() && reply.value.as_ref().is_some_and(Bytes::is_empty);
                    if reply.stale() && reply.won() {
                        // The node handed this read the right to refresh, which a plain get does not use: give
                        // it back (invalidating again clears it) so a `get_or_load` caller refreshes.
                        self.give_back_token(zone.node(key), &wire, &base).await;
                    }
                    if reply.status != MetaStatus::Value || reply.stale() || placeholder {
                        continue;
                    }
                    let value = reply.value.clone().unwrap_or_default();
                    if index > 0 && self.inner.config.read_repair {
                        self.repair(key, &reply);
                    }
                    return Ok(Some(value));
                }
                Err(error) => errors.push(error),
            }
        }
        if errors.len() == self.inner.zones.len() {
            return Err(ClientError::AllZonesFailed { errors });
        }
        Ok(None)
    }

    async fn give_back_token(&self, node: &NodeClient, wire: &Bytes, base: &MetaFlags) {
        let command = Command::MetaDelete {
            key: wire.clone(),
            flags: base.clone().with(b'I').with(b'q'),
        };
        let _ = node.exchange(&[command]).await;
    }

    /// Writes a value found in another zone back to the local zone, in the background, without overwriting.
    fn repair(&self, key: &[u8], reply: &MetaReply) {
        let ttl = reply.flags.number::<i64>(b't').and_then(Result::ok).unwrap_or(-1);
        let client_flags = reply.flags.number::<u32>(b'f').and_then(Result::ok).unwrap_or(0);
        let (wire, base) = wire_key(key);
        let mut flags = base.with_token(b'F', client_flags).with_token(b'M', 'E');
        if ttl > 0 {
            flags = flags.with_token(b'T', ttl);
        }
        let command = Command::MetaSet {
            key: wire,
            data: reply.value.clone().unwrap_or_default(),
            flags,
        };
        let node = self.inner.zones[0].node(key).clone();
        tokio::spawn(async move {
            let _ = node.exchange(&[command]).await;
        });
    }

    /// Reads many keys with one request per node: the local zone's nodes first, then the keys still missing
    /// from the next zone's, and so on. Returns the values found; fails only when a key's every zone failed.
    pub async fn get_many(&self, keys: &[&[u8]]) -> Result<HashMap<Bytes, Bytes>, ClientError> {
        let mut found = HashMap::new();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut failures: HashMap<usize, Vec<ClientError>> = HashMap::new();
        for zone in &self.inner.zones {
            if pending.is_empty() {
                break;
            }
            let mut by_node: HashMap<&str, (Arc<NodeClient>, Vec<usize>)> = HashMap::new();
            for &i in &pending {
                let node = zone.node(keys[i]);
                by_node
                    .entry(node.id.as_str())
                    .or_insert_with(|| (node.clone(), Vec::new()))
                    .1
                    .push(i);
            }
            let requests = by_node.into_values().map(|(node, indexes)| async move {
                let commands: Vec<Command> = indexes
                    .iter()
                    .map(|&i| {
                        let (wire, base) = wire_key(keys[i]);
                        let flags = base.with(b'v').with(b'q').with_token(b'O', i);
                        Command::MetaGet { key: wire, flags }
                    })
                    .collect();
                (indexes.clone(), node.exchange(&commands).await)
            });
            let mut still = Vec::new();
            for (indexes, result) in join_all(requests).await {
                match result {
                    Ok(replies) => {
                        let mut hit = std::collections::HashSet::new();
                        for reply in replies {
                            let Some(Ok(i)) = reply.flags.number::<usize>(b'O') else {
                                continue;
                            };
                            if reply.status == MetaStatus::Value
                                && !reply.stale()
                                && !reply.lost()
                                && i < keys.len()
                            {
                                found
                                    .insert(Bytes::copy_from_slice(keys[i]), reply.value.unwrap_or_default());
                                hit.insert(i);
                            }
                        }
                        still.extend(indexes.into_iter().filter(|i| !hit.contains(i)));
                    }
                    Err(error) => {
                        for &i in &indexes {
                            failures.entry(i).or_default().push(error.clone());
                        }
                        still.extend(indexes);
                    }
                }
            }
            pending = still;
        }
        if let Some((_, errors)) = failures
            .into_iter()
            .find(|(_, e)| e.len() == self.inner.zones.len())
        {
            return Err(ClientError::AllZonesFailed { errors });
        }
        Ok(found)
    }

    /// Stores `value` under `key` in every zone, expiring after `ttl` (zero: never).
    pub async fn set(&self, key: &[u8], value: Bytes, ttl: Duration) -> Result<(), ClientError> {
        let (wire, base) = wire_key(key);
        let flags = base.with_token(b'T', ttl_secs(ttl));
        self.write_all_zones(
            key,
            Command::MetaSet {
                key: wire,
                data: value,
                flags,
            },
        )
        .await
    }

    /// Deletes `key` in every zone.
    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        let (wire, flags) = wire_key(key);
        self.write_all_zones(key, Command::MetaDelete { key: wire, flags })
            .await
    }

    /// Marks `key` stale in every zone instead of deleting it: [`Client::get_or_load`] callers keep getting the
    /// old value while exactly one of them loads the new one. [`Client::get`] treats it as a miss.
    pub async fn invalidate(&self, key: &[u8]) -> Result<(), ClientError> {
        let (wire, flags) = wire_key(key);
        self.write_all_zones(
            key,
            Command::MetaDelete {
                key: wire,
                flags: flags.with(b'I'),
            },
        )
        .await
    }

    /// Sends one write to every zone and waits for the configured acknowledgements; the rest finish in the
    /// background. A `NF` (nothing to delete) is an acknowledgement; `NS`/`EX` are not.
    async fn write_all_zones(&self, key: &[u8], command: Command) -> Result<(), ClientError> {
        let needed = self.inner.config.write_ack.needed(self.inner.zones.len());
        let (tx, mut rx) = mpsc::channel(self.inner.zones.len());
        for zone in &self.inner.zones {
            let node = zone.node(key).clone();
            let (tx, command) = (tx.clone(), command.clone());
            tokio::spawn(async move {
                let result = node
                    .exchange(std::slice::from_ref(&command))
                    .await
                    .and_then(|replies| match replies.first().map(|r| r.status) {
                        Some(MetaStatus::Stored | MetaStatus::NotFound) => Ok(()),
                        other => Err(ClientError::Server {
                            node: node.id.clone(),
                            error: ReplyError::Malformed {
                                line: format!("write answered {other:?}"),
                            },
                        }),
                    });
                let _ = tx.send(result).await;
            });
        }
        drop(tx);
        let (mut acked, mut errors) = (0, Vec::new());
        while let Some(result) = rx.recv().await {
            match result {
                Ok(()) => acked += 1,
                Err(error) => errors.push(error),
            }
            if acked >= needed {
                return Ok(());
            }
            if self.inner.zones.len() - errors.len() < needed {
                break;
            }
        }
        Err(ClientError::NotEnoughAcks {
            needed,
            acked,
            errors,
        })
    }

    /// Returns `key`'s value, loading it with `load` on a miss and storing it in every zone for `ttl`.
    ///
    /// Concurrent callers in this process share one load. Across processes the local zone's node elects one
    /// loader (see the module docs); the others wait for its value up to [`ClientConfig::load_lease`], then
    /// load themselves. A value marked stale by [`Client::invalidate`] is returned to every caller but the one
    /// that refreshes it. If the local zone fails, the other zones are read and the value loaded on a miss.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &[u8],
        ttl: Duration,
        load: F,
    ) -> Result<Bytes, ClientError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let owned = Bytes::copy_from_slice(key);
        let waiting = {
            let mut loads = self.inner.loads.lock();
            match loads.get(&owned) {
                Some(tx) => Some(tx.subscribe()),
                None => {
                    loads.insert(owned.clone(), broadcast::channel(1).0);
                    None
                }
            }
        };
        if let Some(mut rx) = waiting {
            return match rx.recv().await {
                Ok(result) => result,
                // The leader was cancelled: load without coalescing rather than fail.
                Err(_) => self.load_through(key, ttl, load).await,
            };
        }
        let guard = LoadGuard {
            loads: &self.inner.loads,
            key: owned.clone(),
        };
        let result = self.load_through(key, ttl, load).await;
        if let Some(tx) = self.inner.loads.lock().get(&owned) {
            let _ = tx.send(result.clone());
        }
        drop(guard);
        result
    }

    async fn load_through<F, Fut, E>(&self, key: &[u8], ttl: Duration, load: F) -> Result<Bytes, ClientError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let lease = self.inner.config.load_lease;
        let deadline = tokio::time::Instant::now() + lease;
        let (wire, base) = wire_key(key);
        let local = self.inner.zones[0].node(key).clone();
        let mut pause = Duration::from_millis(5);
        loop {
            let flags = base
                .clone()
                .with(b'v')
                .with(b't')
                .with_token(b'N', ttl_secs(lease));
            let command = Command::MetaGet {
                key: wire.clone(),
                flags,
            };
            let reply = match local.exchange(&[command]).await {
                Ok(replies) => replies.into_iter().next(),
                Err(_) => {
                    // The local zone is down: read the others, load on a miss.
                    if let Ok(Some(value)) = self.get(key).await {
                        return Ok(value);
                    }
                    break;
                }
            };
            let Some(reply) = reply.filter(|r| r.status == MetaStatus::Value) else {
                break;
            };
            if reply.won() {
                break;
            }
            let placeholder = reply.lost() && !reply.stale();
            if !placeholder {
                return Ok(reply.value.unwrap_or_default());
            }
            // Another caller is loading: wait for its value (polling, with a growing pause) up to the lease.
            if tokio::time::Instant::now() + pause > deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        let value = load().await.map_err(|e| ClientError::Load {
            message: e.to_string(),
        })?;
        // The value is returned even if storing it fails: the cache is an optimisation here.
        let _ = self.set(key, value.clone(), ttl).await;
        Ok(value)
    }
}
