//! I4: a node's certificate and its role change only through issuance: every transition into
//! ISSUED or FAILED (or any new certificate bytes) comes from RENEW/PENDING with the same
//! request (CSR, CN, role); ISSUED always carries a certificate; and the requested role never
//! changes under the same certificate bytes.
//!
//! Requests are written as SwarmKit writes them (docs/behaviour.md §3.9): a join creates the node PENDING,
//! with no certificate, CN = node ID, and the token's role as the node's role, desired role
//! and certificate role, membership ACCEPTED; a renewal replaces the whole certificate with
//! RENEW, no certificate bytes, CN = node ID and the node's *current* role.

use super::{state, WriteCtx};
use crate::shared::lock;

/// NodeSpec.Membership ACCEPTED.
const ACCEPTED: i32 = 1;

/// At the end: every node written with a manager certificate outside issuance is a node a
/// manager started as.
pub fn check_own_certificates(shared: &crate::shared::Shared) {
    let managers = lock(&shared.manager_nodes).clone();
    for (id, _) in lock(&shared.own_cert_writes).iter().filter(|(id, _)| !managers.contains(id)) {
        shared.violation(
            "I4",
            format!("node {id}: an issued manager certificate written outside issuance, and no manager started as it"),
        );
    }
}

pub fn check(ctx: &WriteCtx<'_>) {
    let Some(nc) = ctx.new.certificate.as_ref() else {
        ctx.shared.violation("I4", format!("node {}: written without a certificate request", ctx.new.id));
        return;
    };
    let to = state(ctx.new);
    // A manager's start writes its own node with an issued manager certificate (its first
    // start, or a new certificate when its own is stale), outside any leader's fence: the
    // store noted each such write; judged at the end against the nodes the managers started
    // as. The same shape written any other way (by a leader) is judged as issuance below.
    if super::own_certificate_write(ctx.prev.map(state), ctx.new)
        && ctx.new_certificate()
        && lock(&ctx.shared.own_cert_writes).contains(&super::own_write_key(ctx.new))
    {
        return;
    }
    requests(ctx, nc, to);
    if to == 3 && nc.certificate.is_empty() {
        ctx.shared.violation("I4", format!("node {}: ISSUED without a certificate", ctx.new.id));
    }
    let Some(prev) = ctx.prev else { return };
    let Some(pc) = prev.certificate.as_ref() else { return };
    let from = state(prev);
    if !nc.certificate.is_empty() && nc.certificate == pc.certificate && nc.role != pc.role {
        ctx.shared.violation(
            "I4",
            format!(
                "node {}: certificate role changed {} → {} without a new certificate",
                ctx.new.id, pc.role, nc.role
            ),
        );
    }
    let into_final = matches!(to, 3 | 4) && (to != from || nc.certificate != pc.certificate);
    if into_final || ctx.new_certificate() {
        if !(from == 1 || from == 2) {
            ctx.shared.violation(
                "I4",
                format!(
                    "node {}: state {from} → {to} (a result written over a non-pending state)",
                    ctx.new.id
                ),
            );
        }
        if nc.csr != pc.csr || nc.role != pc.role || nc.cn != pc.cn {
            ctx.shared.violation(
                "I4",
                format!("node {}: result written together with a different request", ctx.new.id),
            );
        }
    }
}

/// The shape of a join's node and of a renewal request.
fn requests(ctx: &WriteCtx<'_>, nc: &swarmca_types::Certificate, to: i32) {
    let n = ctx.new;
    let mut wrong = Vec::new();
    if ctx.prev.is_none() {
        let spec = n.spec.clone().unwrap_or_default();
        if to != 2 {
            wrong.push(format!("created in state {to}, not PENDING"));
        }
        if spec.membership != ACCEPTED {
            wrong.push(format!("created with membership {}", spec.membership));
        }
        if n.role != nc.role || spec.desired_role != nc.role {
            wrong.push(format!(
                "created with role {}, desired role {}, certificate role {}",
                n.role, spec.desired_role, nc.role
            ));
        }
    }
    let renewal_request = to == 1
        && ctx.prev.is_some_and(|p| state(p) != 1 || p.certificate.as_ref().map(|c| &c.csr) != Some(&nc.csr));
    if renewal_request && nc.role != n.role {
        wrong.push(format!("renewal requested for role {} while the node's role is {}", nc.role, n.role));
    }
    if matches!(to, 1 | 2) {
        if !nc.certificate.is_empty() {
            wrong.push(format!("state {to} still carries certificate bytes"));
        }
        if nc.cn != n.id {
            wrong.push(format!("state {to} with CN {:?}", nc.cn));
        }
        if nc.csr.is_empty() {
            wrong.push(format!("state {to} without a CSR"));
        }
    }
    if !wrong.is_empty() {
        ctx.shared.violation("I4", format!("node {}: {}", n.id, wrong.join("; ")));
    }
}
