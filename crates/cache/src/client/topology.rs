//! The client's view of the cluster: each zone's ring and its nodes' connections, replaced as a whole when
//! membership changes.
//!
//! A request takes the current [`Topology`] (an `Arc`) once and uses it to the end, so a membership change never
//! disturbs requests in flight: they finish against the nodes they started with, and the node connections that
//! stay in the cluster are shared by the old and the new topology.

use std::collections::HashMap;
use std::sync::Arc;

use trestle_shard_router::{ShardMap, key_position};

use super::node::NodeClient;
use super::warmup::WarmUp;

pub(crate) struct Zone {
    pub(crate) name: String,
    /// Whether this is the client's own zone.
    pub(crate) local: bool,
    pub(crate) map: Arc<ShardMap>,
    pub(crate) nodes: HashMap<String, Arc<NodeClient>>,
    /// Warm-ups of nodes that joined this zone (finished ones are skipped).
    pub(crate) warming: Vec<Arc<WarmUp>>,
}

impl Zone {
    pub(crate) fn node(&self, key: &[u8]) -> &Arc<NodeClient> {
        let id = self.map.route(key).id();
        &self.nodes[id.as_str()]
    }

    /// The previous owner of `key` in this zone, while its current owner is a joining node still being warmed.
    pub(crate) fn warm_source(&self, key: &[u8]) -> Option<&Arc<NodeClient>> {
        if self.warming.is_empty() {
            return None;
        }
        let owner = self.map.route(key).id();
        let position = key_position(key);
        self.warming
            .iter()
            .filter(|w| w.is_running() && w.node == owner.as_str())
            .find_map(|w| w.previous_owner(position))
            .and_then(|from| self.nodes.get(from))
    }
}

#[derive(Default)]
pub(crate) struct Topology {
    /// The local zone first (when it has nodes), then the others.
    pub(crate) zones: Vec<Zone>,
}

impl Topology {
    pub(crate) fn zone(&self, name: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.name == name)
    }

    pub(crate) fn node(&self, id: &str) -> Option<&Arc<NodeClient>> {
        self.zones.iter().find_map(|z| z.nodes.get(id))
    }

    /// The zone that read repair writes to: the local one, if it has nodes.
    pub(crate) fn local(&self) -> Option<&Zone> {
        self.zones.first().filter(|z| z.local)
    }
}
