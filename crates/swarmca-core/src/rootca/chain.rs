//! Certificate parsing and chain checks on top of x509-parser (SwarmKit `ValidateCertChain`
//! and the root/signing-cert checks of `NewRootCA`).

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::pemutil;

/// Signature algorithms accepted on CA certificates: {RSA PKCS#1, ECDSA} × SHA-256/384/512.
const ALLOWED_SIGNATURE_ALGS: [&str; 6] = [
    "1.2.840.113549.1.1.11",
    "1.2.840.113549.1.1.12",
    "1.2.840.113549.1.1.13",
    "1.2.840.10045.4.3.2",
    "1.2.840.10045.4.3.3",
    "1.2.840.10045.4.3.4",
];

/// Longest intermediate path searched when verifying a signing certificate.
const MAX_DEPTH: usize = 8;

/// Parses a PEM bundle into certificate DERs, like CFSSL's `ParseCertificatesPEM`:
/// surrounding whitespace is ignored, and anything that is not a parsable certificate fails.
pub(crate) fn parse_certs_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut rest = pemutil::trim_space(pem);
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (block, after) =
            pemutil::decode(rest).ok_or_else(|| "failed to parse certificate PEM".to_string())?;
        parse_cert(&block.der)?;
        out.push(block.der);
        rest = pemutil::trim_space(after);
    }
    Ok(out)
}

/// Parses one DER certificate, rejecting trailing data.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("failed to parse certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing data after certificate".into());
    }
    Ok(cert)
}

/// Whether the certificate's signature algorithm is one SwarmKit accepts for CAs.
pub(crate) fn signature_alg_allowed(cert: &X509Certificate<'_>) -> bool {
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    ALLOWED_SIGNATURE_ALGS.contains(&oid.as_str())
}

/// The certificate's common name, for messages.
pub(crate) fn cn_of(cert: &X509Certificate<'_>) -> String {
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("").to_string()
}

/// Checks NotBefore <= now <= NotAfter.
pub(crate) fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(), String> {
    let v = cert.validity();
    if now < v.not_before.timestamp() {
        return Err(format!(
            "certificate (CN {:?}) is not valid yet: valid from {}",
            cn_of(cert),
            v.not_before
        ));
    }
    if now > v.not_after.timestamp() {
        return Err(format!("certificate (CN {:?}) has expired: valid until {}", cn_of(cert), v.not_after));
    }
    Ok(())
}

/// Whether `child` names `parent` as issuer and carries a signature by `parent`'s key.
pub(crate) fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// Whether `cert` chains to one of `roots`, possibly through `intermediates`, at `now`.
/// A certificate that is itself one of the roots chains trivially (as in Go's `Verify`).
pub(crate) fn chains_to_roots(
    cert: &X509Certificate<'_>,
    intermediates: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    now: i64,
    depth: usize,
) -> bool {
    if check_validity(cert, now).is_err() {
        return false;
    }
    if roots.iter().any(|r| r.as_raw() == cert.as_raw()) {
        return true;
    }
    if roots.iter().any(|r| check_validity(r, now).is_ok() && signed_by(cert, r)) {
        return true;
    }
    depth < MAX_DEPTH
        && intermediates.iter().any(|i| {
            i.as_raw() != cert.as_raw()
                && signed_by(cert, i)
                && chains_to_roots(i, intermediates, roots, now, depth + 1)
        })
}

/// SwarmKit `ValidateCertChain(roots, bundle, allowExpired = false)`: every certificate is
/// valid at `now`, each is signed by the next, and the last chains to a root.
pub(crate) fn validate_chain(
    roots: &[X509Certificate<'_>],
    chain: &[X509Certificate<'_>],
    now: i64,
) -> Result<(), String> {
    if chain.is_empty() {
        return Err("no certificates in the chain".into());
    }
    for (i, cert) in chain.iter().enumerate() {
        check_validity(cert, now).map_err(|e| format!("certificate {} in the chain: {e}", i + 1))?;
    }
    for pair in chain.windows(2) {
        if let [child, parent] = pair {
            if !signed_by(child, parent) {
                return Err("certificates do not form a chain".into());
            }
        }
    }
    let Some(first) = chain.first() else {
        return Err("no certificates in the chain".into());
    };
    let rest = chain.get(1..).unwrap_or_default();
    if !chains_to_roots(first, rest, roots, now, 0) {
        return Err("certificate signed by unknown authority".into());
    }
    Ok(())
}
