//! Fuzzing harnesses of the core (feature `fuzzing`): the bodies of the cargo-fuzz targets in
//! `fuzz/fuzz_targets/`, which are one-line calls into this module. Each function takes the raw
//! fuzzer input, must never panic on its own, and asserts the properties below; an assertion
//! failure is the finding. The seed corpus under `fuzz/seeds/<target>/` is also replayed through
//! these functions by ordinary `cargo test --features fuzzing` (see `tests.rs`).
//!
//! * [`csr_der`]: [`parse_csr_der`] never panics; an accepted CSR re-parses identically from its
//!   DER and from its PEM (both labels); and RustCrypto's `x509-cert` (a second, independent DER
//!   parser) must accept every CSR we accept, with the same SubjectPublicKeyInfo and key
//!   algorithm.
//! * [`csr_pem`]: [`parse_csr_pem`] agrees with "first PEM block, then [`parse_csr_der`]" and
//!   the accepted DER passes the [`csr_der`] checks.
//! * [`join_token`]: [`parse_join_token`] never panics; an accepted token's digest re-encodes to
//!   the token's digest part; formatted tokens parse back; [`token_matches`] is exact.

// Assertion failures are how a harness reports a finding to libFuzzer; `panic!` is used only
// where a message with context beats `assert!`.
#![allow(clippy::panic)]

use x509_cert::der::{Decode, Encode};

use crate::csr::{parse_csr_der, parse_csr_pem, CsrError, KeyKind, ValidatedCsr, MAX_CSR_SIZE};
use crate::token::{
    format_join_token, parse_join_token, token_matches, ParsedJoinToken, DIGEST_LEN, SECRET_LEN, TOKEN_PREFIX,
};
use crate::{base36, pemutil};

const CSR_LABELS: [&str; 2] = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// Target `csr_der`: a DER-encoded PKCS#10 request.
pub fn csr_der(data: &[u8]) {
    let ours = parse_csr_der(data);
    // Deterministic: the same input gives the same verdict.
    assert_eq!(verdict(&ours), verdict(&parse_csr_der(data)), "parse_csr_der is not deterministic");
    if data.len() > MAX_CSR_SIZE {
        assert!(matches!(ours, Err(CsrError::TooLarge { .. })), "oversized input not refused by size");
        return;
    }
    if let Ok(csr) = &ours {
        check_accepted(csr, data);
    }
}

/// Target `csr_pem`: a PEM CSR as sent in `IssueNodeCertificateRequest.csr`.
pub fn csr_pem(data: &[u8]) {
    let ours = parse_csr_pem(data);
    if data.len() > MAX_CSR_SIZE {
        assert!(matches!(ours, Err(CsrError::TooLarge { .. })), "oversized input not refused by size");
        return;
    }
    let expected = match pemutil::decode(data) {
        None => Err(CsrError::NoPemBlock),
        Some((block, _)) if !CSR_LABELS.contains(&block.label.as_str()) => {
            Err(CsrError::NotACsr { label: block.label })
        }
        Some((block, _)) => match parse_csr_der(&block.der) {
            Ok(csr) => {
                assert_eq!(csr.der(), block.der.as_slice());
                Ok(csr.der().to_vec())
            }
            Err(e) => Err(e),
        },
    };
    assert_eq!(verdict(&ours), expected, "parse_csr_pem disagrees with PEM decode + parse_csr_der");
    if let Ok(csr) = &ours {
        check_accepted(csr, csr.der());
    }
}

/// The outcome of a parse in comparable form: the accepted DER, or the error.
fn verdict(r: &Result<ValidatedCsr, CsrError>) -> Result<Vec<u8>, CsrError> {
    r.as_ref().map(|c| c.der().to_vec()).map_err(Clone::clone)
}

/// Properties of a CSR we accepted from `der`.
fn check_accepted(csr: &ValidatedCsr, der: &[u8]) {
    assert_eq!(csr.der(), der, "accepted CSR does not keep its exact DER");
    assert!(
        der.windows(csr.public_key_der().len().max(1)).any(|w| w == csr.public_key_der()),
        "the SPKI is not a sub-slice of the request"
    );
    // Re-encoding: the DER parses again to the same key, and so does its PEM under both labels.
    let again = match parse_csr_der(csr.der()) {
        Ok(c) => c,
        Err(e) => panic!("accepted CSR rejected on re-parse: {e}"),
    };
    assert_eq!(again.public_key_der(), csr.public_key_der());
    assert_eq!(again.key_kind(), csr.key_kind());
    for label in CSR_LABELS {
        let pem = pemutil::encode(label, csr.der());
        match parse_csr_pem(&pem) {
            Ok(p) => {
                assert_eq!(p.der(), csr.der(), "PEM round trip changed the DER ({label})");
                assert_eq!(p.key_kind(), csr.key_kind());
            }
            Err(CsrError::TooLarge { .. }) if pem.len() > MAX_CSR_SIZE => {}
            Err(e) => panic!("accepted CSR rejected after PEM re-encoding ({label}): {e}"),
        }
    }
    differential(csr);
}

/// RustCrypto `x509-cert` must accept what we accept, with the same public key.
fn differential(csr: &ValidatedCsr) {
    let theirs = match x509_cert::request::CertReq::from_der(csr.der()) {
        Ok(r) => r,
        Err(e) => panic!("x509-cert rejects a CSR we accept: {e}"),
    };
    let spki = match theirs.info.public_key.to_der() {
        Ok(s) => s,
        Err(e) => panic!("x509-cert cannot re-encode the SPKI it parsed: {e}"),
    };
    assert_eq!(spki.as_slice(), csr.public_key_der(), "x509-cert reads another SubjectPublicKeyInfo");
    let alg = theirs.info.public_key.algorithm.oid.to_string();
    let curve = theirs
        .info
        .public_key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
        .map(|o| o.to_string());
    match csr.key_kind() {
        KeyKind::EcdsaP256 => {
            assert_eq!((alg.as_str(), curve.as_deref()), (OID_EC_PUBLIC_KEY, Some(OID_P256)))
        }
        KeyKind::EcdsaP384 => {
            assert_eq!((alg.as_str(), curve.as_deref()), (OID_EC_PUBLIC_KEY, Some(OID_P384)))
        }
        KeyKind::Rsa { .. } => assert_eq!(alg, OID_RSA_ENCRYPTION),
    }
}

/// Target `join_token`: a string presented as a join token, plus (from the same bytes) a
/// digest, secret and FIPS flag to format a token from.
pub fn join_token(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        check_presented_token(s);
    }
    // The formatting direction: any digest/secret/flag gives a token that parses back.
    let Some((digest, rest)) = data.split_first_chunk::<32>() else { return };
    let Some((secret, rest)) = rest.split_first_chunk::<16>() else { return };
    let fips = rest.first().is_some_and(|b| b & 1 == 1);
    let token = format_join_token(digest, secret, fips);
    let header = if fips { 11 } else { 9 };
    assert_eq!(token.len(), header + DIGEST_LEN + 1 + SECRET_LEN, "formatted token length");
    assert_eq!(parse_join_token(&token), Ok(ParsedJoinToken { root_digest: *digest, fips }));
    assert!(token_matches(&token, &token));
    // Any single-character change is a different token.
    let mut other = token.clone().into_bytes();
    if let Some(last) = other.last_mut() {
        *last = if *last == b'0' { b'1' } else { b'0' };
    }
    let other = String::from_utf8_lossy(&other).into_owned();
    assert!(!token_matches(&token, &other), "token_matches accepted a different token");
    if let Ok(s) = std::str::from_utf8(data) {
        assert_eq!(token_matches(&token, s), token == s);
    }
}

fn check_presented_token(s: &str) {
    assert!(!token_matches("", s), "an empty configured token matched");
    if !s.is_empty() {
        assert!(token_matches(s, s));
    }
    let Ok(parsed) = parse_join_token(s) else { return };
    let parts: Vec<&str> = s.split('-').collect();
    let (Some(digest), Some(secret)) = (parts.iter().rev().nth(1), parts.last()) else {
        panic!("accepted token {s:?} has fewer than two parts")
    };
    assert_eq!(parts.first().copied(), Some(TOKEN_PREFIX));
    assert_eq!(secret.len(), SECRET_LEN);
    assert!(secret.bytes().all(|c| c.is_ascii_alphanumeric()), "secret part is not base 36");
    // The digest round-trips through base 36 (case-insensitively, zero-padded to 50).
    assert_eq!(base36::encode_padded(&parsed.root_digest, DIGEST_LEN), digest.to_ascii_lowercase());
    let v2 = parts.get(1) == Some(&"2");
    assert_eq!(parsed.fips, v2 && parts.get(2) == Some(&"1"), "FIPS flag read wrongly from {s:?}");
    assert_eq!(parts.len(), if v2 { 5 } else { 4 });
    // Re-formatting with the parsed digest keeps digest and version.
    let again = format_join_token(&parsed.root_digest, &[0; 16], parsed.fips);
    assert_eq!(parse_join_token(&again), Ok(parsed));
}

/// The committed seed corpus of each target (`fuzz/seeds/<target>/`), replayed through the
/// harnesses by this crate's and the server's seed tests, without cargo-fuzz.
pub mod seeds {
    /// Every file of `fuzz/seeds/<target>/`, by path, in path order; panics if there is none.
    pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = format!("{}/../../fuzz/seeds/{target}", env!("CARGO_MANIFEST_DIR"));
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let mut out: Vec<(String, Vec<u8>)> = entries
            .map(|e| e.unwrap_or_else(|e| panic!("{dir}: {e}")).path())
            .filter(|p| p.is_file())
            .map(|p| {
                let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (p.display().to_string(), data)
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no seeds in {dir}");
        out
    }

    /// Runs harness `f` on every seed of `target`; fails naming the first seed it rejects.
    pub fn replay(target: &str, f: fn(&[u8])) {
        for (name, data) in corpus(target) {
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{target}: seed {name} fails the harness");
        }
    }
}

#[cfg(test)]
mod tests;
