//! The TLS listener of `serve`, with credentials that change while it runs: the manager's own
//! certificate (renewed during a root rotation) and the client-certificate trust roots (the
//! current root, plus the new one while a rotation is in progress, then only the new one).
//!
//! tonic's built-in TLS fixes both at start, so the handshake is done here with tokio-rustls
//! and the established streams are handed to tonic, which still reads the peer certificates
//! from them for the CA's authorization.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// TLS credentials or trust roots that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(pub String);

macro_rules! tls_error {
    ($($t:tt)*) => { TlsSetupError(format!($($t)*)) };
}

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_of(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(|p| p.ok())
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.contents))
        .collect()
}

/// The listener's swappable credentials.
#[derive(Debug)]
pub struct DynamicTls {
    identity: RwLock<Arc<CertifiedKey>>,
    verifier: RwLock<Arc<dyn ClientCertVerifier>>,
    /// Schemes do not depend on the roots; fixed at start.
    schemes: Vec<SignatureScheme>,
}

impl DynamicTls {
    /// Credentials from a certificate chain PEM, its key PEM, and trust roots PEM.
    pub fn new(cert_pem: &[u8], key_pem: &[u8], roots_pem: &[u8]) -> Result<Arc<DynamicTls>, TlsSetupError> {
        let verifier = client_verifier(roots_pem)?;
        let schemes = verifier.supported_verify_schemes();
        Ok(Arc::new(DynamicTls {
            identity: RwLock::new(certified_key(cert_pem, key_pem)?),
            verifier: RwLock::new(verifier),
            schemes,
        }))
    }

    /// Serves `cert_pem`/`key_pem` to new connections from now on.
    pub fn set_identity(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsSetupError> {
        let k = certified_key(cert_pem, key_pem)?;
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = k;
        Ok(())
    }

    /// Verifies client certificates of new connections against `roots_pem` from now on.
    pub fn set_roots(&self, roots_pem: &[u8]) -> Result<(), TlsSetupError> {
        let v = client_verifier(roots_pem)?;
        *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = v;
        Ok(())
    }

    fn current_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rustls server configuration using these credentials (TLS 1.2+, ALPN h2).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsSetupError> {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| tls_error!("TLS setup: {e}"))?
            .with_client_cert_verifier(Arc::new(Verifier(self.clone())))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    let certs = certs_of(cert_pem);
    if certs.is_empty() {
        return Err(tls_error!("no certificate in this manager's certificate file"));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| tls_error!("unreadable manager key: {e}"))?;
    let signing =
        provider().key_provider.load_private_key(key).map_err(|e| tls_error!("unusable manager key: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| tls_error!("the manager certificate does not match its key: {e}"))?;
    Ok(Arc::new(ck))
}

/// Client certificates are optional (joins come without one) but verified when presented.
fn client_verifier(roots_pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for c in certs_of(roots_pem) {
        roots.add(c).map_err(|e| tls_error!("unusable trust root: {e}"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_error!("client verifier: {e}"))
}

#[derive(Debug)]
struct Resolver(Arc<DynamicTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.identity.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

#[derive(Debug)]
struct Verifier(Arc<DynamicTls>);

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to outlive a root change; SwarmKit clients do not need them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.current_verifier().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current_verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current_verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes.clone()
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes in the background;
/// established streams come out of the returned stream, in the form tonic serves.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
