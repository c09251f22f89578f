//! Configuration of a [`ShardMap`](crate::ShardMap).

use crate::ShardError;

/// Virtual nodes per unit of weight used by [`ShardMapConfig::default`].
///
/// Chosen by measurement (see the crate README): over five sets of 100 equal nodes, 2000 points each kept the
/// standard deviation of the nodes' ring shares at or below 2.6% of the mean and the peak at or below 1.07× the
/// mean (1M keys in the README's benchmark: 2.4% and 1.07×). 1000 points gave up to 3.3% and 1.12×, missing the
/// 1.10× goal; ketama's 160 gives about 8% and 1.2×, and `consistent_hash_ring`'s default of 10 about 33%
/// and 1.9×. The price is memory and build time: 12 bytes per point (2.4 MB at 100 nodes) plus a lookup index
/// of up to 4 MiB, and a sort of all points on every membership change (19 ms at 100 nodes in the README's
/// benchmark).
///
/// At 1000 nodes the default makes 2M points, 24 MB plus the 4 MiB index (arithmetic, not measured); lower
/// [`ShardMapConfig::vnodes_per_weight`] there if memory matters more than the last percent of spread.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 2000;

/// The most virtual nodes one map may hold (sum of weight × virtual nodes per weight): 16 Mi points, 192 MiB.
pub const MAX_TOTAL_VNODES: u64 = 1 << 24;

/// How a [`ShardMap`](crate::ShardMap) places nodes and picks replicas.
///
/// ```
/// use trestle_shard_router::ShardMapConfig;
///
/// let config = ShardMapConfig::default().with_vnodes_per_weight(200).with_zone_aware(false);
/// assert!(config.validate().is_ok());
/// assert!(ShardMapConfig::default().with_vnodes_per_weight(0).validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardMapConfig {
    /// Virtual nodes (ring points) per unit of node weight. Default [`DEFAULT_VNODES_PER_WEIGHT`]; must be ≥ 1.
    pub vnodes_per_weight: u32,
    /// Whether [`ShardMap::replicas`](crate::ShardMap::replicas) spreads replicas over distinct zones before
    /// repeating one. Default `true`; it changes nothing when no node has a zone.
    pub zone_aware: bool,
}

impl Default for ShardMapConfig {
    fn default() -> Self {
        Self {
            vnodes_per_weight: DEFAULT_VNODES_PER_WEIGHT,
            zone_aware: true,
        }
    }
}

impl ShardMapConfig {
    /// Sets [`vnodes_per_weight`](Self::vnodes_per_weight).
    #[must_use]
    pub fn with_vnodes_per_weight(mut self, vnodes: u32) -> Self {
        self.vnodes_per_weight = vnodes;
        self
    }

    /// Sets [`zone_aware`](Self::zone_aware).
    #[must_use]
    pub fn with_zone_aware(mut self, zone_aware: bool) -> Self {
        self.zone_aware = zone_aware;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ShardError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ShardError> {
        if self.vnodes_per_weight == 0 {
            return Err(ShardError::InvalidConfig {
                field: "vnodes_per_weight",
                value: self.vnodes_per_weight.to_string(),
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}
