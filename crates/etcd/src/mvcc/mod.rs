//! etcd's MVCC data model, laid out as etcd lays it out.
//!
//! [`MvccIndex`] is what stays in memory: every key's retained revisions, the leases and their keys, the
//! revisions. The versions themselves — values, tombstones, the event history watchers replay — live in a
//! trestle-raft key space, keyed by revision (`layout.rs`). Every operation is given the key space to read
//! and write, so the rules have no clock, no network and no Raft: the coordination store applies them through
//! each entry's transaction, and [`MvccStore`] runs them on its own over any key space. They are tested
//! synchronously against a model (`tests.rs`) over a `MemoryKeySpace`. Raft replicates the commands; every
//! replica applies them in log order and reaches the same state.

mod error;
mod index;
mod layout;
pub(crate) mod legacy;
mod store;
mod types;

#[cfg(test)]
mod tests;

pub use error::MvccError;
pub(crate) use layout::META_ALARMS;
pub(crate) use store::put_size;
pub use store::{
    COMPACTION_STEP, DEFAULT_MAX_TXN_OPS, KvWrite, MAX_LEASE_TTL, MvccIndex, MvccStore, MvccView, in_range,
};
pub use types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind,
    KeyValue, Lease, LeaseId, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    Revision, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
