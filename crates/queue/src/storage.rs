//! The ordered key-value store a partition keeps its state in, and an in-memory implementation.
//!
//! The Raft host gives each group an ordered key space (in RocksDB); [`MemStorage`] is a `BTreeMap` for tests and
//! for hosts that keep state in memory. A partition reads with [`Storage::get`] and [`Storage::scan_prefix`]
//! and writes each command's changes as one [`WriteBatch`].

use std::collections::BTreeMap;

use crate::error::StorageError;

/// Key-value pairs, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered key-value store.
///
/// Implementors must guarantee:
/// - [`Storage::write`] applies a whole batch or none of it, in order (a later put or delete of the same key
///   wins), and a read after it sees it;
/// - [`Storage::scan_prefix`] returns every pair whose key starts with the prefix, in ascending key order;
/// - an error is returned, never a panic. A partition whose write fails refuses every later command (its
///   in-memory indexes may no longer match the store); the host should stop the replica and restore it.
pub trait Storage {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StorageError>;
    /// Applies `batch` atomically.
    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError>;
}

/// One change of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key (absent is fine).
    Delete(Vec<u8>),
}

/// Changes applied together by [`Storage::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put(key, value));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(WriteOp::Delete(key));
    }

    /// Whether the batch has no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// The changes, by value.
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }
}

/// A [`Storage`] in a `BTreeMap`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStorage {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every pair, in key order.
    pub fn entries(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.map
    }
}

impl Storage for MemStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map.get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StorageError> {
        Ok(self
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => {
                    self.map.insert(k, v);
                }
                WriteOp::Delete(k) => {
                    self.map.remove(&k);
                }
            }
        }
        Ok(())
    }
}

/// No storage: a partition between two commands of a host that attaches a storage per command (see
/// [`crate::Partition::with_storage`]). Every read and write fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Detached;

impl Storage for Detached {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Err(detached())
    }

    fn scan_prefix(&self, _prefix: &[u8]) -> Result<Pairs, StorageError> {
        Err(detached())
    }

    fn write(&mut self, _batch: WriteBatch) -> Result<(), StorageError> {
        Err(detached())
    }
}

fn detached() -> StorageError {
    StorageError("the partition is detached from its storage".to_owned())
}

/// The first key after every key that starts with `prefix` (`None` when there is none: the prefix is empty or
/// all `0xff`): the exclusive end of a range scan standing for a prefix scan.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A conformance check any [`Storage`] runs in one line (`storage::check_conformance(MyStore::new())`): puts,
/// overwrites, deletes, batch order, prefix scans and their order. Panics with what failed.
pub fn check_conformance<S: Storage>(mut store: S) {
    let mut batch = WriteBatch::default();
    batch.put(b"a/2".to_vec(), b"x".to_vec());
    batch.put(b"a/1".to_vec(), b"y".to_vec());
    batch.put(b"b/1".to_vec(), b"z".to_vec());
    batch.put(b"a/3".to_vec(), b"w".to_vec());
    batch.delete(b"a/3".to_vec());
    batch.put(b"a/2".to_vec(), b"v".to_vec());
    store.write(batch).expect("write");
    assert_eq!(
        store.get(b"a/2").expect("get"),
        Some(b"v".to_vec()),
        "a later put wins"
    );
    assert_eq!(store.get(b"a/3").expect("get"), None, "a later delete wins");
    assert_eq!(store.get(b"c").expect("get"), None, "absent key");
    let scanned = store.scan_prefix(b"a/").expect("scan");
    assert_eq!(
        scanned,
        vec![(b"a/1".to_vec(), b"y".to_vec()), (b"a/2".to_vec(), b"v".to_vec())],
        "a prefix scan is complete and ordered"
    );
    assert_eq!(
        store.scan_prefix(b"").expect("scan").len(),
        3,
        "the empty prefix is everything"
    );
    let mut batch = WriteBatch::default();
    batch.delete(b"a/1".to_vec());
    batch.delete(b"nothing".to_vec());
    store.write(batch).expect("write");
    assert_eq!(store.scan_prefix(b"a").expect("scan").len(), 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_storage_conforms() {
        check_conformance(MemStorage::new());
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"m"), Some(b"n".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
