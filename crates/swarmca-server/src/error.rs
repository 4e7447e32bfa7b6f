//! Server errors and their single mapping to gRPC status codes.

use swarmca_store::StoreError;
use tonic::{Code, Status};

/// The exact message SwarmKit clients and tests expect when a join has no valid token.
pub const INVALID_JOIN_TOKEN: &str = "A valid join token is necessary to join this cluster";

/// Everything an RPC or a server lifecycle call can fail with.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A required request field is empty (SwarmKit answers with the bare code name).
    #[error("InvalidArgument")]
    EmptyField,
    /// The CSR exceeds the size limit.
    #[error("CSR too large: {0} bytes (max 65536)")]
    CsrTooLarge(usize),
    /// Neither a valid join token nor a renewal identity.
    #[error("{INVALID_JOIN_TOKEN}")]
    InvalidJoinToken,
    /// The server is not running.
    #[error("CA signer is stopped")]
    Stopped,
    /// The server runs but has not loaded its join tokens yet.
    #[error("CA signer is still starting")]
    Starting,
    /// `run` while running.
    #[error("CA signer is already running")]
    AlreadyRunning,
    /// `stop` while not running.
    #[error("CA signer is already stopped")]
    AlreadyStopped,
    /// Renewal for a node the store does not hold.
    #[error("node {0} not found when attempting to renew certificate")]
    RenewNodeNotFound(String),
    /// Status request for an unknown node.
    #[error("NotFound")]
    NodeNotFound,
    /// The cluster object this server serves is missing from the store.
    #[error("could not find cluster object {0}")]
    ClusterNotFound(String),
    /// Caller lacks the role, org, or is blacklisted.
    #[error("Permission denied: {0}")]
    PermissionDenied(String),
    /// The server was stopped while the call waited.
    #[error("CA server stopped while waiting")]
    Cancelled,
    /// The caller's deadline passed while the call waited.
    #[error("deadline exceeded while waiting for the certificate")]
    DeadlineExceeded,
    /// Contention on the store outlasted our retries.
    #[error("store contention: {0}")]
    Contention(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// The store's watch ended; the run loop must be restarted.
    #[error("store watch closed")]
    WatchClosed,
    /// The cluster's RootCA object cannot be used.
    #[error("invalid Root CA object in cluster: {0}")]
    InvalidRootCa(String),
    /// No entropy could be drawn.
    #[error("{0}")]
    Entropy(#[from] swarmca_core::entropy::EntropyError),
    /// An administrative request conflicts with the cluster's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// An administrative setting is out of range.
    #[error("{0}")]
    InvalidSetting(String),
    /// The server has no root CA to hand out yet.
    #[error("CA root not loaded yet")]
    NoRoot,
    /// A bug or an unexpected library failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            ServerError::EmptyField
            | ServerError::CsrTooLarge(_)
            | ServerError::InvalidJoinToken
            | ServerError::InvalidSetting(_) => Code::InvalidArgument,
            ServerError::Stopped
            | ServerError::Starting
            | ServerError::AlreadyRunning
            | ServerError::AlreadyStopped => Code::Aborted,
            ServerError::RenewNodeNotFound(_) | ServerError::NodeNotFound => Code::NotFound,
            ServerError::PermissionDenied(_) => Code::PermissionDenied,
            ServerError::Cancelled => Code::Cancelled,
            ServerError::DeadlineExceeded => Code::DeadlineExceeded,
            ServerError::Contention(_) => Code::Aborted,
            ServerError::Store(StoreError::Unavailable(_)) | ServerError::WatchClosed => Code::Unavailable,
            ServerError::ClusterNotFound(_)
            | ServerError::InvalidRootCa(_)
            | ServerError::NoRoot
            | ServerError::FailedPrecondition(_) => Code::FailedPrecondition,
            // SwarmKit returns raw store errors, which gRPC reports as Unknown.
            ServerError::Store(_) => Code::Unknown,
            ServerError::Entropy(_) | ServerError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
