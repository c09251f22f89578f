//! # trestle-raft
//!
//! **Status: not started.** This crate has no functionality yet and exports nothing; issue #3 brings it.
//!
//! What it will be: Raft consensus on openraft, RocksDB and tonic, hosting many Raft groups per process over
//! one gRPC port and one RocksDB instance, and a coordination store that speaks etcd's v3 gRPC API (KV with MVCC
//! revisions, leases, watch, cluster, maintenance) so real etcd clients work against it.
