//! The Raft log and vote of every group, in one RocksDB instance.
//!
//! Layout (column families):
//! - `raft_log`: `group (u64 BE) ++ index (u64 BE)` → the entry (postcard).
//! - `raft_meta`: `group ++ tag` → vote, committed log id, last purged log id.
//!
//! **Durability.** `append` reports the entries flushed, and `save_vote` returns, only after a RocksDB write with
//! `sync = true` has returned: the WAL holding them is fsync'd. Acknowledging earlier lets a node that crashes
//! forget entries a leader counted as replicated, or vote twice in one term. The blocking write runs on tokio's
//! blocking pool so the runtime keeps serving other groups while the disk syncs;
//! RocksDB merges concurrent synced writes from several groups into one fsync, and the store batches concurrent
//! writes into one entry (group commit).

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError by value"
)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader};
use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Entry, GroupId, LogId, StorageError, TypeConfig, Vote};

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_META: &str = "raft_meta";
pub(crate) const CF_SNAPSHOT: &str = "raft_snapshot";

const TAG_VOTE: &[u8] = b"vote";
const TAG_COMMITTED: &[u8] = b"committed";
const TAG_PURGED: &[u8] = b"purged";

/// The key of one log entry: big-endian, so RocksDB's byte order is (group, index) order.
fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

pub(crate) fn meta_key(group: GroupId, tag: &[u8]) -> Vec<u8> {
    let mut key = group.to_be_bytes().to_vec();
    key.extend_from_slice(tag);
    key
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    err: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(err.to_string()))
}

/// Opens (or creates) the node's RocksDB with the column families Trestle uses.
pub fn open_db(path: &std::path::Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // One WAL for every column family: a synced write covers the log, the vote and the snapshots alike.
    opts.set_atomic_flush(true);
    let db = DB::open_cf(&opts, path, [CF_LOG, CF_META, CF_SNAPSHOT])?;
    Ok(Arc::new(db))
}

/// The Raft log storage of one group. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    group: GroupId,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// The log store of `group` in `db`.
    pub fn new(db: Arc<DB>, group: GroupId) -> Self {
        Self { db, group }
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or_else(|| {
            StorageError::from_io_error(
                ErrorSubject::Store,
                ErrorVerb::Read,
                std::io::Error::other(format!("column family {name} missing")),
            )
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, tag: &[u8]) -> Result<Option<T>, StorageError> {
        let cf = self.cf(CF_META)?;
        let raw = self
            .db
            .get_cf(&cf, meta_key(self.group, tag))
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        raw.map(|bytes| decode(&bytes).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)))
            .transpose()
    }

    async fn put_meta<T: Serialize>(&self, tag: &[u8], value: &T, sync: bool) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let db = self.db.clone();
        let key = meta_key(self.group, tag);
        if !sync {
            // An unsynced write only reaches the memtable and the OS page cache: too short to be worth a hop to
            // the blocking pool (openraft saves the committed index this way on every commit).
            let cf = self.cf(CF_META)?;
            return db
                .put_cf_opt(&cf, key, bytes, &WriteOptions::default())
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e));
        }
        spawn_write(move || {
            let cf = db.cf_handle(CF_META).ok_or_else(|| rocksdb_missing_cf(CF_META))?;
            db.put_cf_opt(&cf, key, bytes, &synced())
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(|e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let cf = self.cf(CF_LOG)?;
        let upper = log_key(self.group, u64::MAX);
        let mut iter = self
            .db
            .iterator_cf(&cf, IteratorMode::From(&upper, Direction::Reverse));
        match iter.next() {
            Some(Ok((key, value))) if key.starts_with(&self.group.to_be_bytes()) => decode(&value)
                .map(Some)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
            Some(Err(e)) => Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
            _ => Ok(None),
        }
    }

    /// Deletes this group's entries with index in `[from, to)`, synced.
    async fn delete_range(&self, from: u64, to: u64) -> Result<(), StorageError> {
        let db = self.db.clone();
        let (start, end) = (log_key(self.group, from), log_key(self.group, to));
        spawn_write(move || {
            let cf = db.cf_handle(CF_LOG).ok_or_else(|| rocksdb_missing_cf(CF_LOG))?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(&cf, start, end);
            db.write_opt(batch, &synced())
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(|e| StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

fn rocksdb_missing_cf(name: &str) -> std::io::Error {
    std::io::Error::other(format!("column family {name} missing"))
}

/// Runs a blocking RocksDB write on tokio's blocking pool, so the runtime keeps serving while the disk syncs.
/// (Running it in place with `block_in_place` was tried: no faster at one client, as the worker hand-off costs
/// what the pool hand-off does.)
async fn spawn_write<F>(write: F) -> Result<(), std::io::Error>
where
    F: FnOnce() -> Result<(), std::io::Error> + Send + 'static,
{
    tokio::task::spawn_blocking(write)
        .await
        .map_err(std::io::Error::other)?
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.cf(CF_LOG)?;
        let mut entries = Vec::new();
        let iter = self.db.iterator_cf(
            &cf,
            IteratorMode::From(&log_key(self.group, start), Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if !key.starts_with(&self.group.to_be_bytes()) || key.len() != 16 {
                break;
            }
            let mut index = [0u8; 8];
            index.copy_from_slice(&key[8..]);
            if !range.contains(&u64::from_be_bytes(index)) {
                break;
            }
            entries.push(decode(&value).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(TAG_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(TAG_VOTE, vote, true).await.map_err(|e| {
            StorageError::from_io_error(
                ErrorSubject::Vote,
                ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(TAG_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: a committed index lost in a crash is learned again from the leader, and every entry below
        // it is durable already.
        self.put_meta(TAG_COMMITTED, &committed, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(TAG_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        {
            let cf = self.cf(CF_LOG)?;
            for entry in entries {
                let bytes = encode(&entry).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
                batch.put_cf(&cf, log_key(self.group, entry.log_id.index), bytes);
            }
        }
        let db = self.db.clone();
        // The callback fires only once the synced write has returned: the entries are on disk.
        let result = spawn_write(move || {
            db.write_opt(batch, &synced())
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(e));
                Err(StorageError::from_io_error(
                    ErrorSubject::Logs,
                    ErrorVerb::Write,
                    std::io::Error::other(msg),
                ))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.delete_range(log_id.index, u64::MAX).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two writes leaves extra entries, never a hole.
        self.put_meta(TAG_PURGED, &log_id, true).await?;
        self.delete_range(0, log_id.index + 1).await
    }
}

#[allow(dead_code)]
fn _assert_any_error(e: AnyError) -> AnyError {
    e
}
