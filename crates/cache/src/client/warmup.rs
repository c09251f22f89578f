//! Warm-up of a node that joins a zone.
//!
//! When membership adds a node to a zone, the client compares the zone's old and new rings
//! ([`ShardMap::plan_to`](trestle_shard_router::ShardMap::plan_to)): the ranges the new node takes over, each
//! with its previous owner. Two things then keep the zone's hit ratio up (when a node leaves, the peers that
//! take over its ranges are warmed the same way, from another zone, as the previous owner is gone):
//!
//! - **Reads route through the previous owner** while the warm-up runs: a miss on the new node for a key in a
//!   moved range is asked of the range's previous owner, and a value found there is copied to the new node (the
//!   shape of mcrouter's WarmUpRoute).
//! - **A background copy** lists each previous owner's keys (`lru_crawler metadump all`), keeps those whose ring
//!   position lies in a moved range, reads them (`mg`, with flags and TTL) and adds them to the new node with
//!   `ms ... ME` (add: a value written to the new node since the change, or a delete's tombstone, is never
//!   overwritten). If a previous owner cannot be listed, the same ranges are copied from another zone's nodes.
//!   The warm-ups of one membership change share one task, which lists each source once.
//!
//! Progress is a [`WarmUpProgress`] the caller polls with [`Client::warm_ups`](super::Client::warm_ups).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;
use trestle_shard_router::{RangeMove, key_position};

use super::config::WarmUpConfig;
use super::node::NodeClient;
use super::{TOMBSTONE_FLAGS, wire_key};
use crate::protocol::{Command, MetaStatus};

/// Where a warm-up stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarmUpState {
    /// Copying.
    Running,
    /// Finished: every moved range was dealt with. What could not be (a source that no zone could stand in
    /// for, a batch that failed) is in [`WarmUpProgress::errors`].
    Done,
    /// Stopped early: the node left the zone again, or the client was dropped.
    Cancelled,
}

/// The progress of one node's warm-up. A snapshot: poll [`Client::warm_ups`](super::Client::warm_ups) again for
/// news.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WarmUpProgress {
    /// The zone the node joined.
    pub zone: String,
    /// The node being warmed.
    pub node: String,
    /// Where it stands.
    pub state: WarmUpState,
    /// The share of the zone's key space the node took over (0 to 1).
    pub moved_fraction: f64,
    /// The nodes its ranges came from.
    pub sources: Vec<String>,
    /// Keys listed on the sources.
    pub keys_listed: u64,
    /// Of those, keys in the moved ranges: the ones to copy.
    pub keys_to_copy: u64,
    /// Keys copied to the node.
    pub keys_copied: u64,
    /// Keys the node already held (written there since it joined), left as they were.
    pub keys_present: u64,
    /// Keys that were gone from their source (expired, deleted or evicted) by the time they were read.
    pub keys_gone: u64,
    /// Failures (at most the first 16), such as a source that could not be listed.
    pub errors: Vec<String>,
    /// Time since the warm-up started, or its whole duration once finished.
    pub elapsed: Duration,
}

impl WarmUpProgress {
    /// The share of the keys to copy that has been dealt with (copied, present or gone), 0 to 1; 0 while the
    /// sources are still being listed.
    pub fn fraction_done(&self) -> f64 {
        if self.state == WarmUpState::Done {
            return 1.0;
        }
        if self.keys_to_copy == 0 {
            return 0.0;
        }
        (self.keys_copied + self.keys_present + self.keys_gone) as f64 / self.keys_to_copy as f64
    }
}

/// One warm-up job, shared by the topology (for read routing) and the task that copies.
pub(crate) struct WarmUp {
    pub(crate) zone: String,
    pub(crate) node: String,
    /// The moves into the node, in ring order.
    moves: Vec<RangeMove>,
    running: AtomicBool,
    started: Instant,
    finished: Mutex<Option<Instant>>,
    progress: Mutex<WarmUpProgress>,
}

impl WarmUp {
    pub(crate) fn new(zone: &str, node: &str, moves: Vec<RangeMove>) -> Self {
        let moved: u128 = moves.iter().map(RangeMove::width).sum();
        let mut sources: Vec<String> = moves.iter().map(|m| m.from.to_string()).collect();
        sources.sort();
        sources.dedup();
        Self {
            zone: zone.to_owned(),
            node: node.to_owned(),
            running: AtomicBool::new(true),
            started: Instant::now(),
            finished: Mutex::new(None),
            progress: Mutex::new(WarmUpProgress {
                zone: zone.to_owned(),
                node: node.to_owned(),
                state: WarmUpState::Running,
                moved_fraction: moved as f64 / 2f64.powi(64),
                sources,
                keys_listed: 0,
                keys_to_copy: 0,
                keys_copied: 0,
                keys_present: 0,
                keys_gone: 0,
                errors: Vec::new(),
                elapsed: Duration::ZERO,
            }),
            moves,
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// The previous owner of ring position `position`, if it moved to this node.
    pub(crate) fn previous_owner(&self, position: u64) -> Option<&str> {
        let i = self.moves.partition_point(|m| *m.range.end() < position);
        self.moves
            .get(i)
            .filter(|m| m.range.contains(&position))
            .map(|m| m.from.as_str())
    }

    pub(crate) fn snapshot(&self) -> WarmUpProgress {
        let mut progress = self.progress.lock().clone();
        let end = (*self.finished.lock()).unwrap_or_else(Instant::now);
        progress.elapsed = end.saturating_duration_since(self.started);
        progress
    }

    fn update(&self, f: impl FnOnce(&mut WarmUpProgress)) {
        f(&mut self.progress.lock());
    }

    fn error(&self, message: String) {
        self.update(|p| {
            if p.errors.len() < 16 {
                p.errors.push(message);
            }
        });
    }

    pub(crate) fn finish(&self, state: WarmUpState) {
        *self.finished.lock() = Some(Instant::now());
        self.update(|p| p.state = state);
        self.running.store(false, Ordering::Release);
    }
}

/// What the copying task needs from the topology it started with.
pub(crate) struct WarmUpPlan {
    pub(crate) target: Arc<NodeClient>,
    /// The previous owners, by id (`None`: no longer in the zone).
    pub(crate) sources: HashMap<String, Option<Arc<NodeClient>>>,
    /// Every node of the other zones, to copy from when a previous owner cannot be listed.
    pub(crate) fallbacks: Vec<Arc<NodeClient>>,
}

/// Copies the moved ranges into the nodes of `jobs` (one membership change), listing each source once for all
/// the jobs that take ranges from it; `alive` says whether a job should go on (its node is still in its zone and
/// the client still exists).
pub(crate) async fn run_all(
    jobs: Vec<(Arc<WarmUp>, WarmUpPlan)>,
    config: WarmUpConfig,
    alive: impl Fn(&WarmUp) -> bool,
) {
    let mut cancelled = vec![false; jobs.len()];
    let mut unlisted: Vec<Vec<String>> = vec![Vec::new(); jobs.len()];
    let mut sources: Vec<(&String, &Option<Arc<NodeClient>>)> =
        jobs.iter().flat_map(|(_, plan)| plan.sources.iter()).collect();
    sources.sort_by(|a, b| a.0.cmp(b.0));
    sources.dedup_by(|a, b| a.0 == b.0);
    for (id, source) in sources {
        let users: Vec<usize> = (0..jobs.len())
            .filter(|&u| jobs[u].1.sources.contains_key(id))
            .collect();
        let listed = match source {
            None => Err(format!("{id} left the zone")),
            Some(source) => source
                .list_keys(config.list_timeout)
                .await
                .map_err(|error| format!("listing {id}: {error}")),
        };
        let keys = match listed {
            Ok(keys) => keys,
            Err(message) => {
                for &u in &users {
                    jobs[u].0.error(message.clone());
                    unlisted[u].push(id.clone());
                }
                continue;
            }
        };
        let Some(source) = source else { continue };
        for &u in &users {
            let (job, plan) = &jobs[u];
            if cancelled[u] {
                continue;
            }
            let keys = select(job, &keys, |owner| owner == id);
            cancelled[u] = !copy(job, source, &plan.target, keys, &config, &|| alive(job)).await;
        }
    }
    // Every zone holds a full copy: the ranges of sources that could not be listed come from another zone's
    // nodes, each listed once.
    let mut fallbacks: Vec<&Arc<NodeClient>> = (0..jobs.len())
        .filter(|&u| !unlisted[u].is_empty() && !cancelled[u])
        .flat_map(|u| jobs[u].1.fallbacks.iter())
        .collect();
    fallbacks.sort_by(|a, b| a.id.cmp(&b.id));
    fallbacks.dedup_by(|a, b| a.id == b.id);
    for fallback in fallbacks {
        let users: Vec<usize> = (0..jobs.len())
            .filter(|&u| !unlisted[u].is_empty() && !cancelled[u])
            .filter(|&u| jobs[u].1.fallbacks.iter().any(|f| f.id == fallback.id))
            .collect();
        let keys = match fallback.list_keys(config.list_timeout).await {
            Ok(keys) => keys,
            Err(error) => {
                for &u in &users {
                    jobs[u].0.error(format!("listing {}: {error}", fallback.id));
                }
                continue;
            }
        };
        for &u in &users {
            let (job, plan) = &jobs[u];
            let keys = select(job, &keys, |owner| unlisted[u].iter().any(|x| x == owner));
            cancelled[u] = !copy(job, fallback, &plan.target, keys, &config, &|| alive(job)).await;
        }
    }
    for (u, (job, _)) in jobs.iter().enumerate() {
        job.finish(if cancelled[u] {
            WarmUpState::Cancelled
        } else {
            WarmUpState::Done
        });
    }
}

/// The listed keys that moved to the job's node from a previous owner `wanted` accepts.
fn select(job: &WarmUp, keys: &[Vec<u8>], wanted: impl Fn(&str) -> bool) -> Vec<Vec<u8>> {
    let selected: Vec<Vec<u8>> = keys
        .iter()
        .filter(|k| job.previous_owner(key_position(k)).is_some_and(&wanted))
        .cloned()
        .collect();
    job.update(|p| {
        p.keys_listed += keys.len() as u64;
        p.keys_to_copy += selected.len() as u64;
    });
    selected
}

/// Copies `keys` from `source` to `target` in batches; false if told to stop.
async fn copy(
    job: &WarmUp,
    source: &NodeClient,
    target: &NodeClient,
    keys: Vec<Vec<u8>>,
    config: &WarmUpConfig,
    alive: &impl Fn() -> bool,
) -> bool {
    for batch in keys.chunks(config.batch) {
        if !alive() {
            return false;
        }
        let reads: Vec<Command> = batch
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let (wire, base) = wire_key(key);
                let flags = base
                    .with(b'v')
                    .with(b'f')
                    .with(b't')
                    .with(b'q')
                    .with_token(b'O', i);
                Command::MetaGet { key: wire, flags }
            })
            .collect();
        let replies = match source.exchange(&reads).await {
            Ok(replies) => replies,
            Err(error) => {
                job.error(format!("reading from {}: {error}", source.id));
                continue;
            }
        };
        let mut writes = Vec::new();
        let mut give_back = Vec::new();
        for reply in replies {
            let Some(Ok(i)) = reply.flags.number::<usize>(b'O') else {
                continue;
            };
            let Some(key) = batch.get(i) else { continue };
            let (wire, base) = wire_key(key);
            if reply.won() {
                // Reading a stale item handed this job the right to refresh it: give it back.
                give_back.push(Command::MetaDelete {
                    key: wire.clone(),
                    flags: base.clone().with(b'I').with(b'q'),
                });
            }
            let ttl = reply.flags.number::<i64>(b't').and_then(Result::ok).unwrap_or(-1);
            let flags = reply.flags.number::<u32>(b'f').and_then(Result::ok).unwrap_or(0);
            let value = reply.value.clone().unwrap_or_default();
            let placeholder = reply.lost() && value.is_empty() && flags != TOMBSTONE_FLAGS;
            if reply.status != MetaStatus::Value || reply.stale() || placeholder || ttl == 0 {
                continue;
            }
            let mut set_flags = base.with_token(b'F', flags).with_token(b'M', 'E').with(b'q');
            if ttl > 0 {
                set_flags = set_flags.with_token(b'T', ttl);
            }
            writes.push(Command::MetaSet {
                key: wire,
                data: value,
                flags: set_flags.with_token(b'O', i),
            });
        }
        if !give_back.is_empty() {
            let _ = source.exchange(&give_back).await;
        }
        let found = writes.len() as u64;
        let gone = batch.len() as u64 - found;
        let (copied, present) = if writes.is_empty() {
            (0, 0)
        } else {
            match target.exchange(&writes).await {
                Ok(replies) => {
                    // Quiet mode: only the refusals answer.
                    let present = replies
                        .iter()
                        .filter(|r| r.status == MetaStatus::NotStored)
                        .count() as u64;
                    (found - present.min(found), present)
                }
                Err(error) => {
                    job.error(format!("writing to {}: {error}", target.id));
                    (0, 0)
                }
            }
        };
        job.update(|p| {
            p.keys_copied += copied;
            p.keys_present += present;
            p.keys_gone += gone;
        });
    }
    true
}

/// A value read from a previous owner, copied to the joining node in the background (add: never overwrites).
pub(crate) fn copy_one(target: Arc<NodeClient>, key: &[u8], value: Bytes, flags: u32, ttl: i64) {
    let (wire, base) = wire_key(key);
    let mut set_flags = base.with_token(b'F', flags).with_token(b'M', 'E').with(b'q');
    if ttl > 0 {
        set_flags = set_flags.with_token(b'T', ttl);
    } else if ttl == 0 {
        return;
    }
    let command = Command::MetaSet {
        key: wire,
        data: value,
        flags: set_flags,
    };
    tokio::spawn(async move {
        let _ = target.exchange(&[command]).await;
    });
}
