//! The root-rotation reconciler (SwarmKit `ca/reconciler.go`, docs/behaviour.md §6), run by the leader next
//! to the signing loop.
//!
//! While the cluster's RootCA object carries a `root_rotation`, every node whose TLS info does
//! not name the new root as issuer is *unconverged*. On every tick at most
//! [`ROTATE_MAX_BATCH`] unconverged nodes that are not already RENEW, PENDING or ROTATE are
//! marked ROTATE (their agents renew, and get certificates from the new key). When no node is
//! left, the rotation is finished: the new root becomes `ca_cert`, its key `ca_key`, and both
//! join tokens are regenerated with the new digest.
//!
//! Differences from the original, each deliberate:
//! * State is (re)initialised whenever a rotation is present and the reconciler is not already
//!   tracking it — also when the new root has the same subject and key as the current issuer,
//!   where the original left a nil map (a panic on the next node update) and never finished.
//! * Finishing compares against the *latest* RootCA seen, not the one the loop started with, so
//!   a changed cross-signed certificate for the same target does not strand the rotation.
//! * Before finishing, every node in the store is checked again; a tracking map that missed an
//!   event can delay completion but never complete it early.
//! * A mark that meets a sequence conflict re-reads the node instead of waiting for an event.
//! * One task, no shared map: events, ticks and writes are serialised.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use swarmca_core::policy::issuance_state;
use swarmca_core::rootca::{digest, digest_string, RootCa};
use swarmca_core::token::generate_join_token;
use swarmca_store::{Node, Op, Store, StoreError, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::{Certificate, IssuanceStatus, JoinTokens, RootCa as ApiRootCa};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::env::with_entropy;
use crate::issuers::{desired_issuer, has_issuer, signing_root, IssuerId};
use crate::server::{CaServer, RunCancel};
use crate::signer::root_ca_equal_stable;

/// Most nodes marked ROTATE per interval (SwarmKit `IssuanceStateRotateMaxBatchSize`).
pub const ROTATE_MAX_BATCH: usize = 30;
/// Default interval between two batches.
pub use crate::server::DEFAULT_ROOT_RECONCILE_INTERVAL;

/// What the signing loop tells the reconciler.
#[derive(Debug)]
pub(crate) enum Input {
    /// The cluster's RootCA object (on every run start and cluster update).
    Root(ApiRootCa),
    /// A node was created or updated.
    Node(Box<Node>),
    /// A node was deleted.
    Deleted(String),
}

/// Why finishing did not happen.
#[derive(Debug, PartialEq, Eq)]
enum Finish {
    Done,
    NotYet,
}

struct Reconciler {
    server: CaServer,
    cancel: RunCancel,
    /// The store this term reads and writes through (fenced on the leadership under HA).
    store: Arc<dyn Store>,
    root: Option<ApiRootCa>,
    issuer: Option<IssuerId>,
    /// `Some` while a rotation is tracked; `None` inside means "list the store first".
    rotation: Option<Option<BTreeMap<String, Node>>>,
}

/// The reconciler task body; ends when `cancel` fires or the input channel closes.
pub(crate) async fn run(
    server: CaServer,
    cancel: RunCancel,
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Input>,
) {
    let period = server.inner.cfg.root_reconcile_interval.max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut r =
        Reconciler { server, cancel: cancel.clone(), store, root: None, issuer: None, rotation: None };
    loop {
        tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => return,
            input = rx.recv() => match input {
                None => return,
                Some(Input::Root(root)) => {
                    // A rotation (re)starts: list and mark the first batch at once, as the
                    // original's fresh loop did, then keep the interval from here.
                    if r.update_root(root) {
                        r.tick().await;
                        r.tick().await;
                        ticker.reset();
                    }
                }
                Some(Input::Node(n)) => r.update_node(*n),
                Some(Input::Deleted(id)) => r.delete_node(&id),
            },
            _ = ticker.tick() => r.tick().await,
        }
    }
}

impl Reconciler {
    /// SwarmKit `UpdateRootCA`. Returns whether a rotation (re)started.
    fn update_root(&mut self, new: ApiRootCa) -> bool {
        // Most cluster writes (tokens, blacklist, settings) leave the desired root as it was:
        // its issuer is known without parsing the certificate again.
        let same_root = self.root.as_ref().is_some_and(|old| signing_root(old) == signing_root(&new));
        let known = if same_root { self.issuer.clone() } else { None };
        let Some(issuer) = known.or_else(|| desired_issuer(&new)) else {
            warn!("cannot parse the desired root of the cluster's RootCA object; rotation state unchanged");
            return false;
        };
        let rotating = new.root_rotation.is_some();
        let issuer_changed = self.issuer.as_ref() != Some(&issuer);
        let started = rotating && (issuer_changed || self.rotation.is_none());
        if started {
            info!(target_digest = %target_digest(&new), "root rotation in progress; tracking unconverged nodes");
            self.rotation = Some(None);
        } else if !rotating && self.rotation.is_some() {
            info!("no root rotation in progress any more");
            self.rotation = None;
        }
        self.root = Some(new);
        self.issuer = Some(issuer);
        started
    }

    /// SwarmKit `UpdateNode`.
    fn update_node(&mut self, node: Node) {
        let (Some(Some(map)), Some(issuer)) = (self.rotation.as_mut(), self.issuer.as_ref()) else {
            return;
        };
        if has_issuer(&node, issuer) {
            map.remove(&node.id);
        } else {
            map.insert(node.id.clone(), node);
        }
    }

    fn delete_node(&mut self, id: &str) {
        if let Some(Some(map)) = self.rotation.as_mut() {
            map.remove(id);
        }
    }

    async fn tick(&mut self) {
        match self.rotation.as_ref() {
            None => {}
            Some(None) => self.list_unconverged().await,
            Some(Some(map)) if map.is_empty() => match self.finish().await {
                Ok(Finish::Done) => self.rotation = None,
                Ok(Finish::NotYet) => {}
                Err(e) => warn!(error = %e, "could not finish the root rotation; will retry"),
            },
            Some(Some(_)) => self.mark_batch().await,
        }
    }

    /// Lists every node without the desired issuer.
    async fn list_unconverged(&mut self) {
        let Some(issuer) = self.issuer.clone() else { return };
        match self.store.view(WatchFilter::All).await {
            Ok(snap) => {
                let map: BTreeMap<String, Node> = snap
                    .nodes
                    .into_iter()
                    .filter(|n| !has_issuer(n, &issuer))
                    .map(|n| (n.id.clone(), n))
                    .collect();
                info!(unconverged = map.len(), "root rotation: nodes still on another issuer");
                if self.rotation.is_some() {
                    self.rotation = Some(Some(map));
                }
            }
            Err(e) => warn!(error = %e, "root rotation: cannot list nodes; will retry"),
        }
    }

    /// Marks up to [`ROTATE_MAX_BATCH`] unconverged nodes ROTATE.
    async fn mark_batch(&mut self) {
        let Some(Some(map)) = self.rotation.as_ref() else { return };
        let batch: Vec<Node> = map
            .values()
            .filter(|n| {
                let s = issuance_state(n);
                s != State::Renew as i32 && s != State::Pending as i32 && s != State::Rotate as i32
            })
            .take(ROTATE_MAX_BATCH)
            .map(|n| {
                let mut n = n.clone();
                let cert = n.certificate.get_or_insert_with(Certificate::default);
                cert.status = Some(IssuanceStatus { state: State::Rotate as i32, err: String::new() });
                n
            })
            .collect();
        if batch.is_empty() || self.cancel.get() {
            return;
        }
        let store = self.store.clone();
        let ops = batch.iter().cloned().map(Op::UpdateNode).collect();
        match store.commit(ops).await {
            Ok(_) => {
                info!(nodes = batch.len(), "root rotation: nodes asked to renew (ROTATE)");
                return;
            }
            Err(StoreError::SequenceConflict | StoreError::NotExist) => {}
            Err(e) => {
                warn!(error = %e, "root rotation: could not mark a batch; will retry");
                return;
            }
        }
        // Someone else wrote one of them: one node at a time, re-reading the losers.
        let mut marked = 0usize;
        for node in batch {
            if self.cancel.get() {
                return;
            }
            let id = node.id.clone();
            match store.commit(vec![Op::UpdateNode(node)]).await {
                Ok(_) => marked += 1,
                Err(StoreError::SequenceConflict | StoreError::NotExist) => match store.get_node(&id).await {
                    Ok(Some(fresh)) => self.update_node(fresh),
                    Ok(None) => self.delete_node(&id),
                    Err(e) => debug!(node = %id, error = %e, "root rotation: re-read failed"),
                },
                Err(e) => warn!(node = %id, error = %e, "root rotation: could not mark node"),
            }
        }
        info!(nodes = marked, "root rotation: nodes asked to renew (ROTATE)");
    }

    /// SwarmKit `finishRootRotation`, after re-checking every node in the store.
    async fn finish(&mut self) -> Result<Finish, String> {
        let (Some(expected), Some(issuer)) = (self.root.clone(), self.issuer.clone()) else {
            return Ok(Finish::NotYet);
        };
        let Some(rotation) = expected.root_rotation.clone() else { return Ok(Finish::Done) };
        let store = self.store.clone();
        let snap = store.view(WatchFilter::All).await.map_err(|e| e.to_string())?;
        let left: BTreeMap<String, Node> =
            snap.nodes.into_iter().filter(|n| !has_issuer(n, &issuer)).map(|n| (n.id.clone(), n)).collect();
        if !left.is_empty() {
            debug!(unconverged = left.len(), "root rotation: store still has unconverged nodes");
            self.rotation = Some(Some(left));
            return Ok(Finish::NotYet);
        }
        let cluster_id = self.server.cluster_id().to_string();
        let mut cluster = store
            .get_cluster(&cluster_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("unable to get cluster {cluster_id}"))?;
        let current = cluster.root_ca.clone().unwrap_or_default();
        if !root_ca_equal_stable(&expected, &current) {
            // Another rotation started, it was aborted, or another server finished it; the
            // cluster event that follows brings the new state.
            debug!("root rotation changed before it could be finished");
            return Ok(Finish::NotYet);
        }
        let sign_cert: &[u8] = if rotation.ca_key.is_empty() { &[] } else { &rotation.ca_cert };
        let now = self.server.inner.deps.clock.now();
        let keys = self.server.inner.read_signer().external_keys();
        RootCa::new_with(&rotation.ca_cert, sign_cert, &rotation.ca_key, Duration::ZERO, &[], now, &*keys)
            .map_err(|e| format!("invalid cluster root rotation object: {e}"))?;
        let d = digest(&rotation.ca_cert);
        let fips = cluster.fips;
        let tokens =
            with_entropy::<_, swarmca_core::entropy::EntropyError>(&self.server.inner.deps.entropy, |e| {
                Ok(JoinTokens {
                    worker: generate_join_token(&d, fips, e)?,
                    manager: generate_join_token(&d, fips, e)?,
                })
            })
            .map_err(|e| e.to_string())?;
        cluster.root_ca = Some(ApiRootCa {
            ca_key: rotation.ca_key.clone(),
            ca_cert: rotation.ca_cert.clone(),
            ca_cert_hash: digest_string(&rotation.ca_cert),
            join_tokens: Some(tokens),
            root_rotation: None,
            last_forced_rotation: current.last_forced_rotation,
        });
        if self.cancel.get() {
            return Ok(Finish::NotYet);
        }
        match store.commit(vec![Op::UpdateCluster(cluster)]).await {
            Ok(_) => {
                info!(digest = %digest_string(&rotation.ca_cert), "completed root rotation");
                Ok(Finish::Done)
            }
            Err(StoreError::SequenceConflict) => Ok(Finish::NotYet),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn target_digest(root: &ApiRootCa) -> String {
    root.root_rotation.as_ref().map_or_else(String::new, |r| digest_string(&r.ca_cert))
}

#[cfg(test)]
mod tests;
