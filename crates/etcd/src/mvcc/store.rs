//! The MVCC key space: every version of every key since the last compaction, leases and their keys, and the
//! event history watchers replay. A pure state machine: commands in, responses out, no I/O and no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::error::MvccError;
use super::types::*;

/// etcd's default cap on the operations in one transaction (`--max-txn-ops`).
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One version of a key: a value, or the tombstone a delete leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Version {
    Live(KeyValue),
    Tombstone(Revision),
}

impl Version {
    fn revision(&self) -> Revision {
        match self {
            Version::Live(kv) => kv.mod_revision,
            Version::Tombstone(rev) => *rev,
        }
    }
}

/// The key space of one coordination store. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredMvcc")]
pub struct MvccStore {
    revision: Revision,
    compact_revision: Revision,
    /// Every key's versions, oldest first. A key whose history compaction emptied is removed.
    #[serde(with = "vec_map")]
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    /// The events of every revision after `compact_revision`, for watchers that start in the past.
    #[serde(with = "vec_map")]
    events: BTreeMap<Revision, Vec<Event>>,
    #[serde(with = "vec_map")]
    leases: BTreeMap<LeaseId, LeaseEntry>,
    max_txn_ops: usize,
    /// [`MvccStore::approximate_size`], kept up to date by every change (the quota check reads it on every
    /// write); derived, so not stored, and counted again when a store is decoded.
    #[serde(skip_serializing)]
    size: usize,
}

/// A store as encoded: [`MvccStore`] without its derived size (the same fields, in the same order).
#[derive(Deserialize)]
struct StoredMvcc {
    revision: Revision,
    compact_revision: Revision,
    #[serde(with = "vec_map")]
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    #[serde(with = "vec_map")]
    events: BTreeMap<Revision, Vec<Event>>,
    #[serde(with = "vec_map")]
    leases: BTreeMap<LeaseId, LeaseEntry>,
    max_txn_ops: usize,
}

impl From<StoredMvcc> for MvccStore {
    fn from(stored: StoredMvcc) -> Self {
        let size = stored
            .keys
            .iter()
            .map(|(key, history)| key_size(key, history))
            .sum();
        Self {
            revision: stored.revision,
            compact_revision: stored.compact_revision,
            keys: stored.keys,
            events: stored.events,
            leases: stored.leases,
            max_txn_ops: stored.max_txn_ops,
            size,
        }
    }
}

/// What one version adds to [`MvccStore::approximate_size`].
fn version_size(version: &Version) -> usize {
    match version {
        Version::Live(kv) => put_size(&kv.key, &kv.value),
        Version::Tombstone(_) => 16,
    }
}

/// What a key and its history count for in [`MvccStore::approximate_size`].
fn key_size(key: &[u8], history: &[Version]) -> usize {
    key.len() + history.iter().map(version_size).sum::<usize>()
}

/// What a put of `key` and `value` adds to [`MvccStore::approximate_size`] (besides the key, for a new one).
pub(crate) fn put_size(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + 48
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseEntry {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
}

impl Default for MvccStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TXN_OPS)
    }
}

/// Where a range ends.
enum RangeEnd<'a> {
    /// Exactly one key.
    Single,
    /// Every key from the start on (`range_end` is `[0]`).
    Unbounded,
    /// Up to this key, exclusive.
    Before(&'a [u8]),
}

fn range_end(range_end: &[u8]) -> RangeEnd<'_> {
    match range_end {
        [] => RangeEnd::Single,
        [0] => RangeEnd::Unbounded,
        end => RangeEnd::Before(end),
    }
}

/// Whether `key` falls in the range `[start, end)` in etcd's conventions.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match range_end(end) {
        RangeEnd::Single => key == start,
        RangeEnd::Unbounded => key >= start,
        RangeEnd::Before(end) => key >= start && key < end,
    }
}

/// The results and changes of one write command, gathered while it runs.
struct WriteTxn {
    /// The revision the writes get if anything changes.
    revision: Revision,
    events: Vec<Event>,
}

impl MvccStore {
    /// An empty store at revision 1 (etcd's first revision), with the given transaction size limit.
    pub fn new(max_txn_ops: usize) -> Self {
        Self {
            revision: 1,
            compact_revision: 0,
            keys: BTreeMap::new(),
            events: BTreeMap::new(),
            leases: BTreeMap::new(),
            max_txn_ops,
            size: 0,
        }
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The revision of the last compaction (0 if none).
    pub fn compact_revision(&self) -> Revision {
        self.compact_revision
    }

    /// How many distinct keys exist now.
    pub fn live_key_count(&self) -> usize {
        self.keys
            .values()
            .filter(|h| matches!(h.last(), Some(Version::Live(_))))
            .count()
    }

    /// A rough size of the retained data in bytes (keys, values and history), reported as the db size.
    pub fn approximate_size(&self) -> usize {
        self.size
    }

    // ----- reads -----

    /// Reads a key or a range (etcd `Range`).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        self.range_at(req, self.revision)
    }

    fn check_read_revision(&self, requested: Revision) -> Result<Revision, MvccError> {
        if requested <= 0 {
            return Ok(self.revision);
        }
        if requested > self.revision {
            return Err(MvccError::FutureRevision {
                requested,
                current: self.revision,
            });
        }
        if requested < self.compact_revision {
            return Err(MvccError::Compacted {
                requested,
                compact_revision: self.compact_revision,
            });
        }
        Ok(requested)
    }

    /// `current` is the revision a read with `revision: 0` sees: inside a write transaction that already
    /// changed something it is the transaction's own, not yet published, revision.
    fn range_at(&self, req: &RangeRequest, current: Revision) -> Result<RangeResponse, MvccError> {
        let at = if req.revision <= 0 {
            current
        } else {
            self.check_read_revision(req.revision)?
        };
        let mut kvs: Vec<KeyValue> = self
            .versions_in(&req.key, &req.range_end)
            .filter_map(|(_, history)| live_at(history, at))
            .filter(|kv| {
                (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            })
            .cloned()
            .collect();
        let count = kvs.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        sort_kvs(&mut kvs, req.sort_order, req.sort_target);
        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }

    fn versions_in<'a>(
        &'a self,
        key: &'a [u8],
        end: &'a [u8],
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Vec<Version>)> + 'a> {
        match range_end(end) {
            RangeEnd::Single => Box::new(self.keys.get_key_value(key).into_iter()),
            RangeEnd::Unbounded => Box::new(
                self.keys
                    .range::<[u8], _>((Bound::Included(key), Bound::Unbounded)),
            ),
            RangeEnd::Before(end) if end <= key => Box::new(std::iter::empty()),
            RangeEnd::Before(end) => Box::new(
                self.keys
                    .range::<[u8], _>((Bound::Included(key), Bound::Excluded(end))),
            ),
        }
    }

    fn live(&self, key: &[u8]) -> Option<&KeyValue> {
        match self.keys.get(key)?.last()? {
            Version::Live(kv) => Some(kv),
            Version::Tombstone(_) => None,
        }
    }

    /// Every event of revisions `from..=self.revision()`, oldest first, with its revision.
    pub fn events_since(&self, from: Revision) -> Result<Vec<(Revision, &Event)>, MvccError> {
        if from > 0 && from < self.compact_revision {
            return Err(MvccError::Compacted {
                requested: from,
                compact_revision: self.compact_revision,
            });
        }
        Ok(self
            .events
            .range(from.max(1)..)
            .flat_map(|(rev, evs)| evs.iter().map(move |e| (*rev, e)))
            .collect())
    }

    /// The events the given revision produced (empty if it produced none or was compacted).
    pub fn events_at(&self, revision: Revision) -> &[Event] {
        self.events.get(&revision).map(Vec::as_slice).unwrap_or(&[])
    }

    // ----- writes -----

    /// Writes one key (etcd `Put`).
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        self.validate_put(req, &BTreeSet::new())?;
        let mut txn = self.begin();
        let resp = self.do_put(&mut txn, req);
        self.commit(txn);
        Ok(resp)
    }

    /// Deletes a key or a range (etcd `DeleteRange`).
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let mut txn = self.begin();
        let resp = self.do_delete(&mut txn, req);
        self.commit(txn);
        Ok(resp)
    }

    /// Runs a transaction (etcd `Txn`). Compares see the store as it was before the transaction; reads inside
    /// it see its own earlier writes; all its writes share one revision.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.validate_txn_shape(req)?;
        let path = self.txn_path(req);
        self.validate_txn_path(req, &path)?;
        let mut txn = self.begin();
        let resp = self.do_txn(&mut txn, req, &mut path.iter());
        self.commit(txn);
        Ok(resp)
    }

    /// Whether a transaction only reads (every op of both branches, nested ones included, is a range).
    pub fn txn_is_read_only(req: &TxnRequest) -> bool {
        [&req.success, &req.failure]
            .into_iter()
            .flatten()
            .all(|op| match op {
                RequestOp::Range(_) => true,
                RequestOp::Txn(inner) => Self::txn_is_read_only(inner),
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
            })
    }

    /// Runs a read-only transaction without changing the store (see [`Self::txn_is_read_only`]); a transaction
    /// that writes is refused with the same checks [`Self::txn`] makes, and nothing happens.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.validate_txn_shape(req)?;
        let path = self.txn_path(req);
        self.validate_txn_path(req, &path)?;
        Ok(self.eval_read_txn(req, &mut path.iter()))
    }

    fn eval_read_txn(&self, req: &TxnRequest, path: &mut std::slice::Iter<'_, bool>) -> TxnResponse {
        let succeeded = path.next().copied().unwrap_or(false);
        let branch = if succeeded { &req.success } else { &req.failure };
        let responses = branch
            .iter()
            .filter_map(|op| match op {
                RequestOp::Range(r) => Some(ResponseOp::Range(
                    self.range_at(r, self.revision).unwrap_or_default(),
                )),
                RequestOp::Txn(inner) => Some(ResponseOp::Txn(self.eval_read_txn(inner, path))),
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => None,
            })
            .collect();
        TxnResponse { succeeded, responses }
    }

    /// Forgets every version superseded at or before `revision` (etcd `Compact`).
    pub fn compact(&mut self, revision: Revision) -> Result<(), MvccError> {
        if revision > self.revision {
            return Err(MvccError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision <= self.compact_revision {
            return Err(MvccError::Compacted {
                requested: revision,
                compact_revision: self.compact_revision,
            });
        }
        let mut freed = 0;
        self.keys.retain(|key, history| {
            // Keep the newest version at or before `revision` (the value a read at `revision` sees) unless it is
            // a tombstone, and everything after it.
            let visible = history.partition_point(|v| v.revision() <= revision);
            if visible > 0 {
                let mut drop = visible - 1;
                if let Version::Tombstone(_) = history[drop] {
                    drop += 1;
                }
                freed += history.drain(..drop).map(|v| version_size(&v)).sum::<usize>();
            }
            if history.is_empty() {
                freed += key.len();
            }
            !history.is_empty()
        });
        self.size -= freed;
        // Events of `revision` itself stay: a watch may start at the compact revision, as in etcd.
        self.events = self.events.split_off(&revision);
        self.compact_revision = revision;
        Ok(())
    }

    // ----- hashes -----

    /// A checksum of the key space as of `revision` (0: the current one), and the compact revision it covers
    /// from (etcd `HashKV`). Members that applied the same commands give the same hash at the same revision,
    /// whatever else they did since: every retained version of every key up to `revision` (values, tombstones and
    /// their metadata), in key order, and the compact revision. CRC-32 (IEEE); not the same number etcd computes
    /// for the same data, which nothing compares.
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision), MvccError> {
        let revision = if revision == 0 { self.revision } else { revision };
        if revision > self.revision {
            return Err(MvccError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision < self.compact_revision {
            return Err(MvccError::Compacted {
                requested: revision,
                compact_revision: self.compact_revision,
            });
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.compact_revision.to_be_bytes());
        for (key, history) in &self.keys {
            let mut versions = history.iter().take_while(|v| v.revision() <= revision).peekable();
            if versions.peek().is_none() {
                continue;
            }
            hasher.update(&(key.len() as u64).to_be_bytes());
            hasher.update(key);
            for version in versions {
                match version {
                    Version::Live(kv) => {
                        hasher.update(&[1]);
                        for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                            hasher.update(&n.to_be_bytes());
                        }
                        hasher.update(&(kv.value.len() as u64).to_be_bytes());
                        hasher.update(&kv.value);
                    }
                    Version::Tombstone(at) => {
                        hasher.update(&[0]);
                        hasher.update(&at.to_be_bytes());
                    }
                }
            }
        }
        Ok((hasher.finalize(), self.compact_revision))
    }

    /// A checksum of the whole store: [`MvccStore::hash_kv`] at the current revision, with the leases and their
    /// TTLs (etcd `Hash`).
    pub fn hash(&self) -> u32 {
        let (kv, _) = self.hash_kv(self.revision).unwrap_or((0, self.compact_revision));
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&kv.to_be_bytes());
        hasher.update(&self.revision.to_be_bytes());
        for (id, lease) in &self.leases {
            hasher.update(&id.to_be_bytes());
            hasher.update(&lease.ttl.to_be_bytes());
        }
        hasher.finalize()
    }

    // ----- leases -----

    /// Grants a lease with a chosen, non-zero id (the proposer picks ids, so every replica agrees).
    pub fn lease_grant(&mut self, id: LeaseId, ttl: i64) -> Result<Lease, MvccError> {
        if id == 0 {
            return Err(MvccError::LeaseNotFound { id });
        }
        if ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge {
                ttl,
                max: MAX_LEASE_TTL,
            });
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists { id });
        }
        self.leases.insert(
            id,
            LeaseEntry {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(Lease { id, ttl })
    }

    /// Revokes a lease and deletes every key attached to it, in one revision.
    pub fn lease_revoke(&mut self, id: LeaseId) -> Result<(), MvccError> {
        let entry = self.leases.remove(&id).ok_or(MvccError::LeaseNotFound { id })?;
        let mut txn = self.begin();
        for key in entry.keys {
            self.do_delete(
                &mut txn,
                &DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                    prev_kv: false,
                },
            );
        }
        self.commit(txn);
        Ok(())
    }

    /// The lease with this id, if it exists.
    pub fn lease(&self, id: LeaseId) -> Option<Lease> {
        self.leases.get(&id).map(|e| Lease { id, ttl: e.ttl })
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, id: LeaseId) -> Vec<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|e| e.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every live lease.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|(id, e)| Lease { id: *id, ttl: e.ttl })
            .collect()
    }

    // ----- internals -----

    fn begin(&self) -> WriteTxn {
        WriteTxn {
            revision: self.revision + 1,
            events: Vec::new(),
        }
    }

    fn commit(&mut self, txn: WriteTxn) {
        if !txn.events.is_empty() {
            self.revision = txn.revision;
            self.events.insert(txn.revision, txn.events);
        }
    }

    /// The revision a read inside `txn` sees as "now".
    fn txn_read_revision(&self, txn: &WriteTxn) -> Revision {
        if txn.events.is_empty() {
            self.revision
        } else {
            txn.revision
        }
    }

    fn validate_put(&self, req: &PutRequest, deleted_in_txn: &BTreeSet<Vec<u8>>) -> Result<(), MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if req.ignore_value && !req.value.is_empty() {
            return Err(MvccError::ValueProvided);
        }
        if req.ignore_lease && req.lease != 0 {
            return Err(MvccError::LeaseProvided);
        }
        if (req.ignore_value || req.ignore_lease)
            && (self.live(&req.key).is_none() || deleted_in_txn.contains(&req.key))
        {
            return Err(MvccError::KeyNotFound);
        }
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(MvccError::LeaseNotFound { id: req.lease });
        }
        Ok(())
    }

    fn do_put(&mut self, txn: &mut WriteTxn, req: &PutRequest) -> PutResponse {
        let revision = txn.revision;
        let next = |prev: Option<&KeyValue>| KeyValue {
            key: req.key.clone(),
            create_revision: prev.map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.map_or(1, |p| p.version + 1),
            value: match (prev, req.ignore_value) {
                (Some(prev), true) => prev.value.clone(),
                _ => req.value.clone(),
            },
            lease: match (prev, req.ignore_lease) {
                (Some(prev), true) => prev.lease,
                _ => req.lease,
            },
        };
        // One search of the key index, and no copy of the key for one that exists: puts are the hot path of
        // the state machine (perf showed the second search and the key copy in every put).
        let (kv, prev) = match self.keys.get_mut(req.key.as_slice()) {
            Some(history) => {
                let prev = match history.last() {
                    Some(Version::Live(kv)) => Some(kv.clone()),
                    _ => None,
                };
                let kv = next(prev.as_ref());
                self.size += put_size(&kv.key, &kv.value);
                history.push(Version::Live(kv.clone()));
                (kv, prev)
            }
            None => {
                let kv = next(None);
                self.size += req.key.len() + put_size(&kv.key, &kv.value);
                self.keys.insert(req.key.clone(), vec![Version::Live(kv.clone())]);
                (kv, None)
            }
        };
        let lease = kv.lease;
        if let Some(old_lease) = prev.as_ref().map(|p| p.lease).filter(|l| *l != 0 && *l != lease)
            && let Some(entry) = self.leases.get_mut(&old_lease)
        {
            entry.keys.remove(&req.key);
        }
        if lease != 0
            && let Some(entry) = self.leases.get_mut(&lease)
        {
            entry.keys.insert(req.key.clone());
        }
        let response_prev = if req.prev_kv { prev.clone() } else { None };
        txn.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev,
        });
        PutResponse {
            prev_kv: response_prev,
        }
    }

    fn do_delete(&mut self, txn: &mut WriteTxn, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let victims: Vec<KeyValue> = self
            .versions_in(&req.key, &req.range_end)
            .filter_map(|(_, history)| match history.last() {
                Some(Version::Live(kv)) => Some(kv.clone()),
                _ => None,
            })
            .collect();
        for kv in &victims {
            if kv.lease != 0
                && let Some(entry) = self.leases.get_mut(&kv.lease)
            {
                entry.keys.remove(&kv.key);
            }
            if let Some(history) = self.keys.get_mut(&kv.key) {
                let tombstone = Version::Tombstone(txn.revision);
                self.size += version_size(&tombstone);
                history.push(tombstone);
            }
            txn.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: kv.key.clone(),
                    mod_revision: txn.revision,
                    ..KeyValue::default()
                },
                prev_kv: Some(kv.clone()),
            });
        }
        DeleteRangeResponse {
            deleted: victims.len() as i64,
            prev_kvs: if req.prev_kv { victims } else { Vec::new() },
        }
    }

    /// Checks limits and duplicate writes across the whole transaction tree, before anything runs.
    fn validate_txn_shape(&self, req: &TxnRequest) -> Result<(), MvccError> {
        let ops = req.compare.len().max(req.success.len()).max(req.failure.len());
        if ops > self.max_txn_ops {
            return Err(MvccError::TooManyOps {
                ops,
                max: self.max_txn_ops,
            });
        }
        for branch in [&req.success, &req.failure] {
            check_duplicate_writes(branch)?;
            for op in branch.iter() {
                if let RequestOp::Txn(inner) = op {
                    self.validate_txn_shape(inner)?;
                }
            }
        }
        Ok(())
    }

    /// Evaluates every compare of the tree against the store before the transaction: which branch each
    /// (nested) transaction takes, in the order they run.
    fn txn_path(&self, req: &TxnRequest) -> Vec<bool> {
        let mut path = Vec::new();
        self.collect_path(req, &mut path);
        path
    }

    fn collect_path(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = req.compare.iter().all(|c| self.compare_holds(c));
        path.push(succeeded);
        let branch = if succeeded { &req.success } else { &req.failure };
        for op in branch {
            if let RequestOp::Txn(inner) = op {
                self.collect_path(inner, path);
            }
        }
    }

    fn compare_holds(&self, cmp: &Compare) -> bool {
        if cmp.range_end.is_empty() {
            return compare_one(self.live(&cmp.key), cmp);
        }
        // etcd: a range compare holds when it holds for every live key in the range (vacuously when none).
        self.versions_in(&cmp.key, &cmp.range_end)
            .filter_map(|(_, h)| match h.last() {
                Some(Version::Live(kv)) => Some(kv),
                _ => None,
            })
            .all(|kv| compare_one(Some(kv), cmp))
    }

    /// Checks the writes of the branches that will run against the store (leases exist, ignore_* keys exist).
    fn validate_txn_path(&self, req: &TxnRequest, path: &[bool]) -> Result<(), MvccError> {
        let mut deleted = BTreeSet::new();
        self.validate_branch(req, &mut path.iter(), &mut deleted)
    }

    fn validate_branch(
        &self,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
        deleted: &mut BTreeSet<Vec<u8>>,
    ) -> Result<(), MvccError> {
        let succeeded = path.next().copied().unwrap_or(false);
        let branch = if succeeded { &req.success } else { &req.failure };
        for op in branch {
            match op {
                RequestOp::Range(r) => {
                    if r.key.is_empty() {
                        return Err(MvccError::EmptyKey);
                    }
                    if r.revision > 0 {
                        self.check_read_revision(r.revision)?;
                    }
                }
                RequestOp::Put(p) => self.validate_put(p, deleted)?,
                RequestOp::DeleteRange(d) => {
                    if d.key.is_empty() {
                        return Err(MvccError::EmptyKey);
                    }
                    for (key, _) in self.versions_in(&d.key, &d.range_end) {
                        deleted.insert(key.clone());
                    }
                }
                RequestOp::Txn(inner) => self.validate_branch(inner, path, deleted)?,
            }
        }
        Ok(())
    }

    fn do_txn(
        &mut self,
        txn: &mut WriteTxn,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> TxnResponse {
        let succeeded = path.next().copied().unwrap_or(false);
        let branch = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let resp = match op {
                RequestOp::Range(r) => {
                    let now = self.txn_read_revision(txn);
                    // Validated above; a read cannot fail here.
                    ResponseOp::Range(self.range_at(r, now).unwrap_or_default())
                }
                RequestOp::Put(p) => ResponseOp::Put(self.do_put(txn, p)),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.do_delete(txn, d)),
                RequestOp::Txn(inner) => ResponseOp::Txn(self.do_txn(txn, inner, path)),
            };
            responses.push(resp);
        }
        TxnResponse { succeeded, responses }
    }
}

/// The newest version of a key visible at revision `at`, if it is live.
fn live_at(history: &[Version], at: Revision) -> Option<&KeyValue> {
    let visible = history.partition_point(|v| v.revision() <= at);
    match history.get(visible.checked_sub(1)?)? {
        Version::Live(kv) => Some(kv),
        Version::Tombstone(_) => None,
    }
}

fn compare_one(kv: Option<&KeyValue>, cmp: &Compare) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match (&cmp.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
        (CompareTarget::Create(v), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(v),
        (CompareTarget::Mod(v), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(v),
        (CompareTarget::Lease(v), kv) => kv.map_or(0, |kv| kv.lease).cmp(v),
    };
    match cmp.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

/// etcd rejects a branch that puts one key twice, or puts a key that a delete in the same branch covers.
fn check_duplicate_writes(branch: &[RequestOp]) -> Result<(), MvccError> {
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for op in branch {
        if let RequestOp::Put(p) = op
            && !puts.insert(&p.key)
        {
            return Err(MvccError::DuplicateKey { key: p.key.clone() });
        }
    }
    for op in branch {
        if let RequestOp::DeleteRange(d) = op
            && let Some(key) = puts.iter().find(|k| in_range(k, &d.key, &d.range_end))
        {
            return Err(MvccError::DuplicateKey { key: key.to_vec() });
        }
    }
    Ok(())
}

fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    // etcd: no order with a non-key target means ascending; ascending by key is the natural order already.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    if order == SortOrder::Ascend && target == SortTarget::Key {
        return;
    }
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

/// Serializes a map as a list of pairs, so maps with byte-string keys survive formats whose map keys must be
/// strings.
mod vec_map {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub(super) fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub(super) fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}
