//! # trestle-etcd
//!
//! A coordination store that speaks **etcd's v3 gRPC API** — KV, Watch, Lease, Cluster, Maintenance — so
//! etcdctl, the `etcd-client` crate and etcd's Go client work against it unchanged; replicated on trestle-raft.
//! And [`RetryingClient`], the etcd client rule every Trestle crate uses to retry only what is safe to retry,
//! against Trestle or a real etcd.
//!
//! - **The data model.** etcd's MVCC model laid out as etcd lays it out (revisions, per-key create/mod revision
//!   and version, leases, transactions, compaction, watch history): a key index in memory ([`MvccIndex`]) and
//!   the versions in a trestle-raft key space, by revision. [`MvccStore`] runs it on its own over any key
//!   space; it is tested synchronously against a model.
//! - **The replicated store.** [`StoreApp`] is that model as a trestle-raft state machine whose state lives in
//!   its group's key space of the node's RocksDB; [`Store`] is the service around it (lease keep-alives
//!   answered by the leader, the leader's lease clock, etcd's error words).
//! - **The API.** [`EtcdServer`] serves the store with etcd's wire format, codes and messages.
//! - **The node.** [`EtcdNode`] is a trestle-raft `Node` running the store as group 0 ([`STORE_GROUP`]) and
//!   serving the API on the client port; further keyspaces and any other service run beside it.
//! - **The client.** [`RetryingClient`] retries reads on any transient failure and writes only when they surely
//!   never reached a state machine. It is the only part built without the `server` feature (default on), so a
//!   crate that is only a client does not build RocksDB.
//!
//! ```
//! use trestle_etcd::{MvccStore, PutRequest, RangeRequest};
//!
//! let mut store = MvccStore::default();
//! store.put(&PutRequest { key: b"greeting".to_vec(), value: b"hello".to_vec(), ..Default::default() })?;
//! let read = store.range(&RangeRequest { key: b"greeting".to_vec(), ..Default::default() })?;
//! assert_eq!(read.kvs[0].value, b"hello");
//! assert_eq!(read.kvs[0].mod_revision, 2); // an empty store is at revision 1, as in etcd
//! # Ok::<(), trestle_etcd::MvccError>(())
//! ```
//!
//! Running a node: [`EtcdNode::start`], or the `trestle` binary (`trestle serve`, `trestle local-cluster`).

#[cfg(feature = "server")]
mod api;
#[cfg(feature = "server")]
mod backup;
mod client;
#[cfg(feature = "server")]
mod mvcc;
#[cfg(feature = "server")]
mod node;
#[cfg(feature = "server")]
mod store;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "server")]
pub use api::{DEFAULT_MAX_REQUEST_BYTES, EtcdServer, EtcdServices, EtcdSettings};
#[cfg(feature = "server")]
pub use backup::{BackupError, decode_backup, encode_backup, restore_backup};
pub use client::{CallKind, ClientError, RetryPolicy, RetryingClient};
#[cfg(feature = "server")]
pub use mvcc::{
    COMPACTION_STEP, Compare, CompareResult, CompareTarget, DEFAULT_MAX_TXN_OPS, DeleteRangeRequest,
    DeleteRangeResponse, Event, EventKind, KeyValue, KvWrite, Lease, LeaseId, MAX_LEASE_TTL, MvccError,
    MvccIndex, MvccStore, MvccView, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, Revision, SortOrder, SortTarget, TxnRequest, TxnResponse, in_range,
};
#[cfg(feature = "server")]
pub use node::{EtcdNode, EtcdNodeConfig, EtcdNodeError, STORE_GROUP, cluster_id_for_token};
#[cfg(feature = "server")]
pub use store::{
    AlarmAction, AlarmKind, AlarmMember, AutoCompaction, AutoCompactionError, Compactor, DEFAULT_QUOTA_BYTES,
    Lessor, REVISION_CHECK_INTERVAL, RevisionEvents, Store, StoreApp, StoreCommand, StoreOutcome,
    StoreResult, StoreSettings, StoreSettingsError,
};
