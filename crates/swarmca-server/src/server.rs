//! The CA server object: lifecycle (`run`/`stop`/`ready`), the signer refresh (`update_root_ca`),
//! and the state the RPC handlers and the signing loop share.
//!
//! Lifecycle is a small state machine under one mutex: `Stopped → Running → Stopping →
//! Stopped`. `run` owns the signing loop until `stop` (or the drop of the `run` future) ends it;
//! a guard restores `Stopped` on every exit path, so a second `run` after a cancelled one is
//! fine (the original panicked on a closed channel).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use swarmca_core::rootca::RootCa;
use swarmca_store::{Store, StoreError, WatchFilter};
use swarmca_types::{BlacklistedCertificate, Cluster, JoinTokens};
use tracing::{info, warn};

use crate::env::{Clock, SharedEntropy};
use crate::error::ServerError;
use crate::external::{ExternalCa, ExternalCaError, EXTERNAL_REQUEST_TIMEOUT};
use crate::peer::PeerCertificates;
use crate::signal::Signal;
use crate::signer::SignerState;

/// Default interval between two batches of the root-rotation reconciler.
pub const DEFAULT_ROOT_RECONCILE_INTERVAL: Duration = Duration::from_secs(3);

/// Default interval of the retry ticker for recoverable signing errors.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// How long a join or renewal arriving while the manager changes terms waits for it.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(5);

/// Default bound on signing jobs in flight. A job spends most of its time waiting for the
/// store (a durable commit of the result); the CPU part is bounded by the runtime's threads.
/// With the embedded store's ~20 ms fsync on a slow disk, a bound of 4 capped joins near
/// 500/s; 64 keeps the store's group commits full.
pub const DEFAULT_MAX_PARALLEL_SIGNING: usize = 64;

/// Tunables of a [`CaServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The cluster this server signs for; the O of every issued certificate.
    pub cluster_id: String,
    /// How often recoverable signing failures are retried.
    pub retry_interval: Duration,
    /// How many CSRs may be signed at once.
    pub max_parallel_signing: usize,
    /// Deadline of one request to one external CA URL.
    pub external_ca_timeout: Duration,
    /// Interval between two batches of the root-rotation reconciler.
    pub root_reconcile_interval: Duration,
    /// Signature checks shared by every CA this server builds from the cluster object (and by
    /// whatever else the embedder gives the same cache): the simulator passes one per run so
    /// that a chain its checkers verified is not verified again. `None` (the default): every
    /// signature is checked.
    pub signature_cache: Option<swarmca_core::rootca::SignatureCache>,
    /// What resolves a CA key stored as a reference (a `pkcs11:` URI) to the key held in a
    /// token; `None` (the default): CA keys are PEM keys.
    pub external_keys: Option<Arc<dyn swarmca_core::rootca::ExternalKeys>>,
}

impl ServerConfig {
    /// Defaults for `cluster_id`.
    pub fn new(cluster_id: impl Into<String>) -> ServerConfig {
        ServerConfig {
            cluster_id: cluster_id.into(),
            retry_interval: DEFAULT_RETRY_INTERVAL,
            max_parallel_signing: DEFAULT_MAX_PARALLEL_SIGNING,
            external_ca_timeout: EXTERNAL_REQUEST_TIMEOUT,
            root_reconcile_interval: DEFAULT_ROOT_RECONCILE_INTERVAL,
            signature_cache: None,
            external_keys: None,
        }
    }
}

/// What the server is given by its embedder.
#[derive(Clone)]
pub struct ServerDeps {
    /// The object store.
    pub store: Arc<dyn Store>,
    /// Wall-clock source.
    pub clock: Arc<dyn Clock>,
    /// Entropy for node IDs and serial numbers.
    pub entropy: SharedEntropy,
    /// Where caller certificates come from.
    pub peers: Arc<dyn PeerCertificates>,
}

#[derive(Debug)]
pub(crate) enum Phase {
    Stopped,
    Running { cancel: RunCancel, generation: u64 },
    Stopping,
}

#[derive(Debug)]
pub(crate) struct Lifecycle {
    pub(crate) phase: Phase,
    /// `None` means "not ready".
    pub(crate) join_tokens: Option<JoinTokens>,
    pub(crate) generation: u64,
}

pub(crate) struct Inner {
    pub(crate) cfg: ServerConfig,
    pub(crate) deps: ServerDeps,
    life: Mutex<Lifecycle>,
    /// Signals `Stopped` after `run` has fully returned.
    pub(crate) stopped_tx: Arc<Signal<u64>>,
    pub(crate) ready_tx: Arc<Signal<bool>>,
    pub(crate) signer: RwLock<SignerState>,
    /// Size of the signing loop's pending set (nodes being signed or waiting for a retry).
    pub(crate) pending_len: std::sync::atomic::AtomicUsize,
    signer_problem: Mutex<Option<String>>,
    /// The last cluster object applied by [`CaServer::update_root_ca`]: what a follower keeps
    /// serving (root, tokens) while the store cannot be read.
    last_cluster: Mutex<Option<Cluster>>,
    /// Callers' chains already verified against the current roots (polls and renewals come
    /// back with the same chain; see [`swarmca_core::rootca::VerifiedPeers`]).
    pub(crate) verified_peers: Mutex<swarmca_core::rootca::VerifiedPeers<PeerFacts>>,
}

/// What a verified caller chain proves (remembered per chain and root set).
#[derive(Debug, Clone)]
pub(crate) struct PeerFacts {
    /// The caller's identity.
    pub(crate) identity: swarmca_core::identity::PeerIdentity,
    /// The leaf's issuer (raw subject, SubjectPublicKeyInfo) on the verified path: a trusted
    /// root (the rotation target is one during a rotation) or one of the chain's intermediates.
    pub(crate) issuer: swarmca_core::rootca::LeafIssuer,
}

/// The SwarmKit CA server. Cheap to clone; clones share one server.
#[derive(Clone)]
pub struct CaServer {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for CaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaServer").field("cluster_id", &self.inner.cfg.cluster_id).finish()
    }
}

/// A handle a waiting RPC keeps on the run it started under; it fires when that run stops.
pub(crate) type RunCancel = Arc<Signal<bool>>;

impl CaServer {
    /// A stopped server. `initial_root` is what `GetRootCACertificate` serves before the first
    /// `run` (the manager's own trust root), if known.
    pub fn new(cfg: ServerConfig, deps: ServerDeps, initial_root: Option<RootCa>) -> CaServer {
        let signer = SignerState::new(
            initial_root,
            cfg.external_ca_timeout,
            cfg.signature_cache.clone(),
            cfg.external_keys.clone(),
        );
        CaServer {
            inner: Arc::new(Inner {
                cfg,
                deps,
                life: Mutex::new(Lifecycle { phase: Phase::Stopped, join_tokens: None, generation: 0 }),
                stopped_tx: Signal::new(0),
                ready_tx: Signal::new(false),
                signer: RwLock::new(signer),
                pending_len: std::sync::atomic::AtomicUsize::new(0),
                signer_problem: Mutex::new(None),
                last_cluster: Mutex::new(None),
                verified_peers: Mutex::new(Default::default()),
            }),
        }
    }

    /// The cluster this server signs for.
    pub fn cluster_id(&self) -> &str {
        &self.inner.cfg.cluster_id
    }

    pub(crate) fn life(&self) -> MutexGuard<'_, Lifecycle> {
        self.inner.lock_life()
    }

    /// Stops a running server and waits until its loop has returned.
    pub async fn stop(&self) -> Result<(), ServerError> {
        let generation = {
            let mut life = self.life();
            let generation = match &life.phase {
                Phase::Running { cancel, generation } => {
                    cancel.set(true);
                    *generation
                }
                Phase::Stopped | Phase::Stopping => return Err(ServerError::AlreadyStopped),
            };
            life.phase = Phase::Stopping;
            life.join_tokens = None;
            self.inner.ready_tx.set(false);
            generation
        };
        // The guard publishes the generation once `run` has returned.
        self.inner.stopped_tx.wait_for(|g| *g >= generation).await;
        info!("CA server stopped");
        Ok(())
    }

    /// Waits until the server is running and has loaded its join tokens.
    pub async fn ready(&self) {
        self.inner.ready_tx.wait_for(|r| *r).await;
    }

    /// Whether a run is active (not stopping or stopped).
    pub fn is_running(&self) -> bool {
        matches!(self.life().phase, Phase::Running { .. })
    }

    /// The last error met while loading the cluster's RootCA object, if the current signer is
    /// stale because of it.
    pub fn root_ca_error(&self) -> Option<String> {
        self.inner.read_signer().last_error()
    }

    /// Why pending requests are not being signed right now (no signer, external CA
    /// unreachable), as last seen by the signing loop of this server.
    pub fn signer_problem(&self) -> Option<String> {
        self.inner.signer_problem.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_signer_problem(&self, p: Option<String>) {
        *self.inner.signer_problem.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// How many nodes the signing loop is signing or holding for a retry.
    pub fn pending_count(&self) -> usize {
        self.inner.pending_len.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The root CA currently used for signing (and served by `GetRootCACertificate`).
    pub fn root_ca(&self) -> Option<Arc<RootCa>> {
        self.inner.read_signer().root.clone()
    }

    /// What callers' certificate chains are verified against: the roots of
    /// [`CaServer::root_ca`], plus the new root while a rotation is in progress.
    pub fn trust_roots(&self) -> Option<Arc<RootCa>> {
        self.inner.read_signer().trust.clone()
    }

    /// The external CA client currently used for signing (SwarmKit's test accessor
    /// `ExternalCA()`); without URLs, signing is local.
    pub fn external_ca(&self) -> Arc<ExternalCa> {
        self.inner.read_signer().external.clone()
    }

    /// Hands the server this manager's current TLS credentials (certificate chain PEM and
    /// private key PEM), presented as client certificate to `https://` external CAs. The
    /// external CA's TLS configuration is replaced at once (requests in flight finish with
    /// the old one); SwarmKit followed its security config's watch for this. Invalid
    /// credentials are refused and the previous ones kept.
    pub fn update_tls_credentials(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), ExternalCaError> {
        self.inner.write_signer().set_tls_identity(cert_pem, key_pem)?;
        info!("external CA client credentials updated");
        Ok(())
    }

    pub(crate) fn mark_ready(&self, generation_cancel: &RunCancel) {
        let life = self.life();
        if matches!(life.phase, Phase::Running { .. })
            && !generation_cancel.get()
            && life.join_tokens.is_some()
        {
            self.inner.ready_tx.set(true);
        }
    }

    /// The last cluster object applied (see [`CaServer::update_root_ca`]).
    pub(crate) fn last_cluster(&self) -> Option<Cluster> {
        self.inner.last_cluster.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cancel handle of the current run, or `Stopped`.
    pub(crate) fn running_cancel(&self) -> Result<RunCancel, ServerError> {
        match &self.life().phase {
            Phase::Running { cancel, .. } => Ok(cancel.clone()),
            _ => Err(ServerError::Stopped),
        }
    }

    /// The join tokens joins are checked against right now, while the server runs and is
    /// ready (`None` otherwise): what a health check compares with the cluster's tokens.
    pub fn join_tokens(&self) -> Option<JoinTokens> {
        self.ready_tokens().ok()
    }

    /// Join tokens once ready: a call that arrives while this manager changes terms (its duties
    /// stopped, the next ones not loaded yet) waits up to [`READY_WAIT`] rather than failing.
    pub(crate) async fn ready_tokens_soon(&self) -> Result<JoinTokens, ServerError> {
        if let Ok(t) = self.ready_tokens() {
            return Ok(t);
        }
        let _ = tokio::time::timeout(READY_WAIT, self.ready()).await;
        self.ready_tokens()
    }

    /// Join tokens, if ready; `Aborted` errors otherwise (re-checked under the lock each time,
    /// so a concurrent stop gives `Aborted`, never a crash).
    pub(crate) fn ready_tokens(&self) -> Result<JoinTokens, ServerError> {
        let life = self.life();
        match (&life.phase, &life.join_tokens) {
            (Phase::Running { .. }, Some(t)) => Ok(t.clone()),
            (Phase::Running { .. }, None) => Err(ServerError::Starting),
            _ => Err(ServerError::Stopped),
        }
    }

    /// The blacklist of the served cluster, read fresh; an unreadable cluster gives an error.
    pub(crate) async fn blacklist(&self) -> Result<BTreeMap<String, BlacklistedCertificate>, ServerError> {
        let c = self.cluster().await?;
        Ok(c.blacklisted_certificates)
    }

    pub(crate) async fn cluster(&self) -> Result<Cluster, ServerError> {
        let id = &self.inner.cfg.cluster_id;
        self.inner.deps.store.get_cluster(id).await?.ok_or_else(|| ServerError::ClusterNotFound(id.clone()))
    }

    /// SwarmKit's `UpdateRootCA`: takes the join tokens from `cluster` and, when the RootCA
    /// object or the certificate expiry changed, rebuilds the signer and the external CA
    /// client (URLs filtered for the root being signed for: the rotation target during a
    /// rotation; trust = roots plus rotation target; intermediates = the cross-signed root).
    /// When only the external CA list changed, only the URLs are replaced. A bad RootCA leaves
    /// the previous signer and external CA in place; the failure is logged, kept for
    /// [`CaServer::root_ca_error`], and returned.
    pub fn update_root_ca(&self, cluster: &Cluster) -> Result<(), ServerError> {
        *self.inner.last_cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster.clone());
        let api = cluster.root_ca.clone().unwrap_or_default();
        {
            let mut life = self.life();
            let tokens = api.join_tokens.clone().unwrap_or_default();
            if !matches!(life.phase, Phase::Stopping) {
                life.join_tokens = Some(tokens);
            }
        }
        let now = self.inner.deps.clock.now();
        self.inner.write_signer().apply(cluster, now, self.inner.cfg.external_ca_timeout)
    }
}

impl Inner {
    fn lock_life(&self) -> MutexGuard<'_, Lifecycle> {
        // Lifecycle updates are single assignments; a poisoned lock still holds consistent data.
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn read_signer(&self) -> std::sync::RwLockReadGuard<'_, SignerState> {
        self.signer.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_signer(&self) -> std::sync::RwLockWriteGuard<'_, SignerState> {
        self.signer.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The store watch filter the run loop uses.
pub(crate) fn run_filter() -> WatchFilter {
    WatchFilter::All
}

/// Whether a store error is worth retrying.
pub(crate) fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

pub(crate) fn log_update_root_ca(server: &CaServer, cluster: &Cluster) {
    if let Err(e) = server.update_root_ca(cluster) {
        warn!(error = %e, "cluster update not applied to the signer");
    }
}
