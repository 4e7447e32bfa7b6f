//! `swarmca serve`: open (or create) the cluster in the data directory, then serve the CA over
//! TLS and the admin API on the control socket until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarmca_core::entropy::Entropy;
use swarmca_core::role::Role;
use swarmca_core::rootca::{digest, generate_root, RootCa, DEFAULT_NODE_CERT_EXPIRY, DEFAULT_ROOT_CN};
use swarmca_core::token::generate_join_token;
use swarmca_proto::admin::admin_server::AdminServer;
use swarmca_proto::ca_server::CaServer as CaService;
use swarmca_proto::node_ca_server::NodeCaServer as NodeCaService;
use swarmca_server::{
    shared_entropy, CaServer, Control, Election, Manager, OsEntropy, ServerConfig, ServerDeps, Solo, SystemClock,
    TlsPeerCertificates,
};
use swarmca_store::{Op, RedbStore, Store, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{
    Annotations, CaConfig, Certificate, Cluster, ClusterSpec, IssuanceStatus, JoinTokens, Node, NodeSpec,
    RootCa as ApiRootCa,
};
use tokio::sync::watch;
use tracing::{error, info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::admin_cli::socket_path;
use crate::files::{self, NODE_CERT, NODE_KEY, ROOT_CERT};
use crate::ha::{self, EtcdArgs};
use crate::listener::{self, DynamicTls};
use crate::selfcert::SelfCert;
use crate::{fatal, Fatal};

/// The store file inside the data directory.
pub const STORE_FILE: &str = "swarmca.redb";

/// What `serve` uses when it creates the cluster.
pub struct InitOptions {
    /// Node certificate validity.
    pub cert_expiry: Option<Duration>,
    /// External CAs to sign through.
    pub external_ca: Vec<crate::ExternalCaArg>,
    /// A root certificate to use instead of a generated one.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Its key (absent: external signing only).
    pub ca_key: Option<std::path::PathBuf>,
}

/// This manager's identity and the cluster it serves.
struct Identity {
    cluster_id: String,
    node_id: String,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    tokens: JoinTokens,
    root: ApiRootCa,
    expiry: Duration,
    created: bool,
}

fn serial() -> Result<[u8; 20], Fatal> {
    let mut s = [0u8; 20];
    OsEntropy.fill(&mut s)?;
    Ok(s)
}

fn expiry_of(c: &Cluster) -> Duration {
    swarmca_core::rootca::cluster_cert_expiry(c)
}

/// A certificate issued to this manager, with its new key and the CSR it was made from.
struct OwnCert {
    cert: Vec<u8>,
    key: Vec<u8>,
    csr: Vec<u8>,
}

/// Issues a manager certificate for `node_id` with a new key: signed by the cluster root key,
/// or through the cluster's external CAs when the root has no key here.
async fn issue_own(
    root: &ApiRootCa,
    external: &[swarmca_types::ExternalCa],
    expiry: Duration,
    node_id: &str,
    cluster_id: &str,
) -> Result<OwnCert, Fatal> {
    let now = SystemTime::now();
    let ca =
        RootCa::from_api(root, expiry, now).map_err(|e| fatal!("the cluster root CA is unusable: {e}"))?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?.pem()?.into_bytes();
    let urls = swarmca_server::external::filter_external_ca_urls(&root.ca_cert, &root.ca_cert, external);
    let cert = if !urls.is_empty() {
        // Like SwarmKit, prefer the external CA when one is configured for this root.
        let roots: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&root.ca_cert)
            .filter_map(|p| p.ok().map(|p| p.contents))
            .collect();
        let tls = swarmca_server::external::client_tls_config(&roots, None)?;
        let ext = swarmca_server::ExternalCa::new(urls, Vec::new(), Some(tls), Duration::from_secs(5));
        let req = swarmca_server::SignRequest::node(&csr, node_id, Role::Manager, cluster_id);
        let cert = ext
            .sign(&req)
            .await
            .map_err(|e| fatal!("the external CA did not sign this manager's certificate: {e}"))?;
        ca.check_issued(&cert, &csr, node_id, Role::Manager, cluster_id, now)
            .map_err(|e| fatal!("the external CA returned an unusable certificate for this manager: {e}"))?;
        cert
    } else if ca.can_sign() {
        ca.sign_csr(&csr, node_id, Role::Manager, cluster_id, now, serial()?)?
    } else {
        return Err(fatal!("the cluster root CA has no key here and no external CA is configured for it; cannot issue this manager's certificate"));
    };
    Ok(OwnCert { cert, key: key.serialize_pem().into_bytes(), csr })
}

fn external_of(c: &Cluster) -> Vec<swarmca_types::ExternalCa> {
    c.spec.as_ref().and_then(|s| s.ca_config.as_ref()).map(|ca| ca.external_cas.clone()).unwrap_or_default()
}

fn manager_node(node_id: &str, csr: Vec<u8>, cert: Vec<u8>) -> Node {
    Node {
        id: node_id.to_string(),
        role: Role::Manager.to_proto(),
        spec: Some(NodeSpec {
            desired_role: Role::Manager.to_proto(),
            membership: Membership::Accepted as i32,
            ..Default::default()
        }),
        certificate: Some(Certificate {
            role: Role::Manager.to_proto(),
            csr,
            status: Some(IssuanceStatus { state: State::Issued as i32, err: String::new() }),
            certificate: cert,
            cn: node_id.to_string(),
        }),
        ..Default::default()
    }
}

/// First start: a root (generated, or given), the cluster, join tokens, and this manager's
/// node and certificate.
async fn create_cluster(store: &dyn Store, init: &InitOptions) -> Result<Identity, Fatal> {
    let now = SystemTime::now();
    let mut entropy = OsEntropy;
    let expiry = init.cert_expiry.unwrap_or(DEFAULT_NODE_CERT_EXPIRY);
    let (ca_cert, ca_key) = match &init.ca_cert {
        Some(path) => {
            let cert =
                std::fs::read(path).map_err(|e| fatal!("cannot read --ca-cert {}: {e}", path.display()))?;
            let key = match &init.ca_key {
                Some(k) => {
                    std::fs::read(k).map_err(|e| fatal!("cannot read --ca-key {}: {e}", k.display()))?
                }
                None => Vec::new(),
            };
            RootCa::new(&cert, if key.is_empty() { b"" } else { &cert }, &key, expiry, b"", now)
                .map_err(|e| fatal!("unusable --ca-cert/--ca-key: {e}"))?;
            (cert, key)
        }
        None => {
            let g = generate_root(DEFAULT_ROOT_CN, now, serial()?)?;
            (g.cert_pem, g.key_pem)
        }
    };
    let cluster_id = swarmca_core::id::new_id(&mut entropy)?;
    let d = digest(&ca_cert);
    let tokens = JoinTokens {
        worker: generate_join_token(&d, false, &mut entropy)?,
        manager: generate_join_token(&d, false, &mut entropy)?,
    };
    let root = ApiRootCa {
        ca_key,
        ca_cert_hash: swarmca_core::rootca::digest_string(&ca_cert),
        ca_cert,
        join_tokens: Some(tokens.clone()),
        root_rotation: None,
        last_forced_rotation: 0,
    };
    let external = init
        .external_ca
        .iter()
        .map(|e| {
            e.to_spec().map(|s| swarmca_types::ExternalCa {
                url: s.url,
                ca_cert: s.ca_cert,
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let node_id = swarmca_core::id::new_id(&mut entropy)?;
    let OwnCert { cert: cert_pem, key: key_pem, csr } =
        issue_own(&root, &external, expiry, &node_id, &cluster_id).await?;
    let cluster = Cluster {
        id: cluster_id.clone(),
        spec: Some(ClusterSpec {
            annotations: Some(Annotations { name: "default".into(), ..Default::default() }),
            ca_config: Some(CaConfig {
                node_cert_expiry: swarmca_types::prost_types::Duration::try_from(expiry).ok(),
                external_cas: external,
                ..Default::default()
            }),
            ..Default::default()
        }),
        root_ca: Some(root.clone()),
        ..Default::default()
    };
    store
        .commit(vec![
            Op::CreateCluster(cluster),
            Op::CreateNode(manager_node(&node_id, csr, cert_pem.clone())),
        ])
        .await
        .map_err(|e| fatal!("cannot store the new cluster: {e}"))?;
    Ok(Identity { cluster_id, node_id, cert_pem, key_pem, tokens, root, expiry, created: true })
}

/// CN and first O of a PEM certificate, and whether it is past half its validity.
fn cert_facts(pem: &[u8]) -> Option<(String, String, bool)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, c) = X509Certificate::from_der(&p.contents).ok()?;
    let cn = c.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let org = c.subject().iter_organization().next()?.as_str().ok()?.to_string();
    let nb = c.validity().not_before.timestamp();
    let na = c.validity().not_after.timestamp();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    let now = i64::try_from(now).ok()?;
    let stale = now > nb + (na - nb) / 2;
    Some((cn, org, stale))
}

/// Later starts: the stored cluster, and this manager's certificate from the data directory
/// (re-issued when missing, stale, or not from the current root).
async fn reopen(store: &dyn Store, cluster: Cluster, certs: &Path) -> Result<Identity, Fatal> {
    let root = cluster.root_ca.clone().ok_or_else(|| fatal!("the stored cluster has no root CA"))?;
    let tokens = root.join_tokens.clone().unwrap_or_default();
    let expiry = expiry_of(&cluster);
    let files_ok = certs.join(NODE_CERT).exists() && certs.join(NODE_KEY).exists();
    let existing = if files_ok {
        let cert = files::read(certs, NODE_CERT)?;
        let key = files::read(certs, NODE_KEY)?;
        let (cn, org, stale) = cert_facts(&cert)
            .ok_or_else(|| fatal!("{} is not a valid node certificate", certs.join(NODE_CERT).display()))?;
        if org != cluster.id {
            return Err(fatal!(
                "{} belongs to cluster {org}, but the store holds cluster {}; wrong data directory?",
                certs.join(NODE_CERT).display(),
                cluster.id
            ));
        }
        let verifies = RootCa::from_api(&root, expiry, SystemTime::now())
            .ok()
            .and_then(|ca| {
                let chain: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&cert)
                    .filter_map(|p| p.ok().map(|p| p.contents))
                    .collect();
                ca.verify_peer(&chain, SystemTime::now()).ok()
            })
            .is_some();
        Some((cn, cert, key, stale || !verifies))
    } else {
        None
    };
    let (node_id, cert_pem, key_pem) = match existing {
        Some((node_id, cert_pem, key_pem, false)) => (node_id, cert_pem, key_pem),
        other => {
            let node_id = match &other {
                Some((id, ..)) => id.clone(),
                None => swarmca_core::id::new_id(&mut OsEntropy)?,
            };
            warn!(node = %node_id, "issuing a new certificate for this manager (missing, stale, or from another root)");
            let OwnCert { cert: cert_pem, key: key_pem, csr } =
                issue_own(&root, &external_of(&cluster), expiry, &node_id, &cluster.id).await?;
            let node = manager_node(&node_id, csr, cert_pem.clone());
            let op = match store.get_node(&node_id).await? {
                Some(old) => Op::UpdateNode(Node { meta: old.meta, ..node }),
                None => Op::CreateNode(node),
            };
            store.commit(vec![op]).await.map_err(|e| fatal!("cannot store this manager's node: {e}"))?;
            (node_id, cert_pem, key_pem)
        }
    };
    Ok(Identity { cluster_id: cluster.id, node_id, cert_pem, key_pem, tokens, root, expiry, created: false })
}

/// Fails if another server answers on the control socket; removes a stale socket file.
async fn claim_socket(path: &Path) -> Result<tokio::net::UnixListener, Fatal> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(fatal!(
                "another swarmca server is running on this data directory ({} answers)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| fatal!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .map_err(|e| fatal!("cannot create control socket {}: {e}", path.display()))?;
    files::owner_only(path)?;
    Ok(l)
}

/// `swarmca serve`: with the embedded store in the data directory, or (`etcd`) as one of
/// several managers sharing an etcd cluster.
pub async fn serve(
    data_dir: &Path,
    listen: SocketAddr,
    init: InitOptions,
    rotation_interval: Duration,
    etcd: Option<EtcdArgs>,
) -> Result<(), Fatal> {
    files::ensure_private_dir(data_dir).map_err(|Fatal(m)| fatal!("unusable data directory: {m}"))?;
    let certs = data_dir.join("certificates");
    files::ensure_private_dir(&certs)?;
    // The store, and how managers agree on the leader: alone on the embedded store, or
    // through etcd's election when several managers share an etcd cluster.
    let (store, election): (Arc<dyn Store>, Arc<dyn Election>) = match &etcd {
        Some(args) => {
            let store = ha::connect(args).await?;
            let election = Arc::new(ha::election(&store, args));
            (Arc::new(store), election)
        }
        None => {
            let store_path = data_dir.join(STORE_FILE);
            let store: Arc<dyn Store> = Arc::new(
                RedbStore::open(&store_path)
                    .map_err(|e| fatal!("cannot open the store {}: {e}", store_path.display()))?,
            );
            (store.clone(), Arc::new(Solo::new(store)))
        }
    };
    let socket = socket_path(data_dir);
    let control_listener = claim_socket(&socket).await?;
    let tcp =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| fatal!("cannot listen on {listen}: {e}"))?;

    let mut snap = store.view(WatchFilter::All).await?;
    // Several managers may start at once on an empty store: only the leader creates the
    // cluster, through a store fenced on its term; the others find it.
    let mut init_term = None;
    if snap.clusters.is_empty() {
        if etcd.is_some() {
            println!("No cluster in etcd yet: waiting for the leadership to create it...");
        }
        let term = election.campaign("").await.map_err(|e| fatal!("cannot campaign for the leadership: {e}"))?;
        snap = store.view(WatchFilter::All).await?;
        init_term = Some(term);
    }
    let id = match (snap.clusters.len(), &init_term) {
        (0, Some(term)) => create_cluster(&*term.store(), &init).await?,
        (0, None) => return Err(fatal!("no cluster in the store")),
        (1, _) => {
            let c = snap.clusters.into_iter().next().ok_or_else(|| fatal!("cluster vanished"))?;
            if init.cert_expiry.is_some_and(|d| d != expiry_of(&c)) {
                warn!("--cert-expiry applies only when the cluster is created; use `swarmca cluster update --cert-expiry`");
            }
            if !init.external_ca.is_empty() || init.ca_cert.is_some() {
                warn!("--external-ca/--ca-cert apply only when the cluster is created; use `swarmca cluster update --external-ca`");
            }
            reopen(&*store, c, &certs).await?
        }
        (n, _) => return Err(fatal!("the store holds {n} clusters; expected one")),
    };
    if let Some(term) = init_term {
        term.resign().await.map_err(|e| fatal!("cannot resign the leadership after creating the cluster: {e}"))?;
    }
    files::write_atomic(&certs, ROOT_CERT, &id.root.ca_cert, false)?;
    files::write_atomic(&certs, NODE_KEY, &id.key_pem, true)?;
    files::write_atomic(&certs, NODE_CERT, &id.cert_pem, false)?;

    let root_ca = RootCa::from_api(&id.root, id.expiry, SystemTime::now())?;
    let mut config = ServerConfig::new(id.cluster_id.clone());
    config.root_reconcile_interval = rotation_interval.max(Duration::from_millis(100));
    let server = CaServer::new(
        config,
        ServerDeps {
            store: store.clone(),
            clock: Arc::new(SystemClock),
            entropy: shared_entropy(OsEntropy),
            peers: Arc::new(TlsPeerCertificates),
        },
        Some(root_ca),
    );
    server
        .update_tls_credentials(&id.cert_pem, &id.key_pem)
        .map_err(|e| fatal!("this manager's credentials are unusable for the external CA client: {e}"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let manager = Manager::new(server.clone(), election, id.node_id.clone());
    let mut run = {
        let m = manager.clone();
        tokio::spawn(async move { m.run().await })
    };
    tokio::select! {
        _ = server.ready() => {}
        r = &mut run => {
            return Err(fatal!("the CA manager stopped before serving: {}", match r {
                Ok(()) => "stopped".to_string(),
                Err(e) => e.to_string(),
            }));
        }
    }
    info!(cluster = %id.cluster_id, node = %id.node_id, %listen, "swarmca is serving");
    if id.created {
        println!("Swarm initialized: cluster {}, this manager is node {}.", id.cluster_id, id.node_id);
    } else {
        println!("Swarm reopened: cluster {}, this manager is node {}.", id.cluster_id, id.node_id);
    }
    println!("Serving on {listen} (TLS); admin socket {}.\n", socket.display());
    println!(
        "To add a worker to this swarm, run:\n\n    swarmca join --token {} {listen}\n",
        id.tokens.worker
    );
    println!(
        "To add a manager to this swarm, run:\n\n    swarmca join --token {} {listen}\n",
        id.tokens.manager
    );

    let signal_task = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("signal received: shutting down");
            let _ = stop_tx.send(true);
        })
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let control = {
        let manager = manager.clone();
        Control::new(server.clone(), Some(id.node_id.clone())).with_leader_lookup(Arc::new(move || {
            let manager = manager.clone();
            Box::pin(async move { manager.leader().await })
        }))
    };
    let control_incoming = futures_unix(control_listener);
    let admin = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(control))
            .serve_with_incoming_shutdown(control_incoming, stopped(stop_rx.clone())),
    );
    let mut trust = id.root.ca_cert.clone();
    if let Some(r) = &id.root.root_rotation {
        trust.push(b'\n');
        trust.extend_from_slice(&r.ca_cert);
    }
    let tls = DynamicTls::new(&id.cert_pem, &id.key_pem, &trust)?;
    let selfcert = tokio::spawn(
        SelfCert {
            store: store.clone(),
            server: server.clone(),
            tls: tls.clone(),
            cluster_id: id.cluster_id.clone(),
            node_id: id.node_id.clone(),
            certs_dir: certs.clone(),
        }
        .run(stop_rx.clone()),
    );
    let grpc = tonic::transport::Server::builder()
        .add_service(CaService::new(server.clone()))
        .add_service(NodeCaService::new(server.clone()))
        .serve_with_incoming_shutdown(listener::incoming(tcp, tls.server_config()?), stopped(stop_rx));
    let served = grpc.await;
    let _ = stop_tx.send(true);
    signal_task.abort();
    selfcert.abort();
    manager.shutdown();
    if let Err(e) = run.await {
        error!(error = %e, "the CA manager task failed");
    }
    match admin.await {
        Ok(Err(e)) => error!(error = %e, "admin socket"),
        Err(e) => error!(error = %e, "admin socket task"),
        Ok(Ok(())) => {}
    }
    let _ = std::fs::remove_file(&socket);
    served.map_err(|e| fatal!("gRPC server failed: {e}"))?;
    info!("stopped cleanly");
    Ok(())
}

/// The control socket's connections as a stream tonic accepts.
fn futures_unix(
    l: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    tokio_stream::wrappers::UnixListenerStream::new(l)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
