//! Key custody with the real binary: no private key in clear anywhere in a data directory (the
//! redb file included, byte for byte) before and after a root rotation and an unlock-key
//! rotation; owner-only modes; a store written in clear by the previous format sealed on its
//! first start, keeping its cluster.

use std::path::Path;
use std::time::SystemTime;

use swarmca_core::role::Role;
use swarmca_core::rootca::{generate_root, RootCa, DEFAULT_NODE_CERT_EXPIRY};
use swarmca_store::{Op, RedbStore, Store};
use swarmca_testkit::pki::find_key;

use crate::cli::{cluster_id, free_port, join, openssl_verify, text, Server, TempDir};

/// Fails if any file under `dir` (recursively), except those named in `except`, holds `key_pem`
/// in any form (see `swarmca_testkit::pki::key_forms`).
pub fn assert_no_key_under(dir: &Path, key_pem: &[u8], except: &[&str]) {
    let mut stack = vec![dir.to_path_buf()];
    let mut scanned = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if except.contains(&name.as_str()) || name.ends_with(".sock") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else { continue };
            scanned += 1;
            if let Some(form) = find_key(&bytes, key_pem) {
                panic!("{} holds the key in clear ({form})", p.display());
            }
        }
    }
    assert!(scanned > 0, "nothing scanned under {}", dir.display());
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A root certificate and key written to `dir` (outside any data directory).
fn root_files(dir: &Path, name: &str, serial: u8) -> (String, String, Vec<u8>, Vec<u8>) {
    let g = generate_root(name, SystemTime::now(), [serial; 20]).unwrap();
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, &g.cert_pem).unwrap();
    std::fs::write(&k, &g.key_pem).unwrap();
    (c.to_str().unwrap().into(), k.to_str().unwrap().into(), g.cert_pem, g.key_pem)
}

#[test]
fn no_key_reaches_the_data_directory_in_clear_before_or_after_a_root_and_an_unlock_key_rotation() {
    let tmp = TempDir::new("custody");
    let keys = tmp.path().join("given");
    std::fs::create_dir_all(&keys).unwrap();
    let (cert, key, _, key_pem) = root_files(&keys, "swarm-ca", 1);
    let data = tmp.path().join("data");
    let s = Server::spawn(&data, free_port(), &["--ca-cert", &cert, "--ca-key", &key]);
    s.wait_ready();
    let d = tmp.path().join("w");
    let o = join(&s.addr, &s.token("worker"), &d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d);

    // Owner-only: the data directory, the store, the seal key, the manager's key.
    let seal = data.join("seal.key");
    let node_key = data.join("certificates/swarm-node.key");
    assert_eq!(mode(&data), 0o700);
    for f in [&data.join("swarmca.redb"), &seal, &node_key] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert!(std::fs::read(&node_key).unwrap().starts_with(b"-----BEGIN SWARMCA SEALED NODE KEY-----"));
    assert!(contains(&std::fs::read(data.join("swarmca.redb")).unwrap(), b"SWARMCA SEALED CA KEY"));
    assert_no_key_under(&data, &key_pem, &["seal.key"]);

    // A root rotation to a given key: neither key is ever written in clear.
    let (new_cert, new_key, _, new_key_pem) = root_files(&keys, "swarm-ca-2", 2);
    let o = s.admin(&["ca", "--rotate", "--ca-cert", &new_cert, "--ca-key", &new_key, "-d"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_no_key_under(&data, &new_key_pem, &["seal.key"]);
    let rotating = s.admin_ok(&["ca", "-q"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The worker renews into the new root; the manager renews itself.
    loop {
        let _ = crate::cli::run(&[
            "renew",
            "--if-needed",
            "--cert-dir",
            d.to_str().unwrap(),
            "--timeout",
            "10s",
            &s.addr,
        ]);
        let o = s.admin(&["ca"]);
        if text(&o.stderr).contains("No root rotation in progress")
            || !text(&o.stderr).contains("in progress")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rotation never completed: {}", text(&o.stderr));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_ne!(s.admin_ok(&["ca", "-q"]), rotating, "the new root is the root");
    for k in [&key_pem, &new_key_pem] {
        assert_no_key_under(&data, k, &["seal.key"]);
    }

    // Autolock on, then the unlock key rotated: neither unlock key is stored in clear.
    let o = s.admin(&["cluster", "update", "--autolock", "true"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let first = s.admin_ok(&["unlock-key", "-q"]).trim().to_string();
    let second = s.admin_ok(&["unlock-key", "--rotate", "-q"]).trim().to_string();
    assert!(first.starts_with("SWMKEY-1-") && second.starts_with("SWMKEY-1-") && first != second);
    for k in [&first, &second] {
        let raw = swarmca_core::seal::UnlockKey::parse(k).unwrap();
        let text_form = k.trim_start_matches("SWMKEY-1-");
        let store = std::fs::read(data.join("swarmca.redb")).unwrap();
        assert!(
            !contains(&store, raw.bytes()) && !contains(&store, text_form.as_bytes()),
            "unlock key in clear"
        );
    }
    for k in [&key_pem, &new_key_pem] {
        assert_no_key_under(&data, k, &["seal.key"]);
    }
    assert!(s.terminate().success());
}

#[test]
fn a_store_written_in_clear_by_the_previous_format_is_sealed_on_start_and_keeps_its_cluster() {
    let tmp = TempDir::new("custody-old");
    let data = tmp.path().join("data");
    let certs = data.join("certificates");
    std::fs::create_dir_all(&certs).unwrap();
    // What the previous version left: the cluster record with its root key in clear, the
    // manager's node and a worker, clear certificate files, no seal key.
    let now = SystemTime::now();
    let g = generate_root("swarm-ca", now, [5; 20]).unwrap();
    let root = RootCa::new(&g.cert_pem, &g.cert_pem, &g.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap();
    let old_id = "oldclusterid0000000000000".to_string();
    let tokens = swarmca_types::JoinTokens {
        worker: swarmca_core::token::generate_join_token(
            &swarmca_core::rootca::digest(&g.cert_pem),
            false,
            &mut swarmca_server::OsEntropy,
        )
        .unwrap(),
        manager: swarmca_core::token::generate_join_token(
            &swarmca_core::rootca::digest(&g.cert_pem),
            false,
            &mut swarmca_server::OsEntropy,
        )
        .unwrap(),
    };
    let cluster = swarmca_core::cluster::new_cluster(&old_id, &g.cert_pem, &g.key_pem, tokens.clone(), None);
    let manager =
        swarmca_testkit::pki::issue(&root, "oldmanager000000000000000", Role::Manager, &old_id, now, [6; 20]);
    let worker =
        swarmca_testkit::pki::issue(&root, "oldworker0000000000000000", Role::Worker, &old_id, now, [7; 20]);
    let node = |c: &swarmca_testkit::pki::Creds, role: Role| swarmca_types::Node {
        id: c.node_id.clone(),
        role: role.to_proto(),
        spec: Some(swarmca_types::NodeSpec {
            desired_role: role.to_proto(),
            membership: swarmca_types::node_spec::Membership::Accepted as i32,
            ..Default::default()
        }),
        certificate: Some(swarmca_types::Certificate {
            role: role.to_proto(),
            certificate: c.cert_pem.clone(),
            cn: c.node_id.clone(),
            status: Some(swarmca_types::IssuanceStatus {
                state: swarmca_types::issuance_status::State::Issued as i32,
                err: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    {
        let store = RedbStore::open(&data.join("swarmca.redb")).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(store.commit(vec![
            Op::CreateCluster(cluster),
            Op::CreateNode(node(&manager, Role::Manager)),
            Op::CreateNode(node(&worker, Role::Worker)),
        ]))
        .unwrap();
    }
    assert!(
        find_key(&std::fs::read(data.join("swarmca.redb")).unwrap(), &g.key_pem).is_some(),
        "the old format"
    );
    std::fs::write(certs.join("swarm-node.crt"), &manager.cert_pem).unwrap();
    std::fs::write(certs.join("swarm-node.key"), &manager.key_pem).unwrap();
    std::fs::write(certs.join("swarm-root-ca.crt"), &g.cert_pem).unwrap();

    let s = Server::spawn(&data, free_port(), &[]);
    s.wait_ready();
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("they are sealed now"), "{log}");
    assert!(!data.join(".swarmca.redb.rewrite").exists(), "the store was rewritten and its mark cleared");
    // The same cluster: ID, root, tokens, nodes, this manager's identity.
    assert_eq!(cluster_id(&s), old_id);
    assert_eq!(s.admin_ok(&["ca", "-q"]).trim(), String::from_utf8_lossy(&g.cert_pem).trim());
    assert_eq!(s.token("worker"), tokens.worker);
    let ls = s.admin_ok(&["node", "ls"]);
    assert!(ls.contains(&manager.node_id) && ls.contains(&worker.node_id), "{ls}");
    // It still signs with the old root.
    let d = tmp.path().join("w");
    let o = join(&s.addr, &tokens.worker, &d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d);
    assert!(s.terminate().success());

    // Nothing in clear any more: not in the store file (rewritten), not in the key file.
    assert_no_key_under(&data, &g.key_pem, &["seal.key"]);
    assert_no_key_under(&data, &manager.key_pem, &["seal.key"]);
    assert_eq!(mode(&data.join("swarmca.redb")), 0o600);
    // And a second start says nothing about sealing.
    let s = Server::spawn(&data, free_port(), &[]);
    s.wait_ready();
    assert!(!std::fs::read_to_string(&s.log).unwrap().contains("sealed now"));
    assert!(s.terminate().success());
    // A start that died after sealing but before the rewrite leaves its mark: the next start
    // rewrites the file (and clears the mark).
    std::fs::write(data.join(".swarmca.redb.rewrite"), b"").unwrap();
    let s = Server::spawn(&data, free_port(), &[]);
    s.wait_ready();
    assert!(!data.join(".swarmca.redb.rewrite").exists());
    assert!(s.terminate().success());
}

/// Runs `swarmca args...` with `input` on its standard input.
fn run_with_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(crate::cli::bin())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn wait_for_log(s: &Server, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        if log.contains(what) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never logged {what:?}:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_autolocked_manager_restarts_locked_serves_nothing_and_unlocks_only_with_the_right_key() {
    let tmp = TempDir::new("autolock");
    let data = tmp.path().join("data");
    let port = free_port();
    let s = Server::spawn(&data, port, &[]);
    s.wait_ready();
    let token = s.token("worker");
    let o = s.admin(&["cluster", "update", "--autolock", "true"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key = s.admin_ok(&["unlock-key", "-q"]).trim().to_string();
    assert!(s.terminate().success());

    // Restarted: up, locked, saying so; nothing served, nothing signed.
    let s = Server::spawn(&data, port, &[]);
    wait_for_log(&s, "This manager is locked");
    assert!(s.child_alive(), "a locked manager stays up");
    let o = join(&s.addr, &token, &tmp.path().join("refused"));
    assert!(!o.status.success(), "a locked manager signed a join");
    assert!(std::net::TcpStream::connect(&s.addr).is_err(), "its TLS port is closed");
    for args in [&["node", "ls"][..], &["cluster", "inspect"], &["unlock-key"]] {
        let o = s.admin(args);
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("this manager is locked") && text(&o.stderr).contains("swarmca unlock"),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }

    // A wrong key is refused (and answered after a pause); a malformed one at once.
    let wrong = "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let started = std::time::Instant::now();
    let o = run_with_stdin(&["unlock", "--data-dir", data.to_str().unwrap()], wrong);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("wrong unlock key"), "{}", text(&o.stderr));
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    let o = run_with_stdin(&["unlock", "--data-dir", data.to_str().unwrap()], "not-a-key");
    assert!(!o.status.success() && text(&o.stderr).contains("SWMKEY-1-"), "{}", text(&o.stderr));
    assert!(std::net::TcpStream::connect(&s.addr).is_err(), "still locked");

    // The right key: it serves again, and signs.
    let o = run_with_stdin(&["unlock", "--data-dir", data.to_str().unwrap()], &format!("{key}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("Manager unlocked"), "{}", text(&o.stdout));
    s.wait_ready();
    let d = tmp.path().join("w");
    let o = join(&s.addr, &token, &d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d);

    // Rotating the unlock key: the old one stops working, the new one opens at start.
    let new_key = s.admin_ok(&["unlock-key", "--rotate", "-q"]).trim().to_string();
    assert_ne!(new_key, key);
    assert!(s.terminate().success());
    let old_file = tmp.path().join("old.key");
    std::fs::write(&old_file, &key).unwrap();
    let o = crate::cli::run(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--unlock-key-file",
        old_file.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "the old key opened the cluster");
    assert!(text(&o.stderr).contains("wrong unlock key"), "{}", text(&o.stderr));
    let new_file = tmp.path().join("new.key");
    std::fs::write(&new_file, &new_key).unwrap();
    let s = Server::spawn(&data, port, &["--unlock-key-file", new_file.to_str().unwrap()]);
    s.wait_ready();

    // Autolock off: a restart needs no key.
    let o = s.admin(&["cluster", "update", "--autolock", "false"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(s.terminate().success());
    let s = Server::spawn(&data, port, &[]);
    s.wait_ready();
    let o = join(&s.addr, &token, &tmp.path().join("w2"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(s.terminate().success());
}

#[test]
fn the_control_socket_refuses_other_users_even_when_its_permissions_would_let_them_in() {
    // Needs root to act as another user (as the test command runs in CI); skipped otherwise.
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1);
    if uid != 0 || std::process::Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: needs root and setpriv to connect as another user");
        return;
    }
    let tmp = TempDir::new("peercred");
    let data = tmp.path().join("data");
    let s = Server::start(&data, free_port());
    let socket = data.join("control.sock");
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&data), 0o700);
    // Opened up as a careless operator might: the files no longer keep others out.
    for (p, m) in [(tmp.path(), 0o755), (data.as_path(), 0o755), (socket.as_path(), 0o666)] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
    }
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::cli::bin())
        .args(["node", "ls", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!as_nobody.status.success(), "another user listed the nodes: {}", text(&as_nobody.stdout));
    assert!(std::fs::read_to_string(&s.log).unwrap().contains("refused a connection from another user"));
    // Its owner (and root) still gets in.
    assert!(s.admin_ok(&["node", "ls"]).contains("manager"));
    assert!(s.terminate().success());
}
