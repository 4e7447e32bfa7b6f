//! The operator racing issuance: token rotations, node removals (blacklisting), promotions and
//! demotions, certificate-expiry changes — through the same `Control` the admin socket uses,
//! over the fault-injecting store.

use std::sync::Arc;
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use swarmca_core::role::Role;
use swarmca_server::Control;
use swarmca_store::{Store, WatchFilter};

use crate::shared::{lock, now, Shared};
use crate::workload::exp_delay;

/// Runs until healing starts.
pub async fn run(shared: Arc<Shared>, control: Control, store: Arc<dyn Store>) {
    while !shared.healing() {
        madsim::time::sleep(exp_delay(shared.opts.admin_interval)).await;
        if shared.healing() {
            break;
        }
        let action = thread_rng().gen_range(0..10);
        let nodes = match store.view(WatchFilter::All).await {
            Ok(s) => s.nodes,
            Err(_) => continue,
        };
        let victim = if nodes.is_empty() {
            None
        } else {
            nodes.get(thread_rng().gen_range(0..nodes.len())).map(|n| n.id.clone())
        };
        match (action, victim) {
            (0..=2, _) => {
                let role = if thread_rng().gen_bool(0.7) { Role::Worker } else { Role::Manager };
                let r = control.join_token(role, true).await;
                shared.log.push(format!("admin: rotate {} token -> {}", role.ou(), r.is_ok()));
            }
            (3..=4, Some(id)) => {
                let r = control.remove_node(&id, true).await;
                if r.is_ok() {
                    lock(&shared.removed).push((id.clone(), now()));
                }
                shared.log.push(format!(
                    "admin: remove {id} -> {:?}",
                    r.as_ref().map(|_| ()).map_err(|e| e.to_string())
                ));
            }
            (5..=6, Some(id)) => {
                let role = if thread_rng().gen_bool(0.5) { Role::Worker } else { Role::Manager };
                let r = control.set_role(&id, role).await;
                shared.log.push(format!("admin: set role of {id} to {} -> {}", role.ou(), r.is_ok()));
            }
            (7, _) => {
                let hours = [1u64, 2, 24, 2160][thread_rng().gen_range(0..4)];
                let r = control
                    .update_cluster_settings(Some(Duration::from_secs(hours * 3600)), None, None)
                    .await;
                shared.log.push(format!("admin: cert expiry {hours}h -> {}", r.is_ok()));
            }
            _ => {}
        }
    }
}
