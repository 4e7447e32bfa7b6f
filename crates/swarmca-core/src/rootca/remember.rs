//! Signature checks remembered: within one chain verification always, and across all of them
//! that share a [`SignatureCache`] the caller passed in.
//!
//! Checking a signature is a pure function of (algorithm, public key, message, signature).
//! [`RootCa::webpki_verify`](super::RootCa) validates a path once per key usage asked for, and
//! the later passes need not repeat the public-key operations of the first. Beyond one call,
//! the deterministic simulator checks the same signatures many times over: its checkers verify
//! every issued chain, then the CA verifies that chain again when the node presents it, and
//! the CA's check of an external CA's certificate is repeated by the checkers; a CA that signs
//! a request again (after a conflict, or in a fuzz harness's fixed pool of requests) checks its
//! self-signature again ([`crate::csr::parse_csr_pem_remembering`]). The simulator
//! gives every CA of a run one cache ([`super::RootCa::with_signature_cache`]); a production
//! server passes none and checks every signature it is asked to.
//!
//! Only successes are remembered, keyed by every byte of the input (the algorithm identifiers,
//! the key, the message and the signature): an answer from memory is the one the check gives.
//! Remembering changes how long a verification takes, never its result, nor anything drawn
//! from the entropy source (verification draws nothing). There is no hidden state: a cache
//! lives as long as the handles the caller keeps.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rustls_pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

/// Signature checks a cache remembers at most; when full, it starts over.
const CACHE_CAPACITY: usize = 1 << 16;

/// Successful signature checks shared by the CAs it is given to. Cheap to clone; clones share
/// one cache.
#[derive(Clone, Default)]
pub struct SignatureCache(Arc<Mutex<HashSet<Vec<u8>>>>);

impl std::fmt::Debug for SignatureCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureCache").field("len", &self.len()).finish()
    }
}

impl SignatureCache {
    /// An empty cache.
    pub fn new() -> SignatureCache {
        SignatureCache::default()
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many successful checks it remembers.
    pub fn len(&self) -> usize {
        self.set().len()
    }

    /// Whether it remembers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.set().contains(key)
    }

    pub(crate) fn insert(&self, key: Vec<u8>) {
        let mut s = self.set();
        if s.len() >= CACHE_CAPACITY {
            s.clear();
        }
        s.insert(key);
    }
}

/// A signature algorithm that answers a check it (or the shared cache) already found valid
/// without the public-key operation.
#[derive(Debug)]
pub(crate) struct RememberingAlg<'a> {
    inner: &'a dyn SignatureVerificationAlgorithm,
    valid: Mutex<HashSet<Vec<u8>>>,
    shared: Option<&'a SignatureCache>,
}

impl<'a> RememberingAlg<'a> {
    pub(crate) fn new(
        inner: &'a dyn SignatureVerificationAlgorithm,
        shared: Option<&'a SignatureCache>,
    ) -> Self {
        RememberingAlg { inner, valid: Mutex::new(HashSet::new()), shared }
    }

    /// Every byte a check depends on, each part length-prefixed.
    fn key(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Vec<u8> {
        let (pk_alg, sig_alg) = (self.inner.public_key_alg_id(), self.inner.signature_alg_id());
        let parts: [&[u8]; 5] = [pk_alg.as_ref(), sig_alg.as_ref(), public_key, message, signature];
        let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for p in parts {
            key.extend_from_slice(&(p.len() as u64).to_be_bytes());
            key.extend_from_slice(p);
        }
        key
    }
}

impl SignatureVerificationAlgorithm for RememberingAlg<'_> {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key = self.key(public_key, message, signature);
        let valid = || self.valid.lock().unwrap_or_else(|e| e.into_inner());
        if valid().contains(&key) || self.shared.is_some_and(|c| c.contains(&key)) {
            return Ok(());
        }
        self.inner.verify_signature(public_key, message, signature)?;
        if let Some(c) = self.shared {
            c.insert(key.clone());
        }
        valid().insert(key);
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ring::signature::KeyPair as _;

    use super::*;

    /// Counts the signature checks that reach the wrapped algorithm.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl SignatureVerificationAlgorithm for Counting {
        fn verify_signature(
            &self,
            public_key: &[u8],
            message: &[u8],
            signature: &[u8],
        ) -> Result<(), InvalidSignature> {
            self.0.fetch_add(1, Ordering::SeqCst);
            webpki::ring::ECDSA_P256_SHA256.verify_signature(public_key, message, signature)
        }
        fn public_key_alg_id(&self) -> AlgorithmIdentifier {
            webpki::ring::ECDSA_P256_SHA256.public_key_alg_id()
        }
        fn signature_alg_id(&self) -> AlgorithmIdentifier {
            webpki::ring::ECDSA_P256_SHA256.signature_alg_id()
        }
    }

    /// (public key, signature of `b"message"`).
    fn signed() -> (Vec<u8>, Vec<u8>) {
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let kp = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let sig = kp.sign(&rng, b"message").unwrap().as_ref().to_vec();
        (kp.public_key().as_ref().to_vec(), sig)
    }

    #[test]
    fn one_instance_skips_only_signatures_it_found_valid() {
        let (public, sig) = signed();
        let counting = Counting::default();
        let alg = RememberingAlg::new(&counting, None);
        let calls = || counting.0.load(Ordering::SeqCst);

        alg.verify_signature(&public, b"message", &sig).unwrap();
        alg.verify_signature(&public, b"message", &sig).unwrap();
        assert_eq!(calls(), 1);
        // Any other byte anywhere is checked (and fails) every time.
        for _ in 0..2 {
            assert!(alg.verify_signature(&public, b"messagE", &sig).is_err());
            let mut bad = sig.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(alg.verify_signature(&public, b"message", &bad).is_err());
        }
        assert_eq!(calls(), 5);
        assert_eq!(alg.signature_alg_id(), webpki::ring::ECDSA_P256_SHA256.signature_alg_id());
    }

    #[test]
    fn a_shared_cache_remembers_across_instances_and_nothing_else_does() {
        let (public, sig) = signed();
        let counting = Counting::default();
        let calls = || counting.0.load(Ordering::SeqCst);

        // Without a cache: every new instance checks again.
        RememberingAlg::new(&counting, None).verify_signature(&public, b"message", &sig).unwrap();
        RememberingAlg::new(&counting, None).verify_signature(&public, b"message", &sig).unwrap();
        assert_eq!(calls(), 2);

        let cache = SignatureCache::new();
        RememberingAlg::new(&counting, Some(&cache)).verify_signature(&public, b"message", &sig).unwrap();
        RememberingAlg::new(&counting, Some(&cache.clone()))
            .verify_signature(&public, b"message", &sig)
            .unwrap();
        assert_eq!((calls(), cache.len()), (3, 1));
        // Failures are never remembered.
        let mut bad = sig.clone();
        *bad.last_mut().unwrap() ^= 1;
        for _ in 0..2 {
            assert!(RememberingAlg::new(&counting, Some(&cache))
                .verify_signature(&public, b"message", &bad)
                .is_err());
        }
        assert_eq!((calls(), cache.len()), (5, 1));

        // Another cache, or none, knows nothing of it.
        let other = SignatureCache::new();
        RememberingAlg::new(&counting, Some(&other)).verify_signature(&public, b"message", &sig).unwrap();
        RememberingAlg::new(&counting, None).verify_signature(&public, b"message", &sig).unwrap();
        assert_eq!((calls(), other.len()), (7, 1));
    }
}
