//! The simulated election: what etcd's election API and leases do, on simulated time. This is
//! environment, not logic: the managers run the production `swarmca_server::Manager`, which
//! campaigns through [`SimElection`] and runs its leader duties through the term's fenced store.
//!
//! Every candidate holds a lease of [`LEASE`] that it keeps alive from a task on its own node,
//! through its own link to the store: a paused node renews nothing, a killed one never again, and
//! one cut off from the store cannot reach the election either. The [`Central`] side (etcd's) runs
//! on the harness's node: it expires leases not renewed within their TTL and makes the oldest
//! live candidate the leader of a new term. A holder learns of its loss as the etcd client does:
//! its lease is gone when it renews, or no renewal was acknowledged for two thirds of the TTL.
//! Leader changes are never decided by the harness.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use swarmca_server::{Election, Term};
use swarmca_store::{BoxFuture, Store, StoreError};

use crate::checkers::i12_terms::Terms;
use crate::shared::{lock, now, Shared};
use crate::store::{FencedWriter, ManagerStore};

/// The lease of every candidate (`serve --etcd --lease`).
pub const LEASE: Duration = Duration::from_secs(5);

/// etcd's side of the election, shared by every manager.
pub struct Central {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
    shared: Arc<Shared>,
    terms: Arc<Terms>,
    /// The current term (0 while there is no leader): what fenced writes compare with at the
    /// instant they are applied.
    pub current: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    next_lease: u64,
    last_term: u64,
    /// Live candidates, oldest first.
    candidates: Vec<Candidate>,
    /// The leader: (lease, term).
    leader: Option<(u64, u64)>,
}

struct Candidate {
    lease: u64,
    manager: usize,
    /// What it announced (its node ID).
    node_id: String,
    /// When the lease expires unless renewed.
    deadline: Duration,
}

impl Central {
    pub fn new(shared: Arc<Shared>, terms: Arc<Terms>) -> Arc<Central> {
        Arc::new(Central {
            state: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            shared,
            terms,
            current: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The manager holding the current term, if any.
    pub fn leader(&self) -> Option<usize> {
        let st = lock(&self.state);
        let (lease, _) = st.leader?;
        st.candidates.iter().find(|c| c.lease == lease).map(|c| c.manager)
    }

    /// The node ID the current leader announced.
    fn leader_id(&self) -> Option<String> {
        let st = lock(&self.state);
        let (lease, _) = st.leader?;
        st.candidates.iter().find(|c| c.lease == lease).map(|c| c.node_id.clone())
    }

    fn grant(&self, manager: usize, node_id: &str) -> u64 {
        let mut st = lock(&self.state);
        st.next_lease += 1;
        let lease = st.next_lease;
        st.candidates.push(Candidate {
            lease,
            manager,
            node_id: node_id.to_string(),
            deadline: now() + LEASE,
        });
        self.promote(&mut st);
        lease
    }

    /// Renews `lease`: false if it is gone.
    fn keep_alive(&self, lease: u64) -> bool {
        self.expire();
        let mut st = lock(&self.state);
        let t = now();
        match st.candidates.iter_mut().find(|c| c.lease == lease) {
            Some(c) if c.deadline > t => {
                c.deadline = t + LEASE;
                true
            }
            _ => false,
        }
    }

    /// The term `lease` leads, if it does.
    fn term_of(&self, lease: u64) -> Option<u64> {
        lock(&self.state).leader.filter(|(l, _)| *l == lease).map(|(_, t)| t)
    }

    fn is_live(&self, lease: u64) -> bool {
        let t = now();
        lock(&self.state).candidates.iter().any(|c| c.lease == lease && c.deadline > t)
    }

    /// Deletes `lease` (resigned, revoked, or expired).
    fn remove(&self, lease: u64, why: &str) {
        let mut st = lock(&self.state);
        let Some(pos) = st.candidates.iter().position(|c| c.lease == lease) else { return };
        let c = st.candidates.remove(pos);
        if let Some((_, term)) = st.leader.filter(|(l, _)| *l == lease) {
            st.leader = None;
            self.current.store(0, Ordering::SeqCst);
            self.terms.lost(term, now());
            self.shared.log.push(format!("election: term {term} of manager-{} ends ({why})", c.manager));
            self.shared.coverage.hit(match why {
                "expired" => "election.lease_expired",
                _ => "election.resigned",
            });
        }
        self.promote(&mut st);
    }

    /// Expires the leader's lease if it is past its deadline. Other candidates' leases expire
    /// lazily: a lapsed one is never renewed, found live, or promoted (etcd's outcome; checking
    /// only the leader's deadline keeps the simulated etcd from waking on every renewal).
    fn expire(&self) {
        let t = now();
        let lapsed = {
            let st = lock(&self.state);
            st.leader.and_then(|(lease, _)| {
                st.candidates.iter().find(|c| c.lease == lease).filter(|c| c.deadline <= t).map(|c| c.lease)
            })
        };
        if let Some(lease) = lapsed {
            self.remove(lease, "expired");
        }
    }

    /// Without a leader, the oldest candidate becomes one.
    fn promote(&self, st: &mut State) {
        if st.leader.is_none() {
            let t = now();
            st.candidates.retain(|c| c.deadline > t);
            if let Some(c) = st.candidates.first() {
                st.last_term += 1;
                let term = st.last_term;
                st.leader = Some((c.lease, term));
                self.current.store(term, Ordering::SeqCst);
                self.terms.granted(term, c.manager);
                self.shared.log.push(format!("election: manager-{} wins term {term}", c.manager));
            }
        }
        self.changed.notify_waiters();
    }

    /// etcd's lease expiry, until the run is over.
    pub async fn run(self: Arc<Self>) {
        while !self.shared.done() {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            self.expire();
            // Only the leader's lease needs a timer (see `expire`).
            let next = {
                let st = lock(&self.state);
                st.leader.and_then(|(lease, _)| {
                    st.candidates.iter().find(|c| c.lease == lease).map(|c| c.deadline)
                })
            };
            let wait = next
                .map_or(Duration::from_secs(60), |d| d.saturating_sub(now()))
                .max(Duration::from_millis(1));
            tokio::select! {
                biased;
                _ = &mut changed => {}
                _ = madsim::time::sleep(wait) => {}
            }
        }
    }
}

/// A flag tasks can wait on (woken in FIFO order, deterministically).
#[derive(Default)]
struct Flag {
    set: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Flag {
    fn set(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn get(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.get() {
                return;
            }
            n.await;
        }
    }
}

/// One manager's way into the election: through its own link to the store.
pub struct SimElection {
    pub central: Arc<Central>,
    pub link: Arc<ManagerStore>,
    pub index: usize,
}

/// A lease kept alive by a task on the candidate's node; ends when `stop` is set.
struct Lease {
    id: u64,
    lost: Arc<Flag>,
    stop: Arc<Flag>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The keep-alives stop; the lease expires within its TTL (a withdrawn candidacy or a
        // term given up without resigning).
        self.stop.set();
    }
}

impl SimElection {
    fn reachable(&self) -> Result<(), StoreError> {
        if self.link.is_cut() {
            return Err(StoreError::Unavailable(format!("manager-{} cannot reach the election", self.index)));
        }
        Ok(())
    }

    /// Grants a lease and keeps it alive from a task on this node.
    fn lease(&self, node_id: &str) -> Lease {
        let id = self.central.grant(self.index, node_id);
        let (lost, stop) = (Arc::new(Flag::default()), Arc::new(Flag::default()));
        let (central, link, l, s) = (self.central.clone(), self.link.clone(), lost.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = now();
            loop {
                tokio::select! {
                    biased;
                    () = s.wait() => return,
                    () = madsim::time::sleep(LEASE / 3) => {}
                }
                // A keep-alive is a round trip to etcd: its answer comes back some time after
                // it was sent (the lease is renewed when it lands; counted here at sending). The
                // round trip is simulated where it matters: after a gap (a pause, a cut link),
                // when the answer may be that the lease is gone and the holder's other tasks run
                // meanwhile. On time, the answer is taken at once (a timer less per renewal).
                let sent = now();
                let late = sent.saturating_sub(acked) > LEASE / 2;
                let alive = (!link.is_cut()).then(|| central.keep_alive(id));
                if late {
                    madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(1..400))).await;
                }
                match alive {
                    Some(false) => break,
                    Some(true) if !link.is_cut() => acked = sent,
                    _ if now().saturating_sub(acked) >= LEASE * 2 / 3 => break,
                    _ => {}
                }
            }
            l.set();
        });
        Lease { id, lost, stop }
    }
}

impl Election for SimElection {
    fn campaign<'a>(&'a self, candidate: &'a str) -> BoxFuture<'a, Result<Box<dyn Term>, StoreError>> {
        Box::pin(async move {
            if self.central.shared.is_locked(self.index) {
                self.central
                    .shared
                    .violation("I14", format!("manager-{} campaigns while locked", self.index));
            }
            self.reachable()?;
            let lease = self.lease(candidate);
            loop {
                let changed = self.central.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if lease.lost.get() || !self.central.is_live(lease.id) {
                    return Err(StoreError::Unavailable(format!(
                        "manager-{}: the election lease was lost while campaigning",
                        self.index
                    )));
                }
                if let Some(term) = self.central.term_of(lease.id) {
                    let store = Arc::new(FencedWriter {
                        store: self.link.clone(),
                        current: self.central.current.clone(),
                        term,
                    });
                    return Ok(Box::new(SimTerm {
                        term,
                        lease,
                        store,
                        central: self.central.clone(),
                        link: self.link.clone(),
                    }) as Box<dyn Term>);
                }
                tokio::select! {
                    biased;
                    () = lease.lost.wait() => {}
                    () = &mut changed => {}
                }
            }
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            self.reachable()?;
            Ok(self.central.leader_id())
        })
    }
}

struct SimTerm {
    term: u64,
    lease: Lease,
    store: Arc<FencedWriter>,
    central: Arc<Central>,
    link: Arc<ManagerStore>,
}

impl Term for SimTerm {
    fn number(&self) -> u64 {
        self.term
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn lost(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.lease.lost.wait())
    }

    fn is_lost(&self) -> bool {
        self.lease.lost.get()
    }

    fn resign(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async move {
            if self.link.is_cut() {
                return Err(StoreError::Unavailable("the election cannot be reached".into()));
            }
            self.central.remove(self.lease.id, "resigned");
            Ok(())
        })
    }
}
