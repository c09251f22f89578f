//! The store checked against a deliberately naive model of etcd's MVCC semantics: the model keeps a full copy of
//! the key space for every revision, so each answer it gives is obviously right.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use super::*;

fn kv(key: &[u8]) -> Vec<u8> {
    key.to_vec()
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: kv(key.as_bytes()),
        value: kv(value.as_bytes()),
        ..Default::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: kv(key.as_bytes()),
        ..Default::default()
    }
}

#[test]
fn an_empty_store_is_at_revision_one() {
    let store = MvccStore::default();
    assert_eq!(store.revision(), 1);
    assert_eq!(store.range(&get("a")).unwrap(), RangeResponse::default());
}

#[test]
fn puts_track_create_mod_and_version() {
    let mut s = MvccStore::default();
    s.put(&put("a", "1")).unwrap();
    s.put(&put("a", "2")).unwrap();
    let got = s.range(&get("a")).unwrap().kvs;
    assert_eq!(got[0].create_revision, 2);
    assert_eq!(got[0].mod_revision, 3);
    assert_eq!(got[0].version, 2);
    assert_eq!(got[0].value, b"2");
    s.delete_range(&DeleteRangeRequest {
        key: kv(b"a"),
        ..Default::default()
    })
    .unwrap();
    s.put(&put("a", "3")).unwrap();
    let got = s.range(&get("a")).unwrap().kvs;
    assert_eq!(
        (got[0].create_revision, got[0].version),
        (5, 1),
        "a delete starts a new generation"
    );
    // History stays readable.
    let old = s
        .range(&RangeRequest {
            revision: 2,
            ..get("a")
        })
        .unwrap()
        .kvs;
    assert_eq!(old[0].value, b"1");
}

#[test]
fn deleting_nothing_does_not_bump_the_revision() {
    let mut s = MvccStore::default();
    let resp = s
        .delete_range(&DeleteRangeRequest {
            key: kv(b"missing"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(resp.deleted, 0);
    assert_eq!(s.revision(), 1);
}

#[test]
fn empty_keys_are_refused_with_etcds_message() {
    let mut s = MvccStore::default();
    let err = s.put(&put("", "x")).unwrap_err();
    assert_eq!(err, MvccError::EmptyKey);
    assert_eq!(err.to_string(), "etcdserver: key is not provided");
    assert_eq!(err.grpc_code(), tonic::Code::InvalidArgument);
    assert_eq!(s.revision(), 1);
}

#[test]
fn compacted_and_future_revisions_are_refused() {
    let mut s = MvccStore::default();
    for i in 0..5 {
        s.put(&put("k", &i.to_string())).unwrap();
    }
    s.compact(4).unwrap();
    let err = s
        .range(&RangeRequest {
            revision: 3,
            ..get("k")
        })
        .unwrap_err();
    assert!(matches!(
        err,
        MvccError::Compacted {
            requested: 3,
            compact_revision: 4
        }
    ));
    assert_eq!(err.grpc_code(), tonic::Code::OutOfRange);
    assert_eq!(
        s.range(&RangeRequest {
            revision: 4,
            ..get("k")
        })
        .unwrap()
        .kvs[0]
            .value,
        b"2"
    );
    let err = s
        .range(&RangeRequest {
            revision: 99,
            ..get("k")
        })
        .unwrap_err();
    assert!(matches!(
        err,
        MvccError::FutureRevision {
            requested: 99,
            current: 6
        }
    ));
    assert!(matches!(s.compact(4), Err(MvccError::Compacted { .. })));
    assert!(matches!(s.compact(7), Err(MvccError::FutureRevision { .. })));
    assert!(matches!(s.events_since(2), Err(MvccError::Compacted { .. })));
    assert_eq!(s.events_since(4).unwrap().len(), 3);
}

#[test]
fn range_end_conventions() {
    let mut s = MvccStore::default();
    for k in ["a", "ab", "abc", "b", "c"] {
        s.put(&put(k, k)).unwrap();
    }
    let keys = |r: RangeRequest| {
        s.range(&r)
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(RangeRequest {
            range_end: kv(b"b"),
            ..get("a")
        }),
        vec![kv(b"a"), kv(b"ab"), kv(b"abc")]
    );
    assert_eq!(
        keys(RangeRequest {
            range_end: vec![0],
            ..get("b")
        }),
        vec![kv(b"b"), kv(b"c")]
    );
    assert_eq!(
        keys(RangeRequest {
            range_end: kv(b"a"),
            ..get("c")
        }),
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(
        keys(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .len(),
        5
    );
    let limited = s
        .range(&RangeRequest {
            range_end: vec![0],
            limit: 2,
            ..get("a")
        })
        .unwrap();
    assert_eq!((limited.kvs.len(), limited.more, limited.count), (2, true, 5));
    let desc = keys(RangeRequest {
        range_end: vec![0],
        sort_order: SortOrder::Descend,
        ..get("a")
    });
    assert_eq!(desc.first(), Some(&kv(b"c")));
    let counted = s
        .range(&RangeRequest {
            range_end: vec![0],
            count_only: true,
            ..get("a")
        })
        .unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 5));
    let keys_only = s
        .range(&RangeRequest {
            keys_only: true,
            ..get("a")
        })
        .unwrap();
    assert!(keys_only.kvs[0].value.is_empty());
}

#[test]
fn txn_compares_see_the_store_before_and_reads_see_own_writes() {
    let mut s = MvccStore::default();
    s.put(&put("k", "v1")).unwrap();
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Value(kv(b"v1")),
            key: kv(b"k"),
            range_end: vec![],
        }],
        success: vec![
            RequestOp::Put(put("k", "v2")),
            RequestOp::Range(get("k")),
            RequestOp::Txn(TxnRequest {
                // Evaluated before the outer transaction wrote: version is still 1.
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Version(1),
                    key: kv(b"k"),
                    range_end: vec![],
                }],
                success: vec![RequestOp::Put(put("nested", "yes"))],
                failure: vec![],
            }),
        ],
        failure: vec![],
    };
    let resp = s.txn(&txn).unwrap();
    assert!(resp.succeeded);
    let ResponseOp::Range(read) = &resp.responses[1] else {
        panic!("expected a range response")
    };
    assert_eq!(read.kvs[0].value, b"v2");
    assert_eq!(s.revision(), 3, "all writes of a transaction share one revision");
    assert_eq!(s.range(&get("nested")).unwrap().kvs[0].mod_revision, 3);
}

#[test]
fn txn_refusals_change_nothing() {
    let mut s = MvccStore::default();
    let dup = TxnRequest {
        success: vec![RequestOp::Put(put("a", "1")), RequestOp::Put(put("a", "2"))],
        ..Default::default()
    };
    assert!(matches!(s.txn(&dup), Err(MvccError::DuplicateKey { .. })));
    let put_and_delete = TxnRequest {
        success: vec![
            RequestOp::Put(put("a", "1")),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: kv(b"a"),
                range_end: kv(b"b"),
                prev_kv: false,
            }),
        ],
        ..Default::default()
    };
    assert!(matches!(
        s.txn(&put_and_delete),
        Err(MvccError::DuplicateKey { .. })
    ));
    let too_many = TxnRequest {
        success: (0..129)
            .map(|i| RequestOp::Put(put(&i.to_string(), "x")))
            .collect(),
        ..Default::default()
    };
    assert!(matches!(
        s.txn(&too_many),
        Err(MvccError::TooManyOps { ops: 129, max: 128 })
    ));
    let bad_lease = TxnRequest {
        success: vec![
            RequestOp::Put(put("a", "1")),
            RequestOp::Put(PutRequest {
                lease: 42,
                ..put("b", "1")
            }),
        ],
        ..Default::default()
    };
    assert!(matches!(
        s.txn(&bad_lease),
        Err(MvccError::LeaseNotFound { id: 42 })
    ));
    assert_eq!(s.revision(), 1);
    assert_eq!(s.range(&get("a")).unwrap().count, 0);
}

#[test]
fn ignore_value_and_ignore_lease() {
    let mut s = MvccStore::default();
    assert_eq!(
        s.put(&PutRequest {
            ignore_value: true,
            ..put("k", "")
        }),
        Err(MvccError::KeyNotFound)
    );
    assert_eq!(
        s.put(&PutRequest {
            ignore_value: true,
            ..put("k", "x")
        }),
        Err(MvccError::ValueProvided)
    );
    s.lease_grant(7, 10).unwrap();
    s.put(&PutRequest {
        lease: 7,
        ..put("k", "v")
    })
    .unwrap();
    s.put(&PutRequest {
        ignore_lease: true,
        ..put("k", "v2")
    })
    .unwrap();
    let got = &s.range(&get("k")).unwrap().kvs[0];
    assert_eq!((got.value.as_slice(), got.lease), (b"v2".as_slice(), 7));
    assert_eq!(
        s.put(&PutRequest {
            ignore_lease: true,
            lease: 7,
            ..put("k", "")
        }),
        Err(MvccError::LeaseProvided)
    );
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let mut s = MvccStore::default();
    s.lease_grant(9, 5).unwrap();
    s.put(&PutRequest {
        lease: 9,
        ..put("a", "1")
    })
    .unwrap();
    s.put(&PutRequest {
        lease: 9,
        ..put("b", "1")
    })
    .unwrap();
    s.put(&put("c", "1")).unwrap();
    assert_eq!(s.lease_keys(9), vec![kv(b"a"), kv(b"b")]);
    let before = s.revision();
    s.lease_revoke(9).unwrap();
    assert_eq!(s.revision(), before + 1);
    assert_eq!(s.events_at(before + 1).len(), 2);
    assert_eq!(
        s.range(&RangeRequest {
            range_end: vec![0],
            ..get("a")
        })
        .unwrap()
        .count,
        1
    );
    assert_eq!(s.lease_revoke(9), Err(MvccError::LeaseNotFound { id: 9 }));
    assert_eq!(
        s.lease_grant(9, MAX_LEASE_TTL + 1),
        Err(MvccError::LeaseTtlTooLarge {
            ttl: MAX_LEASE_TTL + 1,
            max: MAX_LEASE_TTL
        })
    );
}

#[test]
fn a_store_reopens_from_its_key_space() {
    let mut s = MvccStore::default();
    s.lease_grant(3, 10).unwrap();
    s.put(&PutRequest {
        lease: 3,
        ..put("a", "1")
    })
    .unwrap();
    s.put(&put("b", "2")).unwrap();
    s.delete_range(&DeleteRangeRequest {
        key: kv(b"b"),
        ..Default::default()
    })
    .unwrap();
    // Everything the store is lives in its key space: reopening it rebuilds an equal store.
    let back = MvccStore::open(s.space().clone(), DEFAULT_MAX_TXN_OPS).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.lease_keys(3), vec![b"a".to_vec()]);
    assert_eq!(back.approximate_size(), s.approximate_size());
}

// ----- model-based property test -----

/// The model: the whole key space after every revision. `history[r]` is the state at revision `r`.
#[derive(Debug)]
struct Model {
    history: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compact: Revision,
    leases: BTreeMap<LeaseId, i64>,
}

impl Model {
    fn new() -> Self {
        // Revision 0 does not exist; revision 1 is the empty store.
        Self {
            history: vec![BTreeMap::new(), BTreeMap::new()],
            compact: 0,
            leases: BTreeMap::new(),
        }
    }
    fn rev(&self) -> Revision {
        self.history.len() as Revision - 1
    }
    fn now(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        &self.history[self.history.len() - 1]
    }
    fn put_into(
        state: &mut BTreeMap<Vec<u8>, KeyValue>,
        rev: Revision,
        key: &[u8],
        value: &[u8],
        lease: LeaseId,
    ) {
        let (create, version) = match state.get(key) {
            Some(old) => (old.create_revision, old.version + 1),
            None => (rev, 1),
        };
        state.insert(
            key.to_vec(),
            KeyValue {
                key: key.to_vec(),
                create_revision: create,
                mod_revision: rev,
                version,
                value: value.to_vec(),
                lease,
            },
        );
    }
    fn range(&self, key: &[u8], end: &[u8], at: Revision) -> Result<Vec<KeyValue>, ()> {
        let at = if at <= 0 { self.rev() } else { at };
        if at > self.rev() || at < self.compact {
            return Err(());
        }
        Ok(self.history[at as usize]
            .values()
            .filter(|kv| in_range(&kv.key, key, end))
            .cloned()
            .collect())
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put { key: u8, value: u8, lease: Option<u8> },
    Delete { key: u8, end: Option<u8> },
    CasPut { key: u8, version: i64, value: u8 },
    Range { key: u8, end: Option<u8>, back: i64 },
    Compact { back: i64 },
    Grant { id: u8 },
    Revoke { id: u8 },
}

fn key_of(k: u8) -> Vec<u8> {
    vec![b'a' + (k % 8)]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..8, any::<u8>(), proptest::option::weighted(0.3, 0u8..3)).prop_map(|(key, value, lease)| Op::Put { key, value, lease }),
        2 => (0u8..8, proptest::option::of(0u8..9)).prop_map(|(key, end)| Op::Delete { key, end }),
        2 => (0u8..8, 0i64..3, any::<u8>()).prop_map(|(key, version, value)| Op::CasPut { key, version, value }),
        3 => (0u8..8, proptest::option::of(0u8..9), 0i64..6).prop_map(|(key, end, back)| Op::Range { key, end, back }),
        1 => (0i64..6).prop_map(|back| Op::Compact { back }),
        1 => (0u8..3).prop_map(|id| Op::Grant { id }),
        1 => (0u8..3).prop_map(|id| Op::Revoke { id }),
    ]
}

/// A proptest configuration with a seed that is printed, and taken from `PROPTEST_RNG_SEED` to replay a run.
pub(crate) fn seeded_config(cases: u32) -> Config {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand_seed);
    eprintln!("proptest seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

fn end_of(end: Option<u8>) -> Vec<u8> {
    match end {
        None => vec![],
        Some(8) => vec![0],
        Some(e) => key_of(e),
    }
}

fn check_against_model(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut store = MvccStore::default();
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Put { key, value, lease } => {
                let lease = lease.map(|l| l as LeaseId + 1).unwrap_or(0);
                let got = store.put(&PutRequest {
                    key: key_of(*key),
                    value: vec![*value],
                    lease,
                    prev_kv: true,
                    ..Default::default()
                });
                if lease != 0 && !model.leases.contains_key(&lease) {
                    prop_assert_eq!(got, Err(MvccError::LeaseNotFound { id: lease }));
                    continue;
                }
                let prev = model.now().get(&key_of(*key)).cloned();
                prop_assert_eq!(got, Ok(PutResponse { prev_kv: prev }));
                let mut next = model.now().clone();
                let rev = model.rev() + 1;
                Model::put_into(&mut next, rev, &key_of(*key), &[*value], lease);
                model.history.push(next);
            }
            Op::Delete { key, end } => {
                let end = end_of(*end);
                let got = store.delete_range(&DeleteRangeRequest {
                    key: key_of(*key),
                    range_end: end.clone(),
                    prev_kv: true,
                });
                let mut next = model.now().clone();
                let doomed: Vec<KeyValue> = next
                    .values()
                    .filter(|kv| in_range(&kv.key, &key_of(*key), &end))
                    .cloned()
                    .collect();
                for kv in &doomed {
                    next.remove(&kv.key);
                }
                prop_assert_eq!(
                    got,
                    Ok(DeleteRangeResponse {
                        deleted: doomed.len() as i64,
                        prev_kvs: doomed.clone()
                    })
                );
                if !doomed.is_empty() {
                    model.history.push(next);
                }
            }
            Op::CasPut { key, version, value } => {
                let cmp = Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Version(*version),
                    key: key_of(*key),
                    range_end: vec![],
                };
                let got = store.txn(&TxnRequest {
                    compare: vec![cmp],
                    success: vec![RequestOp::Put(PutRequest {
                        key: key_of(*key),
                        value: vec![*value],
                        ..Default::default()
                    })],
                    failure: vec![RequestOp::Range(RangeRequest {
                        key: key_of(*key),
                        ..Default::default()
                    })],
                });
                let current = model.now().get(&key_of(*key)).cloned();
                let holds = current.as_ref().map_or(0, |kv| kv.version) == *version;
                if holds {
                    let mut next = model.now().clone();
                    let rev = model.rev() + 1;
                    Model::put_into(&mut next, rev, &key_of(*key), &[*value], 0);
                    model.history.push(next);
                    prop_assert_eq!(
                        got,
                        Ok(TxnResponse {
                            succeeded: true,
                            responses: vec![ResponseOp::Put(PutResponse::default())]
                        })
                    );
                } else {
                    let kvs: Vec<KeyValue> = current.into_iter().collect();
                    let count = kvs.len() as i64;
                    prop_assert_eq!(
                        got,
                        Ok(TxnResponse {
                            succeeded: false,
                            responses: vec![ResponseOp::Range(RangeResponse {
                                kvs,
                                more: false,
                                count
                            })]
                        })
                    );
                }
            }
            Op::Range { key, end, back } => {
                let at = (model.rev() - back).max(1);
                let end = end_of(*end);
                let got = store.range(&RangeRequest {
                    key: key_of(*key),
                    range_end: end.clone(),
                    revision: at,
                    ..Default::default()
                });
                match model.range(&key_of(*key), &end, at) {
                    Ok(kvs) => {
                        let count = kvs.len() as i64;
                        prop_assert_eq!(
                            got,
                            Ok(RangeResponse {
                                kvs,
                                more: false,
                                count
                            })
                        );
                    }
                    Err(()) => prop_assert!(
                        matches!(got, Err(MvccError::Compacted { .. })),
                        "expected compacted: {:?}",
                        got
                    ),
                }
            }
            Op::Compact { back } => {
                let at = model.rev() - back;
                let got = store.compact(at);
                if at > model.compact && at >= 1 {
                    prop_assert_eq!(got, Ok(()));
                    model.compact = at;
                } else {
                    prop_assert!(got.is_err());
                }
            }
            Op::Grant { id } => {
                let id = *id as LeaseId + 1;
                let got = store.lease_grant(id, 10);
                if model.leases.insert(id, 10).is_some() {
                    prop_assert_eq!(got, Err(MvccError::LeaseExists { id }));
                } else {
                    prop_assert_eq!(got, Ok(Lease { id, ttl: 10 }));
                }
            }
            Op::Revoke { id } => {
                let id = *id as LeaseId + 1;
                let got = store.lease_revoke(id);
                if model.leases.remove(&id).is_none() {
                    prop_assert_eq!(got, Err(MvccError::LeaseNotFound { id }));
                    continue;
                }
                prop_assert_eq!(got, Ok(()));
                let mut next = model.now().clone();
                let before = next.len();
                next.retain(|_, kv| kv.lease != id);
                if next.len() != before {
                    model.history.push(next);
                }
            }
        }
        prop_assert_eq!(store.revision(), model.rev());
        // Every retained revision reads the same in both.
        for at in model.compact.max(1)..=model.rev() {
            let all = store.range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision: at,
                ..Default::default()
            });
            let kvs = model
                .range(&[0], &[0], at)
                .map_err(|()| TestCaseError::fail("model refused a retained revision"))?;
            prop_assert_eq!(all.map(|r| r.kvs), Ok(kvs), "revision {}", at);
        }
        for id in model.leases.keys() {
            let mut keys: Vec<Vec<u8>> = model
                .now()
                .values()
                .filter(|kv| kv.lease == *id)
                .map(|kv| kv.key.clone())
                .collect();
            keys.sort();
            prop_assert_eq!(store.lease_keys(*id), keys);
        }
    }
    // Reopened from its key space (a restart), the store is the same, size included.
    let restored = MvccStore::open(store.space().clone(), DEFAULT_MAX_TXN_OPS)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(restored.approximate_size(), store.approximate_size());
    prop_assert_eq!(restored, store);
    Ok(())
}

proptest! {
    #![proptest_config(seeded_config(256))]
    #[test]
    fn store_matches_the_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        check_against_model(&ops)?;
    }
}

#[test]
fn hash_kv_is_stable_for_a_past_revision_and_tells_histories_apart() {
    let mut a = MvccStore::default();
    let mut b = MvccStore::default();
    for store in [&mut a, &mut b] {
        store.put(&put("x", "1")).unwrap();
        store.put(&put("y", "2")).unwrap();
        store
            .delete_range(&DeleteRangeRequest {
                key: kv(b"x"),
                ..Default::default()
            })
            .unwrap();
    }
    let at_4 = a.hash_kv(4).unwrap();
    assert_eq!(at_4, b.hash_kv(0).unwrap(), "two replicas of one history differ");
    a.put(&put("z", "3")).unwrap();
    assert_eq!(
        a.hash_kv(4).unwrap(),
        at_4,
        "a later write changed the hash of revision 4"
    );
    assert_ne!(
        a.hash_kv(0).unwrap(),
        at_4,
        "the new revision hashes like the old one"
    );

    // Same keys and values, another history (x never deleted): another hash.
    let mut c = MvccStore::default();
    c.put(&put("x", "1")).unwrap();
    c.put(&put("y", "2")).unwrap();
    c.put(&put("y", "2")).unwrap();
    assert_ne!(c.hash_kv(4).unwrap(), at_4);
    assert_ne!(a.hash(), b.hash());
    b.put(&put("z", "3")).unwrap();
    assert_eq!(a.hash(), b.hash());
}

#[test]
fn hash_kv_refuses_future_and_compacted_revisions() {
    let mut store = MvccStore::default();
    for i in 0..5 {
        store.put(&put("k", &i.to_string())).unwrap();
    }
    assert!(matches!(store.hash_kv(7), Err(MvccError::FutureRevision { .. })));
    store.compact(4).unwrap();
    assert!(matches!(store.hash_kv(3), Err(MvccError::Compacted { .. })));
    assert_eq!(store.hash_kv(4).unwrap().1, 4, "the compact revision comes back");
}

/// Writes straight into a key space in memory (what an entry's transaction does, committed at once).
struct Immediate(trestle_raft::MemoryKeySpace);

impl trestle_raft::KeyRead for Immediate {
    fn get(&self, key: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        self.0.get(key)
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> std::io::Result<Vec<trestle_raft::Record>> {
        self.0.scan(start, end, limit)
    }
}

impl KvWrite for Immediate {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let mut writes = trestle_raft::Writes::new();
        writes.put(key, value);
        trestle_raft::KeySpace::write(&self.0, &writes).unwrap();
    }
    fn delete(&mut self, key: Vec<u8>) {
        let mut writes = trestle_raft::Writes::new();
        writes.delete(key);
        trestle_raft::KeySpace::write(&self.0, &writes).unwrap();
    }
}

fn records(space: &trestle_raft::MemoryKeySpace, tag: u8) -> usize {
    use trestle_raft::KeyRead;
    space.scan(&[tag], Some(&[tag + 1]), usize::MAX).unwrap().len()
}

#[test]
fn compaction_removes_history_in_bounded_steps_and_a_reopen_midway_agrees() {
    let space = trestle_raft::MemoryKeySpace::new();
    let mut disk = Immediate(space.clone());
    let mut index = MvccIndex::new(DEFAULT_MAX_TXN_OPS);
    for i in 0..1000 {
        index
            .put(&mut disk, &put(&format!("k{}", i % 10), &i.to_string()))
            .unwrap();
    }
    index
        .delete_range(
            &mut disk,
            &DeleteRangeRequest {
                key: kv(b"k3"),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(records(&space, b'r'), 1001);
    assert_eq!(records(&space, b'k'), 1001);
    index.compact(&mut disk, 900).unwrap();
    assert_eq!(
        index.retained_versions(),
        10 + 102,
        "each key's version at 900, and everything after"
    );
    // Reads see the compaction at once; the disk catches up a bounded step at a time.
    assert!(
        index.compact_step(&mut disk, 100).unwrap(),
        "more than one step of history to remove"
    );
    assert!(records(&space, b'r') > index.retained_versions());
    // A restart now rebuilds the same index from the disk: the versions still there are forgotten again.
    assert_eq!(MvccIndex::load(&space, DEFAULT_MAX_TXN_OPS).unwrap(), index);
    let mut steps = 1;
    loop {
        steps += 1;
        if !index.compact_step(&mut disk, 100).unwrap() {
            break;
        }
    }
    assert_eq!(steps, 9, "899 records up to revision 900, 100 a step");
    assert!(!index.compacting());
    assert_eq!(records(&space, b'r'), index.retained_versions());
    assert_eq!(records(&space, b'k'), index.retained_versions());
    let reopened = MvccIndex::load(&space, DEFAULT_MAX_TXN_OPS).unwrap();
    assert_eq!(reopened, index);
    assert_eq!(reopened.hash_kv(&space, 0), index.hash_kv(&space, 0));
    // Watches may still start at the compact revision.
    assert_eq!(index.events_since(&space, 900).unwrap().len(), 103);
}

#[test]
fn events_carry_the_previous_value_read_from_the_history() {
    let mut s = MvccStore::default();
    s.put(&put("a", "1")).unwrap();
    s.put(&put("a", "2")).unwrap();
    s.delete_range(&DeleteRangeRequest {
        key: kv(b"a"),
        ..Default::default()
    })
    .unwrap();
    let events = s.events_since(1).unwrap();
    let shape: Vec<_> = events
        .iter()
        .map(|(rev, e)| (*rev, e.kind, e.prev_kv.as_ref().map(|p| p.value.clone())))
        .collect();
    assert_eq!(
        shape,
        vec![
            (2, EventKind::Put, None),
            (3, EventKind::Put, Some(b"1".to_vec())),
            (4, EventKind::Delete, Some(b"2".to_vec())),
        ]
    );
    assert_eq!(s.events_at(4)[0].kv.mod_revision, 4);
}
