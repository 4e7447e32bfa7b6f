//! Test key pairs, certificate requests and node credentials.

use std::time::SystemTime;

use swarmca_core::role::Role;
use swarmca_core::rootca::RootCa;

/// A new P-256 key and a certificate request for it with an empty subject, as SwarmKit agents
/// make them (the CA sets the subject): (CSR PEM, key PEM).
pub fn new_csr() -> (Vec<u8>, Vec<u8>) {
    swarmca_server::bootstrap::new_key_and_csr().unwrap_or_else(|e| panic!("test key and CSR: {e}"))
}

/// A node's credentials, signed by a test root.
#[derive(Clone)]
pub struct Creds {
    pub node_id: String,
    /// Certificate chain PEM.
    pub cert_pem: Vec<u8>,
    /// Private key PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// Credentials for `node_id` with `role` in organization `org`, signed by `root` at `now` with
/// `serial`.
pub fn issue(
    root: &RootCa,
    node_id: &str,
    role: Role,
    org: &str,
    now: SystemTime,
    serial: [u8; 20],
) -> Creds {
    let (csr, key_pem) = new_csr();
    let cert_pem = root
        .sign_csr(&csr, node_id, role, org, now, serial)
        .unwrap_or_else(|e| panic!("test credentials for {node_id}: {e}"));
    Creds { node_id: node_id.to_string(), cert_pem, key_pem }
}
