//! etcd's MVCC data model as a sans-IO state machine.
//!
//! [`MvccStore`] holds every version of every key since the last compaction, the leases and their keys, and the
//! events watchers replay. It is fed commands and returns responses; it has no clock, no disk and no network, so
//! it is tested synchronously against a simple model (`tests.rs`). Raft replicates the commands; every replica
//! applies them in log order and reaches the same state.

mod error;
mod store;
mod types;

#[cfg(test)]
mod tests;

pub use error::MvccError;
pub(crate) use store::put_size;
pub use store::{DEFAULT_MAX_TXN_OPS, MAX_LEASE_TTL, MvccStore, in_range};
pub use types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind,
    KeyValue, Lease, LeaseId, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    Revision, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
