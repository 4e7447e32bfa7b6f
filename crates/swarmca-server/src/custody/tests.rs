//! The sealed store: what reaches the inner store, what comes back, and which keys open it.

use std::sync::Arc;

use swarmca_core::seal::{SealKey, UnlockKey};
use swarmca_store::MemStore;
use swarmca_types::{EncryptionKey, RootCa as ApiRootCa, RootRotation};

use swarmca_core::seal::KekSource;

use super::*;
use crate::{shared_entropy, OsEntropy};

const CA_KEY: &[u8] =
    b"-----BEGIN EC PRIVATE KEY-----\nc2VjcmV0IGNhIGtleSBieXRlcw==\n-----END EC PRIVATE KEY-----\n";
const NEW_KEY: &[u8] =
    b"-----BEGIN EC PRIVATE KEY-----\nbmV3IHJvb3Qga2V5IGJ5dGVz\n-----END EC PRIVATE KEY-----\n";
const UNLOCK: &[u8] = &[0x5a; 32];

fn cluster(id: &str) -> Cluster {
    Cluster {
        id: id.into(),
        root_ca: Some(ApiRootCa {
            ca_key: CA_KEY.to_vec(),
            ca_cert: b"CERT".to_vec(),
            root_rotation: Some(RootRotation { ca_key: NEW_KEY.to_vec(), ..Default::default() }),
            ..Default::default()
        }),
        unlock_keys: vec![EncryptionKey {
            subsystem: "manager".into(),
            key: UNLOCK.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every secret byte string of the test cluster, clear.
fn leaked(c: &Cluster) -> bool {
    let bytes = format!("{c:?}");
    [CA_KEY, NEW_KEY].iter().any(|k| contains(bytes.as_bytes(), &k[31..50]))
        || c.unlock_keys.iter().any(|k| k.key == UNLOCK)
}

struct Fixture {
    inner: Arc<MemStore>,
    sealed: SealedStore,
    keys: Keys,
    entropy: SharedEntropy,
}

fn fixture() -> Fixture {
    let entropy = shared_entropy(OsEntropy);
    let keys = Keys {
        seal: Some(with_entropy(&entropy, SealKey::generate).unwrap()),
        unlock: None,
        ..Default::default()
    };
    let dek = with_entropy(&entropy, DataKey::generate).unwrap();
    let inner = Arc::new(MemStore::new());
    let sealed = SealedStore::new(inner.clone(), dek, keys.seal.clone(), entropy.clone());
    Fixture { inner, sealed, keys, entropy }
}

#[tokio::test]
async fn secrets_reach_the_inner_store_sealed_and_come_back_clear() {
    let f = fixture();
    f.sealed.commit(vec![Op::CreateCluster(cluster("c1"))]).await.unwrap();
    let raw = f.inner.get_cluster("c1").await.unwrap().unwrap();
    assert!(!leaked(&raw), "the inner store holds no secret in clear: {raw:?}");
    let root = raw.root_ca.as_ref().unwrap();
    assert!(root.ca_key.starts_with(b"-----BEGIN SWARMCA SEALED CA KEY-----"));
    assert!(root
        .root_rotation
        .as_ref()
        .unwrap()
        .ca_key
        .starts_with(b"-----BEGIN SWARMCA SEALED CA KEY-----"));
    assert!(raw.unlock_keys[0].key.starts_with(b"-----BEGIN SWARMCA SEALED UNLOCK KEY-----"));
    assert_eq!(root.ca_cert, b"CERT", "certificates are public and stay as they are");

    // Every way of reading gives the clear record back.
    let want = {
        let mut c = cluster("c1");
        c.meta = raw.meta;
        c.sealing = raw.sealing.clone();
        c
    };
    assert_eq!(f.sealed.get_cluster("c1").await.unwrap().unwrap(), want);
    assert_eq!(f.sealed.view(WatchFilter::All).await.unwrap().clusters, vec![want.clone()]);
    let (snap, mut watch) = f.sealed.view_and_watch(WatchFilter::All).await.unwrap();
    assert_eq!(snap.clusters, vec![want.clone()]);

    // A write of the opened record (the usual read-modify-write) seals again; watchers see it clear.
    f.sealed.commit(vec![Op::UpdateCluster(want.clone())]).await.unwrap();
    let Some(Event::UpdateCluster(seen)) = watch.next().await else { panic!("no update event") };
    assert_eq!(
        (seen.root_ca.as_ref().unwrap().ca_key.as_slice(), seen.unlock_keys[0].key.as_slice()),
        (CA_KEY, UNLOCK)
    );
    assert!(!leaked(&f.inner.get_cluster("c1").await.unwrap().unwrap()));
}

#[tokio::test]
async fn a_record_written_in_clear_by_an_earlier_version_reads_and_gets_sealed_on_migration() {
    let f = fixture();
    // Today's format: clear keys, no sealing.
    f.inner.commit(vec![Op::CreateCluster(cluster("old"))]).await.unwrap();
    let stored = f.inner.get_cluster("old").await.unwrap().unwrap();
    assert_eq!(unseal(&stored, &f.keys).unwrap().map(|_| ()), None, "not sealed yet");

    let (dek, record) = migrate(&stored, &f.keys, &f.entropy).unwrap();
    let store = SealedStore::new(f.inner.clone(), dek, f.keys.seal.clone(), f.entropy.clone());
    store.commit(vec![Op::UpdateCluster(record)]).await.unwrap();
    let raw = f.inner.get_cluster("old").await.unwrap().unwrap();
    assert!(!leaked(&raw));
    let dek = unseal(&raw, &f.keys).unwrap().expect("sealed now");
    assert!(dek.same_as(store.data_key()));
    let back = store.get_cluster("old").await.unwrap().unwrap();
    assert_eq!(
        (back.root_ca.as_ref().unwrap().ca_key.as_slice(), back.root_ca.as_ref().unwrap().ca_cert.as_slice()),
        (CA_KEY, &b"CERT"[..])
    );
}

#[tokio::test]
async fn only_the_right_key_opens_the_data_key_and_each_refusal_says_what_to_do() {
    let f = fixture();
    let dek = f.sealed.data_key().clone();
    let mut c = cluster("c1");
    let seal_kek = f.keys.kek(KekSource::SealKey).unwrap();
    c.sealing = Some(sealing(&seal_kek, &dek, "c1", &f.entropy).unwrap());
    assert!(unseal(&c, &f.keys).unwrap().unwrap().same_as(&dek));

    let stranger = Keys {
        seal: Some(with_entropy(&f.entropy, SealKey::generate).unwrap()),
        unlock: None,
        ..Default::default()
    };
    let e = unseal(&c, &stranger).unwrap_err();
    assert!(e.to_string().contains("wrong seal key"), "{e}");
    assert_eq!(unseal(&c, &Keys::default()).unwrap_err(), CustodyError::NoSealKey);

    // Autolock: wrapped under the unlock key, the seal key no longer opens it.
    let unlock = with_entropy(&f.entropy, UnlockKey::generate).unwrap();
    let holder = Keys { seal: f.keys.seal.clone(), unlock: Some(unlock.clone()), ..Default::default() };
    c.sealing = Some(sealing(&holder.kek(KekSource::UnlockKey).unwrap(), &dek, "c1", &f.entropy).unwrap());
    assert_eq!(unseal(&c, &f.keys).unwrap_err(), CustodyError::Locked);
    assert!(CustodyError::Locked.to_string().contains("swarmca unlock"));
    let wrong = Keys {
        seal: None,
        unlock: Some(with_entropy(&f.entropy, UnlockKey::generate).unwrap()),
        ..Default::default()
    };
    assert!(unseal(&c, &wrong).unwrap_err().to_string().contains("wrong unlock key"));
    assert!(unseal(&c, &Keys { seal: None, unlock: Some(unlock), ..Default::default() })
        .unwrap()
        .unwrap()
        .same_as(&dek));
}

#[tokio::test]
async fn a_value_sealed_under_another_data_key_is_refused_not_returned_sealed() {
    let f = fixture();
    f.sealed.commit(vec![Op::CreateCluster(cluster("c1"))]).await.unwrap();
    let other = SealedStore::new(
        f.inner.clone(),
        with_entropy(&f.entropy, DataKey::generate).unwrap(),
        f.keys.seal.clone(),
        f.entropy.clone(),
    );
    assert!(matches!(other.get_cluster("c1").await, Err(StoreError::Corrupt(_))));
    assert!(matches!(other.view(WatchFilter::All).await, Err(StoreError::Corrupt(_))));
    // A watcher holding the wrong key is cut off rather than handed sealed bytes as a key.
    let (_, mut watch) = f.sealed.view_and_watch(WatchFilter::All).await.unwrap();
    let inner_watch = f.inner.view_and_watch(WatchFilter::All).await.unwrap().1;
    let dek = with_entropy(&f.entropy, DataKey::generate).unwrap();
    let mut wrong = inner_watch.map(Arc::new(move |e: Arc<Event>| match &*e {
        Event::UpdateCluster(c) => open_cluster(c, &dek).ok().map(|c| Arc::new(Event::UpdateCluster(c))),
        _ => Some(e),
    }));
    let c = f.sealed.get_cluster("c1").await.unwrap().unwrap();
    f.sealed.commit(vec![Op::UpdateCluster(c)]).await.unwrap();
    assert!(matches!(watch.next().await, Some(Event::UpdateCluster(_))));
    assert!(wrong.next().await.is_none(), "the watch ends");
    assert!(wrong.next().await.is_none(), "and stays ended");
}

fn with_autolock(mut c: Cluster, on: bool, key: &UnlockKey) -> Cluster {
    c.spec.get_or_insert_with(Default::default).encryption_config =
        Some(swarmca_types::EncryptionConfig { auto_lock_managers: on });
    c.unlock_keys = vec![EncryptionKey {
        subsystem: swarmca_core::cluster::UNLOCK_SUBSYSTEM.into(),
        key: key.bytes().to_vec(),
        ..Default::default()
    }];
    c
}

#[tokio::test]
async fn autolock_wraps_the_data_key_under_the_unlock_key_and_each_change_rewraps_it() {
    let f = fixture();
    let seal_only = f.keys.clone();
    f.sealed.commit(vec![Op::CreateCluster(cluster("c1"))]).await.unwrap();
    let raw = || async { f.inner.get_cluster("c1").await.unwrap().unwrap() };
    assert_eq!(kek_source(raw().await.sealing.as_ref().unwrap()), KekSource::SealKey);

    // Autolock on: only the unlock key opens the data key now.
    let first = with_entropy(&f.entropy, UnlockKey::generate).unwrap();
    let c = f.sealed.get_cluster("c1").await.unwrap().unwrap();
    f.sealed.commit(vec![Op::UpdateCluster(with_autolock(c, true, &first))]).await.unwrap();
    let locked = raw().await;
    assert_eq!(kek_source(locked.sealing.as_ref().unwrap()), KekSource::UnlockKey);
    assert_eq!(unseal(&locked, &seal_only).unwrap_err(), CustodyError::Locked);
    let holder = |k: &UnlockKey| Keys { seal: None, unlock: Some(k.clone()), ..Default::default() };
    assert!(unseal(&locked, &holder(&first)).unwrap().unwrap().same_as(f.sealed.data_key()));

    // A write that changes nothing else keeps the wrapping as it is.
    let c = f.sealed.get_cluster("c1").await.unwrap().unwrap();
    f.sealed.commit(vec![Op::UpdateCluster(c)]).await.unwrap();
    assert_eq!(raw().await.sealing, locked.sealing);

    // The unlock key rotated: the old one opens nothing any more.
    let second = with_entropy(&f.entropy, UnlockKey::generate).unwrap();
    let c = f.sealed.get_cluster("c1").await.unwrap().unwrap();
    f.sealed.commit(vec![Op::UpdateCluster(with_autolock(c, true, &second))]).await.unwrap();
    let rotated = raw().await;
    assert!(unseal(&rotated, &holder(&first)).unwrap_err().to_string().contains("wrong unlock key"));
    assert!(unseal(&rotated, &holder(&second)).unwrap().unwrap().same_as(f.sealed.data_key()));

    // Autolock off (the key left in the record, as SwarmKit leaves it): the seal key again.
    let c = f.sealed.get_cluster("c1").await.unwrap().unwrap();
    f.sealed.commit(vec![Op::UpdateCluster(with_autolock(c, false, &second))]).await.unwrap();
    let open = raw().await;
    assert_eq!(kek_source(open.sealing.as_ref().unwrap()), KekSource::SealKey);
    assert!(unseal(&open, &seal_only).unwrap().unwrap().same_as(f.sealed.data_key()));

    // A store without the seal key cannot turn autolock off: refused, nothing written.
    let c = f.sealed.get_cluster("c1").await.unwrap().unwrap();
    f.sealed.commit(vec![Op::UpdateCluster(with_autolock(c, true, &second))]).await.unwrap();
    let keyless = SealedStore::new(f.inner.clone(), f.sealed.data_key().clone(), None, f.entropy.clone());
    let c = keyless.get_cluster("c1").await.unwrap().unwrap();
    let before = raw().await;
    let e = keyless.commit(vec![Op::UpdateCluster(with_autolock(c, false, &second))]).await.unwrap_err();
    assert!(e.to_string().contains("seal key"), "{e}");
    assert_eq!(raw().await, before);
}

#[tokio::test]
async fn an_unlock_key_planted_in_clear_by_a_store_writer_is_refused_not_wrapped_under() {
    let f = fixture();
    f.sealed.commit(vec![Op::CreateCluster(cluster("c1"))]).await.unwrap();
    // Someone writing the store directly: autolock on, with an unlock key of their choosing.
    let planted = with_entropy(&f.entropy, UnlockKey::generate).unwrap();
    let raw = f.inner.get_cluster("c1").await.unwrap().unwrap();
    let mut forged = with_autolock(raw, true, &planted);
    forged.meta = None;
    let v = swarmca_store::version_of(f.inner.get_cluster("c1").await.unwrap().unwrap().meta.as_ref());
    forged.meta = Some(swarmca_types::Meta {
        version: Some(swarmca_types::Version { index: v }),
        ..Default::default()
    });
    f.inner.commit(vec![Op::UpdateCluster(forged)]).await.unwrap();
    // Every read through the sealed store refuses the record, so no write wraps under it.
    let e = f.sealed.get_cluster("c1").await.unwrap_err();
    assert!(e.to_string().contains("in clear"), "{e}");
    assert!(matches!(f.sealed.view(WatchFilter::All).await, Err(StoreError::Corrupt(_))));
    let stored = f.inner.get_cluster("c1").await.unwrap().unwrap();
    let holder = Keys { unlock: Some(planted), ..Default::default() };
    assert!(unseal(&stored, &holder).is_err(), "the data key is not under the planted key");
}

#[tokio::test]
async fn a_record_re_keyed_by_someone_else_is_not_overwritten_with_our_data_key() {
    let f = fixture();
    f.sealed.commit(vec![Op::CreateCluster(cluster("c1"))]).await.unwrap();
    let c = f.sealed.get_cluster("c1").await.unwrap().unwrap();
    // Another manager's store with another data key wrapped under the same seal key.
    let theirs = SealedStore::new(
        f.inner.clone(),
        with_entropy(&f.entropy, DataKey::generate).unwrap(),
        f.keys.seal.clone(),
        f.entropy.clone(),
    );
    let mut rekeyed = c.clone();
    rekeyed.sealing = None;
    theirs.commit(vec![Op::UpdateCluster(rekeyed)]).await.unwrap();
    let mut ours = c;
    ours.meta = f.inner.get_cluster("c1").await.unwrap().unwrap().meta;
    ours.sealing = f.inner.get_cluster("c1").await.unwrap().unwrap().sealing;
    let e = f.sealed.commit(vec![Op::UpdateCluster(ours)]).await.unwrap_err();
    assert!(e.to_string().contains("data key changed"), "{e}");
}
