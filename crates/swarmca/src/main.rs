//! `swarmca`: a SwarmKit-compatible certificate authority.
//!
//! Wiring only: argument parsing, logging, and assembling the store, the CA server and the
//! TLS listener from the library crates.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use swarmca_core::role::Role;
use swarmca_core::rootca::{digest, generate_root, RootCa, DEFAULT_ROOT_CN};
use swarmca_core::token::generate_join_token;
use swarmca_proto::ca_server::CaServer as CaService;
use swarmca_proto::node_ca_server::NodeCaServer as NodeCaService;
use swarmca_server::tls::server_tls_config;
use swarmca_server::{
    shared_entropy, CaServer, OsEntropy, ServerConfig, ServerDeps, SystemClock, TlsPeerCertificates,
};
use swarmca_store::{MemStore, Op, Store};
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{
    Annotations, CaConfig, Certificate, Cluster, ClusterSpec, IssuanceStatus, JoinTokens, Node,
    NodeSpec, RootCa as ApiRootCa,
};
use tracing::{error, info};

/// A SwarmKit-compatible certificate authority: serves the docker.swarmkit.v1 CA and NodeCA
/// gRPC services so swarm nodes can join with a token and renew with their certificate.
#[derive(Debug, Parser)]
#[command(name = "swarmca", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a cluster and serve the CA over TLS until interrupted (Ctrl-C / SIGTERM).
    ///
    /// This build keeps the cluster in memory: it is lost when the process exits.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2377")]
        listen: SocketAddr,
        /// Validity of issued node certificates (minimum 1h), e.g. 2160h, 30d.
        #[arg(long, default_value = "2160h", value_parser = parse_expiry)]
        cert_expiry: Duration,
    },
}

fn parse_expiry(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d < Duration::from_secs(3600) {
        return Err(format!("minimum certificate expiry time is 1h, got {s}"));
    }
    Ok(d)
}

/// A failure to report on one line.
#[derive(Debug)]
struct Fatal(String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Fatal {
        Fatal(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarmca: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = match cli.command {
        Command::Serve { listen, cert_expiry } => rt.block_on(serve(listen, cert_expiry)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(msg)) => {
            eprintln!("swarmca: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, cert_expiry: Duration) -> Result<(), Fatal> {
    let now = SystemTime::now();
    let mut entropy = OsEntropy;
    let serial = || -> Result<[u8; 20], Fatal> {
        let mut s = [0u8; 20];
        swarmca_core::entropy::Entropy::fill(&mut OsEntropy, &mut s)?;
        Ok(s)
    };
    let root = generate_root(DEFAULT_ROOT_CN, now, serial()?)?;
    let root_ca = RootCa::new(&root.cert_pem, &root.cert_pem, &root.key_pem, cert_expiry, b"", now)?;
    let cluster_id = swarmca_core::id::new_id(&mut entropy)?;
    let d = digest(&root.cert_pem);
    let tokens = JoinTokens {
        worker: generate_join_token(&d, false, &mut entropy)?,
        manager: generate_join_token(&d, false, &mut entropy)?,
    };
    // This manager's own identity: a manager certificate with SANs swarm-manager, its ID, swarm-ca.
    let node_id = swarmca_core::id::new_id(&mut entropy)?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
    let cert_pem = root_ca.sign_csr(csr.as_bytes(), &node_id, Role::Manager, &cluster_id, now, serial()?)?;
    let key_pem = key.serialize_pem();

    let store = MemStore::new();
    let cluster = Cluster {
        id: cluster_id.clone(),
        spec: Some(ClusterSpec {
            annotations: Some(Annotations { name: "default".into(), ..Default::default() }),
            ca_config: Some(CaConfig {
                node_cert_expiry: prost_duration(cert_expiry),
                ..Default::default()
            }),
            ..Default::default()
        }),
        root_ca: Some(ApiRootCa {
            ca_key: root.key_pem.clone(),
            ca_cert: root.cert_pem.clone(),
            ca_cert_hash: root_ca.digest_string(),
            join_tokens: Some(tokens.clone()),
            root_rotation: None,
            last_forced_rotation: 0,
        }),
        ..Default::default()
    };
    let manager = Node {
        id: node_id.clone(),
        role: Role::Manager.to_proto(),
        spec: Some(NodeSpec {
            desired_role: Role::Manager.to_proto(),
            membership: Membership::Accepted as i32,
            ..Default::default()
        }),
        certificate: Some(Certificate {
            role: Role::Manager.to_proto(),
            csr: csr.into_bytes(),
            status: Some(IssuanceStatus { state: State::Issued as i32, err: String::new() }),
            certificate: cert_pem.clone(),
            cn: node_id.clone(),
        }),
        ..Default::default()
    };
    store.commit(vec![Op::CreateCluster(cluster), Op::CreateNode(manager)]).await?;

    let server = CaServer::new(
        ServerConfig::new(cluster_id.clone()),
        ServerDeps {
            store: Arc::new(store),
            clock: Arc::new(SystemClock),
            entropy: shared_entropy(OsEntropy),
            peers: Arc::new(TlsPeerCertificates),
        },
        Some(root_ca),
    );
    let incoming = tonic::transport::server::TcpIncoming::bind(listen)
        .map_err(|e| Fatal(format!("cannot listen on {listen}: {e}")))?;
    let run = {
        let s = server.clone();
        tokio::spawn(async move { s.run().await })
    };
    server.ready().await;
    info!(cluster = %cluster_id, node = %node_id, %listen, "swarmca is serving");
    println!("Swarm CA initialized: cluster {cluster_id}, this manager is node {node_id}.");
    println!("Listening on {listen} (TLS).");
    println!();
    println!("To add a worker to this swarm, run:");
    println!("    docker swarm join --token {} {listen}", tokens.worker);
    println!();
    println!("To add a manager to this swarm, run:");
    println!("    docker swarm join --token {} {listen}", tokens.manager);

    let tls = server_tls_config(&cert_pem, key_pem.as_bytes(), &root.cert_pem);
    let router = tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(CaService::new(server.clone()))
        .add_service(NodeCaService::new(server.clone()));
    router.serve_with_incoming_shutdown(incoming, shutdown_signal()).await?;
    info!("shutting down");
    if let Err(e) = server.stop().await {
        error!(error = %e, "stopping the CA server");
    }
    let _ = run.await;
    Ok(())
}

fn prost_duration(d: Duration) -> Option<swarmca_types::prost_types::Duration> {
    swarmca_types::prost_types::Duration::try_from(d).ok()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
