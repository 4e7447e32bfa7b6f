//! EtcdStore only: etcd's revisions as versions, watches across broken streams and compactions,
//! etcd restarted or hung, mutual TLS, fencing, election, and a 3-member cluster losing its
//! leader. The behaviour it shares with MemStore is tested by the suite in `crate::tests`.
//! Every test starts its own etcd (see `testing`), and is skipped without one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use etcd_client::CompactionOptions;
use prost::Message;

use super::testing::{Etcd, Proxy, Timing};
use super::*;
use crate::state::Tables;
use crate::tests::{cluster, node};
use crate::version_of;
use crate::Event;

/// Long enough for any event on a loaded machine, short enough to fail fast.
const EVENT_WAIT: Duration = Duration::from_secs(10);

async fn connect(etcd: &Etcd) -> EtcdStore {
    EtcdStore::connect(etcd.options()).await.unwrap()
}

/// A store whose requests give up after `timeout`.
async fn connect_with_timeout(endpoints: Vec<String>, timeout: Duration) -> EtcdStore {
    let mut opts = EtcdOptions::new(endpoints);
    opts.request_timeout = timeout;
    opts.connect_timeout = timeout;
    EtcdStore::connect(opts).await.unwrap()
}

async fn raw(etcd: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap()
}

async fn next(w: &mut Watch) -> Event {
    let e = tokio::time::timeout(EVENT_WAIT, w.next()).await.expect("no event within the wait");
    e.expect("the watch closed")
}

/// Asserts that `w` delivers nothing for `d`.
async fn quiet_for(w: &mut Watch, d: Duration) {
    if let Ok(e) = tokio::time::timeout(d, w.next()).await {
        panic!("unexpected {e:?}");
    }
}

async fn create_nodes(s: &EtcdStore, ids: impl IntoIterator<Item = String>) -> Vec<u64> {
    let mut revs = Vec::new();
    for id in ids {
        revs.push(s.commit(vec![Op::CreateNode(node(&id))]).await.unwrap());
    }
    revs
}

fn ids(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i:03}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_etcd_mod_revisions_and_stored_versions_are_ignored() {
    let Some(etcd) = Etcd::single() else { return };
    let s = connect(&etcd).await;
    let mut raw = raw(&etcd).await;

    let rev = s.commit(vec![Op::CreateNode(node("a")), Op::CreateCluster(cluster("c"))]).await.unwrap();
    let stored = raw.get("/swarmca/nodes/a", None).await.unwrap();
    let kv = stored.kvs().first().unwrap();
    assert_eq!(kv.mod_revision(), i64::try_from(rev).unwrap());
    assert_eq!(stored.header().unwrap().revision(), i64::try_from(rev).unwrap());
    let a = s.get_node("a").await.unwrap().unwrap();
    assert_eq!(version_of(a.meta.as_ref()), rev);
    // What is stored carries no version: etcd's mod_revision is the only truth.
    assert_eq!(version_of(Node::decode(kv.value()).unwrap().meta.as_ref()), 0);

    // A value written behind the store's back with a bogus version reads at its mod_revision.
    let mut b = node("b");
    set_version(&mut b.meta, 999);
    let put = raw.put("/swarmca/nodes/b", b.encode_to_vec(), None).await.unwrap();
    let b_rev = u64::try_from(put.header().unwrap().revision()).unwrap();
    assert_eq!(version_of(s.get_node("b").await.unwrap().unwrap().meta.as_ref()), b_rev);

    // Other keys under the prefix are not objects and do not disturb reads.
    raw.put("/swarmca/leader/x", "m1", None).await.unwrap();
    let snap = s.view(WatchFilter::All).await.unwrap();
    assert_eq!(snap.revision, b_rev + 1);
    let got: Vec<(&str, u64)> =
        snap.nodes.iter().map(|n| (n.id.as_str(), version_of(n.meta.as_ref()))).collect();
    assert_eq!(got, [("a", rev), ("b", b_rev)]);
    assert_eq!(version_of(snap.clusters.first().unwrap().meta.as_ref()), rev);
    assert_eq!(s.revision().await.unwrap(), b_rev + 1);

    // An update carrying the etcd mod_revision succeeds; the version moves to the new revision.
    let rev2 = s.commit(vec![Op::UpdateNode(a.clone())]).await.unwrap();
    assert!(rev2 > b_rev + 1);
    assert_eq!(s.commit(vec![Op::UpdateNode(a)]).await, Err(StoreError::SequenceConflict));

    // Damaged values are reported, not skipped.
    raw.put("/swarmca/nodes/c", vec![0xff, 0xff, 0xff], None).await.unwrap();
    assert!(matches!(s.get_node("c").await, Err(StoreError::Corrupt(m)) if m.contains("/swarmca/nodes/c")));
    assert!(matches!(s.view(WatchFilter::All).await, Err(StoreError::Corrupt(_))));
    raw.put("/swarmca/nodes/d", node("e").encode_to_vec(), None).await.unwrap();
    assert!(matches!(s.get_node("d").await, Err(StoreError::Corrupt(m)) if m.contains("\"e\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_commit_once_in_order_under_concurrent_writers() {
    const WRITERS: u32 = 4;
    const COMMITS: u32 = 60;
    let Some(etcd) = Etcd::single() else { return };
    let s = connect(&etcd).await;
    s.commit(vec![Op::CreateCluster(cluster("c"))]).await.unwrap();
    let (snap, mut w) = s.view_and_watch(WatchFilter::All).await.unwrap();

    // Each writer creates its nodes, and every writer also bumps the shared cluster.
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..COMMITS {
                    if i % 3 == 0 {
                        loop {
                            let c = s.get_cluster("c").await.unwrap().unwrap();
                            match s.commit(vec![Op::UpdateCluster(c)]).await {
                                Ok(r) => break revs.push(r),
                                Err(StoreError::SequenceConflict) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    } else {
                        revs.push(
                            s.commit(vec![Op::CreateNode(node(&format!("w{t}-{i:03}")))]).await.unwrap(),
                        );
                    }
                }
                revs
            })
        })
        .collect();
    let mut committed = BTreeSet::new();
    for t in writers {
        committed.extend(t.await.unwrap());
    }
    assert_eq!(committed.len(), usize::try_from(WRITERS * COMMITS).unwrap(), "revisions are unique");

    let mut state = Tables::default();
    state.nodes.extend(snap.nodes.into_iter().map(|n| (n.id.clone(), n)));
    state.clusters.extend(snap.clusters.into_iter().map(|c| (c.id.clone(), c)));
    let mut seen = Vec::new();
    while seen.len() < committed.len() {
        let e = next(&mut w).await;
        match e {
            Event::CreateNode(n) => {
                seen.push(version_of(n.meta.as_ref()));
                assert!(state.nodes.insert(n.id.clone(), n).is_none(), "created twice");
            }
            Event::UpdateCluster(c) => {
                seen.push(version_of(c.meta.as_ref()));
                state.clusters.insert(c.id.clone(), c);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, committed.iter().copied().collect::<Vec<_>>(), "every commit once, in order");
    quiet_for(&mut w, Duration::from_millis(200)).await;
    let now = s.view(WatchFilter::All).await.unwrap();
    assert_eq!(now.nodes, state.nodes.into_values().collect::<Vec<_>>());
    assert_eq!(now.clusters, state.clusters.into_values().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_its_stream_breaks_without_gap_or_duplicate() {
    let Some(etcd) = Etcd::single() else { return };
    let direct = connect(&etcd).await;
    let proxy = Proxy::start(etcd.endpoints()[0].trim_start_matches("http://").to_string()).await;
    let via_proxy =
        connect_with_timeout(vec![format!("http://{}", proxy.addr)], Duration::from_secs(2)).await;
    let (_, mut all) = via_proxy.view_and_watch(WatchFilter::All).await.unwrap();
    let (_, mut one) = via_proxy.view_and_watch(WatchFilter::Node("b005".into())).await.unwrap();

    let before = create_nodes(&direct, ids("a", 0..5)).await;
    for want in &before {
        assert_eq!(version_of(next(&mut all).await.node().unwrap().meta.as_ref()), *want);
    }
    proxy.cut();
    // Written while the watches cannot hear anything.
    let during = create_nodes(&direct, ids("b", 0..10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.heal();
    let after = create_nodes(&direct, ids("c", 0..5)).await;

    for want in during.iter().chain(&after) {
        assert_eq!(version_of(next(&mut all).await.node().unwrap().meta.as_ref()), *want);
    }
    let b5 = next(&mut one).await;
    assert!(matches!(&b5, Event::CreateNode(n) if n.id == "b005"));
    quiet_for(&mut all, Duration::from_millis(300)).await;
    quiet_for(&mut one, Duration::from_millis(10)).await;
    assert_eq!(via_proxy.watcher_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_end_their_tasks_and_leave_the_registry() {
    let Some(etcd) = Etcd::single() else { return };
    let s = connect(&etcd).await;
    let handles = std::sync::Arc::strong_count(&s.shared);
    let mut watches = Vec::new();
    for i in 0..20 {
        watches.push(s.view_and_watch(WatchFilter::Node(format!("n{i}"))).await.unwrap().1);
    }
    // Each forwarding task holds a handle on the connection.
    assert_eq!(std::sync::Arc::strong_count(&s.shared), handles + 20);
    drop(watches);
    let t = Instant::now();
    while std::sync::Arc::strong_count(&s.shared) > handles {
        assert!(t.elapsed() < Duration::from_secs(5), "forwarding tasks outlived their watches");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, _w) = s.view_and_watch(WatchFilter::All).await.unwrap();
    assert_eq!(s.shared.watchers().len(), 1, "ended watches stay registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_of_the_resume_revision_closes_the_watch_and_a_new_one_works() {
    let Some(etcd) = Etcd::single() else { return };
    let direct = connect(&etcd).await;
    let proxy = Proxy::start(etcd.endpoints()[0].trim_start_matches("http://").to_string()).await;
    let via_proxy =
        connect_with_timeout(vec![format!("http://{}", proxy.addr)], Duration::from_secs(2)).await;
    let (_, mut w) = via_proxy.view_and_watch(WatchFilter::All).await.unwrap();
    create_nodes(&direct, ids("a", 0..3)).await;
    for _ in 0..3 {
        next(&mut w).await;
    }

    proxy.cut();
    let revs = create_nodes(&direct, ids("b", 0..5)).await;
    let mut raw = raw(&etcd).await;
    let last = i64::try_from(*revs.last().unwrap()).unwrap();
    raw.compact(last, Some(CompactionOptions::new().with_physical())).await.unwrap();
    proxy.heal();

    // The watch cannot resume from before the compaction: it is closed, not silently gapped.
    let closed =
        tokio::time::timeout(EVENT_WAIT, w.next()).await.expect("the watch neither closed nor delivered");
    assert_eq!(closed, None);
    assert_eq!(via_proxy.watcher_count(), 0);

    // Reading again gives everything, and the new watch goes on from there.
    let (snap, mut w) = via_proxy.view_and_watch(WatchFilter::All).await.unwrap();
    assert_eq!(snap.nodes.len(), 8);
    assert_eq!(snap.revision, u64::try_from(last).unwrap());
    let rev = direct.commit(vec![Op::CreateNode(node("c"))]).await.unwrap();
    let e = next(&mut w).await;
    assert!(matches!(&e, Event::CreateNode(n) if n.id == "c" && version_of(n.meta.as_ref()) == rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_gives_unavailable_within_the_timeout_and_a_restart_recovers() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    // The timeout, plus scheduling on a loaded 2-core machine.
    const BOUND: Duration = Duration::from_millis(1800);
    let Some(mut etcd) = Etcd::single() else { return };
    let s = connect_with_timeout(etcd.endpoints(), TIMEOUT).await;
    let before = s.commit(vec![Op::CreateNode(node("a"))]).await.unwrap();
    let (_, mut w) = s.view_and_watch(WatchFilter::All).await.unwrap();

    etcd.members[0].kill();
    let timed = |what: &'static str, started: Instant, r: Result<(), StoreError>| {
        let took = started.elapsed();
        println!("etcd down: {what} failed after {took:?}: {r:?}");
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{what}: {r:?}");
        assert!(took < BOUND, "{what} took {took:?}");
    };
    let t = Instant::now();
    timed("get_node", t, s.get_node("a").await.map(drop));
    let t = Instant::now();
    timed("commit", t, s.commit(vec![Op::CreateNode(node("b"))]).await.map(drop));
    let t = Instant::now();
    timed("view", t, s.view(WatchFilter::All).await.map(drop));
    let t = Instant::now();
    timed("view_and_watch", t, s.view_and_watch(WatchFilter::All).await.map(drop));
    let t = Instant::now();
    let mut opts = EtcdOptions::new(etcd.endpoints());
    opts.connect_timeout = TIMEOUT;
    let err = EtcdStore::connect(opts).await.unwrap_err();
    timed("connect", t, Err(err.clone()));
    assert!(err.to_string().contains(etcd.members[0].client_url()), "{err}");

    let down = Instant::now();
    etcd.members[0].restart();
    let rev = loop {
        match s.commit(vec![Op::CreateNode(node("b"))]).await {
            Ok(rev) => break rev,
            Err(StoreError::Unavailable(_)) if down.elapsed() < Duration::from_secs(20) => {}
            Err(e) => panic!("after the restart: {e}"),
        }
    };
    println!("etcd restarted: commits work again {:?} after the restart began", down.elapsed());
    assert!(rev > before);
    assert_eq!(version_of(s.get_node("a").await.unwrap().unwrap().meta.as_ref()), before, "data survived");
    // The watch opened before the kill resumed by itself.
    let e = next(&mut w).await;
    assert!(matches!(&e, Event::CreateNode(n) if n.id == "b" && version_of(n.meta.as_ref()) == rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_etcd_gives_unavailable_within_the_timeout() {
    let Some(etcd) = Etcd::single() else { return };
    let s = connect_with_timeout(etcd.endpoints(), Duration::from_millis(500)).await;
    s.commit(vec![Op::CreateNode(node("a"))]).await.unwrap();
    etcd.members[0].signal("STOP");
    let t = Instant::now();
    let r = s.commit(vec![Op::CreateNode(node("b"))]).await;
    let took = t.elapsed();
    let r2 = s.get_node("a").await;
    etcd.members[0].signal("CONT");
    println!("etcd stopped (SIGSTOP): commit failed after {took:?}: {r:?}");
    assert!(matches!(r, Err(StoreError::Unavailable(ref m)) if m.contains("within")), "{r:?}");
    assert!(took < Duration::from_millis(1300), "took {took:?}");
    assert!(matches!(r2, Err(StoreError::Unavailable(_))), "{r2:?}");
    // A request that timed out may still have been applied once etcd resumed.
    let mut applied = false;
    for _ in 0..40 {
        match s.commit(vec![Op::CreateNode(node("b"))]).await {
            Ok(_) | Err(StoreError::Exists) => {
                applied = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(applied, "etcd did not come back after SIGCONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_etcd() {
    let Some(etcd) = Etcd::start(1, Timing::FAST, true) else { return };
    let tls = etcd.tls.as_ref().unwrap();
    let s = connect(&etcd).await;
    let (_, mut w) = s.view_and_watch(WatchFilter::All).await.unwrap();
    let rev = s.commit(vec![Op::CreateNode(node("a"))]).await.unwrap();
    assert_eq!(version_of(next(&mut w).await.node().unwrap().meta.as_ref()), rev);
    assert_eq!(s.view(WatchFilter::All).await.unwrap().nodes.len(), 1);

    let refused = |tls: Option<EtcdTls>, endpoints: Vec<String>| async move {
        let mut opts = EtcdOptions::new(endpoints);
        opts.tls = tls;
        opts.connect_timeout = Duration::from_secs(1);
        EtcdStore::connect(opts).await.unwrap_err()
    };
    // etcd demands a client certificate.
    let e = refused(Some(EtcdTls::new(&tls.ca)), etcd.endpoints()).await;
    assert!(matches!(&e, StoreError::Unavailable(m) if m.contains("TLS")), "{e}");
    // etcd's certificate is not from the CA this client trusts.
    let other = EtcdTls::new(&tls.other_ca).with_client_identity(&tls.client_cert, &tls.client_key);
    let e = refused(Some(other), etcd.endpoints()).await;
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    // No TLS at all.
    let e = refused(None, etcd.endpoints()).await;
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    // Configuration mistakes are told apart from an unreachable etcd.
    let plain_url = etcd.endpoints()[0].replace("https://", "http://");
    let e = refused(Some(EtcdTls::new(&tls.ca)), vec![plain_url]).await;
    assert!(matches!(e, StoreError::Config(_)), "{e}");
    let e = refused(Some(EtcdTls::new(tls.ca.with_file_name("missing.pem"))), etcd.endpoints()).await;
    assert!(matches!(&e, StoreError::Config(m) if m.contains("missing.pem")), "{e}");
    assert!(matches!(
        EtcdStore::connect(EtcdOptions::new(Vec::<String>::new())).await,
        Err(StoreError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_commits_fail_once_the_leadership_is_gone_and_write_nothing() {
    let Some(etcd) = Etcd::single() else { return };
    let s = connect(&etcd).await;
    let election = Election::new(&s, "/swarmca/leader", Duration::from_secs(2));
    let a = election.campaign("manager-a").await.unwrap();
    let as_a = s.fenced(a.fence().clone());
    assert_eq!(as_a.fence(), Some(a.fence()));
    as_a.commit(vec![Op::CreateNode(node("n1"))]).await.unwrap();
    // A fenced store still classifies ordinary failures while the leadership holds.
    assert_eq!(as_a.commit(vec![Op::CreateNode(node("n1"))]).await, Err(StoreError::Exists));
    // The election key under the prefix is not an object.
    assert_eq!(s.view(WatchFilter::All).await.unwrap().nodes.len(), 1);

    a.resign().await.unwrap();
    let other = connect(&etcd).await;
    let b =
        Election::new(&other, "/swarmca/leader", Duration::from_secs(2)).campaign("manager-b").await.unwrap();
    let rev = s.revision().await.unwrap();
    assert_eq!(as_a.commit(vec![Op::CreateNode(node("n2"))]).await, Err(StoreError::Fenced));
    // Fenced wins over what the ops alone would give.
    assert_eq!(as_a.commit(vec![Op::CreateNode(node("n1"))]).await, Err(StoreError::Fenced));
    assert_eq!(s.revision().await.unwrap(), rev, "a fenced-off commit wrote something");
    assert!(s.get_node("n2").await.unwrap().is_none());
    let as_b = other.fenced(b.fence().clone());
    as_b.commit(vec![Op::CreateNode(node("n2"))]).await.unwrap();

    // A lease that dies (revoked here, as by expiry) ends the leadership too.
    let mut raw = raw(&etcd).await;
    let leader_key = raw.get(b.fence().key(), None).await.unwrap();
    let lease = leader_key.kvs().first().unwrap().lease();
    let t = Instant::now();
    raw.lease_revoke(lease).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), b.lost()).await.expect("the loss went unnoticed");
    println!("revoked lease noticed after {:?} (TTL {:?})", t.elapsed(), b.ttl());
    assert!(b.is_lost());
    assert_eq!(as_b.commit(vec![Op::CreateNode(node("n3"))]).await, Err(StoreError::Fenced));
    assert!(s.get_node("n3").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_campaigner_waits_until_the_leader_resigns_or_its_lease_dies() {
    let Some(etcd) = Etcd::single() else { return };
    let s = connect(&etcd).await;
    let election = Election::new(&s, "/swarmca/leader", Duration::from_secs(2));
    assert_eq!(election.leader().await.unwrap(), None);
    let a = election.campaign("a").await.unwrap();
    let current = election.leader().await.unwrap().unwrap();
    assert_eq!((current.value(), current.fence()), (&b"a"[..], a.fence()));

    let campaign = |value: &'static str| {
        let election = election.clone();
        tokio::spawn(async move { election.campaign(value).await.unwrap() })
    };
    let b = campaign("b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.is_finished(), "elected while another leads");
    let t = Instant::now();
    a.resign().await.unwrap();
    let b =
        tokio::time::timeout(Duration::from_secs(2), b).await.expect("not elected after a resign").unwrap();
    println!("second candidate elected {:?} after the leader resigned", t.elapsed());
    assert_eq!(election.leader().await.unwrap().unwrap().value(), b"b");
    assert_ne!(b.fence(), current.fence());

    // The leader's process dies: no more keep-alives, nothing revoked; its lease expires.
    let c = campaign("c");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!c.is_finished());
    let ttl = b.ttl();
    let t = Instant::now();
    b.abandon();
    let c =
        tokio::time::timeout(ttl + Duration::from_secs(3), c).await.expect("lease never expired").unwrap();
    let took = t.elapsed();
    println!("third candidate elected {took:?} after the leader stopped its keep-alives (TTL {ttl:?})");
    assert!(took > ttl / 2, "elected too early: {took:?}");
    assert_eq!(election.leader().await.unwrap().unwrap().value(), b"c");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_lost_before_etcd_can_expire_the_lease() {
    let Some(etcd) = Etcd::single() else { return };
    let s = connect(&etcd).await;
    let a = Election::new(&s, "/swarmca/leader", Duration::from_secs(3)).campaign("a").await.unwrap();
    let ttl = a.ttl();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // etcd hangs: keep-alives go unanswered. The last acknowledged one was sent at most a third
    // of the TTL ago; etcd cannot expire the lease before a full TTL after it.
    etcd.members[0].signal("STOP");
    let t = Instant::now();
    let noticed = tokio::time::timeout(ttl, a.lost()).await;
    let took = t.elapsed();
    etcd.members[0].signal("CONT");
    println!("leadership loss noticed {took:?} after etcd hung (TTL {ttl:?})");
    assert!(noticed.is_ok(), "not noticed within the TTL");
    assert!(took <= ttl * 2 / 3 + Duration::from_millis(300), "noticed too late: {took:?}");
    assert!(a.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_cluster_keeps_working_after_its_leader_is_killed() {
    let Some(mut etcd) = Etcd::start(3, Timing::DEFAULT, false) else { return };
    let s = connect_with_timeout(etcd.endpoints(), Duration::from_secs(1)).await;
    let (_, mut w) = s.view_and_watch(WatchFilter::All).await.unwrap();
    let mut committed = create_nodes(&s, ids("a", 0..5)).await;

    let leader = etcd.leader_index().await.expect("no member is leader");
    let killed = Instant::now();
    etcd.members[leader].kill();

    let mut attempts = 0;
    let rev = loop {
        attempts += 1;
        match s.commit(vec![Op::CreateNode(node("after-kill"))]).await {
            Ok(rev) => break rev,
            // A commit whose answer was lost in the failover may have landed.
            Err(StoreError::Exists) => {
                break version_of(s.get_node("after-kill").await.unwrap().unwrap().meta.as_ref());
            }
            Err(StoreError::Unavailable(_)) if killed.elapsed() < Duration::from_secs(20) => {}
            Err(e) => panic!("{e}"),
        }
    };
    let stall = killed.elapsed();
    println!(
        "3-member etcd, leader {} killed: the store's first commit landed {stall:?} later ({attempts} attempts)",
        etcd.members[leader].name
    );
    assert!(stall < Duration::from_secs(15), "stalled {stall:?}");
    committed.push(rev);
    committed.extend(create_nodes(&s, ids("b", 0..5)).await);

    // The watch went on across the failover: every commit, once, in order.
    let mut seen = Vec::new();
    while seen.len() < committed.len() {
        seen.push(version_of(next(&mut w).await.node().unwrap().meta.as_ref()));
    }
    assert_eq!(seen, committed);
    quiet_for(&mut w, Duration::from_millis(300)).await;
}
