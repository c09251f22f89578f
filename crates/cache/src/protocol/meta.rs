//! Meta command flags: one letter, optionally followed by a token (`T30`, `Oabc`, `v`).

use bytes::Bytes;

/// One flag of a meta command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetaFlag {
    /// The flag letter.
    pub flag: u8,
    /// What followed the letter (empty for a bare flag).
    pub token: Bytes,
}

impl MetaFlag {
    /// A flag with a token.
    pub fn new(flag: u8, token: impl Into<Bytes>) -> Self {
        Self {
            flag,
            token: token.into(),
        }
    }
}

/// The flags of one meta command, in request order (return flags are answered in that order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaFlags(Vec<MetaFlag>);

impl MetaFlags {
    /// No flags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bare flag.
    pub fn with(mut self, flag: u8) -> Self {
        self.0.push(MetaFlag::new(flag, Bytes::new()));
        self
    }

    /// Adds a flag with a token.
    pub fn with_token(mut self, flag: u8, token: impl std::fmt::Display) -> Self {
        self.0.push(MetaFlag::new(flag, Bytes::from(token.to_string())));
        self
    }

    pub(crate) fn push(&mut self, flag: MetaFlag) {
        self.0.push(flag);
    }

    /// The flags in request order.
    pub fn iter(&self) -> impl Iterator<Item = &MetaFlag> {
        self.0.iter()
    }

    /// Whether `flag` was given.
    pub fn has(&self, flag: u8) -> bool {
        self.0.iter().any(|f| f.flag == flag)
    }

    /// The token of `flag`, if given (the last one if repeated).
    pub fn token(&self, flag: u8) -> Option<&[u8]> {
        self.0.iter().rev().find(|f| f.flag == flag).map(|f| &f.token[..])
    }

    /// The token of `flag` parsed as a number: `None` if absent, `Some(Err(()))` if not a number.
    pub fn number<T: std::str::FromStr>(&self, flag: u8) -> Option<Result<T, ()>> {
        self.token(flag).map(|token| {
            std::str::from_utf8(token)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(())
        })
    }
}

/// The flags each meta command accepts, as memcached 1.6.18 does (it answers any other with a `CLIENT_ERROR`; it
/// has no `E` and no `md ... x` yet).
pub(crate) const MG_FLAGS: &[u8] = b"bcfhklOqstuvNRT";
pub(crate) const MS_FLAGS: &[u8] = b"bcCFIkOqsSTMN";
pub(crate) const MD_FLAGS: &[u8] = b"bCIkOqT";
pub(crate) const MA_FLAGS: &[u8] = b"bCNJDTMOqtcvk";
