//! Rebalance plans: which key ranges change owner between two maps.

use std::ops::RangeInclusive;

use crate::NodeId;

/// One range of ring positions whose owner changes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RangeMove {
    /// The ring positions (see [`key_position`](crate::key_position)) that move, inclusive.
    pub range: RangeInclusive<u64>,
    /// The owner before.
    pub from: NodeId,
    /// The owner after.
    pub to: NodeId,
}

impl RangeMove {
    /// How many ring positions the range holds.
    #[must_use]
    pub fn width(&self) -> u128 {
        u128::from(*self.range.end()) - u128::from(*self.range.start()) + 1
    }
}

/// The key ranges that change owner between two maps, from [`ShardMap::plan_to`](crate::ShardMap::plan_to).
///
/// Moves are sorted by range and do not overlap; adjacent ranges with the same `from` and `to` are merged. A cache
/// warms a new node by copying the keys of its [`incoming`](Self::incoming) ranges; a queue hands over the
/// partitions of [`outgoing`](Self::outgoing) ranges.
///
/// ```
/// use trestle_shard_router::{key_position, Node, ShardMap};
///
/// let before = ShardMap::new(["a", "b", "c"].map(Node::new))?;
/// let after = before.with_node(Node::new("d"))?;
/// let plan = before.plan_to(&after);
/// assert!(plan.moves().iter().all(|m| m.to == "d"));
/// for key in ["k1", "k2", "k3"] {
///     let moved = before.route(key).id() != after.route(key).id();
///     assert_eq!(moved, plan.find(key_position(key)).is_some());
/// }
/// # Ok::<(), trestle_shard_router::ShardError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebalancePlan {
    moves: Vec<RangeMove>,
}

impl RebalancePlan {
    pub(crate) fn push(&mut self, range: RangeInclusive<u64>, from: &NodeId, to: &NodeId) {
        if let Some(last) = self.moves.last_mut() {
            let adjacent = last.range.end().checked_add(1) == Some(*range.start());
            if adjacent && &last.from == from && &last.to == to {
                last.range = *last.range.start()..=*range.end();
                return;
            }
        }
        self.moves.push(RangeMove {
            range,
            from: from.clone(),
            to: to.clone(),
        });
    }

    /// Every move, in ring order.
    #[must_use]
    pub fn moves(&self) -> &[RangeMove] {
        &self.moves
    }

    /// Whether nothing moves.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// The share of all keys that change owner, between 0 and 1.
    #[must_use]
    pub fn moved_fraction(&self) -> f64 {
        let moved: u128 = self.moves.iter().map(RangeMove::width).sum();
        moved as f64 / 2f64.powi(64)
    }

    /// The move containing ring position `position`, if that position changes owner.
    #[must_use]
    pub fn find(&self, position: u64) -> Option<&RangeMove> {
        let i = self.moves.partition_point(|m| *m.range.end() < position);
        self.moves.get(i).filter(|m| m.range.contains(&position))
    }

    /// The moves into node `id`.
    pub fn incoming<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a RangeMove> + 'a {
        self.moves.iter().filter(move |m| m.to.as_str() == id)
    }

    /// The moves out of node `id`.
    pub fn outgoing<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a RangeMove> + 'a {
        self.moves.iter().filter(move |m| m.from.as_str() == id)
    }
}
