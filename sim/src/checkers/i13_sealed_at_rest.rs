//! I13: no private key is ever stored in clear. Every write of the cluster record that reaches
//! the store (the managers write through the production `SealedStore`) holds its root CA key,
//! a rotation's new key and the unlock key sealed, or empty (a root whose key is held only by
//! the external CA). The first write, made by the harness as `swarmca serve` creates a
//! cluster, is checked too.

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
    if c.sealing.as_ref().is_none_or(|s| s.wrapped_data_key.is_empty()) {
        clear.push("(no wrapped data key)");
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
