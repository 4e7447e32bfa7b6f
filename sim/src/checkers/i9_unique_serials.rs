//! I9: certificate serial numbers are unique across everything issued, across leader changes.

use super::WriteCtx;
use crate::mirror::{short, Mirror};

pub fn check(m: &mut Mirror, ctx: &WriteCtx<'_>) {
    if ctx.state() != 3 || !ctx.new_certificate() {
        return;
    }
    let Some(c) = ctx.new.certificate.as_ref() else { return };
    m.issued += 1;
    let Some(cert) = ctx.shared.facts.cert_pem(&c.certificate) else { return };
    let serial = hex::encode(&cert.serial);
    let digest = short(&c.certificate);
    if let Some(other) = m.serials.insert(serial.clone(), digest.clone()) {
        if other != digest {
            ctx.shared.violation("I9", format!("serial {serial} issued twice (node {})", ctx.new.id));
        }
    }
}
