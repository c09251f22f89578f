//! `trestle serve`: one node, configured like etcd (flags, `TRESTLE_*` environment variables, or a TOML file;
//! flags win over the environment, which wins over the file).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use trestle_etcd::{EtcdNode, EtcdNodeConfig};
use trestle_raft::ClusterState;

/// Options of `trestle serve`. Every option can also come from a `TRESTLE_<NAME>` environment variable or the
/// `--config-file` (same names with underscores: `data_dir`, `initial_cluster`, ...).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ServeArgs {
    /// A TOML file with any of the options below but --threads.
    #[arg(long, env = "TRESTLE_CONFIG_FILE")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Threads running the node's requests and Raft groups; 0 starts one per core. When several members share a
    /// machine, fewer threads each cost less switching between them (command line or environment only: the
    /// threads start before the config file is read).
    #[arg(long, env = "TRESTLE_THREADS", default_value_t = 0)]
    #[serde(skip)]
    pub threads: usize,
    /// Human-readable member name.
    #[arg(long, env = "TRESTLE_NAME")]
    pub name: Option<String>,
    /// Where the node keeps its data (required).
    #[arg(long, env = "TRESTLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client API listen URL [default: http://127.0.0.1:2379].
    #[arg(long, env = "TRESTLE_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Client URLs announced to the cluster, comma-separated [default: the listen URL].
    #[arg(long, env = "TRESTLE_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Peer (Raft) listen URL [default: http://127.0.0.1:2380].
    #[arg(long, env = "TRESTLE_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Peer URL announced to the cluster; the node id derives from it [default: the listen URL].
    #[arg(long, env = "TRESTLE_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// /health and /metrics listen URL [default: http://127.0.0.1:2381]; `none` to disable.
    #[arg(long, env = "TRESTLE_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// The founding members: `name=peer-url,name=peer-url,...` [default: this node alone].
    #[arg(long, env = "TRESTLE_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to found the cluster, `existing` to join one that added this node with MemberAdd; a node with a new
    /// data directory then asks the members of --initial-cluster for the id MemberAdd gave it [default: new].
    #[arg(long, env = "TRESTLE_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// The cluster's name (etcd's flag): every member given the same token reports the same cluster id, founders
    /// and members that join later alike [default: none: the id derives from --initial-cluster, so a member
    /// that joins later reports another one].
    #[arg(long, env = "TRESTLE_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Raft heartbeat interval in milliseconds (etcd's flag) [default: 50].
    #[arg(long, env = "TRESTLE_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Raft election timeout in milliseconds: followers wait a random time between this and twice this without
    /// heartbeats before campaigning (etcd's flag) [default: 100].
    #[arg(long, env = "TRESTLE_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Group commit: how many batches of writes this node keeps in flight per Raft group (the coordination
    /// store's and each queue partition's); writes arriving meanwhile wait and leave together as the next batch
    /// (one Raft entry). 1 gives the largest batches [default: 1; queue partitions 4].
    #[arg(long, env = "TRESTLE_PROPOSAL_PIPELINE", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub proposal_pipeline: Option<u64>,
    /// Take a Raft snapshot, and compact the log behind it, after this many applied entries, plus a fixed
    /// per-node offset of up to half of it so members take turns (etcd's flag; an entry here may carry a batch
    /// of writes) [default: 10000].
    #[arg(long, env = "TRESTLE_SNAPSHOT_COUNT", value_parser = clap::value_parser!(u64).range(1..=MAX_SNAPSHOT_COUNT))]
    pub snapshot_count: Option<u64>,
    /// Raise the NOSPACE alarm, refusing writes that need space, once the store would pass this many bytes
    /// (etcd's flag: 0 is the default, 2 GiB; a negative value turns the quota off) [default: 0].
    #[arg(long, env = "TRESTLE_QUOTA_BACKEND_BYTES", allow_negative_numbers = true)]
    pub quota_backend_bytes: Option<i64>,
    /// How --auto-compaction-retention is read: `periodic` (a time window) or `revision` (a number of
    /// revisions), as in etcd [default: periodic].
    #[arg(long, env = "TRESTLE_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// History the leader keeps when it compacts on its own: periodic mode takes hours (`1`) or a duration
    /// (`30m`, `1h30m`), revision mode a number of revisions; `0` turns it off [default: 0].
    #[arg(long, env = "TRESTLE_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// Client TLS certificate (PEM); with --key-file, clients must use https://.
    #[arg(long, env = "TRESTLE_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client TLS private key (PEM).
    #[arg(long, env = "TRESTLE_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs client certificates.
    #[arg(long, env = "TRESTLE_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file.
    #[arg(long, env = "TRESTLE_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Peer TLS certificate (PEM), presented to clients of the peer port and to other members.
    #[arg(long, env = "TRESTLE_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS private key (PEM).
    #[arg(long, env = "TRESTLE_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs the members' certificates.
    #[arg(long, env = "TRESTLE_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require members to present certificates signed by --peer-trusted-ca-file (mutual TLS).
    #[arg(long, env = "TRESTLE_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
    /// Host the work queue (trestle-queue's gRPC API on the client port) with this many partitions, each a Raft
    /// group over every member; give every member the same number. 0 hosts no queue [default: 0].
    #[arg(long, env = "TRESTLE_QUEUE_PARTITIONS", value_parser = clap::value_parser!(u32).range(0..=256))]
    pub queue_partitions: Option<u32>,
}

/// One listener's TLS from etcd-style options: both files or neither.
fn tls_files(
    what: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert_auth: Option<bool>,
) -> Result<Option<trestle_raft::TlsFiles>, ServeError> {
    match (cert, key) {
        (None, None) if cert_auth.unwrap_or(false) => Err(ServeError::Option(format!(
            "--{what}client-cert-auth needs --{what}cert-file and --{what}key-file"
        ))),
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let mut files = trestle_raft::TlsFiles::new(cert, key);
            files.trusted_ca_file = ca;
            files.client_cert_auth = cert_auth.unwrap_or(false);
            Ok(Some(files))
        }
        _ => Err(ServeError::Option(format!(
            "--{what}cert-file and --{what}key-file go together: give both or neither"
        ))),
    }
}

/// A `trestle serve` configuration that cannot run, or a node that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A bad option; the message says which and how to fix it.
    #[error("{0}")]
    Option(String),
    /// The config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The node failed to start.
    #[error(transparent)]
    Node(#[from] trestle_etcd::EtcdNodeError),
    /// The process's metrics recorder could not be installed (another one already is).
    #[error("cannot install the Prometheus metrics recorder: {0}")]
    Metrics(String),
    /// The node stopped on a fatal error (storage failed); it exits non-zero so a supervisor notices.
    #[error("the node stopped on a fatal error: {0}")]
    Fatal(String),
}

/// Parses `http://host:port` (or `https://`) into a socket address; `localhost` means 127.0.0.1.
pub fn parse_url_addr(url: &str) -> Result<SocketAddr, ServeError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ServeError::Option(format!("URL {url:?} must start with http:// or https://")))?;
    let host_port = rest.trim_end_matches('/');
    // `localhost` is the loopback address by definition (RFC 6761), also where no resolver or /etc/hosts says so.
    if let Some(Ok(port)) = host_port.strip_prefix("localhost:").map(str::parse::<u16>) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| {
            addrs
                .find(SocketAddr::is_ipv4)
                .or_else(|| host_port.to_socket_addrs().ok()?.next())
        })
        .ok_or_else(|| {
            ServeError::Option(format!(
                "URL {url:?} needs a host and a port, like http://127.0.0.1:2379"
            ))
        })
}

/// The largest `--snapshot-count`: beyond it openraft's index arithmetic could overflow, and 10^12 entries is
/// "never" in practice.
const MAX_SNAPSHOT_COUNT: u64 = 1_000_000_000_000;

fn merge<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

impl ServeArgs {
    /// The node configuration these options describe.
    pub fn into_config(self) -> Result<EtcdNodeConfig, ServeError> {
        self.into_parts().map(|(config, _)| config)
    }

    /// The node configuration and the queue host's (`None`: no queue partitions) these options describe.
    pub fn into_parts(
        self,
    ) -> Result<(EtcdNodeConfig, Option<trestle_queue::server::QueueHostConfig>), ServeError> {
        let file = match &self.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ServeError::ConfigFile {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                toml::from_str::<ServeArgs>(&text).map_err(|e| ServeError::ConfigFile {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => ServeArgs::default(),
        };
        let data_dir = merge(self.data_dir, file.data_dir).ok_or_else(|| {
            ServeError::Option(
                "--data-dir is required (or TRESTLE_DATA_DIR, or data_dir in the config file)".into(),
            )
        })?;
        let mut config = EtcdNodeConfig::new(data_dir);
        if let Some(name) = merge(self.name, file.name) {
            config.node.name = name;
        }
        if let Some(url) = merge(self.listen_client_urls, file.listen_client_urls) {
            config.node.listen_client = parse_url_addr(&url)?;
            config.node.advertise_client_urls = vec![url];
        }
        if let Some(urls) = merge(self.advertise_client_urls, file.advertise_client_urls) {
            config.node.advertise_client_urls = urls.split(',').map(|u| u.trim().to_string()).collect();
        }
        if let Some(url) = merge(self.listen_peer_urls, file.listen_peer_urls) {
            config.node.listen_peer = parse_url_addr(&url)?;
            config.node.advertise_peer_url = url;
        }
        if let Some(url) = merge(self.initial_advertise_peer_urls, file.initial_advertise_peer_urls) {
            config.node.advertise_peer_url = url;
        }
        match merge(self.listen_metrics_urls, file.listen_metrics_urls).as_deref() {
            Some("none") => config.node.listen_metrics = None,
            Some(url) => config.node.listen_metrics = Some(parse_url_addr(url)?),
            None => {}
        }
        if let Some(cluster) = merge(self.initial_cluster, file.initial_cluster) {
            config.node.initial_cluster = cluster
                .split(',')
                .map(|member| {
                    member
                        .split_once('=')
                        .map(|(n, u)| (n.trim().to_string(), u.trim().to_string()))
                        .ok_or_else(|| {
                            ServeError::Option(format!(
                                "--initial-cluster entry {member:?} must look like name=http://host:port"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        config.node.cluster_state =
            match merge(self.initial_cluster_state, file.initial_cluster_state).as_deref() {
                None | Some("new") => ClusterState::New,
                Some("existing") => ClusterState::Existing,
                Some(other) => {
                    return Err(ServeError::Option(format!(
                        "--initial-cluster-state {other:?} must be `new` or `existing`"
                    )));
                }
            };
        if let Some(token) = merge(self.initial_cluster_token, file.initial_cluster_token) {
            if token.is_empty() {
                return Err(ServeError::Option(
                    "--initial-cluster-token must not be empty".into(),
                ));
            }
            config.etcd.cluster_id = trestle_etcd::cluster_id_for_token(&token);
        }
        if let Some(ms) = merge(self.heartbeat_interval, file.heartbeat_interval) {
            config.node.raft.heartbeat_interval = std::time::Duration::from_millis(ms);
        }
        if let Some(ms) = merge(self.election_timeout, file.election_timeout) {
            config.node.raft.election_timeout = (
                std::time::Duration::from_millis(ms),
                std::time::Duration::from_millis(ms.saturating_mul(2)),
            );
        }
        let proposal_pipeline = merge(self.proposal_pipeline, file.proposal_pipeline);
        if let Some(n) = proposal_pipeline {
            // Bounded to 1..=64 by the parser; a config file's value is checked by `EtcdNodeConfig::validate`.
            config.store.replicated.proposal_pipeline = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = merge(self.snapshot_count, file.snapshot_count) {
            if !(1..=MAX_SNAPSHOT_COUNT).contains(&n) {
                return Err(ServeError::Option(format!(
                    "snapshot_count {n} must be between 1 and {MAX_SNAPSHOT_COUNT} (entries between snapshots)"
                )));
            }
            config.node.raft.snapshot_every = n;
        }
        if let Some(bytes) = merge(self.quota_backend_bytes, file.quota_backend_bytes) {
            config.store.quota_bytes = match bytes {
                0 => trestle_etcd::DEFAULT_QUOTA_BYTES,
                b if b < 0 => 0,
                b => b as u64,
            };
        }
        let mode = merge(self.auto_compaction_mode, file.auto_compaction_mode);
        let retention = merge(self.auto_compaction_retention, file.auto_compaction_retention);
        if mode.is_some() || retention.is_some() {
            config.store.auto_compaction = trestle_etcd::AutoCompaction::parse(
                mode.as_deref().unwrap_or("periodic"),
                retention.as_deref().unwrap_or("0"),
            )
            .map_err(|e| ServeError::Option(e.to_string()))?;
        }
        config.node.client_tls = tls_files(
            "",
            merge(self.cert_file, file.cert_file),
            merge(self.key_file, file.key_file),
            merge(self.trusted_ca_file, file.trusted_ca_file),
            merge(self.client_cert_auth, file.client_cert_auth),
        )?;
        config.node.peer_tls = tls_files(
            "peer-",
            merge(self.peer_cert_file, file.peer_cert_file),
            merge(self.peer_key_file, file.peer_key_file),
            merge(self.peer_trusted_ca_file, file.peer_trusted_ca_file),
            merge(self.peer_client_cert_auth, file.peer_client_cert_auth),
        )?;
        config.validate().map_err(|e| ServeError::Option(e.to_string()))?;
        let queue_partitions = merge(self.queue_partitions, file.queue_partitions).unwrap_or(0);
        if queue_partitions > trestle_queue::server::MAX_PARTITIONS {
            return Err(ServeError::Option(format!(
                "queue_partitions {queue_partitions} in the config file is over {}",
                trestle_queue::server::MAX_PARTITIONS
            )));
        }
        // The queue's partitions take the node's settings for replicated services, but keep their own group
        // commit depth unless --proposal-pipeline is given (queue traffic gains from a deeper pipeline than the
        // store's).
        let queue = (queue_partitions > 0).then(|| {
            let defaults = trestle_queue::server::QueueHostConfig::default();
            let mut replicated = config.store.replicated.clone();
            if proposal_pipeline.is_none() {
                replicated.proposal_pipeline = defaults.replicated.proposal_pipeline;
            }
            defaults
                .with_partitions(queue_partitions)
                .with_replicated(replicated)
        });
        Ok((config, queue))
    }
}

/// Runs one node until SIGINT or SIGTERM, then shuts it down.
pub(crate) async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let (mut config, queue) = args.into_parts()?;
    let queue_partitions = queue.as_ref().map_or(0, |q| q.partitions);
    if config.node.listen_metrics.is_some() {
        config.node.metrics = Some(install_prometheus_recorder()?);
    }
    let mut routes = coordination_routes(&config.node);
    // The queue's service is routed before its partitions start (the client port serves once, at start); it
    // answers UNAVAILABLE until they have.
    let queue_slot = trestle_queue::server::HostSlot::default();
    if queue.is_some() {
        routes.add_service(trestle_queue::server::QueueApi::pending(queue_slot.clone()).into_service());
    }
    let node = EtcdNode::start_with_services(config, routes).await?;
    if let Some(config) = queue {
        match trestle_queue::server::QueueHost::start(node.node(), config).await {
            Ok(host) => queue_slot.set(host),
            Err(e) => {
                node.shutdown().await;
                return Err(ServeError::Option(format!("the queue could not start: {e}")));
            }
        }
    }
    tracing::info!(id = node.id(), client = %node.client_addr(), peer = %node.peer_addr(), queue_partitions, "serving");
    let fatal = tokio::select! {
        () = wait_for_stop_signal() => None,
        reason = node.fatal_error() => Some(reason),
    };
    node.shutdown().await;
    match fatal {
        None => Ok(()),
        Some(reason) => {
            tracing::error!(%reason, "stopping: storage failed");
            Err(ServeError::Fatal(reason))
        }
    }
}

/// Installs the process's Prometheus recorder (this process is one node: the binary owns the process-global
/// recorder, the library only records through the `metrics` facade) and returns what `/metrics` renders.
fn install_prometheus_recorder() -> Result<trestle_raft::MetricsRenderer, ServeError> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| ServeError::Metrics(e.to_string()))?;
    Ok(trestle_raft::MetricsRenderer::new(move || handle.render()))
}

/// etcd's lock and election services for a node with `config`, talking to the node's own client port.
pub fn coordination_routes(config: &trestle_raft::NodeConfig) -> tonic::service::RoutesBuilder {
    let mut own = config.listen_client;
    if own.ip().is_unspecified() {
        own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let self_client = match &config.client_tls {
        None => crate::coordination::SelfClient::new(format!("http://{own}")),
        Some(tls) => crate::coordination::SelfClient::new(format!("https://{own}")).with_tls(tls.clone()),
    };
    let (lock, election) = crate::coordination::services(self_client);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(lock).add_service(election);
    routes
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_addresses() {
        assert_eq!(
            parse_url_addr("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert_eq!(parse_url_addr("http://localhost:2380/").unwrap().port(), 2380);
        assert!(parse_url_addr("127.0.0.1:2379").is_err());
        assert!(parse_url_addr("http://127.0.0.1").is_err());
    }

    #[test]
    fn queue_partitions_keep_their_own_pipeline_unless_one_is_given() {
        let args = |pipeline: Option<u64>| ServeArgs {
            data_dir: Some("/tmp/x".into()),
            queue_partitions: Some(3),
            proposal_pipeline: pipeline,
            ..Default::default()
        };
        let (store, queue) = args(None).into_parts().unwrap();
        let queue = queue.expect("queue partitions were asked for");
        assert_eq!(queue.partitions, 3);
        assert_eq!(store.store.replicated.proposal_pipeline, 1);
        assert_eq!(
            queue.replicated.proposal_pipeline,
            trestle_queue::server::QUEUE_PROPOSAL_PIPELINE
        );
        let (store, queue) = args(Some(2)).into_parts().unwrap();
        assert_eq!(store.store.replicated.proposal_pipeline, 2);
        assert_eq!(queue.unwrap().replicated.proposal_pipeline, 2);
        let none = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        assert!(none.into_parts().unwrap().1.is_none());
    }

    #[test]
    fn options_build_a_config_and_bad_ones_say_what_to_fix() {
        let args = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            name: Some("n1".into()),
            listen_client_urls: Some("http://127.0.0.1:3379".into()),
            listen_peer_urls: Some("http://127.0.0.1:3380".into()),
            initial_cluster: Some("n1=http://127.0.0.1:3380,n2=http://127.0.0.1:3383".into()),
            ..Default::default()
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.node.initial_cluster.len(), 2);
        assert_eq!(config.node.advertise_peer_url, "http://127.0.0.1:3380");
        assert_eq!(config.node.raft.snapshot_every, 10_000);
        let snapshots = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            snapshot_count: Some(250),
            ..Default::default()
        };
        assert_eq!(snapshots.into_config().unwrap().node.raft.snapshot_every, 250);
        let never = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            snapshot_count: Some(0),
            ..Default::default()
        };
        assert!(
            never
                .into_config()
                .unwrap_err()
                .to_string()
                .contains("snapshot_count")
        );

        let quota = |bytes| {
            ServeArgs {
                data_dir: Some("/tmp/x".into()),
                quota_backend_bytes: Some(bytes),
                ..Default::default()
            }
            .into_config()
            .unwrap()
            .store
            .quota_bytes
        };
        assert_eq!(quota(0), trestle_etcd::DEFAULT_QUOTA_BYTES);
        assert_eq!(quota(-1), 0, "a negative quota turns it off, as in etcd");
        assert_eq!(quota(1 << 20), 1 << 20);
        let compacting = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            auto_compaction_mode: Some("revision".into()),
            auto_compaction_retention: Some("1000".into()),
            ..Default::default()
        };
        assert_eq!(
            compacting.into_config().unwrap().store.auto_compaction,
            trestle_etcd::AutoCompaction::Revision(1000)
        );
        let hourly = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            auto_compaction_retention: Some("2".into()),
            ..Default::default()
        };
        assert_eq!(
            hourly.into_config().unwrap().store.auto_compaction,
            trestle_etcd::AutoCompaction::Periodic(std::time::Duration::from_secs(7200))
        );
        let unreadable = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            auto_compaction_mode: Some("revision".into()),
            auto_compaction_retention: Some("1h".into()),
            ..Default::default()
        };
        let err = unreadable.into_config().unwrap_err().to_string();
        assert!(err.contains("retention \"1h\""), "{err}");

        let missing = ServeArgs::default().into_config().unwrap_err().to_string();
        assert!(missing.contains("--data-dir"), "{missing}");
        let bad = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            initial_cluster_state: Some("old".into()),
            ..Default::default()
        };
        assert!(
            bad.into_config()
                .unwrap_err()
                .to_string()
                .contains("`new` or `existing`")
        );
        // A token gives founders and a member that joins later one cluster id; without it they differ.
        let member = |name: &str, port: u16, cluster: &str, token: Option<&str>| ServeArgs {
            data_dir: Some("/tmp/x".into()),
            name: Some(name.into()),
            listen_peer_urls: Some(format!("http://127.0.0.1:{port}")),
            initial_cluster: Some(cluster.into()),
            initial_cluster_token: token.map(Into::into),
            ..Default::default()
        };
        let founders = "a=http://127.0.0.1:9001,b=http://127.0.0.1:9002";
        let with_joiner = "a=http://127.0.0.1:9001,b=http://127.0.0.1:9002,c=http://127.0.0.1:9003";
        let id = |args: ServeArgs| args.into_config().unwrap().cluster_id();
        assert_eq!(
            id(member("a", 9001, founders, Some("shop"))),
            id(member("c", 9003, with_joiner, Some("shop")))
        );
        assert_ne!(
            id(member("a", 9001, founders, None)),
            id(member("c", 9003, with_joiner, None))
        );
        assert_ne!(
            id(member("a", 9001, founders, Some("shop"))),
            id(member("a", 9001, founders, Some("other")))
        );
        let empty = member("a", 9001, founders, Some(""))
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(empty.contains("must not be empty"), "{empty}");
        let stranger = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            initial_cluster: Some("other=http://127.0.0.1:9999".into()),
            ..Default::default()
        };
        assert!(
            stranger
                .into_config()
                .unwrap_err()
                .to_string()
                .contains("does not list")
        );
    }
}
