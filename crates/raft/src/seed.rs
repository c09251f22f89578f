//! Seeding a group on a new node with a state instead of founding it empty: how a backup becomes a new
//! cluster. Every member is seeded with the same state and membership; the group then starts as if a snapshot
//! of one committed entry had been installed on each, and elects a leader as a founded group would.

use std::io::Write;

use openraft::storage::RaftLogStorage;

use crate::log_store::LogStore;
use crate::snapshot_format::write_snapshot;
use crate::state_machine::SnapshotError;
use crate::storage::GroupStorage;
use crate::types::{GroupId, Membership, SnapshotMeta, StoredMembership, log_id};

/// Why a group could not be seeded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// The group already has a log or a snapshot on this node.
    #[error("raft group {group} already has data on this node: seed only a new data directory")]
    Exists {
        /// The group.
        group: GroupId,
    },
    /// The membership has no voter.
    #[error("raft group {group}: the membership has no voter")]
    NoVoter {
        /// The group.
        group: GroupId,
    },
    /// The application could not write its state.
    #[error("raft group {group}: writing the state: {source}")]
    State {
        /// The group.
        group: GroupId,
        /// Why.
        source: SnapshotError,
    },
    /// The storage failed.
    #[error("raft group {group}: storage: {source}")]
    Storage {
        /// The group.
        group: GroupId,
        /// Why.
        source: std::io::Error,
    },
}

/// Seeds `group` in `storage` (a node that has never run it) with the state `write_state` writes (what the
/// group's [`GroupApp::restore`](crate::GroupApp::restore) reads back) and `membership`. Seed every member
/// alike; a seeded node then starts the group without founding it.
pub async fn seed_group(
    storage: &GroupStorage,
    group: GroupId,
    membership: Membership,
    write_state: impl FnOnce(&mut dyn Write) -> Result<(), SnapshotError>,
) -> Result<(), SeedError> {
    let io = |source: std::io::Error| SeedError::Storage { group, source };
    let first_voter = membership.voter_ids().min().ok_or(SeedError::NoVoter { group })?;
    let snapshots = storage.snapshots();
    let state = match storage {
        GroupStorage::RocksDb { db, wal, .. } => {
            LogStore::new(db.clone(), wal.clone(), group)
                .get_log_state()
                .await
        }
        GroupStorage::Memory(memory) => memory.log(group).get_log_state().await,
    }
    .map_err(io)?;
    if state.last_log_id.is_some() || snapshots.read(group).map_err(io)?.is_some() {
        return Err(SeedError::Exists { group });
    }
    // Term 0, as openraft's own initialization writes the first membership: any election goes past it.
    let id = log_id(0, first_voter, 1);
    let meta = SnapshotMeta {
        last_log_id: Some(id),
        last_membership: StoredMembership::new(Some(id), membership),
    };
    let mut out = snapshots.create(group).map_err(io)?;
    write_snapshot(&mut out, &meta, write_state).map_err(|source| SeedError::State { group, source })?;
    let temporary = out.finish().map_err(io)?;
    snapshots.commit(group, &temporary).map_err(io)?;
    // The log starts after the seeded entry, as after a snapshot.
    match storage {
        GroupStorage::RocksDb { db, wal, .. } => {
            LogStore::new(db.clone(), wal.clone(), group).purge(id).await
        }
        GroupStorage::Memory(memory) => memory.log(group).purge(id).await,
    }
    .map_err(io)?;
    Ok(())
}
