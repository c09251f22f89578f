//! State machines whose state lives on disk: [`DiskBacked`] runs a [`DiskStateMachine`] over its group's
//! [`KeySpace`], so the state is bounded by the disk, not by memory, and a restart does not replay history.
//!
//! - **Apply** runs the machine with a [`StateTxn`] (reads see the entry's own writes), then stores the entry's
//!   writes and its index (the applied mark) in one atomic, unsynced write: the Raft log is the write-ahead log.
//! - **Restart**: the key space already holds the state up to its mark. A snapshot older than the mark is not
//!   restored, and the entries up to the mark that openraft replays are skipped, so a restart costs the machine's
//!   [`load`](DiskStateMachine::load) (rebuilding what it keeps in memory), not a replay of the history.
//! - **Snapshots** are written from a frozen view of the key space (a RocksDB snapshot) after the state
//!   machine's lock is released: applying goes on while a snapshot is built and streamed. Installing one clears
//!   the key space, writes the records in bounded batches and sets the mark last, so a crash halfway leaves no
//!   mark and the restart installs the snapshot again.
//!
//! The snapshot data is `TRKV1\n\0\0`, the applied mark (a presence byte then a little-endian `u64`), then each
//! record as a little-endian `u32` length and the key, a `u32` length and the value, ended by a key length of
//! `u32::MAX`. The snapshot file around it carries the checksum.
//!
//! # Example: a replicated counter on disk
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use trestle_raft::{DiskStateMachine, KeyRead, SnapshotError, StateTxn};
//!
//! /// Named counters; a batch of commands applies in order.
//! #[derive(Default)]
//! struct Counters;
//!
//! #[derive(Serialize, Deserialize)]
//! enum Command {
//!     Add { name: String, delta: i64 },
//!     Batch(Vec<Command>),
//! }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum Reply {
//!     Value(i64),
//!     Batch(Vec<Reply>),
//!     Refused(String),
//! }
//!
//! impl DiskStateMachine for Counters {
//!     type Command = Command;
//!     type Response = Reply;
//!     fn apply(&mut self, _index: u64, command: Command, state: &mut StateTxn<'_>) -> Reply {
//!         match command {
//!             Command::Add { name, delta } => {
//!                 let current = match state.get(name.as_bytes()) {
//!                     Ok(Some(raw)) => raw.try_into().map(i64::from_le_bytes).unwrap_or(0),
//!                     Ok(None) => 0,
//!                     // The host stops the group on a storage error; the reply is never seen.
//!                     Err(e) => return Reply::Refused(e.to_string()),
//!                 };
//!                 let value = current.saturating_add(delta);
//!                 state.put(name.into_bytes(), value.to_le_bytes());
//!                 Reply::Value(value)
//!             }
//!             Command::Batch(commands) => {
//!                 Reply::Batch(commands.into_iter().map(|c| self.apply(0, c, state)).collect())
//!             }
//!         }
//!     }
//!     fn undecodable(&mut self, _index: u64, error: String) -> Reply {
//!         Reply::Refused(error)
//!     }
//!     fn batch(commands: Vec<Command>) -> Command {
//!         Command::Batch(commands)
//!     }
//!     fn unbatch(response: Reply, count: usize) -> Option<Vec<Reply>> {
//!         match response {
//!             Reply::Batch(replies) if replies.len() == count => Some(replies),
//!             _ => None,
//!         }
//!     }
//!     fn load(&mut self, _state: &dyn KeyRead) -> Result<(), SnapshotError> {
//!         Ok(()) // nothing kept in memory
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use trestle_raft::{DiskBacked, MemoryKeySpace, StateMachine};
//!
//! // On a node: `DiskBacked::open(Counters, node.key_space(group))?`, started with `Node::start_service`.
//! let mut counters = DiskBacked::open(Counters, Arc::new(MemoryKeySpace::new()))?;
//! let reply = trestle_raft::GroupApp::apply(
//!     &mut counters,
//!     1,
//!     &postcard::to_allocvec(&Command::Add { name: "hits".into(), delta: 2 }).unwrap(),
//! )?;
//! assert_eq!(postcard::from_bytes::<Reply>(&reply).unwrap(), Reply::Value(2));
//! assert_eq!(counters.state().get(b"hits")?, Some(2i64.to_le_bytes().to_vec()));
//! assert_eq!(counters.applied_index(), Some(1));
//! # Ok(())
//! # }
//! ```

use std::io::{self, Read, Write};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::keyspace::{FrozenKeySpace, KeyRead, KeySpace, Record, StateTxn, Writes};
use crate::replicated::StateMachine;
use crate::state_machine::{FrozenState, SnapshotError};

/// A deterministic state machine over typed commands whose state is kept in its group's [`KeySpace`]. Run it
/// as [`DiskBacked`], which is a [`StateMachine`] (so a [`Service`](crate::Service) on
/// [`Node::start_service`](crate::Node::start_service) uses it as any other).
///
/// Implementors guarantee what [`StateMachine`] asks (determinism, batches answering as their commands one by
/// one, no panics on any input), and that everything the machine keeps in memory is rebuilt from the key space
/// by [`load`](DiskStateMachine::load).
pub trait DiskStateMachine: Send + Sync + 'static {
    /// What is proposed.
    type Command: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What applying a command returns to its proposer.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Applies one committed command at log `index`, reading and writing the state through `state`. A read
    /// error stops the group once the entry's apply returns (whatever the machine answered), so the machine
    /// may answer anything then.
    fn apply(&mut self, index: u64, command: Self::Command, state: &mut StateTxn<'_>) -> Self::Response;

    /// The response to an entry this version cannot decode; it changes nothing.
    fn undecodable(&mut self, index: u64, error: String) -> Self::Response;

    /// Several commands as one command, applied in order, each as if proposed alone.
    fn batch(commands: Vec<Self::Command>) -> Self::Command;

    /// The responses of a batch of `count` commands, in order; `None` when `response` is not such a batch's.
    fn unbatch(response: Self::Response, count: usize) -> Option<Vec<Self::Response>>;

    /// Rebuilds what the machine keeps in memory (indexes, counters) from the stored state: when the machine
    /// opens, and after a snapshot replaced the state.
    fn load(&mut self, state: &dyn KeyRead) -> Result<(), SnapshotError>;
}

/// Runs a [`DiskStateMachine`] over a group's key space (see the module's documentation).
pub struct DiskBacked<M> {
    machine: M,
    space: Arc<dyn KeySpace>,
    applied: Option<u64>,
    /// The current entry's writes (kept to reuse the allocation).
    writes: Writes,
    /// The first storage error of the current entry's reads.
    failed: parking_lot::Mutex<Option<io::Error>>,
}

impl<M> std::fmt::Debug for DiskBacked<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskBacked")
            .field("space", &self.space)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

/// The first bytes of a key-space snapshot (see the module's documentation).
pub const KEY_SPACE_SNAPSHOT_MAGIC: &[u8; 8] = b"TRKV1\n\0\0";
const MAGIC: &[u8; 8] = KEY_SPACE_SNAPSHOT_MAGIC;
const END: u32 = u32::MAX;
/// The largest key or value a snapshot may hold: a damaged length must not become a huge allocation.
const MAX_FIELD: u32 = 256 << 20;
/// Bytes of records written per step while a snapshot is installed.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

impl<M: DiskStateMachine> DiskBacked<M> {
    /// Opens `machine` over `space`: reads the applied mark and lets the machine [`load`](DiskStateMachine::load).
    pub fn open(mut machine: M, space: Arc<dyn KeySpace>) -> io::Result<Self> {
        let applied = space.applied()?;
        machine
            .load(&*space)
            .map_err(|e| io::Error::other(format!("loading the state machine: {e}")))?;
        Ok(Self {
            machine,
            space,
            applied,
            writes: Writes::new(),
            failed: parking_lot::Mutex::new(None),
        })
    }

    /// The machine (what it keeps in memory).
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The stored state, for reads outside apply (they see every entry applied so far).
    pub fn state(&self) -> &dyn KeyRead {
        &*self.space
    }

    /// The index of the last entry applied to the stored state.
    pub fn applied_index(&self) -> Option<u64> {
        self.applied
    }

    fn replace(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        let mark = read_header(input)?;
        if let (Some(mark), Some(applied)) = (mark, self.applied)
            && applied >= mark
        {
            // The stored state is this snapshot's or later (a restart: the snapshot is older than what was
            // applied since). Keep it; openraft's replay up to the mark is skipped.
            tracing::debug!(mark, applied, "stored state is newer than the snapshot; kept");
            return self.load();
        }
        self.space.clear()?;
        self.applied = None;
        let mut writes = Writes::new();
        let mut bytes = 0usize;
        while let Some((key, value)) = read_record(input)? {
            bytes += key.len() + value.len();
            writes.put(key, value);
            if bytes >= INSTALL_BATCH_BYTES {
                self.space.write(&writes)?;
                writes = Writes::new();
                bytes = 0;
            }
        }
        self.space.write(&writes)?;
        // The mark last: until it is set, the key space holds no state and a restart installs the snapshot again.
        if let Some(mark) = mark {
            self.space.commit(&Writes::new(), mark)?;
        }
        self.applied = mark;
        self.load()
    }

    fn load(&mut self) -> Result<(), SnapshotError> {
        self.machine.load(&*self.space)
    }
}

fn invalid(message: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(message.into())
}

fn read_header(input: &mut dyn Read) -> Result<Option<u64>, SnapshotError> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid(format!(
            "not a key-space snapshot (starts with {magic:?})"
        )));
    }
    let mut present = [0u8; 1];
    input.read_exact(&mut present)?;
    let mut mark = [0u8; 8];
    input.read_exact(&mut mark)?;
    match present[0] {
        0 => Ok(None),
        1 => Ok(Some(u64::from_le_bytes(mark))),
        other => Err(invalid(format!("a bad applied-mark flag {other}"))),
    }
}

fn read_field(input: &mut dyn Read, len: u32) -> Result<Vec<u8>, SnapshotError> {
    if len > MAX_FIELD {
        return Err(invalid(format!(
            "a record field of {len} bytes (at most {MAX_FIELD})"
        )));
    }
    let mut field = Vec::new();
    input.take(u64::from(len)).read_to_end(&mut field)?;
    if field.len() != len as usize {
        return Err(invalid(format!(
            "a record cut short: {} of {len} bytes",
            field.len()
        )));
    }
    Ok(field)
}

fn read_u32(input: &mut dyn Read) -> Result<u32, SnapshotError> {
    let mut raw = [0u8; 4];
    input.read_exact(&mut raw)?;
    Ok(u32::from_le_bytes(raw))
}

fn read_record(input: &mut dyn Read) -> Result<Option<Record>, SnapshotError> {
    let key_len = read_u32(input)?;
    if key_len == END {
        return Ok(None);
    }
    let key = read_field(input, key_len)?;
    let value_len = read_u32(input)?;
    let value = read_field(input, value_len)?;
    Ok(Some((key, value)))
}

fn field_len(field: &[u8]) -> io::Result<u32> {
    u32::try_from(field.len())
        .ok()
        .filter(|len| *len <= MAX_FIELD)
        .ok_or_else(|| {
            io::Error::other(format!(
                "a record field of {} bytes cannot be snapshotted",
                field.len()
            ))
        })
}

/// Writes a frozen key space in the snapshot format [`DiskBacked`] restores from (see the module's
/// documentation). An application uses it to write records it built itself (in a
/// [`MemoryKeySpace`](crate::MemoryKeySpace), converting an older format) or a view whose applied mark it
/// hides (a backup that seeds another cluster), and hands the bytes to [`GroupApp::restore`](crate::GroupApp).
pub fn write_key_space(frozen: &dyn FrozenKeySpace, out: &mut dyn Write) -> Result<(), SnapshotError> {
    write_frozen(frozen, out)
}

/// Writes a frozen key space in the snapshot format.
fn write_frozen(frozen: &dyn FrozenKeySpace, out: &mut dyn Write) -> Result<(), SnapshotError> {
    out.write_all(MAGIC)?;
    match frozen.applied() {
        Some(mark) => {
            out.write_all(&[1])?;
            out.write_all(&mark.to_le_bytes())?;
        }
        None => out.write_all(&[0; 9])?,
    }
    frozen.for_each(&mut |key, value| {
        out.write_all(&field_len(key)?.to_le_bytes())?;
        out.write_all(key)?;
        out.write_all(&field_len(value)?.to_le_bytes())?;
        out.write_all(value)
    })?;
    out.write_all(&END.to_le_bytes())?;
    Ok(())
}

impl<M: DiskStateMachine> StateMachine for DiskBacked<M> {
    type Command = M::Command;
    type Response = M::Response;

    fn apply(&mut self, index: u64, command: M::Command) -> M::Response {
        let mut txn = StateTxn::new(&*self.space, &mut self.writes, &self.failed);
        self.machine.apply(index, command, &mut txn)
    }

    fn undecodable(&mut self, index: u64, error: String) -> M::Response {
        self.writes = Writes::new();
        self.machine.undecodable(index, error)
    }

    fn batch(commands: Vec<M::Command>) -> M::Command {
        M::batch(commands)
    }

    fn unbatch(response: M::Response, count: usize) -> Option<Vec<M::Response>> {
        M::unbatch(response, count)
    }

    fn commit(&mut self, index: u64) -> io::Result<()> {
        if let Some(e) = self.failed.get_mut().take() {
            return Err(io::Error::new(
                e.kind(),
                format!("reading the state at entry {index}: {e}"),
            ));
        }
        self.space.commit(&self.writes, index)?;
        self.writes = Writes::new();
        self.applied = Some(index);
        Ok(())
    }

    fn applied_index(&self) -> Option<u64> {
        self.applied
    }

    fn freeze(&self) -> Option<FrozenState> {
        let frozen = self.space.freeze();
        Some(Box::new(move |out: &mut dyn Write| write_frozen(&*frozen?, out)))
    }

    fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
        write_frozen(&*self.space.freeze()?, out)
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        self.replace(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::MemoryKeySpace;

    /// Appends each command's byte to key "log"; remembers in memory how many were applied (rebuilt by load).
    #[derive(Default)]
    struct Appender {
        loaded_len: usize,
    }

    impl DiskStateMachine for Appender {
        type Command = Vec<u8>;
        type Response = usize;
        fn apply(&mut self, _index: u64, command: Vec<u8>, state: &mut StateTxn<'_>) -> usize {
            let mut log = state.get(b"log").ok().flatten().unwrap_or_default();
            log.extend_from_slice(&command);
            state.put("log", log.clone());
            self.loaded_len = log.len();
            log.len()
        }
        fn undecodable(&mut self, _index: u64, _error: String) -> usize {
            0
        }
        fn batch(commands: Vec<Vec<u8>>) -> Vec<u8> {
            commands.concat()
        }
        fn unbatch(_response: usize, _count: usize) -> Option<Vec<usize>> {
            None
        }
        fn load(&mut self, state: &dyn KeyRead) -> Result<(), SnapshotError> {
            self.loaded_len = state.get(b"log")?.map_or(0, |l| l.len());
            Ok(())
        }
    }

    fn apply(app: &mut DiskBacked<Appender>, index: u64, bytes: &[u8]) -> usize {
        let reply =
            crate::GroupApp::apply(app, index, &postcard::to_allocvec(&bytes.to_vec()).unwrap()).unwrap();
        postcard::from_bytes(&reply).unwrap()
    }

    fn snapshot_of(app: &DiskBacked<Appender>) -> Vec<u8> {
        let mut out = Vec::new();
        (crate::GroupApp::freeze(app).unwrap())(&mut out).unwrap();
        out
    }

    #[test]
    fn writes_and_the_mark_land_together_and_a_reopen_keeps_them() {
        let space = Arc::new(MemoryKeySpace::new());
        let mut app = DiskBacked::open(Appender::default(), space.clone()).unwrap();
        assert_eq!(apply(&mut app, 1, b"ab"), 2);
        assert_eq!(apply(&mut app, 2, b"c"), 3);
        assert_eq!(space.applied().unwrap(), Some(2));
        let reopened = DiskBacked::open(Appender::default(), space.clone()).unwrap();
        assert_eq!(reopened.applied_index(), Some(2));
        assert_eq!(reopened.machine().loaded_len, 3, "load rebuilt the memory state");
    }

    #[test]
    fn a_snapshot_round_trips_and_an_older_one_does_not_replace_newer_state() {
        let mut app = DiskBacked::open(Appender::default(), Arc::new(MemoryKeySpace::new())).unwrap();
        apply(&mut app, 1, b"ab");
        let at_one = snapshot_of(&app);
        apply(&mut app, 2, b"cd");

        // Installed on an empty member: the state and its mark arrive.
        let mut other = DiskBacked::open(Appender::default(), Arc::new(MemoryKeySpace::new())).unwrap();
        crate::GroupApp::restore(&mut other, &mut &at_one[..]).unwrap();
        assert_eq!(other.applied_index(), Some(1));
        assert_eq!(other.state().get(b"log").unwrap(), Some(b"ab".to_vec()));
        assert_eq!(other.machine().loaded_len, 2);

        // Restored where the stored state is newer (a restart): kept.
        crate::GroupApp::restore(&mut app, &mut &at_one[..]).unwrap();
        assert_eq!(app.applied_index(), Some(2));
        assert_eq!(app.state().get(b"log").unwrap(), Some(b"abcd".to_vec()));
    }

    #[test]
    fn a_snapshot_is_taken_at_freeze_time_not_at_write_time() {
        let mut app = DiskBacked::open(Appender::default(), Arc::new(MemoryKeySpace::new())).unwrap();
        apply(&mut app, 1, b"a");
        let write = crate::GroupApp::freeze(&app).unwrap();
        apply(&mut app, 2, b"b");
        let mut out = Vec::new();
        write(&mut out).unwrap();
        let mut other = DiskBacked::open(Appender::default(), Arc::new(MemoryKeySpace::new())).unwrap();
        crate::GroupApp::restore(&mut other, &mut &out[..]).unwrap();
        assert_eq!(other.applied_index(), Some(1));
        assert_eq!(other.state().get(b"log").unwrap(), Some(b"a".to_vec()));
    }

    #[test]
    fn damaged_snapshots_are_refused_without_panicking() {
        let mut app = DiskBacked::open(Appender::default(), Arc::new(MemoryKeySpace::new())).unwrap();
        apply(&mut app, 1, b"abc");
        let good = snapshot_of(&app);
        for cut in 0..good.len() {
            let mut other = DiskBacked::open(Appender::default(), Arc::new(MemoryKeySpace::new())).unwrap();
            assert!(
                crate::GroupApp::restore(&mut other, &mut &good[..cut]).is_err(),
                "a snapshot cut at {cut} of {} bytes was accepted",
                good.len()
            );
        }
        let mut huge = good.clone();
        huge[17..21].copy_from_slice(&(MAX_FIELD + 1).to_le_bytes());
        let mut other = DiskBacked::open(Appender::default(), Arc::new(MemoryKeySpace::new())).unwrap();
        let err = crate::GroupApp::restore(&mut other, &mut &huge[..]).unwrap_err();
        assert!(err.to_string().contains("record field"), "{err}");
    }
}
