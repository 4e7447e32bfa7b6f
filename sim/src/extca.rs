//! A fake external CFSSL CA on its own simulated node: the real CFSSL sign protocol (JSON over
//! HTTPS with mutual TLS, a real rustls handshake on simulated TCP), signing with the cluster
//! root. The nemesis switches its behaviour (F3): outage by kill, clog or pause, answers that
//! never come, HTTP 500, garbage bodies, and `success:false` refusals.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use madsim::rand::{thread_rng, Rng};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use swarmca_core::role::Role;
use swarmca_core::rootca::RootCa;

use crate::shared::{lock, Shared};

/// Where the fake CA listens.
/// The validity of what the fake CFSSL signs (its own signing profile, like a real CFSSL's:
/// it does not follow the cluster's configured node certificate expiry).
pub const PROFILE_EXPIRY: Duration = Duration::from_secs(2160 * 3600);

pub const ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), 8888);

/// The URL managers are configured with.
pub fn url() -> String {
    format!("https://{ADDR}/api/v1/cfssl/sign")
}

/// Whether the fake CA, when poisoning is on, always fails this CSR recoverably (HTTP 503).
pub fn poisoned(csr: &[u8]) -> bool {
    swarmca_core::rootca::digest(csr).first().is_some_and(|b| *b < 16)
}

/// Marker in every refusal, so checkers can tell a deliberate fatal answer from a bug.
pub const REFUSAL: &str = "sim-extca-refused";

/// How the fake CA answers right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sign,
    /// Accept the request, never answer (past the client's 5 s deadline).
    Hang,
    Http500,
    /// Half the answers malformed JSON, half a well-formed success carrying a certificate for
    /// another key (with the requested subject, chained to the root): the CA must refuse it
    /// (the node ends FAILED, never ISSUED with it).
    Garbage,
    /// `success:false` (a fatal answer: the node must end FAILED with this reason).
    Refuse,
}

/// Shared mode switch, and the server task (aborted to emulate a crash of the CA process:
/// madsim's node kill/restart leaves the old listening socket behind, see madsim#76).
pub struct Control {
    pub mode: Mutex<Mode>,
    server: Mutex<Option<madsim::task::JoinHandle<()>>>,
    node: Mutex<Option<madsim::runtime::NodeHandle>>,
    serve: Mutex<
        Option<
            Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>,
        >,
    >,
}

impl Control {
    pub fn new() -> Control {
        Control {
            mode: Mutex::new(Mode::Sign),
            server: Mutex::default(),
            node: Mutex::default(),
            serve: Mutex::default(),
        }
    }

    /// Crashes the CA process: its listener and connections go away.
    pub fn crash(&self) {
        if let Some(h) = lock(&self.server).take() {
            h.abort();
        }
    }

    /// Starts the CA process (again).
    pub fn start(&self) {
        let (Some(node), Some(serve)) = (lock(&self.node).clone(), lock(&self.serve).clone()) else { return };
        let mut g = lock(&self.server);
        if g.is_none() {
            *g = Some(node.spawn(serve()));
        }
    }
}

impl Default for Control {
    fn default() -> Control {
        Control::new()
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("mode", &*lock(&self.mode)).finish()
    }
}

/// A TLS server certificate for the fake CA, signed by the cluster root.
fn server_identity(
    root: &RootCa,
    root_key_pem: &[u8],
    root_pem: &[u8],
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let _ = root;
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("params: {e}"));
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(ADDR.ip())];
    params.distinguished_name.push(rcgen::DnType::CommonName, "sim-extca");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let ca_key = rcgen::KeyPair::from_pem(&String::from_utf8_lossy(root_key_pem))
        .unwrap_or_else(|e| panic!("root key: {e}"));
    let issuer = rcgen::Issuer::from_ca_cert_pem(&String::from_utf8_lossy(root_pem), ca_key)
        .unwrap_or_else(|e| panic!("issuer: {e}"));
    let cert = params.signed_by(&key, &issuer).unwrap_or_else(|e| panic!("sign: {e}"));
    let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap_or_else(|e| panic!("key der: {e}"));
    (vec![cert.der().clone()], der)
}

/// Starts the fake CA node and its server; returns the node ID.
pub fn start(
    shared: Arc<Shared>,
    control: Arc<Control>,
    root_pem: Vec<u8>,
    root_key_pem: Vec<u8>,
) -> madsim::task::NodeId {
    let node = madsim::runtime::Handle::current().create_node().name("extca").ip(ADDR.ip()).build();
    let now = SystemTime::now();
    let signer = Arc::new(
        RootCa::new(&root_pem, &root_pem, &root_key_pem, PROFILE_EXPIRY, b"", now)
            .unwrap_or_else(|e| panic!("signer: {e}")),
    );
    let (chain, key) = server_identity(&signer, &root_key_pem, &root_pem);
    let mut roots = rustls::RootCertStore::empty();
    for c in x509_parser::pem::Pem::iter_from_buffer(&root_pem).filter_map(|p| p.ok()) {
        let _ = roots.add(CertificateDer::from(c.contents));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates are required and verified, like SwarmKit's test CA.
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap_or_else(|e| panic!("verifier: {e}"));
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("tls: {e}"))
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| panic!("tls cert: {e}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let c2 = control.clone();
    let serve = move || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let (acceptor, signer, control, shared) =
            (acceptor.clone(), signer.clone(), c2.clone(), shared.clone());
        Box::pin(async move {
            // A previous incarnation's socket may linger briefly: retry.
            let listener = loop {
                match tokio::net::TcpListener::bind(ADDR).await {
                    Ok(l) => break l,
                    Err(_) => madsim::time::sleep(Duration::from_millis(500)).await,
                }
            };
            // Connections die with the process.
            let mut conns = Conns(Vec::new());
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, signer, control, shared) =
                    (acceptor.clone(), signer.clone(), control.clone(), shared.clone());
                conns.0.retain(|h| !h.is_finished());
                conns.0.push(madsim::task::spawn(async move {
                    let tls = match acceptor.accept(swarmca_server::external::QuietFlush::new(tcp)).await {
                        Ok(t) => t,
                        Err(e) => {
                            shared.log.push(format!("extca: TLS accept failed: {e}"));
                            return;
                        }
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, signer.clone(), control.clone(), shared.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }));
            }
        })
    };
    *lock(&control.node) = Some(node.clone());
    *lock(&control.serve) = Some(Arc::new(serve));
    control.start();
    node.id()
}

/// Connection tasks of one server incarnation, aborted when it ends.
struct Conns(Vec<madsim::task::JoinHandle<()>>);

impl Drop for Conns {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(code: u16, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn refusal(code: u32, msg: &str) -> String {
    serde_json::json!({"success": false, "result": null, "errors": [{"code": code, "message": msg}], "messages": []}).to_string()
}

/// A CSR for a fresh key of nobody's.
fn other_key_csr() -> Option<Vec<u8>> {
    let key = rcgen::KeyPair::generate().ok()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key).ok()?.pem().ok()?;
    Some(csr.into_bytes())
}

async fn handle(
    req: Request<Incoming>,
    signer: Arc<RootCa>,
    control: Arc<Control>,
    shared: Arc<Shared>,
) -> Result<Resp, Infallible> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let mode = *lock(&control.mode);
    shared.coverage.hit("extca.request");
    match mode {
        Mode::Hang => {
            madsim::time::sleep(Duration::from_secs(30)).await;
            return Ok(reply(503, "late".into()));
        }
        Mode::Http500 => return Ok(reply(500, "internal error".into())),
        Mode::Garbage if thread_rng().gen_bool(0.5) => return Ok(reply(200, "{\"success\":tr".into())),
        Mode::Garbage => {}
        Mode::Refuse => return Ok(reply(200, refusal(1000, REFUSAL))),
        Mode::Sign => {}
    }
    let v: serde_json::Value = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v)
            if shared.opts.extca_poison
                && poisoned(v["certificate_request"].as_str().unwrap_or("").as_bytes()) =>
        {
            shared.coverage.hit("extca.poisoned_request");
            return Ok(reply(503, "this request cannot be served right now".into()));
        }
        Ok(v) => v,
        Err(_) => return Ok(reply(400, refusal(400, "Unable to parse sign request"))),
    };
    let csr = v["certificate_request"].as_str().unwrap_or("").as_bytes().to_vec();
    let cn = v["subject"]["CN"].as_str().unwrap_or("");
    let org = v["subject"]["names"][0]["O"].as_str().unwrap_or("");
    let Some(role) = Role::from_ou(v["subject"]["names"][0]["OU"].as_str().unwrap_or("")) else {
        return Ok(reply(200, refusal(1, "unknown OU")));
    };
    let mut serial = [0u8; 20];
    thread_rng().fill(&mut serial[..]);
    let signed_csr = if mode == Mode::Garbage {
        let Some(other) = other_key_csr() else { return Ok(reply(500, "no key".into())) };
        lock(&shared.extca_wrong_key).insert(swarmca_core::rootca::digest(&csr));
        shared.coverage.hit("extca.wrong_key_certificate");
        other
    } else {
        csr.clone()
    };
    Ok(match signer.sign_csr(&signed_csr, cn, role, org, SystemTime::now(), serial) {
        Ok(pem) => {
            if let Some(leaf) = x509_parser::pem::Pem::iter_from_buffer(&pem).next().and_then(Result::ok) {
                lock(&shared.extca_issued).insert(swarmca_core::rootca::digest(&leaf.contents));
            }
            reply(
            200,
            serde_json::json!({"success": true, "result": {"certificate": String::from_utf8_lossy(&pem)}, "errors": [], "messages": []})
                .to_string(),
            )
        }
        // Like cfssl: a CSR it cannot use is a 400 with a CSR-range error code (fatal).
        Err(e) => reply(400, refusal(9002, &e.to_string())),
    })
}
