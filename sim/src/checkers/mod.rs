//! One checker per invariant (I1–I10, plus I11: fencing, I12: leader terms, I13: keys sealed at rest, I14: locked managers, I15: convergence, I16: certificate lives). Per-write checkers run on every
//! store write the mirror sees; the final checkers run once the liveness phase is over, over
//! everything recorded.

use std::time::Duration;

use swarmca_store::Node;
use swarmca_types::Cluster;

use crate::mirror::Mirror;
use crate::shared::Shared;

pub mod i10_status_matches_store;
pub mod i11_fencing;
pub mod i12_terms;
pub mod i13_sealed_at_rest;
pub mod i15_convergence;
pub mod i16_certificate_lives;
pub mod i1_key_matches_csr;
pub mod i2_certificate_contents;
pub mod i3_blacklist;
pub mod i4_certificates_change_only_by_issuance;
pub mod i5_liveness;
pub mod i6_recoverable_never_fails;
pub mod i7_token_decides_role;
pub mod i8_rotation;
pub mod i9_unique_serials;

/// One store write of a node, with the state before it.
pub struct WriteCtx<'a> {
    pub shared: &'a Shared,
    pub prev: Option<&'a Node>,
    pub new: &'a Node,
    /// The cluster as of this write.
    pub cluster: Option<&'a Cluster>,
    pub now: Duration,
}

impl WriteCtx<'_> {
    pub fn state(&self) -> i32 {
        state(self.new)
    }

    /// Whether this write put a new certificate on the node.
    pub fn new_certificate(&self) -> bool {
        fn cert(n: &Node) -> &[u8] {
            n.certificate.as_ref().map_or(&[], |c| c.certificate.as_slice())
        }
        let c = cert(self.new);
        !c.is_empty() && self.prev.map(cert) != Some(c)
    }
}

/// Whether writing `new` over a node in state `from` (None: a creation) is what a manager's
/// start writes of its own node: an issued manager certificate over a node that was not asking
/// for one. The store records those it sees written outside any leader's fence (and the
/// cluster's creation, which writes the first manager's node) in `Shared::own_cert_writes`
/// ([`note_own_certificate_writes`]); I4 lets only those pass, and checks at the end that each
/// is a node a manager started as.
pub fn own_certificate_write(from: Option<i32>, new: &Node) -> bool {
    let manager_issued = state(new) == 3
        && new.certificate.as_ref().is_some_and(|c| c.role == MANAGER_ROLE && !c.certificate.is_empty());
    manager_issued && from.is_none_or(|f| !matches!(f, 1 | 2))
}

/// The key a manager's own-certificate write is recorded under: node ID and certificate digest.
pub fn own_write_key(n: &Node) -> (String, String) {
    let cert = n.certificate.as_ref().map_or(&[][..], |c| c.certificate.as_slice());
    (n.id.clone(), swarmca_core::rootca::digest_string(cert))
}

/// The own-certificate writes of a commit about to be applied to `inner` (call before
/// applying; record them with [`note_own_certificate_writes`] once applied): a write that puts
/// a new issued manager certificate on a node not asking for one. A leader's (`fenced`) commit
/// has none, but for the cluster's creation (the first manager's start, under the term it
/// created the cluster in).
pub fn own_certificate_writes(
    inner: &swarmca_store::MemStore,
    ops: &[swarmca_store::Op],
    fenced: bool,
) -> Vec<(String, String)> {
    use swarmca_store::Op;
    if fenced && !ops.iter().any(|op| matches!(op, Op::CreateCluster(_))) {
        return Vec::new();
    }
    let cert = |n: &Node| n.certificate.as_ref().map(|c| c.certificate.clone()).unwrap_or_default();
    let mut found = Vec::new();
    for op in ops {
        let (Op::CreateNode(n) | Op::UpdateNode(n)) = op else { continue };
        let prev = match op {
            Op::UpdateNode(_) => inner
                .view_and_watch_sync(swarmca_store::WatchFilter::Node(n.id.clone()))
                .0
                .nodes
                .into_iter()
                .next(),
            _ => None,
        };
        let from = match op {
            Op::UpdateNode(_) => Some(prev.as_ref().map_or(-1, state)),
            _ => None,
        };
        if own_certificate_write(from, n) && prev.as_ref().map(cert) != Some(cert(n)) {
            found.push(own_write_key(n));
        }
    }
    found
}

/// Records own-certificate writes (from [`own_certificate_writes`]) of a commit that was applied.
pub fn note_own_certificate_writes(shared: &Shared, writes: Vec<(String, String)>) {
    if !writes.is_empty() {
        crate::shared::lock(&shared.own_cert_writes).extend(writes);
    }
}

/// NodeRole MANAGER.
const MANAGER_ROLE: i32 = 1;

pub fn state(n: &Node) -> i32 {
    n.certificate.as_ref().and_then(|c| c.status.as_ref()).map_or(0, |s| s.state)
}

/// Runs every per-write checker.
pub fn on_node_write(m: &mut Mirror, ctx: &WriteCtx<'_>) {
    i1_key_matches_csr::check(ctx);
    i2_certificate_contents::check(m, ctx);
    i3_blacklist::check_write(ctx);
    i4_certificates_change_only_by_issuance::check(ctx);
    i6_recoverable_never_fails::check(m, ctx);
    i8_rotation::check_write(m, ctx);
    i9_unique_serials::check(m, ctx);
    i15_convergence::on_write(m, ctx);
}

/// Runs every final checker.
pub fn finish(m: &Mirror, shared: &Shared) {
    i3_blacklist::check_renewals(shared);
    i3_blacklist::check_unlock_answers(m, shared);
    i4_certificates_change_only_by_issuance::check_own_certificates(shared);
    i5_liveness::check(m, shared);
    i7_token_decides_role::check(m, shared);
    i8_rotation::check_final(m, shared);
    i10_status_matches_store::check(m, shared);
}
