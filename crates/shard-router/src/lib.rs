#![doc = include_str!("../README.md")]
//!
//! # Map of the crate
//!
//! - Placement: [`ShardMap`] (the ring, with [`ShardMapConfig`]), [`JumpHash`], [`Rendezvous`], all behind
//!   [`Placement`]; [`key_position`] is the stable key hash they share. The [`strategy`] module says when to pick
//!   which.
//! - Load and hot keys: [`BoundedLoad`] and its [`LoadGuard`]; [`HotKeyDetector`] and [`HotKeySplit`].
//! - Rebalancing: [`ShardMap::plan_to`] gives a [`RebalancePlan`] of [`RangeMove`]s.
//! - Routing: [`Router`] (a tower service) with [`KeyExtractor`], [`NodeHealth`] and [`RouterConfig`];
//!   [`Router::scatter`] and [`scatter_gather`] with [`GatherPolicy`].
//! - Membership: [`Membership`], [`StaticMembership`], and with the `etcd` feature `EtcdMembership` and
//!   `Registration`; the [`conformance`] suite every implementation passes.
//! - Errors: [`ShardError`], [`RouterError`], and with the `etcd` feature `MembershipError`.

mod bounded;
mod config;
pub mod conformance;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod hash;
mod hotkey;
mod map;
mod membership;
mod node;
mod rebalance;
mod router;
pub mod strategy;

pub use bounded::{BoundedLoad, BoundedLoadConfig, LoadGuard};
pub use config::{DEFAULT_VNODES_PER_WEIGHT, MAX_TOTAL_VNODES, ShardMapConfig};
pub use error::ShardError;
#[cfg(feature = "etcd")]
pub use etcd::{
    EtcdMembership, EtcdMembershipConfig, MembershipError, Registration, encode_node, parse_node,
};
pub use hash::key_position;
pub use hotkey::{HotKey, HotKeyConfig, HotKeyDetector, HotKeySplit};
pub use map::ShardMap;
pub use membership::{Membership, MembershipEvent, StaticMembership};
pub use node::{Node, NodeId};
pub use rebalance::{RangeMove, RebalancePlan};
pub use router::{
    BoxError, Fanout, GatherPolicy, Gathered, KeyExtractor, MinSuccess, NodeHealth, Router, RouterConfig,
    RouterError, scatter_gather,
};
pub use strategy::{JumpHash, Placement, Rendezvous, jump};
