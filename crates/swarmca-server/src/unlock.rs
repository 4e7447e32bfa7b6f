//! A locked manager's control socket.
//!
//! A manager of an autolocked cluster starts locked: its store holds the cluster's keys sealed
//! under the unlock key, which it does not have. It stays up, serves no CA call (its TLS
//! listener stays closed: its own key is sealed too), runs no duties, and answers every admin
//! call on the control socket with "this manager is locked; run `swarmca unlock`" — except
//! `Unlock`, whose key [`AdminGate`] hands to whoever starts the manager (`swarmca serve`) and
//! answers with the outcome. Wrong keys are answered more and more slowly (1 s, 2 s, 4 s, …
//! up to 30 s), so the socket cannot be used to try keys fast. Once unlocked, [`AdminGate::open`]
//! puts the manager's [`Control`] behind the gate and every call goes through to it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use swarmca_core::seal::UnlockKey;
use swarmca_proto::admin::{self, admin_server::Admin};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::bootstrap::{Bootstrap, BootstrapError, Identity, NewCluster};
use crate::control::Control;
use crate::custody::{CustodyError, Keys};
use crate::env::{Clock, SharedEntropy};
use crate::leadership::Election;
use swarmca_store::Store;
use tracing::{info, warn};

/// What a locked manager answers to every admin call but `Unlock`.
pub const LOCKED: &str = "this manager is locked: autolock is on; run `swarmca unlock`";

/// What a key given while another is being tried hears.
const BUSY: &str = "this manager is already starting with an unlock key given earlier, and keeps trying with it (the store, the external CA or the leader it needs has not answered yet); try again later if it stays locked";

/// The longest a start waits before trying an unreachable store or external CA again: it
/// serves soon after they are back.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// How often a locked manager looks whether it still is (autolock turned off elsewhere).
const LOCKED_RECHECK: Duration = Duration::from_secs(30);

/// The longest a wrong key's answer is held back.
const MAX_PENALTY: Duration = Duration::from_secs(30);

/// An unlock key given on the control socket, and where its outcome goes (`Err`: why the key
/// was refused, for the operator).
pub struct UnlockAttempt {
    /// The key given.
    pub key: UnlockKey,
    /// The outcome.
    pub reply: oneshot::Sender<Result<(), Refusal>>,
}

/// Why an unlock key given on the control socket did not unlock the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key does not open the cluster's keys.
    WrongKey(String),
    /// The manager could not finish its start (the store or the external CA did not answer);
    /// it keeps trying with the key.
    NotNow(String),
}

/// The admin service of a manager that may be locked.
#[derive(Clone)]
pub struct AdminGate {
    inner: Arc<Gate>,
}

struct Gate {
    control: OnceLock<Control>,
    attempts: mpsc::Sender<UnlockAttempt>,
    /// Unlocked, and not serving yet.
    starting: std::sync::atomic::AtomicBool,
}

impl AdminGate {
    /// A closed gate, and the stream of unlock keys given to it.
    pub fn new() -> (AdminGate, mpsc::Receiver<UnlockAttempt>) {
        let (tx, rx) = mpsc::channel(1);
        let gate = Gate { control: OnceLock::new(), attempts: tx, starting: Default::default() };
        (AdminGate { inner: Arc::new(gate) }, rx)
    }

    /// Opens the gate: every call goes to `control` from now on.
    pub fn open(&self, control: Control) {
        let _ = self.inner.control.set(control);
    }

    /// The keys are open and the manager is starting: calls are answered "starting", not
    /// "locked", until [`AdminGate::open`].
    pub fn unlocked(&self) {
        self.inner.starting.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn control(&self) -> Result<&Control, Status> {
        self.inner.control.get().ok_or_else(|| {
            if self.inner.starting.load(std::sync::atomic::Ordering::SeqCst) {
                Status::unavailable("this manager is unlocked and starting; try again in a moment")
            } else {
                Status::failed_precondition(LOCKED)
            }
        })
    }

    /// How long the answer to the `n`th wrong key in a row is held back (and the next key with
    /// it: keys are tried one at a time).
    pub(crate) fn penalty(n: u32) -> Duration {
        Duration::from_secs(1u64 << n.saturating_sub(1).min(5)).min(MAX_PENALTY)
    }
}

// The impl is written by the macro as a whole, so that `async_trait` sees every method.
macro_rules! admin_through_gate {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Admin for AdminGate {
            $(
                async fn $name(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    Admin::$name(self.control()?, req).await
                }
            )*

            async fn unlock(
                &self,
                req: Request<admin::UnlockRequest>,
            ) -> Result<Response<admin::UnlockResponse>, Status> {
                self.try_unlock(req).await
            }
        }
    };
}

admin_through_gate! {
    join_token(admin::JoinTokenRequest) -> admin::JoinTokenResponse;
    list_nodes(admin::ListNodesRequest) -> admin::ListNodesResponse;
    inspect_node(admin::NodeRequest) -> admin::NodeInfo;
    remove_node(admin::RemoveNodeRequest) -> admin::NodeInfo;
    promote_node(admin::NodeRequest) -> admin::NodeInfo;
    demote_node(admin::NodeRequest) -> admin::NodeInfo;
    accept_node(admin::NodeRequest) -> admin::NodeInfo;
    get_cluster_info(admin::ClusterInfoRequest) -> admin::ClusterInfo;
    update_cluster(admin::UpdateClusterRequest) -> admin::ClusterInfo;
    unlock_key(admin::UnlockKeyRequest) -> admin::UnlockKeyResponse;
    rotate_root(admin::RotateRootRequest) -> admin::RotationStatus;
    get_rotation_status(admin::RotationStatusRequest) -> admin::RotationStatus;
}

impl AdminGate {
    async fn try_unlock(
        &self,
        req: Request<admin::UnlockRequest>,
    ) -> Result<Response<admin::UnlockResponse>, Status> {
        if let Some(c) = self.inner.control.get() {
            return Admin::unlock(c, req).await;
        }
        let text = zeroize::Zeroizing::new(req.into_inner().unlock_key);
        let key = UnlockKey::parse(&text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (reply, outcome) = oneshot::channel();
        // The manager stopped taking keys: it is unlocked (and starting) or shutting down.
        let closed = || Status::unavailable("this manager is no longer waiting for an unlock key");
        self.inner.attempts.send(UnlockAttempt { key, reply }).await.map_err(|_| closed())?;
        match outcome.await.map_err(|_| closed())? {
            Ok(()) => Ok(Response::new(admin::UnlockResponse { message: "manager unlocked".into() })),
            Err(Refusal::WrongKey(why)) => Err(Status::permission_denied(why)),
            Err(Refusal::NotNow(why)) => Err(Status::unavailable(why)),
        }
    }
}

/// Why a manager did not start.
#[derive(Debug)]
pub enum NotStarted {
    /// Stopped (a signal, or the gate went away) while it waited to be unlocked.
    Stopped,
    /// It cannot start: what is stored or given does not allow it (a wrong key given at start
    /// included).
    Refused(BootstrapError),
}

/// A manager's start through as many unlock attempts as it takes: [`Bootstrap::start`] with
/// the keys given, and while the cluster is autolocked and no right key was given, the keys
/// that arrive on the control socket, one at a time, each answered with its outcome.
pub struct Unlocking<'a> {
    pub store: &'a dyn Store,
    pub election: &'a dyn Election,
    pub clock: &'a dyn Clock,
    pub entropy: &'a SharedEntropy,
    /// The keys this manager holds; the unlock key that opened the cluster stays in it.
    pub keys: &'a mut Keys,
    /// Unlock keys given on the control socket ([`AdminGate::new`]).
    pub attempts: &'a mut mpsc::Receiver<UnlockAttempt>,
}

impl Unlocking<'_> {
    /// This manager's identity once the cluster's keys are open. `own` as for
    /// [`Bootstrap::start`]; `locked` is called once, when the manager finds itself locked;
    /// `waiting` when the store is empty and it waits for a term to create the cluster.
    pub async fn start(
        self,
        init: &NewCluster,
        own: Option<(Vec<u8>, Vec<u8>)>,
        stop: impl std::future::Future<Output = ()>,
        locked: impl FnOnce(),
        waiting: impl Fn(),
    ) -> Result<Identity, NotStarted> {
        tokio::pin!(stop);
        let mut locked = Some(locked);
        let mut pending: Option<oneshot::Sender<Result<(), Refusal>>> = None;
        // The unlock key held came from the control socket (not given at start).
        let mut socket_key = false;
        let mut failures = 0u32;
        let mut retries = 0u32;
        // No one can give keys any more (the control socket is gone).
        let mut closed = false;
        // Drawn once: an attempt whose commit was applied though its answer was lost is found
        // again by the next attempt, under the same ID.
        let draw = || {
            crate::env::with_entropy(self.entropy, swarmca_core::id::new_id)
                .map_err(|e| NotStarted::Refused(BootstrapError::Refused(format!("entropy: {e}"))))
        };
        let mut new_node_id = draw()?;
        loop {
            let boot = Bootstrap {
                store: self.store,
                election: self.election,
                clock: self.clock,
                entropy: self.entropy,
                keys: &*self.keys,
                new_node_id: Some(&new_node_id),
            };
            let holding = self.keys.unlock.is_some();
            let started = {
                let attempt = boot.start(init, own.clone(), &waiting);
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        r = &mut attempt => break r,
                        // A key given while a held key is being tried is answered at once: an
                        // attempt may take a while (a wait for the leader), and the operator
                        // unlocking several managers must not hang on this one.
                        a = self.attempts.recv(), if holding && !closed => match a {
                            Some(a) => {
                                let _ = a.reply.send(Err(Refusal::NotNow(BUSY.into())));
                            }
                            None => closed = true,
                        },
                        () = &mut stop => return Err(NotStarted::Stopped),
                    }
                }
            };
            let refusal = match started {
                Ok(id) => {
                    if socket_key {
                        info!("unlocked");
                    }
                    if let Some(p) = pending.take() {
                        let _ = p.send(Ok(()));
                    }
                    // Keys queued meanwhile are not tried: their senders hear that the manager
                    // no longer waits for one.
                    self.attempts.close();
                    while self.attempts.try_recv().is_ok() {}
                    return Ok(id);
                }
                Err(BootstrapError::Custody(e @ (CustodyError::Locked | CustodyError::WrongKey(_)))) => e,
                // With no certificate, "removed" can only be the node an earlier attempt's
                // commit made (its answer lost) under the ID drawn for this start, removed
                // since: the manager joins under another.
                Err(BootstrapError::Removed(why)) if own.is_none() => {
                    warn!(%why, "the node an earlier attempt of this start made was removed; taking a new node ID");
                    new_node_id = draw()?;
                    continue;
                }
                Err(e) if e.is_transient() => {
                    // The store or the external CA did not answer: tried again, more and more
                    // slowly, until it does (or the manager is stopped).
                    retries = retries.saturating_add(1);
                    let wait = AdminGate::penalty(retries).min(MAX_RETRY_WAIT);
                    warn!(error = %e, retry_in = ?wait, "cannot start yet; trying again");
                    if let Some(p) = pending.take() {
                        // Its giver hears why; the key is kept and tried again.
                        let _ = p.send(Err(Refusal::NotNow(format!(
                            "{e}; this manager keeps trying with the key given"
                        ))));
                    }
                    // A key given meanwhile is taken, and tried when the wait is over.
                    let until = tokio::time::sleep(wait);
                    tokio::pin!(until);
                    loop {
                        tokio::select! {
                            () = &mut until => break,
                            // Taken only while no key is held: one given at start, or one
                            // already told "keeps trying", is not replaced by another; such a
                            // key is answered at once.
                            a = self.attempts.recv(), if !closed => match a {
                                Some(a) if pending.is_none() && self.keys.unlock.is_none() => {
                                    self.keys.unlock = Some(a.key);
                                    socket_key = true;
                                    pending = Some(a.reply);
                                }
                                Some(a) => {
                                    let _ = a.reply.send(Err(Refusal::NotNow(BUSY.into())));
                                }
                                None => closed = true,
                            },
                            () = &mut stop => return Err(NotStarted::Stopped),
                        }
                    }
                    continue;
                }
                Err(e) => return Err(NotStarted::Refused(e)),
            };
            retries = 0;
            match (refusal, pending.take()) {
                // A key given on the control socket: its giver hears why (unless it heard
                // already, "not now", when the key was found wrong only after a retry), and
                // may try again.
                (e, p) if socket_key => {
                    warn!(error = %e, "unlock refused");
                    // Held back, and the next key with it: wrong keys cannot be tried fast,
                    // however many callers send them, in whatever order with outages.
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        () = tokio::time::sleep(AdminGate::penalty(failures)) => {}
                        () = &mut stop => return Err(NotStarted::Stopped),
                    }
                    if let Some(p) = p {
                        let _ = p.send(Err(Refusal::WrongKey(e.to_string())));
                    }
                }
                // A wrong key given at start (or a wrong seal key): nothing to wait for.
                (e @ CustodyError::WrongKey(_), _) => {
                    return Err(NotStarted::Refused(BootstrapError::Custody(e)))
                }
                _ => {}
            }
            self.keys.unlock = None;
            socket_key = false;
            if let Some(tell) = locked.take() {
                warn!("{LOCKED}");
                tell();
            }
            // Nobody can give a key any more (the control socket is gone): shutting down.
            if closed {
                return Err(NotStarted::Stopped);
            }
            // Looked at again now and then without a key: autolock may have been turned off
            // through another manager meanwhile.
            tokio::select! {
                a = self.attempts.recv() => match a {
                    Some(a) => {
                        self.keys.unlock = Some(a.key);
                        socket_key = true;
                        pending = Some(a.reply);
                    }
                    None => return Err(NotStarted::Stopped),
                },
                () = tokio::time::sleep(LOCKED_RECHECK) => {}
                () = &mut stop => return Err(NotStarted::Stopped),
            }
        }
    }
}

#[cfg(test)]
mod tests;
