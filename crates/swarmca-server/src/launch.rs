//! A manager put together once its keys are open: the store and the election behind the seal
//! layer, the CA server with the cluster's root, the [`Manager`] that follows and leads, and
//! the [`Control`] its admin socket serves. `swarmca serve` and the simulator both start their
//! managers through [`Launch::build`] after [`crate::unlock::Unlocking::start`], so what runs
//! between "unlocked" and "serving" is the same code in both.

use std::sync::Arc;
use std::time::Duration;

use swarmca_core::rootca::RootCa;
use swarmca_store::Store;

use crate::bootstrap::Identity;
use crate::control::Control;
use crate::custody::{Keys, SealedElection, SealedStore};
use crate::env::{Clock, SharedEntropy};
use crate::leadership::Election;
use crate::manager::{Manager, Observer};
use crate::peer::PeerCertificates;
use crate::server::{CaServer, ServerConfig, ServerDeps};

/// The largest request a manager decodes. A certificate request is a few KiB (an RSA-4096 CSR
/// in PEM is under 2 KiB); a bigger message is refused (`OutOfRange`) instead of buffered up to
/// tonic's default of 4 MiB. Every server mounting the `CA` and `NodeCA` services sets it
/// (`max_decoding_message_size`).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why a manager could not be put together from its identity.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(String);

/// What a manager is made of, besides its identity.
pub struct Launch<'a> {
    /// Who this manager is, as [`crate::unlock::Unlocking::start`] found it.
    pub id: &'a Identity,
    /// The store, not yet sealing (this wraps it).
    pub store: Arc<dyn Store>,
    /// The election, not yet sealing (this wraps it).
    pub election: Arc<dyn Election>,
    /// The keys that opened the cluster.
    pub keys: &'a Keys,
    /// The server's settings; its external key source is set from `keys`.
    pub config: ServerConfig,
    pub clock: Arc<dyn Clock>,
    pub entropy: SharedEntropy,
    pub peers: Arc<dyn PeerCertificates>,
    /// Who hears the manager's events, and how long it pauses before a restart or a new
    /// campaign (default: none, and [`crate::DEFAULT_RETRY_PAUSE`]).
    pub observer: Option<(Duration, Observer)>,
}

/// A manager ready to run.
pub struct Launched {
    /// The store as the server sees it: sealing on the way in, opening on the way out.
    pub store: Arc<dyn Store>,
    pub server: CaServer,
    /// Not running yet: spawn [`Manager::run`].
    pub manager: Manager,
    /// The administration of this manager, naming the leader through the election.
    pub control: Control,
}

impl Launch<'_> {
    /// Puts the manager together. Nothing runs yet.
    pub fn build(self) -> Result<Launched, LaunchError> {
        let id = self.id;
        // From here on, every read opens the cluster's secrets and every write seals them.
        let store: Arc<dyn Store> = Arc::new(SealedStore::new(
            self.store,
            id.data_key.clone(),
            self.keys.seal.clone(),
            self.entropy.clone(),
        ));
        let election: Arc<dyn Election> = Arc::new(SealedElection::new(
            self.election,
            id.data_key.clone(),
            self.keys.seal.clone(),
            self.entropy.clone(),
        ));
        let mut config = self.config;
        config.external_keys = self.keys.external.clone();
        let mut root = RootCa::from_api_reusing_with(
            None,
            &id.root,
            id.expiry,
            self.clock.now(),
            self.keys.external_keys(),
        )
        .map_err(|e| LaunchError(format!("the cluster's root CA is unusable: {e}")))?;
        if let Some(cache) = &config.signature_cache {
            root = root.with_signature_cache(cache.clone());
        }
        let server = CaServer::new(
            config,
            ServerDeps { store: store.clone(), clock: self.clock, entropy: self.entropy, peers: self.peers },
            Some(root),
        );
        server.update_tls_credentials(&id.cert_pem, &id.key_pem).map_err(|e| {
            LaunchError(format!("this manager's credentials are unusable for the external CA client: {e}"))
        })?;
        let mut manager = Manager::new(server.clone(), election, id.node_id.clone());
        if let Some((pause, observer)) = self.observer {
            manager = manager.with_observer(pause, observer);
        }
        let control = {
            let manager = manager.clone();
            Control::new(server.clone(), Some(id.node_id.clone())).with_leader_lookup(Arc::new(move || {
                let manager = manager.clone();
                Box::pin(async move { manager.leader().await })
            }))
        };
        Ok(Launched { store, server, manager, control })
    }
}
