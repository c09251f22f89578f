//! The coordination store as a Raft group application: the MVCC store, plus the feed of applied revisions that
//! watchers follow.

use tokio::sync::broadcast;

use std::collections::BTreeSet;

use super::alarm::{AlarmAction, AlarmKind, AlarmMember, needs_space};
use super::command::{StoreCommand, StoreOutcome, StoreResult};
use crate::mvcc::{MvccError, MvccStore, Revision};
use postcard::from_bytes as decode;
use trestle_raft::{SnapshotError, StateMachine};

/// A notice that a revision was applied. The events themselves stay in the store's history
/// ([`MvccStore::events_since`], [`MvccStore::events_at`]), where watchers read them under the app's lock: a
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

/// The coordination store's replicated state and its event feed.
#[derive(Debug)]
pub struct StoreApp {
    store: MvccStore,
    feed: broadcast::Sender<RevisionEvents>,
    /// The log index of the last applied entry that changed the store (read-your-writes for watches).
    last_index: u64,
    /// The raised alarms (replicated: every member agrees).
    alarms: BTreeSet<AlarmMember>,
}

impl Default for StoreApp {
    fn default() -> Self {
        Self::new(MvccStore::default())
    }
}

impl StoreApp {
    /// An app around `store`.
    pub fn new(store: MvccStore) -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Self {
            store,
            feed,
            last_index: 0,
            alarms: BTreeSet::new(),
        }
    }

    /// The raised alarms, in order.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms.iter().copied().collect()
    }

    /// Whether a `NoSpace` alarm is raised: writes that need space are refused.
    pub fn out_of_space(&self) -> bool {
        self.alarms.iter().any(|a| a.alarm == AlarmKind::NoSpace)
    }

    /// The MVCC store (for local reads).
    pub fn store(&self) -> &MvccStore {
        &self.store
    }

    /// Subscribes to notices of the revisions applied from now on. Subscribe while holding the app's lock after
    /// reading history, and no revision is missed or seen twice.
    pub fn subscribe(&self) -> broadcast::Receiver<RevisionEvents> {
        self.feed.subscribe()
    }

    /// The Raft log index of the last applied command.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Applies one command (the sans-IO core of [`StateMachine::apply`]).
    pub fn apply_command(&mut self, command: &StoreCommand) -> StoreResult {
        if let StoreCommand::Batch(commands) = command {
            let results = commands.iter().map(|c| self.apply_command(c)).collect();
            return StoreResult {
                revision: self.store.revision(),
                outcome: Ok(StoreOutcome::Batch(results)),
            };
        }
        let before = self.store.revision();
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
                Ok(StoreOutcome::Alarms(if changed {
                    vec![entry]
                } else {
                    Vec::new()
                }))
            }
            StoreCommand::Put(req) => self.store.put(req).map(StoreOutcome::Put),
            StoreCommand::DeleteRange(req) => self.store.delete_range(req).map(StoreOutcome::DeleteRange),
            StoreCommand::Txn(req) => self.store.txn(req).map(StoreOutcome::Txn),
            StoreCommand::Compact(rev) => self.store.compact(*rev).map(|()| StoreOutcome::Compacted),
            StoreCommand::LeaseGrant { id, ttl } => {
                self.store.lease_grant(*id, *ttl).map(StoreOutcome::LeaseGranted)
            }
            StoreCommand::LeaseRevoke { id } => {
                self.store.lease_revoke(*id).map(|()| StoreOutcome::LeaseRevoked)
            }
        };
        let after = self.store.revision();
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

impl StateMachine for StoreApp {
    type Command = StoreCommand;
    type Response = StoreResult;

    fn apply(&mut self, index: u64, command: StoreCommand) -> StoreResult {
        self.last_index = index;
        self.apply_command(&command)
    }

    fn undecodable(&mut self, index: u64, error: String) -> StoreResult {
        // A command this version cannot read changes nothing; the proposer gets an error, not a panic.
        self.last_index = index;
        StoreResult {
            revision: self.store.revision(),
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

    fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<(), SnapshotError> {
        // Streams into the snapshot file: no copy of the encoded store in memory. The alarms follow the store,
        // so a snapshot without them (an older one) still reads.
        postcard::to_io(&self.store, &mut *out)
            .map_err(|e| SnapshotError::invalid(format!("encoding the store: {e}")))?;
        if !self.alarms.is_empty() {
            postcard::to_io(&self.alarms, out)
                .map_err(|e| SnapshotError::invalid(format!("encoding the alarms: {e}")))?;
        }
        Ok(())
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> Result<(), SnapshotError> {
        // postcard decodes from one buffer (its reader needs scratch space the size of the largest value), so
        // restoring holds the encoded store once in memory, briefly.
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let (store, rest): (MvccStore, &[u8]) = postcard::take_from_bytes(&bytes)
            .map_err(|e| SnapshotError::invalid(format!("undecodable store snapshot: {e}")))?;
        let alarms = if rest.is_empty() {
            BTreeSet::new()
        } else {
            decode(rest)
                .map_err(|e| SnapshotError::invalid(format!("undecodable alarms in the snapshot: {e}")))?
        };
        self.store = store;
        self.alarms = alarms;
        let _ = self.feed.send(RevisionEvents {
            revision: self.store.revision(),
            resync: true,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{Compare, CompareResult, CompareTarget, PutRequest, RequestOp, TxnRequest};
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
        assert_eq!(
            encode(batched.store()).expect("encodes"),
            encode(one_by_one.store()).expect("encodes")
        );
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

        // The alarm survives a snapshot; a snapshot without alarms (an older one) restores with none.
        let mut bytes = Vec::new();
        app.snapshot(&mut bytes).unwrap();
        let mut restored = StoreApp::default();
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored.alarms(), vec![entry]);
        let old = encode(app.store()).unwrap();
        restored.restore(&mut old.as_slice()).unwrap();
        assert!(restored.alarms().is_empty());

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
}
