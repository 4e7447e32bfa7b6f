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

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use swarmca_core::role::{Role, CA_ROLE};
use swarmca_core::rootca::normalize_pems;
use swarmca_types::external_ca::CaProtocol;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// Idle keep-alive connections kept per host and TLS configuration.
pub const MAX_IDLE_PER_HOST: usize = 4;

/// How long an idle connection is kept for reuse.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of one request to one external CA URL (SwarmKit `ExternalRequestTimeout`).
pub const EXTERNAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of a response body that are read (SwarmKit `CertificateMaxSize`); the connection
/// is dropped after that.
pub const CERTIFICATE_MAX_SIZE: usize = 256 * 1024;

/// CFSSL's error-code category for problems with the CSR itself (`errors.CSRError`).
const CFSSL_CSR_ERRORS: std::ops::Range<i64> = 9000..10000;

/// How much of a non-200 body goes into the error message.
const STATUS_BODY_IN_ERROR: usize = 1024;

/// Why an external CA did not return a certificate.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalCaError {
    /// No external CA URL is configured for the current root; sign locally instead.
    #[error("no external CA URLs")]
    NoUrls,
    /// Connecting, the TLS handshake, or the HTTP exchange failed (recoverable).
    #[error("unable to perform certificate signing request: {0}")]
    Transport(String),
    /// The URL did not answer completely within the per-URL deadline (recoverable).
    #[error("unable to perform certificate signing request: context deadline exceeded (no complete answer within {0:?})")]
    Timeout(Duration),
    /// The response body could not be read (recoverable).
    #[error("unable to read CSR response body: {0}")]
    Body(String),
    /// The answer's HTTP status is not 200 (recoverable).
    #[error("unexpected status code in CSR response: {code} - {body}")]
    Status {
        /// The HTTP status code.
        code: u16,
        /// The start of the body, lossily decoded.
        body: String,
    },
    /// The body is not a CFSSL JSON response, or was cut at the size limit (recoverable).
    #[error("unable to parse JSON response: {0}")]
    Json(String),
    /// CFSSL answered `success: false` with errors (fatal), formatted like Go's `%v`.
    #[error("response errors: {0}")]
    Rejected(String),
    /// CFSSL answered `success: false` or a null result without errors (fatal).
    #[error("certificate signing request failed")]
    Failed,
    /// `result` is not a JSON object (fatal).
    #[error("invalid result type")]
    InvalidResultType,
    /// `result.certificate` is missing or not a string (fatal).
    #[error("invalid result certificate field type")]
    InvalidCertificateField,
    /// The TLS client configuration could not be built (bad credentials or trust roots).
    #[error("invalid external CA TLS configuration: {0}")]
    TlsConfig(String),
    /// The request could not be encoded (fatal; a bug).
    #[error("unable to encode the sign request: {0}")]
    Encode(String),
    /// A cross-sign request could not be made, or its answer is not the cross-signed root
    /// (fatal).
    #[error("cross-signing failed: {0}")]
    CrossSign(String),
}

impl ExternalCaError {
    /// SwarmKit's `recoverableErr`: transport failures, timeouts, unreadable or unparsable
    /// bodies and non-200 statuses are retried later; what CFSSL itself rejected is not.
    pub fn is_recoverable(&self) -> bool {
        match self {
            ExternalCaError::Transport(_)
            | ExternalCaError::Timeout(_)
            | ExternalCaError::Body(_)
            | ExternalCaError::Status { .. }
            | ExternalCaError::Json(_)
            | ExternalCaError::TlsConfig(_) => true,
            ExternalCaError::NoUrls
            | ExternalCaError::Rejected(_)
            | ExternalCaError::Failed
            | ExternalCaError::InvalidResultType
            | ExternalCaError::InvalidCertificateField
            | ExternalCaError::Encode(_)
            | ExternalCaError::CrossSign(_) => false,
        }
    }
}

/// CFSSL's `signer.SignRequest` as SwarmKit encodes it: field order and key spelling are those
/// of Go's `encoding/json` for CFSSL v1.6.4 (docs/behaviour.md §5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignRequest {
    hosts: Vec<String>,
    certificate_request: String,
    subject: Subject,
    profile: String,
    crl_override: String,
    label: String,
    #[serde(rename = "NotBefore")]
    not_before: &'static str,
    #[serde(rename = "NotAfter")]
    not_after: &'static str,
    #[serde(rename = "ReturnPrecert")]
    return_precert: bool,
    metadata: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extensions: Vec<Extension>,
}

/// A certificate extension CFSSL copies into what it signs (profile whitelist permitting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Extension {
    id: String,
    critical: bool,
    /// Hex of the DER value.
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Subject {
    #[serde(rename = "CN")]
    cn: String,
    names: Vec<Name>,
    #[serde(rename = "SerialNumber")]
    serial_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Name {
    #[serde(rename = "O", skip_serializing_if = "String::is_empty")]
    o: String,
    #[serde(rename = "OU", skip_serializing_if = "String::is_empty")]
    ou: String,
}

/// The CFSSL signing profile used to cross-sign a root (SwarmKit `ExternalCrossSignProfile`).
pub const CROSS_SIGN_PROFILE: &str = "CA";

/// Go's zero `time.Time` in JSON.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl SignRequest {
    /// The request for a node certificate (SwarmKit `PrepareCSR`): hosts `[role OU, cn]` plus
    /// `swarm-ca` for managers; subject CN = `cn`, O = `org`, OU = the role.
    pub fn node(csr_pem: &[u8], cn: &str, role: Role, org: &str) -> SignRequest {
        let mut hosts = vec![role.ou().to_string(), cn.to_string()];
        if role == Role::Manager {
            hosts.push(CA_ROLE.to_string());
        }
        SignRequest {
            hosts,
            certificate_request: String::from_utf8_lossy(csr_pem).into_owned(),
            subject: Subject {
                cn: cn.to_string(),
                names: vec![Name { o: org.to_string(), ou: role.ou().to_string() }],
                serial_number: String::new(),
            },
            profile: String::new(),
            crl_override: String::new(),
            label: String::new(),
            not_before: GO_ZERO_TIME,
            not_after: GO_ZERO_TIME,
            return_precert: false,
            metadata: None,
            extensions: Vec::new(),
        }
    }

    /// The request to cross-sign a root (SwarmKit's external `CrossSignRootCA`): profile `CA`,
    /// subject CN of the root, and its BasicConstraints passed explicitly because stock CFSSL
    /// ignores the extensions of a CSR.
    pub fn cross_sign(csr: &swarmca_core::rootca::CrossSignCsr) -> SignRequest {
        SignRequest {
            hosts: Vec::new(),
            certificate_request: String::from_utf8_lossy(&csr.csr_pem).into_owned(),
            subject: Subject { cn: csr.common_name.clone(), names: Vec::new(), serial_number: String::new() },
            profile: CROSS_SIGN_PROFILE.to_string(),
            crl_override: String::new(),
            label: String::new(),
            not_before: GO_ZERO_TIME,
            not_after: GO_ZERO_TIME,
            return_precert: false,
            metadata: None,
            extensions: csr
                .basic_constraints
                .iter()
                .map(|(critical, value)| Extension {
                    id: "2.5.29.19".into(),
                    critical: *critical,
                    value: hex::encode(value),
                })
                .collect(),
        }
    }

    /// The JSON body sent to the external CA.
    pub fn to_json(&self) -> Result<Vec<u8>, ExternalCaError> {
        serde_json::to_vec(self).map_err(|e| ExternalCaError::Encode(e.to_string()))
    }
}

/// A TLS client configuration for talking to external CAs, or why there is none.
type TlsState = Result<Arc<ClientConfig>, String>;

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

/// `a: b: c` from an error and its sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = cause.source();
    }
    s
}

/// Where a connection goes: scheme, authority and (for `https`) the TLS configuration it was
/// made with.
struct PoolKey {
    https: bool,
    authority: String,
    tls: Option<Arc<ClientConfig>>,
}

impl PartialEq for PoolKey {
    fn eq(&self, o: &PoolKey) -> bool {
        let same_tls = match (&self.tls, &o.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.https == o.https && self.authority == o.authority && same_tls
    }
}

/// An HTTP/1.1 connection: the request half, and the task driving the socket (aborted, which
/// closes the socket, when this is dropped).
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Idle keep-alive connections (see the module docs).
#[derive(Default)]
struct Pool {
    idle: std::sync::Mutex<Vec<(PoolKey, Conn, tokio::time::Instant)>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolKey, Conn, tokio::time::Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live idle connection for `key`; expired or closed ones go.
    fn take(&self, key: &PoolKey) -> Option<Conn> {
        let now = tokio::time::Instant::now();
        let mut idle = self.lock();
        idle.retain(|(_, c, since)| !c.sender.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
        let i = idle.iter().rposition(|(k, ..)| k == key)?;
        Some(idle.remove(i).1)
    }

    /// Takes back the connection of an exchange, when it can be reused; returns the answer.
    fn keep(&self, key: PoolKey, (answer, conn): Exchanged) -> (u16, Vec<u8>) {
        if let Some(conn) = conn {
            let mut idle = self.lock();
            if idle.iter().filter(|(k, ..)| *k == key).count() < MAX_IDLE_PER_HOST {
                idle.push((key, conn, tokio::time::Instant::now()));
            }
        }
        answer
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// POSTs `body` to `url`; returns the status and at most [`CERTIFICATE_MAX_SIZE`] bytes of
/// the body. Reuses an idle connection of `pool` when there is one, and returns the connection
/// to it after a complete answer.
async fn post(
    pool: &Pool,
    url: &str,
    tls: &TlsState,
    body: Bytes,
) -> Result<(u16, Vec<u8>), ExternalCaError> {
    let transport = |e: String| ExternalCaError::Transport(e);
    let uri: Uri = url.parse().map_err(|e| transport(format!("parse {url:?}: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => {
            return Err(transport(format!(
                "Post {url:?}: unsupported protocol scheme {:?}",
                other.unwrap_or("")
            )))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| transport(format!("Post {url:?}: no host in request URL")))?
        .as_str()
        .to_string();
    let host = uri.host().unwrap_or("");
    let bare_host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = || {
        Request::post(target.as_str())
            .header(HOST, authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("swarmca/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body.clone()))
            .map_err(|e| transport(e.to_string()))
    };
    let tls_cfg = if https {
        Some(tls.clone().map_err(|e| transport(format!("TLS configuration: {e}")))?)
    } else {
        None
    };
    let key = PoolKey { https, authority: authority.clone(), tls: tls_cfg.clone() };

    if let Some(conn) = pool.take(&key) {
        match exchange(conn, request()?).await {
            Ok(done) => return Ok(pool.keep(key, done)),
            // Closed by the peer while idle, before any answer: try a new connection.
            Err(Failed::BeforeAnswer(e)) => debug!(error = %e, "reused connection failed; reconnecting"),
            Err(Failed::After(e)) => return Err(e),
        }
    }

    let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| transport(format!("dial tcp {bare_host}:{port}: {e}")))?;
    // Like Go's dialer: without it, a request written in two TLS records waits for the peer's
    // delayed ACK (about 40 ms per request).
    tcp.set_nodelay(true).map_err(|e| transport(format!("set TCP_NODELAY: {e}")))?;
    let tcp = QuietFlush::new(tcp);
    let conn = match tls_cfg {
        Some(cfg) => {
            let name = ServerName::try_from(bare_host.clone())
                .map_err(|e| transport(format!("invalid TLS server name {bare_host:?}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| transport(format!("tls: {}", error_chain(&e))))?;
            connect(stream).await?
        }
        None => connect(tcp).await?,
    };
    match exchange(conn, request()?).await {
        Ok(done) => Ok(pool.keep(key, done)),
        Err(Failed::BeforeAnswer(e) | Failed::After(e)) => Err(e),
    }
}

/// A byte stream whose flush does nothing when nothing was written since the last flush —
/// what a TCP socket's flush does anyway. hyper flushes an idle keep-alive connection each
/// time it is polled; on a simulated socket every flush is a packet that wakes the peer, whose
/// own flush wakes this side again, so without this an idle pooled connection would never go
/// quiet under madsim.
#[derive(Debug)]
pub struct QuietFlush<S> {
    io: S,
    dirty: bool,
}

impl<S> QuietFlush<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> QuietFlush<S> {
        QuietFlush { io, dirty: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for QuietFlush<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for QuietFlush<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.dirty = true;
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.dirty = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.dirty {
            return std::task::Poll::Ready(Ok(()));
        }
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        if matches!(r, std::task::Poll::Ready(Ok(()))) {
            self.dirty = false;
        }
        r
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The HTTP/1.1 handshake over `io`; the connection is driven by a task of its own.
async fn connect<I>(io: I) -> Result<Conn, ExternalCaError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| ExternalCaError::Transport(error_chain(&e)))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn { sender, task })
}

/// An exchange's answer (status, body) and its connection, when that can be reused.
type Exchanged = ((u16, Vec<u8>), Option<Conn>);

/// How an exchange failed: before any answer arrived (the request may be retried on a new
/// connection), or after.
enum Failed {
    BeforeAnswer(ExternalCaError),
    After(ExternalCaError),
}

/// One request over `conn`: the status and body, and the connection when it can be reused
/// (the whole body was read and the peer keeps it open). Dropping this future drops the
/// connection.
async fn exchange(mut conn: Conn, req: Request<Full<Bytes>>) -> Result<Exchanged, Failed> {
    let transport = |e: hyper::Error| ExternalCaError::Transport(error_chain(&e));
    conn.sender.ready().await.map_err(|e| Failed::BeforeAnswer(transport(e)))?;
    let resp = conn.sender.send_request(req).await.map_err(|e| Failed::BeforeAnswer(transport(e)))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut complete = false;
    while buf.len() < CERTIFICATE_MAX_SIZE {
        match body.frame().await {
            None => {
                complete = true;
                break;
            }
            Some(Err(e)) => return Err(Failed::After(ExternalCaError::Body(error_chain(&e)))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    append_capped(&mut buf, &data);
                }
            }
        }
    }
    let reusable = complete && !conn.sender.is_closed();
    Ok(((status, buf), reusable.then_some(conn)))
}

/// Appends as much of `data` to `buf` as fits under [`CERTIFICATE_MAX_SIZE`].
pub fn append_capped(buf: &mut Vec<u8>, data: &[u8]) {
    let room = CERTIFICATE_MAX_SIZE.saturating_sub(buf.len());
    buf.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
}

#[derive(Deserialize, Default)]
struct ApiResponse {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    errors: Option<Vec<ResponseMessage>>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// Go's `%v` of CFSSL response messages: `[{code message} ...]`.
fn format_errors(errors: &[ResponseMessage]) -> String {
    let list: Vec<String> = errors.iter().map(|m| format!("{{{} {}}}", m.code, m.message)).collect();
    format!("[{}]", list.join(" "))
}

/// The formatted errors of a CFSSL error response that rejects the CSR itself, if `body` is one.
fn csr_rejection(body: &[u8]) -> Option<String> {
    let resp: ApiResponse = serde_json::from_slice(body).ok()?;
    let errors = resp.errors.unwrap_or_default();
    let csr_only = !errors.is_empty() && errors.iter().all(|m| CFSSL_CSR_ERRORS.contains(&m.code));
    (!resp.success && csr_only).then(|| format_errors(&errors))
}

/// CFSSL response handling (docs/behaviour.md §5.3 steps 3–7).
pub fn parse_response(status: u16, body: &[u8]) -> Result<Vec<u8>, ExternalCaError> {
    if status == 400 {
        if let Some(list) = csr_rejection(body) {
            return Err(ExternalCaError::Rejected(list));
        }
    }
    if status != 200 {
        let shown = body.get(..STATUS_BODY_IN_ERROR).unwrap_or(body);
        let mut text = String::from_utf8_lossy(shown).into_owned();
        if shown.len() < body.len() {
            text.push_str(&format!("... ({} bytes)", body.len()));
        }
        return Err(ExternalCaError::Status { code: status, body: text });
    }
    let resp: Option<ApiResponse> =
        serde_json::from_slice(body).map_err(|e| ExternalCaError::Json(e.to_string()))?;
    let resp = resp.unwrap_or_default();
    let result = match resp.result {
        Some(r) if resp.success && !r.is_null() => r,
        _ => {
            let errors = resp.errors.unwrap_or_default();
            if errors.is_empty() {
                return Err(ExternalCaError::Failed);
            }
            return Err(ExternalCaError::Rejected(format_errors(&errors)));
        }
    };
    let serde_json::Value::Object(map) = result else {
        return Err(ExternalCaError::InvalidResultType);
    };
    match map.get("certificate") {
        Some(serde_json::Value::String(cert)) => Ok(cert.clone().into_bytes()),
        _ => Err(ExternalCaError::InvalidCertificateField),
    }
}

#[cfg(test)]
mod tests;
