//! Leader housekeeping: the blacklist of removed nodes' certificates is pruned once the
//! certificates it blocks have expired (each entry records that expiry, as SwarmKit's do), so
//! the cluster record does not grow with every node ever removed. Runs at the start of every
//! leader term, then every [`PRUNE_INTERVAL`], writing through the term's store.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarmca_store::{Op, Store, StoreError};
use tracing::{info, warn};

use crate::env::Clock;
use crate::server::RunCancel;

/// How often the leader looks for expired blacklist entries.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Attempts of one pruning against concurrent writers.
const ATTEMPTS: usize = 8;

/// Removes the blacklist entries of `cluster_id` whose certificate expired before `now`
/// (entries without an expiry stay); returns how many were removed.
pub(crate) async fn prune_blacklist(
    store: &dyn Store,
    cluster_id: &str,
    now: SystemTime,
) -> Result<usize, StoreError> {
    for _ in 0..ATTEMPTS {
        let Some(mut c) = store.get_cluster(cluster_id).await? else { return Ok(0) };
        let before = c.blacklisted_certificates.len();
        c.blacklisted_certificates.retain(|_, b| {
            let expiry = b.expiry.and_then(|t| SystemTime::try_from(t).ok());
            expiry.is_none_or(|e| e >= now)
        });
        let pruned = before - c.blacklisted_certificates.len();
        if pruned == 0 {
            return Ok(0);
        }
        match store.commit(vec![Op::UpdateCluster(c)]).await {
            Ok(_) => return Ok(pruned),
            Err(StoreError::SequenceConflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::SequenceConflict)
}

/// Prunes at once, then every [`PRUNE_INTERVAL`], until the term is cancelled.
pub(crate) async fn run(
    clock: Arc<dyn Clock>,
    cluster_id: String,
    cancel: RunCancel,
    writer: Arc<dyn Store>,
) {
    loop {
        // A store call can hang (a cut link): the term's end must not wait for it.
        let pruned = tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => return,
            r = prune_blacklist(&*writer, &cluster_id, clock.now()) => r,
        };
        match pruned {
            Ok(0) => {}
            Ok(n) => info!(entries = n, "blacklist pruned: the certificates they blocked have expired"),
            Err(StoreError::Fenced) => return,
            Err(e) => warn!(error = %e, "cannot prune the blacklist; trying again later"),
        }
        tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => return,
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests;
