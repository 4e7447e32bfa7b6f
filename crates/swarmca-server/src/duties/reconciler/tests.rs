//! The reconciler's own safety net: finishing checks the store again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use swarmca_core::rootca::generate_root;
use swarmca_store::{MemStore, Op, Store};
use swarmca_types::{Certificate, Node, RootRotation};

use super::{Finish, Reconciler};
use crate::issuers::desired_issuer;
use crate::signal::Signal;
use crate::{
    shared_entropy, CaServer, OsEntropy, ServerConfig, ServerDeps, SystemClock, TlsPeerCertificates,
};

/// A tracking map that missed a node (its watch event lost, say) can delay a rotation's end,
/// never bring it early: the store is listed again before the root is replaced.
#[tokio::test]
async fn finishing_lists_the_store_again_and_waits_for_a_node_the_tracking_missed() {
    let store = Arc::new(MemStore::new());
    let (old, new) = (
        generate_root("swarm-ca", SystemTime::now(), [1; 20]).unwrap(),
        generate_root("swarm-ca", SystemTime::now(), [2; 20]).unwrap(),
    );
    let mut cluster =
        swarmca_core::cluster::new_cluster("c1", &old.cert_pem, &old.key_pem, Default::default(), None);
    let root = cluster.root_ca.get_or_insert_with(Default::default);
    root.root_rotation = Some(RootRotation {
        ca_cert: new.cert_pem.clone(),
        ca_key: new.key_pem.clone(),
        ..Default::default()
    });
    let rotating = root.clone();
    // A node with a certificate that still reports no issuer at all: not converged.
    let straggler = Node {
        id: "n1".into(),
        certificate: Some(Certificate { certificate: b"a certificate".to_vec(), ..Default::default() }),
        ..Default::default()
    };
    store.commit(vec![Op::CreateCluster(cluster), Op::CreateNode(straggler)]).await.unwrap();
    let deps = ServerDeps {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        entropy: shared_entropy(OsEntropy),
        peers: Arc::new(TlsPeerCertificates),
    };
    let server = CaServer::new(ServerConfig::new("c1"), deps, None::<swarmca_core::rootca::RootCa>);
    let mut r = Reconciler {
        server,
        cancel: Signal::new(false),
        store: store.clone(),
        issuer: desired_issuer(&rotating),
        root: Some(rotating),
        // The tracking believes every node converged.
        rotation: Some(Some(BTreeMap::new())),
    };
    assert_eq!(r.finish().await, Ok(Finish::NotYet));
    assert!(matches!(&r.rotation, Some(Some(m)) if m.contains_key("n1")), "the straggler is tracked again");
    let stored = store.get_cluster("c1").await.unwrap().unwrap();
    assert!(stored.root_ca.unwrap().root_rotation.is_some(), "the rotation is not finished");
}
