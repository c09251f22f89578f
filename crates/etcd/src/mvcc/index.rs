//! The in-memory key index, as etcd keeps it: for each key the revisions of its retained versions (16 bytes
//! each), enough to answer which version a read at any revision sees, its create revision and version, and
//! which lease the key is attached to now. Values live on disk, found by revision.

use super::types::{LeaseId, Revision};

/// The tombstone flag, in the top bit of [`Rev::sub`].
const TOMBSTONE: u32 = 1 << 31;

/// One retained version of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rev {
    pub(super) main: Revision,
    /// The sub-revision, and the tombstone flag in its top bit.
    sub: u32,
    /// What the version counts for in the store's size.
    pub(super) size: u32,
}

impl Rev {
    pub(super) fn new(main: Revision, sub: u32, tombstone: bool, size: u32) -> Self {
        Self {
            main,
            sub: (sub & !TOMBSTONE) | if tombstone { TOMBSTONE } else { 0 },
            size,
        }
    }

    pub(super) fn sub(&self) -> u32 {
        self.sub & !TOMBSTONE
    }

    pub(super) fn is_tombstone(&self) -> bool {
        self.sub & TOMBSTONE != 0
    }

    fn position(&self) -> (Revision, u32) {
        (self.main, self.sub())
    }
}

/// A key's retained versions, oldest first, and what reads of it need without the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeyIndex {
    revs: Vec<Rev>,
    /// Create revision and version of `revs[0]` (compaction may have removed the versions before it).
    first_create: Revision,
    first_version: i64,
    /// Create revision, version and lease of the newest version when it is live (zeros otherwise).
    create: Revision,
    version: i64,
    lease: LeaseId,
}

/// A version as a read sees it, without its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Visible {
    pub(super) main: Revision,
    pub(super) sub: u32,
    pub(super) create_revision: Revision,
    pub(super) version: i64,
}

impl KeyIndex {
    /// A key's index from its first retained version, whose create revision and version are given.
    pub(super) fn first(rev: Rev, create: Revision, version: i64, lease: LeaseId) -> Self {
        let mut index = Self {
            revs: vec![rev],
            first_create: create,
            first_version: version,
            create: 0,
            version: 0,
            lease: 0,
        };
        index.set_newest(create, version, lease);
        index
    }

    fn set_newest(&mut self, create: Revision, version: i64, lease: LeaseId) {
        let live = self.revs.last().is_some_and(|r| !r.is_tombstone());
        (self.create, self.version, self.lease) = if live { (create, version, lease) } else { (0, 0, 0) };
    }

    /// Appends a version read back from disk (opening the store), with the metadata its index entry holds.
    pub(super) fn push_loaded(&mut self, rev: Rev, create: Revision, version: i64, lease: LeaseId) {
        self.revs.push(rev);
        self.set_newest(create, version, lease);
    }

    /// The newest version, if it is live.
    pub(super) fn live(&self) -> Option<Visible> {
        let newest = self.revs.last().filter(|r| !r.is_tombstone())?;
        Some(Visible {
            main: newest.main,
            sub: newest.sub(),
            create_revision: self.create,
            version: self.version,
        })
    }

    /// The lease the live version is attached to (0: none, or not live).
    pub(super) fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Adds a put at `(main, sub)`; returns its create revision and version.
    pub(super) fn put(&mut self, main: Revision, sub: u32, size: u32, lease: LeaseId) -> (Revision, i64) {
        let (create, version) = match self.live() {
            Some(live) => (live.create_revision, live.version + 1),
            None => (main, 1),
        };
        self.revs.push(Rev::new(main, sub, false, size));
        self.set_newest(create, version, lease);
        (create, version)
    }

    /// Adds a tombstone at `(main, sub)`.
    pub(super) fn delete(&mut self, main: Revision, sub: u32, size: u32) {
        self.revs.push(Rev::new(main, sub, true, size));
        self.set_newest(0, 0, 0);
    }

    /// Create revision and version of the live version at `revs[i]`.
    fn meta_at(&self, i: usize) -> (Revision, i64) {
        if i + 1 == self.revs.len() {
            return (self.create, self.version);
        }
        let mut start = i;
        while start > 0 && !self.revs[start - 1].is_tombstone() {
            start -= 1;
        }
        if start == 0 {
            (self.first_create, self.first_version + i as i64)
        } else {
            (self.revs[start].main, (i - start) as i64 + 1)
        }
    }

    /// The version a read at revision `at` sees, if it is live.
    pub(super) fn visible_at(&self, at: Revision) -> Option<Visible> {
        let i = self.revs.partition_point(|r| r.main <= at).checked_sub(1)?;
        let rev = self.revs[i];
        if rev.is_tombstone() {
            return None;
        }
        let (create_revision, version) = self.meta_at(i);
        Some(Visible {
            main: rev.main,
            sub: rev.sub(),
            create_revision,
            version,
        })
    }

    /// Whether version `(main, sub)` is retained.
    pub(super) fn retains(&self, main: Revision, sub: u32) -> bool {
        self.revs
            .binary_search_by(|r| r.position().cmp(&(main, sub)))
            .is_ok()
    }

    /// The live version just before `(main, sub)`, if there is one (an event's previous value).
    pub(super) fn before(&self, main: Revision, sub: u32) -> Option<Rev> {
        let i = self.revs.partition_point(|r| r.position() < (main, sub));
        self.revs[..i].last().filter(|r| !r.is_tombstone()).copied()
    }

    /// Every retained version up to revision `at`, oldest first.
    pub(super) fn up_to(&self, at: Revision) -> &[Rev] {
        &self.revs[..self.revs.partition_point(|r| r.main <= at)]
    }

    /// The oldest retained revision.
    pub(super) fn oldest(&self) -> Option<Revision> {
        self.revs.first().map(|r| r.main)
    }

    /// What the key's versions count for in the store's size.
    pub(super) fn size(&self, key: &[u8]) -> usize {
        key.len() + self.revs.iter().map(|r| r.size as usize).sum::<usize>()
    }

    /// Forgets every version superseded at or before `at`: keeps the newest version at or before it (what a read
    /// at `at` sees) unless it is a tombstone, and every later one. Returns the size freed; an emptied index
    /// is removed by the caller.
    pub(super) fn compact(&mut self, at: Revision) -> usize {
        let visible = self.revs.partition_point(|r| r.main <= at);
        if visible == 0 {
            return 0;
        }
        let mut drop = visible - 1;
        if self.revs[drop].is_tombstone() {
            drop += 1;
        }
        if drop == 0 {
            return 0;
        }
        if drop < self.revs.len() && !self.revs[drop].is_tombstone() {
            (self.first_create, self.first_version) = self.meta_at(drop);
        }
        self.revs.drain(..drop).map(|r| r.size as usize).sum::<usize>()
    }

    /// Whether no version is retained.
    pub(super) fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_versions_and_compaction() {
        let mut key = KeyIndex::first(Rev::new(2, 0, false, 10), 2, 1, 0);
        assert_eq!(key.put(3, 0, 10, 7), (2, 2));
        key.delete(4, 1, 16);
        assert_eq!(key.live(), None);
        assert_eq!(key.put(6, 0, 10, 0), (6, 1));
        assert_eq!(
            key.visible_at(3).map(|v| (v.create_revision, v.version)),
            Some((2, 2))
        );
        assert_eq!(key.visible_at(5), None);
        assert_eq!(key.before(6, 0), None, "a tombstone came before");
        assert_eq!(key.before(3, 0).map(|r| r.main), Some(2));
        // Compacting at 3 keeps the version at 3 (what a read at 3 sees) and after.
        assert_eq!(key.compact(3), 10);
        assert_eq!(
            key.visible_at(3).map(|v| (v.create_revision, v.version)),
            Some((2, 2))
        );
        assert!(!key.retains(2, 0));
        assert!(key.retains(4, 1));
        // Compacting at 5 drops the tombstone too.
        assert_eq!(key.compact(5), 26);
        assert_eq!(key.oldest(), Some(6));
        assert_eq!(key.visible_at(9).map(|v| v.version), Some(1));
    }
}
