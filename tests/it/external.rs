//! The external CA path (CFSSL protocol, docs/behaviour.md §5) against small fake CFSSL servers on loopback:
//! SwarmKit's `ca/external_test.go` (§7.2), the external-only cases of `ca/server_test.go`
//! (§7.1 #5, #14, #15), and the checks the original lacked (an external certificate for the
//! wrong key, subject or root ends FAILED instead of being handed to the node).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use swarmca_core::role::Role;
use swarmca_core::rootca::{generate_root, GeneratedRoot, RootCa, DEFAULT_NODE_CERT_EXPIRY};
use swarmca_proto::node_ca_server::NodeCa;
use swarmca_server::external::{client_tls_config, ExternalCa, ExternalCaError, SignRequest};
use swarmca_types::issuance_status::State;
use swarmca_types::{ExternalCa as ApiExternalCa, RootRotation};
use tokio::sync::watch;

use crate::fixture::*;

// ---------------------------------------------------------------------------------------------
// A fake CFSSL server.

/// How the fake answers `POST /sign`.
#[derive(Clone)]
pub enum Mode {
    /// Sign with its signer like CFSSL (subject and hosts from the request).
    Sign,
    /// Answer this HTTP status with a plain-text body.
    Status(u16),
    /// Answer 200 with this body.
    Body(String),
    /// Answer this status with this body.
    Raw(u16, String),
    /// Read the request and never answer.
    NoAnswer,
    /// Answer 200 with an endless body.
    Endless,
    /// Sign, but another key than the CSR's.
    WrongKey,
    /// Sign, but for another CN.
    WrongCn,
    /// Sign with another CA.
    Foreign(RootCa),
}

/// A request the fake received: path, content type, body.
type Captured = (String, Option<String>, Vec<u8>);

struct FakeState {
    mode: Mutex<Mode>,
    /// Whether profile `CA` exists (SwarmKit's reference signer's `EnableCASigning`).
    ca_signing: std::sync::atomic::AtomicBool,
    signer: RootCa,
    requests: Mutex<Vec<Captured>>,
    /// TCP connections accepted.
    accepted: AtomicUsize,
    /// Close the connection of the next request without an answer (a server closing an idle
    /// connection just as a request arrives on it).
    drop_next: std::sync::atomic::AtomicBool,
    /// Bytes the endless body produced, and whether it was dropped (the connection closed).
    endless_sent: AtomicUsize,
    endless_dropped: Mutex<Option<Instant>>,
}

pub struct FakeCa {
    pub addr: SocketAddr,
    pub url: String,
    state: Arc<FakeState>,
    stop: watch::Sender<bool>,
    /// Bumped to close every open connection (as a server's idle timeout does).
    kick: watch::Sender<u64>,
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl FakeCa {
    /// Plain HTTP on a loopback port, signing with `signer`.
    pub async fn http(signer: &RootCa, mode: Mode) -> FakeCa {
        FakeCa::start(signer, mode, None).await
    }

    /// HTTPS requiring a client certificate that verifies to `client_roots_pem`.
    pub async fn https(signer: &RootCa, mode: Mode, tls: Arc<rustls::ServerConfig>) -> FakeCa {
        FakeCa::start(signer, mode, Some(tls)).await
    }

    async fn start(signer: &RootCa, mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> FakeCa {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(FakeState {
            mode: Mutex::new(mode),
            ca_signing: std::sync::atomic::AtomicBool::new(false),
            signer: signer.clone(),
            requests: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            drop_next: std::sync::atomic::AtomicBool::new(false),
            endless_sent: AtomicUsize::new(0),
            endless_dropped: Mutex::new(None),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (kick, kick_rx) = watch::channel(0u64);
        let st = state.clone();
        tokio::spawn(async move {
            let mut stop_accept = stop_rx.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => return },
                    _ = stop_accept.wait_for(|s| *s) => return,
                };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let tls = tls.clone();
                let mut stop_conn = stop_rx.clone();
                let mut kicked = kick_rx.clone();
                // Only kicks after this connection was accepted close it.
                kicked.borrow_and_update();
                let stop_req = stop_rx.clone();
                tokio::spawn(async move {
                    let serve = async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let (st, stop_req) = (st.clone(), stop_req.clone());
                            async move {
                                if st.drop_next.swap(false, Ordering::SeqCst) {
                                    return Err(std::io::Error::other("connection dropped by the test"));
                                }
                                handle(st, req, stop_req).await.map_err(|e| match e {})
                            }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            Some(cfg) => {
                                if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                                    let _ = http.serve_connection(TokioIo::new(s), svc).await;
                                }
                            }
                            None => {
                                let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = stop_conn.wait_for(|s| *s) => {}
                        _ = kicked.changed() => {}
                    }
                });
            }
        });
        FakeCa { addr, url: format!("{scheme}://{addr}/sign"), state, stop, kick }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Adds the `CA` profile: CA certificates, BasicConstraints taken from the request.
    pub fn enable_ca_signing(&self) {
        self.state.ca_signing.store(true, Ordering::Relaxed);
    }

    pub fn requests(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Drops the connection of the next request, unanswered.
    pub fn drop_next_request(&self) {
        self.state.drop_next.store(true, Ordering::SeqCst);
    }

    /// Closes every open connection (the listener stays).
    pub fn close_connections(&self) {
        self.kick.send_modify(|g| *g += 1);
    }
}

type Resp = Response<BoxBody<Bytes, Infallible>>;

fn text(code: u16, body: impl Into<String>) -> Resp {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.into())).boxed())
        .unwrap()
}

async fn handle(
    st: Arc<FakeState>,
    req: Request<Incoming>,
    mut stop: watch::Receiver<bool>,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    st.requests.lock().unwrap().push((path, ct, body.clone()));
    let mode = st.mode.lock().unwrap().clone();
    let signer = match &mode {
        Mode::NoAnswer => {
            let _ = stop.wait_for(|s| *s).await;
            return Ok(text(503, "stopped"));
        }
        Mode::Status(code) => return Ok(text(*code, "flaky")),
        Mode::Body(b) => return Ok(text(200, b.clone())),
        Mode::Raw(code, b) => return Ok(text(*code, b.clone())),
        Mode::Endless => {
            let body = Endless { st: st.clone() };
            return Ok(Response::builder().status(200).body(body.boxed()).unwrap());
        }
        Mode::Foreign(ca) => ca.clone(),
        Mode::Sign | Mode::WrongKey | Mode::WrongCn => st.signer.clone(),
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return Ok(text(200, cfssl_error(400, "Unable to parse sign request"))),
    };
    if v["profile"].as_str() == Some("CA") {
        return Ok(text(200, ca_profile(&st, &signer, &v)));
    }
    let mut csr = v["certificate_request"].as_str().unwrap_or("").as_bytes().to_vec();
    let mut cn = v["subject"]["CN"].as_str().unwrap_or("").to_string();
    let org = v["subject"]["names"][0]["O"].as_str().unwrap_or("").to_string();
    let ou = v["subject"]["names"][0]["OU"].as_str().unwrap_or("");
    let Some(role) = Role::from_ou(ou) else {
        return Ok(text(200, cfssl_error(1, "unknown OU")));
    };
    match mode {
        Mode::WrongKey => csr = new_csr().0,
        Mode::WrongCn => cn = "someone-else".into(),
        _ => {}
    }
    Ok(match signer.sign_csr(&csr, &cn, role, &org, SystemTime::now(), serial()) {
        Ok(pem) => text(
            200,
            serde_json::json!({"success": true, "result": {"certificate": String::from_utf8(pem).unwrap()},
                               "errors": [], "messages": []})
            .to_string(),
        ),
        Err(e) => text(200, cfssl_error(9002, &e.to_string())),
    })
}

/// Profile `CA` like the reference signer: a CA certificate for the CSR's subject and key,
/// valid 2160 h, backdated 1 h; refused while CA signing is not enabled (the default profile
/// whitelists no extension).
fn ca_profile(st: &FakeState, signer: &RootCa, v: &serde_json::Value) -> String {
    if !st.ca_signing.load(Ordering::Relaxed) {
        return cfssl_error(5300, "Certificate request has extensions not in the whitelist");
    }
    // Like CFSSL, take the CSR's subject and key (rcgen refuses CSRs with CA extensions).
    let csr_pem = v["certificate_request"].as_str().unwrap_or("").to_string();
    let Ok(der) = ::pem::parse(&csr_pem).map(|p| p.into_contents()) else {
        return cfssl_error(9001, "invalid CSR PEM");
    };
    let Ok((_, csr)) =
        <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<
            '_,
            _,
        >>::from_der(&der)
    else {
        return cfssl_error(9001, "invalid CSR");
    };
    if csr.verify_signature().is_err() {
        return cfssl_error(9001, "bad CSR signature");
    }
    let bc = v["extensions"].as_array().and_then(|a| a.iter().find(|e| e["id"] == "2.5.29.19"));
    assert!(bc.is_some(), "the cross-sign request carries the root's BasicConstraints explicitly");
    let info = &csr.certification_request_info;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for attr in info.subject.iter_attributes() {
        let ty = match attr.attr_type().to_id_string().as_str() {
            "2.5.4.3" => rcgen::DnType::CommonName,
            "2.5.4.10" => rcgen::DnType::OrganizationName,
            "2.5.4.11" => rcgen::DnType::OrganizationalUnitName,
            "2.5.4.6" => rcgen::DnType::CountryName,
            other => return cfssl_error(9001, &format!("unsupported subject attribute {other}")),
        };
        let value = attr.as_str().unwrap().to_string();
        let dn = if attr.attr_value().tag() == x509_parser::der_parser::asn1_rs::Tag::PrintableString {
            rcgen::DnValue::PrintableString(value.as_str().try_into().unwrap())
        } else {
            rcgen::DnValue::Utf8String(value)
        };
        params.distinguished_name.push(ty, dn);
    }
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(2160);
    params.use_authority_key_identifier_extension = true;
    let issuer = rcgen::Issuer::from_ca_cert_der(
        &signer.signer_cert_der().unwrap().to_vec().into(),
        rcgen::KeyPair::from_pem(std::str::from_utf8(signer.signer_key_pem().unwrap()).unwrap()).unwrap(),
    )
    .unwrap();
    match params.signed_by(&public_key, &issuer) {
        Ok(c) => serde_json::json!({"success": true, "result": {"certificate": c.pem()}, "errors": [], "messages": []})
            .to_string(),
        Err(e) => cfssl_error(9002, &e.to_string()),
    }
}

fn cfssl_error(code: u32, msg: &str) -> String {
    serde_json::json!({"success": false, "result": null, "errors": [{"code": code, "message": msg}], "messages": []})
        .to_string()
}

/// A JSON string that never ends (an opening then an endless alphabet); notes how much was
/// produced and when it was dropped.
struct Endless {
    st: Arc<FakeState>,
}

const ENDLESS_PREFIX: &[u8] = br#"{"success":true,"result":{"certificate":""#;

const ALPHABET: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut chunk = ALPHABET.repeat(630); // 16 KiB
        if self.st.endless_sent.fetch_add(chunk.len(), Ordering::Relaxed) == 0 {
            chunk.splice(..0, ENDLESS_PREFIX.iter().copied());
        }
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        *self.st.endless_dropped.lock().unwrap() = Some(Instant::now());
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates for the TLS tests.

fn issuer_of(root_pem: &[u8], key_pem: &[u8]) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    rcgen::Issuer::from_ca_cert_pem(
        std::str::from_utf8(root_pem).unwrap(),
        rcgen::KeyPair::from_pem(std::str::from_utf8(key_pem).unwrap()).unwrap(),
    )
    .unwrap()
}

/// A server certificate for 127.0.0.1 signed by the root: (cert PEM, key PEM).
pub fn loopback_server_cert(root_pem: &[u8], key_pem: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer_of(root_pem, key_pem)).unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

/// A manager certificate of `org` that expired an hour ago.
fn expired_manager_cert(root_pem: &[u8], key_pem: &[u8], org: &str) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["swarm-manager".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
    params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "swarm-manager");
    params.distinguished_name.push(rcgen::DnType::CommonName, new_id());
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(2);
    params.not_after = now - time::Duration::hours(1);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer_of(root_pem, key_pem)).unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

/// The fake's TLS: `cert`/`key` as identity; client certificates required and verified
/// against `client_roots_pem`.
fn fake_tls(cert_pem: &[u8], key_pem: &[u8], client_roots_pem: &[u8]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_roots_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
    let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// PrintableString like `generate_root`, so that a re-signed subject is byte-identical.
fn printable(s: &str) -> rcgen::DnValue {
    rcgen::DnValue::PrintableString(rcgen::string::PrintableString::try_from(s).unwrap())
}

/// `new_root` (CN `new_cn`) re-signed by `old_root` (SwarmKit `CrossSignCACertificate`).
pub fn cross_sign(new_root: &GeneratedRoot, new_cn: &str, old_root: &GeneratedRoot) -> Vec<u8> {
    let new_key = rcgen::KeyPair::from_pem(std::str::from_utf8(&new_root.key_pem).unwrap()).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&new_root.cert_pem).unwrap();
    let new_cert = p.parse_x509().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, printable(new_cn));
    params.not_before = new_cert.validity().not_before.to_datetime();
    params.not_after = new_cert.validity().not_after.to_datetime();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.signed_by(&new_key, &issuer_of(&old_root.cert_pem, &old_root.key_pem)).unwrap().pem().into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Helpers.

pub fn ext_ca(url: &str, ca_cert: &[u8]) -> ApiExternalCa {
    ApiExternalCa {
        protocol: 0,
        url: url.to_string(),
        options: Default::default(),
        ca_cert: ca_cert.to_vec(),
    }
}

/// A stopped fixture whose cluster root has no key (`f.root` still holds it, for fakes).
pub async fn keyless_fixture() -> Fixture {
    Fixture::with(Opts { with_key: false, run: false, ..Opts::default() }).await
}

/// Points the cluster's external CAs at `urls` (with the root as their `ca_cert`, as
/// SwarmKit's NewTestCA does in external mode) and runs the server.
pub async fn run_with_external(f: &mut Fixture, urls: &[&str]) {
    let root_pem = f.root_pem.clone();
    let list: Vec<ApiExternalCa> = urls.iter().map(|u| ext_ca(u, &root_pem)).collect();
    f.update_cluster(|c| {
        c.spec.as_mut().unwrap().ca_config.get_or_insert_with(Default::default).external_cas = list.clone();
    })
    .await;
    f.run_server().await;
}

/// Joins with a fresh P-256 CSR and `token`; returns the node ID and the CSR.
pub async fn join(f: &Fixture, token: &str) -> (String, Vec<u8>) {
    let (csr, _) = new_csr();
    (join_with(f, &csr, token).await, csr)
}

pub async fn join_with(f: &Fixture, csr: &[u8], token: &str) -> String {
    let r = f.server.issue_node_certificate(tonic::Request::new(join_req(csr, token))).await.unwrap();
    r.into_inner().node_id
}

/// Waits until the node is in a final state (ISSUED or FAILED); returns it.
pub async fn wait_final_node(f: &Fixture, id: &str, secs: u64) -> swarmca_types::Node {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n = f.node(id).await.unwrap();
        let s = state_of(&n);
        if s == State::Issued as i32 || s == State::Failed as i32 {
            return n;
        }
        assert!(Instant::now() < deadline, "node {id} still in state {s} after {secs} s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn err_of(n: &swarmca_types::Node) -> String {
    n.certificate.as_ref().unwrap().status.as_ref().unwrap().err.clone()
}

fn cert_of(n: &swarmca_types::Node) -> Vec<u8> {
    n.certificate.as_ref().unwrap().certificate.clone()
}

fn worker_req(f: &Fixture) -> SignRequest {
    SignRequest::node(&new_csr().0, &new_id(), Role::Worker, &f.cluster_id)
}

fn direct_client(url: &str, timeout: Duration) -> ExternalCa {
    ExternalCa::new(vec![url.to_string()], Vec::new(), None, timeout)
}

// ---------------------------------------------------------------------------------------------
// The client alone (docs/behaviour.md §7.2 and §5.3).

#[tokio::test]
async fn sign_request_times_out() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let fake = FakeCa::http(&f.root, Mode::NoAnswer).await;
    let ext = direct_client(&fake.url, Duration::from_secs(1));
    let t = Instant::now();
    let e = ext.sign(&worker_req(&f)).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert!(e.is_recoverable(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("context deadline exceeded") && msg.contains("1s"), "{msg}");
}

#[tokio::test]
async fn sign_request_size_limit() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let fake = FakeCa::http(&f.root, Mode::Endless).await;
    let ext = direct_client(&fake.url, Duration::from_secs(1));
    let t = Instant::now();
    let e = ext.sign(&worker_req(&f)).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert!(e.to_string().starts_with("unable to parse JSON response"), "{e}");
    // Exactly 256 KiB were parsed: the JSON string ends where the read was cut.
    assert!(e.to_string().ends_with("EOF while parsing a string at line 1 column 262144"), "{e}");
    assert!(e.is_recoverable());
    // The client closed the connection: the server's endless body is dropped soon after.
    eventually(1, || async { fake.state.endless_dropped.lock().unwrap().is_some() }).await;
    let sent = fake.state.endless_sent.load(Ordering::Relaxed);
    assert!(sent < 64 << 20, "the server kept streaming: {sent} bytes");
}

/// Connections are kept alive between requests (as Go's http.Client keeps them for SwarmKit);
/// one the server closed while idle is replaced without the caller noticing, and a request
/// the server drops on a reused connection is sent again on a new one; a timed-out answer
/// never leaves its connection for reuse.
#[tokio::test]
async fn connections_are_kept_alive_and_replaced_when_the_server_closes_them() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let fake = FakeCa::http(&f.root, Mode::Sign).await;
    let ext = Arc::new(direct_client(&fake.url, Duration::from_secs(5)));
    for _ in 0..5 {
        ext.sign(&worker_req(&f)).await.unwrap();
    }
    assert_eq!(fake.requests(), 5);
    assert_eq!(fake.connections(), 1, "one connection for five sequential requests");
    assert_eq!(ext.idle_connections(), 1);

    // The server closes its idle connections: the next requests still succeed, on a new one.
    for round in 1..=3usize {
        fake.close_connections();
        tokio::time::sleep(Duration::from_millis(50 * (round as u64 % 2))).await;
        ext.sign(&worker_req(&f)).await.unwrap();
        assert_eq!(fake.connections(), 1 + round, "round {round}");
    }
    assert_eq!(fake.requests(), 8, "each request reached the server once");

    // The server drops a reused connection as the request arrives: sent again on a new one.
    fake.drop_next_request();
    let before = fake.connections();
    ext.sign(&worker_req(&f)).await.unwrap();
    assert_eq!(fake.connections(), before + 1, "the retry went over a new connection");

    // Concurrent requests open several connections; at most MAX_IDLE_PER_HOST stay idle.
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (ext, req) = (ext.clone(), worker_req(&f));
        jobs.spawn(async move { ext.sign(&req).await });
    }
    while let Some(r) = jobs.join_next().await {
        r.unwrap().unwrap();
    }
    assert!(ext.idle_connections() <= swarmca_server::external::MAX_IDLE_PER_HOST);

    // A timed-out request does not leave its connection behind.
    fake.set_mode(Mode::NoAnswer);
    let slow = direct_client(&fake.url, Duration::from_millis(300));
    slow.sign(&worker_req(&f)).await.unwrap_err();
    assert_eq!(slow.idle_connections(), 0);
}

#[tokio::test]
async fn posts_swarmkits_json_to_the_url_verbatim() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let fake = FakeCa::http(&f.root, Mode::Sign).await;
    let url = format!("http://{}/api/v1/cfssl/sign?x=1", fake.addr);
    let ext = direct_client(&url, Duration::from_secs(5));
    let (csr, _) = new_csr();
    let req = SignRequest::node(&csr, "node-1", Role::Manager, &f.cluster_id);
    let pem = ext.sign(&req).await.unwrap();
    f.root.check_issued(&pem, &csr, "node-1", Role::Manager, &f.cluster_id, SystemTime::now()).unwrap();
    let reqs = fake.state.requests.lock().unwrap().clone();
    let (path, ct, body) = &reqs[0];
    assert_eq!(path, "/api/v1/cfssl/sign");
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(body, &req.to_json().unwrap());
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["hosts"], serde_json::json!(["swarm-manager", "node-1", "swarm-ca"]));
    assert_eq!(v["subject"]["names"], serde_json::json!([{"O": f.cluster_id, "OU": "swarm-manager"}]));
}

#[tokio::test]
async fn answers_are_classified_like_swarmkit() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let fake = FakeCa::http(&f.root, Mode::Status(500)).await;
    let ext = direct_client(&fake.url, Duration::from_secs(5));
    let cases: Vec<(Mode, bool, &str)> = vec![
        (Mode::Status(500), true, "unexpected status code in CSR response: 500 - flaky"),
        (Mode::Status(403), true, "unexpected status code in CSR response: 403"),
        (Mode::Body("garbage{".into()), true, "unable to parse JSON response"),
        (
            Mode::Body(cfssl_error(9002, "CSR Decode failed")),
            false,
            "response errors: [{9002 CSR Decode failed}]",
        ),
        (Mode::Body(r#"{"success":true,"result":null}"#.into()), false, "certificate signing request failed"),
        // Real cfssl answers its errors with HTTP 400: CSR errors are fatal, others are not.
        (Mode::Raw(400, cfssl_error(9300, "bad csr")), false, "response errors: [{9300 bad csr}]"),
        (
            Mode::Raw(400, cfssl_error(5200, "policy")),
            true,
            "unexpected status code in CSR response: 400 - {",
        ),
        (Mode::Raw(500, cfssl_error(9002, "x")), true, "unexpected status code in CSR response: 500"),
        (Mode::Body(r#"{"success":true,"result":[1]}"#.into()), false, "invalid result type"),
        (
            Mode::Body(r#"{"success":true,"result":{"certificate":1}}"#.into()),
            false,
            "invalid result certificate field type",
        ),
    ];
    for (mode, recoverable, msg) in cases {
        fake.set_mode(mode);
        let e = ext.sign(&worker_req(&f)).await.unwrap_err();
        assert_eq!(e.is_recoverable(), recoverable, "{e}");
        assert!(e.to_string().starts_with(msg), "{e} vs {msg}");
    }
}

#[tokio::test]
async fn urls_are_tried_in_order_and_the_last_error_wins() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let bad = FakeCa::http(&f.root, Mode::Body(cfssl_error(1, "nope"))).await;
    let good = FakeCa::http(&f.root, Mode::Sign).await;
    // A port nobody listens on: connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/sign", l.local_addr().unwrap())
    };
    let inter = b"-----BEGIN CERTIFICATE-----\nINTERMEDIATE\n-----END CERTIFICATE-----\n".to_vec();
    let ext = ExternalCa::new(
        vec![dead.clone(), bad.url.clone(), good.url.clone()],
        inter.clone(),
        None,
        Duration::from_secs(5),
    );
    let pem = ext.sign(&worker_req(&f)).await.unwrap();
    assert!(pem.ends_with(&inter), "intermediates are appended");
    assert_eq!((bad.requests(), good.requests()), (1, 1));

    let ext = ExternalCa::new(vec![bad.url.clone(), dead.clone()], Vec::new(), None, Duration::from_secs(5));
    let e = ext.sign(&worker_req(&f)).await.unwrap_err();
    assert!(
        e.is_recoverable() && e.to_string().contains("unable to perform certificate signing request"),
        "{e}"
    );
    let ext = ExternalCa::new(vec![dead, bad.url.clone()], Vec::new(), None, Duration::from_secs(5));
    let e = ext.sign(&worker_req(&f)).await.unwrap_err();
    assert_eq!(e, ExternalCaError::Rejected("[{1 nope}]".into()));
    assert_eq!(
        ExternalCa::new(vec![], vec![], None, Duration::from_secs(1)).sign(&worker_req(&f)).await,
        Err(ExternalCaError::NoUrls)
    );
}

#[tokio::test]
async fn https_without_tls_config_or_with_an_untrusted_server_is_recoverable() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let (cert, key) = loopback_server_cert(&f.root_pem, &f.root_key_pem);
    let fake = FakeCa::https(&f.root, Mode::Sign, fake_tls(&cert, &key, &f.root_pem)).await;
    let e = direct_client(&fake.url, Duration::from_secs(5)).sign(&worker_req(&f)).await.unwrap_err();
    assert!(e.is_recoverable() && e.to_string().contains("TLS configuration"), "{e}");
    // Trusting another root: the server certificate does not verify.
    let other = generate_root("other", SystemTime::now(), serial()).unwrap();
    let other_der =
        CertificateDer::pem_slice_iter(&other.cert_pem).map(|c| c.unwrap().to_vec()).collect::<Vec<_>>();
    let tls =
        client_tls_config(&other_der, Some((&f.server_creds.cert_pem, &f.server_creds.key_pem))).unwrap();
    let ext = ExternalCa::new(vec![fake.url.clone()], Vec::new(), Some(tls), Duration::from_secs(5));
    let e = ext.sign(&worker_req(&f)).await.unwrap_err();
    assert!(e.is_recoverable() && e.to_string().contains("tls"), "{e}");
    assert_eq!(fake.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Through the server.

/// §7.1 #14: the external CA client follows the manager's TLS credentials.
#[tokio::test]
async fn external_ca_gets_tls_keypair_updates() {
    let f = Fixture::with(Opts { with_key: false, run: false, ..Opts::default() }).await;
    let (cert, key) = loopback_server_cert(&f.root_pem, &f.root_key_pem);
    let fake = FakeCa::https(&f.root, Mode::Sign, fake_tls(&cert, &key, &f.root_pem)).await;
    let root_pem = f.root_pem.clone();
    let url = fake.url.clone();
    f.update_cluster(|c| {
        c.spec.as_mut().unwrap().ca_config.get_or_insert_with(Default::default).external_cas =
            vec![ext_ca(&url, &root_pem)];
    })
    .await;
    f.server.update_root_ca(&f.cluster().await).unwrap();
    f.server.update_tls_credentials(&f.server_creds.cert_pem, &f.server_creds.key_pem).unwrap();
    let (csr, _) = new_csr();
    let req = SignRequest::node(&csr, "n1", Role::Worker, &f.cluster_id);
    let pem = f.server.external_ca().sign(&req).await.unwrap();
    f.root.check_issued(&pem, &csr, "n1", Role::Worker, &f.cluster_id, SystemTime::now()).unwrap();

    let (exp_cert, exp_key) = expired_manager_cert(&f.root_pem, &f.root_key_pem, &f.cluster_id);
    f.server.update_tls_credentials(&exp_cert, &exp_key).unwrap();
    let e = f.server.external_ca().sign(&req).await.unwrap_err();
    assert!(e.is_recoverable(), "{e}");
    assert!(e.to_string().contains("CertificateExpired"), "{e}");
    assert!(f.server.update_tls_credentials(b"junk", &exp_key).is_err());
    // Back to valid credentials.
    f.server.update_tls_credentials(&f.server_creds.cert_pem, &f.server_creds.key_pem).unwrap();
    f.server.external_ca().sign(&req).await.unwrap();
}

#[tokio::test]
async fn joins_are_signed_by_the_external_ca() {
    let mut f = keyless_fixture().await;
    let fake = FakeCa::http(&f.root, Mode::Sign).await;
    run_with_external(&mut f, &[&fake.url]).await;
    assert!(!f.server.root_ca().unwrap().can_sign());
    let (w, wcsr) = join(&f, &f.worker_token).await;
    let (m, mcsr) = join(&f, &f.manager_token).await;
    for (id, csr, role) in [(&w, &wcsr, Role::Worker), (&m, &mcsr, Role::Manager)] {
        let n = wait_final_node(&f, id, 10).await;
        assert_eq!(state_of(&n), State::Issued as i32, "{}", err_of(&n));
        f.root.check_issued(&cert_of(&n), csr, id, role, &f.cluster_id, SystemTime::now()).unwrap();
    }
    assert_eq!(fake.requests(), 2);
}

/// §7.1 #5: an external CA answering HTTP 500 for a while delays the join; it never fails.
#[tokio::test]
async fn broken_external_ca_delays_but_does_not_fail_joins() {
    let mut f = keyless_fixture().await;
    let fake = FakeCa::http(&f.root, Mode::Status(500)).await;
    run_with_external(&mut f, &[&fake.url]).await;
    let (id, _) = join(&f, &f.worker_token).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let n = f.node(&id).await.unwrap();
    assert_eq!(state_of(&n), State::Pending as i32);
    assert!(fake.requests() >= 2, "retried on the ticker: {}", fake.requests());
    fake.set_mode(Mode::Sign);
    let n = wait_final_node(&f, &id, 5).await;
    assert_eq!(state_of(&n), State::Issued as i32, "{}", err_of(&n));
    let cert = n.certificate.unwrap();
    assert_eq!(cert.role, Role::Worker.to_proto());
}

/// Recoverable answers keep the node PENDING; the ticker probes one node per tick.
#[tokio::test]
async fn recoverable_answers_keep_joins_pending() {
    for mode in [Mode::Status(500), Mode::Body("garbage".into()), Mode::Endless] {
        let mut f = keyless_fixture().await;
        let fake = FakeCa::http(&f.root, mode).await;
        run_with_external(&mut f, &[&fake.url]).await;
        let (a, _) = join(&f, &f.worker_token).await;
        let (b, _) = join(&f, &f.manager_token).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for id in [&a, &b] {
            assert_eq!(state_of(&f.node(id).await.unwrap()), State::Pending as i32);
        }
        assert!(f.server.pending_count() >= 2);
    }
}

/// Fatal answers (CFSSL rejected the request) and certificates that are not what was asked
/// for end FAILED with the reason.
#[tokio::test]
async fn fatal_answers_and_bad_certificates_fail_the_node() {
    let other = generate_root("other-root", SystemTime::now(), serial()).unwrap();
    let other_ca = RootCa::new(
        &other.cert_pem,
        &other.cert_pem,
        &other.key_pem,
        DEFAULT_NODE_CERT_EXPIRY,
        b"",
        SystemTime::now(),
    )
    .unwrap();
    let cases: Vec<(&str, Mode, &str)> = vec![
        ("reject", Mode::Body(cfssl_error(9002, "CSR Decode failed")), "response errors: [{9002 CSR Decode failed}]"),
        ("wrong key", Mode::WrongKey, "external CA returned an invalid certificate: the certificate's public key is not the CSR's"),
        ("wrong cn", Mode::WrongCn, "external CA returned an invalid certificate: the certificate's CN is [\"someone-else\"]"),
        ("foreign root", Mode::Foreign(other_ca), "external CA returned an invalid certificate: the certificate does not verify against the cluster root CA"),
    ];
    for (name, mode, want) in cases {
        let mut f = keyless_fixture().await;
        let fake = FakeCa::http(&f.root, mode).await;
        run_with_external(&mut f, &[&fake.url]).await;
        let (id, _) = join(&f, &f.worker_token).await;
        let n = wait_final_node(&f, &id, 10).await;
        assert_eq!(state_of(&n), State::Failed as i32, "{name}");
        assert!(err_of(&n).starts_with(want), "{name}: {}", err_of(&n));
        assert!(cert_of(&n).is_empty(), "{name}");
        assert!(fake.requests() >= 1);
    }
}

/// No external CA URL for the current root and no key: nothing can sign; the join waits.
#[tokio::test]
async fn no_signer_keeps_joins_pending_and_a_key_signs_locally() {
    let mut f = Fixture::with(Opts { with_key: false, run: false, ..Opts::default() }).await;
    // An external CA for another root only: filtered out.
    let other = generate_root("other-root", SystemTime::now(), serial()).unwrap();
    f.update_cluster(|c| {
        c.spec.as_mut().unwrap().ca_config.get_or_insert_with(Default::default).external_cas =
            vec![ext_ca("http://127.0.0.1:1/sign", &other.cert_pem)];
    })
    .await;
    f.run_server().await;
    assert!(f.server.external_ca().urls().is_empty());
    let (id, _) = join(&f, &f.worker_token).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state_of(&f.node(&id).await.unwrap()), State::Pending as i32);
    // Give the cluster its key back: signed locally.
    let key = f.root_key_pem.clone();
    f.update_cluster(|c| c.root_ca.as_mut().unwrap().ca_key = key.clone()).await;
    let n = wait_final_node(&f, &id, 5).await;
    assert_eq!(state_of(&n), State::Issued as i32, "{}", err_of(&n));
}

/// §7.1 #15: `update_root_ca` picks the external CA URLs for the root being signed for.
#[tokio::test]
async fn update_root_ca_filters_external_ca_urls() {
    let f = Fixture::with(Opts { with_key: false, run: false, ..Opts::default() }).await;
    let now = SystemTime::now();
    let old = GeneratedRoot { cert_pem: f.root_pem.clone(), key_pem: f.root_key_pem.clone() };
    let old_ca =
        RootCa::new(&old.cert_pem, &old.cert_pem, &old.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap();
    let new = generate_root("swarm-new-CA", now, serial()).unwrap();
    let new_ca =
        RootCa::new(&new.cert_pem, &new.cert_pem, &new.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap();
    let cross = cross_sign(&new, "swarm-new-CA", &old);
    let old_fake = FakeCa::http(&old_ca, Mode::Sign).await;
    let new_fake = FakeCa::http(&new_ca, Mode::Sign).await;
    let base = f.cluster().await;
    let with = |ca_key: Vec<u8>, rotation: Option<RootRotation>, ext: Vec<ApiExternalCa>| {
        let mut c = base.clone();
        let r = c.root_ca.as_mut().unwrap();
        r.ca_key = ca_key;
        r.root_rotation = rotation;
        c.spec.as_mut().unwrap().ca_config.get_or_insert_with(Default::default).external_cas = ext;
        c
    };
    let rotation = |key: &[u8]| RootRotation {
        ca_cert: new.cert_pem.clone(),
        ca_key: key.to_vec(),
        cross_signed_ca_cert: cross.clone(),
    };

    // Case 1: the root without its key, an external CA without a cert (= the current root).
    f.server.update_root_ca(&with(Vec::new(), None, vec![ext_ca(&old_fake.url, b"")])).unwrap();
    let root = f.server.root_ca().unwrap();
    assert_eq!(root.certs_pem(), old.cert_pem.as_slice());
    assert!(!root.can_sign());
    assert!(f.server.external_ca().intermediates().is_empty());
    let (csr, _) = new_csr();
    let req = SignRequest::node(&csr, "n1", Role::Worker, &f.cluster_id);
    let pem = f.server.external_ca().sign(&req).await.unwrap();
    old_ca.check_issued(&pem, &csr, "n1", Role::Worker, &f.cluster_id, now).unwrap();

    // Case 2: a rotation with the new key; the external CA (for the old root) is filtered out.
    f.server
        .update_root_ca(&with(Vec::new(), Some(rotation(&new.key_pem)), vec![ext_ca(&old_fake.url, b"")]))
        .unwrap();
    let root = f.server.root_ca().unwrap();
    let cross_der = CertificateDer::pem_slice_iter(&cross).next().unwrap().unwrap();
    assert_eq!(root.signer_cert_der(), Some(cross_der.as_ref()));
    assert_eq!(root.signer_key_pem(), Some(new.key_pem.as_slice()));
    assert_eq!(f.server.external_ca().intermediates(), cross);
    assert_eq!(f.server.external_ca().sign(&req).await, Err(ExternalCaError::NoUrls));

    // Case 3: a rotation without key; the old entry is filtered, the new one (its cert with a
    // trailing newline) is used and the result chains to the new root (and, through the
    // cross-signed intermediate, to the old one).
    let mut new_cert_nl = new.cert_pem.clone();
    new_cert_nl.push(b'\n');
    let list = vec![ext_ca(&old_fake.url, b""), ext_ca(&new_fake.url, &new_cert_nl)];
    f.server.update_root_ca(&with(Vec::new(), Some(rotation(b"")), list)).unwrap();
    assert!(!f.server.root_ca().unwrap().can_sign());
    assert_eq!(f.server.external_ca().intermediates(), cross);
    assert_eq!(f.server.external_ca().urls(), vec![new_fake.url.clone()]);
    let pem = f.server.external_ca().sign(&req).await.unwrap();
    assert!(pem.ends_with(&cross));
    new_ca.check_issued(&pem, &csr, "n1", Role::Worker, &f.cluster_id, now).unwrap();
    old_ca.check_issued(&pem, &csr, "n1", Role::Worker, &f.cluster_id, now).unwrap();

    // Only the list changes: the URLs follow, the rest stays.
    let list = vec![ext_ca(&new_fake.url, &new.cert_pem), ext_ca("http://127.0.0.1:1/x", &new.cert_pem)];
    f.server.update_root_ca(&with(Vec::new(), Some(rotation(b"")), list)).unwrap();
    assert_eq!(f.server.external_ca().urls(), vec![new_fake.url.clone(), "http://127.0.0.1:1/x".to_string()]);
    assert_eq!(f.server.external_ca().intermediates(), cross);
    assert_eq!(old_fake.requests(), 1);
}

/// During a rotation with an external CA for the new root, joins are signed externally and
/// the stored chain (leaf + cross-signed intermediate) verifies to the old root.
#[tokio::test]
async fn rotation_joins_are_signed_for_the_new_root() {
    let f = Fixture::with(Opts { with_key: false, run: false, ..Opts::default() }).await;
    let now = SystemTime::now();
    let old = GeneratedRoot { cert_pem: f.root_pem.clone(), key_pem: f.root_key_pem.clone() };
    let new = generate_root("swarm-new-CA", now, serial()).unwrap();
    let new_ca =
        RootCa::new(&new.cert_pem, &new.cert_pem, &new.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap();
    let cross = cross_sign(&new, "swarm-new-CA", &old);
    let fake = FakeCa::http(&new_ca, Mode::Sign).await;
    let (url, new_pem) = (fake.url.clone(), new.cert_pem.clone());
    f.update_cluster(|c| {
        c.root_ca.as_mut().unwrap().root_rotation = Some(RootRotation {
            ca_cert: new_pem.clone(),
            ca_key: Vec::new(),
            cross_signed_ca_cert: cross.clone(),
        });
        c.spec.as_mut().unwrap().ca_config.get_or_insert_with(Default::default).external_cas =
            vec![ext_ca(&url, &new_pem)];
    })
    .await;
    let mut f = f;
    f.run_server().await;
    let (id, csr) = join(&f, &f.worker_token).await;
    let n = wait_final_node(&f, &id, 10).await;
    assert_eq!(state_of(&n), State::Issued as i32, "{}", err_of(&n));
    f.root.check_issued(&cert_of(&n), &csr, &id, Role::Worker, &f.cluster_id, now).unwrap();
    assert!(cert_of(&n).ends_with(&cross));
}

/// Spec §7.2 TestExternalCACrossSign: for a P-256 and an RSA-2048 new root, cross-signing
/// through the external CA fails while it has no CA profile, and then gives an intermediate
/// with the new root's raw subject and key that chains the new root's leaves to the old root.
#[tokio::test]
async fn external_ca_cross_sign() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let fake = FakeCa::http(&f.root, Mode::Sign).await;
    let ext = ExternalCa::new(vec![fake.url.clone()], Vec::new(), None, Duration::from_secs(5));
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/swarmca-core/testdata");
    let generated = generate_root("swarm-test-CA-2", SystemTime::now(), serial()).unwrap();
    let cases = [
        ("ECDSA P-256", generated.cert_pem.clone(), generated.key_pem.clone()),
        (
            "RSA-2048",
            std::fs::read(testdata.join("ca_rsa2048.crt")).unwrap(),
            std::fs::read(testdata.join("ca_rsa2048_pkcs1.key")).unwrap(),
        ),
    ];
    let now = SystemTime::now();
    for (name, root2_pem, root2_key) in cases {
        let root2 =
            RootCa::new(&root2_pem, &root2_pem, &root2_key, DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap();
        let leaf_pem = root2.sign_csr(&new_csr().0, "n", Role::Worker, "o", now, serial()).unwrap();
        let leaf = ::pem::parse(&leaf_pem).unwrap().into_contents();

        let err = ext.cross_sign_root(&root2_pem, &root2_key).await.unwrap_err();
        assert!(matches!(err, ExternalCaError::Rejected(_)), "{name}: {err}");
        fake.enable_ca_signing();
        let cross_pem = ext.cross_sign_root(&root2_pem, &root2_key).await.unwrap();
        let cross = ::pem::parse(&cross_pem).unwrap().into_contents();
        let root2_der = ::pem::parse(&root2_pem).unwrap().into_contents();
        let (_, c) = x509_parser::parse_x509_certificate(&cross).unwrap();
        let (_, r2) = x509_parser::parse_x509_certificate(&root2_der).unwrap();
        assert_eq!(c.subject().as_raw(), r2.subject().as_raw(), "{name}: raw subject");
        assert_eq!(c.public_key().raw, r2.public_key().raw, "{name}: key");
        assert!(c.is_ca(), "{name}: a CA");
        // Against the cluster root: not alone, but with the intermediate.
        assert!(f.root.verify_peer(std::slice::from_ref(&leaf), now).is_err(), "{name}");
        f.root.verify_peer(&[leaf.clone(), cross.clone()], now).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Against root 2: with or without it.
        let r2_only = RootCa::new(&root2_pem, b"", b"", DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap();
        r2_only.verify_peer(std::slice::from_ref(&leaf), now).unwrap();
        r2_only.verify_peer(&[leaf.clone(), cross.clone()], now).unwrap();
        // Back to no CA profile for the next case.
        fake.state.ca_signing.store(false, Ordering::Relaxed);
    }
}

/// A cluster whose root key is only in an external CA rotates to a new local root: the
/// cross-signature comes from the external CA (profile `CA`), and fails clearly without it.
#[tokio::test]
async fn rotation_from_an_external_root_cross_signs_through_it() {
    let mut f = keyless_fixture().await;
    let fake = FakeCa::http(&f.root, Mode::Sign).await;
    run_with_external(&mut f, &[&fake.url]).await;
    let control = swarmca_server::Control::new(f.server.clone(), None);
    let err = control.rotate_root(Default::default()).await.unwrap_err();
    assert!(err.to_string().contains("did not cross-sign"), "{err}");
    assert!(f.cluster().await.root_ca.unwrap().root_rotation.is_none());
    fake.enable_ca_signing();
    let st = control.rotate_root(Default::default()).await.unwrap();
    assert!(st.in_progress);
    let rot = f.cluster().await.root_ca.unwrap().root_rotation.unwrap();
    // The stored cross-signed certificate chains to the (external) current root, and the
    // server now signs with the new key through it.
    RootCa::new(
        &f.root_pem,
        &rot.cross_signed_ca_cert,
        &rot.ca_key,
        DEFAULT_NODE_CERT_EXPIRY,
        &rot.cross_signed_ca_cert,
        SystemTime::now(),
    )
    .unwrap();
    eventually(5, || async {
        f.server.root_ca().is_some_and(|r| r.signer_key_pem() == Some(rot.ca_key.as_slice()))
    })
    .await;
    let (id, _) = join(&f, &f.worker_token.clone()).await;
    let resp = f.final_status(&id).await;
    // ISSUED, or already ROTATE: nothing has reported this node's issuer yet.
    let cert = resp.certificate.unwrap().certificate;
    let chain: Vec<Vec<u8>> =
        ::pem::parse_many(&cert).unwrap().into_iter().map(|p| p.into_contents()).collect();
    assert_eq!(chain.len(), 2, "leaf + cross-signed intermediate");
    f.root.verify_peer(&chain, SystemTime::now()).unwrap();
}
