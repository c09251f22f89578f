//! Live membership against Trestle's own etcd-v3 store: a single in-process `trestle-etcd` node on loopback.
//! The same checks as against etcd (`etcd_membership.rs`): the conformance suite, and a node whose lease is no
//! longer renewed disappearing by expiry.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use etcd_client::Client;
use support::{PREFIX, PrefixDriver, free_port};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};
use trestle_etcd::{EtcdNode as TrestleNode, EtcdNodeConfig};
use trestle_shard_router::conformance::check_membership;
use trestle_shard_router::{
    EtcdMembership, EtcdMembershipConfig, Membership, MembershipEvent, Node, NodeId, Registration,
};

const DEADLINE: Duration = Duration::from_secs(20);

/// A one-node Trestle cluster with a 1 s minimum lease TTL (the default is 2 s).
async fn start_trestle() -> (TrestleNode, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let mut config = EtcdNodeConfig::from_node(trestle_etcd::testing::loopback_node_config(
        "n0",
        dir.path(),
        client,
        peer,
        Vec::new(),
    ));
    config.store.min_lease_ttl = 1;
    let node = TrestleNode::start(config).await.expect("trestle starts");
    let endpoint = format!("http://127.0.0.1:{client}");
    let deadline = Instant::now() + DEADLINE;
    while node.store().current_leader().is_none() {
        assert!(Instant::now() < deadline, "the node never became leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (node, dir, endpoint)
}

async fn next_event(events: &mut broadcast::Receiver<MembershipEvent>) -> MembershipEvent {
    timeout(DEADLINE, events.recv())
        .await
        .expect("an event in time")
        .expect("event channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trestle_membership_conforms() {
    let (node, _dir, endpoint) = start_trestle().await;
    let members = EtcdMembership::connect([&endpoint], PREFIX, EtcdMembershipConfig::default())
        .await
        .expect("watch");
    let mut driver = PrefixDriver(Client::connect([&endpoint], None).await.unwrap());
    check_membership(&members, &mut driver, DEADLINE)
        .await
        .expect("conforms");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_expires_on_trestle_leaves() {
    let (node, _dir, endpoint) = start_trestle().await;
    let client = Client::connect([&endpoint], None).await.unwrap();
    let a = Registration::register(&client, PREFIX, &Node::new("a"), Duration::from_secs(30))
        .await
        .expect("a");
    let members = EtcdMembership::connect([&endpoint], PREFIX, EtcdMembershipConfig::default())
        .await
        .expect("watch");
    let mut events = members.subscribe();
    let c = Registration::register(&client, PREFIX, &Node::new("c"), Duration::from_secs(1))
        .await
        .expect("c");
    assert_eq!(
        next_event(&mut events).await,
        MembershipEvent::Joined(Node::new("c"))
    );
    let abandoned = Instant::now();
    c.abandon();
    assert_eq!(
        next_event(&mut events).await,
        MembershipEvent::Left(NodeId::from("c"))
    );
    assert!(
        abandoned.elapsed() >= Duration::from_millis(500),
        "removed by expiry, not at once"
    );
    let ids: Vec<String> = members
        .current()
        .map(|m| m.nodes().iter().map(|n| n.id().to_string()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["a"]);
    drop(a);
    node.shutdown().await;
}
