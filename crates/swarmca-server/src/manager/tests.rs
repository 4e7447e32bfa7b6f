//! The term loop against an election the test drives by hand.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use swarmca_core::rootca::{digest, generate_root, RootCa};
use swarmca_store::{BoxFuture, MemStore, Op, Store, StoreError};
use swarmca_types::JoinTokens;

use super::*;
use crate::leadership::Solo;
use crate::{shared_entropy, OsEntropy, ServerConfig, ServerDeps, SystemClock, TlsPeerCertificates};

/// Grants a term when the test says so; each term is lost when the test says so.
#[derive(Default)]
struct Manual {
    state: Mutex<ManualState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct ManualState {
    /// Campaigns the test allows to win.
    grants: usize,
    last: u64,
    lost: Vec<Arc<Signal<bool>>>,
    resigned: Vec<u64>,
}

impl Manual {
    fn grant(&self) {
        self.state.lock().unwrap().grants += 1;
        self.changed.notify_waiters();
    }

    fn lose(&self, term: u64) {
        let l = self.state.lock().unwrap().lost.get(term as usize - 1).cloned().unwrap();
        l.set(true);
    }

    fn resigned(&self) -> Vec<u64> {
        self.state.lock().unwrap().resigned.clone()
    }
}

struct ManualTerm {
    number: u64,
    lost: Arc<Signal<bool>>,
    election: Arc<Manual>,
}

/// The election as the manager sees it (a handle on the test's `Manual`).
struct Handle(Arc<Manual>);

impl Election for Handle {
    fn campaign<'a>(&'a self, _candidate: &'a str) -> BoxFuture<'a, Result<Box<dyn Term>, StoreError>> {
        Box::pin(async move {
            loop {
                let changed = self.0.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let mut st = self.0.state.lock().unwrap();
                    if st.grants > 0 {
                        st.grants -= 1;
                        st.last += 1;
                        let lost = Signal::new(false);
                        st.lost.push(lost.clone());
                        let t = ManualTerm { number: st.last, lost, election: self.0.clone() };
                        return Ok(Box::new(t) as Box<dyn Term>);
                    }
                }
                changed.await;
            }
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
}

impl Term for ManualTerm {
    fn number(&self) -> u64 {
        self.number
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::new(MemStore::new())
    }

    fn lost(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.lost.wait_for(|l| *l).await;
        })
    }

    fn is_lost(&self) -> bool {
        self.lost.get()
    }

    fn resign(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async move {
            self.election.state.lock().unwrap().resigned.push(self.number);
            Ok(())
        })
    }
}

fn cluster_op(id: &str) -> Op {
    let g = generate_root("swarm-test-CA", SystemTime::now(), [7; 20]).unwrap();
    let d = digest(&g.cert_pem);
    let token = || swarmca_core::token::generate_join_token(&d, false, &mut OsEntropy).unwrap();
    let tokens = JoinTokens { worker: token(), manager: token() };
    Op::CreateCluster(swarmca_core::cluster::new_cluster(id, &g.cert_pem, &g.key_pem, tokens, None))
}

fn server(store: Arc<dyn Store>) -> CaServer {
    let deps = ServerDeps {
        store,
        clock: Arc::new(SystemClock),
        entropy: shared_entropy(OsEntropy),
        peers: Arc::new(TlsPeerCertificates),
    };
    CaServer::new(ServerConfig::new("c1"), deps, None::<RootCa>)
}

/// A manager of `server` in `election`, recording its events.
fn manager(server: CaServer, election: Arc<dyn Election>) -> (Manager, Arc<Mutex<Vec<ManagerEvent>>>) {
    let events: Arc<Mutex<Vec<ManagerEvent>>> = Arc::default();
    let e = events.clone();
    let m = Manager::new(server, election, "m1")
        .with_observer(Duration::from_millis(20), Arc::new(move |ev| e.lock().unwrap().push(ev.clone())));
    (m, events)
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn has(events: &Mutex<Vec<ManagerEvent>>, ev: &ManagerEvent) -> bool {
    events.lock().unwrap().contains(ev)
}

#[tokio::test]
async fn a_lost_term_stops_its_duties_at_once_without_resigning_and_a_step_down_resigns() {
    let store = Arc::new(MemStore::new());
    store.commit(vec![cluster_op("c1")]).await.unwrap();
    let srv = server(store);
    let election = Arc::new(Manual::default());
    let (m, events) = manager(srv.clone(), Arc::new(Handle(election.clone())));
    let run = tokio::spawn({
        let m = m.clone();
        async move { m.run().await }
    });

    // A follower serves (ready) while it campaigns.
    until("the follower to serve", || srv.join_tokens().is_some()).await;
    assert_eq!(m.role(), Role::Following);

    election.grant();
    until("term 1", || has(&events, &ManagerEvent::Elected(1))).await;
    assert_eq!(m.role(), Role::Leading(1));
    until("the leader to serve", || srv.join_tokens().is_some()).await;

    election.lose(1);
    until("term 1 to end", || has(&events, &ManagerEvent::Ended(1))).await;
    until("following again", || m.role() == Role::Following).await;
    assert!(election.resigned().is_empty(), "a lost term has nothing to resign");

    election.grant();
    until("term 2", || has(&events, &ManagerEvent::Elected(2))).await;
    m.step_down();
    until("term 2 to end", || has(&events, &ManagerEvent::Ended(2))).await;
    until("term 2 resigned", || election.resigned() == vec![2]).await;

    m.shutdown();
    tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert_eq!(m.role(), Role::Stopped);
    let evs = events.lock().unwrap().clone();
    let terms: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, ManagerEvent::Elected(_) | ManagerEvent::Ending(..) | ManagerEvent::Ended(_)))
        .cloned()
        .collect();
    assert_eq!(
        terms,
        vec![
            ManagerEvent::Elected(1),
            ManagerEvent::Ending(1, TermEnd::Lost),
            ManagerEvent::Ended(1),
            ManagerEvent::Elected(2),
            ManagerEvent::Ending(2, TermEnd::SteppedDown),
            ManagerEvent::Ended(2),
        ]
    );
    assert_eq!(evs.last(), Some(&ManagerEvent::Stopped));
    assert!(!srv.is_running(), "nothing runs after shutdown");
}

#[tokio::test]
async fn follower_duties_that_end_are_restarted_until_they_serve() {
    // No cluster yet: the follower cannot load it and ends; the manager restarts it.
    let store = Arc::new(MemStore::new());
    let srv = server(store.clone());
    let (m, events) = manager(srv.clone(), Arc::new(Handle(Arc::new(Manual::default()))));
    let run = tokio::spawn({
        let m = m.clone();
        async move { m.run().await }
    });
    let ended = |evs: &Mutex<Vec<ManagerEvent>>| {
        evs.lock().unwrap().iter().filter(|e| matches!(e, ManagerEvent::FollowerEnded(Some(_)))).count()
    };
    until("two follower restarts", || ended(&events) >= 2).await;
    assert!(srv.join_tokens().is_none());
    store.commit(vec![cluster_op("c1")]).await.unwrap();
    until("the restarted follower to serve", || srv.join_tokens().is_some()).await;
    m.shutdown();
    tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_solo_manager_leads_at_once_and_resigns_on_shutdown() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    store.commit(vec![cluster_op("c1")]).await.unwrap();
    let srv = server(store.clone());
    let solo = Solo::new(store);
    let (m, events) = manager(srv.clone(), Arc::new(solo.clone()));
    let run = tokio::spawn({
        let m = m.clone();
        async move { m.run().await }
    });
    until("term 1", || has(&events, &ManagerEvent::Elected(1))).await;
    until("serving", || srv.join_tokens().is_some()).await;
    assert_eq!(m.leader().await.as_deref(), Some("m1"));
    m.shutdown();
    tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert_eq!(solo.leader().await.unwrap(), None, "the term was resigned");
    let evs = events.lock().unwrap().clone();
    assert!(evs.contains(&ManagerEvent::Ending(1, TermEnd::Shutdown)), "{evs:?}");
}

#[tokio::test]
async fn a_term_that_fails_at_once_is_campaigned_for_again_only_after_a_pause() {
    // No cluster in the store: the leader's start fails at once.
    let srv = server(Arc::new(MemStore::new()));
    let election = Arc::new(Manual::default());
    let events: Arc<Mutex<Vec<(ManagerEvent, tokio::time::Instant)>>> = Arc::default();
    let e = events.clone();
    let pause = Duration::from_millis(200);
    let m = Manager::new(srv, Arc::new(Handle(election.clone())), "m1").with_observer(
        pause,
        Arc::new(move |ev| e.lock().unwrap().push((ev.clone(), tokio::time::Instant::now()))),
    );
    let run = tokio::spawn({
        let m = m.clone();
        async move { m.run().await }
    });
    election.grant();
    election.grant();
    let at = |want: &ManagerEvent| events.lock().unwrap().iter().find(|(ev, _)| ev == want).map(|(_, t)| *t);
    until("term 2", || at(&ManagerEvent::Elected(2)).is_some()).await;
    let evs: Vec<ManagerEvent> = events.lock().unwrap().iter().map(|(ev, _)| ev.clone()).collect();
    assert!(evs.iter().any(|ev| matches!(ev, ManagerEvent::Ending(1, TermEnd::Failed(_)))), "{evs:?}");
    let gap = at(&ManagerEvent::Elected(2)).unwrap() - at(&ManagerEvent::Ended(1)).unwrap();
    assert!(gap >= pause, "campaigned again {gap:?} after a failed term (pause {pause:?})");
    m.shutdown();
    tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
}
