//! Why an external CA did not sign, and the limits every request runs under.

use std::time::Duration;

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
pub(super) const CFSSL_CSR_ERRORS: std::ops::Range<i64> = 9000..10000;

/// How much of a non-200 body goes into the error message.
pub(super) const STATUS_BODY_IN_ERROR: usize = 1024;

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

/// `a: b: c` from an error and its sources.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
