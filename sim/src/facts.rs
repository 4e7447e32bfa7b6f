//! What the harness reads from certificates and CSRs, parsed once per run: every issued
//! certificate is looked at by I1 and I9 when it is written, then by the client that receives
//! it (its key, its role, its validity for the renewal timer), and parsing it each time was a
//! good part of the harness's cost. The full structural checks of I2 parse on their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use x509_parser::prelude::*;

use crate::lock;

/// What a certificate says, for the harness.
#[derive(Debug)]
pub struct CertFacts {
    /// SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
    /// The serial's DER content bytes.
    pub serial: Vec<u8>,
    /// NotBefore and NotAfter, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The subject's OUs.
    pub ous: Vec<String>,
}

/// Parsed certificates (by DER) and CSR keys (by PEM) of one run; unparsable input is
/// remembered as `None`.
#[derive(Default)]
pub struct Facts {
    certs: Mutex<HashMap<Vec<u8>, Option<Arc<CertFacts>>>>,
    csr_keys: Mutex<HashMap<Vec<u8>, Option<SpkiDer>>>,
}

/// A SubjectPublicKeyInfo DER, shared.
pub type SpkiDer = Arc<Vec<u8>>;

impl Facts {
    /// The facts of the certificate `der`.
    pub fn cert(&self, der: &[u8]) -> Option<Arc<CertFacts>> {
        if let Some(f) = lock(&self.certs).get(der) {
            return f.clone();
        }
        let facts = parse_cert(der).map(Arc::new);
        lock(&self.certs).insert(der.to_vec(), facts.clone());
        facts
    }

    /// The facts of the first certificate of `pem`.
    pub fn cert_pem(&self, pem: &[u8]) -> Option<Arc<CertFacts>> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        self.cert(&p.contents)
    }

    /// The SubjectPublicKeyInfo DER of the CSR `pem`.
    pub fn csr_key(&self, pem: &[u8]) -> Option<SpkiDer> {
        if let Some(k) = lock(&self.csr_keys).get(pem) {
            return k.clone();
        }
        let key = csr_key(pem).map(Arc::new);
        lock(&self.csr_keys).insert(pem.to_vec(), key.clone());
        key
    }
}

fn parse_cert(der: &[u8]) -> Option<CertFacts> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(CertFacts {
        spki: c.public_key().raw.to_vec(),
        serial: c.raw_serial().to_vec(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        ous: c
            .subject()
            .iter_organizational_unit()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect(),
    })
}

fn csr_key(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, c) = X509CertificationRequest::from_der(&p.contents).ok()?;
    Some(c.certification_request_info.subject_pki.raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_match_the_certificate_and_are_parsed_once() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "swarm-manager");
        params.serial_number = Some(vec![0x01, 0x02, 0x03].into());
        let cert = params.self_signed(&key).unwrap();
        let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
        let facts = Facts::default();

        let f = facts.cert_pem(cert.pem().as_bytes()).unwrap();
        assert_eq!(f.spki, rcgen::PublicKeyData::subject_public_key_info(&key));
        assert_eq!(f.serial, [1, 2, 3]);
        assert_eq!(f.ous, ["swarm-manager"]);
        assert!(f.not_before < f.not_after);
        assert!(Arc::ptr_eq(&f, &facts.cert(cert.der()).unwrap()));
        assert_eq!(
            *facts.csr_key(csr.as_bytes()).unwrap(),
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );

        assert!(facts.cert(b"not a certificate").is_none());
        assert!(facts.csr_key(b"not a CSR").is_none());
        assert_eq!(lock(&facts.certs).len(), 2);
    }
}
