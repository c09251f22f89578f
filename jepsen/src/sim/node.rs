//! One node host's software: what `trestle serve` runs — trestle-etcd's `EtcdNode::start`, the same wiring —
//! over turmoil's TCP instead of real sockets (trestle-raft's `NodeNetwork::Custom`) and with its Raft state in
//! memory (`NodeStorage::Memory`). turmoil reruns it on every restart; it reopens the same `MemoryStorage`,
//! which like a disk keeps what was written before the crash.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use trestle_etcd::{EtcdNode, EtcdNodeConfig};
use trestle_raft::{ClusterState, MemoryStorage, NodeConfig, NodeNetwork, NodeStorage};

use super::client::{self, ClientSettings, Shared};
use super::{CLIENT_PORT, PEER_PORT, SimConfig, election_timeout_ms, host_name, net, peer_url};

/// Everything a node host needs; cloned into every (re)start.
#[derive(Clone)]
pub(super) struct NodeContext {
    index: usize,
    config: EtcdNodeConfig,
    clients_per_node: usize,
    client_settings: ClientSettings,
    seed: u64,
    shared: Arc<Mutex<Shared>>,
}

/// Node `index`'s configuration: `trestle serve`'s defaults, with a fixed election timeout (min = T,
/// max = T + 1 ms, so openraft's unseedable `thread_rng` has nothing to choose), snapshots every `snapshot_every`
/// entries (plus the node's stagger) so restarted nodes also catch up through snapshots, the Raft state in
/// `storage`, and turmoil's network.
pub(super) fn node_config(config: &SimConfig, index: usize, storage: MemoryStorage) -> EtcdNodeConfig {
    let mut node = NodeConfig::new(format!("/nonexistent/{}", host_name(index)));
    node.name = host_name(index);
    node.listen_client = ([0, 0, 0, 0], CLIENT_PORT).into();
    node.advertise_client_urls = vec![format!("http://{}:{CLIENT_PORT}", host_name(index))];
    node.listen_peer = ([0, 0, 0, 0], PEER_PORT).into();
    node.advertise_peer_url = peer_url(index);
    node.listen_metrics = None;
    node.initial_cluster = (0..config.nodes).map(|i| (host_name(i), peer_url(i))).collect();
    node.cluster_state = ClusterState::New;
    let timeout = Duration::from_millis(election_timeout_ms(index));
    node.raft.election_timeout = (timeout, timeout + Duration::from_millis(1));
    node.raft.snapshot_every = config.snapshot_every;
    node.raft.keep_after_snapshot = config.snapshot_every / 4;
    node.storage = NodeStorage::Memory(storage);
    node.network = NodeNetwork::Custom {
        listen: net::listen(),
        connect: net::connect(),
    };
    let mut etcd = EtcdNodeConfig::from_node(node);
    etcd.store.replicated.request_timeout = config.request_timeout;
    etcd
}

impl NodeContext {
    pub(super) fn new(config: &SimConfig, index: usize, shared: Arc<Mutex<Shared>>) -> Self {
        NodeContext {
            index,
            config: node_config(config, index, MemoryStorage::new()),
            clients_per_node: config.clients_per_node,
            client_settings: ClientSettings {
                keys: config.keys,
                key_period: config.key_period,
                values: config.values,
                run_until: config.duration,
            },
            seed: config.seed,
            shared,
        }
    }
}

/// The host's software: starts the node, then serves until turmoil crashes or bounces the host.
pub(super) async fn run(ctx: NodeContext) -> turmoil::Result {
    let _node = boot(&ctx)
        .await
        .map_err(|message| format!("{}: {message}", host_name(ctx.index)))?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn boot(ctx: &NodeContext) -> Result<EtcdNode, String> {
    let node = EtcdNode::start(ctx.config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let store = node.store().clone();
    let boot = {
        let mut s = ctx.shared.lock();
        let slot = &mut s.nodes[ctx.index];
        slot.store = Some(store.clone());
        slot.boots += 1;
        slot.boots
    };
    for c in 0..ctx.clients_per_node {
        let seed = client_seed(ctx.seed, ctx.index, c, boot);
        tokio::spawn(client::run(
            ctx.shared.clone(),
            ctx.index,
            store.clone(),
            ctx.client_settings.clone(),
            seed,
        ));
    }
    Ok(node)
}

/// A client's own seed, from the run's seed and where and when the client runs (SplitMix64 mixing).
fn client_seed(seed: u64, node: usize, client: usize, boot: usize) -> u64 {
    let mut z = seed
        ^ (node as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (client as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (boot as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_fixed_and_distinct() {
        let sim = SimConfig::with_seed(1);
        let a = node_config(&sim, 0, MemoryStorage::new());
        let b = node_config(&sim, 2, MemoryStorage::new());
        for c in [&a, &b] {
            c.validate()
                .unwrap_or_else(|e| panic!("the sim's node configuration must validate: {e}"));
        }
        let (a, b) = (a.node.raft.election_timeout, b.node.raft.election_timeout);
        assert_eq!(a.1, a.0 + Duration::from_millis(1));
        assert_ne!(a.0, b.0);
        assert_ne!(client_seed(1, 0, 0, 1), client_seed(1, 0, 1, 1));
        assert_ne!(client_seed(1, 0, 0, 1), client_seed(1, 0, 0, 2));
    }
}
