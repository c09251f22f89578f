//! The three answers a checker gives.

use std::fmt;

/// A checker's answer, Jepsen's `:valid?`: true, false or `:unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The history satisfies the property.
    Valid,
    /// The history violates the property; the report says where.
    Invalid,
    /// The checker could not decide (a time or memory bound was reached, or a needed operation is missing).
    Unknown,
}

impl Verdict {
    /// The process exit code for this verdict: 0 valid, 1 invalid, 2 unknown.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }

    /// Combines two verdicts: invalid beats unknown, which beats valid.
    #[must_use]
    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Invalid, _) | (_, Verdict::Invalid) => Verdict::Invalid,
            (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
            _ => Verdict::Valid,
        }
    }
}

/// `VALID`, `INVALID` or `UNKNOWN`.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Valid => "VALID",
            Verdict::Invalid => "INVALID",
            Verdict::Unknown => "UNKNOWN",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict::{Invalid, Unknown, Valid};

    #[test]
    fn invalid_beats_unknown_beats_valid() {
        assert_eq!(Valid.and(Valid), Valid);
        assert_eq!(Valid.and(Unknown), Unknown);
        assert_eq!(Unknown.and(Invalid), Invalid);
        assert_eq!(Invalid.and(Valid), Invalid);
        assert_eq!([Valid, Invalid, Unknown].map(|v| v.exit_code()), [0, 1, 2]);
    }
}
