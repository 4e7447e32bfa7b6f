//! The equivalent of SwarmKit's `NewTestCA`: an in-memory store holding a cluster with a fresh
//! root, three pre-issued nodes (manager, manager of another org, worker), a running CA server
//! with a 50 ms retry ticker, and (on demand) a real tonic server with mTLS on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarmca_core::entropy::Entropy;
use swarmca_core::role::Role;
use swarmca_core::rootca::{digest, generate_root, RootCa, DEFAULT_NODE_CERT_EXPIRY};
use swarmca_core::token::generate_join_token;
use swarmca_proto::ca_client::CaClient;
use swarmca_proto::node_ca_client::NodeCaClient;
use swarmca_server::peer::{CallInfo, PeerCertificates};
use swarmca_server::tls::{client_tls_config, server_tls_config};
use swarmca_server::{
    shared_entropy, CaServer, OsEntropy, ServerConfig, ServerDeps, SystemClock, TlsPeerCertificates,
};
use swarmca_store::{MemStore, Op, Store};
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{
    Certificate, Cluster, IssuanceStatus, IssueNodeCertificateRequest, JoinTokens, Node,
    NodeCertificateStatusRequest, NodeCertificateStatusResponse, NodeSpec,
};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

pub use swarmca_testkit::pki::Creds;

/// Knobs of a fixture.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Keep the CA key in the cluster object (false: verify-only root, nothing can sign).
    pub with_key: bool,
    /// Start the server's run loop.
    pub run: bool,
    /// Where the server takes peer certificates from.
    pub peers: PeerSource,
    /// Interval of the root-rotation reconciler.
    pub reconcile_interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerSource {
    Tls,
    Metadata,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            with_key: true,
            run: true,
            peers: PeerSource::Tls,
            reconcile_interval: Duration::from_millis(20),
        }
    }
}

/// In-process calls carry the caller's certificate chain in this metadata key (PEM), the way a
/// simulator would; the test-only [`MetadataPeers`] reads it.
pub const TEST_PEER_CERT: &str = "x-test-peer-cert";

/// Peer certificates from request metadata (for in-process tests without TLS).
pub struct MetadataPeers;

impl PeerCertificates for MetadataPeers {
    fn chain(&self, call: &CallInfo<'_>) -> Option<Vec<Vec<u8>>> {
        let v = call.metadata.get(TEST_PEER_CERT)?.to_str().ok()?;
        let pem = v.replace("\\n", "\n");
        let der: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .filter_map(|p| p.ok().map(|p| p.contents))
            .collect();
        (!der.is_empty()).then_some(der)
    }
}

/// Attaches `creds` as the in-process peer certificate.
pub fn as_peer<T>(mut req: tonic::Request<T>, creds: &Creds) -> tonic::Request<T> {
    let flat = String::from_utf8_lossy(&creds.cert_pem).replace('\n', "\\n");
    req.metadata_mut().insert(TEST_PEER_CERT, flat.parse().unwrap());
    req
}

pub struct Fixture {
    pub store: MemStore,
    pub cluster_id: String,
    pub root_pem: Vec<u8>,
    pub root_key_pem: Vec<u8>,
    pub root: RootCa,
    pub worker_token: String,
    pub manager_token: String,
    pub manager: Creds,
    pub other_org_manager: Creds,
    pub worker: Creds,
    pub server_creds: Creds,
    pub server: CaServer,
    run: Option<tokio::task::JoinHandle<Result<(), swarmca_server::ServerError>>>,
    shutdown: Vec<oneshot::Sender<()>>,
}

pub use swarmca_testkit::pki::new_csr;

pub fn serial() -> [u8; 20] {
    let mut s = [0u8; 20];
    OsEntropy.fill(&mut s).unwrap();
    s
}

pub fn issue_creds(root: &RootCa, node_id: &str, role: Role, org: &str) -> Creds {
    swarmca_testkit::pki::issue(root, node_id, role, org, SystemTime::now(), serial())
}

pub fn issued_node(creds: &Creds, role: Role) -> Node {
    Node {
        id: creds.node_id.clone(),
        role: role.to_proto(),
        spec: Some(NodeSpec {
            desired_role: role.to_proto(),
            membership: Membership::Accepted as i32,
            ..Default::default()
        }),
        certificate: Some(Certificate {
            role: role.to_proto(),
            csr: Vec::new(),
            status: Some(IssuanceStatus { state: State::Issued as i32, err: String::new() }),
            certificate: creds.cert_pem.clone(),
            cn: creds.node_id.clone(),
        }),
        ..Default::default()
    }
}

pub fn new_id() -> String {
    swarmca_core::id::new_id(&mut OsEntropy).unwrap()
}

impl Fixture {
    pub async fn start() -> Fixture {
        Fixture::with(Opts::default()).await
    }

    pub async fn with(opts: Opts) -> Fixture {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
        let now = SystemTime::now();
        let generated = generate_root("swarm-test-CA", now, serial()).unwrap();
        let root_pem = generated.cert_pem.clone();
        let root_key_pem = generated.key_pem.clone();
        let root =
            RootCa::new(&root_pem, &root_pem, &root_key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap();
        let cluster_id = new_id();
        let d = digest(&root_pem);
        let worker_token = generate_join_token(&d, false, &mut OsEntropy).unwrap();
        let manager_token = generate_join_token(&d, false, &mut OsEntropy).unwrap();
        let manager = issue_creds(&root, &new_id(), Role::Manager, &cluster_id);
        let other_org_manager = issue_creds(&root, &new_id(), Role::Manager, "swarm-test-org-2");
        let worker = issue_creds(&root, &new_id(), Role::Worker, &cluster_id);
        let server_creds = issue_creds(&root, &new_id(), Role::Manager, &cluster_id);

        let store = MemStore::new();
        let tokens = JoinTokens { worker: worker_token.clone(), manager: manager_token.clone() };
        let key = if opts.with_key { root_key_pem.clone() } else { Vec::new() };
        let cluster = swarmca_core::cluster::new_cluster(&cluster_id, &root_pem, &key, tokens, None);
        store
            .commit(vec![
                Op::CreateCluster(cluster),
                Op::CreateNode(issued_node(&manager, Role::Manager)),
                Op::CreateNode(issued_node(&other_org_manager, Role::Manager)),
                Op::CreateNode(issued_node(&worker, Role::Worker)),
            ])
            .await
            .unwrap();

        let mut cfg = ServerConfig::new(cluster_id.clone());
        cfg.retry_interval = Duration::from_millis(50);
        cfg.root_reconcile_interval = opts.reconcile_interval;
        let peers: Arc<dyn PeerCertificates> = match opts.peers {
            PeerSource::Tls => Arc::new(TlsPeerCertificates),
            PeerSource::Metadata => Arc::new(MetadataPeers),
        };
        let deps = ServerDeps {
            store: Arc::new(store.clone()),
            clock: Arc::new(SystemClock),
            entropy: shared_entropy(OsEntropy),
            peers,
        };
        let server = CaServer::new(cfg, deps, Some(root.clone()));
        let mut f = Fixture {
            store,
            cluster_id,
            root_pem,
            root_key_pem,
            root,
            worker_token,
            manager_token,
            manager,
            other_org_manager,
            worker,
            server_creds,
            server,
            run: None,
            shutdown: Vec::new(),
        };
        if opts.run {
            f.run_server().await;
        }
        f
    }

    /// Another server on the same store (another manager), stopped.
    pub fn extra_server(&self, reconcile_interval: Duration) -> CaServer {
        let mut cfg = ServerConfig::new(self.cluster_id.clone());
        cfg.retry_interval = Duration::from_millis(50);
        cfg.root_reconcile_interval = reconcile_interval;
        let deps = ServerDeps {
            store: Arc::new(self.store.clone()),
            clock: Arc::new(SystemClock),
            entropy: shared_entropy(OsEntropy),
            peers: Arc::new(TlsPeerCertificates),
        };
        CaServer::new(cfg, deps, Some(self.root.clone()))
    }

    /// Stops the run loop started by [`Fixture::run_server`].
    pub async fn stop_server(&mut self) {
        self.server.stop().await.unwrap();
        if let Some(h) = self.run.take() {
            h.await.unwrap().unwrap();
        }
    }

    /// Starts the run loop and waits until ready.
    pub async fn run_server(&mut self) {
        let s = self.server.clone();
        self.run = Some(tokio::spawn(async move { s.run().await }));
        tokio::time::timeout(Duration::from_secs(5), self.server.ready()).await.expect("server ready");
    }

    /// Serves the CA and NodeCA services with mTLS on a loopback port.
    pub async fn serve_tls(&mut self) -> SocketAddr {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let tls = server_tls_config(&self.server_creds.cert_pem, &self.server_creds.key_pem, &self.root_pem);
        // Mounted as a manager mounts them (request size limit included).
        let limit = swarmca_server::launch::MAX_REQUEST_BYTES;
        let router = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(
                swarmca_proto::ca_server::CaServer::new(self.server.clone()).max_decoding_message_size(limit),
            )
            .add_service(
                swarmca_proto::node_ca_server::NodeCaServer::new(self.server.clone())
                    .max_decoding_message_size(limit),
            );
        tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        self.shutdown.push(tx);
        addr
    }

    /// A TLS channel to `addr`, anonymous or presenting `creds`.
    pub async fn channel(&self, addr: SocketAddr, creds: Option<&Creds>) -> Channel {
        let name = if creds.is_some() { "swarm-manager" } else { "swarm-ca" };
        let tls = client_tls_config(
            &self.root_pem,
            name,
            creds.map(|c| (c.cert_pem.as_slice(), c.key_pem.as_slice())),
        );
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    pub async fn node_ca(&self, addr: SocketAddr, creds: Option<&Creds>) -> NodeCaClient<Channel> {
        NodeCaClient::new(self.channel(addr, creds).await)
    }

    pub async fn ca(&self, addr: SocketAddr, creds: Option<&Creds>) -> CaClient<Channel> {
        CaClient::new(self.channel(addr, creds).await)
    }

    pub async fn node(&self, id: &str) -> Option<Node> {
        self.store.get_node(id).await.unwrap()
    }

    pub async fn cluster(&self) -> Cluster {
        self.store.get_cluster(&self.cluster_id).await.unwrap().unwrap()
    }

    /// Read-modify-write of the cluster, retried on conflicts.
    pub async fn update_cluster(&self, f: impl Fn(&mut Cluster)) {
        loop {
            let mut c = self.cluster().await;
            f(&mut c);
            match self.store.commit(vec![Op::UpdateCluster(c)]).await {
                Ok(_) => return,
                Err(swarmca_store::StoreError::SequenceConflict) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// An in-process join with `token`; the new node's ID.
    pub async fn join_in_process(&self, csr: &[u8], token: &str) -> String {
        use swarmca_proto::node_ca_server::NodeCa;
        self.server
            .issue_node_certificate(tonic::Request::new(join_req(csr, token)))
            .await
            .unwrap()
            .into_inner()
            .node_id
    }

    /// An in-process NodeCertificateStatus for `id`, which must answer within 5 s.
    pub async fn final_status(&self, id: &str) -> NodeCertificateStatusResponse {
        use swarmca_proto::node_ca_server::NodeCa;
        let req = tonic::Request::new(NodeCertificateStatusRequest { node_id: id.to_string() });
        tokio::time::timeout(Duration::from_secs(5), self.server.node_certificate_status(req))
            .await
            .expect("status answered within 5 s")
            .unwrap()
            .into_inner()
    }

    /// Sets a node's issuance state in the store.
    pub async fn set_state(&self, id: &str, state: State) {
        self.update_node(id, |n| {
            n.certificate.as_mut().unwrap().status.as_mut().unwrap().state = state as i32
        })
        .await;
    }

    /// A NodeCertificateStatus call for `id`, in-process, running in the background.
    pub fn spawn_status(
        &self,
        id: &str,
    ) -> tokio::task::JoinHandle<
        Result<tonic::Response<swarmca_types::NodeCertificateStatusResponse>, tonic::Status>,
    > {
        use swarmca_proto::node_ca_server::NodeCa;
        let (s, id) = (self.server.clone(), id.to_string());
        tokio::spawn(async move {
            s.node_certificate_status(tonic::Request::new(NodeCertificateStatusRequest { node_id: id })).await
        })
    }

    /// Read-modify-write of a node, retried on conflicts.
    pub async fn update_node(&self, id: &str, f: impl Fn(&mut Node)) {
        loop {
            let mut n = self.node(id).await.unwrap();
            f(&mut n);
            match self.store.commit(vec![Op::UpdateNode(n)]).await {
                Ok(_) => return,
                Err(swarmca_store::StoreError::SequenceConflict) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        if let Some(h) = self.run.take() {
            h.abort();
        }
    }
}

/// A join request.
pub fn join_req(csr: &[u8], token: &str) -> IssueNodeCertificateRequest {
    IssueNodeCertificateRequest { csr: csr.to_vec(), token: token.to_string(), ..Default::default() }
}

/// Polls NodeCertificateStatus (5 s per call, like SwarmKit clients) until a final state.
pub async fn wait_final(client: &mut NodeCaClient<Channel>, node_id: &str) -> NodeCertificateStatusResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut req = tonic::Request::new(NodeCertificateStatusRequest { node_id: node_id.to_string() });
        req.set_timeout(Duration::from_secs(5));
        match client.node_certificate_status(req).await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => {}
            Err(s) => panic!("status poll failed: {s:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "node {node_id} never reached a final state");
    }
}

/// Polls `cond` every 10 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {secs} s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn state_of(n: &Node) -> i32 {
    n.certificate.as_ref().and_then(|c| c.status.as_ref()).map_or(0, |s| s.state)
}
