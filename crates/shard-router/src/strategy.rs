//! Placement strategies behind one trait: the ring, jump consistent hash and rendezvous hashing.
//!
//! | strategy | pick it when | lookup | weights | zones | moves on change |
//! | --- | --- | --- | --- | --- | --- |
//! | [`ShardMap`] (ring) | nodes join and leave in any order; you need rebalance plans, zones or bounded loads | O(1) expected (indexed binary search) | yes | yes | only the ranges next to the changed node's points |
//! | [`JumpHash`] | shards are numbered 0..n and only grow or shrink at the end (partitions of a log, buckets of a store) | O(log n), no memory | no | no | 1/(n+1) of keys on growth, all to the new shard; removing a middle shard reshuffles |
//! | [`Rendezvous`] | small node sets (tens) where memory matters more than lookup time | O(n) per lookup | yes | no | only the changed node's keys |

use std::collections::HashSet;

use crate::hash::{hash_bytes, key_position, mix};
use crate::{Node, ShardError, ShardMap};

/// A way of placing keys on nodes. Implemented by [`ShardMap`], [`JumpHash`] and [`Rendezvous`].
///
/// Implementations must guarantee: `route_position(p)` is one of `nodes()`; `replicas_at(p, n)` returns
/// `min(n, nodes().len())` distinct nodes whose first element is `route_position(p)`; both are pure functions of
/// the node list and `p`.
///
/// ```
/// use trestle_shard_router::{JumpHash, Node, Placement, Rendezvous, ShardMap};
///
/// let nodes: Vec<Node> = ["a", "b", "c"].map(Node::new).to_vec();
/// let strategies: Vec<Box<dyn Placement>> = vec![
///     Box::new(ShardMap::new(nodes.clone())?),
///     Box::new(JumpHash::new(nodes.clone())?),
///     Box::new(Rendezvous::new(nodes)?),
/// ];
/// for s in &strategies {
///     let owner = s.route(b"user:42");
///     assert_eq!(s.replicas(b"user:42", 3)[0].id(), owner.id());
/// }
/// # Ok::<(), trestle_shard_router::ShardError>(())
/// ```
pub trait Placement: Send + Sync {
    /// The nodes.
    fn nodes(&self) -> &[Node];

    /// The node owning ring position `position` (see [`key_position`]).
    fn route_position(&self, position: u64) -> &Node;

    /// Up to `n` distinct nodes for `position`, in preference order.
    fn replicas_at(&self, position: u64, n: usize) -> Vec<&Node>;

    /// The node owning `key`.
    fn route(&self, key: &[u8]) -> &Node {
        self.route_position(key_position(key))
    }

    /// Up to `n` distinct nodes for `key`, in preference order.
    fn replicas(&self, key: &[u8], n: usize) -> Vec<&Node> {
        self.replicas_at(key_position(key), n)
    }
}

impl Placement for ShardMap {
    fn nodes(&self) -> &[Node] {
        ShardMap::nodes(self)
    }

    fn route_position(&self, position: u64) -> &Node {
        ShardMap::route_position(self, position)
    }

    fn replicas_at(&self, position: u64, n: usize) -> Vec<&Node> {
        ShardMap::replicas_at(self, position, n)
    }
}

fn check_nodes(nodes: &[Node]) -> Result<(), ShardError> {
    if nodes.is_empty() {
        return Err(ShardError::EmptyNodeSet);
    }
    let mut seen = HashSet::with_capacity(nodes.len());
    for n in nodes {
        if n.weight() == 0 {
            return Err(ShardError::ZeroWeight { node: n.id().clone() });
        }
        if !seen.insert(n.id()) {
            return Err(ShardError::DuplicateNode { node: n.id().clone() });
        }
    }
    Ok(())
}

/// Jump consistent hash (Lamping and Veach, 2014) over numbered shards: shard `i` is `nodes()[i]`.
///
/// No memory beyond the node list and near-perfect balance, but shards can only be added or removed at the end
/// ([`with_shard`](Self::with_shard), [`without_last`](Self::without_last)); weights other than 1 are rejected.
/// Replica `i > 0` is the jump hash of the key's position salted with `i`, skipping shards already chosen.
#[derive(Clone, Debug)]
pub struct JumpHash {
    nodes: Vec<Node>,
}

impl JumpHash {
    /// Shards in order.
    ///
    /// # Errors
    /// [`ShardError::EmptyNodeSet`], [`ShardError::DuplicateNode`], [`ShardError::ZeroWeight`], or
    /// [`ShardError::UnsupportedWeight`] for a weight other than 1. More than `u32::MAX` shards are not supported
    /// (they could not be built in memory anyway).
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Result<Self, ShardError> {
        let nodes: Vec<Node> = nodes.into_iter().collect();
        check_nodes(&nodes)?;
        if let Some(n) = nodes.iter().find(|n| n.weight() != 1) {
            return Err(ShardError::UnsupportedWeight {
                node: n.id().clone(),
                weight: n.weight(),
            });
        }
        Ok(Self { nodes })
    }

    /// A new placement with `node` appended as the last shard.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_shard(&self, node: Node) -> Result<Self, ShardError> {
        Self::new(self.nodes.iter().cloned().chain([node]))
    }

    /// A new placement without the last shard.
    ///
    /// # Errors
    /// [`ShardError::EmptyNodeSet`] when only one shard is left.
    pub fn without_last(&self) -> Result<Self, ShardError> {
        Self::new(
            self.nodes
                .iter()
                .take(self.nodes.len().saturating_sub(1))
                .cloned(),
        )
    }

    /// The shard number owning `key`.
    #[must_use]
    pub fn shard(&self, key: impl AsRef<[u8]>) -> usize {
        jump(key_position(key), self.nodes.len())
    }

    /// The node owning `key`.
    pub fn route(&self, key: impl AsRef<[u8]>) -> &Node {
        Placement::route(self, key.as_ref())
    }
}

/// Lamping and Veach's jump consistent hash: a bucket in `0..buckets` (0 when `buckets` is 0).
#[must_use]
pub fn jump(mut key: u64, buckets: usize) -> usize {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    let buckets = i64::try_from(buckets).unwrap_or(i64::MAX);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    usize::try_from(b).unwrap_or(0)
}

impl Placement for JumpHash {
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    fn route_position(&self, position: u64) -> &Node {
        &self.nodes[jump(position, self.nodes.len())]
    }

    fn replicas_at(&self, position: u64, n: usize) -> Vec<&Node> {
        let len = self.nodes.len();
        let n = n.min(len);
        let mut chosen: Vec<usize> = Vec::with_capacity(n);
        // Salted rounds spread replicas like the primary; a bounded number of them, then a sequential fill, so the
        // loop ends however unlucky the salts are.
        let mut salt = 0u64;
        while chosen.len() < n && salt < 8 * n as u64 + 16 {
            let h = if salt == 0 { position } else { mix(position, salt) };
            let b = jump(h, len);
            if !chosen.contains(&b) {
                chosen.push(b);
            }
            salt += 1;
        }
        let start = chosen.first().copied().unwrap_or(0);
        let mut i = start;
        while chosen.len() < n {
            i = (i + 1) % len;
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        chosen.into_iter().map(|i| &self.nodes[i]).collect()
    }
}

/// Weighted rendezvous (highest-random-weight) hashing: each key goes to the node with the highest score
/// `weight / -ln(u)`, `u` a hash of the key and the node in (0, 1).
///
/// O(n) per lookup and no precomputed ring, so it suits small node sets; removing a node moves only its own keys,
/// and replicas are simply the next-highest scores.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    nodes: Vec<Node>,
    seeds: Vec<u64>,
}

impl Rendezvous {
    /// Builds the placement.
    ///
    /// # Errors
    /// [`ShardError::EmptyNodeSet`], [`ShardError::DuplicateNode`] or [`ShardError::ZeroWeight`].
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Result<Self, ShardError> {
        let mut nodes: Vec<Node> = nodes.into_iter().collect();
        check_nodes(&nodes)?;
        nodes.sort_by(|a, b| a.id().cmp(b.id()));
        let seeds = nodes
            .iter()
            .map(|n| hash_bytes(n.id().as_str().as_bytes()))
            .collect();
        Ok(Self { nodes, seeds })
    }

    /// The node owning `key`.
    pub fn route(&self, key: impl AsRef<[u8]>) -> &Node {
        Placement::route(self, key.as_ref())
    }

    fn score(&self, i: usize, position: u64) -> f64 {
        let h = mix(position, self.seeds[i]);
        // u in (0, 1): never 0, so the logarithm is finite and negative.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        f64::from(self.nodes[i].weight()) / -u.ln()
    }
}

impl Placement for Rendezvous {
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    fn route_position(&self, position: u64) -> &Node {
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for i in 0..self.nodes.len() {
            let s = self.score(i, position);
            if s > best_score {
                best = i;
                best_score = s;
            }
        }
        &self.nodes[best]
    }

    fn replicas_at(&self, position: u64, n: usize) -> Vec<&Node> {
        let mut scored: Vec<(f64, usize)> = (0..self.nodes.len())
            .map(|i| (self.score(i, position), i))
            .collect();
        // Highest score first; ties (practically impossible) by node order, as in `route_position`.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().take(n).map(|(_, i)| &self.nodes[i]).collect()
    }
}
