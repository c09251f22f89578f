//! Why the store refused a request. Each variant maps to the gRPC status etcd returns for it.

use super::types::{LeaseId, Revision};

/// A request the store refused; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum MvccError {
    /// The request named no key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A transaction with more operations than the limit.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps {
        /// Operations in the largest branch or compare list.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction that writes one key twice, or writes and deletes it.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey {
        /// The key written twice.
        key: Vec<u8>,
    },
    /// A read or compaction at a revision older than the last compaction.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The store's compact revision.
        compact_revision: Revision,
    },
    /// A read or compaction at a revision the store has not reached.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// A lease that does not exist (never granted, revoked or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound {
        /// The lease id.
        id: LeaseId,
    },
    /// A grant for a lease id that is taken.
    #[error("etcdserver: lease already exists")]
    LeaseExists {
        /// The lease id.
        id: LeaseId,
    },
    /// A grant with a TTL over the maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge {
        /// The TTL asked for, in seconds.
        ttl: i64,
        /// The maximum, in seconds.
        max: i64,
    },
    /// A replicated command this node cannot decode (a newer node's format); nothing was applied.
    #[error("etcdserver: unsupported command: {detail}")]
    UndecodableCommand {
        /// The decoder's complaint.
        detail: String,
    },
    /// A write that needs space while a `NOSPACE` alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// Reading or writing the store's key space failed, or found it damaged. Applying stops the group rather
    /// than letting this member's state drift from the others'.
    #[error("etcdserver: storage: {detail}")]
    Storage {
        /// What failed.
        detail: String,
    },
}

impl MvccError {
    /// The gRPC status code etcd answers this error with.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::EmptyKey
            | Self::KeyNotFound
            | Self::ValueProvided
            | Self::LeaseProvided
            | Self::TooManyOps { .. }
            | Self::DuplicateKey { .. } => tonic::Code::InvalidArgument,
            Self::Compacted { .. } | Self::FutureRevision { .. } | Self::LeaseTtlTooLarge { .. } => {
                tonic::Code::OutOfRange
            }
            Self::LeaseNotFound { .. } => tonic::Code::NotFound,
            Self::LeaseExists { .. } => tonic::Code::FailedPrecondition,
            Self::UndecodableCommand { .. } | Self::Storage { .. } => tonic::Code::Internal,
            Self::NoSpace => tonic::Code::ResourceExhausted,
        }
    }
}

impl From<MvccError> for tonic::Status {
    fn from(err: MvccError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}
