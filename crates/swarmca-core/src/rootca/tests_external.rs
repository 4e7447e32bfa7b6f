//! A CA key held outside the process, through the `ExternalKey` seam: signing, cross-signing,
//! and the checks a key reference gets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ring::signature::KeyPair as _;

use super::*;
use crate::role::Role;

/// A key "in a token": a ring key this test holds, counting its signatures.
#[derive(Debug)]
struct Token {
    key: ring::signature::EcdsaKeyPair,
    signed: AtomicUsize,
}

impl ExternalKey for Token {
    fn public_key(&self) -> Option<Vec<u8>> {
        Some(self.key.public_key().as_ref().to_vec())
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        self.signed.fetch_add(1, Ordering::SeqCst);
        let rng = ring::rand::SystemRandom::new();
        self.key.sign(&rng, msg).map(|s| s.as_ref().to_vec()).map_err(|_| "token refused".to_string())
    }
}

/// Resolves `pkcs11:object=root` to the token, and says why anything else under the scheme fails.
#[derive(Debug)]
struct Keys(Arc<Token>);

impl ExternalKeys for Keys {
    fn resolve(&self, reference: &[u8]) -> Option<Result<Arc<dyn ExternalKey>, String>> {
        match reference {
            b"pkcs11:object=root" => Some(Ok(self.0.clone() as Arc<dyn ExternalKey>)),
            r if r.starts_with(PKCS11_SCHEME) => Some(Err("no such object in the token".into())),
            _ => None,
        }
    }
}

/// A root whose key is in the token.
fn token_root(now: SystemTime) -> (GeneratedRoot, Keys) {
    let g = generate_root("hsm-root", now, [4; 20]).unwrap();
    let der = x509_parser::pem::parse_x509_pem(&g.key_pem).unwrap().1.contents;
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &der,
        &rng,
    )
    .unwrap();
    (g, Keys(Arc::new(Token { key, signed: AtomicUsize::new(0) })))
}

fn new_csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).unwrap().pem().unwrap().into_bytes()
}

#[test]
fn a_root_whose_key_is_in_a_token_signs_through_it() {
    let now = SystemTime::now();
    let (g, keys) = token_root(now);
    let hour = Duration::from_secs(3600);
    let ca =
        RootCa::new_with(&g.cert_pem, &g.cert_pem, b"pkcs11:object=root", hour, b"", now, &keys).unwrap();
    assert!(ca.can_sign());
    assert_eq!(ca.signer_key_pem(), Some(&b"pkcs11:object=root"[..]), "the reference is kept, no key");
    let before = keys.0.signed.load(Ordering::SeqCst);
    let cert = ca.sign_csr(&new_csr(), "node1", Role::Worker, "org", now, [9; 20]).unwrap();
    assert_eq!(keys.0.signed.load(Ordering::SeqCst), before + 1, "signed by the token");
    let chain = crate::pem::certs_der(&cert);
    assert_eq!(ca.verify_peer(&chain, now).unwrap().node_id, "node1");

    // Cross-signing another root goes through the token too.
    let other = generate_root("next-root", now, [5; 20]).unwrap();
    let before = keys.0.signed.load(Ordering::SeqCst);
    ca.cross_sign(&other.cert_pem).unwrap();
    assert_eq!(keys.0.signed.load(Ordering::SeqCst), before + 1);
}

#[test]
fn a_token_key_must_match_the_certificate_and_resolve() {
    let now = SystemTime::now();
    let (_, keys) = token_root(now);
    let other = generate_root("other", now, [6; 20]).unwrap();
    let hour = Duration::from_secs(3600);
    let e = RootCa::new_with(&other.cert_pem, &other.cert_pem, b"pkcs11:object=root", hour, b"", now, &keys);
    assert!(matches!(e, Err(RootCaError::KeyMismatch)), "{e:?}");
    let e = RootCa::new_with(&other.cert_pem, &other.cert_pem, b"pkcs11:object=gone", hour, b"", now, &keys);
    assert!(
        matches!(e, Err(RootCaError::MalformedPrivateKey(ref m)) if m.contains("no such object")),
        "{e:?}"
    );
    // Without a resolver, a reference is not mistaken for a damaged PEM key.
    let e = RootCa::new(&other.cert_pem, &other.cert_pem, b"pkcs11:object=root", hour, b"", now);
    assert!(matches!(e, Err(RootCaError::MalformedPrivateKey(ref m)) if m.contains("PKCS#11")), "{e:?}");
}
