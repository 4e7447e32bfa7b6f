//! Signing decisions of the CA server (SwarmKit `evaluateAndSignNodeCert`, `isFinalState`).

use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{Certificate, IssuanceStatus, Node};

/// Whether the CA should sign a node's pending CSR.
///
/// `membership` is `NodeSpec.membership` and `state` is `IssuanceStatus.state`. A RENEW is
/// signed whatever the membership; a PENDING is signed only for an ACCEPTED node; nothing
/// else is signed (ISSUED/ROTATE are already done, FAILED is terminal, UNKNOWN is ignored).
pub fn should_sign(membership: i32, state: i32) -> bool {
    match State::try_from(state) {
        Ok(State::Renew) => true,
        Ok(State::Pending) => membership == Membership::Accepted as i32,
        _ => false,
    }
}

/// Whether an issuance state is final: ISSUED, FAILED or ROTATE.
pub fn is_final_state(state: i32) -> bool {
    matches!(State::try_from(state), Ok(State::Issued | State::Failed | State::Rotate))
}

/// The certificate record of a renewal request for `node` with `csr`: RENEW, no certificate
/// bytes, the node's current role, and its ID as CN.
pub fn renew_request(node: &Node, csr: Vec<u8>) -> Certificate {
    Certificate {
        role: node.role,
        csr,
        status: Some(IssuanceStatus { state: State::Renew as i32, err: String::new() }),
        certificate: Vec::new(),
        cn: node.id.clone(),
    }
}

/// NotAfter (seconds since the Unix epoch) of the first certificate of a PEM bundle.
pub fn leaf_not_after(pem: &[u8]) -> Option<i64> {
    use x509_parser::prelude::FromDer as _;
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&p.contents).ok()?;
    Some(c.validity().not_after.timestamp())
}

/// Notes on `node` that it was issued `cert_pem`: [`Node::certificates_valid_until`] becomes
/// the later of what it was and the certificate's NotAfter.
pub fn note_issued(node: &mut Node, cert_pem: &[u8]) {
    let Some(not_after) = leaf_not_after(cert_pem) else { return };
    let before = node.certificates_valid_until.as_ref().map_or(i64::MIN, |t| t.seconds);
    if not_after > before {
        node.certificates_valid_until =
            Some(swarmca_types::prost_types::Timestamp { seconds: not_after, nanos: 0 });
    }
}

/// How long a removed node's blacklist entry must last (seconds since the Unix epoch): until
/// every certificate it was ever issued has expired, as far as the node record tells (its
/// current certificate, and what [`note_issued`] recorded). `None` when nothing tells: such an
/// entry never expires.
pub fn blacklist_until(node: &Node) -> Option<i64> {
    let current = node.certificate.as_ref().and_then(|c| leaf_not_after(&c.certificate));
    let recorded = node.certificates_valid_until.as_ref().map(|t| t.seconds);
    current.max(recorded)
}

/// The issuance state of `node`'s certificate (0, UNKNOWN, when it has none).
pub fn issuance_state(node: &Node) -> i32 {
    node.certificate.as_ref().and_then(|c| c.status.as_ref()).map_or(0, |s| s.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [State; 6] =
        [State::Unknown, State::Renew, State::Pending, State::Issued, State::Failed, State::Rotate];

    #[test]
    fn decision_table_matches_swarmkit() {
        for m in [Membership::Pending, Membership::Accepted] {
            for s in ALL_STATES {
                let expected = matches!((m, s), (_, State::Renew) | (Membership::Accepted, State::Pending));
                assert_eq!(should_sign(m as i32, s as i32), expected, "{m:?} {s:?}");
            }
        }
        // Unknown enum values never sign.
        assert!(!should_sign(1, 99));
        assert!(!should_sign(1, -1));
        assert!(should_sign(7, State::Renew as i32));
        assert!(!should_sign(7, State::Pending as i32));
    }

    #[test]
    fn final_states() {
        for s in ALL_STATES {
            let expected = matches!(s, State::Issued | State::Failed | State::Rotate);
            assert_eq!(is_final_state(s as i32), expected, "{s:?}");
        }
        assert!(!is_final_state(42));
    }

    /// A signed leaf for `node1`, valid for `expiry` from `t0`.
    fn leaf(
        root: &crate::rootca::GeneratedRoot,
        t0: std::time::SystemTime,
        expiry: std::time::Duration,
    ) -> Vec<u8> {
        let ca = crate::rootca::RootCa::new(&root.cert_pem, &root.cert_pem, &root.key_pem, expiry, b"", t0)
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
        ca.sign_csr(csr.as_bytes(), "node1", crate::role::Role::Worker, "org", t0, [1; 20]).unwrap()
    }

    #[test]
    fn a_removed_nodes_blacklist_lasts_until_its_longest_lived_certificate_expires() {
        use std::time::{Duration, UNIX_EPOCH};
        const HOUR: Duration = Duration::from_secs(3600);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_017);
        let root = crate::rootca::generate_root("swarm-ca", t0, [0x42; 20]).unwrap();
        let (long, short) = (leaf(&root, t0, 8 * HOUR), leaf(&root, t0, HOUR));
        // NotAfter = now (to the minute) − 1 h backdate + 1 h + expiry.
        let na = leaf_not_after(&long).unwrap();
        assert!((na - (1_700_000_017 + 8 * 3600)).abs() <= 30, "{na}");
        let mut node = Node::default();
        assert_eq!(blacklist_until(&node), None, "nothing known: the entry never expires");
        note_issued(&mut node, &long);
        // The validity was shortened since: the later certificate expires first.
        note_issued(&mut node, &short);
        node.certificate = Some(Certificate { certificate: short.clone(), ..Default::default() });
        assert_eq!(blacklist_until(&node), leaf_not_after(&long));
        // In the middle of a renewal (no certificate stored), what was recorded still counts.
        node.certificate = Some(Certificate::default());
        assert_eq!(blacklist_until(&node), leaf_not_after(&long));
        // A node recorded before this was kept: its current certificate.
        let old = Node {
            certificate: Some(Certificate { certificate: short.clone(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(blacklist_until(&old), leaf_not_after(&short));
    }
}
