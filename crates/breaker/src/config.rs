//! The configuration error shared by every `validate()`.

use std::time::Duration;

/// A configuration value was rejected by `validate()`. Each variant names the field and carries the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A percentage threshold was outside its allowed range (or not a number).
    #[error("`{field}` must be a percentage in {range}, got {value}")]
    PercentOutOfRange {
        /// The field.
        field: &'static str,
        /// The accepted range, for the message: `[0, 100]` or `(0, 100]`.
        range: &'static str,
        /// The offending value.
        value: f64,
    },
    /// A count that must be positive was zero.
    #[error("`{field}` must be greater than zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// A duration that must be positive was zero.
    #[error("`{field}` must be a positive duration, got {value:?}")]
    ZeroDuration {
        /// The field.
        field: &'static str,
        /// The offending value.
        value: Duration,
    },
    /// A number was outside its allowed range.
    #[error("`{field}` must be in {range}, got {value}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The allowed range, for the message.
        range: &'static str,
        /// The offending value.
        value: f64,
    },
    /// Two fields contradict each other.
    #[error("`{field}` ({value}) must not exceed `{limit_field}` ({limit})")]
    Exceeds {
        /// The field that is too large.
        field: &'static str,
        /// Its value.
        value: u128,
        /// The field it must not exceed.
        limit_field: &'static str,
        /// That field's value.
        limit: u128,
    },
}

pub(crate) fn percent(field: &'static str, value: f64, allow_zero: bool) -> Result<(), ConfigError> {
    let (ok, range) = if allow_zero {
        ((0.0..=100.0).contains(&value), "[0, 100]")
    } else {
        (value > 0.0 && value <= 100.0, "(0, 100]")
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::PercentOutOfRange { field, range, value })
    }
}

pub(crate) fn positive(field: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::Zero { field })
    } else {
        Ok(())
    }
}

pub(crate) fn positive_duration(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(ConfigError::ZeroDuration { field, value })
    } else {
        Ok(())
    }
}

pub(crate) fn not_above(
    field: &'static str,
    value: u128,
    limit_field: &'static str,
    limit: u128,
) -> Result<(), ConfigError> {
    if value > limit {
        Err(ConfigError::Exceeds {
            field,
            value,
            limit_field,
            limit,
        })
    } else {
        Ok(())
    }
}

/// `instant + duration`, or a point decades away if that is not representable (a huge but valid configured duration
/// must not panic).
pub(crate) fn saturating_add<I>(instant: I, duration: std::time::Duration) -> I
where
    I: Copy + CheckedAdd,
{
    const DECADES: Duration = Duration::from_secs(86_400 * 365 * 30);
    instant
        .checked_add_duration(duration)
        .or_else(|| instant.checked_add_duration(DECADES))
        .unwrap_or(instant)
}

/// The instants [`saturating_add`] works on.
pub(crate) trait CheckedAdd: Sized {
    fn checked_add_duration(self, d: Duration) -> Option<Self>;
}

impl CheckedAdd for std::time::Instant {
    fn checked_add_duration(self, d: Duration) -> Option<Self> {
        self.checked_add(d)
    }
}

impl CheckedAdd for tokio::time::Instant {
    fn checked_add_duration(self, d: Duration) -> Option<Self> {
        self.checked_add(d)
    }
}
