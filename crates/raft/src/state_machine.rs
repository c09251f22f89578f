//! The bridge between openraft and a group's application: applies committed entries to a [`GroupApp`], builds
//! and installs snapshots, and keeps them on disk.
//!
//! The application's state lives in memory. It is made durable by the Raft log (fsync'd before any entry
//! commits) and by snapshots (a file, fsync'd and renamed into place before openraft may purge the log they
//! replace). On restart the state machine restores the last snapshot and openraft re-applies the committed log
//! after it, so a restarted node holds exactly what it acknowledged.
//!
//! Snapshots stream: the application writes its state into the snapshot file ([`GroupApp::snapshot`] takes a
//! writer) and reads it back from one ([`GroupApp::restore`] takes a reader); openraft sends the file to
//! followers in chunks read from disk ([`SnapshotFile`] is the group's snapshot data type), and a follower writes
//! the chunks into a file of its own. No side holds a whole snapshot in memory on the way.
//!
//! Each group's snapshot is one file in a `snapshots` directory inside the RocksDB directory, not a RocksDB
//! value: a snapshot is the whole state (tens of MiB once history grows), and as one synced RocksDB write it
//! queued every Raft log append of the node behind it in the shared WAL. The file is synced every 4 MiB as it is
//! written, so the disk never holds much unsynced snapshot data for a log fsync to wait behind. Snapshots that
//! older versions kept in the `raft_snapshot` column family, or as files of the older format, are converted to
//! the current format when the group opens.
//!
//! A snapshot file is: the 8 bytes `TRSNAP2\n`, the length of the metadata as a little-endian `u64`, the
//! metadata (postcard), then the application's bytes up to the end of the file.

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError by value"
)]

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
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
/// - restoring what `snapshot` wrote gives back an equal state;
/// - none of them panics on any input (a command is data from the network, a snapshot data from a disk or a
///   peer: answer bad ones with an error).
pub trait GroupApp: Send + Sync + 'static {
    /// Applies one committed command and returns its result for the proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// Writes the whole state to `out`, which goes straight to the snapshot file (buffered). An error fails the
    /// snapshot build: nothing is saved and the log it would have replaced is kept.
    fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError>;
    /// Replaces the whole state with the one `input` holds (what [`GroupApp::snapshot`] wrote, read from the
    /// file, buffered). An error leaves the group stopped rather than running on a partial state.
    fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError>;
}

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

/// A group's snapshot data as openraft handles it: an open snapshot file. openraft reads chunks from it to send
/// to followers, and writes received chunks into one.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
}

impl SnapshotFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl tokio::io::AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }
    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

/// The first bytes of every snapshot file of the current format.
const MAGIC: &[u8; 8] = b"TRSNAP2\n";

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
    snapshot_seq: u64,
}

/// The openraft state machine of one group, wrapping its [`GroupApp`]. Cheap to clone.
pub struct GroupStateMachine<A> {
    app: Arc<RwLock<A>>,
    applied: Arc<Mutex<Applied>>,
    /// Serializes the moves of snapshot files into place and remembers the last one saved. openraft 0.9 builds
    /// snapshots in a task of their own, so a build and an installed snapshot can finish at the same time, or an
    /// older build can finish after a newer install: the file must only ever move forward.
    saved: Arc<tokio::sync::Mutex<Option<LogId>>>,
    /// Numbers the temporary files of builds and receptions, which may overlap.
    temporaries: Arc<AtomicU64>,
    db: Arc<DB>,
    group: GroupId,
}

impl<A> Clone for GroupStateMachine<A> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            applied: self.applied.clone(),
            saved: self.saved.clone(),
            temporaries: self.temporaries.clone(),
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

/// Writes a snapshot file's header.
fn write_header(out: &mut impl Write, meta: &SnapshotMeta) -> std::io::Result<()> {
    let meta = encode(meta).map_err(std::io::Error::other)?;
    out.write_all(MAGIC)?;
    out.write_all(&(meta.len() as u64).to_le_bytes())?;
    out.write_all(&meta)
}

/// What a snapshot file starts with.
enum Header {
    /// The current format: the metadata; the reader is at the application's bytes.
    Current(SnapshotMeta),
    /// An older version's file: one postcard value.
    Legacy,
}

/// Reads a snapshot file's header.
fn read_header(input: &mut impl Read) -> Result<Header, String> {
    let mut magic = [0u8; 8];
    match input.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => {}
        // Older files start with the postcard metadata (first byte 0 or 1), and may be shorter than 8 bytes.
        Ok(()) => return Ok(Header::Legacy),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Header::Legacy),
        Err(e) => return Err(e.to_string()),
    }
    let mut length = [0u8; 8];
    input.read_exact(&mut length).map_err(|e| e.to_string())?;
    let length = u64::from_le_bytes(length);
    // Metadata is a few hundred bytes per member; anything near this is a corrupt length, not a big cluster.
    if length > 64 << 20 {
        return Err(format!("snapshot metadata of {length} bytes"));
    }
    let mut meta = vec![0u8; length as usize];
    input.read_exact(&mut meta).map_err(|e| e.to_string())?;
    decode(&meta).map(Header::Current).map_err(|e| e.to_string())
}

/// A writer that syncs the file it writes every [`SNAPSHOT_SYNC_SLICE`] bytes.
struct SyncingWriter {
    file: BufWriter<std::fs::File>,
    unsynced: usize,
    written: u64,
}

/// Bytes written between syncs of a snapshot file.
const SNAPSHOT_SYNC_SLICE: usize = 4 << 20;

impl SyncingWriter {
    fn new(file: std::fs::File) -> Self {
        Self {
            file: BufWriter::with_capacity(1 << 20, file),
            unsynced: 0,
            written: 0,
        }
    }

    /// Flushes and syncs everything; returns the file and the bytes written.
    fn finish(self) -> std::io::Result<(std::fs::File, u64)> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((file, self.written))
    }
}

impl Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        self.written += n as u64;
        if self.unsynced >= SNAPSHOT_SYNC_SLICE {
            self.file.flush()?;
            self.file.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Creates `dir` (and makes its entry durable) if it does not exist.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

impl<A: GroupApp> GroupStateMachine<A> {
    /// Opens the state machine of `group`, restoring `app` from the group's last snapshot if there is one.
    pub fn open(db: Arc<DB>, group: GroupId, app: Arc<RwLock<A>>) -> Result<Self, StorageError> {
        let mut sm = Self {
            app,
            applied: Arc::default(),
            saved: Arc::default(),
            temporaries: Arc::default(),
            db,
            group,
        };
        sm.remove_temporaries();
        sm.convert_legacy()?;
        let path = sm.snapshot_path();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sm),
            Err(e) => return Err(snapshot_err(ErrorVerb::Read, format!("{}: {e}", path.display()))),
        };
        let meta = restore_from(&sm.app, file, &path)?;
        sm.saved = Arc::new(tokio::sync::Mutex::new(meta.last_log_id));
        let mut applied = sm.applied.lock();
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        drop(applied);
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

    /// A fresh temporary file name next to the snapshot: `kind` is `partial` (a build) or `receiving`.
    fn temporary_path(&self, kind: &str) -> PathBuf {
        let n = self.temporaries.fetch_add(1, Ordering::Relaxed);
        snapshot_dir(&self.db).join(format!("group-{}.snap.{kind}-{n}", self.group))
    }

    /// Removes what builds and receptions interrupted by a crash left behind.
    fn remove_temporaries(&self) {
        let prefix = format!("group-{}.snap.", self.group);
        let Ok(entries) = std::fs::read_dir(snapshot_dir(&self.db)) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a leftover snapshot file");
                }
            }
        }
    }

    /// Rewrites a snapshot an older version kept (in RocksDB, or as a file of the older format) as a file of the
    /// current format, before anything reads it.
    fn convert_legacy(&self) -> Result<(), StorageError> {
        let path = self.snapshot_path();
        let unreadable =
            |e: &dyn std::fmt::Display| snapshot_err(ErrorVerb::Read, format!("{}: {e}", path.display()));
        let legacy: Option<Vec<u8>> = match std::fs::File::open(&path) {
            Ok(mut file) => match read_header(&mut file).map_err(|e| unreadable(&e))? {
                Header::Current(_) => None,
                Header::Legacy => Some(std::fs::read(&path).map_err(|e| unreadable(&e))?),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cf = self
                    .db
                    .cf_handle(CF_SNAPSHOT)
                    .ok_or_else(|| snapshot_err(ErrorVerb::Read, "column family missing"))?;
                self.db
                    .get_cf(&cf, meta_key(self.group, b"snapshot"))
                    .map_err(|e| snapshot_err(ErrorVerb::Read, e))?
            }
            Err(e) => return Err(unreadable(&e)),
        };
        let Some(bytes) = legacy else {
            return Ok(());
        };
        let legacy: LegacySnapshot = decode(&bytes).map_err(|e| unreadable(&e))?;
        let temporary = self.temporary_path("partial");
        let written = (|| {
            ensure_dir(snapshot_dir(&self.db).as_path())?;
            let mut out = SyncingWriter::new(std::fs::File::create(&temporary)?);
            write_header(&mut out, &legacy.meta)?;
            out.write_all(&legacy.data)?;
            out.finish()?;
            move_into_place(&temporary, &path)
        })();
        written.map_err(|e| snapshot_err(ErrorVerb::Write, format!("{}: {e}", path.display())))?;
        self.forget_legacy_copy()
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        tracing::info!(group = self.group, "converted a snapshot of an older format");
        Ok(())
    }

    /// Deletes the copy an older version kept in RocksDB: the file takes precedence.
    fn forget_legacy_copy(&self) -> Result<(), String> {
        if let Some(cf) = self.db.cf_handle(CF_SNAPSHOT) {
            self.db
                .delete_cf(&cf, meta_key(self.group, b"snapshot"))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Moves the complete, synced snapshot file `temporary` into place, unless a newer snapshot is already there
    /// (then it is dropped). openraft purges the log the snapshot replaces as soon as this returns. Returns the
    /// snapshot's data, open at its start.
    async fn commit(&self, temporary: PathBuf, meta: &SnapshotMeta) -> Result<SnapshotFile, StorageError> {
        let mut saved = self.saved.lock().await;
        let path = self.snapshot_path();
        let older = saved.is_some() && meta.last_log_id <= *saved;
        let this = self.clone();
        let kept = tokio::task::spawn_blocking(move || {
            if older {
                // A build that finished after a newer install: openraft ignores it too. Hand back its data (open
                // handles outlive the unlink) and keep the newer file.
                let file = std::fs::File::open(&temporary)?;
                std::fs::remove_file(&temporary)?;
                return Ok::<_, std::io::Error>((file, temporary));
            }
            move_into_place(&temporary, &path)?;
            this.forget_legacy_copy().map_err(std::io::Error::other)?;
            Ok((std::fs::File::open(&path)?, path))
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        if !older {
            *saved = meta.last_log_id;
        }
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(kept.0),
            path: kept.1,
        })
    }
}

/// Restores `app` from the snapshot file `file` (at its start) and returns the snapshot's metadata.
fn restore_from<A: GroupApp>(
    app: &RwLock<A>,
    mut file: std::fs::File,
    path: &Path,
) -> Result<SnapshotMeta, StorageError> {
    let unreadable =
        |e: &dyn std::fmt::Display| snapshot_err(ErrorVerb::Read, format!("{}: {e}", path.display()));
    let meta = match read_header(&mut file).map_err(|e| unreadable(&e))? {
        Header::Current(meta) => meta,
        Header::Legacy => return Err(unreadable(&"not a snapshot file of the current format")),
    };
    let mut input = BufReader::with_capacity(1 << 20, file);
    app.write()
        .restore(&mut input)
        .map_err(|e| unreadable(&format!("restoring the application: {e}")))?;
    Ok(meta)
}

/// Renames a complete, synced file over `path` and syncs the directory: a crash leaves the old file or the new.
fn move_into_place(temporary: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(temporary, path)?;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("snapshot path has no directory"))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The directory of a node's snapshot files: inside RocksDB's directory, which RocksDB leaves alone (it only
/// touches files whose names it knows), so a node's data stays in one place.
fn snapshot_dir(db: &DB) -> PathBuf {
    db.path().join("snapshots")
}

impl<A: GroupApp> RaftSnapshotBuilder<TypeConfig> for GroupStateMachine<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = Instant::now();
        let (app, applied) = (self.app.clone(), self.applied.clone());
        let temporary = self.temporary_path("partial");
        let dir = snapshot_dir(&self.db);
        // Write on the blocking pool, under the read lock so the data and `last_applied` describe the same
        // state. This keeps the work off the runtime, but not its effect: `apply` waits for the write lock
        // meanwhile, blocking its worker, and parking_lot then queues new readers behind that writer too, so a
        // node can stall for as long as the snapshot takes to write (measured before snapshots streamed: up to
        // 0.25 s at 160 MB). A copy-on-write state would remove it.
        let file = temporary.clone();
        let built = tokio::task::spawn_blocking(move || {
            ensure_dir(&dir).map_err(SnapshotError::Io)?;
            let mut out = SyncingWriter::new(std::fs::File::create(&file)?);
            let meta = {
                let app = app.read();
                // The read lock alone keeps `last_applied` still (applying takes the write lock first), so the
                // bookkeeping lock is held only to read it.
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
                write_header(&mut out, &meta)?;
                app.snapshot(&mut out)?;
                meta
            };
            let (_, bytes) = out.finish()?;
            Ok::<_, SnapshotError>((meta, bytes))
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        let (meta, bytes) = match built {
            Ok(built) => built,
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                tracing::error!(group = self.group, error = %e, "snapshot build failed; nothing saved");
                return Err(snapshot_err(
                    ErrorVerb::Write,
                    format!("writing the snapshot: {e}"),
                ));
            }
        };
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
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let path = self.temporary_path("receiving");
        let dir = snapshot_dir(&self.db);
        let target = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            ensure_dir(&dir)?;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&target)
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e| snapshot_err(ErrorVerb::Write, format!("{}: {e}", path.display())))?;
        Ok(Box::new(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path,
        }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let SnapshotFile { file, path: source } = *snapshot;
        let mut file = file.into_std().await;
        // The data is normally the file this node received into; it may be any snapshot file (openraft's storage
        // suite hands over another node's). Persist it as our own before restoring: if we crashed after restoring
        // but before persisting, the restart would lack the data.
        let ours = source.parent() == Some(snapshot_dir(&self.db).as_path())
            && source.file_name().is_some_and(|name| {
                name.to_string_lossy()
                    .starts_with(&format!("group-{}.snap.receiving-", self.group))
            });
        let temporary = if ours {
            source.clone()
        } else {
            self.temporary_path("partial")
        };
        let expected = meta.clone();
        let target = temporary.clone();
        tokio::task::spawn_blocking(move || {
            file.seek(SeekFrom::Start(0))?;
            if ours {
                file.sync_all()?;
            } else {
                let mut out = SyncingWriter::new(std::fs::File::create(&target)?);
                std::io::copy(&mut file, &mut out)?;
                out.finish()?;
            }
            // What arrived must be the snapshot openraft says it is.
            let mut check = std::fs::File::open(&target)?;
            match read_header(&mut check).map_err(std::io::Error::other)? {
                Header::Current(found)
                    if found.last_log_id == expected.last_log_id
                        && found.snapshot_id == expected.snapshot_id =>
                {
                    Ok(())
                }
                _ => Err(std::io::Error::other(format!(
                    "the received snapshot is not {} ({})",
                    expected.snapshot_id,
                    target.display()
                ))),
            }
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            snapshot_err(ErrorVerb::Write, e)
        })?;
        let data = self.commit(temporary, meta).await?;
        let (app, path) = (self.app.clone(), data.path.clone());
        let file = data.file.into_std().await;
        tokio::task::spawn_blocking(move || restore_from(&app, file, &path))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))??;
        let mut applied = self.applied.lock();
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        drop(applied);
        metrics::counter!("trestle_raft_snapshots_installed_total", "group" => self.group.to_string())
            .increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.snapshot_path();
        let opened = tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            let meta = match read_header(&mut file).map_err(|e| format!("{}: {e}", path.display()))? {
                Header::Current(meta) => meta,
                Header::Legacy => {
                    return Err(format!(
                        "{}: not a snapshot file of the current format",
                        path.display()
                    ));
                }
            };
            file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            Ok(Some((meta, file, path)))
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Read, e))?
        .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(opened.map(|(meta, file, path)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile {
                file: tokio::fs::File::from_std(file),
                path,
            }),
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
            snapshot_id: format!("{last_log_id:?}"),
        }
    }

    fn at(index: u64) -> Option<LogId> {
        Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index))
    }

    /// A snapshot file of a [`Number`] in the current format, as a temporary of `sm`.
    fn snapshot_file(sm: &GroupStateMachine<Number>, meta: &SnapshotMeta, value: u64) -> PathBuf {
        let path = sm.temporary_path("partial");
        ensure_dir(path.parent().unwrap()).unwrap();
        let mut out = std::fs::File::create(&path).unwrap();
        write_header(&mut out, meta).unwrap();
        out.write_all(&value.to_be_bytes()).unwrap();
        path
    }

    fn open(db: &Arc<DB>) -> GroupStateMachine<Number> {
        GroupStateMachine::open(db.clone(), 7, Arc::new(RwLock::new(Number(0)))).unwrap()
    }

    #[tokio::test]
    async fn snapshots_older_versions_kept_are_restored_and_rewritten_in_the_current_format() {
        // In RocksDB.
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let legacy = LegacySnapshot {
            meta: meta(at(3)),
            data: 42u64.to_be_bytes().to_vec(),
        };
        let cf = db.cf_handle(CF_SNAPSHOT).unwrap();
        db.put_cf(&cf, meta_key(7, b"snapshot"), encode(&legacy).unwrap())
            .unwrap();
        let mut sm = open(&db);
        assert_eq!(sm.app().read().0, 42, "the legacy snapshot was not restored");
        assert!(
            db.get_cf(&cf, meta_key(7, b"snapshot")).unwrap().is_none(),
            "the legacy copy outlived the file"
        );
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, legacy.meta);

        // As a file of the older format.
        std::fs::write(sm.snapshot_path(), encode(&legacy).unwrap()).unwrap();
        drop((sm, current));
        let sm = open(&db);
        assert_eq!(sm.app().read().0, 42);
        let mut file = std::fs::File::open(sm.snapshot_path()).unwrap();
        assert!(matches!(read_header(&mut file), Ok(Header::Current(m)) if m == legacy.meta));

        // Leftovers of a build or a reception that crashed before its rename are removed, not read.
        std::fs::write(sm.temporary_path("partial"), b"torn").unwrap();
        std::fs::write(sm.temporary_path("receiving"), b"torn").unwrap();
        drop(sm);
        let sm = open(&db);
        assert_eq!(sm.app().read().0, 42);
        let left: Vec<_> = std::fs::read_dir(sm.snapshot_path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["group-7.snap".to_string()]);
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
        assert_eq!(
            std::fs::read_dir(sm.snapshot_path().parent().unwrap())
                .unwrap()
                .count(),
            1,
            "the failed build left a file behind"
        );
        drop(sm);
        assert_eq!(open(&db).app().read().0, 50);
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let sm = open(&db);
        // An installed snapshot at 20, then a build of 10 that finishes late.
        let newer = snapshot_file(&sm, &meta(at(20)), 2);
        sm.commit(newer, &meta(at(20))).await.unwrap();
        let late = snapshot_file(&sm, &meta(at(10)), 1);
        sm.commit(late, &meta(at(10))).await.unwrap();
        drop(sm);
        let reopened = open(&db);
        assert_eq!(reopened.app().read().0, 2);
        // After a restart the file on disk is the bar.
        let late = snapshot_file(&reopened, &meta(at(15)), 3);
        reopened.commit(late, &meta(at(15))).await.unwrap();
        drop(reopened);
        assert_eq!(open(&db).app().read().0, 2);
    }

    #[tokio::test]
    async fn a_snapshot_streams_from_one_node_to_another_and_a_wrong_one_is_refused() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (db_a, db_b) = (open_db(dir_a.path()).unwrap(), open_db(dir_b.path()).unwrap());
        let mut leader = open(&db_a);
        leader.app().write().0 = 77;
        leader.applied.lock().last_applied = at(9);
        leader.build_snapshot().await.unwrap();
        let current = leader.get_current_snapshot().await.unwrap().unwrap();

        // openraft copies the file into the follower's reception file in chunks.
        let mut follower = open(&db_b);
        let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
        let mut source = current.snapshot;
        tokio::io::copy(&mut source, &mut receiving).await.unwrap();
        follower.install_snapshot(&current.meta, receiving).await.unwrap();
        assert_eq!(follower.app().read().0, 77);
        assert_eq!(follower.applied_state().await.unwrap().0, at(9));
        drop(follower);
        assert_eq!(
            open(&db_b).app().read().0,
            77,
            "the installed snapshot was not kept"
        );

        // A reception whose bytes are another snapshot's is refused, and the state stays.
        let mut follower = open(&db_b);
        let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
        let other = snapshot_file(&follower, &meta(at(30)), 5);
        tokio::io::copy(&mut tokio::fs::File::open(&other).await.unwrap(), &mut receiving)
            .await
            .unwrap();
        let err = follower
            .install_snapshot(&meta(at(31)), receiving)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not Some"), "{err}");
        assert_eq!(follower.app().read().0, 77);
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_file_stops_the_group_instead_of_starting_empty() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let path = open(&db).snapshot_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for corrupt in [
            &b"\xff\xff\xff"[..],
            &b"TRSNAP2\n\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        ] {
            std::fs::write(&path, corrupt).unwrap();
            let err = GroupStateMachine::open(db.clone(), 7, Arc::new(RwLock::new(Number(0))))
                .err()
                .expect("a corrupt snapshot must not open");
            assert!(err.to_string().contains("group-7.snap"), "{err}");
        }
        // A valid header with an application state that does not restore.
        let mut out = std::fs::File::create(&path).unwrap();
        write_header(&mut out, &meta(at(4))).unwrap();
        out.write_all(b"short").unwrap();
        drop(out);
        let err = GroupStateMachine::open(db.clone(), 7, Arc::new(RwLock::new(Number(0))))
            .err()
            .expect("an unrestorable snapshot must not open");
        assert!(err.to_string().contains("not 8 bytes"), "{err}");
    }
}
