//! Creating and reopening a cluster as a manager starts.

use std::sync::Arc;
use std::time::SystemTime;

use swarmca_core::rootca::{RootCa, DEFAULT_NODE_CERT_EXPIRY};
use swarmca_store::MemStore;

use super::*;
use crate::leadership::Solo;
use crate::{shared_entropy, OsEntropy};

struct At(SystemTime);

impl Clock for At {
    fn now(&self) -> SystemTime {
        self.0
    }
}

async fn start(
    store: &Arc<MemStore>,
    now: SystemTime,
    own: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Identity, BootstrapError> {
    let election = Solo::new(store.clone());
    let entropy = shared_entropy(OsEntropy);
    let clock = At(now);
    let boot = Bootstrap { store: &**store, election: &election, clock: &clock, entropy: &entropy };
    boot.start(&NewCluster::default(), own, || {}).await
}

fn verifies(id: &Identity, now: SystemTime) -> bool {
    let ca = RootCa::from_api(&id.root, id.expiry, now).unwrap();
    ca.verify_peer(&certs_der(&id.cert_pem), now).is_ok()
}

#[tokio::test]
async fn the_first_start_creates_the_cluster_and_later_ones_keep_a_current_certificate() {
    let store = Arc::new(MemStore::new());
    let now = SystemTime::now();
    let first = start(&store, now, None).await.unwrap();
    assert!(first.created && first.issued);
    assert_eq!(first.expiry, DEFAULT_NODE_CERT_EXPIRY);
    assert!(verifies(&first, now), "the manager's certificate chains to the new root");
    let node = store.get_node(&first.node_id).await.unwrap().unwrap();
    assert_eq!(node.certificate.unwrap().certificate, first.cert_pem, "its node is stored with it");
    let cluster = store.get_cluster(&first.cluster_id).await.unwrap().unwrap();
    assert_eq!(cluster.root_ca.unwrap().join_tokens.unwrap(), first.tokens);

    // Restarted with its files: the same identity, nothing issued.
    let own = Some((first.cert_pem.clone(), first.key_pem.clone()));
    let again = start(&store, now, own).await.unwrap();
    assert!(!again.created && !again.issued);
    assert_eq!(
        (again.node_id.as_str(), again.cert_pem.as_slice()),
        (first.node_id.as_str(), first.cert_pem.as_slice())
    );

    // Restarted late in its certificate's life: a new certificate, same node ID.
    let late = now + DEFAULT_NODE_CERT_EXPIRY * 2 / 3;
    let own = Some((first.cert_pem.clone(), first.key_pem.clone()));
    let renewed = start(&store, late, own).await.unwrap();
    assert!(renewed.issued && !renewed.created);
    assert_eq!(renewed.node_id, first.node_id);
    assert_ne!(renewed.cert_pem, first.cert_pem);
    assert!(verifies(&renewed, late));

    // A new manager without files: a new node.
    let other = start(&store, now, None).await.unwrap();
    assert!(other.issued && other.node_id != first.node_id && other.cluster_id == first.cluster_id);
}

#[tokio::test]
async fn a_certificate_of_another_cluster_is_refused_as_a_wrong_data_directory() {
    let now = SystemTime::now();
    let elsewhere = start(&Arc::new(MemStore::new()), now, None).await.unwrap();
    let store = Arc::new(MemStore::new());
    start(&store, now, None).await.unwrap();
    let own = Some((elsewhere.cert_pem, elsewhere.key_pem));
    match start(&store, now, own).await {
        Err(BootstrapError::Refused(m)) => assert!(m.contains("wrong data directory"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let garbage = Some((b"not a certificate".to_vec(), Vec::new()));
    match start(&store, now, garbage).await {
        Err(BootstrapError::Refused(m)) => assert!(m.contains("not a valid node certificate"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
