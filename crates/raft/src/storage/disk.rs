//! Snapshots as files: `<dir>/group-<id>.snap`, next to the node's RocksDB (inside its directory, which RocksDB
//! leaves alone: it only touches files whose names it knows).
//!
//! A temporary is `group-<id>.snap.partial-<n>` (a build) or `.receiving-<n>` (a reception). It is written
//! through a buffer and synced every 4 MiB, so the disk never holds much unsynced snapshot data for a Raft log
//! fsync to wait behind; committing renames it over the current file and syncs the directory, so a crash leaves
//! the old file or the new one, whole.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::DB;

use crate::snapshot_format::{MAGIC, MAGIC_V2};

use super::{ReceivedData, SnapshotData, SnapshotReader, SnapshotStore, SnapshotWriter, Temporary};
use crate::log_store::{CF_SNAPSHOT, meta_key};
use crate::types::GroupId;

/// Bytes written between syncs of a snapshot file.
const SYNC_SLICE: usize = 4 << 20;

/// Snapshot files in one directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DiskSnapshots {
    dir: PathBuf,
    /// The database, where older versions kept snapshots (the `raft_snapshot` column family).
    db: Option<Arc<DB>>,
    next: Arc<AtomicU64>,
}

impl DiskSnapshots {
    /// Snapshots in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            db: None,
            next: Arc::default(),
        }
    }

    /// The snapshots of a node whose RocksDB is `db`: in its `snapshots` directory, and older versions' in its
    /// `raft_snapshot` column family.
    pub fn beside(db: Arc<DB>) -> Self {
        Self {
            dir: db.path().join("snapshots"),
            db: Some(db),
            next: Arc::default(),
        }
    }

    /// The file of `group`'s current snapshot.
    pub fn path(&self, group: GroupId) -> PathBuf {
        self.dir.join(format!("group-{group}.snap"))
    }

    fn temporary_path(&self, group: GroupId, kind: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("group-{group}.snap.{kind}-{n}"))
    }

    fn named(&self, temporary: &Temporary) -> PathBuf {
        self.dir.join(&temporary.0)
    }

    /// Creates the directory, and makes its entry durable, if it does not exist.
    fn ensure_dir(&self) -> std::io::Result<()> {
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir)?;
            if let Some(parent) = self.dir.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// Whether `path` is a reception of `group` in this store.
    fn is_reception(&self, group: GroupId, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path.file_name().is_some_and(|name| {
                name.to_string_lossy()
                    .starts_with(&format!("group-{group}.snap.receiving-"))
            })
    }
}

fn name_of(path: &Path) -> std::io::Result<Temporary> {
    path.file_name()
        .map(|name| Temporary(name.to_string_lossy().into_owned()))
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))
}

/// A temporary snapshot file, synced every [`SYNC_SLICE`] bytes.
struct FileWriter {
    file: BufWriter<std::fs::File>,
    name: Temporary,
    unsynced: usize,
}

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        if self.unsynced >= SYNC_SLICE {
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

impl SnapshotWriter for FileWriter {
    fn name(&self) -> &Temporary {
        &self.name
    }

    fn finish(self: Box<Self>) -> std::io::Result<Temporary> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(self.name)
    }
}

impl SnapshotStore for DiskSnapshots {
    fn blocks(&self) -> bool {
        true
    }

    fn clean(&self, group: GroupId) -> std::io::Result<()> {
        let prefix = format!("group-{group}.snap.");
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    fn create(&self, group: GroupId) -> std::io::Result<Box<dyn SnapshotWriter>> {
        self.ensure_dir()?;
        let path = self.temporary_path(group, "partial");
        let file = std::fs::File::create(&path)?;
        Ok(Box::new(FileWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            name: name_of(&path)?,
            unsynced: 0,
        }))
    }

    fn commit(&self, group: GroupId, temporary: &Temporary) -> std::io::Result<()> {
        std::fs::rename(self.named(temporary), self.path(group))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn discard(&self, temporary: &Temporary) -> std::io::Result<()> {
        match std::fs::remove_file(self.named(temporary)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn read(&self, group: GroupId) -> std::io::Result<Option<SnapshotReader>> {
        match std::fs::File::open(self.path(group)) {
            Ok(file) => Ok(Some(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_temporary(&self, temporary: &Temporary) -> std::io::Result<SnapshotReader> {
        let file = std::fs::File::open(self.named(temporary))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))
    }

    fn data(&self, group: GroupId) -> std::io::Result<Option<SnapshotData>> {
        let path = self.path(group);
        match std::fs::File::open(&path) {
            Ok(file) => Ok(Some(SnapshotData::File {
                file: tokio::fs::File::from_std(file),
                path,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn temporary_data(&self, temporary: &Temporary) -> std::io::Result<SnapshotData> {
        let path = self.named(temporary);
        Ok(SnapshotData::File {
            file: tokio::fs::File::from_std(std::fs::File::open(&path)?),
            path,
        })
    }

    fn receive(&self, group: GroupId) -> std::io::Result<SnapshotData> {
        self.ensure_dir()?;
        let path = self.temporary_path(group, "receiving");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(SnapshotData::File {
            file: tokio::fs::File::from_std(file),
            path,
        })
    }

    fn received(&self, group: GroupId, data: ReceivedData) -> std::io::Result<Temporary> {
        match data {
            ReceivedData::File { file, path } if self.is_reception(group, &path) => {
                file.sync_all()?;
                name_of(&path)
            }
            // Any other data (another store's file, bytes): copied into a temporary of ours.
            ReceivedData::File { mut file, .. } => {
                file.seek(SeekFrom::Start(0))?;
                let mut out = self.create(group)?;
                std::io::copy(&mut file, &mut out)?;
                out.finish()
            }
            ReceivedData::Memory { bytes, .. } => {
                let mut out = self.create(group)?;
                out.write_all(&bytes)?;
                out.finish()
            }
        }
    }

    fn legacy(&self, group: GroupId) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::File::open(self.path(group)) {
            Ok(mut file) => {
                // Only the first bytes tell; the file may be hundreds of MB.
                let mut start = Vec::with_capacity(MAGIC.len());
                std::io::Read::by_ref(&mut file)
                    .take(MAGIC.len() as u64)
                    .read_to_end(&mut start)?;
                if start == MAGIC || start == MAGIC_V2 {
                    return Ok(None);
                }
                file.seek(SeekFrom::Start(0))?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                return Ok(Some(bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let Some(db) = &self.db else {
            return Ok(None);
        };
        let cf = db
            .cf_handle(CF_SNAPSHOT)
            .ok_or_else(|| std::io::Error::other(format!("column family {CF_SNAPSHOT} missing")))?;
        db.get_cf(&cf, meta_key(group, b"snapshot"))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn forget_legacy(&self, group: GroupId) -> std::io::Result<()> {
        if let Some(db) = &self.db
            && let Some(cf) = db.cf_handle(CF_SNAPSHOT)
        {
            db.delete_cf(&cf, meta_key(group, b"snapshot"))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }
}
