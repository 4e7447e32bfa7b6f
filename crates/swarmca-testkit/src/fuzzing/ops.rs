//! Target `issuance_ops`: an `arbitrary` sequence of joins, renewals, removals, token
//! rotations, injected write conflicts and leader changes against two real [`CaServer`]s (one
//! leader running the signing loop, one follower) over one checked in-memory store, on a
//! current-thread runtime. Signing is local (the CA key is in the cluster object; no external
//! CA URL, so no IO). After every step the simulation invariants must hold:
//!
//! * I1: every certificate written as ISSUED certifies the CSR stored in the same write.
//! * I3: nothing is issued to a blacklisted (removed) node, and a removed node cannot renew.
//! * I7: a join succeeds exactly when the presented token is the current worker or manager
//!   token, and the node gets that token's role.
//! * I9: certificate serials are unique across everything issued, across leader changes.

use arbitrary::{Arbitrary, Unstructured};
use swarmca_core::role::Role;
use swarmca_core::token::parse_join_token;
use swarmca_proto::node_ca_server::NodeCa;
use swarmca_store::{Store, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::{IssueNodeCertificateRequest, JoinTokens};
use tokio::task::JoinHandle;
use tonic::Code;

use super::harness::{
    cert_facts, chain_der, csr, csr_key, initial_cluster, material, new_server, new_server_with, ready_now,
    run_input, state_of, yield_times, CheckedStore, Interference, SeededEntropy, SetPeers, SyncReads,
    CLUSTER_ID, LIFECYCLE_BOUND,
};
use swarmca_server::CaServer;
use swarmca_server::Control;
use swarmca_server::ServerError;

/// Most steps read from one input.
const MAX_STEPS: usize = 48;
/// Yields allowed for a state change to reach every server (its watch) before that is a bug.
const PROPAGATION_YIELDS: usize = 256;
/// A `Run` step looks for idleness every this many ticks...
const IDLE_CHUNK: usize = 8;
/// ...and ends once nothing changed for this many.
const IDLE_TICKS: usize = 32;
/// Yields allowed for the signing loop to drain at the end.
const SETTLE_YIELDS: usize = 4096;

#[derive(Arbitrary, Debug)]
enum Step {
    /// An anonymous node joins through server `via` with a token and a CSR of the pool.
    Join { via: u8, token: Presented, csr: u8 },
    /// A node that holds a certificate renews through `via` with a CSR of the pool.
    Renew { node: u8, via: u8, csr: u8 },
    /// The administrator removes a node (it is blacklisted).
    Remove { node: u8 },
    /// The administrator rotates a join token.
    RotateToken { manager: bool },
    /// The next signing write onto a node meets a concurrent write first.
    Conflict { node: u8, kind: Kind },
    /// Leadership moves to manager `to % 2` (or the leader restarts its term); with `to` at
    /// 224 or above, the old leader comes back as a new process.
    LeaderChange { to: u8 },
    /// Time passes: the signing jobs and loops run for a while.
    Run { yields: u8 },
}

#[derive(Arbitrary, Debug)]
enum Presented {
    Worker,
    Manager,
    /// A token that was current before a rotation.
    Old {
        index: u8,
    },
    /// A current token with one byte changed.
    Mutated {
        manager: bool,
        at: u8,
        to: u8,
    },
    Empty,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Renew { csr: u8 },
    Touch,
    Remove,
    FlipRole,
}

struct World {
    store: CheckedStore,
    peers: SetPeers,
    servers: Vec<CaServer>,
    runs: Vec<JoinHandle<Result<(), ServerError>>>,
    leader: usize,
    /// Nodes that joined, in order.
    nodes: Vec<String>,
    /// Tokens rotated away.
    old_tokens: Vec<String>,
    step: usize,
    /// The input's seed (servers' entropy derives from it).
    seed: u64,
    /// Leaders that came back as a new process.
    new_processes: usize,
    /// The version at which each ISSUED node's stored certificate was last checked.
    checked: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// Runs one input.
pub fn issuance_ops(data: &[u8]) {
    let _ = run(data);
}

/// What a run reached, so tests can tell that the invariants were not checked vacuously.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reached {
    /// Certificates issued.
    pub(crate) issued: usize,
    /// Conflicts injected before a signing write.
    pub(crate) conflicts: usize,
    /// Nodes that joined.
    pub(crate) joined: usize,
    /// Leaders that came back as a new process.
    pub(crate) new_processes: usize,
}

/// Runs one input; returns what it reached.
pub(crate) fn run(data: &[u8]) -> Reached {
    let mut u = Unstructured::new(data);
    let seed = u64::arbitrary(&mut u).unwrap_or_default();
    let mut steps = Vec::new();
    while steps.len() < MAX_STEPS && !u.is_empty() {
        match Step::arbitrary(&mut u) {
            Ok(s) => steps.push(s),
            Err(_) => break,
        }
    }
    run_input(play(seed, steps))
}

async fn play(seed: u64, steps: Vec<Step>) -> Reached {
    let _ = material();
    let store = CheckedStore::default();
    let mut e = SeededEntropy(seed);
    let created = store.inner.commit_sync(vec![swarmca_store::Op::CreateCluster(initial_cluster(&mut e))]);
    assert!(created.is_ok(), "harness: cannot create the cluster");
    let peers = SetPeers::default();
    let servers: Vec<CaServer> =
        (0..2u64).map(|i| new_server(&store, &peers, seed.wrapping_add(i + 1))).collect();
    let mut w = World {
        store,
        peers,
        servers,
        runs: Vec::new(),
        leader: 0,
        nodes: Vec::new(),
        old_tokens: Vec::new(),
        step: 0,
        seed,
        new_processes: 0,
        checked: Default::default(),
    };
    for i in 0..w.servers.len() {
        w.start(i, i == 0).await;
    }
    for step in steps {
        w.step += 1;
        w.apply(step).await;
        w.check();
    }
    // Let the leader finish what it can (until it is idle), then check once more.
    w.run_for(SETTLE_YIELDS).await;
    w.check();
    // Every server stops and every run returns, so nothing of this input outlives it.
    for i in 0..w.servers.len() {
        if w.servers.get(i).is_some_and(CaServer::is_running) {
            w.stop(i).await;
        }
    }
    for r in w.runs.drain(..) {
        match tokio::time::timeout(LIFECYCLE_BOUND, r).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("a server's run task failed: {e}"),
            Err(_) => panic!("a stopped server's run did not return"),
        }
    }
    // A write made while the servers stopped (a signing job finishing after its term was
    // cancelled) was checked as it committed: its verdict counts too.
    w.check();
    let rec = w.store.record();
    Reached {
        issued: rec.serials.len(),
        conflicts: rec.fired,
        joined: w.nodes.len(),
        new_processes: w.new_processes,
    }
}

impl World {
    fn server(&self, i: u8) -> &CaServer {
        let n = self.servers.len().max(1);
        let i = usize::from(i) % n;
        match self.servers.get(i) {
            Some(s) => s,
            None => unreachable!("index taken modulo the server count"),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("step {}: {what}", self.step)
    }

    fn node_id(&self, i: u8) -> Option<String> {
        let n = self.nodes.len();
        (n > 0).then(|| self.nodes.get(usize::from(i) % n).cloned()).flatten()
    }

    fn tokens(&self) -> JoinTokens {
        self.store
            .inner
            .core_cluster(CLUSTER_ID)
            .and_then(|c| c.root_ca)
            .and_then(|r| r.join_tokens)
            .unwrap_or_default()
    }

    /// The IDs the cluster object blacklists now (entries are never dropped in these runs).
    fn blacklisted(&self) -> std::collections::BTreeSet<String> {
        self.store
            .inner
            .core_cluster(CLUSTER_ID)
            .map(|c| c.blacklisted_certificates.into_keys().collect())
            .unwrap_or_default()
    }

    /// Starts server `i` as leader or follower and waits until it is ready.
    async fn start(&mut self, i: usize, leader: bool) {
        let Some(s) = self.servers.get(i).cloned() else { return };
        let runner = s.clone();
        self.runs.push(tokio::spawn(async move {
            if leader {
                runner.run().await
            } else {
                runner.run_follower().await
            }
        }));
        if tokio::time::timeout(LIFECYCLE_BOUND, s.ready()).await.is_err() {
            self.fail(format!("server {i} never became ready"));
        }
    }

    async fn stop(&self, i: usize) {
        let Some(s) = self.servers.get(i) else { return };
        match tokio::time::timeout(LIFECYCLE_BOUND, s.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(format!("stopping server {i}: {e}")),
            Err(_) => self.fail(format!("server {i} did not stop")),
        }
    }

    async fn apply(&mut self, step: Step) {
        match step {
            Step::Join { via, token, csr: c } => self.join(via, token, c).await,
            Step::Renew { node, via, csr: c } => self.renew(node, via, c).await,
            Step::Remove { node } => {
                let Some(id) = self.node_id(node) else { return };
                let control = Control::new(self.server(self.leader as u8).clone(), None);
                match control.remove_node(&id, true).await {
                    Ok(_) => {
                        let gone = self.store.inner.core_node(&id).is_none();
                        let listed = self
                            .store
                            .inner
                            .core_cluster(CLUSTER_ID)
                            .is_some_and(|c| c.blacklisted_certificates.contains_key(&id));
                        assert!(
                            gone && listed,
                            "step {}: removed node {id} not deleted and blacklisted",
                            self.step
                        );
                    }
                    Err(ServerError::NodeNotFound) => {}
                    Err(e) => self.fail(format!("removing {id}: {e}")),
                }
            }
            Step::RotateToken { manager } => {
                let role = if manager { Role::Manager } else { Role::Worker };
                let before = self.tokens();
                let old = if manager { before.manager } else { before.worker };
                let control = Control::new(self.server(self.leader as u8).clone(), None);
                match control.join_token(role, true).await {
                    Ok(t) => {
                        assert_ne!(t, old, "rotation kept the token");
                        assert!(parse_join_token(&t).is_ok(), "rotated token does not parse");
                        self.old_tokens.push(old);
                    }
                    Err(e) => self.fail(format!("rotating the {role:?} token: {e}")),
                }
                self.await_tokens().await;
            }
            Step::Conflict { node, kind } => {
                let Some(id) = self.node_id(node) else { return };
                let what = match kind {
                    Kind::Renew { csr: c } => Interference::Renew(csr(c)),
                    Kind::Touch => Interference::Touch,
                    Kind::Remove => Interference::Remove,
                    Kind::FlipRole => Interference::FlipRole,
                };
                self.store.record().armed.insert(id, what);
            }
            Step::LeaderChange { to } => {
                // `to` at 224 and above (one leader change in eight): the old leader's process
                // is replaced by a new one, which starts with nothing loaded (it parses and
                // checks the root from the store, as a restarted manager does) instead of
                // restarting the same server object.
                let new_process = to >= 224;
                let to = usize::from(to) % self.servers.len().max(1);
                let from = self.leader;
                self.stop(from).await;
                if new_process {
                    let seed = self.seed.wrapping_add(1000 + self.step as u64);
                    if let Some(s) = self.servers.get_mut(from) {
                        *s = new_server_with(&self.store, &self.peers, seed, None);
                        self.new_processes += 1;
                    }
                }
                if to != from {
                    self.stop(to).await;
                    self.start(from, false).await;
                }
                self.start(to, true).await;
                self.leader = to;
            }
            Step::Run { yields } => self.run_for(usize::from(yields) * 4).await,
        }
    }

    /// Lets the servers run for up to `ticks` scheduler ticks, and less once they are idle:
    /// nothing committed and no server's pending queue changed for [`IDLE_TICKS`] ticks (more
    /// ticks would change nothing the checks look at).
    async fn run_for(&self, ticks: usize) {
        let state = || {
            let pending: Vec<usize> = self.servers.iter().map(CaServer::pending_count).collect();
            (self.store.inner.revision(), pending)
        };
        let (mut last, mut idle, mut ran) = (state(), 0, 0);
        while ran < ticks {
            let n = IDLE_CHUNK.min(ticks - ran);
            yield_times(n).await;
            ran += n;
            let now = state();
            idle = if now == last { idle + n } else { 0 };
            if idle >= IDLE_TICKS {
                return;
            }
            last = now;
        }
    }

    /// Every server's join-token cache must reach the stored tokens.
    async fn await_tokens(&self) {
        let want = self.tokens();
        for _ in 0..PROPAGATION_YIELDS {
            if self.servers.iter().all(|s| s.join_tokens().as_ref() == Some(&want)) {
                return;
            }
            yield_times(1).await;
        }
        self.fail("a rotated join token did not reach every server".into());
    }

    async fn join(&mut self, via: u8, token: Presented, c: u8) {
        let t = self.tokens();
        let presented = match token {
            Presented::Worker => t.worker.clone(),
            Presented::Manager => t.manager.clone(),
            Presented::Old { index } => {
                let n = self.old_tokens.len();
                if n == 0 {
                    return;
                }
                self.old_tokens.get(usize::from(index) % n).cloned().unwrap_or_default()
            }
            Presented::Mutated { manager, at, to } => {
                let mut b = if manager { t.manager.clone() } else { t.worker.clone() }.into_bytes();
                let n = b.len().max(1);
                if let Some(x) = b.get_mut(usize::from(at) % n) {
                    *x = to;
                }
                String::from_utf8_lossy(&b).into_owned()
            }
            Presented::Empty => String::new(),
            Presented::Raw(s) => s,
        };
        // I7: the exact current token decides the role; anything else is refused.
        let expected = if !t.manager.is_empty() && presented == t.manager {
            Some(Role::Manager)
        } else if !t.worker.is_empty() && presented == t.worker {
            Some(Role::Worker)
        } else {
            None
        };
        self.peers.set(None);
        let req = IssueNodeCertificateRequest { csr: csr(c), token: presented, ..Default::default() };
        let r = self.server(via).issue_node_certificate(tonic::Request::new(req)).await;
        match (r, expected) {
            (Ok(resp), Some(role)) => {
                let id = resp.into_inner().node_id;
                let node = self.store.inner.core_node(&id);
                let got = node.as_ref().and_then(|n| n.certificate.as_ref()).map(|c| c.role);
                if got != Some(role.to_proto()) {
                    self.fail(format!(
                        "I7: join with the {role:?} token created node {id} with role {got:?}"
                    ));
                }
                self.nodes.push(id);
            }
            (Ok(resp), None) => self.fail(format!(
                "I7: join accepted without a current token (node {})",
                resp.into_inner().node_id
            )),
            (Err(s), Some(role)) => {
                self.fail(format!("I7: join with the current {role:?} token refused: {s:?}"))
            }
            (Err(s), None) => {
                if s.code() != Code::InvalidArgument {
                    self.fail(format!("join without a valid token refused with {s:?}"));
                }
            }
        }
    }

    async fn renew(&mut self, node: u8, via: u8, c: u8) {
        let Some(id) = self.node_id(node) else { return };
        let Some(cert) = self.store.record().issued.get(&id).and_then(|v| v.last().cloned()) else { return };
        let blacklisted = self.blacklisted().contains(&id);
        let exists = self.store.inner.core_node(&id).is_some();
        let new_csr = csr(c);
        self.peers.set(Some(chain_der(&cert)));
        let req = IssueNodeCertificateRequest { csr: new_csr.clone(), ..Default::default() };
        let r = self.server(via).issue_node_certificate(tonic::Request::new(req)).await;
        self.peers.set(None);
        match r {
            Ok(resp) => {
                let resp = resp.into_inner();
                if blacklisted {
                    self.fail(format!("I3: removed node {id} renewed (got {})", resp.node_id));
                }
                if resp.node_id != id {
                    self.fail(format!("renewal of {id} answered for {}", resp.node_id));
                }
                let n = self.store.inner.core_node(&id);
                let ok = n.as_ref().is_some_and(|n| {
                    state_of(n) == Some(State::Renew)
                        && n.certificate.as_ref().is_some_and(|c| c.csr == new_csr)
                });
                if !ok {
                    self.fail(format!("renewal of {id} accepted but not recorded as RENEW with its CSR"));
                }
            }
            Err(s) => {
                if !blacklisted && exists {
                    self.fail(format!("renewal of live node {id} with its valid certificate refused: {s:?}"));
                }
            }
        }
    }

    /// Invariants over everything written so far and over the current store.
    fn check(&self) {
        let rec = self.store.record();
        if !rec.violations.is_empty() {
            self.fail(rec.violations.join("; "));
        }
        drop(rec);
        let blacklisted = self.blacklisted();
        let Some(Ok(snap)) = ready_now(self.store.inner.view(WatchFilter::All)) else {
            self.fail("store unreadable".into())
        };
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        for n in &snap.nodes {
            if state_of(n) != Some(State::Issued) {
                continue;
            }
            let Some(c) = n.certificate.as_ref() else { continue };
            if blacklisted.contains(&n.id) {
                self.fail(format!("I3: blacklisted node {} is ISSUED", n.id));
            }
            // I1 on the stored state: the key of the certificate is the stored CSR's. A node
            // unchanged since the last check (same version) was checked then.
            let version = swarmca_store::version_of(n.meta.as_ref());
            if checked.get(&n.id) == Some(&version) {
                continue;
            }
            let facts = cert_facts(&c.certificate);
            if facts.as_ref().map(|f| &f.0) != csr_key(&c.csr).as_ref() {
                self.fail(format!("I1: ISSUED node {} holds a certificate for another key", n.id));
            }
            checked.insert(n.id.clone(), version);
        }
    }
}
