//! Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2016).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::hash::key_position;
use crate::{Node, ShardError, ShardMap};

/// Configuration of [`BoundedLoad`].
///
/// ```
/// use trestle_shard_router::BoundedLoadConfig;
///
/// assert_eq!(BoundedLoadConfig::default().balance_factor, 1.25);
/// assert!(BoundedLoadConfig::default().with_balance_factor(0.9).validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BoundedLoadConfig {
    /// `c = 1 + ε`: no node takes more than `⌈c × average⌉` of the in-flight work (weighted by node weight).
    /// Default 1.25, HAProxy's `hash-balance-factor 125` (ε = 0.25). Must be finite and ≥ 1; used to a precision
    /// of 0.001. Lower keeps loads tighter and moves more keys off their owner.
    pub balance_factor: f64,
}

impl Default for BoundedLoadConfig {
    fn default() -> Self {
        Self { balance_factor: 1.25 }
    }
}

impl BoundedLoadConfig {
    /// Sets [`balance_factor`](Self::balance_factor).
    #[must_use]
    pub fn with_balance_factor(mut self, factor: f64) -> Self {
        self.balance_factor = factor;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ShardError::InvalidConfig`] for a factor below 1, above 1000 or not finite.
    pub fn validate(&self) -> Result<(), ShardError> {
        let c = self.balance_factor;
        if !c.is_finite() || !(1.0..=1000.0).contains(&c) {
            return Err(ShardError::InvalidConfig {
                field: "balance_factor",
                value: c.to_string(),
                reason: "must be a finite number between 1 and 1000",
            });
        }
        Ok(())
    }
}

struct State {
    loads: Vec<u64>,
    total: u64,
}

struct Inner {
    map: Arc<ShardMap>,
    /// The balance factor in thousandths, so capacities are exact integer arithmetic.
    factor_milli: u128,
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first node clockwise from `position` that `accept` approves and that has room for one more unit;
    /// failing that, the least-loaded approved node; `None` if none is approved.
    fn pick(&self, state: &State, position: u64, accept: impl Fn(&Node) -> bool) -> Option<usize> {
        let after = state.total + 1;
        let mut least: Option<(u64, usize)> = None;
        for node in self.map.preference(position) {
            if !accept(self.map.node_at(node)) {
                continue;
            }
            let load = state.loads[node];
            if load < self.capacity(node, after) {
                return Some(node);
            }
            if least.is_none_or(|(l, _)| load < l) {
                least = Some((load, node));
            }
        }
        // Without refusals the capacities sum to at least `after`, so the loop returned; this is the refused case.
        least.map(|(_, n)| n)
    }

    /// `⌈c × total × weight / total_weight⌉`.
    fn capacity(&self, node: usize, total: u64) -> u64 {
        let w = u128::from(self.map.node_at(node).weight());
        let num = self.factor_milli * u128::from(total) * w;
        let den = 1000 * u128::from(self.map.total_weight());
        u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
    }
}

/// Routes keys to their ring owner unless that node already carries more than its share of in-flight work, in
/// which case the work goes to the next node clockwise with room: consistent hashing with bounded loads, as in
/// HAProxy and Envoy.
///
/// [`acquire`](Self::acquire) picks a node and counts one unit of work on it until the returned [`LoadGuard`] is
/// dropped. When it picks, the chosen node's load including the new unit never exceeds
/// `⌈c × (total + 1) × weight / total_weight⌉`; such a node always exists because those capacities sum to at
/// least `total + 1`. Cheap clones share the counters. One tracker belongs to one map: after a membership change
/// make a new one (guards of the old one still release into the old one).
///
/// ```
/// use std::sync::Arc;
/// use trestle_shard_router::{BoundedLoad, BoundedLoadConfig, Node, ShardMap};
///
/// let map = Arc::new(ShardMap::new(["a", "b", "c"].map(Node::new))?);
/// let loads = BoundedLoad::new(map, BoundedLoadConfig::default())?;
/// let guards: Vec<_> = (0..30).map(|_| loads.acquire("one hot key")).collect();
/// // Without the bound all 30 would land on one node; with c = 1.25 none takes more than 13.
/// assert!(guards.iter().all(|g| loads.load(g.node().id().as_str()) <= Some(13)));
/// drop(guards);
/// assert_eq!(loads.total(), 0);
/// # Ok::<(), trestle_shard_router::ShardError>(())
/// ```
#[derive(Clone)]
pub struct BoundedLoad {
    inner: Arc<Inner>,
}

impl fmt::Debug for BoundedLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedLoad")
            .field("nodes", &self.inner.map.len())
            .field("factor_milli", &self.inner.factor_milli)
            .field("total", &self.total())
            .finish()
    }
}

impl BoundedLoad {
    /// A tracker with no work in flight.
    ///
    /// # Errors
    /// [`ShardError::InvalidConfig`] from [`BoundedLoadConfig::validate`].
    pub fn new(map: Arc<ShardMap>, config: BoundedLoadConfig) -> Result<Self, ShardError> {
        config.validate()?;
        let factor_milli = (config.balance_factor * 1000.0).round() as u128;
        let state = Mutex::new(State {
            loads: vec![0; map.len()],
            total: 0,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                map,
                factor_milli,
                state,
            }),
        })
    }

    /// The map.
    #[must_use]
    pub fn map(&self) -> &Arc<ShardMap> {
        &self.inner.map
    }

    /// Picks a node for `key` and counts one unit of work on it until the guard drops.
    pub fn acquire(&self, key: impl AsRef<[u8]>) -> LoadGuard {
        self.acquire_position(key_position(key))
    }

    /// [`acquire`](Self::acquire) for a ring position.
    pub fn acquire_position(&self, position: u64) -> LoadGuard {
        let mut state = self.inner.lock();
        // Every node is accepted and a map is never empty, so a node is always found.
        let node = self.inner.pick(&state, position, |_| true).unwrap_or(0);
        self.count(&mut state, node)
    }

    /// [`acquire_position`](Self::acquire_position) among the nodes `accept` approves (for example, those not
    /// marked down); `None` when it approves none.
    ///
    /// The bound holds as long as no node is refused. With refusals, if every approved node is full, the
    /// least-loaded approved node takes the work and may exceed its bound: the refused nodes' share has to go
    /// somewhere.
    pub fn acquire_filtered(&self, position: u64, accept: impl Fn(&Node) -> bool) -> Option<LoadGuard> {
        let mut state = self.inner.lock();
        let node = self.inner.pick(&state, position, accept)?;
        Some(self.count(&mut state, node))
    }

    fn count(&self, state: &mut State, node: usize) -> LoadGuard {
        state.loads[node] += 1;
        state.total += 1;
        LoadGuard {
            inner: Arc::clone(&self.inner),
            node,
        }
    }

    /// The in-flight work on node `id`.
    #[must_use]
    pub fn load(&self, id: &str) -> Option<u64> {
        let i = self.inner.map.index_of(id)?;
        Some(self.inner.lock().loads[i])
    }

    /// The most in-flight work node `id` may take with one more unit in flight overall.
    #[must_use]
    pub fn capacity(&self, id: &str) -> Option<u64> {
        let i = self.inner.map.index_of(id)?;
        let total = self.inner.lock().total;
        Some(self.inner.capacity(i, total + 1))
    }

    /// The in-flight work over all nodes.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.inner.lock().total
    }
}

/// One unit of in-flight work on a node; dropping it releases the unit.
#[must_use = "the load is released as soon as the guard is dropped"]
pub struct LoadGuard {
    inner: Arc<Inner>,
    node: usize,
}

impl LoadGuard {
    /// The node the work was assigned to.
    #[must_use]
    pub fn node(&self) -> &Node {
        self.inner.map.node_at(self.node)
    }
}

impl fmt::Debug for LoadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadGuard")
            .field("node", self.node().id())
            .finish()
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.loads[self.node] = state.loads[self.node].saturating_sub(1);
        state.total = state.total.saturating_sub(1);
    }
}
