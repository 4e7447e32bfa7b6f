//! I8 (root rotation). The client side lives in the workload: every certificate a node
//! accepts verifies against the root bundle it holds (or, after a rotation completed, the one
//! the cluster serves), and a node holding a valid certificate is never refused renewal (a
//! rotation may complete only once every node moved). Here, from the store:
//! * no commit marks more than 30 nodes ROTATE (SwarmKit's batch size);
//! * a node is marked ROTATE only from ISSUED, FAILED or UNKNOWN, with its certificate and
//!   request untouched, while a rotation is in progress, and never once it reported the
//!   rotation target as its issuer;
//! * a rotation completes only once every node holding a certificate reports the target as
//!   its issuer;
//! * a completed rotation leaves the target as root with its digest and fresh join tokens for
//!   it;
//! * aborting a rotation changes nothing but the rotation: the root, its digest, the CA key
//!   (opened) and the join tokens stay what they were;
//! * a rotation in progress when the faults heal completes within the liveness budget.

use std::time::Duration;

use swarmca_core::rootca::{digest, digest_string, issuer_info_of_cert_pem};
use swarmca_store::Op;
use swarmca_types::Cluster;

use super::{state, WriteCtx};
use crate::mirror::Mirror;
use crate::shared::Shared;

/// SwarmKit's `IssuanceStateRotateMaxBatchSize`.
const MAX_BATCH: usize = 30;
/// How long a reconciler may act on a rotation state it has not caught up with yet.
const GRACE: Duration = Duration::from_secs(10);

/// Whether a rotation is in progress in the mirrored cluster.
pub fn rotating(m: &Mirror) -> bool {
    m.cluster.as_ref().and_then(|c| c.root_ca.as_ref()).is_some_and(|r| r.root_rotation.is_some())
}

fn target(c: Option<&Cluster>) -> Option<Vec<u8>> {
    c.and_then(|c| c.root_ca.as_ref()).and_then(|r| r.root_rotation.as_ref()).map(|r| r.ca_cert.clone())
}

/// Every commit, before it is applied.
pub fn check_commit(shared: &Shared, ops: &[Op]) {
    let marked = ops.iter().filter(|op| matches!(op, Op::UpdateNode(n) if state(n) == 5)).count();
    if marked > MAX_BATCH {
        shared.violation("I8", format!("one commit marks {marked} nodes ROTATE (at most {MAX_BATCH})"));
    }
    if marked > 1 {
        shared.coverage.hit("rotation.batch_marked");
    }
}

/// Every node write.
pub fn check_write(m: &Mirror, ctx: &WriteCtx<'_>) {
    let Some(prev) = ctx.prev else { return };
    let (from, to) = (state(prev), state(ctx.new));
    if to != 5 || from == 5 {
        return;
    }
    let id = &ctx.new.id;
    if !matches!(from, 0 | 3 | 4) {
        ctx.shared.violation("I8", format!("node {id}: marked ROTATE from state {from}"));
    }
    let (pc, nc) =
        (prev.certificate.clone().unwrap_or_default(), ctx.new.certificate.clone().unwrap_or_default());
    if pc.certificate != nc.certificate || pc.csr != nc.csr || pc.role != nc.role || pc.cn != nc.cn {
        ctx.shared.violation("I8", format!("node {id}: marking ROTATE changed its certificate or request"));
    }
    let recent = ctx.now.saturating_sub(m.rotation_changed_at) < GRACE;
    let Some(target_pem) = target(ctx.cluster) else {
        if !recent {
            ctx.shared.violation("I8", format!("node {id}: marked ROTATE while no rotation is in progress"));
        }
        return;
    };
    if recent {
        return;
    }
    let Ok((subject, spki)) = issuer_info_of_cert_pem(&target_pem) else { return };
    let reported = prev.description.as_ref().and_then(|d| d.tls_info.as_ref());
    if reported.is_some_and(|t| t.cert_issuer_subject == subject && t.cert_issuer_public_key == spki) {
        ctx.shared
            .violation("I8", format!("node {id}: marked ROTATE although it already reports the new root"));
    }
}

/// Every cluster write (before the mirror takes it).
pub fn on_cluster_write(m: &mut Mirror, shared: &Shared, c: &Cluster) {
    let before = target(m.cluster.as_ref());
    let after = target(Some(c));
    shared.rotation_in_progress.store(after.is_some(), std::sync::atomic::Ordering::SeqCst);
    if before == after {
        return;
    }
    m.rotation_changed_at = crate::shared::now();
    let Some(done) = before else { return };
    let root = c.root_ca.clone().unwrap_or_default();
    if after.is_none() && root.ca_cert != done {
        aborted(m, shared, c);
        return;
    }
    if after.is_some() || root.ca_cert != done {
        return; // restarted towards another root
    }
    // Complete only once every node reports the new root as its issuer (what SwarmKit's
    // reconciler waits for): a node that holds a certificate and still reports another issuer
    // would be cut off from a cluster that no longer trusts the old root. A node created since
    // the last look, with no certificate yet, is signed by the new root anyway.
    if let Ok((subject, spki)) = issuer_info_of_cert_pem(&done) {
        let left: Vec<&str> = m
            .nodes
            .values()
            .filter(|n| n.certificate.as_ref().is_some_and(|c| !c.certificate.is_empty()))
            .filter(|n| {
                let t = n.description.as_ref().and_then(|d| d.tls_info.as_ref());
                !t.is_some_and(|t| t.cert_issuer_subject == subject && t.cert_issuer_public_key == spki)
            })
            // Issued by the new root after the reconciler's last look (a join or renewal that
            // landed between its read and its commit): it does not need to report yet.
            .filter(|n| {
                let pem = n.certificate.as_ref().map_or(&[][..], |c| c.certificate.as_slice());
                let chain: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(pem)
                    .filter_map(|p| p.ok().map(|p| p.contents))
                    .collect();
                shared.verify(&done, &chain).is_err()
            })
            .map(|n| n.id.as_str())
            .collect();
        if !left.is_empty() {
            shared.violation(
                "I8",
                format!(
                    "root rotation completed while {} node(s) still report another issuer: {}",
                    left.len(),
                    left.join(", ")
                ),
            );
        }
    }
    shared.coverage.hit("rotation.completed");
    shared.rotations_completed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    shared.log.push(format!("rotation: completed to {}", digest_string(&done)));
    if root.ca_cert_hash != digest_string(&done) {
        shared.violation("I8", format!("completed rotation has digest {} for its root", root.ca_cert_hash));
    }
    let tokens = root.join_tokens.unwrap_or_default();
    let old = m
        .cluster
        .as_ref()
        .and_then(|c| c.root_ca.as_ref())
        .and_then(|r| r.join_tokens.clone())
        .unwrap_or_default();
    for (t, o) in [(&tokens.worker, &old.worker), (&tokens.manager, &old.manager)] {
        let ok = swarmca_core::token::parse_join_token(t).is_ok_and(|p| p.root_digest == digest(&done));
        if !ok || t == o {
            shared.violation(
                "I8",
                "completed rotation did not regenerate the join tokens for the new root".into(),
            );
        }
    }
}

/// A rotation aborted: the write that aborts it changes nothing but the rotation; the root, its
/// digest, the CA key and the join tokens stay what they were.
fn aborted(m: &Mirror, shared: &Shared, c: &Cluster) {
    shared.coverage.hit("rotation.abort_checked");
    let Some(prev) = m.cluster.as_ref() else { return };
    let (was, now) = (prev.root_ca.clone().unwrap_or_default(), c.root_ca.clone().unwrap_or_default());
    let mut wrong = Vec::new();
    if now.ca_cert != was.ca_cert {
        wrong.push("its root certificate changed");
    }
    if now.ca_cert_hash != was.ca_cert_hash || now.ca_cert_hash != digest_string(&now.ca_cert) {
        wrong.push("its root digest is not the root's");
    }
    if now.join_tokens != was.join_tokens {
        wrong.push("its join tokens changed");
    }
    // The CA key is sealed, and sealed again at each write: compare what it opens to.
    let dek = crate::shared::lock(&shared.data_key).clone();
    if let Some(dek) = dek {
        let open = |x: &Cluster| swarmca_server::custody::open_cluster(x, &dek).ok().and_then(|x| x.root_ca);
        match (open(prev), open(c)) {
            (Some(a), Some(b)) if a.ca_key == b.ca_key => {}
            (Some(_), Some(_)) => wrong.push("its CA key changed"),
            _ => wrong.push("its CA key does not open"),
        }
    }
    if !wrong.is_empty() {
        shared.violation(
            "I8",
            format!("an aborted root rotation left the cluster inconsistent: {}", wrong.join(", ")),
        );
    }
}

/// After the liveness phase.
pub fn check_final(m: &Mirror, shared: &Shared) {
    if rotating(m) {
        shared
            .violation("I8", "a root rotation was still in progress at the end of the liveness phase".into());
    }
}
