//! Root rotation end to end with the real binary: serve, join, `ca --rotate`, nodes renewing
//! on ROTATE, a node that never renews blocking completion until `node rm`, new tokens, and
//! certificates that verify against the new root only.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{bin, free_port, join, run, subject, text, Server, TempDir};

/// `openssl verify` of the leaf in `cert` against `ca` only, with the rest of the file as
/// untrusted intermediates.
fn openssl_verify_with(ca: &Path, cert: &Path) -> bool {
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg("-untrusted")
        .arg(cert)
        .arg(cert)
        .output()
        .expect("openssl is needed for this test");
    o.status.success() && text(&o.stdout).contains(": OK")
}

fn node_state(s: &Server, id: &str) -> String {
    let ls = s.admin_ok(&["node", "ls"]);
    ls.lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_default()
        .to_string()
}

fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rotate_renew_block_remove_complete() {
    let tmp = TempDir::new("rotate");
    let data = tmp.path().join("data");
    let s = Server::start(&data, free_port());
    let old_root = tmp.path().join("old-root.pem");
    std::fs::write(&old_root, s.admin_ok(&["ca", "-q"])).unwrap();
    let old_worker = s.token("worker");
    let old_manager = s.token("manager");

    // Five workers that follow the rotation, and one that never renews.
    let mut ids = Vec::new();
    for i in 0..6 {
        let dir = tmp.path().join(format!("w{i}"));
        let o = join(&s.addr, &old_worker, &dir);
        assert!(o.status.success(), "join failed: {}", text(&o.stderr));
        ids.push(subject(&std::fs::read(dir.join("swarm-node.crt")).unwrap()).0);
    }
    let lazy = ids[5].clone();

    // Start the rotation detached; every node is asked to renew at once (fewer than 30).
    let o = s.admin(&["ca", "--rotate", "-d"]);
    assert!(o.status.success(), "rotate failed: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains("Rotating from sha256:"), "{}", text(&o.stderr));
    for id in &ids {
        wait_until(15, "node marked ROTATE", || node_state(&s, id) == "rotate");
    }
    // Each following node renews because the CA asked it to.
    for i in 0..5 {
        let dir = tmp.path().join(format!("w{i}"));
        let o =
            run(&["renew", "--if-needed", "--cert-dir", dir.to_str().unwrap(), "--timeout", "20s", &s.addr]);
        assert!(o.status.success(), "renew failed: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("root rotation"), "{}", text(&o.stderr));
        // During the rotation the chain is leaf + cross-signed new root: valid under the old root.
        assert!(openssl_verify_with(&old_root, &dir.join("swarm-node.crt")));
    }
    // A node joining during the rotation (old token, old root) gets a certificate from the new
    // key that verifies against the old root through the cross-signed intermediate.
    let mid = tmp.path().join("mid");
    let o = join(&s.addr, &old_worker, &mid);
    assert!(o.status.success(), "join during the rotation: {}", text(&o.stderr));
    assert!(openssl_verify_with(&old_root, &mid.join("swarm-node.crt")));
    assert_eq!(crate::cli::subject(&std::fs::read(mid.join("swarm-node.crt")).unwrap()).1, ["swarm-worker"]);
    // An up-to-date node declines to renew when asked "if needed".
    let dir0 = tmp.path().join("w0");
    let o = run(&["renew", "--if-needed", "--cert-dir", dir0.to_str().unwrap(), &s.addr]);
    assert!(
        o.status.success() && text(&o.stdout).contains("No renewal needed"),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );

    // The lazy node blocks completion, and the progress output names it.
    let log = tmp.path().join("watch.log");
    let mut watch = Command::new(bin())
        .args(["ca", "--watch", "--data-dir", data.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until(20, "progress names the blocking node", || {
        std::fs::read_to_string(&log).unwrap_or_default().contains(&lazy)
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        watch.try_wait().unwrap().is_none(),
        "the rotation must not complete while {lazy} has not renewed"
    );
    let progress = std::fs::read_to_string(&log).unwrap();
    assert!(progress.contains("nodes converged"), "{progress}");
    assert!(s.admin_ok(&["ca"]).contains("BEGIN CERTIFICATE"));

    // Removing it unblocks the rotation; the watcher exits 0 once it completes.
    s.admin_ok(&["node", "rm", &lazy]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = watch.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = watch.kill();
            panic!("rotation did not complete: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let progress = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{progress}");
    assert!(progress.contains("Root rotation complete"), "{progress}");

    // New root and tokens; the old tokens are refused.
    let new_root = tmp.path().join("new-root.pem");
    std::fs::write(&new_root, s.admin_ok(&["ca", "-q"])).unwrap();
    assert_ne!(std::fs::read(&new_root).unwrap(), std::fs::read(&old_root).unwrap());
    let (new_worker, new_manager) = (s.token("worker"), s.token("manager"));
    assert_ne!(new_worker, old_worker);
    assert_ne!(new_manager, old_manager);
    for t in [&old_worker, &old_manager] {
        let o = join(&s.addr, t, &tmp.path().join("late-old"));
        assert!(!o.status.success(), "an old token must be refused");
    }
    let late = tmp.path().join("late");
    let o = join(&s.addr, &new_worker, &late);
    assert!(o.status.success(), "join with the new token: {}", text(&o.stderr));
    assert_eq!(std::fs::read(late.join("swarm-root-ca.crt")).unwrap(), std::fs::read(&new_root).unwrap());
    assert!(openssl_verify_with(&new_root, &late.join("swarm-node.crt")));
    assert!(!openssl_verify_with(&old_root, &late.join("swarm-node.crt")));

    // The converged nodes renew once more, pick up the new root, and end with certificates
    // that verify against the new root only.
    for i in 0..5 {
        let dir = tmp.path().join(format!("w{i}"));
        let o = run(&["renew", "--cert-dir", dir.to_str().unwrap(), "--timeout", "20s", &s.addr]);
        assert!(o.status.success(), "renew after the rotation: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("picked up the cluster's new root CA"), "{}", text(&o.stderr));
        assert_eq!(std::fs::read(dir.join("swarm-root-ca.crt")).unwrap(), std::fs::read(&new_root).unwrap());
        assert!(openssl_verify_with(&new_root, &dir.join("swarm-node.crt")));
        assert!(!openssl_verify_with(&old_root, &dir.join("swarm-node.crt")));
    }
    // The manager's own files follow too.
    let own = data.join("certificates");
    wait_until(10, "manager root file updated", || {
        std::fs::read(own.join("swarm-root-ca.crt")).unwrap() == std::fs::read(&new_root).unwrap()
    });
    assert!(openssl_verify_with(&new_root, &own.join("swarm-node.crt")));
    let ls = s.admin_ok(&["node", "ls"]);
    assert!(ls.contains("ISSUER"), "{ls}");
    assert!(s.terminate().success());
}

#[test]
fn rotation_abort_and_errors_from_the_cli() {
    let tmp = TempDir::new("rotate-abort");
    let s = Server::start(&tmp.path().join("data"), free_port());
    // Nothing to abort or watch.
    let o = s.admin(&["ca", "--abort"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no root rotation is in progress"), "{}", text(&o.stderr));
    let o = s.admin(&["ca", "--watch"]);
    assert!(o.status.success() && text(&o.stderr).contains("No root rotation in progress"));
    // A key without a certificate is a usage error; a missing file is reported.
    let o = s.admin(&["ca", "--rotate", "--ca-key", "/nonexistent"]);
    assert!(!o.status.success());
    let o = s.admin(&["ca", "--rotate", "--ca-cert", "/nonexistent/root.pem"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("cannot read /nonexistent/root.pem"), "{}", text(&o.stderr));
    // Start, then abort: the root is unchanged.
    let before = s.admin_ok(&["ca", "-q"]);
    let o = s.admin(&["ca", "--rotate", "-d"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = s.admin(&["ca"]);
    assert!(text(&o.stderr).contains("is in progress"), "{}", text(&o.stderr));
    let o = s.admin(&["ca", "--abort"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(s.admin_ok(&["ca", "-q"]), before);
    assert!(s.terminate().success());
}
