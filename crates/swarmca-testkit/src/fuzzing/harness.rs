//! The world the server harnesses run in: a fixed clock, seeded entropy, a root CA and test
//! CSRs made once per process, an in-memory store wrapped to inject sequence conflicts and to
//! check every committed write, and peers whose certificate chain the harness sets per call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use swarmca_core::entropy::{Entropy, EntropyError};
use swarmca_core::rootca::{digest, generate_root, GeneratedRoot, RootCa, DEFAULT_NODE_CERT_EXPIRY};
use swarmca_core::token::format_join_token;
use swarmca_store::{BoxFuture, MemStore, Op, Snapshot, Store, StoreError, Watch, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::{Cluster, JoinTokens, Node};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

use swarmca_server::peer::{CallInfo, PeerCertificates};
use swarmca_server::{shared_entropy, Clock};
use swarmca_server::{CaServer, ServerConfig, ServerDeps};

/// The wall-clock time of every harness run (2025-06-15).
pub(crate) fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// The ID of the cluster every harness serves.
pub(crate) const CLUSTER_ID: &str = "fuzzclusterid0000000000000";

/// A clock stopped at [`fixed_now`].
struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        fixed_now()
    }
}

/// splitmix64: deterministic entropy, so node IDs, serials and tokens replay with the input.
pub(crate) struct SeededEntropy(pub(crate) u64);

impl Entropy for SeededEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        for chunk in dest.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or_default());
        }
        Ok(())
    }
}

/// What is made once per process: key generation and parsing the root are the slow part of a
/// run. Keys come from *ring*'s OS randomness, so bytes differ between processes; no property
/// depends on them.
pub(crate) struct Material {
    pub(crate) root: GeneratedRoot,
    /// The root parsed and checked once, handed to every server so that a server's start
    /// reuses it (as a restarted manager reuses the root it loaded) instead of parsing it again.
    pub(crate) root_ca: RootCa,
    /// CSR PEMs: indexes 0..=2 are P-256, 3 is P-384 (all signable), 4 is Ed25519 (refused:
    /// FAILED), 5 is not a CSR at all (FAILED).
    pub(crate) csrs: Vec<Vec<u8>>,
}

/// Fails the run: the harness cannot be set up (not a finding about the code under test).
fn setup_failed(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("fuzz harness setup: {what}: {e}")
}

pub(crate) fn material() -> &'static Material {
    static M: OnceLock<Material> = OnceLock::new();
    M.get_or_init(|| {
        let root = generate_root("swarm-fuzz-CA", fixed_now(), [0x42; 20])
            .unwrap_or_else(|e| setup_failed("root", e));
        let mut csrs = Vec::new();
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap_or_else(|e| setup_failed("CSR key", e));
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)
                .and_then(|c| c.pem())
                .unwrap_or_else(|e| setup_failed("CSR", e));
            csrs.push(csr.into_bytes());
        }
        csrs.push(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_vec());
        let root_ca = RootCa::new(
            &root.cert_pem,
            &root.cert_pem,
            &root.key_pem,
            DEFAULT_NODE_CERT_EXPIRY,
            b"",
            fixed_now(),
        )
        .unwrap_or_else(|e| setup_failed("root CA", e));
        Material { root, root_ca, csrs }
    })
}

/// The CSR of pool index `i` (wrapping).
pub(crate) fn csr(i: u8) -> Vec<u8> {
    let pool = &material().csrs;
    pool.get(usize::from(i) % pool.len().max(1)).cloned().unwrap_or_default()
}

/// The cluster object every run starts from, with tokens drawn from `e`.
pub(crate) fn initial_cluster(e: &mut SeededEntropy) -> Cluster {
    let m = material();
    let d = digest(&m.root.cert_pem);
    let mut token = || {
        let mut s = [0u8; 16];
        let _ = e.fill(&mut s);
        format_join_token(&d, &s, false)
    };
    let (worker, manager) = (token(), token());
    let tokens = JoinTokens { worker, manager };
    swarmca_core::cluster::new_cluster(CLUSTER_ID, &m.root.cert_pem, &m.root.key_pem, tokens, None)
}

/// Peers whose chain the harness sets before each call (`None`: an anonymous caller).
#[derive(Default, Clone)]
pub(crate) struct SetPeers(Arc<Mutex<Option<Vec<Vec<u8>>>>>);

impl SetPeers {
    pub(crate) fn set(&self, chain: Option<Vec<Vec<u8>>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = chain;
    }
}

impl PeerCertificates for SetPeers {
    fn chain(&self, _call: &CallInfo<'_>) -> Option<Vec<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A concurrent write made just before the signer's next result write onto a node, so that
/// the signer meets a sequence conflict and must re-read and re-check.
#[derive(Debug, Clone)]
pub(crate) enum Interference {
    /// The node asks for a renewal with another CSR (the signed result is now stale).
    Renew(Vec<u8>),
    /// The node is rewritten unchanged (only its version moves).
    Touch,
    /// The node is deleted and blacklisted, as a removal does.
    Remove,
    /// The node's role is flipped, as promote/demote do (its pending request keeps its role).
    FlipRole,
}

/// What the checking store has seen.
#[derive(Default)]
pub(crate) struct Record {
    /// Broken invariants, detected at commit time (reported by the driver, which panics).
    pub(crate) violations: Vec<String>,
    /// Serial (hex) of every certificate written as ISSUED, with its node.
    pub(crate) serials: BTreeMap<String, String>,
    /// Certificates written as ISSUED, per node (latest last).
    pub(crate) issued: BTreeMap<String, Vec<Vec<u8>>>,
    /// Interferences armed, per node ID.
    pub(crate) armed: BTreeMap<String, Interference>,
    /// How many interferences fired (coverage of the conflict path).
    pub(crate) fired: usize,
}

/// The store the servers use: a [`MemStore`] whose commits are checked (I1, I3, I9 at write
/// time) and may be preceded by an armed [`Interference`].
#[derive(Clone, Default)]
pub(crate) struct CheckedStore {
    pub(crate) inner: MemStore,
    pub(crate) record: Arc<Mutex<Record>>,
}

impl CheckedStore {
    pub(crate) fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies an armed interference if `ops` write a signing result onto its node.
    fn interfere(&self, ops: &[Op]) {
        for op in ops {
            let Op::UpdateNode(n) = op else { continue };
            if !matches!(state_of(n), Some(State::Issued | State::Failed)) {
                continue;
            }
            let Some(what) = self.record().armed.remove(&n.id) else { continue };
            let Some(mut cur) = self.inner.core_node(&n.id) else { continue };
            let ops = match what {
                Interference::Renew(csr) => {
                    if let Some(c) = cur.certificate.as_mut() {
                        c.csr = csr;
                        c.certificate = Vec::new();
                        c.status = Some(swarmca_types::IssuanceStatus {
                            state: State::Renew as i32,
                            err: String::new(),
                        });
                    }
                    vec![Op::UpdateNode(cur)]
                }
                Interference::Touch => vec![Op::UpdateNode(cur)],
                Interference::FlipRole => {
                    cur.role = 1 - cur.role.clamp(0, 1);
                    if let Some(s) = cur.spec.as_mut() {
                        s.desired_role = cur.role;
                    }
                    vec![Op::UpdateNode(cur)]
                }
                Interference::Remove => {
                    let Some(mut cluster) = self.inner.core_cluster(CLUSTER_ID) else { continue };
                    cluster.blacklisted_certificates.insert(cur.id.clone(), Default::default());
                    vec![Op::UpdateCluster(cluster), Op::DeleteNode(cur)]
                }
            };
            if self.inner.commit_sync(ops).is_ok() {
                self.record().fired += 1;
            }
        }
    }

    /// Invariants of a write that just committed; `before` holds the nodes as they were.
    fn check_committed(&self, ops: &[Op], before: &BTreeMap<String, Option<Node>>) {
        let cluster = self.inner.core_cluster(CLUSTER_ID);
        let mut rec = self.record();
        for op in ops {
            let (Op::UpdateNode(n) | Op::CreateNode(n)) = op else { continue };
            let Some(cert) = n.certificate.as_ref() else { continue };
            let old_cert = before.get(&n.id).and_then(|o| o.as_ref()).and_then(|o| o.certificate.as_ref());
            let new_issuance = state_of(n) == Some(State::Issued)
                && old_cert.is_none_or(|o| o.certificate != cert.certificate);
            if !new_issuance {
                continue;
            }
            // I3: nothing is issued to a blacklisted ID.
            if cluster.as_ref().is_some_and(|c| c.blacklisted_certificates.contains_key(&n.id)) {
                rec.violations.push(format!("I3: certificate issued to blacklisted node {}", n.id));
            }
            // I1: the certificate certifies the CSR stored in the same write.
            let (cert_key, serial, cn) = match cert_facts(&cert.certificate) {
                Some(f) => f,
                None => {
                    rec.violations.push(format!("ISSUED node {} holds an unreadable certificate", n.id));
                    continue;
                }
            };
            if csr_key(&cert.csr).as_deref() != Some(cert_key.as_slice()) {
                rec.violations.push(format!("I1: node {} ISSUED with a key that is not its CSR's", n.id));
            }
            if cn != n.id || cert.cn != n.id {
                rec.violations.push(format!("I2: node {} got a certificate for CN {cn}", n.id));
            }
            // I9: serials are unique across everything issued.
            if let Some(other) = rec.serials.insert(serial.clone(), n.id.clone()) {
                rec.violations.push(format!("I9: serial {serial} issued to {other} and again to {}", n.id));
            }
            rec.issued.entry(n.id.clone()).or_default().push(cert.certificate.clone());
        }
    }
}

/// The issuance state of a node, if it has a known one.
pub(crate) fn state_of(n: &Node) -> Option<State> {
    let s = n.certificate.as_ref()?.status.as_ref().map_or(0, |s| s.state);
    State::try_from(s).ok()
}

/// (SPKI DER, serial hex, CN) of the first certificate of a PEM bundle.
pub(crate) fn cert_facts(pem: &[u8]) -> Option<(Vec<u8>, String, String)> {
    static SEEN: Memo<Option<(Vec<u8>, String, String)>> = OnceLock::new();
    memo(&SEEN, pem, |pem| {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        let (_, c) = X509Certificate::from_der(&p.contents).ok()?;
        let cn = c.subject().iter_common_name().next()?.as_str().ok()?.to_string();
        Some((c.public_key().raw.to_vec(), hex_of(c.raw_serial()), cn))
    })
}

/// The SPKI DER of a PEM CSR.
pub(crate) fn csr_key(pem: &[u8]) -> Option<Vec<u8>> {
    static SEEN: Memo<Option<Vec<u8>>> = OnceLock::new();
    memo(&SEEN, pem, |pem| {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        let (_, c) = X509CertificationRequest::from_der(&p.contents).ok()?;
        Some(c.certification_request_info.subject_pki.raw.to_vec())
    })
}

/// `f(input)`, remembered per process: the checks after every step read the same certificates
/// and CSRs again and again, and parsing them was a large share of a run. The value is a pure
/// function of the bytes, so remembering it changes no verdict; the table is emptied when it
/// grows past a bound.
type Memo<T> = OnceLock<Mutex<std::collections::HashMap<Vec<u8>, T>>>;

fn memo<T: Clone>(table: &Memo<T>, input: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    let table = table.get_or_init(Mutex::default);
    if let Some(v) = table.lock().unwrap_or_else(|e| e.into_inner()).get(input) {
        return v.clone();
    }
    let v = f(input);
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    if t.len() >= 4096 {
        t.clear();
    }
    t.insert(input.to_vec(), v.clone());
    v
}

/// The DER of every certificate of a PEM bundle.
pub(crate) fn chain_der(pem: &[u8]) -> Vec<Vec<u8>> {
    swarmca_server::external::certs_der(pem)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Store for CheckedStore {
    fn view(&self, filter: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        self.inner.view(filter)
    }

    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>> {
        self.inner.get_node(id)
    }

    fn get_cluster<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        self.inner.get_cluster(id)
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.interfere(&ops);
        let before: BTreeMap<String, Option<Node>> = ops
            .iter()
            .filter_map(|op| match op {
                Op::UpdateNode(n) | Op::CreateNode(n) => Some((n.id.clone(), self.inner.core_node(&n.id))),
                _ => None,
            })
            .collect();
        let r = self.inner.commit_sync(ops.clone());
        if r.is_ok() {
            self.check_committed(&ops, &before);
        }
        Box::pin(std::future::ready(r))
    }

    fn view_and_watch(&self, filter: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        self.inner.view_and_watch(filter)
    }
}

/// Synchronous reads of the inner store: its futures are always ready, and the checks run
/// inside `commit`, which is not async.
pub(crate) trait SyncReads {
    fn core_node(&self, id: &str) -> Option<Node>;
    fn core_cluster(&self, id: &str) -> Option<Cluster>;
}

/// The value of a future that is ready at its first poll (MemStore's are).
pub(crate) fn ready_now<T>(mut f: BoxFuture<'_, T>) -> Option<T> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

impl SyncReads for MemStore {
    fn core_node(&self, id: &str) -> Option<Node> {
        ready_now(self.get_node(id)).and_then(Result::ok).flatten()
    }

    fn core_cluster(&self, id: &str) -> Option<Cluster> {
        ready_now(self.get_cluster(id)).and_then(Result::ok).flatten()
    }
}

/// A server over `store` with the harness clock, seeded entropy and `peers`; nothing is
/// signed in parallel beyond two jobs, and the retry ticker never fires within a run.
pub(crate) fn new_server(store: &CheckedStore, peers: &SetPeers, seed: u64) -> CaServer {
    new_server_with(store, peers, seed, Some(material().root_ca.clone()))
}

/// [`new_server`], starting from `initial_root` (`None`: a new process that has loaded
/// nothing and parses the root from the store at its first start).
pub(crate) fn new_server_with(
    store: &CheckedStore,
    peers: &SetPeers,
    seed: u64,
    initial_root: Option<swarmca_core::rootca::RootCa>,
) -> CaServer {
    let mut cfg = ServerConfig::new(CLUSTER_ID);
    cfg.retry_interval = Duration::from_secs(3600);
    cfg.max_parallel_signing = 2;
    // The requests come from a fixed pool: their self-signatures (a P-384 check costs as
    // much as the rest of a signing) are checked once per process, as the simulator's are.
    static SIGNATURES: OnceLock<swarmca_core::rootca::SignatureCache> = OnceLock::new();
    cfg.signature_cache = Some(SIGNATURES.get_or_init(Default::default).clone());
    let deps = ServerDeps {
        store: Arc::new(store.clone()),
        clock: Arc::new(FixedClock),
        entropy: shared_entropy(SeededEntropy(seed)),
        peers: Arc::new(peers.clone()),
    };
    CaServer::new(cfg, deps, initial_root)
}

/// The current-thread runtime (with a timer: the signing loop's retry ticker needs one) every
/// input of this process runs on: built once, as building and dropping one per input cost more
/// than most inputs. An input's tasks end with it (its servers stop, or are aborted).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| setup_failed("tokio runtime", e))
    })
}

/// Runs one input's future to its end on [`runtime`], as a task: a task that yields goes to the
/// back of the run queue, while the future `block_on` polls itself would make the runtime poll
/// its drivers at every yield. A panic (a finding) is passed on as it was.
pub(crate) fn run_input<F>(input: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime();
    let v = match rt.block_on(rt.spawn(input)) {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("an input's task was cancelled: {e}"),
    };
    // Nothing of the input may outlive it (its servers were stopped): a task left behind would
    // change the timing of the next input, and is a shutdown defect of its own. Tasks that are
    // ending get a few ticks to do so.
    if rt.metrics().num_alive_tasks() > 0 {
        rt.block_on(rt.spawn(yield_times(64))).unwrap_or_default();
        let alive = rt.metrics().num_alive_tasks();
        assert_eq!(alive, 0, "{alive} task(s) of a stopped server outlived the input");
    }
    v
}

/// Stops `server` and waits for its run to end, so that none of its tasks outlives the input on
/// the shared runtime; a server that does not stop is a finding.
pub(crate) async fn end_server(
    server: &CaServer,
    run: tokio::task::JoinHandle<Result<(), swarmca_server::ServerError>>,
) {
    if server.is_running() {
        match tokio::time::timeout(LIFECYCLE_BOUND, server.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("stopping a server: {e}"),
            Err(_) => panic!("a server did not stop"),
        }
    }
    match tokio::time::timeout(LIFECYCLE_BOUND, run).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("a server's run task failed: {e}"),
        Err(_) => panic!("a stopped server's run did not return"),
    }
}

/// Bound on a server becoming ready or stopping (real time; normally microseconds).
pub(crate) const LIFECYCLE_BOUND: Duration = Duration::from_secs(10);

/// Lets spawned tasks (signing jobs, run loops) make progress: `n` times, this task goes to the
/// back of the run queue, behind every task that is ready. Unlike `tokio::task::yield_now`,
/// which defers the task until the runtime has polled its timer and IO drivers, this costs one
/// scheduler tick (the drivers are still polled every few dozen ticks).
pub(crate) async fn yield_times(n: usize) {
    for _ in 0..n {
        Requeue(false).await;
    }
}

/// Pending once, waking itself at once: back of the queue.
struct Requeue(bool);

impl std::future::Future for Requeue {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
