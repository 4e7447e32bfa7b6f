//! Key custody: the secrets of the cluster record never reach a store in clear.
//!
//! [`SealedStore`] wraps the store every other part of the server uses. On the way in, a
//! cluster's root CA key, a rotation's new key and the unlock key are sealed under the
//! cluster's data key; on the way out they are opened again, so the rest of the server works
//! with the clear PEM in memory and no store (embedded, etcd, the simulator's) ever holds it.
//! The data key itself is wrapped under a key-encryption key in the record's `sealing` field;
//! [`unseal`] finds it with what this manager was given (its seal key, or the unlock key when
//! autolock is on). How the keys are made and sealed is `swarmca_core::seal`.

use std::sync::Arc;

use swarmca_core::seal::{is_sealed, DataKey, Kek, KekSource, Purpose, SealError, SealKey, UnlockKey};
use swarmca_store::{BoxFuture, Event, Op, Snapshot, Store, StoreError, Watch, WatchFilter};
use swarmca_types::sealing::KekSource as ApiKekSource;
use swarmca_types::{Cluster, Sealing};

use crate::env::{with_entropy, SharedEntropy};
use crate::leadership::{Election, Term};

/// Why this manager cannot open the cluster's keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CustodyError {
    /// Autolock is on and no unlock key was given (or not yet).
    #[error(
        "this manager is locked: autolock is on; run `swarmca unlock` (or start with --unlock-key-file)"
    )]
    Locked,
    /// The cluster's keys are sealed under a seal key this manager was not given.
    #[error("the cluster's keys are sealed under a seal key this manager does not have (give it with --seal-key-file)")]
    NoSealKey,
    /// The key given does not open the data key.
    #[error("{0}")]
    WrongKey(String),
    /// Sealing or opening failed for another reason (format, entropy).
    #[error("{0}")]
    Seal(#[from] SealError),
}

/// The keys a manager holds: to open the cluster's data key, and to reach CA keys held in a
/// token.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    /// The seal key (the embedded store's local key file, or `--seal-key-file`).
    pub seal: Option<SealKey>,
    /// The unlock key, once given.
    pub unlock: Option<UnlockKey>,
    /// What resolves CA keys stored as references (`pkcs11:` URIs); none by default.
    pub external: Option<Arc<dyn swarmca_core::rootca::ExternalKeys>>,
}

impl Keys {
    /// What resolves CA keys held in a token (nothing when none is configured).
    pub fn external_keys(&self) -> &dyn swarmca_core::rootca::ExternalKeys {
        match &self.external {
            Some(k) => &**k,
            None => &swarmca_core::rootca::NoExternalKeys,
        }
    }
    /// The KEK this manager would wrap a data key under for `source`.
    pub fn kek(&self, source: KekSource) -> Result<Kek, CustodyError> {
        match source {
            KekSource::SealKey => self.seal.as_ref().map(Kek::from_seal_key).ok_or(CustodyError::NoSealKey),
            KekSource::UnlockKey => {
                self.unlock.as_ref().map(Kek::from_unlock_key).ok_or(CustodyError::Locked)
            }
        }
    }
}

/// The KEK source a cluster's sealing names.
pub fn kek_source(s: &Sealing) -> KekSource {
    match ApiKekSource::try_from(s.kek) {
        Ok(ApiKekSource::UnlockKey) => KekSource::UnlockKey,
        _ => KekSource::SealKey,
    }
}

/// A cluster's `sealing` field for `dek` wrapped under `kek`.
pub fn sealing(
    kek: &Kek,
    dek: &DataKey,
    cluster_id: &str,
    entropy: &SharedEntropy,
) -> Result<Sealing, SealError> {
    let wrapped = with_entropy(entropy, |e| kek.wrap(dek, cluster_id, e))?;
    let kek = match kek.source() {
        KekSource::SealKey => ApiKekSource::SealKey,
        KekSource::UnlockKey => ApiKekSource::UnlockKey,
    };
    Ok(Sealing { wrapped_data_key: wrapped, kek: kek as i32 })
}

/// The data key of `cluster`, opened with `keys`; `None` when the record was written before
/// sealing existed (its secrets are still in clear and must be sealed, see [`migrate`]).
pub fn unseal(cluster: &Cluster, keys: &Keys) -> Result<Option<DataKey>, CustodyError> {
    let Some(s) = cluster.sealing.as_ref().filter(|s| !s.wrapped_data_key.is_empty()) else {
        return Ok(None);
    };
    let source = kek_source(s);
    let kek = keys.kek(source)?;
    kek.unwrap(&s.wrapped_data_key, &cluster.id).map(Some).map_err(|e| match (e, source) {
        (SealError::WrongKey { .. }, KekSource::UnlockKey) => {
            CustodyError::WrongKey("wrong unlock key: it does not open this cluster's keys".into())
        }
        (SealError::WrongKey { .. }, KekSource::SealKey) => CustodyError::WrongKey(
            "wrong seal key: it does not open this cluster's keys (another cluster's key file?)".into(),
        ),
        (e, _) => CustodyError::Seal(e),
    })
}

/// A record written in clear by an earlier version, sealed: a new data key wrapped under the
/// key-encryption key its settings call for ([`desired_kek`]), and its secrets sealed (through [`SealedStore`] when it is committed). Returns the
/// data key and the record to commit.
pub fn migrate(
    cluster: &Cluster,
    keys: &Keys,
    entropy: &SharedEntropy,
) -> Result<(DataKey, Cluster), CustodyError> {
    // A record of an autolocked cluster goes under its unlock key at once.
    let kek = desired_kek(cluster, keys.seal.as_ref())?;
    let dek = with_entropy(entropy, DataKey::generate)?;
    let mut c = cluster.clone();
    c.sealing = Some(sealing(&kek, &dek, &c.id, entropy)?);
    Ok((dek, c))
}

/// Every secret field of a cluster record, with its purpose.
fn secrets(c: &mut Cluster) -> Vec<(Purpose, &mut Vec<u8>)> {
    let mut out = Vec::new();
    if let Some(root) = c.root_ca.as_mut() {
        out.push((Purpose::CaKey, &mut root.ca_key));
        if let Some(r) = root.root_rotation.as_mut() {
            out.push((Purpose::CaKey, &mut r.ca_key));
        }
    }
    for k in &mut c.unlock_keys {
        out.push((Purpose::UnlockKey, &mut k.key));
    }
    out
}

/// `c` with its secrets sealed under `dek` (those already sealed are kept as they are).
pub fn seal_cluster(c: &Cluster, dek: &DataKey, entropy: &SharedEntropy) -> Result<Cluster, SealError> {
    let mut out = c.clone();
    let id = out.id.clone();
    for (purpose, field) in secrets(&mut out) {
        if !field.is_empty() && !is_sealed(field) {
            let sealed = with_entropy(entropy, |e| dek.seal(purpose, &id, field, e))?;
            zeroize::Zeroize::zeroize(field);
            *field = sealed;
        }
    }
    Ok(out)
}

/// `c` with its secrets opened with `dek`. A secret in clear in a sealed record is refused: it
/// can only have been put there by someone writing the store directly, and taking it (an
/// unlock key of their choosing, say, that the next write would wrap the data key under)
/// would hand them the keys. A record of the earlier, clear format is sealed by [`migrate`]
/// before anything reads it through a [`SealedStore`].
pub fn open_cluster(c: &Cluster, dek: &DataKey) -> Result<Cluster, SealError> {
    let mut out = c.clone();
    let id = out.id.clone();
    for (purpose, field) in secrets(&mut out) {
        if field.is_empty() {
            continue;
        }
        if !is_sealed(field) {
            return Err(SealError::Format {
                what: purpose.name(),
                detail: "found in clear in a sealed cluster record (written around swarmca?)".into(),
            });
        }
        let clear = dek.open(purpose, &id, field)?;
        field.clear();
        field.extend_from_slice(&clear);
    }
    Ok(out)
}

/// Whether any secret of `c` is sealed (a record that must have a wrapped data key).
pub fn has_sealed_secrets(c: &Cluster) -> bool {
    let mut c = c.clone();
    secrets(&mut c).iter().any(|(_, f)| is_sealed(f))
}

/// The key-encryption key a (clear) cluster record's data key belongs under: the unlock key
/// while autolock is on, the seal key otherwise.
pub fn desired_kek(c: &Cluster, seal: Option<&SealKey>) -> Result<Kek, CustodyError> {
    if swarmca_core::cluster::autolock_on(c) {
        if let Some(k) = swarmca_core::cluster::unlock_key(c) {
            return Ok(Kek::from_unlock_key(&UnlockKey::from_bytes(k)?));
        }
    }
    seal.map(Kek::from_seal_key).ok_or(CustodyError::NoSealKey)
}

/// The store as the server sees it: secrets sealed on every write, opened on every read, and
/// the data key kept wrapped under the KEK the record's settings call for — so turning
/// autolock on, rotating the unlock key, or turning autolock off re-wraps it in the same commit
/// (the old unlock key then opens nothing), whichever code path writes the record.
pub struct SealedStore {
    inner: Arc<dyn Store>,
    dek: DataKey,
    seal_key: Option<SealKey>,
    entropy: SharedEntropy,
}

impl SealedStore {
    /// `inner`, with the cluster's secrets sealed under `dek`; `seal_key` wraps it while
    /// autolock is off (without it, autolock cannot be turned off through this store).
    pub fn new(
        inner: Arc<dyn Store>,
        dek: DataKey,
        seal_key: Option<SealKey>,
        entropy: SharedEntropy,
    ) -> SealedStore {
        SealedStore { inner, dek, seal_key, entropy }
    }

    /// The data key (to wrap it again when the KEK changes).
    pub fn data_key(&self) -> &DataKey {
        &self.dek
    }

    fn open(&self, c: &Cluster) -> Result<Cluster, StoreError> {
        open_cluster(c, &self.dek).map_err(|e| StoreError::Corrupt(format!("cluster {}: {e}", c.id)))
    }

    fn open_snapshot(&self, mut s: Snapshot) -> Result<Snapshot, StoreError> {
        for c in &mut s.clusters {
            *c = self.open(c)?;
        }
        Ok(s)
    }

    fn seal(&self, c: &Cluster) -> Result<Cluster, StoreError> {
        let refuse = |e: CustodyError| StoreError::Unavailable(format!("sealing: {e}"));
        let mut out = seal_cluster(c, &self.dek, &self.entropy).map_err(|e| refuse(e.into()))?;
        let kek = desired_kek(c, self.seal_key.as_ref()).map_err(refuse)?;
        let current = out.sealing.as_ref().filter(|s| kek_source(s) == kek.source());
        let unwrapped = current.map(|s| kek.unwrap(&s.wrapped_data_key, &c.id));
        // Another data key under the same KEK: the record was re-keyed by someone else, and
        // wrapping ours over it would make the secrets sealed under theirs unreadable.
        if let Some(Ok(k)) = &unwrapped {
            if !k.same_as(&self.dek) {
                return Err(StoreError::Corrupt(format!(
                    "cluster {}: its data key changed under this manager; restart it",
                    c.id
                )));
            }
        }
        if unwrapped.is_none_or(|r| r.is_err()) {
            out.sealing = Some(sealing(&kek, &self.dek, &c.id, &self.entropy).map_err(|e| refuse(e.into()))?);
        }
        Ok(out)
    }
}

impl Store for SealedStore {
    fn view(&self, filter: WatchFilter) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        Box::pin(async move { self.open_snapshot(self.inner.view(filter).await?) })
    }

    fn get_node<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<swarmca_types::Node>, StoreError>> {
        self.inner.get_node(id)
    }

    fn get_cluster<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Cluster>, StoreError>> {
        Box::pin(async move { self.inner.get_cluster(id).await?.map(|c| self.open(&c)).transpose() })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut sealed = Vec::with_capacity(ops.len());
            for op in ops {
                sealed.push(match op {
                    Op::CreateCluster(c) => Op::CreateCluster(self.seal(&c)?),
                    Op::UpdateCluster(c) => Op::UpdateCluster(self.seal(&c)?),
                    op => op,
                });
            }
            self.inner.commit(sealed).await
        })
    }

    fn view_and_watch(&self, filter: WatchFilter) -> BoxFuture<'_, Result<(Snapshot, Watch), StoreError>> {
        Box::pin(async move {
            let (snap, watch) = self.inner.view_and_watch(filter).await?;
            let dek = self.dek.clone();
            let watch = watch.map(Arc::new(move |e: Arc<Event>| {
                let opened = match &*e {
                    Event::CreateCluster(c) => Event::CreateCluster(open_cluster(c, &dek).ok()?),
                    Event::UpdateCluster(c) => Event::UpdateCluster(open_cluster(c, &dek).ok()?),
                    _ => return Some(e),
                };
                Some(Arc::new(opened))
            }));
            Ok((self.open_snapshot(snap)?, watch))
        })
    }
}

/// An election whose terms write through a [`SealedStore`]: the leader duties of every term
/// seal what they write, as everything else does.
pub struct SealedElection {
    inner: Arc<dyn Election>,
    dek: DataKey,
    seal_key: Option<SealKey>,
    entropy: SharedEntropy,
}

impl SealedElection {
    /// `inner`, with every term's store sealed under `dek` (see [`SealedStore::new`]).
    pub fn new(
        inner: Arc<dyn Election>,
        dek: DataKey,
        seal_key: Option<SealKey>,
        entropy: SharedEntropy,
    ) -> SealedElection {
        SealedElection { inner, dek, seal_key, entropy }
    }
}

impl Election for SealedElection {
    fn campaign<'a>(&'a self, candidate: &'a str) -> BoxFuture<'a, Result<Box<dyn Term>, StoreError>> {
        Box::pin(async move {
            let term = self.inner.campaign(candidate).await?;
            let store: Arc<dyn Store> = Arc::new(SealedStore::new(
                term.store(),
                self.dek.clone(),
                self.seal_key.clone(),
                self.entropy.clone(),
            ));
            Ok(Box::new(SealedTerm { term, store }) as Box<dyn Term>)
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        self.inner.leader()
    }
}

struct SealedTerm {
    term: Box<dyn Term>,
    store: Arc<dyn Store>,
}

impl Term for SealedTerm {
    fn number(&self) -> u64 {
        self.term.number()
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn lost(&self) -> BoxFuture<'_, ()> {
        self.term.lost()
    }

    fn is_lost(&self) -> bool {
        self.term.is_lost()
    }

    fn resign(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        self.term.resign()
    }
}

#[cfg(test)]
mod tests;
