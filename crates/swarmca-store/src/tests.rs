use super::*;

fn node(id: &str) -> Node {
    Node { id: id.to_string(), ..Default::default() }
}

fn cluster(id: &str) -> Cluster {
    Cluster { id: id.to_string(), ..Default::default() }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // The in-memory store's futures are always ready.
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("in-memory store future was not ready"),
    }
}

fn next_now(w: &mut Watch) -> Option<Event> {
    w.rx.try_recv().ok()
}

#[test]
fn create_sets_version_to_new_revision() {
    let s = MemStore::new();
    let rev = s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    assert_eq!(rev, 1);
    let n = block_on(s.get_node("a")).unwrap().unwrap();
    assert_eq!(version_of(n.meta.as_ref()), 1);
    let rev2 = s.commit_sync(vec![Op::CreateNode(node("b")), Op::CreateCluster(cluster("c"))]).unwrap();
    assert_eq!(rev2, 2);
    assert_eq!(version_of(block_on(s.get_node("b")).unwrap().unwrap().meta.as_ref()), 2);
    assert_eq!(version_of(block_on(s.get_cluster("c")).unwrap().unwrap().meta.as_ref()), 2);
}

#[test]
fn create_existing_id_fails_with_exists_and_writes_nothing() {
    let s = MemStore::new();
    s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    let err = s.commit_sync(vec![Op::CreateNode(node("b")), Op::CreateNode(node("a"))]).unwrap_err();
    assert_eq!(err, StoreError::Exists);
    assert!(block_on(s.get_node("b")).unwrap().is_none(), "failed commit must be atomic");
    assert_eq!(s.revision(), 1);
    let err = s.commit_sync(vec![Op::CreateCluster(cluster("c")), Op::CreateCluster(cluster("c"))]);
    assert_eq!(err, Err(StoreError::Exists));
}

#[test]
fn stale_update_fails_with_sequence_conflict() {
    let s = MemStore::new();
    s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    let read1 = block_on(s.get_node("a")).unwrap().unwrap();
    let read2 = read1.clone();
    let mut w1 = read1;
    w1.role = 1;
    s.commit_sync(vec![Op::UpdateNode(w1)]).unwrap();
    let mut w2 = read2;
    w2.role = 0;
    w2.certificate = Some(Default::default());
    assert_eq!(s.commit_sync(vec![Op::UpdateNode(w2)]), Err(StoreError::SequenceConflict));
    let cur = block_on(s.get_node("a")).unwrap().unwrap();
    assert_eq!(cur.role, 1, "the conflicting write must not land");
    assert!(cur.certificate.is_none());
}

#[test]
fn stale_cluster_update_and_delete_conflict() {
    let s = MemStore::new();
    s.commit_sync(vec![Op::CreateCluster(cluster("c")), Op::CreateNode(node("a"))]).unwrap();
    let c = block_on(s.get_cluster("c")).unwrap().unwrap();
    s.commit_sync(vec![Op::UpdateCluster(c.clone())]).unwrap();
    assert_eq!(s.commit_sync(vec![Op::UpdateCluster(c)]), Err(StoreError::SequenceConflict));
    let n = block_on(s.get_node("a")).unwrap().unwrap();
    let mut n2 = n.clone();
    n2.role = 1;
    s.commit_sync(vec![Op::UpdateNode(n2)]).unwrap();
    assert_eq!(s.commit_sync(vec![Op::DeleteNode(n)]), Err(StoreError::SequenceConflict));
    assert!(block_on(s.get_node("a")).unwrap().is_some());
}

#[test]
fn update_or_delete_missing_is_not_exist() {
    let s = MemStore::new();
    assert_eq!(s.commit_sync(vec![Op::UpdateNode(node("x"))]), Err(StoreError::NotExist));
    assert_eq!(s.commit_sync(vec![Op::DeleteNode(node("x"))]), Err(StoreError::NotExist));
    assert_eq!(s.commit_sync(vec![Op::UpdateCluster(cluster("x"))]), Err(StoreError::NotExist));
    assert_eq!(s.revision(), 0);
}

#[test]
fn failed_commit_sends_no_events() {
    let s = MemStore::new();
    let (_, mut w) = s.view_and_watch_sync(WatchFilter::All);
    let _ = s.commit_sync(vec![Op::CreateNode(node("a")), Op::UpdateNode(node("zz"))]);
    assert!(next_now(&mut w).is_none());
}

#[test]
fn view_and_watch_has_no_gap_and_no_duplicate() {
    let s = MemStore::new();
    for i in 0..5 {
        s.commit_sync(vec![Op::CreateNode(node(&format!("n{i}")))]).unwrap();
    }
    let (snap, mut w) = s.view_and_watch_sync(WatchFilter::All);
    assert_eq!(snap.revision, 5);
    assert_eq!(snap.nodes.len(), 5);
    for i in 5..10 {
        s.commit_sync(vec![Op::CreateNode(node(&format!("n{i}")))]).unwrap();
    }
    let mut seen: Vec<String> = snap.nodes.iter().map(|n| n.id.clone()).collect();
    while let Some(e) = next_now(&mut w) {
        seen.push(e.node().unwrap().id.clone());
    }
    let want: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, want);
    assert_eq!(seen.len(), 10, "no duplicates between snapshot and events");
}

#[test]
fn events_carry_new_versions_in_commit_order() {
    let s = MemStore::new();
    let (_, mut w) = s.view_and_watch_sync(WatchFilter::All);
    s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    let a = block_on(s.get_node("a")).unwrap().unwrap();
    s.commit_sync(vec![Op::UpdateNode(a)]).unwrap();
    let a = block_on(s.get_node("a")).unwrap().unwrap();
    s.commit_sync(vec![Op::DeleteNode(a)]).unwrap();
    let e1 = next_now(&mut w).unwrap();
    let e2 = next_now(&mut w).unwrap();
    let e3 = next_now(&mut w).unwrap();
    assert!(matches!(&e1, Event::CreateNode(n) if version_of(n.meta.as_ref()) == 1));
    assert!(matches!(&e2, Event::UpdateNode(n) if version_of(n.meta.as_ref()) == 2));
    assert!(matches!(&e3, Event::DeleteNode(n) if n.id == "a"));
    assert!(next_now(&mut w).is_none());
}

#[test]
fn node_filter_sees_only_that_node() {
    let s = MemStore::new();
    s.commit_sync(vec![Op::CreateNode(node("a")), Op::CreateNode(node("b"))]).unwrap();
    let (snap, mut w) = s.view_and_watch_sync(WatchFilter::Node("b".into()));
    assert_eq!(snap.nodes.len(), 1);
    assert_eq!(snap.nodes[0].id, "b");
    let a = block_on(s.get_node("a")).unwrap().unwrap();
    s.commit_sync(vec![Op::UpdateNode(a)]).unwrap();
    assert!(next_now(&mut w).is_none());
    let b = block_on(s.get_node("b")).unwrap().unwrap();
    s.commit_sync(vec![Op::UpdateNode(b)]).unwrap();
    assert_eq!(next_now(&mut w).unwrap().node().unwrap().id, "b");
}

#[test]
fn cluster_filter_sees_only_that_cluster() {
    let s = MemStore::new();
    let (_, mut w) = s.view_and_watch_sync(WatchFilter::Cluster("c".into()));
    s.commit_sync(vec![Op::CreateNode(node("a")), Op::CreateCluster(cluster("d"))]).unwrap();
    assert!(next_now(&mut w).is_none());
    s.commit_sync(vec![Op::CreateCluster(cluster("c"))]).unwrap();
    assert_eq!(next_now(&mut w).unwrap().cluster().unwrap().id, "c");
}

#[test]
fn dropped_watch_is_unsubscribed() {
    let s = MemStore::new();
    let (_, w) = s.view_and_watch_sync(WatchFilter::All);
    let (_, _w2) = s.view_and_watch_sync(WatchFilter::Node("x".into()));
    assert_eq!(s.watcher_count(), 2);
    drop(w);
    assert_eq!(s.watcher_count(), 1);
}

#[test]
fn snapshot_order_is_deterministic() {
    let s = MemStore::new();
    for id in ["m", "b", "z", "a"] {
        s.commit_sync(vec![Op::CreateNode(node(id))]).unwrap();
    }
    let snap = block_on(s.view(WatchFilter::All)).unwrap();
    let ids: Vec<_> = snap.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "m", "z"]);
}

#[test]
fn two_writes_to_one_object_in_one_commit_need_the_staged_version() {
    let s = MemStore::new();
    s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    let a = block_on(s.get_node("a")).unwrap().unwrap();
    // The second update still carries version 1, but the first staged write moved it to 2.
    let r = s.commit_sync(vec![Op::UpdateNode(a.clone()), Op::UpdateNode(a)]);
    assert_eq!(r, Err(StoreError::SequenceConflict));
    assert_eq!(s.revision(), 1);
}
