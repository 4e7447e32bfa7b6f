//! In-memory [`Store`]: BTreeMaps under one mutex, so iteration order is deterministic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::{
    set_version, version_of, BoxFuture, Cluster, Event, Node, Op, Snapshot, Store, StoreError,
    Watch, WatchFilter,
};

/// An in-memory store. Cloning gives another handle to the same data.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("MemStore")
            .field("revision", &g.revision)
            .field("nodes", &g.nodes.len())
            .field("clusters", &g.clusters.len())
            .field("watchers", &g.watchers.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    revision: u64,
    nodes: BTreeMap<String, Node>,
    clusters: BTreeMap<String, Cluster>,
    watchers: Vec<(WatchFilter, mpsc::UnboundedSender<Event>)>,
}

impl MemStore {
    /// An empty store at revision 0.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock can only come from a bug in this module; the data is
        // still consistent because every mutation is applied after validation, so recover it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// How many watches are registered and still open.
    pub fn watcher_count(&self) -> usize {
        let mut g = self.lock();
        g.watchers.retain(|(_, tx)| !tx.is_closed());
        g.watchers.len()
    }

    fn snapshot(g: &Inner, filter: &WatchFilter) -> Snapshot {
        let (nodes, clusters) = match filter {
            WatchFilter::All => (
                g.nodes.values().cloned().collect(),
                g.clusters.values().cloned().collect(),
            ),
            WatchFilter::Node(id) => (g.nodes.get(id).cloned().into_iter().collect(), Vec::new()),
            WatchFilter::Cluster(id) => {
                (Vec::new(), g.clusters.get(id).cloned().into_iter().collect())
            }
        };
        Snapshot { revision: g.revision, nodes, clusters }
    }

    /// Applies `ops` synchronously; see [`Store::commit`].
    pub fn commit_sync(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let rev = g.revision + 1;
        // Validate against a staged overlay first, so a failure writes nothing.
        let mut nodes: BTreeMap<String, Option<Node>> = BTreeMap::new();
        let mut clusters: BTreeMap<String, Option<Cluster>> = BTreeMap::new();
        let mut events = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::CreateNode(mut n) => {
                    let cur = staged(&nodes, &g.nodes, &n.id);
                    if cur.is_some() {
                        return Err(StoreError::Exists);
                    }
                    set_version(&mut n.meta, rev);
                    events.push(Event::CreateNode(n.clone()));
                    nodes.insert(n.id.clone(), Some(n));
                }
                Op::UpdateNode(mut n) => {
                    let cur = staged(&nodes, &g.nodes, &n.id);
                    let cur = cur.ok_or(StoreError::NotExist)?;
                    check_version(cur.meta.as_ref(), n.meta.as_ref())?;
                    set_version(&mut n.meta, rev);
                    events.push(Event::UpdateNode(n.clone()));
                    nodes.insert(n.id.clone(), Some(n));
                }
                Op::DeleteNode(n) => {
                    let cur = staged(&nodes, &g.nodes, &n.id);
                    let cur = cur.ok_or(StoreError::NotExist)?;
                    check_version(cur.meta.as_ref(), n.meta.as_ref())?;
                    events.push(Event::DeleteNode(cur));
                    nodes.insert(n.id.clone(), None);
                }
                Op::CreateCluster(mut c) => {
                    let cur = staged(&clusters, &g.clusters, &c.id);
                    if cur.is_some() {
                        return Err(StoreError::Exists);
                    }
                    set_version(&mut c.meta, rev);
                    events.push(Event::CreateCluster(c.clone()));
                    clusters.insert(c.id.clone(), Some(c));
                }
                Op::UpdateCluster(mut c) => {
                    let cur = staged(&clusters, &g.clusters, &c.id);
                    let cur = cur.ok_or(StoreError::NotExist)?;
                    check_version(cur.meta.as_ref(), c.meta.as_ref())?;
                    set_version(&mut c.meta, rev);
                    events.push(Event::UpdateCluster(c.clone()));
                    clusters.insert(c.id.clone(), Some(c));
                }
            }
        }
        if events.is_empty() {
            return Ok(g.revision);
        }
        for (id, n) in nodes {
            match n {
                Some(n) => g.nodes.insert(id, n),
                None => g.nodes.remove(&id),
            };
        }
        for (id, c) in clusters {
            if let Some(c) = c {
                g.clusters.insert(id, c);
            }
        }
        g.revision = rev;
        g.watchers.retain(|(filter, tx)| {
            for e in events.iter().filter(|e| filter.matches(e)) {
                if tx.send(e.clone()).is_err() {
                    return false;
                }
            }
            !tx.is_closed()
        });
        Ok(rev)
    }

    /// Snapshot and watch, synchronously; see [`Store::view_and_watch`].
    pub fn view_and_watch_sync(&self, filter: WatchFilter) -> (Snapshot, Watch) {
        let mut g = self.lock();
        let snap = Self::snapshot(&g, &filter);
        let (tx, rx) = mpsc::unbounded_channel();
        g.watchers.push((filter, tx));
        (snap, Watch::new(rx))
    }
}

/// The value of `id` as staged in this commit so far, else as stored.
fn staged<T: Clone>(
    overlay: &BTreeMap<String, Option<T>>,
    base: &BTreeMap<String, T>,
    id: &str,
) -> Option<T> {
    match overlay.get(id) {
        Some(v) => v.clone(),
        None => base.get(id).cloned(),
    }
}

/// Fails with [`StoreError::SequenceConflict`] unless both metas carry the same version.
fn check_version(
    stored: Option<&swarmca_types::Meta>,
    given: Option<&swarmca_types::Meta>,
) -> Result<(), StoreError> {
    if version_of(stored) == version_of(given) {
        Ok(())
    } else {
        Err(StoreError::SequenceConflict)
    }
}

impl Store for MemStore {
    fn view(&self, filter: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        let snap = Self::snapshot(&self.lock(), &filter);
        Box::pin(async move { Ok(snap) })
    }

    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>> {
        let n = self.lock().nodes.get(id).cloned();
        Box::pin(async move { Ok(n) })
    }

    fn get_cluster<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        let c = self.lock().clusters.get(id).cloned();
        Box::pin(async move { Ok(c) })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        let r = self.commit_sync(ops);
        Box::pin(async move { r })
    }

    fn view_and_watch(
        &self,
        filter: WatchFilter,
    ) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        let r = self.view_and_watch_sync(filter);
        Box::pin(async move { Ok(r) })
    }
}
