//! CA private keys: parsing (PKCS#8, SEC1, PKCS#1), matching against the signing
//! certificate, and signing through *ring*.
//!
//! Supported CA keys are ECDSA P-256 (signs with SHA-256), ECDSA P-384 (SHA-384) and RSA
//! 2048–4096 bits (PKCS#1 v1.5 with SHA-256, or SHA-384 from 3072 bits, or SHA-512 from 4096
//! bits). ECDSA P-521 and RSA keys above 4096 bits are valid in SwarmKit but *ring* cannot sign
//! with them, so they are rejected with [`RootCaError::UnsupportedKeyAlgorithm`].

use std::fmt;

use std::sync::Arc;

use ring::rand::SystemRandom;

use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;

use super::RootCaError;
use crate::der::{
    self, TAG_BIT_STRING, TAG_CTX0, TAG_CTX1, TAG_INTEGER, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE,
};
use crate::pemutil;

/// DER contents of the ecPublicKey OID.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER contents of the rsaEncryption OID.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn from_oid(oid: &[u8]) -> Option<Self> {
        match oid {
            OID_P256 => Some(Self::P256),
            OID_P384 => Some(Self::P384),
            OID_P521 => Some(Self::P521),
            _ => None,
        }
    }
}

/// A private key taken apart but not yet checked against a certificate.
enum ParsedKey {
    Ec { curve: Option<Curve>, scalar: Vec<u8> },
    RsaPkcs8(Vec<u8>),
    RsaPkcs1(Vec<u8>),
}

fn malformed(why: &str) -> RootCaError {
    RootCaError::MalformedPrivateKey(why.to_string())
}

/// Parses an unencrypted PEM private key in PKCS#8, SEC1 or PKCS#1 form (the label is not
/// trusted; the DER structure decides, like Go's `ParsePrivateKeyPEM`).
fn parse_key_pem(pem: &[u8]) -> Result<ParsedKey, RootCaError> {
    let (block, _) = pemutil::decode(pem).ok_or_else(|| malformed("no PEM block found"))?;
    let der = block.der;
    let body = der::expect_all(&der, TAG_SEQUENCE).ok_or_else(|| malformed("not a DER sequence"))?;
    let (version, after_version) =
        der::expect(body, TAG_INTEGER).ok_or_else(|| malformed("missing version"))?;
    let (tag, _, _) = der::read_tlv(after_version).ok_or_else(|| malformed("truncated key"))?;
    match tag {
        // PKCS#8: version, AlgorithmIdentifier, OCTET STRING privateKey, ...
        TAG_SEQUENCE => {
            if version != [0] && version != [1] {
                return Err(malformed("unsupported PKCS#8 version"));
            }
            let (alg_id, rest) =
                der::expect(after_version, TAG_SEQUENCE).ok_or_else(|| malformed("bad PKCS#8"))?;
            let (inner, _) = der::expect(rest, TAG_OCTET_STRING).ok_or_else(|| malformed("bad PKCS#8"))?;
            let (alg_oid, params) =
                der::expect(alg_id, TAG_OID).ok_or_else(|| malformed("bad PKCS#8 algorithm"))?;
            if alg_oid == OID_EC_PUBLIC_KEY {
                let curve = der::expect(params, TAG_OID)
                    .and_then(|(oid, _)| Curve::from_oid(oid))
                    .ok_or_else(|| RootCaError::UnsupportedKeyAlgorithm("unknown elliptic curve".into()))?;
                let (inner_curve, scalar) = parse_sec1(inner)?;
                if inner_curve.is_some_and(|c| c != curve) {
                    return Err(malformed("inconsistent curves in PKCS#8 key"));
                }
                Ok(ParsedKey::Ec { curve: Some(curve), scalar })
            } else if alg_oid == OID_RSA_ENCRYPTION {
                Ok(ParsedKey::RsaPkcs8(der.clone()))
            } else {
                Err(RootCaError::UnsupportedKeyAlgorithm("private key is neither ECDSA nor RSA".into()))
            }
        }
        // SEC1 ECPrivateKey: version 1, OCTET STRING privateKey, [0] curve, [1] public key.
        TAG_OCTET_STRING => {
            let (curve, scalar) = parse_sec1(&der)?;
            Ok(ParsedKey::Ec { curve, scalar })
        }
        // PKCS#1 RSAPrivateKey: version, modulus, ...
        TAG_INTEGER => Ok(ParsedKey::RsaPkcs1(der.clone())),
        _ => Err(malformed("unrecognised key structure")),
    }
}

/// Parses a SEC1 `ECPrivateKey`; returns its curve (if named) and private scalar.
fn parse_sec1(der: &[u8]) -> Result<(Option<Curve>, Vec<u8>), RootCaError> {
    let bad = || malformed("bad EC private key");
    let body = der::expect_all(der, TAG_SEQUENCE).ok_or_else(bad)?;
    let (version, rest) = der::expect(body, TAG_INTEGER).ok_or_else(bad)?;
    if version != [1] {
        return Err(malformed("unsupported EC private key version"));
    }
    let (scalar, mut rest) = der::expect(rest, TAG_OCTET_STRING).ok_or_else(bad)?;
    let mut curve = None;
    while let Some((tag, value, after)) = der::read_tlv(rest) {
        match tag {
            TAG_CTX0 => {
                let oid = der::expect_all(value, TAG_OID).ok_or_else(bad)?;
                curve =
                    Some(Curve::from_oid(oid).ok_or_else(|| {
                        RootCaError::UnsupportedKeyAlgorithm("unknown elliptic curve".into())
                    })?);
            }
            TAG_CTX1 => {
                der::expect_all(value, TAG_BIT_STRING).ok_or_else(bad)?;
            }
            _ => return Err(bad()),
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok((curve, scalar.to_vec()))
}

/// A CA key kept outside this process (in a hardware security module): it signs, and its
/// private part never leaves where it is kept. ECDSA P-256 with SHA-256 only.
pub trait ExternalKey: Send + Sync {
    /// The public key, the uncompressed EC point (the certificate's subjectPublicKey bits), when
    /// the token tells it; without it, the CA's test signature shows whether the key matches.
    fn public_key(&self) -> Option<Vec<u8>>;
    /// An ECDSA-with-SHA-256 signature of `msg`, DER-encoded as X.509 carries it.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String>;
}

/// Resolves key references (an RFC 7512 `pkcs11:` URI, say) stored where a key's PEM would be.
pub trait ExternalKeys: Send + Sync + fmt::Debug {
    /// `None` when `reference` is not one this resolver knows (it is then read as a PEM key);
    /// otherwise the key, or why it cannot be used.
    fn resolve(&self, reference: &[u8]) -> Option<Result<Arc<dyn ExternalKey>, String>>;
}

/// No external keys: every key is a PEM key.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoExternalKeys;

impl ExternalKeys for NoExternalKeys {
    fn resolve(&self, _: &[u8]) -> Option<Result<Arc<dyn ExternalKey>, String>> {
        None
    }
}

/// The scheme of key references (RFC 7512 PKCS#11 URIs).
pub const PKCS11_SCHEME: &[u8] = b"pkcs11:";

enum Kind {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
    External(Arc<dyn ExternalKey>),
}

/// A CA signing key that matches its certificate.
pub(crate) struct CaKey {
    kind: Kind,
    /// The subjectPublicKey bits of the certificate (read by the tests' rcgen issuer).
    #[cfg_attr(not(test), allow(dead_code))]
    public: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKey").field("alg", self.alg).finish_non_exhaustive()
    }
}

impl CaKey {
    /// Parses `key_pem` and checks that it belongs to `cert`.
    pub(crate) fn new(key_pem: &[u8], cert: &X509Certificate<'_>) -> Result<Self, RootCaError> {
        CaKey::new_with(key_pem, cert, &NoExternalKeys)
    }

    /// [`CaKey::new`], with key references resolved by `keys`.
    pub(crate) fn new_with(
        key_pem: &[u8],
        cert: &X509Certificate<'_>,
        keys: &dyn ExternalKeys,
    ) -> Result<Self, RootCaError> {
        match keys.resolve(key_pem) {
            Some(Ok(ext)) => return CaKey::external(ext, cert),
            Some(Err(why)) => return Err(RootCaError::MalformedPrivateKey(why)),
            None if key_pem.starts_with(PKCS11_SCHEME) => {
                return Err(RootCaError::MalformedPrivateKey(
                    "the key is held in a PKCS#11 token, and this manager has no PKCS#11 module configured"
                        .into(),
                ))
            }
            None => {}
        }
        let parsed = parse_key_pem(key_pem)?;
        let spki = cert.public_key();
        let public = spki.subject_public_key.data.to_vec();
        let cert_key = spki.parsed().map_err(|e| RootCaError::UnsupportedKeyAlgorithm(e.to_string()))?;
        let rng = SystemRandom::new();
        match (parsed, cert_key) {
            (ParsedKey::Ec { curve, scalar }, PublicKey::EC(_)) => {
                let cert_curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .and_then(|o| Curve::from_oid(o.as_bytes()))
                    .ok_or_else(|| RootCaError::UnsupportedKeyAlgorithm("unknown elliptic curve".into()))?;
                if curve.is_some_and(|c| c != cert_curve) {
                    return Err(RootCaError::KeyMismatch);
                }
                let (ring_alg, alg) = match cert_curve {
                    Curve::P256 => {
                        (&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rcgen::PKCS_ECDSA_P256_SHA256)
                    }
                    Curve::P384 => {
                        (&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &rcgen::PKCS_ECDSA_P384_SHA384)
                    }
                    Curve::P521 => {
                        return Err(RootCaError::UnsupportedKeyAlgorithm(
                            "ECDSA P-521 CA keys cannot sign with ring".into(),
                        ))
                    }
                };
                let kp = EcdsaKeyPair::from_private_key_and_public_key(ring_alg, &scalar, &public, &rng)
                    .map_err(|e| {
                        if e.to_string() == "InconsistentComponents" {
                            RootCaError::KeyMismatch
                        } else {
                            RootCaError::MalformedPrivateKey(e.to_string())
                        }
                    })?;
                Ok(Self { kind: Kind::Ecdsa(kp), public, alg })
            }
            (ParsedKey::RsaPkcs8(der) | ParsedKey::RsaPkcs1(der), PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if !(2048..=4096).contains(&bits) {
                    return Err(RootCaError::UnsupportedKeyAlgorithm(format!(
                        "RSA CA keys must have 2048 to 4096 bits, this one has {bits}"
                    )));
                }
                let kp = if der::expect_all(&der, TAG_SEQUENCE)
                    .and_then(|b| der::expect(b, TAG_INTEGER))
                    .and_then(|(_, rest)| der::read_tlv(rest))
                    .is_some_and(|(tag, _, _)| tag == TAG_SEQUENCE)
                {
                    RsaKeyPair::from_pkcs8(&der)
                } else {
                    RsaKeyPair::from_der(&der)
                }
                .map_err(|e| RootCaError::MalformedPrivateKey(e.to_string()))?;
                if kp.public().as_ref() != public.as_slice() {
                    return Err(RootCaError::KeyMismatch);
                }
                let (encoding, alg): (&'static dyn signature::RsaEncoding, _) = if bits >= 4096 {
                    (&signature::RSA_PKCS1_SHA512, &rcgen::PKCS_RSA_SHA512)
                } else if bits >= 3072 {
                    (&signature::RSA_PKCS1_SHA384, &rcgen::PKCS_RSA_SHA384)
                } else {
                    (&signature::RSA_PKCS1_SHA256, &rcgen::PKCS_RSA_SHA256)
                };
                Ok(Self { kind: Kind::Rsa(kp, encoding), public, alg })
            }
            (_, PublicKey::EC(_) | PublicKey::RSA(_)) => Err(RootCaError::KeyMismatch),
            _ => Err(RootCaError::UnsupportedKeyAlgorithm("certificate key is neither ECDSA nor RSA".into())),
        }
    }
}

impl CaKey {
    /// A key held outside: it must be the P-256 key of `cert`.
    fn external(ext: Arc<dyn ExternalKey>, cert: &X509Certificate<'_>) -> Result<Self, RootCaError> {
        let spki = cert.public_key();
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        let p256 = curve.and_then(|o| Curve::from_oid(o.as_bytes())) == Some(Curve::P256);
        if !matches!(spki.parsed(), Ok(PublicKey::EC(_))) || !p256 {
            return Err(RootCaError::UnsupportedKeyAlgorithm(
                "a CA key held in a token must be ECDSA P-256".into(),
            ));
        }
        let public = spki.subject_public_key.data.to_vec();
        if ext.public_key().is_some_and(|p| p != public) {
            return Err(RootCaError::KeyMismatch);
        }
        Ok(Self { kind: Kind::External(ext), public, alg: &rcgen::PKCS_ECDSA_P256_SHA256 })
    }

    /// Signs `msg` with *ring*; ECDSA nonces and RSA blinding come from `SystemRandom`.
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match &self.kind {
            Kind::Ecdsa(kp) => kp
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_string()),
            Kind::Rsa(kp, encoding) => {
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(*encoding, &rng, msg, &mut sig).map_err(|_| "RSA signing failed".to_string())?;
                Ok(sig)
            }
            Kind::External(k) => k.sign(msg),
        }
    }

    /// DER of the AlgorithmIdentifier this key signs with.
    pub(crate) fn algorithm_identifier_der(&self) -> &'static [u8] {
        const ECDSA_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        const ECDSA_SHA384: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        const RSA_SHA256: &[u8] =
            &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00];
        const RSA_SHA384: &[u8] =
            &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00];
        const RSA_SHA512: &[u8] =
            &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05, 0x00];
        if self.alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            ECDSA_SHA256
        } else if self.alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            ECDSA_SHA384
        } else if self.alg == &rcgen::PKCS_RSA_SHA512 {
            RSA_SHA512
        } else if self.alg == &rcgen::PKCS_RSA_SHA384 {
            RSA_SHA384
        } else {
            RSA_SHA256
        }
    }
}

/// A shared [`CaKey`] in the shape rcgen's issuer wants (the tests' reference encoder).
#[cfg(test)]
pub(crate) struct SharedKey(pub(crate) std::sync::Arc<CaKey>);

#[cfg(test)]
impl rcgen::PublicKeyData for SharedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.alg
    }
}

#[cfg(test)]
impl rcgen::SigningKey for SharedKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|_| rcgen::Error::RingUnspecified)
    }
}
