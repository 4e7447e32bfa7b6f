//! What `serve` does for its own identity while it runs: the listener's client trust roots
//! follow the cluster root (plus the rotation target during a root rotation), and the manager
//! renews its own certificate through the CA like any node (RENEW with a new CSR), then serves
//! it — when the root-rotation reconciler marks its node ROTATE, and as its certificate ages:
//! at a random point between half and four fifths of its validity, as SwarmKit's nodes do, so
//! that a long-running manager never serves (or presents to an external CA) an expired one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarmca_core::pem::certs_der;
use swarmca_core::policy::issuance_state;
use swarmca_core::rootca::leaf_issuer;
use swarmca_store::{Event, Node, Op, Store, StoreError, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::{Cluster, NodeTlsInfo};
use tracing::{error, info, warn};

use swarmca_core::seal::DataKey;
use zeroize::Zeroizing;

use crate::files::{self, NODE_CERT, NODE_KEY, ROOT_CERT};
use crate::listener::DynamicTls;
use crate::CaServer;

/// Everything the task needs.
pub struct SelfCert {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The CA server (its roots verify the renewed certificate; its external CA client gets
    /// the new credentials).
    pub server: CaServer,
    /// The listener's credentials.
    pub tls: Arc<DynamicTls>,
    /// The cluster.
    pub cluster_id: String,
    /// This manager's node ID.
    pub node_id: String,
    /// Where this manager's certificate files are written.
    pub files: Arc<dyn OwnFiles>,
    /// This manager's key, and what its file is sealed under.
    pub key_file: std::sync::Mutex<KeyFile>,
}

/// This manager's certificate and private key, and what its key file is sealed under: the
/// cluster's data key, which opens for whoever can open the cluster (with the seal key, or the
/// unlock key while autolocked), so the file needs no resealing when autolock or the unlock key
/// change.
pub struct KeyFile {
    /// The certificate served (PEM): its age decides when it is renewed.
    pub cert_pem: Vec<u8>,
    /// The clear key (PEM), wiped on drop.
    pub key_pem: Zeroizing<Vec<u8>>,
    /// The cluster's data key.
    pub data_key: DataKey,
}

/// Where a manager keeps its certificate files: [`CertsDir`] for `serve`; the simulator keeps
/// them in memory, as its manager's disk.
pub trait OwnFiles: Send + Sync {
    /// Writes the cluster's root certificate (PEM).
    fn write_root(&self, pem: &[u8]) -> Result<(), files::FileError>;
    /// Writes this manager's key file (sealed) and then its certificate (PEM).
    fn write_identity(&self, cert_pem: &[u8], sealed_key: &[u8]) -> Result<(), files::FileError>;
}

/// A manager's certificates directory: `swarm-root-ca.crt`, `swarm-node.key` (owner-only) and
/// `swarm-node.crt`, each replaced atomically.
pub struct CertsDir(pub PathBuf);

impl OwnFiles for CertsDir {
    fn write_root(&self, pem: &[u8]) -> Result<(), files::FileError> {
        files::write_atomic(&self.0, ROOT_CERT, pem, false)
    }

    fn write_identity(&self, cert_pem: &[u8], sealed_key: &[u8]) -> Result<(), files::FileError> {
        files::write_atomic(&self.0, NODE_KEY, sealed_key, true)?;
        files::write_atomic(&self.0, NODE_CERT, cert_pem, false)
    }
}

/// How long after a renewal that did not go through (refused, replaced, or not written) the
/// manager tries again.
const RETRY_RENEWAL: Duration = Duration::from_secs(60);

/// How soon a renewal a root rotation asks for is tried again when it could not be requested.
const RETRY_ROTATION: Duration = Duration::from_secs(5);

/// How long a renewal request may go unanswered before it is made again, with a new key (the
/// leader keeps retrying an external CA that does not answer; this bounds what is lost when
/// the answer never comes).
const RENEWAL_WAIT: Duration = Duration::from_secs(600);

/// When a certificate valid from `not_before` to `not_after` (seconds since the epoch) is
/// renewed: at `share` (0 to 1) of the way between half and four fifths of its validity.
pub fn renewal_time(not_before: i64, not_after: i64, share: f64) -> SystemTime {
    let life = (not_after - not_before).max(0) as f64;
    let at = not_before as f64 + life * (0.5 + 0.3 * share.clamp(0.0, 1.0));
    SystemTime::UNIX_EPOCH + Duration::from_secs(at.max(0.0) as u64)
}

/// When the next renewal is due, and why.
struct Schedule {
    at: SystemTime,
    why: Why,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The served certificate's age.
    Age,
    /// A root rotation asked, and the request could not be written.
    Rotation,
}

/// A renewal of this manager's certificate in flight: the CSR sent and its key, whether an
/// event carrying the request was seen (earlier events are passed over), and when it was asked.
struct Renewal {
    csr: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
    seen: bool,
    asked: SystemTime,
}

/// Over which states of the node a renewal is requested.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Over {
    /// ROTATE only: the rotation asked.
    Rotate,
    /// Any final state: a renewal as the certificate ages.
    Final,
    /// Any state: an earlier request of this manager went unanswered.
    Any,
}

/// What became of a renewal request.
enum Asked {
    Yes(Renewal),
    /// The node is not in a state to ask over (or no longer a manager's).
    NotWanted,
    /// It could not be written.
    Failed,
}

impl SelfCert {
    /// Runs until `stop` resolves. Failures are logged; the listener keeps its credentials. A
    /// watch that closes (a store reconnect, an event that does not open) is followed again
    /// after a pause, so the key file keeps following the cluster's key-encryption key.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut trust = Vec::new();
        let mut root_file = Vec::new();
        let mut renewal: Option<Renewal> = None;
        let mut schedule: Option<Schedule> = None;
        self.schedule_age(&mut schedule);
        let mut pause = Duration::from_millis(200);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                followed = self.follow(&mut trust, &mut root_file, &mut renewal, &mut schedule) => {
                    if followed {
                        pause = Duration::from_millis(200);
                    }
                }
            }
            tokio::select! {
                biased;
                () = &mut stop => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// Follows the cluster and this manager's node until a watch ends; whether it got as far as
    /// watching.
    async fn follow(
        &self,
        trust: &mut Vec<u8>,
        root_file: &mut Vec<u8>,
        renewal: &mut Option<Renewal>,
        schedule: &mut Option<Schedule>,
    ) -> bool {
        let (snap, mut clusters) =
            match self.store.view_and_watch(WatchFilter::Cluster(self.cluster_id.clone())).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cannot follow the cluster; trying again");
                    return false;
                }
            };
        let (node_snap, mut nodes) =
            match self.store.view_and_watch(WatchFilter::Node(self.node_id.clone())).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cannot follow this manager's node; trying again");
                    return false;
                }
            };
        if let Some(c) = snap.clusters.first() {
            self.on_cluster(c, trust, root_file);
        }
        if let Some(n) = node_snap.nodes.into_iter().next() {
            self.on_node(n, renewal, schedule).await;
        }
        loop {
            let due = match (renewal.as_ref(), schedule.as_ref()) {
                (Some(r), _) => Some(r.asked + RENEWAL_WAIT),
                (None, Some(s)) => Some(s.at),
                (None, None) => None,
            }
            .map(|at| at.duration_since(self.server.inner.deps.clock.now()).unwrap_or(Duration::ZERO));
            tokio::select! {
                biased;
                () = tokio::time::sleep(due.unwrap_or(Duration::ZERO)), if due.is_some() => {
                    self.renew_now(renewal, schedule).await;
                }
                ev = clusters.next() => match ev {
                    Some(Event::UpdateCluster(c) | Event::CreateCluster(c)) => self.on_cluster(&c, trust, root_file),
                    Some(_) => {}
                    None => {
                        warn!("cluster watch closed; following it again");
                        return true;
                    }
                },
                ev = nodes.next() => match ev {
                    Some(Event::UpdateNode(n) | Event::CreateNode(n)) => self.on_node(n, renewal, schedule).await,
                    Some(_) => {}
                    None => {
                        warn!("node watch closed; following it again");
                        return true;
                    }
                },
            }
        }
    }

    fn on_cluster(&self, c: &Cluster, trust: &mut Vec<u8>, root_file: &mut Vec<u8>) {
        let t = crate::issuers::trust_pem(&c.root_ca.clone().unwrap_or_default());
        if t != *trust {
            match self.tls.set_roots(&t) {
                Ok(()) => {
                    info!(roots = certs_der(&t).len(), "listener trust roots updated");
                    *trust = t;
                }
                Err(e) => warn!(error = %e.0, "new trust roots unusable; keeping the previous ones"),
            }
        }
        let root = c.root_ca.clone().unwrap_or_default().ca_cert;
        if root != *root_file {
            if let Err(e) = self.files.write_root(&root) {
                warn!(error = %e.0, "cannot write the root CA file");
            }
            *root_file = root;
        }
    }

    /// Seals `key_pem` under the cluster's data key and writes it with `cert_pem` as this
    /// manager's certificate files.
    fn write_identity(&self, dek: &DataKey, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), files::FileError> {
        let entropy = &self.server.inner.deps.entropy;
        let sealed = crate::bootstrap::seal_own_key(dek, &self.cluster_id, key_pem, entropy)
            .map_err(|e| files::FileError(format!("cannot seal this manager's key: {e}")))?;
        self.files.write_identity(cert_pem, &sealed)
    }

    /// A renewal is due (the certificate's age, a rotation's retry) or one went unanswered:
    /// asks for it, or tries again a while later.
    async fn renew_now(&self, renewal: &mut Option<Renewal>, schedule: &mut Option<Schedule>) {
        let unanswered = renewal.take().is_some();
        if unanswered {
            warn!(
                after_secs = RENEWAL_WAIT.as_secs(),
                "no answer to this manager's certificate renewal; asking again with a new key"
            );
        }
        let node = match self.store.get_node(&self.node_id).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                *schedule = None;
                return warn!("this manager's node is gone; its certificate is not renewed");
            }
            Err(e) => {
                warn!(error = %e, "cannot read this manager's node to renew its certificate; trying again");
                return self.retry_later(schedule, RETRY_RENEWAL);
            }
        };
        if !is_manager(&node) {
            *schedule = None;
            return warn!("this manager's node is no longer a manager; its certificate is not renewed");
        }
        let why = schedule.as_ref().map_or(Why::Age, |s| s.why);
        let over = match (unanswered, why) {
            (true, _) => Over::Any,
            (false, Why::Rotation) => Over::Rotate,
            (false, Why::Age) => Over::Final,
        };
        if over == Over::Final {
            info!("renewing this manager's certificate (past half its validity)");
        }
        match self.request(node, over).await {
            Asked::Yes(r) => *renewal = Some(r),
            // The rotation's mark is gone (done, or asked already): back to the age schedule.
            Asked::NotWanted if over == Over::Rotate => self.schedule_age(schedule),
            Asked::NotWanted => self.retry_later(schedule, RETRY_RENEWAL),
            Asked::Failed if over == Over::Rotate => self.retry_later(schedule, RETRY_ROTATION),
            Asked::Failed => self.retry_later(schedule, RETRY_RENEWAL),
        }
    }

    /// The next renewal `after` from now, for the same reason.
    fn retry_later(&self, schedule: &mut Option<Schedule>, after: Duration) {
        let why = schedule.as_ref().map_or(Why::Age, |s| s.why);
        *schedule = Some(Schedule { at: self.server.inner.deps.clock.now() + after, why });
    }

    /// The renewal of the certificate served, as it ages.
    fn schedule_age(&self, schedule: &mut Option<Schedule>) {
        let cert = self.key_file.lock().unwrap_or_else(|e| e.into_inner()).cert_pem.clone();
        let Some((nb, na)) = validity(&cert) else {
            *schedule = None;
            return warn!("this manager's certificate cannot be read; it is not renewed as it ages");
        };
        let share = crate::env::draw::<8>(&self.server.inner.deps.entropy)
            .map(|b| u64::from_le_bytes(b) as f64 / u64::MAX as f64)
            .unwrap_or(0.5);
        let at = renewal_time(nb, na, share);
        if let Ok(left) = at.duration_since(self.server.inner.deps.clock.now()) {
            info!(in_secs = left.as_secs(), "this manager's certificate is renewed in");
        }
        *schedule = Some(Schedule { at, why: Why::Age });
    }

    async fn on_node(&self, node: Node, renewal: &mut Option<Renewal>, schedule: &mut Option<Schedule>) {
        let state = issuance_state(&node);
        if let Some(r) = renewal.as_mut() {
            let cert = node.certificate.clone().unwrap_or_default();
            if cert.csr != r.csr {
                if r.seen {
                    // Someone else replaced the request: asked again a while later.
                    warn!("this manager's renewal request was replaced; asking again later");
                    *renewal = None;
                    self.retry_later(schedule, RETRY_RENEWAL);
                }
                // Otherwise a write from before the request, delivered after it: passed over.
                return;
            }
            r.seen = true;
            // Issued (ROTATE too: marked after an ISSUED this watch did not deliver).
            let issued = !cert.certificate.is_empty()
                && (state == State::Issued as i32 || state == State::Rotate as i32);
            if issued {
                let Some(r) = renewal.take() else { return };
                if !is_manager(&node) {
                    *schedule = None;
                    return warn!(
                        "this manager's node was demoted while it renewed; the new certificate is not used"
                    );
                }
                if self.install(&cert.certificate, &r.key_pem).await {
                    self.schedule_age(schedule);
                } else {
                    self.retry_later(schedule, RETRY_RENEWAL);
                }
                if state != State::Rotate as i32 {
                    return;
                }
            } else if state == State::Failed as i32 {
                error!(error = %cert.status.unwrap_or_default().err, "the CA refused this manager's new certificate");
                *renewal = None;
                self.retry_later(schedule, RETRY_RENEWAL);
                return;
            } else {
                return;
            }
        }
        if state == State::Rotate as i32 {
            info!("root rotation: renewing this manager's certificate");
            match self.request(node, Over::Rotate).await {
                Asked::Yes(r) => *renewal = Some(r),
                Asked::NotWanted => {}
                // Not written (the store did not answer): asked again soon, not only when the
                // node changes next.
                Asked::Failed => {
                    *schedule = Some(Schedule {
                        at: self.server.inner.deps.clock.now() + RETRY_ROTATION,
                        why: Why::Rotation,
                    })
                }
            }
        }
    }

    /// Writes RENEW with a new CSR onto this manager's node, over the states `over` allows.
    async fn request(&self, mut node: Node, over: Over) -> Asked {
        let Ok((csr, key_pem)) = crate::bootstrap::new_key_and_csr() else { return Asked::Failed };
        for _ in 0..8 {
            let state = issuance_state(&node);
            let wanted = match over {
                Over::Rotate => state == State::Rotate as i32,
                Over::Final => swarmca_core::policy::is_final_state(state),
                Over::Any => true,
            };
            // A demoted manager's node asks for a worker certificate: not for this listener.
            if !wanted || !is_manager(&node) {
                return Asked::NotWanted;
            }
            node.certificate = Some(swarmca_core::policy::renew_request(&node, csr.clone()));
            match self.store.commit(vec![Op::UpdateNode(node.clone())]).await {
                Ok(_) => {
                    return Asked::Yes(Renewal {
                        csr,
                        key_pem: Zeroizing::new(key_pem.clone()),
                        seen: false,
                        asked: self.server.inner.deps.clock.now(),
                    })
                }
                Err(StoreError::SequenceConflict) => match self.store.get_node(&self.node_id).await {
                    Ok(Some(n)) => node = n,
                    _ => return Asked::Failed,
                },
                Err(e) => {
                    warn!(error = %e, "cannot request this manager's renewal");
                    return Asked::Failed;
                }
            }
        }
        Asked::Failed
    }

    /// Checks and installs a newly issued certificate: files, listener, external CA client,
    /// and the node's TLS info. Whether the listener serves it now.
    async fn install(&self, cert_pem: &[u8], key_pem: &[u8]) -> bool {
        let chain = certs_der(cert_pem);
        let Some(trust) = self.server.trust_roots() else { return false };
        if let Err(e) = trust.verify_peer(&chain, self.server.inner.deps.clock.now()) {
            error!(error = %e, "this manager's new certificate does not verify; keeping the old one");
            return false;
        }
        if let Err(e) = self.tls.set_identity(cert_pem, key_pem) {
            error!(error = %e.0, "this manager's new certificate is unusable; keeping the old one");
            return false;
        }
        let written = {
            let mut kf = self.key_file.lock().unwrap_or_else(|e| e.into_inner());
            kf.cert_pem = cert_pem.to_vec();
            kf.key_pem = Zeroizing::new(key_pem.to_vec());
            self.write_identity(&kf.data_key, cert_pem, key_pem)
        };
        if let Err(e) = written {
            warn!(error = %e.0, "cannot write this manager's new certificate files");
        }
        if let Err(e) = self.server.update_tls_credentials(cert_pem, key_pem) {
            warn!(error = %e, "the external CA client keeps the old credentials");
        }
        info!("this manager now serves its renewed certificate");
        let mut candidates: Vec<Vec<u8>> = trust.roots_der().to_vec();
        candidates.extend(chain.iter().skip(1).cloned());
        let Some((subject, spki)) = leaf_issuer(&chain, &candidates) else { return true };
        let info = NodeTlsInfo {
            trust_root: Vec::new(),
            cert_issuer_subject: subject,
            cert_issuer_public_key: spki,
        };
        for _ in 0..8 {
            let Ok(Some(mut n)) = self.store.get_node(&self.node_id).await else { return true };
            n.description.get_or_insert_with(Default::default).tls_info = Some(info.clone());
            match self.store.commit(vec![Op::UpdateNode(n)]).await {
                Err(StoreError::SequenceConflict) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => {
                    warn!(error = %e, "cannot record this manager's certificate issuer");
                    return true;
                }
                Ok(_) => return true,
            }
        }
        true
    }
}

/// Whether `node` is a manager's, meant to stay one.
fn is_manager(node: &Node) -> bool {
    let manager = swarmca_core::role::Role::Manager.to_proto();
    node.role == manager && node.spec.as_ref().is_some_and(|s| s.desired_role == manager)
}

/// NotBefore and NotAfter (seconds since the epoch) of the first certificate of `pem`.
fn validity(pem: &[u8]) -> Option<(i64, i64)> {
    use x509_parser::prelude::FromDer as _;
    let der = certs_der(pem).into_iter().next()?;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
    Some((c.validity().not_before.timestamp(), c.validity().not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_renewal_falls_between_half_and_four_fifths_of_the_validity() {
        let at = |share| {
            super::renewal_time(1000, 2000, share)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
        };
        let secs: Vec<u64> = [0.0, 0.5, 1.0, -1.0, 2.0].into_iter().map(|s| at(s).as_secs()).collect();
        assert_eq!(secs, [1500, 1650, 1800, 1500, 1800]);
    }
}
