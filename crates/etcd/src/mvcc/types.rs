//! The etcd v3 data model as plain Rust values: what the state machine stores, what commands carry and what
//! reads return. Independent of protobuf so the state machine stays sans-IO; `crate::etcd` converts at the edge.

use serde::{Deserialize, Serialize};

/// A store revision: a logical clock that every change to the key space increments by one.
pub type Revision = i64;

/// A lease id. Zero means "no lease".
pub type LeaseId = i64;

/// A key and its value at one revision, with etcd's per-key metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The revision of the put that created this generation of the key.
    pub create_revision: Revision,
    /// The revision of the last change to the key.
    pub mod_revision: Revision,
    /// How many puts this generation has seen (1 on creation; a delete resets it).
    pub version: i64,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lease the key is attached to, or 0.
    pub lease: LeaseId,
}

/// What a watch event did to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (explicitly, or by a lease revoke).
    Delete,
}

/// One change to one key, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` (the delete's revision) are set.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `RangeRequest.SortOrder`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// No sorting requested (keys come in key order).
    #[default]
    None,
    /// Lowest first.
    Ascend,
    /// Highest first.
    Descend,
}

/// etcd's `RangeRequest.SortTarget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// Sort by key.
    #[default]
    Key,
    /// Sort by version.
    Version,
    /// Sort by create revision.
    Create,
    /// Sort by mod revision.
    Mod,
    /// Sort by value.
    Value,
}

/// A read of one key or a range of keys (etcd `RangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The first key (or the only key when `range_end` is empty).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The end of the range, exclusive; empty for one key; `[0]` for "every key from `key` on".
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// At most this many keys; 0 for no limit.
    pub limit: i64,
    /// Read as of this revision; 0 or less for the current one.
    pub revision: Revision,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort field.
    pub sort_target: SortTarget,
    /// Read locally without a read index (the transport decides; the store ignores it).
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Keep only keys with `mod_revision >= min_mod_revision` (0: no bound).
    pub min_mod_revision: Revision,
    /// Keep only keys with `mod_revision <= max_mod_revision` (0: no bound).
    pub max_mod_revision: Revision,
    /// Keep only keys with `create_revision >= min_create_revision` (0: no bound).
    pub min_create_revision: Revision,
    /// Keep only keys with `create_revision <= max_create_revision` (0: no bound).
    pub max_create_revision: Revision,
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys found (empty with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` cut the list short.
    pub more: bool,
    /// How many keys the range holds (before `limit`).
    pub count: i64,
}

/// A write of one key (etcd `PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Attach the key to this lease (0: none).
    pub lease: LeaseId,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// The answer to a [`PutRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The key before the put, when asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// A delete of one key or a range (etcd `DeleteRangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// The first key (or the only key when `range_end` is empty).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The end of the range, exclusive, with the same conventions as [`RangeRequest::range_end`].
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// The answer to a [`DeleteRangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted key-values, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a [`Compare`] relates the key's field to its operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// Greater than.
    Greater,
    /// Less than.
    Less,
    /// Not equal.
    NotEqual,
}

/// Which field of a key a [`Compare`] reads, with the operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version (0 when the key does not exist).
    Version(i64),
    /// The key's create revision (0 when the key does not exist).
    Create(Revision),
    /// The key's mod revision (0 when the key does not exist).
    Mod(Revision),
    /// The key's value (a missing key fails every value compare).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key's lease (0 when the key does not exist or has none).
    Lease(LeaseId),
}

/// One condition of a transaction (etcd `Compare`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// The field and the operand.
    pub target: CompareTarget,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// When set, the compare must hold for every key in `[key, range_end)`.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// One operation inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The answer to one [`RequestOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// Answer to a read.
    Range(RangeResponse),
    /// Answer to a write.
    Put(PutResponse),
    /// Answer to a delete.
    DeleteRange(DeleteRangeResponse),
    /// Answer to a nested transaction.
    Txn(TxnResponse),
}

/// A transaction: if every compare holds, run `success`, else `failure` (etcd `TxnRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// The conditions.
    pub compare: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    pub failure: Vec<RequestOp>,
}

/// The answer to a [`TxnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the compares held.
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// A lease as the replicated state knows it: its granted TTL and the keys attached to it. When it expires is
/// not replicated state: the leader's lessor decides that on its own monotonic clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease id.
    pub id: LeaseId,
    /// The TTL the lease was granted with, in seconds.
    pub ttl: i64,
}

#[cfg(test)]
mod encoding_tests {
    use serde::Serialize;

    use super::PutRequest;

    #[test]
    fn byte_fields_encode_as_plain_vecs_did_so_old_logs_still_read() {
        let raw: Vec<u8> = (0..=255).collect();
        // The shape a put had before its byte fields were serde_bytes: element-wise sequences.
        #[derive(Serialize)]
        struct OldPut {
            key: Vec<u8>,
            value: Vec<u8>,
            lease: i64,
            prev_kv: bool,
            ignore_value: bool,
            ignore_lease: bool,
        }
        let put = PutRequest {
            key: b"key".to_vec(),
            value: raw.clone(),
            lease: 7,
            ..Default::default()
        };
        let old = OldPut {
            key: put.key.clone(),
            value: put.value.clone(),
            lease: put.lease,
            prev_kv: put.prev_kv,
            ignore_value: put.ignore_value,
            ignore_lease: put.ignore_lease,
        };
        let old = postcard::to_allocvec(&old).expect("encodes");
        assert_eq!(postcard::to_allocvec(&put).expect("encodes"), old);
        assert_eq!(postcard::from_bytes::<PutRequest>(&old).expect("decodes"), put);
    }
}
