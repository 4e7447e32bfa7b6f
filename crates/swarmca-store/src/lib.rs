//! Versioned object store for swarmca.
//!
//! The store keeps SwarmKit's two object kinds, [`Node`] and [`Cluster`], each carrying a
//! `meta.version`. Writes are optimistic: an update carries the version it was read at, and a
//! commit fails with [`StoreError::SequenceConflict`] when the stored object has moved on. Every
//! commit is atomic, gets a new store-wide revision (which becomes the version of every object it
//! wrote), and produces one [`Event`] per change for the watchers whose [`WatchFilter`] matches.
//!
//! [`Store::view_and_watch`] returns a snapshot and a [`Watch`] registered at the same revision,
//! so a watcher sees every later change exactly once.
//!
//! The trait is object-safe (`Arc<dyn Store>`) so the server can be handed an in-memory store, a
//! persistent one, or a fault-injecting wrapper under simulation.
//!
//! Stores: [`MemStore`] (always); `RedbStore`, one crash-safe file (feature `persistent`);
//! `EtcdStore`, on an etcd cluster shared by several managers, with leader election and fenced
//! writes (feature `etcd`, module `etcd`, whose documentation describes the key layout and how
//! etcd's revisions become versions).

#![forbid(unsafe_code)]

#[cfg(feature = "etcd")]
pub mod etcd;
mod mem;
#[cfg(feature = "persistent")]
mod persistent;
mod state;

use std::future::Future;
use std::pin::Pin;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore};
pub use mem::MemStore;
#[cfg(feature = "persistent")]
pub use persistent::RedbStore;
pub use swarmca_types::{Cluster, Node};

/// A boxed, sendable future, as returned by the [`Store`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors of store operations.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// An update or delete carried a version that is no longer the stored one.
    #[error("update out of sequence")]
    SequenceConflict,
    /// A create named an ID that is already taken.
    #[error("object already exists")]
    Exists,
    /// An update or delete named an object that does not exist.
    #[error("object does not exist")]
    NotExist,
    /// The store could not be reached or the commit could not be made durable; nothing was
    /// applied. Retrying may succeed. (When a persistent store's fsync fails, the commit may
    /// still turn up on disk once the store is reopened; when etcd's answer to a commit is lost
    /// or late, the commit may have been applied all the same.)
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// The write was refused because the leadership it was made under is gone (a fenced store
    /// handle's leader key was deleted or replaced); nothing was applied. Retrying cannot
    /// succeed: the caller must stop acting as leader.
    #[error("write refused: the leadership it was made under is gone")]
    Fenced,
    /// The store's configuration cannot work (no endpoint, an unreadable TLS file, a malformed
    /// address); nothing was attempted, and retrying cannot help.
    #[error("store misconfigured: {0}")]
    Config(String),
}

/// One write in a [`Store::commit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create a node; fails with [`StoreError::Exists`] if its ID is taken.
    CreateNode(Node),
    /// Replace a node; its `meta.version` must equal the stored one.
    UpdateNode(Node),
    /// Delete a node; its `meta.version` must equal the stored one.
    DeleteNode(Node),
    /// Create a cluster; fails with [`StoreError::Exists`] if its ID is taken.
    CreateCluster(Cluster),
    /// Replace a cluster; its `meta.version` must equal the stored one.
    UpdateCluster(Cluster),
}

/// A change, as delivered to watchers. Objects carry their new version.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A node was created.
    CreateNode(Node),
    /// A node was updated; the new value.
    UpdateNode(Node),
    /// A node was deleted; its last value.
    DeleteNode(Node),
    /// A cluster was created.
    CreateCluster(Cluster),
    /// A cluster was updated; the new value.
    UpdateCluster(Cluster),
}

impl Event {
    /// The node this event concerns, if it is a node event.
    pub fn node(&self) -> Option<&Node> {
        match self {
            Event::CreateNode(n) | Event::UpdateNode(n) | Event::DeleteNode(n) => Some(n),
            Event::CreateCluster(_) | Event::UpdateCluster(_) => None,
        }
    }

    /// The cluster this event concerns, if it is a cluster event.
    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            Event::CreateCluster(c) | Event::UpdateCluster(c) => Some(c),
            _ => None,
        }
    }
}

/// Which objects a snapshot holds and which events a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFilter {
    /// Every node and cluster.
    All,
    /// One node, by ID.
    Node(String),
    /// One cluster, by ID.
    Cluster(String),
}

impl WatchFilter {
    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            WatchFilter::All => true,
            WatchFilter::Node(id) => event.node().is_some_and(|n| &n.id == id),
            WatchFilter::Cluster(id) => event.cluster().is_some_and(|c| &c.id == id),
        }
    }
}

/// A consistent read of the store at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The revision this snapshot was taken at.
    pub revision: u64,
    /// Nodes, in ID order.
    pub nodes: Vec<Node>,
    /// Clusters, in ID order.
    pub clusters: Vec<Cluster>,
}

/// A transformation of every event of a [`Watch`]; `None` ends the watch.
pub type EventMap =
    std::sync::Arc<dyn Fn(std::sync::Arc<Event>) -> Option<std::sync::Arc<Event>> + Send + Sync>;

/// The stream of events after a snapshot. Dropping it unsubscribes.
pub struct Watch {
    rx: tokio::sync::mpsc::UnboundedReceiver<std::sync::Arc<Event>>,
    map: Option<EventMap>,
    ended: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("mapped", &self.map.is_some()).field("ended", &self.ended).finish()
    }
}

impl Watch {
    /// Builds a watch from the receiving half of a channel a store feeds (events are shared
    /// between watchers: a channel slot is a pointer, not an object).
    pub fn new(rx: tokio::sync::mpsc::UnboundedReceiver<std::sync::Arc<Event>>) -> Watch {
        Watch { rx, map: None, ended: false }
    }

    /// This watch with every event passed through `f` (after any earlier map). When `f`
    /// answers `None` the watch ends there, as if the store had shut it down.
    pub fn map(mut self, f: EventMap) -> Watch {
        self.map = Some(match self.map.take() {
            None => f,
            Some(g) => std::sync::Arc::new(move |e| g(e).and_then(|e| f(e))),
        });
        self
    }

    /// The next event, or `None` once the store has shut the watch down (the watcher must
    /// then re-read with a new `view_and_watch`).
    pub async fn next(&mut self) -> Option<Event> {
        self.next_shared().await.map(std::sync::Arc::unwrap_or_clone)
    }

    /// The next event as shared with the other watchers (no copy).
    pub async fn next_shared(&mut self) -> Option<std::sync::Arc<Event>> {
        if self.ended {
            return None;
        }
        let e = self.rx.recv().await;
        let e = match (&self.map, e) {
            (Some(f), Some(e)) => f(e),
            (_, e) => e,
        };
        if e.is_none() {
            self.ended = true;
            self.rx.close();
        }
        e
    }
}

/// The store interface.
pub trait Store: Send + Sync + 'static {
    /// A snapshot of the objects `filter` selects.
    fn view(&self, filter: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>>;

    /// One node by ID.
    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>>;

    /// One cluster by ID.
    fn get_cluster<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>>;

    /// Applies `ops` atomically, in order, and returns the new revision. Every object written
    /// gets that revision as its `meta.version`. On error nothing is written.
    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// A snapshot plus a watch registered at the same revision: every later event that matches
    /// `filter` is delivered once, in commit order, with no gap.
    fn view_and_watch(&self, filter: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>>;
}

/// The stored version of an object's meta, or 0 when absent.
pub fn version_of(meta: Option<&swarmca_types::Meta>) -> u64 {
    meta.and_then(|m| m.version.as_ref()).map_or(0, |v| v.index)
}

/// Sets `meta.version` to `v`, creating the meta if needed.
pub fn set_version(meta: &mut Option<swarmca_types::Meta>, v: u64) {
    let m = meta.get_or_insert_with(Default::default);
    m.version = Some(swarmca_types::Version { index: v });
}

#[cfg(test)]
mod tests;
