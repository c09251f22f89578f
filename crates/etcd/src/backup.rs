//! Backups of the key space: what Maintenance `Snapshot` streams (`etcdctl snapshot save` writes it to a file)
//! and what [`restore_backup`] seeds a new cluster from (`trestle snapshot restore`, in the spirit of
//! `etcdutl snapshot restore`).
//!
//! The file: `TRESTLE-ETCD-BACKUP-1\n`, the length of the store's encoding as a little-endian `u64`, the store
//! (its key space in trestle-raft's key-space snapshot format, without an applied mark: every retained version
//! of every key, the history, the leases, the revisions and alarms; backups made by older versions hold a
//! postcard store instead, and still restore), zeros up to a multiple of 512 bytes, and the SHA-256 of
//! everything before it. The trailing hash and the 512-byte alignment are what
//! etcd's tools look for at the end of a snapshot (`etcdctl snapshot save` checks that a hash is there); the body
//! is Trestle's own, so etcd's tools cannot read it, nor Trestle's theirs.

use std::io::Write;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use trestle_raft::{
    ClusterState, FrozenState, KeySpace, Membership, MemoryKeySpace, NodeConfig, PeerNode, StateMachine,
    node_id_for,
};

use crate::mvcc::{DEFAULT_MAX_TXN_OPS, MvccStore};
use crate::node::STORE_GROUP;
use crate::store::StoreApp;

const MAGIC: &[u8] = b"TRESTLE-ETCD-BACKUP-1\n";
const ALIGN: usize = 512;
const HASH: usize = 32;

/// Why a backup could not be made, read or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The bytes are not a Trestle backup (another tool's snapshot, or damaged at the start).
    #[error("not a Trestle etcd backup (the file does not start with {expected:?})")]
    NotABackup {
        /// The magic bytes a backup starts with.
        expected: &'static str,
    },
    /// The trailing SHA-256 does not match the contents: the file is damaged or truncated.
    #[error("the backup is damaged: its SHA-256 does not match its contents ({size} bytes)")]
    Checksum {
        /// The file's size.
        size: usize,
    },
    /// The store inside does not decode.
    #[error("the backup's store does not decode: {0}")]
    Store(String),
    /// The data directory to restore into already holds data.
    #[error("{path} already exists: restore into a new data directory")]
    DataDirExists {
        /// The database path.
        path: std::path::PathBuf,
    },
    /// The node configuration cannot found a cluster (no initial cluster, or this node is not in it).
    #[error("{0}")]
    Config(String),
    /// Writing the data directory failed.
    #[error("writing the data directory: {0}")]
    Io(String),
}

/// The backup of a store frozen by [`StoreApp::freeze_backup`], whole.
pub fn encode_backup(store: FrozenState) -> Result<Vec<u8>, BackupError> {
    let mut body = Vec::new();
    store(&mut body).map_err(|e| BackupError::Store(e.to_string()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + body.len() + ALIGN + HASH);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&hash);
    Ok(out)
}

/// The store inside a backup, once its hash and framing check out, in memory.
pub fn decode_backup(backup: &[u8]) -> Result<MvccStore, BackupError> {
    let body = backup_body(backup)?;
    let space: Arc<dyn KeySpace> = Arc::new(MemoryKeySpace::new());
    let mut app = StoreApp::open(space.clone()).map_err(|e| BackupError::Store(e.to_string()))?;
    app.restore(&mut &body[..])
        .map_err(|e| BackupError::Store(e.to_string()))?;
    drop(app);
    MvccStore::open(space, DEFAULT_MAX_TXN_OPS).map_err(|e| BackupError::Store(e.to_string()))
}

/// The store's bytes inside a backup, once its hash and framing check out.
fn backup_body(backup: &[u8]) -> Result<&[u8], BackupError> {
    let not_a_backup = BackupError::NotABackup {
        expected: "TRESTLE-ETCD-BACKUP-1",
    };
    if !backup.starts_with(MAGIC) {
        return Err(not_a_backup);
    }
    let size = backup.len();
    if size < MAGIC.len() + 8 + HASH || !(size - HASH).is_multiple_of(ALIGN) {
        return Err(BackupError::Checksum { size });
    }
    let (contents, hash) = backup.split_at(size - HASH);
    if Sha256::digest(contents).as_slice() != hash {
        return Err(BackupError::Checksum { size });
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&contents[MAGIC.len()..MAGIC.len() + 8]);
    let length = usize::try_from(u64::from_le_bytes(length)).map_err(|_| BackupError::Checksum { size })?;
    contents
        .get(MAGIC.len() + 8..)
        .and_then(|rest| rest.get(..length))
        .ok_or(BackupError::Checksum { size })
}

/// Seeds the data directory of `config` (which must not exist yet) with the key space of `backup`, as one member
/// of the new cluster `config.initial_cluster`. Run it for every member with the same backup and the same
/// initial cluster, then start them: they begin at the backup's revision, with the store's history, leases
/// and compaction point, and the new membership.
pub async fn restore_backup(backup: &[u8], config: &NodeConfig) -> Result<(), BackupError> {
    // Checked whole before anything is written.
    decode_backup(backup)?;
    let body = backup_body(backup)?;
    if config.initial_cluster.is_empty() {
        return Err(BackupError::Config(
            "restoring needs the new cluster's members (--initial-cluster)".into(),
        ));
    }
    if config.cluster_state != ClusterState::New {
        return Err(BackupError::Config(
            "a restore founds a new cluster: --initial-cluster-state must be new".into(),
        ));
    }
    let me = node_id_for(&config.advertise_peer_url);
    let mut nodes = std::collections::BTreeMap::new();
    for (name, url) in &config.initial_cluster {
        nodes.insert(
            node_id_for(url),
            PeerNode {
                name: name.clone(),
                peer_url: url.clone(),
                client_urls: Vec::new(),
            },
        );
    }
    if !nodes.contains_key(&me) {
        return Err(BackupError::Config(format!(
            "this member's peer URL {} is not in the initial cluster",
            config.advertise_peer_url
        )));
    }
    let voters: std::collections::BTreeSet<_> = nodes.keys().copied().collect();
    let membership = Membership::new(vec![voters], nodes).map_err(|e| BackupError::Config(e.to_string()))?;
    let db_path = config.data_dir.join("db");
    if db_path.exists() {
        return Err(BackupError::DataDirExists { path: db_path });
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| BackupError::Io(e.to_string()))?;
    let db = trestle_raft::open_db(&db_path).map_err(|e| BackupError::Io(e.to_string()))?;
    let storage = trestle_raft::GroupStorage::rocksdb(db).map_err(|e| BackupError::Io(e.to_string()))?;
    // The store's bytes become the seed snapshot as they are: members restore them as any snapshot.
    trestle_raft::seed_group(&storage, STORE_GROUP, membership, |out: &mut dyn Write| {
        Ok(out.write_all(body)?)
    })
    .await
    .map_err(|e| BackupError::Io(e.to_string()))
}
