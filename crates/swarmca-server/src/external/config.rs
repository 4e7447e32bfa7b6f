//! What an external CA client is configured with: its TLS configuration, which of the
//! cluster's external CAs sign for a root, and URLs as they may be logged.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;
use swarmca_core::rootca::normalize_pems;
use swarmca_types::external_ca::CaProtocol;
use tracing::debug;

use super::error::*;

/// Builds the TLS client configuration for external CAs: trust `roots_der` (the cluster roots,
/// plus the rotation target during a root rotation) and, if given, present `identity`
/// (certificate chain PEM, private key PEM; this manager's own credentials). TLS 1.2+ with the
/// *ring* provider; the server name is taken from each URL's host.
pub fn client_tls_config(
    roots_der: &[Vec<u8>],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, ExternalCaError> {
    let bad = |e: String| ExternalCaError::TlsConfig(e);
    let mut roots = rustls::RootCertStore::empty();
    for der in roots_der {
        roots.add(CertificateDer::from(der.clone())).map_err(|e| bad(format!("unusable trust root: {e}")))?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("client certificate: {e}")))?;
            if chain.is_empty() {
                return Err(bad("client certificate: no certificate found".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad(format!("client key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad(e.to_string()))?
        }
    };
    Ok(Arc::new(cfg))
}

/// The DER of every `CERTIFICATE` block in `pem` (other or malformed blocks are skipped).
pub use swarmca_core::pem::certs_der;

/// SwarmKit `filterExternalCAURLS`: the URLs of the CFSSL entries whose CA certificate (or
/// `default_cert` when an entry has none) equals `desired_cert` after PEM normalization, in
/// list order.
pub fn filter_external_ca_urls(
    desired_cert: &[u8],
    default_cert: &[u8],
    list: &[swarmca_types::ExternalCa],
) -> Vec<String> {
    let desired = normalize_pems(desired_cert);
    let mut urls = Vec::new();
    for (i, ext) in list.iter().enumerate() {
        if ext.protocol != CaProtocol::Cfssl as i32 {
            debug!(index = i, url = %redact_url(&ext.url), "skipping external CA with an unknown protocol");
            continue;
        }
        let cert = if ext.ca_cert.is_empty() { default_cert } else { &ext.ca_cert };
        if normalize_pems(cert) != desired {
            debug!(index = i, url = %redact_url(&ext.url), "skipping external CA for another CA certificate");
            continue;
        }
        urls.push(ext.url.clone());
    }
    urls
}

/// `url` without any `user:password@` part, for logs and operator messages.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// Redacted forms of `urls`.
pub(crate) fn redact_urls(urls: &[String]) -> Vec<String> {
    urls.iter().map(|u| redact_url(u)).collect()
}

/// A TLS client configuration for talking to external CAs, or why there is none.
pub(super) type TlsState = Result<Arc<ClientConfig>, String>;
