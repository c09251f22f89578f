//! Where the MVCC store keeps its state in its group's key space, record by record.
//!
//! - `r` + revision (`u64` big-endian) + sub-revision (`u32` big-endian) → one version ([`Stored`], postcard):
//!   a key's value with its metadata, or the tombstone a delete left. etcd's `key` bucket: the history, in
//!   revision order, so a watcher replays it from any retained revision with one scan.
//! - `k` + key + revision + sub-revision → what the in-memory key index needs of that version ([`IndexEntry`]):
//!   read alone when the store opens, so rebuilding the index reads neither values nor the history's order.
//! - `l` + lease id (big-endian, sign bit flipped) → the lease's TTL.
//! - `m` + a name → the store's revision, its compact revision, how far the compaction of the history on disk
//!   has got, and the alarms.
//!
//! Revisions order as big-endian numbers, so a key space's order is revision order within `r` and, for one key,
//! within `k`.

use serde::{Deserialize, Serialize};

use super::types::{KeyValue, LeaseId, Revision};

/// Versions by revision.
pub(super) const HISTORY: u8 = b'r';
/// The key index's entries, by key then revision.
pub(super) const INDEX: u8 = b'k';
/// Leases by id.
pub(super) const LEASES: u8 = b'l';

/// The store's current revision (`i64`, little-endian; absent: 1).
pub(super) const META_REVISION: &[u8] = b"mrevision";
/// The compact revision (absent: 0).
pub(super) const META_COMPACT: &[u8] = b"mcompact";
/// Where the compaction of the history on disk goes on (a revision and sub-revision; absent: nothing to do).
pub(super) const META_COMPACTING: &[u8] = b"mcompacting";
/// The raised alarms (postcard), kept by the coordination store beside the key space.
pub(crate) const META_ALARMS: &[u8] = b"malarms";

const REV_LEN: usize = 12;

fn rev_bytes(main: Revision, sub: u32) -> [u8; REV_LEN] {
    let mut out = [0u8; REV_LEN];
    out[..8].copy_from_slice(&(main as u64).to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

fn parse_rev(raw: &[u8]) -> Option<(Revision, u32)> {
    let main = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
    let sub = u32::from_be_bytes(raw.get(8..REV_LEN)?.try_into().ok()?);
    Some((main as Revision, sub))
}

/// The record of version `(main, sub)` in the history.
pub(super) fn history_key(main: Revision, sub: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + REV_LEN);
    out.push(HISTORY);
    out.extend_from_slice(&rev_bytes(main, sub));
    out
}

/// The revision of a history record's key.
pub(super) fn parse_history_key(raw: &[u8]) -> Option<(Revision, u32)> {
    match raw {
        [HISTORY, rev @ ..] if rev.len() == REV_LEN => parse_rev(rev),
        _ => None,
    }
}

/// The index entry of `key` at `(main, sub)`.
pub(super) fn index_key(key: &[u8], main: Revision, sub: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len() + REV_LEN);
    out.push(INDEX);
    out.extend_from_slice(key);
    out.extend_from_slice(&rev_bytes(main, sub));
    out
}

/// The key and revision of an index entry's key.
pub(super) fn parse_index_key(raw: &[u8]) -> Option<(&[u8], Revision, u32)> {
    let rest = raw.strip_prefix(&[INDEX])?;
    let split = rest.len().checked_sub(REV_LEN)?;
    let (key, rev) = rest.split_at(split);
    let (main, sub) = parse_rev(rev)?;
    Some((key, main, sub))
}

/// A lease's record.
pub(super) fn lease_key(id: LeaseId) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(LEASES);
    out.extend_from_slice(&((id as u64) ^ (1 << 63)).to_be_bytes());
    out
}

/// The lease id of a lease record's key.
pub(super) fn parse_lease_key(raw: &[u8]) -> Option<LeaseId> {
    match raw {
        [LEASES, id @ ..] => Some((u64::from_be_bytes(id.try_into().ok()?) ^ (1 << 63)) as LeaseId),
        _ => None,
    }
}

/// The first key after every record starting with `tag`.
pub(super) fn after(tag: u8) -> Vec<u8> {
    vec![tag + 1]
}

/// One version of a key in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Stored {
    /// A put: the key's value and metadata.
    Put(KeyValue),
    /// A delete: the key.
    Delete(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Stored {
    pub(super) fn key(&self) -> &[u8] {
        match self {
            Stored::Put(kv) => &kv.key,
            Stored::Delete(key) => key,
        }
    }
}

/// What the key index keeps of one version: the index entry's value, 29 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IndexEntry {
    pub(super) tombstone: bool,
    /// What the version counts for in the store's size.
    pub(super) size: u32,
    pub(super) create_revision: Revision,
    pub(super) version: i64,
    pub(super) lease: LeaseId,
}

const ENTRY_LEN: usize = 29;

impl IndexEntry {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_LEN);
        out.push(u8::from(self.tombstone));
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        out
    }

    pub(super) fn decode(raw: &[u8]) -> Option<Self> {
        if raw.len() != ENTRY_LEN || raw[0] > 1 {
            return None;
        }
        let i64_at = |at: usize| raw[at..at + 8].try_into().ok().map(i64::from_le_bytes);
        Some(Self {
            tombstone: raw[0] == 1,
            size: u32::from_le_bytes(raw[1..5].try_into().ok()?),
            create_revision: i64_at(5)?,
            version: i64_at(13)?,
            lease: i64_at(21)?,
        })
    }
}

/// An `i64` meta value.
pub(super) fn encode_i64(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

pub(super) fn decode_i64(raw: &[u8]) -> Option<i64> {
    raw.try_into().ok().map(i64::from_le_bytes)
}

/// A position in the history: a revision and sub-revision.
pub(super) fn encode_position(main: Revision, sub: u32) -> Vec<u8> {
    rev_bytes(main, sub).to_vec()
}

pub(super) fn decode_position(raw: &[u8]) -> Option<(Revision, u32)> {
    (raw.len() == REV_LEN).then(|| parse_rev(raw)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_order_by_revision() {
        assert_eq!(parse_history_key(&history_key(7, 3)), Some((7, 3)));
        assert!(history_key(7, 3) < history_key(7, 4));
        assert!(history_key(7, u32::MAX) < history_key(8, 0));
        assert_eq!(
            parse_index_key(&index_key(b"a/b", 9, 1)),
            Some((&b"a/b"[..], 9, 1))
        );
        assert!(index_key(b"a", 2, 0) < index_key(b"a", 10, 0));
        for id in [i64::MIN, -1, 0, 1, i64::MAX] {
            assert_eq!(parse_lease_key(&lease_key(id)), Some(id));
        }
        assert!(lease_key(-1) < lease_key(1));
        let entry = IndexEntry {
            tombstone: false,
            size: 300,
            create_revision: 4,
            version: 2,
            lease: -5,
        };
        assert_eq!(IndexEntry::decode(&entry.encode()), Some(entry));
        assert_eq!(IndexEntry::decode(&[2; ENTRY_LEN]), None);
    }
}
