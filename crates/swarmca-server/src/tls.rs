//! Production TLS settings for the gRPC listener: the manager certificate as server identity,
//! client certificates optional (joins come without one) and, when presented, verified against
//! the cluster roots during the handshake. The server re-verifies the chain against its current
//! roots for every authorization decision, so a certificate that passes the handshake is not
//! trusted blindly.

pub use tonic_real::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The listener's TLS configuration. `cert_pem` may hold the leaf followed by intermediates.
pub fn server_tls_config(cert_pem: &[u8], key_pem: &[u8], roots_pem: &[u8]) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(roots_pem))
        .client_auth_optional(true)
}

/// A client TLS configuration as SwarmKit nodes use it: trust `roots_pem`, expect server name
/// `server_name` (`swarm-ca` before joining, `swarm-manager` with credentials), and present
/// `identity` (certificate PEM, key PEM) if given.
pub fn client_tls_config(
    roots_pem: &[u8],
    server_name: &str,
    identity: Option<(&[u8], &[u8])>,
) -> ClientTlsConfig {
    let cfg =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(roots_pem)).domain_name(server_name);
    match identity {
        Some((cert, key)) => cfg.identity(Identity::from_pem(cert, key)),
        None => cfg,
    }
}
