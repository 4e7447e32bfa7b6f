//! I16 (certificate lives), reached by the time seeds, whose certificates live 1–8 hours:
//! * a blacklist entry is pruned only once every certificate ever issued to its node has
//!   expired (by the pruning manager's clock, which may run ahead by the seed's clock skew);
//! * a node holding a certificate renews it before it expires: a client never finds the
//!   certificate it holds expired (checked by the client before each renewal; see
//!   `workload`).

use std::time::{Duration, SystemTime};

use swarmca_types::Cluster;

use crate::mirror::Mirror;
use crate::shared::Shared;

/// Seconds since the Unix epoch, on the simulated wall clock.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Every cluster write (before the mirror takes it): entries that left the blacklist.
pub fn on_cluster_write(m: &Mirror, shared: &Shared, c: &Cluster) {
    let Some(before) = m.cluster.as_ref() else { return };
    let ahead = (shared.opts.max_clock_skew + Duration::from_secs(60)).as_secs() as i64;
    let now = unix_now();
    for id in
        before.blacklisted_certificates.keys().filter(|id| !c.blacklisted_certificates.contains_key(*id))
    {
        shared.coverage.hit("blacklist.pruned");
        if let Some(&not_after) = m.not_after.get(id) {
            if now + ahead < not_after {
                shared.violation(
                    "I16",
                    format!(
                        "blacklist entry of node {id} pruned {} s before the last certificate issued to it expires",
                        not_after - now
                    ),
                );
            }
        }
    }
}

/// A client about to renew: the certificate it holds must not have expired.
pub fn check_held(shared: &Shared, client: usize, node_id: &str, not_after: i64) {
    let now = unix_now();
    if now > not_after {
        shared.violation(
            "I16",
            format!(
                "client {client} holds an expired certificate for node {node_id} ({} s past its NotAfter)",
                now - not_after
            ),
        );
    }
}
