//! The external CA client: SwarmKit's `ca/external.go`, CFSSL's `/api/v1/cfssl/sign` protocol
//! over HTTP/1.1, optionally TLS with this manager's certificate as client certificate (docs/behaviour.md §5).
//!
//! Built on hyper's connection API over `tokio::net::TcpStream` and tokio-rustls, with
//! `tokio::time::timeout` as the deadline: these are the names madsim simulates, so the same
//! client (TLS included) runs on real sockets and under the simulator. Connections are kept
//! alive between requests as Go's `http.Client` (SwarmKit's) keeps them: after a complete
//! answer a connection goes back to a small idle pool ([`MAX_IDLE_PER_HOST`] per host and TLS
//! configuration, closed after [`IDLE_TIMEOUT`] unused), so a busy CA pays one TLS handshake,
//! not one per CSR. A request whose deadline passes, or whose answer grows past
//! [`CERTIFICATE_MAX_SIZE`], drops its connection, socket and all. A request that fails on a
//! reused connection before any answer (the peer closed it while idle) is sent once more on a
//! new one, as Go's transport does.
//!
//! ```text
//! ExternalCa { urls, intermediates, tls }    replaced atomically; every sign() takes a snapshot
//!   sign(req) -> leaf ++ intermediates       first URL that answers a certificate wins
//!            -> Err(NoUrls)                  the caller signs locally
//!            -> Err(e), e.is_recoverable()   the caller retries later (node stays PENDING)
//!            -> Err(e), fatal                the caller writes FAILED with e
//! ```
//!
//! One deliberate difference from SwarmKit: a real `cfssl serve` answers every error with a
//! non-200 status (HTTP 400 for its own classified errors), which SwarmKit treats as
//! recoverable, so a CSR that CFSSL can never sign (an Ed25519 key, garbage) stayed PENDING and
//! was retried forever. Here an HTTP 400 carrying a CFSSL error response whose codes are all in
//! CFSSL's CSR category (9000–9999) is fatal like `success: false`; every other non-200 answer
//! stays recoverable as in SwarmKit.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::body::Bytes;
use rustls::ClientConfig;
use tracing::debug;

mod cfssl;
mod config;
mod error;
mod http;

pub use cfssl::{append_capped, parse_response, SignRequest, CROSS_SIGN_PROFILE};
pub(crate) use config::redact_urls;
use config::TlsState;
pub use config::{certs_der, client_tls_config, filter_external_ca_urls, redact_url};
pub use error::{
    ExternalCaError, CERTIFICATE_MAX_SIZE, EXTERNAL_REQUEST_TIMEOUT, IDLE_TIMEOUT, MAX_IDLE_PER_HOST,
};
pub use http::QuietFlush;
use http::{post, Pool};

/// Everything one `sign` call uses; replaced as a whole.
struct Snapshot {
    urls: Vec<String>,
    intermediates: Vec<u8>,
    tls: TlsState,
}

/// A client of one or more CFSSL-compatible external CAs.
pub struct ExternalCa {
    state: RwLock<Arc<Snapshot>>,
    timeout: Duration,
    pool: Pool,
}

impl std::fmt::Debug for ExternalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot();
        f.debug_struct("ExternalCa")
            .field("urls", &s.urls)
            .field("intermediates_len", &s.intermediates.len())
            .field("tls", &s.tls.as_ref().map(|_| "configured"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ExternalCa {
    /// A client for `urls` (tried in order, used verbatim) that appends `intermediates` to
    /// every certificate it returns. `tls` is needed for `https://` URLs only.
    pub fn new(
        urls: Vec<String>,
        intermediates: Vec<u8>,
        tls: Option<Arc<ClientConfig>>,
        timeout: Duration,
    ) -> ExternalCa {
        let tls = tls.ok_or_else(|| "no TLS configuration".to_string());
        ExternalCa::with_tls_state(urls, intermediates, tls, timeout)
    }

    pub(crate) fn with_tls_state(
        urls: Vec<String>,
        intermediates: Vec<u8>,
        tls: TlsState,
        timeout: Duration,
    ) -> ExternalCa {
        ExternalCa {
            state: RwLock::new(Arc::new(Snapshot { urls, intermediates, tls })),
            timeout,
            pool: Pool::default(),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        // Writers only swap the Arc; a poisoned lock still holds a consistent value.
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        let mut g = self.state.write().unwrap_or_else(|e| e.into_inner());
        let next = f(&g);
        *g = Arc::new(next);
    }

    /// The configured URLs, in the order they are tried.
    pub fn urls(&self) -> Vec<String> {
        self.snapshot().urls.clone()
    }

    /// The intermediates appended to every returned certificate.
    pub fn intermediates(&self) -> Vec<u8> {
        self.snapshot().intermediates.clone()
    }

    /// The per-URL deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Replaces the URL list (SwarmKit `UpdateURLs`); calls in flight keep the old list.
    pub fn update_urls(&self, urls: Vec<String>) {
        self.replace(|s| Snapshot { urls, intermediates: s.intermediates.clone(), tls: s.tls.clone() });
    }

    /// Replaces the TLS client configuration (SwarmKit `UpdateTLSConfig`).
    pub fn update_tls(&self, tls: Arc<ClientConfig>) {
        self.set_tls(Ok(tls));
    }

    pub(crate) fn set_tls(&self, tls: TlsState) {
        self.replace(|s| Snapshot { urls: s.urls.clone(), intermediates: s.intermediates.clone(), tls });
        // Connections made with the old configuration are not reused.
        self.pool.clear();
    }

    /// Idle keep-alive connections held right now.
    pub fn idle_connections(&self) -> usize {
        self.pool.len()
    }

    /// Asks each URL in turn to sign `req`; returns the first certificate, with the
    /// intermediates appended, or the last URL's error.
    pub async fn sign(&self, req: &SignRequest) -> Result<Vec<u8>, ExternalCaError> {
        let snap = self.snapshot();
        if snap.urls.is_empty() {
            return Err(ExternalCaError::NoUrls);
        }
        let body = Bytes::from(req.to_json()?);
        let mut last = ExternalCaError::NoUrls;
        for url in &snap.urls {
            match self.sign_at(url, &snap.tls, body.clone()).await {
                Ok(mut cert) => {
                    cert.extend_from_slice(&snap.intermediates);
                    return Ok(cert);
                }
                Err(e) => {
                    debug!(url = %redact_url(url), error = %e, "external CA did not sign");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// SwarmKit's external `CrossSignRootCA`: asks for the new root (first certificate of
    /// `new_cert_pem`) signed by the root this external CA signs for, with profile `CA`; the
    /// CSR is self-signed with `new_key_pem`. The answer (normalized) must be exactly one CA
    /// certificate with the new root's exact subject and public key.
    pub async fn cross_sign_root(
        &self,
        new_cert_pem: &[u8],
        new_key_pem: &[u8],
    ) -> Result<Vec<u8>, ExternalCaError> {
        let bad = |e: String| ExternalCaError::CrossSign(e);
        let csr = swarmca_core::rootca::cross_sign_csr(new_cert_pem, new_key_pem)
            .map_err(|e| bad(e.to_string()))?;
        let answer = self.sign(&SignRequest::cross_sign(&csr)).await?;
        let (want_subject, want_key) =
            swarmca_core::rootca::issuer_info_of_cert_pem(new_cert_pem).map_err(|e| bad(e.to_string()))?;
        let der = certs_der(&answer)
            .into_iter()
            .next()
            .ok_or_else(|| bad("no certificate in the answer".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
        if cert.subject().as_raw() != want_subject.as_slice() || cert.public_key().raw != want_key.as_slice()
        {
            return Err(bad("the answer is not the new root's subject and key".into()));
        }
        if !cert.is_ca() {
            return Err(bad("the answer is not a CA certificate".into()));
        }
        if certs_der(&answer).len() != 1 {
            return Err(bad("the answer must be exactly one certificate".into()));
        }
        Ok(swarmca_core::rootca::normalize_pems(&answer))
    }

    async fn sign_at(&self, url: &str, tls: &TlsState, body: Bytes) -> Result<Vec<u8>, ExternalCaError> {
        let (status, bytes) = match tokio::time::timeout(self.timeout, post(&self.pool, url, tls, body)).await
        {
            Ok(r) => r?,
            Err(_) => return Err(ExternalCaError::Timeout(self.timeout)),
        };
        parse_response(status, &bytes)
    }
}

#[cfg(test)]
mod tests;
