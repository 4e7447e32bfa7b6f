//! The simulated cluster: manager nodes running the unchanged `swarmca-server` (every manager
//! serves the RPCs from the shared store; exactly one — the leader chosen by the harness — runs
//! the signing loop), their clocks, and leadership changes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use madsim::runtime::{Handle, NodeHandle};
use swarmca_core::rootca::RootCa;
use swarmca_proto::ca_server::CaServer as CaService;
use swarmca_proto::node_ca_server::NodeCaServer as NodeCaService;
use swarmca_server::{shared_entropy, CaServer, Clock, OsEntropy, ServerConfig, ServerDeps};

use crate::peers::SimPeers;
use crate::shared::{lock, Shared};
use crate::store::{FaultyStore, FencedWriter, ManagerStore};

/// The port managers serve on.
pub const PORT: u16 = 2377;

/// A manager's wall clock: simulated time plus a skew the nemesis moves (F8).
pub struct SkewedClock(pub Arc<AtomicI64>);

impl Clock for SkewedClock {
    fn now(&self) -> SystemTime {
        let ms = self.0.load(Ordering::SeqCst);
        let now = SystemTime::now();
        if ms >= 0 {
            now + Duration::from_millis(ms as u64)
        } else {
            now - Duration::from_millis(ms.unsigned_abs())
        }
    }
}

/// One manager node.
pub struct Manager {
    pub node: NodeHandle,
    pub addr: SocketAddr,
    /// The server of the node's current incarnation (replaced on restart).
    pub server: Arc<Mutex<Option<CaServer>>>,
    pub skew_ms: Arc<AtomicI64>,
    /// The manager's link to the store (cut by a manager↔store partition).
    pub store: Arc<ManagerStore>,
}

/// Liveness of a manager as the nemesis left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Paused,
    Dead,
}

/// All managers and who leads.
pub struct World {
    pub shared: Arc<Shared>,
    pub store: Arc<FaultyStore>,
    pub managers: Vec<Manager>,
    pub health: Mutex<Vec<Health>>,
    pub leader: Arc<Mutex<Option<usize>>>,
    /// Whether manager `i` runs a leader term right now (set by the term's own task).
    pub leading: Arc<Vec<AtomicBool>>,
    /// The current leader term: bumped before each new leader starts; a leader writes through a
    /// handle fenced on the term it started in (I11).
    pub term: Arc<AtomicU64>,
}

fn set_flag(flags: &[AtomicBool], i: usize, v: bool) {
    if let Some(f) = flags.get(i) {
        f.store(v, Ordering::SeqCst);
    }
}

/// The address of manager `i`.
pub fn manager_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i + 1) as u8))
}

impl World {
    /// Creates the manager nodes; each starts as a follower serving RPCs.
    /// `creds[i]` is manager `i`'s own certificate and key (its mTLS identity towards the
    /// external CA).
    pub fn build(
        shared: Arc<Shared>,
        store: Arc<FaultyStore>,
        root: RootCa,
        creds: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> World {
        let h = Handle::current();
        let mut managers = Vec::new();
        for i in 0..shared.opts.managers {
            let slot: Arc<Mutex<Option<CaServer>>> = Arc::default();
            let skew = Arc::new(AtomicI64::new(0));
            let ip = manager_ip(i);
            let link = Arc::new(ManagerStore::new(store.clone(), i));
            let (slot2, skew2, store2, shared2, root2) =
                (slot.clone(), skew.clone(), link.clone(), shared.clone(), root.clone());
            let my_creds = creds.get(i).cloned().unwrap_or_default();
            let node = h
                .create_node()
                .name(format!("manager-{i}"))
                .ip(ip)
                .init(move || {
                    let mut cfg = ServerConfig::new(shared2.cluster_id.clone());
                    cfg.retry_interval = shared2.opts.retry_interval;
                    cfg.max_parallel_signing = 4;
                    let deps = ServerDeps {
                        store: store2.clone(),
                        clock: Arc::new(SkewedClock(skew2.clone())),
                        entropy: shared_entropy(OsEntropy),
                        peers: Arc::new(SimPeers),
                    };
                    let server = CaServer::new(cfg, deps, Some(root2.clone()));
                    if let Err(e) = server.update_tls_credentials(&my_creds.0, &my_creds.1) {
                        panic!("manager credentials: {e}");
                    }
                    *lock(&slot2) = Some(server.clone());
                    let log = shared2.log.clone();
                    async move {
                        let follower = server.clone();
                        madsim::task::spawn(async move {
                            let _ = follow(&follower, &log, i).await;
                        });
                        let _ = tonic::transport::Server::builder()
                            .add_service(CaService::new(server.clone()))
                            .add_service(NodeCaService::new(server))
                            .serve(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))
                            .await;
                    }
                })
                .build();
            managers.push(Manager {
                node,
                addr: SocketAddr::new(ip, PORT),
                server: slot,
                skew_ms: skew,
                store: link,
            });
        }
        let n = managers.len();
        World {
            shared,
            store,
            managers,
            health: Mutex::new(vec![Health::Up; n]),
            leader: Arc::default(),
            leading: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            term: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn server(&self, i: usize) -> Option<CaServer> {
        self.managers.get(i).and_then(|m| lock(&m.server).clone())
    }

    pub fn health(&self, i: usize) -> Health {
        lock(&self.health).get(i).copied().unwrap_or(Health::Dead)
    }

    pub fn set_health(&self, i: usize, h: Health) {
        if let Some(x) = lock(&self.health).get_mut(i) {
            *x = h;
        }
    }

    pub fn leader(&self) -> Option<usize> {
        *lock(&self.leader)
    }

    /// Managers that are up.
    pub fn up(&self) -> Vec<usize> {
        (0..self.managers.len()).filter(|&i| self.health(i) == Health::Up).collect()
    }

    /// On manager `i`: stop whatever runs, then run as leader (or follower).
    async fn switch(&self, i: usize, leader: bool) -> bool {
        let (Some(m), Some(server)) = (self.managers.get(i), self.server(i)) else { return false };
        // The node's current incarnation: a handle taken before a restart spawns into the dead one.
        let Some(node) = Handle::current().get_node(m.node.id()) else { return false };
        let s = server.clone();
        let log = self.shared.log.clone();
        let (leader_slot, leading) = (self.leader.clone(), self.leading.clone());
        // A new leader term starts now: writes of every earlier term are fenced off from here.
        let writer = leader.then(|| {
            let term = self.term.fetch_add(1, Ordering::SeqCst) + 1;
            Arc::new(FencedWriter { store: m.store.clone(), current: self.term.clone(), term })
        });
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        node.spawn(async move {
            let stopped = s.stop().await;
            let what = if leader { "leader" } else { "follower" };
            log.push(format!(
                "manager-{i}: stop -> {:?}; starting {what}",
                stopped.map_err(|e| e.to_string())
            ));
            let _ = started_tx.send(());
            let r = match writer {
                Some(w) => {
                    set_flag(&leading, i, true);
                    let r = s.run_with_writer(w).await;
                    set_flag(&leading, i, false);
                    r
                }
                None => follow(&s, &log, i).await,
            };
            let failed = r.is_err();
            log.push(format!("manager-{i}: {what} term ended: {:?}", r.map_err(|e| e.to_string())));
            if leader && failed {
                // As `serve --etcd` does: a failed leader term gives the leadership up and the
                // manager goes back to following (and campaigning; the world's supervisor
                // elects a manager that can reach the store).
                {
                    let mut l = lock(&leader_slot);
                    if *l == Some(i) {
                        *l = None;
                    }
                }
                log.push(format!("manager-{i}: gives the leadership up; follows"));
                let r = follow(&s, &log, i).await;
                log.push(format!("manager-{i}: follower term ended: {:?}", r.map_err(|e| e.to_string())));
            }
        });
        // Wait (bounded) until the new term is ready.
        madsim::time::timeout(Duration::from_secs(10), async {
            let _ = started_rx.await;
            while !server.is_running() {
                madsim::time::sleep(Duration::from_millis(10)).await;
            }
            server.ready().await;
        })
        .await
        .is_ok()
    }

    /// Makes `i` the leader; the previous leader, if up, steps down gracefully first.
    pub async fn elect(&self, i: usize) {
        if let Some(old) = self.leader() {
            if old != i && self.health(old) == Health::Up {
                self.switch(old, false).await;
            }
        }
        self.take_over(i).await;
    }

    /// Makes `i` the leader without stopping the previous one: a leader that lost its lease
    /// and has not noticed yet keeps running its (now fenced) term.
    pub async fn take_over(&self, i: usize) {
        let pending = self.pending_nodes().await;
        if self.switch(i, true).await {
            *lock(&self.leader) = Some(i);
            self.shared.log.push(format!("leader: manager-{i} (pending nodes: {pending})"));
            if pending > 0 && self.shared.opts.safety > madsim::time::TimeHandle::current().elapsed() {
                self.shared.coverage.hit("branch.leader_change_with_pending");
            }
        } else {
            *lock(&self.leader) = None;
            self.shared.log.push(format!("leader: manager-{i} failed to start"));
        }
    }

    /// Manager `i` stops whatever term it runs and serves as a follower (a leader that noticed
    /// its lost lease).
    pub async fn step_down(&self, i: usize) {
        self.shared.log.push(format!("manager-{i}: steps down"));
        self.switch(i, false).await;
    }

    /// Nodes waiting for a certificate right now.
    async fn pending_nodes(&self) -> usize {
        use swarmca_store::Store;
        match self.store.inner.view(swarmca_store::WatchFilter::All).await {
            Ok(snap) => snap.nodes.iter().filter(|n| matches!(crate::checkers::state(n), 1 | 2)).count(),
            Err(_) => 0,
        }
    }

    /// Kills manager `i` (F2 kill).
    pub fn kill(&self, i: usize) {
        if let Some(m) = self.managers.get(i) {
            Handle::current().kill(m.node.id());
            self.set_health(i, Health::Dead);
            let mut l = lock(&self.leader);
            if *l == Some(i) {
                *l = None;
            }
        }
    }

    /// Restarts a killed manager: a fresh process, serving as a follower.
    pub async fn restart(&self, i: usize) {
        if let Some(m) = self.managers.get(i) {
            Handle::current().restart(m.node.id());
            self.set_health(i, Health::Up);
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pause(&self, i: usize) {
        if let Some(m) = self.managers.get(i) {
            Handle::current().pause(m.node.id());
            self.set_health(i, Health::Paused);
        }
    }

    /// Whether manager `i` runs a leader term.
    pub fn is_leading(&self, i: usize) -> bool {
        self.leading.get(i).is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// A random manager other than `not` that could win an election now: up, and able to
    /// reach the store (etcd's election needs it).
    pub fn electable(&self, not: Option<usize>) -> Option<usize> {
        use madsim::rand::{thread_rng, Rng};
        let up: Vec<usize> =
            self.up().into_iter().filter(|&i| Some(i) != not && !self.store_cut(i)).collect();
        if up.is_empty() {
            None
        } else {
            up.get(thread_rng().gen_range(0..up.len())).copied()
        }
    }

    /// What etcd's election does when a leader gives up or dies without a successor: a manager
    /// still campaigning wins. Every second: when no manager has run a leader term for a whole
    /// lease, one that can reach the store is elected.
    pub async fn supervise(self: Arc<Self>) {
        let mut leaderless = Duration::ZERO;
        while !self.shared.done() {
            madsim::time::sleep(Duration::from_secs(1)).await;
            let ok = self.leader().is_some_and(|l| self.health(l) != Health::Dead && self.is_leading(l));
            leaderless = if ok { Duration::ZERO } else { leaderless + Duration::from_secs(1) };
            if leaderless >= Duration::from_secs(5) {
                if let Some(i) = self.electable(None) {
                    self.shared.log.push(format!(
                        "supervisor: no leader term for {}s; electing manager-{i}",
                        leaderless.as_secs()
                    ));
                    self.shared.coverage.hit("branch.leaderless_elected");
                    self.elect(i).await;
                    leaderless = Duration::ZERO;
                }
            }
        }
    }

    /// Sets manager `i`'s link to the store (cut or restored).
    pub fn set_store_link(&self, i: usize, l: crate::store::Link) {
        if let Some(m) = self.managers.get(i) {
            m.store.set_link(l);
        }
    }

    pub fn store_cut(&self, i: usize) -> bool {
        self.managers.get(i).is_some_and(|m| m.store.is_cut())
    }

    pub fn resume(&self, i: usize) {
        if let Some(m) = self.managers.get(i) {
            Handle::current().resume(m.node.id());
            self.set_health(i, Health::Up);
        }
    }
}

/// Follows as `serve --etcd` does: a follower term that fails (the store unreachable when a
/// fresh process starts, before it has ever read the cluster) is restarted after a pause, until
/// it is stopped or another term of this server has started.
async fn follow(
    server: &CaServer,
    log: &crate::log::EventLog,
    i: usize,
) -> Result<(), swarmca_server::ServerError> {
    loop {
        match server.run_follower().await {
            Ok(()) => return Ok(()),
            Err(e @ swarmca_server::ServerError::AlreadyRunning) => return Err(e),
            Err(e) => {
                log.push(format!("manager-{i}: follower term ended: {e}; restarting it"));
                madsim::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
