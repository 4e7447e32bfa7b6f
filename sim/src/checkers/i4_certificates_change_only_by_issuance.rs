//! I4: a node's role and certificate change only through a new certificate: certificate bytes
//! are replaced only by signing a RENEW/PENDING request for the same CSR, and the requested
//! role on a certificate never changes under the same certificate bytes.

use super::{state, WriteCtx};

pub fn check(ctx: &WriteCtx<'_>) {
    let Some(prev) = ctx.prev else { return };
    let (Some(pc), Some(nc)) = (prev.certificate.as_ref(), ctx.new.certificate.as_ref()) else { return };
    if !nc.certificate.is_empty() && nc.certificate == pc.certificate && nc.role != pc.role {
        ctx.shared.violation(
            "I4",
            format!(
                "node {}: certificate role changed {} → {} without a new certificate",
                ctx.new.id, pc.role, nc.role
            ),
        );
    }
    if ctx.new_certificate() {
        let from = state(prev);
        if !(from == 1 || from == 2) {
            ctx.shared.violation(
                "I4",
                format!("node {}: new certificate written over state {from}, not RENEW/PENDING", ctx.new.id),
            );
        }
        if nc.csr != pc.csr || nc.role != pc.role || nc.cn != pc.cn {
            ctx.shared.violation(
                "I4",
                format!("node {}: certificate written together with a different request", ctx.new.id),
            );
        }
    }
}
