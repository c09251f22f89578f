//! openraft's storage conformance suite, run against both log stores (RocksDB and memory) with the group state
//! machine over both snapshot stores; the snapshot store suite on both; and the guarantees the suites do not
//! cover: groups sharing one database stay apart, and everything survives a reopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/counters.rs"]
mod counters;

use std::sync::Arc;

use counters::Counters;
use futures::stream;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::blank_ent;
use openraft::testing::log::{StoreBuilder, Suite};
use parking_lot::RwLock;
use tempfile::TempDir;
use trestle_raft::testing::check_snapshot_store;
use trestle_raft::{
    DiskSnapshots, GroupStateMachine, LogStore, MemoryLogStore, MemoryStorage, SharedSnapshotStore,
    StorageError, TypeConfig, Vote, WalSync, open_db,
};

fn vote(term: u64, node: u64) -> Vote {
    openraft::Vote::new(term, node)
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e)
}

struct Builder {
    group: u64,
}

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, GroupStateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(dir.path()).expect("db opens");
        let wal = WalSync::start(db.clone()).map_err(io)?;
        // Another group's data in the same database must not leak into the one under test.
        if self.group != 0 {
            let mut other = LogStore::new(db.clone(), wal.clone(), 0);
            other.save_vote(&vote(9, 9)).await.map_err(io)?;
        }
        let log = LogStore::new(db.clone(), wal, self.group);
        let snapshots: SharedSnapshotStore = Arc::new(DiskSnapshots::beside(db));
        let sm = GroupStateMachine::open(snapshots, self.group, Arc::new(RwLock::new(Counters::default())))
            .map_err(io)?;
        Ok((dir, log, sm))
    }
}

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, MemoryLogStore, GroupStateMachine, MemoryStorage> for MemoryBuilder {
    async fn build(&self) -> Result<(MemoryStorage, MemoryLogStore, GroupStateMachine), StorageError> {
        let storage = MemoryStorage::new();
        // Another group's data in the same storage must not leak into the one under test.
        let mut other = storage.log(0);
        other.save_vote(&vote(9, 9)).await.map_err(io)?;
        let snapshots: SharedSnapshotStore = Arc::new(storage.snapshots());
        let sm =
            GroupStateMachine::open(snapshots, 7, Arc::new(RwLock::new(Counters::default()))).map_err(io)?;
        Ok((storage.clone(), storage.log(7), sm))
    }
}

#[tokio::test]
async fn openraft_conformance_suite_in_memory() {
    Suite::test_all(MemoryBuilder).await.unwrap();
}

#[tokio::test]
async fn snapshot_stores_conform() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshots");
    check_snapshot_store(|| Arc::new(DiskSnapshots::new(&path)) as SharedSnapshotStore).await;
    let memory = MemoryStorage::new();
    check_snapshot_store(|| Arc::new(memory.snapshots()) as SharedSnapshotStore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_conformance_suite_group_0() {
    Suite::test_all(Builder { group: 0 }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_conformance_suite_group_7_beside_another_group() {
    Suite::test_all(Builder { group: 7 }).await.unwrap();
}

#[tokio::test]
async fn log_vote_and_snapshot_survive_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path()).unwrap();
        let mut log = LogStore::new(db.clone(), WalSync::start(db.clone()).unwrap(), 3);
        log.save_vote(&vote(4, 1)).await.unwrap();
        let entries: Vec<_> = (1..=5).map(|i| blank_ent::<TypeConfig>(4, 1, i)).collect();
        // The suite checks the flushed callback; here only what reaches the disk matters.
        log.blocking_append(entries).await.unwrap();
        let snapshots: SharedSnapshotStore = Arc::new(DiskSnapshots::beside(db));
        let mut sm =
            GroupStateMachine::open(snapshots, 3, Arc::new(RwLock::new(Counters::default()))).unwrap();
        sm.apply(stream::iter(
            (1..=3).map(|i| Ok((blank_ent::<TypeConfig>(4, 1, i), None))),
        ))
        .await
        .unwrap();
        use openraft::RaftSnapshotBuilder;
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    let db = open_db(dir.path()).unwrap();
    let wal = WalSync::start(db.clone()).unwrap();
    let mut log = LogStore::new(db.clone(), wal.clone(), 3);
    assert_eq!(log.read_vote().await.unwrap(), Some(vote(4, 1)));
    assert_eq!(log.try_get_log_entries(0..10).await.unwrap().len(), 5);
    assert!(
        LogStore::new(db.clone(), wal, 2)
            .try_get_log_entries(0..10)
            .await
            .unwrap()
            .is_empty()
    );
    let snapshots: SharedSnapshotStore = Arc::new(DiskSnapshots::beside(db));
    let mut sm = GroupStateMachine::open(snapshots, 3, Arc::new(RwLock::new(Counters::default()))).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(3));
}

/// A log damaged in the middle of RocksDB's WAL does not open: the node stops with the damage named instead of
/// starting with the acknowledged entries after it silently dropped (RocksDB's default recovery would).
#[tokio::test]
async fn a_wal_damaged_before_its_end_fails_the_open_instead_of_dropping_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path()).unwrap();
        let mut log = LogStore::new(db.clone(), WalSync::start(db.clone()).unwrap(), 3);
        for i in 1..=200 {
            log.blocking_append([blank_ent::<TypeConfig>(1, 1, i)])
                .await
                .unwrap();
        }
    }
    let wal = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a WAL file");
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(
        bytes.len() > 4096,
        "the WAL holds the entries ({} bytes)",
        bytes.len()
    );
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();
    let Err(err) = open_db(dir.path()) else {
        panic!("a damaged WAL must not open");
    };
    assert!(err.to_string().to_lowercase().contains("corrupt"), "{err}");
}
