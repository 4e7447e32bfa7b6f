//! [`Store::view_and_watch`](crate::Store::view_and_watch) for [`EtcdStore`]: a snapshot, then a
//! task forwarding etcd's watch events into the [`Watch`] channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;

use super::{EtcdStore, Kind};
use crate::{Cluster, Event, Node, Snapshot, StoreError, Watch, WatchFilter};

/// First and largest pause between two attempts to watch again after the stream broke.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A watch in the store's registry.
pub(super) struct Registered {
    #[cfg_attr(not(test), expect(dead_code, reason = "only the tests wait for delivery"))]
    filter: WatchFilter,
    tx: mpsc::WeakUnboundedSender<std::sync::Arc<Event>>,
    /// The revision up to which every event has been delivered into the channel.
    #[cfg_attr(not(test), expect(dead_code, reason = "only the tests wait for delivery"))]
    delivered: Arc<AtomicU64>,
}

impl Registered {
    /// Whether the forwarding task still runs and its [`Watch`] is still held.
    pub(super) fn is_open(&self) -> bool {
        self.tx.upgrade().is_some_and(|tx| !tx.is_closed())
    }
}

/// Why forwarding stopped for good.
enum Stop {
    /// The [`Watch`] was dropped.
    Dropped,
    /// The watch can no longer be exact: the consumer must read again.
    Close,
}

/// The task feeding one [`Watch`].
struct Forwarder {
    store: EtcdStore,
    filter: WatchFilter,
    key: Vec<u8>,
    prefix: bool,
    tx: mpsc::UnboundedSender<std::sync::Arc<Event>>,
    delivered: Arc<AtomicU64>,
    /// The last revision whose events were all delivered.
    last: i64,
}

impl EtcdStore {
    /// The key (or prefix, `true`) that `filter` watches.
    fn watched(&self, filter: &WatchFilter) -> (Vec<u8>, bool) {
        match filter {
            WatchFilter::All => (self.shared.prefix.as_bytes().to_vec(), true),
            WatchFilter::Node(id) => (self.key(Kind::Node, id), false),
            WatchFilter::Cluster(id) => (self.key(Kind::Cluster, id), false),
        }
    }

    /// Opens an etcd watch on `key` (a prefix if `prefix`) from revision `from`.
    async fn open_watch(&self, key: &[u8], prefix: bool, from: i64) -> Result<WatchStream, super::CallError> {
        let mut opts = WatchOptions::new().with_start_revision(from).with_prev_key();
        if prefix {
            opts = opts.with_prefix();
        }
        self.call(super::Retry::Idempotent, || {
            let (mut client, key, opts) = (self.shared.watch.clone(), key.to_vec(), opts.clone());
            async move { client.watch(key, Some(opts)).await }
        })
        .await
    }

    pub(super) async fn watch_from_snapshot(
        &self,
        filter: WatchFilter,
    ) -> Result<(Snapshot, Watch), StoreError> {
        let snap = self.snapshot(&filter).await?;
        let from = i64::try_from(snap.revision).unwrap_or(i64::MAX);
        let (key, prefix) = self.watched(&filter);
        let stream = self
            .open_watch(&key, prefix, from.saturating_add(1))
            .await
            .map_err(|e| self.unavailable("opening a watch", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let delivered = Arc::new(AtomicU64::new(snap.revision));
        {
            let mut registry = self.shared.watchers();
            // Forget the watches that have ended, so that the registry does not grow.
            registry.retain(Registered::is_open);
            registry.push(Registered {
                filter: filter.clone(),
                tx: tx.downgrade(),
                delivered: Arc::clone(&delivered),
            });
        }
        // The fence only matters to commits; the task keeps a plain handle.
        let store = EtcdStore { shared: Arc::clone(&self.shared), fence: None };
        let fwd = Forwarder { store, filter, key, prefix, tx, delivered, last: from };
        tokio::spawn(fwd.run(stream));
        Ok((snap, Watch::new(rx)))
    }
}

impl Forwarder {
    /// Forwards until the [`Watch`] is dropped or must be closed; returning drops `tx`, so the
    /// consumer's `next()` then gives `None`.
    async fn run(mut self, stream: WatchStream) {
        let mut stream = Some(stream);
        loop {
            let s = match stream.take() {
                Some(s) => s,
                None => match self.reopen().await {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            match self.pump(s).await {
                // The stream broke: watch again from where it stopped.
                Ok(()) => {}
                Err(Stop::Dropped | Stop::Close) => return,
            }
        }
    }

    /// Forwards the events of one etcd watch stream until it breaks (`Ok`) or forwarding must stop.
    async fn pump(&mut self, mut stream: WatchStream) -> Result<(), Stop> {
        loop {
            let msg = tokio::select! {
                biased;
                () = self.tx.closed() => return Err(Stop::Dropped),
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) | Err(_) => return Ok(()),
            };
            if resp.canceled() {
                // A watch from a compacted revision is cancelled with the compaction revision;
                // any other cancellation (e.g. the member lost its leader) is worth a retry.
                return if resp.compact_revision() > 0 { Err(Stop::Close) } else { Ok(()) };
            }
            self.forward(&resp)?;
        }
    }

    /// Watches again from the revision after the last one delivered, retrying until it works or
    /// the [`Watch`] is dropped.
    async fn reopen(&self) -> Result<WatchStream, Stop> {
        let mut pause = RETRY_FIRST;
        loop {
            // Pause first too: a stream that etcd ends at once must not make this spin.
            tokio::select! {
                biased;
                () = self.tx.closed() => return Err(Stop::Dropped),
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RETRY_MAX);
            let attempt = self.store.open_watch(&self.key, self.prefix, self.last.saturating_add(1));
            tokio::select! {
                biased;
                () = self.tx.closed() => return Err(Stop::Dropped),
                r = attempt => if let Ok(s) = r { return Ok(s) },
            }
        }
    }

    /// Delivers the events of one response. etcd never splits one revision's events across
    /// responses (without the `fragment` option), so after a response every event up to its
    /// last revision is delivered, and a stream opened again from the next revision neither
    /// skips nor repeats one; events at or before `last` are dropped all the same.
    fn forward(&mut self, resp: &WatchResponse) -> Result<(), Stop> {
        let mut last = self.last;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { return Err(Stop::Close) };
            let rev = kv.mod_revision();
            if rev <= self.last {
                continue;
            }
            last = last.max(rev);
            let event = match self.decode(ev) {
                Ok(Some(e)) => e,
                // Not an object key of this store (another key under the prefix).
                Ok(None) => continue,
                Err(_) => return Err(Stop::Close),
            };
            if !self.filter.matches(&event) {
                continue;
            }
            if self.tx.send(std::sync::Arc::new(event)).is_err() {
                return Err(Stop::Dropped);
            }
        }
        self.last = last;
        self.delivered.store(u64::try_from(last).unwrap_or(0), Ordering::Release);
        Ok(())
    }

    /// The [`Event`] an etcd event stands for; `None` for keys that are not objects of the store.
    fn decode(&self, ev: &etcd_client::Event) -> Result<Option<Event>, StoreError> {
        let unexpressible = |what: &str| StoreError::Corrupt(format!("etcd watch: {what}"));
        let Some(kv) = ev.kv() else { return Err(unexpressible("an event without a key")) };
        let Some((kind, id)) = self.store.parse_key(kv.key()) else { return Ok(None) };
        let created = kv.create_revision() == kv.mod_revision();
        let event = match (ev.event_type(), kind) {
            (EventType::Put, Kind::Node) => {
                let n: Node = self.store.decode(kv, id)?;
                if created {
                    Event::CreateNode(n)
                } else {
                    Event::UpdateNode(n)
                }
            }
            (EventType::Put, Kind::Cluster) => {
                let c: Cluster = self.store.decode(kv, id)?;
                if created {
                    Event::CreateCluster(c)
                } else {
                    Event::UpdateCluster(c)
                }
            }
            (EventType::Delete, Kind::Node) => {
                // The last value, at its own version: what MemStore's DeleteNode carries.
                let prev =
                    ev.prev_kv().ok_or_else(|| unexpressible("a node deletion without its last value"))?;
                Event::DeleteNode(self.store.decode(prev, id)?)
            }
            (EventType::Delete, Kind::Cluster) => return Err(unexpressible("a cluster was deleted")),
        };
        Ok(Some(event))
    }
}

#[cfg(test)]
impl EtcdStore {
    /// Waits until every open watch that `ops` (committed at `revision`) concern has delivered
    /// their events, so that a test can then read them without waiting.
    pub(crate) fn await_delivery(&self, revision: u64, ops: &[crate::Op]) {
        use crate::Op;
        let concerns = |filter: &WatchFilter, op: &Op| match (filter, op) {
            (WatchFilter::All, _) => true,
            (WatchFilter::Node(id), Op::CreateNode(n) | Op::UpdateNode(n) | Op::DeleteNode(n)) => &n.id == id,
            (WatchFilter::Cluster(id), Op::CreateCluster(c) | Op::UpdateCluster(c)) => &c.id == id,
            _ => false,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let behind = self.shared.watchers().iter().any(|w| {
                w.is_open()
                    && ops.iter().any(|op| concerns(&w.filter, op))
                    && w.delivered.load(Ordering::Acquire) < revision
            });
            if !behind {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a watch did not deliver revision {revision} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
