//! In-memory [`Store`]: BTreeMaps under one mutex, so iteration order is deterministic.

use std::sync::Arc;

use crate::state::{store_reads, Core};
use crate::{BoxFuture, Op, Snapshot, Store, StoreError, Watch, WatchFilter};

/// An in-memory store. Cloning gives another handle to the same data.
#[derive(Clone, Default)]
pub struct MemStore {
    core: Arc<Core>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt_as("MemStore", f)
    }
}

impl MemStore {
    /// An empty store at revision 0.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn core(&self) -> &Core {
        &self.core
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.core.revision()
    }

    /// How many watches are registered and still open.
    pub fn watcher_count(&self) -> usize {
        self.core.watcher_count()
    }

    /// Applies `ops` synchronously; see [`Store::commit`].
    pub fn commit_sync(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        self.core.commit_now(ops)
    }

    /// Snapshot and watch, synchronously; see [`Store::view_and_watch`].
    pub fn view_and_watch_sync(&self, filter: WatchFilter) -> (Snapshot, Watch) {
        self.core.view_and_watch(filter)
    }
}

impl Store for MemStore {
    store_reads!();

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        let r = self.commit_sync(ops);
        Box::pin(std::future::ready(r))
    }
}
