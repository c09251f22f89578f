//! The bridge between openraft and a group's application: applies committed entries to a [`GroupApp`], builds
//! and installs snapshots, and keeps them in the node's [`SnapshotStore`].
//!
//! The application's state lives in memory. It is made durable by the Raft log (synced before any entry
//! commits) and by snapshots (committed to the snapshot store, durably, before openraft may purge the log they
//! replace). On restart the state machine restores the last snapshot and openraft re-applies the committed log
//! after it, so a restarted node holds exactly what it acknowledged.
//!
//! Snapshots stream: the application writes its state into a temporary of the store ([`GroupApp::snapshot`]
//! takes a writer) and reads it back from the current snapshot ([`GroupApp::restore`] takes a reader); the
//! transport streams the snapshot to followers in chunks read from the store ([`SnapshotData`]), and a follower
//! writes the chunks into a temporary of its own. With the disk store no side holds a whole snapshot in memory on the way.
//!
//! A snapshot is: the 8 bytes `TRSNAP2\n`, the length of the metadata as a little-endian `u64`, the metadata
//! (postcard), then the application's bytes up to the end. Snapshots that older versions kept in another format
//! ([`SnapshotStore::legacy`]) are converted when the group opens.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::log_store::decode;
use crate::snapshot_format::{drain, open_snapshot, read_meta, write_snapshot};
use crate::storage::{SharedSnapshotStore, SnapshotData, Temporary};
use crate::types::{EntryPayload, GroupId, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// The application a Raft group replicates: a deterministic state machine over opaque commands.
///
/// Implementors must guarantee:
/// - `apply` is deterministic: the same commands in the same order give the same state and results on every
///   replica, whatever the time or the machine;
/// - restoring what `snapshot` wrote gives back an equal state;
/// - none of them panics on any input (a command is data from the network, a snapshot data from a disk or a
///   peer: answer bad ones with an error).
pub trait GroupApp: Send + Sync + 'static {
    /// Applies one committed command and returns its result for the proposer. An error (only storage fails:
    /// a command is answered, never refused with an error here) stops the group: its state can no longer be
    /// trusted to match the others'.
    fn apply(&mut self, index: u64, command: &[u8]) -> std::io::Result<Vec<u8>>;
    /// Writes the whole state to `out`, which goes straight to the snapshot store (buffered). An error fails
    /// the snapshot build: nothing is saved and the log it would have replaced is kept.
    fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError>;
    /// Replaces the whole state with the one `input` holds (what [`GroupApp::snapshot`] wrote, read back,
    /// buffered). An error leaves the group stopped rather than running on a partial state.
    fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError>;

    /// The index of the last entry the application's own storage holds the effects of, for an application
    /// whose state survives a restart on its own (on disk, such as [`DiskBacked`](crate::DiskBacked)): entries
    /// up to it that openraft replays after a restart are not applied again. `None` (the default): the state
    /// lives in memory and every replayed entry is applied.
    fn applied_index(&self) -> Option<u64> {
        None
    }

    /// A point-in-time view of the state to write as a snapshot after the state machine's lock is released,
    /// so that applying goes on while the snapshot is written. `None` (the default): the snapshot is written by
    /// [`GroupApp::snapshot`] under the read lock, and applying waits for it.
    fn freeze(&self) -> Option<FrozenState> {
        None
    }
}

/// Writes a state frozen by [`GroupApp::freeze`] to a snapshot, after the lock that froze it is released.
pub type FrozenState = Box<dyn FnOnce(&mut dyn Write) -> Result<(), SnapshotError> + Send>;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing the snapshot failed.
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The state could not be encoded, or the bytes are not a snapshot of this application.
    #[error("{0}")]
    Invalid(String),
}

impl SnapshotError {
    /// An [`SnapshotError::Invalid`] from anything displayable (an encoder's or decoder's error).
    pub fn invalid(error: impl std::fmt::Display) -> Self {
        Self::Invalid(error.to_string())
    }
}

/// A snapshot as older versions stored it: one postcard value, the application's bytes inside.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Applied {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// A group's application, shared by the state machine and the service reading it.
pub type SharedApp = Arc<RwLock<dyn GroupApp>>;

/// The openraft state machine of one group, wrapping its [`GroupApp`] (type-erased, so that every group's Raft
/// handle has one type). Cheap to clone.
pub struct GroupStateMachine {
    app: SharedApp,
    applied: Arc<Mutex<Applied>>,
    /// Serializes commits to the snapshot store and remembers the last one. openraft builds snapshots in a
    /// task of their own, so a build and an installed snapshot can finish at the same time, or an older build
    /// can finish after a newer install: the current snapshot must only ever move forward.
    saved: Arc<tokio::sync::Mutex<Option<LogId>>>,
    store: SharedSnapshotStore,
    group: GroupId,
}

impl Clone for GroupStateMachine {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            applied: self.applied.clone(),
            saved: self.saved.clone(),
            store: self.store.clone(),
            group: self.group,
        }
    }
}

fn sm_err(err: impl ToString) -> std::io::Error {
    std::io::Error::other(err.to_string())
}

/// Runs `work` where `store` wants it: on the blocking pool for a store that waits on a disk, in place for one
/// that answers at once (so a simulation over it stays deterministic).
async fn on_store<T, F>(store: &SharedSnapshotStore, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    if store.blocks() {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| e.to_string())?
    } else {
        work()
    }
}

impl GroupStateMachine {
    /// Opens the state machine of `group`, restoring `app` from the group's current snapshot in `store` if there
    /// is one.
    pub fn open(store: SharedSnapshotStore, group: GroupId, app: SharedApp) -> Result<Self, std::io::Error> {
        let mut sm = Self {
            app,
            applied: Arc::default(),
            saved: Arc::default(),
            store,
            group,
        };
        let unreadable = |e: &dyn std::fmt::Display| sm_err(format!("group {group}: snapshot: {e}"));
        sm.store.clean(group).map_err(|e| unreadable(&e))?;
        sm.convert_legacy()?;
        let Some(mut input) = sm.store.read(group).map_err(|e| unreadable(&e))? else {
            return Ok(sm);
        };
        let meta = restore(&sm.app, &mut *input).map_err(|e| unreadable(&e))?;
        sm.saved = Arc::new(tokio::sync::Mutex::new(meta.last_log_id));
        let mut applied = sm.applied.lock();
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        drop(applied);
        Ok(sm)
    }

    /// The application.
    pub fn app(&self) -> &SharedApp {
        &self.app
    }

    /// Rewrites a snapshot an older version kept in another format in the current one, before anything reads it.
    fn convert_legacy(&self) -> Result<(), std::io::Error> {
        let group = self.group;
        let failed =
            |e: &dyn std::fmt::Display| sm_err(format!("group {group}: an older version's snapshot: {e}"));
        let Some(bytes) = self.store.legacy(group).map_err(|e| failed(&e))? else {
            return Ok(());
        };
        let legacy: LegacySnapshot = decode(&bytes).map_err(|e| failed(&e))?;
        let mut out = self.store.create(group).map_err(|e| failed(&e))?;
        write_snapshot(&mut out, &legacy.meta, |w| Ok(w.write_all(&legacy.data)?)).map_err(|e| failed(&e))?;
        let temporary = out.finish().map_err(|e| failed(&e))?;
        self.store.commit(group, &temporary).map_err(|e| failed(&e))?;
        self.store.forget_legacy(group).map_err(|e| failed(&e))?;
        tracing::info!(group, "converted a snapshot of an older format");
        Ok(())
    }

    /// Makes the finished temporary `temporary` the group's current snapshot, unless a newer one is already
    /// current (then it is dropped). openraft purges the log the snapshot replaces as soon as this returns.
    /// Returns the snapshot's data, at its start.
    async fn commit(
        &self,
        temporary: Temporary,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotData, std::io::Error> {
        let mut saved = self.saved.lock().await;
        let older = saved.is_some() && meta.last_log_id <= *saved;
        let (store, group) = (self.store.clone(), self.group);
        let data = on_store(&self.store, move || {
            let data = if older {
                // A build that finished after a newer install: openraft ignores it too. Hand back its data and
                // keep the newer snapshot.
                let data = store.temporary_data(&temporary).map_err(|e| e.to_string())?;
                store.discard(&temporary).map_err(|e| e.to_string())?;
                data
            } else {
                store.commit(group, &temporary).map_err(|e| e.to_string())?;
                store
                    .data(group)
                    .map_err(|e| e.to_string())?
                    .ok_or("the snapshot just committed is gone")?
            };
            Ok(data)
        })
        .await
        .map_err(|e| sm_err(format!("group {group}: committing a snapshot: {e}")))?;
        if !older {
            *saved = meta.last_log_id;
        }
        Ok(data)
    }
}

/// Restores `app` from a snapshot read from its start, checking its checksum; returns the snapshot's metadata.
fn restore(app: &RwLock<dyn GroupApp>, input: &mut dyn Read) -> Result<SnapshotMeta, String> {
    let (meta, mut state) = open_snapshot(input)?;
    app.write()
        .restore(&mut state)
        .map_err(|e| format!("restoring the application: {e}"))?;
    // What the application left unread still counts: the checksum covers it.
    drain(&mut state).map_err(|e| format!("restoring the application: {e}"))?;
    Ok(meta)
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf, std::io::Error> {
        let started = Instant::now();
        let (app, applied, store, group) = (
            self.app.clone(),
            self.applied.clone(),
            self.store.clone(),
            self.group,
        );
        // Written under the read lock, so the data and `last_applied` describe the same state, and off the
        // runtime for a disk store. `apply` waits for the write lock meanwhile, blocking its worker, and
        // parking_lot then queues new readers behind that writer too, so a node can stall for as long as the
        // snapshot takes to write (measured before snapshots streamed: up to 0.25 s at 160 MB). A copy-on-write
        // state would remove it.
        let built = on_store(&self.store, move || {
            let mut out = store.create(group).map_err(|e| e.to_string())?;
            let written = (|| {
                let app = app.read();
                // The read lock alone keeps `last_applied` still (applying takes the write lock first), so the
                // bookkeeping lock is held only to read it.
                let meta = {
                    let applied = applied.lock();
                    SnapshotMeta {
                        last_log_id: applied.last_applied,
                        last_membership: applied.last_membership.clone(),
                    }
                };
                let bytes = match app.freeze() {
                    // A frozen view: written after the lock is released, while entries go on applying.
                    Some(frozen) => {
                        drop(app);
                        write_snapshot(&mut out, &meta, frozen)?
                    }
                    None => write_snapshot(&mut out, &meta, |w| app.snapshot(w))?,
                };
                Ok::<_, SnapshotError>((meta, bytes))
            })();
            match written {
                Ok((meta, bytes)) => {
                    let temporary = out.finish().map_err(|e| e.to_string())?;
                    Ok((meta, bytes, temporary))
                }
                Err(e) => {
                    let name = out.name().clone();
                    drop(out);
                    let _ = store.discard(&name);
                    Err(e.to_string())
                }
            }
        })
        .await;
        let (meta, bytes, temporary) = built.map_err(|e| {
            tracing::error!(group = self.group, error = %e, "snapshot build failed; nothing saved");
            sm_err(format!("group {}: writing the snapshot: {e}", self.group))
        })?;
        let written = started.elapsed();
        let data = self.commit(temporary, &meta).await?;
        tracing::info!(
            group = self.group,
            index = ?meta.last_log_id.map(|id| id.index),
            bytes,
            write_ms = written.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        metrics::counter!("trestle_raft_snapshots_built_total", "group" => self.group.to_string())
            .increment(1);
        Ok(Snapshot { meta, snapshot: data })
    }
}

/// A snapshot as openraft hands it around: metadata and the data to read.
type SnapshotOf =
    Snapshot<crate::types::LeaderId, crate::types::NodeId, crate::types::PeerNode, SnapshotData>;

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let applied = self.applied.lock();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), std::io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + Send,
    {
        // openraft hands over what is ready; apply all of it under one lock and answer each proposer.
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let result = {
                let mut app = self.app.write();
                let mut applied = self.applied.lock();
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    // Already in the application's own storage: a replay after a restart.
                    EntryPayload::Normal(_) if app.applied_index() >= Some(entry.log_id.index) => Vec::new(),
                    EntryPayload::Normal(command) => {
                        app.apply(entry.log_id.index, &command.0).map_err(|e| {
                            tracing::error!(group = self.group, index = entry.log_id.index, error = %e,
                            "applying an entry failed; the group stops");
                            sm_err(format!(
                                "group {}: applying entry {}: {e}",
                                self.group, entry.log_id.index
                            ))
                        })?
                    }
                    EntryPayload::Membership(membership) => {
                        applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        Vec::new()
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), std::io::Error> {
        // Persist first: if we crashed after restoring but before persisting, the restart would lack the data.
        let received = snapshot.into_received().await;
        let (store, group, expected) = (self.store.clone(), self.group, meta.last_log_id);
        let temporary = on_store(&self.store, move || {
            let temporary = store.received(group, received).map_err(|e| e.to_string())?;
            // What arrived must be the snapshot openraft says it is.
            let checked = store
                .read_temporary(&temporary)
                .map_err(|e| e.to_string())
                .and_then(|mut input| read_meta(&mut *input));
            match checked {
                Ok(found) if found.last_log_id == expected => Ok(temporary),
                other => {
                    let _ = store.discard(&temporary);
                    Err(match other {
                        Ok(found) => format!(
                            "the received snapshot ends at {:?}, not {expected:?}",
                            found.last_log_id
                        ),
                        Err(e) => format!("the received snapshot is unreadable: {e}"),
                    })
                }
            }
        })
        .await
        .map_err(|e| sm_err(format!("group {group}: installing a snapshot: {e}")))?;
        // Restore from what was received (the data `commit` hands back), not from the current snapshot: if a
        // newer one is already current, openraft still expects this one's state.
        let data = self.commit(temporary, meta).await?.into_received().await;
        let app = self.app.clone();
        on_store(&self.store, move || {
            let mut input = data.into_reader().map_err(|e| e.to_string())?;
            restore(&app, &mut *input).map(|_| ())
        })
        .await
        .map_err(|e| sm_err(format!("group {group}: restoring a snapshot: {e}")))?;
        let mut applied = self.applied.lock();
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        drop(applied);
        metrics::counter!("trestle_raft_snapshots_installed_total", "group" => self.group.to_string())
            .increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf>, std::io::Error> {
        // No commit between reading the header and opening the data.
        let _saved = self.saved.lock().await;
        let (store, group) = (self.store.clone(), self.group);
        let current = on_store(&self.store, move || {
            let Some(mut input) = store.read(group).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let meta = read_meta(&mut *input)?;
            let data = store
                .data(group)
                .map_err(|e| e.to_string())?
                .ok_or("the current snapshot is gone")?;
            Ok(Some((meta, data)))
        })
        .await
        .map_err(|e| sm_err(format!("group {group}: reading the current snapshot: {e}")))?;
        Ok(current.map(|(meta, data)| Snapshot { meta, snapshot: data }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::log_store::{CF_SNAPSHOT, encode, meta_key, open_db};
    use crate::storage::{DiskSnapshots, MemoryStorage, SnapshotStore};

    /// A state that is one number, enough to tell snapshots apart. `u64::MAX` cannot be serialized.
    struct Number(u64);

    const UNSERIALIZABLE: u64 = u64::MAX;

    impl GroupApp for Number {
        fn apply(&mut self, _index: u64, command: &[u8]) -> std::io::Result<Vec<u8>> {
            self.0 += command.len() as u64;
            Ok(Vec::new())
        }
        fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
            if self.0 == UNSERIALIZABLE {
                return Err(SnapshotError::invalid(format!("{} cannot be serialized", self.0)));
            }
            Ok(out.write_all(&self.0.to_be_bytes())?)
        }
        fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
            let mut bytes = Vec::new();
            input.read_to_end(&mut bytes)?;
            let bytes: [u8; 8] = bytes
                .try_into()
                .map_err(|_| SnapshotError::invalid("not 8 bytes"))?;
            self.0 = u64::from_be_bytes(bytes);
            Ok(())
        }
    }

    fn meta(last_log_id: Option<LogId>) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id,
            last_membership: StoredMembership::default(),
        }
    }

    fn at(index: u64) -> Option<LogId> {
        Some(crate::types::log_id(1, 1, index))
    }

    /// A finished temporary of `store` holding a [`Number`] snapshot.
    fn temporary(store: &dyn SnapshotStore, meta: &SnapshotMeta, value: u64) -> Temporary {
        let mut out = store.create(7).unwrap();
        write_snapshot(&mut out, meta, |w| Ok(w.write_all(&value.to_be_bytes())?)).unwrap();
        out.finish().unwrap()
    }

    /// The state machine of group 7 on `store`, and its application.
    fn open(store: &SharedSnapshotStore) -> (GroupStateMachine, Arc<RwLock<Number>>) {
        let number = Arc::new(RwLock::new(Number(0)));
        let sm = GroupStateMachine::open(store.clone(), 7, number.clone()).unwrap();
        (sm, number)
    }

    fn disk(dir: &Path) -> (Arc<rocksdb::DB>, SharedSnapshotStore) {
        let db = open_db(dir).unwrap();
        let store: SharedSnapshotStore = Arc::new(DiskSnapshots::beside(db.clone()));
        (db, store)
    }

    fn stores(dir: &Path) -> Vec<(&'static str, SharedSnapshotStore)> {
        vec![
            ("disk", disk(dir).1),
            ("memory", Arc::new(MemoryStorage::new().snapshots())),
        ]
    }

    #[tokio::test]
    async fn snapshots_older_versions_kept_are_restored_and_rewritten_in_the_current_format() {
        // In RocksDB.
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = disk(dir.path());
        let legacy = LegacySnapshot {
            meta: meta(at(3)),
            data: 42u64.to_be_bytes().to_vec(),
        };
        let cf = db.cf_handle(CF_SNAPSHOT).unwrap();
        db.put_cf(&cf, meta_key(7, b"snapshot"), encode(&legacy).unwrap())
            .unwrap();
        let (mut sm, n) = open(&store);
        assert_eq!(n.read().0, 42, "the legacy snapshot was not restored");
        assert!(
            db.get_cf(&cf, meta_key(7, b"snapshot")).unwrap().is_none(),
            "the legacy copy outlived the file"
        );
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, legacy.meta);

        // As a file of the older format.
        let path = DiskSnapshots::beside(db.clone()).path(7);
        std::fs::write(&path, encode(&legacy).unwrap()).unwrap();
        drop((sm, current));
        let (sm, n) = open(&store);
        assert_eq!(n.read().0, 42);
        let mut input = store.read(7).unwrap().unwrap();
        assert_eq!(read_meta(&mut *input).unwrap(), legacy.meta);

        // Leftovers of a build or a reception that crashed before its commit are removed, not read.
        let _left = store.create(7).unwrap();
        drop(store.receive(7).unwrap());
        drop(sm);
        let (_sm, n) = open(&store);
        assert_eq!(n.read().0, 42);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["group-7.snap".to_string()]);
    }

    #[tokio::test]
    async fn a_failed_serialization_saves_nothing_and_keeps_the_last_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, store) in stores(dir.path()) {
            let (mut sm, n) = open(&store);
            n.write().0 = 50;
            sm.build_snapshot().await.unwrap();
            let current = |store: &SharedSnapshotStore| {
                let mut bytes = Vec::new();
                store.read(7).unwrap().unwrap().read_to_end(&mut bytes).unwrap();
                bytes
            };
            let saved = current(&store);

            n.write().0 = UNSERIALIZABLE;
            let err = sm.build_snapshot().await.unwrap_err();
            assert!(err.to_string().contains("cannot be serialized"), "{kind}: {err}");
            assert_eq!(current(&store), saved, "{kind}: the snapshot changed");
            drop(sm);
            assert_eq!(open(&store).1.read().0, 50, "{kind}");
        }
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, store) in stores(dir.path()) {
            let (sm, _) = open(&store);
            // An installed snapshot at 20, then a build of 10 that finishes late.
            sm.commit(temporary(&*store, &meta(at(20)), 2), &meta(at(20)))
                .await
                .unwrap();
            sm.commit(temporary(&*store, &meta(at(10)), 1), &meta(at(10)))
                .await
                .unwrap();
            drop(sm);
            let (reopened, n) = open(&store);
            assert_eq!(n.read().0, 2, "{kind}");
            // After a restart the stored snapshot is the bar.
            reopened
                .commit(temporary(&*store, &meta(at(15)), 3), &meta(at(15)))
                .await
                .unwrap();
            drop(reopened);
            assert_eq!(open(&store).1.read().0, 2, "{kind}");
        }
    }

    #[tokio::test]
    async fn a_snapshot_streams_from_one_node_to_another_and_a_wrong_one_is_refused() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Every pairing of stores: disk to disk, disk to memory, memory to disk, memory to memory.
        for (from, to) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let (leader_store, follower_store) = (
                stores(dir_a.path()).swap_remove(from).1,
                stores(dir_b.path()).swap_remove(to).1,
            );
            let (mut leader, n) = open(&leader_store);
            n.write().0 = 77;
            leader.applied.lock().last_applied = at(9);
            leader.build_snapshot().await.unwrap();
            let current = leader.get_current_snapshot().await.unwrap().unwrap();

            // The peer transport copies the data into the follower's reception in chunks.
            let (mut follower, n) = open(&follower_store);
            let mut receiving = follower_store.receive(7).unwrap();
            let mut source = current.snapshot;
            tokio::io::copy(&mut source, &mut receiving).await.unwrap();
            follower.install_snapshot(&current.meta, receiving).await.unwrap();
            assert_eq!(n.read().0, 77, "{from}->{to}");
            assert_eq!(follower.applied_state().await.unwrap().0, at(9));
            drop(follower);
            assert_eq!(
                open(&follower_store).1.read().0,
                77,
                "{from}->{to}: the installed snapshot was not kept"
            );

            // A reception whose bytes are another snapshot's is refused, and the state stays.
            let (mut follower, n) = open(&follower_store);
            let mut receiving = follower_store.receive(7).unwrap();
            let other = temporary(&*follower_store, &meta(at(30)), 5);
            let mut other_data = follower_store.temporary_data(&other).unwrap();
            tokio::io::copy(&mut other_data, &mut receiving).await.unwrap();
            let err = follower
                .install_snapshot(&meta(at(31)), receiving)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("not Some"), "{err}");
            assert_eq!(n.read().0, 77);
        }
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_stops_the_group_instead_of_starting_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = disk(dir.path());
        let path = DiskSnapshots::beside(db.clone()).path(7);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for corrupt in [
            &b"\xff\xff\xff"[..],
            &b"TRSNAP2\n\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        ] {
            std::fs::write(&path, corrupt).unwrap();
            let err = GroupStateMachine::open(store.clone(), 7, Arc::new(RwLock::new(Number(0))))
                .err()
                .expect("a corrupt snapshot must not open");
            assert!(err.to_string().contains("group 7"), "{err}");
        }
        // A valid header with an application state that does not restore.
        let mut out = std::fs::File::create(&path).unwrap();
        write_snapshot(&mut out, &meta(at(4)), |w| Ok(w.write_all(b"short")?)).unwrap();
        drop(out);
        let err = GroupStateMachine::open(store.clone(), 7, Arc::new(RwLock::new(Number(0))))
            .err()
            .expect("an unrestorable snapshot must not open");
        assert!(err.to_string().contains("not 8 bytes"), "{err}");
        // A state that restores, but one bit of it flipped on the disk: the checksum refuses it.
        let mut out = Vec::new();
        write_snapshot(&mut out, &meta(at(4)), |w| Ok(w.write_all(&9u64.to_be_bytes())?)).unwrap();
        let last_state_byte = out.len() - 5;
        out[last_state_byte] ^= 1;
        std::fs::write(&path, &out).unwrap();
        let err = GroupStateMachine::open(store.clone(), 7, Arc::new(RwLock::new(Number(0))))
            .err()
            .expect("a damaged snapshot must not open");
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
