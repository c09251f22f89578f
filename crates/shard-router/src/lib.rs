//! # trestle-shard-router
//!
//! **Status: not started.** This crate has no functionality yet and exports nothing; issue #7 brings it.
//!
//! What it will be: consistent-hash routing with weighted nodes, replicas, zone spread, bounded loads, rebalance
//! plans, hot-key detection, live membership and a routing tower service.
