//! The real `swarmca` binary over loopback: serve, join, renew, admin commands, restarts,
//! crash recovery and operator errors.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use x509_parser::prelude::*;

/// The `swarmca` binary next to this test executable (built by `cargo build -p swarmca`;
/// `scripts/test` does that first), or `$SWARMCA_BIN`.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARMCA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("swarmca");
    assert!(p.exists(), "{} missing: run `cargo build -p swarmca` first (scripts/test does)", p.display());
    p
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "swarmca-it-{tag}-{}-{}",
            std::process::id(),
            crate::fixture::new_id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `swarmca args...` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("RUST_LOG", "warn").output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `swarmca serve` child process, killed on drop.
pub struct Server {
    pub child: Child,
    pub data: PathBuf,
    pub addr: String,
    pub log: PathBuf,
}

impl Server {
    pub fn start(data: &Path, port: u16) -> Server {
        let s = Server::spawn(data, port, &[]);
        s.wait_ready();
        s
    }

    /// Spawns `swarmca serve` with `extra` arguments, without waiting until it is ready.
    pub fn spawn(data: &Path, port: u16, extra: &[&str]) -> Server {
        Server::spawn_env(data, port, extra, &[])
    }

    /// [`Server::spawn`] with environment variables set for the server.
    pub fn spawn_env(data: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let addr = format!("127.0.0.1:{port}");
        let log = data.with_extension(format!("log{port}"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(["serve", "--data-dir", data.to_str().unwrap(), "--listen", &addr])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        Server { child, data: data.to_path_buf(), addr, log }
    }

    /// Wraps an already spawned `swarmca serve` child.
    pub fn adopt(child: Child, data: &Path, addr: &str, log: &Path) -> Server {
        let s = Server { child, data: data.to_path_buf(), addr: addr.to_string(), log: log.to_path_buf() };
        s.wait_ready();
        s
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = run(&["join-token", "-q", "worker", "--data-dir", self.data.to_str().unwrap()]);
            if o.status.success() && std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server never became ready; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--data-dir", self.data.to_str().unwrap()]);
        run(&a)
    }

    pub fn admin_ok(&self, args: &[&str]) -> String {
        let o = self.admin(args);
        assert!(o.status.success(), "swarmca {args:?} failed: {}", text(&o.stderr));
        text(&o.stdout)
    }

    pub fn token(&self, role: &str) -> String {
        self.admin_ok(&["join-token", "-q", role]).trim().to_string()
    }

    /// Whether the process is still running.
    pub fn child_alive(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.child.id())).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default()
                .contains(") Z ")
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "server did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn join(addr: &str, token: &str, dir: &Path) -> Output {
    run(&["join", "--token", token, "--cert-dir", dir.to_str().unwrap(), "--timeout", "20s", addr])
}

pub fn subject(pem: &[u8]) -> (String, Vec<String>, String, Vec<String>) {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let (_, c) = X509Certificate::from_der(&p.contents).unwrap();
    let s = c.subject();
    let cn = s.iter_common_name().next().unwrap().as_str().unwrap().to_string();
    let ous = s.iter_organizational_unit().map(|a| a.as_str().unwrap().to_string()).collect();
    let o = s.iter_organization().next().unwrap().as_str().unwrap().to_string();
    let sans = c
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    (cn, ous, o, sans)
}

pub fn cluster_id(s: &Server) -> String {
    let out = s.admin_ok(&["cluster", "inspect"]);
    out.lines().find_map(|l| l.strip_prefix("ID:")).unwrap().trim().to_string()
}

pub fn openssl_verify(dir: &Path) {
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("swarm-root-ca.crt"))
        .arg(dir.join("swarm-node.crt"))
        .output()
        .expect("openssl is needed for this test");
    assert!(o.status.success(), "openssl verify failed: {}{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains(": OK"));
}

#[test]
fn serve_then_join_worker_and_manager() {
    let tmp = TempDir::new("join");
    let data = tmp.path().join("data");
    let s = Server::start(&data, free_port());
    let cid = cluster_id(&s);
    for (role, ou) in [("worker", "swarm-worker"), ("manager", "swarm-manager")] {
        let dir = tmp.path().join(role);
        let o = join(&s.addr, &s.token(role), &dir);
        assert!(o.status.success(), "join failed: {}", text(&o.stderr));
        openssl_verify(&dir);
        let cert = std::fs::read(dir.join("swarm-node.crt")).unwrap();
        let (cn, ous, o_, sans) = subject(&cert);
        assert!(text(&o.stdout).contains(&cn), "join prints the node ID");
        assert_eq!(ous, [ou]);
        assert_eq!(o_, cid);
        let mut want = vec![ou.to_string(), cn.clone()];
        if role == "manager" {
            want.push("swarm-ca".into());
        }
        assert_eq!(sans, want);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("swarm-node.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "key files are owner-only");
        }
        let ls = s.admin_ok(&["node", "ls"]);
        assert!(ls.lines().any(|l| l.starts_with(&cn) && l.contains("issued")), "{ls}");
    }
    // The control socket and the manager's key are owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [data.join("control.sock"), data.join("certificates/swarm-node.key")] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} must be owner-only, mode {:o}", f.display(), mode & 0o777);
        }
    }
    // The manager's own files.
    let own = data.join("certificates");
    openssl_verify(&own);
    let (_, ous, _, sans) = subject(&std::fs::read(own.join("swarm-node.crt")).unwrap());
    assert_eq!(ous, ["swarm-manager"]);
    assert!(sans.contains(&"swarm-ca".to_string()) && sans.contains(&"swarm-manager".to_string()));
    assert!(s.terminate().success(), "SIGTERM exits 0");
}

#[test]
fn restart_keeps_cluster_root_tokens_and_nodes_even_after_kill9() {
    let tmp = TempDir::new("restart");
    let data = tmp.path().join("data");
    let port = free_port();
    let s = Server::start(&data, port);
    let (cid, root, wt, mt) =
        (cluster_id(&s), s.admin_ok(&["ca", "-q"]), s.token("worker"), s.token("manager"));
    let o = join(&s.addr, &wt, &tmp.path().join("w"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (node_id, ..) = subject(&std::fs::read(tmp.path().join("w/swarm-node.crt")).unwrap());
    s.kill9();
    let s = Server::start(&data, port);
    assert_eq!(cluster_id(&s), cid);
    assert_eq!(s.admin_ok(&["ca", "-q"]), root);
    assert_eq!((s.token("worker"), s.token("manager")), (wt.clone(), mt));
    let ls = s.admin_ok(&["node", "ls"]);
    assert!(ls.contains(&node_id), "node acknowledged before kill -9 is still there: {ls}");
    // The restarted manager still serves renewals of nodes joined before the crash.
    let o = run(&["renew", "--cert-dir", tmp.path().join("w").to_str().unwrap(), &s.addr]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // And new joins.
    let o = join(&s.addr, &wt, &tmp.path().join("w2"));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn wrong_rotated_and_mismatched_tokens_are_refused() {
    let tmp = TempDir::new("tokens");
    let s = Server::start(&tmp.path().join("data"), free_port());
    let wt = s.token("worker");
    // Same root digest, wrong secret: the server refuses with SwarmKit's exact message.
    let wrong = format!("{}{}", &wt[..wt.len() - 25], "0".repeat(25));
    let o = join(&s.addr, &wrong, &tmp.path().join("a"));
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("A valid join token is necessary to join this cluster"),
        "{}",
        text(&o.stderr)
    );
    // Rotated: the old token stops working, the new one works.
    let out = s.admin_ok(&["join-token", "--rotate", "worker"]);
    assert!(out.contains("rotated"), "{out}");
    let o = join(&s.addr, &wt, &tmp.path().join("b"));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("A valid join token is necessary to join this cluster"));
    let o = join(&s.addr, &s.token("worker"), &tmp.path().join("c"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Empty or malformed: refused by the client before anything is sent.
    let o = join(&s.addr, "", &tmp.path().join("d"));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("invalid join token"), "{}", text(&o.stderr));
    // A token for another root: refused before any CSR is sent.
    let before = s.admin_ok(&["node", "ls", "-q"]).lines().count();
    let other_digest = format!("SWMTKN-1-{}-{}", "1".repeat(50), &wt[wt.len() - 25..]);
    let o = join(&s.addr, &other_digest, &tmp.path().join("e"));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("does not match the join token"), "{}", text(&o.stderr));
    assert!(!tmp.path().join("e/swarm-node.key").exists());
    assert_eq!(s.admin_ok(&["node", "ls", "-q"]).lines().count(), before, "no node was created");
}

#[test]
fn removed_node_cannot_renew() {
    let tmp = TempDir::new("rm");
    let s = Server::start(&tmp.path().join("data"), free_port());
    let dir = tmp.path().join("w");
    assert!(join(&s.addr, &s.token("worker"), &dir).status.success());
    let o = run(&["renew", "--cert-dir", dir.to_str().unwrap(), &s.addr]);
    assert!(o.status.success(), "renewal works before removal: {}", text(&o.stderr));
    let (id, ..) = subject(&std::fs::read(dir.join("swarm-node.crt")).unwrap());
    s.admin_ok(&["node", "rm", &id]);
    let before = std::fs::read(dir.join("swarm-node.crt")).unwrap();
    let o = run(&["renew", "--cert-dir", dir.to_str().unwrap(), "--timeout", "5s", &s.addr]);
    assert!(!o.status.success(), "renewal of a removed node must be refused");
    assert!(text(&o.stderr).contains("refused"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(dir.join("swarm-node.crt")).unwrap(), before, "old files untouched");
    assert!(!s.admin_ok(&["node", "ls", "-q"]).contains(&id));
}

#[test]
fn admin_commands_cover_promote_demote_expiry_and_autolock() {
    let tmp = TempDir::new("admin");
    let s = Server::start(&tmp.path().join("data"), free_port());
    let dir = tmp.path().join("w");
    assert!(join(&s.addr, &s.token("worker"), &dir).status.success());
    let (id, ..) = subject(&std::fs::read(dir.join("swarm-node.crt")).unwrap());
    s.admin_ok(&["node", "promote", &id]);
    let o = run(&["renew", "--cert-dir", dir.to_str().unwrap(), &s.addr]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (_, ous, _, _) = subject(&std::fs::read(dir.join("swarm-node.crt")).unwrap());
    assert_eq!(ous, ["swarm-manager"], "promotion takes effect at renewal");
    let o = s.admin(&["node", "rm", &id]);
    assert!(!o.status.success() && text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    s.admin_ok(&["node", "demote", &id]);
    assert!(run(&["renew", "--cert-dir", dir.to_str().unwrap(), &s.addr]).status.success());
    let (_, ous, _, _) = subject(&std::fs::read(dir.join("swarm-node.crt")).unwrap());
    assert_eq!(ous, ["swarm-worker"]);
    let inspect = s.admin_ok(&["node", "inspect", &id]);
    assert!(inspect.contains("BEGIN CERTIFICATE") && inspect.contains("issued"), "{inspect}");

    let o = s.admin(&["cluster", "update", "--cert-expiry", "30m"]);
    assert!(!o.status.success());
    let out = s.admin_ok(&["cluster", "update", "--cert-expiry", "48h"]);
    assert!(out.contains("2days"), "{out}");
    let o = s.admin(&["unlock-key"]);
    assert!(!o.status.success() && text(&o.stderr).contains("autolock is not enabled"));
    s.admin_ok(&["cluster", "update", "--autolock", "true"]);
    let k1 = s.admin_ok(&["unlock-key", "-q"]);
    assert!(k1.starts_with("SWMKEY-1-"), "{k1}");
    let k2 = s.admin_ok(&["unlock-key", "--rotate", "-q"]);
    assert!(k2.starts_with("SWMKEY-1-") && k2 != k1);
}

#[test]
fn operator_errors_are_one_line_and_nonzero() {
    let tmp = TempDir::new("errors");
    // Bad flag.
    let o = run(&["serve", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    // Admin command with no server.
    let o = run(&["node", "ls", "--data-dir", tmp.path().join("none").to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("no swarmca server is running") && err.trim().lines().count() == 1, "{err}");
    // Unwritable data dir (a path below a regular file).
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let o = run(&[
        "serve",
        "--data-dir",
        file.join("d").to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("data directory") && err.trim().lines().count() == 1, "{err}");
    assert!(!err.contains("panicked"));
    // Port in use.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let o = run(&[
        "serve",
        "--data-dir",
        tmp.path().join("p").to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("cannot listen") && err.trim().lines().count() == 1, "{err}");
    // Corrupt store: refused, file untouched.
    let data = tmp.path().join("corrupt");
    std::fs::create_dir_all(&data).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(data.join("swarmca.redb"), &garbage).unwrap();
    let o = run(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("cannot open the store") && err.trim().lines().count() == 1, "{err}");
    assert_eq!(std::fs::read(data.join("swarmca.redb")).unwrap(), garbage, "no damage to existing data");
    // A second server on the same data dir.
    let d2 = tmp.path().join("twice");
    let _s = Server::start(&d2, free_port());
    let o = run(&[
        "serve",
        "--data-dir",
        d2.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(!o.status.success());
    assert_eq!(text(&o.stderr).trim().lines().count(), 1, "{}", text(&o.stderr));
}

/// Python grpcio requires ALPN h2 from the server; a grpcio client calls GetRootCACertificate.
#[test]
fn grpcio_client_gets_root_over_tls() {
    let have =
        Command::new("python3").args(["-c", "import grpc, grpc_tools"]).status().is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("SWARMCA_REQUIRE_GRPCIO").is_none(),
            "grpcio is required (SWARMCA_REQUIRE_GRPCIO is set)"
        );
        eprintln!("SKIP: python3 grpcio/grpcio-tools not installed");
        return;
    }
    let tmp = TempDir::new("grpcio");
    let s = Server::start(&tmp.path().join("data"), free_port());
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let out = tmp.path().join("py");
    std::fs::create_dir_all(&out).unwrap();
    let o = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(["ca.proto", "types.proto", "specs.proto"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let root = tmp.path().join("data/certificates/swarm-root-ca.crt");
    let script = format!(
        r#"
import sys, grpc
sys.path.insert(0, {out:?})
import ca_pb2, ca_pb2_grpc
creds = grpc.ssl_channel_credentials(root_certificates=open({root:?}, 'rb').read())
ch = grpc.secure_channel({addr:?}, creds, options=[('grpc.ssl_target_name_override', 'swarm-ca')])
r = ca_pb2_grpc.CAStub(ch).GetRootCACertificate(ca_pb2.GetRootCACertificateRequest(), timeout=10)
sys.stdout.write(r.certificate.decode())
"#,
        out = out.display().to_string(),
        root = root.display().to_string(),
        addr = s.addr,
    );
    let o = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "grpcio call failed: {}", text(&o.stderr));
    assert_eq!(text(&o.stdout).as_bytes(), std::fs::read(&root).unwrap());
}

#[test]
fn bench_command_runs_bounded_loads_and_reports() {
    let tmp = TempDir::new("bench");
    let s = Server::start(&tmp.path().join("data"), free_port());
    let o = run(&["bench", "root", "-c", "2", "-n", "20", &s.addr]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("requests:  20 ok, 0 errors"), "{out}");
    assert!(out.contains("p99"), "{out}");
    let o = run(&["bench", "join", "-n", "3", &s.addr]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("needs --token"), "{}", text(&o.stderr));
    let before = s.admin_ok(&["node", "ls", "-q"]).lines().count();
    let o = run(&["bench", "join", "--token", &s.token("worker"), "-c", "2", "-n", "6", &s.addr]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("requests:  6 ok"), "{}", text(&o.stdout));
    assert_eq!(s.admin_ok(&["node", "ls", "-q"]).lines().count(), before + 6, "each join made a node");
    let o = run(&["bench", "renew", "--token", &s.token("worker"), "-c", "2", "-n", "4", &s.addr]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("requests:  4 ok"), "{}", text(&o.stdout));
    // Nothing listening: a clear failure, exit non-zero.
    let o = run(&["bench", "root", "-n", "1", "127.0.0.1:1"]);
    assert!(!o.status.success());
}
