//! Test helpers shared by the membership tests against etcd and against Trestle.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;

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

pub use trestle_etcd::testing::free_loopback_port as free_port;
