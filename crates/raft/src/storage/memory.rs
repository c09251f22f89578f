//! Storage in memory: every group's log, vote and snapshots in maps behind one lock. For tests and the
//! simulation: calls answer at once (no blocking pool, so a simulation stays deterministic), and the data lives
//! as long as a [`MemoryStorage`] handle does, across restarts of a node that is given the same handle.
//!
//! Nothing is lost between a write and its acknowledgement, so a node restarted on the same handle behaves as one
//! whose every synced write reached the disk: what the Raft log promises after a process crash.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::Mutex;

use super::{ReceivedData, SnapshotData, SnapshotReader, SnapshotStore, SnapshotWriter, Temporary};
use crate::types::{Entry, GroupId, LogId, TypeConfig, Vote};

type StorageError = std::io::Error;

/// One group's log and metadata.
#[derive(Debug, Default)]
struct GroupLog {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

#[derive(Debug, Default)]
struct State {
    logs: BTreeMap<GroupId, GroupLog>,
    snapshots: BTreeMap<GroupId, Vec<u8>>,
    temporaries: BTreeMap<Temporary, (GroupId, Vec<u8>)>,
    next_temporary: u64,
    key_spaces: BTreeMap<GroupId, crate::keyspace::MemoryKeySpace>,
}

/// A node's storage in memory. Cheap to clone: clones share the data. Give a restarted node the same handle to
/// restart it on its data.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the data: a configuration holding this handle is printed in logs and errors.
        let state = self.state.lock();
        f.debug_struct("MemoryStorage")
            .field("groups", &state.logs.len())
            .field("snapshots", &state.snapshots.len())
            .finish_non_exhaustive()
    }
}

impl MemoryStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// The log store of `group`.
    pub fn log(&self, group: GroupId) -> MemoryLogStore {
        MemoryLogStore {
            storage: self.clone(),
            group,
        }
    }

    /// The key space of `group` (the same one on every call, as a disk's would be).
    pub fn key_space(&self, group: GroupId) -> crate::keyspace::MemoryKeySpace {
        self.state.lock().key_spaces.entry(group).or_default().clone()
    }

    /// The snapshot store.
    pub fn snapshots(&self) -> MemorySnapshots {
        MemorySnapshots {
            storage: self.clone(),
        }
    }

    fn with_log<R>(&self, group: GroupId, f: impl FnOnce(&mut GroupLog) -> R) -> R {
        f(self.state.lock().logs.entry(group).or_default())
    }
}

/// The Raft log storage of one group, in memory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemoryLogStore {
    storage: MemoryStorage,
    group: GroupId,
}

impl RaftLogReader<TypeConfig> for MemoryLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.storage.with_log(self.group, |log| {
            log.entries.range(range).map(|(_, e)| e.clone()).collect()
        }))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.storage.with_log(self.group, |log| log.vote))
    }
}

impl RaftLogStorage<TypeConfig> for MemoryLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.storage.with_log(self.group, |log| {
            let last = log.entries.values().next_back().map(|e| e.log_id);
            LogState {
                last_purged_log_id: log.purged,
                last_log_id: last.or(log.purged),
            }
        }))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.storage.with_log(self.group, |log| log.vote = Some(*vote));
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.storage.with_log(self.group, |log| log.committed = committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.storage.with_log(self.group, |log| log.committed))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.storage.with_log(self.group, |log| {
            for entry in entries {
                log.entries.insert(entry.log_id.index, entry);
            }
        });
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), StorageError> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.storage.with_log(self.group, |log| {
            log.entries.split_off(&from);
        });
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.storage.with_log(self.group, |log| {
            log.purged = Some(log_id);
            log.entries = log.entries.split_off(&(log_id.index + 1));
        });
        Ok(())
    }
}

/// Snapshots in memory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemorySnapshots {
    storage: MemoryStorage,
}

/// Bytes as openraft's snapshot data, for sending.
fn as_data(bytes: Vec<u8>) -> SnapshotData {
    SnapshotData::Memory {
        bytes: std::io::Cursor::new(bytes),
        name: None,
    }
}

impl MemorySnapshots {
    /// A copy of `group`'s current snapshot.
    fn current(&self, group: GroupId) -> Option<Vec<u8>> {
        self.storage.state.lock().snapshots.get(&group).cloned()
    }

    /// A copy of a finished temporary.
    fn finished(&self, temporary: &Temporary) -> std::io::Result<Vec<u8>> {
        let state = self.storage.state.lock();
        let (_, bytes) = state
            .temporaries
            .get(temporary)
            .ok_or_else(|| missing(temporary))?;
        Ok(bytes.clone())
    }

    fn new_name(&self, group: GroupId) -> Temporary {
        let mut state = self.storage.state.lock();
        state.next_temporary += 1;
        Temporary(format!("group-{group}.snap.{}", state.next_temporary))
    }
}

/// A temporary being written: bytes kept aside until finished.
struct MemoryWriter {
    storage: MemoryStorage,
    group: GroupId,
    name: Temporary,
    bytes: Vec<u8>,
}

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapshotWriter for MemoryWriter {
    fn name(&self) -> &Temporary {
        &self.name
    }

    fn finish(self: Box<Self>) -> std::io::Result<Temporary> {
        let Self {
            storage,
            group,
            name,
            bytes,
        } = *self;
        storage
            .state
            .lock()
            .temporaries
            .insert(name.clone(), (group, bytes));
        Ok(name)
    }
}

fn missing(temporary: &Temporary) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no temporary snapshot {temporary}"),
    )
}

impl SnapshotStore for MemorySnapshots {
    fn blocks(&self) -> bool {
        false
    }

    fn clean(&self, group: GroupId) -> std::io::Result<()> {
        self.storage
            .state
            .lock()
            .temporaries
            .retain(|_, (g, _)| *g != group);
        Ok(())
    }

    fn create(&self, group: GroupId) -> std::io::Result<Box<dyn SnapshotWriter>> {
        Ok(Box::new(MemoryWriter {
            storage: self.storage.clone(),
            group,
            name: self.new_name(group),
            bytes: Vec::new(),
        }))
    }

    fn commit(&self, group: GroupId, temporary: &Temporary) -> std::io::Result<()> {
        let mut state = self.storage.state.lock();
        let (_, bytes) = state
            .temporaries
            .remove(temporary)
            .ok_or_else(|| missing(temporary))?;
        state.snapshots.insert(group, bytes);
        Ok(())
    }

    fn discard(&self, temporary: &Temporary) -> std::io::Result<()> {
        self.storage.state.lock().temporaries.remove(temporary);
        Ok(())
    }

    fn read(&self, group: GroupId) -> std::io::Result<Option<SnapshotReader>> {
        Ok(self
            .current(group)
            .map(|bytes| Box::new(std::io::Cursor::new(bytes)) as SnapshotReader))
    }

    fn read_temporary(&self, temporary: &Temporary) -> std::io::Result<SnapshotReader> {
        Ok(Box::new(std::io::Cursor::new(self.finished(temporary)?)))
    }

    fn data(&self, group: GroupId) -> std::io::Result<Option<SnapshotData>> {
        Ok(self.current(group).map(as_data))
    }

    fn temporary_data(&self, temporary: &Temporary) -> std::io::Result<SnapshotData> {
        Ok(as_data(self.finished(temporary)?))
    }

    fn receive(&self, group: GroupId) -> std::io::Result<SnapshotData> {
        Ok(SnapshotData::Memory {
            bytes: std::io::Cursor::new(Vec::new()),
            name: Some(self.new_name(group)),
        })
    }

    fn received(&self, group: GroupId, data: ReceivedData) -> std::io::Result<Temporary> {
        let bytes = match data {
            ReceivedData::Memory { bytes, .. } => bytes,
            ReceivedData::File { mut file, .. } => {
                use std::io::{Read, Seek, SeekFrom};
                file.seek(SeekFrom::Start(0))?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                bytes
            }
        };
        let name = self.new_name(group);
        self.storage
            .state
            .lock()
            .temporaries
            .insert(name.clone(), (group, bytes));
        Ok(name)
    }
}
