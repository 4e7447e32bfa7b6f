//! What every term does first, leader or follower.

use crate::error::ServerError;
use crate::server::{log_update_root_ca, CaServer, RunCancel};

/// The start of every term: a snapshot and watch, the signer loaded from the cluster object
/// (which must exist), and readiness.
pub(crate) async fn start_term(
    server: &CaServer,
    cancel: &RunCancel,
    filter: swarmca_store::WatchFilter,
) -> Result<(swarmca_store::Snapshot, swarmca_store::Watch), ServerError> {
    let cluster_id = &server.inner.cfg.cluster_id;
    let (snapshot, watch) = server.inner.deps.store.view_and_watch(filter).await?;
    let cluster = snapshot
        .clusters
        .iter()
        .find(|c| &c.id == cluster_id)
        .ok_or_else(|| ServerError::ClusterNotFound(cluster_id.clone()))?;
    log_update_root_ca(server, cluster);
    server.mark_ready(cancel);
    Ok((snapshot, watch))
}
