//! The external CA path against a real `cfssl serve` (Debian package golang-cfssl), over
//! HTTPS with mutual TLS on loopback. Skipped, loudly, when the `cfssl` binary is missing,
//! unless SWARMCA_REQUIRE_CFSSL is set (then a missing binary fails the test).

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use swarmca_core::pem::certs_der;
use swarmca_core::role::Role;
use swarmca_server::SignRequest;
use swarmca_store::Store as _;
use swarmca_types::issuance_status::State;

use crate::external::{
    join, join_with, keyless_fixture, loopback_server_cert, run_with_external, wait_final_node,
};
use crate::fixture::*;

/// Whether to run: `cfssl` is installed. Panics when it is not but SWARMCA_REQUIRE_CFSSL is set.
fn cfssl_available(test: &str) -> bool {
    let found =
        Command::new("cfssl").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        if std::env::var_os("SWARMCA_REQUIRE_CFSSL").is_some() {
            panic!("{test}: SWARMCA_REQUIRE_CFSSL is set but the cfssl binary is not installed (apt-get install golang-cfssl)");
        }
        // Straight to the process's stderr: libtest's capture would hide an eprintln! of a
        // passing test.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {test}: the cfssl binary is not installed (apt-get install golang-cfssl; set SWARMCA_REQUIRE_CFSSL=1 to make this a failure)"
        );
    }
    found
}

/// A `cfssl serve` child process, killed on drop, with its files in a private directory.
struct Cfssl {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    mtls: bool,
}

impl Cfssl {
    /// Writes the CA, a TLS certificate for 127.0.0.1 and a signing config into a fresh
    /// directory and starts `cfssl serve` on a free loopback port (mTLS: client certificates
    /// must verify to the same root).
    fn start(root_pem: &[u8], root_key_pem: &[u8]) -> Cfssl {
        Cfssl::start_with(root_pem, root_key_pem, true)
    }

    /// As [`Cfssl::start`]; `mtls: false` accepts clients without a certificate.
    fn start_with(root_pem: &[u8], root_key_pem: &[u8], mtls: bool) -> Cfssl {
        let dir = std::env::temp_dir().join(format!("swarmca-cfssl-{}", new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tls_cert, tls_key) = loopback_server_cert(root_pem, root_key_pem);
        for (name, data) in [
            ("ca.pem", root_pem),
            ("ca-key.pem", root_key_pem),
            ("tls.pem", &tls_cert[..]),
            ("tls-key.pem", &tls_key[..]),
            (
                "config.json",
                br#"{"signing":{"default":{"usages":["signing","key encipherment","server auth","client auth"],"expiry":"2160h"}}}"#,
            ),
        ] {
            std::fs::write(dir.join(name), data).unwrap();
        }
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c = Cfssl { dir, port, child: None, mtls };
        c.restart();
        c
    }

    fn restart(&mut self) {
        assert!(self.child.is_none());
        let p = |n: &str| self.dir.join(n).to_string_lossy().into_owned();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("cfssl.log")).unwrap();
        let mtls: &[String] = if self.mtls {
            &["-mutual-tls-ca".into(), p("ca.pem"), "-mutual-tls-cn".into(), ".*".into()]
        } else {
            &[]
        };
        let child = Command::new("cfssl")
            .args(["serve", "-address", "127.0.0.1", "-port", &self.port.to_string()])
            .args(["-ca", &p("ca.pem"), "-ca-key", &p("ca-key.pem"), "-config", &p("config.json")])
            .args(["-tls-cert", &p("tls.pem"), "-tls-key", &p("tls-key.pem")])
            .args(mtls)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "cfssl serve did not listen; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/api/v1/cfssl/sign", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cfssl.log")).unwrap_or_default()
    }
}

impl Drop for Cfssl {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running keyless fixture whose only signer is `cfssl`, with the manager's credentials
/// for mTLS.
async fn cfssl_fixture(cfssl_root: impl FnOnce(&Fixture) -> Cfssl) -> (Fixture, Cfssl) {
    let mut f = keyless_fixture().await;
    let cfssl = cfssl_root(&f);
    f.server.update_tls_credentials(&f.server_creds.cert_pem, &f.server_creds.key_pem).unwrap();
    let url = cfssl.url();
    run_with_external(&mut f, &[&url]).await;
    (f, cfssl)
}

#[tokio::test]
async fn cfssl_signs_joins_and_an_outage_leaves_them_pending() {
    if !cfssl_available("cfssl_signs_joins_and_an_outage_leaves_them_pending") {
        return;
    }
    let (f, mut cfssl) = cfssl_fixture(|f| Cfssl::start(&f.root_pem, &f.root_key_pem)).await;
    assert!(!f.server.root_ca().unwrap().can_sign(), "external-only signing");

    // A worker and a manager get cfssl-issued certificates that verify against the root.
    let (w, wcsr) = join(&f, &f.worker_token).await;
    let (m, mcsr) = join(&f, &f.manager_token).await;
    for (id, csr, role) in [(&w, &wcsr, Role::Worker), (&m, &mcsr, Role::Manager)] {
        let n = wait_final_node(&f, id, 20).await;
        let c = n.certificate.clone().unwrap();
        assert_eq!(
            state_of(&n),
            State::Issued as i32,
            "{}\ncfssl log:\n{}",
            c.status.unwrap().err,
            cfssl.log()
        );
        f.root.check_issued(&c.certificate, csr, id, role, &f.cluster_id, SystemTime::now()).unwrap();
        let (cn, ous, os, sans) = crate::conformance::subject_of(&c.certificate);
        assert_eq!(
            (cn.as_str(), ous, os),
            (id.as_str(), vec![role.ou().to_string()], vec![f.cluster_id.clone()])
        );
        let mut want_sans = vec![role.ou().to_string(), id.clone()];
        if role == Role::Manager {
            want_sans.push("swarm-ca".into());
        }
        assert_eq!(sans, want_sans);
    }

    // cfssl down: joins stay PENDING (recoverable), never FAILED.
    cfssl.kill();
    let mut pending = Vec::new();
    for i in 0..4 {
        let token = if i % 2 == 0 { &f.worker_token } else { &f.manager_token };
        pending.push(join(&f, token).await.0);
    }
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        for id in &pending {
            assert_eq!(
                state_of(&f.node(id).await.unwrap()),
                State::Pending as i32,
                "node {id} left PENDING while cfssl was down"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // cfssl back: every pending node is issued within about one retry interval (50 ms here).
    cfssl.restart();
    let back = Instant::now();
    for id in &pending {
        let n = wait_final_node(&f, id, 10).await;
        assert_eq!(state_of(&n), State::Issued as i32, "{}", n.certificate.unwrap().status.unwrap().err);
    }
    let took = back.elapsed();
    eprintln!("all {} pending nodes issued {:?} after cfssl came back", pending.len(), took);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn cfssl_rejects_ed25519_and_garbage_csrs_and_the_nodes_fail() {
    if !cfssl_available("cfssl_rejects_ed25519_and_garbage_csrs_and_the_nodes_fail") {
        return;
    }
    let (f, cfssl) = cfssl_fixture(|f| Cfssl::start(&f.root_pem, &f.root_key_pem)).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr =
        rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap().into_bytes();
    let id = join_with(&f, &csr, &f.worker_token).await;
    let n = wait_final_node(&f, &id, 20).await;
    let status = n.certificate.unwrap().status.unwrap();
    assert_eq!(status.state, State::Failed as i32, "cfssl log:\n{}", cfssl.log());
    eprintln!("Ed25519 CSR: {}", status.err);
    assert!(status.err.starts_with("response errors: [{9300 "), "{}", status.err);

    // §7.1 #6 through cfssl: a garbage CSR fails with "CSR Decode failed".
    let id = join_with(&f, b"random garbage", &f.worker_token).await;
    let n = wait_final_node(&f, &id, 20).await;
    let status = n.certificate.unwrap().status.unwrap();
    assert_eq!(status.state, State::Failed as i32, "{}", status.err);
    assert!(status.err.contains("CSR Decode failed"), "{}", status.err);
}

/// Signing throughput: 200 joins through cfssl (one TLS connection per request) vs 200 joins
/// signed locally, same in-process client. Prints joins/s.
/// `cargo test --release -p swarmca-tests --test it cfssl_vs_local_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn cfssl_vs_local_throughput() {
    if !cfssl_available("cfssl_vs_local_throughput") {
        return;
    }
    const N: usize = 200;
    async fn run(f: &Fixture) -> f64 {
        let csrs: Vec<Vec<u8>> = (0..N).map(|_| new_csr().0).collect();
        let t = Instant::now();
        let mut ids = Vec::with_capacity(N);
        for csr in &csrs {
            ids.push(join_with(f, csr, &f.worker_token).await);
        }
        for id in &ids {
            let n = wait_final_node(f, id, 120).await;
            assert_eq!(state_of(&n), State::Issued as i32);
        }
        N as f64 / t.elapsed().as_secs_f64()
    }
    let (f, _cfssl) = cfssl_fixture(|f| Cfssl::start(&f.root_pem, &f.root_key_pem)).await;
    let ext = run(&f).await;
    drop(f);
    let local = Fixture::start().await;
    let loc = run(&local).await;
    eprintln!("THROUGHPUT {N} joins: cfssl (https+mTLS, new connection per sign) {ext:.0} joins/s; local signing {loc:.0} joins/s");
}

/// The binary with an external-only root (`--ca-cert` without a key) signing through cfssl:
/// joins are issued by cfssl; while cfssl is down `node ls` says why a join is pending, and
/// the join is issued once cfssl is back.
#[test]
fn binary_signs_through_cfssl_and_reports_outages() {
    use crate::cli::{free_port, join, run, Server, TempDir};
    if !cfssl_available("binary_signs_through_cfssl_and_reports_outages") {
        return;
    }
    let tmp = TempDir::new("cfssl-bin");
    let g = swarmca_core::rootca::generate_root("swarm-ca", SystemTime::now(), [7u8; 20]).unwrap();
    let root_path = tmp.path().join("root.pem");
    std::fs::write(&root_path, &g.cert_pem).unwrap();
    // The manager bootstraps its own certificate through cfssl, before it has one: no mTLS.
    let mut cfssl = Cfssl::start_with(&g.cert_pem, &g.key_pem, false);
    let data = tmp.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
    let child = Command::new(crate::cli::bin())
        .args(["serve", "--data-dir", data.to_str().unwrap(), "--listen", &addr])
        .args(["--ca-cert", root_path.to_str().unwrap()])
        .arg(format!("--external-ca=protocol=cfssl,url={}", cfssl.url()))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let s = Server::adopt(child, &data, &addr, &tmp.path().join("serve.log"));
    let info = s.admin_ok(&["cluster", "inspect"]);
    assert!(info.contains(&cfssl.url()), "{info}");
    let w = tmp.path().join("w");
    let o = join(&s.addr, &s.token("worker"), &w);
    assert!(o.status.success(), "join through cfssl: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root_path)
        .arg(w.join("swarm-node.crt"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    cfssl.kill();
    let o = run(&[
        "join",
        "--token",
        &s.token("worker"),
        "--cert-dir",
        tmp.path().join("x").to_str().unwrap(),
        "--timeout",
        "3s",
        &s.addr,
    ]);
    assert!(!o.status.success(), "no certificate while the external CA is down");
    let ls = s.admin_ok(&["node", "ls"]);
    let pending: Vec<&str> = ls.lines().filter(|l| l.contains("pending")).collect();
    assert_eq!(pending.len(), 1, "{ls}");
    assert!(pending[0].contains("external CA unreachable"), "node ls says why: {ls}");
    assert!(!ls.contains("failed"), "an outage never fails a join: {ls}");

    cfssl.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ls = s.admin_ok(&["node", "ls"]);
        if !ls.contains("pending") {
            assert!(!ls.contains("failed"), "{ls}");
            break;
        }
        assert!(Instant::now() < deadline, "pending join not issued after cfssl came back: {ls}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A root rotation to a root that only a real `cfssl serve` holds: the binary cross-signs it
/// with the current local root, signs through cfssl during and after the rotation, nodes
/// follow with `renew --if-needed`, and the rotation completes to the cfssl root.
#[test]
fn binary_rotates_to_a_cfssl_root() {
    use crate::cli::{free_port, join, run, text, Server, TempDir};
    if !cfssl_available("binary_rotates_to_a_cfssl_root") {
        return;
    }
    let tmp = TempDir::new("cfssl-rotate");
    let s = Server::start(&tmp.path().join("data"), free_port());
    let mut workers = Vec::new();
    for i in 0..2 {
        let dir = tmp.path().join(format!("w{i}"));
        let o = join(&s.addr, &s.token("worker"), &dir);
        assert!(o.status.success(), "{}", text(&o.stderr));
        workers.push(dir);
    }
    // cfssl holds the new root's key; swarmca only gets its certificate.
    let g = swarmca_core::rootca::generate_root("swarm-ca-cfssl", SystemTime::now(), [9u8; 20]).unwrap();
    let cfssl = Cfssl::start_with(&g.cert_pem, &g.key_pem, false);
    let new_root = tmp.path().join("cfssl-root.pem");
    std::fs::write(&new_root, &g.cert_pem).unwrap();
    let ext = format!("protocol=cfssl,url={},cacert={}", cfssl.url(), new_root.display());
    let o =
        s.admin(&["ca", "--rotate", "--ca-cert", new_root.to_str().unwrap(), "--external-ca", &ext, "-d"]);
    assert!(o.status.success(), "rotate: {}", text(&o.stderr));
    // Nodes renew when asked; their certificates now come from cfssl (with the cross-signed
    // intermediate appended).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for dir in &workers {
            let o = run(&[
                "renew",
                "--if-needed",
                "--cert-dir",
                dir.to_str().unwrap(),
                "--timeout",
                "20s",
                &s.addr,
            ]);
            assert!(o.status.success(), "renew: {}", text(&o.stderr));
        }
        let info = s.admin_ok(&["ca", "-q"]);
        if info.as_bytes() == g.cert_pem.as_slice() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation to the cfssl root did not complete: {}",
            s.admin_ok(&["node", "ls"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // After the rotation: a join with the new token is signed by cfssl (only it holds the new
    // root key) for the new root.
    let late = tmp.path().join("late");
    let o = join(&s.addr, &s.token("worker"), &late);
    assert!(o.status.success(), "join after rotation: {}", text(&o.stderr));
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&new_root)
        .arg(late.join("swarm-node.crt"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stdout));
    // The workers pick up the new root on their next renewal.
    for dir in &workers {
        let o = run(&["renew", "--cert-dir", dir.to_str().unwrap(), "--timeout", "20s", &s.addr]);
        assert!(o.status.success(), "renew after rotation: {}", text(&o.stderr));
        assert_eq!(std::fs::read(dir.join("swarm-root-ca.crt")).unwrap(), g.cert_pem);
    }
    assert!(s.terminate().success());
}

#[tokio::test]
async fn a_new_manager_with_no_certificate_gets_one_through_the_leader_when_cfssl_wants_client_certificates()
{
    if !cfssl_available(
        "a_new_manager_with_no_certificate_gets_one_through_the_leader_when_cfssl_wants_client_certificates",
    ) {
        return;
    }
    let (f, _cfssl) = cfssl_fixture(|f| Cfssl::start(&f.root_pem, &f.root_key_pem)).await;
    // Why: cfssl asks for a client certificate, and a new manager has none to present.
    let url = f.store.view(swarmca_store::WatchFilter::All).await.unwrap().clusters[0]
        .spec
        .as_ref()
        .and_then(|s| s.ca_config.as_ref())
        .map(|c| c.external_cas[0].url.clone())
        .unwrap();
    let bare = swarmca_server::ExternalCa::new(
        vec![url],
        Vec::new(),
        Some(swarmca_server::external::client_tls_config(&certs_der(&f.root_pem), None).unwrap()),
        Duration::from_secs(5),
    );
    let (csr, _) = swarmca_server::bootstrap::new_key_and_csr().unwrap();
    let direct = bare.sign(&SignRequest::node(&csr, "newmanager", Role::Manager, &f.cluster_id)).await;
    assert!(direct.is_err(), "cfssl signed for a client without a certificate: {direct:?}");

    // The new manager's start (another manager of the same store, no files) asks the leader.
    let store: std::sync::Arc<dyn swarmca_store::Store> = std::sync::Arc::new(f.store.clone());
    let election = swarmca_server::Solo::new(store.clone());
    let entropy = swarmca_server::shared_entropy(swarmca_server::OsEntropy);
    let keys = swarmca_server::custody::Keys {
        seal: Some(swarmca_core::seal::SealKey::generate(&mut swarmca_server::OsEntropy).unwrap()),
        ..Default::default()
    };
    let boot = swarmca_server::bootstrap::Bootstrap {
        store: &*store,
        election: &election,
        clock: &swarmca_server::SystemClock,
        entropy: &entropy,
        keys: &keys,
        new_node_id: Some("newmanager"),
    };
    let id = tokio::time::timeout(
        Duration::from_secs(60),
        boot.start(&swarmca_server::bootstrap::NewCluster::default(), None, || {}),
    )
    .await
    .expect("the start did not finish within 60 s")
    .unwrap();
    assert_eq!((id.node_id.as_str(), id.issued), ("newmanager", true));
    let (cn, ous, os, _) = crate::conformance::subject_of(&id.cert_pem);
    assert_eq!((cn.as_str(), os), ("newmanager", vec![f.cluster_id.clone()]));
    assert_eq!(ous, vec!["swarm-manager".to_string()]);
    f.root.verify_peer(&certs_der(&id.cert_pem), SystemTime::now()).unwrap();
    // Signed by cfssl through the leader's issuance: the node is stored ISSUED with it.
    let node = f.store.get_node("newmanager").await.unwrap().unwrap();
    assert_eq!(state_of(&node), State::Issued as i32);
    assert_eq!(node.certificate.unwrap().certificate, id.cert_pem);
}
