//! Hot keys: a bounded-memory detector and a policy that spreads a hot key's reads.

use std::collections::HashMap;

use crate::{Node, ShardError, ShardMap};

/// Configuration of [`HotKeyDetector`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HotKeyConfig {
    /// How many keys are tracked (memory is `capacity` keys plus two counters each). Default 64.
    pub capacity: usize,
    /// A key is hot when it surely took at least this share of observations. Default 0.01 (1%). Must be in
    /// (0, 1] and should be above `1 / capacity`: every key above that share is guaranteed to be tracked.
    pub hot_fraction: f64,
    /// No key is hot before this many observations. Default 1000.
    pub min_observations: u64,
}

impl Default for HotKeyConfig {
    fn default() -> Self {
        Self {
            capacity: 64,
            hot_fraction: 0.01,
            min_observations: 1000,
        }
    }
}

impl HotKeyConfig {
    /// Sets [`capacity`](Self::capacity).
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets [`hot_fraction`](Self::hot_fraction).
    #[must_use]
    pub fn with_hot_fraction(mut self, fraction: f64) -> Self {
        self.hot_fraction = fraction;
        self
    }

    /// Sets [`min_observations`](Self::min_observations).
    #[must_use]
    pub fn with_min_observations(mut self, observations: u64) -> Self {
        self.min_observations = observations;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ShardError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ShardError> {
        if self.capacity == 0 {
            return Err(ShardError::InvalidConfig {
                field: "capacity",
                value: self.capacity.to_string(),
                reason: "must be at least 1",
            });
        }
        if !(self.hot_fraction > 0.0 && self.hot_fraction <= 1.0) {
            return Err(ShardError::InvalidConfig {
                field: "hot_fraction",
                value: self.hot_fraction.to_string(),
                reason: "must be in (0, 1]",
            });
        }
        Ok(())
    }
}

/// A tracked key with its counts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HotKey {
    /// The key.
    pub key: Vec<u8>,
    /// Estimated observations: never below the true count, at most `overestimate` above it.
    pub estimate: u64,
    /// How much `estimate` may exceed the true count.
    pub overestimate: u64,
}

impl HotKey {
    /// Observations the key surely had: `estimate - overestimate`.
    #[must_use]
    pub fn guaranteed(&self) -> u64 {
        self.estimate - self.overestimate
    }
}

#[derive(Debug)]
struct Entry {
    key: Box<[u8]>,
    count: u64,
    error: u64,
}

/// Finds the keys that take a disproportionate share of traffic, in bounded memory: the space-saving algorithm
/// (Metwally, Agrawal and El Abbadi, 2005).
///
/// It tracks at most [`HotKeyConfig::capacity`] keys; an untracked key replaces the least-counted one and inherits
/// its count as possible overestimate. Every key whose true share exceeds `1 / capacity` is tracked, and counts are
/// never underestimated. Observing costs a hash lookup, plus a scan of the table when a new key evicts one
/// (O(capacity)). Call [`decay`](Self::decay) periodically so that keys that cooled down fade.
///
/// The detector takes `&mut self`: give each thread its own, or put it behind a mutex.
///
/// ```
/// use trestle_shard_router::{HotKeyConfig, HotKeyDetector};
///
/// let mut detector = HotKeyDetector::new(HotKeyConfig::default())?;
/// for i in 0..10_000u32 {
///     detector.observe(format!("cold-{i}").as_bytes());
///     if i % 10 == 0 {
///         detector.observe(b"celebrity");
///     }
/// }
/// assert!(detector.is_hot(b"celebrity"));
/// assert!(!detector.is_hot(b"cold-7"));
/// assert_eq!(detector.top(1)[0].key, b"celebrity");
/// # Ok::<(), trestle_shard_router::ShardError>(())
/// ```
#[derive(Debug)]
pub struct HotKeyDetector {
    config: HotKeyConfig,
    entries: Vec<Entry>,
    index: HashMap<Box<[u8]>, usize>,
    total: u64,
}

impl HotKeyDetector {
    /// An empty detector.
    ///
    /// # Errors
    /// [`ShardError::InvalidConfig`] from [`HotKeyConfig::validate`].
    pub fn new(config: HotKeyConfig) -> Result<Self, ShardError> {
        config.validate()?;
        let capacity = config.capacity;
        Ok(Self {
            config,
            entries: Vec::with_capacity(capacity),
            index: HashMap::with_capacity(capacity),
            total: 0,
        })
    }

    /// Counts one observation of `key`; returns whether the key is hot now.
    pub fn observe(&mut self, key: &[u8]) -> bool {
        self.total += 1;
        let slot = if let Some(&i) = self.index.get(key) {
            self.entries[i].count += 1;
            i
        } else if self.entries.len() < self.config.capacity {
            self.entries.push(Entry {
                key: key.into(),
                count: 1,
                error: 0,
            });
            self.index.insert(key.into(), self.entries.len() - 1);
            self.entries.len() - 1
        } else {
            let (i, min) = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (i, e.count))
                .min_by_key(|&(_, c)| c)
                .unwrap_or((0, 0));
            let old = std::mem::replace(
                &mut self.entries[i],
                Entry {
                    key: key.into(),
                    count: min + 1,
                    error: min,
                },
            );
            self.index.remove(&old.key);
            self.index.insert(key.into(), i);
            i
        };
        self.entry_is_hot(slot)
    }

    fn entry_is_hot(&self, i: usize) -> bool {
        let e = &self.entries[i];
        self.total >= self.config.min_observations
            && (e.count - e.error) as f64 >= self.config.hot_fraction * self.total as f64
    }

    /// Whether `key` is hot: tracked, at least [`HotKeyConfig::min_observations`] seen, and surely above
    /// [`HotKeyConfig::hot_fraction`] of them.
    #[must_use]
    pub fn is_hot(&self, key: &[u8]) -> bool {
        self.index.get(key).is_some_and(|&i| self.entry_is_hot(i))
    }

    /// The `k` tracked keys with the highest estimates, highest first.
    #[must_use]
    pub fn top(&self, k: usize) -> Vec<HotKey> {
        let mut all: Vec<&Entry> = self.entries.iter().collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.into_iter()
            .take(k)
            .map(|e| HotKey {
                key: e.key.to_vec(),
                estimate: e.count,
                overestimate: e.error,
            })
            .collect()
    }

    /// The hot keys, highest first.
    #[must_use]
    pub fn hot_keys(&self) -> Vec<HotKey> {
        let mut hot: Vec<HotKey> = (0..self.entries.len())
            .filter(|&i| self.entry_is_hot(i))
            .map(|i| {
                let e = &self.entries[i];
                HotKey {
                    key: e.key.to_vec(),
                    estimate: e.count,
                    overestimate: e.error,
                }
            })
            .collect();
        hot.sort_by(|a, b| b.estimate.cmp(&a.estimate).then_with(|| a.key.cmp(&b.key)));
        hot
    }

    /// Observations so far (after decay, the decayed total).
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Halves every count and the total, so that old traffic weighs less than new.
    pub fn decay(&mut self) {
        self.total /= 2;
        for e in &mut self.entries {
            e.count /= 2;
            e.error /= 2;
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.total = 0;
    }
}

/// Spreads one hot key's reads over its first `fanout` replicas instead of its owner alone.
///
/// Writes (or invalidations) of a split key must reach every node of [`targets`](Self::targets); reads go to
/// [`read_target`](Self::read_target), chosen by a caller-supplied `spread` value (a request counter, a connection
/// id or a random number), so the choice is deterministic and testable.
///
/// ```
/// use trestle_shard_router::{HotKeySplit, Node, ShardMap};
///
/// let map = ShardMap::new(["a", "b", "c", "d"].map(Node::new))?;
/// let split = HotKeySplit::new(3)?;
/// let targets = split.targets(&map, "celebrity");
/// let readers: std::collections::HashSet<_> =
///     (0..30u64).map(|i| split.read_target(&map, "celebrity", i).id().clone()).collect();
/// assert_eq!(readers.len(), 3);
/// assert!(targets.iter().all(|n| readers.contains(n.id())));
/// # Ok::<(), trestle_shard_router::ShardError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotKeySplit {
    fanout: usize,
}

impl HotKeySplit {
    /// A split over `fanout` replicas.
    ///
    /// # Errors
    /// [`ShardError::InvalidConfig`] when `fanout` is 0.
    pub fn new(fanout: usize) -> Result<Self, ShardError> {
        if fanout == 0 {
            return Err(ShardError::InvalidConfig {
                field: "fanout",
                value: fanout.to_string(),
                reason: "must be at least 1",
            });
        }
        Ok(Self { fanout })
    }

    /// The fan-out.
    #[must_use]
    pub fn fanout(&self) -> usize {
        self.fanout
    }

    /// Every node holding a copy of the split key (fewer than `fanout` on a smaller map).
    pub fn targets<'m>(&self, map: &'m ShardMap, key: impl AsRef<[u8]>) -> Vec<&'m Node> {
        map.replicas(key, self.fanout)
    }

    /// The node one read of the split key goes to: replica `spread mod fanout`.
    pub fn read_target<'m>(&self, map: &'m ShardMap, key: impl AsRef<[u8]>, spread: u64) -> &'m Node {
        let targets = self.targets(map, key.as_ref());
        let i = (spread % targets.len().max(1) as u64) as usize;
        match targets.get(i) {
            Some(node) => node,
            None => map.route(key),
        }
    }
}
