//! The cache client: placement, replication across zones, fallback, read repair, coalesced loading, live
//! membership, consistent deletes, a near cache for hot keys and warm-up of joining nodes.
//!
//! - **Placement.** Each zone's nodes form a consistent-hash ring ([`trestle_shard_router::ShardMap`]); a key
//!   lives on one node per zone, and every zone holds a full copy.
//! - **Membership.** The node list is static ([`ClientConfig::nodes`]), replaced by hand
//!   ([`Client::update_nodes`]), or followed from any [`Membership`] ([`Client::follow`]; for nodes registered
//!   in the Trestle store, [`discover_client`](crate::discover_client)). A change swaps the whole view at once;
//!   requests in flight finish on the nodes they started with (see `topology.rs`).
//! - **Writes** ([`Client::set`], [`Client::delete`], [`Client::invalidate`]) go to every zone at once and return
//!   when [`ClientConfig::write_ack`] zones have acknowledged; the other writes finish in the background. A zone
//!   that fails a write is sent a tombstone in the background until it takes it (see below).
//! - **Reads** ([`Client::get`], [`Client::get_many`]) go to the local zone first and fall back to the next zone
//!   on a miss or an error; a value found elsewhere after a local miss is written back to the local zone (read
//!   repair, with `add` semantics so it never overwrites a newer local value).
//! - **Deletes leave tombstones.** [`Client::delete`] stores, in every zone, an empty value with the client flags
//!   [`TOMBSTONE_FLAGS`] that lives [`ClientConfig::tombstone_ttl`]. A read that finds a tombstone stops there: it
//!   is a miss that does not fall back to other zones, so a zone that missed the delete cannot hand the old value
//!   back, and read repair, warm-up and fallback copies (all `add`s) cannot overwrite it. A zone that missed a
//!   write or a delete (down, partitioned) is retried in the background with a tombstone, pausing up to
//!   [`ClientConfig::max_retry_pause`], until it accepts it or the tombstone TTL has passed; a later write of
//!   the same key by this client supersedes the retry if the failed write surely never left (a write that timed
//!   out may still land). An older write that a node applied after a newer one (told apart by the CAS values the
//!   node gave them) is corrected with a tombstone.
//! - **Failures** are per node: a timeout per request, and a circuit breaker from trestle-breaker that fails
//!   fast while a node is down and lets a trial request through after its wait.
//! - **Coalescing** ([`Client::get_or_load`]): concurrent misses in one process share one load, and across
//!   processes the meta protocol's tokens elect one loader (`mg ... N<lease>`: the first caller gets `W`, the others
//!   `Z` and wait for its value), and serve a value invalidated with [`Client::invalidate`] stale (`X`) to everyone
//!   but the one caller that refreshes it.
//! - **Hot keys** ([`ClientConfig::hot_keys`]): trestle-shard-router's detector counts reads; a hot key's reads
//!   rotate over the zones, and the near cache ([`ClientConfig::near_cache`]) keeps hot keys in process for a
//!   short TTL. This client's writes and deletes remove the key from its near cache at once.
//! - **Warm-up** of a node that joins a zone: see [`WarmUpProgress`] and `warmup.rs`.
//!
//! Keys that memcached accepts as they are (up to 250 bytes, no spaces or control characters) are sent as they
//! are, so other memcached clients see the same keys; other keys are sent base64-encoded with the `b` flag.

mod config;
mod near;
mod node;
mod topology;
mod warmup;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc};
use trestle_breaker::machine::{BreakerMachine, RetryBudget};
use trestle_shard_router::{HotKey, Membership, Node, ShardMap};

pub use config::{
    Ack, ClientConfig, ClientConfigError, HotKeysConfig, NearCacheConfig, NodeSpec, ProbeConfig, WarmUpConfig,
};
pub use warmup::{WarmUpProgress, WarmUpState};

use near::{HotKeys, NearCache};
use node::NodeClient;
use topology::{Topology, Zone};
use warmup::WarmUp;

use crate::protocol::{Command, MAX_KEY_LEN, MetaFlags, MetaReply, MetaStatus, ReplyError};

/// The client flags that mark a delete's tombstone (an empty value stored in place of a deleted one). Other
/// memcached clients reading such a key see an empty value with these flags.
pub const TOMBSTONE_FLAGS: u32 = 0x7472_6d62;

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
    /// The client knows no node (membership is empty).
    #[error("no cache node is known")]
    NoNodes,
}

/// Counters of the client's reads and background retries, from [`Client::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Calls of [`Client::get`].
    pub reads: u64,
    /// Reads answered by the near cache.
    pub near_hits: u64,
    /// Reads answered by the local zone (a joining node's previous owner included).
    pub local_hits: u64,
    /// Of the local hits, those answered by the previous owner of a node being warmed.
    pub warm_hits: u64,
    /// Reads answered by another zone.
    pub other_zone_hits: u64,
    /// Reads that found nothing (a tombstone included).
    pub misses: u64,
    /// Reads that failed in every zone.
    pub errors: u64,
    /// Writes to one zone that are in flight now (those finishing in the background after an early
    /// acknowledgement included).
    pub writes_in_flight: u64,
    /// Zones that missed a write and are being retried in the background now.
    pub retries_pending: u64,
    /// Zones that took a retried tombstone.
    pub retries_done: u64,
    /// Retries given up: the tombstone TTL passed first.
    pub retries_abandoned: u64,
    /// Retry attempts put off because the retry budget ([`ClientConfig::retry_budget`]) was spent.
    pub retries_throttled: u64,
    /// Nodes skipped now: their breaker opened and no probe has found them back yet ([`ProbeConfig`]).
    pub nodes_down: u64,
    /// Probes sent to nodes that were down.
    pub probes: u64,
}

impl ClientStats {
    /// The share of reads answered without leaving the zone (near cache included), 0 to 1.
    pub fn local_hit_ratio(&self) -> f64 {
        if self.reads == 0 {
            return 0.0;
        }
        (self.near_hits + self.local_hits) as f64 / self.reads as f64
    }
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    near_hits: AtomicU64,
    local_hits: AtomicU64,
    warm_hits: AtomicU64,
    other_zone_hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    retries_pending: AtomicU64,
    retries_done: AtomicU64,
    retries_abandoned: AtomicU64,
    retries_throttled: AtomicU64,
    /// Shared with every node's probe.
    probes: Arc<AtomicU64>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

type LoadResult = Result<Bytes, ClientError>;

/// Background retries of one key: the write they carry and how many zones are still being retried.
struct Retry {
    write: u64,
    zones: usize,
}

/// The writes of one key in flight: how many zone writes are outstanding and, per node written, what landed.
#[derive(Default)]
struct KeyWrites {
    in_flight: usize,
    landed: HashMap<String, Landed>,
}

/// The writes of one key that landed on one node.
#[derive(Default)]
struct Landed {
    /// The newest write (by this client's order) that landed.
    newest: u64,
    /// The write the node applied last, by the CAS it gave it (nodes number their stores in order): `(cas, write)`.
    top: Option<(u64, u64)>,
}

struct Inner {
    config: ClientConfig,
    topology: RwLock<Arc<Topology>>,
    /// Serialises membership changes.
    updating: Mutex<()>,
    /// Loads in flight in this process, by key: latecomers subscribe instead of loading.
    loads: Mutex<HashMap<Bytes, broadcast::Sender<LoadResult>>>,
    near: Option<NearCache>,
    hot: Option<HotKeys>,
    next_write: AtomicU64,
    retries: Mutex<HashMap<Bytes, Retry>>,
    /// Caps background retries at a share of recent zone writes.
    budget: Option<Mutex<RetryBudget>>,
    /// Writes in flight, by key: to notice an older write landing after a newer one in the same zone.
    writes: Mutex<HashMap<Bytes, KeyWrites>>,
    warm_ups: Mutex<Vec<Arc<WarmUp>>>,
    counters: Counters,
    follower: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.follower.get_mut().take() {
            task.abort();
        }
    }
}

impl Inner {
    fn topology(&self) -> Arc<Topology> {
        self.topology.read().clone()
    }

    /// Records the outcome of write `write` of `key` in `zone`. Returns the newer write that had already landed
    /// there if this one landed after it (the two went over different connections): the zone may now hold the
    /// older value and must be corrected.
    ///
    /// A write whose reply carries the CAS the node gave it is ordered by that CAS (the order the node applied the
    /// writes in, whatever order the replies came back in); one without (an invalidation) by its reply's arrival.
    fn landed(&self, key: &Bytes, node: &str, write: u64, outcome: Option<Option<u64>>) -> Option<u64> {
        let mut writes = self.writes.lock();
        let entry = writes.get_mut(key)?;
        let cas = outcome?;
        let landed = entry.landed.entry(node.to_owned()).or_default();
        let newest_before = landed.newest;
        landed.newest = landed.newest.max(write);
        match cas {
            Some(cas) => {
                if landed.top.is_none_or(|(top, _)| cas > top) {
                    landed.top = Some((cas, write));
                }
                let (_, on_top) = landed.top?;
                (on_top < landed.newest).then_some(landed.newest)
            }
            None => (write < newest_before).then_some(newest_before),
        }
    }

    /// Records that one zone write of `key` finished (after any retry it needs is registered, so that no one sees
    /// neither the write in flight nor its retry pending).
    fn write_done(&self, key: &Bytes) {
        let mut writes = self.writes.lock();
        if let Some(entry) = writes.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.in_flight == 0 {
                writes.remove(key);
            }
        }
    }
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
pub(crate) fn wire_key(key: &[u8]) -> (Bytes, MetaFlags) {
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

fn is_tombstone(reply: &MetaReply) -> bool {
    reply.status == MetaStatus::Value
        && reply.flags.number::<u32>(b'f').and_then(Result::ok) == Some(TOMBSTONE_FLAGS)
        && reply.value.as_ref().is_none_or(Bytes::is_empty)
}

/// What one node said about a key.
enum Found {
    Value(MetaReply),
    Tombstone(MetaReply),
    Miss,
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

/// Sends one write to one node; `HD` and `NF` (nothing to delete or invalidate) are acknowledgements. Returns
/// the CAS the node gave the item, when the command asked for it (`c`).
async fn write_once(node: &NodeClient, command: &Command) -> Result<Option<u64>, ClientError> {
    let replies = node.exchange(std::slice::from_ref(command)).await?;
    let reply = replies.first();
    match reply.map(|r| r.status) {
        Some(MetaStatus::Stored | MetaStatus::NotFound) => Ok(reply
            .and_then(|r| r.flags.number::<u64>(b'c'))
            .and_then(Result::ok)
            .filter(|&cas| cas > 0)),
        other => Err(ClientError::Server {
            node: node.id.clone(),
            error: ReplyError::Malformed {
                line: format!("write answered {other:?}"),
            },
        }),
    }
}

impl Client {
    /// A client for `config` (validated). Connections are opened on first use.
    pub fn new(config: ClientConfig) -> Result<Self, ClientConfigError> {
        config.validate()?;
        Self::build(config)
    }

    /// A client whose node list may be empty (it follows membership).
    pub(crate) fn build(config: ClientConfig) -> Result<Self, ClientConfigError> {
        config.validate_settings()?;
        config::check_nodes(&config.nodes)?;
        let near = config.near_cache.as_ref().map(NearCache::new);
        let hot = config.hot_keys.as_ref().map(HotKeys::new).transpose()?;
        let nodes = config.nodes.clone();
        let budget = config
            .retry_budget
            .clone()
            .map(|b| RetryBudget::new(b).map(Mutex::new))
            .transpose()
            .map_err(ClientConfigError::RetryBudget)?;
        let client = Self {
            inner: Arc::new(Inner {
                config,
                topology: RwLock::default(),
                updating: Mutex::default(),
                loads: Mutex::default(),
                near,
                hot,
                next_write: AtomicU64::new(1),
                retries: Mutex::default(),
                budget,
                writes: Mutex::default(),
                warm_ups: Mutex::default(),
                counters: Counters::default(),
                follower: Mutex::default(),
            }),
        };
        client.apply(nodes, false)?;
        Ok(client)
    }

    /// The configuration (its node list is the one the client started with; [`Client::nodes`] has today's).
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The nodes the client uses now, by zone (local first) and id.
    pub fn nodes(&self) -> Vec<NodeSpec> {
        let topology = self.inner.topology();
        let mut specs = Vec::new();
        for zone in &topology.zones {
            let mut ids: Vec<&String> = zone.nodes.keys().collect();
            ids.sort();
            for id in ids {
                specs.push(NodeSpec::new(id.clone(), zone.nodes[id].addr, zone.name.clone()));
            }
        }
        specs
    }

    /// The id of the node holding `key` in `zone`, if the zone exists.
    pub fn node_for(&self, zone: &str, key: &[u8]) -> Option<String> {
        self.inner.topology().zone(zone).map(|z| z.node(key).id.clone())
    }

    /// Counters of reads and background retries since the client was built.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            reads: get(&c.reads),
            near_hits: get(&c.near_hits),
            local_hits: get(&c.local_hits),
            warm_hits: get(&c.warm_hits),
            other_zone_hits: get(&c.other_zone_hits),
            misses: get(&c.misses),
            errors: get(&c.errors),
            writes_in_flight: self
                .inner
                .writes
                .lock()
                .values()
                .map(|w| w.in_flight as u64)
                .sum(),
            retries_pending: get(&c.retries_pending),
            retries_done: get(&c.retries_done),
            retries_abandoned: get(&c.retries_abandoned),
            retries_throttled: get(&c.retries_throttled),
            nodes_down: self
                .inner
                .topology()
                .zones
                .iter()
                .flat_map(|z| z.nodes.values())
                .filter(|n| n.is_down())
                .count() as u64,
            probes: get(&c.probes),
        }
    }

    /// The keys hot-key detection finds hot now, hottest first (empty without [`ClientConfig::hot_keys`]).
    pub fn hot_keys(&self) -> Vec<HotKey> {
        self.inner.hot.as_ref().map(HotKeys::hot_keys).unwrap_or_default()
    }

    /// Entries in the near cache now (0 without [`ClientConfig::near_cache`]).
    pub fn near_cache_len(&self) -> usize {
        self.inner.near.as_ref().map_or(0, NearCache::len)
    }

    /// The warm-ups of nodes that joined since the client was built (the latest 32), oldest first.
    pub fn warm_ups(&self) -> Vec<WarmUpProgress> {
        self.inner.warm_ups.lock().iter().map(|w| w.snapshot()).collect()
    }

    /// Replaces the node list. Zones whose ring changes switch at once (requests in flight finish on the nodes
    /// they started with). When [`WarmUpConfig::enabled`], a node new to a zone is warmed with the ranges it
    /// takes over, and a node that takes over the ranges of a peer that left is warmed from another zone (the
    /// warm-ups run on the Tokio runtime this is called on). Nodes that stay keep
    /// their connections and breakers. An empty list is allowed: reads and writes then fail with
    /// [`ClientError::NoNodes`].
    pub fn update_nodes(&self, nodes: Vec<NodeSpec>) -> Result<(), ClientConfigError> {
        config::check_nodes(&nodes)?;
        self.apply(nodes, self.inner.config.warm_up.enabled)
    }

    /// Follows `membership`: each map it publishes becomes the client's node list, as with
    /// [`Client::update_nodes`]. A node's id must be its memcached address (`host:port`, as
    /// [`register_node`](crate::register_node) writes it) and it must have a zone; other records are skipped with
    /// a warning. Replaces an earlier `follow`; the task stops when the last clone of the client is dropped. Must
    /// be called on a Tokio runtime.
    pub fn follow<M: Membership + 'static>(&self, membership: M) {
        let weak = Arc::downgrade(&self.inner);
        let mut maps = membership.watch();
        let task = tokio::spawn(async move {
            let _membership = membership;
            loop {
                let map = maps.borrow_and_update().clone();
                let Some(inner) = weak.upgrade() else { return };
                let client = Client { inner };
                if let Err(error) = client.update_nodes(specs_from_map(map.as_deref())) {
                    tracing::warn!(%error, "cache membership change rejected; keeping the previous nodes");
                }
                drop(client);
                if maps.changed().await.is_err() {
                    return;
                }
            }
        });
        if let Some(old) = self.inner.follower.lock().replace(task.abort_handle()) {
            old.abort();
        }
    }

    fn apply(&self, specs: Vec<NodeSpec>, warm: bool) -> Result<(), ClientConfigError> {
        let inner = &self.inner;
        let config = &inner.config;
        let _updating = inner.updating.lock();
        let old = inner.topology();
        let mut names: Vec<String> = Vec::new();
        if specs.iter().any(|s| s.zone == config.local_zone) {
            names.push(config.local_zone.clone());
        }
        for spec in &specs {
            if !names.contains(&spec.zone) {
                names.push(spec.zone.clone());
            }
        }
        let mut zones = Vec::new();
        let mut jobs = Vec::new();
        for name in names {
            let zone_specs: Vec<&NodeSpec> = specs.iter().filter(|n| n.zone == name).collect();
            let map = ShardMap::new(
                zone_specs
                    .iter()
                    .map(|n| Node::new(n.id.as_str()).with_zone(&n.zone)),
            )
            .map_err(|e| ClientConfigError::Placement {
                zone: name.clone(),
                reason: e.to_string(),
            })?;
            let mut nodes = HashMap::new();
            for spec in &zone_specs {
                let node = match old.node(&spec.id).filter(|n| n.addr == spec.addr) {
                    Some(node) => node.clone(),
                    None => {
                        let breaker = BreakerMachine::new(config.breaker.clone())
                            .map_err(|e| ClientConfigError::Breaker(e.to_string()))?;
                        Arc::new(NodeClient::new(
                            spec.id.clone(),
                            spec.addr,
                            config,
                            breaker,
                            self.inner.counters.probes.clone(),
                        ))
                    }
                };
                nodes.insert(spec.id.clone(), node);
            }
            let old_zone = old.zone(&name);
            let mut warming: Vec<Arc<WarmUp>> = old_zone
                .map(|z| {
                    z.warming
                        .iter()
                        .filter(|w| w.is_running() && nodes.contains_key(&w.node))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            // A zone that had nodes before is compared with its old ring. A zone new to the client is compared
            // with another zone's ring: every range it holds then comes from a node it does not have, and is
            // copied from the other zones (so a new zone starts full instead of filling by read repair).
            let reference = old_zone.or_else(|| old.zones.first());
            if let (true, Some(reference)) = (warm, reference) {
                let plan = reference.map.plan_to(&map);
                for spec in &zone_specs {
                    // A new node takes over ranges from its peers; a node that stays takes over the ranges of
                    // peers that left, which other zones still hold.
                    let stays = reference.nodes.contains_key(&spec.id);
                    let moves: Vec<_> = plan
                        .incoming(&spec.id)
                        .filter(|m| !stays || !nodes.contains_key(m.from.as_str()))
                        .cloned()
                        .collect();
                    if moves.is_empty() {
                        continue;
                    }
                    let job = Arc::new(WarmUp::new(&name, &spec.id, moves));
                    warming.push(job.clone());
                    jobs.push(job);
                }
            }
            zones.push(Zone {
                local: name == config.local_zone,
                name,
                map: Arc::new(map),
                nodes,
                warming,
            });
        }
        let topology = Arc::new(Topology { zones });
        *inner.topology.write() = topology.clone();
        if !jobs.is_empty() {
            self.start_warm_ups(jobs, &topology);
        }
        Ok(())
    }

    /// Registers the warm-ups of one membership change and starts one task that runs them all.
    fn start_warm_ups(&self, jobs: Vec<Arc<WarmUp>>, topology: &Topology) {
        {
            let mut all = self.inner.warm_ups.lock();
            all.extend(jobs.iter().cloned());
            while all.len() > 32 {
                let Some(i) = all.iter().position(|w| !w.is_running()) else {
                    break;
                };
                all.remove(i);
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no Tokio runtime: joining nodes are not warmed");
            for job in jobs {
                job.finish(WarmUpState::Cancelled);
            }
            return;
        };
        let mut planned = Vec::new();
        for job in jobs {
            let zone = topology.zone(&job.zone);
            let Some((zone, target)) = zone.and_then(|z| Some((z, z.nodes.get(&job.node)?.clone()))) else {
                job.finish(WarmUpState::Cancelled);
                continue;
            };
            // A source is a peer in the zone, or, for a zone new to the client, the node of another zone whose
            // ring the new one was compared with (every zone holds a full copy).
            let sources = job
                .snapshot()
                .sources
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        zone.nodes.get(id).or_else(|| topology.node(id)).cloned(),
                    )
                })
                .collect();
            let fallbacks = topology
                .zones
                .iter()
                .filter(|z| z.name != job.zone)
                .flat_map(|z| z.nodes.values().cloned())
                .collect();
            let plan = warmup::WarmUpPlan {
                target,
                sources,
                fallbacks,
            };
            planned.push((job, plan));
        }
        let weak = Arc::downgrade(&self.inner);
        let alive = move |job: &WarmUp| {
            weak.upgrade().is_some_and(|inner| {
                inner
                    .topology()
                    .zone(&job.zone)
                    .is_some_and(|z| z.nodes.contains_key(&job.node))
            })
        };
        runtime.spawn(warmup::run_all(planned, self.inner.config.warm_up.clone(), alive));
    }

    /// Reads `key`: the local zone first, then each other zone on a miss or an error. A value invalidated with
    /// [`Client::invalidate`] counts as a miss here ([`Client::get_or_load`] serves it stale); a tombstone
    /// ([`Client::delete`]) is a miss that ends the search. Fails only when every zone failed.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, ClientError> {
        let counters = &self.inner.counters;
        bump(&counters.reads);
        let hot = self.inner.hot.as_ref().is_some_and(|h| h.observe(key));
        let near = self
            .inner
            .near
            .as_ref()
            .filter(|n| hot || !n.hot_only || self.inner.hot.is_none());
        if let Some(value) = near.and_then(|n| n.get(key)) {
            bump(&counters.near_hits);
            return Ok(Some(value));
        }
        let epoch = near.map(|n| n.epoch(key));
        let result = self.read(key, hot).await;
        match &result {
            Ok(Some(value)) => {
                if let (Some(near), Some(epoch)) = (near, epoch) {
                    near.insert(key, value.clone(), epoch);
                }
            }
            Ok(None) => bump(&counters.misses),
            Err(_) => bump(&counters.errors),
        }
        result
    }

    async fn read(&self, key: &[u8], hot: bool) -> Result<Option<Bytes>, ClientError> {
        let topology = self.inner.topology();
        let zones = &topology.zones;
        if zones.is_empty() {
            return Err(ClientError::NoNodes);
        }
        let (wire, base) = wire_key(key);
        // A hot key's reads rotate over the zones, each holding a full copy.
        let first = match &self.inner.hot {
            Some(h) if hot && h.spread => (h.turn() % zones.len() as u64) as usize,
            _ => 0,
        };
        let mut errors = Vec::new();
        let mut local_missed = false;
        for index in (0..zones.len()).map(|i| (first + i) % zones.len()) {
            let zone = &zones[index];
            match self.read_zone(zone, key, &wire, &base).await {
                Ok(Found::Value(reply)) => {
                    if local_missed && self.inner.config.read_repair {
                        self.repair(&topology, key, &reply);
                    }
                    let counters = &self.inner.counters;
                    bump(if zone.local {
                        &counters.local_hits
                    } else {
                        &counters.other_zone_hits
                    });
                    return Ok(Some(reply.value.unwrap_or_default()));
                }
                Ok(Found::Tombstone(reply)) => {
                    // The key was deleted: no other zone's copy may answer for it. A local zone that missed
                    // the delete gets the tombstone too.
                    if local_missed {
                        self.repair(&topology, key, &reply);
                    }
                    return Ok(None);
                }
                Ok(Found::Miss) => local_missed |= zone.local,
                Err(error) => errors.push(error),
            }
        }
        if errors.len() == zones.len() {
            return Err(ClientError::AllZonesFailed { errors });
        }
        Ok(None)
    }

    /// Reads `key` from its node in `zone`; on a miss at a node being warmed, from the key's previous owner.
    async fn read_zone(
        &self,
        zone: &Zone,
        key: &[u8],
        wire: &Bytes,
        base: &MetaFlags,
    ) -> Result<Found, ClientError> {
        let node = zone.node(key);
        let found = self.read_node(node, wire, base).await?;
        if !matches!(found, Found::Miss) {
            return Ok(found);
        }
        let Some(source) = zone.warm_source(key) else {
            return Ok(found);
        };
        match self.read_node(source, wire, base).await {
            Ok(Found::Value(reply)) => {
                bump(&self.inner.counters.warm_hits);
                copy_reply(node.clone(), key, &reply);
                Ok(Found::Value(reply))
            }
            Ok(Found::Tombstone(reply)) => {
                copy_reply(node.clone(), key, &reply);
                Ok(Found::Tombstone(reply))
            }
            _ => Ok(Found::Miss),
        }
    }

    async fn read_node(
        &self,
        node: &NodeClient,
        wire: &Bytes,
        base: &MetaFlags,
    ) -> Result<Found, ClientError> {
        let flags = base.clone().with(b'v').with(b'f').with(b't');
        let command = Command::MetaGet {
            key: wire.clone(),
            flags,
        };
        let Some(reply) = node.exchange(&[command]).await?.into_iter().next() else {
            return Ok(Found::Miss);
        };
        if reply.stale() && reply.won() {
            // The node handed this read the right to refresh, which a plain get does not use: give it back
            // (invalidating again clears it) so a `get_or_load` caller refreshes.
            self.give_back_token(node, wire, base).await;
        }
        if is_tombstone(&reply) {
            return Ok(Found::Tombstone(reply));
        }
        // A stale value, or the empty placeholder of a load in progress, is a miss here.
        let placeholder = reply.lost() && reply.value.as_ref().is_some_and(Bytes::is_empty);
        if reply.status != MetaStatus::Value || reply.stale() || placeholder {
            return Ok(Found::Miss);
        }
        Ok(Found::Value(reply))
    }

    async fn give_back_token(&self, node: &NodeClient, wire: &Bytes, base: &MetaFlags) {
        let command = Command::MetaDelete {
            key: wire.clone(),
            flags: base.clone().with(b'I').with(b'q'),
        };
        let _ = node.exchange(&[command]).await;
    }

    /// Writes a value (or tombstone) found in another zone back to the local zone, in the background, without
    /// overwriting.
    fn repair(&self, topology: &Topology, key: &[u8], reply: &MetaReply) {
        if let Some(local) = topology.local() {
            copy_reply(local.node(key).clone(), key, reply);
        }
    }

    /// Reads many keys with one request per node: the local zone's nodes first, then the keys still missing
    /// from the next zone's, and so on. Returns the values found; a tombstone ends a key's search as in
    /// [`Client::get`]. Fails only when a key's every zone failed. Does not use the near cache.
    pub async fn get_many(&self, keys: &[&[u8]]) -> Result<HashMap<Bytes, Bytes>, ClientError> {
        let topology = self.inner.topology();
        if topology.zones.is_empty() {
            return Err(ClientError::NoNodes);
        }
        let mut found = HashMap::new();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut failures: HashMap<usize, Vec<ClientError>> = HashMap::new();
        for zone in &topology.zones {
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
                        let flags = base.with(b'v').with(b'f').with(b'q').with_token(b'O', i);
                        Command::MetaGet { key: wire, flags }
                    })
                    .collect();
                (indexes.clone(), node.exchange(&commands).await)
            });
            let mut still = Vec::new();
            for (indexes, result) in join_all(requests).await {
                match result {
                    Ok(replies) => {
                        let mut done = std::collections::HashSet::new();
                        for reply in replies {
                            let Some(Ok(i)) = reply.flags.number::<usize>(b'O') else {
                                continue;
                            };
                            if i >= keys.len() {
                                continue;
                            }
                            if is_tombstone(&reply) {
                                done.insert(i);
                            } else if reply.status == MetaStatus::Value && !reply.stale() && !reply.lost() {
                                found
                                    .insert(Bytes::copy_from_slice(keys[i]), reply.value.unwrap_or_default());
                                done.insert(i);
                            }
                        }
                        still.extend(indexes.into_iter().filter(|i| !done.contains(i)));
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
            .find(|(_, e)| e.len() == topology.zones.len())
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

    /// Deletes `key` in every zone by storing a tombstone there (see the module docs): for
    /// [`ClientConfig::tombstone_ttl`], no read through this crate's client finds the old value in any zone
    /// that took the tombstone, and zones that missed it are retried in the background until they take it.
    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        self.write_all_zones(key, self.tombstone(key)).await
    }

    fn tombstone(&self, key: &[u8]) -> Command {
        let (wire, base) = wire_key(key);
        Command::MetaSet {
            key: wire,
            data: Bytes::new(),
            flags: base
                .with_token(b'T', ttl_secs(self.inner.config.tombstone_ttl))
                .with_token(b'F', TOMBSTONE_FLAGS),
        }
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
    /// background. A `NF` (nothing to delete) is an acknowledgement; `NS`/`EX` are not. A zone that fails is
    /// retried with a tombstone in the background.
    async fn write_all_zones(&self, key: &[u8], command: Command) -> Result<(), ClientError> {
        if let Some(near) = &self.inner.near {
            near.invalidate(key);
        }
        let topology = self.inner.topology();
        let zones = topology.zones.len();
        if zones == 0 {
            return Err(ClientError::NoNodes);
        }
        let write = self.inner.next_write.fetch_add(1, Ordering::Relaxed);
        let owned = Bytes::copy_from_slice(key);
        if let Some(retry) = self.inner.retries.lock().get_mut(&owned) {
            // This write supersedes the retries of an older one.
            retry.write = retry.write.max(write);
        }
        self.inner
            .writes
            .lock()
            .entry(owned.clone())
            .or_default()
            .in_flight += zones;
        if let Some(budget) = &self.inner.budget {
            let mut budget = budget.lock();
            let now = tokio::time::Instant::now().into_std();
            for _ in 0..zones {
                budget.deposit(now);
            }
        }
        let needed = self.inner.config.write_ack.needed(zones);
        let (tx, mut rx) = mpsc::channel(zones);
        // Sets (tombstones included) ask for the CAS the node gives them, which orders them on the node.
        let command = match command {
            Command::MetaSet { key, data, flags } => Command::MetaSet {
                key,
                data,
                flags: flags.with(b'c'),
            },
            other => other,
        };
        for zone in &topology.zones {
            let node = zone.node(key).clone();
            let (tx, command) = (tx.clone(), command.clone());
            let (weak, zone, key) = (Arc::downgrade(&self.inner), zone.name.clone(), owned.clone());
            tokio::spawn(async move {
                let result = write_once(&node, &command).await;
                let result_kind = result.clone().map(|_| ());
                let _ = tx.send(result.clone().map(|_| ())).await;
                let Some(inner) = weak.upgrade() else { return };
                let newer = inner.landed(&key, &node.id, write, result.ok());
                let retry = match &result_kind {
                    // A write that timed out or broke its connection may still land later, after a newer write
                    // of the key: its tombstone goes out even if a newer write supersedes it. One that surely
                    // never left (breaker open) or was refused is superseded by newer writes.
                    Err(error) => Some((
                        write,
                        Retrying::after_failure(matches!(
                            error,
                            ClientError::Timeout { .. } | ClientError::Io { .. }
                        )),
                    )),
                    // An older value may have overwritten a newer one (or a tombstone): replace it with a
                    // tombstone at once, which at worst costs a miss.
                    Ok(()) => newer.map(|newer| (newer, Retrying::LateWrite)),
                };
                let retry = retry.filter(|&(id, why)| register_retry(&inner, &key, id, why));
                inner.write_done(&key);
                drop(inner);
                if let Some((id, why)) = retry {
                    run_retry(weak, zone, key, id, why).await;
                }
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
            if zones - errors.len() < needed {
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
    /// that refreshes it; a deleted key's tombstone is loaded like a miss, by one caller. If the local zone
    /// fails, the other zones are read and the value loaded on a miss.
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
        if let Some(value) = self.inner.near.as_ref().and_then(|n| n.get(key)) {
            return Ok(value);
        }
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
        let topology = self.inner.topology();
        let Some(first) = topology.zones.first() else {
            return Err(ClientError::NoNodes);
        };
        let local = first.node(key).clone();
        drop(topology);
        let mut pause = Duration::from_millis(5);
        let mut turned = 0;
        loop {
            let flags = base
                .clone()
                .with(b'v')
                .with(b't')
                .with(b'f')
                .with(b'c')
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
            if is_tombstone(&reply) && !reply.lost() {
                if turned == 3 {
                    break;
                }
                // A deleted key: turn its tombstone into a load in progress (stale, so the next read hands out
                // one win token), unless another caller did so first (the CAS then no longer matches).
                turned += 1;
                let cas = reply.flags.number::<u64>(b'c').and_then(Result::ok).unwrap_or(0);
                let command = Command::MetaDelete {
                    key: wire.clone(),
                    flags: base.clone().with(b'I').with(b'q').with_token(b'C', cas),
                };
                let _ = local.exchange(&[command]).await;
                continue;
            }
            let placeholder = reply.lost() && (!reply.stale() || is_tombstone(&reply));
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

/// Adds a value (or tombstone) read elsewhere to `target`, in the background, keeping its flags and TTL.
fn copy_reply(target: Arc<NodeClient>, key: &[u8], reply: &MetaReply) {
    let ttl = reply.flags.number::<i64>(b't').and_then(Result::ok).unwrap_or(-1);
    let flags = reply.flags.number::<u32>(b'f').and_then(Result::ok).unwrap_or(0);
    warmup::copy_one(target, key, reply.value.clone().unwrap_or_default(), flags, ttl);
}

/// Why a zone is sent a tombstone in the background.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retrying {
    /// The write surely did not reach the zone: a later write of the key supersedes the retry.
    Missed,
    /// The write may still land later (it timed out or lost its connection): the tombstone goes out whatever
    /// is written after it.
    MayLandLate,
    /// An older write landed after a newer one: the tombstone goes out at once.
    LateWrite,
}

impl Retrying {
    fn after_failure(indeterminate: bool) -> Self {
        if indeterminate {
            Self::MayLandLate
        } else {
            Self::Missed
        }
    }
}

/// Whether a newer write of `key` by this client makes the retry of `write` unnecessary.
fn superseded(retries: &HashMap<Bytes, Retry>, key: &Bytes, write: u64, why: Retrying) -> bool {
    why != Retrying::MayLandLate && retries.get(key).is_some_and(|r| r.write > write)
}

/// Registers a retry of `write` (counted as pending from now); false if a newer write already supersedes it.
fn register_retry(inner: &Inner, key: &Bytes, write: u64, why: Retrying) -> bool {
    let mut retries = inner.retries.lock();
    if superseded(&retries, key, write, why) {
        return false;
    }
    let retry = retries.entry(key.clone()).or_insert(Retry { write, zones: 0 });
    retry.write = retry.write.max(write);
    retry.zones += 1;
    bump(&inner.counters.retries_pending);
    true
}

/// Sends `zone` a tombstone for `key` in the background (never the value: a late value could overwrite a newer
/// one written by another process; a late tombstone at worst costs a miss), until the zone takes it, the
/// tombstone TTL passes, or (unless `why` says otherwise) a later write of the key by this client supersedes it.
/// The retry must have been registered with [`register_retry`].
async fn run_retry(inner: Weak<Inner>, zone: String, key: Bytes, write: u64, why: Retrying) {
    let Some(strong) = inner.upgrade() else { return };
    let config = &strong.config;
    let deadline = tokio::time::Instant::now() + config.tombstone_ttl;
    let max_pause = config.max_retry_pause;
    let timeout = config.timeout;
    let client = Client { inner: strong };
    let command = client.tombstone(&key);
    drop(client);
    let mut pause = match why {
        Retrying::LateWrite => Duration::ZERO,
        Retrying::Missed => Duration::from_millis(200).min(max_pause),
        // A write that timed out went to a slow node: give it another timeout to land before the tombstone, which
        // must land after it.
        Retrying::MayLandLate => Duration::from_millis(200).min(max_pause).max(timeout),
    };
    let outcome = loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).clamp(Duration::from_millis(200).min(max_pause), max_pause);
        let Some(strong) = inner.upgrade() else { return };
        if superseded(&strong.retries.lock(), &key, write, why) {
            break None;
        }
        if tokio::time::Instant::now() >= deadline {
            break Some(false);
        }
        let Some(node) = strong.topology().zone(&zone).map(|z| z.node(&key).clone()) else {
            break None;
        };
        // A node that is down is left to its probe; an attempt the budget refuses waits for the next turn.
        if node.is_down() {
            continue;
        }
        if let Some(budget) = &strong.budget
            && !budget.lock().try_withdraw(tokio::time::Instant::now().into_std())
        {
            bump(&strong.counters.retries_throttled);
            continue;
        }
        if write_once(&node, &command).await.is_ok() {
            break Some(true);
        }
    };
    let Some(strong) = inner.upgrade() else { return };
    {
        let mut retries = strong.retries.lock();
        if let Some(retry) = retries.get_mut(&key) {
            retry.zones = retry.zones.saturating_sub(1);
            if retry.zones == 0 {
                retries.remove(&key);
            }
        }
    }
    let counters = &strong.counters;
    counters.retries_pending.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Some(true) => bump(&counters.retries_done),
        Some(false) => bump(&counters.retries_abandoned),
        None => {}
    }
}

/// The node list in a membership map: ids that are socket addresses, with zones.
pub(crate) fn specs_from_map(map: Option<&ShardMap>) -> Vec<NodeSpec> {
    let Some(map) = map else {
        return Vec::new();
    };
    let mut specs = Vec::new();
    for node in map.nodes() {
        let id = node.id().as_str();
        match (id.parse(), node.zone()) {
            (Ok(addr), Some(zone)) => specs.push(NodeSpec::new(id, addr, zone)),
            _ => tracing::warn!(
                node = id,
                "skipping a cache node whose id is not an address or that has no zone"
            ),
        }
    }
    specs
}
