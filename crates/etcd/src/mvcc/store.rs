//! The MVCC key space, laid out as etcd lays it out: a key index in memory ([`MvccIndex`]: each key's
//! retained revisions, the leases and their keys, the revisions), and the versions themselves — values,
//! tombstones, the event history watchers replay — in the group's key space, by revision (`layout.rs`).
//!
//! Every operation takes the key space it reads and writes, so the rules stay free of I/O and of the Raft
//! layer: the coordination store applies commands through the entry's `StateTxn` (state and applied index
//! commit together), reads go to the node's key space, and [`MvccStore`] runs the same rules over any key
//! space on its own (the tests run them over a `MemoryKeySpace`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Bound;
use std::sync::Arc;

use trestle_raft::{KeyRead, KeySpace, MemoryKeySpace, StateTxn, Writes};

use super::error::MvccError;
use super::index::{KeyIndex, Rev, Visible};
use super::layout::{self, IndexEntry, Stored};
use super::types::*;

/// etcd's default cap on the operations in one transaction (`--max-txn-ops`).
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How many history records one step of a compaction examines: the bound on the work a compaction adds to
/// one applied entry (the coordination store takes one step per entry until the compaction is done).
pub const COMPACTION_STEP: usize = 2048;

/// What a tombstone counts for in [`MvccIndex::approximate_size`].
const TOMBSTONE_SIZE: u32 = 16;

/// Records read per call while scanning the key space.
const PAGE: usize = 4096;

/// Writing a key space: what applying a command needs beside reading it. Reads see the writes made before
/// them. Implemented for the entry's `StateTxn`, whose writes commit with the entry's index.
pub trait KvWrite: KeyRead {
    /// Sets `key` to `value`.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);
    /// Deletes `key`.
    fn delete(&mut self, key: Vec<u8>);
}

impl KvWrite for StateTxn<'_> {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        StateTxn::put(self, key, value);
    }

    fn delete(&mut self, key: Vec<u8>) {
        StateTxn::delete(self, key);
    }
}

fn storage(e: impl std::fmt::Display) -> MvccError {
    MvccError::Storage {
        detail: e.to_string(),
    }
}

fn corrupt(what: impl std::fmt::Display) -> MvccError {
    MvccError::Storage {
        detail: format!("the key space is damaged: {what}"),
    }
}

/// What a put of `key` and `value` adds to [`MvccIndex::approximate_size`] (besides the key, for a new one).
pub(crate) fn put_size(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + 48
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LeaseEntry {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
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

/// The changes of one write command, gathered while it runs.
struct WriteTxn {
    /// The revision the writes get if anything changes.
    revision: Revision,
    /// How many versions it wrote: the next one's sub-revision.
    changes: u32,
}

impl WriteTxn {
    fn next_sub(&mut self) -> u32 {
        self.changes += 1;
        self.changes - 1
    }
}

/// Calls `visit` with every record from `start` (included) to `end` (excluded), page by page.
fn scan_all(
    disk: &dyn KeyRead,
    start: &[u8],
    end: &[u8],
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    let mut from = start.to_vec();
    loop {
        let page = disk.scan(&from, Some(end), PAGE).map_err(storage)?;
        for (key, value) in &page {
            visit(key, value)?;
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                from = last.clone();
                from.push(0);
            }
            _ => return Ok(()),
        }
    }
}

fn read_version(disk: &dyn KeyRead, main: Revision, sub: u32) -> Result<Stored, MvccError> {
    let raw = disk
        .get(&layout::history_key(main, sub))
        .map_err(storage)?
        .ok_or_else(|| corrupt(format!("the version at revision {main}.{sub} is missing")))?;
    decode_version(&raw, main, sub)
}

fn decode_version(raw: &[u8], main: Revision, sub: u32) -> Result<Stored, MvccError> {
    postcard::from_bytes(raw).map_err(|e| corrupt(format!("the version at revision {main}.{sub}: {e}")))
}

fn read_kv(disk: &dyn KeyRead, main: Revision, sub: u32) -> Result<KeyValue, MvccError> {
    match read_version(disk, main, sub)? {
        Stored::Put(kv) => Ok(kv),
        Stored::Delete(_) => Err(corrupt(format!(
            "a tombstone at revision {main}.{sub} where the index has a value"
        ))),
    }
}

fn encode_version(version: &Stored) -> Vec<u8> {
    // A key and a value always encode.
    postcard::to_allocvec(version).unwrap_or_default()
}

fn decode_meta(name: &[u8], raw: Option<Vec<u8>>) -> Result<Option<i64>, MvccError> {
    raw.map(|raw| {
        layout::decode_i64(&raw).ok_or_else(|| {
            corrupt(format!(
                "{} is {} bytes",
                String::from_utf8_lossy(name),
                raw.len()
            ))
        })
    })
    .transpose()
}

/// What the MVCC store keeps in memory: the revisions, the key index, the leases with their keys, the size.
/// Everything else is in the key space each operation is given. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvccIndex {
    revision: Revision,
    compact_revision: Revision,
    /// The next history record the compaction on disk examines; `None`: no compaction in progress.
    compacting: Option<(Revision, u32)>,
    keys: BTreeMap<Vec<u8>, KeyIndex>,
    leases: BTreeMap<LeaseId, LeaseEntry>,
    max_txn_ops: usize,
    /// [`MvccIndex::approximate_size`], kept up to date by every change (the quota check reads it on every
    /// write).
    size: usize,
}

impl MvccIndex {
    /// An empty store at revision 1 (etcd's first revision), with the given transaction size limit.
    pub fn new(max_txn_ops: usize) -> Self {
        Self {
            revision: 1,
            compact_revision: 0,
            compacting: None,
            keys: BTreeMap::new(),
            leases: BTreeMap::new(),
            max_txn_ops,
            size: 0,
        }
    }

    /// Rebuilds the index from what a key space holds (a store opening, or a snapshot installed): reads the
    /// index entries, the leases and the store's revisions, not the values.
    pub fn load(disk: &dyn KeyRead, max_txn_ops: usize) -> Result<Self, MvccError> {
        let meta = |name: &[u8]| decode_meta(name, disk.get(name).map_err(storage)?);
        let revision = meta(layout::META_REVISION)?.unwrap_or(1);
        let compact_revision = meta(layout::META_COMPACT)?.unwrap_or(0);
        let compacting = match disk.get(layout::META_COMPACTING).map_err(storage)? {
            Some(raw) => {
                Some(layout::decode_position(&raw).ok_or_else(|| corrupt("a bad compaction position"))?)
            }
            None => None,
        };
        let mut leases = BTreeMap::new();
        scan_all(
            disk,
            &[layout::LEASES],
            &layout::after(layout::LEASES),
            |key, value| {
                let id = layout::parse_lease_key(key).ok_or_else(|| corrupt("a bad lease key"))?;
                let ttl = layout::decode_i64(value).ok_or_else(|| corrupt(format!("lease {id}'s TTL")))?;
                leases.insert(
                    id,
                    LeaseEntry {
                        ttl,
                        keys: BTreeSet::new(),
                    },
                );
                Ok(())
            },
        )?;
        let mut keys: BTreeMap<Vec<u8>, KeyIndex> = BTreeMap::new();
        // Entries come by key, then revision: the last key touched is almost always the next one's.
        let mut last: Option<Vec<u8>> = None;
        scan_all(
            disk,
            &[layout::INDEX],
            &layout::after(layout::INDEX),
            |raw_key, value| {
                let (key, main, sub) =
                    layout::parse_index_key(raw_key).ok_or_else(|| corrupt("a bad index key"))?;
                let entry = IndexEntry::decode(value)
                    .ok_or_else(|| corrupt(format!("the index entry of revision {main}.{sub}")))?;
                let rev = Rev::new(main, sub, entry.tombstone, entry.size);
                let same = last.as_deref() == Some(key);
                let index = if same {
                    last.as_ref().and_then(|k| keys.get_mut(k))
                } else {
                    keys.get_mut(key)
                };
                match index {
                    Some(index) => index.push_loaded(rev, entry.create_revision, entry.version, entry.lease),
                    None => {
                        keys.insert(
                            key.to_vec(),
                            KeyIndex::first(rev, entry.create_revision, entry.version, entry.lease),
                        );
                    }
                }
                if !same {
                    last = Some(key.to_vec());
                }
                Ok(())
            },
        )?;
        let mut index = Self {
            revision,
            compact_revision,
            compacting,
            keys,
            leases,
            max_txn_ops,
            size: 0,
        };
        // A compaction still removing history from disk: the index forgets those versions at once.
        if compact_revision > 0 {
            index.keys.retain(|_, key| {
                key.compact(compact_revision);
                !key.is_empty()
            });
        }
        index.size = index.keys.iter().map(|(key, index)| index.size(key)).sum();
        for (key, entry) in &index.keys {
            if entry.live().is_some()
                && entry.lease() != 0
                && let Some(lease) = index.leases.get_mut(&entry.lease())
            {
                lease.keys.insert(key.clone());
            }
        }
        Ok(index)
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The revision of the last compaction (0 if none).
    pub fn compact_revision(&self) -> Revision {
        self.compact_revision
    }

    /// The cap on the operations of one transaction.
    pub fn max_txn_ops(&self) -> usize {
        self.max_txn_ops
    }

    /// Whether a compaction is still removing history from disk (a step per applied entry).
    pub fn compacting(&self) -> bool {
        self.compacting.is_some()
    }

    /// How many distinct keys exist now.
    pub fn live_key_count(&self) -> usize {
        self.keys.values().filter(|k| k.live().is_some()).count()
    }

    /// How many versions the index retains (every key's, tombstones included).
    pub fn retained_versions(&self) -> usize {
        self.keys.values().map(|k| k.up_to(Revision::MAX).len()).sum()
    }

    /// A rough size of the retained data in bytes (keys, values and history), reported as the db size and
    /// checked against the space quota.
    pub fn approximate_size(&self) -> usize {
        self.size
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

    // ----- reads -----

    /// Reads a key or a range (etcd `Range`).
    pub fn range(&self, disk: &dyn KeyRead, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        self.range_at(disk, req, self.revision)
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
    fn range_at(
        &self,
        disk: &dyn KeyRead,
        req: &RangeRequest,
        current: Revision,
    ) -> Result<RangeResponse, MvccError> {
        let at = if req.revision <= 0 {
            current
        } else {
            self.check_read_revision(req.revision)?
        };
        // The index answers which version each key shows at `at`, and the filters; only the versions
        // returned are read from disk.
        let mut found: Vec<Visible> = self
            .indexes_in(&req.key, &req.range_end)
            .filter_map(|(_, index)| index.visible_at(at))
            .filter(|v| {
                (req.min_mod_revision == 0 || v.main >= req.min_mod_revision)
                    && (req.max_mod_revision == 0 || v.main <= req.max_mod_revision)
                    && (req.min_create_revision == 0 || v.create_revision >= req.min_create_revision)
                    && (req.max_create_revision == 0 || v.create_revision <= req.max_create_revision)
            })
            .collect();
        let count = found.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        let limit = usize::try_from(req.limit).ok().filter(|l| *l > 0);
        let more = limit.is_some_and(|limit| found.len() > limit);
        let mut kvs = if req.sort_target == SortTarget::Value {
            let mut kvs = found
                .iter()
                .map(|v| read_kv(disk, v.main, v.sub))
                .collect::<Result<Vec<_>, _>>()?;
            sort_kvs(&mut kvs, req.sort_order, req.sort_target);
            kvs.truncate(limit.unwrap_or(usize::MAX));
            kvs
        } else {
            sort_visible(&mut found, req.sort_order, req.sort_target);
            found.truncate(limit.unwrap_or(usize::MAX));
            found
                .iter()
                .map(|v| read_kv(disk, v.main, v.sub))
                .collect::<Result<Vec<_>, _>>()?
        };
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }

    fn indexes_in<'a>(
        &'a self,
        key: &'a [u8],
        end: &'a [u8],
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a KeyIndex)> + 'a> {
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

    fn is_live(&self, key: &[u8]) -> bool {
        self.keys.get(key).is_some_and(|k| k.live().is_some())
    }

    fn live_kv(&self, disk: &dyn KeyRead, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        match self.keys.get(key).and_then(KeyIndex::live) {
            Some(v) => read_kv(disk, v.main, v.sub).map(Some),
            None => Ok(None),
        }
    }

    /// Every event of revisions `from..=self.revision()`, oldest first, with its revision and the key's
    /// previous value.
    pub fn events_since(
        &self,
        disk: &dyn KeyRead,
        from: Revision,
    ) -> Result<Vec<(Revision, Event)>, MvccError> {
        let mut events = Vec::new();
        self.scan_events(
            disk,
            from,
            true,
            |_| true,
            |revision, event| events.push((revision, event)),
        )?;
        Ok(events)
    }

    /// Calls `visit` with each event of revisions `from..=self.revision()` whose key `wanted` accepts, oldest
    /// first; with the key's previous value when `prev_kv`. Refuses a compacted `from`, as
    /// [`MvccIndex::events_since`] does.
    pub fn scan_events(
        &self,
        disk: &dyn KeyRead,
        from: Revision,
        prev_kv: bool,
        mut wanted: impl FnMut(&[u8]) -> bool,
        mut visit: impl FnMut(Revision, Event),
    ) -> Result<(), MvccError> {
        if from > 0 && from < self.compact_revision {
            return Err(MvccError::Compacted {
                requested: from,
                compact_revision: self.compact_revision,
            });
        }
        if from > self.revision {
            return Ok(());
        }
        let start = layout::history_key(from.max(1), 0);
        let end = layout::history_key(self.revision + 1, 0);
        scan_all(disk, &start, &end, |raw_key, raw| {
            let (main, sub) =
                layout::parse_history_key(raw_key).ok_or_else(|| corrupt("a bad history key"))?;
            let version = decode_version(raw, main, sub)?;
            if !wanted(version.key()) {
                return Ok(());
            }
            let prev = if prev_kv {
                self.keys
                    .get(version.key())
                    .and_then(|index| index.before(main, sub))
                    .map(|rev| read_kv(disk, rev.main, rev.sub()))
                    .transpose()?
            } else {
                None
            };
            let event = match version {
                Stored::Put(kv) => Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv: prev,
                },
                Stored::Delete(key) => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        mod_revision: main,
                        ..KeyValue::default()
                    },
                    prev_kv: prev,
                },
            };
            visit(main, event);
            Ok(())
        })
    }

    /// The events the given revision produced, with previous values (empty if it produced none or its
    /// history was compacted away).
    pub fn events_at(&self, disk: &dyn KeyRead, revision: Revision) -> Vec<Event> {
        if revision < 1 || revision > self.revision {
            return Vec::new();
        }
        let mut events = Vec::new();
        let start = layout::history_key(revision, 0);
        let end = layout::history_key(revision + 1, 0);
        let scanned = scan_all(disk, &start, &end, |raw_key, raw| {
            let (main, sub) =
                layout::parse_history_key(raw_key).ok_or_else(|| corrupt("a bad history key"))?;
            let version = decode_version(raw, main, sub)?;
            let prev = self
                .keys
                .get(version.key())
                .and_then(|index| index.before(main, sub))
                .map(|rev| read_kv(disk, rev.main, rev.sub()))
                .transpose()?;
            events.push(match version {
                Stored::Put(kv) => Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv: prev,
                },
                Stored::Delete(key) => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        mod_revision: main,
                        ..KeyValue::default()
                    },
                    prev_kv: prev,
                },
            });
            Ok(())
        });
        match scanned {
            Ok(()) => events,
            Err(_) => Vec::new(),
        }
    }

    // ----- hashes -----

    /// A checksum of the key space as of `revision` (0: the current one), and the compact revision it covers
    /// from (etcd `HashKV`). Members that applied the same commands give the same hash at the same revision,
    /// whatever else they did since (restarts, snapshots, how far compaction got on disk): every retained
    /// version of every key up to `revision` (values, tombstones and their metadata), in key order, and the
    /// compact revision. CRC-32 (IEEE); not the same number etcd computes for the same data, which nothing
    /// compares.
    pub fn hash_kv(&self, disk: &dyn KeyRead, revision: Revision) -> Result<(u32, Revision), MvccError> {
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
        for (key, index) in &self.keys {
            let versions = index.up_to(revision);
            if versions.is_empty() {
                continue;
            }
            hasher.update(&(key.len() as u64).to_be_bytes());
            hasher.update(key);
            for rev in versions {
                if rev.is_tombstone() {
                    hasher.update(&[0]);
                    hasher.update(&rev.main.to_be_bytes());
                } else {
                    let kv = read_kv(disk, rev.main, rev.sub())?;
                    hasher.update(&[1]);
                    for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                        hasher.update(&n.to_be_bytes());
                    }
                    hasher.update(&(kv.value.len() as u64).to_be_bytes());
                    hasher.update(&kv.value);
                }
            }
        }
        Ok((hasher.finalize(), self.compact_revision))
    }

    /// A checksum of the whole store: [`MvccIndex::hash_kv`] at the current revision, with the leases and
    /// their TTLs (etcd `Hash`).
    pub fn hash(&self, disk: &dyn KeyRead) -> Result<u32, MvccError> {
        let (kv, _) = self.hash_kv(disk, self.revision)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&kv.to_be_bytes());
        hasher.update(&self.revision.to_be_bytes());
        for (id, lease) in &self.leases {
            hasher.update(&id.to_be_bytes());
            hasher.update(&lease.ttl.to_be_bytes());
        }
        Ok(hasher.finalize())
    }

    // ----- writes -----

    /// Writes one key (etcd `Put`).
    pub fn put(&mut self, disk: &mut dyn KvWrite, req: &PutRequest) -> Result<PutResponse, MvccError> {
        self.validate_put(req, &BTreeSet::new())?;
        let mut txn = self.begin();
        let resp = self.do_put(disk, &mut txn, req)?;
        self.commit(disk, txn);
        Ok(resp)
    }

    /// Deletes a key or a range (etcd `DeleteRange`).
    pub fn delete_range(
        &mut self,
        disk: &mut dyn KvWrite,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let mut txn = self.begin();
        let resp = self.do_delete(disk, &mut txn, req)?;
        self.commit(disk, txn);
        Ok(resp)
    }

    /// Runs a transaction (etcd `Txn`). Compares see the store as it was before the transaction; reads inside
    /// it see its own earlier writes; all its writes share one revision.
    pub fn txn(&mut self, disk: &mut dyn KvWrite, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.validate_txn_shape(req)?;
        let path = self.txn_path(&*disk, req)?;
        self.validate_txn_path(req, &path)?;
        let mut txn = self.begin();
        let resp = self.do_txn(disk, &mut txn, req, &mut path.iter())?;
        self.commit(disk, txn);
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
    pub fn read_txn(&self, disk: &dyn KeyRead, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.validate_txn_shape(req)?;
        let path = self.txn_path(disk, req)?;
        self.validate_txn_path(req, &path)?;
        self.eval_read_txn(disk, req, &mut path.iter())
    }

    fn eval_read_txn(
        &self,
        disk: &dyn KeyRead,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path.next().copied().unwrap_or(false);
        let branch = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            match op {
                RequestOp::Range(r) => responses.push(ResponseOp::Range(storage_or_default(self.range_at(
                    disk,
                    r,
                    self.revision,
                ))?)),
                RequestOp::Txn(inner) => {
                    responses.push(ResponseOp::Txn(self.eval_read_txn(disk, inner, path)?))
                }
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(TxnResponse { succeeded, responses })
    }

    /// Forgets every version superseded at or before `revision` (etcd `Compact`): at once in the index and for
    /// reads, and on disk by [`MvccIndex::compact_step`], a bounded step at a time.
    pub fn compact(&mut self, disk: &mut dyn KvWrite, revision: Revision) -> Result<(), MvccError> {
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
        // Every history record on disk is at or after the oldest retained version or the last compact
        // revision (whose events stay), or where an unfinished compaction stands.
        let oldest = self
            .keys
            .values()
            .filter_map(KeyIndex::oldest)
            .min()
            .unwrap_or(self.revision);
        let mut start = (oldest.min(self.compact_revision.max(1)), 0);
        if let Some(pending) = self.compacting {
            start = start.min(pending);
        }
        let mut freed = 0;
        self.keys.retain(|key, index| {
            freed += index.compact(revision);
            if index.is_empty() {
                freed += key.len();
            }
            !index.is_empty()
        });
        self.size = self.size.saturating_sub(freed);
        self.compact_revision = revision;
        self.compacting = Some(start);
        disk.put(layout::META_COMPACT.to_vec(), layout::encode_i64(revision));
        disk.put(
            layout::META_COMPACTING.to_vec(),
            layout::encode_position(start.0, start.1),
        );
        Ok(())
    }

    /// Removes from disk up to `budget` history records that the compaction made obsolete, with their index
    /// entries. The events of the compact revision itself stay: a watch may start there, as in etcd. Returns
    /// whether more remain.
    pub fn compact_step(&mut self, disk: &mut dyn KvWrite, budget: usize) -> Result<bool, MvccError> {
        let Some((main, sub)) = self.compacting else {
            return Ok(false);
        };
        let budget = budget.max(1);
        let end = layout::history_key(self.compact_revision + 1, 0);
        let records = disk
            .scan(&layout::history_key(main, sub), Some(&end), budget)
            .map_err(storage)?;
        for (raw_key, raw) in &records {
            let (main, sub) =
                layout::parse_history_key(raw_key).ok_or_else(|| corrupt("a bad history key"))?;
            let version = decode_version(raw, main, sub)?;
            let key = version.key();
            if !self.keys.get(key).is_some_and(|index| index.retains(main, sub)) {
                disk.delete(layout::index_key(key, main, sub));
                if main < self.compact_revision {
                    disk.delete(raw_key.clone());
                }
            }
        }
        let next = match records.last() {
            Some((last, _)) if records.len() == budget => {
                layout::parse_history_key(last).map(|(main, sub)| {
                    if sub == u32::MAX {
                        (main + 1, 0)
                    } else {
                        (main, sub + 1)
                    }
                })
            }
            _ => None,
        };
        self.compacting = next;
        match next {
            Some((main, sub)) => disk.put(
                layout::META_COMPACTING.to_vec(),
                layout::encode_position(main, sub),
            ),
            None => disk.delete(layout::META_COMPACTING.to_vec()),
        }
        Ok(next.is_some())
    }

    // ----- leases -----

    /// Grants a lease with a chosen, non-zero id (the proposer picks ids, so every replica agrees).
    pub fn lease_grant(&mut self, disk: &mut dyn KvWrite, id: LeaseId, ttl: i64) -> Result<Lease, MvccError> {
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
        disk.put(layout::lease_key(id), layout::encode_i64(ttl));
        Ok(Lease { id, ttl })
    }

    /// Revokes a lease and deletes every key attached to it, in one revision.
    pub fn lease_revoke(&mut self, disk: &mut dyn KvWrite, id: LeaseId) -> Result<(), MvccError> {
        let entry = self.leases.remove(&id).ok_or(MvccError::LeaseNotFound { id })?;
        disk.delete(layout::lease_key(id));
        let mut txn = self.begin();
        for key in entry.keys {
            self.do_delete(
                disk,
                &mut txn,
                &DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                    prev_kv: false,
                },
            )?;
        }
        self.commit(disk, txn);
        Ok(())
    }

    // ----- internals -----

    fn begin(&self) -> WriteTxn {
        WriteTxn {
            revision: self.revision + 1,
            changes: 0,
        }
    }

    fn commit(&mut self, disk: &mut dyn KvWrite, txn: WriteTxn) {
        if txn.changes > 0 {
            self.revision = txn.revision;
            disk.put(layout::META_REVISION.to_vec(), layout::encode_i64(txn.revision));
        }
    }

    /// The revision a read inside `txn` sees as "now".
    fn txn_read_revision(&self, txn: &WriteTxn) -> Revision {
        if txn.changes == 0 {
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
            && (!self.is_live(&req.key) || deleted_in_txn.contains(&req.key))
        {
            return Err(MvccError::KeyNotFound);
        }
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(MvccError::LeaseNotFound { id: req.lease });
        }
        Ok(())
    }

    fn do_put(
        &mut self,
        disk: &mut dyn KvWrite,
        txn: &mut WriteTxn,
        req: &PutRequest,
    ) -> Result<PutResponse, MvccError> {
        let revision = txn.revision;
        // The previous value is read only when the request needs it: the index knows the rest.
        let prev = if req.prev_kv || req.ignore_value {
            self.live_kv(&*disk, &req.key)?
        } else {
            None
        };
        let prev_lease = self.keys.get(req.key.as_slice()).map_or(0, KeyIndex::lease);
        let value = match (&prev, req.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => req.value.clone(),
        };
        let lease = if req.ignore_lease { prev_lease } else { req.lease };
        let sub = txn.next_sub();
        let size = put_size(&req.key, &value);
        let size32 = u32::try_from(size).unwrap_or(u32::MAX);
        // One search of the key index, and no copy of the key for one that exists: puts are the hot path.
        let (create_revision, version) = match self.keys.get_mut(req.key.as_slice()) {
            Some(index) => index.put(revision, sub, size32, lease),
            None => {
                self.size += req.key.len();
                self.keys.insert(
                    req.key.clone(),
                    KeyIndex::first(Rev::new(revision, sub, false, size32), revision, 1, lease),
                );
                (revision, 1)
            }
        };
        self.size += size32 as usize;
        if prev_lease != 0
            && prev_lease != lease
            && let Some(entry) = self.leases.get_mut(&prev_lease)
        {
            entry.keys.remove(&req.key);
        }
        if lease != 0
            && let Some(entry) = self.leases.get_mut(&lease)
        {
            entry.keys.insert(req.key.clone());
        }
        let entry = IndexEntry {
            tombstone: false,
            size: size32,
            create_revision,
            version,
            lease,
        };
        disk.put(layout::index_key(&req.key, revision, sub), entry.encode());
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision,
            mod_revision: revision,
            version,
            value,
            lease,
        };
        disk.put(
            layout::history_key(revision, sub),
            encode_version(&Stored::Put(kv)),
        );
        Ok(PutResponse {
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn do_delete(
        &mut self,
        disk: &mut dyn KvWrite,
        txn: &mut WriteTxn,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let victims: Vec<(Vec<u8>, Visible, LeaseId)> = self
            .indexes_in(&req.key, &req.range_end)
            .filter_map(|(key, index)| index.live().map(|v| (key.clone(), v, index.lease())))
            .collect();
        let deleted = victims.len() as i64;
        let mut prev_kvs = Vec::new();
        for (key, live, lease) in victims {
            if req.prev_kv {
                prev_kvs.push(read_kv(&*disk, live.main, live.sub)?);
            }
            if lease != 0
                && let Some(entry) = self.leases.get_mut(&lease)
            {
                entry.keys.remove(&key);
            }
            let sub = txn.next_sub();
            if let Some(index) = self.keys.get_mut(&key) {
                index.delete(txn.revision, sub, TOMBSTONE_SIZE);
                self.size += TOMBSTONE_SIZE as usize;
            }
            let entry = IndexEntry {
                tombstone: true,
                size: TOMBSTONE_SIZE,
                create_revision: 0,
                version: 0,
                lease: 0,
            };
            disk.put(layout::index_key(&key, txn.revision, sub), entry.encode());
            disk.put(
                layout::history_key(txn.revision, sub),
                encode_version(&Stored::Delete(key)),
            );
        }
        Ok(DeleteRangeResponse { deleted, prev_kvs })
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
    fn txn_path(&self, disk: &dyn KeyRead, req: &TxnRequest) -> Result<Vec<bool>, MvccError> {
        let mut path = Vec::new();
        self.collect_path(disk, req, &mut path)?;
        Ok(path)
    }

    fn collect_path(
        &self,
        disk: &dyn KeyRead,
        req: &TxnRequest,
        path: &mut Vec<bool>,
    ) -> Result<(), MvccError> {
        let mut succeeded = true;
        for cmp in &req.compare {
            if !self.compare_holds(disk, cmp)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        let branch = if succeeded { &req.success } else { &req.failure };
        for op in branch {
            if let RequestOp::Txn(inner) = op {
                self.collect_path(disk, inner, path)?;
            }
        }
        Ok(())
    }

    fn compare_holds(&self, disk: &dyn KeyRead, cmp: &Compare) -> Result<bool, MvccError> {
        if cmp.range_end.is_empty() {
            return Ok(compare_one(self.live_kv(disk, &cmp.key)?.as_ref(), cmp));
        }
        // etcd: a range compare holds when it holds for every live key in the range (vacuously when none).
        for (_, index) in self.indexes_in(&cmp.key, &cmp.range_end) {
            if let Some(live) = index.live()
                && !compare_one(Some(&read_kv(disk, live.main, live.sub)?), cmp)
            {
                return Ok(false);
            }
        }
        Ok(true)
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
                    for (key, _) in self.indexes_in(&d.key, &d.range_end) {
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
        disk: &mut dyn KvWrite,
        txn: &mut WriteTxn,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path.next().copied().unwrap_or(false);
        let branch = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let resp = match op {
                RequestOp::Range(r) => {
                    let now = self.txn_read_revision(txn);
                    // Validated above; only storage can fail here.
                    ResponseOp::Range(storage_or_default(self.range_at(&*disk, r, now))?)
                }
                RequestOp::Put(p) => ResponseOp::Put(self.do_put(disk, txn, p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.do_delete(disk, txn, d)?),
                RequestOp::Txn(inner) => ResponseOp::Txn(self.do_txn(disk, txn, inner, path)?),
            };
            responses.push(resp);
        }
        Ok(TxnResponse { succeeded, responses })
    }
}

/// A read inside a validated transaction: a storage failure is the transaction's error, anything else (which
/// validation rules out) an empty answer.
fn storage_or_default(read: Result<RangeResponse, MvccError>) -> Result<RangeResponse, MvccError> {
    match read {
        Ok(resp) => Ok(resp),
        Err(e @ MvccError::Storage { .. }) => Err(e),
        Err(_) => Ok(RangeResponse::default()),
    }
}

/// The MVCC store as readers see it: the index with the key space it describes. Cheap to copy.
#[derive(Clone, Copy)]
pub struct MvccView<'a> {
    index: &'a MvccIndex,
    disk: &'a dyn KeyRead,
}

impl std::fmt::Debug for MvccView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccView")
            .field("revision", &self.index.revision)
            .finish_non_exhaustive()
    }
}

impl<'a> MvccView<'a> {
    /// `index` over the key space `disk` it describes.
    pub fn new(index: &'a MvccIndex, disk: &'a dyn KeyRead) -> Self {
        Self { index, disk }
    }

    /// The in-memory part.
    pub fn index(&self) -> &'a MvccIndex {
        self.index
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.index.revision()
    }

    /// The revision of the last compaction (0 if none).
    pub fn compact_revision(&self) -> Revision {
        self.index.compact_revision()
    }

    /// How many distinct keys exist now.
    pub fn live_key_count(&self) -> usize {
        self.index.live_key_count()
    }

    /// See [`MvccIndex::approximate_size`].
    pub fn approximate_size(&self) -> usize {
        self.index.approximate_size()
    }

    /// See [`MvccIndex::range`].
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.index.range(self.disk, req)
    }

    /// See [`MvccIndex::read_txn`].
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.index.read_txn(self.disk, req)
    }

    /// See [`MvccIndex::events_since`].
    pub fn events_since(&self, from: Revision) -> Result<Vec<(Revision, Event)>, MvccError> {
        self.index.events_since(self.disk, from)
    }

    /// See [`MvccIndex::scan_events`].
    pub fn scan_events(
        &self,
        from: Revision,
        prev_kv: bool,
        wanted: impl FnMut(&[u8]) -> bool,
        visit: impl FnMut(Revision, Event),
    ) -> Result<(), MvccError> {
        self.index.scan_events(self.disk, from, prev_kv, wanted, visit)
    }

    /// See [`MvccIndex::events_at`].
    pub fn events_at(&self, revision: Revision) -> Vec<Event> {
        self.index.events_at(self.disk, revision)
    }

    /// See [`MvccIndex::hash_kv`].
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision), MvccError> {
        self.index.hash_kv(self.disk, revision)
    }

    /// See [`MvccIndex::hash`].
    pub fn hash(&self) -> Result<u32, MvccError> {
        self.index.hash(self.disk)
    }

    /// The lease with this id, if it exists.
    pub fn lease(&self, id: LeaseId) -> Option<Lease> {
        self.index.lease(id)
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, id: LeaseId) -> Vec<Vec<u8>> {
        self.index.lease_keys(id)
    }

    /// Every live lease.
    pub fn leases(&self) -> Vec<Lease> {
        self.index.leases()
    }
}

/// Writes straight to a key space, change by change (a store used on its own, outside a Raft group).
struct Direct<'a> {
    space: &'a dyn KeySpace,
    failed: Option<io::Error>,
}

impl KeyRead for Direct<'_> {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.space.get(key)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> io::Result<Vec<trestle_raft::Record>> {
        self.space.scan(start, end, limit)
    }
}

impl Direct<'_> {
    fn write(&mut self, writes: Writes) {
        if let Err(e) = self.space.write(&writes)
            && self.failed.is_none()
        {
            self.failed = Some(e);
        }
    }

    fn finish<T>(self, result: Result<T, MvccError>) -> Result<T, MvccError> {
        match self.failed {
            Some(e) => Err(storage(e)),
            None => result,
        }
    }
}

impl KvWrite for Direct<'_> {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let mut writes = Writes::new();
        writes.put(key, value);
        self.write(writes);
    }

    fn delete(&mut self, key: Vec<u8>) {
        let mut writes = Writes::new();
        writes.delete(key);
        self.write(writes);
    }
}

/// The MVCC store on its own: [`MvccIndex`] over a key space it writes directly (a `MemoryKeySpace` by
/// default), with etcd's operations. Inside a Raft group the coordination store runs the same index through
/// each entry's transaction instead.
#[derive(Debug)]
pub struct MvccStore {
    index: MvccIndex,
    space: Arc<dyn KeySpace>,
}

impl PartialEq for MvccStore {
    /// Equal indexes over equal histories: what two replicas of one history have.
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && self.hash_kv(0).ok() == other.hash_kv(0).ok()
    }
}

impl Default for MvccStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TXN_OPS)
    }
}

impl MvccStore {
    /// An empty store at revision 1 (etcd's first revision) in memory, with the given transaction size limit.
    pub fn new(max_txn_ops: usize) -> Self {
        Self {
            index: MvccIndex::new(max_txn_ops),
            space: Arc::new(MemoryKeySpace::new()),
        }
    }

    /// The store a key space holds (its index rebuilt from it).
    pub fn open(space: Arc<dyn KeySpace>, max_txn_ops: usize) -> Result<Self, MvccError> {
        Ok(Self {
            index: MvccIndex::load(&*space, max_txn_ops)?,
            space,
        })
    }

    /// The key space underneath.
    pub fn space(&self) -> &Arc<dyn KeySpace> {
        &self.space
    }

    /// The in-memory part.
    pub fn index(&self) -> &MvccIndex {
        &self.index
    }

    /// The store as readers see it.
    pub fn view(&self) -> MvccView<'_> {
        MvccView::new(&self.index, &*self.space)
    }

    fn write<T>(
        &mut self,
        op: impl FnOnce(&mut MvccIndex, &mut dyn KvWrite) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        let mut direct = Direct {
            space: &*self.space,
            failed: None,
        };
        let result = op(&mut self.index, &mut direct);
        direct.finish(result)
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.index.revision()
    }

    /// The revision of the last compaction (0 if none).
    pub fn compact_revision(&self) -> Revision {
        self.index.compact_revision()
    }

    /// How many distinct keys exist now.
    pub fn live_key_count(&self) -> usize {
        self.index.live_key_count()
    }

    /// See [`MvccIndex::approximate_size`].
    pub fn approximate_size(&self) -> usize {
        self.index.approximate_size()
    }

    /// Reads a key or a range (etcd `Range`).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.view().range(req)
    }

    /// See [`MvccIndex::read_txn`].
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.view().read_txn(req)
    }

    /// See [`MvccIndex::txn_is_read_only`].
    pub fn txn_is_read_only(req: &TxnRequest) -> bool {
        MvccIndex::txn_is_read_only(req)
    }

    /// See [`MvccIndex::events_since`].
    pub fn events_since(&self, from: Revision) -> Result<Vec<(Revision, Event)>, MvccError> {
        self.view().events_since(from)
    }

    /// See [`MvccIndex::events_at`].
    pub fn events_at(&self, revision: Revision) -> Vec<Event> {
        self.view().events_at(revision)
    }

    /// See [`MvccIndex::hash_kv`].
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision), MvccError> {
        self.view().hash_kv(revision)
    }

    /// See [`MvccIndex::hash`].
    pub fn hash(&self) -> Result<u32, MvccError> {
        self.view().hash()
    }

    /// The lease with this id, if it exists.
    pub fn lease(&self, id: LeaseId) -> Option<Lease> {
        self.index.lease(id)
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, id: LeaseId) -> Vec<Vec<u8>> {
        self.index.lease_keys(id)
    }

    /// Every live lease.
    pub fn leases(&self) -> Vec<Lease> {
        self.index.leases()
    }

    /// Writes one key (etcd `Put`).
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        self.write(|index, disk| index.put(disk, req))
    }

    /// Deletes a key or a range (etcd `DeleteRange`).
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        self.write(|index, disk| index.delete_range(disk, req))
    }

    /// Runs a transaction (etcd `Txn`); see [`MvccIndex::txn`].
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.write(|index, disk| index.txn(disk, req))
    }

    /// Compacts (etcd `Compact`), removing the obsolete history from the key space before it returns.
    pub fn compact(&mut self, revision: Revision) -> Result<(), MvccError> {
        self.write(|index, disk| {
            index.compact(disk, revision)?;
            while index.compact_step(disk, COMPACTION_STEP)? {}
            Ok(())
        })
    }

    /// Grants a lease; see [`MvccIndex::lease_grant`].
    pub fn lease_grant(&mut self, id: LeaseId, ttl: i64) -> Result<Lease, MvccError> {
        self.write(|index, disk| index.lease_grant(disk, id, ttl))
    }

    /// Revokes a lease and deletes its keys; see [`MvccIndex::lease_revoke`].
    pub fn lease_revoke(&mut self, id: LeaseId) -> Result<(), MvccError> {
        self.write(|index, disk| index.lease_revoke(disk, id))
    }
}

/// The live versions of a range sorted as etcd sorts them, for every target but the value (which needs the
/// values: see [`sort_kvs`]).
fn sort_visible(found: &mut [Visible], order: SortOrder, target: SortTarget) {
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
        // Already in key order.
        SortTarget::Key | SortTarget::Value => {}
        SortTarget::Version => found.sort_by_key(|v| v.version),
        SortTarget::Create => found.sort_by_key(|v| v.create_revision),
        SortTarget::Mod => found.sort_by_key(|v| v.main),
    }
    if order == SortOrder::Descend {
        found.reverse();
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
