//! Alarms, as etcd keeps them: raised for a member, replicated, and cleared by an operator. While a `NoSpace`
//! alarm is raised the store refuses writes that need space (puts, transactions that put, lease grants) with
//! etcd's `mvcc: database space exceeded`; deletes, compactions and reads go on, so an operator can make room.
//! A member raises it when a write would take the store past its quota (`StoreSettings::quota_bytes`).

use serde::{Deserialize, Serialize};

use super::command::StoreCommand;
use crate::mvcc::{RequestOp, TxnRequest, put_size};

/// What an alarm is about (etcd's `AlarmType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AlarmKind {
    /// The store reached its space quota.
    NoSpace,
    /// A member's data was found corrupt.
    Corrupt,
}

impl AlarmKind {
    /// From etcd's wire value (`NOSPACE` = 1, `CORRUPT` = 2); `None` for `NONE` and unknown values.
    pub fn from_etcd(value: i32) -> Option<Self> {
        match value {
            1 => Some(Self::NoSpace),
            2 => Some(Self::Corrupt),
            _ => None,
        }
    }

    /// etcd's wire value.
    pub fn to_etcd(self) -> i32 {
        match self {
            Self::NoSpace => 1,
            Self::Corrupt => 2,
        }
    }

    /// etcd's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::NoSpace => "NOSPACE",
            Self::Corrupt => "CORRUPT",
        }
    }
}

/// Raise or clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AlarmAction {
    /// Raise the alarm for the member.
    Activate,
    /// Clear it.
    Deactivate,
}

/// One raised alarm: a member and what about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    /// The member that raised it.
    pub member: u64,
    /// What it is about.
    pub alarm: AlarmKind,
}

/// Whether applying `command` would need space: what a `NoSpace` alarm refuses (as etcd's capped applier does).
pub(crate) fn needs_space(command: &StoreCommand) -> bool {
    match command {
        StoreCommand::Put(_) | StoreCommand::LeaseGrant { .. } => true,
        StoreCommand::Txn(txn) => txn_puts(txn),
        StoreCommand::Batch(commands) => commands.iter().any(needs_space),
        _ => false,
    }
}

fn txn_puts(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(inner) => txn_puts(inner),
        RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
    })
}

/// About how many bytes applying `command` adds to the store (what the quota check counts before proposing).
pub(crate) fn approximate_cost(command: &StoreCommand) -> usize {
    fn txn_cost(txn: &TxnRequest) -> usize {
        txn.success
            .iter()
            .chain(&txn.failure)
            .map(|op| match op {
                RequestOp::Put(put) => put_size(&put.key, &put.value),
                RequestOp::Txn(inner) => txn_cost(inner),
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => 0,
            })
            .sum()
    }
    match command {
        StoreCommand::Put(put) => put_size(&put.key, &put.value),
        StoreCommand::LeaseGrant { .. } => 48,
        StoreCommand::Txn(txn) => txn_cost(txn),
        StoreCommand::Batch(commands) => commands.iter().map(approximate_cost).sum(),
        _ => 0,
    }
}
