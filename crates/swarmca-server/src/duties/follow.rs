//! The duties of a follower: keep the signer view (root, join tokens) current, so the RPCs it
//! serves from the shared store answer with the cluster's current root and tokens.

use std::time::Duration;

use swarmca_store::Event;
use tracing::{info, warn};

use super::start::start_term;
use crate::error::ServerError;
use crate::server::{log_update_root_ca, transient, CaServer, RunCancel};

/// The body of [`CaServer::run_follower`]: keep the signer view (root, tokens) current.
///
/// A follower rides out a store outage (its watch closes, or the store cannot be read when it
/// starts, once this server has seen the cluster): it serves with the root and tokens it last
/// saw, so what needs no store (the root) keeps working and the rest fails with the store's
/// `Unavailable`, and it re-follows the store with backoff until it is back.
pub(crate) async fn follow_loop(server: CaServer, cancel: RunCancel) -> Result<(), ServerError> {
    const RETRY_MIN: Duration = Duration::from_millis(100);
    const RETRY_MAX: Duration = Duration::from_secs(5);
    let filter = swarmca_store::WatchFilter::Cluster(server.inner.cfg.cluster_id.clone());
    let mut retry = RETRY_MIN;
    let mut followed = false;
    loop {
        let mut watch = match start_term(&server, &cancel, filter.clone()).await {
            Ok((_, watch)) => {
                if std::mem::replace(&mut followed, true) && retry > RETRY_MIN {
                    info!("store reachable again: following it");
                }
                retry = RETRY_MIN;
                watch
            }
            Err(ServerError::Store(e)) if transient(&e) && (followed || server.last_cluster().is_some()) => {
                warn!(error = %e, retry_in = ?retry, "store unreachable: serving what needs no store");
                if let Some(c) = server.last_cluster() {
                    log_update_root_ca(&server, &c);
                    server.mark_ready(&cancel);
                }
                followed = true;
                tokio::select! {
                    biased;
                    _ = cancel.wait_for(|c| *c) => return Ok(()),
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
            Err(e) => return Err(e),
        };
        loop {
            tokio::select! {
                biased;
                _ = cancel.wait_for(|c| *c) => return Ok(()),
                ev = watch.next() => match ev {
                    None => {
                        warn!("store watch closed: following the store again");
                        retry = retry.max(RETRY_MIN * 2);
                        break;
                    }
                    Some(Event::CreateCluster(c)) | Some(Event::UpdateCluster(c)) => {
                        log_update_root_ca(&server, &c);
                        server.mark_ready(&cancel);
                    }
                    Some(_) => {}
                },
            }
        }
    }
}
