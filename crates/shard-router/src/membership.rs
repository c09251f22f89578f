//! Membership: where the node set comes from, published atomically as whole maps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, watch};

use crate::{Node, NodeId, ShardError, ShardMap, ShardMapConfig};

/// A change of the node set, published after the map that contains it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// A node joined.
    Joined(Node),
    /// A node left.
    Left(NodeId),
    /// A node's weight or zone changed.
    Changed(Node),
}

/// A source of the node set.
///
/// Implementations guarantee: every change is applied by replacing the whole `Arc<ShardMap>` in the watch channel
/// (no reader sees half a change); `None` means no nodes; events for a change are sent after the new map is
/// visible, in the order the changes happened. Events go through a bounded broadcast channel: a subscriber that
/// lags loses the oldest ones (it gets `RecvError::Lagged`) and should re-read [`current`](Self::current).
pub trait Membership: Send + Sync {
    /// The map now.
    fn current(&self) -> Option<Arc<ShardMap>> {
        self.watch().borrow().clone()
    }

    /// A receiver that always holds the latest map; give it to a [`Router`](crate::Router).
    fn watch(&self) -> watch::Receiver<Option<Arc<ShardMap>>>;

    /// Membership events from now on.
    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent>;
}

/// Builds and publishes maps from node sets: the machinery every [`Membership`] shares.
#[derive(Debug)]
pub(crate) struct Publisher {
    config: ShardMapConfig,
    nodes: Mutex<BTreeMap<NodeId, Node>>,
    maps: watch::Sender<Option<Arc<ShardMap>>>,
    events: broadcast::Sender<MembershipEvent>,
}

/// Capacity of the event channel.
const EVENT_BUFFER: usize = 1024;

impl Publisher {
    pub(crate) fn new(config: ShardMapConfig) -> Result<Self, ShardError> {
        config.validate()?;
        let (maps, _) = watch::channel(None);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Self {
            config,
            nodes: Mutex::new(BTreeMap::new()),
            maps,
            events,
        })
    }

    /// Changes the node set under the lock: `f` edits a copy; if it and the map build succeed, the new map is
    /// swapped in and then the events are sent. On error nothing changes.
    pub(crate) fn update(
        &self,
        f: impl FnOnce(&mut BTreeMap<NodeId, Node>) -> Result<(), ShardError>,
    ) -> Result<(), ShardError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = nodes.clone();
        f(&mut next)?;
        if *nodes == next {
            return Ok(());
        }
        let map = if next.is_empty() {
            None
        } else {
            Some(Arc::new(ShardMap::with_config(
                next.values().cloned(),
                self.config.clone(),
            )?))
        };
        let mut events = Vec::new();
        for (id, node) in &next {
            match nodes.get(id) {
                None => events.push(MembershipEvent::Joined(node.clone())),
                Some(old) if old != node => events.push(MembershipEvent::Changed(node.clone())),
                Some(_) => {}
            }
        }
        events.extend(
            nodes
                .keys()
                .filter(|id| !next.contains_key(*id))
                .cloned()
                .map(MembershipEvent::Left),
        );
        *nodes = next;
        self.maps.send_replace(map);
        for event in events {
            // No subscribers is fine.
            let _ = self.events.send(event);
        }
        Ok(())
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Option<Arc<ShardMap>>> {
        self.maps.subscribe()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }
}

/// A membership set by the program: a fixed list, changed only by [`set_nodes`](Self::set_nodes),
/// [`add`](Self::add) and [`remove`](Self::remove).
///
/// ```
/// use trestle_shard_router::{Membership, MembershipEvent, Node, StaticMembership};
///
/// let members = StaticMembership::new(["a", "b"].map(Node::new), Default::default())?;
/// let mut events = members.subscribe();
/// members.add(Node::new("c"))?;
/// assert_eq!(members.current().map(|m| m.len()), Some(3));
/// assert_eq!(events.try_recv().ok(), Some(MembershipEvent::Joined(Node::new("c"))));
/// # Ok::<(), trestle_shard_router::ShardError>(())
/// ```
#[derive(Debug)]
pub struct StaticMembership {
    publisher: Publisher,
}

impl StaticMembership {
    /// A membership holding `nodes` (which may be empty).
    ///
    /// # Errors
    /// As [`ShardMap::with_config`], except that an empty set is allowed.
    pub fn new(nodes: impl IntoIterator<Item = Node>, config: ShardMapConfig) -> Result<Self, ShardError> {
        let publisher = Publisher::new(config)?;
        let this = Self { publisher };
        this.set_nodes(nodes)?;
        Ok(this)
    }

    /// Replaces the whole node set at once.
    ///
    /// # Errors
    /// [`ShardError::DuplicateNode`], [`ShardError::ZeroWeight`] and the other map errors; nothing changes then.
    pub fn set_nodes(&self, nodes: impl IntoIterator<Item = Node>) -> Result<(), ShardError> {
        let mut set = BTreeMap::new();
        for node in nodes {
            if set.contains_key(node.id()) {
                return Err(ShardError::DuplicateNode {
                    node: node.id().clone(),
                });
            }
            set.insert(node.id().clone(), node);
        }
        self.publisher.update(|next| {
            *next = set;
            Ok(())
        })
    }

    /// Adds a node, or updates the node with the same id.
    ///
    /// # Errors
    /// As [`set_nodes`](Self::set_nodes).
    pub fn add(&self, node: Node) -> Result<(), ShardError> {
        self.publisher.update(|next| {
            next.insert(node.id().clone(), node);
            Ok(())
        })
    }

    /// Removes a node.
    ///
    /// # Errors
    /// [`ShardError::UnknownNode`] if absent.
    pub fn remove(&self, id: &str) -> Result<(), ShardError> {
        self.publisher.update(|next| match next.remove(id) {
            Some(_) => Ok(()),
            None => Err(ShardError::UnknownNode {
                node: NodeId::new(id),
            }),
        })
    }
}

impl Membership for StaticMembership {
    fn watch(&self) -> watch::Receiver<Option<Arc<ShardMap>>> {
        self.publisher.watch()
    }

    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.publisher.subscribe()
    }
}
