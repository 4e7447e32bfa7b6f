//! F1: the store as the server sees it, with injected faults: sequence conflicts on node
//! updates (a concurrent writer bumps the node between the server's read and its write),
//! transient errors, and slow commits. Rates come from the seed; everything is drawn from the
//! simulator's RNG, so a seed replays exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use swarmca_store::{
    BoxFuture, Cluster, MemStore, Node, Op, Snapshot, Store, StoreError, Watch, WatchFilter,
};

use crate::shared::Shared;

/// The shared store with a fault injector in front.
pub struct FaultyStore {
    pub inner: MemStore,
    shared: Arc<Shared>,
    enabled: AtomicBool,
}

impl FaultyStore {
    pub fn new(inner: MemStore, shared: Arc<Shared>) -> FaultyStore {
        FaultyStore { inner, shared, enabled: AtomicBool::new(true) }
    }

    /// Turns injection off (liveness phase) or on.
    pub fn set_faults(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    fn faults(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Commits `node` unchanged on behalf of a phantom writer, bumping its version.
    fn bump(&self, id: &str) -> bool {
        let snap = self.inner.view_and_watch_sync(WatchFilter::Node(id.to_string())).0;
        match snap.nodes.into_iter().next() {
            Some(n) => self.inner.commit_sync(vec![Op::UpdateNode(n)]).is_ok(),
            None => false,
        }
    }
}

fn is_certificate_write(n: &Node) -> bool {
    n.certificate.as_ref().and_then(|c| c.status.as_ref()).is_some_and(|s| s.state == 3 || s.state == 4)
}

impl FaultyStore {
    /// Reads take time too (a remote store): with the slow-commit probability, up to 200 ms.
    async fn read_delay(&self) {
        if self.faults() && thread_rng().gen_bool(self.shared.opts.p_slow_commit) {
            let ms = thread_rng().gen_range(1..200);
            madsim::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

impl Store for FaultyStore {
    fn view(&self, f: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        Box::pin(async move {
            self.read_delay().await;
            self.inner.view(f).await
        })
    }

    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>> {
        Box::pin(async move {
            self.read_delay().await;
            self.inner.get_node(id).await
        })
    }

    fn get_cluster<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        Box::pin(async move {
            self.read_delay().await;
            self.inner.get_cluster(id).await
        })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let opts = &self.shared.opts;
            crate::checkers::i8_rotation::check_commit(&self.shared, &ops);
            if self.faults() {
                let (slow, error, conflict) = {
                    let mut r = thread_rng();
                    (
                        r.gen_bool(opts.p_slow_commit),
                        r.gen_bool(opts.p_store_error),
                        r.gen_bool(opts.p_conflict),
                    )
                };
                if slow {
                    let ms = thread_rng().gen_range(1..2000);
                    madsim::time::sleep(Duration::from_millis(ms)).await;
                }
                if error {
                    self.shared.coverage.hit("fault.store_error_injected");
                    self.shared.log.push("store: injected transient error");
                    return Err(StoreError::Unavailable("injected transient store error".into()));
                }
                if conflict {
                    let target = ops.iter().find_map(|op| match op {
                        Op::UpdateNode(n) => Some(n),
                        _ => None,
                    });
                    if let Some(n) = target {
                        if self.bump(&n.id) {
                            self.shared.coverage.hit("fault.store_conflict_injected");
                            if is_certificate_write(n) {
                                self.shared.coverage.hit("branch.conflict_on_certificate_write");
                            }
                            self.shared.log.push(format!("store: injected conflict on node {}", n.id));
                        }
                    }
                }
            }
            self.inner.commit_sync(ops)
        })
    }

    fn view_and_watch(&self, f: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        self.inner.view_and_watch(f)
    }
}
