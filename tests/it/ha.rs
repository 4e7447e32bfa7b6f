//! High availability: three `swarmca serve --etcd` managers on a real 3-member etcd cluster on
//! loopback (Debian etcd-server; skipped with a message when it is missing, unless
//! SWARMCA_REQUIRE_ETCD=1). Joins through each manager, the leading manager killed during a
//! burst of joins, the etcd leader killed, and a paused leader that must never write again.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use swarmca_store::etcd::testing::{Etcd, Timing};
use swarmca_store::{EtcdStore, Store, WatchFilter};

use crate::cli::{cluster_id, join, openssl_verify, text, Server, TempDir};

/// One HA scenario at a time: each runs 3 etcd members and 3 managers, and leases must not
/// expire because the machine is starved.
static SERIAL: Mutex<()> = Mutex::new(());

const LEASE: &str = "3s";

struct Swarm {
    etcd: Etcd,
    dir: TempDir,
    managers: Vec<Server>,
    /// Each manager's node ID (read once: a paused manager answers nothing).
    ids: Vec<String>,
    /// The root CA key the cluster was created with (`serve --ca-cert --ca-key`).
    root_key: Vec<u8>,
    /// What every manager is started with after `serve --data-dir D --listen A`.
    args: Vec<String>,
}

impl Swarm {
    /// A 3-member etcd and `n` managers started at the same moment (they race to create the
    /// cluster); `None` when etcd is not installed.
    fn start(n: usize) -> Option<Swarm> {
        let etcd = Etcd::start(3, Timing::FAST, false)?;
        let dir = TempDir::new("ha");
        let endpoints = etcd.endpoints().join(",");
        // One seal key for every manager, made as an operator would.
        let seal = dir.path().join("seal.key");
        let made = crate::cli::run(&["seal-key", "generate", seal.to_str().unwrap()]);
        assert!(made.status.success(), "seal-key generate: {}", text(&made.stderr));
        let seal = seal.to_str().unwrap().to_string();
        // A root given by the test, so that what reaches etcd can be searched for its key.
        let g =
            swarmca_core::rootca::generate_root("swarm-ca", std::time::SystemTime::now(), [3u8; 20]).unwrap();
        let (root_cert, root_key) = (dir.path().join("root.crt"), dir.path().join("root.key"));
        std::fs::write(&root_cert, &g.cert_pem).unwrap();
        std::fs::write(&root_key, &g.key_pem).unwrap();
        let (root_cert, root_key_path) =
            (root_cert.to_str().unwrap().to_string(), root_key.to_str().unwrap().to_string());
        let args: Vec<String> = [
            "--etcd",
            &endpoints,
            "--leader-lease",
            LEASE,
            "--seal-key-file",
            &seal,
            "--ca-cert",
            &root_cert,
            "--ca-key",
            &root_key_path,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let managers: Vec<Server> = (0..n)
            .map(|i| Server::spawn(&dir.path().join(format!("m{i}")), crate::cli::free_port(), &arg_refs))
            .collect();
        for m in &managers {
            m.wait_ready();
        }
        let ids = managers.iter().map(self_id).collect();
        std::fs::remove_file(&root_key).unwrap();
        Some(Swarm { etcd, dir, managers, ids, root_key: g.key_pem, args })
    }

    /// Stops manager `i` (SIGTERM) and starts it again on the same data directory and port,
    /// without waiting until it serves.
    fn restart(&mut self, i: usize) {
        let old = self.managers.remove(i);
        let (data, port) = (old.data.clone(), old.addr.rsplit(':').next().unwrap().to_string());
        assert!(old.terminate().success());
        // The given root applies only at creation (and its key file is gone).
        let args: Vec<&str> =
            self.args.iter().take_while(|a| *a != "--ca-cert").map(String::as_str).collect();
        self.managers.insert(i, Server::spawn(&data, port.parse().unwrap(), &args));
    }

    /// Fails if any value under the swarm's etcd prefix, as any etcd client reads it, holds
    /// `key_pem` in any form, or any of the `raw` byte strings; returns every value, concatenated.
    fn etcd_holds_no(&self, key_pem: &[u8], raw: &[&[u8]]) -> Vec<u8> {
        let dump = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(swarmca_store::etcd::testing::raw_dump(&self.etcd.endpoints(), "/swarmca/"));
        assert!(dump.len() > 5, "the swarm's objects are under the prefix: {} keys", dump.len());
        for (k, v) in &dump {
            if let Some(form) = swarmca_testkit::pki::find_key(v, key_pem) {
                panic!("etcd key {} holds a CA key ({form})", String::from_utf8_lossy(k));
            }
            for r in raw {
                let leaked = v.windows(r.len()).any(|w| w == *r);
                assert!(!leaked, "etcd key {} holds a secret in clear", String::from_utf8_lossy(k));
            }
        }
        dump.into_iter().flat_map(|(_, v)| v).collect()
    }

    /// The index of the manager that leads, as `node ls` through manager `via` says.
    fn leader(&self, via: usize) -> Option<usize> {
        let ls = self.managers[via].admin_ok(&["node", "ls"]);
        let leader_id = ls.lines().find(|l| l.contains(" leader"))?.split_whitespace().next()?.to_string();
        self.ids.iter().position(|id| *id == leader_id)
    }

    /// Waits until manager `via` names a leader other than `not` (a manager index).
    fn wait_leader(&self, via: usize, not: Option<usize>, within: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader(via) {
                if Some(l) != not {
                    return l;
                }
            }
            assert!(start.elapsed() < within, "no new leader within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Joins through the first two managers in turn until one join succeeds (and verifies),
    /// within 60 s of `since`; returns the number of failed attempts.
    fn join_eventually(&self, token: &str, tag: &str, since: Instant) -> usize {
        let mut attempt = 0;
        loop {
            let d = self.dir.path().join(format!("{tag}{attempt}"));
            let o = join(&self.managers[attempt % 2].addr, token, &d);
            if o.status.success() {
                openssl_verify(&d);
                return attempt;
            }
            attempt += 1;
            assert!(since.elapsed() < Duration::from_secs(60), "no join ({tag}): {}", text(&o.stderr));
        }
    }

    fn store(&self, rt: &tokio::runtime::Runtime) -> EtcdStore {
        rt.block_on(EtcdStore::connect(self.etcd.options())).unwrap()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// This manager's node ID (the `*` row of its `node ls`).
fn self_id(m: &Server) -> String {
    let ls = m.admin_ok(&["node", "ls"]);
    ls.lines().find(|l| l.contains(" * ")).and_then(|l| l.split_whitespace().next()).unwrap().to_string()
}

/// `node ls` rows of workers: (ID, CERT state).
fn workers(m: &Server) -> Vec<(String, String)> {
    m.admin_ok(&["node", "ls"])
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some("worker"))
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t[0].to_string(), t[3].to_string())
        })
        .collect()
}

/// The SHA-256 fingerprint `node inspect` prints for node `id`.
fn stored_fingerprint(m: &Server, id: &str) -> String {
    let out = m.admin_ok(&["node", "inspect", id]);
    out.lines()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .unwrap_or_default()
        .to_string()
}

/// The fingerprint of the certificate a join wrote.
fn file_fingerprint(dir: &Path) -> String {
    let pem = std::fs::read(dir.join("swarm-node.crt")).unwrap();
    swarmca_core::rootca::digest_string(&pem::parse(&pem).unwrap().into_contents())
}

#[test]
fn three_managers_on_one_etcd_each_serve_joins_and_exactly_one_leads() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(swarm) = Swarm::start(3) else { return };
    let ids: Vec<String> = swarm.managers.iter().map(cluster_id).collect();
    assert!(ids.iter().all(|i| i == &ids[0]), "one cluster for all managers: {ids:?}");
    let token = swarm.managers[0].token("worker");
    assert_eq!(swarm.managers[2].token("worker"), token, "managers serve the same tokens");
    for (i, m) in swarm.managers.iter().enumerate() {
        let d = swarm.dir.path().join(format!("worker{i}"));
        let o = join(&m.addr, &token, &d);
        assert!(o.status.success(), "join through manager {i}: {}", text(&o.stderr));
        openssl_verify(&d);
    }
    let ls = swarm.managers[1].admin_ok(&["node", "ls"]);
    assert_eq!(ls.lines().filter(|l| l.contains(" leader")).count(), 1, "{ls}");
    assert_eq!(ls.lines().filter(|l| l.contains(" manager ")).count(), 3, "{ls}");
    assert_eq!(workers(&swarm.managers[1]).iter().filter(|(_, s)| s == "issued").count(), 3, "{ls}");

    // Nothing in etcd, as any etcd client reads it, holds the root CA key in any form, and
    // neither does any manager's data directory.
    let all = swarm.etcd_holds_no(&swarm.root_key, &[]);
    assert!(
        all.windows(b"SWARMCA SEALED CA KEY".len()).any(|w| w == b"SWARMCA SEALED CA KEY"),
        "the key is there, sealed"
    );
    crate::custody::assert_no_key_under(swarm.dir.path(), &swarm.root_key, &[]);
}

#[test]
fn killing_the_leading_manager_during_a_burst_of_joins_loses_no_join() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut swarm) = Swarm::start(3) else { return };
    let leader = swarm.wait_leader(0, None, Duration::from_secs(10));
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let token = swarm.managers[followers[0]].token("worker");
    const JOINS: usize = 24;
    let joins: Vec<_> = (0..JOINS)
        .map(|i| {
            let addr = swarm.managers[followers[i % 2]].addr.clone();
            let (d, token) = (swarm.dir.path().join(format!("burst{i}")), token.clone());
            std::thread::spawn(move || (join(&addr, &token, &d), d))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let killed = Instant::now();
    swarm.managers.remove(leader).kill9();
    swarm.ids.remove(leader);
    let new_leader = swarm.wait_leader(0, None, Duration::from_secs(15));
    let takeover = killed.elapsed();
    println!("leading manager killed: manager {new_leader} leads {takeover:?} later (lease {LEASE})");
    assert!(takeover < Duration::from_secs(3 + 3), "takeover took {takeover:?}, lease {LEASE}");
    let mut dirs = Vec::new();
    for j in joins {
        let (o, d) = j.join().unwrap();
        assert!(o.status.success(), "an acknowledged join was lost: {}", text(&o.stderr));
        openssl_verify(&d);
        dirs.push(d);
    }
    println!("leading manager killed: the last of {JOINS} joins finished {:?} later", killed.elapsed());
    let rows = workers(&swarm.managers[0]);
    assert_eq!(rows.len(), JOINS, "one node per join, none duplicated: {rows:?}");
    assert!(rows.iter().all(|(_, s)| s == "issued"), "{rows:?}");
    // What each node received is what the store holds: nothing was signed twice.
    for d in &dirs {
        let (cn, ..) = crate::cli::subject(&std::fs::read(d.join("swarm-node.crt")).unwrap());
        assert_eq!(stored_fingerprint(&swarm.managers[0], &cn), file_fingerprint(d), "node {cn}");
    }
}

#[test]
fn the_etcd_leader_killed_swarmca_keeps_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut swarm) = Swarm::start(2) else { return };
    let token = swarm.managers[0].token("worker");
    let etcd_leader = rt().block_on(swarm.etcd.leader_index()).expect("etcd has a leader");
    let killed = Instant::now();
    swarm.etcd.members[etcd_leader].kill();
    let attempts = swarm.join_eventually(&token, "after-kill", killed);
    println!(
        "etcd leader killed: a join succeeded {:?} later ({attempts} failed attempts)",
        killed.elapsed()
    );
}

#[test]
fn a_paused_leader_writes_nothing_after_resuming_and_serves_as_follower() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(swarm) = Swarm::start(3) else { return };
    let rt = rt();
    let store = swarm.store(&rt);
    let old = swarm.wait_leader(0, None, Duration::from_secs(10));
    let other = (old + 1) % 3;
    let token = swarm.managers[other].token("worker");
    let pid = swarm.managers[old].child.id().to_string();
    let signal =
        |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());

    signal("-STOP");
    let paused = Instant::now();
    let new = swarm.wait_leader(other, Some(old), Duration::from_secs(15));
    println!("leader paused: manager {new} leads {:?} later (lease {LEASE})", paused.elapsed());
    // Work the old leader saw nothing of: a join signed by the new leader.
    let d = swarm.dir.path().join("during-pause");
    let o = join(&swarm.managers[other].addr, &token, &d);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // The manager records the node's TLS info from its confirming call just after answering
    // it: wait for that write, so that nothing else is left to write.
    let (cn, ..) = crate::cli::subject(&std::fs::read(d.join("swarm-node.crt")).unwrap());
    let start = Instant::now();
    while rt
        .block_on(store.get_node(&cn))
        .unwrap()
        .and_then(|n| n.description)
        .and_then(|d| d.tls_info)
        .is_none()
    {
        assert!(start.elapsed() < Duration::from_secs(10), "TLS info of {cn} never recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log_before = std::fs::read_to_string(&swarm.managers[old].log).unwrap_or_default().len();
    let resumed_at = rt.block_on(store.revision()).unwrap();
    signal("-CONT");
    std::thread::sleep(Duration::from_secs(4));
    // etcd's history: no node or cluster was written since the old leader resumed (nobody
    // else had anything to write in that window).
    let snap = rt.block_on(store.view(WatchFilter::All)).unwrap();
    for n in &snap.nodes {
        assert!(
            swarmca_store::version_of(n.meta.as_ref()) <= resumed_at,
            "node {} (managers {:?}, old leader {old}) written after the resume",
            n.id,
            swarm.ids
        );
    }
    for c in &snap.clusters {
        assert!(swarmca_store::version_of(c.meta.as_ref()) <= resumed_at, "cluster written after the resume");
    }
    let log = std::fs::read_to_string(&swarm.managers[old].log).unwrap_or_default();
    let (before, after) = log.split_at(log_before.min(log.len()));
    // On a loaded machine its lease can lapse just before the pause: it then ended its term
    // and was campaigning again when paused, with nothing left to step down from.
    let led_at_pause = before.rfind("elected leader") > before.rfind("leader duties stopped");
    if led_at_pause {
        assert!(after.contains("stepping down"), "the old leader did not step down:\n{after}");
    } else {
        println!("manager {old} had already ended its term when it was paused:\n{after}");
    }
    assert!(!after.contains("certificate issued"), "the old leader signed after resuming:\n{after}");
    // It serves as a follower: a join through it works and it names the new leader.
    let d = swarm.dir.path().join("through-old");
    let o = join(&swarm.managers[old].addr, &token, &d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d);
    assert_eq!(swarm.leader(old), Some(new));
}

#[test]
fn with_etcd_down_managers_still_serve_the_root_and_joins_resume_when_it_is_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut swarm) = Swarm::start(2) else { return };
    let token = swarm.managers[0].token("worker");
    let root_pem = std::fs::read(swarm.managers[1].data.join("certificates/swarm-root-ca.crt")).unwrap();
    for m in swarm.etcd.members.iter_mut() {
        m.kill();
    }
    std::thread::sleep(Duration::from_secs(4));
    // What needs no store is still served: the root, over TLS, by both managers.
    let rt = rt();
    for m in &swarm.managers {
        let got = rt.block_on(async {
            let cfg = swarmca_server::tls::client_tls_config(&root_pem, "swarm-ca", None);
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", m.addr))
                .unwrap()
                .tls_config(cfg)
                .unwrap()
                .connect()
                .await
                .unwrap();
            swarmca_proto::ca_client::CaClient::new(ch)
                .get_root_ca_certificate(swarmca_types::GetRootCaCertificateRequest {})
                .await
        });
        assert_eq!(got.unwrap().into_inner().certificate, root_pem, "root from {}", m.addr);
    }
    // A join cannot be stored: once the managers have settled as degraded followers, it is
    // refused as unavailable (never accepted), within its timeout.
    let mut last = String::new();
    let settle = Instant::now();
    while !last.contains("Unavailable") {
        assert!(settle.elapsed() < Duration::from_secs(30), "joins never refused as unavailable: {last}");
        let d = swarm.dir.path().join("while-down");
        let o = crate::cli::run(&[
            "join",
            "--token",
            &token,
            "--cert-dir",
            d.to_str().unwrap(),
            "--timeout",
            "3s",
            &swarm.managers[1].addr,
        ]);
        assert!(!o.status.success(), "a join succeeded with etcd down");
        last = text(&o.stderr);
    }
    println!("join with etcd down ({:?} after settling began): {}", settle.elapsed(), last.trim());
    // etcd back (same data): joins work again, through either manager.
    swarm.etcd.restart_all();
    let back = Instant::now();
    let attempts = swarm.join_eventually(&token, "after-outage", back);
    println!("etcd restarted: a join succeeded {:?} later ({attempts} failed attempts)", back.elapsed());
}

#[test]
fn with_autolock_a_restarted_manager_stays_locked_while_the_unlocked_one_serves() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut swarm) = Swarm::start(2) else { return };
    let token = swarm.managers[0].token("worker");
    let o = swarm.managers[0].admin(&["cluster", "update", "--autolock", "true"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key = swarm.managers[0].admin_ok(&["unlock-key", "-q"]).trim().to_string();

    swarm.restart(1);
    let locked = &swarm.managers[1];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&locked.log).unwrap_or_default().contains("This manager is locked") {
        assert!(
            Instant::now() < deadline,
            "manager 1 never said it is locked:\n{}",
            std::fs::read_to_string(&locked.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::net::TcpStream::connect(&locked.addr).is_err(),
        "a locked manager keeps its TLS port closed"
    );
    let o = locked.admin(&["node", "ls"]);
    assert!(text(&o.stderr).contains("this manager is locked"), "{}", text(&o.stderr));

    // The unlocked manager serves on: joins through it succeed.
    let d = swarm.dir.path().join("while-locked");
    let o = join(&swarm.managers[0].addr, &token, &d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d);

    // Unlocked with the key, the second manager serves again.
    let key_file = swarm.dir.path().join("unlock.key");
    std::fs::write(&key_file, &key).unwrap();
    let o = swarm.managers[1].admin(&["unlock", "--key-file", key_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    swarm.managers[1].wait_ready();
    let d = swarm.dir.path().join("after-unlock");
    let o = join(&swarm.managers[1].addr, &token, &d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d);

    // The unlock key rotated, then the root: etcd never holds a CA key or an unlock key in clear.
    let new_key = swarm.managers[0].admin_ok(&["unlock-key", "--rotate", "-q"]).trim().to_string();
    let unlock_raw: Vec<Vec<u8>> = [&key, &new_key]
        .iter()
        .map(|k| swarmca_core::seal::UnlockKey::parse(k).unwrap().bytes().to_vec())
        .collect();
    let secrets: Vec<&[u8]> =
        unlock_raw.iter().map(Vec::as_slice).chain([key.as_bytes(), new_key.as_bytes()]).collect();
    swarm.etcd_holds_no(&swarm.root_key, &secrets);
    let g =
        swarmca_core::rootca::generate_root("swarm-ca-2", std::time::SystemTime::now(), [8u8; 20]).unwrap();
    let (cert2, key2) = (swarm.dir.path().join("root2.crt"), swarm.dir.path().join("root2.key"));
    std::fs::write(&cert2, &g.cert_pem).unwrap();
    std::fs::write(&key2, &g.key_pem).unwrap();
    let o = swarm.managers[0].admin(&[
        "ca",
        "--rotate",
        "--ca-cert",
        cert2.to_str().unwrap(),
        "--ca-key",
        key2.to_str().unwrap(),
        "-d",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::remove_file(&key2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let workers = [swarm.dir.path().join("while-locked"), d];
    loop {
        for w in &workers {
            let dir = w.to_str().unwrap();
            let addr = &swarm.managers[0].addr;
            let _ = crate::cli::run(&["renew", "--if-needed", "--cert-dir", dir, "--timeout", "10s", addr]);
        }
        let o = swarm.managers[0].admin(&["ca"]);
        if !text(&o.stderr).contains("in progress") {
            break;
        }
        assert!(Instant::now() < deadline, "the rotation never completed: {}", text(&o.stderr));
        std::thread::sleep(Duration::from_millis(300));
    }
    let root = swarm.managers[1].admin_ok(&["ca", "-q"]);
    assert_eq!(root.trim(), String::from_utf8_lossy(&g.cert_pem).trim(), "the rotation completed");
    for k in [&swarm.root_key, &g.key_pem] {
        swarm.etcd_holds_no(k, &secrets);
        crate::custody::assert_no_key_under(swarm.dir.path(), k, &[]);
    }
}
