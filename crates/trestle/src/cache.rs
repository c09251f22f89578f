//! `trestle cache`: a memcached-compatible cache node and the ambassador in front of a cluster of them
//! (trestle-cache).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use trestle_cache::{
    Ack, Client, ClientConfig, NodeConfig, NodeSpec, Proxy, ProxyConfig, RunningNode, ServerConfig,
    StoreConfig,
};

/// The cache's subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum CacheCommand {
    /// Run one cache node: the memcached protocol (text and meta commands) on TCP, /metrics and /health on HTTP.
    Serve(CacheServeArgs),
    /// Run the ambassador: the memcached protocol to local programs, the replicated client behind it (placement,
    /// a copy per zone, zone fallback, coalesced reads), over a static node list or nodes discovered in the store.
    Proxy(CacheProxyArgs),
    /// Show the warm-ups of nodes that joined, as an ambassador (`trestle cache proxy`) runs them: keys to copy,
    /// copied, already present, gone, errors.
    Warmups(CacheWarmupsArgs),
}

/// `trestle cache warmups`.
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct CacheWarmupsArgs {
    /// The ambassador's memcached address.
    #[arg(long, default_value = "127.0.0.1:11311")]
    pub proxy: SocketAddr,
    /// Print again every second until no warm-up is running.
    #[arg(long)]
    pub watch: bool,
}

/// `trestle cache serve`.
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct CacheServeArgs {
    /// Address for the memcached protocol.
    #[arg(long, default_value = "127.0.0.1:11211")]
    pub memcached_listen: SocketAddr,
    /// Threads serving requests (memcached's `-t`): 1 runs everything on one thread with no work stealing (the
    /// cheapest per request); 0 starts one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Memory limit in bytes, counting each item's key, value and a fixed per-item overhead.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub memory: u64,
    /// Address for /metrics and /health; none if not given.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Address for the gRPC API (trestle.cache.v1); none if not given.
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
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
            .with_grpc_listen(self.grpc_listen)
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
    if let Some(addr) = node.grpc_addr() {
        eprintln!("trestle cache: gRPC (trestle.cache.v1) on {addr}");
    }
    crate::serve::wait_for_stop_signal().await;
    // Clients stop finding the node at once rather than when its lease expires.
    if let Some(registration) = registration {
        let _ = registration.revoke().await;
    }
    node.shutdown().await;
    Ok(())
}

/// How many zones must acknowledge a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteAck {
    /// One zone.
    One,
    /// A majority of zones.
    Quorum,
    /// Every zone.
    All,
}

/// `trestle cache proxy`.
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct CacheProxyArgs {
    /// Address the proxy listens on for memcached clients.
    #[arg(long, default_value = "127.0.0.1:11311")]
    pub listen: SocketAddr,
    /// A cache node, as ID=ADDR@ZONE (repeat the flag, or separate with commas).
    #[arg(long = "node", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Trestle store (etcd v3 API) endpoints to discover nodes from (those `trestle cache serve --register-...`
    /// registered), comma-separated; used when no --node is given. Registrations and expiries are followed.
    #[arg(long, value_delimiter = ',')]
    pub discover_endpoints: Vec<String>,
    /// Key prefix the nodes registered under.
    #[arg(long, default_value = "/trestle/cache/nodes/")]
    pub discover_prefix: String,
    /// The zone to read from first (the proxy's own).
    #[arg(long)]
    pub zone: String,
    /// Zones that must acknowledge a write before the proxy answers.
    #[arg(long, value_enum, default_value_t = WriteAck::One)]
    pub write_ack: WriteAck,
    /// Per-node request timeout, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub timeout_ms: u64,
    /// Most client connections open at once.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Address for `/metrics` (Prometheus) and `/health`; none if not given.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Parses `ID=ADDR@ZONE`.
fn parse_node(text: &str) -> Result<NodeSpec, String> {
    let (id, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("--node {text:?}: expected ID=ADDR@ZONE"))?;
    let (addr, zone) = rest
        .rsplit_once('@')
        .ok_or_else(|| format!("--node {text:?}: expected ID=ADDR@ZONE"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("--node {text:?}: address {addr:?}: {e}"))?;
    Ok(NodeSpec::new(id, addr, zone))
}

impl CacheProxyArgs {
    /// The client configuration for these flags and `nodes`.
    fn client_config(&self, nodes: Vec<NodeSpec>) -> ClientConfig {
        let ack = match self.write_ack {
            WriteAck::One => Ack::One,
            WriteAck::Quorum => Ack::Quorum,
            WriteAck::All => Ack::All,
        };
        ClientConfig::new(nodes, self.zone.clone())
            .with_write_ack(ack)
            .with_timeout(Duration::from_millis(self.timeout_ms))
    }
}

/// Runs the proxy until SIGINT or SIGTERM.
pub(crate) async fn proxy(args: CacheProxyArgs) -> Result<(), String> {
    let client = if !args.nodes.is_empty() {
        let nodes = args
            .nodes
            .iter()
            .map(|n| parse_node(n))
            .collect::<Result<Vec<_>, _>>()?;
        Client::new(args.client_config(nodes)).map_err(|e| e.to_string())?
    } else if !args.discover_endpoints.is_empty() {
        // Follows registrations and expiries as they happen (joining nodes are warmed).
        trestle_cache::discover_client(
            &args.discover_endpoints,
            &args.discover_prefix,
            args.client_config(Vec::new()),
        )
        .await
        .map_err(|e| e.to_string())?
    } else {
        return Err(
            "give the nodes (--node ID=ADDR@ZONE) or where to discover them (--discover-endpoints)".into(),
        );
    };
    let nodes = client.nodes().len();
    let proxy = Proxy::new(
        client,
        ProxyConfig::default().with_max_connections(args.max_connections),
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "trestle cache proxy: memcached protocol on {addr}, {nodes} nodes, local zone {}",
        args.zone
    );
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match args.metrics_listen {
        Some(metrics) => {
            let listener = tokio::net::TcpListener::bind(metrics)
                .await
                .map_err(|e| format!("cannot listen on {metrics} (--metrics-listen): {e}"))?;
            eprintln!(
                "trestle cache proxy: /metrics and /health on {}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            Some(tokio::spawn(trestle_cache::serve_proxy_http(
                listener,
                proxy.clone(),
                async move {
                    let _ = http_stopped.await;
                },
            )))
        }
        None => None,
    };
    trestle_cache::serve_proxy(listener, proxy, crate::serve::wait_for_stop_signal()).await;
    let _ = stop_http.send(());
    if let Some(http) = http {
        let _ = http.await;
    }
    Ok(())
}

/// One warm-up as the proxy's `stats` reports it: `(zone, node)` and its fields by name.
type WarmUpLines = std::collections::BTreeMap<(String, String), std::collections::BTreeMap<String, String>>;

/// The `STAT warmup:<zone>:<node>:<field> <value>` lines of a `stats` reply. Node names may hold colons (they
/// are often addresses); zone names may not.
fn parse_warmups(reply: &str) -> WarmUpLines {
    let mut warmups = WarmUpLines::new();
    for line in reply.lines() {
        let Some(rest) = line.strip_prefix("STAT warmup:") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(' ') else {
            continue;
        };
        let Some((place, field)) = name.rsplit_once(':') else {
            continue;
        };
        let Some((zone, node)) = place.split_once(':') else {
            continue;
        };
        warmups
            .entry((zone.to_owned(), node.to_owned()))
            .or_default()
            .insert(field.to_owned(), value.trim().to_owned());
    }
    warmups
}

/// Sends `stats` to the proxy and returns the reply up to `END`.
async fn proxy_stats(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"stats\r\n").await?;
        let mut reply = Vec::new();
        let mut chunk = [0u8; 8192];
        while !reply.ends_with(b"END\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed before END",
                ));
            }
            reply.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("the proxy at {addr} did not answer stats within 5 s"))?
        .map_err(|e| {
            format!("cannot read stats from the proxy at {addr} (is `trestle cache proxy` running?): {e}")
        })
}

/// Prints the table of warm-ups; whether one is still running.
fn print_warmups(warmups: &WarmUpLines) -> bool {
    if warmups.is_empty() {
        println!("no node has joined since the proxy started: nothing warmed");
        return false;
    }
    println!("| zone | node | state | done | keys to copy | copied | present | gone | errors | elapsed |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut running = false;
    for ((zone, node), fields) in warmups {
        let field = |name: &str| fields.get(name).map_or("?", String::as_str);
        running |= field("state") == "running";
        let done = field("fraction_done")
            .parse::<f64>()
            .map_or("?".to_owned(), |f| format!("{:.0}%", f * 100.0));
        println!(
            "| {zone} | {node} | {} | {done} | {} | {} | {} | {} | {} | {} ms |",
            field("state"),
            field("keys_to_copy"),
            field("keys_copied"),
            field("keys_present"),
            field("keys_gone"),
            field("errors"),
            field("elapsed_ms"),
        );
    }
    running
}

/// `trestle cache warmups`: the proxy's warm-ups, once or until none runs.
pub(crate) async fn warmups(args: CacheWarmupsArgs) -> Result<(), String> {
    loop {
        let warmups = parse_warmups(&proxy_stats(args.proxy).await?);
        let running = print_warmups(&warmups);
        if !(args.watch && running) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!();
    }
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

    #[test]
    fn proxy_flags_parse_static_nodes() {
        let cli = Cli::try_parse_from([
            "trestle",
            "cache",
            "proxy",
            "--zone",
            "east",
            "--node",
            "e1=127.0.0.1:11211@east,w1=127.0.0.1:11212@west",
            "--write-ack",
            "all",
        ])
        .expect("parses");
        let Command::Cache(CacheCommand::Proxy(args)) = cli.command else {
            panic!("not cache proxy")
        };
        let nodes: Vec<_> = args
            .nodes
            .iter()
            .map(|n| super::parse_node(n).expect("node"))
            .collect();
        assert_eq!(nodes[1].zone, "west");
        let config = args.client_config(nodes);
        assert_eq!(config.write_ack, trestle_cache::Ack::All);
        config.validate().expect("valid");
        assert!(super::parse_node("e1=127.0.0.1:11211").is_err());
    }

    #[test]
    fn warmup_lines_are_grouped_by_zone_and_node() {
        let reply = "STAT cmd_total 4\r\nSTAT warmup:a:n:1:state running\r\nSTAT warmup:a:n:1:keys_copied 7\r\n\
                     STAT warmup:b:m:state done\r\nSTAT version 0.1.0-proxy\r\nEND\r\n";
        let warmups = super::parse_warmups(reply);
        assert_eq!(warmups.len(), 2);
        let first = &warmups[&("a".to_owned(), "n:1".to_owned())];
        assert_eq!(first["state"], "running");
        assert_eq!(first["keys_copied"], "7");
        assert_eq!(warmups[&("b".to_owned(), "m".to_owned())]["state"], "done");
        assert!(super::print_warmups(&warmups));
        assert!(super::parse_warmups("STAT cmd_total 1\r\nEND\r\n").is_empty());
    }
}
