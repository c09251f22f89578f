#![doc = include_str!("../README.md")]
//!
//! # Map of the crate
//!
//! - The memcached protocol, sans-IO: [`protocol`] ([`Decoder`] for requests, [`ReplyDecoder`] for meta replies,
//!   [`Command`]).
//! - The node's store: [`Store`] with [`StoreConfig`] (byte budget, TTLs, CAS, quick_cache eviction).
//! - The node's protocol logic: [`Engine`] executes frames against a store and writes replies.
//! - The node's server: [`server`] ([`server::serve`], [`ServerConfig`]): TCP for memcached, HTTP for `/metrics`
//!   and `/health` ([`server::serve_http`]), graceful shutdown. Counters: [`NodeMetrics`].
//! - The node's gRPC API: [`grpc`] ([`CacheService`], [`GrpcConfig`]; generated types and client in
//!   [`grpc::proto`]).
//! - A whole node in one call: [`RunningNode::start`] with a [`NodeConfig`].
//! - The client: [`client`] ([`Client`] with [`ClientConfig`], [`NodeSpec`], [`Ack`]): consistent hashing per
//!   zone, writes to every zone, reads with zone fallback and read repair, breakers, coalesced `get_or_load`,
//!   deletes by tombstone ([`TOMBSTONE_FLAGS`]), live membership, a near cache and hot keys
//!   ([`NearCacheConfig`], [`HotKeysConfig`]), warm-up of joining nodes ([`WarmUpConfig`], [`WarmUpProgress`]),
//!   counters ([`ClientStats`]).
//! - The ambassador (`trestle cache proxy`): [`proxy`] ([`Proxy`], [`ProxyConfig`], [`serve_proxy`]) speaks
//!   memcached to programs in any language and uses a [`Client`] behind it; [`serve_proxy_http`] for its
//!   `/metrics` and `/health`.
//! - A rate limiter whose budget the cache nodes hold for many processes: [`ClusterRateLimiter`] (trestle-breaker's
//!   `RateLimiter`), with [`ClusterRateLimitConfig`].
//! - Discovery through the Trestle store (etcd v3 API): [`register_node`], [`discover_nodes`], and
//!   [`discover_client`] for a client that follows registrations.
//! - Errors: [`DiscoveryError`], [`ConfigError`], [`StartError`], [`ClientError`], [`ClientConfigError`].

pub mod client;
mod discovery;
mod engine;
mod error;
pub mod grpc;
mod metadump;
mod metrics;
mod node;
pub mod protocol;
pub mod proxy;
mod ratelimit;
pub mod server;
mod store;

pub use client::{
    Ack, Client, ClientConfig, ClientConfigError, ClientError, ClientStats, HotKeysConfig, NearCacheConfig,
    NodeSpec, ProbeConfig, TOMBSTONE_FLAGS, WarmUpConfig, WarmUpProgress, WarmUpState,
};
pub use discovery::{DiscoveryError, discover_client, discover_nodes, register_node};
pub use engine::{ConnectionCounts, Engine, Flow, VERSION, base64_key};
pub use error::ConfigError;
pub use grpc::{CacheService, GrpcConfig};
pub use metrics::{NodeMetrics, command_index};
pub use node::{NodeConfig, RunningNode, StartError};
pub use protocol::{Command, Decoder, DecoderConfig, Frame, ProtocolError, ReplyDecoder};
pub use proxy::{Proxy, ProxyConfig, serve_proxy, serve_proxy_http};
pub use ratelimit::{ClusterRateLimitConfig, ClusterRateLimiter, RateLimitConfigError, RateLimitMetrics};
pub use server::ServerConfig;
pub use store::{
    ArithOutcome, DebugInfo, DeleteOutcome, Hit, ITEM_OVERHEAD, MetaGetOptions, MetaHit, Store, StoreConfig,
    StoreOutcome,
};
