//! The bridge between openraft and a group's application: applies committed entries to a [`GroupApp`], builds
//! and installs snapshots, and keeps them in RocksDB.
//!
//! The application's state lives in memory. It is made durable by the Raft log (fsync'd before any entry
//! commits) and by snapshots (written with a synced RocksDB write before openraft may purge the log they
//! replace). On restart the state machine restores the last snapshot and openraft re-applies the committed log
//! after it, so a restarted node holds exactly what it acknowledged.

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError by value"
)]

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use parking_lot::{Mutex, RwLock};
use rocksdb::{DB, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::log_store::{CF_SNAPSHOT, decode, encode, meta_key};
use crate::types::{Entry, GroupId, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// The application a Raft group replicates: a deterministic state machine over opaque commands.
///
/// Implementors must guarantee:
/// - `apply` is deterministic: the same commands in the same order give the same state and results on every
///   replica, whatever the time or the machine;
/// - `restore(snapshot())` gives back an equal state;
/// - neither panics on any input (a command is data from the network; answer bad ones with an error result).
pub trait GroupApp: Send + Sync + 'static {
    /// Applies one committed command and returns its result for the proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// Serializes the whole state.
    fn snapshot(&self) -> Vec<u8>;
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
    db: Arc<DB>,
    group: GroupId,
}

impl<A> Clone for GroupStateMachine<A> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            applied: self.applied.clone(),
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
        let sm = Self {
            app,
            applied: Arc::default(),
            db,
            group,
        };
        if let Some(snapshot) = sm.load_snapshot()? {
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

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
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

    async fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = encode(snapshot).map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        let db = self.db.clone();
        let key = meta_key(self.group, b"snapshot");
        tokio::task::spawn_blocking(move || {
            let cf = db
                .cf_handle(CF_SNAPSHOT)
                .ok_or_else(|| "column family missing".to_string())?;
            let mut opts = WriteOptions::default();
            // Synced: openraft purges the log this snapshot replaces as soon as we return.
            opts.set_sync(true);
            db.put_cf_opt(&cf, key, bytes, &opts).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))
    }
}

impl<A: GroupApp> RaftSnapshotBuilder<TypeConfig> for GroupStateMachine<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Serialize under the read lock so the data and `last_applied` describe the same state.
        let (data, meta) = {
            let app = self.app.read();
            let mut applied = self.applied.lock();
            applied.snapshot_seq += 1;
            let snapshot_id = match &applied.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, applied.snapshot_seq),
                None => format!("none-{}", applied.snapshot_seq),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                snapshot_id,
            };
            (app.snapshot(), meta)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(&stored).await?;
        metrics::counter!("trestle_raft_snapshots_built_total", "group" => self.group.to_string())
            .increment(1);
        Ok(Snapshot {
            meta,
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
        self.save_snapshot(&stored).await?;
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
        Ok(self.load_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
