//! F1: the store as the server sees it, with injected faults: sequence conflicts on node
//! updates (a concurrent writer bumps the node between the server's read and its write),
//! transient errors, and slow commits. Rates come from the seed; everything is drawn from the
//! simulator's RNG, so a seed replays exactly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        Box::pin(self.commit_as(ops, None))
    }

    fn view_and_watch(&self, f: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        self.inner.view_and_watch(f)
    }
}

/// A leader term's store handle: reads as the shared store; every commit is applied only if the
/// term it was made for is still the current one, checked at the instant of applying (what the
/// etcd store's leader-key compare does inside its transaction).
pub struct FencedWriter {
    /// The store as this manager reaches it (a cut link fails its writes too).
    pub store: Arc<ManagerStore>,
    /// The current term (the world bumps it before a new leader starts).
    pub current: Arc<AtomicU64>,
    /// The term this handle was made for.
    pub term: u64,
}

impl Store for FencedWriter {
    fn view(&self, f: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        self.store.view(f)
    }

    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>> {
        self.store.get_node(id)
    }

    fn get_cluster<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        self.store.get_cluster(id)
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            self.store.reachable()?;
            self.store.store.commit_as(ops, Some((&*self.current, self.term))).await
        })
    }

    fn view_and_watch(&self, f: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        self.store.view_and_watch(f)
    }
}

impl FaultyStore {
    /// A commit, with faults; `fence` = (current term, the writer's term) for a leader's writes.
    async fn commit_as(&self, ops: Vec<Op>, fence: Option<(&AtomicU64, u64)>) -> Result<u64, StoreError> {
        let mut lose_answer = false;
        let applied = {
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
                // Half the injected errors come after the commit was applied: its answer is
                // lost, as etcd's can be (a timeout, a leader change while it commits).
                if error && thread_rng().gen_bool(0.5) {
                    lose_answer = true;
                } else if error {
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
            // No await from here to the apply: the fence check and the commit are one step.
            match fence {
                Some((current, term)) if current.load(Ordering::SeqCst) != term => {
                    self.shared.coverage.hit("fence.refused");
                    self.shared.log.push(format!(
                        "store: fenced write of term {term} refused (current term {})",
                        current.load(Ordering::SeqCst)
                    ));
                    return Err(StoreError::Fenced);
                }
                None => {
                    let before = crate::checkers::i11_fencing::states_before(&self.inner, &ops);
                    let own = crate::checkers::own_certificate_writes(&self.inner, &ops, false);
                    let applied = self.inner.commit_sync(ops.clone());
                    if applied.is_ok() {
                        crate::checkers::note_own_certificate_writes(&self.shared, own);
                        crate::checkers::i11_fencing::check_unfenced(&self.shared, &before, &ops);
                    }
                    applied
                }
                Some(_) => {
                    let own = crate::checkers::own_certificate_writes(&self.inner, &ops, true);
                    let applied = self.inner.commit_sync(ops);
                    if applied.is_ok() {
                        crate::checkers::note_own_certificate_writes(&self.shared, own);
                    }
                    applied
                }
            }
        };
        match applied {
            Ok(v) if lose_answer => {
                self.shared.coverage.hit("fault.store_answer_lost");
                self.shared.log.push(format!("store: commit v{v} applied, its answer lost (injected)"));
                Err(StoreError::Unavailable(
                    "injected: the commit was applied but its answer was lost".into(),
                ))
            }
            other => other,
        }
    }
}

/// The state of a manager's link to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Cut, with watches stalled: they deliver what they missed once the link is back, as an
    /// etcd watch resumes from its revision after an outage.
    CutStalled,
    /// Cut, with watches closed (a watch stream that broke for good: the watcher re-reads).
    CutClosed,
}

/// One manager's link to the shared store (a manager↔store partition cuts it). While cut,
/// every call through it fails `Unavailable`, as an etcd client's requests do once they time
/// out, and watches opened through it stall or close, so the server sees what it would see
/// from a real remote store it cannot reach.
pub struct ManagerStore {
    pub store: Arc<FaultyStore>,
    /// Which manager (for messages).
    pub index: usize,
    link: Arc<LinkState>,
}

/// The link's state and a wake-up for the watch relays. (Not `tokio::sync::watch`: it draws
/// from tokio's process-global RNG, which would break replaying a seed.)
#[derive(Debug)]
struct LinkState {
    state: std::sync::Mutex<Link>,
    changed: tokio::sync::Notify,
}

impl LinkState {
    fn get(&self) -> Link {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ManagerStore {
    pub fn new(store: Arc<FaultyStore>, index: usize) -> ManagerStore {
        let link = Arc::new(LinkState {
            state: std::sync::Mutex::new(Link::Up),
            changed: tokio::sync::Notify::new(),
        });
        ManagerStore { store, index, link }
    }

    pub fn set_link(&self, l: Link) {
        *self.link.state.lock().unwrap_or_else(|e| e.into_inner()) = l;
        self.link.changed.notify_waiters();
    }

    pub fn is_cut(&self) -> bool {
        self.link.get() != Link::Up
    }

    fn reachable(&self) -> Result<(), StoreError> {
        if self.is_cut() {
            return Err(StoreError::Unavailable(format!("manager-{} cannot reach the store", self.index)));
        }
        Ok(())
    }
}

impl Store for ManagerStore {
    fn view(&self, f: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        Box::pin(async move {
            self.reachable()?;
            self.store.view(f).await
        })
    }

    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>> {
        Box::pin(async move {
            self.reachable()?;
            self.store.get_node(id).await
        })
    }

    fn get_cluster<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        Box::pin(async move {
            self.reachable()?;
            self.store.get_cluster(id).await
        })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            self.reachable()?;
            self.store.commit(ops).await
        })
    }

    fn view_and_watch(&self, f: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        Box::pin(async move {
            self.reachable()?;
            let (snap, mut inner) = self.store.view_and_watch(f).await?;
            let link = self.link.clone();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            // Relays events while the link is up, holds them while it is cut with stalled
            // watches, and closes the watch when it is cut with closed ones (or the watcher
            // leaves).
            madsim::task::spawn(async move {
                loop {
                    // Registered before the state is read: no change is missed.
                    let changed = link.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    let state = link.get();
                    if state == Link::CutClosed {
                        break;
                    }
                    let stalled = state == Link::CutStalled;
                    tokio::select! {
                        biased;
                        _ = &mut changed => {}
                        _ = tx.closed() => break,
                        ev = inner.next_shared(), if !stalled => match ev {
                            Some(ev) => {
                                if tx.send(ev).is_err() {
                                    break;
                                }
                            }
                            None => break,
                        },
                    }
                }
            });
            Ok((snap, Watch::new(rx)))
        })
    }
}
