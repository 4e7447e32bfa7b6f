//! How to reach etcd: endpoints, prefix, timeouts and TLS files.

use std::path::PathBuf;
use std::time::Duration;

use crate::StoreError;

/// How to reach etcd. Build with [`EtcdOptions::new`], then set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// etcd client URLs: `http://host:port`, `https://host:port`, or `host:port` (which means
    /// `https://` when [`EtcdOptions::tls`] is set). At least one.
    pub endpoints: Vec<String>,
    /// Prefix of every key the store reads or writes. Default `/swarmca/`.
    pub prefix: String,
    /// TLS to etcd; `None` is plaintext.
    pub tls: Option<EtcdTls>,
    /// Bound on connecting, including the first answer from etcd. Default 5 s.
    pub connect_timeout: Duration,
    /// Bound on every request: one etcd has not answered by then fails with
    /// [`StoreError::Unavailable`]. Default 5 s.
    pub request_timeout: Duration,
}

impl EtcdOptions {
    /// Options for `endpoints`, with the default prefix and timeouts and no TLS.
    pub fn new<I, S>(endpoints: I) -> EtcdOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: "/swarmca/".to_string(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// TLS to etcd: the CA that signs etcd's certificates and, for etcd's `--client-cert-auth`, the
/// certificate and key this client presents. Files are PEM, read at connect.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdTls {
    /// The CA certificate(s) etcd's server certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate and private key files; `None` presents no certificate.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl EtcdTls {
    /// TLS verifying etcd against the CA in `ca_file`, with no client certificate.
    pub fn new(ca_file: impl Into<PathBuf>) -> EtcdTls {
        EtcdTls { ca_file: ca_file.into(), client_identity: None }
    }

    /// Also presents the certificate in `cert_file`, with its key in `key_file` (mutual TLS).
    pub fn with_client_identity(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> EtcdTls {
        self.client_identity = Some((cert_file.into(), key_file.into()));
        self
    }
}

/// tonic's TLS settings from the files `tls` names.
pub(super) fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, StoreError> {
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path)
            .map_err(|e| StoreError::Config(format!("etcd TLS {what} {}: {e}", path.display())))
    };
    let ca = read("CA file", &tls.ca_file)?;
    let mut opts = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
    if let Some((cert, key)) = &tls.client_identity {
        let identity =
            etcd_client::Identity::from_pem(read("client certificate", cert)?, read("client key", key)?);
        opts = opts.identity(identity);
    }
    Ok(opts)
}
