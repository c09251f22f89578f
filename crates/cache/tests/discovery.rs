//! Nodes register in a real etcd (`/usr/bin/etcd`, Debian's etcd-server; the Trestle store serves the same API)
//! and a client is built from what it discovers, or follows the registrations as nodes come and go. Fails, not
//! skips, without etcd.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use support::{eventually, free_port};
use trestle_cache::{
    Ack, Client, ClientConfig, DiscoveryError, NodeConfig, RunningNode, StoreConfig, WarmUpState,
    discover_client, discover_nodes, register_node,
};

const ETCD: &str = "/usr/bin/etcd";

struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_etcd() -> (Etcd, String) {
    assert!(
        std::path::Path::new(ETCD).exists(),
        "{ETCD} is missing: install Debian's etcd-server"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new(ETCD)
        .args(["--name", "cache-test", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("cache-test={peer}")])
        .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    let etcd = Etcd { child, _dir: dir };
    let endpoints = vec![endpoint.clone()];
    let ready = eventually(Duration::from_secs(20), async || {
        discover_nodes(&endpoints, "/probe/").await.is_ok()
    })
    .await;
    assert!(ready, "etcd did not serve reads within 20 s");
    (etcd, endpoint)
}

async fn node() -> RunningNode {
    let config =
        NodeConfig::new("127.0.0.1:0".parse().expect("addr")).with_store(StoreConfig::with_memory(32 << 20));
    RunningNode::start(config).await.expect("node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_nodes_are_discovered_and_a_revoked_one_disappears() {
    let (_etcd, endpoint) = start_etcd().await;
    let endpoints = vec![endpoint];
    let prefix = "/trestle/cache/nodes/";
    let (east, west) = (node().await, node().await);
    let ttl = Duration::from_secs(10);
    let east_reg = register_node(&endpoints, prefix, east.memcached_addr(), "east", ttl)
        .await
        .expect("register");
    let _west_reg = register_node(&endpoints, prefix, west.memcached_addr(), "west", ttl)
        .await
        .expect("register");

    let specs = discover_nodes(&endpoints, prefix).await.expect("discover");
    assert_eq!(specs.len(), 2, "{specs:?}");
    let zones: Vec<&str> = specs.iter().map(|s| s.zone.as_str()).collect();
    assert!(zones.contains(&"east") && zones.contains(&"west"), "{specs:?}");
    assert!(specs.iter().any(|s| s.addr == east.memcached_addr()));

    let client = Client::new(ClientConfig::new(specs, "east")).expect("client");
    client
        .set(b"k", Bytes::from_static(b"v"), Duration::ZERO)
        .await
        .expect("set");
    assert_eq!(
        client.get(b"k").await.expect("get"),
        Some(Bytes::from_static(b"v"))
    );

    east_reg.revoke().await.expect("revoke");
    let specs = discover_nodes(&endpoints, prefix).await.expect("discover");
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].addr, west.memcached_addr());
    east.shutdown().await;
    west.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_is_not_a_node_is_reported() {
    let (_etcd, endpoint) = start_etcd().await;
    let endpoints = vec![endpoint.clone()];
    let mut raw = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect");
    raw.put("/cache/not-an-address", "weight=1 zone=a", None)
        .await
        .expect("put");
    let err = discover_nodes(&endpoints, "/cache/")
        .await
        .expect_err("bad record");
    assert!(
        matches!(&err, DiscoveryError::BadRecord { key, .. } if key == "/cache/not-an-address"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_follows_nodes_as_they_register_and_leave() {
    let (_etcd, endpoint) = start_etcd().await;
    let endpoints = vec![endpoint];
    let prefix = "/trestle/cache/nodes/";
    let ttl = Duration::from_secs(10);
    // The client starts before any node has registered.
    let config = ClientConfig::new(Vec::new(), "east").with_write_ack(Ack::All);
    let client = discover_client(&endpoints, prefix, config).await.expect("client");
    assert!(client.nodes().is_empty());
    assert!(matches!(
        client.get(b"k").await,
        Err(trestle_cache::ClientError::NoNodes)
    ));
    let (east1, west1, east2) = (node().await, node().await, node().await);
    let east1_reg = register_node(&endpoints, prefix, east1.memcached_addr(), "east", ttl)
        .await
        .expect("register");
    let _west1_reg = register_node(&endpoints, prefix, west1.memcached_addr(), "west", ttl)
        .await
        .expect("register");
    let both = eventually(Duration::from_secs(10), async || client.nodes().len() == 2).await;
    assert!(both, "{:?}", client.nodes());
    let keys: Vec<String> = (0..300).map(|i| format!("item:{i}")).collect();
    for k in &keys {
        client
            .set(k.as_bytes(), Bytes::from(k.clone()), Duration::ZERO)
            .await
            .expect("set");
    }
    // A second east node registers: the client routes to it and warms it from east1.
    let _east2_reg = register_node(&endpoints, prefix, east2.memcached_addr(), "east", ttl)
        .await
        .expect("register");
    let east2_id = east2.memcached_addr().to_string();
    let joined = eventually(Duration::from_secs(10), async || {
        client.nodes().iter().any(|n| n.id == east2_id)
            && client.warm_ups().iter().all(|w| w.state == WarmUpState::Done)
            && !client.warm_ups().is_empty()
    })
    .await;
    assert!(joined, "{:?} {:?}", client.nodes(), client.warm_ups());
    // (west1 may have been warmed too, as a zone new to the client, if it registered after east1.)
    let warm = client
        .warm_ups()
        .into_iter()
        .find(|w| w.node == east2_id)
        .expect("east2 was warmed");
    let moved = keys
        .iter()
        .filter(|k| client.node_for("east", k.as_bytes()).as_deref() == Some(east2_id.as_str()))
        .count();
    assert!(moved > 0);
    assert_eq!(warm.keys_copied + warm.keys_present, moved as u64, "{warm:?}");
    // east1 deregisters (as at shutdown): the client drops it; every key is still read in the east zone or,
    // for east1's old keys until they are warmed into east2 from west, in the west zone.
    east1_reg.revoke().await.expect("revoke");
    let east1_id = east1.memcached_addr().to_string();
    let left = eventually(Duration::from_secs(10), async || {
        !client.nodes().iter().any(|n| n.id == east1_id)
    })
    .await;
    assert!(left, "{:?}", client.nodes());
    for k in &keys {
        assert_eq!(
            client.get(k.as_bytes()).await.expect("get"),
            Some(Bytes::from(k.clone())),
            "{k}"
        );
    }
    for n in [east1, west1, east2] {
        n.shutdown().await;
    }
}
