//! Leader election on etcd's election API, for managers sharing one [`EtcdStore`].
//!
//! A candidate grants itself a lease, keeps it alive from a background task, and campaigns: etcd
//! puts the candidate's key `{name}/{lease}` (with its announced value) on the lease, and answers
//! once every older key under `{name}/` is gone, so the leader is the candidate with the oldest
//! key. The [`Leadership`] it gets holds the [`Fence`] (that key and the revision it was created
//! at) to build a fenced store with [`EtcdStore::fenced`]: once the key is gone (resigned, or its
//! lease expired) no write made through that store can land.
//!
//! The holder learns of a loss before etcd can act on it: a keep-alive is sent every third of the
//! lease's TTL, and when none has been acknowledged for two thirds of the TTL (so at least a
//! third of the TTL before etcd may expire the lease, counted from the last keep-alive etcd
//! acknowledged), or etcd reports the lease gone, the leadership is lost:
//! [`Leadership::lost`] returns and the lease is revoked if etcd can still be reached.

use etcd_client::{GetOptions, LeaseKeepAliveStream, LeaseKeeper, ResignOptions, SortOrder, SortTarget};
use tokio::sync::{oneshot, watch};
use tokio::time::{Duration, Instant};

use super::{header_revision, CallError, EtcdStore, Fence, Retry};
use crate::StoreError;

/// One election, by name: `campaign` to lead, `leader` to see who does.
#[derive(Debug, Clone)]
pub struct Election {
    store: EtcdStore,
    name: Vec<u8>,
    ttl: Duration,
}

/// A leader, as anyone can read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    value: Vec<u8>,
    fence: Fence,
}

impl Leader {
    /// What the leader announced when it campaigned (e.g. its manager ID and address).
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Its leader key and that key's creation revision.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }
}

/// Being the leader, until [`Leadership::lost`] returns. Dropping it (or [`Leadership::resign`])
/// gives the leadership up at once by revoking the lease.
#[derive(Debug)]
pub struct Leadership {
    leader: Leader,
    key: etcd_client::LeaderKey,
    lease: i64,
    ttl: Duration,
    lost: watch::Receiver<bool>,
    /// Stops the keep-alive task; `None` once given up.
    stop: Option<oneshot::Sender<()>>,
    store: EtcdStore,
}

impl Election {
    /// The election `name` (an etcd key; candidates are the keys under `{name}/`, e.g.
    /// `/swarmca/leader`) with leases of `ttl`, rounded up to whole seconds (etcd may raise it to
    /// its own minimum, about 1.5 election timeouts). A leader gives up after two thirds of the
    /// TTL without an acknowledged keep-alive, so the TTL should be well above the time etcd
    /// takes to replace a failed member leader (about 2 s with etcd's default timing): 10 s, say.
    pub fn new(store: &EtcdStore, name: impl Into<Vec<u8>>, ttl: Duration) -> Election {
        // Fences are checked by fenced handles, not by the election itself.
        let store = EtcdStore { shared: std::sync::Arc::clone(&store.shared), fence: None };
        Election { store, name: name.into(), ttl }
    }

    /// Campaigns with `value` and returns once elected, which may be never: cancel by dropping
    /// the future (the candidacy is then withdrawn). Fails with [`StoreError::Unavailable`] if
    /// etcd cannot be reached or the lease is lost while waiting.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership, StoreError> {
        let value = value.into();
        let secs = self.ttl.as_secs().saturating_add(u64::from(self.ttl.subsec_nanos() > 0)).max(1);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        let grant = self.store.call(Retry::IfNotSent, || {
            let mut leases = self.store.client().lease_client();
            async move { leases.grant(secs, None).await }
        });
        let grant = grant.await.map_err(|e| self.store.unavailable("granting an election lease", e))?;
        let lease = grant.id();
        let ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(0).max(1));
        // From here on, failing or being cancelled revokes the lease, withdrawing the candidacy.
        let mut guard = Revoke { store: self.store.clone(), lease: Some(lease) };
        let renewed = Instant::now();
        let keeping = self.store.call(Retry::Idempotent, || {
            let mut leases = self.store.client().lease_client();
            async move { leases.keep_alive(lease).await }
        });
        let (keeper, responses) =
            keeping.await.map_err(|e| self.store.unavailable("keeping the election lease alive", e))?;
        let (lost_tx, mut lost) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let keep = KeepAlive { store: self.store.clone(), lease, ttl, renewed, keeper, responses };
        tokio::spawn(keep.run(lost_tx, stopped));

        // Waiting to be elected has no time limit, but the lease must stay alive meanwhile.
        let resp = loop {
            let mut elections = self.store.client().election_client();
            let campaign = elections.campaign(self.name.clone(), value.clone(), lease);
            let r = tokio::select! {
                r = campaign => r,
                _ = lost.wait_for(|lost| *lost) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {}: the election lease was lost while campaigning",
                        self.store.shared.endpoints
                    )));
                }
            };
            match r {
                Ok(r) => break r,
                Err(e) if Retry::IfNotSent.allows(&e) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(self.store.unavailable("campaigning", CallError::Etcd(e))),
            }
        };
        let key = resp
            .leader()
            .cloned()
            .ok_or_else(|| StoreError::Unavailable("etcd campaign answered without a leader key".into()))?;
        guard.lease = None;
        let fence = Fence::new(key.key(), key.rev());
        Ok(Leadership {
            leader: Leader { value, fence },
            key,
            lease,
            ttl,
            lost,
            stop: Some(stop),
            store: self.store.clone(),
        })
    }

    /// The current leader, if any: the candidate with the oldest key under `{name}/`, as etcd's
    /// election API defines it.
    pub async fn leader(&self) -> Result<Option<Leader>, StoreError> {
        let mut prefix = self.name.clone();
        prefix.push(b'/');
        let opts =
            GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let resp = self.store.get(prefix, Some(opts)).await;
        let resp = resp.map_err(|e| self.store.unavailable("reading the election leader", e))?;
        header_revision(resp.header())?;
        Ok(resp.kvs().first().map(|kv| Leader {
            value: kv.value().to_vec(),
            fence: Fence::new(kv.key(), kv.create_revision()),
        }))
    }
}

impl Leadership {
    /// The fence for [`EtcdStore::fenced`].
    pub fn fence(&self) -> &Fence {
        self.leader.fence()
    }

    /// The value announced when campaigning.
    pub fn value(&self) -> &[u8] {
        self.leader.value()
    }

    /// The lease's TTL as etcd granted it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the leadership is known to be lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Returns once the leadership is lost: a keep-alive went unacknowledged for two thirds of
    /// the TTL, or etcd reported the lease gone.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keep-alive task has ended, which it only does once lost or stopped.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Gives the leadership up: stops the keep-alives, resigns and revokes the lease, so that
    /// another candidate is elected at once. If etcd cannot be reached the lease still expires
    /// within its TTL, and the error says so.
    pub async fn resign(mut self) -> Result<(), StoreError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let resign = Some(ResignOptions::new().with_leader(self.key.clone()));
        let resigned = self.store.call(Retry::Idempotent, || {
            let (mut elections, resign) = (self.store.client().election_client(), resign.clone());
            async move { elections.resign(resign).await }
        });
        let resigned = resigned.await;
        let revoked = self.store.revoke(self.lease).await;
        match (resigned, revoked) {
            (Ok(_), _) | (_, Ok(_)) => Ok(()),
            (Err(_), Err(e)) => Err(self.store.unavailable("resigning (the lease will expire by itself)", e)),
        }
    }

    /// Stops the keep-alives without revoking anything, as if the process had died.
    #[cfg(test)]
    pub(crate) fn abandon(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            drop(Revoke { store: self.store.clone(), lease: Some(self.lease) });
        }
    }
}

/// Revokes `lease` in the background when dropped, unless it has been taken.
struct Revoke {
    store: EtcdStore,
    lease: Option<i64>,
}

impl Drop for Revoke {
    fn drop(&mut self) {
        let (Some(lease), Ok(rt)) = (self.lease.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let store = self.store.clone();
        // Best effort: if etcd cannot be reached, the lease expires within its TTL.
        rt.spawn(async move {
            let _ = store.revoke(lease).await;
        });
    }
}

/// The task keeping a lease alive.
struct KeepAlive {
    store: EtcdStore,
    lease: i64,
    ttl: Duration,
    /// When the last acknowledged keep-alive was sent.
    renewed: Instant,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

impl KeepAlive {
    async fn run(mut self, lost: watch::Sender<bool>, mut stop: oneshot::Receiver<()>) {
        let period = self.ttl / 3;
        let budget = self.ttl * 2 / 3;
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                () = tokio::time::sleep_until(self.renewed + period) => {}
            }
            let sent = Instant::now();
            let deadline = self.renewed + budget;
            let renewed = tokio::select! {
                biased;
                _ = &mut stop => return,
                r = tokio::time::timeout_at(deadline, self.renew()) => r,
            };
            match renewed {
                Ok(true) => self.renewed = sent,
                Ok(false) | Err(_) => break,
            }
        }
        let _ = lost.send(true);
        let _ = self.store.revoke(self.lease).await;
    }

    /// Sends one keep-alive and waits for its answer, opening the stream again if it broke:
    /// `true` once acknowledged, `false` if etcd says the lease is gone. The caller bounds it.
    async fn renew(&mut self) -> bool {
        loop {
            if self.keeper.keep_alive().await.is_ok() {
                if let Ok(Some(resp)) = self.responses.message().await {
                    return resp.ttl() > 0;
                }
            }
            // The stream broke: open another (which sends a keep-alive and reads its answer).
            let mut leases = self.store.client().lease_client();
            match leases.keep_alive(self.lease).await {
                Ok((keeper, responses)) => {
                    self.keeper = keeper;
                    self.responses = responses;
                    return true;
                }
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => return false,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl EtcdStore {
    /// Revokes `lease`, deleting the keys attached to it.
    async fn revoke(&self, lease: i64) -> Result<(), CallError> {
        let revoked = self.call(Retry::Idempotent, || {
            let mut leases = self.client().lease_client();
            async move { leases.revoke(lease).await }
        });
        revoked.await.map(drop)
    }
}
