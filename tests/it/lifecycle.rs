//! Run/Stop/Ready state machine, status long-poll bounds, and the original's lifecycle defects
//! (docs/behaviour.md §3.3, §3.10, §8.2, §8.4).

use std::sync::Arc;
use std::time::Duration;

use swarmca_proto::node_ca_server::NodeCa;
use swarmca_server::ServerError;
use swarmca_store::{Op, Store};
use swarmca_types::issuance_status::State;
use swarmca_types::NodeCertificateStatusRequest;
use tonic::{Code, Request};

use crate::fixture::*;

fn status_req(id: &str) -> Request<NodeCertificateStatusRequest> {
    Request::new(NodeCertificateStatusRequest { node_id: id.to_string() })
}

#[tokio::test]
async fn run_twice_and_stop_twice_are_errors_without_side_effects() {
    let f = Fixture::start().await;
    assert!(matches!(f.server.run().await, Err(ServerError::AlreadyRunning)));
    assert!(f.server.is_running(), "a refused run leaves the running one alone");
    f.server.stop().await.unwrap();
    assert!(matches!(f.server.stop().await, Err(ServerError::AlreadyStopped)));
    assert!(!f.server.is_running());
}

#[tokio::test]
async fn calls_before_run_and_after_stop_are_aborted() {
    let mut f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let (csr, _) = new_csr();
    let e = f.server.issue_node_certificate(Request::new(join_req(&csr, &f.worker_token))).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Aborted, "CA signer is stopped"));
    let e = f.server.node_certificate_status(status_req(&f.worker.node_id)).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    f.run_server().await;
    f.server.issue_node_certificate(Request::new(join_req(&csr, &f.worker_token))).await.unwrap();
    f.server.stop().await.unwrap();
    let e = f.server.issue_node_certificate(Request::new(join_req(&csr, &f.worker_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    // A new term works again (the original could panic on a second Run after a cancelled one).
    f.run_server().await;
    f.server.issue_node_certificate(Request::new(join_req(&csr, &f.worker_token))).await.unwrap();
}

#[tokio::test]
async fn dropping_the_run_future_returns_to_stopped() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let s = f.server.clone();
    let h = tokio::spawn(async move { s.run().await });
    tokio::time::timeout(Duration::from_secs(5), f.server.ready()).await.unwrap();
    h.abort();
    let _ = h.await;
    assert!(!f.server.is_running());
    let s = f.server.clone();
    let h = tokio::spawn(async move { s.run().await });
    tokio::time::timeout(Duration::from_secs(5), f.server.ready()).await.unwrap();
    f.server.stop().await.unwrap();
    assert!(h.await.unwrap().is_ok());
}

#[tokio::test]
async fn missing_cluster_object_is_an_error_not_a_crash() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let other = swarmca_server::CaServer::new(
        swarmca_server::ServerConfig::new("no-such-cluster"),
        swarmca_server::ServerDeps {
            store: std::sync::Arc::new(f.store.clone()),
            clock: std::sync::Arc::new(swarmca_server::SystemClock),
            entropy: swarmca_server::shared_entropy(swarmca_server::OsEntropy),
            peers: std::sync::Arc::new(swarmca_server::TlsPeerCertificates),
        },
        None,
    );
    let r = tokio::time::timeout(Duration::from_secs(5), other.run()).await.unwrap();
    assert!(matches!(r, Err(ServerError::ClusterNotFound(_))), "{r:?}");
    assert!(!other.is_running(), "a failed run must not leave a 'running' server without a loop");
    let (csr, _) = new_csr();
    let e = other.issue_node_certificate(Request::new(join_req(&csr, "x"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
}

#[tokio::test]
async fn status_waits_until_final_then_answers() {
    let f = Fixture::start().await;
    let id = f.worker.node_id.clone();
    // Put the worker back into RENEW without a CSR the CA can sign: it stays non-final only
    // until the signer marks it; use a verify-only race instead: set UNKNOWN (never signed).
    f.set_state(&id, State::Unknown).await;
    let waiter = f.spawn_status(&id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "UNKNOWN is not final: the call must wait");
    f.set_state(&id, State::Issued).await;
    let r = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(r.into_inner().status.unwrap().state, State::Issued as i32);
}

#[tokio::test]
async fn status_is_bounded_by_the_callers_deadline() {
    let f = Fixture::start().await;
    let id = f.worker.node_id.clone();
    f.set_state(&id, State::Unknown).await;
    let mut req = status_req(&id);
    req.metadata_mut().insert("grpc-timeout", "200m".parse().unwrap());
    let t0 = tokio::time::Instant::now();
    let e = f.server.node_certificate_status(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn status_is_cut_by_server_stop() {
    let f = Fixture::start().await;
    let id = f.worker.node_id.clone();
    f.set_state(&id, State::Unknown).await;
    let waiter = f.spawn_status(&id);
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.server.stop().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Cancelled);
}

#[tokio::test]
async fn status_of_a_node_deleted_while_waiting_is_not_found() {
    let f = Fixture::start().await;
    let id = f.worker.node_id.clone();
    f.set_state(&id, State::Unknown).await;
    let waiter = f.spawn_status(&id);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let n = f.node(&id).await.unwrap();
    f.store.commit(vec![Op::DeleteNode(n)]).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn empty_requests_are_invalid_argument() {
    let f = Fixture::start().await;
    let e = f.server.node_certificate_status(status_req("")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "InvalidArgument"));
    let e = f.server.issue_node_certificate(Request::new(join_req(b"", &f.worker_token))).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "InvalidArgument"));
}

#[tokio::test]
async fn oversized_csr_is_refused_before_anything_is_stored() {
    let f = Fixture::start().await;
    let before = f.store.revision();
    let big = vec![b'A'; 64 * 1024 + 1];
    let e = f.server.issue_node_certificate(Request::new(join_req(&big, &f.worker_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(f.store.revision(), before);
}

#[tokio::test]
async fn stop_racing_joins_gives_aborted_never_a_panic() {
    let f = Fixture::start().await;
    let (csr, _) = new_csr();
    let mut joins = Vec::new();
    for _ in 0..64 {
        let s = f.server.clone();
        let req = join_req(&csr, &f.worker_token);
        joins.push(tokio::spawn(async move { s.issue_node_certificate(Request::new(req)).await }));
    }
    f.server.stop().await.unwrap();
    for j in joins {
        match j.await.expect("join task must not panic") {
            Ok(_) => {}
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
}

#[tokio::test]
async fn leader_catch_up_signs_what_was_pending_while_stopped() {
    let mut f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    // A join accepted by a previous leader, never signed.
    let (csr, _) = new_csr();
    let id = new_id();
    let mut node = issued_node(
        &Creds { node_id: id.clone(), cert_pem: Vec::new(), key_pem: Vec::new() },
        swarmca_core::role::Role::Worker,
    );
    let c = node.certificate.as_mut().unwrap();
    c.csr = csr.clone();
    c.status.as_mut().unwrap().state = State::Pending as i32;
    f.store.commit(vec![Op::CreateNode(node)]).await.unwrap();
    f.run_server().await;
    let r = f.final_status(&id).await;
    assert_eq!(r.status.unwrap().state, State::Issued as i32);
    assert_eq!(r.certificate.unwrap().csr, csr);
}

#[tokio::test]
async fn pending_membership_is_not_signed_but_renew_is() {
    let f = Fixture::start().await;
    let (csr, _) = new_csr();
    let id = new_id();
    let mut node = issued_node(
        &Creds { node_id: id.clone(), cert_pem: Vec::new(), key_pem: Vec::new() },
        swarmca_core::role::Role::Worker,
    );
    node.spec.as_mut().unwrap().membership = swarmca_types::node_spec::Membership::Pending as i32;
    let c = node.certificate.as_mut().unwrap();
    c.csr = csr;
    c.status.as_mut().unwrap().state = State::Pending as i32;
    f.store.commit(vec![Op::CreateNode(node)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state_of(&f.node(&id).await.unwrap()), State::Pending as i32);
    f.set_state(&id, State::Renew).await;
    let r = f.final_status(&id).await;
    assert_eq!(r.status.unwrap().state, State::Issued as i32, "RENEW is signed whatever the membership");
}

/// A follower serves joins and status from the shared store but signs nothing; once a leader
/// runs, the join is signed and the follower's waiting status call returns it.
#[tokio::test]
async fn follower_accepts_joins_and_the_leader_signs_them() {
    let mut f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let mut cfg = swarmca_server::ServerConfig::new(f.cluster_id.clone());
    cfg.retry_interval = Duration::from_millis(50);
    let follower = swarmca_server::CaServer::new(
        cfg,
        swarmca_server::ServerDeps {
            store: std::sync::Arc::new(f.store.clone()),
            clock: std::sync::Arc::new(swarmca_server::SystemClock),
            entropy: swarmca_server::shared_entropy(swarmca_server::OsEntropy),
            peers: std::sync::Arc::new(swarmca_server::TlsPeerCertificates),
        },
        Some(f.root.clone()),
    );
    let fo = follower.clone();
    let _h = tokio::spawn(async move { fo.run_follower().await });
    tokio::time::timeout(Duration::from_secs(5), follower.ready()).await.unwrap();
    let (csr, _) = new_csr();
    let id = follower
        .issue_node_certificate(Request::new(join_req(&csr, &f.worker_token)))
        .await
        .unwrap()
        .into_inner()
        .node_id;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state_of(&f.node(&id).await.unwrap()), State::Pending as i32, "followers do not sign");
    assert_eq!(follower.pending_count(), 0);
    let fo = follower.clone();
    let id2 = id.clone();
    let waiter = tokio::spawn(async move { fo.node_certificate_status(status_req(&id2)).await });
    // Token rotation reaches the follower too.
    f.update_cluster(|c| {
        c.root_ca.as_mut().unwrap().join_tokens.as_mut().unwrap().worker = "SWMTKN-1-rotated".into()
    })
    .await;
    let probe = follower.clone();
    eventually(5, || {
        let p = probe.clone();
        let csr = csr.clone();
        async move { p.issue_node_certificate(Request::new(join_req(&csr, "SWMTKN-1-rotated"))).await.is_ok() }
    })
    .await;
    f.run_server().await;
    let r =
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(r.status.unwrap().state, State::Issued as i32);
    assert_eq!(r.certificate.unwrap().csr, csr);
}

/// A store handle over the fixture's store that can misbehave: refuse every commit, as a
/// fenced handle's are once the leadership it was made for is gone (`refuse`); or give watches
/// that never deliver anything nor close (`deaf`), so a manager behind it keeps what it read
/// when it started, as one whose cluster watch broke does until it reads the cluster again.
/// Everything else goes through.
struct OddStore {
    inner: swarmca_store::MemStore,
    refuse: bool,
    deaf: bool,
    refused: std::sync::atomic::AtomicUsize,
    deaf_watches:
        std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<std::sync::Arc<swarmca_store::Event>>>>,
}

impl OddStore {
    fn new(inner: swarmca_store::MemStore, refuse: bool, deaf: bool) -> Arc<OddStore> {
        Arc::new(OddStore {
            inner,
            refuse,
            deaf,
            refused: Default::default(),
            deaf_watches: Default::default(),
        })
    }
}

impl Store for OddStore {
    fn view(
        &self,
        f: swarmca_store::WatchFilter,
    ) -> swarmca_store::BoxFuture<'_, Result<swarmca_store::Snapshot, swarmca_store::StoreError>> {
        self.inner.view(f)
    }
    fn get_node<'a>(
        &'a self,
        id: &'a str,
    ) -> swarmca_store::BoxFuture<'a, Result<Option<swarmca_store::Node>, swarmca_store::StoreError>> {
        self.inner.get_node(id)
    }
    fn get_cluster<'a>(
        &'a self,
        id: &'a str,
    ) -> swarmca_store::BoxFuture<'a, Result<Option<swarmca_store::Cluster>, swarmca_store::StoreError>> {
        self.inner.get_cluster(id)
    }
    fn commit(&self, ops: Vec<Op>) -> swarmca_store::BoxFuture<'_, Result<u64, swarmca_store::StoreError>> {
        if !self.refuse {
            return self.inner.commit(ops);
        }
        self.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Err(swarmca_store::StoreError::Unavailable("fenced: leadership lost".into())) })
    }
    fn view_and_watch(
        &self,
        f: swarmca_store::WatchFilter,
    ) -> swarmca_store::BoxFuture<
        '_,
        Result<(swarmca_store::Snapshot, swarmca_store::Watch), swarmca_store::StoreError>,
    > {
        if !self.deaf {
            return self.inner.view_and_watch(f);
        }
        Box::pin(async move {
            let snapshot = self.inner.view(f).await?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            self.deaf_watches.lock().unwrap().push(tx);
            Ok((snapshot, swarmca_store::Watch::new(rx)))
        })
    }
}

/// A leader term whose writer refuses every commit (a deposed leader behind a fence) signs
/// but lands nothing: the join stays PENDING. The next term, writing normally, issues it.
#[tokio::test]
async fn a_term_writing_through_a_refusing_writer_lands_nothing_and_the_next_term_issues() {
    let mut f = Fixture::start().await;
    f.stop_server().await;
    let writer = OddStore::new(f.store.clone(), true, false);
    let (s, w) = (f.server.clone(), writer.clone());
    let run = tokio::spawn(async move { s.run_with_writer(w).await });
    tokio::time::timeout(Duration::from_secs(5), f.server.ready()).await.unwrap();
    let (csr, _) = new_csr();
    let id = f.join_in_process(&csr, &f.worker_token).await;
    eventually(5, || {
        let n = writer.refused.load(std::sync::atomic::Ordering::SeqCst);
        async move { n > 0 }
    })
    .await;
    assert_eq!(state_of(&f.node(&id).await.unwrap()), State::Pending as i32, "nothing landed");
    f.server.stop().await.unwrap();
    run.await.unwrap().unwrap();
    f.run_server().await;
    assert_eq!(f.final_status(&id).await.status.unwrap().state, State::Issued as i32);
}

/// A manager that has not seen a token rotation (its cluster watch delivers nothing) still
/// refuses the rotated-out token: a join also checks the token against the cluster it reads
/// from the store before creating the node. Found by the simulator (a follower cut off from the
/// store across a rotation accepted the old token just after the link came back).
#[tokio::test]
async fn a_manager_that_missed_a_token_rotation_refuses_the_old_token() {
    let f = Fixture::with(Opts { run: false, ..Opts::default() }).await;
    let deaf = OddStore::new(f.store.clone(), false, true);
    let follower = swarmca_server::CaServer::new(
        swarmca_server::ServerConfig::new(f.cluster_id.clone()),
        swarmca_server::ServerDeps {
            store: deaf,
            clock: Arc::new(swarmca_server::SystemClock),
            entropy: swarmca_server::shared_entropy(swarmca_server::OsEntropy),
            peers: Arc::new(swarmca_server::TlsPeerCertificates),
        },
        Some(f.root.clone()),
    );
    let fo = follower.clone();
    let _h = tokio::spawn(async move { fo.run_follower().await });
    tokio::time::timeout(Duration::from_secs(5), follower.ready()).await.unwrap();
    let (csr, _) = new_csr();
    let nodes = || async { f.store.view(swarmca_store::WatchFilter::All).await.unwrap().nodes.len() };
    let before = nodes().await;
    // Before the rotation, the token works through this manager.
    follower.issue_node_certificate(Request::new(join_req(&csr, &f.worker_token))).await.unwrap();
    assert_eq!(nodes().await, before + 1);

    f.update_cluster(|c| {
        c.root_ca.as_mut().unwrap().join_tokens.as_mut().unwrap().worker = "SWMTKN-1-rotated".into()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        follower.join_tokens().unwrap().worker,
        f.worker_token,
        "the manager did not see the rotation"
    );
    let err =
        follower.issue_node_certificate(Request::new(join_req(&csr, &f.worker_token))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(nodes().await, before + 1, "no node created with the rotated-out token");
    // The manager tokens were not rotated: they still work.
    follower.issue_node_certificate(Request::new(join_req(&csr, &f.manager_token))).await.unwrap();
    assert_eq!(nodes().await, before + 2);
}

/// A manager's certificate files, kept in memory.
#[derive(Default)]
struct MemFiles(std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>);

impl swarmca_server::selfcert::OwnFiles for MemFiles {
    fn write_root(&self, _pem: &[u8]) -> Result<(), swarmca_server::files::FileError> {
        Ok(())
    }
    fn write_identity(
        &self,
        cert_pem: &[u8],
        sealed_key: &[u8],
    ) -> Result<(), swarmca_server::files::FileError> {
        self.0.lock().unwrap().push((cert_pem.to_vec(), sealed_key.to_vec()));
        Ok(())
    }
}

#[tokio::test]
async fn a_running_manager_renews_its_own_certificate_as_it_ages() {
    use std::time::SystemTime;
    use swarmca_core::role::Role;
    use swarmca_core::seal::{DataKey, Purpose};
    use swarmca_server::selfcert::{KeyFile, SelfCert};
    let f = Fixture::with(Opts::default()).await;
    // The manager's certificate is 85 days into its 90: past the latest point of its renewal.
    let old = swarmca_testkit::pki::issue(
        &f.root,
        &f.manager.node_id,
        Role::Manager,
        &f.cluster_id,
        SystemTime::now() - Duration::from_secs(85 * 24 * 3600),
        serial(),
    );
    let mut n = f.store.get_node(&f.manager.node_id).await.unwrap().unwrap();
    n.certificate.as_mut().unwrap().certificate = old.cert_pem.clone();
    f.store.commit(vec![Op::UpdateNode(n)]).await.unwrap();
    let files = Arc::new(MemFiles::default());
    let data_key = DataKey::generate(&mut swarmca_server::OsEntropy).unwrap();
    let tls = swarmca_server::listener::DynamicTls::new(&old.cert_pem, &old.key_pem, &f.root_pem).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        SelfCert {
            store: Arc::new(f.store.clone()),
            server: f.server.clone(),
            tls,
            cluster_id: f.cluster_id.clone(),
            node_id: f.manager.node_id.clone(),
            files: files.clone(),
            key_file: std::sync::Mutex::new(KeyFile {
                cert_pem: old.cert_pem.clone(),
                key_pem: zeroize::Zeroizing::new(old.key_pem.clone()),
                data_key: data_key.clone(),
            }),
        }
        .run(async {
            let _ = stopped.await;
        }),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (cert, sealed) = loop {
        if let Some(w) = files.0.lock().unwrap().last().cloned() {
            break w;
        }
        assert!(std::time::Instant::now() < deadline, "no renewed certificate written within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Renewed once: the next renewal is scheduled from the new certificate, not at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(files.0.lock().unwrap().len(), 1, "renewed again at once");
    let _ = stop.send(());
    task.await.unwrap();
    // A new manager certificate for the same node, from the cluster's root, valid for longer.
    assert_ne!(cert, old.cert_pem);
    f.root.verify_peer(&swarmca_core::pem::certs_der(&cert), SystemTime::now()).unwrap();
    let (cn, ous, os, _) = crate::conformance::subject_of(&cert);
    assert_eq!(
        (cn, ous, os),
        (f.manager.node_id.clone(), vec!["swarm-manager".to_string()], vec![f.cluster_id.clone()])
    );
    // Its key file is sealed under the data key and holds the key the certificate is for.
    let key = data_key.open(Purpose::NodeKey, &f.cluster_id, &sealed).unwrap();
    let pair = rcgen::KeyPair::from_pem(std::str::from_utf8(&key).unwrap()).unwrap();
    let der = swarmca_core::pem::certs_der(&cert).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(parsed.public_key().raw, rcgen::PublicKeyData::subject_public_key_info(&pair).as_slice());
    // The node holds it, issued through the CA like any renewal, with its issuer reported.
    let node = f.store.get_node(&f.manager.node_id).await.unwrap().unwrap();
    assert_eq!(node.certificate.as_ref().unwrap().certificate, cert);
    assert!(node.description.and_then(|d| d.tls_info).is_some_and(|t| !t.cert_issuer_public_key.is_empty()));
}
