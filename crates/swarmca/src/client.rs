//! What a SwarmKit node does at bootstrap and renewal, over real TLS: download the root and
//! check it against the token's digest, send a CSR, poll NodeCertificateStatus, verify the
//! result, and write the certificate files.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use swarmca_core::rootca::{digest, RootCa, DEFAULT_NODE_CERT_EXPIRY};
use swarmca_core::token::parse_join_token;
use swarmca_proto::ca_client::CaClient;
use swarmca_proto::node_ca_client::NodeCaClient;
use swarmca_types::issuance_status::State;
use swarmca_types::{GetRootCaCertificateRequest, IssueNodeCertificateRequest, NodeCertificateStatusRequest};
use tonic::transport::{Channel, Endpoint};

use crate::{fatal, Fatal};
use swarmca_server::files::{self, NODE_CERT, NODE_KEY, ROOT_CERT};

/// Per-call timeouts SwarmKit clients use.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (still checking handshake signatures). Used only to fetch
/// the root bundle, whose digest is then checked against the join token — SwarmKit's TOFU.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How to authenticate the manager and ourselves.
pub enum Trust<'a> {
    /// Fetching the root: accept any server certificate.
    Any,
    /// Trust `roots_pem`; present `identity` (cert PEM, key PEM) if given.
    Roots { roots_pem: &'a [u8], identity: Option<(&'a [u8], &'a [u8])> },
}

fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Fatal> {
    let certs: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(|p| p.ok())
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.contents))
        .collect();
    if certs.is_empty() {
        return Err(fatal!("no certificate in PEM data"));
    }
    Ok(certs)
}

fn pem_key(pem: &[u8]) -> Result<rustls::pki_types::PrivateKeyDer<'static>, Fatal> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem).map_err(|e| fatal!("unreadable private key: {e}"))
}

/// A rustls client configuration for `trust`, offering ALPN h2 (gRPC).
pub fn tls_config(trust: Trust<'_>) -> Result<ClientConfig, Fatal> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fatal!("TLS setup: {e}"))?;
    let mut cfg = match trust {
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(p)))
            .with_no_client_auth(),
        Trust::Roots { roots_pem, identity } => {
            let mut roots = RootCertStore::empty();
            for c in pem_certs(roots_pem)? {
                roots.add(c).map_err(|e| fatal!("unusable root certificate: {e}"))?;
            }
            let b = builder.with_root_certificates(roots);
            match identity {
                Some((cert, key)) => b
                    .with_client_auth_cert(pem_certs(cert)?, pem_key(key)?)
                    .map_err(|e| fatal!("unusable node certificate/key: {e}"))?,
                None => b.with_no_client_auth(),
            }
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A gRPC channel to `addr` over TLS with `cfg`, expecting the server name `server_name`.
pub async fn connect(addr: &str, cfg: ClientConfig, server_name: &str) -> Result<Channel, Fatal> {
    let cfg = Arc::new(cfg);
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| fatal!("bad server name: {e}"))?;
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let cfg = cfg.clone();
        let name = name.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            // gRPC writes small frames; with Nagle's algorithm each one waits for the peer's
            // delayed ACK (~40 ms per call).
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| fatal!("bad address {addr:?}: {e}"))?
        .connect_timeout(CALL_TIMEOUT)
        .connect_with_connector(connector)
        .await
        .map_err(|e| fatal!("cannot connect to {addr}: {}", error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn status_msg(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Downloads the root bundle and checks its SHA-256 against the token's digest.
pub async fn fetch_root(addr: &str, token: &str) -> Result<Vec<u8>, Fatal> {
    let parsed = parse_join_token(token).map_err(|e| fatal!("{e}"))?;
    let ch = connect(addr, tls_config(Trust::Any)?, swarmca_core::role::CA_ROLE).await?;
    let mut req = tonic::Request::new(GetRootCaCertificateRequest {});
    req.set_timeout(CALL_TIMEOUT);
    let root = CaClient::new(ch)
        .get_root_ca_certificate(req)
        .await
        .map_err(|s| fatal!("GetRootCACertificate failed: {}", status_msg(&s)))?
        .into_inner()
        .certificate;
    if digest(&root) != parsed.root_digest {
        return Err(fatal!(
            "the root CA served by {addr} does not match the join token's digest; refusing to join \
             (wrong token, or someone in the middle)"
        ));
    }
    Ok(root)
}

/// A new P-256 key (PKCS#8 PEM) and a CSR for it (PEM) with an empty subject, like SwarmKit's.
pub(crate) fn new_key_and_csr() -> Result<(String, Vec<u8>), Fatal> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr.into_bytes()))
}

/// Shows a one-line progress indicator on stderr.
struct Progress {
    tty: bool,
    start: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress { tty: std::io::stderr().is_terminal(), start: Instant::now() }
    }

    fn update(&self, node: &str, state: &str) {
        let secs = self.start.elapsed().as_secs();
        if self.tty {
            eprint!("\r\x1b[2Kwaiting for the certificate of node {node}: {state} ({secs} s)");
        } else {
            eprintln!("waiting for the certificate of node {node}: {state} ({secs} s)");
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Sends the CSR and polls until the certificate for *this* CSR is issued.
async fn request_certificate(
    ch: Channel,
    csr: &[u8],
    token: &str,
    timeout: Duration,
) -> Result<(String, Vec<u8>), Fatal> {
    let mut client = NodeCaClient::new(ch);
    let mut req = tonic::Request::new(IssueNodeCertificateRequest {
        csr: csr.to_vec(),
        token: token.to_string(),
        ..Default::default()
    });
    req.set_timeout(CALL_TIMEOUT);
    let issued = client
        .issue_node_certificate(req)
        .await
        .map_err(|s| fatal!("IssueNodeCertificate refused: {}", status_msg(&s)))?
        .into_inner();
    let node_id = issued.node_id;
    let progress = Progress::new();
    let deadline = Instant::now() + timeout;
    let mut last = "pending".to_string();
    loop {
        progress.update(&node_id, &last);
        if Instant::now() >= deadline {
            progress.done();
            return Err(fatal!(
                "timed out after {} s waiting for the certificate of node {node_id} (last state: {last})",
                timeout.as_secs()
            ));
        }
        let mut req = tonic::Request::new(NodeCertificateStatusRequest { node_id: node_id.clone() });
        req.set_timeout(
            CALL_TIMEOUT
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(100)),
        );
        match client.node_certificate_status(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let status = r.status.unwrap_or_default();
                let cert = r.certificate.unwrap_or_default();
                let state = State::try_from(status.state).unwrap_or(State::Unknown);
                match state {
                    State::Issued | State::Rotate if cert.csr == csr && !cert.certificate.is_empty() => {
                        progress.done();
                        return Ok((node_id, cert.certificate));
                    }
                    State::Failed if cert.csr == csr => {
                        progress.done();
                        return Err(fatal!(
                            "the CA refused to issue a certificate for node {node_id}: {}",
                            status.err
                        ));
                    }
                    _ => {
                        last = format!("{state:?}").to_lowercase();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => {}
            Err(s) => {
                last = format!("retrying after error ({})", status_msg(&s));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Checks that `cert_pem` is for `key_pem`, chains to `root_pem`, and returns (node ID, role OU).
fn verify_issued(root_pem: &[u8], cert_pem: &[u8], key_pem: &str) -> Result<(String, String), Fatal> {
    let now = SystemTime::now();
    let root = RootCa::new(root_pem, b"", b"", DEFAULT_NODE_CERT_EXPIRY, b"", now)
        .map_err(|e| fatal!("the root CA is unusable: {e}"))?;
    let chain: Vec<Vec<u8>> = pem_certs(cert_pem)?.into_iter().map(|c| c.to_vec()).collect();
    let id = root
        .verify_peer(&chain, now)
        .map_err(|e| fatal!("the issued certificate does not verify against the root: {e}"))?;
    let key = rcgen::KeyPair::from_pem(key_pem)?;
    let leaf = chain.first().ok_or_else(|| fatal!("empty certificate"))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| fatal!("unparsable certificate: {e}"))?;
    if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err(fatal!("the issued certificate is not for our key"));
    }
    let role = id.roles.first().cloned().unwrap_or_default();
    Ok((id.node_id, role))
}

/// `swarmca join`.
pub async fn join(addr: &str, token: &str, cert_dir: &Path, timeout: Duration) -> Result<(), Fatal> {
    let root = fetch_root(addr, token).await?;
    eprintln!("root CA of {addr} matches the join token");
    let (key_pem, csr) = new_key_and_csr()?;
    let cfg = tls_config(Trust::Roots { roots_pem: &root, identity: None })?;
    let ch = connect(addr, cfg, swarmca_core::role::CA_ROLE).await?;
    let (node_id, cert) = request_certificate(ch, &csr, token, timeout).await?;
    let (cn, role) = verify_issued(&root, &cert, &key_pem)?;
    if cn != node_id {
        return Err(fatal!("the issued certificate names node {cn}, expected {node_id}"));
    }
    write_certs(cert_dir, &root, &cert, &key_pem)?;
    // Authenticate once with the new certificate, as an agent's first session would: the CA
    // records which root issued it (root rotations wait for that).
    if let Err(e) = fetch_root_with(addr, &root, &cert, key_pem.as_bytes()).await {
        eprintln!("warning: could not confirm the new certificate with the manager: {}", e.0);
    }
    println!("This node joined the swarm as a {}: node ID {node_id}", role.trim_start_matches("swarm-"));
    println!("Certificates written to {}", cert_dir.display());
    Ok(())
}

/// Why this node should renew now, or `None` (for `renew --if-needed`): the CA asked it to
/// (ROTATE, during a root rotation), its role changed, or its certificate is past half of
/// its validity.
async fn renewal_reason(ch: Channel, node_id: &str, cert_pem: &[u8]) -> Result<Option<String>, Fatal> {
    let mut req = tonic::Request::new(NodeCertificateStatusRequest { node_id: node_id.to_string() });
    req.set_timeout(Duration::from_secs(2));
    let resp = match NodeCaClient::new(ch).node_certificate_status(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
            return Ok(Some("a renewal of this node is already under way".into()))
        }
        Err(s) => return Err(fatal!("NodeCertificateStatus failed: {}", status_msg(&s))),
    };
    let state = State::try_from(resp.status.unwrap_or_default().state).unwrap_or(State::Unknown);
    if state == State::Rotate {
        return Ok(Some("the CA asked this node to renew (root rotation)".into()));
    }
    let (_, leaf) =
        x509_parser::pem::parse_x509_pem(cert_pem).map_err(|e| fatal!("unreadable certificate: {e}"))?;
    let (_, c) = x509_parser::parse_x509_certificate(&leaf.contents)
        .map_err(|e| fatal!("unreadable certificate: {e}"))?;
    let ou = c.subject().iter_organizational_unit().next().and_then(|a| a.as_str().ok()).unwrap_or("");
    let stored_role = resp.certificate.map_or(0, |c| c.role);
    let want_ou = swarmca_core::role::Role::from_proto(stored_role).map_or("", |r| r.ou());
    if !want_ou.is_empty() && want_ou != ou {
        return Ok(Some(format!("its role changed to {}", want_ou.trim_start_matches("swarm-"))));
    }
    let (nb, na) = (c.validity().not_before.timestamp(), c.validity().not_after.timestamp());
    let now =
        i64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
            .unwrap_or(i64::MAX);
    if now > nb + (na - nb) / 2 {
        return Ok(Some("its certificate is past half of its validity".into()));
    }
    Ok(None)
}

/// `swarmca renew`.
pub async fn renew(addr: &str, cert_dir: &Path, timeout: Duration, if_needed: bool) -> Result<(), Fatal> {
    let root = files::read(cert_dir, ROOT_CERT)?;
    let old_cert = files::read(cert_dir, NODE_CERT)?;
    let old_key = files::read(cert_dir, NODE_KEY)?;
    let cfg = tls_config(Trust::Roots { roots_pem: &root, identity: Some((&old_cert, &old_key)) })?;
    let ch = connect(addr, cfg, swarmca_core::role::MANAGER_OU).await?;
    if if_needed {
        let old_chain: Vec<Vec<u8>> = pem_certs(&old_cert)?.into_iter().map(|c| c.to_vec()).collect();
        let trust = RootCa::new(&root, b"", b"", DEFAULT_NODE_CERT_EXPIRY, b"", SystemTime::now())
            .map_err(|e| fatal!("the stored root CA is unusable: {e}"))?;
        let me = trust
            .verify_peer(&old_chain, SystemTime::now())
            .map_err(|e| fatal!("the current certificate does not verify: {e}"))?;
        match renewal_reason(ch.clone(), &me.node_id, &old_cert).await? {
            Some(why) => eprintln!("renewing: {why}"),
            None => {
                println!("No renewal needed for node {}", me.node_id);
                return Ok(());
            }
        }
    }
    let (key_pem, csr) = new_key_and_csr()?;
    let (node_id, cert) = request_certificate(ch, &csr, "", timeout).await?;
    // Authenticate once with the new certificate (the CA records which root issued what this
    // node now uses; root rotations wait for that), and pick up the cluster's root bundle if
    // the new certificate verifies against it (after a root rotation it is the new root).
    let bundle = match fetch_root_with(addr, &root, &cert, key_pem.as_bytes()).await {
        Ok(served) if served != root && verify_issued(&served, &cert, &key_pem).is_ok() => {
            eprintln!(
                "picked up the cluster's new root CA ({})",
                swarmca_core::rootca::digest_string(&served)
            );
            served
        }
        Ok(_) => root,
        Err(e) => {
            eprintln!("warning: could not confirm the new certificate with the manager: {}", e.0);
            root
        }
    };
    let (_, role) = verify_issued(&bundle, &cert, &key_pem)?;
    write_certs(cert_dir, &bundle, &cert, &key_pem)?;
    println!("Renewed the certificate of node {node_id} ({})", role.trim_start_matches("swarm-"));
    Ok(())
}

/// GetRootCACertificate over mTLS with `cert_pem`/`key_pem`, trusting `roots_pem`.
async fn fetch_root_with(
    addr: &str,
    roots_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Vec<u8>, Fatal> {
    let cfg = tls_config(Trust::Roots { roots_pem, identity: Some((cert_pem, key_pem)) })?;
    let ch = connect(addr, cfg, swarmca_core::role::MANAGER_OU).await?;
    let mut req = tonic::Request::new(GetRootCaCertificateRequest {});
    req.set_timeout(CALL_TIMEOUT);
    Ok(CaClient::new(ch)
        .get_root_ca_certificate(req)
        .await
        .map_err(|s| fatal!("GetRootCACertificate failed: {}", status_msg(&s)))?
        .into_inner()
        .certificate)
}

fn write_certs(dir: &Path, root: &[u8], cert: &[u8], key_pem: &str) -> Result<(), Fatal> {
    files::ensure_private_dir(dir)?;
    // Key first, then certificate: a crash in between leaves a key that does not match the
    // old certificate, which `renew` reports clearly, instead of a certificate without its key.
    files::write_atomic(dir, ROOT_CERT, root, false)?;
    files::write_atomic(dir, NODE_KEY, key_pem.as_bytes(), true)?;
    files::write_atomic(dir, NODE_CERT, cert, false)?;
    Ok(())
}
