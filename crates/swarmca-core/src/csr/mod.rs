//! Certificate signing requests: size cap, PEM/DER decoding, self-signature check and key
//! policy. Only [`parse_csr_pem`] and [`parse_csr_der`] construct a [`ValidatedCsr`].

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::rootca::SignatureCache;
use crate::{der, pemutil};

/// Largest CSR accepted, in bytes, checked before any decoding (PEM or DER).
pub const MAX_CSR_SIZE: usize = 64 * 1024;

/// Smallest accepted RSA modulus, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest accepted RSA modulus, in bits (the verification limit of *ring*).
pub const MAX_RSA_BITS: usize = 8192;

// OID contents (DER, without tag and length).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];
const OID_DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];

const ACCEPTED_KEYS: &str = "accepted: ECDSA P-256, ECDSA P-384, RSA >= 2048 bits";

/// The kind of public key in a validated CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on NIST P-256 (what SwarmKit clients send).
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// RSA with a modulus of `bits` bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
}

/// Why a CSR was rejected.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CsrError {
    /// The input exceeds [`MAX_CSR_SIZE`]; nothing was decoded.
    #[error("CSR too large: {len} bytes (max {MAX_CSR_SIZE})")]
    TooLarge {
        /// Input length in bytes.
        len: usize,
    },
    /// The input holds no PEM block (CFSSL code 9002).
    #[error("CSR Decode failed")]
    NoPemBlock,
    /// The first PEM block is not a certificate request (CFSSL code 9300).
    #[error("not a csr: PEM block type is {label:?}")]
    NotACsr {
        /// The label found.
        label: String,
    },
    /// The DER does not parse as a PKCS#10 request.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The request's self-signature does not verify.
    #[error("CSR signature verification failed")]
    BadSignature,
    /// The request is signed with an algorithm this CA cannot verify.
    #[error("unsupported CSR signature algorithm: {0}")]
    UnsupportedSignatureAlgorithm(String),
    /// The request's public key is of a kind this CA does not certify.
    #[error("unsupported CSR key: {0}")]
    UnsupportedKey(String),
}

/// A CSR whose size, encoding, key kind and self-signature have been checked.
#[derive(Debug, Clone)]
pub struct ValidatedCsr {
    der: Vec<u8>,
    spki_der: Vec<u8>,
    key_kind: KeyKind,
}

impl ValidatedCsr {
    /// The full DER of the request.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The request's SubjectPublicKeyInfo, DER-encoded, exactly as in the request.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The kind of the request's public key.
    pub fn key_kind(&self) -> &KeyKind {
        &self.key_kind
    }
}

/// What a remembered self-signature check is filed under, before the request's bytes (the
/// checks of certificate chains are filed under length-prefixed parts, which start with a zero
/// byte: the two never meet).
const SELF_SIGNATURE: &[u8] = b"pkcs10 self-signature\0";

/// Decodes and validates the first PEM block of `pem`, like CFSSL's local signer.
///
/// The block must be labelled `CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`.
pub fn parse_csr_pem(pem: &[u8]) -> Result<ValidatedCsr, CsrError> {
    parse_csr_pem_remembering(pem, None)
}

/// [`parse_csr_pem`], with a successful self-signature check remembered in `cache` (see
/// [`SignatureCache`]): a request whose exact bytes were checked before is validated again in
/// every other way, without the public-key operation. A CA passes its cache when it has one.
pub fn parse_csr_pem_remembering(
    pem: &[u8],
    cache: Option<&SignatureCache>,
) -> Result<ValidatedCsr, CsrError> {
    if pem.len() > MAX_CSR_SIZE {
        return Err(CsrError::TooLarge { len: pem.len() });
    }
    let (block, _) = pemutil::decode(pem).ok_or(CsrError::NoPemBlock)?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::NotACsr { label: block.label });
    }
    parse_der(&block.der, cache)
}

/// Validates a DER-encoded PKCS#10 request.
///
/// Checks, in order: size, DER structure (no trailing data), key kind, self-signature.
pub fn parse_csr_der(der: &[u8]) -> Result<ValidatedCsr, CsrError> {
    parse_der(der, None)
}

fn parse_der(der: &[u8], cache: Option<&SignatureCache>) -> Result<ValidatedCsr, CsrError> {
    if der.len() > MAX_CSR_SIZE {
        return Err(CsrError::TooLarge { len: der.len() });
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed("trailing data after CSR".into()));
    }
    check_envelope(der)?;
    let spki = &csr.certification_request_info.subject_pki;
    let key_kind = classify_key(spki)?;
    // The check is a pure function of the request's bytes: remembered under all of them.
    let remembered = cache.map(|c| (c, [SELF_SIGNATURE, der].concat()));
    if !remembered.as_ref().is_some_and(|(c, key)| c.contains(key)) {
        csr.verify_signature().map_err(|e| match e {
            x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
                CsrError::UnsupportedSignatureAlgorithm(csr.signature_algorithm.algorithm.to_id_string())
            }
            _ => CsrError::BadSignature,
        })?;
        if let Some((c, key)) = remembered {
            c.insert(key);
        }
    }
    Ok(ValidatedCsr { der: der.to_vec(), spki_der: spki.raw.to_vec(), key_kind })
}

/// x509-parser tolerates BER: non-minimal lengths (everywhere), wrong tags on the unsigned
/// envelope (outer SEQUENCE, signature AlgorithmIdentifier, signature BIT STRING) and a non-zero
/// unused-bits count on the signature. Go's `encoding/asn1` does not, and neither do we: the
/// whole request must be DER ([`der::check_strict`]), and the envelope exactly
/// `SEQUENCE { info, SEQUENCE { OID, params? }, BIT STRING }` with whole-byte signature bits.
/// The signature algorithm's parameters, which the signature does not cover, may only be
/// absent (ECDSA), NULL (RSA PKCS#1) or a SEQUENCE (RSASSA-PSS).
fn check_envelope(der: &[u8]) -> Result<(), CsrError> {
    der::check_strict(der)
        .map_err(|(what, offset)| CsrError::Malformed(format!("not DER: {what} at byte {offset}")))?;
    let bad = |what: &str| CsrError::Malformed(format!("invalid CSR envelope: {what}"));
    let body = der::expect_all(der, der::TAG_SEQUENCE).ok_or_else(|| bad("not one SEQUENCE"))?;
    let (_, rest) = der::expect(body, der::TAG_SEQUENCE).ok_or_else(|| bad("request info"))?;
    let (alg, rest) = der::expect(rest, der::TAG_SEQUENCE).ok_or_else(|| bad("signature algorithm"))?;
    let (_, params) = der::expect(alg, der::TAG_OID).ok_or_else(|| bad("signature algorithm"))?;
    match der::read_tlv(params) {
        None if params.is_empty() => {}
        Some((der::TAG_NULL, [], [])) => {}
        Some((der::TAG_SEQUENCE, _, [])) => {}
        _ => return Err(bad("signature algorithm parameters")),
    }
    let sig = der::expect_all(rest, der::TAG_BIT_STRING).ok_or_else(|| bad("signature"))?;
    // Signatures are whole bytes: no unused bits.
    if sig.first() != Some(&0) {
        return Err(bad("signature bits"));
    }
    Ok(())
}

fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    let unsupported = |what: &str| CsrError::UnsupportedKey(format!("{what} ({ACCEPTED_KEYS})"));
    match alg.as_bytes() {
        OID_EC_PUBLIC_KEY => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve.as_ref().map(|o| o.as_bytes()) {
                Some(OID_P256) => Ok(KeyKind::EcdsaP256),
                Some(OID_P384) => Ok(KeyKind::EcdsaP384),
                Some(OID_P521) => Err(unsupported("ECDSA P-521")),
                Some(_) => Err(unsupported(&format!(
                    "ECDSA curve {}",
                    curve.map(|o| o.to_id_string()).unwrap_or_default()
                ))),
                None => Err(unsupported("ECDSA without named curve")),
            }
        }
        OID_RSA_ENCRYPTION => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if bits < MIN_RSA_BITS {
                    Err(unsupported(&format!("RSA {bits} bits is too small")))
                } else if bits > MAX_RSA_BITS {
                    Err(unsupported(&format!("RSA {bits} bits is too large")))
                } else {
                    Ok(KeyKind::Rsa { bits })
                }
            }
            _ => Err(CsrError::Malformed("invalid RSA public key".into())),
        },
        OID_ED25519 => Err(unsupported("Ed25519")),
        OID_ED448 => Err(unsupported("Ed448")),
        OID_DSA => Err(unsupported("DSA")),
        _ => Err(unsupported(&format!("key algorithm {}", alg.to_id_string()))),
    }
}

#[cfg(test)]
mod tests;
