//! `trestle cache`: a memcached-compatible cache node (trestle-cache).

use std::net::SocketAddr;

use clap::{Args, Subcommand};
use trestle_cache::{NodeConfig, RunningNode, ServerConfig, StoreConfig};

/// The cache's subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum CacheCommand {
    /// Run one cache node: the memcached protocol (text and meta commands) on TCP, /metrics and /health on HTTP.
    Serve(CacheServeArgs),
}

/// `trestle cache serve`.
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct CacheServeArgs {
    /// Address for the memcached protocol.
    #[arg(long, default_value = "127.0.0.1:11211")]
    pub memcached_listen: SocketAddr,
    /// Memory limit in bytes, counting each item's key, value and a fixed per-item overhead.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub memory: u64,
    /// Address for /metrics and /health; none if not given.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest value in bytes; larger ones are refused with memcached's SERVER_ERROR.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_item_size: usize,
    /// Most connections open at once; more are refused with memcached's SERVER_ERROR.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Trestle store (etcd v3 API) endpoints to register this node in, comma-separated; none: no registration.
    #[arg(long, value_delimiter = ',')]
    pub register_endpoints: Vec<String>,
    /// Key prefix of the registration (the key is the prefix followed by the advertised address).
    #[arg(long, default_value = "/trestle/cache/nodes/")]
    pub register_prefix: String,
    /// The zone this node's registration names.
    #[arg(long, default_value = "default")]
    pub zone: String,
    /// The memcached address clients should use, if not the listen address.
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
}

impl CacheServeArgs {
    /// The node configuration these flags describe.
    pub fn into_config(&self) -> NodeConfig {
        NodeConfig::new(self.memcached_listen)
            .with_metrics_listen(self.metrics_listen)
            .with_server(ServerConfig::default().with_max_connections(self.max_connections))
            .with_store(StoreConfig::with_memory(self.memory).with_max_item_size(self.max_item_size))
    }
}

/// Runs a node until SIGINT or SIGTERM, then stops it gracefully.
pub(crate) async fn serve(args: CacheServeArgs) -> Result<(), String> {
    let node = RunningNode::start(args.into_config())
        .await
        .map_err(|e| e.to_string())?;
    let registration = if args.register_endpoints.is_empty() {
        None
    } else {
        let addr = args.advertise.unwrap_or(node.memcached_addr());
        let ttl = std::time::Duration::from_secs(10);
        let registration = trestle_cache::register_node(
            &args.register_endpoints,
            &args.register_prefix,
            addr,
            &args.zone,
            ttl,
        )
        .await
        .map_err(|e| e.to_string())?;
        eprintln!(
            "trestle cache: registered as {}{addr} (zone {})",
            args.register_prefix, args.zone
        );
        Some(registration)
    };
    eprintln!("trestle cache: memcached protocol on {}", node.memcached_addr());
    if let Some(addr) = node.metrics_addr() {
        eprintln!("trestle cache: /metrics and /health on http://{addr}");
    }
    crate::serve::wait_for_stop_signal().await;
    // Clients stop finding the node at once rather than when its lease expires.
    if let Some(registration) = registration {
        let _ = registration.revoke().await;
    }
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    use super::CacheCommand;

    #[test]
    fn flags_build_a_node_config() {
        let cli = Cli::try_parse_from([
            "trestle",
            "cache",
            "serve",
            "--memcached-listen",
            "127.0.0.1:0",
            "--memory",
            "33554432",
            "--max-item-size",
            "4096",
        ])
        .expect("parses");
        let Command::Cache(CacheCommand::Serve(args)) = cli.command else {
            panic!("not cache serve")
        };
        let config = args.into_config();
        assert_eq!(config.store.memory_bytes, 32 << 20);
        assert_eq!(config.server.decoder.max_item_size, 4096);
        config.validate().expect("valid");
    }
}
