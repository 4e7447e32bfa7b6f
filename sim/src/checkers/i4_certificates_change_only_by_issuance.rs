//! I4: a node's certificate and its role change only through issuance: every transition into
//! ISSUED or FAILED (or any new certificate bytes) comes from RENEW/PENDING with the same
//! request (CSR, CN, role); ISSUED always carries a certificate; and the requested role never
//! changes under the same certificate bytes.

use super::{state, WriteCtx};

pub fn check(ctx: &WriteCtx<'_>) {
    let Some(nc) = ctx.new.certificate.as_ref() else { return };
    let to = state(ctx.new);
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
