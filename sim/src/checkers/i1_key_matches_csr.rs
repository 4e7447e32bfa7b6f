//! I1: an ISSUED certificate's public key equals the key of the CSR stored on the node in the
//! same write (SwarmKit's conflict retry could pair a certificate with another CSR).

use super::WriteCtx;

pub fn check(ctx: &WriteCtx<'_>) {
    if ctx.state() != 3 || !ctx.new_certificate() {
        return;
    }
    let Some(c) = ctx.new.certificate.as_ref() else { return };
    let facts = &ctx.shared.facts;
    match (facts.cert_pem(&c.certificate), facts.csr_key(&c.csr)) {
        (Some(a), Some(b)) if a.spki == *b => {}
        (a, b) => ctx.shared.violation(
            "I1",
            format!(
                "node {} ISSUED with a certificate whose key {} the CSR's {}",
                ctx.new.id,
                if a.is_none() { "is unreadable, not" } else { "differs from" },
                if b.is_none() { "(unreadable CSR)" } else { "key" }
            ),
        ),
    }
}
