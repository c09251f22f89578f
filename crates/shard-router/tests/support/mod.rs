//! Test helpers shared by the membership tests against etcd and against Trestle.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::TcpListener;

use etcd_client::Client;
use trestle_shard_router::Node;
use trestle_shard_router::conformance::MembershipDriver;

/// Where the tests register nodes.
pub const PREFIX: &str = "/trestle/test/nodes/";

/// Drives a membership through plain puts and deletes under [`PREFIX`] on any etcd-v3 endpoint.
pub struct PrefixDriver(pub Client);

impl MembershipDriver for PrefixDriver {
    fn join(&mut self, node: Node) -> impl Future<Output = ()> + Send {
        let mut client = self.0.clone();
        async move {
            let value = trestle_shard_router::encode_node(&node);
            client
                .put(format!("{PREFIX}{}", node.id()), value, None)
                .await
                .expect("put");
        }
    }

    fn leave(&mut self, id: &str) -> impl Future<Output = ()> + Send {
        let mut client = self.0.clone();
        let key = format!("{PREFIX}{id}");
        async move {
            client.delete(key, None).await.expect("delete");
        }
    }
}

/// A free loopback port below the kernel's ephemeral range (32768+), so no outgoing connection of a
/// concurrently running test can take it between this check and the node's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread concurrent test processes apart; walk from there.
    let base = 20_000 + (std::process::id() * 7919 % 12_000);
    loop {
        let port = (20_000 + (base + NEXT.fetch_add(1, Ordering::Relaxed) * 13) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
