//! # trestle
//!
//! The Trestle node: one binary, `trestle`, that hosts Trestle's services (today the Raft coordination store,
//! later the queue and cache nodes) and is also their command-line client.
//!
//! **Status: skeleton.** The command line is defined here so the binary stays thin; issue #3 brings `serve`,
//! `local-cluster` and `bench kv`.

mod cli;

pub use cli::{Cli, Command, run};
