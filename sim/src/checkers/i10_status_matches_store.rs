//! I10: a NodeCertificateStatus answer never contradicts the store: the (state, certificate,
//! CSR) a client was told for a node is one that node held at some instant during the call —
//! not merely at some time (a stale answer from before the call would pass that).
//!
//! After convergence a prober asks every manager that is up for every node's status: a node
//! whose state stayed final (ISSUED, FAILED, ROTATE) through the call is answered at once, with
//! the top-level status equal to the certificate's; a node that never existed is `NotFound`;
//! an empty ID is `InvalidArgument`.

use std::time::Duration;

use tonic::Code;

use crate::mirror::Mirror;
use crate::prober::{ProbeObs, UNKNOWN_NODE};
use crate::shared::{lock, Shared, StatusObs};

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

/// Judges the prober's calls (and records its answers for [`check`]).
pub fn check_probes(m: &Mirror, shared: &Shared, probes: &[ProbeObs]) {
    let answered = probes.iter().filter(|p| p.result.is_ok()).count();
    shared.log.push(format!("probe: {answered} of {} status calls answered", probes.len()));
    for p in probes {
        let who = format!("manager-{} asked for node {:?}", p.manager, p.node);
        let expected_code = if p.node.is_empty() {
            Some(Code::InvalidArgument)
        } else if p.node == UNKNOWN_NODE {
            Some(Code::NotFound)
        } else {
            None
        };
        match (&p.result, expected_code) {
            (Err(code), Some(want)) if *code == want => {}
            (other, Some(want)) => shared
                .violation("I10", format!("{who}: answered {:?}, want {want:?}", other.as_ref().map(|_| ()))),
            (Ok((top, inner, cert, csr)), None) => {
                if top != inner {
                    shared.violation(
                        "I10",
                        format!("{who}: top-level status {top:?} differs from the certificate's {inner:?}"),
                    );
                }
                if !matches!(inner.0, 3..=5) {
                    shared.violation("I10", format!("{who}: answered non-final state {}", inner.0));
                }
                shared.coverage.hit("probe.final_status_answered");
                lock(&shared.statuses).push(StatusObs {
                    node: p.node.clone(),
                    start: p.start,
                    end: p.end,
                    state: inner.0,
                    cert_digest: cert.clone(),
                    csr_digest: csr.clone(),
                });
            }
            (Err(code), None) => {
                // Final (and present) from before the call to after it: nothing to wait for.
                let final_throughout = m.history.get(&p.node).is_some_and(|h| {
                    h.iter().enumerate().any(|(i, (from, (state, ..)))| {
                        let until = h.get(i + 1).map(|(t, _)| *t);
                        matches!(state, 3..=5) && *from <= p.start && until.is_none_or(|u| u > p.end + GRACE)
                    })
                }) && m.nodes.contains_key(&p.node);
                if final_throughout {
                    shared.violation(
                        "I10",
                        format!(
                            "{who}: {code:?} although the node was final from before the call to after it"
                        ),
                    );
                }
            }
        }
    }
}
