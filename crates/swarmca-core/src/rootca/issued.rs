//! Checks on a node certificate issued by someone else (an external CA). SwarmKit stored
//! whatever its external CA returned; here the result must be exactly what was asked for
//! before it is handed to a node.

use std::time::SystemTime;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use super::{chain, RootCa};
use crate::pemutil;
use crate::role::Role;

/// Why an externally issued certificate was refused.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IssuedCertError {
    /// The bundle is not a sequence of PEM certificates.
    #[error("not a PEM certificate chain: {0}")]
    Malformed(String),
    /// The CSR's public key could not be read.
    #[error("cannot read the CSR's public key: {0}")]
    Csr(String),
    /// The certificate certifies another key than the CSR's.
    #[error("the certificate's public key is not the CSR's")]
    KeyMismatch,
    /// A subject field differs from what was requested.
    #[error("the certificate's {field} is {got:?}, expected {want:?}")]
    Subject {
        /// `CN`, `OU` or `O`.
        field: &'static str,
        /// What was requested.
        want: Vec<String>,
        /// What the certificate holds.
        got: Vec<String>,
    },
    /// The leaf plus the bundle's other certificates do not verify to the roots at `now` for
    /// TLS client and server use.
    #[error("the certificate does not verify against the cluster root CA: {0}")]
    Chain(String),
    /// The certificate's NotBefore is after `now`: the signer's clock is ahead of ours. Not a
    /// defect of the certificate; callers may retry later.
    #[error("the certificate is not valid yet (the external CA's clock is ahead of ours)")]
    NotYetValid,
}

impl RootCa {
    /// Checks `bundle_pem` (leaf first, then intermediates) returned by an external CA for
    /// `csr_pem`: the leaf's public key is the CSR's; its subject is exactly CN=`cn`,
    /// OU=`role`, O=`org`; and the chain verifies to this CA's roots at `now` for both TLS
    /// client and server authentication (the uses a swarm node certificate has). The CSR is
    /// not re-validated beyond reading its public key: the external CA vouched for it.
    pub fn check_issued(
        &self,
        bundle_pem: &[u8],
        csr_pem: &[u8],
        cn: &str,
        role: Role,
        org: &str,
        now: SystemTime,
    ) -> Result<(), IssuedCertError> {
        let ders = chain::parse_certs_pem(bundle_pem).map_err(IssuedCertError::Malformed)?;
        let (leaf_der, rest) =
            ders.split_first().ok_or_else(|| IssuedCertError::Malformed("no certificate".into()))?;
        let leaf = chain::parse_cert(leaf_der).map_err(IssuedCertError::Malformed)?;

        if leaf.public_key().raw != csr_public_key(csr_pem)?.as_slice() {
            return Err(IssuedCertError::KeyMismatch);
        }
        let subject = leaf.subject();
        let strings = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            it.map(|a| a.as_str().map(str::to_string).unwrap_or_else(|_| "<non-string>".into()))
                .collect::<Vec<_>>()
        };
        for (field, want, got) in [
            ("CN", cn, strings(&mut subject.iter_common_name())),
            ("OU", role.ou(), strings(&mut subject.iter_organizational_unit())),
            ("O", org, strings(&mut subject.iter_organization())),
        ] {
            if got.len() != 1 || got.first().map(String::as_str) != Some(want) {
                return Err(IssuedCertError::Subject { field, want: vec![want.to_string()], got });
            }
        }

        self.webpki_verify(
            leaf_der,
            rest,
            now,
            &[webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()],
        )
        .map_err(|f| match f {
            super::ChainFailure::Leaf(m) => IssuedCertError::Malformed(m),
            super::ChainFailure::Root(m) => IssuedCertError::Chain(format!("unusable root: {m}")),
            super::ChainFailure::Clock => IssuedCertError::Chain("clock before 1970".into()),
            super::ChainFailure::Verify(webpki::Error::CertNotValidYet { .. }) => {
                IssuedCertError::NotYetValid
            }
            super::ChainFailure::Verify(e) => IssuedCertError::Chain(format!("{e:?}")),
        })
        .map(drop)
    }
}

/// The SubjectPublicKeyInfo DER of the first PEM block of `csr_pem`, which must be a CSR.
fn csr_public_key(csr_pem: &[u8]) -> Result<Vec<u8>, IssuedCertError> {
    let (block, _) = pemutil::decode(csr_pem).ok_or_else(|| IssuedCertError::Csr("no PEM block".into()))?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(IssuedCertError::Csr(format!("PEM block type is {:?}", block.label)));
    }
    let (_, csr) =
        X509CertificationRequest::from_der(&block.der).map_err(|e| IssuedCertError::Csr(e.to_string()))?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

#[cfg(test)]
mod tests;
