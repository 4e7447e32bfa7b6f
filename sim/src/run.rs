//! One seed: build the world, run the safety phase with faults, heal, run the liveness phase,
//! and judge.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use madsim::rand::{thread_rng, Rng};
use swarmca_core::rootca::{digest, generate_root, RootCa, DEFAULT_NODE_CERT_EXPIRY};
use swarmca_core::seal::{DataKey, KekSource, SealKey};
use swarmca_server::custody;
use swarmca_server::{shared_entropy, CaServer, Control, OsEntropy, ServerConfig, ServerDeps};
use swarmca_store::{MemStore, Op};
use swarmca_types::JoinTokens;

use crate::checkers;
use crate::log::EventLog;
use crate::options::SimOptions;
use crate::peers::SimPeers;
use crate::shared::{lock, Shared};
use crate::store::FaultyStore;
use crate::workload::spawn_client;
use crate::world::{SkewedClock, World};

/// The verdict of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub violations: Vec<String>,
    pub coverage: BTreeMap<&'static str, u64>,
    pub log_hash: String,
    pub log_lines: usize,
    pub log_tail: Vec<String>,
    pub sim_time: Duration,
    pub issued: u64,
    pub failed: u64,
    pub joins: usize,
    pub renewals: usize,
    /// The faults the nemesis injected, with the time each was due: with the seed, a scenario
    /// that replays this run ([`SimOptions::schedule`]).
    pub faults: Vec<(Duration, crate::options::FaultKind)>,
}

fn serial() -> [u8; 20] {
    let mut s = [0u8; 20];
    thread_rng().fill(&mut s[..]);
    s
}

/// Runs the seed of the current madsim runtime; `echo` prints the event log live.
pub async fn run_seed(echo: bool) -> Report {
    let seed = madsim::runtime::Handle::current().seed();
    run_with(SimOptions::from_seed(seed), echo).await
}

/// A short run that touches every code path once, so that process-global lazy state (parsers'
/// OID tables, TLS and hashing tables) exists before the runs that count: otherwise the first
/// run of a process draws entropy at different points than later ones, and a seed would not
/// replay identically inside one process.
pub async fn warm_up() -> Report {
    let seed = madsim::runtime::Handle::current().seed();
    run_with(SimOptions::warm_up(seed), false).await
}

/// Runs a scenario with explicit options.
pub async fn run_with(opts: SimOptions, echo: bool) -> Report {
    let seed = opts.seed;
    let log = EventLog::new(echo);
    log.push(format!("seed {seed}: {opts}"));

    // The cluster, as `swarmca serve` would create it.
    let now = SystemTime::now();
    // A root with `root_life` left was made 20 years minus that long ago.
    let made = opts
        .root_life
        .and_then(|life| now.checked_sub(swarmca_core::rootca::ROOT_CA_VALIDITY.saturating_sub(life)))
        .unwrap_or(now);
    let root = match generate_root("swarm-ca", made, serial()) {
        Ok(r) => r,
        Err(e) => panic!("root generation failed: {e}"),
    };
    let cluster_id = swarmca_core::id::new_id(&mut OsEntropy).unwrap_or_else(|_| "simcluster".into());
    let d = digest(&root.cert_pem);
    let token =
        |_: ()| swarmca_core::token::generate_join_token(&d, false, &mut OsEntropy).unwrap_or_default();
    let tokens = JoinTokens { worker: token(()), manager: token(()) };
    let external = opts.external_ca;
    let external_cas = if external {
        // With root rotations, bound to the initial root: the fake signs with it only.
        let ca_cert = if opts.root_rotation { root.cert_pem.clone() } else { Vec::new() };
        vec![swarmca_types::ExternalCa { url: crate::extca::url(), ca_cert, ..Default::default() }]
    } else {
        Vec::new()
    };
    let key = if external && opts.external_only { Vec::new() } else { root.key_pem.clone() };
    let ca_config = swarmca_types::CaConfig {
        external_cas,
        node_cert_expiry: opts
            .node_cert_expiry
            .and_then(|d| swarmca_types::prost_types::Duration::try_from(d).ok()),
        ..Default::default()
    };
    let mut cluster =
        swarmca_core::cluster::new_cluster(&cluster_id, &root.cert_pem, &key, tokens, Some(ca_config));
    // Sealed as `swarmca serve` seals it: a data key wrapped under the managers' seal key (as
    // `serve --etcd --seal-key-file`); each manager opens it with that key.
    let entropy = shared_entropy(OsEntropy);
    let keys = custody::Keys {
        seal: Some(sim_ok(SealKey::generate(&mut OsEntropy))),
        unlock: None,
        ..Default::default()
    };
    let kek = sim_ok(keys.kek(KekSource::SealKey));
    let dek = sim_ok(DataKey::generate(&mut OsEntropy));
    cluster.sealing = Some(sim_ok(custody::sealing(&kek, &dek, &cluster_id, &entropy)));
    let sealed = sim_ok(custody::seal_cluster(&cluster, &dek, &entropy));

    let mem = MemStore::new();
    if let Err(e) = mem.commit_sync(vec![Op::CreateCluster(sealed.clone())]) {
        panic!("cannot create the cluster: {e}");
    }
    let data_key = match custody::unseal(&sealed, &keys) {
        Ok(Some(k)) => k,
        other => panic!("the managers cannot open the cluster's data key: {other:?}"),
    };
    let shared = Arc::new(Shared::new(opts.clone(), log.clone(), cluster_id.clone()));
    *lock(&shared.first_root) = Some((root.cert_pem.clone(), root.key_pem.clone()));
    *lock(&shared.data_key) = Some(data_key.clone());
    let mirror = crate::mirror::start(&mem, shared.clone());
    let store = Arc::new(FaultyStore::new(mem, shared.clone()));
    // What each manager starts with, as `swarmca serve` loads it from its state: the root the
    // cluster was created with, and its key unless signing is external-only (managers of such
    // a cluster never hold it).
    let issuer = match RootCa::new(
        &root.cert_pem,
        &root.cert_pem,
        &root.key_pem,
        DEFAULT_NODE_CERT_EXPIRY,
        b"",
        now,
    ) {
        Ok(r) => r,
        Err(e) => panic!("root unusable: {e}"),
    };
    let root_ca = if external && opts.external_only {
        match RootCa::new(&root.cert_pem, b"", b"", DEFAULT_NODE_CERT_EXPIRY, b"", now) {
            Ok(r) => r,
            Err(e) => panic!("root unusable: {e}"),
        }
    } else {
        issuer.clone()
    };
    let root_ca = root_ca.with_signature_cache(shared.signatures.clone());

    // Each manager's own identity, issued as `swarmca serve` would.
    let creds: Vec<crate::world::Creds> = (0..opts.managers)
        .map(|_| {
            let id = swarmca_core::id::new_id(&mut OsEntropy).unwrap_or_default();
            let role = swarmca_core::role::Role::Manager;
            let c = swarmca_testkit::pki::issue(&issuer, &id, role, &cluster_id, now, serial());
            (c.node_id, c.cert_pem, c.key_pem)
        })
        .collect();
    let extca = Arc::new(crate::extca::Control::new());
    let extca_node = external.then(|| {
        crate::extca::start(shared.clone(), extca.clone(), root.cert_pem.clone(), root.key_pem.clone())
    });
    let world =
        Arc::new(World::build(shared.clone(), store.clone(), creds, mirror.clone(), keys.seal.clone()));
    madsim::task::spawn(world.clone().check_terms());
    // Every manager campaigns from its start; the election names the first leader.
    let first = world.await_leader(Duration::from_secs(10)).await;
    log.push(format!("first leader: manager-{first:?}"));

    let addrs: Vec<_> = world.managers.iter().map(|m| m.addr).collect();
    let mut client_nodes = Vec::new();
    for i in 0..opts.clients {
        client_nodes.push(spawn_client(i, shared.clone(), addrs.clone()));
    }
    // The admin works through its own (never running) server object: Control only needs the
    // store, a clock and entropy.
    let admin_store: Arc<dyn swarmca_store::Store> =
        Arc::new(custody::SealedStore::new(store.clone(), data_key, keys.seal.clone(), entropy.clone()));
    let admin_server = CaServer::new(
        ServerConfig::new(cluster_id.clone()),
        ServerDeps {
            store: admin_store.clone(),
            clock: Arc::new(SkewedClock(Arc::default())),
            entropy: shared_entropy(OsEntropy),
            peers: Arc::new(SimPeers),
        },
        Some(root_ca),
    );
    let control = Control::new(admin_server, None);
    madsim::task::spawn(crate::admin::run(shared.clone(), control.clone(), store.clone()));
    madsim::task::spawn(crate::admin::unlocker(shared.clone(), world.clone(), admin_store));
    let ext = extca_node.map(|id| crate::nemesis::ExtCa { node: id, control: extca.clone() });
    madsim::task::spawn(crate::nemesis::run(world.clone(), client_nodes.clone(), ext.clone()));

    // Safety phase. With an external CA, it ends with an outage that overlaps the heal, so the
    // liveness phase starts with a backlog of requests waiting for the retry ticker.
    let backlog = ext.is_some() && opts.extca_faults && opts.safety > Duration::from_secs(60);
    if backlog {
        madsim::time::sleep(opts.safety - Duration::from_secs(45)).await;
        if let Some(e) = &ext {
            shared.log.push("nemesis: external CA crash before heal");
            e.control.crash();
        }
        madsim::time::sleep(Duration::from_secs(45)).await;
    } else {
        madsim::time::sleep(opts.safety).await;
    }

    // Heal, then liveness.
    shared.healing.store(true, Ordering::SeqCst);
    shared.heal_notify.notify_waiters();
    store.set_faults(false);
    shared.log.push("heal: faults off");
    crate::nemesis::heal(&world, &client_nodes, ext.as_ref()).await;
    if opts.root_rotation {
        madsim::task::spawn(crate::admin::remove_dead_nodes(
            shared.clone(),
            control.clone(),
            store.clone(),
            world.clone(),
        ));
    }
    let deadline = madsim::time::TimeHandle::current().elapsed() + opts.liveness_budget;
    loop {
        let waiting = checkers::i5_liveness::waiting(&lock(&mirror), &shared);
        let rotating = checkers::i8_rotation::rotating(&lock(&mirror));
        let roles = checkers::i15_convergence::behind(&lock(&mirror), &shared);
        let converged = waiting.is_empty() && !rotating && roles.is_empty();
        if converged || madsim::time::TimeHandle::current().elapsed() >= deadline {
            break;
        }
        madsim::time::sleep(Duration::from_secs(1)).await;
    }
    checkers::i15_convergence::check(&lock(&mirror), &shared);
    // Every manager up has finished its start, unlocked: the operator gives the key at once
    // while the faults heal, and a right key must get through (I14). A start may take another
    // attempt: up to a wrong key's penalty (30 s), an external CA's deadline (5 s) and a wait
    // for the leader to have the manager's certificate signed (30 s), and the pause between.
    let until = madsim::time::TimeHandle::current().elapsed() + Duration::from_secs(120);
    loop {
        let up = world.up();
        let locked: Vec<usize> = up.iter().copied().filter(|i| shared.is_locked(*i)).collect();
        let starting: Vec<usize> =
            up.iter().copied().filter(|i| !shared.is_locked(*i) && !world.started(*i)).collect();
        if locked.is_empty() && starting.is_empty() {
            break;
        }
        if madsim::time::TimeHandle::current().elapsed() >= until {
            if !locked.is_empty() {
                shared.violation(
                    "I14",
                    format!("120 s after convergence, managers {locked:?} are still locked though the operator gives the key"),
                );
            }
            if !starting.is_empty() {
                shared.violation(
                    "I14",
                    format!(
                        "120 s after convergence, managers {starting:?} have still not finished starting"
                    ),
                );
            }
            break;
        }
        madsim::time::sleep(Duration::from_secs(1)).await;
    }
    // Every manager up serves the current root and tokens (followers keep following the store).
    let until = madsim::time::TimeHandle::current().elapsed() + Duration::from_secs(30);
    loop {
        let behind = checkers::i5_liveness::managers_behind(&lock(&mirror), &world);
        if behind.is_empty() {
            break;
        }
        if madsim::time::TimeHandle::current().elapsed() >= until {
            shared.violation(
                "I5",
                format!("30 s after convergence, {behind:?} still differ from the cluster's current ones"),
            );
            break;
        }
        madsim::time::sleep(Duration::from_secs(1)).await;
    }
    // Every manager up answers status calls as SwarmKit does (I10).
    let up: Vec<_> =
        world.up().into_iter().filter_map(|i| world.managers.get(i).map(|m| (i, m.addr))).collect();
    let nodes: Vec<String> = lock(&mirror).nodes.keys().cloned().collect();
    let probes = crate::prober::probe(up, nodes).await;
    checkers::i10_status_matches_store::check_probes(&lock(&mirror), &shared, &probes);
    // Let clients finish what they were doing (bounded by their own 90 s poll limit).
    shared.finishing.store(true, Ordering::SeqCst);
    madsim::time::sleep(Duration::from_secs(100)).await;
    {
        let m = lock(&mirror);
        world.terms.finish(&m);
        checkers::finish(&m, &shared);
    }
    shared.done.store(true, Ordering::SeqCst);
    if let Some(dir) = std::env::var_os("SWARMCA_SIM_DUMP") {
        let path = std::path::Path::new(&dir).join(format!("{seed}-{}.log", log.hash()));
        let _ = std::fs::write(path, log.lines().join("\n"));
    }
    let m = lock(&mirror);
    let violations = lock(&shared.violations).clone();
    let joins = lock(&shared.joins).len();
    let renewals = lock(&shared.renewals).len();
    let faults = lock(&shared.faults).clone();
    Report {
        seed,
        violations,
        coverage: shared.coverage.snapshot(),
        log_hash: log.hash(),
        log_lines: log.len(),
        log_tail: log.tail(40),
        sim_time: madsim::time::TimeHandle::current().elapsed(),
        issued: m.issued,
        failed: m.failed,
        joins,
        renewals,
        faults,
    }
}

/// The value of a setup step that cannot fail in a simulation (the harness's own inputs).
fn sim_ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("simulation setup: {e:?}"),
    }
}
