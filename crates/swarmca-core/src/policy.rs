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
}
