//! The `trestle` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The Trestle node and its command-line client.
#[derive(Debug, Parser)]
#[command(name = "trestle", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `trestle`.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Start N nodes as separate processes on 127.0.0.1 and keep them in the foreground.
    LocalCluster {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Where the nodes keep their data (one subdirectory per node).
        #[arg(long)]
        data_dir: PathBuf,
        /// The first port; each node takes three consecutive ports.
        #[arg(long, default_value_t = 2379)]
        port_base: u16,
    },
}

/// Runs one parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::LocalCluster { .. } => {
            eprintln!(
                "trestle local-cluster: the Raft store is not built yet (issue #3 brings it); no node was started."
            );
            ExitCode::from(2)
        }
    }
}
