//! Who runs the leader duties: the election seam.
//!
//! Every manager serves the RPCs; exactly one at a time — the leader — signs, reconciles root
//! rotations and writes their results. Managers agree on it through an [`Election`]:
//!
//! - [`Solo`]: a single manager on its own store (the embedded deployment) always leads;
//! - `EtcdElection` (feature `etcd`): etcd's election API, with a lease kept alive by the
//!   leader and writes fenced on its leader key;
//! - the simulator's election: leases on simulated time, lost by pauses, partitions and kills.
//!
//! A won election is a [`Term`]. Its [`Term::store`] refuses every write once the term is over
//! (`StoreError::Fenced`), so a deposed leader that has not noticed yet — paused, cut off, slow —
//! can never land a write; [`Term::lost`] tells the holder so it stops its duties.
//! [`crate::Manager`] drives the whole cycle.

use std::sync::Arc;

use swarmca_store::{BoxFuture, Store, StoreError};

/// How the managers of one cluster agree on a leader.
pub trait Election: Send + Sync {
    /// Campaigns as `candidate` (the manager's node ID, announced to everyone) and resolves
    /// once elected, which may be never. Dropping the future withdraws the candidacy. Fails
    /// when the election cannot be reached or the candidacy is lost while waiting.
    fn campaign<'a>(&'a self, candidate: &'a str) -> BoxFuture<'a, Result<Box<dyn Term>, StoreError>>;

    /// The node ID the current leader announced, if there is a leader.
    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
}

/// One won leadership, until it is lost or given up.
pub trait Term: Send + Sync {
    /// The term's number: unique within the cluster and growing with every new term.
    fn number(&self) -> u64;

    /// The store the leader duties of this term read and write through: every commit is
    /// refused (`StoreError::Fenced`) once the term is over, checked where it is applied.
    fn store(&self) -> Arc<dyn Store>;

    /// Resolves once the term is known to be lost (its lease expired, or could not be renewed
    /// in time); the holder must stop its duties at once.
    fn lost(&self) -> BoxFuture<'_, ()>;

    /// Whether the term is known to be lost.
    fn is_lost(&self) -> bool;

    /// Gives the term up, so that another candidate is elected at once. When the election
    /// cannot be reached, the term still ends by itself (its lease expires) and the error says so.
    fn resign(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// The election of a manager alone on its store: every campaign wins at once, and a term is
/// lost only by resigning. Writes go to the store unfenced, as nobody else writes as leader.
#[derive(Clone)]
pub struct Solo {
    store: Arc<dyn Store>,
    state: Arc<std::sync::Mutex<SoloState>>,
}

#[derive(Debug, Default)]
struct SoloState {
    /// The holder of the current term, if any.
    holder: Option<String>,
    /// The number of the last term granted.
    last: u64,
}

impl Solo {
    /// The election of the single manager of `store`.
    pub fn new(store: Arc<dyn Store>) -> Solo {
        Solo { store, state: Arc::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SoloState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Solo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solo").field("state", &*self.state()).finish()
    }
}

impl Election for Solo {
    fn campaign<'a>(&'a self, candidate: &'a str) -> BoxFuture<'a, Result<Box<dyn Term>, StoreError>> {
        Box::pin(async move {
            let number = {
                let mut st = self.state();
                st.last = st.last.saturating_add(1);
                st.holder = Some(candidate.to_string());
                st.last
            };
            Ok(Box::new(SoloTerm { number, store: self.store.clone(), solo: self.clone() }) as Box<dyn Term>)
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move { Ok(self.state().holder.clone()) })
    }
}

struct SoloTerm {
    number: u64,
    store: Arc<dyn Store>,
    solo: Solo,
}

impl Term for SoloTerm {
    fn number(&self) -> u64 {
        self.number
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn lost(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }

    fn is_lost(&self) -> bool {
        false
    }

    fn resign(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async move {
            let mut st = self.solo.state();
            if st.last == self.number {
                st.holder = None;
            }
            Ok(())
        })
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use std::sync::Arc;

    use swarmca_store::etcd::{Election as EtcdElectionApi, EtcdStore, Leadership};
    use swarmca_store::{BoxFuture, Store, StoreError};

    use super::{Election, Term};

    /// Leader election on etcd's election API (see `swarmca_store::etcd::Election`): the
    /// term's store is fenced on the leader key, and its number is that key's creation revision.
    #[derive(Debug, Clone)]
    pub struct EtcdElection {
        store: EtcdStore,
        election: EtcdElectionApi,
    }

    impl EtcdElection {
        /// The election named `name` (an etcd key; e.g. `/swarmca/leader`) with leases of `ttl`.
        pub fn new(store: &EtcdStore, name: impl Into<Vec<u8>>, ttl: std::time::Duration) -> EtcdElection {
            EtcdElection { store: store.clone(), election: EtcdElectionApi::new(store, name, ttl) }
        }
    }

    impl Election for EtcdElection {
        fn campaign<'a>(&'a self, candidate: &'a str) -> BoxFuture<'a, Result<Box<dyn Term>, StoreError>> {
            Box::pin(async move {
                let leadership = self.election.campaign(candidate.as_bytes().to_vec()).await?;
                let store: Arc<dyn Store> = Arc::new(self.store.fenced(leadership.fence().clone()));
                Ok(Box::new(EtcdTerm { leadership, store }) as Box<dyn Term>)
            })
        }

        fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
            Box::pin(async move {
                Ok(self.election.leader().await?.and_then(|l| String::from_utf8(l.value().to_vec()).ok()))
            })
        }
    }

    struct EtcdTerm {
        leadership: Leadership,
        store: Arc<dyn Store>,
    }

    impl Term for EtcdTerm {
        fn number(&self) -> u64 {
            u64::try_from(self.leadership.fence().create_revision()).unwrap_or(0)
        }

        fn store(&self) -> Arc<dyn Store> {
            self.store.clone()
        }

        fn lost(&self) -> BoxFuture<'_, ()> {
            Box::pin(self.leadership.lost())
        }

        fn is_lost(&self) -> bool {
            self.leadership.is_lost()
        }

        fn resign(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
            Box::pin(self.leadership.resign())
        }
    }
}

#[cfg(feature = "etcd")]
pub use etcd::EtcdElection;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn solo_wins_every_campaign_with_a_higher_term_and_names_its_leader() {
        let solo = Solo::new(Arc::new(swarmca_store::MemStore::new()));
        assert_eq!(solo.leader().await.unwrap(), None);
        let t1 = solo.campaign("m1").await.unwrap();
        assert_eq!(t1.number(), 1);
        assert!(!t1.is_lost());
        assert_eq!(solo.leader().await.unwrap().as_deref(), Some("m1"));
        t1.resign().await.unwrap();
        assert_eq!(solo.leader().await.unwrap(), None, "resigned: no leader until the next campaign");
        let t2 = solo.campaign("m1").await.unwrap();
        assert_eq!(t2.number(), 2, "a new term gets a higher number");
    }
}
