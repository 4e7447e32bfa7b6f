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

/// The same seal key on every start of a test (as the local key file would be).
fn seal_key(byte: u8) -> Keys {
    use base64::Engine as _;
    let text = format!(
        "{}{}",
        swarmca_core::seal::SEAL_KEY_PREFIX,
        base64::engine::general_purpose::STANDARD_NO_PAD.encode([byte; 32])
    );
    Keys {
        seal: Some(swarmca_core::seal::SealKey::parse(&text).unwrap()),
        unlock: None,
        ..Default::default()
    }
}

async fn start(
    store: &Arc<MemStore>,
    now: SystemTime,
    own: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Identity, BootstrapError> {
    start_with(store, now, own, &seal_key(9)).await
}

async fn start_with(
    store: &Arc<MemStore>,
    now: SystemTime,
    own: Option<(Vec<u8>, Vec<u8>)>,
    keys: &Keys,
) -> Result<Identity, BootstrapError> {
    let election = Solo::new(store.clone());
    let entropy = shared_entropy(OsEntropy);
    let clock = At(now);
    let boot = Bootstrap { store: &**store, election: &election, clock: &clock, entropy: &entropy, keys };
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
    let own = Some((first.cert_pem.clone(), first.key_pem.to_vec()));
    let again = start(&store, now, own).await.unwrap();
    assert!(!again.created && !again.issued);
    assert_eq!(
        (again.node_id.as_str(), again.cert_pem.as_slice()),
        (first.node_id.as_str(), first.cert_pem.as_slice())
    );

    // Restarted late in its certificate's life: a new certificate, same node ID.
    let late = now + DEFAULT_NODE_CERT_EXPIRY * 2 / 3;
    let own = Some((first.cert_pem.clone(), first.key_pem.to_vec()));
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
    let own = Some((elsewhere.cert_pem, elsewhere.key_pem.to_vec()));
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

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_cluster_is_stored_sealed_and_opens_only_with_its_seal_key() {
    let store = Arc::new(MemStore::new());
    let now = SystemTime::now();
    let first = start(&store, now, None).await.unwrap();
    let raw = store.get_cluster(&first.cluster_id).await.unwrap().unwrap();
    let clear_key = first.root.ca_key.clone();
    assert!(clear_key.starts_with(b"-----BEGIN PRIVATE KEY-----"), "the identity holds the clear root");
    let stored = raw.root_ca.as_ref().unwrap();
    assert!(stored.ca_key.starts_with(b"-----BEGIN SWARMCA SEALED CA KEY-----"));
    assert!(!contains(&stored.ca_key, &clear_key[30..60]));
    assert!(raw.sealing.as_ref().is_some_and(|s| !s.wrapped_data_key.is_empty()));
    // The manager's own key, for its file: sealed under the data key, not the seal key itself.
    assert!(first.key_file.starts_with(b"-----BEGIN SWARMCA SEALED NODE KEY-----"));
    let opened = first.data_key.open(Purpose::NodeKey, &first.cluster_id, &first.key_file).unwrap();
    assert_eq!(opened.as_slice(), first.key_pem.as_slice());
    let kek = seal_key(9).kek(KekSource::SealKey).unwrap();
    assert!(kek.open_node_key(&first.cluster_id, &first.key_file).is_err());
    // A file an earlier version of this format sealed under the seal key still opens.
    let older = kek.seal_node_key(&first.cluster_id, &first.key_pem, &mut OsEntropy).unwrap();
    let reopened = start(&store, now, Some((first.cert_pem.clone(), older))).await.unwrap();
    assert!(!reopened.issued && reopened.key_pem.as_slice() == first.key_pem.as_slice());

    // Restarted with its sealed files: the same identity, nothing issued or migrated.
    let again = start(&store, now, Some((first.cert_pem.clone(), first.key_file.clone()))).await.unwrap();
    assert!(!again.issued && !again.migrated);
    assert_eq!(
        (again.key_pem.as_slice(), again.root.ca_key.as_slice()),
        (first.key_pem.as_slice(), clear_key.as_slice())
    );
    assert!(again.data_key.same_as(&first.data_key));

    // Another seal key, or none: refused with what to do.
    match start_with(&store, now, None, &seal_key(8)).await {
        Err(BootstrapError::Custody(e)) => assert!(e.to_string().contains("wrong seal key"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match start_with(&store, now, None, &Keys::default()).await {
        Err(BootstrapError::Custody(CustodyError::NoSealKey)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cluster_stored_in_clear_by_an_earlier_version_is_sealed_on_start_and_keeps_everything() {
    let store = Arc::new(MemStore::new());
    let now = SystemTime::now();
    // What today's format holds: the record with the key in clear, and a manager whose key
    // file is clear PEM.
    let first = start(&store, now, None).await.unwrap();
    let mut legacy = store.get_cluster(&first.cluster_id).await.unwrap().unwrap();
    let root = legacy.root_ca.as_mut().unwrap();
    root.ca_key = first.root.ca_key.clone();
    legacy.sealing = None;
    store.commit(vec![Op::UpdateCluster(legacy.clone())]).await.unwrap();

    let id = start(&store, now, Some((first.cert_pem.clone(), first.key_pem.to_vec()))).await.unwrap();
    assert!(id.migrated && !id.issued && !id.created);
    assert_eq!(
        (id.cluster_id.as_str(), id.node_id.as_str()),
        (first.cluster_id.as_str(), first.node_id.as_str())
    );
    assert_eq!(id.tokens, first.tokens);
    assert_eq!(
        (id.root.ca_cert.as_slice(), id.root.ca_key.as_slice()),
        (first.root.ca_cert.as_slice(), first.root.ca_key.as_slice())
    );
    assert!(
        id.key_file.starts_with(b"-----BEGIN SWARMCA SEALED NODE KEY-----"),
        "the clear key file comes back sealed"
    );
    let raw = store.get_cluster(&first.cluster_id).await.unwrap().unwrap();
    assert!(raw.root_ca.unwrap().ca_key.starts_with(b"-----BEGIN SWARMCA SEALED CA KEY-----"));
    assert_eq!(store.view(WatchFilter::All).await.unwrap().nodes.len(), 1, "its node kept");

    // Once sealed, later starts open it and migrate nothing.
    let later = start(&store, now, Some((id.cert_pem, id.key_file))).await.unwrap();
    assert!(!later.migrated && later.data_key.same_as(&id.data_key));
}

#[tokio::test]
async fn a_key_file_that_no_longer_opens_costs_the_certificate_not_the_node_id() {
    let store = Arc::new(MemStore::new());
    let now = SystemTime::now();
    let first = start(&store, now, None).await.unwrap();
    // Sealed under a key this cluster does not use any more (an unlock key rotated while the
    // manager was down, say).
    let stale = seal_key(7).kek(KekSource::SealKey).unwrap();
    let file = stale.seal_node_key(&first.cluster_id, &first.key_pem, &mut OsEntropy).unwrap();
    let again = start(&store, now, Some((first.cert_pem.clone(), file))).await.unwrap();
    assert!(again.issued, "a new key and certificate");
    assert_eq!(again.node_id, first.node_id, "for the same node");
    assert_ne!(again.key_pem, first.key_pem);
    assert_eq!(store.view(WatchFilter::All).await.unwrap().nodes.len(), 1, "no second manager node");
}

#[tokio::test]
async fn a_record_with_sealed_keys_but_no_wrapped_data_key_is_refused_not_sealed_again() {
    let store = Arc::new(MemStore::new());
    let now = SystemTime::now();
    let first = start(&store, now, None).await.unwrap();
    let mut c = store.get_cluster(&first.cluster_id).await.unwrap().unwrap();
    c.sealing = None; // as a version that does not know the field would write it back
    store.commit(vec![Op::UpdateCluster(c)]).await.unwrap();
    match start(&store, now, None).await {
        Err(BootstrapError::Refused(m)) => assert!(m.contains("no wrapped data key"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let raw = store.get_cluster(&first.cluster_id).await.unwrap().unwrap();
    assert!(
        raw.sealing.is_none() && raw.root_ca.unwrap().ca_key.starts_with(b"-----BEGIN SWARMCA SEALED"),
        "untouched"
    );
}

#[tokio::test]
async fn a_manager_removed_or_demoted_meanwhile_does_not_reissue_itself_back_in() {
    let store = Arc::new(MemStore::new());
    let now = SystemTime::now();
    let first = start(&store, now, None).await.unwrap();
    let files = || Some((first.cert_pem.clone(), first.key_file.clone()));

    // Demoted while it was down: refused, with how to go on; nothing written.
    let mut node = store.get_node(&first.node_id).await.unwrap().unwrap();
    node.spec.as_mut().unwrap().desired_role = Role::Worker.to_proto();
    store.commit(vec![Op::UpdateNode(node)]).await.unwrap();
    let before = store.view(WatchFilter::All).await.unwrap();
    match start(&store, now, files()).await {
        Err(e @ BootstrapError::Removed(_)) => {
            let m = e.to_string();
            assert!(m.contains("demoted") && m.contains("swarmca node promote"), "{m}");
            assert!(!e.is_transient());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Late in its certificate's life too (where it would otherwise reissue itself).
    let late = now + DEFAULT_NODE_CERT_EXPIRY * 2 / 3;
    assert!(matches!(start(&store, late, files()).await, Err(BootstrapError::Removed(_))));
    assert_eq!(store.view(WatchFilter::All).await.unwrap().nodes, before.nodes, "nothing written");

    // Removed (blacklisted, its node gone): refused; a manager without files joins anew.
    let node = store.get_node(&first.node_id).await.unwrap().unwrap();
    let mut c = store.get_cluster(&first.cluster_id).await.unwrap().unwrap();
    c.blacklisted_certificates.insert(first.node_id.clone(), Default::default());
    store.commit(vec![Op::UpdateCluster(c), Op::DeleteNode(node)]).await.unwrap();
    match start(&store, late, files()).await {
        Err(BootstrapError::Removed(m)) => assert!(m.contains("was removed"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(store.get_node(&first.node_id).await.unwrap().is_none(), "not created again");
    let anew = start(&store, now, None).await.unwrap();
    assert!(anew.issued && anew.node_id != first.node_id);
}
