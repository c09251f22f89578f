//! # trestle-cache
//!
//! **Status: not started.** This crate has no functionality yet and exports nothing; a later issue brings it.
//!
//! What it will be: a sharded, replicated in-memory cache in the EVCache/mcrouter class: a client that routes
//! through `trestle-shard-router` with zone-aware replicas, and cache nodes that speak gRPC and the memcached
//! protocol.
