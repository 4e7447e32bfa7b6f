//! I5 (liveness): after the faults heal, every accepted node that asked for a certificate ends
//! ISSUED or FAILED within the liveness budget. The run loop waits; this reports what is left.

use crate::mirror::Mirror;
use crate::shared::Shared;

/// Nodes still waiting: accepted membership in RENEW or PENDING — except requests the fake
/// external CA refuses recoverably forever (they must wait, and must not block the others).
pub fn waiting(m: &Mirror, shared: &Shared) -> Vec<String> {
    let poison = shared.opts.external_ca && shared.opts.extca_poison;
    m.nodes
        .values()
        .filter(|n| n.spec.as_ref().is_some_and(|s| s.membership == 1))
        .filter(|n| matches!(super::state(n), 1 | 2))
        .filter(|n| !(poison && n.certificate.as_ref().is_some_and(|c| crate::extca::poisoned(&c.csr))))
        .map(|n| n.id.clone())
        .collect()
}

pub fn check(m: &Mirror, shared: &Shared) {
    let w = waiting(m, shared);
    if !w.is_empty() {
        shared.violation(
            "I5",
            format!(
                "{} node(s) never signed after heal: {:?}",
                w.len(),
                w.iter().take(5).collect::<Vec<_>>()
            ),
        );
    }
}
