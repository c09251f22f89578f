//! Helpers for tests that run real nodes on loopback (this crate's, and those of crates built on it), and the
//! conformance suites for [`GroupApp`](crate::GroupApp) implementations ([`check_group_app`]) and
//! [`SnapshotStore`](crate::SnapshotStore) implementations ([`check_snapshot_store`]).
//!
//! Enable the `testing` feature in dev-dependencies only.

mod conformance;
mod snapshot_store;

pub use crate::keyspace::conformance::check_key_space;
pub use conformance::check_group_app;
pub use snapshot_store::check_snapshot_store;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::node::{ClusterState, NodeConfig};

/// A free loopback port below the kernel's ephemeral range (32768 and up on Linux), so no outgoing connection
/// of a concurrently running test can take it between this check and the node's bind. Concurrent test
/// processes start from different points of the range.
pub fn free_loopback_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed) * 13) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`. Never a fixed sleep: the wait
/// ends as soon as the condition holds (polled every 20 ms).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, WaitTimedOut>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WaitTimedOut {
                what: what.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A condition did not hold within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}")]
pub struct WaitTimedOut {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub timeout: Duration,
}

/// A founding member on 127.0.0.1 with the given ports, no metrics listener and the documented defaults otherwise:
/// the configuration every loopback test cluster starts from.
pub fn loopback_node_config(
    name: &str,
    data_dir: &std::path::Path,
    client_port: u16,
    peer_port: u16,
    initial_cluster: Vec<(String, String)>,
) -> NodeConfig {
    let mut config = NodeConfig::new(data_dir);
    config.name = name.to_owned();
    config.listen_client = ([127, 0, 0, 1], client_port).into();
    config.advertise_client_urls = vec![format!("http://127.0.0.1:{client_port}")];
    config.listen_peer = ([127, 0, 0, 1], peer_port).into();
    config.advertise_peer_url = format!("http://127.0.0.1:{peer_port}");
    config.listen_metrics = None;
    config.cluster_state = ClusterState::New;
    config.initial_cluster = initial_cluster;
    config
}
