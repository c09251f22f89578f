//! The coordination store as a Raft group application: the MVCC store on the group's key space (a
//! `DiskStateMachine` run by trestle-raft's `DiskBacked`), plus the feed of applied revisions that watchers
//! follow.
//!
//! What lives where: the key index, the leases and the alarms in memory ([`MvccIndex`]); every version, the
//! history and the same leases and alarms in the key space, written through each entry's `StateTxn`, so the
//! state and the applied index commit together. A restart rebuilds the index from the key space
//! ([`MvccIndex::load`]) instead of replaying a snapshot and the log; a snapshot is the key space frozen
//! (written and streamed while entries go on applying); a follower installs one by writing its records and
//! loading the index. Snapshots that older versions wrote whole (a postcard store) are laid out as records
//! when restored.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::alarm::{AlarmAction, AlarmKind, AlarmMember, needs_space};
use super::command::{StoreCommand, StoreOutcome, StoreResult};
use crate::mvcc::{
    COMPACTION_STEP, DEFAULT_MAX_TXN_OPS, KvWrite, META_ALARMS, MvccError, MvccIndex, MvccView, Revision,
};
use trestle_raft::{
    DiskBacked, DiskStateMachine, FrozenState, KEY_SPACE_SNAPSHOT_MAGIC, KeyRead, KeySpace, MemoryKeySpace,
    SnapshotError, StateMachine, StateTxn,
};

/// A notice that a revision was applied. The events themselves stay in the store's history
/// ([`MvccView::events_since`], [`MvccView::events_at`]), where watchers read them under the app's lock: a
/// notice carries no copy of them.
#[derive(Clone, Debug)]
pub struct RevisionEvents {
    /// The revision.
    pub revision: Revision,
    /// Set when the store was replaced by a snapshot: watchers must catch up from the store's history, because
    /// the revisions in between were never published one by one.
    pub resync: bool,
}

/// How many applied revisions a slow watcher may fall behind before it must catch up from the store's history.
const FEED_CAPACITY: usize = 4096;

/// The store's rules over the group's key space: what `DiskBacked` runs.
#[derive(Debug)]
pub(crate) struct StoreMachine {
    index: MvccIndex,
    /// The raised alarms (replicated: every member agrees).
    alarms: BTreeSet<AlarmMember>,
    feed: broadcast::Sender<RevisionEvents>,
}

impl StoreMachine {
    fn new(max_txn_ops: usize) -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Self {
            index: MvccIndex::new(max_txn_ops),
            alarms: BTreeSet::new(),
            feed,
        }
    }

    fn out_of_space(&self) -> bool {
        self.alarms.iter().any(|a| a.alarm == AlarmKind::NoSpace)
    }

    /// Applies one command (batches command by command).
    fn apply_command(&mut self, command: &StoreCommand, disk: &mut dyn KvWrite) -> StoreResult {
        if let StoreCommand::Batch(commands) = command {
            let results = commands.iter().map(|c| self.apply_command(c, disk)).collect();
            return StoreResult {
                revision: self.index.revision(),
                outcome: Ok(StoreOutcome::Batch(results)),
            };
        }
        let before = self.index.revision();
        if self.out_of_space() && needs_space(command) {
            return StoreResult {
                revision: before,
                outcome: Err(MvccError::NoSpace),
            };
        }
        let outcome = match command {
            StoreCommand::Batch(_) => unreachable!("batches are applied above"),
            StoreCommand::Alarm {
                action,
                member,
                alarm,
            } => {
                let entry = AlarmMember {
                    member: *member,
                    alarm: *alarm,
                };
                let changed = match action {
                    AlarmAction::Activate => self.alarms.insert(entry),
                    AlarmAction::Deactivate => self.alarms.remove(&entry),
                };
                if changed {
                    if self.alarms.is_empty() {
                        disk.delete(META_ALARMS.to_vec());
                    } else {
                        disk.put(
                            META_ALARMS.to_vec(),
                            postcard::to_allocvec(&self.alarms).unwrap_or_default(),
                        );
                    }
                }
                Ok(StoreOutcome::Alarms(if changed {
                    vec![entry]
                } else {
                    Vec::new()
                }))
            }
            StoreCommand::Put(req) => self.index.put(disk, req).map(StoreOutcome::Put),
            StoreCommand::DeleteRange(req) => {
                self.index.delete_range(disk, req).map(StoreOutcome::DeleteRange)
            }
            StoreCommand::Txn(req) => self.index.txn(disk, req).map(StoreOutcome::Txn),
            StoreCommand::Compact(rev) => self.index.compact(disk, *rev).map(|()| StoreOutcome::Compacted),
            StoreCommand::LeaseGrant { id, ttl } => self
                .index
                .lease_grant(disk, *id, *ttl)
                .map(StoreOutcome::LeaseGranted),
            StoreCommand::LeaseRevoke { id } => self
                .index
                .lease_revoke(disk, *id)
                .map(|()| StoreOutcome::LeaseRevoked),
        };
        let after = self.index.revision();
        if after != before {
            // No receivers is fine: nobody is watching.
            let _ = self.feed.send(RevisionEvents {
                revision: after,
                resync: false,
            });
        }
        StoreResult {
            revision: after,
            outcome,
        }
    }
}

impl DiskStateMachine for StoreMachine {
    type Command = StoreCommand;
    type Response = StoreResult;

    fn apply(&mut self, index: u64, command: StoreCommand, state: &mut StateTxn<'_>) -> StoreResult {
        let result = self.apply_command(&command, state);
        // A compaction removes the history it made obsolete a bounded step per entry.
        if let Err(e) = self.index.compact_step(state, COMPACTION_STEP) {
            // A storage failure: the entry's transaction has it too, and the group stops.
            tracing::error!(index, error = %e, "compacting the history on disk failed");
        }
        result
    }

    fn undecodable(&mut self, _index: u64, error: String) -> StoreResult {
        // A command this version cannot read changes nothing; the proposer gets an error, not a panic.
        StoreResult {
            revision: self.index.revision(),
            outcome: Err(MvccError::UndecodableCommand { detail: error }),
        }
    }

    fn batch(commands: Vec<StoreCommand>) -> StoreCommand {
        StoreCommand::Batch(commands)
    }

    fn unbatch(response: StoreResult, count: usize) -> Option<Vec<StoreResult>> {
        match response.outcome {
            Ok(StoreOutcome::Batch(results)) if results.len() == count => Some(results),
            _ => None,
        }
    }

    fn load(&mut self, state: &dyn KeyRead) -> Result<(), SnapshotError> {
        let started = std::time::Instant::now();
        self.index = MvccIndex::load(state, self.index.max_txn_ops())
            .map_err(|e| SnapshotError::invalid(format!("loading the store's index: {e}")))?;
        self.alarms = match state.get(META_ALARMS)? {
            Some(raw) => postcard::from_bytes(&raw)
                .map_err(|e| SnapshotError::invalid(format!("undecodable alarms: {e}")))?,
            None => BTreeSet::new(),
        };
        tracing::info!(
            revision = self.index.revision(),
            keys = self.index.live_key_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store index loaded"
        );
        let _ = self.feed.send(RevisionEvents {
            revision: self.index.revision(),
            resync: true,
        });
        Ok(())
    }
}

/// The coordination store's replicated state and its event feed: `StoreMachine` on the group's key space.
#[derive(Debug)]
pub struct StoreApp {
    inner: DiskBacked<StoreMachine>,
    /// Whether anything was applied or restored since the store opened: only a store that just opened may
    /// keep its key space over a snapshot no newer than it (a restart).
    changed_since_open: bool,
}

impl Default for StoreApp {
    /// A store in memory (a `MemoryKeySpace` of its own), for tests and tools.
    fn default() -> Self {
        let machine = StoreMachine::new(DEFAULT_MAX_TXN_OPS);
        let space: Arc<dyn KeySpace> = Arc::new(MemoryKeySpace::new());
        match DiskBacked::open(machine, space) {
            Ok(inner) => Self {
                inner,
                changed_since_open: false,
            },
            // An empty key space in memory loads without reading anything that can fail.
            Err(e) => unreachable!("an empty store in memory failed to open: {e}"),
        }
    }
}

impl StoreApp {
    /// The store a group's key space holds (`Node::key_space`): its index rebuilt from it, empty for a new
    /// group.
    pub fn open(space: Arc<dyn KeySpace>) -> std::io::Result<Self> {
        Ok(Self {
            inner: DiskBacked::open(StoreMachine::new(DEFAULT_MAX_TXN_OPS), space)?,
            changed_since_open: false,
        })
    }

    fn machine(&self) -> &StoreMachine {
        self.inner.machine()
    }

    /// The raised alarms, in order.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.machine().alarms.iter().copied().collect()
    }

    /// Whether a `NoSpace` alarm is raised: writes that need space are refused.
    pub fn out_of_space(&self) -> bool {
        self.machine().out_of_space()
    }

    /// The MVCC store (for local reads: the index, and the key space as of the last applied entry).
    pub fn store(&self) -> MvccView<'_> {
        MvccView::new(&self.machine().index, self.inner.state())
    }

    /// Subscribes to notices of the revisions applied from now on. Subscribe while holding the app's lock after
    /// reading history, and no revision is missed or seen twice.
    pub fn subscribe(&self) -> broadcast::Receiver<RevisionEvents> {
        self.machine().feed.subscribe()
    }

    /// The Raft log index of the last applied entry.
    pub fn last_index(&self) -> u64 {
        self.inner.applied_index().unwrap_or(0)
    }

    /// Applies one command as the next log entry, as the group would (tests and tools).
    pub fn apply_command(&mut self, command: &StoreCommand) -> StoreResult {
        let index = self.last_index() + 1;
        self.changed_since_open = true;
        let result = StateMachine::apply(&mut self.inner, index, command.clone());
        if let Err(e) = StateMachine::commit(&mut self.inner, index) {
            return StoreResult {
                revision: result.revision,
                outcome: Err(MvccError::Storage {
                    detail: e.to_string(),
                }),
            };
        }
        result
    }

    /// The key space as of now, to write as a backup once the lock is released: the records without the
    /// applied mark, so a cluster seeded from it applies its own log from the start.
    pub fn freeze_backup(&self) -> FrozenState {
        let frozen = StateMachine::freeze(&self.inner);
        Box::new(move |out: &mut dyn Write| {
            let Some(frozen) = frozen else {
                return Err(SnapshotError::invalid("the store cannot be frozen"));
            };
            let mut unmarked = Unmarked { out, written: 0 };
            frozen(&mut unmarked)
        })
    }
}

/// Passes a key-space snapshot through with its applied mark cleared (the 9 bytes after the magic).
struct Unmarked<'a> {
    out: &'a mut dyn Write,
    written: usize,
}

const MARK_AT: usize = KEY_SPACE_SNAPSHOT_MAGIC.len();
const MARK_END: usize = MARK_AT + 9;

impl Write for Unmarked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let start = self.written;
        let mut copy;
        let mut bytes = buf;
        if start < MARK_END {
            copy = buf.to_vec();
            for (i, byte) in copy.iter_mut().enumerate() {
                if (MARK_AT..MARK_END).contains(&(start + i)) {
                    *byte = 0;
                }
            }
            bytes = &copy;
        }
        let n = self.out.write(bytes)?;
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads up to `buf.len()` bytes, fewer only at the end of `input`.
fn read_up_to(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl StateMachine for StoreApp {
    type Command = StoreCommand;
    type Response = StoreResult;

    fn apply(&mut self, index: u64, command: StoreCommand) -> StoreResult {
        self.changed_since_open = true;
        StateMachine::apply(&mut self.inner, index, command)
    }

    fn undecodable(&mut self, index: u64, error: String) -> StoreResult {
        self.changed_since_open = true;
        StateMachine::undecodable(&mut self.inner, index, error)
    }

    fn batch(commands: Vec<StoreCommand>) -> StoreCommand {
        StoreCommand::Batch(commands)
    }

    fn unbatch(response: StoreResult, count: usize) -> Option<Vec<StoreResult>> {
        StoreMachine::unbatch(response, count)
    }

    fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
        StateMachine::snapshot(&self.inner, out)
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        let mut head = [0u8; MARK_END];
        let read = read_up_to(input, &mut head)?;
        let opened = !self.changed_since_open;
        self.changed_since_open = true;
        if head[..read].starts_with(KEY_SPACE_SNAPSHOT_MAGIC) {
            if read == MARK_END && head[MARK_AT] == 1 {
                let mark = u64::from_le_bytes(head[MARK_AT + 1..MARK_END].try_into().unwrap_or_default());
                if self.inner.applied_index() >= Some(mark) {
                    if opened {
                        // A restart: the key space holds this snapshot's state or a later one, and the index
                        // was loaded from it when the store opened. Nothing to do.
                        return Ok(());
                    }
                    // Not a restart: the snapshot replaces whatever is held. Without its mark, `DiskBacked`
                    // cannot take it for a state it already holds; the entries after it apply again.
                    head[MARK_AT..MARK_END].fill(0);
                }
            }
            return StateMachine::restore(&mut self.inner, &mut (&head[..read]).chain(input));
        }
        // A store written whole by an older version: laid out as records, then installed like any snapshot.
        let mut bytes = head[..read].to_vec();
        input.read_to_end(&mut bytes)?;
        let space = crate::mvcc::legacy::to_key_space(&bytes).map_err(SnapshotError::invalid)?;
        drop(bytes);
        let mut converted = Vec::new();
        trestle_raft::write_key_space(&*space.freeze()?, &mut converted)?;
        drop(space);
        StateMachine::restore(&mut self.inner, &mut converted.as_slice())
    }

    fn commit(&mut self, index: u64) -> std::io::Result<()> {
        StateMachine::commit(&mut self.inner, index)
    }

    fn applied_index(&self) -> Option<u64> {
        StateMachine::applied_index(&self.inner)
    }

    fn freeze(&self) -> Option<FrozenState> {
        StateMachine::freeze(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{Compare, CompareResult, CompareTarget, PutRequest, RequestOp, TxnRequest};
    use postcard::from_bytes as decode;
    use postcard::to_allocvec as encode;

    fn put(key: &str, value: &str) -> StoreCommand {
        StoreCommand::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn a_batch_applies_exactly_as_its_commands_one_by_one() {
        let commands = vec![
            put("a", "1"),
            put("b", "2"),
            // Fails: lease 99 does not exist. The commands around it are unaffected.
            StoreCommand::LeaseRevoke { id: 99 },
            StoreCommand::Txn(TxnRequest {
                compare: vec![Compare {
                    key: b"a".to_vec(),
                    range_end: vec![],
                    target: CompareTarget::Value(b"1".to_vec()),
                    result: CompareResult::Equal,
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: b"a".to_vec(),
                    value: b"3".to_vec(),
                    ..Default::default()
                })],
                failure: vec![],
            }),
            StoreCommand::Batch(vec![put("c", "4")]),
        ];
        let mut one_by_one = StoreApp::default();
        let mut watch_one = one_by_one.subscribe();
        let expected: Vec<StoreResult> = commands.iter().map(|c| one_by_one.apply_command(c)).collect();

        let mut batched = StoreApp::default();
        let mut watch_batched = batched.subscribe();
        let result = batched.apply_command(&StoreCommand::Batch(commands));
        assert_eq!(result.revision, one_by_one.store().revision());
        assert_eq!(result.outcome, Ok(StoreOutcome::Batch(expected)));
        assert_eq!(batched.store().index(), one_by_one.store().index());
        assert_eq!(batched.store().hash(), one_by_one.store().hash());
        // Watchers see the same revisions, one by one.
        loop {
            match (watch_one.try_recv(), watch_batched.try_recv()) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.revision, b.revision);
                    assert_eq!(
                        batched.store().events_at(b.revision),
                        one_by_one.store().events_at(a.revision)
                    );
                }
                (Err(_), Err(_)) => break,
                (a, b) => panic!("the feeds differ: {a:?} / {b:?}"),
            }
        }
    }

    #[test]
    fn an_old_single_command_entry_still_decodes() {
        // Batches are a new last variant: entries written before them keep their encoding.
        let mut app = StoreApp::default();
        let bytes = encode(&put("k", "v")).expect("encodes");
        let result: StoreResult =
            decode(&trestle_raft::GroupApp::apply(&mut app, 7, &bytes).expect("applies")).expect("decodes");
        assert!(matches!(result.outcome, Ok(StoreOutcome::Put(_))));
        assert_eq!(app.last_index(), 7);
    }

    #[test]
    fn a_nospace_alarm_refuses_writes_that_need_space_and_nothing_else() {
        let mut app = StoreApp::default();
        app.apply_command(&put("a", "1"));
        let raise = StoreCommand::Alarm {
            action: AlarmAction::Activate,
            member: 7,
            alarm: AlarmKind::NoSpace,
        };
        let raised = app.apply_command(&raise);
        let entry = AlarmMember {
            member: 7,
            alarm: AlarmKind::NoSpace,
        };
        assert_eq!(raised.outcome, Ok(StoreOutcome::Alarms(vec![entry])));
        assert_eq!(
            app.apply_command(&raise).outcome,
            Ok(StoreOutcome::Alarms(vec![])),
            "raised twice"
        );
        let revision = app.store().revision();
        let txn_put = StoreCommand::Txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Put(PutRequest {
                key: b"t".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })],
            failure: vec![],
        });
        for refused in [
            put("b", "2"),
            StoreCommand::LeaseGrant { id: 5, ttl: 10 },
            txn_put.clone(),
        ] {
            let result = app.apply_command(&refused);
            assert_eq!(result.outcome, Err(MvccError::NoSpace), "{refused:?}");
            assert_eq!(result.revision, revision);
        }
        // Making room still works.
        let delete = StoreCommand::DeleteRange(crate::mvcc::DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        });
        assert!(app.apply_command(&delete).outcome.is_ok());
        assert!(app.apply_command(&StoreCommand::Compact(2)).outcome.is_ok());

        // The alarm survives a snapshot, and a restart.
        let mut bytes = Vec::new();
        app.snapshot(&mut bytes).unwrap();
        let mut restored = StoreApp::default();
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored.alarms(), vec![entry]);
        assert!(restored.out_of_space());

        let clear = StoreCommand::Alarm {
            action: AlarmAction::Deactivate,
            member: 7,
            alarm: AlarmKind::NoSpace,
        };
        assert_eq!(
            app.apply_command(&clear).outcome,
            Ok(StoreOutcome::Alarms(vec![entry]))
        );
        assert!(
            app.apply_command(&txn_put).outcome.is_ok(),
            "writes resume once disarmed"
        );
    }

    fn put_with_lease(key: &str, value: &str, lease: i64) -> StoreCommand {
        StoreCommand::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease,
            ..Default::default()
        })
    }

    fn history() -> Vec<StoreCommand> {
        let mut commands = vec![StoreCommand::LeaseGrant { id: 9, ttl: 30 }];
        for i in 0..200 {
            commands.push(put_with_lease(
                &format!("k{}", i % 7),
                &i.to_string(),
                if i % 5 == 0 { 9 } else { 0 },
            ));
        }
        commands.push(StoreCommand::DeleteRange(crate::mvcc::DeleteRangeRequest {
            key: b"k1".to_vec(),
            ..Default::default()
        }));
        commands.push(StoreCommand::Compact(150));
        commands.push(put("after", "x"));
        commands
    }

    #[test]
    fn a_snapshot_installed_on_a_follower_gives_the_same_store_and_hash() {
        let mut leader = StoreApp::default();
        for command in history() {
            leader.apply_command(&command);
        }
        let frozen = leader.freeze().unwrap();
        // Applying goes on after the freeze; the snapshot is the state at the freeze.
        let at_freeze = leader.store().hash_kv(0).unwrap();
        let revision = leader.store().revision();
        leader.apply_command(&put("later", "y"));
        let mut bytes = Vec::new();
        frozen(&mut bytes).unwrap();

        let mut follower = StoreApp::default();
        let mut watch = follower.subscribe();
        follower.restore(&mut bytes.as_slice()).unwrap();
        assert!(watch.try_recv().unwrap().resync, "watchers are told to catch up");
        assert_eq!(follower.store().revision(), revision);
        assert_eq!(follower.store().hash_kv(0).unwrap(), at_freeze);
        assert_eq!(
            follower.store().hash_kv(revision),
            leader.store().hash_kv(revision)
        );
        assert_eq!(follower.store().lease_keys(9), leader.store().lease_keys(9));
        assert_eq!(follower.last_index(), leader.last_index() - 1);
        // Both go on alike.
        follower.apply_command(&put("later", "y"));
        assert_eq!(follower.store().index(), leader.store().index());
        assert_eq!(follower.store().hash(), leader.store().hash());
    }

    /// The old whole-store snapshot, field for field.
    mod old {
        use serde::Serialize;
        use std::collections::BTreeSet;

        use crate::mvcc::{Event, KeyValue, LeaseId, Revision};

        #[derive(Serialize)]
        pub(super) enum Version {
            Live(KeyValue),
            Tombstone(Revision),
        }

        #[derive(Serialize)]
        pub(super) struct LeaseEntry {
            pub(super) ttl: i64,
            pub(super) keys: BTreeSet<Vec<u8>>,
        }

        #[derive(Serialize)]
        pub(super) struct Store {
            pub(super) revision: Revision,
            pub(super) compact_revision: Revision,
            pub(super) keys: Vec<(Vec<u8>, Vec<Version>)>,
            pub(super) events: Vec<(Revision, Vec<Event>)>,
            pub(super) leases: Vec<(LeaseId, LeaseEntry)>,
            pub(super) max_txn_ops: usize,
        }
    }

    #[test]
    fn a_snapshot_of_the_old_whole_store_format_restores_as_records() {
        use crate::mvcc::{Event, EventKind, KeyValue};
        let kv = |key: &str, value: &str, create, rev, version, lease| KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: rev,
            version,
            value: value.as_bytes().to_vec(),
            lease,
        };
        // Lease 9; a=1 (2), b=1 on the lease (3), a=2 (4), delete b (5), a=3 (6); compacted at 4.
        let old = old::Store {
            revision: 6,
            compact_revision: 4,
            keys: vec![
                (
                    b"a".to_vec(),
                    vec![
                        old::Version::Live(kv("a", "2", 2, 4, 2, 0)),
                        old::Version::Live(kv("a", "3", 2, 6, 3, 0)),
                    ],
                ),
                (
                    b"b".to_vec(),
                    vec![
                        old::Version::Live(kv("b", "1", 3, 3, 1, 9)),
                        old::Version::Tombstone(5),
                    ],
                ),
            ],
            events: vec![
                (
                    4,
                    vec![Event {
                        kind: EventKind::Put,
                        kv: kv("a", "2", 2, 4, 2, 0),
                        prev_kv: None,
                    }],
                ),
                (
                    5,
                    vec![Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: b"b".to_vec(),
                            mod_revision: 5,
                            ..Default::default()
                        },
                        prev_kv: None,
                    }],
                ),
                (
                    6,
                    vec![Event {
                        kind: EventKind::Put,
                        kv: kv("a", "3", 2, 6, 3, 0),
                        prev_kv: None,
                    }],
                ),
            ],
            leases: vec![(
                9,
                old::LeaseEntry {
                    ttl: 30,
                    keys: BTreeSet::new(),
                },
            )],
            max_txn_ops: 128,
        };
        let mut bytes = encode(&old).unwrap();
        let alarm = AlarmMember {
            member: 7,
            alarm: AlarmKind::NoSpace,
        };
        bytes.extend(encode(&BTreeSet::from([alarm])).unwrap());

        let mut now = StoreApp::default();
        for command in [
            StoreCommand::LeaseGrant { id: 9, ttl: 30 },
            put("a", "1"),
            put_with_lease("b", "1", 9),
            put("a", "2"),
            StoreCommand::DeleteRange(crate::mvcc::DeleteRangeRequest {
                key: b"b".to_vec(),
                ..Default::default()
            }),
            put("a", "3"),
            StoreCommand::Compact(4),
        ] {
            now.apply_command(&command);
        }
        let mut restored = StoreApp::default();
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored.store().index(), now.store().index());
        assert_eq!(restored.store().hash_kv(0), now.store().hash_kv(0));
        assert_eq!(restored.store().events_at(6), now.store().events_at(6));
        assert_eq!(restored.alarms(), vec![alarm]);
        assert_eq!(
            restored.applied_index(),
            None,
            "no applied mark: the log after the snapshot applies"
        );
    }
}
