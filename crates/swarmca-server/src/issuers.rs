//! Which root a node's certificate must come from, and whether it does: what the rotation
//! reconciler converges on and what the control API reports. Decisions only, no IO.

use swarmca_core::rootca::issuer_info_of_cert_pem;
use swarmca_store::Node;
use swarmca_types::{Cluster, RootCa as ApiRootCa};

/// The issuer a converged node reports: raw subject DER and SubjectPublicKeyInfo DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerId {
    /// Raw subject DER.
    pub subject: Vec<u8>,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
}

/// The root new certificates are issued from: the rotation target during a rotation, else the
/// current root.
pub fn signing_root(root: &ApiRootCa) -> &[u8] {
    root.root_rotation.as_ref().map_or(&root.ca_cert, |r| &r.ca_cert)
}

/// What this manager's listener verifies clients against: the cluster root, and the rotation
/// target during a rotation.
pub fn trust_pem(root: &ApiRootCa) -> Vec<u8> {
    let mut pem = root.ca_cert.clone();
    if let Some(r) = &root.root_rotation {
        pem.push(b'\n');
        pem.extend_from_slice(&r.ca_cert);
    }
    pem
}

/// The issuer nodes must report for `root`: the rotation target during a rotation, else the
/// current root (first certificate of the bundle).
pub fn desired_issuer(root: &ApiRootCa) -> Option<IssuerId> {
    let (subject, public_key) = issuer_info_of_cert_pem(signing_root(root)).ok()?;
    Some(IssuerId { subject, public_key })
}

/// SwarmKit `hasIssuer`: the node's TLS info names exactly `issuer`.
pub fn has_issuer(node: &Node, issuer: &IssuerId) -> bool {
    node.description.as_ref().and_then(|d| d.tls_info.as_ref()).is_some_and(|t| {
        t.cert_issuer_subject == issuer.subject && t.cert_issuer_public_key == issuer.public_key
    })
}

/// The issuers a node's TLS info is compared with.
#[derive(Debug, Default, Clone)]
pub(crate) struct IssuerView {
    current: Option<IssuerId>,
    target: Option<IssuerId>,
}

impl IssuerView {
    pub(crate) fn of(c: &Cluster) -> IssuerView {
        let root = c.root_ca.clone().unwrap_or_default();
        let current = issuer_info_of_cert_pem(&root.ca_cert)
            .ok()
            .map(|(subject, public_key)| IssuerId { subject, public_key });
        let target = root.root_rotation.as_ref().and(desired_issuer(&root));
        IssuerView { current, target }
    }

    /// "new", "old", "current", "other" or "unknown" (see the admin proto).
    pub(crate) fn state_of(&self, n: &Node) -> &'static str {
        let reported = n.description.as_ref().and_then(|d| d.tls_info.as_ref());
        if reported.is_none_or(|t| t.cert_issuer_public_key.is_empty()) {
            return "unknown";
        }
        let is = |i: &Option<IssuerId>| i.as_ref().is_some_and(|i| has_issuer(n, i));
        match (&self.target, is(&self.target), is(&self.current)) {
            (Some(_), true, _) => "new",
            (Some(_), false, _) => "old",
            (None, _, true) => "current",
            (None, _, false) => "other",
        }
    }
}
