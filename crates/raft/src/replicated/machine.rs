//! A replicated state machine with typed commands and responses: what a service writes to run on a Raft group.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::log_store::{decode, encode};
use std::io::{Read, Write};

use crate::state_machine::{FrozenState, GroupApp, SnapshotError};

/// A deterministic state machine over typed commands. Every type implementing it is a [`GroupApp`]: commands
/// and responses cross the log and the peer port encoded with postcard.
///
/// Implementors must guarantee what [`GroupApp`] asks (determinism, snapshot round trips, no panics on any
/// input), and that a batch answers exactly as its commands would one by one: the replicated-service layer
/// proposes concurrent commands as one entry ([`StateMachine::batch`]) and hands each caller its own response
/// ([`StateMachine::unbatch`]). `trestle_raft::testing::check_group_app` checks the first part.
pub trait StateMachine: Send + Sync + 'static {
    /// What is proposed.
    type Command: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What applying a command returns to its proposer.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Applies one committed command at log `index`.
    fn apply(&mut self, index: u64, command: Self::Command) -> Self::Response;

    /// The response to an entry this version cannot decode (written by a newer version, say): it changes
    /// nothing, and its proposer gets this answer.
    fn undecodable(&mut self, index: u64, error: String) -> Self::Response;

    /// Several commands as one command, applied in order, each as if proposed alone.
    fn batch(commands: Vec<Self::Command>) -> Self::Command;

    /// The responses of a batch of `count` commands, in order; `None` when `response` is not such a batch's.
    fn unbatch(response: Self::Response, count: usize) -> Option<Vec<Self::Response>>;

    /// Writes the whole state to `out`, the snapshot file (see [`GroupApp::snapshot`]). `postcard::to_io` or
    /// any encoder over `std::io::Write` streams into it.
    fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError>;

    /// Replaces the whole state with the one `input` holds (see [`GroupApp::restore`]).
    fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError>;

    /// Called after each entry's [`apply`](StateMachine::apply) (or [`undecodable`](StateMachine::undecodable))
    /// with its index: a machine that keeps its state in storage stores the entry's effects here. An error stops
    /// the group. Does nothing by default.
    fn commit(&mut self, index: u64) -> std::io::Result<()> {
        let _ = index;
        Ok(())
    }

    /// See [`GroupApp::applied_index`]. `None` by default (the state lives in memory).
    fn applied_index(&self) -> Option<u64> {
        None
    }

    /// See [`GroupApp::freeze`]. `None` by default.
    fn freeze(&self) -> Option<FrozenState> {
        None
    }
}

impl<M: StateMachine> GroupApp for M {
    fn apply(&mut self, index: u64, command: &[u8]) -> std::io::Result<Vec<u8>> {
        let response = match decode::<M::Command>(command) {
            Ok(command) => StateMachine::apply(self, index, command),
            Err(e) => self.undecodable(index, e.to_string()),
        };
        StateMachine::commit(self, index)?;
        Ok(match encode(&response) {
            Ok(bytes) => bytes,
            Err(e) => {
                // The proposer cannot decode an empty reply and reports an internal error; the state is applied
                // the same way on every replica, so the group stays consistent.
                tracing::error!(index, error = %e, "a response could not be encoded");
                Vec::new()
            }
        })
    }

    fn applied_index(&self) -> Option<u64> {
        StateMachine::applied_index(self)
    }

    fn freeze(&self) -> Option<FrozenState> {
        StateMachine::freeze(self)
    }

    fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
        StateMachine::snapshot(self, out)
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        StateMachine::restore(self, input)
    }
}
