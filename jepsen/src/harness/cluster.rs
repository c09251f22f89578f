//! The cluster under test: real `trestle serve` processes, their network, their fault proxies, and a teardown that
//! always completes.
//!
//! Two network modes ([`NetMode`]):
//!
//! - **namespaces** (root): node `i` runs in namespace `jt<run>-n<i>` at `198.18.0.(11+i)`, joined to the others
//!   through a bridge in `jt<run>-br` (see the `netns` module). Partitions are kernel packet drops inside the node
//!   namespaces. The runner stays in the root namespace and reaches node `i`'s client port through a forwarder:
//!   a listener on `127.0.0.1` whose connections are opened from inside the node's namespace.
//! - **loopback** (no root needed): node `i` listens on `127.0.0.(11+i)`; partitions are blackholes in the proxies.
//!
//! In both modes node `i` listens for peers on a private port and advertises its proxy's address as its peer URL
//! (`--initial-advertise-peer-urls`), so every Raft connection towards `i` crosses `i`'s proxy, which knows the
//! connecting node and applies that link's delay, loss or blackhole (see the `proxy` module).
//!
//! For the cache workload ([`ClusterSpec::cache`]) each node also runs a cache node (`trestle cache serve`) beside
//! `trestle serve`, on port 11211 of its namespace (loopback: a free port on its address). The two processes are one
//! node to the nemeses: a kill kills both (the cache node restarts empty), a pause stops both. Clients reach each
//! cache node through a gate in the runner (see the `cache_gate` module), which is where the cache's partitions
//! happen.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::HarnessError;
use crate::harness::cache_gate::{Connect, Gate};
use crate::harness::cleanup::Ledger;
use crate::harness::netns::{self, Netns, NsWorker, node_addr};
use crate::nemesis::proxy::{Counters, FaultTable, LinkFault, Proxy};
use crate::nemesis::schedule::StorageDamage;

/// How nodes are networked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NetMode {
    /// Namespaces when they can be created (root), else loopback.
    #[default]
    Auto,
    /// Network namespaces, a bridge and kernel packet drops (needs root and `ip`).
    Namespaces,
    /// Distinct `127.0.0.x` addresses and fault proxies (no privileges needed).
    Loopback,
}

impl NetMode {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NetMode::Auto => "auto",
            NetMode::Namespaces => "netns",
            NetMode::Loopback => "loopback",
        }
    }
}

impl std::str::FromStr for NetMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(NetMode::Auto),
            "netns" => Ok(NetMode::Namespaces),
            "loopback" => Ok(NetMode::Loopback),
            other => Err(format!(
                "unknown network mode {other:?}: expected auto, netns or loopback"
            )),
        }
    }
}

const CLIENT_PORT: u16 = 2379;
const PROXY_PORT: u16 = 2380;
const PEER_PORT: u16 = 2390;
/// The cache node's memcached port inside a node namespace.
const CACHE_PORT: u16 = 11211;
/// The cache node's memory limit (`trestle cache serve --memory`).
const CACHE_MEMORY: u64 = 32 << 20;

struct NodeSlot {
    name: String,
    /// Where the node listens for clients.
    client_listen: SocketAddr,
    /// Where the node really listens for peers.
    peer_listen: SocketAddr,
    /// The proxy in front of it: its advertised peer URL.
    peer_advertised: SocketAddr,
    /// What the runner's clients dial.
    endpoint: String,
    child: Option<Child>,
    paused: bool,
    /// Re-added with MemberAdd: starts with `--initial-cluster-state existing`.
    joining: bool,
    log: PathBuf,
    data: PathBuf,
    /// The libfaketime offset file the node reads its wall clock's skew from (clock nemesis runs only).
    clock: PathBuf,
    /// Where the node's cache node listens (cache workload only).
    cache_listen: Option<SocketAddr>,
    /// The cache node's process.
    cache_child: Option<Child>,
    /// The cache node's log.
    cache_log: PathBuf,
}

/// Everything the proxies and teardown share.
struct Shared {
    pids: Mutex<Vec<Option<u32>>>,
}

/// A running cluster. Dropping it tears everything down (processes, namespaces, proxies, data).
pub(crate) struct Cluster {
    binary: PathBuf,
    nodes: Vec<NodeSlot>,
    net: Option<Netns>,
    workers: Vec<NsWorker>,
    shared: Arc<Shared>,
    faults: watch::Sender<Arc<FaultTable>>,
    pub(crate) counters: Arc<Counters>,
    cuts: BTreeSet<(usize, usize)>,
    link_faults: BTreeMap<(usize, usize), LinkFault>,
    tasks: Vec<JoinHandle<()>>,
    /// Client forwarders (namespace mode): address and task, by node.
    forwarders: Vec<Option<(SocketAddr, Option<JoinHandle<()>>)>>,
    data_root: PathBuf,
    ledger: Ledger,
    torn_down: bool,
    /// libfaketime, preloaded into every node when the run has a clock nemesis.
    faketime: Option<PathBuf>,
    /// Extra `trestle serve` options ([`ClusterSpec::serve_args`]).
    serve_args: Vec<String>,
    /// The run id (the cache nodes' command lines carry it, for `trestle-jepsen clean`).
    run_id: String,
    /// The clients' way to each cache node, by node (empty unless the cluster hosts cache nodes).
    gates: Vec<Gate>,
    /// Each node's data volume, a size-limited tmpfs holding its data directory (disk-full nemesis runs only).
    volumes: Vec<PathBuf>,
}

/// What the cluster needs to start.
#[derive(Clone, Debug)]
pub(crate) struct ClusterSpec {
    pub(crate) nodes: usize,
    pub(crate) binary: PathBuf,
    /// Node logs go to `<logs>/n<i>.log`.
    pub(crate) logs: PathBuf,
    pub(crate) net: NetMode,
    pub(crate) run_id: String,
    pub(crate) seed: u64,
    /// Preload this libfaketime into every node, so that the clock nemesis can skew their wall clocks.
    pub(crate) faketime: Option<PathBuf>,
    /// Extra `trestle serve` options for every node (the workload's).
    pub(crate) serve_args: Vec<String>,
    /// Also run a cache node (`trestle cache serve`) on every node ([`Workload::hosts_cache`](crate::Workload)).
    pub(crate) cache: bool,
    /// Give every node a data volume of this many bytes (a tmpfs mounted for the run, which needs root), so that
    /// the disk-full nemesis can fill it.
    pub(crate) disk_volume: Option<u64>,
}

impl Cluster {
    /// Creates the network and proxies and starts every node. Does not wait for a leader ([`Cluster::wait_ready`]).
    pub(crate) async fn start(spec: &ClusterSpec) -> Result<(Cluster, NetMode, String), HarnessError> {
        let ledger = Ledger::open(&spec.run_id);
        let (mut mode, mut why) = match spec.net {
            NetMode::Loopback => (NetMode::Loopback, "requested".to_owned()),
            NetMode::Namespaces => (NetMode::Namespaces, "requested".to_owned()),
            NetMode::Auto => {
                ledger.append(&format!("netns {}", netns::probe_name(&spec.run_id)));
                match netns::namespaces_available(&spec.run_id) {
                    Ok(()) => (NetMode::Namespaces, "root".to_owned()),
                    Err(e) => (NetMode::Loopback, format!("namespaces unavailable: {e}")),
                }
            }
        };
        let data_root = std::env::temp_dir().join(format!("trestle-jepsen-{}", spec.run_id));
        fs::create_dir_all(&data_root).map_err(|e| HarnessError::io(&data_root, e))?;
        fs::create_dir_all(&spec.logs).map_err(|e| HarnessError::io(&spec.logs, e))?;
        let (faults, _) = watch::channel(Arc::new(FaultTable::default()));
        let mut cluster = Cluster {
            binary: spec.binary.clone(),
            nodes: Vec::new(),
            net: None,
            workers: Vec::new(),
            shared: Arc::new(Shared {
                pids: Mutex::new(vec![None; spec.nodes]),
            }),
            faults,
            counters: Arc::new(Counters::default()),
            cuts: BTreeSet::new(),
            link_faults: BTreeMap::new(),
            tasks: Vec::new(),
            forwarders: Vec::new(),
            data_root,
            ledger,
            torn_down: false,
            faketime: spec.faketime.clone(),
            serve_args: spec.serve_args.clone(),
            run_id: spec.run_id.clone(),
            gates: Vec::new(),
            volumes: Vec::new(),
        };
        // From here on, an error drops `cluster`, which tears down whatever was made.
        if mode == NetMode::Namespaces
            && let Err(e) = cluster.build_namespaces(spec).await
        {
            if spec.net != NetMode::Auto {
                return Err(e);
            }
            // `auto`: namespaces could be made but not wired (no veth, no setns...): fall back.
            cluster.discard_network();
            mode = NetMode::Loopback;
            why = format!("namespaces failed: {e}");
        }
        if mode == NetMode::Loopback {
            cluster.build_loopback(spec).await?;
        }
        if spec.cache {
            cluster.build_cache_gates().await?;
        }
        if let Some(bytes) = spec.disk_volume {
            cluster.mount_volumes(bytes)?;
        }
        for i in 0..spec.nodes {
            cluster.start_node(i)?;
        }
        let firewall = cluster
            .net
            .as_ref()
            .map(|n| format!(", partitions by {}", n.firewall.name()))
            .unwrap_or_else(|| ", partitions by proxy blackholes".into());
        Ok((cluster, mode, format!("{why}{firewall}")))
    }

    fn slot(
        &self,
        i: usize,
        spec: &ClusterSpec,
        client: SocketAddr,
        peer: SocketAddr,
        adv: SocketAddr,
    ) -> NodeSlot {
        NodeSlot {
            name: format!("n{i}"),
            client_listen: client,
            peer_listen: peer,
            peer_advertised: adv,
            endpoint: String::new(),
            child: None,
            paused: false,
            joining: false,
            log: spec.logs.join(format!("n{i}.log")),
            data: self.data_root.join(format!("n{i}")),
            clock: self.data_root.join(format!("n{i}.faketime")),
            cache_listen: None,
            cache_child: None,
            cache_log: spec.logs.join(format!("cache{i}.log")),
        }
    }

    async fn build_loopback(&mut self, spec: &ClusterSpec) -> Result<(), HarnessError> {
        for i in 0..spec.nodes {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + u8::try_from(i).unwrap_or(200)));
            let free = |what: &str| -> Result<SocketAddr, HarnessError> {
                std::net::TcpListener::bind((ip, 0))
                    .and_then(|l| l.local_addr())
                    .map_err(|e| HarnessError::io(format!("{ip} ({what} port)"), e))
            };
            let client = free("client")?;
            let peer = free("peer")?;
            let listener = tokio::net::TcpListener::bind((ip, 0))
                .await
                .map_err(|e| HarnessError::io(format!("{ip} (proxy port)"), e))?;
            let adv = listener
                .local_addr()
                .map_err(|e| HarnessError::io(format!("{ip} (proxy port)"), e))?;
            let mut slot = self.slot(i, spec, client, peer, adv);
            slot.endpoint = format!("http://{client}");
            if spec.cache {
                slot.cache_listen = Some(free("cache")?);
            }
            self.nodes.push(slot);
            let shared = Arc::clone(&self.shared);
            let proxy = Proxy {
                dst: i,
                identify: Arc::new(move |peer_addr, local_addr| {
                    let pids = shared.pids.lock().map(|p| p.clone()).unwrap_or_default();
                    owner_of_connection(&pids, peer_addr, local_addr)
                }),
                connect: Arc::new(move || Box::pin(tokio::net::TcpStream::connect(peer))),
                faults: self.faults.subscribe(),
                counters: Arc::clone(&self.counters),
                seed: spec.seed ^ i as u64,
            };
            self.tasks.push(proxy.spawn(listener));
        }
        Ok(())
    }

    async fn build_namespaces(&mut self, spec: &ClusterSpec) -> Result<(), HarnessError> {
        let (bridge, names) = Netns::names(&spec.run_id, spec.nodes);
        // Written before creating, so a SIGKILL half-way still leaves a complete ledger.
        self.ledger.append(&format!("netns {bridge}"));
        for n in &names {
            self.ledger.append(&format!("netns {n}"));
        }
        self.net = Some(Netns::create(&spec.run_id, spec.nodes)?);
        for (i, name) in names.iter().enumerate() {
            let worker = NsWorker::spawn(name)?;
            let client = node_addr(i, CLIENT_PORT);
            let peer = node_addr(i, PEER_PORT);
            let adv = node_addr(i, PROXY_PORT);
            let listener = worker
                .bind(adv)
                .await
                .map_err(|e| HarnessError::io(format!("{adv} in {name}"), e))?;
            let proxy_worker = worker.clone();
            let proxy = Proxy {
                dst: i,
                identify: Arc::new(move |peer_addr, _| {
                    (0..64).find(|&j| IpAddr::V4(netns::node_ip(j)) == peer_addr.ip())
                }),
                connect: Arc::new(move || {
                    let w = proxy_worker.clone();
                    Box::pin(async move { w.connect(peer).await })
                }),
                faults: self.faults.subscribe(),
                counters: Arc::clone(&self.counters),
                seed: spec.seed ^ i as u64,
            };
            self.tasks.push(proxy.spawn(listener));
            // The runner's way in: 127.0.0.1 in the root namespace, dialled onwards from inside the node's one.
            let local =
                self.spawn_forwarder(i, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &worker, client)?;
            let mut slot = self.slot(i, spec, client, peer, adv);
            slot.endpoint = format!("http://{local}");
            if spec.cache {
                slot.cache_listen = Some(node_addr(i, CACHE_PORT));
            }
            self.nodes.push(slot);
            self.workers.push(worker);
        }
        Ok(())
    }

    /// A gate in front of every node's cache node: its onward connections are made inside the node's namespace
    /// (netns mode) or straight to its loopback address.
    async fn build_cache_gates(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.nodes.len() {
            let Some(target) = self.nodes[i].cache_listen else {
                continue;
            };
            let connect: Connect = match self.workers.get(i).cloned() {
                Some(worker) => Arc::new(move || {
                    let w = worker.clone();
                    Box::pin(async move { w.connect(target).await })
                }),
                None => Arc::new(move || Box::pin(tokio::net::TcpStream::connect(target))),
            };
            let gate = Gate::spawn(connect)
                .await
                .map_err(|e| HarnessError::io(format!("127.0.0.1 (cache gate of n{i})"), e))?;
            self.gates.push(gate);
        }
        Ok(())
    }

    /// Undoes a partly built network before trying another mode.
    fn discard_network(&mut self) {
        self.gates.clear();
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for (_, t) in self.forwarders.drain(..).flatten() {
            if let Some(t) = t {
                t.abort();
            }
        }
        self.workers.clear();
        self.nodes.clear();
        if let Some(mut net) = self.net.take() {
            net.teardown();
        }
    }

    /// Listens on `at` (root namespace) and forwards each connection to `client` inside the node's namespace.
    /// The forwarder lives only while the node does, so a client of a killed node gets "connection refused" (a
    /// certain failure) rather than a connection that is accepted and then dropped (an unknown outcome).
    fn spawn_forwarder(
        &mut self,
        i: usize,
        at: SocketAddr,
        worker: &NsWorker,
        client: SocketAddr,
    ) -> Result<SocketAddr, HarnessError> {
        let what = || format!("{at} (client forwarder of n{i})");
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| HarnessError::io(what(), e))?;
        socket
            .set_reuseaddr(true)
            .map_err(|e| HarnessError::io(what(), e))?;
        // The forwarder of the node's previous process, aborted when it died, may not have closed its listener
        // yet when the node is started again at once.
        socket
            .set_reuseport(true)
            .map_err(|e| HarnessError::io(what(), e))?;
        socket.bind(at).map_err(|e| HarnessError::io(what(), e))?;
        let listener = socket.listen(1024).map_err(|e| HarnessError::io(what(), e))?;
        let local = listener.local_addr().map_err(|e| HarnessError::io(what(), e))?;
        let fw = worker.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let fw = fw.clone();
                tokio::spawn(async move {
                    // A restarted node may not listen yet: keep trying for a while, as a SYN is retried, rather
                    // than drop a connection the client already sees as open.
                    let deadline = Instant::now() + Duration::from_secs(2);
                    let outbound = loop {
                        match fw.connect(client).await {
                            Ok(s) => break Some(s),
                            Err(_) if Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(_) => break None,
                        }
                    };
                    if let Some(mut outbound) = outbound {
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        if self.forwarders.len() <= i {
            self.forwarders.resize_with(i + 1, || None);
        }
        self.forwarders[i] = Some((local, Some(task)));
        Ok(local)
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The URL a client uses for node `i`.
    pub(crate) fn endpoint(&self, i: usize) -> String {
        self.nodes[i].endpoint.clone()
    }

    /// Where node `i` logs.
    pub(crate) fn log_path(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// Whether node `i` is running (neither killed nor paused).
    pub(crate) fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some() && !self.nodes[i].paused
    }

    /// Whether node `i` has a process (running or paused).
    pub(crate) fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Whether every node also runs a cache node.
    pub(crate) fn hosts_cache(&self) -> bool {
        !self.gates.is_empty()
    }

    /// Where clients dial each node's cache node (its gate), by node; empty without cache nodes.
    pub(crate) fn cache_addrs(&self) -> Vec<SocketAddr> {
        self.gates.iter().map(Gate::addr).collect()
    }

    /// Cuts the clients off from the cache nodes of `nodes` and reconnects the others. Returns how many gates are
    /// cut afterwards, as they report it.
    pub(crate) fn set_cache_cut(&self, nodes: &BTreeSet<usize>) -> usize {
        for (i, gate) in self.gates.iter().enumerate() {
            gate.set_cut(nodes.contains(&i));
        }
        self.gates.iter().filter(|g| g.is_cut()).count()
    }

    /// Whether node `i`'s cache node accepts a TCP connection (made inside its namespace in netns mode, not
    /// through its gate, which accepts whatever the node does).
    async fn cache_listening(&self, i: usize) -> bool {
        let Some(addr) = self.nodes[i].cache_listen else {
            return false;
        };
        let timeout = Duration::from_millis(300);
        match self.workers.get(i) {
            Some(worker) => worker.can_connect(addr, timeout).await,
            None => matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
        }
    }

    /// Waits until every cache node accepts connections, or `timeout` passes (the error names the nodes that
    /// did not).
    pub(crate) async fn wait_cache_ready(&self, timeout: Duration, logs: &Path) -> Result<(), HarnessError> {
        let start = Instant::now();
        loop {
            let mut silent = Vec::new();
            for i in 0..self.len() {
                if !self.cache_listening(i).await {
                    silent.push(format!("n{i}"));
                }
            }
            if silent.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(HarnessError::CacheNotReady {
                    nodes: silent.join(", "),
                    waited_ms: timeout.as_millis(),
                    logs: logs.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every node's proxy is running and subscribed to the fault table.
    pub(crate) fn proxies_alive(&self) -> bool {
        self.faults.receiver_count() >= self.nodes.len() && self.tasks.iter().all(|t| !t.is_finished())
    }

    /// Starts (or restarts) node `i` on its data directory.
    pub(crate) fn start_node(&mut self, i: usize) -> Result<u32, HarnessError> {
        let cluster: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}=http://{}", n.name, n.peer_advertised))
            .collect();
        let node = &self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| HarnessError::io(&node.log, e))?;
        let log2 = log.try_clone().map_err(|e| HarnessError::io(&node.log, e))?;
        let mut cmd = match (&self.net, &self.workers.is_empty()) {
            (Some(net), false) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.nodes[i]]).arg(&self.binary);
                c
            }
            _ => Command::new(&self.binary),
        };
        cmd.arg("serve")
            .args(["--name", &node.name])
            .arg("--data-dir")
            .arg(&node.data)
            .args(["--listen-client-urls", &format!("http://{}", node.client_listen)])
            .args(["--listen-peer-urls", &format!("http://{}", node.peer_listen)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", node.peer_advertised),
            ])
            .args(["--listen-metrics-urls", "none"])
            .args(["--initial-cluster", &cluster.join(",")])
            .args([
                "--initial-cluster-state",
                if node.joining { "existing" } else { "new" },
            ])
            .args(&self.serve_args)
            .env("NO_COLOR", "1");
        if let Some(lib) = &self.faketime {
            // The wall clock only (an NTP step, not a clock running at another rate): openraft's timers and the
            // leases run on the monotonic clock. The offset file is read again at most once a second.
            if !node.clock.exists() {
                fs::write(&node.clock, "+0\n").map_err(|e| HarnessError::io(&node.clock, e))?;
            }
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", &node.clock)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().map_err(|e| HarnessError::Spawn {
            node: i,
            binary: self.binary.clone(),
            message: e.to_string(),
        })?;
        let pid = child.id();
        self.ledger.append(&format!("pid {pid}"));
        if let Some(Some((at, None))) = self.forwarders.get(i) {
            let (at, client) = (*at, self.nodes[i].client_listen);
            if let Some(worker) = self.workers.get(i).cloned()
                && let Err(e) = self.spawn_forwarder(i, at, &worker, client)
            {
                // Not left running untracked: the caller sees the node down.
                sigkill(child);
                return Err(e);
            }
        }
        if let Ok(mut pids) = self.shared.pids.lock() {
            pids[i] = Some(pid);
        }
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.paused = false;
        self.start_cache(i)?;
        Ok(pid)
    }

    /// Starts node `i`'s cache node, if the cluster hosts them (empty: the store is memory only).
    fn start_cache(&mut self, i: usize) -> Result<(), HarnessError> {
        let node = &self.nodes[i];
        let Some(listen) = node.cache_listen else {
            return Ok(());
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.cache_log)
            .map_err(|e| HarnessError::io(&node.cache_log, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::io(&node.cache_log, e))?;
        let mut cmd = match (&self.net, &self.workers.is_empty()) {
            (Some(net), false) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.nodes[i]]).arg(&self.binary);
                c
            }
            _ => Command::new(&self.binary),
        };
        cmd.args(["cache", "serve"])
            .args(["--memcached-listen", &listen.to_string()])
            .args(["--memory", &CACHE_MEMORY.to_string()])
            // Nothing registers (no --register-endpoints); the prefix only puts the run id in the command line,
            // which is how `trestle-jepsen clean` recognises a leftover process of a killed run.
            .args(["--register-prefix", &format!("/trestle-jepsen/{}/", self.run_id)])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|e| HarnessError::Spawn {
            node: i,
            binary: self.binary.clone(),
            message: format!("cache node: {e}"),
        })?;
        self.ledger.append(&format!("pid {}", child.id()));
        self.nodes[i].cache_child = Some(child);
        Ok(())
    }

    /// Node `i`'s advertised peer URL (what MemberAdd and the member list name it by).
    pub(crate) fn peer_url(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].peer_advertised)
    }

    /// Deletes node `i`'s data (it must be down) and makes its next start join an existing cluster.
    pub(crate) fn wipe_for_rejoin(&mut self, i: usize) -> Result<(), HarnessError> {
        let data = &self.nodes[i].data;
        if data.exists() {
            fs::remove_dir_all(data).map_err(|e| HarnessError::io(data, e))?;
        }
        self.nodes[i].joining = true;
        Ok(())
    }

    /// Mounts a tmpfs of `bytes` for each node and moves its data directory onto it (before the first start).
    fn mount_volumes(&mut self, bytes: u64) -> Result<(), HarnessError> {
        for i in 0..self.nodes.len() {
            let volume = self.data_root.join(format!("vol{i}"));
            fs::create_dir_all(&volume).map_err(|e| HarnessError::io(&volume, e))?;
            // Written first, so that a killed run's volume is unmounted by the next run's cleanup.
            self.ledger.append(&format!("mount {}", volume.display()));
            let options = format!("size={bytes},mode=0700");
            let source = format!("trestle-jepsen-{}", self.run_id);
            let args = ["-t", "tmpfs", "-o", &options, &source];
            let out = Command::new("mount").args(args).arg(&volume).output();
            let failed = match &out {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(message) = failed {
                return Err(HarnessError::Command {
                    command: format!("mount {} {}", args.join(" "), volume.display()),
                    message: format!(
                        "{message} (the disk-full nemesis needs root to mount a volume per node)"
                    ),
                });
            }
            self.volumes.push(volume.clone());
            self.nodes[i].data = volume.join("data");
        }
        Ok(())
    }

    /// Fills node `i`'s data volume with a ballast file until the volume is full. Returns the bytes written.
    pub(crate) fn fill_volume(&self, i: usize) -> Result<u64, HarnessError> {
        use std::io::Write;
        let volume = self.volumes.get(i).ok_or_else(|| {
            HarnessError::io(&self.data_root, io::Error::other("the run has no data volumes"))
        })?;
        let path = volume.join("ballast");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| HarnessError::io(&path, e))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == io::ErrorKind::StorageFull => break,
                Err(e) => return Err(HarnessError::io(&path, e)),
            }
        }
        Ok(written)
    }

    /// Deletes node `i`'s ballast (see [`Cluster::fill_volume`]). Whether there was one.
    pub(crate) fn free_volume(&self, i: usize) -> bool {
        self.volumes
            .get(i)
            .is_some_and(|volume| fs::remove_file(volume.join("ballast")).is_ok())
    }

    /// Damages node `i`'s database directory (it must be down) as `how` says. Returns what was done.
    pub(crate) fn damage_storage(&self, i: usize, how: StorageDamage) -> Result<String, HarnessError> {
        let db = self.nodes[i].data.join("db");
        let files = |suffix: &str| -> Result<Vec<PathBuf>, HarnessError> {
            let mut found: Vec<PathBuf> = fs::read_dir(&db)
                .map_err(|e| HarnessError::io(&db, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect();
            found.sort();
            Ok(found)
        };
        let show = |path: &Path| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let flip = |path: &Path, at: u64| -> Result<(), HarnessError> {
            let mut bytes = fs::read(path).map_err(|e| HarnessError::io(path, e))?;
            if let Some(b) = usize::try_from(at).ok().and_then(|at| bytes.get_mut(at)) {
                *b ^= 0x20;
            }
            fs::write(path, bytes).map_err(|e| HarnessError::io(path, e))
        };
        let wal = files(".log")?
            .into_iter()
            .rfind(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0));
        match how {
            StorageDamage::TruncateWal => {
                let Some(wal) = wal else {
                    return Err(HarnessError::io(
                        &db,
                        io::Error::other("no write-ahead log to cut"),
                    ));
                };
                let len = fs::metadata(&wal).map_err(|e| HarnessError::io(&wal, e))?.len();
                fs::OpenOptions::new()
                    .write(true)
                    .open(&wal)
                    .and_then(|f| f.set_len(len / 2))
                    .map_err(|e| HarnessError::io(&wal, e))?;
                Ok(format!("{}: {len} -> {} bytes", show(&wal), len / 2))
            }
            StorageDamage::FlipBytes => {
                let tables = files(".sst")?;
                if tables.is_empty() {
                    let Some(wal) = wal else {
                        return Err(HarnessError::io(
                            &db,
                            io::Error::other("no table or log to damage"),
                        ));
                    };
                    let len = fs::metadata(&wal).map_err(|e| HarnessError::io(&wal, e))?.len();
                    flip(&wal, len / 2)?;
                    return Ok(format!("{}: byte {} flipped (no table yet)", show(&wal), len / 2));
                }
                for table in &tables {
                    flip(table, 64)?;
                }
                Ok(format!("byte 64 flipped in {} table files", tables.len()))
            }
        }
    }

    /// Waits up to `timeout` for node `i`'s process to exit by itself; `Some(success)` when it did (the node is
    /// then down, its cache node killed), `None` while it still runs.
    pub(crate) async fn wait_exited(&mut self, i: usize, timeout: Duration) -> Option<bool> {
        let start = Instant::now();
        loop {
            let exited = match self.nodes[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.success()),
                Some(Ok(None)) => None,
                Some(Err(_)) | None => Some(false),
            };
            if let Some(success) = exited {
                self.kill_node(i);
                return Some(success);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `bytes` of node `i`'s log.
    pub(crate) fn log_tail(&self, i: usize, bytes: u64) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = fs::File::open(&self.nodes[i].log) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
        let mut tail = Vec::new();
        let _ = file.read_to_end(&mut tail);
        String::from_utf8_lossy(&tail).into_owned()
    }

    /// `kill -9` node `i`. Returns whether a running process died of SIGKILL.
    /// Sets node `i`'s wall-clock offset (seconds; libfaketime reads it within a second). Whether the offset was
    /// written and the running node has libfaketime loaded.
    pub(crate) fn set_clock(&self, i: usize, offset_s: i64) -> bool {
        let node = &self.nodes[i];
        if self.faketime.is_none() || fs::write(&node.clock, format!("{offset_s:+}\n")).is_err() {
            return false;
        }
        let Some(pid) = node.child.as_ref().map(Child::id) else {
            return false;
        };
        fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.contains("libfaketime"))
    }

    /// The nodes' clock offset files (for a strobe running beside the cluster).
    pub(crate) fn clock_files(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.clock.clone()).collect()
    }

    pub(crate) fn kill_node(&mut self, i: usize) -> bool {
        // The node's cache node dies with it (it restarts empty).
        let cache_died = self.nodes[i].cache_child.take().map(sigkill);
        let Some(child) = self.nodes[i].child.take() else {
            return false;
        };
        if let Ok(mut pids) = self.shared.pids.lock() {
            pids[i] = None;
        }
        self.nodes[i].paused = false;
        if let Some(Some((_, task))) = self.forwarders.get_mut(i)
            && let Some(t) = task.take()
        {
            t.abort();
        }
        sigkill(child) && cache_died.unwrap_or(true)
    }

    /// SIGSTOP node `i` (and its cache node). Returns whether the kernel then shows them stopped.
    pub(crate) async fn pause_node(&mut self, i: usize) -> bool {
        let Some(pid) = self.nodes[i].child.as_ref().map(Child::id) else {
            return false;
        };
        let cache = self.nodes[i].cache_child.as_ref().map(Child::id);
        let pids: Vec<u32> = std::iter::once(pid).chain(cache).collect();
        if pids
            .iter()
            .any(|&p| kill(Pid::from_raw(p as i32), Signal::SIGSTOP).is_err())
        {
            return false;
        }
        self.nodes[i].paused = true;
        wait_until(Duration::from_secs(2), || {
            pids.iter().all(|&p| process_state(p) == Some('T'))
        })
        .await
    }

    /// SIGCONT node `i` (and its cache node). Returns whether it was paused.
    pub(crate) fn resume_node(&mut self, i: usize) -> bool {
        let Some(pid) = self.nodes[i].child.as_ref().map(Child::id) else {
            return false;
        };
        let cache = self.nodes[i].cache_child.as_ref().map(Child::id);
        let was = self.nodes[i].paused;
        self.nodes[i].paused = false;
        let mut resumed = true;
        for p in std::iter::once(pid).chain(cache) {
            resumed &= kill(Pid::from_raw(p as i32), Signal::SIGCONT).is_ok();
        }
        was && resumed
    }

    fn publish(&self) {
        let mut table = FaultTable::default();
        for (&(a, b), f) in &self.link_faults {
            table.set(a, b, *f);
        }
        if self.net.is_none() {
            for &(a, b) in &self.cuts {
                table.update(a, b, |f| f.blackhole = true);
            }
        }
        self.faults.send_replace(Arc::new(table));
    }

    /// Replaces the partition with `cut` (pairs `(a, b)` with `a < b`). Returns the number of kernel drop rules in
    /// place afterwards (namespaces), or the number of blackholed links (loopback).
    pub(crate) fn set_partition(&mut self, cut: BTreeSet<(usize, usize)>) -> Result<usize, HarnessError> {
        self.cuts = cut;
        self.publish();
        match &self.net {
            Some(net) => net.set_cuts(&self.cuts),
            None => Ok(self.cuts.len()),
        }
    }

    /// Namespace mode: whether a TCP handshake from node `a`'s namespace to node `b`'s peer address fails now (the
    /// probe the nemesis uses to prove a cut is a real packet drop). `None` in loopback mode.
    pub(crate) async fn probe_blocked(&self, a: usize, b: usize) -> Option<bool> {
        self.net.as_ref()?;
        let worker = self.workers.get(a)?;
        Some(
            !worker
                .can_connect(node_addr(b, PROXY_PORT), Duration::from_millis(300))
                .await,
        )
    }

    /// Sets the proxy faults on the given links (replacing all earlier link faults).
    pub(crate) fn set_link_faults(&mut self, links: BTreeMap<(usize, usize), LinkFault>) {
        self.link_faults = links;
        self.publish();
    }

    /// A client connected to node `i`, with a per-request timeout.
    pub(crate) async fn client(
        &self,
        i: usize,
        timeout: Duration,
    ) -> Result<etcd_client::Client, etcd_client::Error> {
        let options = etcd_client::ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        etcd_client::Client::connect([self.endpoint(i)], Some(options)).await
    }

    /// Asks every running node who leads; the node index most of them name, if any.
    pub(crate) async fn leader(&self) -> Option<usize> {
        let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for i in 0..self.len() {
            if !self.is_up(i) {
                continue;
            }
            let status = async {
                let mut c = self.client(i, Duration::from_millis(500)).await.ok()?;
                c.status().await.ok()
            };
            if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(800), status).await {
                if let Some(h) = s.header() {
                    ids.insert(h.member_id(), i);
                }
                if s.leader() != 0 {
                    *votes.entry(s.leader()).or_default() += 1;
                }
            }
        }
        let (id, _) = votes.into_iter().max_by_key(|&(_, v)| v)?;
        ids.get(&id).copied()
    }

    /// Waits until every running node answers and they agree on a leader, or `timeout` passes.
    pub(crate) async fn wait_ready(&self, timeout: Duration, logs: &Path) -> Result<usize, HarnessError> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if start.elapsed() >= timeout {
                return Err(HarnessError::NotReady {
                    waited_ms: timeout.as_millis(),
                    logs: logs.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Last lines of every node's log.
    pub(crate) fn log_tails(&self, lines: usize) -> String {
        (0..self.len())
            .map(|i| {
                let text = fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(lines).collect();
                format!(
                    "--- n{i} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills every node, stops the proxies, deletes the namespaces, the data and the ledger. Idempotent; never
    /// fails (each step is attempted).
    pub(crate) fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        self.discard_network();
        for volume in &self.volumes {
            let _ = Command::new("umount").arg(volume).output();
        }
        let _ = fs::remove_dir_all(&self.data_root);
        self.ledger.close();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `kill -9` a child and reaps it. Whether it died of SIGKILL.
fn sigkill(mut child: Child) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let sent = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).is_ok();
    let status = child.wait();
    sent && status.is_ok_and(|s| s.signal() == Some(9))
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub(crate) async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T`, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Parses `0100007F:1F90` from `/proc/net/tcp` (IPv4, address in the kernel's native byte order).
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    if ip.len() != 8 {
        return None;
    }
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((Ipv4Addr::from(ip.to_ne_bytes()), port)))
}

/// Which of `pids` owns the socket whose local address is `peer` and remote address `local` (the other end of a
/// connection the proxy accepted): finds its inode in `/proc/net/tcp`, then the process holding it.
fn owner_of_connection(pids: &[Option<u32>], peer: SocketAddr, local: SocketAddr) -> Option<usize> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let l = parse_proc_addr(cols.get(1)?)?;
        let r = parse_proc_addr(cols.get(2)?)?;
        (l == peer && r == local).then(|| cols.get(9).map(|s| s.to_string()))?
    })?;
    let target = format!("socket:[{inode}]");
    pids.iter().enumerate().find_map(|(i, pid)| {
        let pid = (*pid)?;
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == target))
            .then_some(i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_parse() {
        let a = parse_proc_addr("0100007F:1F90");
        assert_eq!(a, Some(SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert_eq!(parse_proc_addr("zz"), None);
    }

    #[test]
    fn the_owner_of_a_loopback_connection_is_found_through_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let _client = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let (accepted, peer) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let local = accepted.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let me = std::process::id();
        assert_eq!(owner_of_connection(&[None, Some(me)], peer, local), Some(1));
        assert_eq!(owner_of_connection(&[Some(1)], peer, local), None);
    }
}
