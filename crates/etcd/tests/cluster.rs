//! Real 3-node clusters on loopback, driven through the `etcd-client` crate as any etcd user would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use common::{TestCluster, wait_for};
use etcd_client::{Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use trestle_etcd::EtcdNode;
use trestle_raft::ClusterState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_linearizably_from_every_node() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut via_follower = cluster.client(follower).await;
    let put = via_follower
        .put("k", "v1", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(put.prev_key().is_none());
    let rev = put.header().unwrap().revision();
    assert_eq!(rev, 2);
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        let got = client.get("k", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v1", "node {i} serves the write");
        assert_eq!(got.kvs()[0].mod_revision(), rev);
        assert!(got.header().unwrap().revision() >= rev);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_range_delete_and_errors_match_etcd() {
    let cluster = TestCluster::start(3).await;
    let mut client = cluster.any_client().await;
    for i in 0..5 {
        client.put(format!("/p/{i}"), format!("{i}"), None).await.unwrap();
    }
    let all = client
        .get("/p/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!((all.kvs().len(), all.count(), all.more()), (2, 5, true));

    let txn = Txn::new()
        .when([Compare::value("/p/0", CompareOp::Equal, "0")])
        .and_then([TxnOp::put("/p/0", "changed", None), TxnOp::get("/p/0", None)])
        .or_else([TxnOp::delete("/p/", None)]);
    let resp = client.txn(txn).await.unwrap();
    assert!(resp.succeeded());

    let deleted = client
        .delete("/p/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 5);

    // Bad input: etcd's codes and messages, and nothing changes.
    let before = client.get("x", None).await.unwrap().header().unwrap().revision();
    let err = client.put("", "v", None).await.unwrap_err().to_string();
    assert!(err.contains("key is not provided"), "{err}");
    let big = vec![b'x'; 2 * 1024 * 1024];
    let err = client.put("big", big, None).await.unwrap_err().to_string();
    assert!(
        err.contains("request is too large") || err.contains("message length too large"),
        "{err}"
    );
    let err = client
        .put("k", "v", Some(PutOptions::new().with_lease(12345)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("requested lease not found"), "{err}");
    let err = client
        .get("x", Some(GetOptions::new().with_revision(before + 100)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("future revision"), "{err}");
    let after = client.get("x", None).await.unwrap().header().unwrap().revision();
    assert_eq!(before, after, "refused requests change nothing");

    client.compact(after, None).await.unwrap();
    let err = client
        .get("x", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("compacted"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_after_the_leader_stops_and_nothing_acknowledged_is_lost() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client((leader + 1) % 3).await;
    for i in 0..20 {
        client.put(format!("before/{i}"), "x", None).await.unwrap();
    }
    let stopped = std::time::Instant::now();
    cluster.stop(leader).await;
    // The first acknowledged write after the leader is gone.
    wait_for("a write after the leader stopped", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { client.put("after", "y", None).await.ok() }
    })
    .await;
    let failover = stopped.elapsed();
    eprintln!("leader stopped -> first acknowledged write: {failover:?}");
    assert!(
        failover < Duration::from_secs(2),
        "writes resumed only after {failover:?}"
    );
    let got = client
        .get("before/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!(got.count(), 20);
    // The old leader comes back as a follower and catches up.
    cluster.restart(leader).await;
    let mut old = cluster.client(leader).await;
    let got = old.get("after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"y");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3).await;
    let mut client = cluster.any_client().await;
    for i in 0..50 {
        client
            .put(format!("key/{i:03}"), format!("{i}"), None)
            .await
            .unwrap();
    }
    let revision = client
        .get("key/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    for i in 0..3 {
        cluster.stop(i).await;
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }
    cluster.wait_for_leader().await;
    let mut client = cluster.any_client().await;
    let got = client
        .get("key/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 50);
    assert!(got.header().unwrap().revision() >= revision);
    cluster.shutdown().await;
}

/// openraft gives every AppendEntries one request timeout, whatever it carries.
/// A follower that missed many large entries must still catch up from the log (the default keeps 1 000 entries
/// after a snapshot, so no snapshot is involved here), not retry the same oversized batch forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_large_values_catches_up_from_the_log() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let laggard = (leader + 1) % 3;
    cluster.stop(laggard).await;
    let mut client = cluster.client(leader).await;
    let value = vec![b'x'; 1024 * 1024];
    for i in 0..40 {
        client
            .put(format!("big/{i:02}"), value.clone(), None)
            .await
            .unwrap();
    }
    // Every put was applied by whichever member led when it committed: the furthest of the two running members.
    let third = (leader + 2) % 3;
    let target = applied_index(cluster.node(leader)).max(applied_index(cluster.node(third)));
    cluster.restart(laggard).await;
    let node = cluster.node(laggard);
    wait_for(
        "the follower to apply every large entry",
        Duration::from_secs(30),
        || async { (applied_index(node) >= target).then_some(()) },
    )
    .await;
    assert!(
        node.store().raft().metrics().borrow_watched().snapshot.is_none(),
        "caught up from the log, not from a snapshot"
    );
    let count = node.store().read(|app| {
        app.store()
            .range(&trestle_etcd::RangeRequest {
                key: b"big/".to_vec(),
                range_end: b"big0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .map(|r| r.count)
    });
    assert_eq!(count.unwrap(), 40);
    cluster.shutdown().await;
}

/// The id of the member at peer URL `url`, from the member list.
async fn member_id_at(client: &mut etcd_client::Client, url: &str) -> u64 {
    client
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .find(|m| m.peer_urls() == [url])
        .map(|m| m.id())
        .unwrap_or_else(|| panic!("no member at {url}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_is_refused_as_a_founder_and_replaced_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start_tuned(3, |c| {
        c.node.raft.snapshot_every = 50;
        c.node.raft.keep_after_snapshot = 10;
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let victim = (leader + 1) % 3;
    let mut client = cluster.client(leader).await;
    for i in 0..200 {
        client
            .put(format!("s/{i:03}"), vec![b'v'; 100], None)
            .await
            .unwrap();
    }
    cluster.stop(victim).await;
    std::fs::remove_dir_all(&cluster.members[victim].dir).unwrap();
    // Started on an empty directory, as the founder it was or as a joining member, it is refused: the cluster
    // lists it as a member that has run, and with an empty log it could vote a member missing acknowledged
    // writes into leadership.
    for state in [ClusterState::New, ClusterState::Existing] {
        let refused = EtcdNode::start(cluster.config(victim, state)).await;
        let message = match refused {
            Ok(_) => panic!("a member whose data directory was wiped started ({state:?})"),
            Err(e) => e.to_string(),
        };
        assert!(
            message.contains("has already run in this cluster") && message.contains("member remove"),
            "{state:?}: {message}"
        );
        std::fs::remove_dir_all(&cluster.members[victim].dir).unwrap();
    }
    // Replaced as an operator does: removed, added back (a new id), started to join.
    let url = cluster.members[victim].peer_url();
    let old = member_id_at(&mut client, &url).await;
    client.member_remove(old).await.unwrap();
    client.member_add([url], None).await.unwrap();
    let node = cluster.start_node(victim, ClusterState::Existing).await;
    cluster.nodes[victim] = Some(node);
    let node = cluster.node(victim);
    wait_for(
        "the wiped follower to install a snapshot",
        Duration::from_secs(10),
        || async {
            node.store()
                .raft()
                .metrics()
                .borrow_watched()
                .snapshot
                .map(|_| ())
        },
    )
    .await;
    let mut local = cluster.client(victim).await;
    let got = local
        .get(
            "s/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_serializable(),
            ),
        )
        .await;
    let count = wait_for(
        "the wiped follower to hold every key",
        Duration::from_secs(10),
        || {
            let mut local = local.clone();
            async move {
                let c = local
                    .get(
                        "s/",
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_count_only()
                                .with_serializable(),
                        ),
                    )
                    .await
                    .ok()?
                    .count();
                (c == 200).then_some(c)
            }
        },
    )
    .await;
    assert_eq!(count, 200);
    drop(got);
    // The installed key space is the leader's: HashKV agrees at a revision both reached.
    let revision = cluster.node(leader).store().read(|app| app.store().revision());
    let hashes: Vec<_> = [leader, victim]
        .iter()
        .map(|i| cluster.node(*i).store().read(|app| app.store().hash_kv(revision)))
        .collect();
    assert_eq!(hashes[0], hashes[1]);
    assert!(hashes[0].is_ok());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_history_and_live_events_in_order_across_a_leader_change() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let watcher_node = (leader + 1) % 3;
    let mut client = cluster.client(watcher_node).await;
    let first = client
        .put("w/0", "0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.put("w/1", "1", None).await.unwrap();
    let mut stream = client
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(first)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut writer = cluster.client(watcher_node).await;
    writer.put("w/0", "again", None).await.unwrap();
    cluster.stop(leader).await;
    wait_for("a write after the leader change", Duration::from_secs(5), || {
        let mut writer = writer.clone();
        async move { writer.put("w/2", "2", None).await.ok() }
    })
    .await;
    writer.delete("w/1", None).await.unwrap();
    while seen.len() < 5 {
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for event in resp.events() {
            let kv = event.kv().unwrap();
            seen.push((
                event.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
            ));
        }
    }
    let revisions: Vec<i64> = seen.iter().map(|(_, _, r)| *r).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    assert_eq!(revisions[0], first);
    assert_eq!(seen[4].0, EventType::Delete);
    assert_eq!(seen[4].1, "w/1");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_on_the_leader_clock_and_keep_alive_holds_them() {
    let cluster = TestCluster::start(3).await;
    let mut client = cluster.any_client().await;
    let kept = client.lease_grant(2, None).await.unwrap().id();
    let dropped = client.lease_grant(2, None).await.unwrap().id();
    client
        .put("kept", "x", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    client
        .put("dropped", "x", Some(PutOptions::new().with_lease(dropped)))
        .await
        .unwrap();
    let ttl = client
        .lease_time_to_live(kept, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 2);
    assert_eq!(ttl.keys(), [b"kept".to_vec()]);
    let (mut keeper, mut responses) = client.lease_keep_alive(kept).await.unwrap();
    let started = std::time::Instant::now();
    // Keep one lease alive while the other, left alone, must expire on the leader's clock.
    let deadline = started + Duration::from_secs(8);
    loop {
        keeper.keep_alive().await.unwrap();
        let renewed = responses.message().await.unwrap().unwrap();
        assert_eq!(renewed.ttl(), 2, "the kept lease is renewed");
        if client.get("dropped", None).await.unwrap().kvs().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unrenewed lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "expired too early: {:?}",
        started.elapsed()
    );
    assert_eq!(client.get("kept", None).await.unwrap().kvs().len(), 1);
    let gone = client.lease_time_to_live(dropped, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
    client.lease_revoke(kept).await.unwrap();
    assert!(client.get("kept", None).await.unwrap().kvs().is_empty());
    let err = client.lease_revoke(kept).await.unwrap_err().to_string();
    assert!(err.contains("requested lease not found"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_promoted_and_removed() {
    let mut cluster = TestCluster::start(3).await;
    // A fourth member: its address is allocated now; it joins an existing cluster.
    cluster.members.push(common::Member {
        name: "n3".into(),
        client: common::free_port(),
        peer: common::free_port(),
        dir: cluster.members[0].dir.with_file_name("n3"),
    });
    let mut client = cluster.any_client().await;
    let added = client
        .member_add(
            [cluster.members[3].peer_url()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let new_id = added.member().unwrap().id();
    let node = cluster.start_node(3, ClusterState::Existing).await;
    cluster.nodes.push(Some(node));
    client.put("joined", "yes", None).await.unwrap();
    wait_for("the learner to catch up", Duration::from_secs(10), || async {
        let mut c = cluster.client(3).await;
        let got = c
            .get("joined", Some(GetOptions::new().with_serializable()))
            .await
            .ok()?;
        (!got.kvs().is_empty()).then_some(())
    })
    .await;
    client.member_promote(new_id).await.unwrap();
    let list = client.member_list().await.unwrap();
    assert_eq!(list.members().len(), 4);
    assert!(list.members().iter().all(|m| !m.is_learner()));
    let named = wait_for(
        "the new member to publish its name",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                let list = client.member_list().await.ok()?;
                list.members()
                    .iter()
                    .find(|m| m.id() == new_id && m.name() == "n3")
                    .map(|m| m.client_urls().to_vec())
            }
        },
    )
    .await;
    assert_eq!(named, vec![cluster.members[3].client_url()]);
    client.member_remove(new_id).await.unwrap();
    assert_eq!(client.member_list().await.unwrap().members().len(), 3);
    let err = client.member_remove(new_id).await.unwrap_err().to_string();
    assert!(err.contains("member not found"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_founder_publishes_its_client_url() {
    let cluster = TestCluster::start(3).await;
    let mut client = cluster.any_client().await;
    let mut expected: Vec<(String, Vec<String>)> = cluster
        .members
        .iter()
        .map(|m| (m.name.clone(), vec![m.client_url()]))
        .collect();
    expected.sort();
    let published = wait_for(
        "every founder's client URL in the member list",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            let expected = expected.clone();
            async move {
                let list = client.member_list().await.ok()?;
                let mut got: Vec<(String, Vec<String>)> = list
                    .members()
                    .iter()
                    .map(|m| (m.name().to_string(), m.client_urls().to_vec()))
                    .collect();
                got.sort();
                (got == expected).then_some(got)
            }
        },
    )
    .await;
    assert_eq!(published.len(), 3);
    // Every node's own membership comes to agree, not only the leader's (a follower learns the last change
    // with the next replication, so it may lag the linearizable list for a moment).
    for (i, node) in cluster.running() {
        let urls = || {
            let membership = node
                .store()
                .raft()
                .metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .clone();
            membership
                .nodes()
                .map(|(_, n)| n.client_urls.clone())
                .collect::<Vec<_>>()
        };
        wait_for(
            &format!("node {i}'s membership to hold every client URL"),
            Duration::from_secs(5),
            || {
                let urls = urls();
                async move { urls.iter().all(|u| u.len() == 1).then_some(()) }
            },
        )
        .await;
    }
    let _ = &mut client;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_leader_term_and_index() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    client.put("a", "b", None).await.unwrap();
    let status = client.status().await.unwrap();
    assert_eq!(status.leader(), cluster.node(leader).id());
    assert!(status.raft_term() >= 1);
    assert!(status.raft_index() >= 2);
    cluster.shutdown().await;
}

/// The index of the last entry `node` applied to its store.
fn applied_index(node: &trestle_etcd::EtcdNode) -> u64 {
    node.store()
        .raft()
        .metrics()
        .borrow_watched()
        .last_applied
        .map_or(0, |id| id.index)
}

/// etcd's `MoveLeader`: served by the leader only, to a voting member only, and the store's leadership moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_the_store_to_the_member_named() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let to = (leader + 1) % 3;
    let target = cluster.node(to).id();
    let refused =
        |result: Result<etcd_client::MoveLeaderResponse, etcd_client::Error>, message: &str| match result {
            Err(etcd_client::Error::GRpcStatus(status)) => {
                assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
                assert_eq!(status.message(), message);
            }
            other => panic!("expected {message:?}, got {other:?}"),
        };
    refused(
        cluster.client(to).await.move_leader(target).await,
        "etcdserver: not leader",
    );
    let mut client = cluster.client(leader).await;
    refused(
        client.move_leader(12345).await,
        "etcdserver: bad leader transferee",
    );
    client.move_leader(target).await.unwrap();
    assert_eq!(cluster.wait_for_leader().await, to);
    let mut any = cluster.client(leader).await;
    any.put("after-move", "1", None).await.unwrap();
    cluster.shutdown().await;
}

/// etcd's `HashKV`: every member hashes its own key space the same at a revision all of them applied, and a
/// revision past what a member applied is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_hashes_the_key_space_alike() {
    let cluster = TestCluster::start(3).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    for i in 0..50 {
        client
            .put(format!("h{}", i % 7), format!("v{i}"), None)
            .await
            .unwrap();
    }
    client.delete("h3", None).await.unwrap();
    let revision = client.get("h0", None).await.unwrap().header().unwrap().revision();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut member = cluster.client(i).await;
        let hash = wait_for("the member to apply the writes", Duration::from_secs(10), || {
            let mut member = member.clone();
            async move { member.hash_kv(revision).await.ok().map(|r| r.hash()) }
        })
        .await;
        hashes.push(hash);
        let future = member.hash_kv(revision + 1000).await.unwrap_err().to_string();
        assert!(future.contains("future revision"), "{future}");
        let _ = &mut member;
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members differ: {hashes:x?}"
    );
    // A later write leaves the hash at `revision` alone and changes the current one.
    client.put("h0", "changed", None).await.unwrap();
    assert_eq!(client.hash_kv(revision).await.unwrap().hash(), hashes[0]);
    // HashKV is answered from the member's own applied state: the member this client asks may apply the put a
    // moment after it was acknowledged.
    let before = hashes[0];
    wait_for(
        "the current hash to include the write",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                client
                    .hash_kv(0)
                    .await
                    .ok()
                    .map(|r| r.hash())
                    .filter(|h| *h != before)
            }
        },
    )
    .await;
    cluster.shutdown().await;
}

/// `--auto-compaction-retention` in revision and periodic mode: the leader compacts on its own, keeping the
/// history the setting asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_on_its_own_when_told_to() {
    let cluster = TestCluster::start_tuned(3, |config| {
        config.store.auto_compaction = trestle_etcd::AutoCompaction::Periodic(Duration::from_millis(500));
    })
    .await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    let first = client
        .put("auto", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // Keep writing: a revision at least 500 ms old exists once compaction has something to do.
    let compacted = wait_for("an automatic compaction", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            client.put("auto", "again", None).await.ok()?;
            let old = client
                .get("auto", Some(GetOptions::new().with_revision(first)))
                .await;
            match old {
                Err(e) if e.to_string().contains("compacted") => Some(()),
                _ => None,
            }
        }
    })
    .await;
    let () = compacted;
    // The newest writes stay readable at their revisions: a window is kept, not everything dropped.
    let now = client
        .put("auto", "last", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .get("auto", Some(GetOptions::new().with_revision(now - 1)))
        .await
        .expect("recent history is kept");
    cluster.shutdown().await;
}

/// `--quota-backend-bytes`: past the quota the NOSPACE alarm is raised and writes that need space are refused
/// with etcd's error on every member; deletes, compaction, defragment and disarming let writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_quota_writes_stop_until_space_is_made_and_the_alarm_disarmed() {
    let cluster = TestCluster::start_tuned(3, |config| config.store.quota_bytes = 8 * 1024).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    let value = "x".repeat(512);
    let mut refused = None;
    for i in 0..100 {
        match client.put(format!("q{i:03}"), value.clone(), None).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the quota stops writes");
    match &refused {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert_eq!(status.message(), "etcdserver: mvcc: database space exceeded");
        }
        other => panic!("unexpected error {other:?}"),
    }
    let alarms = client
        .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(alarms.alarms().len(), 1, "{alarms:?}");
    assert_eq!(alarms.alarms()[0].alarm(), etcd_client::AlarmType::Nospace);
    // Every member refuses, even a small write, while the alarm is up; reads and deletes go on.
    for i in 0..3 {
        let mut member = cluster.client(i).await;
        let err = member.put("small", "1", None).await.unwrap_err().to_string();
        assert!(err.contains("database space exceeded"), "{err}");
        member.get("q000", None).await.unwrap();
    }
    let deleted = client
        .delete("q", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    client
        .compact(deleted.header().unwrap().revision(), None)
        .await
        .unwrap();
    client.defragment().await.unwrap();
    let mut options = etcd_client::AlarmOptions::new();
    options.with_member(alarms.alarms()[0].member_id());
    let disarmed = client
        .alarm(
            etcd_client::AlarmAction::Deactivate,
            etcd_client::AlarmType::Nospace,
            Some(options),
        )
        .await
        .unwrap();
    assert_eq!(disarmed.alarms().len(), 1);
    client.put("after", "room", None).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_update_moves_a_member_to_a_new_peer_url_and_it_stays_the_same_member() {
    let mut cluster = TestCluster::start(3).await;
    // A follower moves (a leader moved while it runs is unreachable at its new URL until it restarts there).
    // Requests go through the leader: the moved member hears nothing more until it restarts at its new URL.
    let leader = cluster.wait_for_leader().await;
    let moved = (leader + 1) % 3;
    let mut client = cluster.client(leader).await;
    client.put("before", "1", None).await.unwrap();
    let list = client.member_list().await.unwrap();
    let id = list
        .members()
        .iter()
        .find(|m| m.peer_urls() == [cluster.members[moved].peer_url()])
        .map(|m| m.id())
        .expect("the follower is a member");

    // Refused: an unknown member, and another member's URL. Nothing changes.
    let err = client
        .member_update(12345, [format!("http://127.0.0.1:{}", common::free_port())])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("member not found"), "{err}");
    let err = client
        .member_update(id, [cluster.members[(moved + 1) % 3].peer_url()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("peerURL exists"), "{err}");

    let new_peer = common::free_port();
    let new_url = format!("http://127.0.0.1:{new_peer}");
    let updated = client.member_update(id, [new_url.clone()]).await.unwrap();
    let member = updated
        .members()
        .iter()
        .find(|m| m.id() == id)
        .expect("still a member");
    assert_eq!(member.peer_urls(), std::slice::from_ref(&new_url));

    // The member restarts on its data directory, advertising the new URL: the same member (its id kept by its
    // data directory), reached there by the others.
    cluster.stop(moved).await;
    cluster.members[moved].peer = new_peer;
    cluster.restart(moved).await;
    assert_eq!(cluster.node(moved).id(), id, "the moved member changed its id");
    client.put("after", "2", None).await.unwrap();
    wait_for(
        "the moved member to catch up",
        Duration::from_secs(10),
        || async {
            let mut c = cluster.client(moved).await;
            let got = c
                .get("after", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (!got.kvs().is_empty()).then_some(())
        },
    )
    .await;
    let mut through_moved = cluster.client(moved).await;
    through_moved.put("via-moved", "3", None).await.unwrap();
    let list = client.member_list().await.unwrap();
    assert_eq!(list.members().len(), 3);
    assert!(
        list.members()
            .iter()
            .any(|m| m.id() == id && m.peer_urls() == [new_url.clone()])
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_comes_back_at_its_url_with_an_empty_data_directory() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    // Through the leader alone: a client balancing over every endpoint would also pick the stopped member's.
    let mut client = cluster.client(leader).await;
    let gone = (leader + 1) % 3;
    let url = cluster.members[gone].peer_url();
    let id = member_id_at(&mut client, &url).await;
    // History after the member published its name: the returning member catches up on it in several
    // AppendEntries (at most 64 entries each), so it sees the membership in which it had its name before the
    // latest one, in which it has none.
    for i in 0..300 {
        client.put(format!("history/{i}"), "x", None).await.unwrap();
    }
    client.member_remove(id).await.unwrap();
    cluster.stop(gone).await;
    std::fs::remove_dir_all(&cluster.members[gone].dir).unwrap();
    client.put("while-away", "1", None).await.unwrap();

    // Back as a learner at the same URL, empty: a new member with a new id (the old one's log is gone). It
    // catches up, publishes itself, is promoted.
    let added = client
        .member_add(
            [url.clone()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let old_id = id;
    let id = added.member().unwrap().id();
    assert_ne!(id, old_id, "a member added back got its old id");
    let node = cluster.start_node(gone, ClusterState::Existing).await;
    assert_eq!(
        node.id(),
        id,
        "the returning member joined under another id than MemberAdd gave it"
    );
    cluster.nodes[gone] = Some(node);
    wait_for(
        "the returning learner to catch up",
        Duration::from_secs(10),
        || async {
            let mut c = cluster.client(gone).await;
            let got = c
                .get("while-away", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (!got.kvs().is_empty()).then_some(())
        },
    )
    .await;
    let name = cluster.members[gone].name.clone();
    wait_for(
        "the returning member to publish its name",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            let name = name.clone();
            async move {
                let list = client.member_list().await.ok()?;
                list.members()
                    .iter()
                    .any(|m| m.id() == id && m.name() == name)
                    .then_some(())
            }
        },
    )
    .await;
    client.member_promote(id).await.unwrap();
    let list = client.member_list().await.unwrap();
    assert_eq!(list.members().len(), 3);
    assert!(list.members().iter().all(|m| !m.is_learner()));
    cluster.shutdown().await;
}
