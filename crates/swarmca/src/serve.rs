//! `swarmca serve`: open (or create) the cluster in the data directory, then serve the CA over
//! TLS and the admin API on the control socket until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use swarmca_core::seal::UnlockKey;
use swarmca_proto::admin::admin_server::AdminServer;
use swarmca_proto::ca_server::CaServer as CaService;
use swarmca_proto::node_ca_server::NodeCaServer as NodeCaService;
use swarmca_server::bootstrap::{BootstrapError, NewCluster};
use swarmca_server::custody::{CustodyError, Keys};
use swarmca_server::launch::{Launch, Launched, MAX_REQUEST_BYTES};
use swarmca_server::unlock::{AdminGate, NotStarted, Unlocking};
use swarmca_server::{
    shared_entropy, Election, OsEntropy, ServerConfig, Solo, SystemClock, TlsPeerCertificates,
};
use swarmca_store::{RedbStore, Store};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admin_cli::socket_path;
use crate::ha::{self, EtcdArgs};
use crate::{fatal, Fatal};
use swarmca_server::files::{self, NODE_CERT, NODE_KEY, ROOT_CERT};
use swarmca_server::listener::{self, DynamicTls};
use swarmca_server::selfcert::{KeyFile, SelfCert};

/// The store file inside the data directory.
pub const STORE_FILE: &str = "swarmca.redb";

/// Present while the store file must still be rewritten after its keys were sealed.
const REWRITE_MARK: &str = ".swarmca.redb.rewrite";

impl InitOptions {
    /// The files and flags read into what the server crate creates a cluster with.
    fn to_new_cluster(&self) -> Result<NewCluster, Fatal> {
        let root = match &self.ca_cert {
            Some(path) => {
                let cert = std::fs::read(path)
                    .map_err(|e| fatal!("cannot read --ca-cert {}: {e}", path.display()))?;
                let key = match &self.ca_key {
                    Some(k) if k.to_string_lossy().starts_with("pkcs11:") => {
                        k.to_string_lossy().as_bytes().to_vec()
                    }
                    Some(k) => {
                        std::fs::read(k).map_err(|e| fatal!("cannot read --ca-key {}: {e}", k.display()))?
                    }
                    None => Vec::new(),
                };
                Some((cert, key))
            }
            None => None,
        };
        let external_cas = self
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
        Ok(NewCluster { cert_expiry: self.cert_expiry, external_cas, root })
    }
}

/// What `serve` uses when it creates the cluster.
pub struct InitOptions {
    /// Node certificate validity.
    pub cert_expiry: Option<Duration>,
    /// External CAs to sign through.
    pub external_ca: Vec<crate::ExternalCaArg>,
    /// A root certificate to use instead of a generated one.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Its key (absent: external signing only): a PEM file, or a `pkcs11:` URI.
    pub ca_key: Option<std::path::PathBuf>,
    /// The PKCS#11 module holding CA keys named by `pkcs11:` URIs.
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// The file of its user PIN (else `$SWARMCA_PKCS11_PIN`).
    pub pkcs11_pin_file: Option<std::path::PathBuf>,
}

/// The environment variable the PKCS#11 user PIN may be given in.
pub const PKCS11_PIN_ENV: &str = "SWARMCA_PKCS11_PIN";

impl InitOptions {
    /// The PKCS#11 module, opened and ready to resolve `pkcs11:` keys, if one is configured.
    fn external_keys(&self) -> Result<Option<Arc<dyn swarmca_core::rootca::ExternalKeys>>, Fatal> {
        let Some(module) = &self.pkcs11_module else { return Ok(None) };
        let pin = match &self.pkcs11_pin_file {
            Some(f) => {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(f)
                    .map_err(|e| fatal!("cannot read --pkcs11-pin-file {}: {e}", f.display()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(fatal!(
                        "--pkcs11-pin-file {} is readable by others; run `chmod 600 {}`",
                        f.display(),
                        f.display()
                    ));
                }
                zeroize::Zeroizing::new(
                    std::fs::read_to_string(f)
                        .map_err(|e| fatal!("cannot read --pkcs11-pin-file {}: {e}", f.display()))?,
                )
            }
            None => zeroize::Zeroizing::new(std::env::var(PKCS11_PIN_ENV).map_err(|_| {
                fatal!(
                    "--pkcs11-module needs the token's user PIN: --pkcs11-pin-file FILE or ${PKCS11_PIN_ENV}"
                )
            })?),
        };
        let pin = zeroize::Zeroizing::new(pin.trim_end_matches(['\r', '\n']).to_string());
        let keys = swarmca_server::pkcs11::Pkcs11Keys::open(module, pin).map_err(|e| fatal!("{e}"))?;
        Ok(Some(Arc::new(keys)))
    }
}

/// A store and the election of its managers.
type StoreAndElection = (Arc<dyn Store>, Arc<dyn Election>);

/// The embedded store of `data_dir` (owner-only), and its single manager's election.
fn open_embedded(data_dir: &Path) -> Result<StoreAndElection, Fatal> {
    let path = data_dir.join(STORE_FILE);
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open(&path).map_err(|e| fatal!("cannot open the store {}: {e}", path.display()))?,
    );
    files::owner_only(&path)?;
    Ok((store.clone(), Arc::new(Solo::new(store))))
}

/// The environment variable an unlock key may be given in (`serve` reads it once at start).
pub const UNLOCK_KEY_ENV: &str = "SWARMCA_UNLOCK_KEY";

/// The unlock key given at start: `--unlock-key-file`, else `$SWARMCA_UNLOCK_KEY`, if any.
fn unlock_key_given(file: Option<&Path>) -> Result<Option<UnlockKey>, Fatal> {
    let text = match file {
        Some(f) => zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| fatal!("cannot read --unlock-key-file {}: {e}", f.display()))?,
        ),
        None => match std::env::var(UNLOCK_KEY_ENV) {
            Ok(v) => zeroize::Zeroizing::new(v),
            Err(_) => return Ok(None),
        },
    };
    UnlockKey::parse(&text).map(Some).map_err(|e| fatal!("the unlock key given at start: {e}"))
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
    unlock_key_file: Option<&Path>,
) -> Result<(), Fatal> {
    files::ensure_private_dir(data_dir).map_err(|e| fatal!("unusable data directory: {e}"))?;
    let certs = data_dir.join("certificates");
    files::ensure_private_dir(&certs)?;
    // The store, and how managers agree on the leader: alone on the embedded store, or
    // through etcd's election when several managers share an etcd cluster.
    let (clock, entropy) = (SystemClock, shared_entropy(OsEntropy));
    // The seal key: what the cluster's data key is wrapped under while autolock is off. The
    // embedded store keeps it beside the store file; managers sharing etcd are each given it.
    let seal_key = match &etcd {
        Some(args) => match &args.seal_key_file {
            Some(path) => files::read_seal_key(path)?,
            None => {
                return Err(fatal!(
                    "--seal-key-file is required with --etcd: every manager needs the same seal key to open the cluster's keys (make one with `swarmca seal-key generate FILE`)"
                ))
            }
        },
        None => {
            let mut os = OsEntropy;
            let (key, created) = files::load_or_create_seal_key(data_dir, &mut os)?;
            if created {
                info!(file = %data_dir.join(files::SEAL_KEY_FILE).display(), "created the seal key of this data directory; back it up apart from the store");
            }
            key
        }
    };
    let mut keys = Keys {
        seal: Some(seal_key),
        unlock: unlock_key_given(unlock_key_file)?,
        external: init.external_keys()?,
    };
    let (store, election): StoreAndElection = match &etcd {
        Some(args) => {
            let store = ha::connect(args).await?;
            let election = Arc::new(ha::election(&store, args));
            (Arc::new(store), election)
        }
        None => open_embedded(data_dir)?,
    };
    let socket = socket_path(data_dir);
    let control_listener = claim_socket(&socket).await?;
    let socket_owner = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&socket).map_err(|e| fatal!("control socket {}: {e}", socket.display()))?.uid()
    };
    // The TLS port is taken once the keys are open (a locked manager keeps it closed); a busy
    // port is reported now rather than after the cluster has been created.
    drop(tokio::net::TcpListener::bind(listen).await.map_err(|e| fatal!("cannot listen on {listen}: {e}"))?);
    // Stopped by SIGINT/SIGTERM, or when serving ends.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal_task = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("signal received: shutting down");
            let _ = stop_tx.send(true);
        })
    };
    // The control socket answers from the start: while this manager is locked, with how to
    // unlock it (and `swarmca unlock` reaches it).
    let (gate, attempts) = AdminGate::new();
    let admin = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(gate.clone()))
            .serve_with_incoming_shutdown(
                futures_unix(control_listener, socket_owner),
                stopped(stop_rx.clone()),
            ),
    );
    let finish_admin = |admin: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>| async move {
        match admin.await {
            Ok(Err(e)) => error!(error = %e, "admin socket"),
            Err(e) => error!(error = %e, "admin socket task"),
            Ok(Ok(())) => {}
        }
    };

    // A store of the earlier, clear format is rewritten once its keys are sealed (its free
    // pages may still hold them). The mark is set before sealing and cleared after the
    // rewrite, so a crash in between rewrites at the next start.
    let rewrite_mark = data_dir.join(REWRITE_MARK);
    if etcd.is_none() {
        let snap = store
            .view(swarmca_store::WatchFilter::All)
            .await
            .map_err(|e| fatal!("cannot read the store: {e}"))?;
        if snap.clusters.iter().any(|c| c.sealing.is_none()) {
            files::write_atomic(data_dir, REWRITE_MARK, b"", false)?;
        }
    }

    let own = match (certs.join(NODE_CERT).exists(), certs.join(NODE_KEY).exists()) {
        (true, true) => Some((files::read(&certs, NODE_CERT)?, files::read(&certs, NODE_KEY)?)),
        _ => None,
    };
    let new_cluster = init.to_new_cluster()?;
    let given = keys.unlock.is_some();
    let mut attempts = attempts;
    let started = Unlocking {
        store: &*store,
        election: &*election,
        clock: &clock,
        entropy: &entropy,
        keys: &mut keys,
        attempts: &mut attempts,
    }
    .start(
        &new_cluster,
        own,
        stopped(stop_rx.clone()),
        || {
            println!(
                "This manager is locked: autolock is on and its keys are sealed under the unlock key.\nIt serves nothing until unlocked:\n\n    swarmca unlock --data-dir {}\n",
                data_dir.display()
            )
        },
        || {
            if etcd.is_some() {
                println!("No cluster in etcd yet: waiting for the leadership to create it...");
            }
        },
    )
    .await
    .map_err(|e| match e {
        NotStarted::Stopped => fatal!(""),
        NotStarted::Refused(BootstrapError::Refused(m) | BootstrapError::Removed(m)) => {
            fatal!("{m} (certificates in {})", certs.display())
        }
        NotStarted::Refused(BootstrapError::Custody(e @ CustodyError::WrongKey(_))) if given => {
            fatal!("{e} (the key given with --unlock-key-file or ${UNLOCK_KEY_ENV})")
        }
        NotStarted::Refused(e) => fatal!("{e}"),
    });
    let id = match started {
        Ok(x) => {
            gate.unlocked();
            x
        }
        Err(f) => {
            let _ = stop_tx.send(true);
            signal_task.abort();
            finish_admin(admin).await;
            let _ = std::fs::remove_file(&socket);
            // Stopped by a signal while locked: a clean exit.
            return if f.0.is_empty() { Ok(()) } else { Err(f) };
        }
    };
    let tcp =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| fatal!("cannot listen on {listen}: {e}"))?;
    if !id.created {
        if init.cert_expiry.is_some_and(|d| d != id.expiry) {
            warn!("--cert-expiry applies only when the cluster is created; use `swarmca cluster update --cert-expiry`");
        }
        if !init.external_ca.is_empty() || init.ca_cert.is_some() {
            warn!("--external-ca/--ca-cert apply only when the cluster is created; use `swarmca cluster update --external-ca`");
        }
    }
    files::write_atomic(&certs, ROOT_CERT, &id.root.ca_cert, false)?;
    files::write_atomic(&certs, NODE_KEY, &id.key_file, true)?;
    let (store, election) = if etcd.is_none() && rewrite_mark.exists() {
        // The clear keys the earlier version wrote may linger in the file's free pages: the
        // store is rewritten with its live objects only.
        drop((store, election));
        let path = data_dir.join(STORE_FILE);
        RedbStore::rewrite(&path).map_err(|e| fatal!("cannot rewrite the store {}: {e}", path.display()))?;
        std::fs::remove_file(&rewrite_mark)
            .map_err(|e| fatal!("cannot remove {}: {e}", rewrite_mark.display()))?;
        open_embedded(data_dir)?
    } else {
        (store, election)
    };
    if id.migrated {
        println!("The cluster's keys were stored in clear by an earlier version; they are sealed now. Backups made before this start still hold them in clear.");
    }
    files::write_atomic(&certs, NODE_CERT, &id.cert_pem, false)?;
    let mut config = ServerConfig::new(id.cluster_id.clone());
    config.root_reconcile_interval = rotation_interval.max(Duration::from_millis(100));
    let Launched { store, server, manager, control } = Launch {
        id: &id,
        store,
        election,
        keys: &keys,
        config,
        clock: Arc::new(clock),
        entropy,
        peers: Arc::new(TlsPeerCertificates),
        observer: None,
    }
    .build()
    .map_err(|e| fatal!("{e}"))?;
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

    gate.open(control);
    let tls = DynamicTls::new(&id.cert_pem, &id.key_pem, &swarmca_server::trust_pem(&id.root))?;
    let selfcert = tokio::spawn(
        SelfCert {
            store: store.clone(),
            server: server.clone(),
            tls: tls.clone(),
            cluster_id: id.cluster_id.clone(),
            node_id: id.node_id.clone(),
            files: Arc::new(swarmca_server::selfcert::CertsDir(certs.clone())),
            key_file: std::sync::Mutex::new(KeyFile {
                cert_pem: id.cert_pem.clone(),
                key_pem: id.key_pem.clone(),
                data_key: id.data_key.clone(),
            }),
        }
        .run(stopped(stop_rx.clone())),
    );
    let grpc = tonic::transport::Server::builder()
        .add_service(CaService::new(server.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(NodeCaService::new(server.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(listener::incoming(tcp, tls.server_config()?), stopped(stop_rx));
    let served = grpc.await;
    let _ = stop_tx.send(true);
    signal_task.abort();
    selfcert.abort();
    manager.shutdown();
    if let Err(e) = run.await {
        error!(error = %e, "the CA manager task failed");
    }
    finish_admin(admin).await;
    let _ = std::fs::remove_file(&socket);
    served.map_err(|e| fatal!("gRPC server failed: {e}"))?;
    info!("stopped cleanly");
    Ok(())
}

/// Resolves once `rx` says stop.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The control socket's connections as a stream tonic accepts: only from the user that owns
/// the socket, or root. The socket is owner-only already; the peer's credentials
/// (SO_PEERCRED) are checked too, so a socket made reachable by a permissive umask, a
/// bind mount or a chmod still admits no one else.
fn futures_unix(
    l: tokio::net::UnixListener,
    owner: u32,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::UnixListenerStream::new(l).filter_map(move |conn| match conn {
        Ok(s) => match s.peer_cred() {
            Ok(c) if c.uid() == owner || c.uid() == 0 => Some(Ok(s)),
            Ok(c) => {
                warn!(uid = c.uid(), pid = ?c.pid(), "control socket: refused a connection from another user");
                None
            }
            Err(e) => {
                warn!(error = %e, "control socket: refused a connection whose peer is unknown");
                None
            }
        },
        Err(e) => Some(Err(e)),
    })
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
