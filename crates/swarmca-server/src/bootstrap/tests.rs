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
    let boot = Bootstrap {
        store: &**store,
        election: &election,
        clock: &clock,
        entropy: &entropy,
        keys,
        new_node_id: None,
    };
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

/// When, during a manager's start, the operator removes its node.
#[derive(Clone, Copy, PartialEq)]
enum RemovedAt {
    /// Right after the start first read the node (and found it a manager).
    AfterFirstRead,
    /// Right before the start's write of the node lands.
    BeforeWrite,
}

/// A store on which the node `victim` is removed (blacklisted and deleted, as `swarmca node
/// rm` does) once, at `at`.
struct RemovedMidway {
    inner: Arc<MemStore>,
    victim: String,
    cluster_id: String,
    at: RemovedAt,
    armed: std::sync::atomic::AtomicBool,
}

impl RemovedMidway {
    async fn fire(&self, at: RemovedAt) {
        if self.at != at || !self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let node = self.inner.get_node(&self.victim).await.unwrap().unwrap();
        let mut c = self.inner.get_cluster(&self.cluster_id).await.unwrap().unwrap();
        c.blacklisted_certificates.insert(self.victim.clone(), Default::default());
        self.inner.commit(vec![Op::UpdateCluster(c), Op::DeleteNode(node)]).await.unwrap();
    }
}

impl Store for RemovedMidway {
    fn view(
        &self,
        filter: WatchFilter,
    ) -> swarmca_store::BoxFuture<'_, Result<swarmca_store::Snapshot, StoreError>> {
        self.inner.view(filter)
    }
    fn get_node<'a>(&'a self, id: &'a str) -> swarmca_store::BoxFuture<'a, Result<Option<Node>, StoreError>> {
        Box::pin(async move {
            let n = self.inner.get_node(id).await?;
            if id == self.victim {
                self.fire(RemovedAt::AfterFirstRead).await;
            }
            Ok(n)
        })
    }
    fn get_cluster<'a>(
        &'a self,
        id: &'a str,
    ) -> swarmca_store::BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        self.inner.get_cluster(id)
    }
    fn commit(&self, ops: Vec<Op>) -> swarmca_store::BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let touches = ops
                .iter()
                .any(|op| matches!(op, Op::UpdateNode(n) | Op::CreateNode(n) if n.id == self.victim));
            if touches {
                self.fire(RemovedAt::BeforeWrite).await;
            }
            self.inner.commit(ops).await
        })
    }
    fn view_and_watch(
        &self,
        filter: WatchFilter,
    ) -> swarmca_store::BoxFuture<'_, Result<(swarmca_store::Snapshot, swarmca_store::Watch), StoreError>>
    {
        self.inner.view_and_watch(filter)
    }
}

#[tokio::test]
async fn a_removal_landing_while_a_manager_reissues_itself_is_not_undone() {
    for at in [RemovedAt::AfterFirstRead, RemovedAt::BeforeWrite] {
        let mem = Arc::new(MemStore::new());
        let now = SystemTime::now();
        let first = start(&mem, now, None).await.unwrap();
        let store = Arc::new(RemovedMidway {
            inner: mem.clone(),
            victim: first.node_id.clone(),
            cluster_id: first.cluster_id.clone(),
            at,
            armed: true.into(),
        });
        // Late in its certificate's life: the start reissues it, and the removal lands meanwhile.
        let late = now + DEFAULT_NODE_CERT_EXPIRY * 2 / 3;
        let files = Some((first.cert_pem.clone(), first.key_file.clone()));
        let keys = seal_key(9);
        let (election, entropy, clock) = (Solo::new(mem.clone()), shared_entropy(OsEntropy), At(late));
        let boot = Bootstrap {
            store: &*store,
            election: &election,
            clock: &clock,
            entropy: &entropy,
            keys: &keys,
            new_node_id: None,
        };
        let r = boot.start(&NewCluster::default(), files.clone(), || {}).await;
        assert!(
            mem.get_node(&first.node_id).await.unwrap().is_none(),
            "the removed node is not written back"
        );
        match (at, r) {
            (RemovedAt::AfterFirstRead, Err(BootstrapError::Removed(m))) => {
                assert!(m.contains("was removed"), "{m}")
            }
            // The write lost the race: tried again, and then refused.
            (RemovedAt::BeforeWrite, Err(e)) if e.is_transient() => {
                let again = boot.start(&NewCluster::default(), files, || {}).await;
                assert!(matches!(again, Err(BootstrapError::Removed(_))), "{again:?}");
            }
            (_, other) => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// A store whose answer to the next commit is lost: the commit is applied, and the caller hears
/// "unavailable" (as when etcd's answer does not come back).
struct LostAnswer {
    inner: Arc<MemStore>,
    armed: std::sync::atomic::AtomicBool,
}

impl Store for LostAnswer {
    fn view(
        &self,
        filter: WatchFilter,
    ) -> swarmca_store::BoxFuture<'_, Result<swarmca_store::Snapshot, StoreError>> {
        self.inner.view(filter)
    }
    fn get_node<'a>(&'a self, id: &'a str) -> swarmca_store::BoxFuture<'a, Result<Option<Node>, StoreError>> {
        self.inner.get_node(id)
    }
    fn get_cluster<'a>(
        &'a self,
        id: &'a str,
    ) -> swarmca_store::BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        self.inner.get_cluster(id)
    }
    fn commit(&self, ops: Vec<Op>) -> swarmca_store::BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let v = self.inner.commit(ops).await?;
            if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the answer was lost".into()));
            }
            Ok(v)
        })
    }
    fn view_and_watch(
        &self,
        filter: WatchFilter,
    ) -> swarmca_store::BoxFuture<'_, Result<(swarmca_store::Snapshot, swarmca_store::Watch), StoreError>>
    {
        self.inner.view_and_watch(filter)
    }
}

#[tokio::test]
async fn a_start_retried_after_a_lost_commit_answer_finds_its_node_again() {
    let now = SystemTime::now();
    let keys = seal_key(9);
    let entropy = shared_entropy(OsEntropy);
    let clock = At(now);
    // The cluster's creation, and a second manager's first start.
    for existing in [false, true] {
        let mem = Arc::new(MemStore::new());
        if existing {
            start(&mem, now, None).await.unwrap();
        }
        let before = mem.view(WatchFilter::All).await.unwrap().nodes.len();
        let store = Arc::new(LostAnswer { inner: mem.clone(), armed: true.into() });
        let election = Solo::new(store.clone());
        let boot = Bootstrap {
            store: &*store,
            election: &election,
            clock: &clock,
            entropy: &entropy,
            keys: &keys,
            new_node_id: Some("drawn-once"),
        };
        let lost = boot.start(&NewCluster::default(), None, || {}).await;
        assert!(matches!(&lost, Err(e) if e.is_transient()), "{lost:?}");
        let id = boot.start(&NewCluster::default(), None, || {}).await.unwrap();
        assert_eq!(id.node_id, "drawn-once");
        let nodes = mem.view(WatchFilter::All).await.unwrap().nodes;
        assert_eq!(nodes.len(), before + 1, "one node for the new manager, none left behind");
        let node = mem.get_node("drawn-once").await.unwrap().unwrap();
        assert_eq!(node.certificate.unwrap().certificate, id.cert_pem, "it holds the certificate kept");
    }
}

/// Points the cluster's external CA at a closed loopback port: asked directly, it fails at once.
async fn with_unreachable_external_ca(store: &MemStore, first: &Identity) {
    let mut c = store.get_cluster(&first.cluster_id).await.unwrap().unwrap();
    let ext = ApiExternalCa {
        protocol: 0,
        url: "https://127.0.0.1:1/api/v1/cfssl/sign".into(),
        options: Default::default(),
        ca_cert: first.root.ca_cert.clone(),
    };
    c.spec.get_or_insert_with(Default::default).ca_config.get_or_insert_with(Default::default).external_cas =
        vec![ext];
    store.commit(vec![Op::UpdateCluster(c)]).await.unwrap();
}

/// What the test's stand-in for the leader's issuance does with the first request it sees.
#[derive(Clone, Copy, Debug)]
enum Leader {
    Signs,
    Refuses,
    DemotesAndSigns,
}

#[tokio::test]
async fn a_manager_the_external_ca_does_not_sign_for_gets_its_certificate_through_the_leader() {
    use swarmca_store::Event;
    for how in [Leader::Signs, Leader::Refuses, Leader::DemotesAndSigns] {
        let store = Arc::new(MemStore::new());
        let now = SystemTime::now();
        let first = start(&store, now, None).await.unwrap();
        with_unreachable_external_ca(&store, &first).await;
        // The leader: answers the first request written on node "fresh".
        let (_, mut watch) = store.view_and_watch(WatchFilter::Node("fresh".into())).await.unwrap();
        let (s, root, cluster_id) = (store.clone(), first.root.clone(), first.cluster_id.clone());
        let leader = tokio::spawn(async move {
            while let Some(ev) = watch.next().await {
                let (Event::CreateNode(mut n) | Event::UpdateNode(mut n)) = ev else { continue };
                let mut c = n.certificate.clone().unwrap();
                if !matches!(
                    State::try_from(c.status.clone().unwrap().state),
                    Ok(State::Pending | State::Renew)
                ) {
                    continue;
                }
                assert_eq!(c.role, Role::Manager.to_proto(), "a manager certificate is asked for");
                let ca = RootCa::from_api(&root, DEFAULT_NODE_CERT_EXPIRY, now).unwrap();
                if let Leader::Refuses = how {
                    c.status =
                        Some(IssuanceStatus { state: State::Failed as i32, err: "no, says the CA".into() });
                } else {
                    c.certificate =
                        ca.sign_csr(&c.csr, "fresh", Role::Manager, &cluster_id, now, [7; 20]).unwrap();
                    c.status = Some(IssuanceStatus { state: State::Issued as i32, err: String::new() });
                }
                if let Leader::DemotesAndSigns = how {
                    n.spec.as_mut().unwrap().desired_role = Role::Worker.to_proto();
                }
                n.certificate = Some(c);
                s.commit(vec![Op::UpdateNode(n)]).await.unwrap();
                return;
            }
        });
        let (keys, election, entropy, clock) =
            (seal_key(9), Solo::new(store.clone()), shared_entropy(OsEntropy), At(now));
        let boot = Bootstrap {
            store: &*store,
            election: &election,
            clock: &clock,
            entropy: &entropy,
            keys: &keys,
            new_node_id: Some("fresh"),
        };
        let r = boot.start(&NewCluster::default(), None, || {}).await;
        leader.await.unwrap();
        match (how, r) {
            (Leader::Signs, Ok(id)) => {
                assert_eq!((id.node_id.as_str(), id.issued), ("fresh", true));
                assert!(verifies(&id, now));
                let node = store.get_node("fresh").await.unwrap().unwrap();
                assert_eq!(
                    node.certificate.unwrap().certificate,
                    id.cert_pem,
                    "the leader's issuance stored it"
                );
            }
            (Leader::Refuses, Err(BootstrapError::Unavailable(m))) => {
                assert!(m.contains("127.0.0.1:1") || m.contains("external CA"), "why direct failed: {m}");
                assert!(m.contains("through the leader") && m.contains("no, says the CA"), "{m}");
            }
            (Leader::DemotesAndSigns, Err(BootstrapError::Removed(m))) => {
                assert!(m.contains("demoted"), "{m}")
            }
            (how, other) => panic!("{how:?}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_key_file_written_without_its_certificate_costs_the_certificate_not_the_node_id() {
    let store = Arc::new(MemStore::new());
    let now = SystemTime::now();
    let first = start(&store, now, None).await.unwrap();
    // A renewal wrote its new key file, and the process died before the certificate file.
    let (_, other_key) = new_key_and_csr().unwrap();
    let file =
        seal_own_key(&first.data_key, &first.cluster_id, &other_key, &shared_entropy(OsEntropy)).unwrap();
    let again = start(&store, now, Some((first.cert_pem.clone(), file))).await.unwrap();
    assert!(again.issued, "a new key and certificate");
    assert_eq!(again.node_id, first.node_id);
    assert!(key_matches_cert(&again.cert_pem, &again.key_pem));
    assert!(!key_matches_cert(&first.cert_pem, &other_key));
}
