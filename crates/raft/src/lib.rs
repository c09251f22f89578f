//! # trestle-raft
//!
//! The Raft host every Trestle service builds on — openraft, RocksDB and tonic — running many Raft groups per
//! process, and the replicated-service layer that turns a state machine into a service.
//!
//! - **Nodes and groups.** A [`Node`] owns one RocksDB instance, one peer port, a client port and `/health` and
//!   `/metrics`. It runs any number of Raft groups; every peer RPC names its group. A group replicates opaque
//!   commands for a [`GroupApp`] ([`start_group`], [`GroupStateMachine`]).
//! - **Member ids are never reused.** Founders derive theirs from their peer URLs ([`node_id_for`]); each
//!   [`MemberChange::Add`] gives a new one, which a joining node asks the leader for ([`ClusterState::Existing`]).
//!   Every peer request names the node it is for, and a node answers only for its own id, so a member removed,
//!   wiped and added back at the same URL is never taken for its old self by a group that still lists it.
//! - **Services.** The replicated-service layer ([`Replicated`]) gives any [`StateMachine`] group commit,
//!   forwarding to the leader without duplicates, linearizable reads, membership changes, a leader clock and
//!   per-group metrics; [`Node::start_service`] runs one as a group. The etcd-compatible store (the
//!   `trestle-etcd` crate) is one such service. The `testing` feature's conformance suite
//!   (`testing::check_group_app`) checks any state machine.
//! - **Durability.** openraft is told entries are on disk only once the RocksDB WAL holding them is fsync'd
//!   (one thread per database syncs for every group, [`WalSync`]), and a vote only after a synced write;
//!   snapshots are files, synced before the log they replace is purged ([`LogStore`], [`GroupStateMachine`]).
//!   Snapshots stream: a state machine writes its state into the snapshot store and reads it back from it, and
//!   followers receive it as one stream of chunks ([`SnapshotData`]).
//! - **Damaged storage stops the node.** Before it takes part, a node checks every group's log and vote and
//!   compares its database with a WAL witness that shows a write-ahead log cut short ([`verify_storage`]); once
//!   it runs, a scrub reads every (checksummed) block in the background ([`scrub_storage`]). On [`Damage`] the
//!   member is replaced, never elected with it.
//! - **State on disk.** A [`DiskStateMachine`], run as [`DiskBacked`], keeps its state in its group's
//!   [`KeySpace`] of the node's RocksDB ([`Node::key_space`]): each entry's writes and its index in one write,
//!   snapshots from a frozen view while applying goes on, restarts without replaying history.
//! - **Storage behind traits.** Logs are openraft's `RaftLogStorage` ([`LogStore`] on RocksDB,
//!   [`MemoryLogStore`]), snapshots a [`SnapshotStore`] ([`DiskSnapshots`], [`MemorySnapshots`]); a node takes
//!   one pair ([`NodeStorage`]). In memory, nothing runs on the blocking pool, so a simulation is deterministic.
//! - **Process-wide things stay with the application.** Metrics go through the `metrics` facade and the crate
//!   installs no recorder: give a node a [`MetricsRenderer`] for its `/metrics`. Test helpers (free ports,
//!   deadline waits, loopback configurations, the conformance suite) are the `testing` module, behind the
//!   `testing` feature, for dev-dependencies.
//!
//! A service in full — a replicated register — and a node running it:
//!
//! ```no_run
//! use std::io::{Read, Write};
//!
//! use trestle_raft::{
//!     Node, NodeConfig, NoRequest, Replicated, ReplicatedSettings, Service, SnapshotError, StateMachine,
//! };
//!
//! #[derive(Default)]
//! struct Register(Vec<u8>);
//!
//! impl StateMachine for Register {
//!     type Command = Vec<Vec<u8>>; // one or more writes, applied in order
//!     type Response = Vec<usize>; // the length of each value written
//!     fn apply(&mut self, _index: u64, writes: Self::Command) -> Self::Response {
//!         writes.into_iter().map(|value| { self.0 = value; self.0.len() }).collect()
//!     }
//!     fn undecodable(&mut self, _index: u64, _error: String) -> Self::Response { Vec::new() }
//!     fn batch(commands: Vec<Self::Command>) -> Self::Command { commands.concat() }
//!     fn unbatch(response: Self::Response, count: usize) -> Option<Vec<Self::Response>> {
//!         (response.len() == count).then(|| response.into_iter().map(|n| vec![n]).collect())
//!     }
//!     fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError> { Ok(out.write_all(&self.0)?) }
//!     fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
//!         self.0.clear();
//!         input.read_to_end(&mut self.0)?;
//!         Ok(())
//!     }
//! }
//!
//! struct RegisterService;
//!
//! impl Service for RegisterService {
//!     type Machine = Register;
//!     type LeaderRequest = NoRequest;
//!     type LeaderReply = NoRequest;
//!     async fn on_leader(&self, _: &Replicated<Self>, r: &NoRequest) -> Result<Option<NoRequest>, tonic::Status> {
//!         match *r {}
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let node = Node::start(NodeConfig::new("/var/lib/register")).await?;
//! let register = node
//!     .start_service(1, Register::default(), RegisterService, ReplicatedSettings::default())
//!     .await?;
//! node.found_group(register.raft()).await?;
//! register.propose(vec![b"hello".to_vec()]).await?; // on any node: followers forward to the leader
//! register.read_barrier().await?; // then read locally, linearizably
//! assert_eq!(register.read(|r| r.0.clone()), b"hello");
//! # Ok(()) }
//! ```

mod disk_backed;
mod group;
mod integrity;
mod join;
mod keyspace;
mod leadership;
mod log_store;
mod network;
mod node;
mod replicated;
mod runtime;
mod seed;
mod snapshot_format;
mod state_machine;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod transport;
mod types;

pub use disk_backed::{DiskBacked, DiskStateMachine, KEY_SPACE_SNAPSHOT_MAGIC, write_key_space};
pub use group::{ForwardError, ForwardHandler, GroupRegistry, StartGroupError, start_group};
pub use integrity::{
    Damage, Verified, WITNESS_INTERVAL, read_witness, scrub as scrub_storage, verify as verify_storage,
    write_witness,
};
pub use join::members_from_leader;
pub use keyspace::{
    FrozenKeySpace, KeyRead, KeySpace, MemoryKeySpace, Record, RocksKeySpace, StateTxn, Visitor, Writes,
};
pub use leadership::{TransferError, best_successor, transfer_leadership};
pub use log_store::{LogStore, WalSync, open_db};
pub use network::{ConnectFn, NetworkFactory, PeerChannels, PeerClient, PeerService};
pub use node::{
    ClusterState, ConfigError, MetricsRenderer, Node, NodeConfig, NodeError, RaftSettings,
    staggered_snapshot_interval,
};
/// Reading a group's metrics channel (`raft.metrics().borrow_watched()`, `.changed()`) needs this trait in scope.
pub use openraft::async_runtime::WatchReceiver;
pub use replicated::{
    CommandOf, Failure, MemberChange, NoRequest, Replicated, ReplicatedSettings, ReplicatedSettingsError,
    ResponseOf, Service, StateMachine,
};
pub use runtime::{TrestleRuntime, seed_thread_rng};
pub use seed::{SeedError, seed_group};
pub use state_machine::{FrozenState, GroupApp, GroupStateMachine, SharedApp, SnapshotError};
pub use storage::{
    DiskSnapshots, GroupStorage, MemoryLogStore, MemorySnapshots, MemoryStorage, NodeStorage, ReceivedData,
    SharedSnapshotStore, SnapshotData, SnapshotReader, SnapshotStore, SnapshotWriter, Temporary,
};
pub use tls::{TlsError, TlsFiles};
pub use transport::{Accepted, Connection, Incoming, ListenFn, NodeNetwork};
pub use types::{
    CommandBytes, Entry, EntryPayload, GroupId, LeaderId, LogId, Membership, NodeId, PeerNode, Raft,
    SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote, log_id, node_id_for,
};
