//! RedbStore only: persistence, damaged files, write failures, kill -9, and benchmarks. The
//! behaviour it shares with MemStore is tested by the suite in `crate::tests`.

use std::io::{BufRead, BufReader, Write};
use std::ops::Bound;
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::tests::{block_on, cluster, next_now, node, TempDir};
use crate::{Event, WatchFilter};

fn commit(s: &RedbStore, ops: Vec<Op>) -> Result<u64, StoreError> {
    block_on(s.commit(ops))
}

fn snapshot(s: &RedbStore) -> crate::Snapshot {
    block_on(s.view(WatchFilter::All)).unwrap()
}

#[test]
fn reopen_restores_objects_versions_and_revision() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    let before = {
        let s = RedbStore::open(&path).unwrap();
        commit(&s, vec![Op::CreateNode(node("a")), Op::CreateCluster(cluster("c"))]).unwrap();
        commit(&s, vec![Op::CreateNode(node("b")), Op::CreateNode(node("gone"))]).unwrap();
        let mut a = block_on(s.get_node("a")).unwrap().unwrap();
        a.role = 1;
        a.certificate = Some(swarmca_types::Certificate { csr: vec![7; 300], ..Default::default() });
        let gone = block_on(s.get_node("gone")).unwrap().unwrap();
        commit(&s, vec![Op::UpdateNode(a), Op::DeleteNode(gone)]).unwrap();
        assert_eq!(s.revision(), 3);
        snapshot(&s)
    };
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(snapshot(&s), before);
    assert_eq!(s.revision(), 3);
    assert!(block_on(s.get_node("gone")).unwrap().is_none());
    let c = block_on(s.get_cluster("c")).unwrap().unwrap();
    assert_eq!(commit(&s, vec![Op::UpdateCluster(c)]), Ok(4), "revisions continue after a reopen");
    drop(s);
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.revision(), 4);
    assert_eq!(version_of(block_on(s.get_cluster("c")).unwrap().unwrap().meta.as_ref()), 4);
}

#[test]
fn a_rewrite_keeps_every_live_object_and_the_revision_in_an_owner_only_file() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    let before = {
        let s = RedbStore::open(&path).unwrap();
        let mut n = node("a");
        n.certificate = Some(swarmca_types::Certificate { csr: vec![9; 27], ..Default::default() });
        commit(&s, vec![Op::CreateNode(n), Op::CreateCluster(cluster("c"))]).unwrap();
        let mut a = block_on(s.get_node("a")).unwrap().unwrap();
        a.certificate = Some(swarmca_types::Certificate { csr: vec![1; 27], ..Default::default() });
        commit(&s, vec![Op::UpdateNode(a)]).unwrap();
        snapshot(&s)
    };
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    RedbStore::rewrite(&path).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(snapshot(&s), before);
    assert_eq!(s.revision(), 2);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    // An open store cannot be rewritten under its holder.
    assert!(RedbStore::rewrite(&path).is_err());
}

#[test]
fn new_store_is_empty_at_revision_zero_and_leaves_no_temporary_file() {
    let dir = TempDir::new();
    let s = dir.store();
    assert_eq!(snapshot(&s), crate::Snapshot::default());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["store.redb"]);
}

/// Opens `bytes` as a store file and returns the error, checking the file was not touched.
fn open_damaged(bytes: &[u8]) -> StoreError {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    std::fs::write(&path, bytes).unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "a file that failed to open was modified");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["store.redb"], "a temporary file was left behind");
    err
}

#[test]
fn garbage_file_is_corrupt_and_left_untouched() {
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let err = open_damaged(&garbage);
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("store.redb")), "{err:?}");
}

#[test]
fn empty_file_is_refused_not_taken_for_a_new_store() {
    let err = open_damaged(&[]);
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("empty")), "{err:?}");
}

/// The bytes of a cleanly closed store holding `n` nodes.
fn store_bytes(n: usize) -> Vec<u8> {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    let s = RedbStore::open(&path).unwrap();
    let ops = (0..n)
        .map(|i| {
            let mut n = node(&format!("node-{i:04}"));
            n.certificate = Some(swarmca_types::Certificate { csr: vec![1; 500], ..Default::default() });
            Op::CreateNode(n)
        })
        .collect();
    commit(&s, ops).unwrap();
    drop(s);
    std::fs::read(&path).unwrap()
}

#[test]
fn truncated_store_fails_to_open_without_panic_and_is_left_untouched() {
    let whole = store_bytes(300);
    for keep in [whole.len() - 1, whole.len() / 2, 8192, 4096, 1000, 100, 9] {
        let err = open_damaged(&whole[..keep]);
        assert!(matches!(err, StoreError::Corrupt(_)), "kept {keep} of {} bytes: {err:?}", whole.len());
    }
}

#[test]
fn flipped_bytes_never_panic_and_leave_the_file_untouched() {
    let whole = store_bytes(50);
    // Flip one byte in every 4 KiB page, at a few offsets within the page.
    for offset in [0usize, 17, 333, 2048, 4000] {
        for page in (0..whole.len() / 4096).step_by(3) {
            let mut bytes = whole.clone();
            let at = page * 4096 + offset;
            bytes[at] ^= 0x5a;
            let dir = TempDir::new();
            let path = dir.path().join("store.redb");
            std::fs::write(&path, &bytes).unwrap();
            match RedbStore::open(&path) {
                // A byte redb never reads (free space, padding) may be changed harmlessly.
                Ok(s) => assert_eq!(snapshot(&s).nodes.len(), 50, "flipped byte {at}"),
                Err(err) => {
                    assert!(matches!(err, StoreError::Corrupt(_)), "flipped byte {at}: {err:?}");
                    assert_eq!(std::fs::read(&path).unwrap(), bytes, "flipped byte {at}");
                }
            }
        }
    }
}

#[test]
fn undecodable_object_is_corrupt_names_it_and_leaves_the_file_untouched() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    drop(RedbStore::open(&path).unwrap());
    {
        let db = Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(NODES).unwrap().insert("bad-node", [0xffu8, 0xff, 0xff].as_slice()).unwrap();
        tx.commit().unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("bad-node") && m.contains("store.redb")),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn object_under_another_id_is_corrupt() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    drop(RedbStore::open(&path).unwrap());
    {
        let db = Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        let other = node("other").encode_to_vec();
        tx.open_table(NODES).unwrap().insert("key", other.as_slice()).unwrap();
        tx.commit().unwrap();
    }
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("\"other\"")), "{err:?}");
}

#[test]
fn redb_file_of_another_application_is_corrupt() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("something", 1).unwrap();
        tx.commit().unwrap();
    }
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("not a swarmca store")), "{err:?}");
}

#[test]
fn second_open_of_a_held_file_is_unavailable() {
    let dir = TempDir::new();
    let s = dir.store();
    let err = RedbStore::open(s.path()).unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("another process")), "{err:?}");
    commit(&s, vec![Op::CreateNode(node("a"))]).unwrap();
    drop(s);
    assert_eq!(dir.store().revision(), 1, "the file is free once the last handle is dropped");
}

#[test]
fn missing_directory_is_unavailable() {
    let dir = TempDir::new();
    let err = RedbStore::open(&dir.path().join("nope").join("store.redb")).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[test]
fn clones_share_the_store_and_the_file_closes_with_the_last() {
    let dir = TempDir::new();
    let s = dir.store();
    let t = s.clone();
    commit(&t, vec![Op::CreateNode(node("a"))]).unwrap();
    drop(t);
    assert!(block_on(s.get_node("a")).unwrap().is_some());
    commit(&s, vec![Op::CreateNode(node("b"))]).unwrap();
    drop(s);
    assert_eq!(snapshot(&dir.store()).nodes.len(), 2);
}

/// Fault switches for [`FaultyBackend`].
#[derive(Default)]
struct Faults {
    state: Mutex<FaultState>,
    changed: Condvar,
}

#[derive(Default)]
struct FaultState {
    /// Syncs fail.
    fail: bool,
    /// Syncs wait until this is cleared.
    hold: bool,
    /// A sync is waiting on `hold`.
    holding: bool,
}

impl Faults {
    fn set(&self, f: impl FnOnce(&mut FaultState)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }

    fn wait_until(&self, cond: impl Fn(&FaultState) -> bool) {
        let g = self.state.lock().unwrap();
        drop(self.changed.wait_while(g, |s| !cond(s)).unwrap());
    }
}

/// A file backend whose `sync_data` can be held or made to fail.
#[derive(Debug)]
struct FaultyBackend {
    inner: FileBackend,
    faults: Arc<Faults>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faults")
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let mut g = self.faults.state.lock().unwrap();
        g.holding = true;
        self.faults.changed.notify_all();
        let mut g = self.faults.changed.wait_while(g, |s| s.hold).unwrap();
        g.holding = false;
        if g.fail {
            return Err(std::io::Error::other("injected sync failure"));
        }
        drop(g);
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

fn faulty_store(path: &Path) -> (RedbStore, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let f = Arc::clone(&faults);
    let s = RedbStore::open_with(path, move |inner| FaultyBackend { inner, faults: f }).unwrap();
    (s, faults)
}

#[test]
fn failed_sync_fails_the_commit_and_memory_keeps_the_last_durable_state() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    let (s, faults) = faulty_store(&path);
    commit(&s, vec![Op::CreateNode(node("kept"))]).unwrap();
    let (_, mut w) = block_on(s.view_and_watch(WatchFilter::All)).unwrap();
    faults.set(|f| f.fail = true);
    let err = commit(&s, vec![Op::CreateNode(node("lost"))]).unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("store.redb")), "{err:?}");
    assert_eq!(s.revision(), 1);
    assert!(block_on(s.get_node("lost")).unwrap().is_none());
    assert!(next_now(&mut w).is_none(), "no event for a commit that is not durable");
    faults.set(|f| f.fail = false);
    // redb refuses to write after a failed sync until the file is reopened, so memory cannot
    // move on from a state the disk may not have.
    let err = commit(&s, vec![Op::CreateNode(node("later"))]).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(s.revision(), 1);
    drop(s);
    // Whether the failed batch reached the disk is unknown (the write happened, its sync failed);
    // the reopened store holds it wholly or not at all, and carries on from there.
    let s = RedbStore::open(&path).unwrap();
    let ids: Vec<_> = snapshot(&s).nodes.into_iter().map(|n| n.id).collect();
    let rev = s.revision();
    match rev {
        1 => assert_eq!(ids, ["kept"]),
        2 => assert_eq!(ids, ["kept", "lost"]),
        _ => panic!("revision {rev} after reopen"),
    }
    assert_eq!(commit(&s, vec![Op::CreateNode(node("next"))]), Ok(rev + 1));
}

#[test]
fn failed_batch_fails_every_commit_validated_on_top_of_it() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    let (s, faults) = faulty_store(&path);
    // Hold the writer inside the sync of a first commit, so the next ones queue into one batch.
    faults.set(|f| f.hold = true);
    let first = s.commit(vec![Op::CreateNode(node("first"))]);
    faults.wait_until(|f| f.holding);
    let a = s.commit(vec![Op::CreateNode(node("x"))]);
    // Validated on top of `a`, this one conflicts; with `a` lost, that answer would be a lie.
    let b = s.commit(vec![Op::CreateNode(node("x"))]);
    let c = s.commit(vec![Op::UpdateNode(node("nothing"))]);
    faults.set(|f| {
        f.fail = true;
        f.hold = false;
    });
    for (name, r) in [("first", block_on(first)), ("a", block_on(a)), ("b", block_on(b)), ("c", block_on(c))]
    {
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{name}: {r:?}");
    }
    assert_eq!(s.revision(), 0);
    assert!(snapshot(&s).nodes.is_empty());
    faults.set(|f| f.fail = false);
    drop(s);
    // At most the first batch, whose sync failed after its write, may have reached the disk.
    let s = RedbStore::open(&path).unwrap();
    let ids: Vec<_> = snapshot(&s).nodes.into_iter().map(|n| n.id).collect();
    assert!(ids.is_empty() || ids == ["first"], "{ids:?}");
}

#[test]
fn queued_commits_are_validated_against_the_ones_before_them() {
    let dir = TempDir::new();
    let (s, faults) = faulty_store(&dir.path().join("store.redb"));
    let (_, mut w) = block_on(s.view_and_watch(WatchFilter::All)).unwrap();
    faults.set(|f| f.hold = true);
    let first = s.commit(vec![Op::CreateNode(node("first"))]);
    faults.wait_until(|f| f.holding);
    let a = s.commit(vec![Op::CreateNode(node("x"))]);
    let b = s.commit(vec![Op::CreateNode(node("x"))]);
    let mut x2 = node("x");
    crate::set_version(&mut x2.meta, 2);
    x2.role = 1;
    let c = s.commit(vec![Op::UpdateNode(x2)]);
    faults.set(|f| f.hold = false);
    assert_eq!(block_on(first), Ok(1));
    assert_eq!(block_on(a), Ok(2));
    assert_eq!(block_on(b), Err(StoreError::Exists));
    assert_eq!(block_on(c), Ok(3), "validated against the queued create, not yet durable");
    assert_eq!(block_on(s.get_node("x")).unwrap().unwrap().role, 1);
    let kinds: Vec<_> = std::iter::from_fn(|| next_now(&mut w))
        .map(|e| match e {
            Event::CreateNode(n) => format!("create {} v{}", n.id, version_of(n.meta.as_ref())),
            Event::UpdateNode(n) => format!("update {} v{}", n.id, version_of(n.meta.as_ref())),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["create first v1", "create x v2", "update x v3"]);
}

const CHILD_PATH: &str = "SWARMCA_STORE_CHILD_PATH";
const CHILD_TAG: &str = "SWARMCA_STORE_CHILD_TAG";

/// Runs this test binary's ignored test `name` as a child process with `env`.
fn spawn_child(name: &str, env: &[(&str, &std::ffi::OsStr)]) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--ignored", "--nocapture"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap()
}

/// Child of `kill_9_keeps_every_acknowledged_commit`: four threads create nodes in a loop and
/// print `ack <revision> <id> .` for each acknowledged commit, until killed.
#[test]
#[ignore = "child process of kill_9_keeps_every_acknowledged_commit"]
fn crash_child() {
    let (Some(path), Some(tag)) = (std::env::var_os(CHILD_PATH), std::env::var_os(CHILD_TAG)) else {
        return;
    };
    let tag = tag.to_string_lossy().into_owned();
    let s = RedbStore::open(Path::new(&path)).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (s, tag) = (&s, &tag);
            scope.spawn(move || {
                for i in 0.. {
                    let id = format!("{tag}-{t}-{i}");
                    let rev = commit(s, vec![Op::CreateNode(node(&id))]).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {rev} {id} .").unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

/// `(revision, id)` from a whole `ack` line of `crash_child`; the trailing "." shows the line was
/// not cut short by the kill.
fn parse_ack(line: &str) -> Option<(u64, String)> {
    match line.split(' ').collect::<Vec<_>>()[..] {
        ["ack", rev, id, "."] => Some((rev.parse().ok()?, id.to_string())),
        _ => None,
    }
}

#[cfg(unix)]
#[test]
fn kill_9_keeps_every_acknowledged_commit() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    let mut last_revision = 0;
    for round in 0..5usize {
        let tag = format!("r{round}");
        let mut child = spawn_child(
            "persistent::tests::crash_child",
            &[(CHILD_PATH, path.as_os_str()), (CHILD_TAG, tag.as_ref())],
        );
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked: Vec<(u64, String)> = Vec::new();
        let want = 30 + round * 41;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.len() < want {
            let line = lines.next().expect("the child exited before being killed").unwrap();
            acked.extend(parse_ack(&line));
            assert!(Instant::now() < deadline, "the child is too slow");
        }
        child.kill().unwrap();
        // Acknowledgements already in the pipe count too.
        acked.extend(lines.map_while(Result::ok).filter_map(|l| parse_ack(&l)));
        child.wait().unwrap();

        // The killed writer left the file marked as not shut down cleanly: the open repairs a copy.
        assert!(matches!(probe(&path), Ok(Probe::NeedsRecovery)), "round {round}");
        let s = RedbStore::open(&path).unwrap();
        assert!(acked.len() >= want);
        for (rev, id) in &acked {
            let n = block_on(s.get_node(id)).unwrap();
            let n = n.unwrap_or_else(|| panic!("round {round}: acknowledged {id} (revision {rev}) is lost"));
            assert_eq!(version_of(n.meta.as_ref()), *rev, "{id}");
        }
        let max = acked.iter().map(|(rev, _)| *rev).max().unwrap();
        assert!(s.revision() >= max && max > last_revision, "round {round}");
        last_revision = s.revision();
        let next = commit(&s, vec![Op::CreateNode(node(&format!("{tag}-after")))]).unwrap();
        assert_eq!(next, last_revision + 1);
        last_revision = next;
    }
}

/// Commits per second with one writer, then with 64 concurrent ones (distinct objects).
/// `cargo test --release -p swarmca-store --features persistent -- --ignored bench_ --nocapture`
#[test]
#[ignore = "benchmark"]
fn bench_commit_throughput() {
    let dir = TempDir::new();
    let s = dir.store();
    let n = 500;
    let start = Instant::now();
    for i in 0..n {
        commit(&s, vec![Op::CreateNode(node(&format!("solo-{i}")))]).unwrap();
    }
    let solo = f64::from(n) / start.elapsed().as_secs_f64();

    const WRITERS: u32 = 64;
    const EACH: u32 = 100;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        let ops = vec![Op::CreateNode(node(&format!("w{w}-{i}")))];
                        s.commit(ops).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let many = f64::from(WRITERS * EACH) / start.elapsed().as_secs_f64();
    println!("commits/s: 1 writer {solo:.0}, {WRITERS} concurrent writers {many:.0}");
}

/// Child of `bench_open_100k_nodes`: opens the store and prints the open time and RSS.
#[test]
#[ignore = "child process of bench_open_100k_nodes"]
fn bench_open_child() {
    let Some(path) = std::env::var_os(CHILD_PATH) else {
        return;
    };
    let start = Instant::now();
    let s = RedbStore::open(Path::new(&path)).unwrap();
    let ms = start.elapsed().as_millis();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: ?");
    let rss = rss.trim_start_matches("VmRSS:").trim();
    println!("opened {} nodes in {ms} ms; {rss} resident", s.core().view(&WatchFilter::All).nodes.len());
}

/// Open time and resident memory of a store of 100,000 nodes of about 2 KB each.
#[test]
#[ignore = "benchmark"]
fn bench_open_100k_nodes() {
    let dir = TempDir::new();
    let path = dir.path().join("store.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        let start = Instant::now();
        for chunk in 0..100 {
            let ops = (0..1000)
                .map(|i| {
                    let mut n = node(&format!("node-{chunk:03}-{i:04}"));
                    n.certificate = Some(swarmca_types::Certificate {
                        certificate: vec![0x30; 1400],
                        csr: vec![0x31; 600],
                        cn: n.id.clone(),
                        ..Default::default()
                    });
                    Op::CreateNode(n)
                })
                .collect();
            commit(&s, ops).unwrap();
        }
        println!("wrote 100,000 nodes in 100 commits in {:?}", start.elapsed());
    }
    let size = std::fs::metadata(&path).unwrap().len();
    println!("file: {} MiB", size >> 20);
    let child = spawn_child("persistent::tests::bench_open_child", &[(CHILD_PATH, path.as_os_str())]);
    let out = child.wait_with_output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("opened")) {
        println!("{line}");
    }
}
