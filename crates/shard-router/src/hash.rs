//! The stable hash that places keys and virtual nodes on the ring.

use std::hash::{BuildHasher, Hasher};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The ring position of a key: a fixed function of the key's bytes.
///
/// Every process that routes with this crate computes the same position for the same bytes, on every platform and
/// with every Rust version, so clients and servers agree on owners without talking to each other. The function is
/// 64-bit FNV-1a followed by the MurmurHash3 `fmix64` finaliser (FNV alone spreads short keys poorly over the high
/// bits that decide ring order). It is not keyed: whoever can choose keys can aim them at one node. Bounded-load
/// mode ([`BoundedLoad`](crate::BoundedLoad)) and the hot-key split ([`HotKeySplit`](crate::HotKeySplit)) limit the
/// damage.
///
/// ```
/// use trestle_shard_router::key_position;
///
/// assert_eq!(key_position("user:42"), key_position(b"user:42"));
/// assert_ne!(key_position("user:42"), key_position("user:43"));
/// ```
#[inline]
#[must_use]
pub fn key_position(key: impl AsRef<[u8]>) -> u64 {
    hash_bytes(key.as_ref())
}

#[inline]
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = RingHasher::default();
    h.write(bytes);
    h.finish()
}

/// Mixes two 64-bit values into one well-spread value (used by rendezvous scores and jump-hash replica salts).
#[inline]
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    fmix64(a ^ fmix64(b.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

#[inline]
fn fmix64(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// A streaming [`Hasher`] computing [`key_position`]; integers are written little-endian so that the result does
/// not depend on the platform.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingHasher(u64);

impl Default for RingHasher {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl Hasher for RingHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.write(&i.to_le_bytes());
    }

    #[inline]
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

/// Builds [`RingHasher`]s (lets `consistent_hash_ring` serve as the reference model in tests).
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct RingBuildHasher;

impl BuildHasher for RingBuildHasher {
    type Hasher = RingHasher;

    fn build_hasher(&self) -> RingHasher {
        RingHasher::default()
    }
}

/// The next virtual-node position in a node's chain: the same chain `consistent_hash_ring` builds
/// (`h0 = hash(node)`, `h(i+1) = hash(h(i))`).
#[inline]
pub(crate) fn next_vnode(h: u64) -> u64 {
    hash_bytes(&h.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_pinned() {
        // Routing must not change between releases: these values are part of the wire contract (computed
        // independently: 64-bit FNV-1a, then MurmurHash3 fmix64).
        assert_eq!(key_position(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(key_position("user:42"), 0x9988_17be_e671_8248);
        assert_eq!(key_position(String::from("user:42")), key_position(b"user:42"));
        // A node's first two ring points.
        let first = key_position("node-0");
        assert_eq!(first, 0x74bd_04f6_e09f_ed6d);
        assert_eq!(next_vnode(first), 0xbd65_a774_cb20_3e47);
    }
}
