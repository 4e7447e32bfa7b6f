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

/// The forms in which a private key could leak into a file or a store: its PEM (any one line of
/// its base64 body), its DER (PKCS#8), and its raw private scalar. Each with its name.
pub fn key_forms(key_pem: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let text = String::from_utf8_lossy(key_pem);
    let mut forms: Vec<(&'static str, Vec<u8>)> = text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .map(|l| ("PEM line", l.as_bytes().to_vec()))
        .collect();
    let der = x509_parser::pem::parse_x509_pem(key_pem)
        .map(|(_, p)| p.contents)
        .unwrap_or_else(|e| panic!("key PEM: {e}"));
    // PKCS#8 → ECPrivateKey { version 1, privateKey OCTET STRING (32) }: INTEGER 1, OCTET STRING.
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = der
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap_or_else(|| panic!("not a P-256 PKCS#8 key"));
    let from = at + marker.len();
    let scalar = der.get(from..from + 32).unwrap_or_else(|| panic!("truncated PKCS#8 key")).to_vec();
    forms.push(("DER", der));
    forms.push(("raw private scalar", scalar));
    forms
}

/// Which form of the key `key_pem` appears in `hay`, if any (see [`key_forms`]).
pub fn find_key(hay: &[u8], key_pem: &[u8]) -> Option<&'static str> {
    key_forms(key_pem)
        .into_iter()
        .find(|(_, needle)| hay.windows(needle.len()).any(|w| w == needle.as_slice()))
        .map(|(name, _)| name)
}
