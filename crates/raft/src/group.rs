//! The Raft groups a node hosts: starting one, and finding it again by id when a peer RPC arrives.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::log_store::LogStore;
use crate::network::{NetworkFactory, PeerChannels};
use crate::state_machine::{GroupApp, GroupStateMachine};
use crate::storage::GroupStorage;
use crate::types::{GroupId, NodeId, Raft};

/// A gRPC status that crosses the peer protocol inside a forwarded reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ForwardError {
    /// The gRPC code, as its number.
    pub code: i32,
    /// The message.
    pub message: String,
    /// Set when the receiving node did nothing with the request (it does not lead, or does not host the
    /// group): the sender may safely send it elsewhere. Unset, a failed write may or may not have been
    /// proposed, and retrying it could apply it twice.
    #[serde(default)]
    pub unexecuted: bool,
}

impl ForwardError {
    /// An error saying the request was not acted upon, so it is safe to retry (see [`ForwardError::unexecuted`]).
    pub fn unexecuted(status: Status) -> Self {
        Self {
            unexecuted: true,
            ..Self::from(status)
        }
    }
}

impl From<Status> for ForwardError {
    fn from(status: Status) -> Self {
        Self {
            code: status.code() as i32,
            message: status.message().to_string(),
            unexecuted: false,
        }
    }
}

impl From<ForwardError> for Status {
    fn from(err: ForwardError) -> Self {
        Status::new(tonic::Code::from_i32(err.code), err.message)
    }
}

/// What a group's leader does with requests its followers forward to it (writes, read indexes, lease
/// keep-alives). The payload's format belongs to the group's application.
#[tonic::async_trait]
pub trait ForwardHandler: Send + Sync + 'static {
    /// Handles one forwarded request on the node that received it.
    async fn forward(&self, payload: Vec<u8>) -> Result<Vec<u8>, ForwardError>;

    /// Resolves once this member has caught up with the group's leader, or says why it has not: what the
    /// node's `/readyz` asks. The default answers at once (the node checks that a leader is known); the
    /// replicated-service layer runs a read barrier (a read index from the leader, then the local apply
    /// reaching it).
    async fn caught_up(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Clone)]
struct Registered {
    raft: Raft,
    forward: Arc<dyn ForwardHandler>,
}

/// The groups hosted by one node, by id. Cheap to clone: clones share the table.
#[derive(Clone, Default)]
pub struct GroupRegistry {
    groups: Arc<RwLock<HashMap<GroupId, Registered>>>,
}

impl std::fmt::Debug for GroupRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRegistry")
            .field("groups", &self.ids())
            .finish()
    }
}

impl GroupRegistry {
    /// Registers a started group; peers can reach it from now on.
    pub fn insert(&self, group: GroupId, raft: Raft, forward: Arc<dyn ForwardHandler>) {
        self.groups.write().insert(group, Registered { raft, forward });
    }

    /// Unregisters a group and returns its Raft handle (to shut it down).
    pub fn remove(&self, group: GroupId) -> Option<Raft> {
        self.groups.write().remove(&group).map(|r| r.raft)
    }

    /// The ids of the hosted groups, in order.
    pub fn ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<_> = self.groups.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The Raft handle of a group, or `UNAVAILABLE` (not hosted here, or not yet / no longer: a node starting or
    /// stopping; the caller should try elsewhere or later).
    pub fn raft(&self, group: GroupId) -> Result<Raft, Status> {
        self.groups
            .read()
            .get(&group)
            .map(|r| r.raft.clone())
            .ok_or_else(|| Status::unavailable(format!("raft group {group} is not hosted on this node")))
    }

    /// The forward handler of a group, or `UNAVAILABLE` (as for [`GroupRegistry::raft`]).
    pub fn forward_handler(&self, group: GroupId) -> Result<Arc<dyn ForwardHandler>, Status> {
        self.groups
            .read()
            .get(&group)
            .map(|r| r.forward.clone())
            .ok_or_else(|| Status::unavailable(format!("raft group {group} is not hosted on this node")))
    }

    /// Every group with its forward handler, in id order.
    pub fn handlers(&self) -> Vec<(GroupId, Raft, Arc<dyn ForwardHandler>)> {
        let mut all: Vec<_> = self
            .groups
            .read()
            .iter()
            .map(|(id, r)| (*id, r.raft.clone(), r.forward.clone()))
            .collect();
        all.sort_unstable_by_key(|(id, _, _)| *id);
        all
    }

    /// Every hosted group's Raft handle.
    pub fn all(&self) -> Vec<(GroupId, Raft)> {
        let mut all: Vec<_> = self
            .groups
            .read()
            .iter()
            .map(|(id, r)| (*id, r.raft.clone()))
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }
}

/// Why a group could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartGroupError {
    /// Its stored state could not be read.
    #[error("raft group {group}: storage: {source}")]
    Storage {
        /// The group.
        group: GroupId,
        /// The cause.
        source: std::io::Error,
    },
    /// openraft refused the configuration or failed to start.
    #[error("raft group {group}: {message}")]
    Raft {
        /// The group.
        group: GroupId,
        /// What openraft said.
        message: String,
    },
}

/// Starts (or restarts, from what `storage` holds) one Raft group of `app` on this node.
pub async fn start_group<A: GroupApp>(
    node_id: NodeId,
    group: GroupId,
    storage: &GroupStorage,
    channels: PeerChannels,
    config: Arc<openraft::Config>,
    app: Arc<RwLock<A>>,
) -> Result<Raft, StartGroupError> {
    let state_machine = GroupStateMachine::open(storage.snapshots(), group, app)
        .map_err(|source| StartGroupError::Storage { group, source })?;
    let network = NetworkFactory::new(
        group,
        channels.clone(),
        usize::try_from(config.snapshot_max_chunk_size).unwrap_or(usize::MAX),
        std::time::Duration::from_millis(config.install_snapshot_timeout),
    );
    let started = match storage {
        GroupStorage::RocksDb { db, wal, .. } => {
            let log_store = LogStore::new(db.clone(), wal.clone(), group);
            Raft::new(node_id, config, network, log_store, state_machine).await
        }
        GroupStorage::Memory(memory) => {
            Raft::new(node_id, config, network, memory.log(group), state_machine).await
        }
    };
    let raft = started.map_err(|e| StartGroupError::Raft {
        group,
        message: e.to_string(),
    })?;
    spawn_address_book(&raft, channels);
    Ok(raft)
}

/// Keeps `channels`' address book up to date with the group's membership as this node applies it, so that a
/// member moved to another peer URL is reached there. Ends when the group's Raft stops.
fn spawn_address_book(raft: &Raft, channels: PeerChannels) {
    use openraft::async_runtime::WatchReceiver as _;
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        loop {
            let nodes: Vec<(NodeId, String)> = metrics
                .borrow_watched()
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.peer_url.clone()))
                .collect();
            for (id, url) in nodes {
                channels.set_address(id, &url);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}
