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

use subtle::ConstantTimeEq;
use swarmca_core::rootca::{cluster_cert_expiry, RootCa};
use swarmca_store::{Store, StoreError, WatchFilter};
use swarmca_types::{BlacklistedCertificate, Cluster, JoinTokens};
use tracing::{error, info, warn};

use crate::env::{Clock, SharedEntropy};
use crate::error::ServerError;
use crate::external::{
    certs_der, client_tls_config, filter_external_ca_urls, ExternalCa, ExternalCaError,
    EXTERNAL_REQUEST_TIMEOUT,
};
use crate::peer::PeerCertificates;
use crate::signal::Signal;
use crate::signing;

/// Default interval of the retry ticker for recoverable signing errors.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(10);

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
}

impl ServerConfig {
    /// Defaults for `cluster_id`.
    pub fn new(cluster_id: impl Into<String>) -> ServerConfig {
        ServerConfig {
            cluster_id: cluster_id.into(),
            retry_interval: DEFAULT_RETRY_INTERVAL,
            max_parallel_signing: DEFAULT_MAX_PARALLEL_SIGNING,
            external_ca_timeout: EXTERNAL_REQUEST_TIMEOUT,
            root_reconcile_interval: crate::reconciler::DEFAULT_ROOT_RECONCILE_INTERVAL,
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
enum Phase {
    Stopped,
    Running { cancel: RunCancel, generation: u64 },
    Stopping,
}

#[derive(Debug)]
struct Lifecycle {
    phase: Phase,
    /// `None` means "not ready".
    join_tokens: Option<JoinTokens>,
    generation: u64,
}

/// The signer as last built from the cluster's RootCA object and external CA list.
pub(crate) struct SignerState {
    pub(crate) root: Option<Arc<RootCa>>,
    /// What callers' chains are verified against: the roots, plus the rotation target during a
    /// rotation (verify-only).
    pub(crate) trust: Option<Arc<RootCa>>,
    /// Tried before local signing; without URLs it answers `NoUrls`.
    pub(crate) external: Arc<ExternalCa>,
    /// What the external CAs' TLS servers are trusted by: the roots, plus the rotation target.
    external_pool: Vec<Vec<u8>>,
    /// This manager's own certificate chain and key, presented to external CAs.
    tls_identity: Option<TlsIdentity>,
    last_seen_root: Option<swarmca_types::RootCa>,
    last_seen_expiry: Option<Duration>,
    last_seen_external_cas: Option<Vec<swarmca_types::ExternalCa>>,
    last_error: Option<String>,
}

/// A certificate chain and its private key (PEM). Never printed.
struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl SignerState {
    /// This manager's TLS credentials (certificate chain PEM, key PEM), if handed over.
    pub(crate) fn tls_identity_pems(&self) -> Option<(&[u8], &[u8])> {
        self.tls_identity.as_ref().map(|i| (i.cert_pem.as_slice(), i.key_pem.as_slice()))
    }

    /// The external CA TLS configuration for the current pool and identity.
    fn external_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        external_tls(&self.external_pool, self.tls_identity.as_ref())
    }
}

fn external_tls(pool: &[Vec<u8>], id: Option<&TlsIdentity>) -> Result<Arc<rustls::ClientConfig>, String> {
    client_tls_config(pool, id.map(|i| (i.cert_pem.as_slice(), i.key_pem.as_slice())))
        .map_err(|e| e.to_string())
}

pub(crate) struct Inner {
    pub(crate) cfg: ServerConfig,
    pub(crate) deps: ServerDeps,
    life: Mutex<Lifecycle>,
    /// Signals `Stopped` after `run` has fully returned.
    stopped_tx: Arc<Signal<u64>>,
    ready_tx: Arc<Signal<bool>>,
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
        let external_pool = initial_root.as_ref().map(|r| r.roots_der().to_vec()).unwrap_or_default();
        let external = ExternalCa::with_tls_state(
            Vec::new(),
            Vec::new(),
            external_tls(&external_pool, None),
            cfg.external_ca_timeout,
        );
        let initial_root = initial_root.map(Arc::new);
        let signer = SignerState {
            trust: initial_root.clone(),
            root: initial_root,
            external: Arc::new(external),
            external_pool,
            tls_identity: None,
            last_seen_root: None,
            last_seen_expiry: None,
            last_seen_external_cas: None,
            last_error: None,
        };
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

    fn life(&self) -> MutexGuard<'_, Lifecycle> {
        self.inner.lock_life()
    }

    /// Runs the CA until [`CaServer::stop`] is called or the returned future is dropped: loads
    /// the cluster's root CA and join tokens, signs what a previous leader left pending, then
    /// follows store events. Fails at once if already running.
    pub async fn run(&self) -> Result<(), ServerError> {
        self.run_as(Some(self.inner.deps.store.clone())).await
    }

    /// As [`CaServer::run`], but the signing loop and the root-rotation reconciler read and
    /// write through `writer` instead of the server's store: under high availability, a
    /// handle on the same store that fences every write on the leadership this term was won
    /// with, so that a deposed leader can never write (its commits fail and nothing is
    /// applied). The caller stops the server when it loses the leadership.
    pub async fn run_with_writer(&self, writer: Arc<dyn Store>) -> Result<(), ServerError> {
        self.run_as(Some(writer)).await
    }

    /// Serves the RPCs of a *follower* manager until [`CaServer::stop`]: loads and follows the
    /// cluster's root CA and join tokens, accepts joins and renewals into the shared store and
    /// answers status from it, but signs nothing — the leader's [`CaServer::run`] does. Same
    /// lifecycle rules as `run`; a follower becomes leader with `stop` then `run`.
    pub async fn run_follower(&self) -> Result<(), ServerError> {
        self.run_as(None).await
    }

    /// Runs as leader writing through `writer`, or as a follower when `None`.
    async fn run_as(&self, writer: Option<Arc<dyn Store>>) -> Result<(), ServerError> {
        let (cancel_rx, generation) = {
            let mut life = self.life();
            if !matches!(life.phase, Phase::Stopped) {
                return Err(ServerError::AlreadyRunning);
            }
            life.generation += 1;
            let cancel = Signal::new(false);
            life.phase = Phase::Running { cancel: cancel.clone(), generation: life.generation };
            (cancel, life.generation)
        };
        let _guard = RunGuard { server: self.clone(), generation, cancel: cancel_rx.clone() };
        info!(cluster = %self.inner.cfg.cluster_id, leader = writer.is_some(), "CA server starting");
        let r = match writer {
            Some(writer) => signing::run_loop(self.clone(), cancel_rx, writer).await,
            None => signing::follow_loop(self.clone(), cancel_rx).await,
        };
        if let Err(e) = &r {
            error!(error = %e, "CA server run loop ended with an error");
        }
        r
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
        self.inner.read_signer().last_error.clone()
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
        let mut signer = self.inner.write_signer();
        let tls = client_tls_config(&signer.external_pool, Some((cert_pem, key_pem)))?;
        signer.tls_identity = Some(TlsIdentity { cert_pem: cert_pem.to_vec(), key_pem: key_pem.to_vec() });
        signer.external.update_tls(tls);
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
        let expiry = cluster_cert_expiry(cluster);
        let external_cas: Vec<swarmca_types::ExternalCa> = cluster
            .spec
            .as_ref()
            .and_then(|s| s.ca_config.as_ref())
            .map(|c| c.external_cas.clone())
            .unwrap_or_default();
        // The root external CAs must sign for: the rotation target during a rotation.
        let desired_cert = api.root_rotation.as_ref().map_or(&api.ca_cert, |r| &r.ca_cert);
        let mut signer = self.inner.write_signer();
        let changed = !api.ca_cert.is_empty()
            && (signer.last_seen_expiry != Some(expiry)
                || !signer.last_seen_root.as_ref().is_some_and(|seen| root_ca_equal_stable(seen, &api)));
        // SwarmKit's ExternalCAsEqualStable: nil and empty are equal.
        let external_changed =
            signer.last_seen_external_cas.as_deref().unwrap_or_default() != external_cas.as_slice();
        if !changed {
            if external_changed {
                let urls = filter_external_ca_urls(desired_cert, &api.ca_cert, &external_cas);
                info!(urls = ?crate::external::redact_urls(&urls), "external CA list updated");
                signer.external.update_urls(urls);
                signer.last_seen_external_cas = Some(external_cas);
            }
            return Ok(());
        }
        let now = self.inner.deps.clock.now();
        // Rebuilt from the same material (an expiry change; a restarted manager loading the
        // root it was started with), the signer is reused rather than validated again.
        match RootCa::from_api_reusing(signer.root.as_deref(), &api, expiry, now) {
            Ok(root) => {
                let mut pool = root.roots_der().to_vec();
                if let Some(r) = &api.root_rotation {
                    pool.extend(certs_der(&r.ca_cert));
                }
                let trust = match &api.root_rotation {
                    None => Some(Arc::new(root.clone())),
                    Some(r) => {
                        let mut both = api.ca_cert.clone();
                        both.push(b'\n');
                        both.extend_from_slice(&r.ca_cert);
                        match RootCa::new_reusing(signer.trust.as_deref(), &both, &[], &[], expiry, &[], now)
                        {
                            Ok(t) => Some(Arc::new(t)),
                            Err(e) => {
                                warn!(error = %e, "rotation target unusable as a trust root; trusting the current roots only");
                                Some(Arc::new(root.clone()))
                            }
                        }
                    }
                };
                // What callers are verified against did not change (an expiry change, or a
                // rotation target that is unusable as before): keep the same trust object, so
                // the chains already verified under it stay remembered.
                let same_trust = match (&signer.trust, &trust) {
                    (Some(old), Some(new)) => old.roots_der() == new.roots_der(),
                    _ => false,
                };
                if !same_trust {
                    signer.trust = trust;
                }
                // The external CA client (its TLS configuration and idle connections) stays
                // when what it trusts and appends did not change.
                let same_client = signer.external_pool == pool
                    && signer.external.intermediates() == root.intermediates_pem();
                signer.external_pool = pool;
                let urls = filter_external_ca_urls(desired_cert, &api.ca_cert, &external_cas);
                info!(
                    digest = %root.digest_string(),
                    can_sign = root.can_sign(),
                    rotating = api.root_rotation.is_some(),
                    expiry_secs = expiry.as_secs(),
                    external_ca_urls = ?crate::external::redact_urls(&urls),
                    "loaded cluster root CA"
                );
                if same_client {
                    signer.external.update_urls(urls);
                } else {
                    let tls = signer.external_tls();
                    if let Err(e) = &tls {
                        warn!(error = %e, "no TLS configuration for https external CAs");
                    }
                    signer.external = Arc::new(ExternalCa::with_tls_state(
                        urls,
                        root.intermediates_pem().to_vec(),
                        tls,
                        self.inner.cfg.external_ca_timeout,
                    ));
                }
                signer.root = Some(Arc::new(root));
                signer.last_seen_root = Some(api);
                signer.last_seen_expiry = Some(expiry);
                signer.last_seen_external_cas = Some(external_cas);
                signer.last_error = None;
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                error!(error = %msg, "invalid Root CA object in cluster; keeping the previous signer");
                signer.last_error = Some(msg.clone());
                Err(ServerError::InvalidRootCa(msg))
            }
        }
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

/// Restores `Stopped` when `run` returns or is dropped; a dropped `run` also cancels the jobs
/// of its term (they check the flag before writing).
struct RunGuard {
    server: CaServer,
    generation: u64,
    cancel: RunCancel,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.cancel.set(true);
        let mut life = self.server.life();
        let ours = match &life.phase {
            Phase::Running { generation, .. } => *generation == self.generation,
            Phase::Stopping => true,
            Phase::Stopped => false,
        };
        if ours {
            life.phase = Phase::Stopped;
            life.join_tokens = None;
        }
        self.server.inner.ready_tx.set(false);
        self.server.inner.stopped_tx.set(self.generation);
    }
}

/// SwarmKit's `RootCAEqualStable`: everything but the join tokens, keys compared in constant time.
pub fn root_ca_equal_stable(a: &swarmca_types::RootCa, b: &swarmca_types::RootCa) -> bool {
    let keys_eq = bool::from(a.ca_key.ct_eq(&b.ca_key));
    let rot_eq = match (&a.root_rotation, &b.root_rotation) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            bool::from(x.ca_key.ct_eq(&y.ca_key))
                && x.ca_cert == y.ca_cert
                && x.cross_signed_ca_cert == y.cross_signed_ca_cert
        }
        _ => false,
    };
    keys_eq
        && rot_eq
        && a.ca_cert == b.ca_cert
        && a.ca_cert_hash == b.ca_cert_hash
        && a.last_forced_rotation == b.last_forced_rotation
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
