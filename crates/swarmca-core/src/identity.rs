//! The identity carried by a verified node certificate.

/// Identity read from a verified peer certificate's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node ID (the subject CN).
    pub node_id: String,
    /// Every OU in the subject, in order; SwarmKit's `Role()` is the first.
    pub roles: Vec<String>,
    /// The cluster ID (the first O).
    pub org: String,
}

impl PeerIdentity {
    /// Whether the certificate carries the OU `ou` (exact match, like SwarmKit's
    /// intersection check).
    pub fn has_role(&self, ou: &str) -> bool {
        self.roles.iter().any(|r| r == ou)
    }
}
