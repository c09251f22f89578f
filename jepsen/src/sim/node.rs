//! One node host's software: what `trestle serve` runs for the coordination store, over turmoil instead of real
//! sockets and with its Raft state in memory. turmoil reruns it on every restart; it reopens the same
//! `MemoryStorage`, which like a disk keeps what was written before the crash.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tonic::transport::Server;
use trestle_etcd::{STORE_GROUP, Store, StoreApp, StoreSettings};
use trestle_raft::{
    GroupRegistry, GroupStorage, MemoryStorage, PeerNode, PeerService, RaftSettings, node_id_for, start_group,
};

use super::client::{self, ClientSettings, Shared};
use super::{PEER_PORT, SimConfig, election_timeout_ms, host_name, net, peer_url};

/// Everything a node host needs; cloned into every (re)start.
#[derive(Clone)]
pub(super) struct NodeContext {
    index: usize,
    /// The node's Raft state: kept across its restarts, as a disk would be. In memory, nothing runs on tokio's
    /// blocking pool, so the run is deterministic.
    storage: MemoryStorage,
    members: BTreeMap<u64, PeerNode>,
    raft_config: Arc<openraft::Config>,
    store_settings: StoreSettings,
    clients_per_node: usize,
    client_settings: ClientSettings,
    seed: u64,
    shared: Arc<Mutex<Shared>>,
}

/// openraft's configuration for node `index`: Trestle's defaults, with a fixed election timeout (min = T,
/// max = T + 1 ms, so openraft's unseedable `thread_rng` has nothing to choose) and snapshots every
/// `snapshot_every` entries so restarted nodes also catch up through snapshots.
pub(super) fn raft_config(index: usize, snapshot_every: u64) -> Result<openraft::Config, String> {
    let defaults = RaftSettings::default();
    let timeout = election_timeout_ms(index);
    openraft::Config {
        cluster_name: "trestle-sim".into(),
        heartbeat_interval: defaults.heartbeat_interval.as_millis() as u64,
        election_timeout_min: timeout,
        election_timeout_max: timeout + 1,
        install_snapshot_timeout: defaults.snapshot_chunk_timeout.as_millis() as u64,
        snapshot_max_chunk_size: defaults.snapshot_chunk_bytes,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every / 4,
        max_payload_entries: defaults.max_payload_entries,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

impl NodeContext {
    pub(super) fn new(
        config: &SimConfig,
        index: usize,
        raft_config: openraft::Config,
        shared: Arc<Mutex<Shared>>,
    ) -> Self {
        let members = (0..config.nodes)
            .map(|i| {
                let url = peer_url(i);
                (
                    node_id_for(&url),
                    PeerNode {
                        name: host_name(i),
                        peer_url: url,
                        client_urls: Vec::new(),
                    },
                )
            })
            .collect();
        let mut store_settings = StoreSettings::default();
        store_settings.replicated.request_timeout = config.request_timeout;
        NodeContext {
            index,
            storage: MemoryStorage::new(),
            members,
            raft_config: Arc::new(raft_config),
            store_settings,
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

/// The host's software: boots the node, then serves until turmoil crashes or bounces the host.
pub(super) async fn run(ctx: NodeContext) -> turmoil::Result {
    boot(&ctx)
        .await
        .map_err(|message| format!("{}: {message}", host_name(ctx.index)))?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn boot(ctx: &NodeContext) -> Result<(), String> {
    let node_id = node_id_for(&peer_url(ctx.index));
    let channels = net::peer_channels();
    let groups = GroupRegistry::default();
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PEER_PORT))
        .await
        .map_err(|e| format!("cannot listen on the peer port: {e}"))?;
    let service = PeerService::new(groups.clone()).into_server();
    tokio::spawn(async move {
        // Ends only with the host: accept errors are skipped by tonic.
        let _ = Server::builder()
            .add_service(service)
            .serve_with_incoming(net::incoming(listener))
            .await;
    });

    let app = Arc::new(RwLock::new(StoreApp::default()));
    let raft = start_group(
        node_id,
        STORE_GROUP,
        &GroupStorage::memory(ctx.storage.clone()),
        channels.clone(),
        ctx.raft_config.clone(),
        app.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let store = Store::new(
        node_id,
        STORE_GROUP,
        raft.clone(),
        app,
        channels,
        ctx.store_settings.clone(),
    );
    groups.insert(STORE_GROUP, raft.clone(), Arc::new(store.clone()));
    // Dropping the handle detaches the task; it ends with the host.
    drop(store.spawn_lessor());

    let initialized = raft.is_initialized().await.map_err(|e| e.to_string())?;
    if !initialized {
        // Every founder initializes with the same membership, as `trestle serve` does; a node that learned the
        // membership from a peer first refuses, which is fine.
        let _ = raft.initialize(ctx.members.clone()).await;
    }

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
    Ok(())
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
        let a = raft_config(0, 500).map_err(|e| e.to_string());
        let b = raft_config(2, 500).map_err(|e| e.to_string());
        let (Ok(a), Ok(b)) = (a, b) else {
            panic!("the sim's raft configuration must validate");
        };
        assert_eq!(a.election_timeout_max, a.election_timeout_min + 1);
        assert_ne!(a.election_timeout_min, b.election_timeout_min);
        assert_ne!(client_seed(1, 0, 0, 1), client_seed(1, 0, 1, 1));
        assert_ne!(client_seed(1, 0, 0, 1), client_seed(1, 0, 0, 2));
    }
}
