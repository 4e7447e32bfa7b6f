//! I5 (liveness): after the faults heal, every accepted node that asked for a certificate ends
//! ISSUED or FAILED within the liveness budget, and every manager serves the cluster's current
//! root (a manager that stopped following the store would serve a stale one forever). The run
//! loop waits; this reports what is left.

use crate::mirror::Mirror;
use crate::shared::Shared;

/// Nodes still waiting: accepted membership in RENEW or PENDING — except requests the fake
/// external CA refuses recoverably forever (they must wait, and must not block the others).
pub fn waiting(m: &Mirror, shared: &Shared) -> Vec<String> {
    let poison = shared.opts.external_ca && shared.opts.extca_poison;
    m.nodes
        .values()
        .filter(|n| n.spec.as_ref().is_some_and(|s| s.membership == 1))
        .filter(|n| matches!(super::state(n), 1 | 2))
        .filter(|n| !(poison && n.certificate.as_ref().is_some_and(|c| crate::extca::poisoned(&c.csr))))
        .map(|n| n.id.clone())
        .collect()
}

pub fn check(m: &Mirror, shared: &Shared) {
    let w = waiting(m, shared);
    if !w.is_empty() {
        shared.violation(
            "I5",
            format!(
                "{} node(s) never signed after heal: {:?}",
                w.len(),
                w.iter().take(5).collect::<Vec<_>>()
            ),
        );
    }
}

/// Managers (up) whose served root or accepted join tokens differ from the cluster's current
/// ones in the store.
pub fn managers_behind(m: &Mirror, world: &crate::world::World) -> Vec<String> {
    let Some(api) = m.cluster.as_ref().and_then(|c| c.root_ca.as_ref()) else {
        return Vec::new();
    };
    let want_root = swarmca_core::rootca::normalize_pems(&api.ca_cert);
    let want_tokens = api.join_tokens.clone().unwrap_or_default();
    let mut behind = Vec::new();
    for i in world.up() {
        let Some(server) = world.server(i) else { continue };
        let root = server.root_ca().map(|r| swarmca_core::rootca::normalize_pems(r.certs_pem()));
        if root.as_ref() != Some(&want_root) {
            behind.push(format!("manager-{i} (root)"));
        }
        if server.join_tokens().as_ref() != Some(&want_tokens) {
            behind.push(format!("manager-{i} (join tokens)"));
        }
    }
    behind
}
