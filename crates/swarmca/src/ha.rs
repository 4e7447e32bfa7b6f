//! Several managers on one etcd cluster: every manager serves the RPCs from the shared store;
//! the one elected through etcd's election API runs the signing loop (and the rotation
//! reconciler), writing through a store handle fenced on its leadership, so that a deposed
//! leader (paused, partitioned, slow) can never land a write once another manager leads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use swarmca_server::CaServer;
use swarmca_store::etcd::{Election, EtcdOptions, EtcdStore, EtcdTls};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{fatal, Fatal};

/// The election's name, under the store's prefix.
const ELECTION: &str = "leader";

/// `serve --etcd …`: where the shared store is.
#[derive(Debug, Clone)]
pub struct EtcdArgs {
    /// Client URLs of the etcd members.
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) that signed the etcd servers' certificates.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's client-certificate authentication.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Key prefix of this swarm's objects in etcd.
    pub prefix: String,
    /// Lease of the leader: after this long without renewing it, another manager takes over.
    pub lease: Duration,
}

/// Connects to etcd; a clear error when it cannot be reached.
pub async fn connect(args: &EtcdArgs) -> Result<EtcdStore, Fatal> {
    let mut opts = EtcdOptions::new(args.endpoints.iter().cloned());
    opts.prefix = args.prefix.clone();
    match (&args.cacert, &args.cert, &args.key) {
        (None, None, None) => {}
        (Some(ca), cert, key) => {
            let mut tls = EtcdTls::new(ca.clone());
            match (cert, key) {
                (Some(c), Some(k)) => tls = tls.with_client_identity(c.clone(), k.clone()),
                (None, None) => {}
                _ => return Err(fatal!("--etcd-cert and --etcd-key go together")),
            }
            opts.tls = Some(tls);
        }
        (None, _, _) => return Err(fatal!("--etcd-cert/--etcd-key need --etcd-cacert")),
    }
    EtcdStore::connect(opts).await.map_err(|e| fatal!("{e}"))
}

/// The election all managers of this swarm take part in.
pub fn election(store: &EtcdStore, args: &EtcdArgs) -> Election {
    Election::new(store, format!("{}{ELECTION}", args.prefix), args.lease)
}

/// The node ID the current leader announced, if any.
pub async fn leader_id(election: &Election) -> Option<String> {
    match election.leader().await {
        Ok(Some(l)) => String::from_utf8(l.value().to_vec()).ok(),
        _ => None,
    }
}

/// Follows until elected, leads until the leadership is lost, and again, until `stop`. A
/// follower serves the RPCs from the shared store; the leader also signs. Errors of a term
/// (etcd unreachable, a watch cut) end that term only; the loop goes on after a pause.
pub async fn lead_or_follow(
    server: CaServer,
    store: EtcdStore,
    election: Election,
    node_id: String,
    mut stop: watch::Receiver<bool>,
) {
    const PAUSE: Duration = Duration::from_secs(1);
    loop {
        if is_set(&stop) {
            return;
        }
        // Follow while campaigning. A failed campaign (etcd unreachable) is retried without
        // touching the follower, which keeps serving (degraded while the store is away).
        let spawn_follower = || {
            let s = server.clone();
            tokio::spawn(async move { s.run_follower().await })
        };
        let mut follower = spawn_follower();
        let won = loop {
            tokio::select! {
                r = election.campaign(node_id.clone()) => match r {
                    Ok(l) => break Some(l),
                    Err(e) => {
                        warn!(error = %e, "campaign for the leadership failed; serving as a follower, retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(PAUSE) => {}
                            _ = stopped(&mut stop) => break None,
                        }
                    }
                },
                r = &mut follower => {
                    warn!(result = ?r.map(|r| r.map_err(|e| e.to_string())), "follower term ended; restarting it");
                    tokio::select! {
                        _ = tokio::time::sleep(PAUSE) => {}
                        _ = stopped(&mut stop) => break None,
                    }
                    follower = spawn_follower();
                }
                _ = stopped(&mut stop) => break None,
            }
        };
        let _ = server.stop().await;
        let _ = follower.await;
        let Some(leadership) = won else { return };
        if is_set(&stop) {
            let _ = leadership.resign().await;
            return;
        }

        info!(node = %node_id, "elected leader: running the signing loop");
        let writer = Arc::new(store.fenced(leadership.fence().clone()));
        let mut leader = {
            let s = server.clone();
            tokio::spawn(async move { s.run_with_writer(writer).await })
        };
        tokio::select! {
            _ = leadership.lost() => {
                warn!("leadership lost (lease not renewed in time): stepping down to follower");
            }
            r = &mut leader => match r {
                Ok(Ok(())) => info!("leader term ended"),
                Ok(Err(e)) => error!(error = %e, "leader term failed; giving the leadership up"),
                Err(e) => error!(error = %e, "leader task failed; giving the leadership up"),
            },
            _ = stopped(&mut stop) => {}
        }
        let _ = server.stop().await;
        let _ = leader.await;
        // A lost lease has nothing left to resign (and etcd may be unreachable).
        if !leadership.is_lost() {
            if let Err(e) = leadership.resign().await {
                warn!(error = %e, "could not resign the leadership (its lease will expire)");
            }
        }
    }
}

/// Returns once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

fn is_set(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}
