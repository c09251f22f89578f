//! The Raft log and vote of every group, in one RocksDB instance.
//!
//! Layout (column families):
//! - `raft_log`: `group (u64 BE) ++ index (u64 BE)` → the entry (postcard).
//! - `raft_meta`: `group ++ tag` → vote, committed log id, last purged log id.
//!
//! **Durability.** openraft counts an entry as stored only once `append`'s callback reports it flushed, and a vote
//! once `save_vote` returns. `append` writes the entries to RocksDB at once, unsynced (so they are readable, and
//! in the WAL in order behind everything written before), and hands the callback to the node's [`WalSync`]
//! thread, which fsyncs the WAL and then reports every append it covered: one fsync for all the appends of every
//! group that arrived while the previous one ran (group commit). So the leader's fsync runs while its entries
//! are already on their way to the followers, instead of before. `save_vote`, `truncate_after` and `purge` are
//! synced writes: a vote must be on disk before it is answered.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, mpsc};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Entry, GroupId, LogId, TypeConfig, Vote};

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_META: &str = "raft_meta";
pub(crate) const CF_SNAPSHOT: &str = "raft_snapshot";
/// Every group's key space (see `keyspace`).
pub(crate) const CF_STATE: &str = "group_state";

pub(crate) const TAG_VOTE: &[u8] = b"vote";
pub(crate) const TAG_COMMITTED: &[u8] = b"committed";
pub(crate) const TAG_PURGED: &[u8] = b"purged";

/// The key of one log entry: big-endian, so RocksDB's byte order is (group, index) order.
pub(crate) fn log_key(group: GroupId, index: u64) -> [u8; 16] {
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

pub(crate) const NODE_ID_KEY: &[u8] = b"node/id";

/// The node's id as its data directory records it; `None` in a new directory (or one written by a version that
/// did not record it, which derived the id from the peer URL as founders still do).
pub(crate) fn recorded_node_id(db: &DB) -> io::Result<Option<u64>> {
    let cf = db.cf_handle(CF_META).ok_or_else(|| rocksdb_missing_cf(CF_META))?;
    let Some(raw) = db
        .get_cf(&cf, NODE_ID_KEY)
        .map_err(|e| io_err("reading the node id", e))?
    else {
        return Ok(None);
    };
    let bytes: [u8; 8] = raw.as_slice().try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the recorded node id has {} bytes, not 8", raw.len()),
        )
    })?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

/// Whether the database holds any group's Raft log or vote: a directory that does but records no id was written
/// by a version that derived the id from the peer URL.
pub(crate) fn holds_raft_state(db: &DB) -> io::Result<bool> {
    for name in [CF_META, CF_LOG] {
        let cf = db.cf_handle(name).ok_or_else(|| rocksdb_missing_cf(name))?;
        if let Some(first) = db.iterator_cf(&cf, IteratorMode::Start).next() {
            first.map_err(|e| io_err("reading the raft state", e))?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Records the node's id in its data directory, with a synced write.
pub(crate) fn record_node_id(db: &DB, id: u64) -> io::Result<()> {
    let cf = db.cf_handle(CF_META).ok_or_else(|| rocksdb_missing_cf(CF_META))?;
    db.put_cf_opt(&cf, NODE_ID_KEY, id.to_be_bytes(), &synced())
        .map_err(|e| io_err("recording the node id", e))
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

fn io_err(context: &str, err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {err}"))
}

/// Opens (or creates) the node's RocksDB with the column families Trestle uses.
pub fn open_db(path: &std::path::Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // One WAL for every column family: a synced write covers the log, the vote and the snapshots alike.
    opts.set_atomic_flush(true);
    // A record found damaged in the WAL fails the open, unless it is the last one and incomplete (a write a crash
    // cut short, which was never synced, so never acknowledged). RocksDB's default (point-in-time recovery) would
    // instead replay up to the damage and drop the rest silently: synced, acknowledged entries and votes, after
    // which the member could vote for a log that lacks what it promised to keep.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    // A WAL file that was synced and closed, then lost or cut short, fails the open too (RocksDB records closed
    // WALs' sizes in its manifest; the live one is covered by the WAL witness, see `integrity`).
    opts.set_track_and_verify_wals_in_manifest(true);
    opts.set_paranoid_checks(true);
    let db = DB::open_cf(&opts, path, [CF_LOG, CF_META, CF_SNAPSHOT, CF_STATE])?;
    Ok(Arc::new(db))
}

/// The WAL syncer of one database: a thread that fsyncs RocksDB's write-ahead log for the appends of every group
/// and reports them flushed. Appends that arrive while a sync runs share the next one. Cheap to clone; the
/// thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct WalSync {
    requests: mpsc::Sender<IOFlushed<TypeConfig>>,
    /// Disconnected when the thread has ended (its witness written).
    ended: Arc<parking_lot::Mutex<mpsc::Receiver<()>>>,
}

impl Debug for WalSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalSync").finish_non_exhaustive()
    }
}

impl WalSync {
    /// Starts the syncer of `db`. It holds the database only while it syncs, so dropping the last other handle
    /// closes the database.
    ///
    /// It also keeps the database's WAL witness (see [`verify_storage`](crate::verify_storage)): the sequence
    /// number each sync covered, written to its file at most every
    /// [`WITNESS_INTERVAL`](crate::WITNESS_INTERVAL) and when the thread ends.
    pub fn start(db: Arc<DB>) -> io::Result<Self> {
        let (requests, pending) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let witnessed = crate::integrity::read_witness(db.path())
            .ok()
            .flatten()
            .unwrap_or(0);
        let mut witness = crate::integrity::WitnessWriter::new(db.path(), witnessed);
        let db = Arc::downgrade(&db);
        let (alive, ended) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("trestle-wal-sync".into())
            .spawn(move || {
                let _alive = alive;
                loop {
                    let first = match witness.due_in(std::time::Instant::now()) {
                        None => match pending.recv() {
                            Ok(first) => first,
                            Err(mpsc::RecvError) => break,
                        },
                        Some(wait) => match pending.recv_timeout(wait) {
                            Ok(first) => first,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                witness.maybe_write(std::time::Instant::now(), false);
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        },
                    };
                    let mut waiting = vec![first];
                    waiting.extend(pending.try_iter());
                    let result = match db.upgrade() {
                        Some(db) => {
                            // Everything written before the sync starts is covered by it.
                            let sequence = db.latest_sequence_number();
                            let result = db.flush_wal(true).map_err(|e| e.to_string());
                            if result.is_ok() {
                                witness.synced(sequence);
                            }
                            result
                        }
                        None => Err("the database is closed".to_string()),
                    };
                    metrics::counter!("trestle_raft_wal_syncs_total").increment(1);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "syncing the Raft log's WAL failed");
                    }
                    for callback in waiting {
                        callback.io_completed(result.clone().map_err(|e| io_err("syncing the Raft log", e)));
                    }
                    witness.maybe_write(std::time::Instant::now(), false);
                }
                // Dropping the witness writes what is still due.
                drop(witness);
            })?;
        Ok(Self {
            requests,
            ended: Arc::new(parking_lot::Mutex::new(ended)),
        })
    }

    /// Drops this handle and waits up to `timeout` for the thread to end, which it does once no other handle
    /// is left (after its last sync and the witness's last write). Returns whether it ended.
    pub(crate) async fn stop(self, timeout: std::time::Duration) -> bool {
        let Self { requests, ended } = self;
        drop(requests);
        tokio::task::spawn_blocking(move || {
            matches!(
                ended.lock().recv_timeout(timeout),
                Err(mpsc::RecvTimeoutError::Disconnected)
            )
        })
        .await
        .unwrap_or(false)
    }

    /// Reports `callback` once everything written to the database before this call is on disk.
    fn flushed(&self, callback: IOFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(callback)) = self.requests.send(callback) {
            // The thread is gone (only at exit: it does not panic): the entries are not known to be on disk, so
            // openraft is told so and stops the group rather than count them.
            callback.io_completed(Err(io::Error::other("the WAL sync thread has stopped")));
        }
    }
}

/// The Raft log storage of one group. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    wal: WalSync,
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
    /// The log store of `group` in `db`, whose appends `wal` syncs (one [`WalSync`] per database serves every
    /// group).
    pub fn new(db: Arc<DB>, wal: WalSync, group: GroupId) -> Self {
        Self { db, wal, group }
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, io::Error> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| io::Error::other(format!("column family {name} missing")))
    }

    fn get_meta<T: DeserializeOwned>(&self, tag: &[u8]) -> Result<Option<T>, io::Error> {
        let cf = self.cf(CF_META)?;
        let raw = self
            .db
            .get_cf(&cf, meta_key(self.group, tag))
            .map_err(|e| io_err("reading raft metadata", e))?;
        raw.map(|bytes| decode(&bytes).map_err(|e| io_err("decoding raft metadata", e)))
            .transpose()
    }

    async fn put_meta<T: Serialize>(&self, tag: &[u8], value: &T, sync: bool) -> Result<(), io::Error> {
        let bytes = encode(value).map_err(|e| io_err("encoding raft metadata", e))?;
        let db = self.db.clone();
        let key = meta_key(self.group, tag);
        if !sync {
            // An unsynced write only reaches the memtable and the OS page cache: too short to be worth a hop to
            // the blocking pool (openraft saves the committed index this way on every commit).
            let cf = self.cf(CF_META)?;
            return db
                .put_cf_opt(&cf, key, bytes, &WriteOptions::default())
                .map_err(|e| io_err("writing raft metadata", e));
        }
        spawn_write(move || {
            let cf = db.cf_handle(CF_META).ok_or_else(|| rocksdb_missing_cf(CF_META))?;
            db.put_cf_opt(&cf, key, bytes, &synced())
                .map_err(|e| io_err("writing raft metadata", e))
        })
        .await
    }

    fn last_entry(&self) -> Result<Option<Entry>, io::Error> {
        let cf = self.cf(CF_LOG)?;
        let upper = log_key(self.group, u64::MAX);
        let mut iter = self
            .db
            .iterator_cf(&cf, IteratorMode::From(&upper, Direction::Reverse));
        match iter.next() {
            Some(Ok((key, value))) if key.starts_with(&self.group.to_be_bytes()) => decode(&value)
                .map(Some)
                .map_err(|e| io_err("decoding the last log entry", e)),
            Some(Err(e)) => Err(io_err("reading the last log entry", e)),
            _ => Ok(None),
        }
    }

    /// Deletes this group's entries with index in `[from, to)`, synced.
    async fn delete_range(&self, from: u64, to: u64) -> Result<(), io::Error> {
        let db = self.db.clone();
        let (start, end) = (log_key(self.group, from), log_key(self.group, to));
        spawn_write(move || {
            let cf = db.cf_handle(CF_LOG).ok_or_else(|| rocksdb_missing_cf(CF_LOG))?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(&cf, start, end);
            db.write_opt(batch, &synced())
                .map_err(|e| io_err("deleting log entries", e))
        })
        .await
    }
}

fn rocksdb_missing_cf(name: &str) -> io::Error {
    io::Error::other(format!("column family {name} missing"))
}

/// Runs a blocking RocksDB write on tokio's blocking pool, so the runtime keeps serving while the disk syncs.
async fn spawn_write<F>(write: F) -> Result<(), io::Error>
where
    F: FnOnce() -> Result<(), io::Error> + Send + 'static,
{
    tokio::task::spawn_blocking(write)
        .await
        .map_err(io::Error::other)?
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
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
            let (key, value) = item.map_err(|e| io_err("reading log entries", e))?;
            if !key.starts_with(&self.group.to_be_bytes()) || key.len() != 16 {
                break;
            }
            let mut index = [0u8; 8];
            index.copy_from_slice(&key[8..]);
            if !range.contains(&u64::from_be_bytes(index)) {
                break;
            }
            entries.push(decode(&value).map_err(|e| io_err("decoding a log entry", e))?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(TAG_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
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

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(TAG_VOTE, vote, true).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: a committed index lost in a crash is learned again from the leader, and every entry below
        // it is durable already.
        self.put_meta(TAG_COMMITTED, &committed, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(TAG_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        {
            let cf = self.cf(CF_LOG)?;
            for entry in entries {
                let bytes = encode(&entry).map_err(|e| io_err("encoding a log entry", e))?;
                batch.put_cf(&cf, log_key(self.group, entry.log_id.index), bytes);
            }
        }
        // Unsynced, in place: the entries are readable when this returns (openraft's replication reads them at
        // once) and sit in the WAL behind every earlier write, so the sync below covers them. A memtable insert
        // and a write(2) to the WAL file: short enough for the runtime's thread.
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| io_err("appending log entries", e))?;
        // The callback fires once the WAL holding them is fsync'd.
        self.wal.flushed(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.delete_range(from, u64::MAX).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: a crash between the two writes leaves extra entries, never a hole.
        self.put_meta(TAG_PURGED, &log_id, true).await?;
        self.delete_range(0, log_id.index + 1).await
    }
}
