//! What every store keeps in memory, and the commit validation they share.
//!
//! [`Tables`] holds the objects; [`Tables::stage`] validates a commit against them plus a
//! [`Changes`] overlay of writes not applied yet (MemStore passes an empty one; RedbStore the
//! commits queued before this one in the same batch). [`Core`] adds the watchers and the mutex,
//! and serves every read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::{set_version, version_of, Cluster, Event, Node, Op, Snapshot, StoreError, Watch, WatchFilter};

/// The stored objects at one revision.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub(crate) revision: u64,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) clusters: BTreeMap<String, Cluster>,
}

/// Writes staged on top of [`Tables`], up to `revision`. `None` is a deletion.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) revision: u64,
    pub(crate) nodes: BTreeMap<String, Option<Node>>,
    pub(crate) clusters: BTreeMap<String, Option<Cluster>>,
}

impl Changes {
    /// No writes yet, on top of a store at `revision`.
    pub(crate) fn at(revision: u64) -> Changes {
        Changes { revision, ..Changes::default() }
    }

    /// Whether nothing is staged.
    #[cfg_attr(not(feature = "persistent"), expect(dead_code, reason = "only RedbStore uses it"))]
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.clusters.is_empty()
    }

    /// Folds a later commit's changes into these.
    #[cfg_attr(not(feature = "persistent"), expect(dead_code, reason = "only RedbStore uses it"))]
    pub(crate) fn absorb(&mut self, later: Changes) {
        self.revision = later.revision;
        self.nodes.extend(later.nodes);
        self.clusters.extend(later.clusters);
    }
}

/// The value of `id` as staged by this commit, else by earlier pending ones, else as stored.
fn lookup<T: Clone>(
    own: &BTreeMap<String, Option<T>>,
    pending: &BTreeMap<String, Option<T>>,
    base: &BTreeMap<String, T>,
    id: &str,
) -> Option<T> {
    match own.get(id).or_else(|| pending.get(id)) {
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

impl Tables {
    /// Validates `ops` against these tables overlaid with `pending`, and returns the commit's
    /// own changes (at revision `pending.revision + 1`) and its events. Writes nothing: on error
    /// the caller simply drops the result.
    pub(crate) fn stage(&self, pending: &Changes, ops: Vec<Op>) -> Result<(Changes, Vec<Event>), StoreError> {
        let rev = pending.revision + 1;
        let mut own = Changes::at(rev);
        let mut events = Vec::with_capacity(ops.len());
        let node = |own: &Changes, id: &str| lookup(&own.nodes, &pending.nodes, &self.nodes, id);
        let cluster = |own: &Changes, id: &str| lookup(&own.clusters, &pending.clusters, &self.clusters, id);
        for op in ops {
            match op {
                Op::CreateNode(mut n) => {
                    if node(&own, &n.id).is_some() {
                        return Err(StoreError::Exists);
                    }
                    set_version(&mut n.meta, rev);
                    events.push(Event::CreateNode(n.clone()));
                    own.nodes.insert(n.id.clone(), Some(n));
                }
                Op::UpdateNode(mut n) => {
                    let cur = node(&own, &n.id).ok_or(StoreError::NotExist)?;
                    check_version(cur.meta.as_ref(), n.meta.as_ref())?;
                    set_version(&mut n.meta, rev);
                    events.push(Event::UpdateNode(n.clone()));
                    own.nodes.insert(n.id.clone(), Some(n));
                }
                Op::DeleteNode(n) => {
                    let cur = node(&own, &n.id).ok_or(StoreError::NotExist)?;
                    check_version(cur.meta.as_ref(), n.meta.as_ref())?;
                    events.push(Event::DeleteNode(cur));
                    own.nodes.insert(n.id, None);
                }
                Op::CreateCluster(mut c) => {
                    if cluster(&own, &c.id).is_some() {
                        return Err(StoreError::Exists);
                    }
                    set_version(&mut c.meta, rev);
                    events.push(Event::CreateCluster(c.clone()));
                    own.clusters.insert(c.id.clone(), Some(c));
                }
                Op::UpdateCluster(mut c) => {
                    let cur = cluster(&own, &c.id).ok_or(StoreError::NotExist)?;
                    check_version(cur.meta.as_ref(), c.meta.as_ref())?;
                    set_version(&mut c.meta, rev);
                    events.push(Event::UpdateCluster(c.clone()));
                    own.clusters.insert(c.id.clone(), Some(c));
                }
            }
        }
        Ok((own, events))
    }

    /// Applies validated changes and moves to their revision.
    pub(crate) fn apply(&mut self, changes: Changes) {
        for (id, n) in changes.nodes {
            match n {
                Some(n) => self.nodes.insert(id, n),
                None => self.nodes.remove(&id),
            };
        }
        for (id, c) in changes.clusters {
            match c {
                Some(c) => self.clusters.insert(id, c),
                None => self.clusters.remove(&id),
            };
        }
        self.revision = changes.revision;
    }

    fn snapshot(&self, filter: &WatchFilter) -> Snapshot {
        let (nodes, clusters) = match filter {
            WatchFilter::All => {
                (self.nodes.values().cloned().collect(), self.clusters.values().cloned().collect())
            }
            WatchFilter::Node(id) => (self.nodes.get(id).cloned().into_iter().collect(), Vec::new()),
            WatchFilter::Cluster(id) => (Vec::new(), self.clusters.get(id).cloned().into_iter().collect()),
        };
        Snapshot { revision: self.revision, nodes, clusters }
    }
}

/// The tables plus the watchers, under the lock of a [`Core`].
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) tables: Tables,
    watchers: Vec<(WatchFilter, mpsc::UnboundedSender<Arc<Event>>)>,
}

impl Shared {
    /// Applies `changes` and delivers `events` (in commit order) to the matching watchers, in
    /// one step under the lock, so that a snapshot is never taken between the two.
    /// Each event is shared by its watchers, not copied for each.
    pub(crate) fn publish(&mut self, changes: Changes, events: Vec<Event>) {
        self.tables.apply(changes);
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        self.watchers.retain(|(filter, tx)| {
            for e in events.iter().filter(|e| filter.matches(e)) {
                if tx.send(Arc::clone(e)).is_err() {
                    return false;
                }
            }
            !tx.is_closed()
        });
    }
}

/// The in-memory state every store serves reads from.
#[derive(Default)]
pub(crate) struct Core {
    shared: Mutex<Shared>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fmt_as("Core", f)
    }
}

impl Core {
    /// Debug output for a store named `name`: its counts, not its contents.
    pub(crate) fn fmt_as(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct(name)
            .field("revision", &g.tables.revision)
            .field("nodes", &g.tables.nodes.len())
            .field("clusters", &g.tables.clusters.len())
            .field("watchers", &g.watchers.len())
            .finish()
    }

    /// A core holding `tables` and no watcher.
    #[cfg_attr(not(feature = "persistent"), expect(dead_code, reason = "only RedbStore uses it"))]
    pub(crate) fn new(tables: Tables) -> Core {
        Core { shared: Mutex::new(Shared { tables, watchers: Vec::new() }) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock can only come from a bug in this crate; the data is
        // still consistent because every mutation is applied after validation, so recover it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn revision(&self) -> u64 {
        self.lock().tables.revision
    }

    pub(crate) fn watcher_count(&self) -> usize {
        let mut g = self.lock();
        g.watchers.retain(|(_, tx)| !tx.is_closed());
        g.watchers.len()
    }

    pub(crate) fn view(&self, filter: &WatchFilter) -> Snapshot {
        self.lock().tables.snapshot(filter)
    }

    pub(crate) fn node(&self, id: &str) -> Option<Node> {
        self.lock().tables.nodes.get(id).cloned()
    }

    pub(crate) fn cluster(&self, id: &str) -> Option<Cluster> {
        self.lock().tables.clusters.get(id).cloned()
    }

    pub(crate) fn view_and_watch(&self, filter: WatchFilter) -> (Snapshot, Watch) {
        let mut g = self.lock();
        let snap = g.tables.snapshot(&filter);
        let (tx, rx) = mpsc::unbounded_channel();
        g.watchers.push((filter, tx));
        (snap, Watch::new(rx))
    }

    /// Validates and applies `ops` at once (no durability step): MemStore's commit.
    pub(crate) fn commit_now(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let (changes, events) = g.tables.stage(&Changes::at(g.tables.revision), ops)?;
        if events.is_empty() {
            return Ok(g.tables.revision);
        }
        let rev = changes.revision;
        g.publish(changes, events);
        Ok(rev)
    }
}

/// The read half of [`crate::Store`], served from a [`Core`] by `$self.core()`: the same for
/// every store, so written once.
macro_rules! store_reads {
    () => {
        fn view(
            &self,
            filter: $crate::WatchFilter,
        ) -> $crate::BoxFuture<'_, Result<$crate::Snapshot, $crate::StoreError>> {
            let snap = self.core().view(&filter);
            Box::pin(std::future::ready(Ok(snap)))
        }

        fn get_node<'a>(
            &'a self,
            id: &'a str,
        ) -> $crate::BoxFuture<'a, Result<Option<$crate::Node>, $crate::StoreError>> {
            let n = self.core().node(id);
            Box::pin(std::future::ready(Ok(n)))
        }

        fn get_cluster<'a>(
            &'a self,
            id: &'a str,
        ) -> $crate::BoxFuture<'a, Result<Option<$crate::Cluster>, $crate::StoreError>> {
            let c = self.core().cluster(id);
            Box::pin(std::future::ready(Ok(c)))
        }

        fn view_and_watch(
            &self,
            filter: $crate::WatchFilter,
        ) -> $crate::BoxFuture<'_, Result<($crate::Snapshot, $crate::Watch), $crate::StoreError>> {
            let r = self.core().view_and_watch(filter);
            Box::pin(std::future::ready(Ok(r)))
        }
    };
}
pub(crate) use store_reads;
