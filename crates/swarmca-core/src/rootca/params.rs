//! Validity periods, digests and PEM normalization every CA of a cluster agrees on.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::pemutil;

/// Default node certificate validity (90 days).
pub const DEFAULT_NODE_CERT_EXPIRY: Duration = Duration::from_secs(2160 * 3600);
/// Shortest node certificate validity; anything shorter is replaced by the default.
pub const MIN_NODE_CERT_EXPIRY: Duration = Duration::from_secs(3600);
/// How far NotBefore is moved into the past to absorb clock skew.
pub const CERT_BACKDATE: Duration = Duration::from_secs(3600);
/// Validity of a generated root (20 years).
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(630_720_000);
/// Common name of a generated root.
pub const DEFAULT_ROOT_CN: &str = "swarm-ca";

/// The node certificate validity actually used for a configured `expiry`.
///
/// Below [`MIN_NODE_CERT_EXPIRY`], or when unset, it is [`DEFAULT_NODE_CERT_EXPIRY`]: the
/// value is replaced, not clamped, as in SwarmKit's `SigningPolicy`.
pub fn effective_expiry(expiry: Option<Duration>) -> Duration {
    match expiry {
        Some(e) if e >= MIN_NODE_CERT_EXPIRY => e,
        _ => DEFAULT_NODE_CERT_EXPIRY,
    }
}

/// The node certificate validity a cluster asks for (`spec.ca_config.node_cert_expiry`),
/// through [`effective_expiry`]: absent, unparsable or under 1 h gives the default.
pub fn cluster_cert_expiry(cluster: &swarmca_types::Cluster) -> Duration {
    effective_expiry(
        cluster
            .spec
            .as_ref()
            .and_then(|s| s.ca_config.as_ref())
            .and_then(|ca| ca.node_cert_expiry.as_ref())
            .and_then(|d| Duration::try_from(*d).ok()),
    )
}

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 of `bytes` written as `sha256:<lowercase hex>`.
pub fn digest_string(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(digest(bytes)))
}

/// SwarmKit `NormalizePEMs`: trims whitespace, re-encodes every PEM block (of any type)
/// without headers, and stops at the first point where no further block is found.
pub fn normalize_pems(pem: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some((block, after)) = pemutil::decode(pemutil::trim_space(rest)) {
        out.extend_from_slice(&pemutil::encode(&block.label, &block.der));
        rest = after;
    }
    out
}
