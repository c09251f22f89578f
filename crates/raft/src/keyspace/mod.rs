//! A group's own ordered key space in the node's storage: where an application whose state must not live in
//! memory keeps it ([`DiskBacked`](crate::DiskBacked) uses it).
//!
//! Every group hosted by a node gets one ([`GroupStorage::key_space`](crate::GroupStorage::key_space)): a range
//! of the node's RocksDB (column family `group_state`, keys prefixed by the group id), or a map in
//! [`MemoryStorage`](crate::MemoryStorage) for tests and simulations. Beside the application's records it keeps
//! the index of the last log entry whose writes it holds (the *applied mark*), written in the same atomic write
//! as those writes: after a crash the state and its mark agree, and the Raft log replays what comes after.
//!
//! Writes are not synced: the Raft log is the write-ahead log. A RocksDB WAL is durable as a prefix (a synced
//! write makes everything written before it durable too), so after a crash the key space holds the writes of
//! some prefix of the applied entries, with the mark of the last of them.
//!
//! `testing::check_key_space` (feature `testing`) is the conformance suite both
//! implementations pass.

mod memory;
mod rocks;

use std::collections::BTreeMap;
use std::io;

pub use memory::MemoryKeySpace;
pub use rocks::RocksKeySpace;

/// Writes of one log entry (or of one step of a snapshot install), applied atomically: key → new value, or
/// `None` to delete. Later writes to a key replace earlier ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Writes {
    /// No writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.changes.insert(key.into(), Some(value.into()));
    }

    /// Deletes `key` (nothing happens if it is absent).
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.changes.insert(key.into(), None);
    }

    /// What these writes say about `key`: `Some(Some(v))` set, `Some(None)` deleted, `None` untouched.
    pub fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.changes.get(key).map(|v| v.as_deref())
    }

    /// Whether there are no writes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The number of keys written or deleted.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Every change, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.changes.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    fn clear(&mut self) {
        self.changes.clear();
    }
}

/// One record of a key space.
pub type Record = (Vec<u8>, Vec<u8>);

/// Reading a key space.
pub trait KeyRead {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;

    /// Up to `limit` records with keys from `start` (included) to `end` (excluded; `None`: to the end), in key
    /// order. Page through a large range by starting the next call just after the last key returned.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> io::Result<Vec<Record>>;
}

/// A group's key space (see the module's documentation). Implementations must pass
/// `testing::check_key_space` (feature `testing`).
pub trait KeySpace: KeyRead + Send + Sync + std::fmt::Debug + 'static {
    /// The applied mark: the log index of the last entry whose writes this key space holds.
    fn applied(&self) -> io::Result<Option<u64>>;

    /// Applies `writes` and sets the applied mark to `applied`, in one atomic write (not synced).
    fn commit(&self, writes: &Writes, applied: u64) -> io::Result<()>;

    /// Applies `writes` without touching the applied mark (the middle steps of a snapshot install), not synced.
    fn write(&self, writes: &Writes) -> io::Result<()>;

    /// Removes every record and the applied mark, in one atomic write: the first step of replacing the state
    /// with a snapshot's. Until the mark is set again the key space holds no state (a restart restores the
    /// snapshot again).
    fn clear(&self) -> io::Result<()>;

    /// A point-in-time view of the records and the applied mark, unaffected by later writes. Taking it is
    /// cheap (a RocksDB snapshot); reading it may take long while writes go on.
    fn freeze(&self) -> io::Result<Box<dyn FrozenKeySpace>>;
}

/// A point-in-time view of a key space ([`KeySpace::freeze`]).
pub trait FrozenKeySpace: Send {
    /// The applied mark of the view.
    fn applied(&self) -> Option<u64>;

    /// Calls `visit` with every record of the view, in key order; stops at the first error.
    fn for_each(&self, visit: &mut Visitor<'_>) -> io::Result<()>;
}

/// What [`FrozenKeySpace::for_each`] calls with each key and value.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'a;

/// The reads and writes of one entry being applied: reads see the entry's own writes first, then the key space.
pub struct StateTxn<'a> {
    space: &'a dyn KeySpace,
    writes: &'a mut Writes,
    /// The first read error: it stops the group once the entry's apply returns.
    failed: &'a parking_lot::Mutex<Option<io::Error>>,
}

impl std::fmt::Debug for StateTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTxn")
            .field("writes", &self.writes.len())
            .finish_non_exhaustive()
    }
}

impl<'a> StateTxn<'a> {
    pub(crate) fn new(
        space: &'a dyn KeySpace,
        writes: &'a mut Writes,
        failed: &'a parking_lot::Mutex<Option<io::Error>>,
    ) -> Self {
        writes.clear();
        Self {
            space,
            writes,
            failed,
        }
    }

    fn note<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            let mut failed = self.failed.lock();
            if failed.is_none() {
                *failed = Some(io::Error::new(e.kind(), e.to_string()));
            }
        }
        result
    }

    /// Sets `key` to `value` (visible to this entry's later reads; stored when the entry's apply ends).
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.put(key, value);
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.delete(key);
    }
}

impl KeyRead for StateTxn<'_> {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(value) => Ok(value.map(<[u8]>::to_vec)),
            None => self.note(self.space.get(key)),
        }
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> io::Result<Vec<Record>> {
        // The stored records, overlaid with this entry's writes. Deletions may hide stored records, so read
        // enough stored ones to still fill `limit` after them.
        let in_range = |key: &[u8]| key >= start && end.is_none_or(|end| key < end);
        let hidden = self.writes.iter().filter(|(k, _)| in_range(k)).count();
        let stored = self.note(self.space.scan(start, end, limit.saturating_add(hidden)))?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        // When the stored page was cut short, keys past its last one are not known to be absent: an overlaid
        // put there must not pull in a key beyond the stored records that would come before it.
        let complete = merged.len() < limit.saturating_add(hidden);
        let last_stored = merged.keys().next_back().cloned();
        for (key, value) in self.writes.iter().filter(|(k, _)| in_range(k)) {
            match value {
                Some(value) => {
                    if complete || last_stored.as_deref().is_some_and(|last| key <= last) {
                        merged.insert(key.to_vec(), value.to_vec());
                    }
                }
                None => {
                    merged.remove(key);
                }
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

#[cfg(any(test, feature = "testing"))]
pub(crate) mod conformance;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_memory_key_space_conforms() {
        let storage = crate::MemoryStorage::new();
        conformance::check_key_space(|group| storage.key_space(group)).unwrap();
    }

    #[test]
    fn the_rocksdb_key_space_conforms_and_keeps_its_state_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::open_db(dir.path()).unwrap();
            conformance::check_key_space(|group| RocksKeySpace::new(db.clone(), group)).unwrap();
            let mut writes = Writes::new();
            writes.put("k", "v");
            RocksKeySpace::new(db.clone(), 9).commit(&writes, 42).unwrap();
        }
        let db = crate::open_db(dir.path()).unwrap();
        let space = RocksKeySpace::new(db.clone(), 9);
        assert_eq!(space.applied().unwrap(), Some(42));
        assert_eq!(space.get(b"k").unwrap(), Some(b"v".to_vec()));
        // The key space holds the database weakly: once the node closes it, calls fail instead of keeping it open.
        drop(db);
        let err = space.get(b"k").unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
    }

    /// A step of a transaction: a put, a delete, or a scan to compare with the model.
    #[derive(Clone, Debug)]
    enum Step {
        Put(u8, u8),
        Delete(u8),
        Scan(u8, Option<u8>, usize),
        Get(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..16, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
            (0u8..16).prop_map(Step::Delete),
            (0u8..16, proptest::option::of(0u8..17), 0usize..8).prop_map(|(s, e, l)| Step::Scan(s, e, l)),
            (0u8..16).prop_map(Step::Get),
        ]
    }

    proptest! {
        /// A transaction's reads see its own writes over the stored records exactly as one map would.
        #[test]
        fn a_transaction_reads_its_own_writes(
            stored in proptest::collection::btree_map(0u8..16, any::<u8>(), 0..12),
            steps in proptest::collection::vec(step(), 0..40),
        ) {
            let space = MemoryKeySpace::new();
            let mut initial = Writes::new();
            for (k, v) in &stored {
                initial.put(vec![*k], vec![*v]);
            }
            space.commit(&initial, 1).unwrap();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> =
                stored.iter().map(|(k, v)| (vec![*k], vec![*v])).collect();
            let mut writes = Writes::new();
            let failed = parking_lot::Mutex::new(None);
            let mut txn = StateTxn::new(&space, &mut writes, &failed);
            for step in steps {
                match step {
                    Step::Put(k, v) => {
                        txn.put(vec![k], vec![v]);
                        model.insert(vec![k], vec![v]);
                    }
                    Step::Delete(k) => {
                        txn.delete(vec![k]);
                        model.remove(&vec![k]);
                    }
                    Step::Get(k) => prop_assert_eq!(txn.get(&[k]).unwrap(), model.get(&vec![k]).cloned()),
                    Step::Scan(start, end, limit) => {
                        let end = end.map(|e| vec![e]);
                        let got = txn.scan(&[start], end.as_deref(), limit).unwrap();
                        let want: Vec<Record> = model
                            .iter()
                            .filter(|(k, _)| k.as_slice() >= [start].as_slice()
                                && end.as_ref().is_none_or(|e| *k < e))
                            .take(limit)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                }
            }
            space.commit(&writes, 2).unwrap();
            let stored_now: BTreeMap<Vec<u8>, Vec<u8>> = space.scan(b"", None, usize::MAX).unwrap().into_iter().collect();
            prop_assert_eq!(stored_now, model);
        }
    }

    #[test]
    fn a_read_error_is_kept_for_the_commit() {
        #[derive(Debug)]
        struct Broken;
        impl KeyRead for Broken {
            fn get(&self, _key: &[u8]) -> io::Result<Option<Vec<u8>>> {
                Err(io::Error::other("disk on fire"))
            }
            fn scan(&self, _s: &[u8], _e: Option<&[u8]>, _l: usize) -> io::Result<Vec<Record>> {
                Err(io::Error::other("disk on fire"))
            }
        }
        impl KeySpace for Broken {
            fn applied(&self) -> io::Result<Option<u64>> {
                Ok(None)
            }
            fn commit(&self, _w: &Writes, _a: u64) -> io::Result<()> {
                Ok(())
            }
            fn write(&self, _w: &Writes) -> io::Result<()> {
                Ok(())
            }
            fn clear(&self) -> io::Result<()> {
                Ok(())
            }
            fn freeze(&self) -> io::Result<Box<dyn FrozenKeySpace>> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let space: Arc<dyn KeySpace> = Arc::new(Broken);
        let mut writes = Writes::new();
        let failed = parking_lot::Mutex::new(None);
        let txn = StateTxn::new(&*space, &mut writes, &failed);
        assert!(txn.get(b"x").is_err());
        assert!(txn.scan(b"", None, 3).is_err());
        assert!(
            failed
                .lock()
                .as_ref()
                .unwrap()
                .to_string()
                .contains("disk on fire")
        );
    }
}
