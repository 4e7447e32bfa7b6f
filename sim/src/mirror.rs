//! Follows every store write (through a watch on the real store, behind the fault injector),
//! keeps a mirror of the previous state, writes each change to the event log, and feeds the
//! per-write checkers. It also records what the final checkers need: the token history, the
//! role each node was created with, and every (state, certificate, CSR) a node ever held.

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarmca_store::{Event, MemStore, Node, WatchFilter};
use swarmca_types::Cluster;

use crate::checkers::{self, WriteCtx};
use crate::shared::{lock, now, Shared};

/// What the mirror knows, shared with the final checkers.
#[derive(Default)]
pub struct Mirror {
    pub nodes: BTreeMap<String, Node>,
    pub cluster: Option<Cluster>,
    /// Role each node was created with (from its first certificate request).
    pub created_role: BTreeMap<String, i32>,
    /// Every (state, certificate digest, CSR digest) each node held, with the simulated time it
    /// was written, in order.
    pub history: BTreeMap<String, Vec<(Duration, (i32, String, String))>>,
    /// Serial number (hex) → certificate digest, over every certificate ever issued.
    pub serials: BTreeMap<String, String>,
    /// The node certificate expiry the cluster asked for, from when (simulated time): each
    /// change, in order, as the harness reads the cluster object itself.
    pub expiry_history: Vec<(Duration, Duration)>,
    /// Whether the cluster listed an external CA for the root being signed for, from when:
    /// each change, in order (see [`external_usable`]).
    pub external_history: Vec<(Duration, bool)>,
    /// For every cluster version written: whether managers were autolocked, and the manager
    /// unlock key then.
    pub cluster_versions: BTreeMap<u64, (bool, Vec<u8>)>,
    /// Number of certificates seen issued.
    pub issued: u64,
    /// Number of FAILED writes.
    pub failed: u64,
    /// Every root certificate (PEM) the cluster had as root or rotation target, in order.
    pub roots_seen: Vec<Vec<u8>>,
    /// Every root in `roots_seen`, as one bundle.
    pub all_roots: Vec<u8>,
    /// The roots of the cluster as it is now (root, and rotation target): checked first,
    /// since what is signed now chains to one of them (roots share their subject, so a path
    /// search over every root seen tries each in turn).
    pub recent_roots: Vec<u8>,
    /// When the rotation target (or its absence) last changed.
    pub rotation_changed_at: Duration,
    /// The role of the last certificate issued to each node.
    pub issued_role: BTreeMap<String, i32>,
    /// The latest NotAfter (Unix seconds) of every certificate issued to each node.
    pub not_after: BTreeMap<String, i64>,
}

impl Mirror {
    /// Notes the roots of `c` (root and rotation target).
    fn note_roots(&mut self, c: &Cluster) {
        let root = c.root_ca.clone().unwrap_or_default();
        let mut changed = false;
        for pem in std::iter::once(&root.ca_cert).chain(root.root_rotation.as_ref().map(|r| &r.ca_cert)) {
            if !pem.is_empty() && !self.roots_seen.contains(pem) {
                self.roots_seen.push(pem.clone());
                changed = true;
            }
        }
        if changed {
            self.all_roots = self.roots_seen.join(&b'\n');
        }
        self.recent_roots = root.ca_cert.clone();
        if let Some(r) = &root.root_rotation {
            self.recent_roots.push(b'\n');
            self.recent_roots.extend_from_slice(&r.ca_cert);
        }
    }
}

/// Short digest of bytes for logs and history.
pub fn short(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    hex::encode(&swarmca_core::rootca::digest(b)[..8])
}

fn cert_of(n: &Node) -> (i32, Vec<u8>, Vec<u8>, i32) {
    let c = n.certificate.clone().unwrap_or_default();
    (c.status.map_or(0, |s| s.state), c.certificate, c.csr, c.role)
}

/// The node certificate validity `c` asks for, by SwarmKit's rule, read independently of the
/// server's code: `spec.ca_config.node_cert_expiry` when present and at least 1 h, else 90
/// days (replaced, not clamped).
pub fn expiry_of(c: &Cluster) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(2160 * 3600);
    let configured =
        c.spec.as_ref().and_then(|s| s.ca_config.as_ref()).and_then(|ca| ca.node_cert_expiry.as_ref());
    match configured {
        Some(d) if d.seconds >= 3600 && d.nanos >= 0 => {
            Duration::from_secs(d.seconds as u64) + Duration::from_nanos(d.nanos as u64)
        }
        _ => DEFAULT,
    }
}

/// Whether `c` lists a CFSSL external CA for the certificate being signed for (the rotation
/// target during a rotation, else the root; an entry without a certificate stands for the
/// root): SwarmKit then signs only through external CAs, never locally (docs/behaviour.md §3.8).
pub fn external_usable(c: &Cluster) -> bool {
    let root = c.root_ca.clone().unwrap_or_default();
    let trim = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let desired = trim(root.root_rotation.as_ref().map_or(&root.ca_cert, |r| &r.ca_cert));
    let list = c
        .spec
        .as_ref()
        .and_then(|s| s.ca_config.as_ref())
        .map(|ca| ca.external_cas.clone())
        .unwrap_or_default();
    list.iter().any(|e| {
        e.protocol == 0 && trim(if e.ca_cert.is_empty() { &root.ca_cert } else { &e.ca_cert }) == desired
    })
}

/// Every value `history` (changes in time order) held at some instant of [`from`, `to`].
fn values_between<T: PartialEq + Copy>(history: &[(Duration, T)], from: Duration, to: Duration) -> Vec<T> {
    let mut out = Vec::new();
    for (i, (at, v)) in history.iter().enumerate() {
        let until = history.get(i + 1).map_or(Duration::MAX, |(next, _)| *next);
        if *at <= to && until >= from && !out.contains(v) {
            out.push(*v);
        }
    }
    out
}

impl Mirror {
    /// Every expiry the cluster asked for at some instant of [`from`, `to`].
    pub fn expiries_between(&self, from: Duration, to: Duration) -> Vec<Duration> {
        values_between(&self.expiry_history, from, to)
    }

    /// Every value of [`external_usable`] at some instant of [`from`, `to`].
    pub fn external_between(&self, from: Duration, to: Duration) -> Vec<bool> {
        values_between(&self.external_history, from, to)
    }

    fn note_cluster(&mut self, at: Duration, c: &Cluster) {
        let autolock =
            c.spec.as_ref().and_then(|s| s.encryption_config.as_ref()).is_some_and(|e| e.auto_lock_managers);
        let key = c
            .unlock_keys
            .iter()
            .find(|k| k.subsystem == "swarm-manager")
            .map(|k| k.key.clone())
            .unwrap_or_default();
        self.cluster_versions.insert(swarmca_store::version_of(c.meta.as_ref()), (autolock, key));
        let e = expiry_of(c);
        if self.expiry_history.last().is_none_or(|(_, last)| *last != e) {
            self.expiry_history.push((at, e));
        }
        let x = external_usable(c);
        if self.external_history.last().is_none_or(|(_, last)| *last != x) {
            self.external_history.push((at, x));
        }
    }
}

/// Starts the mirror on the current (supervisor) node.
/// A cluster record as stored: checked for secrets in clear (I13), then noted with its
/// secrets opened (the unlock key the managers answer with is the clear one).
fn note_sealed_cluster(m: &mut Mirror, shared: &Shared, c: &Cluster) {
    checkers::i13_sealed_at_rest::on_cluster_write(shared, c);
    let Some(dek) = lock(&shared.data_key).clone() else {
        return m.note_cluster(now(), c);
    };
    let clear = match swarmca_server::custody::open_cluster(c, &dek) {
        Ok(clear) => clear,
        Err(e) => {
            return shared.violation("I13", format!("cluster secrets do not open with its data key: {e}"))
        }
    };
    // Autolocked: the current unlock key opens the data key (an older one does not, I13 above
    // checks the wrapping's kind).
    let autolocked = swarmca_core::cluster::autolock_on(&clear);
    if shared.autolocked.swap(autolocked, std::sync::atomic::Ordering::SeqCst) != autolocked {
        shared.autolock_flips.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    if let Some(u) = swarmca_core::cluster::unlock_key(&clear).filter(|_| autolocked) {
        let opens = swarmca_core::seal::UnlockKey::from_bytes(u).ok().is_some_and(|u| {
            let kek = swarmca_core::seal::Kek::from_unlock_key(&u);
            c.sealing
                .as_ref()
                .is_some_and(|s| kek.unwrap(&s.wrapped_data_key, &c.id).is_ok_and(|d| d.same_as(&dek)))
        });
        if !opens {
            shared.violation(
                "I13",
                "autolock on, but the current unlock key does not open the data key".into(),
            );
        }
    }
    m.note_cluster(now(), &clear)
}

pub fn start(store: &MemStore, shared: Arc<Shared>) -> Arc<Mutex<Mirror>> {
    let (snap, mut watch) = store.view_and_watch_sync(WatchFilter::All);
    let mirror = Arc::new(Mutex::new(Mirror::default()));
    {
        let mut m = lock(&mirror);
        for c in snap.clusters {
            m.note_roots(&c);
            note_sealed_cluster(&mut m, &shared, &c);
            record_cluster(&shared, &c, true);
            m.cluster = Some(c);
        }
        for n in snap.nodes {
            note_history(&mut m, &n);
            m.nodes.insert(n.id.clone(), n);
        }
    }
    let m2 = mirror.clone();
    madsim::task::spawn(async move {
        while let Some(ev) = watch.next().await {
            let mut m = lock(&m2);
            apply(&mut m, &shared, ev);
        }
    });
    mirror
}

/// Records what the cluster `c` tells the actors: its join tokens (spans of validity) and
/// its root (what the dispatcher pushes to agents).
fn record_cluster(shared: &Shared, c: &Cluster, initial: bool) {
    *lock(&shared.cluster_root) = c.root_ca.as_ref().map(|r| r.ca_cert.clone()).unwrap_or_default();
    *lock(&shared.blacklisted) = c.blacklisted_certificates.keys().cloned().collect();
    let t = c.root_ca.as_ref().and_then(|r| r.join_tokens.clone()).unwrap_or_default();
    for (manager, token) in [(false, t.worker), (true, t.manager)] {
        if shared.current_token(manager).as_deref() != Some(token.as_str()) {
            if !initial {
                shared
                    .log
                    .push(format!("token: {} token rotated", if manager { "manager" } else { "worker" }));
            }
            shared.token_rotated(manager, token);
        }
    }
}

fn note_history(m: &mut Mirror, n: &Node) {
    let (state, cert, csr, _) = cert_of(n);
    m.history.entry(n.id.clone()).or_default().push((now(), (state, short(&cert), short(&csr))));
}

fn apply(m: &mut Mirror, shared: &Shared, ev: Event) {
    match ev {
        Event::CreateNode(n) | Event::UpdateNode(n) => {
            let prev = m.nodes.get(&n.id).cloned();
            let (state, cert, csr, role) = cert_of(&n);
            shared.log.push(format!(
                "write: node {} v{} role={} state={} cert={} csr={}{}",
                n.id,
                swarmca_store::version_of(n.meta.as_ref()),
                role,
                state,
                short(&cert),
                short(&csr),
                if prev.is_none() { " (created)" } else { "" },
            ));
            if prev.is_none() {
                m.created_role.insert(n.id.clone(), role);
            }
            let cluster = m.cluster.clone();
            let ctx =
                WriteCtx { shared, prev: prev.as_ref(), new: &n, cluster: cluster.as_ref(), now: now() };
            checkers::on_node_write(m, &ctx);
            note_history(m, &n);
            if let Some(f) = n.certificate.as_ref().and_then(|c| shared.facts.cert_pem(&c.certificate)) {
                let e = m.not_after.entry(n.id.clone()).or_insert(f.not_after);
                *e = (*e).max(f.not_after);
            }
            shared.dispatch(&n.id, Some((n.role, state)));
            m.nodes.insert(n.id.clone(), n);
        }
        Event::DeleteNode(n) => {
            shared.log.push(format!("write: node {} deleted", n.id));
            shared.dispatch(&n.id, None);
            m.nodes.remove(&n.id);
        }
        Event::CreateCluster(c) | Event::UpdateCluster(c) => {
            let e = expiry_of(&c);
            shared.log.push(format!(
                "write: cluster v{} expiry={}s blacklist={}",
                swarmca_store::version_of(c.meta.as_ref()),
                e.as_secs(),
                c.blacklisted_certificates.len()
            ));
            note_sealed_cluster(m, shared, &c);
            record_cluster(shared, &c, false);
            m.note_roots(&c);
            checkers::i8_rotation::on_cluster_write(m, shared, &c);
            checkers::i16_certificate_lives::on_cluster_write(m, shared, &c);
            m.cluster = Some(c);
        }
    }
}
