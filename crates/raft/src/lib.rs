//! # trestle-raft
//!
//! Raft consensus for Trestle — openraft, RocksDB and tonic — hosting many Raft groups per process, and a
//! coordination store that speaks etcd's v3 gRPC API so real etcd clients work against it.
//!
//! - **Groups.** A node runs any number of Raft groups over one peer port and one RocksDB instance; every peer
//!   RPC names its group. Each group replicates opaque commands for a [`GroupApp`]. Group 0 is the coordination
//!   store ([`StoreApp`]); other replicated services run as further groups.
//! - **Services.** The replicated-service layer ([`Replicated`]) gives any [`StateMachine`] group commit,
//!   forwarding to the leader without duplicates, linearizable reads, membership changes and a leader clock;
//!   [`Node::start_service`] runs one. The coordination store is one such service; the testing feature's
//!   conformance suite checks any implementation.
//! - **Durability.** The log and the vote are written with synced RocksDB writes before openraft is told they
//!   are on disk; snapshots are synced before the log they replace is purged ([`LogStore`],
//!   [`GroupStateMachine`]).
//! - **The store.** [`MvccStore`] is etcd's MVCC data model as a sans-IO state machine (revisions, per-key
//!   create/mod revision and version, leases, transactions, compaction, watch history); [`Store`] is the store's
//!   service (lease keep-alives answered by the leader, the leader's lease clock, etcd's error words); [`EtcdServer`] serves KV, Watch, Lease, Cluster and Maintenance with etcd's wire format and errors.
//! - **Process-wide things stay with the application.** Metrics go through the `metrics` facade and the crate
//!   installs no recorder: give a node a [`MetricsRenderer`] for its `/metrics`. Test helpers (loopback
//!   clusters, a real etcd process, free ports, deadline waits) are the `testing` module, behind the `testing`
//!   feature, for dev-dependencies.
//!
//! ```
//! use trestle_raft::{MvccStore, PutRequest, RangeRequest};
//!
//! let mut store = MvccStore::default();
//! store.put(&PutRequest { key: b"greeting".to_vec(), value: b"hello".to_vec(), ..Default::default() })?;
//! let read = store.range(&RangeRequest { key: b"greeting".to_vec(), ..Default::default() })?;
//! assert_eq!(read.kvs[0].value, b"hello");
//! assert_eq!(read.kvs[0].mod_revision, 2); // an empty store is at revision 1, as in etcd
//! # Ok::<(), trestle_raft::MvccError>(())
//! ```
//!
//! Running a node: see [`Node::start`] and the `trestle` binary (`trestle serve`, `trestle local-cluster`).

mod client;
mod etcd;
mod group;
mod log_store;
mod mvcc;
mod network;
mod node;
mod replicated;
mod state_machine;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod types;

pub use client::{ClientError, RetryPolicy, RetryingClient};
pub use etcd::{DEFAULT_MAX_REQUEST_BYTES, EtcdServer, EtcdServices, EtcdSettings};
pub use group::{ForwardError, ForwardHandler, GroupRegistry, StartGroupError, start_group};
pub use log_store::{LogStore, open_db};
pub use mvcc::{
    Compare, CompareResult, CompareTarget, DEFAULT_MAX_TXN_OPS, DeleteRangeRequest, DeleteRangeResponse,
    Event, EventKind, KeyValue, Lease, LeaseId, MAX_LEASE_TTL, MvccError, MvccStore, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, Revision, SortOrder, SortTarget, TxnRequest,
    TxnResponse, in_range,
};
pub use network::{ConnectFn, NetworkFactory, PeerChannels, PeerClient, PeerService};
pub use node::{
    ClusterState, ConfigError, MetricsRenderer, Node, NodeConfig, NodeError, RaftSettings,
    staggered_snapshot_interval,
};
pub use replicated::{
    CommandOf, Failure, MemberChange, NoRequest, Replicated, ReplicatedSettings, ReplicatedSettingsError,
    ResponseOf, Service, StateMachine,
};
pub use state_machine::{GroupApp, GroupStateMachine};
pub use store::{
    Lessor, RevisionEvents, Store, StoreApp, StoreCommand, StoreOutcome, StoreResult, StoreSettings,
};
pub use tls::{TlsError, TlsFiles};
pub use types::{
    CommandBytes, Entry, GroupId, LogId, NodeId, PeerNode, Raft, STORE_GROUP, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig, Vote, node_id_for,
};
