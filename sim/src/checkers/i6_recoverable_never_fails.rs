//! I6: recoverable errors (store errors, conflicts, leader changes, signer outages) never
//! produce FAILED: a node fails only when its CSR itself is unusable (or the external CA
//! answered it with a refusal or a certificate for another key: fatal answers by design).

use super::WriteCtx;
use crate::mirror::Mirror;

pub fn check(m: &mut Mirror, ctx: &WriteCtx<'_>) {
    if ctx.state() != 4 || ctx.prev.is_some_and(|p| super::state(p) == 4) {
        return;
    }
    m.failed += 1;
    ctx.shared.coverage.hit("branch.failed_state");
    let csr = ctx.new.certificate.as_ref().map(|c| c.csr.clone()).unwrap_or_default();
    let why = ctx
        .new
        .certificate
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .map(|s| s.err.clone())
        .unwrap_or_default();
    // A deliberate `success:false` from the fake external CA is a fatal answer by design.
    if why.contains(crate::extca::REFUSAL) {
        ctx.shared.coverage.hit("branch.external_refusal_failed");
        return;
    }
    // So is a certificate for another key than the CSR's.
    if crate::shared::lock(&ctx.shared.extca_wrong_key).contains(&swarmca_core::rootca::digest(&csr)) {
        ctx.shared.coverage.hit("branch.external_wrong_certificate_failed");
        return;
    }
    if swarmca_core::csr::parse_csr_pem(&csr).is_ok() {
        ctx.shared.violation("I6", format!("node {} FAILED although its CSR is valid: {why}", ctx.new.id));
    }
}
