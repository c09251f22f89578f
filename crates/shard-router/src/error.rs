//! Errors of map construction and lookups.

use crate::NodeId;

/// What went wrong building or querying a shard map or a placement strategy.
///
/// Every bad input the crate can receive ends here (or in a documented result), never in a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// A map needs at least one node.
    #[error("the node set is empty")]
    EmptyNodeSet,
    /// A node had weight zero; a node that should take no keys must be left out instead.
    #[error("node {node} has weight 0")]
    ZeroWeight {
        /// The offending node.
        node: NodeId,
    },
    /// The same node id appeared twice.
    #[error("node {node} appears more than once")]
    DuplicateNode {
        /// The repeated id.
        node: NodeId,
    },
    /// An operation named a node that is not in the map.
    #[error("node {node} is not in the map")]
    UnknownNode {
        /// The missing id.
        node: NodeId,
    },
    /// More distinct replicas were required than there are nodes.
    #[error("{requested} distinct replicas requested but only {available} nodes exist")]
    NotEnoughNodes {
        /// How many were asked for.
        requested: usize,
        /// How many nodes the map has.
        available: usize,
    },
    /// The weights and virtual-node setting would put too many points on the ring.
    #[error("{total} virtual nodes requested; at most {max} are allowed")]
    TooManyVirtualNodes {
        /// Sum over nodes of weight × virtual nodes per weight.
        total: u64,
        /// The limit.
        max: u64,
    },
    /// The strategy cannot honour a weight other than 1 (jump consistent hash).
    #[error("node {node} has weight {weight}, but this strategy supports only weight 1")]
    UnsupportedWeight {
        /// The offending node.
        node: NodeId,
        /// Its weight.
        weight: u32,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// The offending value, formatted.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
}
