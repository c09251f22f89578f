//! A data directory written by the release before the move to openraft 0.10 opens with this build and keeps
//! its data: the Raft log, the vote, the snapshot, every key, revision and lease, and the member serves writes
//! afterwards. The fixture (`fixtures/openraft-0.9-member.tar.gz`) was made by `fixtures/make-upgrade-fixture.sh`
//! with that release's `trestle`, which it killed with SIGKILL after the writes, so opening it also replays the
//! log written after the last snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_port, init_tracing, wait_for};
use etcd_client::{Client, GetOptions};
use trestle_etcd::{EtcdNode, EtcdNodeConfig};

const FIXTURE: &str = "tests/fixtures/openraft-0.9-member";
/// The peer URL the fixture's member advertised: its id derives from it.
const FIXTURE_PEER_URL: &str = "http://fixture.invalid:2380";

/// One key as the old build's client read it back.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    key: String,
    value: String,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

fn expected() -> (Vec<Expected>, i64) {
    let text = std::fs::read_to_string(format!("{FIXTURE}.expected")).expect("the fixture's expectations");
    let mut keys = Vec::new();
    let mut revision = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["revision", n] => revision = Some(n.parse().unwrap()),
            [key, value, create, modified, version, lease] => keys.push(Expected {
                key: key.to_string(),
                value: value.replace('_', " "),
                create_revision: create.parse().unwrap(),
                mod_revision: modified.parse().unwrap(),
                version: version.parse().unwrap(),
                lease: lease.parse().unwrap(),
            }),
            other => panic!("unexpected fixture line {other:?}"),
        }
    }
    (keys, revision.expect("the fixture records its revision"))
}

fn unpack(into: &Path) {
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(format!("{FIXTURE}.tar.gz"))
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar runs");
    assert!(status.success(), "unpacking the fixture failed: {status}");
}

/// Starts the fixture's member on the data directory under `root` and waits until it leads its one-member
/// cluster. Same member (its id comes from the advertised URL), listening on free ports.
async fn start_member(root: &Path, client_port: u16, peer_port: u16, what: &str) -> EtcdNode {
    let mut node_config = trestle_etcd::testing::loopback_node_config(
        "fixture",
        &root.join("data"),
        client_port,
        peer_port,
        vec![("fixture".into(), FIXTURE_PEER_URL.into())],
    );
    node_config.advertise_peer_url = FIXTURE_PEER_URL.into();
    let node = EtcdNode::start(EtcdNodeConfig::from_node(node_config))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    wait_for("the member to lead", Duration::from_secs(10), || async {
        node.store().current_leader().filter(|l| *l == node.id())
    })
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_openraft_0_9_release_opens_and_keeps_its_data() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    unpack(root.path());
    let (client_port, peer_port) = (free_port(), free_port());
    let node = start_member(
        root.path(),
        client_port,
        peer_port,
        "the old data directory opens",
    )
    .await;

    let mut client = Client::connect([format!("http://127.0.0.1:{client_port}")], None)
        .await
        .unwrap();
    let (keys, revision) = expected();
    let found = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(found.header().unwrap().revision(), revision, "the revision moved");
    let found: Vec<Expected> = found
        .kvs()
        .iter()
        .map(|kv| Expected {
            key: kv.key_str().unwrap().to_string(),
            value: kv.value_str().unwrap().to_string(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        })
        .collect();
    assert_eq!(found, keys, "the keys differ from what the old build served");
    // The lease survived with its key attached.
    let leased = keys
        .iter()
        .find(|k| k.key == "leased")
        .expect("the fixture has a leased key");
    let ttl = client.lease_time_to_live(leased.lease, None).await.unwrap();
    assert!(ttl.ttl() > 0, "the lease expired: {ttl:?}");

    // It takes writes, and they survive another restart (which now reads what this build wrote).
    let put = client.put("after-upgrade", "yes", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), revision + 1);
    node.shutdown().await;
    let node = start_member(root.path(), client_port, peer_port, "the member restarts").await;
    let mut client = Client::connect([format!("http://127.0.0.1:{client_port}")], None)
        .await
        .unwrap();
    let after = client.get("after-upgrade", None).await.unwrap();
    assert_eq!(after.kvs()[0].value_str().unwrap(), "yes");
    assert_eq!(after.header().unwrap().revision(), revision + 1);
    node.shutdown().await;
}
