//! Live membership against a real etcd 3.4 (`/usr/bin/etcd`, Debian's `etcd-server`), started by the test on
//! 127.0.0.1 with free ports and a temporary data directory, and killed when the test ends.
#![cfg(feature = "etcd")]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::Client;
use support::{PREFIX, PrefixDriver, free_port};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};
use trestle_shard_router::conformance::check_membership;
use trestle_shard_router::{
    EtcdMembership, EtcdMembershipConfig, Membership, MembershipEvent, Node, NodeId, Registration,
};

const ETCD: &str = "/usr/bin/etcd";
/// Generous: etcd on a busy 2-core machine. Only ever waited in full when something is broken.
const DEADLINE: Duration = Duration::from_secs(20);

/// An etcd process of our own.
struct Etcd {
    child: Child,
    endpoint: String,
    peer_url: String,
    dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, endpoint: &str, peer_url: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .expect("log file");
    Command::new(ETCD)
        .args(["--name", "router-test", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            endpoint,
            "--advertise-client-urls",
            endpoint,
        ])
        .args([
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
        ])
        .args(["--initial-cluster", &format!("router-test={peer_url}")])
        // Short election timeout: lets the minimum lease TTL be 1 s.
        .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("etcd starts")
}

impl Etcd {
    /// Starts etcd and waits until it serves reads.
    async fn start() -> Etcd {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let child = spawn(dir.path(), &endpoint, &peer_url);
        let etcd = Etcd {
            child,
            endpoint,
            peer_url,
            dir,
        };
        etcd.wait_ready().await;
        etcd
    }

    /// Kills etcd and starts it again on the same ports and data.
    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.dir.path(), &self.endpoint, &self.peer_url);
        self.wait_ready().await;
    }

    /// Polls until etcd serves a read, failing after the deadline.
    async fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(Ok(mut c)) =
                timeout(Duration::from_secs(1), Client::connect([&self.endpoint], None)).await
                && let Ok(Ok(_)) = timeout(Duration::from_secs(1), c.get("ready?", None)).await
            {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "etcd at {} not ready within {DEADLINE:?}",
                self.endpoint
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn client(&self) -> Client {
        Client::connect([&self.endpoint], None).await.expect("connect")
    }
}

/// The next event, within the deadline.
async fn next_event(events: &mut broadcast::Receiver<MembershipEvent>) -> MembershipEvent {
    timeout(DEADLINE, events.recv())
        .await
        .expect("an event before the deadline")
        .expect("event channel open")
}

fn ids(members: &EtcdMembership) -> Vec<String> {
    members
        .current()
        .map(|m| m.nodes().iter().map(|n| n.id().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_change_leave_and_expire() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;

    // A node registered before the watcher starts is in the first map.
    let a = Registration::register(
        &client,
        PREFIX,
        &Node::new("a").with_zone("z1"),
        Duration::from_secs(30),
    )
    .await
    .expect("register a");
    let members = EtcdMembership::connect([&etcd.endpoint], PREFIX, EtcdMembershipConfig::default())
        .await
        .expect("watch");
    assert_eq!(ids(&members), ["a"]);
    let mut events = members.subscribe();
    let mut maps = members.watch();

    // A join.
    let b_node = Node::new("b").with_weight(2).with_zone("z2");
    let b = Registration::register(&client, PREFIX, &b_node, Duration::from_secs(30))
        .await
        .expect("register b");
    assert_eq!(
        next_event(&mut events).await,
        MembershipEvent::Joined(b_node.clone())
    );
    assert_eq!(ids(&members), ["a", "b"]);
    // The map was swapped before the event was sent, and watchers were woken.
    assert!(maps.has_changed().unwrap_or(false));
    assert_eq!(
        maps.borrow_and_update().as_ref().map(|m| m.total_weight()),
        Some(3)
    );

    // A clean leave.
    b.revoke().await.expect("revoke b");
    assert_eq!(
        next_event(&mut events).await,
        MembershipEvent::Left(NodeId::from("b"))
    );
    assert_eq!(ids(&members), ["a"]);

    // A crash: node c stops renewing its 1 s lease; etcd expires it and the node disappears.
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
    assert_eq!(ids(&members), ["a"]);

    // Node a, renewing a 30 s lease, is still there; an invalid record is ignored, not fatal.
    let mut raw = client.clone();
    raw.put(format!("{PREFIX}junk"), "weight=0", None)
        .await
        .expect("put");
    raw.put(format!("{PREFIX}d"), "zone=z3", None).await.expect("put");
    assert_eq!(
        next_event(&mut events).await,
        MembershipEvent::Joined(Node::new("d").with_zone("z3"))
    );
    assert_eq!(ids(&members), ["a", "d"]);

    // A changed record is a change, not a leave and a join.
    raw.put(format!("{PREFIX}d"), "weight=3 zone=z4", None)
        .await
        .expect("put");
    let changed = Node::new("d").with_weight(3).with_zone("z4");
    assert_eq!(next_event(&mut events).await, MembershipEvent::Changed(changed));
    assert_eq!(members.current().map(|m| m.total_weight()), Some(4));
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_batch_lands_in_one_map() {
    let etcd = Etcd::start().await;
    let members = EtcdMembership::connect([&etcd.endpoint], PREFIX, EtcdMembershipConfig::default())
        .await
        .expect("watch");
    assert!(members.current().is_none(), "no nodes yet");
    let mut maps = members.watch();
    let mut events = members.subscribe();

    // Three keys written in one transaction arrive in one watch response and become one map.
    let mut client = etcd.client().await;
    let puts = ["x", "y", "z"].map(|id| etcd_client::TxnOp::put(format!("{PREFIX}{id}"), "", None));
    client
        .txn(etcd_client::Txn::new().and_then(puts))
        .await
        .expect("txn");
    timeout(DEADLINE, maps.changed())
        .await
        .expect("a change before the deadline")
        .expect("sender alive");
    let sizes: Option<usize> = maps.borrow_and_update().as_ref().map(|m| m.len());
    assert_eq!(
        sizes,
        Some(3),
        "the first map published after the transaction holds all three nodes"
    );
    // Events follow the swap: when the first join is announced, the map already holds all three. (A map per key
    // would usually show 1 here; the watch channel alone could hide that by coalescing versions.)
    assert!(matches!(
        next_event(&mut events).await,
        MembershipEvent::Joined(_)
    ));
    assert_eq!(members.current().map(|m| m.len()), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_recovers_after_etcd_restarts() {
    let mut etcd = Etcd::start().await;
    let config = EtcdMembershipConfig::default().with_retry_delay(Duration::from_millis(100));
    let members = EtcdMembership::connect([&etcd.endpoint], PREFIX, config)
        .await
        .expect("watch");
    let mut events = members.subscribe();
    let mut raw = etcd.client().await;
    raw.put(format!("{PREFIX}a"), "", None).await.expect("put a");
    assert_eq!(
        next_event(&mut events).await,
        MembershipEvent::Joined(Node::new("a"))
    );

    etcd.restart().await;
    // The old connection may fail once; retry the write until the deadline.
    let start = Instant::now();
    let mut raw = etcd.client().await;
    while raw.put(format!("{PREFIX}b"), "", None).await.is_err() {
        assert!(
            start.elapsed() < DEADLINE,
            "etcd did not take writes after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        next_event(&mut events).await,
        MembershipEvent::Joined(Node::new("b"))
    );
    assert_eq!(ids(&members), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_membership_conforms() {
    let etcd = Etcd::start().await;
    let members = EtcdMembership::connect([&etcd.endpoint], PREFIX, EtcdMembershipConfig::default())
        .await
        .expect("watch");
    let mut driver = PrefixDriver(etcd.client().await);
    check_membership(&members, &mut driver, DEADLINE)
        .await
        .expect("conforms");
}

#[test]
fn a_zero_retry_delay_is_rejected() {
    let config = EtcdMembershipConfig::default().with_retry_delay(Duration::ZERO);
    assert!(config.validate().is_err());
    assert!(EtcdMembershipConfig::default().validate().is_ok());
}
