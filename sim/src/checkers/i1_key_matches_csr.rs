//! I1: an ISSUED certificate's public key equals the key of the CSR stored on the node in the
//! same write (SwarmKit's conflict retry could pair a certificate with another CSR).

use x509_parser::prelude::*;

use super::WriteCtx;

pub fn spki_of_cert_pem(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, c) = X509Certificate::from_der(&p.contents).ok()?;
    Some(c.public_key().raw.to_vec())
}

pub fn spki_of_csr_pem(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, c) = X509CertificationRequest::from_der(&p.contents).ok()?;
    Some(c.certification_request_info.subject_pki.raw.to_vec())
}

pub fn check(ctx: &WriteCtx<'_>) {
    if ctx.state() != 3 || !ctx.new_certificate() {
        return;
    }
    let Some(c) = ctx.new.certificate.as_ref() else { return };
    match (spki_of_cert_pem(&c.certificate), spki_of_csr_pem(&c.csr)) {
        (Some(a), Some(b)) if a == b => {}
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
