//! Routing as a tower service, and scatter/gather.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::{BoundedLoad, BoundedLoadConfig, Node, NodeId, ShardError, ShardMap};

/// The boxed error a node's service may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The ring position of a request's key. Implemented for every `Fn(&Req) -> u64`, so a closure such as
/// `|req: &Get| key_position(&req.key)` is an extractor.
pub trait KeyExtractor<Req> {
    /// The ring position (usually [`key_position`](crate::key_position) of the key bytes).
    fn position(&self, req: &Req) -> u64;
}

impl<Req, F: Fn(&Req) -> u64> KeyExtractor<Req> for F {
    fn position(&self, req: &Req) -> u64 {
        self(req)
    }
}

/// Why a routed request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The membership has no nodes.
    #[error("no nodes to route to")]
    NoNodes,
    /// Every candidate replica is marked down.
    #[error("every candidate replica is marked down: {tried:?}")]
    AllReplicasDown {
        /// The replicas that were skipped, in preference order.
        tried: Vec<NodeId>,
    },
    /// The node's service failed.
    #[error("node {node} failed: {source}")]
    Node {
        /// The node.
        node: NodeId,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// A scatter/gather got fewer successful replies than its policy requires.
    #[error("{succeeded} replies succeeded, {required} required ({failed} failed, {timed_out} timed out)")]
    NotEnoughReplies {
        /// Replies required.
        required: usize,
        /// Successful replies.
        succeeded: usize,
        /// Failed replies.
        failed: usize,
        /// Targets that had not answered by the deadline.
        timed_out: usize,
    },
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] ShardError),
}

/// Configuration of [`Router`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RouterConfig {
    /// How many replicas of a key, in preference order, may serve its request: the first `attempts` replicas (as
    /// [`ShardMap::replicas`] returns them) minus those marked down. Set it to the replication factor of the data
    /// behind the nodes, so a request never reaches a node that cannot hold its key. Default 3; must be ≥ 1.
    pub attempts: usize,
    /// Whether a request whose node *fails* is retried on the next replica. Default `false`: only nodes marked
    /// down are skipped, since a failed call may have had effects; turn it on for idempotent requests.
    pub failover_on_error: bool,
    /// Bounded-load mode: each request goes to the first node clockwise from its key that is not marked down and
    /// has room under the bound of [`BoundedLoad`], and counts as in-flight work there until its response arrives.
    /// For services where any node can serve any key (stateless backends, caches that tolerate misses), as in
    /// HAProxy and Envoy; `attempts` then counts tries (with `failover_on_error`), not replicas. Default `None`.
    pub bounded_load: Option<BoundedLoadConfig>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            failover_on_error: false,
            bounded_load: None,
        }
    }
}

impl RouterConfig {
    /// Sets [`attempts`](Self::attempts).
    #[must_use]
    pub fn with_attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts;
        self
    }

    /// Sets [`failover_on_error`](Self::failover_on_error).
    #[must_use]
    pub fn with_failover_on_error(mut self, on: bool) -> Self {
        self.failover_on_error = on;
        self
    }

    /// Sets [`bounded_load`](Self::bounded_load).
    #[must_use]
    pub fn with_bounded_load(mut self, config: BoundedLoadConfig) -> Self {
        self.bounded_load = Some(config);
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ShardError::InvalidConfig`] when `attempts` is 0 or the bounded-load configuration is invalid.
    pub fn validate(&self) -> Result<(), ShardError> {
        if let Some(bounded) = &self.bounded_load {
            bounded.validate()?;
        }
        if self.attempts == 0 {
            return Err(ShardError::InvalidConfig {
                field: "attempts",
                value: self.attempts.to_string(),
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}

/// The set of nodes marked down, shared by a router and its clones. A health checker or circuit breaker marks
/// nodes; the router skips them and sends their keys to the next replica.
#[derive(Clone, Debug, Default)]
pub struct NodeHealth {
    down: Arc<RwLock<HashSet<NodeId>>>,
}

impl NodeHealth {
    /// Marks `id` down.
    pub fn mark_down(&self, id: impl Into<NodeId>) {
        self.down
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.into());
    }

    /// Marks `id` up again.
    pub fn mark_up(&self, id: &str) {
        self.down
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Whether `id` is marked down.
    #[must_use]
    pub fn is_down(&self, id: &str) -> bool {
        self.down
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }
}

/// The map the cache was last pruned for, and each node's service.
type ServiceCache<S> = (Option<Arc<ShardMap>>, HashMap<NodeId, S>);

struct Services<S, F> {
    make: F,
    cache: Mutex<ServiceCache<S>>,
}

impl<S: Clone, F: Fn(&Node) -> S> Services<S, F> {
    /// The service of `node`, made on first use; services of nodes that left the map are dropped.
    fn get(&self, map: &Arc<ShardMap>, node: &Node) -> S {
        let mut guard = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (seen, cache) = &mut *guard;
        if !seen.as_ref().is_some_and(|m| Arc::ptr_eq(m, map)) {
            cache.retain(|id, _| map.contains(id.as_str()));
            *seen = Some(Arc::clone(map));
        }
        cache
            .entry(node.id().clone())
            .or_insert_with(|| (self.make)(node))
            .clone()
    }
}

/// Sends each request to the service of the node that owns its key, skipping nodes marked down.
///
/// - The map comes from a `watch` channel of `Option<Arc<ShardMap>>` (as published by a
///   [`Membership`](crate::Membership)); each request reads it once, so it never sees half a change.
/// - The key comes from a [`KeyExtractor`].
/// - Each node's service is made by a factory on first use and cached (`S: Clone`, as tower's
///   `Steer` and `Balance` need); requests are `Clone` so they can be re-sent to another replica.
/// - Replicas are tried in preference order: nodes marked down in [`NodeHealth`] are skipped, up to
///   [`RouterConfig::attempts`] replicas are considered (when all are down the request fails with
///   [`RouterError::AllReplicasDown`]), and with [`RouterConfig::failover_on_error`] a failing
///   node's request goes on to the next replica.
/// - With [`RouterConfig::bounded_load`] the node is chosen by a [`BoundedLoad`] tracker instead (see there).
///
/// The router is always ready; readiness of the node services is awaited inside the response future. The future is
/// boxed.
///
/// ```
/// use std::sync::Arc;
/// use tower::{service_fn, Service, ServiceExt};
/// use trestle_shard_router::{key_position, Node, Router, RouterConfig, ShardMap};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let map = Arc::new(ShardMap::new(["a", "b", "c"].map(Node::new))?);
/// let router = Router::from_map(
///     map.clone(),
///     |node: &Node| {
///         let id = node.id().clone();
///         service_fn(move |key: String| {
///             let id = id.clone();
///             async move { Ok::<_, std::convert::Infallible>(format!("{id} has {key}")) }
///         })
///     },
///     |key: &String| key_position(key),
///     RouterConfig::default(),
/// )?;
/// let owner = map.route("user:42").id().clone();
/// let reply = router.clone().oneshot("user:42".to_string()).await?;
/// assert_eq!(reply, format!("{owner} has user:42"));
///
/// // Mark the owner down: the next replica answers.
/// router.health().mark_down(owner.clone());
/// let reply = router.clone().oneshot("user:42".to_string()).await?;
/// assert_ne!(reply, format!("{owner} has user:42"));
/// # Ok(())
/// # }
/// ```
pub struct Router<S, F, E> {
    maps: watch::Receiver<Option<Arc<ShardMap>>>,
    services: Arc<Services<S, F>>,
    extractor: E,
    health: NodeHealth,
    config: RouterConfig,
    /// The load tracker of the current map, in bounded-load mode.
    loads: Arc<Mutex<Option<BoundedLoad>>>,
}

impl<S, F, E: Clone> Clone for Router<S, F, E> {
    fn clone(&self) -> Self {
        Self {
            maps: self.maps.clone(),
            services: Arc::clone(&self.services),
            extractor: self.extractor.clone(),
            health: self.health.clone(),
            config: self.config.clone(),
            loads: Arc::clone(&self.loads),
        }
    }
}

impl<S, F, E> fmt::Debug for Router<S, F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("health", &self.health)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, F, E> Router<S, F, E>
where
    S: Clone,
    F: Fn(&Node) -> S,
{
    /// A router following a changing map.
    ///
    /// # Errors
    /// [`RouterError::Config`] from [`RouterConfig::validate`].
    pub fn new(
        maps: watch::Receiver<Option<Arc<ShardMap>>>,
        make_service: F,
        extractor: E,
        config: RouterConfig,
    ) -> Result<Self, RouterError> {
        config.validate()?;
        let services = Arc::new(Services {
            make: make_service,
            cache: Mutex::new((None, HashMap::new())),
        });
        Ok(Self {
            maps,
            services,
            extractor,
            health: NodeHealth::default(),
            config,
            loads: Arc::new(Mutex::new(None)),
        })
    }

    /// A router over one fixed map.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_map(
        map: Arc<ShardMap>,
        make_service: F,
        extractor: E,
        config: RouterConfig,
    ) -> Result<Self, RouterError> {
        let (_tx, rx) = watch::channel(Some(map));
        Self::new(rx, make_service, extractor, config)
    }

    /// The shared down-node set.
    #[must_use]
    pub fn health(&self) -> &NodeHealth {
        &self.health
    }

    /// The map requests are routed with right now.
    #[must_use]
    pub fn current_map(&self) -> Option<Arc<ShardMap>> {
        self.maps.borrow().clone()
    }

    /// In bounded-load mode, the in-flight load tracker of the current map (made when the map changes; work still
    /// in flight on an older map is counted in that map's tracker).
    #[must_use]
    pub fn bounded_load(&self) -> Option<BoundedLoad> {
        let map = self.current_map()?;
        self.tracker(&map).ok().flatten()
    }

    fn tracker(&self, map: &Arc<ShardMap>) -> Result<Option<BoundedLoad>, ShardError> {
        let Some(config) = &self.config.bounded_load else {
            return Ok(None);
        };
        let mut current = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tracker) = current.as_ref().filter(|t| Arc::ptr_eq(t.map(), map)) {
            return Ok(Some(tracker.clone()));
        }
        let tracker = BoundedLoad::new(Arc::clone(map), config.clone())?;
        *current = Some(tracker.clone());
        Ok(Some(tracker))
    }

    /// The candidates for `position`: the first `limit` replicas not marked down, and the ones skipped.
    fn candidates(
        &self,
        map: &Arc<ShardMap>,
        position: u64,
        limit: usize,
    ) -> (Vec<(NodeId, S)>, Vec<NodeId>) {
        let mut chosen = Vec::with_capacity(limit);
        let mut skipped = Vec::new();
        for node in map.replicas_at(position, limit) {
            if self.health.is_down(node.id().as_str()) {
                skipped.push(node.id().clone());
            } else {
                chosen.push((node.id().clone(), self.services.get(map, node)));
            }
        }
        (chosen, skipped)
    }

    /// Sends `req` to several nodes at once and gathers their replies until all answered or the deadline passed;
    /// fails unless the policy's minimum succeeded. Nodes marked down count as failed.
    ///
    /// # Errors
    /// [`RouterError::NoNodes`] on an empty membership, [`RouterError::NotEnoughReplies`] when too few succeeded.
    pub async fn scatter<Req>(
        &self,
        req: Req,
        fanout: Fanout,
        policy: GatherPolicy,
    ) -> Result<Gathered<S::Response>, RouterError>
    where
        Req: Clone,
        S: Service<Req>,
        S::Error: Into<BoxError>,
        E: KeyExtractor<Req>,
    {
        let Some(map) = self.current_map() else {
            return Err(RouterError::NoNodes);
        };
        let (targets, skipped) = match fanout {
            Fanout::AllNodes => {
                let mut targets = Vec::new();
                let mut skipped = Vec::new();
                for node in map.nodes() {
                    if self.health.is_down(node.id().as_str()) {
                        skipped.push(node.id().clone());
                    } else {
                        targets.push((node.id().clone(), self.services.get(&map, node)));
                    }
                }
                (targets, skipped)
            }
            Fanout::Replicas(n) => {
                let position = self.extractor.position(&req);
                let mut targets = Vec::new();
                let mut skipped = Vec::new();
                for node in map.replicas_at(position, n) {
                    if self.health.is_down(node.id().as_str()) {
                        skipped.push(node.id().clone());
                    } else {
                        targets.push((node.id().clone(), self.services.get(&map, node)));
                    }
                }
                (targets, skipped)
            }
        };
        let total = targets.len() + skipped.len();
        let mut gathered = scatter_gather(targets, req, policy.deadline).await;
        gathered
            .failures
            .extend(skipped.into_iter().map(|id| (id, BoxError::from("marked down"))));
        let required = policy.min_success.required(total);
        if gathered.replies.len() >= required {
            Ok(gathered)
        } else {
            Err(RouterError::NotEnoughReplies {
                required,
                succeeded: gathered.replies.len(),
                failed: gathered.failures.len(),
                timed_out: gathered.timed_out.len(),
            })
        }
    }
}

impl<Req, S, F, E> Service<Req> for Router<S, F, E>
where
    Req: Clone + Send + 'static,
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    F: Fn(&Node) -> S + Send + Sync + 'static,
    E: KeyExtractor<Req>,
{
    type Response = S::Response;
    type Error = RouterError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, RouterError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let position = self.extractor.position(&req);
        let Some(map) = self.current_map() else {
            return Box::pin(async { Err(RouterError::NoNodes) });
        };
        let failover = self.config.failover_on_error;
        match self.tracker(&map) {
            Ok(Some(tracker)) => return self.call_bounded(req, map, position, tracker),
            Ok(None) => {}
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        }
        let (candidates, skipped) = self.candidates(&map, position, self.config.attempts);
        Box::pin(async move {
            if candidates.is_empty() {
                return Err(RouterError::AllReplicasDown { tried: skipped });
            }
            let mut last = None;
            for (node, service) in candidates {
                match service.oneshot(req.clone()).await {
                    Ok(response) => return Ok(response),
                    Err(e) => {
                        let error = RouterError::Node {
                            node,
                            source: e.into(),
                        };
                        if !failover {
                            return Err(error);
                        }
                        last = Some(error);
                    }
                }
            }
            Err(last.unwrap_or(RouterError::AllReplicasDown { tried: skipped }))
        })
    }
}

impl<S, F, E> Router<S, F, E> {
    fn call_bounded<Req>(
        &self,
        req: Req,
        map: Arc<ShardMap>,
        position: u64,
        tracker: BoundedLoad,
    ) -> Pin<Box<dyn Future<Output = Result<S::Response, RouterError>> + Send>>
    where
        Req: Clone + Send + 'static,
        S: Service<Req> + Clone + Send + 'static,
        S::Future: Send,
        S::Response: Send + 'static,
        S::Error: Into<BoxError>,
        F: Fn(&Node) -> S + Send + Sync + 'static,
    {
        let services = Arc::clone(&self.services);
        let health = self.health.clone();
        let attempts = self.config.attempts;
        let failover = self.config.failover_on_error;
        // The first node is chosen (and its load counted) now, at dispatch; a failover re-chooses in the future.
        let first = tracker.acquire_filtered(position, |n| !health.is_down(n.id().as_str()));
        Box::pin(async move {
            let mut guard = first;
            let mut tried: Vec<NodeId> = Vec::new();
            let mut last = None;
            while let Some(load) = guard.take() {
                let node = load.node().clone();
                let service = services.get(&map, &node);
                let result = service.oneshot(req.clone()).await;
                // The work is in flight until its response (or error) is back.
                drop(load);
                match result {
                    Ok(response) => return Ok(response),
                    Err(e) => {
                        let error = RouterError::Node {
                            node: node.id().clone(),
                            source: e.into(),
                        };
                        if !failover {
                            return Err(error);
                        }
                        last = Some(error);
                        tried.push(node.id().clone());
                    }
                }
                if tried.len() < attempts {
                    guard = tracker.acquire_filtered(position, |n| {
                        !health.is_down(n.id().as_str()) && !tried.contains(n.id())
                    });
                }
            }
            Err(last.unwrap_or_else(|| RouterError::AllReplicasDown {
                tried: map.nodes().iter().map(|n| n.id().clone()).collect(),
            }))
        })
    }
}

/// Which nodes a scatter/gather reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fanout {
    /// Every node of the map (a query over all shards).
    AllNodes,
    /// The first `n` replicas of the request's key (a quorum read or write).
    Replicas(usize),
}

/// How many successful replies a scatter/gather needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MinSuccess {
    /// Every target.
    All,
    /// A majority of the targets: `targets / 2 + 1`.
    Majority,
    /// At least this many (capped at the number of targets).
    AtLeast(usize),
}

impl MinSuccess {
    fn required(self, targets: usize) -> usize {
        match self {
            MinSuccess::All => targets,
            MinSuccess::Majority => targets / 2 + 1,
            MinSuccess::AtLeast(n) => n.min(targets),
        }
    }
}

/// The deadline and success policy of a scatter/gather.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatherPolicy {
    /// How long to wait for replies.
    pub deadline: Duration,
    /// How many must succeed.
    pub min_success: MinSuccess,
}

impl GatherPolicy {
    /// A policy.
    #[must_use]
    pub fn new(deadline: Duration, min_success: MinSuccess) -> Self {
        Self {
            deadline,
            min_success,
        }
    }
}

/// The replies of a scatter/gather, in arrival order.
#[derive(Debug)]
#[non_exhaustive]
pub struct Gathered<R> {
    /// Successful replies.
    pub replies: Vec<(NodeId, R)>,
    /// Failed targets with their errors (including targets marked down).
    pub failures: Vec<(NodeId, BoxError)>,
    /// Targets that had not answered by the deadline.
    pub timed_out: Vec<NodeId>,
}

/// Sends a clone of `req` to every target at once and collects what arrives before `deadline` elapses; requests
/// still running then are dropped (cancelled) and their targets listed as timed out. The routing-free core of
/// [`Router::scatter`], usable with any services.
pub async fn scatter_gather<S, Req>(
    targets: Vec<(NodeId, S)>,
    req: Req,
    deadline: Duration,
) -> Gathered<S::Response>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    let mut outstanding: Vec<NodeId> = targets.iter().map(|(id, _)| id.clone()).collect();
    let mut pending: FuturesUnordered<_> = targets
        .into_iter()
        .map(|(id, service)| {
            let req = req.clone();
            async move { (id, service.oneshot(req).await) }
        })
        .collect();
    let mut gathered = Gathered {
        replies: Vec::new(),
        failures: Vec::new(),
        timed_out: Vec::new(),
    };
    let sleep = tokio::time::sleep(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            next = pending.next() => match next {
                Some((id, result)) => {
                    outstanding.retain(|o| o != &id);
                    match result {
                        Ok(reply) => gathered.replies.push((id, reply)),
                        Err(e) => gathered.failures.push((id, e.into())),
                    }
                }
                None => break,
            },
            () = &mut sleep => break,
        }
    }
    gathered.timed_out = outstanding;
    gathered
}
