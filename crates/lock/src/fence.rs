//! The resource's half of fencing: remember the highest token accepted and refuse older ones.

use std::sync::Mutex;

/// A fencing token: the create revision of a lock holder's key. Later holders have larger tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with the given value (as sent over the wire to the protected resource).
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    pub const fn value(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A write was refused because a newer holder already wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fencing token {offered} is stale: the resource already accepted {highest}")]
pub struct StaleToken {
    /// The token that came with the write.
    pub offered: FencingToken,
    /// The highest token accepted so far.
    pub highest: FencingToken,
}

/// Lives next to the protected resource (a file, a table, a device) and admits a write only if its token is at
/// least the highest one seen. A holder that paused past its lease, woke up and wrote anyway carries an older
/// token than whoever took the lock next, and is refused: the lock service alone cannot stop that write, only the
/// resource can.
///
/// The check and the write must be one atomic step at the resource: [`FenceGate::write`] runs the write under
/// the gate's own mutex. If the resource is a database, store the highest token in it and compare inside its
/// transaction instead; persist it if the resource outlives the process ([`FenceGate::starting_at`] restores it).
#[derive(Debug, Default)]
pub struct FenceGate {
    highest: Mutex<Option<FencingToken>>,
}

impl FenceGate {
    /// A gate that has seen no token.
    pub fn new() -> Self {
        Self::default()
    }

    /// A gate that already accepted `highest` (restored from the resource's own storage).
    pub fn starting_at(highest: FencingToken) -> Self {
        Self {
            highest: Mutex::new(Some(highest)),
        }
    }

    /// The highest token accepted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        *self
            .highest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `write` if `token` is not older than any accepted before, and records it; refuses otherwise. The
    /// same holder may write many times with its token. Writes run one at a time.
    pub fn write<R>(&self, token: FencingToken, write: impl FnOnce() -> R) -> Result<R, StaleToken> {
        let mut highest = self
            .highest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(seen) = *highest
            && token < seen
        {
            return Err(StaleToken {
                offered: token,
                highest: seen,
            });
        }
        *highest = Some(token);
        Ok(write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a model: a write is admitted exactly when its token is at least the maximum admitted so far.
        #[test]
        fn admits_exactly_the_non_stale(tokens in proptest::collection::vec(0u64..50, 1..100)) {
            let gate = FenceGate::new();
            let mut max_admitted: Option<u64> = None;
            let mut log = Vec::new();
            for t in tokens {
                let admitted = gate.write(FencingToken::new(t), || log.push(t)).is_ok();
                let expected = max_admitted.is_none_or(|m| t >= m);
                prop_assert_eq!(admitted, expected);
                if admitted {
                    max_admitted = Some(t);
                }
            }
            prop_assert!(log.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn a_stale_writer_is_told_who_won() {
        let gate = FenceGate::starting_at(FencingToken::new(40));
        let refused = gate.write(FencingToken::new(33), || ());
        assert_eq!(
            refused,
            Err(StaleToken {
                offered: FencingToken::new(33),
                highest: FencingToken::new(40)
            })
        );
        assert_eq!(gate.write(FencingToken::new(41), || 7), Ok(7));
        assert_eq!(gate.highest(), Some(FencingToken::new(41)));
    }
}
