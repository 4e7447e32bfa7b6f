//! Why a root CA cannot be built, sign or verify.

use crate::csr::CsrError;

/// Why a root CA could not be built.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RootCaError {
    /// The roots bundle holds no certificate.
    #[error("no valid root CA certificates found")]
    NoValidRootCertificates,
    /// A certificate bundle did not parse.
    #[error("{0}")]
    MalformedCertificate(String),
    /// A CA certificate is signed with an algorithm outside {RSA, ECDSA} × SHA-2.
    #[error("unsupported signature algorithm")]
    UnsupportedSignatureAlgorithm,
    /// A root is not self-signed or not valid now.
    #[error("error while validating Root CA Certificate: {0}")]
    InvalidRootCertificate(String),
    /// The intermediates do not chain to the roots.
    #[error("invalid intermediate chain: {0}")]
    InvalidIntermediateChain(String),
    /// The first intermediate is not the signing certificate's subject and key.
    #[error("invalid intermediate chain - the first intermediate must have the same subject and public key as the signing cert")]
    IntermediateMismatch,
    /// Only one of signing key and signing certificate was given.
    #[error("must provide both a signing key and a signing cert, or neither")]
    IncompleteSigner,
    /// The signing certificate does not chain to the roots.
    #[error("error while validating signing CA certificate against roots and intermediates: {0}")]
    InvalidSigningCertificate(String),
    /// The private key is not an unencrypted PKCS#1, SEC1 or PKCS#8 PEM key.
    #[error("malformed private key: {0}")]
    MalformedPrivateKey(String),
    /// The key type is not usable for signing here.
    #[error("unknown or unsupported certificate public key algorithm: {0}")]
    UnsupportedKeyAlgorithm(String),
    /// The private key does not belong to the signing certificate.
    #[error("certificate key mismatch")]
    KeyMismatch,
    /// The signing certificate cannot be reproduced as an issuer (for example a subject with
    /// multi-valued RDNs or repeated attribute types).
    #[error("signing certificate cannot be used as an issuer: {0}")]
    UnusableSigner(String),
    /// A bug or an unexpected library failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a node certificate could not be issued.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SignError {
    /// This CA has no local signer (recoverable: a signer may appear later).
    #[error("no valid signer found")]
    NoValidSigner,
    /// The CSR was rejected.
    #[error("failed to sign node certificate: {0}")]
    Csr(CsrError),
    /// The certificate could not be built or signed.
    #[error("failed to sign node certificate: {0}")]
    Internal(String),
    /// The signing certificate, an intermediate or a root has expired (Unix time of the first
    /// end): nothing it would sign could be valid. Recoverable: a rotated root brings a signer.
    #[error("the CA's validity ended at {0} (Unix time); rotate the root CA")]
    Expired(i64),
}

impl SignError {
    /// Whether retrying later may succeed: without a signer, or with an expired one, a new
    /// root (a rotation) may bring one.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::NoValidSigner | Self::Expired(_))
    }
}

/// Why a peer certificate chain was refused.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// No certificate was presented.
    #[error("no certificate presented")]
    EmptyChain,
    /// A certificate did not parse.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The chain does not lead to one of this CA's roots.
    #[error("certificate signed by unknown authority")]
    UnknownIssuer,
    /// A certificate in the chain has expired.
    #[error("certificate has expired")]
    Expired,
    /// A certificate in the chain is not valid yet.
    #[error("certificate is not yet valid")]
    NotYetValid,
    /// Any other path-validation failure.
    #[error("certificate verification failed: {0}")]
    Invalid(String),
    /// The leaf has no (or an empty) CN.
    #[error("no common name in certificate")]
    MissingCommonName,
    /// The leaf has no (or an empty) OU.
    #[error("no organizational unit in certificate")]
    MissingOrganizationalUnit,
    /// The leaf has no (or an empty) O.
    #[error("no organization in certificate")]
    MissingOrganization,
}
