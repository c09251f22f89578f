//! Where a node keeps its Raft state: each group's log and vote, and each group's current snapshot.
//!
//! Two traits, two implementations each, chosen together per node ([`NodeStorage`], [`NodeConfig::storage`]):
//! - **The log and the vote** are openraft's `RaftLogStorage`: [`LogStore`] on RocksDB (appends synced in groups
//!   by one thread, the production path) and [`MemoryLogStore`]. openraft's own storage suite checks both
//!   (`tests/storage_suite.rs`).
//! - **Snapshots** are a [`SnapshotStore`]: one current snapshot per group, replaced atomically by a temporary
//!   the state machine wrote ([`DiskSnapshots`]: files beside the database; [`MemorySnapshots`]). The
//!   conformance suite `testing::check_snapshot_store` checks any implementation.
//!
//! The memory implementations answer at once and never touch the blocking pool, so a simulation running nodes on
//! them is deterministic: the same seed gives the same execution. They keep their data as long as the
//! [`MemoryStorage`] handle lives, across node restarts in one process, as a disk would across process restarts.
//!
//! [`NodeConfig::storage`]: crate::NodeConfig::storage
//! [`LogStore`]: crate::LogStore

mod disk;
mod memory;

use std::io::{Read, SeekFrom, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use disk::DiskSnapshots;
pub use memory::{MemoryLogStore, MemorySnapshots, MemoryStorage};

use crate::types::GroupId;

/// Which storage a node keeps its Raft state in.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum NodeStorage {
    /// RocksDB and snapshot files in the node's data directory (`<data-dir>/db`). The default.
    #[default]
    Disk,
    /// In memory, for tests and simulations: nothing survives the process, everything survives a node restart
    /// on the same handle. Deterministic (no blocking pool).
    Memory(MemoryStorage),
}

/// A node's opened storage, shared by its groups: each group's log store and the snapshot store come from it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum GroupStorage {
    /// RocksDB for logs and votes, snapshot files beside it.
    RocksDb {
        /// The database.
        db: Arc<rocksdb::DB>,
        /// The thread that syncs every group's appends to it.
        wal: crate::log_store::WalSync,
        /// The snapshot files.
        snapshots: DiskSnapshots,
    },
    /// Everything in memory.
    Memory(MemoryStorage),
}

impl GroupStorage {
    /// Logs in `db`, snapshots in its `snapshots` directory. Starts the thread that syncs the log's appends.
    pub fn rocksdb(db: Arc<rocksdb::DB>) -> std::io::Result<Self> {
        Ok(Self::RocksDb {
            snapshots: DiskSnapshots::beside(db.clone()),
            wal: crate::log_store::WalSync::start(db.clone())?,
            db,
        })
    }

    /// Everything in `memory`.
    pub fn memory(memory: MemoryStorage) -> Self {
        Self::Memory(memory)
    }

    /// The key space of `group`: where a [`DiskBacked`](crate::DiskBacked) state machine keeps its state.
    pub fn key_space(&self, group: GroupId) -> Arc<dyn crate::keyspace::KeySpace> {
        match self {
            Self::RocksDb { db, .. } => Arc::new(crate::keyspace::RocksKeySpace::new(db.clone(), group)),
            Self::Memory(memory) => Arc::new(memory.key_space(group)),
        }
    }

    /// The snapshot store.
    pub fn snapshots(&self) -> SharedSnapshotStore {
        match self {
            Self::RocksDb { snapshots, .. } => Arc::new(snapshots.clone()),
            Self::Memory(memory) => Arc::new(memory.snapshots()),
        }
    }
}

/// The name of a temporary snapshot of a [`SnapshotStore`]: written, not yet current.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Temporary(pub String);

impl std::fmt::Display for Temporary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A temporary snapshot being written. Dropping it unfinished leaves a temporary that
/// [`SnapshotStore::clean`] removes.
pub trait SnapshotWriter: Write + Send {
    /// Its name.
    fn name(&self) -> &Temporary;
    /// Makes everything written durable and returns the temporary's name.
    fn finish(self: Box<Self>) -> std::io::Result<Temporary>;
}

/// A reader of a snapshot's bytes.
pub type SnapshotReader = Box<dyn Read + Send>;

/// Where a node keeps its groups' snapshots: for each group one current snapshot, replaced atomically and durably
/// by a temporary once that is complete. Every method may block on a disk; [`SnapshotStore::blocks`] says
/// whether the caller should move it off the async runtime.
///
/// Implementations must guarantee that after a crash a group's current snapshot is either the one before a
/// [`SnapshotStore::commit`] or the one it committed, whole; and that a temporary is never current until
/// committed. `testing::check_snapshot_store` checks these on any implementation.
pub trait SnapshotStore: Send + Sync + std::fmt::Debug + 'static {
    /// Whether calls wait on a disk (run them on the blocking pool) or return at once (run them in place).
    fn blocks(&self) -> bool;

    /// Removes the temporaries of `group` that writes interrupted by a crash left behind.
    fn clean(&self, group: GroupId) -> std::io::Result<()>;

    /// A new, empty temporary snapshot of `group`.
    fn create(&self, group: GroupId) -> std::io::Result<Box<dyn SnapshotWriter>>;

    /// Makes the finished temporary `temporary` the current snapshot of `group`, durably.
    fn commit(&self, group: GroupId, temporary: &Temporary) -> std::io::Result<()>;

    /// Forgets a temporary.
    fn discard(&self, temporary: &Temporary) -> std::io::Result<()>;

    /// The current snapshot of `group` from its start, if there is one.
    fn read(&self, group: GroupId) -> std::io::Result<Option<SnapshotReader>>;

    /// A finished temporary, from its start.
    fn read_temporary(&self, temporary: &Temporary) -> std::io::Result<SnapshotReader>;

    /// The current snapshot of `group` as openraft's snapshot data (for sending), at its start.
    fn data(&self, group: GroupId) -> std::io::Result<Option<SnapshotData>>;

    /// A finished temporary as openraft's snapshot data, at its start.
    fn temporary_data(&self, temporary: &Temporary) -> std::io::Result<SnapshotData>;

    /// Empty snapshot data of `group` that openraft writes a snapshot received from the leader into.
    fn receive(&self, group: GroupId) -> std::io::Result<SnapshotData>;

    /// Makes received data (from [`SnapshotStore::receive`], or any snapshot data) a finished temporary of
    /// `group`, durably.
    fn received(&self, group: GroupId, data: ReceivedData) -> std::io::Result<Temporary>;

    /// A snapshot an older version of this store kept in another format, whole (see
    /// `GroupStateMachine::open`); `None` when there is none.
    fn legacy(&self, _group: GroupId) -> std::io::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Forgets what [`SnapshotStore::legacy`] returned, once it is converted.
    fn forget_legacy(&self, _group: GroupId) -> std::io::Result<()> {
        Ok(())
    }
}

/// A group's snapshot data as openraft handles it: what a leader reads chunks from to send, and what a follower
/// writes received chunks into.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotData {
    /// An open snapshot file.
    File {
        /// The file.
        file: tokio::fs::File,
        /// Its path.
        path: std::path::PathBuf,
    },
    /// Bytes in memory, and the temporary they will become when received.
    Memory {
        /// The bytes.
        bytes: std::io::Cursor<Vec<u8>>,
        /// The temporary it was created as by [`SnapshotStore::receive`], if any.
        name: Option<Temporary>,
    },
}

/// Snapshot data handed back to the store, out of the async runtime's types.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReceivedData {
    /// An open snapshot file.
    File {
        /// The file.
        file: std::fs::File,
        /// Its path.
        path: std::path::PathBuf,
    },
    /// Bytes in memory.
    Memory {
        /// The bytes.
        bytes: Vec<u8>,
        /// The temporary it was created as, if any.
        name: Option<Temporary>,
    },
}

impl ReceivedData {
    /// A reader of the data from its start.
    pub fn into_reader(self) -> std::io::Result<SnapshotReader> {
        match self {
            Self::File { mut file, .. } => {
                std::io::Seek::seek(&mut file, SeekFrom::Start(0))?;
                Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))
            }
            Self::Memory { bytes, .. } => Ok(Box::new(std::io::Cursor::new(bytes))),
        }
    }
}

impl SnapshotData {
    /// The data out of the async runtime's types.
    pub async fn into_received(self) -> ReceivedData {
        match self {
            Self::File { file, path } => ReceivedData::File {
                file: file.into_std().await,
                path,
            },
            Self::Memory { bytes, name } => ReceivedData::Memory {
                bytes: bytes.into_inner(),
                name,
            },
        }
    }
}

impl tokio::io::AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::File { file, .. } => Pin::new(file).poll_read(cx, buf),
            Self::Memory { bytes, .. } => Pin::new(bytes).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::File { file, .. } => Pin::new(file).poll_write(cx, buf),
            Self::Memory { bytes, .. } => Pin::new(bytes).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::File { file, .. } => Pin::new(file).poll_flush(cx),
            Self::Memory { bytes, .. } => Pin::new(bytes).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::File { file, .. } => Pin::new(file).poll_shutdown(cx),
            Self::Memory { bytes, .. } => Pin::new(bytes).poll_shutdown(cx),
        }
    }
}

impl tokio::io::AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        match self.get_mut() {
            Self::File { file, .. } => Pin::new(file).start_seek(position),
            Self::Memory { bytes, .. } => Pin::new(bytes).start_seek(position),
        }
    }
    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match self.get_mut() {
            Self::File { file, .. } => Pin::new(file).poll_complete(cx),
            Self::Memory { bytes, .. } => Pin::new(bytes).poll_complete(cx),
        }
    }
}

/// A shared snapshot store.
pub type SharedSnapshotStore = Arc<dyn SnapshotStore>;
