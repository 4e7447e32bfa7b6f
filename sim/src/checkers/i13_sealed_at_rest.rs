//! I13: no private key is ever stored in clear. Every write of the cluster record that reaches
//! the store (the managers write through the production `SealedStore`) holds its root CA key,
//! a rotation's new key and the unlock key sealed, or empty (a root whose key is held only by
//! the external CA), with its data key wrapped under the unlock key exactly while autolock is on.
//! The first write, made by the harness as `swarmca serve` creates a cluster, is checked too.

use swarmca_core::seal::is_sealed;
use swarmca_types::Cluster;

use crate::shared::Shared;

pub fn on_cluster_write(shared: &Shared, c: &Cluster) {
    let mut clear = Vec::new();
    if let Some(root) = &c.root_ca {
        if !root.ca_key.is_empty() && !is_sealed(&root.ca_key) {
            clear.push("root CA key");
        }
        if root.root_rotation.as_ref().is_some_and(|r| !r.ca_key.is_empty() && !is_sealed(&r.ca_key)) {
            clear.push("rotation's new CA key");
        }
    }
    if c.unlock_keys.iter().any(|k| !k.key.is_empty() && !is_sealed(&k.key)) {
        clear.push("unlock key");
    }
    match c.sealing.as_ref().filter(|s| !s.wrapped_data_key.is_empty()) {
        None => clear.push("(no wrapped data key)"),
        // With autolock on and an unlock key set, only the unlock key may open the data key.
        Some(s) => {
            let autolocked =
                swarmca_core::cluster::autolock_on(c) && swarmca_core::cluster::unlock_key(c).is_some();
            let under_unlock =
                swarmca_server::custody::kek_source(s) == swarmca_core::seal::KekSource::UnlockKey;
            if autolocked != under_unlock {
                clear.push(if autolocked {
                    "(autolock on, but the data key is not under the unlock key)"
                } else {
                    "(autolock off, but the data key is under the unlock key)"
                });
            }
        }
    }
    if !clear.is_empty() {
        shared.violation(
            "I13",
            format!(
                "cluster v{} stored in clear: {}",
                swarmca_store::version_of(c.meta.as_ref()),
                clear.join(", ")
            ),
        );
    }
}

/// A manager's key file as it writes it at its start: sealed, never clear; sealed under the
/// cluster's data key (which the store holds wrapped under the unlock key while autolock is
/// on, checked above), so it opens for whoever can open the cluster and nobody else — never
/// under the seal key itself, which would let a thief with the seal key and the manager's
/// files present its certificate and ask another manager for the unlock key.
pub fn on_key_file(
    shared: &Shared,
    i: usize,
    id: &swarmca_server::bootstrap::Identity,
    seal: Option<&swarmca_core::seal::SealKey>,
) {
    let file = id.key_file.as_slice();
    if !is_sealed(file) {
        return shared.violation("I13", format!("manager-{i} wrote its key file in clear"));
    }
    let opens = |p: swarmca_core::seal::Purpose| id.data_key.open(p, &id.cluster_id, file);
    match opens(swarmca_core::seal::Purpose::NodeKey) {
        Ok(key) if key.as_slice() == id.key_pem.as_slice() => {}
        Ok(_) => shared.violation("I13", format!("manager-{i}'s key file holds another key than it uses")),
        Err(_) => shared.violation("I13", format!("manager-{i}'s key file is not sealed under the data key")),
    }
    let kek = seal.map(swarmca_core::seal::Kek::from_seal_key);
    if kek.is_some_and(|k| k.open_node_key(&id.cluster_id, file).is_ok()) {
        shared.violation("I13", format!("manager-{i} sealed its key file under the seal key"));
    }
}
