//! Root mode's network: one namespace per node, a bridge in a namespace of its own, and partitions as real packet
//! drops inside the node namespaces.
//!
//! ```text
//!   jt<run>-n0 (eth0 198.18.0.11) ─veth─┐
//!   jt<run>-n1 (eth0 198.18.0.12) ─veth─┼─ br0 in jt<run>-br
//!   jt<run>-n2 (eth0 198.18.0.13) ─veth─┘
//! ```
//!
//! Nothing is created in the machine's root namespace: each veth pair is created inside a node namespace with its
//! peer moved straight into the bridge namespace. The runner reaches a node by creating sockets *inside* that
//! node's namespace ([`NsWorker`]: a thread that entered the namespace with `setns` and binds or connects on
//! request); the sockets keep their namespace when handed back to the runtime.
//!
//! Partitions: nftables rules (`inet` table `trestle_jepsen`, dropping the other side's address on input and
//! output) when `nft` is installed, else blackhole routes (`ip route add blackhole ADDR/32`), which drop every
//! packet towards the other side, SYN-ACKs and ACKs included, so no connection in either direction survives.
//! Either way the kernel drops the packets; the rules are listed back to prove they are in place.
//! `TRESTLE_JEPSEN_FIREWALL=nft` or `=routes` forces one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::sync::oneshot;

use crate::error::HarnessError;

/// The subnet the nodes live in; it exists only inside the run's own namespaces.
pub(crate) const SUBNET_PREFIX: [u8; 3] = [198, 18, 0];

/// Node `i`'s address inside the namespaces.
pub(crate) fn node_ip(i: usize) -> Ipv4Addr {
    let [a, b, c] = SUBNET_PREFIX;
    Ipv4Addr::new(a, b, c, 11 + u8::try_from(i).unwrap_or(200))
}

/// Runs `ip ARGS`, turning a failure into an error that shows the command and what it printed.
pub(crate) fn ip(args: &[&str]) -> Result<String, HarnessError> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HarnessError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Whether `nft` is on the PATH.
fn have_nft() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// How partitions drop packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Firewall {
    /// nftables rules in each node namespace.
    Nft,
    /// Blackhole routes in each node namespace (iproute2 only).
    Routes,
}

impl Firewall {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Firewall::Nft => "nftables",
            Firewall::Routes => "blackhole routes",
        }
    }
}

/// The namespaces of one run.
#[derive(Debug)]
pub(crate) struct Netns {
    /// Node namespaces, by node index.
    pub(crate) nodes: Vec<String>,
    /// The bridge's namespace.
    pub(crate) bridge: String,
    pub(crate) firewall: Firewall,
    /// Namespaces created so far (torn down in reverse).
    created: Vec<String>,
}

impl Netns {
    /// The namespace names a run uses (also what leftover cleanup deletes).
    pub(crate) fn names(run_id: &str, n: usize) -> (String, Vec<String>) {
        (
            format!("jt{run_id}-br"),
            (0..n).map(|i| format!("jt{run_id}-n{i}")).collect(),
        )
    }

    /// Creates the bridge namespace, the node namespaces and the links. On error, whatever was created is removed.
    pub(crate) fn create(run_id: &str, n: usize) -> Result<Netns, HarnessError> {
        let (bridge, nodes) = Netns::names(run_id, n);
        let mut net = Netns {
            nodes,
            bridge,
            firewall: match std::env::var("TRESTLE_JEPSEN_FIREWALL").as_deref() {
                Ok("routes") => Firewall::Routes,
                Ok("nft") => Firewall::Nft,
                _ if have_nft() => Firewall::Nft,
                _ => Firewall::Routes,
            },
            created: Vec::new(),
        };
        if let Err(e) = net.build() {
            net.teardown();
            return Err(e);
        }
        Ok(net)
    }

    fn build(&mut self) -> Result<(), HarnessError> {
        let br = self.bridge.clone();
        ip(&["netns", "add", &br])?;
        self.created.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (i, ns) in self.nodes.clone().iter().enumerate() {
            ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
            let port = format!("v{i}");
            let addr = format!("{}/24", node_ip(i));
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &br,
            ])?;
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            if self.firewall == Firewall::Nft {
                self.nft(i, "add table inet trestle_jepsen\n")?;
            }
        }
        Ok(())
    }

    fn nft(&self, i: usize, script: &str) -> Result<(), HarnessError> {
        use std::io::Write;
        let ns = &self.nodes[i];
        let command = format!("ip netns exec {ns} nft -f -");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| HarnessError::Command {
                command: command.clone(),
                message: e.to_string(),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| HarnessError::Command {
                    command: command.clone(),
                    message: e.to_string(),
                })?;
        }
        let out = child.wait_with_output().map_err(|e| HarnessError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Command {
                command,
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Replaces the partition: drops every packet between the two nodes of each pair in `cut`, and nothing else.
    /// Returns the number of drop rules listed back from the kernel afterwards.
    pub(crate) fn set_cuts(&self, cut: &BTreeSet<(usize, usize)>) -> Result<usize, HarnessError> {
        let n = self.nodes.len();
        for i in 0..n {
            let others: Vec<usize> = (0..n)
                .filter(|&j| cut.contains(&(i.min(j), i.max(j))) && i != j)
                .collect();
            match self.firewall {
                Firewall::Nft => {
                    let mut script = String::from(
                        "flush table inet trestle_jepsen\n\
                         table inet trestle_jepsen {\n  chain input { type filter hook input priority 0; }\n  \
                         chain output { type filter hook output priority 0; }\n}\n",
                    );
                    for j in &others {
                        let a = node_ip(*j);
                        script.push_str(&format!(
                            "add rule inet trestle_jepsen input ip saddr {a} drop\n\
                             add rule inet trestle_jepsen output ip daddr {a} drop\n"
                        ));
                    }
                    self.nft(i, &script)?;
                }
                Firewall::Routes => {
                    let ns = &self.nodes[i];
                    ip(&["-n", ns, "route", "flush", "type", "blackhole"])?;
                    for j in &others {
                        let a = format!("{}/32", node_ip(*j));
                        ip(&["-n", ns, "route", "add", "blackhole", &a])?;
                    }
                }
            }
        }
        self.count_rules()
    }

    /// Drop rules currently installed, as the kernel lists them.
    pub(crate) fn count_rules(&self) -> Result<usize, HarnessError> {
        let mut count = 0;
        for ns in &self.nodes {
            count += match self.firewall {
                Firewall::Nft => run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        ns,
                        "nft",
                        "list",
                        "table",
                        "inet",
                        "trestle_jepsen",
                    ],
                )?
                .lines()
                .filter(|l| l.trim_end().ends_with("drop"))
                .count(),
                Firewall::Routes => ip(&["-n", ns, "route", "show", "type", "blackhole"])?
                    .lines()
                    .filter(|l| l.starts_with("blackhole"))
                    .count(),
            };
        }
        Ok(count)
    }

    /// Deletes every namespace this run created (their veths and rules go with them). Never fails.
    pub(crate) fn teardown(&mut self) {
        while let Some(ns) = self.created.pop() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The throwaway namespace [`namespaces_available`] creates.
pub(crate) fn probe_name(run_id: &str) -> String {
    format!("jt{run_id}-probe")
}

/// Whether this process can create network namespaces (root, with `ip` available). Tries it for real with a
/// throwaway namespace named after `run_id`.
pub(crate) fn namespaces_available(run_id: &str) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    let probe = probe_name(run_id);
    match ip(&["netns", "add", &probe]) {
        Ok(_) => {
            let _ = ip(&["netns", "del", &probe]);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

enum Job {
    Bind(SocketAddr, oneshot::Sender<io::Result<std::net::TcpListener>>),
    Connect(
        SocketAddr,
        Duration,
        oneshot::Sender<io::Result<std::net::TcpStream>>,
    ),
}

/// A thread inside one network namespace that creates sockets there on request.
#[derive(Clone, Debug)]
pub(crate) struct NsWorker {
    jobs: mpsc::Sender<Job>,
}

impl NsWorker {
    /// Starts a thread that enters namespace `name` (`/run/netns/NAME`) and serves requests until dropped.
    pub(crate) fn spawn(name: &str) -> Result<NsWorker, HarnessError> {
        let path = format!("/run/netns/{name}");
        let file = File::open(&path).map_err(|e| HarnessError::Command {
            command: format!("open {path}"),
            message: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                if let Err(e) = setns(&file, CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                drop(file);
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Bind(addr, reply) => {
                            let _ = reply.send(std::net::TcpListener::bind(addr));
                        }
                        Job::Connect(addr, timeout, reply) => {
                            let _ = reply.send(std::net::TcpStream::connect_timeout(&addr, timeout));
                        }
                    }
                }
            })
            .map_err(|e| HarnessError::Command {
                command: "spawn a namespace thread".into(),
                message: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NsWorker { jobs: tx }),
            Ok(Err(message)) => Err(HarnessError::Command {
                command: format!("setns {path}"),
                message,
            }),
            Err(_) => Err(HarnessError::Command {
                command: format!("setns {path}"),
                message: "the namespace thread died".into(),
            }),
        }
    }

    /// A listener bound inside the namespace.
    pub(crate) async fn bind(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Bind(addr, tx))
            .map_err(|_| io::Error::other("namespace thread gone"))?;
        let listener = rx
            .await
            .map_err(|_| io::Error::other("namespace thread gone"))??;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A connection made from inside the namespace.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        self.connect_within(addr, Duration::from_secs(1)).await
    }

    /// Whether a TCP handshake from inside the namespace to `addr` completes within `timeout`.
    pub(crate) async fn can_connect(&self, addr: SocketAddr, timeout: Duration) -> bool {
        self.connect_within(addr, timeout).await.is_ok()
    }

    async fn connect_within(&self, addr: SocketAddr, timeout: Duration) -> io::Result<tokio::net::TcpStream> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Connect(addr, timeout, tx))
            .map_err(|_| io::Error::other("namespace thread gone"))?;
        let stream = rx
            .await
            .map_err(|_| io::Error::other("namespace thread gone"))??;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        tokio::net::TcpStream::from_std(stream)
    }
}

/// `addr:port` for node `i`.
pub(crate) fn node_addr(i: usize, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(node_ip(i), port))
}
