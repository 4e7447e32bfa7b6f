//! A new self-signed root.

use std::fmt;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose,
};

use super::*;

/// A freshly generated root certificate and key.
#[derive(Clone)]
pub struct GeneratedRoot {
    /// The self-signed certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM-encoded PKCS#8.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for GeneratedRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedRoot")
            .field("cert_digest", &digest_string(&self.cert_pem))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generates a self-signed ECDSA P-256 root like `cfssl initca`.
///
/// Subject CN `cn`; NotBefore is `now` (rounded to the minute) minus [`CERT_BACKDATE`],
/// NotAfter is NotBefore + backdate + [`ROOT_CA_VALIDITY`]; BasicConstraints CA:true,
/// KeyUsage certSign|cRLSign, SHA-1 subject key identifier. The key is drawn from *ring*'s
/// `SystemRandom`.
pub fn generate_root(cn: &str, now: SystemTime, serial: [u8; 20]) -> Result<GeneratedRoot, RootCaError> {
    let internal = |e: rcgen::Error| RootCaError::Internal(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(internal)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, dn_value(cn));
    let not_before = backdated_start(now).map_err(RootCaError::Internal)?;
    params.not_before = not_before;
    params.not_after = add(not_before, CERT_BACKDATE + ROOT_CA_VALIDITY).map_err(RootCaError::Internal)?;
    params.serial_number = Some(serial_number(serial));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_id(key.public_key_raw()));
    let cert = params.self_signed(&key).map_err(internal)?;
    Ok(GeneratedRoot { cert_pem: cert.pem().into_bytes(), key_pem: key.serialize_pem().into_bytes() })
}
