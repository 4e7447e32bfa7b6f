//! [`EtcdStore`]: the [`Store`] on an etcd 3.4+ cluster shared by several managers, with leader
//! [`Election`] and fenced writes (cargo feature `etcd`).
//!
//! # Layout
//!
//! Under a key prefix (default `/swarmca/`), `{prefix}nodes/{id}` holds the prost encoding of a
//! [`Node`] and `{prefix}clusters/{id}` of a [`Cluster`]. Other keys under the prefix (an
//! election, say `{prefix}leader`) are ignored by reads and watches. The `meta.version` stored in a
//! value is never trusted: it is written empty and, on every read, set to the key's etcd
//! `mod_revision`.
//!
//! # Revisions and versions
//!
//! The store's revision is etcd's: a commit is one etcd transaction, and the revision etcd gives
//! it is the commit's revision and the version of every object it wrote. Revisions only grow, but
//! are not consecutive (other writes to the same etcd, an election for one, take revisions too),
//! and a fresh etcd starts at revision 1, not 0.
//!
//! # Commits
//!
//! [`Store::commit`] stages its ops locally exactly as [`MemStore`](crate::MemStore) does, on the
//! state each key's first op assumes (absent for a create; present at the given version for an
//! update or delete), then sends one transaction: per key, one compare against that assumption
//! (`create_revision == 0`, or `mod_revision == version`) and the key's final write (etcd refuses
//! two writes to one key in a transaction). When a compare fails, the transaction's failure branch
//! reads every key instead, at the same revision, and the ops are staged again on what it read:
//! the error is then exactly MemStore's (`Exists`, `NotExist` or `SequenceConflict`). Two
//! differences remain, both about several ops on one object in one commit: a later write to an
//! object written earlier in the same commit always conflicts (MemStore accepts it if it carries
//! the commit's own new revision, which etcd assigns only at the transaction), and watchers get
//! one event per object and commit, its net change (a create then an update arrive as a create).
//!
//! A store handle made by [`EtcdStore::fenced`] adds to every commit a compare that the leader key
//! of its [`Fence`] still exists with the same `create_revision`; a commit failing on it returns
//! [`StoreError::Fenced`] and applies nothing. A deposed leader cannot write, however late its
//! writes arrive.
//!
//! # Reads and watches
//!
//! Reads are linearizable. [`Store::view`] of everything is one revision: the first range's answer
//! fixes it and every further page (500 keys each) reads at it. [`Store::view_and_watch`] reads at
//! revision R and watches the same keys from R + 1 with previous values; a task turns etcd's
//! events into [`Event`]s in commit order (a put whose `create_revision` is its `mod_revision` is
//! a create, any other put an update, a delete a `DeleteNode` carrying the node's last value). If
//! the watch stream breaks (a member dies, the connection drops), the task watches again from the
//! last revision it delivered plus one, so nothing is lost or repeated. If etcd has compacted that
//! revision meanwhile, or sends what no [`Event`] can express (a cluster deleted behind the
//! store's back, a value that does not decode), the [`Watch`] is closed: `next()` returns `None`,
//! and the consumer must read again with a new `view_and_watch`. The task ends when the `Watch` is
//! dropped.
//!
//! # Failures
//!
//! Every request is bounded by [`EtcdOptions::request_timeout`]: an etcd that is down, partitioned
//! or hung gives [`StoreError::Unavailable`] within it, never a hang. Connecting checks that etcd
//! answers. Requests carry etcd's `hasleader` requirement, so a member cut off from its cluster's
//! leader refuses them at once rather than stalling. A commit whose answer is lost may still have
//! been applied. All futures must be polled within a Tokio runtime.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, GetOptions, GetResponse, KeyValue, KvClient, Txn, TxnResponse, WatchClient,
};
use prost::Message;
use swarmca_types::Meta;
use tokio::time::Instant;
use tonic_real::Code;

use crate::{set_version, BoxFuture, Cluster, Node, Op, Snapshot, Store, StoreError, Watch, WatchFilter};

mod commit;
mod election;
mod options;
mod watch;

pub use election::{Election, Leader, Leadership};
use options::tls_options;
pub use options::{EtcdOptions, EtcdTls};

/// Keys per range request when reading many objects.
const PAGE: i64 = 500;
/// Largest etcd answer accepted (tonic's default is 4 MiB; a page of big nodes or a watch
/// catching up over many revisions can exceed it).
const MAX_MESSAGE: usize = 256 << 20;
/// HTTP/2 pings on an open stream, so that a silently dead connection is noticed. etcd refuses
/// pings more often than every 5 s (`--grpc-keepalive-min-time`) and pings without streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// First and largest pause before trying a failed request again.
const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_MAX: Duration = Duration::from_millis(200);

/// A leadership to fence writes with: its leader key and the revision that key was created at.
/// See [`EtcdStore::fenced`] and [`Leadership::fence`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    key: Vec<u8>,
    create_revision: i64,
}

impl Fence {
    /// The fence for the leader key `key` created at etcd revision `create_revision`.
    pub fn new(key: impl Into<Vec<u8>>, create_revision: i64) -> Fence {
        Fence { key: key.into(), create_revision }
    }

    /// The leader key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The etcd revision the leader key was created at.
    pub fn create_revision(&self) -> i64 {
        self.create_revision
    }
}

/// A [`Store`] on etcd; see the [module documentation](self). Cloning gives another handle on the
/// same connection.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
    fence: Option<Fence>,
}

struct Shared {
    client: Client,
    kv: KvClient,
    watch: WatchClient,
    prefix: String,
    /// The endpoints, for error messages.
    endpoints: String,
    request_timeout: Duration,
    watchers: Mutex<Vec<watch::Registered>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.shared.endpoints)
            .field("prefix", &self.shared.prefix)
            .field("fence", &self.fence)
            .field("watchers", &self.watcher_count())
            .finish()
    }
}

/// Which table a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Node,
    Cluster,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Node => "nodes/",
            Kind::Cluster => "clusters/",
        }
    }
}

/// What the store keeps: [`Node`] and [`Cluster`].
trait Object: Message + Default + Clone {
    const KIND: Kind;
    fn id(&self) -> &str;
    fn meta_mut(&mut self) -> &mut Option<Meta>;
}

impl Object for Node {
    const KIND: Kind = Kind::Node;
    fn id(&self) -> &str {
        &self.id
    }
    fn meta_mut(&mut self) -> &mut Option<Meta> {
        &mut self.meta
    }
}

impl Object for Cluster {
    const KIND: Kind = Kind::Cluster;
    fn id(&self) -> &str {
        &self.id
    }
    fn meta_mut(&mut self) -> &mut Option<Meta> {
        &mut self.meta
    }
}

/// Why an etcd call failed.
enum CallError {
    TimedOut(Duration),
    Etcd(etcd_client::Error),
}

impl CallError {
    /// Whether etcd refused a read at a revision it has compacted away.
    fn is_compacted(&self) -> bool {
        matches!(self, CallError::Etcd(etcd_client::Error::GRpcStatus(s)) if s.code() == Code::OutOfRange)
    }
}

/// After which failures a request is tried again, within its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and other idempotent requests: after any failure of a connection or a member.
    Idempotent,
    /// Writes: only after failures proving that etcd never took the request in.
    IfNotSent,
}

impl Retry {
    /// Whether `e` is worth another attempt. The client spreads requests over the endpoints,
    /// dead ones included: a request that cannot connect to one tries again, and soon gets
    /// another.
    fn allows(self, e: &etcd_client::Error) -> bool {
        let etcd_client::Error::GRpcStatus(s) = e else { return false };
        // A member without a leader refuses requests before proposing anything (`hasleader`).
        let not_sent = (s.code() == Code::Unavailable && s.message() == "etcdserver: no leader")
            || std::iter::successors(std::error::Error::source(s), |e| e.source())
                .any(|e| e.downcast_ref::<tonic_real::ConnectError>().is_some());
        not_sent || (self == Retry::Idempotent && matches!(s.code(), Code::Unavailable | Code::Cancelled))
    }
}

/// Why a consistent read failed.
enum ReadError {
    /// The revision it was pinned at was compacted between two pages: read again.
    Compacted,
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> ReadError {
        ReadError::Store(e)
    }
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers within [`EtcdOptions::connect_timeout`].
    ///
    /// Fails with [`StoreError::Config`] for options that cannot work (no endpoint, an unreadable
    /// TLS file) and with [`StoreError::Unavailable`] when etcd does not answer.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoint given".into()));
        }
        if opts.connect_timeout.is_zero() || opts.request_timeout.is_zero() {
            return Err(StoreError::Config("etcd timeouts must be longer than zero".into()));
        }
        let endpoints = opts.endpoints.join(",");
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, opts.request_timeout)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        if let Some(tls) = &opts.tls {
            co = co.with_tls(tls_options(tls)?);
        }
        let unreachable = |why: String| {
            StoreError::Unavailable(format!(
                "cannot reach etcd at {endpoints}: {why} (is it running, and do the TLS settings match?)"
            ))
        };
        let client = match tokio::time::timeout(
            opts.connect_timeout,
            Client::connect(&opts.endpoints, Some(co)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e @ (etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)))) => {
                return Err(StoreError::Config(format!("etcd endpoints {endpoints}: {e}")));
            }
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("no connection within {:?}", opts.connect_timeout))),
        };
        let shared = Shared {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            client,
            prefix: opts.prefix,
            endpoints: endpoints.clone(),
            request_timeout: opts.request_timeout,
            watchers: Mutex::new(Vec::new()),
        };
        let store = EtcdStore { shared: Arc::new(shared), fence: None };
        // The client connects lazily: ask something, so that an unreachable etcd fails here.
        let key = store.shared.prefix.as_bytes().to_vec();
        let probe = store.call_within(opts.connect_timeout, Retry::Idempotent, || {
            let (mut kv, key) = (store.shared.kv.clone(), key.clone());
            async move { kv.get(key, Some(GetOptions::new().with_keys_only())).await }
        });
        match probe.await {
            Ok(_) => Ok(store),
            Err(CallError::Etcd(e)) => Err(unreachable(e.to_string())),
            Err(CallError::TimedOut(t)) => Err(unreachable(format!("no answer within {t:?}"))),
        }
    }

    /// Another handle on the same connection whose every commit also requires that `fence`'s
    /// leader key still exists with the same `create_revision`; otherwise the commit fails with
    /// [`StoreError::Fenced`] and applies nothing.
    pub fn fenced(&self, fence: Fence) -> EtcdStore {
        EtcdStore { shared: Arc::clone(&self.shared), fence: Some(fence) }
    }

    /// The fence this handle's commits carry, if any.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// etcd's current revision (linearizable).
    pub async fn revision(&self) -> Result<u64, StoreError> {
        let key = self.shared.prefix.as_bytes().to_vec();
        let resp = self.get(key, Some(GetOptions::new().with_keys_only())).await;
        header_revision(resp.map_err(|e| self.unavailable("reading the revision", e))?.header())
    }

    /// How many watches made by this store (or its clones) are still open.
    pub fn watcher_count(&self) -> usize {
        let mut g = self.shared.watchers();
        g.retain(watch::Registered::is_open);
        g.len()
    }

    /// The etcd client, for [`Election`].
    fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Runs one etcd request (`attempt` makes it), tried again after failures `retry` allows,
    /// all within the request timeout.
    async fn call<T, F, Fut>(&self, retry: Retry, attempt: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_within(self.shared.request_timeout, retry, attempt).await
    }

    /// [`EtcdStore::call`] within `limit`.
    async fn call_within<T, F, Fut>(
        &self,
        limit: Duration,
        retry: Retry,
        mut attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + limit;
        let mut pause = RETRY_FIRST;
        loop {
            match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if retry.allows(&e) && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                Ok(Err(e)) => return Err(CallError::Etcd(e)),
                Err(_) => return Err(CallError::TimedOut(limit)),
            }
        }
    }

    /// A range read (idempotent, so tried again after failures).
    async fn get(&self, key: Vec<u8>, opts: Option<GetOptions>) -> Result<GetResponse, CallError> {
        self.call(Retry::Idempotent, || {
            let (mut kv, key, opts) = (self.shared.kv.clone(), key.clone(), opts.clone());
            async move { kv.get(key, opts).await }
        })
        .await
    }

    /// A transaction, tried again after failures `retry` allows.
    async fn txn(&self, retry: Retry, txn: Txn) -> Result<TxnResponse, CallError> {
        self.call(retry, || {
            let (mut kv, txn) = (self.shared.kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    fn unavailable(&self, what: &str, e: CallError) -> StoreError {
        self.shared.unavailable(what, e)
    }

    fn key(&self, kind: Kind, id: &str) -> Vec<u8> {
        format!("{}{}{id}", self.shared.prefix, kind.dir()).into_bytes()
    }

    /// The table and ID a key names, if it is an object key of this store.
    fn parse_key<'k>(&self, key: &'k [u8]) -> Option<(Kind, &'k str)> {
        let rest = key.strip_prefix(self.shared.prefix.as_bytes())?;
        let (kind, id) = if let Some(id) = rest.strip_prefix(Kind::Node.dir().as_bytes()) {
            (Kind::Node, id)
        } else {
            (Kind::Cluster, rest.strip_prefix(Kind::Cluster.dir().as_bytes())?)
        };
        Some((kind, std::str::from_utf8(id).ok()?))
    }

    /// The object in `kv`, stored under `id`, with its version set to the key's `mod_revision`.
    fn decode<T: Object>(&self, kv: &KeyValue, id: &str) -> Result<T, StoreError> {
        let corrupt = |what: String| {
            StoreError::Corrupt(format!("etcd key {}: {what}", String::from_utf8_lossy(kv.key())))
        };
        let mut obj = T::decode(kv.value()).map_err(|e| corrupt(format!("does not decode: {e}")))?;
        if obj.id() != id {
            return Err(corrupt(format!("holds object {:?}", obj.id())));
        }
        set_version(obj.meta_mut(), revision_of(kv.mod_revision())?);
        Ok(obj)
    }

    /// The stored form of `obj`: without a version, which etcd's `mod_revision` gives on read.
    fn encode<T: Object>(obj: &T) -> Vec<u8> {
        let mut obj = obj.clone();
        if let Some(meta) = obj.meta_mut() {
            meta.version = None;
        }
        obj.encode_to_vec()
    }

    async fn get_object<T: Object>(&self, id: &str) -> Result<Option<T>, StoreError> {
        let what = || format!("reading {}{id}", T::KIND.dir());
        let resp = self.get(self.key(T::KIND, id), None).await.map_err(|e| self.unavailable(&what(), e))?;
        resp.kvs().first().map(|kv| self.decode(kv, id)).transpose()
    }

    /// One object at the latest revision: the snapshot of a one-object filter.
    async fn view_one<T: Object>(&self, id: &str) -> Result<(Vec<T>, u64), StoreError> {
        let what = || format!("reading {}{id}", T::KIND.dir());
        let resp = self.get(self.key(T::KIND, id), None).await.map_err(|e| self.unavailable(&what(), e))?;
        let revision = header_revision(resp.header())?;
        let objs = resp.kvs().first().map(|kv| self.decode(kv, id)).transpose()?;
        Ok((objs.into_iter().collect(), revision))
    }

    /// Every object of a table, in ID order, at `revision` (0: the latest, which is returned).
    async fn scan<T: Object>(&self, revision: i64) -> Result<(Vec<T>, i64), ReadError> {
        let dir = self.key(T::KIND, "");
        let end = prefix_end(&dir);
        let mut start = dir.clone();
        let mut revision = revision;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = match self.get(start.clone(), Some(opts)).await {
                Ok(r) => r,
                Err(e) if e.is_compacted() => return Err(ReadError::Compacted),
                Err(e) => return Err(self.unavailable(&format!("reading {}", T::KIND.dir()), e).into()),
            };
            if revision == 0 {
                // Later pages read at the revision of the first, whose header gives it.
                revision = i64::try_from(header_revision(resp.header())?).unwrap_or(i64::MAX);
            }
            for kv in resp.kvs() {
                match self.parse_key(kv.key()) {
                    Some((kind, id)) if kind == T::KIND => out.push(self.decode(kv, id)?),
                    _ => {
                        let key = String::from_utf8_lossy(kv.key());
                        return Err(
                            StoreError::Corrupt(format!("etcd key {key}: not a valid object key")).into()
                        );
                    }
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    /// A snapshot for `filter`, all at one revision.
    async fn snapshot(&self, filter: &WatchFilter) -> Result<Snapshot, StoreError> {
        match filter {
            WatchFilter::Node(id) => {
                let (nodes, revision) = self.view_one::<Node>(id).await?;
                Ok(Snapshot { revision, nodes, clusters: Vec::new() })
            }
            WatchFilter::Cluster(id) => {
                let (clusters, revision) = self.view_one::<Cluster>(id).await?;
                Ok(Snapshot { revision, nodes: Vec::new(), clusters })
            }
            WatchFilter::All => {
                // A compaction can overtake a long read between two pages: start again.
                for _ in 0..3 {
                    let read = async {
                        let (nodes, revision) = self.scan::<Node>(0).await?;
                        let (clusters, _) = self.scan::<Cluster>(revision).await?;
                        Ok::<_, ReadError>(Snapshot { revision: revision_of(revision)?, nodes, clusters })
                    };
                    match read.await {
                        Ok(s) => return Ok(s),
                        Err(ReadError::Compacted) => continue,
                        Err(ReadError::Store(e)) => return Err(e),
                    }
                }
                Err(StoreError::Unavailable(format!(
                    "etcd at {}: compactions overtook three consistent reads in a row",
                    self.shared.endpoints
                )))
            }
        }
    }
}

impl Shared {
    fn watchers(&self) -> MutexGuard<'_, Vec<watch::Registered>> {
        // The registry is a plain list; a panic while holding the lock cannot leave it invalid.
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unavailable(&self, what: &str, e: CallError) -> StoreError {
        match e {
            CallError::TimedOut(t) => StoreError::Unavailable(format!(
                "etcd at {}: no answer to {what} within {t:?}",
                self.endpoints
            )),
            CallError::Etcd(e) => StoreError::Unavailable(format!("etcd at {}: {what}: {e}", self.endpoints)),
        }
    }
}

impl Store for EtcdStore {
    fn view(&self, filter: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        Box::pin(async move { self.snapshot(&filter).await })
    }

    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Node>, StoreError>> {
        Box::pin(self.get_object::<Node>(id))
    }

    fn get_cluster<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        Box::pin(self.get_object::<Cluster>(id))
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.commit_ops(ops))
    }

    fn view_and_watch(&self, filter: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        Box::pin(self.watch_from_snapshot(filter))
    }
}

/// The end of the key range of everything starting with `prefix` (etcd's prefix convention).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last.saturating_add(1));
            return end;
        }
    }
    // All 0xff (or empty): everything from the prefix on.
    vec![0]
}

/// A revision from etcd as a store revision.
fn revision_of(rev: i64) -> Result<u64, StoreError> {
    u64::try_from(rev).map_err(|_| StoreError::Corrupt(format!("etcd returned the negative revision {rev}")))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<u64, StoreError> {
    let h =
        header.ok_or_else(|| StoreError::Unavailable("etcd answered without a response header".into()))?;
    revision_of(h.revision())
}

#[cfg(any(test, feature = "etcd-testing"))]
pub mod testing;

#[cfg(test)]
mod tests;
