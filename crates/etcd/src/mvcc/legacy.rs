//! Stores written whole, as data directories and backups made before the store moved onto its key space keep
//! them: a postcard `MvccStore` (every version of every key, the retained events, the leases), the alarms
//! after it. [`to_key_space`] lays one out as records, as if the store had always run on its key space.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Deserialize;
use trestle_raft::{KeySpace, MemoryKeySpace, Writes};

use super::layout::{self, IndexEntry, Stored};
use super::store::put_size;
use super::types::{Event, EventKind, KeyValue, LeaseId, Revision};

#[derive(Deserialize)]
enum Version {
    Live(KeyValue),
    Tombstone(Revision),
}

#[derive(Deserialize)]
struct LeaseEntry {
    ttl: i64,
    #[allow(dead_code)]
    keys: BTreeSet<Vec<u8>>,
}

/// The fields of the old store, in their order.
#[derive(Deserialize)]
struct Store {
    revision: Revision,
    compact_revision: Revision,
    keys: Vec<(Vec<u8>, Vec<Version>)>,
    events: Vec<(Revision, Vec<Event>)>,
    leases: Vec<(LeaseId, LeaseEntry)>,
    #[allow(dead_code)]
    max_txn_ops: usize,
}

/// A key's events at one revision, with their sub-revisions, in order.
type EventsOfKey = VecDeque<(u32, Event)>;

/// The records of the old store `bytes` holds (alarms after it, if any, go to `META_ALARMS` as they are), in a
/// key space in memory without an applied mark.
pub(crate) fn to_key_space(bytes: &[u8]) -> Result<MemoryKeySpace, String> {
    let (store, rest): (Store, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("undecodable store snapshot: {e}"))?;
    let mut writes = Writes::new();
    writes.put(layout::META_REVISION, layout::encode_i64(store.revision));
    if store.compact_revision > 0 {
        writes.put(layout::META_COMPACT, layout::encode_i64(store.compact_revision));
    }
    for (id, lease) in &store.leases {
        writes.put(layout::lease_key(*id), layout::encode_i64(lease.ttl));
    }
    // The retained events give the sub-revisions of their revisions' versions; versions older than the
    // events (compacted) get theirs in key order.
    let mut subs: BTreeMap<(Revision, Vec<u8>), EventsOfKey> = BTreeMap::new();
    let mut next_sub: BTreeMap<Revision, u32> = BTreeMap::new();
    for (revision, events) in store.events {
        next_sub.insert(revision, events.len() as u32);
        for (sub, event) in events.into_iter().enumerate() {
            subs.entry((revision, event.kv.key.clone()))
                .or_default()
                .push_back((sub as u32, event));
        }
    }
    for (key, versions) in store.keys {
        for version in versions {
            let main = match &version {
                Version::Live(kv) => kv.mod_revision,
                Version::Tombstone(at) => *at,
            };
            let sub = match subs.get_mut(&(main, key.clone())).and_then(VecDeque::pop_front) {
                Some((sub, _)) => sub,
                None => {
                    let next = next_sub.entry(main).or_insert(0);
                    *next += 1;
                    *next - 1
                }
            };
            let (entry, stored) = match version {
                Version::Live(kv) => (
                    IndexEntry {
                        tombstone: false,
                        size: u32::try_from(put_size(&kv.key, &kv.value)).unwrap_or(u32::MAX),
                        create_revision: kv.create_revision,
                        version: kv.version,
                        lease: kv.lease,
                    },
                    Stored::Put(kv),
                ),
                Version::Tombstone(_) => (
                    IndexEntry {
                        tombstone: true,
                        size: 16,
                        create_revision: 0,
                        version: 0,
                        lease: 0,
                    },
                    Stored::Delete(key.clone()),
                ),
            };
            writes.put(layout::index_key(&key, main, sub), entry.encode());
            writes.put(
                layout::history_key(main, sub),
                postcard::to_allocvec(&stored).map_err(|e| e.to_string())?,
            );
        }
    }
    // Events whose versions compaction dropped (those of the compact revision): history records only.
    for ((revision, key), left) in subs {
        for (sub, event) in left {
            let stored = match event.kind {
                EventKind::Put => Stored::Put(event.kv),
                EventKind::Delete => Stored::Delete(key.clone()),
            };
            writes.put(
                layout::history_key(revision, sub),
                postcard::to_allocvec(&stored).map_err(|e| e.to_string())?,
            );
        }
    }
    if !rest.is_empty() {
        writes.put(layout::META_ALARMS, rest.to_vec());
    }
    let space = MemoryKeySpace::new();
    space.write(&writes).map_err(|e| e.to_string())?;
    Ok(space)
}
