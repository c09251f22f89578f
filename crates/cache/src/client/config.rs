//! The client's configuration: a static node list with zones, acknowledgement level, timeouts, breakers.

use std::net::SocketAddr;
use std::time::Duration;

use trestle_breaker::{CircuitBreakerConfig, SlidingWindow, WaitInOpen};

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
    /// Idle connections kept per node. Default 8.
    pub max_idle_connections: usize,
    /// Connections open to one node at once; more concurrent requests wait for one, within their timeout.
    /// Default 64 (a node refuses connections over its own limit, 1024 by default).
    pub max_connections_per_node: usize,
    /// How long `get_or_load` holds the right to load a missing key (the `N` token's TTL): others wait for the
    /// winner's value this long at most, then load themselves. Default 5 s.
    pub load_lease: Duration,
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
            max_idle_connections: 8,
            max_connections_per_node: 64,
            load_lease: Duration::from_secs(5),
        }
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
        let mut seen = std::collections::HashSet::new();
        for node in &self.nodes {
            if !seen.insert(&node.id) {
                return Err(ClientConfigError::DuplicateNode { id: node.id.clone() });
            }
        }
        if !self.nodes.iter().any(|n| n.zone == self.local_zone) {
            let mut zones: Vec<String> = self.nodes.iter().map(|n| n.zone.clone()).collect();
            zones.sort();
            zones.dedup();
            return Err(ClientConfigError::UnknownLocalZone {
                zone: self.local_zone.clone(),
                zones,
            });
        }
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
        self.breaker
            .validate()
            .map_err(|e| ClientConfigError::Breaker(e.to_string()))
    }
}
