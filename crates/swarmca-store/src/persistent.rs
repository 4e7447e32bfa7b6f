//! [`RedbStore`]: the crash-safe, file-backed [`Store`] (cargo feature `persistent`).
//!
//! # Why redb
//!
//! The store is one file written through [redb](https://www.redb.org): a maintained, pure-Rust
//! embedded key-value store with ACID transactions, copy-on-write B-trees and page checksums, so a
//! commit is either wholly on disk or not at all, even after `kill -9` or power loss. sled was
//! not chosen because it has had no release since 2021 and its README still calls it beta, with
//! on-disk format changes to come; RocksDB and SQLite were not chosen because they are C/C++ (a C
//! toolchain, `unsafe` FFI, slower builds) and far larger than two tables of small objects need.
//!
//! # Layout
//!
//! Table `nodes` maps a node ID to its prost-encoded [`Node`](crate::Node), table `clusters` a
//! cluster ID to its [`Cluster`](crate::Cluster); table `meta` holds `format` (1) and `revision`.
//! Everything is loaded into memory at open, and reads are served from memory as by
//! [`MemStore`](crate::MemStore); the file only takes writes.
//!
//! # Opening without damaging
//!
//! A file that cannot be opened cleanly is never written to. The file is first read through
//! redb's read-only mode and every object decoded; only then is it opened for writing, with a
//! checksum pass over every page. A file redb reports as not shut down cleanly (a crash) is
//! repaired on a copy, which replaces the original only once it reads back cleanly. A missing file
//! is created beside its final name and renamed into place, so a crash never leaves a half-made
//! store; an existing empty file is refused rather than taken for a new store.
//!
//! # Group commit
//!
//! [`Store::commit`] queues its ops to one writer thread, in call order, and waits for the reply.
//! The writer takes every queued commit (up to 1024), validates each in order against the
//! durable in-memory state plus the commits validated before it in the batch, writes the
//! accepted ones in a single redb write transaction with [`Durability::Immediate`] (durable on
//! disk when redb's commit returns: one round of syncs for the whole batch), then updates memory
//! and publishes the events under the store's lock, and only then replies. While one batch
//! syncs, the next one queues. If the transaction fails, every commit of the batch that wrote,
//! or was validated on top of one that did, fails with [`StoreError::Unavailable`], and memory
//! stays at the last state known durable. A failed fsync leaves it unknown whether the batch
//! reached the disk, so redb then refuses every write until the file is reopened; reopening reads
//! what the disk really holds (the batch wholly or not at all), and revisions carry on from there.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use prost::Message;
use redb::backends::FileBackend;
use redb::{
    Builder, Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageBackend,
    TableDefinition,
};
use tokio::sync::oneshot;

use crate::state::{store_reads, Changes, Core, Tables};
use crate::{version_of, BoxFuture, Op, Store, StoreError};

const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");
const CLUSTERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("clusters");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
/// The layout described in the module doc; bumped on any incompatible change.
const FORMAT: u64 = 1;
/// Most commits one write transaction takes.
const MAX_BATCH: usize = 1024;
/// redb's page cache. Reads are served from memory, so it only helps writes and the open.
const CACHE_BYTES: usize = 64 << 20;

/// A [`Store`] persisted in one redb file. Cloning gives another handle to the same store; the
/// file is closed when the last handle is dropped.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Handle>,
}

struct Handle {
    core: Arc<Core>,
    path: PathBuf,
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has finished its batch; joining it means the
        // file is closed, and its lock released, when the last handle is gone.
        self.queue.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.core.fmt_as("RedbStore", f)
    }
}

struct Request {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

impl RedbStore {
    /// Opens the store in `path`, creating it if the file does not exist (its directory must).
    ///
    /// Fails with [`StoreError::Corrupt`] if the file is not a store or any object in it does not
    /// decode (the file is then left untouched), and with [`StoreError::Unavailable`] if another
    /// process has it open or it cannot be read.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(path, |b| b)
    }

    /// [`RedbStore::open`], with the writer's storage wrapped by `wrap` (tests inject faults).
    pub(crate) fn open_with<B: StorageBackend>(
        path: &Path,
        wrap: impl FnOnce(FileBackend) -> B,
    ) -> Result<RedbStore, StoreError> {
        let tables = match fs::metadata(path) {
            Ok(m) if m.len() == 0 => {
                return Err(corrupt(path, "the file is empty; remove it to start a new store"))
            }
            Ok(_) => match probe(path)? {
                Probe::Clean(t) => t,
                Probe::NeedsRecovery => recover(path)?,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create(path)?;
                Tables::default()
            }
            Err(e) => return Err(unavailable(path, e)),
        };
        let file = OpenOptions::new().read(true).write(true).open(path);
        let file = file.map_err(|e| unavailable(path, e))?;
        let backend = wrap(FileBackend::new(file).map_err(|e| classify(path, e))?);
        let db = guarded(path, || {
            Builder::new()
                .set_cache_size(CACHE_BYTES)
                .set_check_integrity_on_open(true)
                .create_with_backend(backend)
                .map_err(|e| classify(path, e))
        })?;

        let core = Arc::new(Core::new(tables));
        let (queue, rx) = mpsc::channel();
        let writer = Writer { db, core: Arc::clone(&core), path: path.to_path_buf() };
        let writer = std::thread::Builder::new()
            .name("swarmca-store-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| unavailable(path, e))?;
        let handle = Handle { core, path: path.to_path_buf(), queue: Some(queue), writer: Some(writer) };
        Ok(RedbStore { inner: Arc::new(handle) })
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    /// Rewrites the store in `path` (closed: no handle may be open) into a fresh file holding
    /// only its live objects, which then replaces it. Old versions of objects stay in a redb
    /// file's free pages until those are reused; after secrets once written in clear have been
    /// replaced, this leaves none of them in the file. The file is read cleanly first, and the
    /// original is untouched unless the copy is complete.
    pub fn rewrite(path: &Path) -> Result<(), StoreError> {
        let tables = match probe(path)? {
            Probe::Clean(t) => t,
            Probe::NeedsRecovery => return Err(corrupt(path, "not shut down cleanly; open it once first")),
        };
        write_fresh(path, "rewriting", &tables)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The current (durable) revision.
    pub fn revision(&self) -> u64 {
        self.inner.core.revision()
    }

    /// How many watches are registered and still open.
    pub fn watcher_count(&self) -> usize {
        self.inner.core.watcher_count()
    }
}

impl Store for RedbStore {
    store_reads!();

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        if ops.is_empty() {
            // Nothing to write: as MemStore, answer with the current revision.
            return Box::pin(std::future::ready(Ok(self.revision())));
        }
        let (reply, rx) = oneshot::channel();
        let queued = self.inner.queue.as_ref().is_some_and(|q| q.send(Request { ops, reply }).is_ok());
        let stopped = move || {
            StoreError::Unavailable(format!("{}: the store writer has stopped", self.path().display()))
        };
        Box::pin(async move {
            if !queued {
                return Err(stopped());
            }
            rx.await.unwrap_or_else(|_| Err(stopped()))
        })
    }
}

/// The thread that owns the database and makes commits durable.
struct Writer {
    db: Database,
    core: Arc<Core>,
    path: PathBuf,
}

impl Writer {
    fn run(self, rx: &mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        // The queue is closed: dropping `self.db` closes the file cleanly.
    }

    fn commit_batch(&self, batch: Vec<Request>) {
        // (reply, result, validated on top of an earlier write of this batch)
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut pending = {
            let g = self.core.lock();
            let mut pending = Changes::at(g.tables.revision);
            for Request { ops, reply } in batch {
                let on_top = !pending.is_empty();
                let result = g.tables.stage(&pending, ops).map(|(changes, evs)| {
                    let rev = changes.revision;
                    pending.absorb(changes);
                    events.extend(evs);
                    rev
                });
                outcomes.push((reply, result, on_top));
            }
            pending
        };
        if !pending.is_empty() {
            match self.write(&pending) {
                // Only this thread changes the tables, so the validation above still holds.
                Ok(()) => self.core.lock().publish(std::mem::take(&mut pending), events),
                Err(e) => {
                    let msg = format!("{}: commit not made durable: {e}", self.path.display());
                    for (_, result, on_top) in &mut outcomes {
                        if result.is_ok() || *on_top {
                            *result = Err(StoreError::Unavailable(msg.clone()));
                        }
                    }
                }
            }
        }
        for (reply, result, _) in outcomes {
            // The caller may have stopped waiting; the commit stands (or not) regardless.
            let _ = reply.send(result);
        }
    }

    /// Writes `changes` in one transaction and returns once it is durable.
    fn write(&self, changes: &Changes) -> Result<(), redb::Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            put_all(&mut tx.open_table(NODES)?, &changes.nodes)?;
            put_all(&mut tx.open_table(CLUSTERS)?, &changes.clusters)?;
            tx.open_table(META)?.insert(META_REVISION, changes.revision)?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn put_all<T: Message>(
    table: &mut redb::Table<'_, &str, &[u8]>,
    objects: &BTreeMap<String, Option<T>>,
) -> Result<(), redb::StorageError> {
    for (id, obj) in objects {
        match obj {
            Some(obj) => table.insert(id.as_str(), obj.encode_to_vec().as_slice())?,
            None => table.remove(id.as_str())?,
        };
    }
    Ok(())
}

/// What reading a file without writing to it found.
enum Probe {
    /// A store shut down cleanly, with everything it holds.
    Clean(Tables),
    /// A redb file not shut down cleanly: it needs redb's repair before it can be read.
    NeedsRecovery,
}

/// Reads the whole store in `path` through redb's read-only mode, which never writes.
fn probe(path: &Path) -> Result<Probe, StoreError> {
    guarded(path, || {
        let db = match Builder::new().set_cache_size(CACHE_BYTES).open_read_only(path) {
            Ok(db) => db,
            Err(DatabaseError::RepairAborted) => return Ok(Probe::NeedsRecovery),
            Err(e) => return Err(classify(path, e)),
        };
        load(&db, path).map(Probe::Clean)
    })
}

/// Repairs a copy of the crashed store in `path`, checks it reads back cleanly, and only then
/// puts it in place of the original.
fn recover(path: &Path) -> Result<Tables, StoreError> {
    let copy = sibling(path, "recovering");
    fs::copy(path, &copy).map_err(|e| unavailable(&copy, e))?;
    let repaired = guarded(&copy, || {
        // Opening for writing runs redb's repair; dropping the handle closes the copy cleanly.
        let db = Builder::new().set_cache_size(CACHE_BYTES).open(&copy);
        drop(db.map_err(|e| classify(&copy, e))?);
        match probe(&copy)? {
            Probe::Clean(t) => Ok(t),
            Probe::NeedsRecovery => Err(corrupt(&copy, "still not clean after redb's repair")),
        }
    });
    let tables = match repaired {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_file(&copy);
            return Err(e);
        }
    };
    replace(&copy, path)?;
    Ok(tables)
}

/// Creates an empty store in `path` by building it beside it and renaming it into place.
fn create(path: &Path) -> Result<(), StoreError> {
    write_fresh(path, "creating", &Tables::default())
}

/// Builds a store holding `tables` beside `path` (owner-only), then renames it over `path`.
fn write_fresh(path: &Path, suffix: &str, tables: &Tables) -> Result<(), StoreError> {
    let fresh = sibling(path, suffix);
    // A leftover from a crash during an earlier attempt: never a store anyone used.
    let _ = fs::remove_file(&fresh);
    let made = (|| -> Result<(), redb::Error> {
        let db = Builder::new().set_cache_size(CACHE_BYTES).create(&fresh)?;
        let tx = db.begin_write()?;
        {
            let mut nodes = tx.open_table(NODES)?;
            for (id, n) in &tables.nodes {
                nodes.insert(id.as_str(), n.encode_to_vec().as_slice())?;
            }
            let mut clusters = tx.open_table(CLUSTERS)?;
            for (id, c) in &tables.clusters {
                clusters.insert(id.as_str(), c.encode_to_vec().as_slice())?;
            }
            let mut meta = tx.open_table(META)?;
            meta.insert(META_FORMAT, FORMAT)?;
            meta.insert(META_REVISION, tables.revision)?;
        }
        tx.commit()?;
        Ok(())
    })();
    if let Err(e) = made.map_err(|e| classify(path, e)).and_then(|()| owner_only(&fresh)) {
        let _ = fs::remove_file(&fresh);
        return Err(e);
    }
    replace(&fresh, path)
}

/// Restricts a store file to its owner (it holds the cluster's sealed secrets and every node).
fn owner_only(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| unavailable(path, e))?;
    }
    Ok(())
}

/// Durably renames `from` (a finished file) over `to`.
fn replace(from: &Path, to: &Path) -> Result<(), StoreError> {
    File::open(from).and_then(|f| f.sync_all()).map_err(|e| unavailable(from, e))?;
    fs::rename(from, to).map_err(|e| unavailable(to, e))?;
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| unavailable(dir, e))
}

/// `path` with `.suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// Every object in the store `db`, checked: format, revision, and each object decoding to
/// the ID it is stored under with a version no later than the revision.
fn load(db: &impl ReadableDatabase, path: &Path) -> Result<Tables, StoreError> {
    let tx = db.begin_read().map_err(|e| classify(path, e))?;
    let meta = tx.open_table(META).map_err(|e| classify(path, e))?;
    let entry = |key| -> Result<Option<u64>, StoreError> {
        let v = meta.get(key).map_err(|e| classify(path, e))?;
        Ok(v.map(|v| v.value()))
    };
    match entry(META_FORMAT)? {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(corrupt(path, &format!("unsupported store format {other}")));
        }
        None => return Err(corrupt(path, "no format entry: not a swarmca store")),
    }
    let revision = entry(META_REVISION)?.ok_or_else(|| corrupt(path, "no revision entry"))?;
    let nodes = load_table(&tx, NODES, path, revision, |n: &crate::Node| {
        (n.id.as_str(), version_of(n.meta.as_ref()))
    })?;
    let clusters = load_table(&tx, CLUSTERS, path, revision, |c: &crate::Cluster| {
        (c.id.as_str(), version_of(c.meta.as_ref()))
    })?;
    Ok(Tables { revision, nodes, clusters })
}

fn load_table<T: Message + Default>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<'_, &str, &[u8]>,
    path: &Path,
    revision: u64,
    id_and_version: impl Fn(&T) -> (&str, u64),
) -> Result<BTreeMap<String, T>, StoreError> {
    let what = def.to_string();
    let table = tx.open_table(def).map_err(|e| classify(path, e))?;
    let mut out = BTreeMap::new();
    for entry in table.iter().map_err(|e| classify(path, e))? {
        let (key, value) = entry.map_err(|e| classify(path, e))?;
        let key = key.value();
        let obj = T::decode(value.value())
            .map_err(|e| corrupt(path, &format!("{what} entry {key:?} does not decode: {e}")))?;
        let (id, version) = id_and_version(&obj);
        if id != key {
            return Err(corrupt(path, &format!("{what} entry {key:?} holds object {id:?}")));
        }
        if version > revision {
            return Err(corrupt(
                path,
                &format!("{what} entry {key:?} has version {version} past revision {revision}"),
            ));
        }
        out.insert(key.to_string(), obj);
    }
    Ok(out)
}

/// Runs `f`, turning a panic into [`StoreError::Corrupt`]: redb may panic on a damaged file
/// (its debug builds assert on inconsistencies no file it wrote can have).
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(corrupt(path, "redb panicked while reading the file")))
}

fn corrupt(path: &Path, what: &str) -> StoreError {
    StoreError::Corrupt(format!("{}: {what}", path.display()))
}

fn unavailable(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

/// Maps a redb error met while opening or reading `path`.
fn classify(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    use std::io::ErrorKind;
    match e.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            unavailable(path, "the file is locked: another process holds the store open")
        }
        redb::Error::Io(io) if !matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) => {
            unavailable(path, io)
        }
        other => corrupt(path, &format!("not a readable swarmca store: {other}")),
    }
}

#[cfg(test)]
mod tests;
