//! Node identities and descriptions.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The identity of a node: a cheap-to-clone string such as `"cache-3"` or `"10.0.0.7:7000"`.
///
/// Ring placement depends only on these bytes, so every process that knows the same ids builds the same ring.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Creates an id.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl PartialEq<str> for NodeId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for NodeId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// A node that can own keys: its id, its weight (relative share of keys, default 1) and optionally its zone
/// (failure domain such as an availability zone or rack, used to spread replicas).
///
/// ```
/// use trestle_shard_router::Node;
///
/// let node = Node::new("cache-1").with_weight(2).with_zone("eu-west-1a");
/// assert_eq!(node.id().as_str(), "cache-1");
/// assert_eq!(node.weight(), 2);
/// assert_eq!(node.zone(), Some("eu-west-1a"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    id: NodeId,
    weight: u32,
    zone: Option<Arc<str>>,
}

impl Node {
    /// A node with weight 1 and no zone.
    pub fn new(id: impl Into<NodeId>) -> Self {
        Self {
            id: id.into(),
            weight: 1,
            zone: None,
        }
    }

    /// Sets the weight: a node of weight 2 gets twice the virtual nodes, so about twice the keys, of a node of
    /// weight 1. Zero is rejected when a map is built ([`ShardError::ZeroWeight`](crate::ShardError::ZeroWeight)).
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    #[must_use]
    pub fn with_zone(mut self, zone: impl AsRef<str>) -> Self {
        self.zone = Some(Arc::from(zone.as_ref()));
        self
    }

    /// The id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The weight.
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The zone, if any. Nodes without a zone count as one shared, unnamed zone.
    #[must_use]
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }
}
