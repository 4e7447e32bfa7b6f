//! The locked control socket: what it answers, and how an unlock key gets through.

use swarmca_proto::admin::{self, admin_server::Admin};
use tonic::{Code, Request};

use super::{AdminGate, Refusal, LOCKED};

const KEY: &str = "SWMKEY-1-+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/s";

#[tokio::test]
async fn a_locked_manager_answers_every_admin_call_with_how_to_unlock_it() {
    let (gate, _attempts) = AdminGate::new();
    let e = gate.list_nodes(Request::new(admin::ListNodesRequest {})).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, LOCKED));
    assert!(LOCKED.contains("swarmca unlock"));
    let e = gate.get_cluster_info(Request::new(admin::ClusterInfoRequest {})).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = gate.unlock_key(Request::new(admin::UnlockKeyRequest { rotate: true })).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "not even the unlock key is handed out");
    // Unlocked but not serving yet: "starting", not "locked".
    gate.unlocked();
    let e = gate.list_nodes(Request::new(admin::ListNodesRequest {})).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("starting"), "{}", e.message());
}

#[tokio::test]
async fn a_malformed_key_is_refused_at_once_and_never_reaches_the_manager() {
    let (gate, mut attempts) = AdminGate::new();
    let e =
        gate.unlock(Request::new(admin::UnlockRequest { unlock_key: "hunter2".into() })).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("SWMKEY-1-"), "{}", e.message());
    assert!(attempts.try_recv().is_err());
}

#[tokio::test]
async fn the_key_goes_to_the_manager_and_its_verdict_comes_back() {
    let (gate, mut attempts) = AdminGate::new();
    let manager = tokio::spawn(async move {
        // The first key is wrong, the second right.
        let a = attempts.recv().await.unwrap();
        a.reply
            .send(Err(Refusal::WrongKey("wrong unlock key: it does not open this cluster's keys".into())))
            .unwrap();
        // The second could not be checked yet.
        let a = attempts.recv().await.unwrap();
        a.reply
            .send(Err(Refusal::NotNow("store unavailable: cut off; this manager keeps trying".into())))
            .unwrap();
        let a = attempts.recv().await.unwrap();
        assert_eq!(a.key.to_text().as_str(), KEY);
        a.reply.send(Ok(())).unwrap();
    });
    let e = gate.unlock(Request::new(admin::UnlockRequest { unlock_key: KEY.into() })).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("wrong unlock key"));
    let e = gate.unlock(Request::new(admin::UnlockRequest { unlock_key: KEY.into() })).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "not a wrong key: try again");
    let ok =
        gate.unlock(Request::new(admin::UnlockRequest { unlock_key: format!(" {KEY}\n") })).await.unwrap();
    assert_eq!(ok.into_inner().message, "manager unlocked");
    manager.await.unwrap();
}

#[test]
fn repeated_wrong_keys_wait_longer_up_to_half_a_minute() {
    let waits: Vec<u64> = (1..=8).map(|n| AdminGate::penalty(n).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
}

mod starting {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use swarmca_core::seal::{SealKey, UnlockKey};
    use swarmca_store::{MemStore, Op, Store};
    use tokio::sync::oneshot;

    use crate::bootstrap::{Bootstrap, NewCluster};
    use crate::custody::{Keys, SealedStore};
    use crate::unlock::{NotStarted, Refusal, UnlockAttempt, Unlocking};
    use crate::{shared_entropy, OsEntropy, Solo, SystemClock};

    /// A cluster created, then autolocked through the sealed store; its unlock key.
    async fn autolocked(store: &Arc<MemStore>, keys: &Keys) -> UnlockKey {
        let entropy = shared_entropy(OsEntropy);
        let election = Solo::new(store.clone());
        let boot = Bootstrap {
            store: &**store,
            election: &election,
            clock: &SystemClock,
            entropy: &entropy,
            keys,
            new_node_id: None,
        };
        let id = boot.start(&NewCluster::default(), None, || {}).await.unwrap();
        let sealed = SealedStore::new(store.clone(), id.data_key, keys.seal.clone(), entropy.clone());
        let mut c = sealed.get_cluster(&id.cluster_id).await.unwrap().unwrap();
        let key = UnlockKey::generate(&mut OsEntropy).unwrap();
        c.spec.get_or_insert_with(Default::default).encryption_config =
            Some(swarmca_types::EncryptionConfig { auto_lock_managers: true });
        c.unlock_keys = vec![swarmca_types::EncryptionKey {
            subsystem: swarmca_core::cluster::UNLOCK_SUBSYSTEM.into(),
            key: key.bytes().to_vec(),
            ..Default::default()
        }];
        sealed.commit(vec![Op::UpdateCluster(c)]).await.unwrap();
        key
    }

    /// A manager's start on `store` with `keys`, unlock keys from `attempts`, until `stop`.
    async fn start<S: Store>(
        store: &Arc<S>,
        keys: &mut Keys,
        attempts: &mut tokio::sync::mpsc::Receiver<UnlockAttempt>,
        stop: impl std::future::Future<Output = ()>,
        locked: impl FnOnce(),
    ) -> Result<crate::bootstrap::Identity, NotStarted> {
        let (entropy, election) = (shared_entropy(OsEntropy), Solo::new(store.clone() as Arc<dyn Store>));
        Unlocking {
            store: &**store,
            election: &election,
            clock: &SystemClock,
            entropy: &entropy,
            keys,
            attempts,
        }
        .start(&NewCluster::default(), None, stop, locked, || {})
        .await
    }

    async fn attempt(tx: &tokio::sync::mpsc::Sender<UnlockAttempt>, key: UnlockKey) -> Result<(), Refusal> {
        let (reply, outcome) = oneshot::channel();
        tx.send(UnlockAttempt { key, reply }).await.unwrap();
        outcome.await.unwrap()
    }

    #[tokio::test]
    async fn a_locked_start_waits_for_the_right_key_answering_each_attempt() {
        let store = Arc::new(MemStore::new());
        let mut keys = Keys {
            seal: Some(SealKey::generate(&mut OsEntropy).unwrap()),
            unlock: None,
            ..Default::default()
        };
        let right = autolocked(&store, &keys).await;
        let (tx, mut attempts) = tokio::sync::mpsc::channel(1);
        let told = Arc::new(AtomicUsize::new(0));
        let giver = tokio::spawn(async move {
            let wrong = attempt(&tx, UnlockKey::generate(&mut OsEntropy).unwrap()).await;
            let again = attempt(&tx, UnlockKey::generate(&mut OsEntropy).unwrap()).await;
            let ok = attempt(&tx, right).await;
            (wrong, again, ok)
        });
        let t = told.clone();
        let began = std::time::Instant::now();
        let id = start(&store, &mut keys, &mut attempts, std::future::pending(), move || {
            t.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
        let (wrong, again, ok) = giver.await.unwrap();
        // Two wrong keys in a row: 1 s, then 2 s before each answer (and the next key).
        assert!(began.elapsed() >= std::time::Duration::from_secs(3), "{:?}", began.elapsed());
        assert!(
            matches!(wrong, Err(Refusal::WrongKey(ref m)) if m.contains("wrong unlock key")),
            "{wrong:?}"
        );
        assert!(again.is_err());
        assert_eq!(ok, Ok(()));
        assert_eq!(told.load(Ordering::SeqCst), 1, "told once that it is locked");
        assert!(!id.created && keys.unlock.is_some(), "the key that opened it is kept");
        // Its key file opens with the data key only the unlock key opens.
        let file_key =
            id.data_key.open(swarmca_core::seal::Purpose::NodeKey, &id.cluster_id, &id.key_file).unwrap();
        assert_eq!(file_key.as_slice(), id.key_pem.as_slice());
        let seal_kek = swarmca_core::seal::Kek::from_seal_key(keys.seal.as_ref().unwrap());
        assert!(
            seal_kek
                .unwrap(
                    &store
                        .get_cluster(&id.cluster_id)
                        .await
                        .unwrap()
                        .unwrap()
                        .sealing
                        .unwrap()
                        .wrapped_data_key,
                    &id.cluster_id
                )
                .is_err(),
            "the seal key does not open the data key"
        );
    }

    #[tokio::test]
    async fn a_wrong_key_given_at_start_is_refused_and_a_stop_ends_the_wait() {
        let store = Arc::new(MemStore::new());
        let seal = SealKey::generate(&mut OsEntropy).unwrap();
        autolocked(&store, &Keys { seal: Some(seal.clone()), unlock: None, ..Default::default() }).await;
        let (_tx, mut attempts) = tokio::sync::mpsc::channel(1);
        let mut keys = Keys {
            seal: Some(seal.clone()),
            unlock: Some(UnlockKey::generate(&mut OsEntropy).unwrap()),
            ..Default::default()
        };
        let r = start(&store, &mut keys, &mut attempts, std::future::pending(), || {}).await;
        assert!(
            matches!(r, Err(NotStarted::Refused(ref e)) if e.to_string().contains("wrong unlock key")),
            "{r:?}"
        );

        let mut keys = Keys { seal: Some(seal), unlock: None, ..Default::default() };
        let r = start(&store, &mut keys, &mut attempts, async {}, || {}).await;
        assert!(matches!(r, Err(NotStarted::Stopped)), "{r:?}");
    }

    /// A store that is unreachable while `down` is set, and whose answer to the next commit is
    /// lost (the commit applied, the caller told "unavailable") while `lose` is set.
    struct Flaky {
        inner: Arc<MemStore>,
        down: std::sync::atomic::AtomicBool,
        lose: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), swarmca_store::StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(swarmca_store::StoreError::Unavailable("cut off".into()));
            }
            Ok(())
        }
    }

    impl Store for Flaky {
        fn view(
            &self,
            filter: swarmca_store::WatchFilter,
        ) -> swarmca_store::BoxFuture<'_, Result<swarmca_store::Snapshot, swarmca_store::StoreError>>
        {
            Box::pin(async move {
                self.check()?;
                self.inner.view(filter).await
            })
        }
        fn get_node<'a>(
            &'a self,
            id: &'a str,
        ) -> swarmca_store::BoxFuture<'a, Result<Option<swarmca_types::Node>, swarmca_store::StoreError>>
        {
            Box::pin(async move {
                self.check()?;
                self.inner.get_node(id).await
            })
        }
        fn get_cluster<'a>(
            &'a self,
            id: &'a str,
        ) -> swarmca_store::BoxFuture<'a, Result<Option<swarmca_types::Cluster>, swarmca_store::StoreError>>
        {
            Box::pin(async move {
                self.check()?;
                self.inner.get_cluster(id).await
            })
        }
        fn commit(
            &self,
            ops: Vec<Op>,
        ) -> swarmca_store::BoxFuture<'_, Result<u64, swarmca_store::StoreError>> {
            Box::pin(async move {
                self.check()?;
                let v = self.inner.commit(ops).await?;
                if self.lose.swap(false, Ordering::SeqCst) {
                    return Err(swarmca_store::StoreError::Unavailable("the answer was lost".into()));
                }
                Ok(v)
            })
        }
        fn view_and_watch(
            &self,
            filter: swarmca_store::WatchFilter,
        ) -> swarmca_store::BoxFuture<
            '_,
            Result<(swarmca_store::Snapshot, swarmca_store::Watch), swarmca_store::StoreError>,
        > {
            Box::pin(async move {
                self.check()?;
                self.inner.view_and_watch(filter).await
            })
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_is_tried_again_and_a_key_given_meanwhile_is_kept_not_counted_wrong() {
        let mem = Arc::new(MemStore::new());
        let seal = SealKey::generate(&mut OsEntropy).unwrap();
        let right =
            autolocked(&mem, &Keys { seal: Some(seal.clone()), unlock: None, ..Default::default() }).await;
        let store = Arc::new(Flaky { inner: mem.clone(), down: true.into(), lose: false.into() });
        let (tx, mut attempts) = tokio::sync::mpsc::channel(1);
        let mut keys = Keys { seal: Some(seal), unlock: None, ..Default::default() };
        let (entropy, election) = (shared_entropy(OsEntropy), Solo::new(mem.clone()));
        let told = Arc::new(AtomicUsize::new(0));
        let (s, t) = (store.clone(), told.clone());
        let giver = tokio::spawn(async move {
            // Unreachable: not known to be locked. A key given now cannot be checked: its giver
            // hears so, and the manager keeps it.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let unchecked = attempt(&tx, right).await;
            assert_eq!(t.load(Ordering::SeqCst), 0, "not known to be locked while unreachable");
            s.down.store(false, Ordering::SeqCst);
            unchecked
        });
        let id = Unlocking {
            store: &*store,
            election: &election,
            clock: &SystemClock,
            entropy: &entropy,
            keys: &mut keys,
            attempts: &mut attempts,
        }
        .start(
            &NewCluster::default(),
            None,
            std::future::pending(),
            || {
                told.fetch_add(1, Ordering::SeqCst);
            },
            || {},
        )
        .await
        .unwrap();
        match giver.await.unwrap() {
            Err(Refusal::NotNow(m)) => {
                assert!(m.contains("store unavailable") && m.contains("keeps trying"), "{m}")
            }
            other => panic!("expected 'not now', got {other:?}"),
        }
        // Reachable again: the kept key opened it, without a second attempt.
        assert_eq!(told.load(Ordering::SeqCst), 0);
        assert!(!id.created && keys.unlock.is_some());
    }

    #[tokio::test]
    async fn a_start_whose_commit_answer_was_lost_is_retried_under_the_same_node_id() {
        let mem = Arc::new(MemStore::new());
        let store = Arc::new(Flaky { inner: mem.clone(), down: false.into(), lose: true.into() });
        let (_tx, mut attempts) = tokio::sync::mpsc::channel(1);
        let mut keys = Keys {
            seal: Some(SealKey::generate(&mut OsEntropy).unwrap()),
            unlock: None,
            ..Default::default()
        };
        // The cluster's creation is applied, its answer lost; the retry finds the cluster, and
        // the node the lost commit made is this manager's, not an orphan beside a new one.
        let id = start(&store, &mut keys, &mut attempts, std::future::pending(), || {}).await.unwrap();
        assert!(!id.created, "the second attempt found the cluster the first one made");
        let nodes = mem.view(swarmca_store::WatchFilter::All).await.unwrap().nodes;
        assert_eq!(nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), [id.node_id.as_str()]);
    }

    #[tokio::test]
    async fn a_key_found_wrong_only_after_a_retry_still_holds_back_the_next_one() {
        let mem = Arc::new(MemStore::new());
        let seal = SealKey::generate(&mut OsEntropy).unwrap();
        let right =
            autolocked(&mem, &Keys { seal: Some(seal.clone()), unlock: None, ..Default::default() }).await;
        let store = Arc::new(Flaky { inner: mem.clone(), down: true.into(), lose: false.into() });
        let (tx, mut attempts) = tokio::sync::mpsc::channel(1);
        let mut keys = Keys { seal: Some(seal), unlock: None, ..Default::default() };
        let s = store.clone();
        let giver = tokio::spawn(async move {
            // A wrong key while the store is unreachable: "not now", kept.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let wrong = UnlockKey::generate(&mut OsEntropy).unwrap();
            let unchecked = attempt(&tx, wrong).await;
            assert!(matches!(unchecked, Err(Refusal::NotNow(_))), "{unchecked:?}");
            // Back: the manager's next attempt, at the end of its 2 s wait, finds the key wrong.
            // The next key is taken only after the wrong key's penalty (1 s) on top; until
            // then the operator hears "already starting with a key" and tries again.
            s.down.store(false, Ordering::SeqCst);
            let t0 = std::time::Instant::now();
            let text = right.to_text().to_string();
            loop {
                match attempt(&tx, UnlockKey::parse(&text).unwrap()).await {
                    Ok(()) => break,
                    Err(Refusal::NotNow(m)) if m.contains("already starting") => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await
                    }
                    other => panic!("{other:?}"),
                }
            }
            t0.elapsed()
        });
        start(&store, &mut keys, &mut attempts, std::future::pending(), || {}).await.unwrap();
        let waited = giver.await.unwrap();
        assert!(
            waited >= std::time::Duration::from_millis(2900),
            "the retry wait (2 s) and the wrong key's penalty (1 s); waited {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_node_made_by_a_lost_commit_and_removed_since_does_not_end_the_start() {
        let mem = Arc::new(MemStore::new());
        let seal = SealKey::generate(&mut OsEntropy).unwrap();
        let entropy = shared_entropy(OsEntropy);
        {
            let keys = Keys { seal: Some(seal.clone()), unlock: None, ..Default::default() };
            let election = Solo::new(mem.clone());
            let boot = Bootstrap {
                store: &*mem,
                election: &election,
                clock: &SystemClock,
                entropy: &entropy,
                keys: &keys,
                new_node_id: None,
            };
            boot.start(&NewCluster::default(), None, || {}).await.unwrap();
        }
        let before: Vec<String> = mem
            .view(swarmca_store::WatchFilter::All)
            .await
            .unwrap()
            .nodes
            .into_iter()
            .map(|n| n.id)
            .collect();
        // A new manager's node is created, the answer lost; the operator removes that node
        // before the start tries again.
        let store = Arc::new(Flaky { inner: mem.clone(), down: false.into(), lose: true.into() });
        let m = mem.clone();
        let operator = tokio::spawn(async move {
            loop {
                let snap = m.view(swarmca_store::WatchFilter::All).await.unwrap();
                if let Some(n) = snap.nodes.iter().find(|n| !before.contains(&n.id)) {
                    let mut c = snap.clusters[0].clone();
                    c.blacklisted_certificates.insert(n.id.clone(), Default::default());
                    m.commit(vec![Op::UpdateCluster(c), Op::DeleteNode(n.clone())]).await.unwrap();
                    return n.id.clone();
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        let (_tx, mut attempts) = tokio::sync::mpsc::channel(1);
        let mut keys = Keys { seal: Some(seal), unlock: None, ..Default::default() };
        let id = start(&store, &mut keys, &mut attempts, std::future::pending(), || {})
            .await
            .expect("a start with no certificate is not refused for a node it never got to use");
        let removed = operator.await.unwrap();
        assert_ne!(id.node_id, removed, "it joined under another node ID");
        assert!(mem.get_node(&id.node_id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_key_given_while_another_is_being_tried_is_answered_at_once() {
        let mem = Arc::new(MemStore::new());
        let seal = SealKey::generate(&mut OsEntropy).unwrap();
        let right =
            autolocked(&mem, &Keys { seal: Some(seal.clone()), unlock: None, ..Default::default() }).await;
        let store = Arc::new(Flaky { inner: mem.clone(), down: true.into(), lose: false.into() });
        let (tx, mut attempts) = tokio::sync::mpsc::channel(1);
        let mut keys = Keys { seal: Some(seal), unlock: None, ..Default::default() };
        let s = store.clone();
        let giver = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let first = attempt(&tx, right).await;
            assert!(matches!(first, Err(Refusal::NotNow(_))), "{first:?}");
            // Another key while the first is held: answered at once, not when the start ends.
            let other = UnlockKey::generate(&mut OsEntropy).unwrap();
            let second = tokio::time::timeout(std::time::Duration::from_millis(500), attempt(&tx, other))
                .await
                .expect("a second key hangs while the first is tried");
            s.down.store(false, Ordering::SeqCst);
            second
        });
        let id = start(&store, &mut keys, &mut attempts, std::future::pending(), || {}).await.unwrap();
        match giver.await.unwrap() {
            Err(Refusal::NotNow(m)) => assert!(m.contains("already starting with an unlock key"), "{m}"),
            other => panic!("expected 'not now', got {other:?}"),
        }
        assert!(!id.created, "the first key, kept, opened the cluster");
    }
}
