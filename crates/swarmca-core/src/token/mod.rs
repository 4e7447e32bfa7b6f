//! Join tokens (SwarmKit `ca/config.go`).
//!
//! Format v1 is `SWMTKN-1-<D>-<S>`, v2 (FIPS clusters) is `SWMTKN-2-1-<D>-<S>`. `<D>` is the
//! SHA-256 digest of the exact root PEM bundle in base 36, zero-padded to 50 characters;
//! `<S>` is a 16-byte secret in base 36, zero-padded to 25 characters.

use subtle::ConstantTimeEq;

use crate::base36;
use crate::entropy::{Entropy, EntropyError};

/// Fixed first part of every token.
pub const TOKEN_PREFIX: &str = "SWMTKN";
/// Length of the digest part.
pub const DIGEST_LEN: usize = 50;
/// Length of the secret part.
pub const SECRET_LEN: usize = 25;

/// Generates a join token for a root whose digest is `root_digest`.
///
/// `fips` selects format v2. The secret is 16 bytes drawn from `e`.
pub fn generate_join_token(
    root_digest: &[u8; 32],
    fips: bool,
    e: &mut dyn Entropy,
) -> Result<String, EntropyError> {
    let mut secret = [0u8; 16];
    e.fill(&mut secret)?;
    Ok(format_join_token(root_digest, &secret, fips))
}

/// The deterministic part of [`generate_join_token`].
pub fn format_join_token(root_digest: &[u8; 32], secret: &[u8; 16], fips: bool) -> String {
    let version = if fips { "2-1" } else { "1" };
    format!(
        "{TOKEN_PREFIX}-{version}-{}-{}",
        base36::encode_padded(root_digest, DIGEST_LEN),
        base36::encode_padded(secret, SECRET_LEN)
    )
}

/// What a joining node learns from a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedJoinToken {
    /// SHA-256 of the root CA PEM bundle the node must trust.
    pub root_digest: [u8; 32],
    /// Whether the cluster is in FIPS mode (format v2 with flag `1`).
    pub fips: bool,
}

/// Why a join token is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Fewer than four `-`-separated parts.
    #[error("invalid join token: too few parts")]
    TooFewParts,
    /// The first part is not `SWMTKN`.
    #[error("invalid join token: prefix is not SWMTKN")]
    WrongPrefix,
    /// A version other than 1 or 2.
    #[error("invalid join token: unsupported version {0:?}")]
    UnsupportedVersion(String),
    /// Wrong number of parts for the version.
    #[error("invalid join token: version {version} needs {expected} parts, got {got}")]
    WrongPartCount {
        /// The token version.
        version: u8,
        /// The number of parts that version needs.
        expected: usize,
        /// The number of parts found.
        got: usize,
    },
    /// The v2 FIPS flag is not `0` or `1`.
    #[error("invalid join token: FIPS flag must be 0 or 1")]
    BadFipsFlag,
    /// The digest part is not 50 characters.
    #[error("invalid join token: digest part has {0} characters, expected 50")]
    BadDigestLength(usize),
    /// The secret part is not 25 characters.
    #[error("invalid join token: secret part has {0} characters, expected 25")]
    BadSecretLength(usize),
    /// The digest part has a character outside `0-9a-zA-Z`.
    #[error("invalid join token: digest part is not base 36")]
    NonBase36Digest,
    /// The secret part has a character outside `0-9a-zA-Z`.
    #[error("invalid join token: secret part is not base 36")]
    NonBase36Secret,
    /// The digest part encodes a value of 2^256 or more.
    #[error("invalid join token: digest part is out of range")]
    DigestOutOfRange,
}

/// Parses a join token as a joining node does (SwarmKit `ParseJoinToken`).
///
/// Accepts `SWMTKN-1-D-S` and `SWMTKN-2-{0,1}-D-S`; letters of either case are accepted.
/// Unlike Go, characters outside base 36 are rejected explicitly.
pub fn parse_join_token(s: &str) -> Result<ParsedJoinToken, TokenError> {
    let parts: Vec<&str> = s.split('-').collect();
    let (prefix, version, rest) = match parts.as_slice() {
        [prefix, version, rest @ ..] if rest.len() >= 2 => (*prefix, *version, rest),
        _ => return Err(TokenError::TooFewParts),
    };
    if prefix != TOKEN_PREFIX {
        return Err(TokenError::WrongPrefix);
    }
    let (fips, digest, secret) = match (version, rest) {
        ("1", [digest, secret]) => (false, *digest, *secret),
        ("1", _) => return Err(TokenError::WrongPartCount { version: 1, expected: 4, got: parts.len() }),
        ("2", [flag, digest, secret]) => {
            let fips = match *flag {
                "0" => false,
                "1" => true,
                _ => return Err(TokenError::BadFipsFlag),
            };
            (fips, *digest, *secret)
        }
        ("2", _) => return Err(TokenError::WrongPartCount { version: 2, expected: 5, got: parts.len() }),
        (other, _) => return Err(TokenError::UnsupportedVersion(other.to_string())),
    };
    if secret.len() != SECRET_LEN {
        return Err(TokenError::BadSecretLength(secret.len()));
    }
    if digest.len() != DIGEST_LEN {
        return Err(TokenError::BadDigestLength(digest.len()));
    }
    if !secret.bytes().all(|c| base36::digit_value(c).is_some()) {
        return Err(TokenError::NonBase36Secret);
    }
    let root_digest = base36::decode_256(digest).map_err(|e| match e {
        base36::DecodeError::InvalidDigit => TokenError::NonBase36Digest,
        base36::DecodeError::Overflow => TokenError::DigestOutOfRange,
    })?;
    Ok(ParsedJoinToken { root_digest, fips })
}

/// Compares a configured token with a presented one in constant time (for equal lengths).
///
/// An empty configured token never matches, not even an empty presented token.
pub fn token_matches(configured: &str, presented: &str) -> bool {
    if configured.is_empty() {
        return false;
    }
    bool::from(configured.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests;
