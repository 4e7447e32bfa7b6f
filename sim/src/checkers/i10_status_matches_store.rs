//! I10: a NodeCertificateStatus answer never contradicts the store: the (state, certificate,
//! CSR) a client was told for a node is one that node held at some instant during the call —
//! not merely at some time (a stale answer from before the call would pass that).

use std::time::Duration;

use crate::mirror::Mirror;
use crate::shared::{lock, Shared};

/// How far the mirror's clock may lag a commit (it sees events in the same simulated instant
/// unless the scheduler runs it later).
const GRACE: Duration = Duration::from_secs(1);

pub fn check(m: &Mirror, shared: &Shared) {
    for s in lock(&shared.statuses).iter() {
        let want = (s.state, s.cert_digest.clone(), s.csr_digest.clone());
        let held = m.history.get(&s.node).is_some_and(|h| {
            h.iter().enumerate().any(|(i, (from, value))| {
                let until = h.get(i + 1).map(|(t, _)| *t);
                *value == want && *from <= s.end + GRACE && until.is_none_or(|u| u + GRACE >= s.start)
            })
        });
        if !held {
            shared.violation(
                "I10",
                format!(
                    "status of node {} answered state {} cert {} that the store did not hold during the call",
                    s.node, s.state, s.cert_digest
                ),
            );
        }
    }
}
