//! "Sometimes" assertions: interesting branches and faults the CI seed set must reach at least
//! once. A run counts hits; the sweep adds them up and fails if one stays at zero.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Every counter the seed sweep requires to be hit.
pub const REQUIRED: &[&str] = &[
    "fault.store_conflict_injected",
    "fault.store_error_injected",
    "fault.store_answer_lost",
    "fault.manager_replaced",
    "manager.renewed_itself",
    "fault.leader_graceful",
    "fault.leader_kill",
    "fault.leader_pause",
    "fault.deposed_leader_resumed",
    "fence.refused",
    "fault.clog",
    "fault.clock_skew",
    "fault.store_partition",
    "fault.store_partition_deposed_leader",
    "election.lease_expired",
    "election.resigned",
    "fault.restart_while_cut_off",
    "manager.locked",
    "blacklist.pruned",
    "role.reached_certificate",
    "manager.unlocked",
    "unlock.refused",
    "fault.duplicate_join",
    "fault.concurrent_renew",
    "fault.cancelled_poll",
    "branch.conflict_on_certificate_write",
    "branch.failed_state",
    "branch.leader_change_with_pending",
    "branch.renewal_racing_removal",
    "branch.blacklist_refused",
    "branch.removed_node_renewal_refused",
    "probe.final_status_answered",
    "fault.impostor_refused",
    "branch.unlock_key_refused_worker",
    "branch.root_download_matches_token",
    "branch.external_wrong_certificate_failed",
    "branch.unlock_key_given_autolocked",
    "fault.forwarding_worker_refused",
    "branch.unlock_key_refused_removed",
    "branch.status_cut_by_stop",
    "branch.stale_token_refused",
    "branch.renewal_issued",
    "branch.join_issued",
    "rotation.started",
    "rotation.restarted",
    "rotation.aborted",
    "rotation.abort_checked",
    "rotation.completed",
    "rotation.batch_marked",
    "rotation.node_followed",
    "rotation.bundle_picked_up",
    "renew.on_schedule",
    "cert.cut_to_issuer_end",
];

/// Hit counters of one run (or of a sweep, once merged).
#[derive(Clone, Default)]
pub struct Coverage {
    inner: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl Coverage {
    /// Counts one hit of `name`.
    pub fn hit(&self, name: &'static str) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_default() += 1;
    }

    /// All counters.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
