//! What can go wrong while setting up or running a test (as opposed to what a checker finds).

use std::path::PathBuf;

/// An error of the harness: the test could not be run, so it has no verdict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A configuration value is out of range.
    #[error("invalid test configuration: {field} = {value}: {reason}")]
    Config {
        /// The option.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No `trestle` binary was found.
    #[error(
        "no trestle binary: pass --trestle-bin PATH, set TRESTLE_BIN, or build it next to this executable \
         (cargo build -p trestle --bin trestle); looked at: {looked}"
    )]
    NoBinary {
        /// Where it looked.
        looked: String,
    },
    /// An external command (`ip`, `nft`) failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed or why it could not run.
        message: String,
    },
    /// A file or directory could not be written or read.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        message: String,
    },
    /// A node process could not be started.
    #[error("cannot start node {node} ({binary}): {message}")]
    Spawn {
        /// Node index.
        node: usize,
        /// The binary.
        binary: PathBuf,
        /// The error.
        message: String,
    },
    /// The cluster did not become ready.
    #[error("the cluster had no leader within {waited_ms} ms; node logs are in {logs}")]
    NotReady {
        /// How long it waited.
        waited_ms: u128,
        /// Where the logs are.
        logs: PathBuf,
    },
    /// The cache nodes did not accept connections.
    #[error("cache nodes {nodes} did not accept connections within {waited_ms} ms; their logs are in {logs}")]
    CacheNotReady {
        /// The nodes that did not.
        nodes: String,
        /// How long it waited.
        waited_ms: u128,
        /// Where the logs are.
        logs: PathBuf,
    },
    /// The run was interrupted (Ctrl-C or SIGTERM); the cluster was torn down.
    #[error("interrupted by {signal}; the cluster was torn down")]
    Interrupted {
        /// The signal's name.
        signal: &'static str,
    },
}

impl HarnessError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> HarnessError {
        HarnessError::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }
}
