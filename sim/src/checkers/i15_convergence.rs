//! I15 (convergence): once the faults heal, every role change reaches the node and its
//! certificate. Every node still in the store that a client holds and whose certificate is
//! ISSUED has the role the operator asked for (`role == desired_role`), and its certificate
//! carries that role. The harness waits for it in the liveness phase as it waits for pending
//! requests; what is still behind when the budget is spent is a violation.

use swarmca_store::Node;

use super::state;
use crate::mirror::Mirror;
use crate::shared::{lock, Shared};

/// The held nodes not converged yet, each with why.
pub fn behind(m: &Mirror, shared: &Shared) -> Vec<String> {
    let held: std::collections::BTreeSet<String> = lock(&shared.held).values().cloned().collect();
    held.iter().filter_map(|id| m.nodes.get(id).and_then(why_behind)).collect()
}

fn why_behind(n: &Node) -> Option<String> {
    if state(n) != 3 {
        return None; // pending ones are judged by I5; FAILED ones hold no new certificate
    }
    let desired = n.spec.as_ref().map_or(n.role, |s| s.desired_role);
    if n.role != desired {
        return Some(format!("node {}: role {} but desired role {}", n.id, n.role, desired));
    }
    let cert_role = n.certificate.as_ref().map_or(-1, |c| c.role);
    (cert_role != n.role)
        .then(|| format!("node {}: role {} but its certificate's role {}", n.id, n.role, cert_role))
}

/// After the liveness phase's wait.
pub fn check(m: &Mirror, shared: &Shared) {
    let behind = behind(m, shared);
    if !behind.is_empty() {
        shared.violation(
            "I15",
            format!("{} node(s) never got their role: {}", behind.len(), behind.join("; ")),
        );
    }
}

/// Every node write: counts role changes that reached a certificate (a sweep where none does
/// fails its coverage).
pub fn on_write(m: &mut Mirror, ctx: &super::WriteCtx<'_>) {
    if !ctx.new_certificate() {
        return;
    }
    let role = ctx.new.certificate.as_ref().map_or(-1, |c| c.role);
    if m.issued_role.insert(ctx.new.id.clone(), role).is_some_and(|before| before != role) {
        ctx.shared.coverage.hit("role.reached_certificate");
    }
}
