//! The root CA: validation of roots, intermediates and signer (SwarmKit `NewRootCA`), node
//! certificate issuance (`ParseValidateAndSignCSR`) and peer verification.

mod chain;
mod cross;
mod errors;
mod generate;
mod issue;
mod issued;
mod key;
mod leaf;
mod params;
pub mod remember;
mod verified;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;

pub use self::cross::{cross_sign_csr, CrossSignCsr, CrossSignError};
pub use self::errors::*;
pub use self::generate::*;
use self::issue::*;
pub use self::issued::IssuedCertError;
use self::key::CaKey;
pub use self::key::{ExternalKey, ExternalKeys, NoExternalKeys, PKCS11_SCHEME};
pub use self::params::*;
use self::remember::RememberingAlg;
pub use self::remember::SignatureCache;
pub use self::verified::VerifiedPeers;
use crate::csr::{self};
use crate::identity::PeerIdentity;
use crate::pemutil;
use crate::role::{Role, CA_ROLE};

/// A local signer: the signing certificate and its matching key.
struct Signer {
    cert_der: Vec<u8>,
    /// The key's PEM (or its reference), wiped when the last clone of this signer goes.
    key_pem: zeroize::Zeroizing<Vec<u8>>,
    key: Arc<CaKey>,
    /// Whether the signing certificate has a subject key identifier (Go copies it into
    /// the AKI of issued certificates, and omits the AKI otherwise).
    #[cfg_attr(not(test), allow(dead_code))]
    has_ski: bool,
    /// What this signer puts in every leaf (issuer name, AKI, algorithm), encoded once.
    template: leaf::LeafTemplate,
}

/// A validated root CA: trusted roots, optional intermediates and optional local signer.
#[derive(Clone)]
pub struct RootCa {
    certs_pem: Vec<u8>,
    roots_der: Vec<Vec<u8>>,
    digest: [u8; 32],
    intermediates_pem: Vec<u8>,
    signer: Option<Arc<Signer>>,
    expiry: Duration,
    /// What this CA was built from (see [`source_digest`]), so that a rebuild from the same
    /// material can reuse it ([`RootCa::new_reusing`]).
    source: [u8; 32],
    /// The instants (Unix seconds, inclusive) at which every certificate whose validity
    /// [`RootCa::new`] checks is valid: the latest NotBefore and the earliest NotAfter of the
    /// roots, the intermediates and the signing certificate.
    valid_window: (i64, i64),
    /// Signature checks shared with other CAs (see [`remember`]); none by default.
    signature_cache: Option<SignatureCache>,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest_string())
            .field("roots", &self.roots_der.len())
            .field("intermediates_len", &self.intermediates_pem.len())
            .field("can_sign", &self.can_sign())
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl RootCa {
    /// SwarmKit `NewRootCA`: validates the roots (self-signed, valid at `now`, allowed
    /// signature algorithm), the intermediates (chain to the roots), and the optional signer
    /// (certificate chains to roots + intermediates, key matches, first intermediate has the
    /// signer's subject and key).
    ///
    /// `expiry` goes through [`effective_expiry`]. Supported signing keys are ECDSA P-256 and
    /// P-384 and RSA 2048–4096 bits; ECDSA P-521 and larger RSA keys, which *ring* cannot sign
    /// with, are refused with [`RootCaError::UnsupportedKeyAlgorithm`].
    pub fn new(
        roots_pem: &[u8],
        sign_cert_pem: &[u8],
        sign_key_pem: &[u8],
        expiry: Duration,
        intermediates_pem: &[u8],
        now: SystemTime,
    ) -> Result<RootCa, RootCaError> {
        RootCa::new_with(
            roots_pem,
            sign_cert_pem,
            sign_key_pem,
            expiry,
            intermediates_pem,
            now,
            &NoExternalKeys,
        )
    }

    /// [`RootCa::new`], where `sign_key_pem` may also be a reference to a key held outside
    /// (a `pkcs11:` URI) that `keys` resolves: the signer then signs through it (ECDSA P-256).
    pub fn new_with(
        roots_pem: &[u8],
        sign_cert_pem: &[u8],
        sign_key_pem: &[u8],
        expiry: Duration,
        intermediates_pem: &[u8],
        now: SystemTime,
        keys: &dyn ExternalKeys,
    ) -> Result<RootCa, RootCaError> {
        let now_secs = unix_secs(now);
        let roots_der = chain::parse_certs_pem(roots_pem).map_err(RootCaError::MalformedCertificate)?;
        if roots_der.is_empty() {
            return Err(RootCaError::NoValidRootCertificates);
        }
        let roots = parse_all(&roots_der)?;
        let mut window = (i64::MIN, i64::MAX);
        let mut widen = |c: &X509Certificate<'_>| {
            window.0 = window.0.max(c.validity().not_before.timestamp());
            window.1 = window.1.min(c.validity().not_after.timestamp());
        };
        for root in &roots {
            widen(root);
            if !chain::signature_alg_allowed(root) {
                return Err(RootCaError::UnsupportedSignatureAlgorithm);
            }
            chain::check_validity(root, now_secs).map_err(RootCaError::InvalidRootCertificate)?;
            match root.verify_signature(Some(root.public_key())) {
                Ok(()) if root.issuer().as_raw() == root.subject().as_raw() => {}
                Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
                    return Err(RootCaError::InvalidRootCertificate(format!(
                        "the signature of certificate (CN {:?}) cannot be verified: \
                         ECDSA with SHA-512 and curve P-521 are not supported",
                        chain::cn_of(root)
                    )))
                }
                _ => {
                    return Err(RootCaError::InvalidRootCertificate(format!(
                        "certificate (CN {:?}) is not self-signed",
                        chain::cn_of(root)
                    )))
                }
            }
        }

        let intermediates_der = if pemutil::trim_space(intermediates_pem).is_empty() {
            Vec::new()
        } else {
            let der =
                chain::parse_certs_pem(intermediates_pem).map_err(RootCaError::InvalidIntermediateChain)?;
            let parsed = parse_all(&der)?;
            chain::validate_chain(&roots, &parsed, now_secs)
                .map_err(RootCaError::InvalidIntermediateChain)?;
            der
        };
        let intermediates = parse_all(&intermediates_der)?;
        intermediates.iter().for_each(&mut widen);

        let signer = if sign_cert_pem.is_empty() && sign_key_pem.is_empty() {
            None
        } else {
            if sign_cert_pem.is_empty() || sign_key_pem.is_empty() {
                return Err(RootCaError::IncompleteSigner);
            }
            let cert_der = chain::parse_certs_pem(sign_cert_pem)
                .map_err(RootCaError::MalformedCertificate)?
                .into_iter()
                .next()
                .ok_or_else(|| RootCaError::MalformedCertificate("no signing certificate found".into()))?;
            let cert = chain::parse_cert(&cert_der).map_err(RootCaError::MalformedCertificate)?;
            if !chain::signature_alg_allowed(&cert) {
                return Err(RootCaError::UnsupportedSignatureAlgorithm);
            }
            widen(&cert);
            if !chain::chains_to_roots(&cert, &intermediates, &roots, now_secs, 0) {
                return Err(RootCaError::InvalidSigningCertificate(
                    "certificate signed by unknown authority or not valid now".into(),
                ));
            }
            let key = CaKey::new_with(sign_key_pem, &cert, keys)?;
            if let Some(first) = intermediates.first() {
                if first.subject().as_raw() != cert.subject().as_raw()
                    || first.public_key().raw != cert.public_key().raw
                {
                    return Err(RootCaError::IntermediateMismatch);
                }
            }
            let has_ski = cert.iter_extensions().any(|e| {
                matches!(
                    e.parsed_extension(),
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(_)
                )
            });
            let key = Arc::new(key);
            let template =
                leaf::LeafTemplate::new(&cert_der, &key).map_err(RootCaError::MalformedCertificate)?;
            let signer = Signer {
                cert_der: cert_der.clone(),
                key_pem: zeroize::Zeroizing::new(sign_key_pem.to_vec()),
                key,
                has_ski,
                template,
            };
            check_signer(&signer)?;
            Some(Arc::new(signer))
        };

        Ok(RootCa {
            certs_pem: roots_pem.to_vec(),
            roots_der,
            digest: digest(roots_pem),
            intermediates_pem: intermediates_pem.to_vec(),
            signer,
            expiry: effective_expiry(Some(expiry)),
            source: source_digest(roots_pem, sign_cert_pem, sign_key_pem, intermediates_pem),
            valid_window: window,
            signature_cache: None,
        })
    }

    /// The same CA, remembering the signature checks of its chain verifications in `cache`,
    /// shared with every other CA given the same cache (see [`remember`]). Verdicts do not
    /// change; only the time they take.
    pub fn with_signature_cache(mut self, cache: SignatureCache) -> RootCa {
        self.signature_cache = Some(cache);
        self
    }

    /// [`RootCa::new`], answered from `previous` when that was built from exactly the same
    /// material and every certificate it checked is still valid at `now`: the same CA with
    /// `expiry`, without parsing and verifying everything again (a cluster update that only
    /// changes the certificate expiry, or a restarted manager loading the root it was started
    /// with). Anything else is built and validated afresh.
    pub fn new_reusing(
        previous: Option<&RootCa>,
        roots_pem: &[u8],
        sign_cert_pem: &[u8],
        sign_key_pem: &[u8],
        expiry: Duration,
        intermediates_pem: &[u8],
        now: SystemTime,
    ) -> Result<RootCa, RootCaError> {
        RootCa::new_reusing_with(
            previous,
            roots_pem,
            sign_cert_pem,
            sign_key_pem,
            expiry,
            intermediates_pem,
            now,
            &NoExternalKeys,
        )
    }

    /// [`RootCa::new_reusing`] with key references resolved by `keys` (see [`RootCa::new_with`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new_reusing_with(
        previous: Option<&RootCa>,
        roots_pem: &[u8],
        sign_cert_pem: &[u8],
        sign_key_pem: &[u8],
        expiry: Duration,
        intermediates_pem: &[u8],
        now: SystemTime,
        keys: &dyn ExternalKeys,
    ) -> Result<RootCa, RootCaError> {
        if let Some(prev) = previous {
            let now_secs = unix_secs(now);
            if prev.valid_window.0 <= now_secs
                && now_secs <= prev.valid_window.1
                && prev.source == source_digest(roots_pem, sign_cert_pem, sign_key_pem, intermediates_pem)
            {
                return Ok(RootCa { expiry: effective_expiry(Some(expiry)), ..prev.clone() });
            }
        }
        RootCa::new_with(roots_pem, sign_cert_pem, sign_key_pem, expiry, intermediates_pem, now, keys)
    }

    /// SwarmKit `RootCAFromAPI`.
    ///
    /// Without a rotation the signer is `ca_cert` + `ca_key`. During a rotation the roots
    /// stay `ca_cert`, the signer is the cross-signed new root + the new key, and the
    /// cross-signed certificate is the intermediate. An empty key gives a verify-only CA.
    pub fn from_api(
        api: &swarmca_types::RootCa,
        expiry: Duration,
        now: SystemTime,
    ) -> Result<RootCa, RootCaError> {
        RootCa::from_api_reusing(None, api, expiry, now)
    }

    /// [`RootCa::from_api`] through [`RootCa::new_reusing`].
    pub fn from_api_reusing(
        previous: Option<&RootCa>,
        api: &swarmca_types::RootCa,
        expiry: Duration,
        now: SystemTime,
    ) -> Result<RootCa, RootCaError> {
        RootCa::from_api_reusing_with(previous, api, expiry, now, &NoExternalKeys)
    }

    /// [`RootCa::from_api_reusing`] with key references resolved by `keys`.
    pub fn from_api_reusing_with(
        previous: Option<&RootCa>,
        api: &swarmca_types::RootCa,
        expiry: Duration,
        now: SystemTime,
        keys: &dyn ExternalKeys,
    ) -> Result<RootCa, RootCaError> {
        let (mut sign_cert, key, intermediates): (&[u8], &[u8], &[u8]) = match &api.root_rotation {
            Some(r) => (&r.cross_signed_ca_cert, &r.ca_key, &r.cross_signed_ca_cert),
            None => (&api.ca_cert, &api.ca_key, &[]),
        };
        if key.is_empty() {
            sign_cert = &[];
        }
        RootCa::new_reusing_with(previous, &api.ca_cert, sign_cert, key, expiry, intermediates, now, keys)
    }

    /// The roots PEM bundle, exactly as given.
    pub fn certs_pem(&self) -> &[u8] {
        &self.certs_pem
    }

    /// SHA-256 of [`Self::certs_pem`].
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// `sha256:<hex>` of [`Self::certs_pem`].
    pub fn digest_string(&self) -> String {
        format!("sha256:{}", hex::encode(self.digest))
    }

    /// The intermediates PEM, exactly as given; appended to every issued certificate.
    pub fn intermediates_pem(&self) -> &[u8] {
        &self.intermediates_pem
    }

    /// Whether this CA holds a local signing key.
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// The signing key PEM, exactly as given, if any.
    pub fn signer_key_pem(&self) -> Option<&[u8]> {
        self.signer.as_ref().map(|s| s.key_pem.as_slice())
    }

    /// The DER of the signing certificate, if any.
    pub fn signer_cert_der(&self) -> Option<&[u8]> {
        self.signer.as_ref().map(|s| s.cert_der.as_slice())
    }

    /// The DER of every root certificate.
    pub fn roots_der(&self) -> &[Vec<u8>] {
        &self.roots_der
    }

    /// The node certificate validity used when signing (already through
    /// [`effective_expiry`]).
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// SwarmKit `ParseValidateAndSignCSR`.
    ///
    /// Only the CSR's public key is used. The certificate gets subject O=`org`,
    /// OU=`role.ou()`, CN=`cn` (in that order), DNS SANs `[role OU, cn]` plus `swarm-ca` for
    /// managers, NotBefore = `now` rounded to the nearest minute minus [`CERT_BACKDATE`],
    /// NotAfter = NotBefore + expiry + backdate (cut to the earliest NotAfter of the signing
    /// certificate, intermediates and roots: a leaf never outlives its issuer), the serial from `serial` with the top bit
    /// cleared, critical KeyUsage digitalSignature|keyEncipherment, EKU serverAuth+clientAuth,
    /// critical BasicConstraints CA:false, SHA-1 SKI and (when the signer has an SKI) AKI.
    ///
    /// Returns the leaf PEM followed by the raw intermediates. Without a signer this fails with
    /// [`SignError::NoValidSigner`] before the CSR is looked at, as in SwarmKit.
    pub fn sign_csr(
        &self,
        csr_pem: &[u8],
        cn: &str,
        role: Role,
        org: &str,
        now: SystemTime,
        serial: [u8; 20],
    ) -> Result<Vec<u8>, SignError> {
        let signer = self.signer.as_ref().ok_or(SignError::NoValidSigner)?;
        // A CA kept running past the end of its root (or signing certificate) signs nothing:
        // every certificate would be dead on issue.
        if self.valid_window.1 <= unix_secs(now) {
            return Err(SignError::Expired(self.valid_window.1));
        }
        let csr =
            csr::parse_csr_pem_remembering(csr_pem, self.signature_cache.as_ref()).map_err(SignError::Csr)?;
        let mut hosts = vec![role.ou(), cn];
        if role == Role::Manager {
            hosts.push(CA_ROLE);
        }
        let not_before = backdated_start(now).map_err(SignError::Internal)?;
        let not_after = add(not_before, self.expiry + CERT_BACKDATE).map_err(SignError::Internal)?;
        // A leaf never outlives what it chains through: its NotAfter is cut to the earliest
        // NotAfter of the signing certificate, the intermediates and the roots (as step-ca cuts
        // a leaf to its issuer's life). SwarmKit does not cut it, and hands out certificates that
        // stop verifying before their NotAfter once the root nears its end.
        let not_after = match time::OffsetDateTime::from_unix_timestamp(self.valid_window.1) {
            Ok(end) if end < not_after => end,
            _ => not_after,
        };
        let der =
            issue(signer, csr.public_key_der(), org, role.ou(), cn, &hosts, not_before, not_after, serial)
                .map_err(SignError::Internal)?;
        // The issued key must be exactly the CSR's key: its SubjectPublicKeyInfo is the one
        // after the subject in the TBSCertificate (the whole certificate is not re-parsed: that
        // cost a sixth of the signing time).
        if spki_of_issued(&der) != Some(csr.public_key_der()) {
            return Err(SignError::Internal("issued public key differs from the CSR's".into()));
        }
        let mut out = pemutil::encode("CERTIFICATE", &der);
        out.extend_from_slice(&self.intermediates_pem);
        Ok(out)
    }

    /// Verifies a peer's chain (leaf first, then intermediates) against the roots at `now`
    /// for client authentication, with rustls-webpki, and returns the leaf's identity
    /// (CN, every OU, first O; each must be present and non-empty).
    pub fn verify_peer(&self, chain_der: &[Vec<u8>], now: SystemTime) -> Result<PeerIdentity, VerifyError> {
        self.verify_peer_issuer(chain_der, now).map(|(identity, _)| identity)
    }

    /// [`RootCa::verify_peer`], also returning the issuer of the leaf as SwarmKit's TLS info
    /// records it: (raw issuer subject DER, issuer SubjectPublicKeyInfo DER), taken from the
    /// verified path (the certificate whose key checked the leaf's signature: the chain's
    /// first intermediate used, or the root). The same answer as [`leaf_issuer`] with the
    /// chain's intermediates and these roots as candidates, without verifying again.
    pub fn verify_peer_issuer(
        &self,
        chain_der: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<(PeerIdentity, LeafIssuer), VerifyError> {
        let (leaf_der, rest) = chain_der.split_first().ok_or(VerifyError::EmptyChain)?;
        let issuer_spki = self
            .webpki_verify(leaf_der, rest, now, &[webpki::KeyUsage::client_auth()])
            .map_err(|f| match f {
                ChainFailure::Leaf(m) => VerifyError::Malformed(m),
                ChainFailure::Root(m) => VerifyError::Invalid(format!("unusable root: {m}")),
                ChainFailure::Clock => VerifyError::NotYetValid,
                ChainFailure::Verify(webpki::Error::CertExpired { .. }) => VerifyError::Expired,
                ChainFailure::Verify(webpki::Error::CertNotValidYet { .. }) => VerifyError::NotYetValid,
                ChainFailure::Verify(
                    webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey,
                ) => VerifyError::UnknownIssuer,
                ChainFailure::Verify(other) => VerifyError::Invalid(format!("{other:?}")),
            })?;
        let cert = chain::parse_cert(leaf_der).map_err(VerifyError::Malformed)?;
        // webpki matched the issuer's subject to the leaf's issuer name byte for byte.
        let issuer_subject = cert.issuer().as_raw().to_vec();
        Ok((identity_of(&cert)?, (issuer_subject, issuer_spki)))
    }

    /// Verifies `leaf` (with `intermediates`) to this root set at `now`, with rustls-webpki,
    /// for every one of `usages` (at least one); returns the SubjectPublicKeyInfo DER of the
    /// leaf's issuer on the verified path.
    pub(crate) fn webpki_verify(
        &self,
        leaf: &[u8],
        intermediates: &[Vec<u8>],
        now: SystemTime,
        usages: &[webpki::KeyUsage],
    ) -> Result<Vec<u8>, ChainFailure> {
        let leaf_ref = CertificateDer::from(leaf);
        let ee =
            webpki::EndEntityCert::try_from(&leaf_ref).map_err(|e| ChainFailure::Leaf(format!("{e:?}")))?;
        let root_refs: Vec<CertificateDer<'_>> =
            self.roots_der.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
        let anchors = root_refs
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ChainFailure::Root(format!("{e:?}")))?;
        let intermediates: Vec<CertificateDer<'_>> =
            intermediates.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
        let since_epoch = now.duration_since(UNIX_EPOCH).map_err(|_| ChainFailure::Clock)?;
        // Each usage is a full path validation; the signatures the first one checked need not
        // be checked again by the others (nor any the shared cache, if given, remembers: see
        // [`remember`]).
        let remembering: Vec<RememberingAlg<'_>> = webpki::ALL_VERIFICATION_ALGS
            .iter()
            .map(|a| RememberingAlg::new(*a, self.signature_cache.as_ref()))
            .collect();
        let algs: Vec<&dyn SignatureVerificationAlgorithm> =
            remembering.iter().map(|a| a as &dyn SignatureVerificationAlgorithm).collect();
        let mut issuer_spki = None;
        for usage in usages {
            let path = ee
                .verify_for_usage(
                    &algs,
                    &anchors,
                    &intermediates,
                    UnixTime::since_unix_epoch(since_epoch),
                    *usage,
                    None,
                    None,
                )
                .map_err(ChainFailure::Verify)?;
            issuer_spki = Some(path.issuer_spki().as_ref().to_vec());
        }
        issuer_spki.ok_or_else(|| ChainFailure::Leaf("no key usage to verify for".into()))
    }
}

/// Why [`RootCa::webpki_verify`] failed.
pub(crate) enum ChainFailure {
    /// The leaf does not parse.
    Leaf(String),
    /// A root is unusable as a trust anchor.
    Root(String),
    /// `now` is before 1970.
    Clock,
    /// Path building or validation failed.
    Verify(webpki::Error),
}

/// Parses a PEM certificate and returns (raw subject DER, SubjectPublicKeyInfo DER) of the
/// first certificate.
pub fn issuer_info_of_cert_pem(pem: &[u8]) -> Result<(Vec<u8>, Vec<u8>), RootCaError> {
    let ders = chain::parse_certs_pem(pem).map_err(RootCaError::MalformedCertificate)?;
    let der = ders.first().ok_or_else(|| RootCaError::MalformedCertificate("no certificate found".into()))?;
    let cert = chain::parse_cert(der).map_err(RootCaError::MalformedCertificate)?;
    Ok((cert.subject().as_raw().to_vec(), cert.public_key().raw.to_vec()))
}

/// The issuer of a leaf certificate as SwarmKit's TLS info records it: (raw subject DER of
/// the issuing certificate, its SubjectPublicKeyInfo DER).
pub type LeafIssuer = (Vec<u8>, Vec<u8>);

/// The issuer of `chain[0]` as SwarmKit's TLS info records it: (raw issuer subject DER,
/// issuer SubjectPublicKeyInfo DER). The issuing certificate is looked up among the rest of
/// the chain and `candidates`: same subject as the leaf's issuer, and the key that verifies
/// the leaf's signature (a cross-signed root and the root it replaces often share their
/// subject). `None` if the leaf does not parse or no candidate issued it.
pub fn leaf_issuer(chain: &[Vec<u8>], candidates: &[Vec<u8>]) -> Option<LeafIssuer> {
    let (leaf_der, rest) = chain.split_first()?;
    let leaf = chain::parse_cert(leaf_der).ok()?;
    let issuer = leaf.issuer().as_raw();
    let parsed: Vec<X509Certificate<'_>> =
        rest.iter().chain(candidates).filter_map(|d| chain::parse_cert(d).ok()).collect();
    let found = parsed
        .iter()
        .filter(|c| c.subject().as_raw() == issuer)
        .find(|c| leaf.verify_signature(Some(c.public_key())).is_ok())?;
    Some((found.subject().as_raw().to_vec(), found.public_key().raw.to_vec()))
}

/// The SubjectPublicKeyInfo (whole TLV) of a DER certificate, by walking the TBSCertificate:
/// version?, serial, signature, issuer, validity, subject, subjectPublicKeyInfo.
fn spki_of_issued(cert_der: &[u8]) -> Option<&[u8]> {
    let outer = crate::der::expect_all(cert_der, 0x30)?;
    let (tbs, _) = crate::der::expect(outer, 0x30)?;
    let elems = crate::der::elements(tbs)?;
    let skip = usize::from(elems.first()?.0 == 0xa0);
    let (tag, whole) = *elems.get(skip + 5)?;
    (tag == 0x30).then_some(whole)
}

/// Reads CN, OUs and O from a leaf certificate.
fn identity_of(cert: &X509Certificate<'_>) -> Result<PeerIdentity, VerifyError> {
    let subject = cert.subject();
    let as_str = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(str::to_string).map_err(|e| VerifyError::Malformed(e.to_string()))
    };
    let node_id = match subject.iter_common_name().next() {
        Some(a) => as_str(a)?,
        None => String::new(),
    };
    if node_id.is_empty() {
        return Err(VerifyError::MissingCommonName);
    }
    let roles = subject.iter_organizational_unit().map(as_str).collect::<Result<Vec<_>, _>>()?;
    if roles.first().is_none_or(|r| r.is_empty()) {
        return Err(VerifyError::MissingOrganizationalUnit);
    }
    let org = match subject.iter_organization().next() {
        Some(a) => as_str(a)?,
        None => String::new(),
    };
    if org.is_empty() {
        return Err(VerifyError::MissingOrganization);
    }
    Ok(PeerIdentity { node_id, roles, org })
}

/// SHA-256 over the inputs of [`RootCa::new`] other than the expiry and the instant, each
/// length-prefixed (so no two different inputs share a digest by shifting bytes between them).
fn source_digest(
    roots_pem: &[u8],
    sign_cert_pem: &[u8],
    sign_key_pem: &[u8],
    intermediates_pem: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [roots_pem, sign_cert_pem, sign_key_pem, intermediates_pem] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

fn parse_all(ders: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, RootCaError> {
    ders.iter().map(|d| chain::parse_cert(d).map_err(RootCaError::MalformedCertificate)).collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_external;
#[cfg(test)]
mod tests_validity;
