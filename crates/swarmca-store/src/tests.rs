//! The behavioural suite, run against every store: each test is a generic function over a
//! [`TestStore`], stamped out once per store by `behaviour_suite!` at the end.

use std::sync::Arc;

use super::*;

/// What the suite needs of a store beyond [`Store`].
pub(crate) trait TestStore: Store + Clone {
    fn revision(&self) -> u64;
    fn watcher_count(&self) -> usize;

    /// The revision of the empty store (a fresh etcd is at 1).
    fn first_revision(&self) -> u64 {
        0
    }

    /// Commits, and returns once every watch has the events of the commit.
    fn commit_sync(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        block_on(self.commit(ops))
    }

    fn view_and_watch_sync(&self, filter: WatchFilter) -> (Snapshot, Watch) {
        block_on(self.view_and_watch(filter)).unwrap()
    }
}

impl TestStore for MemStore {
    fn revision(&self) -> u64 {
        MemStore::revision(self)
    }

    fn watcher_count(&self) -> usize {
        MemStore::watcher_count(self)
    }

    // MemStore's own synchronous API, which other crates use.
    fn commit_sync(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        MemStore::commit_sync(self, ops)
    }

    fn view_and_watch_sync(&self, filter: WatchFilter) -> (Snapshot, Watch) {
        MemStore::view_and_watch_sync(self, filter)
    }
}

/// The revision `n` commits after the empty store.
fn at<S: TestStore>(s: &S, n: u64) -> u64 {
    s.first_revision() + n
}

/// An [`EtcdStore`](crate::EtcdStore) whose futures run on the fixture's runtime, since the
/// suite polls them with [`block_on`], outside any runtime.
#[cfg(feature = "etcd")]
#[derive(Clone)]
pub(crate) struct TestEtcd {
    store: crate::EtcdStore,
    rt: tokio::runtime::Handle,
}

#[cfg(feature = "etcd")]
impl TestEtcd {
    pub(crate) fn new(f: &crate::etcd::testing::Fixture) -> TestEtcd {
        TestEtcd { store: f.connect(), rt: f.rt.handle().clone() }
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> BoxFuture<'static, T> {
        let task = self.rt.spawn(f);
        Box::pin(async move { task.await.unwrap() })
    }
}

#[cfg(feature = "etcd")]
impl Store for TestEtcd {
    fn view(&self, filter: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        let s = self.store.clone();
        self.run(async move { s.view(filter).await })
    }

    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>> {
        let (s, id) = (self.store.clone(), id.to_string());
        self.run(async move { s.get_node(&id).await })
    }

    fn get_cluster<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        let (s, id) = (self.store.clone(), id.to_string());
        self.run(async move { s.get_cluster(&id).await })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        let s = self.store.clone();
        self.run(async move { s.commit(ops).await })
    }

    fn view_and_watch(&self, filter: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        let s = self.store.clone();
        self.run(async move { s.view_and_watch(filter).await })
    }
}

#[cfg(feature = "etcd")]
impl TestStore for TestEtcd {
    fn revision(&self) -> u64 {
        let s = self.store.clone();
        block_on(self.run(async move { s.revision().await })).unwrap()
    }

    fn watcher_count(&self) -> usize {
        self.store.watcher_count()
    }

    fn first_revision(&self) -> u64 {
        1
    }

    // etcd delivers events a little after the commit returns.
    fn commit_sync(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let r = block_on(self.commit(ops.clone()));
        if let Ok(rev) = r {
            self.store.await_delivery(rev, &ops);
        }
        r
    }
}

#[cfg(feature = "persistent")]
impl TestStore for RedbStore {
    fn revision(&self) -> u64 {
        RedbStore::revision(self)
    }

    fn watcher_count(&self) -> usize {
        RedbStore::watcher_count(self)
    }
}

/// A directory under the system temp dir, removed with everything in it on drop.
#[cfg(feature = "persistent")]
pub(crate) struct TempDir(std::path::PathBuf);

#[cfg(feature = "persistent")]
impl TempDir {
    pub(crate) fn new() -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name =
            format!("swarmca-store-{}-{}-{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// A new store in a file of this directory.
    pub(crate) fn store(&self) -> RedbStore {
        RedbStore::open(&self.0.join("store.redb")).unwrap()
    }
}

#[cfg(feature = "persistent")]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn node(id: &str) -> Node {
    Node { id: id.to_string(), ..Default::default() }
}

pub(crate) fn cluster(id: &str) -> Cluster {
    Cluster { id: id.to_string(), ..Default::default() }
}

/// Runs a future to completion on this thread (store futures need no runtime).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => return v,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

pub(crate) fn next_now(w: &mut Watch) -> Option<Event> {
    w.rx.try_recv().ok().map(std::sync::Arc::unwrap_or_clone)
}

fn create_sets_version_to_new_revision<S: TestStore>(s: S) {
    let rev = s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    assert_eq!(rev, at(&s, 1));
    let n = block_on(s.get_node("a")).unwrap().unwrap();
    assert_eq!(version_of(n.meta.as_ref()), at(&s, 1));
    let rev2 = s.commit_sync(vec![Op::CreateNode(node("b")), Op::CreateCluster(cluster("c"))]).unwrap();
    assert_eq!(rev2, at(&s, 2));
    assert_eq!(version_of(block_on(s.get_node("b")).unwrap().unwrap().meta.as_ref()), at(&s, 2));
    assert_eq!(version_of(block_on(s.get_cluster("c")).unwrap().unwrap().meta.as_ref()), at(&s, 2));
}

fn create_existing_id_fails_with_exists_and_writes_nothing<S: TestStore>(s: S) {
    s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    let err = s.commit_sync(vec![Op::CreateNode(node("b")), Op::CreateNode(node("a"))]).unwrap_err();
    assert_eq!(err, StoreError::Exists);
    assert!(block_on(s.get_node("b")).unwrap().is_none(), "failed commit must be atomic");
    assert_eq!(s.revision(), at(&s, 1));
    let err = s.commit_sync(vec![Op::CreateCluster(cluster("c")), Op::CreateCluster(cluster("c"))]);
    assert_eq!(err, Err(StoreError::Exists));
}

fn stale_update_fails_with_sequence_conflict<S: TestStore>(s: S) {
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

fn stale_cluster_update_and_delete_conflict<S: TestStore>(s: S) {
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

fn update_or_delete_missing_is_not_exist<S: TestStore>(s: S) {
    assert_eq!(s.commit_sync(vec![Op::UpdateNode(node("x"))]), Err(StoreError::NotExist));
    assert_eq!(s.commit_sync(vec![Op::DeleteNode(node("x"))]), Err(StoreError::NotExist));
    assert_eq!(s.commit_sync(vec![Op::UpdateCluster(cluster("x"))]), Err(StoreError::NotExist));
    assert_eq!(s.revision(), at(&s, 0));
}

fn failed_commit_sends_no_events<S: TestStore>(s: S) {
    let (_, mut w) = s.view_and_watch_sync(WatchFilter::All);
    let _ = s.commit_sync(vec![Op::CreateNode(node("a")), Op::UpdateNode(node("zz"))]);
    assert!(next_now(&mut w).is_none());
}

fn view_and_watch_has_no_gap_and_no_duplicate<S: TestStore>(s: S) {
    for i in 0..5 {
        s.commit_sync(vec![Op::CreateNode(node(&format!("n{i}")))]).unwrap();
    }
    let (snap, mut w) = s.view_and_watch_sync(WatchFilter::All);
    assert_eq!(snap.revision, at(&s, 5));
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

fn events_carry_new_versions_in_commit_order<S: TestStore>(s: S) {
    let (_, mut w) = s.view_and_watch_sync(WatchFilter::All);
    s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    let a = block_on(s.get_node("a")).unwrap().unwrap();
    s.commit_sync(vec![Op::UpdateNode(a)]).unwrap();
    let a = block_on(s.get_node("a")).unwrap().unwrap();
    s.commit_sync(vec![Op::DeleteNode(a)]).unwrap();
    let e1 = next_now(&mut w).unwrap();
    let e2 = next_now(&mut w).unwrap();
    let e3 = next_now(&mut w).unwrap();
    let (v1, v2) = (at(&s, 1), at(&s, 2));
    assert!(matches!(&e1, Event::CreateNode(n) if version_of(n.meta.as_ref()) == v1));
    assert!(matches!(&e2, Event::UpdateNode(n) if version_of(n.meta.as_ref()) == v2));
    assert!(matches!(&e3, Event::DeleteNode(n) if n.id == "a"));
    assert!(next_now(&mut w).is_none());
}

fn node_filter_sees_only_that_node<S: TestStore>(s: S) {
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

fn cluster_filter_sees_only_that_cluster<S: TestStore>(s: S) {
    let (_, mut w) = s.view_and_watch_sync(WatchFilter::Cluster("c".into()));
    s.commit_sync(vec![Op::CreateNode(node("a")), Op::CreateCluster(cluster("d"))]).unwrap();
    assert!(next_now(&mut w).is_none());
    s.commit_sync(vec![Op::CreateCluster(cluster("c"))]).unwrap();
    assert_eq!(next_now(&mut w).unwrap().cluster().unwrap().id, "c");
}

fn dropped_watch_is_unsubscribed<S: TestStore>(s: S) {
    let (_, w) = s.view_and_watch_sync(WatchFilter::All);
    let (_, _w2) = s.view_and_watch_sync(WatchFilter::Node("x".into()));
    assert_eq!(s.watcher_count(), 2);
    drop(w);
    assert_eq!(s.watcher_count(), 1);
}

fn snapshot_order_is_deterministic<S: TestStore>(s: S) {
    for id in ["m", "b", "z", "a"] {
        s.commit_sync(vec![Op::CreateNode(node(id))]).unwrap();
    }
    let snap = block_on(s.view(WatchFilter::All)).unwrap();
    let ids: Vec<_> = snap.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "m", "z"]);
}

fn two_writes_to_one_object_in_one_commit_need_the_staged_version<S: TestStore>(s: S) {
    s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    let a = block_on(s.get_node("a")).unwrap().unwrap();
    // The second update still carries version 1, but the first staged write moved it to 2.
    let r = s.commit_sync(vec![Op::UpdateNode(a.clone()), Op::UpdateNode(a)]);
    assert_eq!(r, Err(StoreError::SequenceConflict));
    assert_eq!(s.revision(), at(&s, 1));
}

fn concurrent_read_modify_write_loses_no_update<S: TestStore>(s: S) {
    const TASKS: u32 = 64;
    const INCREMENTS: u32 = 5;
    s.commit_sync(vec![Op::CreateNode(node("counter"))]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).build().unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    for _ in 0..INCREMENTS {
                        loop {
                            let mut n = s.get_node("counter").await.unwrap().unwrap();
                            n.vxlanudp_port += 1;
                            match s.commit(vec![Op::UpdateNode(n)]).await {
                                Ok(_) => break,
                                Err(StoreError::SequenceConflict) => tokio::task::yield_now().await,
                                Err(e) => panic!("unexpected commit error: {e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let n = block_on(s.get_node("counter")).unwrap().unwrap();
    assert_eq!(n.vxlanudp_port, TASKS * INCREMENTS, "an increment was lost");
    assert_eq!(version_of(n.meta.as_ref()), s.revision());
    assert_eq!(s.revision(), at(&s, 1 + u64::from(TASKS * INCREMENTS)));
}

fn empty_commit_returns_the_current_revision<S: TestStore>(s: S) {
    assert_eq!(s.commit_sync(Vec::new()), Ok(at(&s, 0)));
    s.commit_sync(vec![Op::CreateNode(node("a"))]).unwrap();
    assert_eq!(s.commit_sync(Vec::new()), Ok(at(&s, 1)));
    assert_eq!(s.revision(), at(&s, 1));
}

/// Stamps out each generic test above once per store.
macro_rules! behaviour_suite {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $(
                #[test]
                fn $name() {
                    super::$name(crate::MemStore::new());
                }
            )*
        }

        #[cfg(feature = "persistent")]
        mod redb {
            $(
                #[test]
                fn $name() {
                    let dir = super::TempDir::new();
                    super::$name(dir.store());
                }
            )*
        }

        // Each test on a fresh etcd (so that revisions start at 1), skipped without etcd.
        #[cfg(feature = "etcd")]
        mod etcd {
            $(
                #[test]
                fn $name() {
                    let Some(f) = crate::etcd::testing::Fixture::start() else { return };
                    super::$name(super::TestEtcd::new(&f));
                }
            )*
        }
    };
}

behaviour_suite!(
    create_sets_version_to_new_revision,
    create_existing_id_fails_with_exists_and_writes_nothing,
    stale_update_fails_with_sequence_conflict,
    stale_cluster_update_and_delete_conflict,
    update_or_delete_missing_is_not_exist,
    failed_commit_sends_no_events,
    view_and_watch_has_no_gap_and_no_duplicate,
    events_carry_new_versions_in_commit_order,
    node_filter_sees_only_that_node,
    cluster_filter_sees_only_that_cluster,
    dropped_watch_is_unsubscribed,
    snapshot_order_is_deterministic,
    two_writes_to_one_object_in_one_commit_need_the_staged_version,
    concurrent_read_modify_write_loses_no_update,
    empty_commit_returns_the_current_revision,
);
