//! The bridge between openraft and a group's application: applies committed entries to a [`GroupApp`], builds
//! and installs snapshots, and keeps them on disk.
//!
//! The application's state lives in memory. It is made durable by the Raft log (fsync'd before any entry
//! commits) and by snapshots (a file, fsync'd and renamed into place before openraft may purge the log they
//! replace). On restart the state machine restores the last snapshot and openraft re-applies the committed log
//! after it, so a restarted node holds exactly what it acknowledged.
//!
//! Snapshots are files in a `snapshots` directory inside the RocksDB directory, one per group, not RocksDB
//! values: a snapshot is the whole state (tens of MiB once history grows), and as one synced RocksDB write it
//! queued every Raft log append of the node behind it in the shared WAL. Heartbeats then timed out and the
//! cluster held elections under load. The file is written in slices, each synced, so the disk never holds much
//! unsynced snapshot data for a log fsync to wait behind. Snapshots that older versions kept in the
//! `raft_snapshot` column family are still read, and dropped once a newer file is written.

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError by value"
)]

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use parking_lot::{Mutex, RwLock};
use rocksdb::DB;
use serde::{Deserialize, Serialize};

use crate::log_store::{CF_SNAPSHOT, decode, encode, meta_key};
use crate::types::{Entry, GroupId, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// The application a Raft group replicates: a deterministic state machine over opaque commands.
///
/// Implementors must guarantee:
/// - `apply` is deterministic: the same commands in the same order give the same state and results on every
///   replica, whatever the time or the machine;
/// - `restore(snapshot()?)` gives back an equal state;
/// - neither panics on any input (a command is data from the network; answer bad ones with an error result).
pub trait GroupApp: Send + Sync + 'static {
    /// Applies one committed command and returns its result for the proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// Serializes the whole state. An error fails the snapshot build: nothing is saved and the log it would have
    /// replaced is kept (the group stops with a storage error rather than lose state).
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Replaces the whole state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Applied {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshot_seq: u64,
}

/// The openraft state machine of one group, wrapping its [`GroupApp`]. Cheap to clone.
pub struct GroupStateMachine<A> {
    app: Arc<RwLock<A>>,
    applied: Arc<Mutex<Applied>>,
    /// Serializes snapshot writes and remembers the last one saved. openraft 0.9 builds snapshots in a task of
    /// their own, so a build and an installed snapshot can be saved at the same time, or an older build can
    /// finish after a newer install: the file must only ever move forward.
    saved: Arc<tokio::sync::Mutex<Option<LogId>>>,
    db: Arc<DB>,
    group: GroupId,
}

impl<A> Clone for GroupStateMachine<A> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            applied: self.applied.clone(),
            saved: self.saved.clone(),
            db: self.db.clone(),
            group: self.group,
        }
    }
}

fn sm_err(verb: ErrorVerb, err: impl ToString) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(err.to_string()),
    )
}

fn snapshot_err(verb: ErrorVerb, err: impl ToString) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        verb,
        std::io::Error::other(err.to_string()),
    )
}

impl<A: GroupApp> GroupStateMachine<A> {
    /// Opens the state machine of `group`, restoring `app` from the group's last snapshot if there is one.
    pub fn open(db: Arc<DB>, group: GroupId, app: Arc<RwLock<A>>) -> Result<Self, StorageError> {
        let mut sm = Self {
            app,
            applied: Arc::default(),
            saved: Arc::default(),
            db,
            group,
        };
        if let Some(snapshot) = sm.load_snapshot()? {
            sm.saved = Arc::new(tokio::sync::Mutex::new(snapshot.meta.last_log_id));
            sm.app
                .write()
                .restore(&snapshot.data)
                .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
            let mut applied = sm.applied.lock();
            applied.last_applied = snapshot.meta.last_log_id;
            applied.last_membership = snapshot.meta.last_membership.clone();
        }
        Ok(sm)
    }

    /// The application.
    pub fn app(&self) -> &Arc<RwLock<A>> {
        &self.app
    }

    /// The file holding this group's last snapshot.
    fn snapshot_path(&self) -> PathBuf {
        snapshot_dir(&self.db).join(format!("group-{}.snap", self.group))
    }

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let path = self.snapshot_path();
        let unreadable =
            |e: &dyn std::fmt::Display| snapshot_err(ErrorVerb::Read, format!("{}: {e}", path.display()));
        match std::fs::read(&path) {
            Ok(bytes) => return decode(&bytes).map(Some).map_err(|e| unreadable(&e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unreadable(&e)),
        }
        // A data directory from before snapshots were files.
        let cf = self
            .db
            .cf_handle(CF_SNAPSHOT)
            .ok_or_else(|| snapshot_err(ErrorVerb::Read, "column family missing"))?;
        let raw = self
            .db
            .get_cf(&cf, meta_key(self.group, b"snapshot"))
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        raw.map(|bytes| decode(&bytes).map_err(|e| snapshot_err(ErrorVerb::Read, e)))
            .transpose()
    }

    /// Persists `snapshot` durably (openraft purges the log it replaces as soon as we return) and hands it back.
    async fn save_snapshot(&self, snapshot: StoredSnapshot) -> Result<StoredSnapshot, StorageError> {
        let mut saved = self.saved.lock().await;
        if saved.is_some() && snapshot.meta.last_log_id <= *saved {
            // Older than what is on disk (a build that finished after an install): openraft ignores it too.
            return Ok(snapshot);
        }
        let db = self.db.clone();
        let path = self.snapshot_path();
        let key = meta_key(self.group, b"snapshot");
        let snapshot = tokio::task::spawn_blocking(move || {
            let bytes = encode(&snapshot).map_err(|e| e.to_string())?;
            write_durably(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            // The file now takes precedence; an old copy in RocksDB is only dead weight.
            if let Some(cf) = db.cf_handle(CF_SNAPSHOT) {
                db.delete_cf(&cf, key).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(snapshot)
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        *saved = snapshot.meta.last_log_id;
        Ok(snapshot)
    }
}

/// The directory of a node's snapshot files: inside RocksDB's directory, which RocksDB leaves alone (it only
/// touches files whose names it knows), so a node's data stays in one place.
fn snapshot_dir(db: &DB) -> PathBuf {
    db.path().join("snapshots")
}

/// Bytes written between syncs of a snapshot file.
const SNAPSHOT_SYNC_SLICE: usize = 4 << 20;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the whole new one: a temporary file,
/// synced slice by slice, renamed over `path`, and the directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("snapshot path has no directory"))?;
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        // The new directory's own entry must survive a power loss too.
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    let temporary = path.with_extension("snap.partial");
    let mut file = std::fs::File::create(&temporary)?;
    for slice in bytes.chunks(SNAPSHOT_SYNC_SLICE) {
        file.write_all(slice)?;
        file.sync_data()?;
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl<A: GroupApp> RaftSnapshotBuilder<TypeConfig> for GroupStateMachine<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = Instant::now();
        let (app, applied) = (self.app.clone(), self.applied.clone());
        // Serialize on the blocking pool, under the read lock so the data and `last_applied` describe the same
        // state. This keeps the serialization itself off the runtime, but not its effect: `apply` waits for the
        // write lock meanwhile, blocking its worker, and parking_lot then queues new readers behind that writer
        // too, so a node can stall for as long as serialization takes (measured: up to 0.25 s at 160 MB). A
        // copy-on-write state would remove it.
        let stored = tokio::task::spawn_blocking(move || {
            // The read lock alone keeps `last_applied` still (applying takes the write lock first), so the
            // bookkeeping lock is held only to read it.
            let app = app.read();
            let meta = {
                let mut applied = applied.lock();
                applied.snapshot_seq += 1;
                let snapshot_id = match &applied.last_applied {
                    Some(id) => format!("{}-{}-{}", id.leader_id, id.index, applied.snapshot_seq),
                    None => format!("none-{}", applied.snapshot_seq),
                };
                SnapshotMeta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.last_membership.clone(),
                    snapshot_id,
                }
            };
            app.snapshot().map(|data| StoredSnapshot { meta, data })
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e| {
            tracing::error!(group = self.group, error = %e, "snapshot serialization failed; nothing saved");
            snapshot_err(ErrorVerb::Write, format!("serializing the state machine: {e}"))
        })?;
        let serialized = started.elapsed();
        let stored = self.save_snapshot(stored).await?;
        tracing::info!(
            group = self.group,
            index = ?stored.meta.last_log_id.map(|id| id.index),
            bytes = stored.data.len(),
            serialize_ms = serialized.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        metrics::counter!("trestle_raft_snapshots_built_total", "group" => self.group.to_string())
            .increment(1);
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl<A: GroupApp> RaftStateMachine<TypeConfig> for GroupStateMachine<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.applied.lock();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<u8>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut app = self.app.write();
        let mut applied = self.applied.lock();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(Vec::new()),
                EntryPayload::Normal(command) => results.push(app.apply(entry.log_id.index, &command.0)),
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    results.push(Vec::new());
                }
            }
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // Persist first: if we crash after restoring but before persisting, the restart would lack the data.
        let stored = self.save_snapshot(stored).await?;
        {
            let mut app = self.app.write();
            app.restore(&stored.data)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let mut applied = self.applied.lock();
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
        }
        metrics::counter!("trestle_raft_snapshots_installed_total", "group" => self.group.to_string())
            .increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // Reading a snapshot of hundreds of MB is blocking work.
        let this = self.clone();
        let loaded = tokio::task::spawn_blocking(move || this.load_snapshot())
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))??;
        Ok(loaded.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::open_db;

    /// A state that is one number, enough to tell snapshots apart. `u64::MAX` cannot be serialized.
    struct Number(u64);

    const UNSERIALIZABLE: u64 = u64::MAX;

    impl GroupApp for Number {
        fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
            self.0 += command.len() as u64;
            Vec::new()
        }
        fn snapshot(&self) -> Result<Vec<u8>, String> {
            if self.0 == UNSERIALIZABLE {
                return Err(format!("{} cannot be serialized", self.0));
            }
            Ok(self.0.to_be_bytes().to_vec())
        }
        fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
            let bytes: [u8; 8] = snapshot.try_into().map_err(|_| "not 8 bytes".to_string())?;
            self.0 = u64::from_be_bytes(bytes);
            Ok(())
        }
    }

    /// A snapshot of a [`Number`] taken at `last_log_id`.
    fn stored(last_log_id: Option<LogId>, value: u64) -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership: StoredMembership::default(),
                snapshot_id: format!("{last_log_id:?}"),
            },
            data: value.to_be_bytes().to_vec(),
        }
    }

    fn open(db: &Arc<DB>) -> GroupStateMachine<Number> {
        GroupStateMachine::open(db.clone(), 7, Arc::new(RwLock::new(Number(0)))).unwrap()
    }

    #[tokio::test]
    async fn a_snapshot_an_older_version_kept_in_rocksdb_is_restored_then_replaced_by_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let legacy = stored(None, 42);
        let cf = db.cf_handle(CF_SNAPSHOT).unwrap();
        db.put_cf(&cf, meta_key(7, b"snapshot"), encode(&legacy).unwrap())
            .unwrap();

        let mut sm = open(&db);
        assert_eq!(sm.app().read().0, 42, "the legacy snapshot was not restored");
        sm.app().write().0 = 50;
        sm.build_snapshot().await.unwrap();
        assert!(sm.snapshot_path().is_file());
        assert!(
            db.get_cf(&cf, meta_key(7, b"snapshot")).unwrap().is_none(),
            "the legacy copy outlived the file"
        );

        // A leftover from a write that crashed before its rename is ignored.
        std::fs::write(sm.snapshot_path().with_extension("snap.partial"), b"torn").unwrap();
        drop(sm);
        assert_eq!(open(&db).app().read().0, 50);
    }

    #[tokio::test]
    async fn a_failed_serialization_saves_nothing_and_keeps_the_last_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let mut sm = open(&db);
        sm.app().write().0 = 50;
        sm.build_snapshot().await.unwrap();
        let saved = std::fs::read(sm.snapshot_path()).unwrap();

        sm.app().write().0 = UNSERIALIZABLE;
        let err = sm.build_snapshot().await.unwrap_err();
        assert!(err.to_string().contains("cannot be serialized"), "{err}");
        assert_eq!(
            std::fs::read(sm.snapshot_path()).unwrap(),
            saved,
            "the snapshot file changed"
        );
        drop(sm);
        assert_eq!(open(&db).app().read().0, 50);
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let at = |index: u64, value: u64| {
            stored(
                Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
                value,
            )
        };
        let sm = open(&db);
        // An installed snapshot at 20, then a build of 10 that finishes late.
        sm.save_snapshot(at(20, 2)).await.unwrap();
        sm.save_snapshot(at(10, 1)).await.unwrap();
        drop(sm);
        let reopened = open(&db);
        assert_eq!(reopened.app().read().0, 2);
        // After a restart the file on disk is the bar.
        reopened.save_snapshot(at(15, 3)).await.unwrap();
        drop(reopened);
        assert_eq!(open(&db).app().read().0, 2);
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_file_stops_the_group_instead_of_starting_empty() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let path = open(&db).snapshot_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"\xff\xff\xff").unwrap();
        let err = GroupStateMachine::open(db.clone(), 7, Arc::new(RwLock::new(Number(0))))
            .err()
            .expect("a corrupt snapshot must not open");
        assert!(err.to_string().contains("group-7.snap"), "{err}");
    }
}
