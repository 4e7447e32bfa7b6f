//! The simulated cluster: manager nodes, each running the production `swarmca_server::Manager`
//! (serve the RPCs; follow the store while campaigning; lead each term the election grants),
//! their clocks, and what the nemesis does to them. Who leads is decided by the simulated
//! election ([`crate::election`]) alone: the harness pauses, kills, cuts off and asks to step
//! down, and leases do the rest.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use madsim::runtime::{Handle, NodeHandle};
use swarmca_core::seal::SealKey;
use swarmca_proto::ca_server::CaServer as CaService;
use swarmca_proto::node_ca_server::NodeCaServer as NodeCaService;
use swarmca_server::bootstrap::{BootstrapError, NewCluster};
use swarmca_server::custody::Keys;
use swarmca_server::launch::{Launch, Launched, MAX_REQUEST_BYTES};
use swarmca_server::unlock::{AdminGate, NotStarted, Unlocking};
use swarmca_server::{shared_entropy, CaServer, Clock, OsEntropy, Role, ServerConfig};

use crate::checkers::i12_terms::Terms;
use crate::election::{Central, SimElection};
use crate::mirror::Mirror;
use crate::peers::SimPeers;
use crate::shared::{lock, Shared};
use crate::store::{FaultyStore, ManagerStore};

/// The port managers serve on.
pub const PORT: u16 = 2377;

/// How long a manager waits before restarting its follower duties or campaigning again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

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
pub struct ManagerNode {
    pub node: NodeHandle,
    pub addr: SocketAddr,
    /// The manager of the node's current incarnation (replaced on restart).
    pub manager: Arc<Mutex<Option<swarmca_server::Manager>>>,
    /// The control socket of the node's current incarnation: the locked one takes unlock keys.
    pub gate: Arc<Mutex<Option<AdminGate>>>,
    pub skew_ms: Arc<AtomicI64>,
    /// The manager's link to the store and the election (cut by a manager↔store partition).
    pub store: Arc<ManagerStore>,
    /// Its certificate and key file (see [`Incarnation`]), and the node ID it names.
    disk: Arc<Mutex<Option<(Vec<u8>, Vec<u8>)>>>,
    expected_node: Arc<Mutex<String>>,
}

/// A manager's own identity: node ID, certificate PEM, key PEM.
pub type Creds = (String, Vec<u8>, Vec<u8>);

/// Liveness of a manager as the nemesis left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Paused,
    Dead,
}

/// One manager node's life, run again from the start at each (re)start of the node: what
/// `swarmca serve` does, through the same server-crate code — [`Unlocking::start`] (locked
/// while the cluster is autolocked, until the admin gives the unlock key on the control
/// socket), then [`Launch::build`], then the manager and its gRPC services. What survives a
/// restart is the node's "disk": its certificate and (sealed) key file.
#[derive(Clone)]
struct Incarnation {
    i: usize,
    shared: Arc<Shared>,
    slot: Arc<Mutex<Option<swarmca_server::Manager>>>,
    gate: Arc<Mutex<Option<AdminGate>>>,
    /// The manager's certificate and key file, as it last wrote them.
    disk: Arc<Mutex<Option<(Vec<u8>, Vec<u8>)>>>,
    skew: Arc<AtomicI64>,
    link: Arc<ManagerStore>,
    central: Arc<Central>,
    terms: Arc<Terms>,
    mirror: Arc<Mutex<Mirror>>,
    seal_key: Option<SealKey>,
    /// The node ID its certificate names (kept across re-issues; empty after it was removed,
    /// until it joins anew).
    expected_node: Arc<Mutex<String>>,
}

impl Incarnation {
    async fn run(self) {
        let i = self.i;
        let shared = self.shared.clone();
        let entropy = shared_entropy(OsEntropy);
        let clock: Arc<dyn Clock> = Arc::new(SkewedClock(self.skew.clone()));
        let store: Arc<dyn swarmca_store::Store> = self.link.clone();
        let election: Arc<dyn swarmca_server::Election> =
            Arc::new(SimElection { central: self.central.clone(), link: self.link.clone(), index: i });
        let mut keys = Keys { seal: self.seal_key.clone(), unlock: None, external: None };
        let autolocked_at_start = shared.autolocked.load(Ordering::SeqCst);
        let flips_at_start = shared.autolock_flips.load(Ordering::SeqCst);
        let mut went_locked = false;
        let id = loop {
            let (gate, mut attempts) = AdminGate::new();
            *lock(&self.gate) = Some(gate.clone());
            let own = lock(&self.disk).clone();
            let s2 = shared.clone();
            let started = Unlocking {
                store: &*store,
                election: &*election,
                clock: &*clock,
                entropy: &entropy,
                keys: &mut keys,
                attempts: &mut attempts,
            }
            .start(
                &NewCluster::default(),
                own,
                std::future::pending(),
                || {
                    lock(&s2.locked).insert(i);
                    s2.coverage.hit("manager.locked");
                    s2.log.push(format!("manager-{i}: locked"));
                },
                || {},
            )
            .await;
            went_locked |= shared.is_locked(i);
            match started {
                Ok(id) => {
                    gate.unlocked();
                    break (id, gate);
                }
                Err(NotStarted::Refused(BootstrapError::Removed(why))) => {
                    // Removed or demoted by the admin: the operator moves its certificates
                    // away and it joins as a new manager node.
                    shared.coverage.hit("manager.removed_rejoins");
                    shared.log.push(format!("manager-{i}: {why}; joins anew"));
                    *lock(&self.disk) = None;
                    lock(&self.expected_node).clear();
                }
                Err(e) => {
                    // Every fault the harness injects heals: a start must wait it out, not
                    // give up (`swarmca serve` would exit and leave the manager down).
                    shared.violation("I14", format!("manager-{i}: start refused: {e:?}"));
                    madsim::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        let (id, gate) = id;
        let was_locked = lock(&shared.locked).remove(&i);
        if was_locked {
            shared.coverage.hit("manager.unlocked");
            shared.log.push(format!("manager-{i}: unlocked"));
        }
        // Autolock on all along (not turned off and on again meanwhile), and no key given:
        // the start must have been locked.
        let autolocked =
            autolocked_at_start && shared.autolock_flips.load(Ordering::SeqCst) == flips_at_start;
        if autolocked && !went_locked {
            shared.violation(
                "I14",
                format!("manager-{i} restarted while autolock was on, and started without the unlock key"),
            );
        }
        {
            let mut expected = lock(&self.expected_node);
            if expected.is_empty() {
                *expected = id.node_id.clone();
            } else if *expected != id.node_id {
                shared.violation(
                    "I14",
                    format!("manager-{i} restarted as node {}, not {expected}", id.node_id),
                );
            }
        }
        lock(&shared.manager_nodes).insert(id.node_id.clone());
        crate::checkers::i13_sealed_at_rest::on_key_file(&shared, i, &id, self.seal_key.as_ref());
        *lock(&self.disk) = Some((id.cert_pem.clone(), id.key_file.clone()));
        if id.issued {
            shared.coverage.hit("manager.reissued");
        }
        let mut cfg = ServerConfig::new(id.cluster_id.clone());
        cfg.retry_interval = shared.opts.retry_interval;
        cfg.max_parallel_signing = 4;
        cfg.signature_cache = Some(shared.signatures.clone());
        let (terms, mirror) = (self.terms.clone(), self.mirror.clone());
        let launched = Launch {
            id: &id,
            store,
            election,
            keys: &keys,
            config: cfg,
            clock,
            entropy,
            peers: Arc::new(SimPeers),
            observer: Some((RETRY_PAUSE, Arc::new(move |ev| terms.on_event(i, ev, &mirror)))),
        }
        .build();
        let Launched { store, server, manager, control } = match launched {
            Ok(l) => l,
            Err(e) => return shared.violation("I14", format!("manager-{i}: cannot be put together: {e}")),
        };
        // Its own certificate, renewed as it ages and when a root rotation asks (what `serve`
        // runs beside the manager); the "disk" keeps what it writes.
        let trust = swarmca_server::trust_pem(&id.root);
        let tls = match swarmca_server::listener::DynamicTls::new(&id.cert_pem, &id.key_pem, &trust) {
            Ok(t) => t,
            Err(e) => {
                return shared.violation("I14", format!("manager-{i}: unusable own certificate: {e:?}"))
            }
        };
        let selfcert = swarmca_server::selfcert::SelfCert {
            store,
            server: server.clone(),
            tls,
            cluster_id: id.cluster_id.clone(),
            node_id: id.node_id.clone(),
            files: Arc::new(SimDisk { disk: self.disk.clone(), shared: shared.clone(), i }),
            key_file: Mutex::new(swarmca_server::selfcert::KeyFile {
                cert_pem: id.cert_pem.clone(),
                key_pem: id.key_pem.clone(),
                data_key: id.data_key.clone(),
            }),
        };
        madsim::task::spawn(selfcert.run(std::future::pending()));
        *lock(&self.slot) = Some(manager.clone());
        gate.open(control);
        madsim::task::spawn(async move { manager.run().await });
        let _ = tonic::transport::Server::builder()
            .add_service(CaService::new(server.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
            .add_service(NodeCaService::new(server).max_decoding_message_size(MAX_REQUEST_BYTES))
            .serve(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))
            .await;
    }
}

/// A manager's certificates directory: its "disk", which its next incarnation starts from.
struct SimDisk {
    disk: Arc<Mutex<Option<(Vec<u8>, Vec<u8>)>>>,
    shared: Arc<Shared>,
    i: usize,
}

impl swarmca_server::selfcert::OwnFiles for SimDisk {
    fn write_root(&self, _pem: &[u8]) -> Result<(), swarmca_server::files::FileError> {
        Ok(())
    }

    fn write_identity(
        &self,
        cert_pem: &[u8],
        sealed_key: &[u8],
    ) -> Result<(), swarmca_server::files::FileError> {
        if !swarmca_core::seal::is_sealed(sealed_key) {
            self.shared.violation("I13", format!("manager-{} wrote its renewed key file in clear", self.i));
        }
        self.shared.coverage.hit("manager.renewed_itself");
        self.shared.log.push(format!("manager-{}: renewed its own certificate", self.i));
        *lock(&self.disk) = Some((cert_pem.to_vec(), sealed_key.to_vec()));
        Ok(())
    }
}

/// All managers and the election.
pub struct World {
    pub shared: Arc<Shared>,
    pub store: Arc<FaultyStore>,
    pub managers: Vec<ManagerNode>,
    pub health: Mutex<Vec<Health>>,
    pub central: Arc<Central>,
    pub terms: Arc<Terms>,
    /// Per manager: since when it has been up with its link to the store up, and since when it
    /// has been seen not serving (for [`World::check_serving`]).
    serving: Mutex<Vec<(Duration, Option<Duration>)>>,
}

/// How long a manager that is up and reaches the store may go without serving (its follower or
/// leader duties loaded the cluster): a follower whose duties ended must be restarted.
const SERVE_WITHIN: Duration = Duration::from_secs(10);

/// The address of manager `i`.
pub fn manager_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i + 1) as u8))
}

impl World {
    /// Creates the manager nodes; each starts a `Manager` as `swarmca serve` does (see
    /// [`Incarnation`]).
    pub fn build(
        shared: Arc<Shared>,
        store: Arc<FaultyStore>,
        creds: Vec<Creds>,
        mirror: Arc<Mutex<Mirror>>,
        seal_key: Option<SealKey>,
    ) -> World {
        let h = Handle::current();
        let terms = Terms::new(shared.clone(), shared.opts.managers);
        let central = Central::new(shared.clone(), terms.clone());
        madsim::task::spawn(central.clone().run());
        let mut managers = Vec::new();
        for i in 0..shared.opts.managers {
            let (node_id, cert, key) = creds.get(i).cloned().unwrap_or_default();
            let inc = Incarnation {
                i,
                shared: shared.clone(),
                slot: Arc::default(),
                gate: Arc::default(),
                disk: Arc::new(Mutex::new(Some((cert, key)))),
                skew: Arc::new(AtomicI64::new(0)),
                link: Arc::new(ManagerStore::new(store.clone(), i)),
                central: central.clone(),
                terms: terms.clone(),
                mirror: mirror.clone(),
                seal_key: seal_key.clone(),
                expected_node: Arc::new(Mutex::new(node_id)),
            };
            let ip = manager_ip(i);
            let starter = inc.clone();
            let node = h
                .create_node()
                .name(format!("manager-{i}"))
                .ip(ip)
                .init(move || starter.clone().run())
                .build();
            managers.push(ManagerNode {
                node,
                addr: SocketAddr::new(ip, PORT),
                manager: inc.slot,
                gate: inc.gate,
                skew_ms: inc.skew,
                store: inc.link,
                disk: inc.disk,
                expected_node: inc.expected_node,
            });
        }
        let n = managers.len();
        World {
            shared,
            store,
            managers,
            health: Mutex::new(vec![Health::Up; n]),
            central,
            terms,
            serving: Mutex::new(vec![(Duration::ZERO, None); n]),
        }
    }

    fn manager(&self, i: usize) -> Option<swarmca_server::Manager> {
        self.managers.get(i).and_then(|m| lock(&m.manager).clone())
    }

    /// The node IDs the managers' certificates name now.
    pub fn current_manager_nodes(&self) -> std::collections::BTreeSet<String> {
        self.managers.iter().map(|m| lock(&m.expected_node).clone()).filter(|id| !id.is_empty()).collect()
    }

    /// Whether manager `i`'s current incarnation finished its start (it runs a `Manager`).
    pub fn started(&self, i: usize) -> bool {
        self.manager(i).is_some()
    }

    pub fn server(&self, i: usize) -> Option<CaServer> {
        self.manager(i).map(|m| m.server().clone())
    }

    pub fn health(&self, i: usize) -> Health {
        lock(&self.health).get(i).copied().unwrap_or(Health::Dead)
    }

    fn set_health(&self, i: usize, h: Health) {
        if let Some(x) = lock(&self.health).get_mut(i) {
            *x = h;
        }
        self.terms.set_running(i, h == Health::Up);
        self.reachable_from_now(i);
    }

    fn reachable_from_now(&self, i: usize) {
        if let Some(s) = lock(&self.serving).get_mut(i) {
            *s = (crate::shared::now(), None);
        }
    }

    /// Checks I12 every few seconds until the run is over (each check judges everything since
    /// the last one, so the period only delays a report).
    pub async fn check_terms(self: Arc<Self>) {
        while !self.shared.done() {
            madsim::time::sleep(Duration::from_secs(4)).await;
            self.terms.check_now();
            self.check_serving();
        }
    }

    /// I12: every manager that has been up and able to reach the store for [`SERVE_WITHIN`]
    /// serves (is ready), unless it is ending a leader term (its duties drain first).
    pub fn check_serving(&self) {
        let t = crate::shared::now();
        let mut late = Vec::new();
        for i in 0..self.managers.len() {
            // A locked manager waits for the operator, and a start may wait for the external
            // CA or the leader: I14 judges starts.
            let ready = self.health(i) != Health::Up
                || self.store_cut(i)
                || self.shared.is_locked(i)
                || !self.started(i)
                || self.is_leading(i)
                || self.server(i).is_some_and(|s| s.join_tokens().is_some());
            let mut serving = lock(&self.serving);
            let Some((since, unready)) = serving.get_mut(i) else { continue };
            if ready {
                *unready = None;
                continue;
            }
            let from = *unready.get_or_insert(t);
            if t.saturating_sub(from.max(*since)) > SERVE_WITHIN {
                late.push(i);
                *since = t; // reported once per stretch
            }
        }
        for i in late {
            self.shared.violation(
                "I12",
                format!("manager-{i} is up and reaches the store but has not served for {SERVE_WITHIN:?}"),
            );
        }
    }

    /// The manager holding the current term, as the election sees it.
    pub fn leader(&self) -> Option<usize> {
        self.central.leader()
    }

    /// Managers that are up.
    pub fn up(&self) -> Vec<usize> {
        (0..self.managers.len()).filter(|&i| self.health(i) == Health::Up).collect()
    }

    /// Whether manager `i` runs leader duties.
    pub fn is_leading(&self, i: usize) -> bool {
        self.manager(i).is_some_and(|m| matches!(m.role(), Role::Leading(_)))
    }

    /// Asks manager `i` to give its term up (F2 graceful): its `Manager` resigns and campaigns
    /// again behind the others.
    pub fn step_down(&self, i: usize) {
        if let Some(m) = self.manager(i) {
            m.step_down();
        }
    }

    /// Kills manager `i` (F2 kill): its lease expires unrenewed.
    pub fn kill(&self, i: usize) {
        if let Some(m) = self.managers.get(i) {
            Handle::current().kill(m.node.id());
            *lock(&m.manager) = None;
            lock(&self.shared.locked).remove(&i);
            self.set_health(i, Health::Dead);
            self.terms.killed(i);
        }
    }

    /// Restarts a killed manager: a fresh process with a new `Manager`. A manager that is not
    /// dead (restarted already, e.g. by the heal) is left alone: restarting a live madsim node
    /// left the new incarnation with no running task (seed 3: its follower vanished without a
    /// trace and I12 caught a manager that never served again).
    pub async fn restart(&self, i: usize) {
        if self.health(i) != Health::Dead {
            return;
        }
        if let Some(m) = self.managers.get(i) {
            Handle::current().restart(m.node.id());
            self.set_health(i, Health::Up);
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces dead manager `i`'s machine: its next start has an empty data directory, so it
    /// joins as a new manager node (its old node stays in the store, as a dead manager's does).
    /// Not the last machine with a certificate: a cluster whose every manager lost its
    /// certificates cannot be vouched for to an external CA that wants client certificates (a
    /// documented limit, not a fault to wait out). Whether it was replaced.
    pub fn replace(&self, i: usize) -> bool {
        if self.health(i) != Health::Dead {
            return false;
        }
        let others = self.managers.iter().enumerate().any(|(j, m)| j != i && lock(&m.disk).is_some());
        if !others {
            return false;
        }
        if let Some(m) = self.managers.get(i) {
            *lock(&m.disk) = None;
            lock(&m.expected_node).clear();
        }
        true
    }

    pub fn pause(&self, i: usize) {
        if let Some(m) = self.managers.get(i) {
            Handle::current().pause(m.node.id());
            self.set_health(i, Health::Paused);
        }
    }

    pub fn resume(&self, i: usize) {
        if let Some(m) = self.managers.get(i) {
            Handle::current().resume(m.node.id());
            self.set_health(i, Health::Up);
        }
    }

    /// Sets manager `i`'s link to the store and the election (cut or restored).
    pub fn set_store_link(&self, i: usize, l: crate::store::Link) {
        if let Some(m) = self.managers.get(i) {
            m.store.set_link(l);
        }
        if l == crate::store::Link::Up {
            self.reachable_from_now(i);
        }
    }

    pub fn store_cut(&self, i: usize) -> bool {
        self.managers.get(i).is_some_and(|m| m.store.is_cut())
    }

    /// Waits (at most `limit`) until some manager runs leader duties.
    pub async fn await_leader(&self, limit: Duration) -> Option<usize> {
        let until = crate::shared::now() + limit;
        loop {
            if let Some(l) = self.leader().filter(|&l| self.is_leading(l)) {
                return Some(l);
            }
            if crate::shared::now() >= until {
                return None;
            }
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
