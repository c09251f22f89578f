//! The node's in-memory store: a byte budget, TTLs, CAS versions and scan-resistant eviction.
//!
//! Items live in [`quick_cache`]'s unsynchronised cache, split into shards behind one mutex each. quick_cache's
//! eviction is CLOCK-Pro-like (a small "cold" queue in front of a "hot" one), so a scan of keys read once cannot
//! push out the keys that are read again; it was chosen over moka by a measurement that the crate's README gives.
//! The unsynchronised cache under a mutex (rather than quick_cache's concurrent one) makes every
//! read-modify-write (CAS, append, incr, the meta protocol's win tokens) atomic per key.
//!
//! Every item weighs its key, its value and [`ITEM_OVERHEAD`] bytes; the shards' capacities add up to the memory
//! limit. Expiry is lazy: an expired item is dropped when it is next looked up, or evicted like any other.
//! Time comes from a [`Clock`], so tests move it by hand.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use trestle_breaker::Clock;

use crate::error::ConfigError;
use crate::protocol::{ArithMode, StoreMode};

/// Bytes charged per item on top of its key and value: the item's fields and the cache's bookkeeping.
pub const ITEM_OVERHEAD: u64 = 80;

/// Relative expiration times above this many seconds (30 days) are absolute Unix times, as in memcached.
const RELATIVE_LIMIT: i64 = 60 * 60 * 24 * 30;

/// The store's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The memory limit in bytes, counting each item's key, value and [`ITEM_OVERHEAD`].
    pub memory_bytes: u64,
    /// The largest value accepted, in bytes.
    pub max_item_size: usize,
    /// Number of independently locked shards (each gets an equal part of the memory).
    pub shards: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            max_item_size: 1024 * 1024,
            shards: 16,
        }
    }
}

impl StoreConfig {
    /// A configuration with this memory limit.
    pub fn with_memory(memory_bytes: u64) -> Self {
        Self {
            memory_bytes,
            ..Self::default()
        }
    }

    /// Sets the largest value.
    pub fn with_max_item_size(mut self, max_item_size: usize) -> Self {
        self.max_item_size = max_item_size;
        self
    }

    /// Sets the number of shards.
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Checks that the limits make sense together: each shard must hold at least one largest item.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards == 0 || self.shards > 1024 {
            return Err(ConfigError::Shards { shards: self.shards });
        }
        if self.max_item_size == 0 {
            return Err(ConfigError::MaxItemSize {
                max_item_size: self.max_item_size,
            });
        }
        let per_shard = self.memory_bytes / self.shards as u64;
        let largest = self.max_item_size as u64 + 250 + ITEM_OVERHEAD;
        if per_shard < largest {
            return Err(ConfigError::MemoryTooSmall {
                memory_bytes: self.memory_bytes,
                shards: self.shards,
                max_item_size: self.max_item_size,
            });
        }
        Ok(())
    }
}

/// One stored item.
#[derive(Debug, Clone)]
struct Item {
    value: Bytes,
    flags: u32,
    cas: u64,
    /// Milliseconds on the store's clock at which the item expires.
    expires_at: Option<u64>,
    stored_at: u64,
    last_access: u64,
    fetched: bool,
    /// Marked stale by an invalidation (meta `I`): served with `X` until replaced.
    stale: bool,
    /// A win token (`W`) was handed out; others get `Z` until the item is replaced.
    win_sent: bool,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Bytes, Item> for Weigh {
    fn weight(&self, key: &Bytes, item: &Item) -> u64 {
        key.len() as u64 + item.value.len() as u64 + ITEM_OVERHEAD
    }
}

/// Counts evictions of one insert.
#[derive(Clone)]
struct CountEvictions;

impl quick_cache::Lifecycle<Bytes, Item> for CountEvictions {
    type RequestState = u64;

    fn begin_request(&self) -> u64 {
        0
    }

    fn on_evict(&self, evicted: &mut u64, _key: Bytes, _item: Item) {
        *evicted += 1;
    }
}

type Shard = quick_cache::unsync::Cache<Bytes, Item, Weigh, quick_cache::DefaultHashBuilder, CountEvictions>;

/// A value found by a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hit {
    /// The value.
    pub value: Bytes,
    /// The client flags.
    pub flags: u32,
    /// The CAS version.
    pub cas: u64,
}

/// What a meta get saw and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetaHit {
    /// The value, flags and CAS.
    pub hit: Hit,
    /// Seconds left before expiry, -1 for none.
    pub ttl: i64,
    /// Whether the item had been fetched before.
    pub fetched_before: bool,
    /// Seconds since the previous access.
    pub last_access: u64,
    /// This caller won the right to recache (`W`).
    pub win: bool,
    /// Another caller holds that right (`Z`).
    pub lost: bool,
    /// The item is stale (`X`).
    pub stale: bool,
}

/// Options of a meta get.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct MetaGetOptions {
    /// `T`: update the TTL.
    pub touch: Option<i64>,
    /// `N`: on a miss, create an empty item with this TTL and hand this caller the win token.
    pub vivify: Option<i64>,
    /// `R`: hand out the win token when fewer than this many seconds are left.
    pub recache: Option<i64>,
}

/// The result of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOutcome {
    /// Stored, with this CAS version.
    Stored(u64),
    /// The mode's condition failed (add of a present key, replace/append of an absent one).
    NotStored,
    /// The CAS version did not match.
    Exists,
    /// CAS on an absent key.
    NotFound,
    /// The value would exceed the size limit.
    TooLarge,
}

/// The result of an increment or decrement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArithOutcome {
    /// The new value (as stored), its number, CAS version and TTL left.
    Value {
        /// The number.
        number: u64,
        /// The CAS version.
        cas: u64,
        /// Seconds left, -1 for none.
        ttl: i64,
    },
    /// No such key.
    NotFound,
    /// The value is not a decimal number.
    NonNumeric,
    /// The CAS version did not match.
    Exists,
}

/// The result of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeleteOutcome {
    /// Deleted (or invalidated).
    Deleted,
    /// No such key.
    NotFound,
    /// The CAS version did not match.
    Exists,
}

/// Item metadata, for `me`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DebugInfo {
    /// Seconds left, -1 for none.
    pub ttl: i64,
    /// Seconds since the last access.
    pub last_access: u64,
    /// The CAS version.
    pub cas: u64,
    /// Whether it was fetched.
    pub fetched: bool,
    /// Its weight in bytes.
    pub size: u64,
}

/// Counters of the store.
#[derive(Debug, Default)]
struct Counters {
    evictions: AtomicU64,
    total_items: AtomicU64,
}

/// The store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    start: Instant,
    unix_at_start: u64,
    next_cas: AtomicU64,
    /// Items stored before this time (ms) are invalid once it has passed (`flush_all` with a delay).
    flush_at: AtomicU64,
    counters: Counters,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store with these limits, on `clock`.
    pub fn new(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        config.validate()?;
        let per_shard = config.memory_bytes / config.shards as u64;
        let estimated = (per_shard / 256).clamp(16, 1 << 20) as usize;
        let shards = (0..config.shards)
            .map(|_| {
                Mutex::new(Shard::with(
                    estimated,
                    per_shard,
                    Weigh,
                    Default::default(),
                    CountEvictions,
                ))
            })
            .collect();
        let unix_at_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Self {
            shards,
            hasher: Default::default(),
            start: clock.now(),
            clock,
            config,
            unix_at_start,
            next_cas: AtomicU64::new(1),
            flush_at: AtomicU64::new(u64::MAX),
            counters: Counters::default(),
        })
    }

    /// The limits.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// The current Unix time by the store's clock, in seconds.
    pub fn unix_now(&self) -> u64 {
        self.unix_at_start + self.now_ms() / 1000
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        &self.shards[index]
    }

    fn cas(&self) -> u64 {
        self.next_cas.fetch_add(1, Ordering::Relaxed)
    }

    /// memcached's exptime to an expiry instant in ms (`None`: never).
    fn expiry(&self, exptime: i64, now: u64) -> Option<u64> {
        match exptime {
            0 => None,
            e if e < 0 => Some(now),
            e if e <= RELATIVE_LIMIT => Some(now + e as u64 * 1000),
            e => {
                let unix_now = self.unix_at_start as i64 + (now / 1000) as i64;
                Some(now + (e - unix_now).max(0) as u64 * 1000)
            }
        }
    }

    fn ttl_left(expires_at: Option<u64>, now: u64) -> i64 {
        match expires_at {
            None => -1,
            Some(at) => (at.saturating_sub(now)).div_ceil(1000) as i64,
        }
    }

    fn alive(&self, item: &Item, now: u64) -> bool {
        if item.expires_at.is_some_and(|at| now >= at) {
            return false;
        }
        let flush_at = self.flush_at.load(Ordering::Relaxed);
        !(now >= flush_at && item.stored_at < flush_at)
    }

    /// Runs `f` on the live item under `key` (dropping a dead one first), with the shard locked.
    fn with_live<R>(&self, key: &[u8], now: u64, f: impl FnOnce(&mut Shard, Option<&mut Item>) -> R) -> R {
        let mut shard = self.shard(key).lock();
        let dead = shard.peek(key).is_some_and(|item| !self.alive(item, now));
        if dead {
            shard.remove(key);
        }
        let mut item = shard.get(key).cloned();
        f(&mut shard, item.as_mut())
    }

    /// Inserts an item whose key and value own their memory (see [`Store::meta_set`], where outside bytes come in).
    fn insert(&self, shard: &mut Shard, key: Bytes, item: Item) {
        let evicted = shard.insert_with_lifecycle(key, item);
        self.counters.total_items.fetch_add(1, Ordering::Relaxed);
        if evicted > 0 {
            self.counters.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Updates an item's metadata in place (its weight never changes here).
    fn update(shard: &mut Shard, key: &[u8], f: impl FnOnce(&mut Item)) {
        if let Some(mut item) = shard.peek_mut(key) {
            f(&mut item);
        }
    }

    fn new_item(&self, value: Bytes, flags: u32, expires_at: Option<u64>, now: u64) -> Item {
        Item {
            value,
            flags,
            cas: self.cas(),
            expires_at,
            stored_at: now,
            last_access: now,
            fetched: false,
            stale: false,
            win_sent: false,
        }
    }

    /// Looks `key` up; with `touch`, sets its expiration time too (`gat`).
    pub fn get(&self, key: &[u8], touch: Option<i64>) -> Option<Hit> {
        let now = self.now_ms();
        self.with_live(key, now, |shard, item| {
            let item = item?;
            let hit = Hit {
                value: item.value.clone(),
                flags: item.flags,
                cas: item.cas,
            };
            let expires_at = touch.map(|t| self.expiry(t, now));
            Self::update(shard, key, |item| {
                item.fetched = true;
                item.last_access = now;
                if let Some(expires_at) = expires_at {
                    item.expires_at = expires_at;
                }
            });
            Some(hit)
        })
    }

    /// A text storage command.
    pub fn store(&self, mode: StoreMode, key: Bytes, flags: u32, exptime: i64, data: Bytes) -> StoreOutcome {
        self.meta_set(mode, key, flags, exptime, data, None, false, None)
    }

    /// A meta set: `mode` (set, add, replace, append, prepend; [`StoreMode::Cas`] is the text form of
    /// `compare_cas`), an optional CAS to compare, `invalidate` (`I`: with a CAS older than the item's, store the
    /// value but mark it stale), and `vivify` (`N`: append/prepend to an absent key creates it with this TTL).
    #[allow(clippy::too_many_arguments)]
    pub fn meta_set(
        &self,
        mode: StoreMode,
        key: Bytes,
        flags: u32,
        exptime: i64,
        data: Bytes,
        compare_cas: Option<u64>,
        invalidate: bool,
        vivify: Option<i64>,
    ) -> StoreOutcome {
        let now = self.now_ms();
        if data.len() > self.config.max_item_size {
            // memcached drops the old value of a refused set.
            self.shard(&key).lock().remove(&key[..]);
            return StoreOutcome::TooLarge;
        }
        // Compact copies: a `Bytes` cut from a connection's read buffer (as the decoder cuts them) would keep that
        // whole buffer alive, and with it every other item cut from it, out of reach of the memory limit.
        let (key, data) = (Bytes::copy_from_slice(&key), Bytes::copy_from_slice(&data));
        let (mode, compare_cas) = match mode {
            StoreMode::Cas(cas) => (StoreMode::Set, Some(cas)),
            mode => (mode, compare_cas),
        };
        self.with_live(&key.clone(), now, |shard, existing| {
            let mut stale = false;
            if let Some(cas) = compare_cas {
                match &existing {
                    None => return StoreOutcome::NotFound,
                    Some(item) if item.cas == cas => {}
                    Some(item) if invalidate && cas < item.cas => stale = true,
                    Some(_) => return StoreOutcome::Exists,
                }
            }
            let mut item = match (mode, existing) {
                (StoreMode::Add, Some(_)) => return StoreOutcome::NotStored,
                (StoreMode::Append | StoreMode::Prepend, None) => match vivify {
                    Some(ttl) => self.new_item(data, flags, self.expiry(ttl, now), now),
                    None => return StoreOutcome::NotStored,
                },
                (StoreMode::Replace, None) => return StoreOutcome::NotStored,
                (StoreMode::Append | StoreMode::Prepend, Some(item)) => {
                    if item.value.len() + data.len() > self.config.max_item_size {
                        return StoreOutcome::TooLarge;
                    }
                    let mut joined = BytesMut::with_capacity(item.value.len() + data.len());
                    if mode == StoreMode::Append {
                        joined.extend_from_slice(&item.value);
                        joined.extend_from_slice(&data);
                    } else {
                        joined.extend_from_slice(&data);
                        joined.extend_from_slice(&item.value);
                    }
                    // Append and prepend keep the item's flags and expiry.
                    let mut new = item.clone();
                    new.value = joined.freeze();
                    new.cas = self.cas();
                    new.stale = false;
                    new.win_sent = false;
                    new
                }
                _ => self.new_item(data, flags, self.expiry(exptime, now), now),
            };
            item.stale = stale;
            let cas = item.cas;
            self.insert(shard, key, item);
            StoreOutcome::Stored(cas)
        })
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &[u8]) -> bool {
        self.meta_delete(key, None, false, None) == DeleteOutcome::Deleted
    }

    /// A meta delete: with `invalidate` the item stays, marked stale (readers get `X` and one of them `W`), with
    /// its TTL set to `ttl` if given.
    pub fn meta_delete(
        &self,
        key: &[u8],
        compare_cas: Option<u64>,
        invalidate: bool,
        ttl: Option<i64>,
    ) -> DeleteOutcome {
        let now = self.now_ms();
        self.with_live(key, now, |shard, item| {
            let Some(item) = item else {
                return DeleteOutcome::NotFound;
            };
            if compare_cas.is_some_and(|cas| cas != item.cas) {
                return DeleteOutcome::Exists;
            }
            if invalidate {
                let cas = self.cas();
                let expires_at = ttl.map(|t| self.expiry(t, now));
                Self::update(shard, key, |item| {
                    item.stale = true;
                    item.win_sent = false;
                    item.cas = cas;
                    if let Some(expires_at) = expires_at {
                        item.expires_at = expires_at;
                    }
                });
            } else {
                shard.remove(key);
            }
            DeleteOutcome::Deleted
        })
    }

    /// `incr`/`decr` (text: no vivify, no CAS).
    pub fn arith(&self, key: &[u8], mode: ArithMode, delta: u64) -> ArithOutcome {
        self.meta_arith(key, mode, delta, None, None, None)
    }

    /// A meta arithmetic: `vivify` (`N` with `J`) creates an absent key with (TTL, initial value); `touch` (`T`)
    /// updates the TTL.
    pub fn meta_arith(
        &self,
        key: &[u8],
        mode: ArithMode,
        delta: u64,
        vivify: Option<(i64, u64)>,
        compare_cas: Option<u64>,
        touch: Option<i64>,
    ) -> ArithOutcome {
        let now = self.now_ms();
        let key = Bytes::copy_from_slice(key);
        self.with_live(&key.clone(), now, |shard, item| {
            let Some(item) = item else {
                let Some((ttl, initial)) = vivify else {
                    return ArithOutcome::NotFound;
                };
                let item = self.new_item(Bytes::from(initial.to_string()), 0, self.expiry(ttl, now), now);
                let (cas, expires_at) = (item.cas, item.expires_at);
                self.insert(shard, key, item);
                return ArithOutcome::Value {
                    number: initial,
                    cas,
                    ttl: Self::ttl_left(expires_at, now),
                };
            };
            if compare_cas.is_some_and(|cas| cas != item.cas) {
                return ArithOutcome::Exists;
            }
            let digits = item.value.iter().take_while(|b| b.is_ascii_digit()).count();
            let rest_is_space = item.value[digits..].iter().all(|&b| b == b' ');
            let number = match std::str::from_utf8(&item.value[..digits])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                Some(n) if digits > 0 && rest_is_space => n,
                _ => return ArithOutcome::NonNumeric,
            };
            let number = match mode {
                ArithMode::Incr => number.wrapping_add(delta),
                ArithMode::Decr => number.saturating_sub(delta),
            };
            let mut text = number.to_string().into_bytes();
            // Like memcached, a shorter result keeps the old length, padded with spaces.
            if text.len() < item.value.len() {
                text.resize(item.value.len(), b' ');
            }
            let mut new = item.clone();
            new.value = Bytes::from(text);
            new.cas = self.cas();
            if let Some(t) = touch {
                new.expires_at = self.expiry(t, now);
            }
            let (cas, expires_at) = (new.cas, new.expires_at);
            self.insert(shard, key, new);
            ArithOutcome::Value {
                number,
                cas,
                ttl: Self::ttl_left(expires_at, now),
            }
        })
    }

    /// Sets the expiration time of `key`; false if absent.
    pub fn touch(&self, key: &[u8], exptime: i64) -> bool {
        let now = self.now_ms();
        self.with_live(key, now, |shard, item| {
            if item.is_none() {
                return false;
            }
            let expires_at = self.expiry(exptime, now);
            Self::update(shard, key, |item| item.expires_at = expires_at);
            true
        })
    }

    /// A meta get: see [`MetaGetOptions`] for the win/lose/stale rules.
    pub fn meta_get(&self, key: &[u8], options: MetaGetOptions) -> Option<MetaHit> {
        let now = self.now_ms();
        self.with_live(key, now, |shard, item| {
            let Some(item) = item else {
                let ttl = options.vivify?;
                let mut item = self.new_item(Bytes::new(), 0, self.expiry(ttl, now), now);
                item.win_sent = true;
                let hit = MetaHit {
                    hit: Hit {
                        value: Bytes::new(),
                        flags: 0,
                        cas: item.cas,
                    },
                    ttl: Self::ttl_left(item.expires_at, now),
                    fetched_before: false,
                    last_access: 0,
                    win: true,
                    lost: false,
                    stale: false,
                };
                self.insert(shard, Bytes::copy_from_slice(key), item);
                return Some(hit);
            };
            let expires_at = match options.touch {
                Some(t) => self.expiry(t, now),
                None => item.expires_at,
            };
            let ttl = Self::ttl_left(expires_at, now);
            let lost = item.win_sent;
            let win = !item.win_sent
                && (item.stale || options.recache.is_some_and(|r| expires_at.is_some() && ttl < r));
            let hit = MetaHit {
                hit: Hit {
                    value: item.value.clone(),
                    flags: item.flags,
                    cas: item.cas,
                },
                ttl,
                fetched_before: item.fetched,
                last_access: now.saturating_sub(item.last_access) / 1000,
                win,
                lost,
                stale: item.stale,
            };
            Self::update(shard, key, |item| {
                item.fetched = true;
                item.last_access = now;
                item.expires_at = expires_at;
                item.win_sent |= win;
            });
            Some(hit)
        })
    }

    /// Item metadata (`me`).
    pub fn debug(&self, key: &[u8]) -> Option<DebugInfo> {
        let now = self.now_ms();
        self.with_live(key, now, |_, item| {
            item.map(|item| DebugInfo {
                ttl: Self::ttl_left(item.expires_at, now),
                last_access: now.saturating_sub(item.last_access) / 1000,
                cas: item.cas,
                fetched: item.fetched,
                size: key.len() as u64 + item.value.len() as u64 + ITEM_OVERHEAD,
            })
        })
    }

    /// Every live item's key and metadata, one shard at a time (each locked while it is copied), for
    /// `lru_crawler metadump`. Expired items are left out.
    pub(crate) fn dump(&self) -> Vec<(Bytes, DebugInfo)> {
        let now = self.now_ms();
        let mut items = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (key, item) in shard.iter() {
                if !self.alive(item, now) {
                    continue;
                }
                items.push((
                    key.clone(),
                    DebugInfo {
                        ttl: Self::ttl_left(item.expires_at, now),
                        last_access: now.saturating_sub(item.last_access) / 1000,
                        cas: item.cas,
                        fetched: item.fetched,
                        size: key.len() as u64 + item.value.len() as u64 + ITEM_OVERHEAD,
                    },
                ));
            }
        }
        items
    }

    /// `flush_all`: everything stored so far becomes invalid after `delay` seconds (at once for 0 or less).
    pub fn flush(&self, delay: i64) {
        if delay <= 0 {
            self.flush_at.store(u64::MAX, Ordering::Relaxed);
            for shard in self.shards.iter() {
                shard.lock().clear();
            }
        } else {
            let at = self.now_ms() + Duration::from_secs(delay as u64).as_millis() as u64;
            self.flush_at.store(at, Ordering::Relaxed);
        }
    }

    /// Number of items (expired ones not yet dropped included).
    pub fn items(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().len() as u64).sum()
    }

    /// Bytes used, by the same measure as the limit.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().weight()).sum()
    }

    /// Items evicted to make room since the start.
    pub fn evictions(&self) -> u64 {
        self.counters.evictions.load(Ordering::Relaxed)
    }

    /// Items stored since the start.
    pub fn total_items(&self) -> u64 {
        self.counters.total_items.load(Ordering::Relaxed)
    }
}
