//! A bounded memo of successful peer verifications.
//!
//! Every authenticated RPC verifies the caller's chain against the current roots (the TLS
//! layer may trust more during a rotation, and under simulation there is no TLS at all), and
//! a node polls and renews over one connection with one chain: without a memo, each call pays
//! a full chain verification (an ECDSA verify per link). An entry remembers what verifying a
//! chain against one root set gave, and for which instants that answer stays true: the chain's
//! validity window (the latest NotBefore, the earliest NotAfter of its certificates). A lookup
//! answers only for the same root set (pointer identity: any root change is a new `RootCa`)
//! and an instant inside that window; anything else is verified afresh. Failures are never
//! remembered. Blacklists and roles are not part of this: callers check them on every call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{chain, RootCa};
use crate::identity::PeerIdentity;

/// Verified chains remembered at most; when full, the memo starts over (no order to keep, so
/// nothing depends on a hash map's iteration order).
pub const DEFAULT_CAPACITY: usize = 4096;

#[derive(Debug)]
struct Verified<T> {
    facts: T,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// Remembers which chains verified against which root set (see the module docs), with what
/// the caller learnt from each: `T` (by default the peer's identity; the server adds the
/// leaf's issuer, which is fixed for a chain and a root set too).
#[derive(Debug)]
pub struct VerifiedPeers<T = PeerIdentity> {
    roots: Option<Arc<RootCa>>,
    entries: HashMap<Vec<Vec<u8>>, Verified<T>>,
    capacity: usize,
}

impl<T: Clone> Default for VerifiedPeers<T> {
    fn default() -> Self {
        VerifiedPeers::with_capacity(DEFAULT_CAPACITY)
    }
}

impl<T: Clone> VerifiedPeers<T> {
    /// A memo holding at most `capacity` chains (at least one).
    pub fn with_capacity(capacity: usize) -> VerifiedPeers<T> {
        VerifiedPeers { roots: None, entries: HashMap::new(), capacity: capacity.max(1) }
    }

    /// What was recorded for `chain` verified under `roots`, if that answer holds at `now`.
    pub fn get(&self, roots: &Arc<RootCa>, chain: &[Vec<u8>], now: SystemTime) -> Option<T> {
        if !self.roots.as_ref().is_some_and(|r| Arc::ptr_eq(r, roots)) {
            return None;
        }
        let v = self.entries.get(chain)?;
        (v.not_before <= now && now <= v.not_after).then(|| v.facts.clone())
    }

    /// Records that `chain` verified under `roots`, with `facts`. A chain whose validity
    /// cannot be read is not recorded.
    pub fn insert(&mut self, roots: &Arc<RootCa>, chain: &[Vec<u8>], facts: T) {
        if !self.roots.as_ref().is_some_and(|r| Arc::ptr_eq(r, roots)) {
            self.entries.clear();
            self.roots = Some(Arc::clone(roots));
        }
        let Some((not_before, not_after)) = validity_window(chain) else { return };
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(chain.to_vec(), Verified { facts, not_before, not_after });
    }

    /// Chains remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl VerifiedPeers<PeerIdentity> {
    /// Verifies `chain` with [`RootCa::verify_peer`] unless a remembered answer holds.
    pub fn verify(
        &mut self,
        roots: &Arc<RootCa>,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<PeerIdentity, super::VerifyError> {
        if let Some(id) = self.get(roots, chain, now) {
            return Ok(id);
        }
        let id = roots.verify_peer(chain, now)?;
        self.insert(roots, chain, id.clone());
        Ok(id)
    }
}

/// The instants at which every certificate of `chain` is valid: (latest NotBefore, earliest
/// NotAfter), at second precision as certificates state them.
fn validity_window(chain: &[Vec<u8>]) -> Option<(SystemTime, SystemTime)> {
    let mut from = UNIX_EPOCH;
    let mut until: Option<SystemTime> = None;
    for der in chain {
        let cert = chain::parse_cert(der).ok()?;
        let v = cert.validity();
        let at = |t: i64| -> Option<SystemTime> {
            UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(t).ok()?))
        };
        let nb = at(v.not_before.timestamp())?;
        let na = at(v.not_after.timestamp())?;
        from = from.max(nb);
        until = Some(until.map_or(na, |u| u.min(na)));
    }
    let until = until?;
    (from <= until).then_some((from, until))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::Role;
    use crate::rootca::{generate_root, DEFAULT_NODE_CERT_EXPIRY};

    /// A new signing root CA (90-day leaves).
    fn gen_root() -> Arc<RootCa> {
        let g = generate_root("swarm-ca", SystemTime::now(), [7; 20]).unwrap();
        let now = SystemTime::now();
        Arc::new(
            RootCa::new(&g.cert_pem, &g.cert_pem, &g.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap(),
        )
    }

    /// A worker leaf for `cn` issued by `root` at `now`, as a DER chain.
    fn leaf_chain(root: &RootCa, cn: &str, now: SystemTime) -> Vec<Vec<u8>> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let pem = root.sign_csr(csr.as_bytes(), cn, Role::Worker, "org", now, [9; 20]).unwrap();
        chain::parse_certs_pem(&pem).unwrap()
    }

    #[test]
    fn remembers_within_the_window_and_only_for_the_same_roots() {
        let root = gen_root();
        let now = SystemTime::now();
        let chain = leaf_chain(&root, "node-a", now);
        let mut memo: VerifiedPeers = VerifiedPeers::with_capacity(8);
        assert!(memo.get(&root, &chain, now).is_none());
        let id = memo.verify(&root, &chain, now).unwrap();
        assert_eq!(id.node_id, "node-a");
        assert_eq!(memo.get(&root, &chain, now), Some(id.clone()));

        // Outside the certificate's validity: no answer (and a fresh verify fails).
        let late = now + Duration::from_secs(400 * 24 * 3600);
        assert!(memo.get(&root, &chain, late).is_none());
        assert!(memo.verify(&root, &chain, late).is_err());
        let early = now - Duration::from_secs(2 * 24 * 3600);
        assert!(memo.get(&root, &chain, early).is_none());

        // Another root set (even one with equal content) is verified afresh, and a chain
        // from another CA is refused there.
        let other = gen_root();
        assert!(memo.get(&other, &chain, now).is_none());
        assert!(memo.verify(&other, &chain, now).is_err());
        assert_eq!(memo.len(), 1, "failures are not remembered");
        let theirs = leaf_chain(&other, "node-b", now);
        memo.verify(&other, &theirs, now).unwrap();
        assert_eq!(memo.len(), 1, "a new root set forgets what the old one verified");
        assert!(memo.get(&root, &chain, now).is_none());
        assert!(memo.get(&other, &theirs, now).is_some());
        let same_again = Arc::new(root.as_ref().clone());
        assert!(memo.get(&same_again, &chain, now).is_none());
    }

    #[test]
    fn stays_bounded() {
        let root = gen_root();
        let now = SystemTime::now();
        let mut memo: VerifiedPeers = VerifiedPeers::with_capacity(3);
        for i in 0..10 {
            let chain = leaf_chain(&root, &format!("n{i}"), now);
            memo.verify(&root, &chain, now).unwrap();
            assert!(memo.len() <= 3);
            assert!(memo.get(&root, &chain, now).is_some(), "the latest chain is remembered");
        }
    }

    #[test]
    fn a_tampered_chain_is_not_answered_from_the_memo() {
        let root = gen_root();
        let now = SystemTime::now();
        let chain = leaf_chain(&root, "node-a", now);
        let mut memo: VerifiedPeers = VerifiedPeers::default();
        memo.verify(&root, &chain, now).unwrap();
        let mut bad = chain.clone();
        if let Some(b) = bad[0].last_mut() {
            *b ^= 1;
        }
        assert!(memo.get(&root, &bad, now).is_none());
        assert!(memo.verify(&root, &bad, now).is_err());
    }
}
