//! A whole cache node in one call: the store, the memcached listener, the gRPC listener and the HTTP listener,
//! started together and stopped together. `trestle cache serve` is this plus flags; tests start nodes on port 0 the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::engine::Engine;
use crate::error::ConfigError;
use crate::grpc::{CacheService, GrpcConfig};
use crate::metrics::NodeMetrics;
use crate::server::{ServerConfig, serve, serve_http};
use crate::store::{Store, StoreConfig};

/// Everything a node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Where the memcached protocol listens (port 0: any free port).
    pub memcached_listen: SocketAddr,
    /// Where `/metrics` and `/health` listen; `None` for no HTTP listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the gRPC API listens; `None` for no gRPC listener.
    pub grpc_listen: Option<SocketAddr>,
    /// The gRPC listener's limits.
    pub grpc: GrpcConfig,
    /// The store's limits. Its largest value is the server's too.
    pub store: StoreConfig,
    /// The server's limits.
    pub server: ServerConfig,
}

impl NodeConfig {
    /// A node on `memcached_listen` with default limits and no HTTP listener.
    pub fn new(memcached_listen: SocketAddr) -> Self {
        Self {
            memcached_listen,
            metrics_listen: None,
            grpc_listen: None,
            grpc: GrpcConfig::default(),
            store: StoreConfig::default(),
            server: ServerConfig::default(),
        }
    }

    /// Sets the HTTP listener's address.
    pub fn with_metrics_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics_listen = addr;
        self
    }

    /// Sets the gRPC listener's address.
    pub fn with_grpc_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.grpc_listen = addr;
        self
    }

    /// Sets the gRPC listener's limits.
    pub fn with_grpc(mut self, grpc: GrpcConfig) -> Self {
        self.grpc = grpc;
        self
    }

    /// Sets the store's limits (and the server's largest value to the store's).
    pub fn with_store(mut self, store: StoreConfig) -> Self {
        self.server.decoder = self.server.decoder.with_max_item_size(store.max_item_size);
        self.store = store;
        self
    }

    /// Sets the server's limits.
    pub fn with_server(mut self, server: ServerConfig) -> Self {
        self.server = server;
        self
    }

    /// Checks both parts and that they agree on the largest value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate()?;
        self.server.validate()?;
        self.grpc.validate(self.store.max_item_size)?;
        if self.server.decoder.max_item_size != self.store.max_item_size {
            return Err(ConfigError::MaxItemSizeMismatch {
                store: self.store.max_item_size,
                server: self.server.decoder.max_item_size,
            });
        }
        Ok(())
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// A running node. Dropping it does not stop it: call [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    memcached_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    engine: Arc<Engine>,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Starts a node on `config` (with the tokio clock, so paused test time drives its TTLs).
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        config.validate()?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let listener = bind(config.memcached_listen).await?;
        let memcached_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.memcached_listen,
            source,
        })?;
        let http = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let metrics_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        let grpc = match config.grpc_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let grpc_addr = grpc.as_ref().and_then(|l| l.local_addr().ok());
        let store = Arc::new(Store::new(
            config.store.clone(),
            Arc::new(trestle_breaker::TokioClock),
        )?);
        let engine = Arc::new(Engine::new(store, Arc::new(NodeMetrics::new())));
        let token = CancellationToken::new();
        let mut tasks = Vec::new();
        let (server_engine, stop, server) = (engine.clone(), token.clone(), config.server.clone());
        tasks.push(tokio::spawn(async move {
            let _ = serve(listener, server_engine, server, stop.cancelled_owned()).await;
        }));
        if let Some(http) = http {
            let (http_engine, stop) = (engine.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let _ = serve_http(http, http_engine, stop.cancelled_owned()).await;
            }));
        }
        if let Some(grpc) = grpc {
            let service = CacheService::new(
                engine.store().clone(),
                engine.metrics().clone(),
                config.grpc.clone(),
            );
            let stop = token.clone();
            tasks.push(tokio::spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
                let served = tonic::transport::Server::builder()
                    .add_service(service.into_server())
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "gRPC listener failed");
                }
            }));
        }
        info!(%memcached_addr, ?metrics_addr, ?grpc_addr, memory = config.store.memory_bytes, "cache node started");
        Ok(Self {
            memcached_addr,
            metrics_addr,
            grpc_addr,
            engine,
            token,
            tasks,
        })
    }

    /// Where the memcached protocol listens.
    pub fn memcached_addr(&self) -> SocketAddr {
        self.memcached_addr
    }

    /// Where `/metrics` and `/health` listen.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the gRPC API listens.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The node's engine (its store and metrics).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops accepting, lets open connections finish what they have read, and returns when all have closed.
    pub async fn shutdown(self) {
        self.token.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
