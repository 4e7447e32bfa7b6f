//! State the actors of one run share: the log, coverage, what clients observed, the token
//! history, and phase flags. madsim runs everything on one thread, so plain mutexes suffice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::coverage::Coverage;
use crate::log::EventLog;
use crate::options::SimOptions;

/// A join as a client saw it.
#[derive(Debug, Clone)]
pub struct JoinObs {
    pub client: usize,
    pub token: String,
    pub start: Duration,
    pub end: Duration,
    /// The node ID on success, or the gRPC code.
    pub result: Result<String, tonic::Code>,
}

/// A final status a client received.
#[derive(Debug, Clone)]
pub struct StatusObs {
    pub node: String,
    /// When the call started and when its answer came.
    pub start: Duration,
    pub end: Duration,
    pub state: i32,
    pub cert_digest: String,
    pub csr_digest: String,
}

/// A renewal as a client saw it.
#[derive(Debug, Clone)]
pub struct RenewObs {
    pub node: String,
    /// When the IssueNodeCertificate call started.
    pub start: Duration,
    /// When its answer came.
    pub rpc_end: Duration,
    /// When the renewal as a whole (including the wait for the certificate) ended.
    pub end: Duration,
    pub ok: bool,
    /// The IssueNodeCertificate call's error code, if it failed.
    pub code: Option<tonic::Code>,
}

/// A token's lifetime: current for `role` from `from` until `until` (None: still current).
#[derive(Debug, Clone)]
pub struct TokenSpan {
    pub token: String,
    pub manager: bool,
    pub from: Duration,
    pub until: Option<Duration>,
}

/// Everything shared.
pub struct Shared {
    pub opts: SimOptions,
    pub log: EventLog,
    pub coverage: Coverage,
    pub cluster_id: String,
    pub joins: Mutex<Vec<JoinObs>>,
    pub statuses: Mutex<Vec<StatusObs>>,
    pub renewals: Mutex<Vec<RenewObs>>,
    /// GetUnlockKey calls by managers: (node, start, accepted).
    pub unlock_calls: Mutex<Vec<(String, Duration, bool)>>,
    /// GetUnlockKey answers: (node, the cluster version the answer names, the key given).
    pub unlock_answers: Mutex<Vec<(String, u64, Vec<u8>)>>,
    pub tokens: Mutex<Vec<TokenSpan>>,
    /// Faults the nemesis injected, with the time each was due (a replayable schedule).
    pub faults: Mutex<Vec<(Duration, crate::options::FaultKind)>>,
    /// Nodes removed by the admin, with the time.
    pub removed: Mutex<Vec<(String, Duration)>>,
    /// Safety-phase violations found by checkers while running.
    pub violations: Mutex<Vec<String>>,
    /// Node each client currently holds a certificate for (client index → node ID).
    pub held: Mutex<std::collections::BTreeMap<usize, String>>,
    /// Whether the cluster (as the mirror saw it last) has a root rotation in progress.
    pub rotation_in_progress: AtomicBool,
    /// Root rotations completed so far.
    pub rotations_completed: std::sync::atomic::AtomicU64,
    /// Set at heal: clients and admin stop starting new work.
    pub healing: AtomicBool,
    /// Set when the liveness phase is judged: clients stop renewing.
    pub finishing: AtomicBool,
    /// Set when the run is over: every actor exits.
    pub done: AtomicBool,
    /// Verify-only CAs built from the root bundles the harness checks against (building one
    /// checks the roots' self-signatures: done once per bundle, not once per certificate), each
    /// with the chains verified against it: a client and I2 check the same new certificate
    /// against the same bundle, which needs one signature check, not two.
    trusts: Mutex<std::collections::HashMap<Vec<u8>, Trust>>,
    /// SHA-256 of every leaf certificate (DER) the fake external CA signed: those carry its
    /// own profile's validity, not the cluster's configured expiry.
    pub extca_issued: Mutex<std::collections::BTreeSet<[u8; 32]>>,
    /// SHA-256 of every CSR (PEM) the fake external CA answered with a certificate for another
    /// key: a node may end FAILED for that.
    pub extca_wrong_key: Mutex<std::collections::BTreeSet<[u8; 32]>>,
    /// The cluster's first root (certificate PEM, key PEM): impostors use it to make
    /// certificates that chain to a trusted root but name another organization.
    pub first_root: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    /// The cluster's data key, as the operator could open it: for checks of the sealed secrets.
    pub data_key: Mutex<Option<swarmca_core::seal::DataKey>>,
    /// What SwarmKit's dispatcher would tell each node about itself, as of the last committed
    /// write: (node role, certificate status state). Agents renew when their role changed or
    /// the CA asks them to rotate.
    pub dispatch: Mutex<std::collections::BTreeMap<String, (i32, i32)>>,
    /// The cluster's root bundle as of the last committed write (what the dispatcher pushes to
    /// agents when it changes).
    pub cluster_root: Mutex<Vec<u8>>,
    /// Certificates and CSRs parsed once for every checker and client.
    pub facts: crate::facts::Facts,
    /// Signature checks shared by every CA of the run, the managers' included: a chain the
    /// checkers verified is not verified again (a pure function; only the time changes).
    pub signatures: swarmca_core::rootca::SignatureCache,
    /// Per node: woken when what the dispatcher would tell the node changes (agents wait for
    /// their session's messages rather than polling).
    wakers: Mutex<std::collections::BTreeMap<String, Arc<tokio::sync::Notify>>>,
    /// Woken when healing starts.
    pub heal_notify: tokio::sync::Notify,
    /// Managers that are locked now: started, and waiting for the unlock key.
    pub locked: Mutex<std::collections::BTreeSet<usize>>,
    /// Whether the cluster, as last written, has autolock on.
    pub autolocked: AtomicBool,
    /// The node IDs in the cluster's blacklist, as of the last committed write.
    pub blacklisted: Mutex<std::collections::BTreeSet<String>>,
    /// Node IDs the managers started as (their own certificates, issued at their start).
    pub manager_nodes: Mutex<std::collections::BTreeSet<String>>,
    /// Nodes written with an issued manager certificate outside issuance, outside any leader's
    /// fence (a manager's start writes its own so), and the certificate's digest: I4 lets only
    /// these pass, and at the end each must be a manager's own node.
    pub own_cert_writes: Mutex<Vec<(String, String)>>,
    /// How many times autolock was turned on or off (a start that saw it change may rightly
    /// start unlocked, I14).
    pub autolock_flips: std::sync::atomic::AtomicU64,
}

/// A verify-only CA and the chains verified against it.
type Trust = (Arc<swarmca_core::rootca::RootCa>, swarmca_core::rootca::VerifiedPeers);

/// Simulated time since the start of the run.
pub fn now() -> Duration {
    madsim::time::TimeHandle::current().elapsed()
}

impl Shared {
    pub fn new(opts: SimOptions, log: EventLog, cluster_id: String) -> Shared {
        Shared {
            opts,
            log,
            coverage: Coverage::default(),
            cluster_id,
            joins: Mutex::default(),
            statuses: Mutex::default(),
            renewals: Mutex::default(),
            unlock_calls: Mutex::default(),
            unlock_answers: Mutex::default(),
            tokens: Mutex::default(),
            faults: Mutex::default(),
            removed: Mutex::default(),
            violations: Mutex::default(),
            held: Mutex::default(),
            rotation_in_progress: AtomicBool::new(false),
            rotations_completed: std::sync::atomic::AtomicU64::new(0),
            healing: AtomicBool::new(false),
            finishing: AtomicBool::new(false),
            done: AtomicBool::new(false),
            trusts: Mutex::default(),
            extca_issued: Mutex::default(),
            extca_wrong_key: Mutex::default(),
            first_root: Mutex::default(),
            data_key: Mutex::default(),
            dispatch: Mutex::default(),
            cluster_root: Mutex::default(),
            facts: Default::default(),
            signatures: Default::default(),
            wakers: Mutex::default(),
            heal_notify: tokio::sync::Notify::new(),
            locked: Mutex::default(),
            autolocked: AtomicBool::new(false),
            blacklisted: Mutex::default(),
            manager_nodes: Mutex::default(),
            own_cert_writes: Mutex::default(),
            autolock_flips: Default::default(),
        }
    }

    /// Whether manager `i` is locked now.
    pub fn is_locked(&self, i: usize) -> bool {
        lock(&self.locked).contains(&i)
    }

    /// Verifies `chain` against the roots in `bundle` at the simulated time; the node ID on
    /// success. The verify-only CA is built once per run and bundle (the roots of a run are
    /// generated at its start and valid for 20 years, so the instant they were checked at does
    /// not matter within a run), and a chain verified against it is remembered for as long as
    /// every certificate in it is valid.
    pub fn verify(&self, bundle: &[u8], chain: &[Vec<u8>]) -> Result<String, String> {
        let mut trusts = lock(&self.trusts);
        let (root, memo) = match trusts.entry(bundle.to_vec()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let trust = trust_of(bundle)?.with_signature_cache(self.signatures.clone());
                e.insert((Arc::new(trust), swarmca_core::rootca::VerifiedPeers::default()))
            }
        };
        let root = Arc::clone(root);
        memo.verify(&root, chain, std::time::SystemTime::now())
            .map(|id| id.node_id)
            .map_err(|e| e.to_string())
    }

    /// The notification woken when the dispatcher's word for `node` changes.
    pub fn waker(&self, node: &str) -> Arc<tokio::sync::Notify> {
        Arc::clone(lock(&self.wakers).entry(node.to_string()).or_default())
    }

    /// Records what the dispatcher tells `node` now (`None`: the node is gone) and wakes its
    /// agent if that changed.
    pub fn dispatch(&self, node: &str, word: Option<(i32, i32)>) {
        let changed = {
            let mut d = lock(&self.dispatch);
            let old = match word {
                Some(w) => d.insert(node.to_string(), w),
                None => d.remove(node),
            };
            old != word
        };
        if changed {
            if let Some(w) = lock(&self.wakers).get(node) {
                w.notify_one();
            }
        }
    }

    pub fn healing(&self) -> bool {
        self.healing.load(Ordering::SeqCst)
    }

    pub fn finishing(&self) -> bool {
        self.finishing.load(Ordering::SeqCst)
    }

    pub fn done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Records an invariant violation (the run fails).
    pub fn violation(&self, invariant: &str, msg: String) {
        let line = format!("VIOLATION {invariant}: {msg}");
        self.log.push(line.clone());
        lock(&self.violations).push(line);
    }

    /// The current token for a role.
    pub fn current_token(&self, manager: bool) -> Option<String> {
        lock(&self.tokens)
            .iter()
            .rev()
            .find(|t| t.manager == manager && t.until.is_none())
            .map(|t| t.token.clone())
    }

    /// A token that is no longer current, if any.
    pub fn stale_token(&self, manager: bool) -> Option<String> {
        lock(&self.tokens).iter().find(|t| t.manager == manager && t.until.is_some()).map(|t| t.token.clone())
    }

    /// Records that `token` became the current token for the role.
    pub fn token_rotated(&self, manager: bool, token: String) {
        let t = now();
        let mut g = lock(&self.tokens);
        if g.iter().any(|s| s.token == token && s.until.is_none()) {
            return;
        }
        for s in g.iter_mut().filter(|s| s.manager == manager && s.until.is_none()) {
            s.until = Some(t);
        }
        g.push(TokenSpan { token, manager, from: t, until: None });
    }
}

/// A verify-only CA trusting the roots in `bundle` (PEM), valid now.
pub fn trust_of(bundle: &[u8]) -> Result<swarmca_core::rootca::RootCa, String> {
    swarmca_core::rootca::RootCa::new(
        bundle,
        b"",
        b"",
        swarmca_core::rootca::DEFAULT_NODE_CERT_EXPIRY,
        b"",
        std::time::SystemTime::now(),
    )
    .map_err(|e| format!("unusable bundle: {e}"))
}

pub use crate::lock;
