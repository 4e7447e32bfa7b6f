//! `swarmca bench`: a load generator for operators. Concurrent clients join, renew or fetch the
//! root over real TLS, with a progress line and a summary (requests/s, latency percentiles,
//! errors by gRPC code). Bounded by a request count and a time limit.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmca_proto::ca_client::CaClient;
use swarmca_proto::node_ca_client::NodeCaClient;
use swarmca_types::issuance_status::State;
use swarmca_types::{GetRootCaCertificateRequest, IssueNodeCertificateRequest, NodeCertificateStatusRequest};
use tonic::transport::Channel;

use crate::client::{connect, fetch_root, new_key_and_csr, tls_config, Trust};
use crate::{fatal, Fatal};

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// Join with the token: IssueNodeCertificate, then NodeCertificateStatus until ISSUED.
    /// Every request creates a node in the cluster (remove them afterwards).
    Join,
    /// Renew over mTLS: each client first joins one node (not measured), then renews it.
    Renew,
    /// GetRootCACertificate (anonymous TLS).
    Root,
}

/// The run's limits and shape.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub kind: BenchKind,
    pub addr: String,
    pub token: Option<String>,
    pub clients: usize,
    pub requests: u64,
    pub duration: Duration,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

/// Per-request deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn one_join(
    client: &mut NodeCaClient<Channel>,
    token: &str,
) -> Result<(String, Vec<u8>, String), String> {
    let (key, csr) = new_key_and_csr().map_err(|e| e.0)?;
    issue_and_wait(client, csr, token).await.map(|(id, cert)| (id, cert, key))
}

async fn issue_and_wait(
    client: &mut NodeCaClient<Channel>,
    csr: Vec<u8>,
    token: &str,
) -> Result<(String, Vec<u8>), String> {
    let mut req = tonic::Request::new(IssueNodeCertificateRequest {
        csr: csr.clone(),
        token: token.to_string(),
        ..Default::default()
    });
    req.set_timeout(CALL_TIMEOUT);
    let id =
        client.issue_node_certificate(req).await.map_err(|s| format!("{:?}", s.code()))?.into_inner().node_id;
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        let mut req = tonic::Request::new(NodeCertificateStatusRequest { node_id: id.clone() });
        req.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(50)));
        match client.node_certificate_status(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let cert = r.certificate.unwrap_or_default();
                let state = r.status.map_or(0, |s| s.state);
                if cert.csr == csr && (state == State::Issued as i32 || state == State::Rotate as i32) {
                    return Ok((id, cert.certificate));
                }
                if cert.csr == csr && state == State::Failed as i32 {
                    return Err("FAILED".into());
                }
            }
            Err(s) if s.code() == tonic::Code::DeadlineExceeded && Instant::now() < deadline => {}
            Err(s) => return Err(format!("{:?}", s.code())),
        }
        if Instant::now() >= deadline {
            return Err("Timeout".into());
        }
    }
}

/// `swarmca bench`.
pub async fn run(a: BenchArgs) -> Result<(), Fatal> {
    if a.clients == 0 || a.requests == 0 {
        return Err(fatal!("-c and -n must be at least 1"));
    }
    let token = match a.kind {
        BenchKind::Join | BenchKind::Renew => {
            Some(a.token.clone().ok_or_else(|| fatal!("`bench {}` needs --token", a.kind.name()))?)
        }
        BenchKind::Root => None,
    };
    let root = match &token {
        Some(t) => Some(fetch_root(&a.addr, t).await?),
        None => None,
    };
    eprintln!(
        "bench {} against {}: {} clients, up to {} requests or {} s",
        a.kind.name(),
        a.addr,
        a.clients,
        a.requests,
        a.duration.as_secs()
    );
    // Connections (and, for renew, one node per client) before the clock starts.
    let mut workers = Vec::new();
    for _ in 0..a.clients {
        let w = match (a.kind, &root, &token) {
            (BenchKind::Root, _, _) => Worker::Root(CaClient::new(
                connect(&a.addr, tls_config(Trust::Any)?, swarmca_core::role::CA_ROLE).await?,
            )),
            (BenchKind::Join, Some(root), Some(t)) => Worker::Join(
                NodeCaClient::new(
                    connect(
                        &a.addr,
                        tls_config(Trust::Roots { roots_pem: root, identity: None })?,
                        swarmca_core::role::CA_ROLE,
                    )
                    .await?,
                ),
                t.clone(),
            ),
            (BenchKind::Renew, Some(root), Some(t)) => {
                let mut anon = NodeCaClient::new(
                    connect(
                        &a.addr,
                        tls_config(Trust::Roots { roots_pem: root, identity: None })?,
                        swarmca_core::role::CA_ROLE,
                    )
                    .await?,
                );
                let (_, cert, key) =
                    one_join(&mut anon, t).await.map_err(|e| fatal!("joining a node to renew: {e}"))?;
                let cfg =
                    tls_config(Trust::Roots { roots_pem: root, identity: Some((&cert, key.as_bytes())) })?;
                Worker::Renew(NodeCaClient::new(connect(&a.addr, cfg, swarmca_core::role::MANAGER_OU).await?))
            }
            _ => return Err(fatal!("internal: inconsistent bench setup")),
        };
        workers.push(w);
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let stop_at = start + a.duration;
    let mut tasks = Vec::new();
    for w in workers {
        let (tally, issued, limit) = (tally.clone(), issued.clone(), a.requests);
        tasks.push(tokio::spawn(async move {
            let mut w = w;
            while Instant::now() < stop_at
                && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < limit
            {
                let t0 = Instant::now();
                let r = w.once().await;
                let d = t0.elapsed();
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(()) => t.latencies.push(d),
                    Err(code) => *t.errors.entry(code).or_default() += 1,
                }
            }
        }));
    }
    let tty = std::io::stderr().is_terminal();
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::pin!(all);
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let (ok, err) = {
                    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    (t.latencies.len() as u64, t.errors.values().sum::<u64>())
                };
                let done = ok + err;
                let rate = ok as f64 / start.elapsed().as_secs_f64().max(1e-9);
                let line = format!("{done}/{} requests, {rate:.0}/s, {err} errors, {} s", a.requests, start.elapsed().as_secs());
                if tty {
                    let width = 30usize;
                    let filled = ((done as f64 / a.requests as f64) * width as f64).min(width as f64) as usize;
                    eprint!("\r\x1b[2K[{}{}] {line}", "=".repeat(filled), " ".repeat(width - filled));
                } else if last_print.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{line}");
                    last_print = Instant::now();
                }
            }
        }
    }
    if tty {
        eprintln!();
    }
    let elapsed = start.elapsed();
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    let mut lat = t.latencies.clone();
    lat.sort();
    let pct = |p: f64| -> String {
        if lat.is_empty() {
            return "-".into();
        }
        let i = ((lat.len() - 1) as f64 * p).round() as usize;
        format!("{:.2} ms", lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3))
    };
    println!(
        "requests:  {} ok, {} errors in {:.2} s",
        lat.len(),
        t.errors.values().sum::<u64>(),
        elapsed.as_secs_f64()
    );
    println!("rate:      {:.1} ok/s", lat.len() as f64 / elapsed.as_secs_f64().max(1e-9));
    println!("latency:   p50 {}  p90 {}  p99 {}  max {}", pct(0.5), pct(0.9), pct(0.99), pct(1.0));
    for (code, n) in &t.errors {
        println!("error:     {code}: {n}");
    }
    if a.kind == BenchKind::Join {
        println!("note:      every successful join created a node; remove them with `swarmca node rm`");
    }
    if lat.is_empty() {
        return Err(fatal!("no request succeeded"));
    }
    Ok(())
}

enum Worker {
    Root(CaClient<Channel>),
    Join(NodeCaClient<Channel>, String),
    Renew(NodeCaClient<Channel>),
}

impl BenchKind {
    fn name(self) -> &'static str {
        match self {
            BenchKind::Join => "join",
            BenchKind::Renew => "renew",
            BenchKind::Root => "root",
        }
    }
}

impl Worker {
    async fn once(&mut self) -> Result<(), String> {
        match self {
            Worker::Root(c) => {
                let mut req = tonic::Request::new(GetRootCaCertificateRequest {});
                req.set_timeout(CALL_TIMEOUT);
                c.get_root_ca_certificate(req).await.map(|_| ()).map_err(|s| format!("{:?}", s.code()))
            }
            Worker::Join(c, token) => one_join(c, token).await.map(|_| ()),
            Worker::Renew(c) => {
                let (_, csr) = new_key_and_csr().map_err(|e| e.0)?;
                issue_and_wait(c, csr, "").await.map(|_| ())
            }
        }
    }
}
