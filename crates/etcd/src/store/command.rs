//! What the coordination store replicates through Raft, and what applying it returns.

use serde::{Deserialize, Serialize};

use super::alarm::{AlarmAction, AlarmKind, AlarmMember};
use crate::mvcc::{
    DeleteRangeRequest, DeleteRangeResponse, Lease, LeaseId, MvccError, PutRequest, PutResponse, Revision,
    TxnRequest, TxnResponse,
};

/// A change to the coordination store. Every replica applies the same commands in log order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StoreCommand {
    /// etcd `Put`.
    Put(PutRequest),
    /// etcd `DeleteRange`.
    DeleteRange(DeleteRangeRequest),
    /// etcd `Txn`.
    Txn(TxnRequest),
    /// etcd `Compact`.
    Compact(Revision),
    /// etcd `LeaseGrant`, with the id the proposer chose.
    LeaseGrant {
        /// The lease id (never 0).
        id: LeaseId,
        /// The TTL in seconds, already raised to the minimum.
        ttl: i64,
    },
    /// etcd `LeaseRevoke`, or the leader's lessor expiring a lease.
    LeaseRevoke {
        /// The lease id.
        id: LeaseId,
    },
    /// Several commands in one Raft entry (the leader's group commit): applied in order, each exactly as if
    /// proposed alone, with its own revision and its own result ([`StoreOutcome::Batch`]). One entry costs one
    /// synced log write per replica however many commands it carries.
    Batch(Vec<StoreCommand>),
    /// etcd's Maintenance `Alarm`: raise or clear an alarm of a member.
    Alarm {
        /// Raise or clear.
        action: AlarmAction,
        /// The member.
        member: u64,
        /// What about.
        alarm: AlarmKind,
    },
}

/// What applying a [`StoreCommand`] produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StoreOutcome {
    /// Answer to `Put`.
    Put(PutResponse),
    /// Answer to `DeleteRange`.
    DeleteRange(DeleteRangeResponse),
    /// Answer to `Txn`.
    Txn(TxnResponse),
    /// `Compact` done.
    Compacted,
    /// Answer to `LeaseGrant`.
    LeaseGranted(Lease),
    /// `LeaseRevoke` done.
    LeaseRevoked,
    /// The results of a [`StoreCommand::Batch`], one per command, in order.
    Batch(Vec<StoreResult>),
    /// Answer to `Alarm`: the alarms it raised or cleared.
    Alarms(Vec<AlarmMember>),
}

/// The result of one applied command, with the store revision right after it (etcd's response header).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreResult {
    /// The store's revision after the command.
    pub revision: Revision,
    /// What happened.
    pub outcome: Result<StoreOutcome, MvccError>,
}
