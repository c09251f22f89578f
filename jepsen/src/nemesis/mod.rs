//! The nemesis: carries out the schedule's faults on the cluster and records each start and stop in the history
//! as `nemesis` events, with the evidence that the fault took effect. Checking that evidence is the checker's
//! job (`crate::checker::nemesis`).
//!
//! Every start and stop is an `invoke` then an `info` event of process `nemesis` with `f` `start-<kind>` or
//! `stop-<kind>`. The `info` value is a map: `window` (the schedule entry), `group`, targets, and `effect`: `true`
//! when the harness saw the fault in place or biting (kernel drop rules listed back and a TCP handshake across a
//! cut link failing, or blackholes in every live proxy's fault table; a process that died of SIGKILL; a process the kernel shows stopped; proxy counters that
//! moved: chunks delayed, connections cut; a member list without the removed node; a damaged node that refused to
//! start, saying so, and was removed), `false` when it did not. The [`check_nemesis`] checker fails a run
//! when a requested nemesis never took effect.
//!
//! When the cluster hosts cache nodes (the cache workload), a kill or a pause takes each target's cache node with
//! it, and a partition also cuts the clients off from the cache nodes [`cut_off_from_clients`] names (recorded as
//! `cache_cut`; the window took effect only if those gates are cut too).

pub(crate) mod proxy;
pub(crate) mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::harness::cluster::Cluster;
use crate::history::recorder::Recorder;
use crate::history::value::Value;
use crate::history::{Event, EventType, Process};
use crate::nemesis::proxy::LinkFault;
use crate::nemesis::schedule::{Fault, Window};

/// The process name nemesis events carry.
pub const NEMESIS: &str = "nemesis";

/// What a node's log says when its volume is full (the operating system's message, through RocksDB).
const NO_SPACE: &str = "No space left on device";

/// The length of the log at `path` (0 when it cannot be read).
fn log_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The log at `path` from byte `from` on (empty when it cannot be read).
fn log_from(path: &std::path::Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = file.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

pub(crate) fn obj(pairs: Vec<(&str, Value)>) -> Value {
    Value::map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::Str(k.to_owned()), v))
            .collect(),
    )
}

fn nodes_value(nodes: &[usize]) -> Value {
    Value::List(nodes.iter().map(|&i| Value::Int(i as i64)).collect())
}

fn cut_value(cut: &BTreeSet<(usize, usize)>) -> Value {
    Value::List(
        cut.iter()
            .map(|&(a, b)| Value::List(vec![Value::Int(a as i64), Value::Int(b as i64)]))
            .collect(),
    )
}

/// The cache nodes a partition with these cut links cuts off from the clients. The clients stand with the
/// majority: a node that reaches fewer than a majority of the `n` nodes (itself included) is cut off. Where every
/// node reaches a majority (`partition-ring`, `partition-bridge`), the nodes with the most cut links are cut off
/// instead: every node but the bridge, every node of a ring.
pub(crate) fn cut_off_from_clients(n: usize, cut: &BTreeSet<(usize, usize)>) -> BTreeSet<usize> {
    let mut cuts = vec![0usize; n];
    for &(a, b) in cut {
        if a < n && b < n && a != b {
            cuts[a] += 1;
            cuts[b] += 1;
        }
    }
    let majority = n / 2 + 1;
    let minority: BTreeSet<usize> = (0..n).filter(|&i| n - cuts[i] < majority).collect();
    if !minority.is_empty() {
        return minority;
    }
    let most = cuts.iter().copied().max().unwrap_or(0);
    if most == 0 {
        return BTreeSet::new();
    }
    (0..n).filter(|&i| cuts[i] == most).collect()
}

/// Records a nemesis event: `invoke` before acting, `info` with the evidence after.
fn record(rec: &Recorder, kind: EventType, f: &str, value: Value) {
    rec.record(Event::new(kind, Process::Other(NEMESIS.into()), f, value));
}

/// What a started fault left to undo, and the counters at its start.
struct Active {
    window: usize,
    cut: BTreeSet<(usize, usize)>,
    counters: [u64; 5],
    needs_traffic_proof: bool,
    /// A member nemesis removed its node (so the stop must add it back).
    removed: bool,
    /// A clock strobe flipping offsets every second until the window stops.
    strobe: Option<tokio::task::JoinHandle<()>>,
}

/// Carries out windows one by one.
pub(crate) struct Nemesis {
    rec: Arc<Recorder>,
    /// What is going on, for the progress line.
    pub(crate) status: Arc<Mutex<String>>,
}

impl Nemesis {
    pub(crate) fn new(rec: Arc<Recorder>) -> Nemesis {
        Nemesis {
            rec,
            status: Arc::new(Mutex::new("none".into())),
        }
    }

    fn set_status(&self, s: String) {
        if let Ok(mut st) = self.status.lock() {
            *st = s;
        }
    }

    /// Runs every window at its time (relative to `t0`), then returns. Dropping the future mid-fault leaves the
    /// fault in place: [`Nemesis::heal_all`] undoes everything.
    pub(crate) async fn run(&self, cluster: &tokio::sync::Mutex<Cluster>, windows: &[Window], t0: Instant) {
        for (index, w) in windows.iter().enumerate() {
            tokio::time::sleep_until(t0 + w.start).await;
            let active = {
                let mut c = cluster.lock().await;
                self.start(&mut c, index, w).await
            };
            self.set_status(format!("{} (window {index})", w.fault.kind()));
            tokio::time::sleep_until(t0 + w.stop).await;
            let mut c = cluster.lock().await;
            self.stop(&mut c, w, active).await;
            self.set_status("none".into());
        }
    }

    async fn start(&self, c: &mut Cluster, window: usize, w: &Window) -> Active {
        let kind = w.fault.kind();
        let f = format!("start-{kind}");
        let mut fields = vec![
            ("window", Value::Int(window as i64)),
            ("group", Value::Str(w.group.clone())),
        ];
        record(
            &self.rec,
            EventType::Invoke,
            &f,
            obj(vec![
                ("window", Value::Int(window as i64)),
                ("group", Value::Str(w.group.clone())),
            ]),
        );
        let counters = c.counters.snapshot();
        let mut active = Active {
            window,
            cut: BTreeSet::new(),
            counters,
            needs_traffic_proof: false,
            removed: false,
            strobe: None,
        };
        let effect: Option<bool> = match &w.fault {
            Fault::Partition { cut, groups, .. } => {
                let (cut, groups) = match cut {
                    Some(cut) => (cut.clone(), groups.clone()),
                    None => match leader_within(c, Duration::from_secs(3)).await {
                        Some(l) => {
                            let others: Vec<usize> = (0..c.len()).filter(|&j| j != l).collect();
                            let cut = others.iter().map(|&j| (l.min(j), l.max(j))).collect();
                            (cut, format!("[n{l}] (leader) [others]"))
                        }
                        None => (BTreeSet::new(), "no leader found".into()),
                    },
                };
                fields.push(("groups", Value::Str(groups)));
                fields.push(("cut", cut_value(&cut)));
                if cut.is_empty() {
                    Some(false)
                } else {
                    match c.set_partition(cut.clone()) {
                        Ok(rules) => {
                            fields.push(("rules", Value::Int(rules as i64)));
                            active.cut = cut;
                            // Kernel mode: the drop rules as listed back. Loopback mode: the blackholes as every
                            // live proxy now sees them. Held chunks are reported at the stop; they cannot be the
                            // proof, since a cut link may carry no traffic (two followers of a bridging leader).
                            // In kernel mode a handshake across the first cut link must fail, and one across
                            // the first link left whole (the control) must succeed.
                            let probe = match active.cut.first() {
                                Some(&(a, b)) => c.probe_blocked(a, b).await,
                                None => None,
                            };
                            let whole = (0..c.len())
                                .flat_map(|a| (a + 1..c.len()).map(move |b| (a, b)))
                                .find(|link| !active.cut.contains(link));
                            let control = match (probe, whole) {
                                (Some(_), Some((a, b))) => {
                                    c.probe_blocked(a, b).await.map(|blocked| !blocked)
                                }
                                _ => None,
                            };
                            if let Some(blocked) = probe {
                                fields.push(("probe_blocked", Value::Bool(blocked)));
                            }
                            if let Some(open) = control {
                                fields.push(("control_open", Value::Bool(open)));
                            }
                            // The cache nodes cut off from the clients, as their gates report it.
                            let cache_cut = if c.hosts_cache() {
                                let off = cut_off_from_clients(c.len(), &active.cut);
                                let gates = c.set_cache_cut(&off);
                                let listed: Vec<usize> = off.iter().copied().collect();
                                fields.push(("cache_cut", nodes_value(&listed)));
                                !off.is_empty() && gates == off.len()
                            } else {
                                true
                            };
                            Some(
                                rules > 0
                                    && probe.unwrap_or_else(|| c.proxies_alive())
                                    && control.unwrap_or(true)
                                    && cache_cut,
                            )
                        }
                        Err(e) => {
                            fields.push(("error", Value::Str(e.to_string())));
                            Some(false)
                        }
                    }
                }
            }
            Fault::Kill(nodes) => {
                fields.push(("nodes", nodes_value(nodes)));
                let mut all = true;
                for &i in nodes {
                    all &= c.kill_node(i);
                }
                Some(all)
            }
            Fault::Pause(nodes) => {
                fields.push(("nodes", nodes_value(nodes)));
                let mut all = true;
                for &i in nodes {
                    all &= c.pause_node(i).await;
                }
                Some(all)
            }
            Fault::Delay { delay, jitter } => {
                fields.push(("delay_ms", Value::Int(delay.as_millis() as i64)));
                fields.push(("jitter_ms", Value::Int(jitter.as_millis() as i64)));
                let fault = LinkFault {
                    delay: *delay,
                    jitter: *jitter,
                    ..LinkFault::default()
                };
                c.set_link_faults(all_links(c.len(), fault));
                active.needs_traffic_proof = true;
                None
            }
            Fault::Member(x) => {
                let x = *x;
                fields.push(("node", Value::Int(x as i64)));
                let url = c.peer_url(x);
                let removed = remove_member(c, x, &url).await;
                if let Err(e) = &removed {
                    fields.push(("error", Value::Str(e.clone())));
                }
                let removed = removed.is_ok();
                if removed {
                    c.kill_node(x);
                    if let Err(e) = c.wipe_for_rejoin(x) {
                        fields.push(("error", Value::Str(e.to_string())));
                    }
                }
                active.removed = removed;
                Some(removed)
            }
            Fault::Damage { node: x, how } => {
                let x = *x;
                fields.push(("node", Value::Int(x as i64)));
                fields.push(("how", Value::Str(how.name().into())));
                c.kill_node(x);
                match c.damage_storage(x, *how) {
                    Ok(what) => fields.push(("damaged", Value::Str(what))),
                    Err(e) => fields.push(("error", Value::Str(e.to_string()))),
                }
                // Started on what is left, it must refuse: exit with an error that says the storage is damaged.
                let refused = match c.start_node(x) {
                    Ok(_) => match c.wait_exited(x, Duration::from_secs(30)).await {
                        Some(success) => !success && c.log_tail(x, 64 << 10).contains("is damaged"),
                        None => false,
                    },
                    Err(e) => {
                        fields.push(("error", Value::Str(e.to_string())));
                        false
                    }
                };
                fields.push(("refused", Value::Bool(refused)));
                // An operator replaces a damaged member. One that started with its damage stays: whether the
                // cluster survives that is what the checker then shows.
                let mut removed = false;
                if refused {
                    let url = c.peer_url(x);
                    match remove_member(c, x, &url).await {
                        Ok(()) => removed = true,
                        Err(e) => fields.push(("error", Value::Str(e))),
                    }
                    if removed && let Err(e) = c.wipe_for_rejoin(x) {
                        fields.push(("error", Value::Str(e.to_string())));
                    }
                }
                active.removed = removed;
                Some(refused && removed)
            }
            Fault::DiskFull(x) => {
                let x = *x;
                fields.push(("node", Value::Int(x as i64)));
                // The node must stop, saying its volume is full, at its next write (a follower appends what its
                // leader replicates, so every member writes while the workload runs); started again while the
                // volume is still full, it must refuse the same way.
                let says_full = |c: &Cluster, from: u64| log_from(c.log_path(x), from).contains(NO_SPACE);
                let mut stopped = false;
                let mut refused = false;
                // Only what the node logs from here on is evidence (an earlier window's message is not).
                let from = log_len(c.log_path(x));
                match c.fill_volume(x) {
                    Ok(bytes) => {
                        fields.push(("ballast_bytes", Value::Int(bytes as i64)));
                        stopped = matches!(c.wait_exited(x, Duration::from_secs(30)).await, Some(false))
                            && says_full(c, from);
                        if stopped {
                            let from = log_len(c.log_path(x));
                            refused = match c.start_node(x) {
                                Ok(_) => {
                                    matches!(c.wait_exited(x, Duration::from_secs(30)).await, Some(false))
                                        && says_full(c, from)
                                }
                                Err(e) => {
                                    fields.push(("error", Value::Str(e.to_string())));
                                    false
                                }
                            };
                        }
                    }
                    Err(e) => fields.push(("error", Value::Str(e.to_string()))),
                }
                fields.push(("stopped", Value::Bool(stopped)));
                fields.push(("refused_while_full", Value::Bool(refused)));
                Some(stopped && refused)
            }
            Fault::Clock {
                nodes,
                offset_s,
                strobe,
            } => {
                fields.push(("nodes", nodes_value(nodes)));
                fields.push(("offset_s", Value::Int(*offset_s)));
                fields.push(("strobe", Value::Bool(*strobe)));
                let mut all = true;
                for &i in nodes {
                    all &= c.set_clock(i, *offset_s);
                }
                if *strobe {
                    // Back and forth every second (libfaketime reads the file at most once a second).
                    let files: Vec<_> = nodes.iter().map(|&i| c.clock_files()[i].clone()).collect();
                    let offset = *offset_s;
                    active.strobe = Some(tokio::spawn(async move {
                        let mut sign = -1;
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            for file in &files {
                                let _ = std::fs::write(file, format!("{:+}\n", sign * offset));
                            }
                            sign = -sign;
                        }
                    }));
                }
                Some(all)
            }
            Fault::Loss(p) => {
                fields.push(("loss", Value::Number(format!("{p}"))));
                let fault = LinkFault {
                    loss: *p,
                    ..LinkFault::default()
                };
                c.set_link_faults(all_links(c.len(), fault));
                active.needs_traffic_proof = true;
                None
            }
        };
        if let Some(e) = effect {
            fields.push(("effect", Value::Bool(e)));
        }
        record(&self.rec, EventType::Info, &f, obj(fields));
        active
    }

    async fn stop(&self, c: &mut Cluster, w: &Window, active: Active) {
        let kind = w.fault.kind();
        let f = format!("stop-{kind}");
        let mut fields = vec![
            ("window", Value::Int(active.window as i64)),
            ("group", Value::Str(w.group.clone())),
        ];
        record(
            &self.rec,
            EventType::Invoke,
            &f,
            obj(vec![("window", Value::Int(active.window as i64))]),
        );
        match &w.fault {
            Fault::Partition { .. } => {
                if !active.cut.is_empty() {
                    c.set_cache_cut(&BTreeSet::new());
                    match c.set_partition(BTreeSet::new()) {
                        Ok(rules) => fields.push(("rules_left", Value::Int(rules as i64))),
                        Err(e) => fields.push(("error", Value::Str(e.to_string()))),
                    }
                }
            }
            Fault::Kill(nodes) => {
                let mut restarted = Vec::new();
                for &i in nodes {
                    match c.start_node(i) {
                        Ok(_) => restarted.push(i),
                        Err(e) => fields.push(("error", Value::Str(e.to_string()))),
                    }
                }
                fields.push(("restarted", nodes_value(&restarted)));
            }
            Fault::Pause(nodes) => {
                for &i in nodes {
                    c.resume_node(i);
                }
                fields.push(("resumed", nodes_value(nodes)));
            }
            Fault::Delay { .. } | Fault::Loss(_) => c.set_link_faults(BTreeMap::new()),
            Fault::Clock { nodes, .. } => {
                if let Some(strobe) = &active.strobe {
                    strobe.abort();
                }
                for &i in nodes {
                    c.set_clock(i, 0);
                }
                fields.push(("reset", nodes_value(nodes)));
            }
            Fault::DiskFull(x) => {
                let x = *x;
                fields.push(("freed", Value::Bool(c.free_volume(x))));
                if !c.is_running(x) {
                    match c.start_node(x) {
                        Ok(_) => {
                            let rejoined = follows_a_leader(c, x, Duration::from_secs(15)).await;
                            fields.push(("rejoined", Value::Bool(rejoined)));
                        }
                        Err(e) => fields.push(("error", Value::Str(e.to_string()))),
                    }
                }
            }
            Fault::Member(x) | Fault::Damage { node: x, .. } => {
                if active.removed {
                    let url = c.peer_url(*x);
                    match add_member(c, *x, &url).await {
                        Ok(()) => fields.push(("added", Value::Bool(true))),
                        Err(e) => fields.push(("error", Value::Str(e))),
                    }
                    match c.start_node(*x) {
                        Ok(_) => {
                            let rejoined = follows_a_leader(c, *x, Duration::from_secs(15)).await;
                            fields.push(("rejoined", Value::Bool(rejoined)));
                        }
                        Err(e) => fields.push(("error", Value::Str(e.to_string()))),
                    }
                }
            }
        }
        if matches!(w.fault, Fault::Partition { .. }) && !active.cut.is_empty() {
            let held = c.counters.snapshot()[2] - active.counters[2];
            fields.push(("held_chunks", Value::Int(held as i64)));
        }
        if active.needs_traffic_proof {
            let now = c.counters.snapshot();
            let [_, _, _, delayed, cut] = std::array::from_fn::<u64, 5, _>(|i| now[i] - active.counters[i]);
            let (name, moved) = match &w.fault {
                Fault::Delay { .. } => ("delayed_chunks", delayed),
                _ => ("cut_connections", cut),
            };
            fields.push((name, Value::Int(moved as i64)));
            fields.push(("effect", Value::Bool(moved > 0)));
        }
        record(&self.rec, EventType::Info, &f, obj(fields));
    }

    /// Undoes every fault: no partition, no link faults, every paused node resumed, every killed node restarted.
    pub(crate) async fn heal_all(&self, c: &mut Cluster) {
        record(&self.rec, EventType::Invoke, "heal", Value::Nil);
        let mut fields = Vec::new();
        if let Err(e) = c.set_partition(BTreeSet::new()) {
            fields.push(("error", Value::Str(e.to_string())));
        }
        c.set_cache_cut(&BTreeSet::new());
        c.set_link_faults(BTreeMap::new());
        for i in 0..c.len() {
            c.set_clock(i, 0);
        }
        let mut restarted = Vec::new();
        for i in 0..c.len() {
            c.free_volume(i);
            c.resume_node(i);
            if !c.is_running(i) && c.start_node(i).is_ok() {
                restarted.push(i);
            }
        }
        fields.push(("restarted", nodes_value(&restarted)));
        let [connections, unidentified, ..] = c.counters.snapshot();
        fields.push(("proxy_connections", Value::Int(connections as i64)));
        fields.push(("proxy_unidentified", Value::Int(unidentified as i64)));
        record(&self.rec, EventType::Info, "heal", obj(fields));
        self.set_status("healed".into());
    }
}

/// Retries `call` on the running nodes other than `x` for up to 15 s; the last error if it never succeeds.
async fn on_another_node<T, F>(c: &Cluster, x: usize, mut call: F) -> Result<T, String>
where
    F: for<'a> FnMut(&'a mut etcd_client::Client) -> crate::workload::BoxFuture<'a, Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("no other node is up");
    let mut attempt = 0usize;
    while start.elapsed() < Duration::from_secs(15) {
        let others: Vec<usize> = (0..c.len()).filter(|&j| j != x && c.is_up(j)).collect();
        if let Some(&j) = others.get(attempt % others.len().max(1)) {
            match c.client(j, Duration::from_secs(3)).await {
                Ok(mut client) => match tokio::time::timeout(Duration::from_secs(5), call(&mut client)).await
                {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => last = e,
                    Err(_) => last = "timed out".into(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

/// Whether node `x` reports a leader within `timeout` (a node added back has caught up enough to know one).
async fn follows_a_leader(c: &Cluster, x: usize, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let status = async {
            let mut client = c.client(x, Duration::from_millis(500)).await.ok()?;
            client.status().await.ok()
        };
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), status).await
            && s.leader() != 0
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// MemberRemove of node `x` (found by its peer URL), confirmed by a member list without it.
async fn remove_member(c: &Cluster, x: usize, url: &str) -> Result<(), String> {
    let url = url.to_owned();
    on_another_node(c, x, move |client| {
        let url = url.clone();
        Box::pin(async move {
            let url = url.as_str();
            let list = client.member_list().await.map_err(|e| e.to_string())?;
            let member = list
                .members()
                .iter()
                .find(|m| m.peer_urls().iter().any(|u| u == url));
            if let Some(m) = member {
                client.member_remove(m.id()).await.map_err(|e| e.to_string())?;
            }
            let list = client.member_list().await.map_err(|e| e.to_string())?;
            if list
                .members()
                .iter()
                .any(|m| m.peer_urls().iter().any(|u| u == url))
            {
                Err(format!("{url} is still a member"))
            } else {
                Ok(())
            }
        })
    })
    .await
}

/// MemberAdd of node `x`'s peer URL (a no-op when it is already a member).
async fn add_member(c: &Cluster, x: usize, url: &str) -> Result<(), String> {
    let url = url.to_owned();
    on_another_node(c, x, move |client| {
        let url = url.clone();
        Box::pin(async move {
            let url = url.as_str();
            let list = client.member_list().await.map_err(|e| e.to_string())?;
            if !list
                .members()
                .iter()
                .any(|m| m.peer_urls().iter().any(|u| u == url))
            {
                client.member_add([url], None).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    })
    .await
}

fn all_links(n: usize, fault: LinkFault) -> BTreeMap<(usize, usize), LinkFault> {
    let mut links = BTreeMap::new();
    for a in 0..n {
        for b in a + 1..n {
            links.insert((a, b), fault);
        }
    }
    links
}

async fn leader_within(c: &Cluster, timeout: Duration) -> Option<usize> {
    let start = Instant::now();
    loop {
        if let Some(l) = c.leader().await {
            return Some(l);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(pairs: &[(usize, usize)]) -> BTreeSet<(usize, usize)> {
        pairs.iter().copied().collect()
    }

    fn nodes(list: &[usize]) -> BTreeSet<usize> {
        list.iter().copied().collect()
    }

    #[test]
    fn the_minority_side_of_a_partition_is_cut_off_from_the_cache_clients() {
        // partition-one / partition-leader on 3 nodes: node 1 alone.
        assert_eq!(cut_off_from_clients(3, &cut(&[(0, 1), (1, 2)])), nodes(&[1]));
        // partition-halves on 5 nodes: [0 3] against [1 2 4].
        let halves = cut(&[(0, 1), (0, 2), (0, 4), (1, 3), (2, 3), (3, 4)]);
        assert_eq!(cut_off_from_clients(5, &halves), nodes(&[0, 3]));
        // No cut, nobody.
        assert!(cut_off_from_clients(3, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn where_every_node_reaches_a_majority_the_most_cut_nodes_are_cut_off() {
        // partition-bridge on 3 nodes: [0] 1 [2], node 1 reaching both.
        assert_eq!(cut_off_from_clients(3, &cut(&[(0, 2)])), nodes(&[0, 2]));
        // partition-bridge on 5 nodes: [0 1] 2 [3 4].
        let bridge = cut(&[(0, 3), (0, 4), (1, 3), (1, 4)]);
        assert_eq!(cut_off_from_clients(5, &bridge), nodes(&[0, 1, 3, 4]));
        // partition-ring on 5 nodes: each node sees itself and its two neighbours.
        let ring = cut(&[(0, 2), (0, 3), (1, 3), (1, 4), (2, 4)]);
        assert_eq!(cut_off_from_clients(5, &ring), nodes(&[0, 1, 2, 3, 4]));
    }
}
