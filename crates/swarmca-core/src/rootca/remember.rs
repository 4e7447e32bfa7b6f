//! Signature checks remembered: within one chain verification always, and across all of them
//! on a thread that opts in.
//!
//! Checking a signature is a pure function of (algorithm, public key, message, signature).
//! [`RootCa::webpki_verify`](super::RootCa) validates a path once per key usage asked for, and
//! the later passes need not repeat the public-key operations of the first. Beyond one call,
//! the deterministic simulator checks the same signatures many times over: its checkers verify
//! every issued chain, then the CA verifies that chain again when the node presents it, and
//! the CA's check of an external CA's certificate is repeated by the checkers. A simulation
//! thread (one per seed) calls [`remember_on_this_thread`]; nothing else does, so a production
//! server checks every signature it is asked to.
//!
//! Only successes are remembered, keyed by every byte of the input (the algorithm identifiers,
//! the key, the message and the signature): an answer from memory is the one the check gives.
//! Remembering changes how long a verification takes, never its result, nor anything drawn
//! from the entropy source (verification draws nothing).

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Mutex;

use rustls_pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

/// Signature checks remembered at most per thread; when full, the memo starts over.
const THREAD_CAPACITY: usize = 1 << 16;

thread_local! {
    static THREAD: RefCell<Option<HashSet<Vec<u8>>>> = const { RefCell::new(None) };
}

/// Turns remembering successful signature checks on (or off, forgetting them) for every
/// verification by [`super::RootCa`] on the current thread.
pub fn remember_on_this_thread(on: bool) {
    THREAD.with(|t| *t.borrow_mut() = on.then(HashSet::new));
}

/// How many successful checks the current thread remembers (0 when it did not opt in).
pub fn remembered_on_this_thread() -> usize {
    THREAD.with(|t| t.borrow().as_ref().map_or(0, HashSet::len))
}

/// A signature algorithm that answers a check it (or, when this thread opted in, any
/// verification on this thread) already found valid without the public-key operation.
#[derive(Debug)]
pub(crate) struct RememberingAlg<'a> {
    inner: &'a dyn SignatureVerificationAlgorithm,
    valid: Mutex<HashSet<Vec<u8>>>,
}

impl<'a> RememberingAlg<'a> {
    pub(crate) fn new(inner: &'a dyn SignatureVerificationAlgorithm) -> Self {
        RememberingAlg { inner, valid: Mutex::new(HashSet::new()) }
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
        let on_thread = || THREAD.with(|t| t.borrow().as_ref().is_some_and(|m| m.contains(&key)));
        if valid().contains(&key) || on_thread() {
            return Ok(());
        }
        self.inner.verify_signature(public_key, message, signature)?;
        THREAD.with(|t| {
            if let Some(m) = t.borrow_mut().as_mut() {
                if m.len() >= THREAD_CAPACITY {
                    m.clear();
                }
                m.insert(key.clone());
            }
        });
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
        let alg = RememberingAlg::new(&counting);
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
    fn a_thread_that_opted_in_remembers_across_instances_and_others_do_not() {
        let (public, sig) = signed();
        let counting = Counting::default();
        let calls = || counting.0.load(Ordering::SeqCst);

        // Not opted in: every new instance checks again.
        RememberingAlg::new(&counting).verify_signature(&public, b"message", &sig).unwrap();
        RememberingAlg::new(&counting).verify_signature(&public, b"message", &sig).unwrap();
        assert_eq!((calls(), remembered_on_this_thread()), (2, 0));

        remember_on_this_thread(true);
        RememberingAlg::new(&counting).verify_signature(&public, b"message", &sig).unwrap();
        RememberingAlg::new(&counting).verify_signature(&public, b"message", &sig).unwrap();
        assert_eq!((calls(), remembered_on_this_thread()), (3, 1));
        // Failures are never remembered.
        let mut bad = sig.clone();
        *bad.last_mut().unwrap() ^= 1;
        for _ in 0..2 {
            assert!(RememberingAlg::new(&counting).verify_signature(&public, b"message", &bad).is_err());
        }
        assert_eq!((calls(), remembered_on_this_thread()), (5, 1));

        // Another thread has its own (off) memo.
        std::thread::scope(|s| {
            s.spawn(|| {
                RememberingAlg::new(&counting).verify_signature(&public, b"message", &sig).unwrap();
                assert_eq!(remembered_on_this_thread(), 0);
            });
        });
        assert_eq!(calls(), 6);

        // Turning it off forgets.
        remember_on_this_thread(false);
        RememberingAlg::new(&counting).verify_signature(&public, b"message", &sig).unwrap();
        assert_eq!((calls(), remembered_on_this_thread()), (7, 0));
    }
}
