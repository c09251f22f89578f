//! Nodes register in a real etcd (`/usr/bin/etcd`, Debian's etcd-server; the Trestle store serves the same API)
//! and a client is built from what it discovers. Fails, not skips, without etcd.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use support::{eventually, free_port};
use trestle_cache::{
    Client, ClientConfig, DiscoveryError, NodeConfig, RunningNode, StoreConfig, discover_nodes, register_node,
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
