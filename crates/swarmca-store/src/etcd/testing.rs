//! Real etcd servers for the tests (single members, clusters, TLS), each on free loopback ports
//! with its own data directory, killed and removed on drop; and a TCP proxy that can cut
//! connections.
//!
//! Without an `etcd` binary the tests print why and pass, unless `SWARMCA_REQUIRE_ETCD=1`
//! (set by scripts/test when etcd is installed), which makes them fail instead.
//!
//! Test support only (this crate's tests, and the integration tests through the
//! `etcd-testing` feature): a broken setup panics loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{EtcdOptions, EtcdStore, EtcdTls};

/// The etcd binary, or `None` when the tests must be skipped (the reason is printed).
pub fn etcd_binary() -> Option<PathBuf> {
    let found = ["/usr/bin/etcd", "/usr/local/bin/etcd"].iter().map(PathBuf::from).find(|p| p.is_file());
    let found = found.or_else(|| {
        let ok = Command::new("etcd").arg("--version").stdout(Stdio::null()).status();
        ok.is_ok_and(|s| s.success()).then(|| PathBuf::from("etcd"))
    });
    if found.is_none() {
        assert!(
            std::env::var("SWARMCA_REQUIRE_ETCD").as_deref() != Ok("1"),
            "SWARMCA_REQUIRE_ETCD=1 but no etcd binary (apt-get install etcd-server)"
        );
        eprintln!(
            "SKIPPED: no etcd binary (apt-get install etcd-server, or set SWARMCA_REQUIRE_ETCD=1 to fail)"
        );
    }
    found
}

/// A loopback port no other server of this process was given.
fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A fresh directory under the system temp dir.
fn temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("swarmca-{what}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Certificates for etcd with `--client-cert-auth`: a CA, etcd's server certificate for
/// 127.0.0.1, a client certificate, and an unrelated CA.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TlsFiles {
    pub fn generate(dir: &Path) -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
            KeyPair,
        };
        let ca_params = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        };
        let ca =
            CertifiedIssuer::self_signed(ca_params("etcd test CA"), KeyPair::generate().unwrap()).unwrap();
        let other =
            CertifiedIssuer::self_signed(ca_params("unrelated CA"), KeyPair::generate().unwrap()).unwrap();
        let leaf = |sans: Vec<String>, cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = usages;
            (p.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
        };
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (server_cert, server_key) =
            leaf(vec!["127.0.0.1".into(), "localhost".into()], "etcd", vec![ServerAuth, ClientAuth]);
        let (client_cert, client_key) = leaf(Vec::new(), "swarmca-manager", vec![ClientAuth]);
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        TlsFiles {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            other_ca: write("other-ca.pem", &other.pem()),
        }
    }
}

/// Raft timing of a cluster.
#[derive(Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u32,
    pub election_ms: u32,
}

impl Timing {
    /// A single member elects itself in about 0.2 s instead of 1 s.
    pub const FAST: Timing = Timing { heartbeat_ms: 10, election_ms: 100 };
    /// etcd's defaults.
    pub const DEFAULT: Timing = Timing { heartbeat_ms: 100, election_ms: 1000 };
}

/// One etcd process.
pub struct Member {
    pub name: String,
    dir: PathBuf,
    client_url: String,
    metrics_port: u16,
    args: Vec<String>,
    process: Option<Running>,
}

/// A running etcd and its watchdog, which kills it and removes the cluster's directory if this
/// test process dies without dropping it (the watchdog's stdin closes then).
struct Running {
    etcd: Child,
    watchdog: Child,
    _watchdog_stdin: ChildStdin,
}

impl Member {
    /// The client URL (`http://` or `https://`).
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.etcd.id())
    }

    fn start(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("etcd.log")).unwrap();
        let etcd = Command::new(etcd_binary().unwrap())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut watchdog = Command::new("sh")
            .args(["-c", "read _; kill -9 \"$1\" 2>/dev/null; sleep 0.2; rm -rf \"$2\"", "sh"])
            .arg(etcd.id().to_string())
            // The cluster's directory (certificates, every member's data).
            .arg(self.dir.parent().unwrap_or(&self.dir))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = watchdog.stdin.take().unwrap();
        self.process = Some(Running { etcd, watchdog, _watchdog_stdin: stdin });
    }

    /// Whether the member reports itself healthy (it has a leader).
    fn healthy(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.metrics_port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// Whether the etcd process has exited (it failed to start, e.g. a port was taken).
    fn exited(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.etcd.try_wait().ok().flatten().is_some())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILL, and wait for the process to be gone. The data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.watchdog.kill();
            let _ = p.watchdog.wait();
            let _ = p.etcd.kill();
            let _ = p.etcd.wait();
        }
    }

    /// Starts etcd again on the same data directory and ports, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
        wait_healthy(std::slice::from_mut(self), Duration::from_secs(20)).unwrap();
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the etcd process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().unwrap().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until every member is healthy; on failure, says why with the members' logs.
fn wait_healthy(members: &mut [Member], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if members.iter().all(Member::healthy) {
            return Ok(());
        }
        let dead: Vec<String> =
            members.iter_mut().filter_map(|m| m.exited().then(|| m.name.clone())).collect();
        if !dead.is_empty() || Instant::now() > deadline {
            let logs: Vec<String> =
                members.iter().map(|m| format!("--- {}:\n{}", m.name, m.log_tail())).collect();
            let why = if dead.is_empty() {
                format!("not healthy within {within:?}")
            } else {
                format!("{dead:?} exited")
            };
            return Err(format!("etcd {why}\n{}", logs.join("\n")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An etcd cluster of one or more members on loopback.
pub struct Etcd {
    pub members: Vec<Member>,
    dir: PathBuf,
    pub tls: Option<TlsFiles>,
}

impl Etcd {
    /// A single member, or `None` if the tests must be skipped.
    pub fn single() -> Option<Etcd> {
        Etcd::start(1, Timing::FAST, false)
    }

    /// `n` members with `timing`, over TLS with client certificates if `tls`; `None` if the
    /// tests must be skipped. Retries with other ports if a member cannot start.
    pub fn start(n: usize, timing: Timing, tls: bool) -> Option<Etcd> {
        etcd_binary()?;
        let mut last_error = String::new();
        for _ in 0..3 {
            match Etcd::try_start(n, timing, tls) {
                Ok(e) => return Some(e),
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start etcd: {last_error}");
    }

    fn try_start(n: usize, timing: Timing, tls: bool) -> Result<Etcd, String> {
        let dir = temp_dir("etcd");
        let tls = tls.then(|| TlsFiles::generate(&dir));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ports: Vec<(u16, u16, u16)> = (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
        let cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, p, _))| format!("e{i}=http://127.0.0.1:{p}")).collect();
        let cluster = cluster.join(",");
        let token = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut members = Vec::new();
        for (i, &(c, p, m)) in ports.iter().enumerate() {
            let name = format!("e{i}");
            let mdir = dir.join(&name);
            std::fs::create_dir_all(&mdir).unwrap();
            let client_url = format!("{scheme}://127.0.0.1:{c}");
            let mut args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                &mdir.join("data").to_string_lossy(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{m}"),
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &token,
                "--heartbeat-interval",
                &timing.heartbeat_ms.to_string(),
                "--election-timeout",
                &timing.election_ms.to_string(),
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(t) = &tls {
                for (flag, path) in [
                    ("--cert-file", &t.server_cert),
                    ("--key-file", &t.server_key),
                    ("--trusted-ca-file", &t.ca),
                ] {
                    args.push(flag.into());
                    args.push(path.to_string_lossy().into_owned());
                }
                args.push("--client-cert-auth".into());
            }
            members.push(Member { name, dir: mdir, client_url, metrics_port: m, args, process: None });
        }
        let mut etcd = Etcd { members, dir, tls };
        for m in &mut etcd.members {
            m.start();
        }
        wait_healthy(&mut etcd.members, Duration::from_secs(30))?;
        Ok(etcd)
    }

    /// The index of the member that is the raft leader now (its status names itself), if any.
    pub async fn leader_index(&self) -> Option<usize> {
        for (i, url) in self.endpoints().iter().enumerate() {
            let Ok(mut c) = etcd_client::Client::connect([url], None).await else { continue };
            let Ok(st) = c.status().await else { continue };
            if st.header().is_some_and(|h| h.member_id() == st.leader()) {
                return Some(i);
            }
        }
        None
    }

    /// Kills every member, starts them all again on their data, and waits until the cluster
    /// is healthy (a lone member of a cluster cannot be: it needs a quorum).
    pub fn restart_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
        for m in &mut self.members {
            m.start();
        }
        wait_healthy(&mut self.members, Duration::from_secs(30)).unwrap();
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url().to_string()).collect()
    }

    /// Store options for every member, with client certificates when the cluster uses TLS.
    pub fn options(&self) -> EtcdOptions {
        let mut opts = EtcdOptions::new(self.endpoints());
        if let Some(t) = &self.tls {
            opts.tls = Some(EtcdTls::new(&t.ca).with_client_identity(&t.client_cert, &t.client_key));
        }
        opts
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Members first (each kills its process), then the directory holding them.
        self.members.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A single etcd plus the runtime that [`EtcdStore`]'s futures and tasks run on: the
/// behavioural suite polls futures with its own `block_on`, outside any runtime.
pub struct Fixture {
    pub etcd: Etcd,
    pub rt: tokio::runtime::Runtime,
}

impl Fixture {
    /// `None` if the tests must be skipped.
    pub fn start() -> Option<Fixture> {
        let etcd = Etcd::single()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Some(Fixture { etcd, rt })
    }

    pub fn connect(&self) -> EtcdStore {
        self.rt.block_on(EtcdStore::connect(self.etcd.options())).unwrap()
    }
}

/// A TCP proxy to one address that can cut every connection and refuse new ones.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (o, c) = (Arc::clone(&open), Arc::clone(&cut));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let (target, c) = (target.clone(), Arc::clone(&c));
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = c.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, open, cut, task }
    }

    /// Closes every proxied connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn heal(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every key and value under `prefix`, as any etcd client sees them (what `etcdctl get
/// --prefix` prints): for tests that check what reaches etcd.
pub async fn raw_dump(endpoints: &[String], prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut client = etcd_client::Client::connect(endpoints, None).await.expect("connect to etcd");
    let r =
        client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.expect("get --prefix");
    r.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect()
}
