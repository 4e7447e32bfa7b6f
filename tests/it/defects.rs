//! The original's defects (docs/defects.md §8.3–§8.4) and authorization edges, each with a test that fails
//! on the original behaviour.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarmca_proto::node_ca_server::NodeCa;
use swarmca_server::{shared_entropy, CaServer, OsEntropy, ServerConfig, ServerDeps, SystemClock};
use swarmca_store::{BoxFuture, MemStore, Op, Snapshot, Store, StoreError, Watch, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::{
    BlacklistedCertificate, IssueNodeCertificateRequest, Node, NodeCertificateStatusRequest,
};
use tonic::{Code, Request};
use x509_parser::prelude::*;

use crate::fixture::*;

type Hook = Box<dyn FnOnce(&MemStore) + Send>;

/// A store that runs a hook (a "concurrent writer") right before the first commit that writes
/// an ISSUED certificate, so that commit meets a sequence conflict.
struct RacingStore {
    inner: MemStore,
    hook: Mutex<Option<Hook>>,
}

impl Store for RacingStore {
    fn view(&self, f: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        self.inner.view(f)
    }
    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>> {
        self.inner.get_node(id)
    }
    fn get_cluster<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<swarmca_types::Cluster>, StoreError>> {
        self.inner.get_cluster(id)
    }
    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        let writes_issued =
            ops.iter().any(|op| matches!(op, Op::UpdateNode(n) if state_of(n) == State::Issued as i32));
        if writes_issued {
            let hook = self.hook.lock().unwrap().take();
            if let Some(h) = hook {
                h(&self.inner);
            }
        }
        self.inner.commit(ops)
    }
    fn view_and_watch(&self, f: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        self.inner.view_and_watch(f)
    }
}

fn spki_of_cert(pem: &[u8]) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let (_, c) = X509Certificate::from_der(&p.contents).unwrap();
    c.public_key().raw.to_vec()
}

fn spki_of_csr(pem: &[u8]) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let (_, c) = X509CertificationRequest::from_der(&p.contents).unwrap();
    c.certification_request_info.subject_pki.raw.to_vec()
}

fn status_req(id: &str) -> Request<NodeCertificateStatusRequest> {
    Request::new(NodeCertificateStatusRequest { node_id: id.to_string() })
}

/// Spec §8.3: a renewal with a new CSR lands between signing CSR1 and writing its certificate.
/// The original wrote cert(CSR1) onto the node now holding CSR2, marked ISSUED. We must drop the
/// stale result and issue a certificate for CSR2's key.
#[tokio::test]
async fn conflict_retry_never_pairs_a_certificate_with_another_csr() {
    let f = Fixture::with(Opts { run: false, peers: PeerSource::Metadata, ..Opts::default() }).await;
    let (csr1, _) = new_csr();
    let (csr2, _) = new_csr();
    let worker_id = f.worker.node_id.clone();
    let csr2_hook = csr2.clone();
    let id_hook = worker_id.clone();
    let store = Arc::new(RacingStore {
        inner: f.store.clone(),
        hook: Mutex::new(Some(Box::new(move |s: &MemStore| {
            // The client timed out and renewed again with a new key.
            let mut n = futures_ready(s.get_node(&id_hook)).unwrap().unwrap();
            let c = n.certificate.as_mut().unwrap();
            c.csr = csr2_hook;
            c.certificate.clear();
            c.status.as_mut().unwrap().state = State::Renew as i32;
            s.commit_sync(vec![Op::UpdateNode(n)]).unwrap();
        }))),
    });
    let mut cfg = ServerConfig::new(f.cluster_id.clone());
    cfg.retry_interval = Duration::from_millis(50);
    let server = CaServer::new(
        cfg,
        ServerDeps {
            store: store.clone(),
            clock: Arc::new(SystemClock),
            entropy: shared_entropy(OsEntropy),
            peers: Arc::new(MetadataPeers),
        },
        Some(f.root.clone()),
    );
    let s = server.clone();
    let _run = tokio::spawn(async move { s.run().await });
    tokio::time::timeout(Duration::from_secs(5), server.ready()).await.unwrap();
    let req = IssueNodeCertificateRequest { csr: csr1.clone(), ..Default::default() };
    let r = server.issue_node_certificate(as_peer(Request::new(req), &f.worker)).await.unwrap();
    assert_eq!(r.into_inner().node_id, worker_id);
    let resp = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = server.node_certificate_status(status_req(&worker_id)).await.unwrap().into_inner();
            // Wait for the certificate of the second request.
            if r.certificate.as_ref().is_some_and(|c| c.csr == csr2) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(store.hook.lock().unwrap().is_none(), "the race was exercised");
    let cert = resp.certificate.unwrap();
    assert_eq!(resp.status.unwrap().state, State::Issued as i32);
    assert_eq!(spki_of_cert(&cert.certificate), spki_of_csr(&csr2), "certificate must be for CSR2's key");
    let _ = server.stop().await;
}

/// Polls a future that the in-memory store guarantees to be ready.
fn futures_ready<T>(f: BoxFuture<'_, T>) -> T {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = f;
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("in-memory store future not ready"),
    }
}

/// Without a CA key nothing can sign locally: joins stay PENDING (recoverable), never FAILED,
/// and are issued once a key appears. A deleted node leaves the pending set (the original kept
/// re-signing it forever).
#[tokio::test]
async fn recoverable_signer_errors_keep_nodes_pending_and_deleted_nodes_leave_pending() {
    let f = Fixture::with(Opts { with_key: false, ..Opts::default() }).await;
    let (csr, _) = new_csr();
    let a = f.join_in_process(&csr, &f.worker_token).await;
    let b = f.join_in_process(&csr, &f.worker_token).await;
    let server = f.server.clone();
    eventually(5, || {
        let s = server.clone();
        async move { s.pending_count() == 2 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // several retry ticks
    for id in [&a, &b] {
        assert_eq!(state_of(&f.node(id).await.unwrap()), State::Pending as i32);
    }
    let n = f.node(&a).await.unwrap();
    f.store.commit(vec![Op::DeleteNode(n)]).await.unwrap();
    eventually(5, || {
        let s = server.clone();
        async move { s.pending_count() == 1 }
    })
    .await;
    // The key arrives (e.g. the operator fixed the cluster): the remaining node is issued.
    let key = f.root_key_pem.clone();
    f.update_cluster(move |c| c.root_ca.as_mut().unwrap().ca_key = key.clone()).await;
    let r = f.final_status(&b).await;
    assert_eq!(r.status.unwrap().state, State::Issued as i32);
    eventually(5, || {
        let s = server.clone();
        async move { s.pending_count() == 0 }
    })
    .await;
}

/// Spec §8.4: an empty configured token must never match an empty request token.
#[tokio::test]
async fn empty_configured_token_never_matches() {
    let f = Fixture::start().await;
    f.update_cluster(|c| c.root_ca.as_mut().unwrap().join_tokens.as_mut().unwrap().worker.clear()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (csr, _) = new_csr();
    let e = f.server.issue_node_certificate(Request::new(join_req(&csr, ""))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The manager token still works.
    f.server.issue_node_certificate(Request::new(join_req(&csr, &f.manager_token))).await.unwrap();
}

/// Spec §8.4: a bad RootCA in the cluster is logged and surfaced; the previous signer stays.
#[tokio::test]
async fn update_root_ca_failure_is_surfaced_and_keeps_the_signer() {
    let f = Fixture::start().await;
    assert!(f.server.root_ca_error().is_none());
    let before = f.server.root_ca().unwrap().digest_string();
    let mut cluster = f.cluster().await;
    cluster.root_ca.as_mut().unwrap().ca_key =
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec();
    let direct = f.server.update_root_ca(&cluster);
    assert!(matches!(direct, Err(swarmca_server::ServerError::InvalidRootCa(_))), "{direct:?}");
    f.store.commit(vec![Op::UpdateCluster(cluster)]).await.unwrap();
    let server = f.server.clone();
    eventually(5, || {
        let s = server.clone();
        async move { s.root_ca_error().is_some() }
    })
    .await;
    assert_eq!(f.server.root_ca().unwrap().digest_string(), before);
    // Still signs with the previous (valid) signer.
    let (csr, _) = new_csr();
    let id = f.join_in_process(&csr, &f.worker_token).await;
    let r = f.final_status(&id).await;
    assert_eq!(r.status.unwrap().state, State::Issued as i32);
}

/// Blacklisted certificates never authenticate: a removed node's renewal falls to the token
/// path and is refused.
#[tokio::test]
async fn blacklisted_certificate_cannot_renew() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let wid = f.worker.node_id.clone();
    f.update_cluster(move |c| {
        c.blacklisted_certificates.insert(wid.clone(), BlacklistedCertificate { expiry: None });
    })
    .await;
    let mut c = f.node_ca(addr, Some(&f.worker)).await;
    let (csr, _) = new_csr();
    let e = c
        .issue_node_certificate(IssueNodeCertificateRequest { csr, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(state_of(&f.node(&f.worker.node_id).await.unwrap()), State::Issued as i32, "node untouched");
}

/// A renewal for a node that was deleted is NotFound with SwarmKit's message.
#[tokio::test]
async fn renewal_of_a_deleted_node_is_not_found() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let n = f.node(&f.worker.node_id).await.unwrap();
    f.store.commit(vec![Op::DeleteNode(n)]).await.unwrap();
    let mut c = f.node_ca(addr, Some(&f.worker)).await;
    let (csr, _) = new_csr();
    let e = c
        .issue_node_certificate(IssueNodeCertificateRequest { csr, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("not found when attempting to renew certificate"), "{}", e.message());
}

fn forwarded(
    mut req: Request<IssueNodeCertificateRequest>,
    cn: &str,
    ou: &str,
    org: &str,
) -> Request<IssueNodeCertificateRequest> {
    let md = req.metadata_mut();
    md.insert("forwarded_cert", "true".parse().unwrap());
    md.insert("forwarded_cert_cn", cn.parse().unwrap());
    md.insert("forwarded_cert_ou", ou.parse().unwrap());
    md.insert("forwarded_cert_org", org.parse().unwrap());
    req
}

/// Forwarded identities are trusted only from a manager of this cluster; a forwarded empty
/// identity falls through to the token path (a join through a follower).
#[tokio::test]
async fn forwarded_identity_is_trusted_only_from_managers() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let (csr, _) = new_csr();
    let renew = || IssueNodeCertificateRequest { csr: csr.clone(), ..Default::default() };

    let mut mgr = f.node_ca(addr, Some(&f.manager)).await;
    let r = mgr
        .issue_node_certificate(forwarded(
            Request::new(renew()),
            &f.worker.node_id,
            "swarm-worker",
            &f.cluster_id,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.node_id, f.worker.node_id, "a manager may forward a worker's renewal");

    let mut wrk = f.node_ca(addr, Some(&f.worker)).await;
    let e = wrk
        .issue_node_certificate(forwarded(
            Request::new(renew()),
            &f.manager.node_id,
            "swarm-manager",
            &f.cluster_id,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "a worker cannot forward");

    // A join forwarded by a manager carries blank identity and a token.
    let mut join = Request::new(join_req(&csr, &f.worker_token));
    join.metadata_mut().insert("forwarded_cert", "true".parse().unwrap());
    let r = mgr.issue_node_certificate(join).await.unwrap().into_inner();
    assert_ne!(r.node_id, f.manager.node_id, "must not renew the forwarder's own certificate");

    // A forwarded blacklisted identity is refused too (the original did not check it).
    let wid = f.worker.node_id.clone();
    f.update_cluster(move |c| {
        c.blacklisted_certificates.insert(wid.clone(), BlacklistedCertificate { expiry: None });
    })
    .await;
    let e = mgr
        .issue_node_certificate(forwarded(
            Request::new(renew()),
            &f.worker.node_id,
            "swarm-worker",
            &f.cluster_id,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// A certificate from another root, presented in-process, is not a renewal identity.
#[tokio::test]
async fn certificate_of_another_root_is_not_an_identity() {
    let f = Fixture::with(Opts { peers: PeerSource::Metadata, ..Opts::default() }).await;
    let g = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let foreign = issue_creds(&g.root, &f.worker.node_id, swarmca_core::role::Role::Worker, &f.cluster_id);
    let (csr, _) = new_csr();
    let req = IssueNodeCertificateRequest { csr: csr.clone(), ..Default::default() };
    let e = f.server.issue_node_certificate(as_peer(Request::new(req), &foreign)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let req = IssueNodeCertificateRequest { csr, ..Default::default() };
    let r = f.server.issue_node_certificate(as_peer(Request::new(req), &f.worker)).await.unwrap();
    assert_eq!(r.into_inner().node_id, f.worker.node_id);
}
