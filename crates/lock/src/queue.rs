//! The waiting line under a lock prefix, as etcd's concurrency package defines it: each contender puts one key
//! attached to its lease; keys are ordered by create revision; the first `permits` keys hold.
//!
//! The decisions are sans-IO ([`mutex_turn`], [`semaphore_turn`]) and checked against a model in the tests; the
//! async functions around them only fetch the facts and wait for deletes.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};

use trestle_etcd::{CallKind, RetryPolicy, RetryingClient};

pub use crate::held::{CleanupOnDrop, PendingWithdrawals};
use crate::{LockError, LossSignal};

/// Where a contender stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// It holds (the lock, a permit, the leadership).
    Holds,
    /// Wait until this key (created before ours) is deleted, watching from revision `after + 1`.
    WaitForDelete {
        /// The key to watch.
        key: Vec<u8>,
        /// The revision of the read that saw it.
        after: i64,
    },
    /// Wait until one of the keys created before ours is deleted, watching the prefix from `after + 1`.
    WaitForAnyDelete {
        /// The revision of the read that counted them.
        after: i64,
    },
}

/// A mutex contender's turn, from the newest key created before its own (read at revision `read_at`): none
/// means it holds. Watching only that one predecessor avoids waking every waiter on each release.
pub fn mutex_turn(newest_predecessor: Option<&[u8]>, read_at: i64) -> Turn {
    match newest_predecessor {
        None => Turn::Holds,
        Some(key) => Turn::WaitForDelete {
            key: key.to_vec(),
            after: read_at,
        },
    }
}

/// A semaphore contender's turn, from how many keys were created before its own (read at `read_at`).
pub fn semaphore_turn(ahead: i64, permits: u32, read_at: i64) -> Turn {
    if ahead < i64::from(permits) {
        Turn::Holds
    } else {
        Turn::WaitForAnyDelete { after: read_at }
    }
}

/// The key prefix of a lock or election name: the name and a `/`, as etcd's concurrency package does.
pub fn name_prefix(name: &[u8]) -> Result<Vec<u8>, LockError> {
    if name.is_empty() {
        return Err(LockError::EmptyName);
    }
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Ok(prefix)
}

/// The key a session's contender puts under `prefix`: the lease id in lower-case hex, as etcd does (so etcd's
/// own clients and ours queue in the same line).
pub fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// One session's place in the line of a name: everything a mutex or an election candidate needs to queue.
#[derive(Clone)]
pub struct Contender {
    /// The client the session talks through.
    pub client: Client,
    /// The name, for messages.
    pub name: String,
    /// `name/`: the line.
    pub prefix: Vec<u8>,
    /// `name/<lease hex>`: this session's key in the line.
    pub key: Vec<u8>,
    /// The session's lease.
    pub lease: i64,
    /// The session's loss signal.
    pub loss: LossSignal,
    /// Withdrawals of this contender's abandoned attempts, awaited before the next one.
    pub withdrawals: PendingWithdrawals,
}

impl std::fmt::Debug for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contender")
            .field("name", &self.name)
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Contender {
    /// `session`'s place in the line of `name` ([`LockError::EmptyName`] for an empty name).
    pub fn new(session: &crate::Session, name: &[u8]) -> Result<Self, LockError> {
        let prefix = name_prefix(name)?;
        Ok(Self {
            client: session.client().clone(),
            name: String::from_utf8_lossy(name).into_owned(),
            key: contender_key(&prefix, session.lease()),
            prefix,
            lease: session.lease(),
            loss: session.loss().clone(),
            withdrawals: PendingWithdrawals::default(),
        })
    }
}

/// Result of putting (or finding) a contender's key.
#[derive(Clone, Debug)]
pub struct Enqueued {
    /// The key's create revision: its place in line, and the fencing token when it holds.
    pub revision: i64,
    /// The revision the write (or read) happened at.
    pub header_revision: i64,
    /// Whether the key already existed (put by the same session before).
    pub existed: bool,
    /// The key's value as stored.
    pub value: Vec<u8>,
}

/// Puts `key` with `value` attached to `lease` unless it exists, in one transaction.
pub async fn enqueue(client: &Client, key: &[u8], value: &[u8], lease: i64) -> Result<Enqueued, LockError> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))])
        .or_else([TxnOp::get(key, None)]);
    // Put-if-absent: a second attempt finds the key the first one made.
    let response = call(client, CallKind::Idempotent, |mut client| {
        let txn = txn.clone();
        async move { client.txn(txn).await }
    })
    .await?;
    let header_revision = header_revision(response.header())?;
    if response.succeeded() {
        return Ok(Enqueued {
            revision: header_revision,
            header_revision,
            existed: false,
            value: value.to_vec(),
        });
    }
    for op in response.op_responses() {
        if let TxnOpResponse::Get(get) = op
            && let Some(kv) = get.kvs().first()
        {
            return Ok(Enqueued {
                revision: kv.create_revision(),
                header_revision,
                existed: true,
                value: kv.value().to_vec(),
            });
        }
    }
    // The key vanished between the compare and the get of the same transaction: impossible in etcd's model.
    Err(LockError::Protocol {
        what: "transaction found the key but returned no key-value".into(),
    })
}

/// Waits until no key under `prefix` created before `revision` remains (watching only the newest such key at a
/// time), or the session is lost. Returns the revision at which the contender was seen to hold.
pub async fn wait_for_turn(
    client: &Client,
    prefix: &[u8],
    revision: i64,
    loss: &LossSignal,
) -> Result<i64, LockError> {
    loop {
        let options = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(revision - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let response = guarded(loss, get(client, prefix, options)).await?;
        let read_at = header_revision(response.header())?;
        match mutex_turn(response.kvs().first().map(KeyValue::key), read_at) {
            Turn::Holds => return Ok(read_at),
            Turn::WaitForDelete { key, after } => {
                guarded(loss, wait_for_delete(client, &key, after, false, revision)).await?;
            }
            Turn::WaitForAnyDelete { after } => {
                guarded(loss, wait_for_delete(client, prefix, after, true, revision)).await?;
            }
        }
    }
}

/// Waits until fewer than `permits` keys under `prefix` were created before `revision`, or the session is lost.
pub async fn wait_for_slot(
    client: &Client,
    prefix: &[u8],
    revision: i64,
    permits: u32,
    loss: &LossSignal,
) -> Result<i64, LockError> {
    loop {
        // Counted from the keys, not `count_only`: etcd's count ignores the create-revision filter.
        let options = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(revision - 1)
            .with_keys_only()
            .with_limit(i64::from(permits));
        let response = guarded(loss, get(client, prefix, options)).await?;
        let read_at = header_revision(response.header())?;
        match semaphore_turn(response.kvs().len() as i64, permits, read_at) {
            Turn::Holds => return Ok(read_at),
            Turn::WaitForDelete { key, after } => {
                guarded(loss, wait_for_delete(client, &key, after, false, revision)).await?;
            }
            Turn::WaitForAnyDelete { after } => {
                guarded(loss, wait_for_delete(client, prefix, after, true, revision)).await?;
            }
        }
    }
}

/// Runs `work` unless the session is lost first ([`LockError::SessionLost`]).
pub async fn guarded<T>(
    loss: &LossSignal,
    work: impl Future<Output = Result<T, LockError>>,
) -> Result<T, LockError> {
    if loss.is_lost() {
        return Err(loss.error());
    }
    tokio::select! {
        result = work => result,
        _ = loss.lost() => Err(loss.error()),
    }
}

/// A range read, retried on transient errors.
pub async fn get(
    client: &Client,
    key: &[u8],
    options: GetOptions,
) -> Result<etcd_client::GetResponse, LockError> {
    call(client, CallKind::ReadOnly, |mut client| {
        let options = options.clone();
        async move { client.get(key, Some(options)).await }
    })
    .await
}

/// Returns when a delete of `key` (or, with `prefix`, of any key under it created before `before`) happens
/// after revision `after`, or when the watch ends for a reason that calls for a fresh look (compaction, a
/// broken stream): the caller always re-reads, so an early return is safe and a missed delete impossible.
async fn wait_for_delete(
    client: &Client,
    key: &[u8],
    after: i64,
    prefix: bool,
    before: i64,
) -> Result<(), LockError> {
    let mut options = WatchOptions::new().with_start_revision(after + 1);
    if prefix {
        options = options.with_prefix().with_prev_key();
    }
    let mut stream = call(client, CallKind::ReadOnly, |mut client| {
        let options = options.clone();
        async move { client.watch(key, Some(options)).await }
    })
    .await?;
    loop {
        let Ok(Some(response)) = stream.message().await else {
            return Ok(());
        };
        if response.canceled() || response.compact_revision() > 0 {
            return Ok(());
        }
        let relevant = response.events().iter().any(|event| {
            event.event_type() == EventType::Delete
                && (!prefix || event.prev_kv().is_none_or(|prev| prev.create_revision() < before))
        });
        if relevant {
            return Ok(());
        }
    }
}

/// How the lock's calls are retried: trestle-etcd's rule, which every Trestle client follows (reads and
/// idempotent writes on any transient failure; see [`CallKind`]), 50 ms doubling to 1 s between attempts, for
/// up to 10 s.
pub fn retry_policy() -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    policy.min_delay = Duration::from_millis(50);
    policy.max_delay = Duration::from_secs(1);
    policy.give_up_after = Duration::from_secs(10);
    policy
}

/// Runs `attempt` on `client` under trestle-etcd's retry rule for `kind` ([`retry_policy`]).
pub async fn call<T, F, Fut>(client: &Client, kind: CallKind, attempt: F) -> Result<T, LockError>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let client = RetryingClient::new(client.clone(), retry_policy())?;
    Ok(client.call(kind, attempt).await?)
}

/// The revision of a response header; a missing header is a protocol error.
pub fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, LockError> {
    header.map(|h| h.revision()).ok_or_else(|| LockError::Protocol {
        what: "response without a header".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A model of the line: contenders put keys at increasing revisions, leave (release or lease expiry) at any
    /// time, and decide their turn from a read of the keys before theirs. Whoever a decision says holds must
    /// still hold at every later point until it leaves: checked by counting holders at each step.
    #[derive(Clone, Debug)]
    enum Step {
        Join,
        Leave(usize),
        Decide(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(
            prop_oneof![
                2 => Just(Step::Join),
                1 => (0usize..16).prop_map(Step::Leave),
                3 => (0usize..16).prop_map(Step::Decide),
            ],
            1..120,
        )
    }

    fn run_model(steps: Vec<Step>, permits: u32) -> Result<(), TestCaseError> {
        let mut revision = 1i64;
        let mut keys: BTreeMap<i64, usize> = BTreeMap::new(); // create revision -> contender
        let mut mine: Vec<Option<i64>> = Vec::new();
        let mut holding: Vec<bool> = Vec::new();
        for step in steps {
            match step {
                Step::Join => {
                    revision += 1;
                    keys.insert(revision, mine.len());
                    mine.push(Some(revision));
                    holding.push(false);
                }
                Step::Leave(i) if i < mine.len() => {
                    if let Some(rev) = mine[i].take() {
                        keys.remove(&rev);
                        revision += 1;
                        holding[i] = false;
                    }
                }
                Step::Decide(i) if i < mine.len() => {
                    let Some(rev) = mine[i] else { continue };
                    let turn = if permits == 1 {
                        let newest = keys.range(..rev).next_back().map(|(r, _)| r.to_string());
                        mutex_turn(newest.as_ref().map(String::as_bytes), revision)
                    } else {
                        semaphore_turn(keys.range(..rev).count() as i64, permits, revision)
                    };
                    if turn == Turn::Holds {
                        holding[i] = true;
                    }
                }
                _ => {}
            }
            let holders = holding.iter().filter(|h| **h).count();
            prop_assert!(
                holders <= permits as usize,
                "{holders} holders of {permits} permits"
            );
        }
        Ok(())
    }

    proptest! {
        // Seeds are printed on failure; replay with PROPTEST_RNG_SEED.
        #[test]
        fn at_most_one_mutex_holder(steps in steps()) {
            run_model(steps, 1)?;
        }

        #[test]
        fn at_most_n_permit_holders(steps in steps(), permits in 1u32..4) {
            run_model(steps, permits)?;
        }
    }

    #[test]
    fn names_and_keys_follow_etcd() {
        assert!(matches!(name_prefix(b""), Err(LockError::EmptyName)));
        let prefix = name_prefix(b"jobs").ok();
        assert_eq!(prefix.as_deref(), Some(&b"jobs/"[..]));
        assert_eq!(
            contender_key(b"jobs/", 0x694d_8a2b_1c3e),
            b"jobs/694d8a2b1c3e".to_vec()
        );
    }
}
