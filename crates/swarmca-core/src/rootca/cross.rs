//! Cross-signing a new root with the current signer (SwarmKit `CrossSignCACertificate`), and
//! the self-signed CSR that asks an external CA to do the same (SwarmKit's external
//! `CrossSignRootCA` path).
//!
//! A cross-signed certificate is the *same* certificate as the new root — subject, public key,
//! serial, validity and extensions — with the issuer name replaced by the current signer's
//! subject, the authority key identifier pointing at the current signer, and a signature by the
//! current key. The TBSCertificate is rewritten at the DER level so nothing else changes.

use super::key::CaKey;
use super::{chain, RootCa};
use crate::der::{self, TAG_BIT_STRING, TAG_OCTET_STRING, TAG_SEQUENCE};
use crate::pemutil;

/// `[0]` constructed (TBSCertificate version; CSR attributes).
const TAG_CTX0: u8 = 0xa0;
/// `[3]` constructed (TBSCertificate extensions).
const TAG_CTX3: u8 = 0xa3;
/// `[0]` primitive (AuthorityKeyIdentifier keyIdentifier).
const TAG_CTX0_PRIMITIVE: u8 = 0x80;
const TAG_SET: u8 = 0x31;
/// DER of the authorityKeyIdentifier OID (2.5.29.35).
const OID_AKI: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x23];
/// DER of the PKCS#9 extensionRequest OID (1.2.840.113549.1.9.14).
const OID_EXTENSION_REQUEST: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
/// DER of the basicConstraints OID (2.5.29.19), without tag and length.
const OID_BASIC_CONSTRAINTS_CONTENTS: &[u8] = &[0x55, 0x1d, 0x13];

/// Why a root could not be cross-signed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CrossSignError {
    /// This CA has no local signer.
    #[error("no valid signer found")]
    NoValidSigner,
    /// The certificate to cross-sign did not parse.
    #[error("could not parse new CA certificate: {0}")]
    Malformed(String),
    /// The certificate to cross-sign is not a CA certificate.
    #[error("certificate not a CA")]
    NotCa,
    /// The private key of the new root is unusable or does not match it.
    #[error("invalid new root key: {0}")]
    Key(String),
    /// A bug or an unexpected library failure.
    #[error("internal error: {0}")]
    Internal(String),
}

fn malformed(why: &str) -> CrossSignError {
    CrossSignError::Malformed(why.to_string())
}

/// What an external CA needs to cross-sign a root: a CSR carrying the root's exact subject,
/// public key and extensions (self-signed with the root's key), plus the fields CFSSL wants
/// outside the CSR because stock CFSSL ignores CSR extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossSignCsr {
    /// PEM `CERTIFICATE REQUEST`.
    pub csr_pem: Vec<u8>,
    /// The root's common name.
    pub common_name: String,
    /// The root's BasicConstraints extension: (critical, DER value), if it has one.
    pub basic_constraints: Option<(bool, Vec<u8>)>,
}

impl RootCa {
    /// SwarmKit `CrossSignCACertificate`: `other_ca_pem` (its first certificate) re-signed by
    /// this CA's signer. Returns one PEM certificate with the other root's subject, public
    /// key, serial, validity and extensions, issued by this CA's signing certificate.
    pub fn cross_sign(&self, other_ca_pem: &[u8]) -> Result<Vec<u8>, CrossSignError> {
        let signer = self.signer.as_ref().ok_or(CrossSignError::NoValidSigner)?;
        let other_der = first_cert_der(other_ca_pem)?;
        let other = chain::parse_cert(&other_der).map_err(CrossSignError::Malformed)?;
        if !other.is_ca() {
            return Err(CrossSignError::NotCa);
        }
        let parent = chain::parse_cert(&signer.cert_der).map_err(CrossSignError::Internal)?;
        let parent_ski = subject_key_id(&parent);
        let alg = signer.key.algorithm_identifier_der();
        let tbs = rewrite_tbs(&other_der, alg, parent.subject().as_raw(), parent_ski.as_deref())?;
        let sig = signer.key.sign(&tbs).map_err(CrossSignError::Internal)?;
        let cert = der::tlv(TAG_SEQUENCE, &[tbs, alg.to_vec(), bit_string(&sig)].concat());

        // The result must be what it claims: the other root's subject and key, signed by us.
        let parsed = chain::parse_cert(&cert).map_err(CrossSignError::Internal)?;
        if parsed.subject().as_raw() != other.subject().as_raw()
            || parsed.public_key().raw != other.public_key().raw
            || parsed.issuer().as_raw() != parent.subject().as_raw()
            || parsed.verify_signature(Some(parent.public_key())).is_err()
        {
            return Err(CrossSignError::Internal("cross-signed certificate does not check out".into()));
        }
        Ok(pemutil::encode("CERTIFICATE", &cert))
    }
}

/// Builds the CSR an external CA cross-signs (profile `CA`): the root's raw subject, raw
/// SubjectPublicKeyInfo and extensions, signed with the root's key.
pub fn cross_sign_csr(root_cert_pem: &[u8], root_key_pem: &[u8]) -> Result<CrossSignCsr, CrossSignError> {
    let root_der = first_cert_der(root_cert_pem)?;
    let root = chain::parse_cert(&root_der).map_err(CrossSignError::Malformed)?;
    if !root.is_ca() {
        return Err(CrossSignError::NotCa);
    }
    let key = CaKey::new(root_key_pem, &root).map_err(|e| CrossSignError::Key(e.to_string()))?;
    let (_, tbs_elems) = tbs_elements(&root_der)?;
    let extensions = tbs_elems
        .iter()
        .find(|(tag, _)| *tag == TAG_CTX3)
        .and_then(|(_, whole)| der::expect_all(whole, TAG_CTX3))
        .unwrap_or_default();
    let mut info = der::tlv(0x02, &[0]);
    info.extend_from_slice(root.subject().as_raw());
    info.extend_from_slice(root.public_key().raw);
    let attributes = if extensions.is_empty() {
        Vec::new()
    } else {
        let attr = [OID_EXTENSION_REQUEST, &der::tlv(TAG_SET, extensions)].concat();
        der::tlv(TAG_SEQUENCE, &attr)
    };
    info.extend_from_slice(&der::tlv(TAG_CTX0, &attributes));
    let info = der::tlv(TAG_SEQUENCE, &info);
    let alg = key.algorithm_identifier_der();
    let sig = key.sign(&info).map_err(CrossSignError::Internal)?;
    let csr = der::tlv(TAG_SEQUENCE, &[info, alg.to_vec(), bit_string(&sig)].concat());

    let basic_constraints = root.basic_constraints().ok().flatten().and_then(|_| {
        root.extensions()
            .iter()
            .find(|e| e.oid.as_bytes() == OID_BASIC_CONSTRAINTS_CONTENTS)
            .map(|e| (e.critical, e.value.to_vec()))
    });
    Ok(CrossSignCsr {
        csr_pem: pemutil::encode("CERTIFICATE REQUEST", &csr),
        common_name: chain::cn_of(&root),
        basic_constraints,
    })
}

fn first_cert_der(pem: &[u8]) -> Result<Vec<u8>, CrossSignError> {
    chain::parse_certs_pem(pem)
        .map_err(CrossSignError::Malformed)?
        .into_iter()
        .next()
        .ok_or_else(|| malformed("no certificate found"))
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(0);
    v.extend_from_slice(bytes);
    der::tlv(TAG_BIT_STRING, &v)
}

fn subject_key_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    })
}

/// The elements of a certificate's TBSCertificate, and whether it starts with a version.
type TbsElements<'a> = (bool, Vec<(u8, &'a [u8])>);

fn tbs_elements(cert_der: &[u8]) -> Result<TbsElements<'_>, CrossSignError> {
    let outer = der::expect_all(cert_der, TAG_SEQUENCE).ok_or_else(|| malformed("not a certificate"))?;
    let (tbs, _) = der::expect(outer, TAG_SEQUENCE).ok_or_else(|| malformed("no TBSCertificate"))?;
    let elems = der::elements(tbs).ok_or_else(|| malformed("truncated TBSCertificate"))?;
    let versioned = elems.first().is_some_and(|(tag, _)| *tag == TAG_CTX0);
    Ok((versioned, elems))
}

/// The TBSCertificate of `cert_der` with `alg` as signature algorithm, `issuer` as issuer
/// name and, when the parent has a subject key identifier, an AuthorityKeyIdentifier naming
/// it (Go's `CreateCertificate` does the same for a non-self-signed result).
fn rewrite_tbs(
    cert_der: &[u8],
    alg: &[u8],
    issuer: &[u8],
    parent_ski: Option<&[u8]>,
) -> Result<Vec<u8>, CrossSignError> {
    let (versioned, elems) = tbs_elements(cert_der)?;
    let skip = usize::from(versioned);
    // version?, serial, signature, issuer, validity, subject, spki, then optional
    // issuerUniqueID, subjectUniqueID, extensions.
    let fixed = elems.get(..skip + 6).ok_or_else(|| malformed("TBSCertificate has too few fields"))?;
    let rest = elems.get(skip + 6..).unwrap_or_default();
    let mut out = Vec::new();
    for (i, (_, whole)) in fixed.iter().enumerate() {
        match i.checked_sub(skip) {
            Some(1) => out.extend_from_slice(alg),
            Some(2) => out.extend_from_slice(issuer),
            _ => out.extend_from_slice(whole),
        }
    }
    let mut saw_extensions = false;
    for (tag, whole) in rest {
        if *tag == TAG_CTX3 {
            saw_extensions = true;
            out.extend_from_slice(&rewrite_extensions(whole, parent_ski)?);
        } else {
            out.extend_from_slice(whole);
        }
    }
    if !saw_extensions {
        if let Some(ski) = parent_ski {
            let exts = der::tlv(TAG_SEQUENCE, &aki_extension(ski));
            out.extend_from_slice(&der::tlv(TAG_CTX3, &exts));
        }
    }
    Ok(der::tlv(TAG_SEQUENCE, &out))
}

fn aki_extension(ski: &[u8]) -> Vec<u8> {
    let value = der::tlv(TAG_SEQUENCE, &der::tlv(TAG_CTX0_PRIMITIVE, ski));
    der::tlv(TAG_SEQUENCE, &[OID_AKI, &der::tlv(TAG_OCTET_STRING, &value)].concat())
}

fn rewrite_extensions(ctx3_whole: &[u8], parent_ski: Option<&[u8]>) -> Result<Vec<u8>, CrossSignError> {
    let Some(ski) = parent_ski else {
        return Ok(ctx3_whole.to_vec());
    };
    let seq = der::expect_all(ctx3_whole, TAG_CTX3)
        .and_then(|c| der::expect_all(c, TAG_SEQUENCE))
        .ok_or_else(|| malformed("bad extensions"))?;
    let exts = der::elements(seq).ok_or_else(|| malformed("bad extensions"))?;
    let mut out = Vec::new();
    let mut replaced = false;
    for (_, whole) in exts {
        let is_aki = der::expect_all(whole, TAG_SEQUENCE).is_some_and(|c| c.starts_with(OID_AKI));
        if is_aki {
            if !replaced {
                out.extend_from_slice(&aki_extension(ski));
                replaced = true;
            }
        } else {
            out.extend_from_slice(whole);
        }
    }
    if !replaced {
        out.extend_from_slice(&aki_extension(ski));
    }
    Ok(der::tlv(TAG_CTX3, &der::tlv(TAG_SEQUENCE, &out)))
}
