//! `serve --etcd`: connecting to the etcd cluster several managers share, and the election they
//! take part in. What a manager does with it (follow, lead each term it wins, write through a
//! store fenced on that term) is `swarmca_server::Manager`.

use std::path::PathBuf;
use std::time::Duration;

use swarmca_server::EtcdElection;
use swarmca_store::etcd::{EtcdOptions, EtcdStore, EtcdTls};

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
    /// The seal key every manager of this swarm shares (wraps the cluster's data key).
    pub seal_key_file: Option<PathBuf>,
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
pub fn election(store: &EtcdStore, args: &EtcdArgs) -> EtcdElection {
    EtcdElection::new(store, format!("{}{ELECTION}", args.prefix), args.lease)
}
