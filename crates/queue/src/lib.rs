//! # trestle-queue
//!
//! **Status: not started.** This crate has no functionality yet and exports nothing; a later issue brings it.
//!
//! What it will be: a durable work queue whose partitions are Raft groups hosted by `trestle-raft`, with
//! visibility timeouts, heartbeats, retries, dead letters, sharded queues and join/barrier patterns for batch
//! pipelines. Nothing is acknowledged before it is fsync'd on a majority.
