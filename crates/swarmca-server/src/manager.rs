//! A manager's terms: follow the store while campaigning, run the leader duties for each term
//! won, stop them at once when the term ends, and start over.
//!
//! ```text
//!            ┌────────────── campaign fails: pause, campaign again ─────┐
//!            v                                                          │
//!   Following (run_follower; restarted after a pause when it ends) ─────┘
//!            │ elected (term n)
//!            v
//!   Leading n (run_with_writer(term.store()): signing loop + rotation reconciler)
//!            │ lease lost | duties failed | step_down() | shutdown()
//!            v
//!   stop the server and wait until nothing of term n runs; resign unless lost; back to Following
//! ```
//!
//! The same code runs in `swarmca serve` (with [`crate::Solo`] on the embedded store, or etcd's
//! election) and in the simulator (its leases on simulated time), so every seed exercises the
//! leader loop that production runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarmca_store::{BoxFuture, StoreError};
use tracing::{error, info, warn};

use crate::leadership::{Election, Term};
use crate::signal::Signal;
use crate::{CaServer, ServerError};

/// How long a manager waits before it restarts a follower term that ended, or campaigns again
/// after a failed campaign.
pub const DEFAULT_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What a manager is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not started, or shut down.
    Stopped,
    /// Serving the RPCs from the store and campaigning; signing nothing.
    Following,
    /// Running the leader duties of this term.
    Leading(u64),
}

/// Why the leader duties of a term end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermEnd {
    /// The term was lost (its lease expired or could not be renewed in time).
    Lost,
    /// The duties ended with an error (the store's watch closed, the cluster vanished, …).
    Failed(String),
    /// The duties returned by themselves.
    Returned,
    /// [`Manager::step_down`] was called.
    SteppedDown,
    /// [`Manager::shutdown`] was called.
    Shutdown,
}

/// What a manager reports as it goes, in order, to the observer given to
/// [`Manager::with_observer`] (the simulator checks its invariants on them; they are also logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerEvent {
    /// Follower duties start (again).
    Following,
    /// The follower duties ended by themselves (e.g. the store was unreachable when they
    /// started); they are restarted after a pause.
    FollowerEnded(Option<String>),
    /// A campaign failed (the election could not be reached); another starts after a pause.
    CampaignFailed(String),
    /// Elected for this term: its leader duties start now and may write from here on.
    Elected(u64),
    /// The leader duties of this term are told to stop.
    Ending(u64, TermEnd),
    /// Nothing of this term runs any more: its signing jobs and reconciler have returned.
    Ended(u64),
    /// The term could not be resigned (its lease expires by itself).
    ResignFailed(u64, String),
    /// [`Manager::run`] returns.
    Stopped,
}

/// Receives a manager's events.
pub type Observer = Arc<dyn Fn(&ManagerEvent) + Send + Sync>;

/// One manager: a [`CaServer`] and the election it takes part in. Cheap to clone; clones share
/// one manager.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    server: CaServer,
    election: Arc<dyn Election>,
    node_id: String,
    pause: Duration,
    observer: Option<Observer>,
    role: Mutex<Role>,
    shutdown: Arc<Signal<bool>>,
    /// Bumped by every step-down request.
    step_downs: Arc<Signal<u64>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("node_id", &self.inner.node_id).field("role", &self.role()).finish()
    }
}

impl Manager {
    /// The manager `node_id` (what it announces when campaigning) serving `server`.
    pub fn new(server: CaServer, election: Arc<dyn Election>, node_id: impl Into<String>) -> Manager {
        Manager::build(server, election, node_id.into(), DEFAULT_RETRY_PAUSE, None)
    }

    /// The same manager reporting its events to `observer`, and pausing `pause` before a
    /// restart or a new campaign. Call before [`Manager::run`].
    pub fn with_observer(self, pause: Duration, observer: Observer) -> Manager {
        let i = &self.inner;
        Manager::build(i.server.clone(), i.election.clone(), i.node_id.clone(), pause, Some(observer))
    }

    fn build(
        server: CaServer,
        election: Arc<dyn Election>,
        node_id: String,
        pause: Duration,
        observer: Option<Observer>,
    ) -> Manager {
        Manager {
            inner: Arc::new(Inner {
                server,
                election,
                node_id,
                pause,
                observer,
                role: Mutex::new(Role::Stopped),
                shutdown: Signal::new(false),
                step_downs: Signal::new(0),
            }),
        }
    }

    /// The server this manager runs.
    pub fn server(&self) -> &CaServer {
        &self.inner.server
    }

    /// This manager's node ID.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// What the manager is doing right now.
    pub fn role(&self) -> Role {
        *self.inner.role.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node ID of the current leader as the election names it (`None` when there is no
    /// leader or the election cannot be reached).
    pub async fn leader(&self) -> Option<String> {
        self.inner.election.leader().await.ok().flatten()
    }

    /// Ends the current leader term, if any, and resigns it so that another manager is elected;
    /// this manager then follows and campaigns again.
    pub fn step_down(&self) {
        let n = self.inner.step_downs.get();
        self.inner.step_downs.set(n.wrapping_add(1));
    }

    /// Asks [`Manager::run`] to return: the duties stop, a term held is resigned.
    pub fn shutdown(&self) {
        self.inner.shutdown.set(true);
    }

    fn emit(&self, ev: ManagerEvent) {
        match &ev {
            ManagerEvent::Following => {
                info!(node = %self.inner.node_id, "following the store; campaigning for the leadership")
            }
            ManagerEvent::FollowerEnded(e) => {
                warn!(error = ?e, pause = ?self.inner.pause, "follower duties ended; restarting them")
            }
            ManagerEvent::CampaignFailed(e) => {
                warn!(error = %e, pause = ?self.inner.pause, "campaign for the leadership failed; serving as a follower, retrying")
            }
            ManagerEvent::Elected(t) => {
                info!(term = t, "elected leader: running the signing loop and the rotation reconciler")
            }
            ManagerEvent::Ending(t, why) => match why {
                TermEnd::Lost => {
                    warn!(term = t, "leadership lost (lease not renewed in time): stepping down")
                }
                TermEnd::Failed(e) => {
                    error!(term = t, error = %e, "leader duties failed; giving the leadership up")
                }
                TermEnd::Returned => info!(term = t, "leader duties ended"),
                TermEnd::SteppedDown => info!(term = t, "stepping down on request"),
                TermEnd::Shutdown => info!(term = t, "shutting down: ending the leader term"),
            },
            ManagerEvent::Ended(t) => info!(term = t, "leader duties stopped"),
            ManagerEvent::ResignFailed(t, e) => {
                warn!(term = t, error = %e, "could not resign the leadership (its lease will expire)")
            }
            ManagerEvent::Stopped => info!("manager stopped"),
        }
        if let Some(o) = &self.inner.observer {
            o(&ev);
        }
    }

    fn set_role(&self, r: Role) {
        *self.inner.role.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// Follows, campaigns, leads each term won, until [`Manager::shutdown`]. Errors of a term
    /// end that term only.
    pub async fn run(&self) {
        // After a term that ended by itself (its duties failed or returned), the next campaign
        // waits a pause, serving as a follower meanwhile: a term that fails at once (the store
        // refusing the leader's start) is not retried in a tight loop.
        let mut delay = None;
        loop {
            if self.inner.shutdown.get() {
                break;
            }
            let Some(term) = self.follow_until_elected(delay.take()).await else { break };
            let number = term.number();
            if self.inner.shutdown.get() {
                self.resign(term).await;
                break;
            }
            self.set_role(Role::Leading(number));
            self.emit(ManagerEvent::Elected(number));
            let why = self.lead(&*term).await;
            if matches!(why, TermEnd::Failed(_) | TermEnd::Returned) {
                delay = Some(self.inner.pause);
            }
            self.set_role(Role::Following);
            if !term.is_lost() {
                self.resign(term).await;
            }
        }
        self.set_role(Role::Stopped);
        self.emit(ManagerEvent::Stopped);
    }

    /// Serves as a follower while campaigning (after `delay`, if given); the won term, or
    /// `None` on shutdown.
    async fn follow_until_elected(&self, delay: Option<Duration>) -> Option<Box<dyn Term>> {
        let i = &self.inner;
        self.set_role(Role::Following);
        let follow = self.follow();
        tokio::pin!(follow);
        let mut follow_done = false;
        let (election, node_id) = (&i.election, &i.node_id);
        let mut campaign: BoxFuture<'_, Result<Box<dyn Term>, StoreError>> = match delay {
            None => election.campaign(node_id),
            Some(d) => Box::pin(async move {
                tokio::time::sleep(d).await;
                election.campaign(node_id).await
            }),
        };
        // Dropping `follow` on return ends the follower duties (the server is stopped).
        loop {
            tokio::select! {
                biased;
                _ = i.shutdown.wait_for(|s| *s) => return None,
                r = &mut campaign => match r {
                    Ok(term) => return Some(term),
                    Err(e) => {
                        self.emit(ManagerEvent::CampaignFailed(e.to_string()));
                        let pause = i.pause;
                        campaign = Box::pin(async move {
                            tokio::time::sleep(pause).await;
                            election.campaign(node_id).await
                        });
                    }
                },
                () = &mut follow, if !follow_done => follow_done = true,
            }
        }
    }

    /// The follower duties, restarted after a pause whenever they end.
    async fn follow(&self) {
        loop {
            self.emit(ManagerEvent::Following);
            let r = self.inner.server.run_follower().await;
            self.emit(ManagerEvent::FollowerEnded(r.err().map(|e| e.to_string())));
            tokio::time::sleep(self.inner.pause).await;
        }
    }

    /// Runs the leader duties of `term` until it ends, then stops them and waits until nothing
    /// of the term runs.
    async fn lead(&self, term: &dyn Term) -> TermEnd {
        let i = &self.inner;
        let number = term.number();
        let seen = i.step_downs.get();
        let duties = i.server.run_with_writer(term.store());
        tokio::pin!(duties);
        // The duties are polled first, so they have started (and hold the server) whatever
        // ends the term.
        let (why, finished) = tokio::select! {
            biased;
            r = &mut duties => (match r {
                Ok(()) => TermEnd::Returned,
                Err(e) => TermEnd::Failed(e.to_string()),
            }, true),
            _ = i.shutdown.wait_for(|s| *s) => (TermEnd::Shutdown, false),
            () = term.lost() => (TermEnd::Lost, false),
            _ = i.step_downs.wait_for(|n| *n != seen) => (TermEnd::SteppedDown, false),
        };
        self.emit(ManagerEvent::Ending(number, why.clone()));
        // Running duties are stopped and polled until they have returned (`stop` waits for
        // that; if someone else stopped the server, they return on their own), so no job of
        // theirs writes after this.
        if !finished {
            let (stopped, _) = tokio::join!(i.server.stop(), &mut duties);
            if let Err(e) = stopped {
                if !matches!(e, ServerError::AlreadyStopped) {
                    warn!(error = %e, "stopping the leader duties");
                }
            }
        }
        self.emit(ManagerEvent::Ended(number));
        why
    }

    async fn resign(&self, term: Box<dyn Term>) {
        let number = term.number();
        if let Err(e) = term.resign().await {
            self.emit(ManagerEvent::ResignFailed(number, e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests;
