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

/// Records the removal of node `id` — answered `ok`, or not answered but applied all the same
/// (an answer the store lost): the store tells (the node blacklisted), read until it answers.
async fn note_removal(shared: &Shared, store: &dyn Store, id: &str, ok: bool) {
    let removed = ok
        || loop {
            match store.view(WatchFilter::All).await {
                Ok(s) => {
                    break s.clusters.first().is_some_and(|c| c.blacklisted_certificates.contains_key(id))
                }
                Err(_) => madsim::time::sleep(Duration::from_secs(1)).await,
            }
        };
    if removed {
        lock(&shared.removed).push((id.to_string(), now()));
    }
}

/// Runs until healing starts.
pub async fn run(shared: Arc<Shared>, control: Control, store: Arc<dyn Store>) {
    let mut autolock = false;
    let mut rotations = 0;
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
        let victim = if nodes.is_empty() { None } else { nodes.get(thread_rng().gen_range(0..nodes.len())) };
        let victim_role = victim.map(|n| n.role);
        let victim = victim.map(|n| n.id.clone());
        match (action, victim) {
            (0..=2, _) => {
                let role = if thread_rng().gen_bool(0.7) { Role::Worker } else { Role::Manager };
                let r = control.join_token(role, true).await;
                shared.log.push(format!("admin: rotate {} token -> {}", role.ou(), r.is_ok()));
            }
            (3..=4, Some(id)) => {
                // Half the time as an operator retiring a node does: change its role first
                // (the node renews for it), then remove it moments later, racing that renewal.
                if thread_rng().gen_bool(0.5) {
                    let role = if victim_role == Some(Role::Manager.to_proto()) {
                        Role::Worker
                    } else {
                        Role::Manager
                    };
                    let r = control.set_role(&id, role).await;
                    shared.log.push(format!("admin: set role of {id} to {} -> {}", role.ou(), r.is_ok()));
                    madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(1000..8000))).await;
                }
                let r = control.remove_node(&id, true).await;
                note_removal(&shared, &*store, &id, r.is_ok()).await;
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
            (7, _) if autolock && thread_rng().gen_bool(0.25) => {
                let r = control.unlock_key(true).await;
                shared.log.push(format!("admin: unlock key rotated -> {}", r.is_ok()));
            }
            (7, _) if thread_rng().gen_bool(0.5) => {
                // Flips it: every other change turns autolock off with an unlock key left.
                autolock = !autolock;
                let on = autolock;
                let r = control.update_cluster_settings(None, Some(on), None).await;
                shared.log.push(format!("admin: autolock {on} -> {}", r.is_ok()));
            }
            (7, _) => {
                // Time seeds keep certificates short-lived, so that they expire within the run.
                let choices = if shared.opts.time { [1u64, 2, 4, 8] } else { [1u64, 2, 24, 2160] };
                let hours = choices[thread_rng().gen_range(0..4)];
                let r = control
                    .update_cluster_settings(Some(Duration::from_secs(hours * 3600)), None, None)
                    .await;
                shared.log.push(format!("admin: cert expiry {hours}h -> {}", r.is_ok()));
            }
            (8..=9, _) if shared.opts.root_rotation => {
                rotate(&shared, &control, action == 9, &mut rotations).await
            }
            _ => {}
        }
    }
}

/// Root rotations started (or restarted towards a new root) at most per run: each makes every
/// node renew, and a third one adds cost, not coverage (start, restart, abort, completion and
/// a rotation racing everything else are all reached with two).
const MAX_ROTATIONS: u32 = 2;

/// Starts (or restarts towards a new root) a root rotation, or aborts the one in progress.
async fn rotate(shared: &Shared, control: &Control, maybe_abort: bool, started: &mut u32) {
    let status = control.rotation_status().await.ok();
    let in_progress = status.as_ref().is_some_and(|s| s.in_progress);
    if maybe_abort && in_progress && thread_rng().gen_bool(0.4) {
        let r = control
            .rotate_root(swarmca_proto::admin::RotateRootRequest { abort: true, ..Default::default() })
            .await;
        if r.is_ok() {
            shared.coverage.hit("rotation.aborted");
        }
        shared.log.push(format!("admin: abort root rotation -> {}", r.is_ok()));
        return;
    }
    // Starting one is rarer than the other actions: every node renews for a rotation.
    if !thread_rng().gen_bool(0.4) || *started >= MAX_ROTATIONS {
        return;
    }
    let r = control.rotate_root(Default::default()).await;
    match &r {
        Ok(st) => {
            *started += 1;
            shared.coverage.hit(if in_progress { "rotation.restarted" } else { "rotation.started" });
            shared.log.push(format!("admin: root rotation to {} started", st.target_digest));
        }
        Err(e) => shared.log.push(format!("admin: root rotation not started: {e}")),
    }
}

/// Liveness phase, with root rotations: the operator removes the nodes no client holds (failed
/// joins, superseded nodes), which would otherwise block a rotation forever.
pub async fn remove_dead_nodes(
    shared: Arc<Shared>,
    control: Control,
    store: Arc<dyn Store>,
    world: Arc<crate::world::World>,
) {
    while !shared.done() && !shared.finishing() {
        madsim::time::sleep(Duration::from_secs(5)).await;
        let Ok(status) = control.rotation_status().await else { continue };
        if !status.in_progress {
            continue;
        }
        let Ok(snap) = store.view(WatchFilter::All).await else { continue };
        // Nodes a client holds, and the managers' own (they renew themselves).
        let mut held: std::collections::BTreeSet<String> = lock(&shared.held).values().cloned().collect();
        held.extend(world.current_manager_nodes());
        for n in snap.nodes.iter().filter(|n| !held.contains(&n.id)) {
            let r = control.remove_node(&n.id, true).await;
            note_removal(&shared, &*store, &n.id, r.is_ok()).await;
            shared.log.push(format!("admin: remove dead node {} -> {}", n.id, r.is_ok()));
        }
    }
}

/// The operator unlocking managers that restarted locked: a while after a manager says it is
/// locked (at once once healing starts), through its control socket, with the cluster's current
/// unlock key — sometimes after a wrong one (refused, and slowed down). Runs until the run ends:
/// a locked manager left alone would stay out of service.
pub async fn unlocker(shared: Arc<Shared>, world: Arc<crate::world::World>, store: Arc<dyn Store>) {
    use swarmca_proto::admin::{admin_server::Admin, UnlockRequest};
    while !shared.done() {
        let pause = if shared.healing() { 1000 } else { thread_rng().gen_range(1000..15_000) };
        madsim::time::sleep(Duration::from_millis(pause)).await;
        let locked: Vec<usize> = lock(&shared.locked).iter().copied().collect();
        for i in locked {
            let Some(gate) = world.managers.get(i).and_then(|m| lock(&m.gate).clone()) else { continue };
            // The key as the operator has it: the cluster's current one (any key opens a
            // cluster whose autolock was turned off meanwhile).
            let current = match store.view(WatchFilter::All).await {
                Ok(s) => {
                    s.clusters.first().and_then(|c| swarmca_core::cluster::unlock_key(c).map(<[u8]>::to_vec))
                }
                Err(_) => continue,
            };
            let right = match current.map(|k| swarmca_core::seal::UnlockKey::from_bytes(&k)) {
                Some(Ok(k)) => k,
                _ => match swarmca_core::seal::UnlockKey::generate(&mut swarmca_server::OsEntropy) {
                    Ok(k) => k,
                    Err(_) => continue,
                },
            };
            if !shared.healing() && thread_rng().gen_bool(0.3) {
                let wrong = match swarmca_core::seal::UnlockKey::generate(&mut swarmca_server::OsEntropy) {
                    Ok(k) => k,
                    Err(_) => continue,
                };
                let r = gate
                    .unlock(tonic::Request::new(UnlockRequest { unlock_key: wrong.to_text().to_string() }))
                    .await;
                shared.log.push(format!(
                    "admin: unlock manager-{i} with a wrong key -> {:?}",
                    r.as_ref().map(|_| ()).map_err(|e| e.code())
                ));
                if r.as_ref().is_err_and(|e| e.code() == tonic::Code::PermissionDenied) {
                    shared.coverage.hit("unlock.refused");
                }
            }
            let r = gate
                .unlock(tonic::Request::new(UnlockRequest { unlock_key: right.to_text().to_string() }))
                .await;
            shared.log.push(format!(
                "admin: unlock manager-{i} -> {:?}",
                r.as_ref().map(|_| ()).map_err(|e| (e.code(), e.message().to_string()))
            ));
        }
    }
}
