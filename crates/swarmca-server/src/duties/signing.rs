//! The signing loop: one task per `run` that owns the `pending` set, dispatches signing jobs to
//! a bounded pool of tasks, and retries recoverable failures on a ticker.
//!
//! Differences from the original, each deliberate (docs/defects.md §8.1–§8.3):
//! * `pending` is rebuilt from the store on every `run` and dropped on node deletion.
//! * Signing never blocks the loop; at most `max_parallel_signing` jobs run at once.
//! * A result is written only if the node, re-read at write time, still holds the same CSR, CN
//!   and role in RENEW/PENDING; on a sequence conflict it re-reads and re-checks, else drops.
//! * Store events for a node that is waiting for a retry do not trigger signing again unless
//!   its CSR changed; the ticker probes one pending node per tick and, when that succeeds,
//!   retries the rest, so an outage of the signer is not hammered.
//! * A certificate from an external CA is checked before it is written: the CSR's key, the
//!   requested subject and role, and a chain to the cluster roots (SwarmKit stored it blindly).
//! * "No signer" and "external CA unavailable" are logged once per change of that state, not
//!   once per retry.

use std::collections::BTreeMap;
use std::sync::Arc;

use swarmca_core::policy::should_sign;
use swarmca_core::role::Role;
use swarmca_store::{Event, Node, Op, Store, StoreError};
use swarmca_types::issuance_status::State;
use swarmca_types::IssuanceStatus;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, error, info, warn};

use super::reconciler;
use super::start::start_term;
use crate::env::draw;
use crate::error::ServerError;
use crate::external::{ExternalCaError, SignRequest};
use crate::server::{log_update_root_ca, run_filter, transient, CaServer, RunCancel};

/// How many times a write that keeps conflicting is re-read and retried before the job is
/// handed back to the retry ticker.
const MAX_WRITE_ATTEMPTS: usize = 16;

/// What a signing job ended with.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The certificate was written.
    Issued,
    /// A fatal error was written as FAILED.
    Failed,
    /// The node changed, vanished or no longer needs this result; nothing written.
    Dropped(&'static str),
    /// Retry later (store unavailable, contention).
    Recoverable(String),
    /// Retry later: nothing can sign right now.
    Unavailable(Health, String),
    /// The run is stopping.
    Cancelled,
}

/// Whether signing works, as last observed by the loop (logged on change only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// The last signing attempt reached a signer.
    Ok,
    /// No external CA URL and no local key.
    NoSigner,
    /// The external CAs failed with recoverable errors (unreachable, timeouts, bad answers).
    ExternalUnavailable,
}

/// The identity of a signing request: a result may be written only onto a node that still asks
/// for exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    csr: Vec<u8>,
    cn: String,
    role: i32,
}

impl Request {
    fn of(node: &Node) -> Option<Request> {
        let c = node.certificate.as_ref()?;
        Some(Request { csr: c.csr.clone(), cn: c.cn.clone(), role: c.role })
    }
}

struct PendingEntry {
    node: Node,
    in_flight: bool,
    /// Waiting for the ticker after a recoverable failure.
    awaiting_retry: bool,
    /// A newer copy arrived while a job was in flight.
    dirty: bool,
    /// What the job in flight (or the last one) signs.
    signed: Option<Request>,
}

struct Loop {
    server: CaServer,
    cancel: RunCancel,
    /// The store this term's results are written through (fenced on the leadership under HA).
    writer: Arc<dyn Store>,
    pending: BTreeMap<String, PendingEntry>,
    permits: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<(String, Outcome)>,
    in_flight: usize,
    /// The node whose retry probes the signer this tick.
    probe: Option<String>,
    /// The node probed last (probes rotate through the waiting nodes).
    last_probe: Option<String>,
    /// What was last logged about the signer.
    health: Health,
}

/// The body of [`CaServer::run`].
pub(crate) async fn run_loop(
    server: CaServer,
    cancel: RunCancel,
    writer: Arc<dyn Store>,
) -> Result<(), ServerError> {
    let cluster_id = server.inner.cfg.cluster_id.clone();
    let (snapshot, mut watch) = start_term(&server, &cancel, run_filter()).await?;

    // The root-rotation reconciler runs beside the loop for this term and sees what it sees.
    let (rec_tx, rec_rx) = mpsc::unbounded_channel();
    let reconciler = tokio::spawn(reconciler::run(server.clone(), cancel.clone(), writer.clone(), rec_rx));
    let housekeeping = tokio::spawn(super::housekeeping::run(
        server.inner.deps.clock.clone(),
        cluster_id.clone(),
        cancel.clone(),
        writer.clone(),
    ));
    if let Some(c) = snapshot.clusters.iter().find(|c| c.id == cluster_id) {
        let _ = rec_tx.send(reconciler::Input::Root(c.root_ca.clone().unwrap_or_default()));
    }

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut lp = Loop {
        permits: Arc::new(Semaphore::new(server.inner.cfg.max_parallel_signing.max(1))),
        server: server.clone(),
        cancel: cancel.clone(),
        writer,
        pending: BTreeMap::new(),
        done_tx,
        in_flight: 0,
        probe: None,
        last_probe: None,
        health: Health::Ok,
    };
    // Leader catch-up: sign whatever a previous term left in RENEW/PENDING.
    for node in snapshot.nodes {
        lp.consider(node);
    }
    let period = server.inner.cfg.retry_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result = loop {
        tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => break Ok(()),
            Some((id, outcome)) = done_rx.recv() => lp.on_outcome(id, outcome),
            ev = watch.next() => match ev {
                None => break Err(ServerError::WatchClosed),
                Some(Event::CreateNode(n)) | Some(Event::UpdateNode(n)) => {
                    let _ = rec_tx.send(reconciler::Input::Node(Box::new(n.clone())));
                    lp.consider(n)
                }
                Some(Event::DeleteNode(n)) => {
                    let _ = rec_tx.send(reconciler::Input::Deleted(n.id.clone()));
                    lp.on_delete(&n.id)
                }
                Some(Event::CreateCluster(c)) | Some(Event::UpdateCluster(c)) => {
                    if c.id == cluster_id {
                        let _ = rec_tx.send(reconciler::Input::Root(c.root_ca.clone().unwrap_or_default()));
                        log_update_root_ca(&server, &c);
                        server.mark_ready(&cancel);
                    }
                }
            },
            _ = ticker.tick() => lp.on_tick(),
        }
        server.inner.pending_len.store(lp.pending.len(), std::sync::atomic::Ordering::Relaxed);
    };
    server.inner.pending_len.store(0, std::sync::atomic::Ordering::Relaxed);
    server.set_signer_problem(None);
    // The reconciler sees the cancel flag before each write; wait for it likewise.
    drop(rec_tx);
    if let Err(e) = reconciler.await {
        error!(error = %e, "root rotation reconciler ended abnormally");
    }
    // Housekeeping waits for the term's cancel flag, which is set only once this loop has
    // returned (it may end by itself: a closed watch); it is stopped here instead (a commit cut
    // short is applied wholly or not at all).
    housekeeping.abort();
    if let Err(e) = housekeeping.await {
        if !e.is_cancelled() {
            error!(error = %e, "housekeeping ended abnormally");
        }
    }
    // Jobs see the cancel flag before writing; wait for them so nothing of this term writes
    // after `run` has returned.
    while lp.in_flight > 0 {
        match done_rx.recv().await {
            Some(_) => lp.in_flight -= 1,
            None => break,
        }
    }
    result
}

impl Loop {
    /// A node was created, updated, or found at start.
    fn consider(&mut self, node: Node) {
        let wants = node.spec.as_ref().zip(node.certificate.as_ref()).is_some_and(|(spec, cert)| {
            should_sign(spec.membership, cert.status.as_ref().map_or(0, |s| s.state))
        });
        let id = node.id.clone();
        match self.pending.get_mut(&id) {
            Some(e) if e.in_flight => {
                e.node = node;
                e.dirty = true;
            }
            Some(e) if wants => {
                let same = Request::of(&e.node) == Request::of(&node);
                e.node = node;
                if !(e.awaiting_retry && same) {
                    self.dispatch(&id);
                }
            }
            Some(_) => {
                self.pending.remove(&id);
            }
            None if wants => {
                self.pending.insert(
                    id.clone(),
                    PendingEntry {
                        node,
                        in_flight: false,
                        awaiting_retry: false,
                        dirty: false,
                        signed: None,
                    },
                );
                self.dispatch(&id);
            }
            None => {}
        }
    }

    fn on_delete(&mut self, id: &str) {
        match self.pending.get_mut(id) {
            // The job's write will find the node gone; forget it when it reports.
            Some(e) if e.in_flight => {
                e.dirty = true;
                e.node.spec = None;
            }
            Some(_) => {
                self.pending.remove(id);
            }
            None => {}
        }
    }

    fn dispatch(&mut self, id: &str) {
        let Some(e) = self.pending.get_mut(id) else { return };
        e.in_flight = true;
        e.awaiting_retry = false;
        e.dirty = false;
        e.signed = Request::of(&e.node);
        self.in_flight += 1;
        let node = e.node.clone();
        let server = self.server.clone();
        let cancel = self.cancel.clone();
        let writer = self.writer.clone();
        let permits = self.permits.clone();
        let done = self.done_tx.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            // Reports even if the job unwinds, so the loop never waits for it forever.
            let mut report = Report { done, id: Some(id) };
            let outcome = match permits.acquire_owned().await {
                Ok(_permit) => sign_and_write(&server, &cancel, &*writer, node).await,
                Err(_) => Outcome::Cancelled,
            };
            report.send(outcome);
        });
    }

    fn on_outcome(&mut self, id: String, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let was_probe = self.probe.as_deref() == Some(id.as_str());
        if was_probe {
            self.probe = None;
        }
        let Some(e) = self.pending.get_mut(&id) else { return };
        e.in_flight = false;
        let dirty = std::mem::take(&mut e.dirty);
        match &outcome {
            Outcome::Unavailable(health, why) if *health != self.health => {
                let problem = match health {
                    Health::NoSigner => {
                        warn!(error = %why, "cannot sign: no external CA URL and no local CA key; requests stay pending");
                        format!("no valid signer: {why}")
                    }
                    _ => {
                        warn!(error = %why, "external CA unavailable; requests stay pending and are retried");
                        format!("external CA unreachable: {why}")
                    }
                };
                self.server.set_signer_problem(Some(problem));
                self.health = *health;
            }
            Outcome::Issued | Outcome::Failed if self.health != Health::Ok => {
                info!("signing works again");
                self.server.set_signer_problem(None);
                self.health = Health::Ok;
            }
            _ => {}
        }
        // An issued or failed request shows that a signer answers.
        let signer_works = matches!(outcome, Outcome::Issued | Outcome::Failed);
        match outcome {
            Outcome::Recoverable(why) | Outcome::Unavailable(_, why) => {
                debug!(node = %id, error = %why, "recoverable signing failure; will retry");
                // A changed request is signed at once; the same one waits for the ticker.
                e.awaiting_retry = Request::of(&e.node) == e.signed;
                if dirty {
                    let node = e.node.clone();
                    self.consider(node);
                }
            }
            Outcome::Cancelled => {}
            Outcome::Issued | Outcome::Failed | Outcome::Dropped(_) => {
                if let Outcome::Dropped(why) = outcome {
                    debug!(node = %id, why, "signing result dropped");
                }
                let node = e.node.clone();
                self.pending.remove(&id);
                if dirty {
                    self.consider(node);
                }
                if signer_works {
                    // A signer works (this probe, or any other job): retry everything waiting,
                    // so one node failing recoverably on its own cannot starve the others.
                    let waiting: Vec<String> = self
                        .pending
                        .iter()
                        .filter(|(_, e)| e.awaiting_retry && !e.in_flight)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in waiting {
                        self.dispatch(&id);
                    }
                }
            }
        }
    }

    fn on_tick(&mut self) {
        if self.probe.is_some() {
            return;
        }
        // Probe the next waiting node after the last one probed (wrapping), so that a node
        // whose own request keeps failing does not hide the others.
        let waiting = |(_, e): &(&String, &PendingEntry)| e.awaiting_retry && !e.in_flight;
        let after = self.last_probe.clone().unwrap_or_default();
        let next = self
            .pending
            .range::<String, _>((std::ops::Bound::Excluded(&after), std::ops::Bound::Unbounded))
            .find(waiting)
            .or_else(|| self.pending.iter().find(waiting))
            .map(|(id, _)| id.clone());
        if let Some(id) = next {
            self.probe = Some(id.clone());
            self.last_probe = Some(id.clone());
            self.dispatch(&id);
        }
    }
}

/// A job's outcome channel; if the job is dropped or unwinds before reporting, it reports a
/// recoverable failure, so the entry is retried and a probe never stays in flight forever.
struct Report {
    done: mpsc::UnboundedSender<(String, Outcome)>,
    id: Option<String>,
}

impl Report {
    fn send(&mut self, outcome: Outcome) {
        if let Some(id) = self.id.take() {
            let _ = self.done.send((id, outcome));
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.send(Outcome::Recoverable("signing job aborted".into()));
    }
}

/// Signs `node`'s CSR and writes the result if the node still wants it.
async fn sign_and_write(server: &CaServer, cancel: &RunCancel, store: &dyn Store, node: Node) -> Outcome {
    let Some(req) = Request::of(&node) else { return Outcome::Dropped("no certificate") };
    let signed = match Role::from_proto(req.role) {
        None => Err(format!("invalid node role {}", req.role)),
        Some(role) => match sign(server, cancel, &node.id, &req, role).await {
            Ok(signed) => signed,
            Err(outcome) => return outcome,
        },
    };
    write_result(cancel, store, &node.id, &req, signed).await
}

/// SwarmKit's signing step: the external CA first; local signing only when no external CA
/// URL is configured. `Ok(Err(reason))` is a fatal failure to write as FAILED; `Err` is an
/// outcome to report without writing.
async fn sign(
    server: &CaServer,
    cancel: &RunCancel,
    id: &str,
    req: &Request,
    role: Role,
) -> Result<Result<Vec<u8>, String>, Outcome> {
    let inner = &server.inner;
    let org = &inner.cfg.cluster_id;
    let (root, external) = {
        let s = inner.read_signer();
        (s.root.clone(), s.external.clone())
    };
    let sreq = SignRequest::node(&req.csr, &req.cn, role, org);
    let stop = cancel.clone();
    // `biased`: no draw from tokio's process-global select RNG, which would make simulation
    // runs depend on what ran before them in the same process.
    let answer = tokio::select! {
        biased;
        r = external.sign(&sreq) => r,
        _ = stop.wait_for(|c| *c) => return Err(Outcome::Cancelled),
    };
    match answer {
        Ok(pem) => {
            let Some(root) = root else {
                return Err(Outcome::Unavailable(Health::NoSigner, "no root CA loaded".into()));
            };
            let now = inner.deps.clock.now();
            match root.check_issued(&pem, &req.csr, &req.cn, role, org, now) {
                Ok(()) => Ok(Ok(pem)),
                // Clock skew between us and the external CA: retry rather than fail the node.
                Err(e @ swarmca_core::rootca::IssuedCertError::NotYetValid) => {
                    Err(Outcome::Recoverable(e.to_string()))
                }
                Err(e) => {
                    warn!(node = %id, error = %e, "external CA returned an unacceptable certificate");
                    Ok(Err(format!("external CA returned an invalid certificate: {e}")))
                }
            }
        }
        Err(ExternalCaError::NoUrls) => {
            let Some(root) = root else {
                return Err(Outcome::Unavailable(Health::NoSigner, "no valid signer found".into()));
            };
            let serial = draw::<20>(&inner.deps.entropy).map_err(|e| Outcome::Recoverable(e.to_string()))?;
            let now = inner.deps.clock.now();
            match root.sign_csr(&req.csr, &req.cn, role, org, now, serial) {
                Ok(pem) => Ok(Ok(pem)),
                Err(e) if e.is_recoverable() => Err(Outcome::Unavailable(Health::NoSigner, e.to_string())),
                Err(e) => Ok(Err(e.to_string())),
            }
        }
        Err(e) if e.is_recoverable() => Err(Outcome::Unavailable(Health::ExternalUnavailable, e.to_string())),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Writes ISSUED (with the certificate) or FAILED (with the reason) onto the node, re-checking
/// on every attempt that the stored node still asks for `req`.
async fn write_result(
    cancel: &RunCancel,
    store: &dyn Store,
    id: &str,
    req: &Request,
    signed: Result<Vec<u8>, String>,
) -> Outcome {
    for _ in 0..MAX_WRITE_ATTEMPTS {
        if cancel.get() {
            return Outcome::Cancelled;
        }
        let fresh = match store.get_node(id).await {
            Ok(Some(n)) => n,
            Ok(None) => return Outcome::Dropped("node deleted"),
            Err(e) if transient(&e) => return Outcome::Recoverable(e.to_string()),
            Err(e) => {
                error!(node = %id, error = %e, "store read failed while writing a certificate");
                return Outcome::Recoverable(e.to_string());
            }
        };
        let state = swarmca_core::policy::issuance_state(&fresh);
        let still_wanted = (state == State::Renew as i32 || state == State::Pending as i32)
            && Request::of(&fresh).as_ref() == Some(req);
        if !still_wanted {
            debug!(node = %id, "signing result dropped: the node moved on");
            return Outcome::Dropped("node no longer asks for this CSR");
        }
        let mut upd = fresh;
        let (outcome, status) = match &signed {
            Ok(pem) => {
                if let Some(c) = upd.certificate.as_mut() {
                    c.certificate = pem.clone();
                }
                swarmca_core::policy::note_issued(&mut upd, pem);
                (Outcome::Issued, IssuanceStatus { state: State::Issued as i32, err: String::new() })
            }
            Err(why) => (Outcome::Failed, IssuanceStatus { state: State::Failed as i32, err: why.clone() }),
        };
        if let Some(c) = upd.certificate.as_mut() {
            c.status = Some(status);
        }
        match store.commit(vec![Op::UpdateNode(upd)]).await {
            Ok(_) => {
                match &outcome {
                    Outcome::Failed => warn!(node = %id, "certificate request failed"),
                    _ => info!(node = %id, "certificate issued"),
                }
                return outcome;
            }
            Err(StoreError::SequenceConflict) => continue,
            Err(StoreError::NotExist) => return Outcome::Dropped("node deleted"),
            Err(e) => {
                warn!(node = %id, error = %e, "could not store the signing result; will retry");
                return Outcome::Recoverable(e.to_string());
            }
        }
    }
    Outcome::Recoverable("write kept conflicting".into())
}
