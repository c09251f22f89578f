//! The near cache (a small in-process cache for hot keys) and hot-key detection.
//!
//! The near cache is quick_cache's concurrent cache under a byte budget, each entry served until its short TTL
//! (on Tokio's clock, so paused-time tests control it). A read that fetched a value stores it only if no local
//! write or delete of a key in the same stripe happened meanwhile: each write bumps its stripe's epoch before
//! removing the entry, and an insert re-checks the epoch after inserting, so a read racing a local delete never
//! leaves the deleted value behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;
use trestle_shard_router::{HotKey, HotKeyDetector, key_position};

use super::config::{ClientConfigError, HotKeysConfig, NearCacheConfig};

const STRIPES: usize = 64;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    expires: Instant,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Bytes, Entry> for Weigh {
    fn weight(&self, key: &Bytes, entry: &Entry) -> u64 {
        key.len() as u64 + entry.value.len() as u64 + 64
    }
}

pub(crate) struct NearCache {
    cache: quick_cache::sync::Cache<Bytes, Entry, Weigh>,
    ttl: Duration,
    pub(crate) hot_only: bool,
    epochs: Box<[AtomicU64]>,
}

impl NearCache {
    pub(crate) fn new(config: &NearCacheConfig) -> Self {
        let estimated = (config.capacity_bytes / 256).clamp(16, 1 << 20) as usize;
        Self {
            cache: quick_cache::sync::Cache::with_weighter(estimated, config.capacity_bytes, Weigh),
            ttl: config.ttl,
            hot_only: config.hot_only,
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn stripe(key: &[u8]) -> usize {
        (key_position(key) % STRIPES as u64) as usize
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Bytes> {
        let entry = self.cache.get(key)?;
        if Instant::now() < entry.expires {
            Some(entry.value)
        } else {
            self.cache.remove(key);
            None
        }
    }

    /// The epoch to pass to [`insert`](Self::insert) for a value about to be fetched.
    pub(crate) fn epoch(&self, key: &[u8]) -> u64 {
        self.epochs[Self::stripe(key)].load(Ordering::Acquire)
    }

    /// Stores a fetched value unless a local write to its stripe happened since `epoch` was read.
    pub(crate) fn insert(&self, key: &[u8], value: Bytes, epoch: u64) {
        let stripe = &self.epochs[Self::stripe(key)];
        if stripe.load(Ordering::Acquire) != epoch {
            return;
        }
        let entry = Entry {
            value,
            expires: Instant::now() + self.ttl,
        };
        self.cache.insert(Bytes::copy_from_slice(key), entry);
        if stripe.load(Ordering::Acquire) != epoch {
            self.cache.remove(key);
        }
    }

    /// Drops `key` (a local write or delete).
    pub(crate) fn invalidate(&self, key: &[u8]) {
        self.epochs[Self::stripe(key)].fetch_add(1, Ordering::AcqRel);
        self.cache.remove(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }
}

pub(crate) struct HotKeys {
    detector: Mutex<HotKeyDetector>,
    decay_every: u64,
    pub(crate) spread: bool,
    /// Rotates a hot key's reads over the zones.
    turn: AtomicU64,
}

impl HotKeys {
    pub(crate) fn new(config: &HotKeysConfig) -> Result<Self, ClientConfigError> {
        let detector =
            HotKeyDetector::new(config.detector.clone()).map_err(|e| ClientConfigError::Invalid {
                name: "hot_keys.detector",
                value: format!("{:?}", config.detector),
                reason: match e {
                    trestle_shard_router::ShardError::InvalidConfig { reason, .. } => reason,
                    _ => "rejected by the detector",
                },
            })?;
        Ok(Self {
            detector: Mutex::new(detector),
            decay_every: config.decay_every,
            spread: config.spread_reads,
            turn: AtomicU64::new(0),
        })
    }

    /// Counts a read of `key`; whether it is hot now.
    pub(crate) fn observe(&self, key: &[u8]) -> bool {
        let mut detector = self.detector.lock();
        let hot = detector.observe(key);
        if detector.total() >= self.decay_every {
            detector.decay();
        }
        hot
    }

    /// The next turn of the rotation.
    pub(crate) fn turn(&self) -> u64 {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn hot_keys(&self) -> Vec<HotKey> {
        self.detector.lock().hot_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(ttl: Duration) -> NearCache {
        NearCache::new(&NearCacheConfig::default().with_ttl(ttl))
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_is_served_until_its_ttl_then_dropped() {
        let cache = near(Duration::from_secs(1));
        let epoch = cache.epoch(b"k");
        cache.insert(b"k", Bytes::from_static(b"v"), epoch);
        assert_eq!(cache.get(b"k"), Some(Bytes::from_static(b"v")));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(cache.get(b"k"), Some(Bytes::from_static(b"v")));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.get(b"k"), None);
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_fetched_before_a_local_write_is_not_kept() {
        let cache = near(Duration::from_secs(60));
        // A read takes the epoch, then a local delete of the key happens before its value arrives.
        let epoch = cache.epoch(b"k");
        cache.invalidate(b"k");
        cache.insert(b"k", Bytes::from_static(b"deleted"), epoch);
        assert_eq!(cache.get(b"k"), None);
        // A read that starts after the write is kept.
        let epoch = cache.epoch(b"k");
        cache.insert(b"k", Bytes::from_static(b"new"), epoch);
        assert_eq!(cache.get(b"k"), Some(Bytes::from_static(b"new")));
    }

    #[test]
    fn hot_keys_decay_so_a_cooled_key_stops_being_hot() {
        let config = HotKeysConfig::default()
            .with_detector(
                trestle_shard_router::HotKeyConfig::default()
                    .with_min_observations(10)
                    .with_hot_fraction(0.3),
            )
            .with_decay_every(100);
        let hot = HotKeys::new(&config).expect("valid");
        for _ in 0..50 {
            hot.observe(b"celebrity");
        }
        assert!(hot.observe(b"celebrity"));
        // Traffic moves on: after enough decays the old favourite is no longer above 30%.
        for i in 0..1000u32 {
            hot.observe(format!("other-{}", i % 5).as_bytes());
        }
        assert!(!hot.observe(b"celebrity"));
    }
}
