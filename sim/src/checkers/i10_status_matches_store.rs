//! I10: a NodeCertificateStatus answer never contradicts the store: every (state, certificate,
//! CSR) a client was told for a node is one that node held at some point.

use crate::mirror::Mirror;
use crate::shared::{lock, Shared};

pub fn check(m: &Mirror, shared: &Shared) {
    for s in lock(&shared.statuses).iter() {
        let held = m
            .history
            .get(&s.node)
            .is_some_and(|h| h.contains(&(s.state, s.cert_digest.clone(), s.csr_digest.clone())));
        if !held {
            shared.violation(
                "I10",
                format!(
                    "status of node {} answered state {} cert {} that the store never held",
                    s.node, s.state, s.cert_digest
                ),
            );
        }
    }
}
