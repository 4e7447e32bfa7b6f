//! The signer seam: what signs a certificate right now — the local root key, or the cluster's
//! external CAs (tried first when configured for the root being signed for) — rebuilt from the
//! cluster object whenever its RootCA, expiry or external CA list changes (SwarmKit's
//! `UpdateRootCA`, docs/behaviour.md §3.6).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use subtle::ConstantTimeEq;
use swarmca_core::rootca::{cluster_cert_expiry, ExternalKeys, NoExternalKeys, RootCa, SignatureCache};
use swarmca_types::Cluster;
use tracing::{error, info, warn};

use crate::error::ServerError;
use crate::external::{certs_der, client_tls_config, filter_external_ca_urls, ExternalCa, ExternalCaError};

/// The signer as last built from the cluster's RootCA object and external CA list.
pub(crate) struct SignerState {
    pub(crate) root: Option<Arc<RootCa>>,
    /// What callers' chains are verified against: the roots, plus the rotation target during a
    /// rotation (verify-only).
    pub(crate) trust: Option<Arc<RootCa>>,
    /// Tried before local signing; without URLs it answers `NoUrls`.
    pub(crate) external: Arc<ExternalCa>,
    /// What the external CAs' TLS servers are trusted by: the roots, plus the rotation target.
    external_pool: Vec<Vec<u8>>,
    /// This manager's own certificate chain and key, presented to external CAs.
    tls_identity: Option<TlsIdentity>,
    last_seen_root: Option<swarmca_types::RootCa>,
    last_seen_expiry: Option<Duration>,
    last_seen_external_cas: Option<Vec<swarmca_types::ExternalCa>>,
    last_error: Option<String>,
    /// Given to every CA built here.
    signature_cache: Option<SignatureCache>,
    /// Resolves CA keys held in a token.
    external_keys: Arc<dyn ExternalKeys>,
}

/// A certificate chain and its private key (PEM). Never printed.
struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: zeroize::Zeroizing<Vec<u8>>,
}

impl SignerState {
    /// What resolves CA keys held in a token (every CA with a key is built through it).
    pub(crate) fn external_keys(&self) -> Arc<dyn ExternalKeys> {
        self.external_keys.clone()
    }
    /// A signer for `initial_root` (what a manager starts with, before it reads the cluster),
    /// without external CAs yet.
    pub(crate) fn new(
        initial_root: Option<RootCa>,
        timeout: Duration,
        signature_cache: Option<SignatureCache>,
        external_keys: Option<Arc<dyn ExternalKeys>>,
    ) -> SignerState {
        let external_pool = initial_root.as_ref().map(|r| r.roots_der().to_vec()).unwrap_or_default();
        let external =
            ExternalCa::with_tls_state(Vec::new(), Vec::new(), external_tls(&external_pool, None), timeout);
        let initial_root = initial_root.map(Arc::new);
        SignerState {
            trust: initial_root.clone(),
            root: initial_root,
            external: Arc::new(external),
            external_pool,
            tls_identity: None,
            last_seen_root: None,
            last_seen_expiry: None,
            last_seen_external_cas: None,
            last_error: None,
            signature_cache,
            external_keys: external_keys.unwrap_or_else(|| Arc::new(NoExternalKeys)),
        }
    }

    /// Presents `cert_pem`/`key_pem` to external CAs from now on (requests in flight finish with
    /// the old configuration); invalid credentials are refused and the previous ones kept.
    pub(crate) fn set_tls_identity(
        &mut self,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), ExternalCaError> {
        let tls = client_tls_config(&self.external_pool, Some((cert_pem, key_pem)))?;
        self.tls_identity = Some(TlsIdentity {
            cert_pem: cert_pem.to_vec(),
            key_pem: zeroize::Zeroizing::new(key_pem.to_vec()),
        });
        self.external.update_tls(tls);
        Ok(())
    }

    /// The last error met while loading the cluster's RootCA object, if the signer is stale
    /// because of it.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.clone()
    }

    /// Rebuilds what changed in `cluster` since the last call (see
    /// `CaServer::update_root_ca`); a bad RootCA keeps the previous signer and is returned.
    pub(crate) fn apply(
        &mut self,
        cluster: &Cluster,
        now: SystemTime,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let api = cluster.root_ca.clone().unwrap_or_default();
        let expiry = cluster_cert_expiry(cluster);
        let external_cas = swarmca_core::cluster::external_cas(cluster);
        // The root external CAs must sign for: the rotation target during a rotation.
        let desired_cert = crate::issuers::signing_root(&api);
        let signer = self;
        let changed = !api.ca_cert.is_empty()
            && (signer.last_seen_expiry != Some(expiry)
                || !signer.last_seen_root.as_ref().is_some_and(|seen| root_ca_equal_stable(seen, &api)));
        // SwarmKit's ExternalCAsEqualStable: nil and empty are equal.
        let external_changed =
            signer.last_seen_external_cas.as_deref().unwrap_or_default() != external_cas.as_slice();
        if !changed {
            if external_changed {
                let urls = filter_external_ca_urls(desired_cert, &api.ca_cert, &external_cas);
                info!(urls = ?crate::external::redact_urls(&urls), "external CA list updated");
                signer.external.update_urls(urls);
                signer.last_seen_external_cas = Some(external_cas);
            }
            return Ok(());
        }
        // Rebuilt from the same material (an expiry change; a restarted manager loading the
        // root it was started with), the signer is reused rather than validated again.
        let cached = |ca: RootCa| match &signer.signature_cache {
            Some(c) => ca.with_signature_cache(c.clone()),
            None => ca,
        };
        match RootCa::from_api_reusing_with(signer.root.as_deref(), &api, expiry, now, &*signer.external_keys)
            .map(cached)
        {
            Ok(root) => {
                let mut pool = root.roots_der().to_vec();
                if let Some(r) = &api.root_rotation {
                    pool.extend(certs_der(&r.ca_cert));
                }
                let trust = match &api.root_rotation {
                    None => Some(Arc::new(root.clone())),
                    Some(r) => {
                        let mut both = api.ca_cert.clone();
                        both.push(b'\n');
                        both.extend_from_slice(&r.ca_cert);
                        match RootCa::new_reusing(signer.trust.as_deref(), &both, &[], &[], expiry, &[], now)
                        {
                            Ok(t) => Some(Arc::new(cached(t))),
                            Err(e) => {
                                warn!(error = %e, "rotation target unusable as a trust root; trusting the current roots only");
                                Some(Arc::new(root.clone()))
                            }
                        }
                    }
                };
                // What callers are verified against did not change (an expiry change, or a
                // rotation target that is unusable as before): keep the same trust object, so
                // the chains already verified under it stay remembered.
                let same_trust = match (&signer.trust, &trust) {
                    (Some(old), Some(new)) => old.roots_der() == new.roots_der(),
                    _ => false,
                };
                if !same_trust {
                    signer.trust = trust;
                }
                // The external CA client (its TLS configuration and idle connections) stays
                // when what it trusts and appends did not change.
                let same_client = signer.external_pool == pool
                    && signer.external.intermediates() == root.intermediates_pem();
                signer.external_pool = pool;
                let urls = filter_external_ca_urls(desired_cert, &api.ca_cert, &external_cas);
                info!(
                    digest = %root.digest_string(),
                    can_sign = root.can_sign(),
                    rotating = api.root_rotation.is_some(),
                    expiry_secs = expiry.as_secs(),
                    external_ca_urls = ?crate::external::redact_urls(&urls),
                    "loaded cluster root CA"
                );
                if same_client {
                    signer.external.update_urls(urls);
                } else {
                    let tls = signer.external_tls();
                    if let Err(e) = &tls {
                        warn!(error = %e, "no TLS configuration for https external CAs");
                    }
                    signer.external = Arc::new(ExternalCa::with_tls_state(
                        urls,
                        root.intermediates_pem().to_vec(),
                        tls,
                        timeout,
                    ));
                }
                signer.root = Some(Arc::new(root));
                signer.last_seen_root = Some(api);
                signer.last_seen_expiry = Some(expiry);
                signer.last_seen_external_cas = Some(external_cas);
                signer.last_error = None;
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                error!(error = %msg, "invalid Root CA object in cluster; keeping the previous signer");
                signer.last_error = Some(msg.clone());
                Err(ServerError::InvalidRootCa(msg))
            }
        }
    }
    /// This manager's TLS credentials (certificate chain PEM, key PEM), if handed over.
    pub(crate) fn tls_identity_pems(&self) -> Option<(&[u8], &[u8])> {
        self.tls_identity.as_ref().map(|i| (i.cert_pem.as_slice(), i.key_pem.as_slice()))
    }

    /// The external CA TLS configuration for the current pool and identity.
    fn external_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        external_tls(&self.external_pool, self.tls_identity.as_ref())
    }
}

fn external_tls(pool: &[Vec<u8>], id: Option<&TlsIdentity>) -> Result<Arc<rustls::ClientConfig>, String> {
    client_tls_config(pool, id.map(|i| (i.cert_pem.as_slice(), i.key_pem.as_slice())))
        .map_err(|e| e.to_string())
}

/// SwarmKit's `RootCAEqualStable`: everything but the join tokens, keys compared in constant time.
pub fn root_ca_equal_stable(a: &swarmca_types::RootCa, b: &swarmca_types::RootCa) -> bool {
    let keys_eq = bool::from(a.ca_key.ct_eq(&b.ca_key));
    let rot_eq = match (&a.root_rotation, &b.root_rotation) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            bool::from(x.ca_key.ct_eq(&y.ca_key))
                && x.ca_cert == y.ca_cert
                && x.cross_signed_ca_cert == y.cross_signed_ca_cert
        }
        _ => false,
    };
    keys_eq
        && rot_eq
        && a.ca_cert == b.ca_cert
        && a.ca_cert_hash == b.ca_cert_hash
        && a.last_forced_rotation == b.last_forced_rotation
}
