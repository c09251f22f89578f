//! The client's configuration: a static node list with zones, acknowledgement level, timeouts, breakers, deletes,
//! the near cache, hot keys and warm-up.

use std::net::SocketAddr;
use std::time::Duration;

use trestle_breaker::{CircuitBreakerConfig, RetryBudgetConfig, SlidingWindow, WaitInOpen};
use trestle_shard_router::HotKeyConfig;

/// One cache node the client may use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeSpec {
    /// A unique name (placement hashes it: keep it stable across restarts and address changes).
    pub id: String,
    /// The node's memcached address.
    pub addr: SocketAddr,
    /// The zone holding this node. Every zone holds a full copy of the data.
    pub zone: String,
}

impl NodeSpec {
    /// A node named `id` at `addr` in `zone`.
    pub fn new(id: impl Into<String>, addr: SocketAddr, zone: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            addr,
            zone: zone.into(),
        }
    }
}

/// How many zones must acknowledge a write before it returns successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ack {
    /// The first zone to answer.
    One,
    /// A majority of the zones.
    Quorum,
    /// Every zone.
    All,
}

impl Ack {
    /// The acknowledgements needed out of `zones`.
    pub fn needed(self, zones: usize) -> usize {
        match self {
            Ack::One => 1.min(zones),
            Ack::Quorum => zones / 2 + 1,
            Ack::All => zones,
        }
    }
}

/// The client's configuration. Build with [`ClientConfig::new`] and the `with_` methods; [`validate`] checks it
/// (the client does on construction).
///
/// [`validate`]: ClientConfig::validate
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    /// The zone reads go to first (the caller's own).
    pub local_zone: String,
    /// Acknowledgements a write waits for. Default: [`Ack::One`]. Writes to the other zones go on in the
    /// background.
    pub write_ack: Ack,
    /// Time allowed for one request to one node (connecting included). Default 250 ms.
    pub timeout: Duration,
    /// Whether a value found in another zone after a local miss is written back to the local zone. Default on.
    pub read_repair: bool,
    /// The circuit breaker of each node. Default: opens at 50% failures over the last 20 calls (at least 5),
    /// probes again after 1 s, doubling up to 30 s.
    pub breaker: CircuitBreakerConfig,
    /// How a node whose breaker opened is found back. Default: probed in the background, requests fail fast
    /// meanwhile.
    pub probe: ProbeConfig,
    /// Caps the background retries of writes a zone missed at a share of recent writes (plus a small reserve),
    /// so that a recovering node is not flooded; a retry the budget refuses waits for its next turn. `None`
    /// removes the cap. Default: trestle-breaker's [`RetryBudgetConfig::default`] (20% of the writes of the
    /// last 10 s, plus 10 per second).
    pub retry_budget: Option<RetryBudgetConfig>,
    /// Idle connections kept per node. Default 8.
    pub max_idle_connections: usize,
    /// Connections open to one node at once; more concurrent requests wait for one, within their timeout.
    /// Default 64 (a node refuses connections over its own limit, 1024 by default).
    pub max_connections_per_node: usize,
    /// How long `get_or_load` holds the right to load a missing key (the `N` token's TTL): others wait for the
    /// winner's value this long at most, then load themselves. Default 5 s.
    pub load_lease: Duration,
    /// How long a delete's tombstone lives in each zone, and so how long a zone that missed a write or a delete
    /// is retried in the background (see [`Client::delete`](super::Client::delete)). Default 60 s.
    pub tombstone_ttl: Duration,
    /// The longest pause between background retries of a write to a zone that missed it. Default 1 s.
    pub max_retry_pause: Duration,
    /// The in-process near cache; `None` (the default) turns it off.
    pub near_cache: Option<NearCacheConfig>,
    /// Hot-key detection and read spreading; `None` (the default) turns it off.
    pub hot_keys: Option<HotKeysConfig>,
    /// Filling a node that joins a zone from the copies its peers hold. Default on.
    pub warm_up: WarmUpConfig,
}

/// The near cache: a small cache in the client's own memory that answers reads of hot keys without a round
/// trip. Its entries may be stale for up to [`ttl`](Self::ttl) after another process writes or deletes the key
/// (this client's own writes and deletes remove them at once).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheConfig {
    /// The most bytes of keys and values held. Default 8 MiB.
    pub capacity_bytes: u64,
    /// How long an entry is served. Default 1 s.
    pub ttl: Duration,
    /// Whether only keys that hot-key detection finds hot are kept (with [`ClientConfig::hot_keys`] set);
    /// otherwise every key read is. Default true.
    pub hot_only: bool,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        Self {
            capacity_bytes: 8 << 20,
            ttl: Duration::from_secs(1),
            hot_only: true,
        }
    }
}

impl NearCacheConfig {
    /// Sets the byte budget.
    pub fn with_capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }

    /// Sets how long entries are served.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Keeps only hot keys (true) or every key read (false).
    pub fn with_hot_only(mut self, hot_only: bool) -> Self {
        self.hot_only = hot_only;
        self
    }
}

/// Hot-key detection (trestle-shard-router's [`HotKeyDetector`](trestle_shard_router::HotKeyDetector) over the
/// keys read) and what the client does with a hot key. Every [`Client::get`](super::Client::get) then counts its
/// key under one short-held lock shared by the client's clones.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HotKeysConfig {
    /// The detector. Default: 64 keys tracked, hot above 1% of reads after 1000 reads.
    pub detector: HotKeyConfig,
    /// Counts are halved every this many reads, so keys that cooled down fade. Default 10 000.
    pub decay_every: u64,
    /// Whether a hot key's reads rotate over the zones (each holds a full copy) instead of all going to the
    /// local zone's node. Default true.
    pub spread_reads: bool,
}

impl Default for HotKeysConfig {
    fn default() -> Self {
        Self {
            detector: HotKeyConfig::default(),
            decay_every: 10_000,
            spread_reads: true,
        }
    }
}

impl HotKeysConfig {
    /// Sets the detector's configuration.
    pub fn with_detector(mut self, detector: HotKeyConfig) -> Self {
        self.detector = detector;
        self
    }

    /// Sets the decay period in reads.
    pub fn with_decay_every(mut self, reads: u64) -> Self {
        self.decay_every = reads;
        self
    }

    /// Turns spreading of hot keys' reads over zones on or off.
    pub fn with_spread_reads(mut self, on: bool) -> Self {
        self.spread_reads = on;
        self
    }
}

/// Finding a failed node back. While a node's breaker is open it is marked down: requests to it fail fast (reads
/// go to another zone at once) and one background task per node sends it `mn`, after the breaker's wait for that
/// consecutive failure ([`CircuitBreakerConfig::wait_in_open`]) scaled by a random factor in
/// `[1 - jitter, 1 + jitter]`. The first answer closes the breaker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// Whether failed nodes are probed in the background. Off, a failed node is tried again by the first request
    /// after the breaker's wait, which waits for its timeout if the node is still gone. Default on.
    pub enabled: bool,
    /// How far each wait may be moved either way, as a fraction of it, so that many clients do not probe a
    /// recovering node in step. In `[0, 1)`; default 0.2.
    pub jitter: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            jitter: 0.2,
        }
    }
}

impl ProbeConfig {
    /// Background probing off: requests find a node back after the breaker's wait.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }
}

/// Warm-up of joining nodes: see [`Client::warm_ups`](super::Client::warm_ups).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmUpConfig {
    /// Whether a node that joins a zone is filled from the keys it takes over. Default true.
    pub enabled: bool,
    /// Keys copied per request. Default 100.
    pub batch: usize,
    /// Time allowed for listing one peer's keys (`lru_crawler metadump`). Default 10 s.
    pub list_timeout: Duration,
}

impl Default for WarmUpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch: 100,
            list_timeout: Duration::from_secs(10),
        }
    }
}

impl WarmUpConfig {
    /// Turns warm-up on or off.
    pub fn with_enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// Sets the keys copied per request.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
}

/// A configuration that cannot work, with the values that make it so.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// No nodes.
    #[error("no cache nodes configured")]
    NoNodes,
    /// Two nodes with one id.
    #[error("node id {id:?} is used twice")]
    DuplicateNode {
        /// The id.
        id: String,
    },
    /// The local zone has no node.
    #[error("local zone {zone:?} has no node (zones: {zones:?})")]
    UnknownLocalZone {
        /// The local zone.
        zone: String,
        /// The zones that have nodes.
        zones: Vec<String>,
    },
    /// A zero timeout or lease.
    #[error("{name} must be positive")]
    Zero {
        /// Which setting.
        name: &'static str,
    },
    /// The breaker configuration.
    #[error("circuit breaker: {0}")]
    Breaker(String),
    /// The retry budget's configuration.
    #[error("retry budget: {0}")]
    RetryBudget(#[source] trestle_breaker::ConfigError),
    /// A setting out of its range.
    #[error("{name} = {value}: {reason}")]
    Invalid {
        /// Which setting.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot work.
        reason: &'static str,
    },
    /// A zone's nodes do not form a placement ring.
    #[error("placement of zone {zone:?}: {reason}")]
    Placement {
        /// The zone.
        zone: String,
        /// Why.
        reason: String,
    },
}

impl ClientConfig {
    /// `nodes`, reading from `local_zone` first, with the defaults above.
    pub fn new(nodes: Vec<NodeSpec>, local_zone: impl Into<String>) -> Self {
        Self {
            nodes,
            local_zone: local_zone.into(),
            write_ack: Ack::One,
            timeout: Duration::from_millis(250),
            read_repair: true,
            breaker: CircuitBreakerConfig::default()
                .with_failure_rate_threshold(50.0)
                .with_sliding_window(SlidingWindow::Count { size: 20 })
                .with_minimum_calls(5)
                .with_wait_in_open(WaitInOpen::Exponential {
                    initial: Duration::from_secs(1),
                    multiplier: 2.0,
                    max: Duration::from_secs(30),
                }),
            probe: ProbeConfig::default(),
            retry_budget: Some(RetryBudgetConfig::default()),
            max_idle_connections: 8,
            max_connections_per_node: 64,
            load_lease: Duration::from_secs(5),
            tombstone_ttl: Duration::from_secs(60),
            max_retry_pause: Duration::from_secs(1),
            near_cache: None,
            hot_keys: None,
            warm_up: WarmUpConfig::default(),
        }
    }

    /// Sets how long delete tombstones live (and background retries of missed writes go on).
    pub fn with_tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Sets the longest pause between background retries of a missed write.
    pub fn with_max_retry_pause(mut self, pause: Duration) -> Self {
        self.max_retry_pause = pause;
        self
    }

    /// Turns the near cache on with `near`.
    pub fn with_near_cache(mut self, near: NearCacheConfig) -> Self {
        self.near_cache = Some(near);
        self
    }

    /// Turns hot-key detection on with `hot`.
    pub fn with_hot_keys(mut self, hot: HotKeysConfig) -> Self {
        self.hot_keys = Some(hot);
        self
    }

    /// Sets warm-up of joining nodes.
    pub fn with_warm_up(mut self, warm_up: WarmUpConfig) -> Self {
        self.warm_up = warm_up;
        self
    }

    /// Replaces the node list.
    pub fn with_nodes(mut self, nodes: Vec<NodeSpec>) -> Self {
        self.nodes = nodes;
        self
    }

    /// Sets the acknowledgement level of writes.
    pub fn with_write_ack(mut self, ack: Ack) -> Self {
        self.write_ack = ack;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Turns read repair on or off.
    pub fn with_read_repair(mut self, on: bool) -> Self {
        self.read_repair = on;
        self
    }

    /// Sets each node's circuit breaker.
    pub fn with_breaker(mut self, breaker: CircuitBreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Sets how failed nodes are found back.
    pub fn with_probe(mut self, probe: ProbeConfig) -> Self {
        self.probe = probe;
        self
    }

    /// Sets the budget of background write retries (`None`: no cap).
    pub fn with_retry_budget(mut self, budget: Option<RetryBudgetConfig>) -> Self {
        self.retry_budget = budget;
        self
    }

    /// Sets the most connections open to one node at once.
    pub fn with_max_connections_per_node(mut self, max: usize) -> Self {
        self.max_connections_per_node = max;
        self
    }

    /// Sets how long a `get_or_load` winner may take.
    pub fn with_load_lease(mut self, lease: Duration) -> Self {
        self.load_lease = lease;
        self
    }

    /// The zones, local first, then in the order their first node is listed.
    pub fn zones(&self) -> Vec<String> {
        let mut zones = vec![self.local_zone.clone()];
        for node in &self.nodes {
            if !zones.contains(&node.zone) {
                zones.push(node.zone.clone());
            }
        }
        zones
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ClientConfigError> {
        if self.nodes.is_empty() {
            return Err(ClientConfigError::NoNodes);
        }
        check_nodes(&self.nodes)?;
        if !self.nodes.iter().any(|n| n.zone == self.local_zone) {
            let mut zones: Vec<String> = self.nodes.iter().map(|n| n.zone.clone()).collect();
            zones.sort();
            zones.dedup();
            return Err(ClientConfigError::UnknownLocalZone {
                zone: self.local_zone.clone(),
                zones,
            });
        }
        self.validate_settings()
    }

    /// Checks everything but the node list (a client that follows membership gets its nodes later).
    pub(crate) fn validate_settings(&self) -> Result<(), ClientConfigError> {
        if self.timeout.is_zero() {
            return Err(ClientConfigError::Zero { name: "timeout" });
        }
        if self.max_connections_per_node == 0 {
            return Err(ClientConfigError::Zero {
                name: "max_connections_per_node",
            });
        }
        if self.load_lease.is_zero() {
            return Err(ClientConfigError::Zero { name: "load_lease" });
        }
        if self.tombstone_ttl < Duration::from_secs(1) {
            return Err(ClientConfigError::Invalid {
                name: "tombstone_ttl",
                value: format!("{:?}", self.tombstone_ttl),
                reason: "must be at least 1 s (memcached TTLs are whole seconds)",
            });
        }
        if self.max_retry_pause.is_zero() {
            return Err(ClientConfigError::Zero {
                name: "max_retry_pause",
            });
        }
        if let Some(near) = &self.near_cache {
            if near.capacity_bytes == 0 {
                return Err(ClientConfigError::Zero {
                    name: "near_cache.capacity_bytes",
                });
            }
            if near.ttl.is_zero() {
                return Err(ClientConfigError::Zero {
                    name: "near_cache.ttl",
                });
            }
        }
        if let Some(hot) = &self.hot_keys {
            hot.detector.validate().map_err(|e| ClientConfigError::Invalid {
                name: "hot_keys.detector",
                value: format!("{:?}", hot.detector),
                reason: match e {
                    trestle_shard_router::ShardError::InvalidConfig { reason, .. } => reason,
                    _ => "rejected by the detector",
                },
            })?;
            if hot.decay_every == 0 {
                return Err(ClientConfigError::Zero {
                    name: "hot_keys.decay_every",
                });
            }
        }
        if self.warm_up.batch == 0 {
            return Err(ClientConfigError::Zero {
                name: "warm_up.batch",
            });
        }
        if self.warm_up.list_timeout.is_zero() {
            return Err(ClientConfigError::Zero {
                name: "warm_up.list_timeout",
            });
        }
        if !(0.0..1.0).contains(&self.probe.jitter) {
            return Err(ClientConfigError::Invalid {
                name: "probe.jitter",
                value: self.probe.jitter.to_string(),
                reason: "must be in [0, 1)",
            });
        }
        if let Some(budget) = &self.retry_budget {
            budget.validate().map_err(ClientConfigError::RetryBudget)?;
        }
        self.breaker
            .validate()
            .map_err(|e| ClientConfigError::Breaker(e.to_string()))
    }
}

/// Node ids are unique.
pub(crate) fn check_nodes(nodes: &[NodeSpec]) -> Result<(), ClientConfigError> {
    let mut seen = std::collections::HashSet::new();
    for node in nodes {
        if !seen.insert(&node.id) {
            return Err(ClientConfigError::DuplicateNode { id: node.id.clone() });
        }
    }
    Ok(())
}
