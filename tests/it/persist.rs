//! The CA server over the persistent store: work acknowledged before a restart is finished
//! after it.

use std::sync::Arc;
use std::time::Duration;

use swarmca_proto::node_ca_server::NodeCa;
use swarmca_server::{
    shared_entropy, CaServer, OsEntropy, ServerConfig, ServerDeps, SystemClock, TlsPeerCertificates,
};
use swarmca_store::{Op, RedbStore, Store, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::NodeCertificateStatusRequest;
use tonic::Request;

use crate::cli::TempDir;
use crate::fixture::*;

fn server_over(store: Arc<dyn Store>, f: &Fixture) -> CaServer {
    let mut cfg = ServerConfig::new(f.cluster_id.clone());
    cfg.retry_interval = Duration::from_millis(50);
    CaServer::new(
        cfg,
        ServerDeps {
            store,
            clock: Arc::new(SystemClock),
            entropy: shared_entropy(OsEntropy),
            peers: Arc::new(TlsPeerCertificates),
        },
        Some(f.root.clone()),
    )
}

/// A join acknowledged while nothing could sign it (no CA key) is still there after the
/// process state is dropped and the store reopened, and is signed once a key is present.
#[tokio::test]
async fn acknowledged_join_survives_reopen_and_is_signed() {
    let f = Fixture::with(Opts { with_key: false, run: false, ..Opts::default() }).await;
    let tmp = TempDir::new("persist");
    let path = tmp.path().join("store.redb");
    let node_id = {
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let snap = f.store.view(WatchFilter::All).await.unwrap();
        let mut ops: Vec<Op> = snap.clusters.into_iter().map(Op::CreateCluster).collect();
        ops.extend(snap.nodes.into_iter().map(Op::CreateNode));
        store.commit(ops).await.unwrap();
        let server = server_over(store.clone(), &f);
        let s = server.clone();
        let run = tokio::spawn(async move { s.run().await });
        tokio::time::timeout(Duration::from_secs(5), server.ready()).await.unwrap();
        let (csr, _) = new_csr();
        let id = server
            .issue_node_certificate(Request::new(join_req(&csr, &f.worker_token)))
            .await
            .unwrap()
            .into_inner()
            .node_id;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(state_of(&store.get_node(&id).await.unwrap().unwrap()), State::Pending as i32);
        run.abort();
        let _ = run.await;
        id
    };
    // "Restart": a new store handle on the same file, and a new server.
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let n = store.get_node(&node_id).await.unwrap().expect("acknowledged node survives");
    assert_eq!(state_of(&n), State::Pending as i32);
    let mut c = store.get_cluster(&f.cluster_id).await.unwrap().unwrap();
    c.root_ca.as_mut().unwrap().ca_key = f.root_key_pem.clone();
    store.commit(vec![Op::UpdateCluster(c)]).await.unwrap();
    let server = server_over(store.clone(), &f);
    let s = server.clone();
    let _run = tokio::spawn(async move { s.run().await });
    tokio::time::timeout(Duration::from_secs(5), server.ready()).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        server
            .node_certificate_status(Request::new(NodeCertificateStatusRequest { node_id: node_id.clone() })),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(r.status.unwrap().state, State::Issued as i32);
}
