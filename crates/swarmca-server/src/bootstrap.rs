//! A manager's start, before it serves: find the cluster in the store or — as the holder of a
//! term, so that of several managers starting at once on an empty store only one does —
//! create it, then make sure this manager holds a certificate of its own that is current: from
//! the cluster's root, for this cluster, and not past half its life. Otherwise a new one is
//! issued (signed by the root key, or through the cluster's external CA when one is configured
//! for the root, as SwarmKit prefers) and the manager's node is stored with it.
//!
//! The cluster's secrets are sealed (see [`crate::custody`]): a new cluster gets a data key
//! wrapped under the seal key; a record written in clear by an earlier version is sealed on
//! this start; a cluster under autolock cannot be opened without the unlock key. The manager's
//! own key comes back sealed for its file, under the key-encryption key.
//!
//! Clock and entropy are the caller's (the simulator passes its own); nothing here reads files.

use std::time::{Duration, SystemTime};

use swarmca_core::role::Role;
use swarmca_core::rootca::{
    cluster_cert_expiry, digest, generate_root, RootCa, DEFAULT_NODE_CERT_EXPIRY, DEFAULT_ROOT_CN,
};
use swarmca_core::token::generate_join_token;
use swarmca_store::{Event, Op, Store, StoreError, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{
    CaConfig, Certificate, Cluster, ExternalCa as ApiExternalCa, IssuanceStatus, JoinTokens, Node, NodeSpec,
    RootCa as ApiRootCa,
};
use tracing::{info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use swarmca_core::seal::{is_sealed, DataKey, Kek, KekSource, Purpose, SealError, UnlockKey};

use crate::custody::{self, CustodyError, Keys};
use crate::env::{draw, with_entropy, Clock, SharedEntropy};
use crate::external::{certs_der, client_tls_config, filter_external_ca_urls, ExternalCa, SignRequest};
use crate::leadership::Election;

/// How long a manager waits for an external CA to sign its own certificate.
const OWN_CERT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a manager without a certificate waits for the cluster's leader to have its own
/// certificate signed (see [`Bootstrap::issue_through_leader`]) before the attempt ends and is
/// tried again.
const THROUGH_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a manager cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The store could not be read or written.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// What is stored, or what was given, does not allow this manager to start.
    #[error("{0}")]
    Refused(String),
    /// The cluster's keys cannot be opened with what this manager holds (locked, wrong key).
    #[error("{0}")]
    Custody(#[from] CustodyError),
    /// This manager's node was removed from the cluster or demoted: it cannot serve as a
    /// manager under that identity again.
    #[error("{0}")]
    Removed(String),
    /// Something this start needs did not answer, or refused this attempt (the external CA
    /// that signs this manager's certificate: every attempt sends a new key and request);
    /// trying again later may succeed.
    #[error("{0}")]
    Unavailable(String),
}

impl BootstrapError {
    /// Whether trying the start again later may succeed: the store or the external CA did not
    /// answer, or another manager wrote the same record meanwhile.
    pub fn is_transient(&self) -> bool {
        match self {
            BootstrapError::Store(e) => matches!(
                e,
                StoreError::Unavailable(_)
                    | StoreError::SequenceConflict
                    | StoreError::Exists
                    | StoreError::Fenced
            ),
            BootstrapError::Unavailable(_) => true,
            BootstrapError::Refused(_) | BootstrapError::Custody(_) | BootstrapError::Removed(_) => false,
        }
    }
}

impl From<SealError> for BootstrapError {
    fn from(e: SealError) -> Self {
        BootstrapError::Custody(CustodyError::Seal(e))
    }
}

fn refused(msg: impl Into<String>) -> BootstrapError {
    BootstrapError::Refused(msg.into())
}

/// What a first manager creates the cluster with.
#[derive(Clone, Default)]
pub struct NewCluster {
    /// Node certificate validity (default: [`DEFAULT_NODE_CERT_EXPIRY`]).
    pub cert_expiry: Option<Duration>,
    /// External CAs to sign through, tried in order.
    pub external_cas: Vec<ApiExternalCa>,
    /// A root to use instead of a generated one: certificate PEM, and key PEM (empty: the key is
    /// not held, signing is external only).
    pub root: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for NewCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The root's key is never printed.
        f.debug_struct("NewCluster")
            .field("cert_expiry", &self.cert_expiry)
            .field("external_cas", &self.external_cas.len())
            .field("root_given", &self.root.is_some())
            .finish()
    }
}

/// This manager's identity in the cluster it serves.
pub struct Identity {
    pub cluster_id: String,
    pub node_id: String,
    /// Its certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Its private key (PEM). Never printed; wiped on drop.
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
    /// The same key sealed for its file, under the cluster's data key (which is wrapped under
    /// the unlock key while autolocked: the file opens only for whoever can open the cluster).
    pub key_file: Vec<u8>,
    /// The cluster's data key: what the store's secrets are sealed under.
    pub data_key: DataKey,
    /// Whether this start sealed a record written in clear by an earlier version.
    pub migrated: bool,
    /// The cluster's join tokens.
    pub tokens: JoinTokens,
    /// The cluster's root CA object.
    pub root: ApiRootCa,
    /// The cluster's node certificate validity.
    pub expiry: Duration,
    /// Whether this start created the cluster.
    pub created: bool,
    /// Whether this start issued a new certificate for this manager.
    pub issued: bool,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("created", &self.created)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

/// What a manager starts from.
pub struct Bootstrap<'a> {
    pub store: &'a dyn Store,
    pub election: &'a dyn Election,
    pub clock: &'a dyn Clock,
    pub entropy: &'a SharedEntropy,
    /// The keys this manager was given to open the cluster's data key.
    pub keys: &'a Keys,
    /// The node ID this manager takes when it has none yet (no certificate naming one). A
    /// caller that retries a start draws it once and passes it to every attempt: a commit
    /// whose answer was lost (it may have been applied) is then found again, not left behind
    /// as the node of a manager that does not exist. `None`: drawn here.
    pub new_node_id: Option<&'a str>,
}

impl Bootstrap<'_> {
    /// Finds or creates the cluster, and this manager's identity in it. `own` is the
    /// certificate and key file (sealed, or clear from an earlier version) this manager last
    /// wrote, if any; `waiting` is called once if the
    /// store is empty and this manager must wait for a term to create the cluster.
    pub async fn start(
        &self,
        init: &NewCluster,
        own: Option<(Vec<u8>, Vec<u8>)>,
        waiting: impl FnOnce(),
    ) -> Result<Identity, BootstrapError> {
        let mut snap = self.store.view(WatchFilter::All).await?;
        let mut term = None;
        if snap.clusters.is_empty() {
            waiting();
            let t = self.election.campaign("").await?;
            snap = self.store.view(WatchFilter::All).await?;
            term = Some(t);
        }
        let id = match (snap.clusters.len(), &term) {
            (0, Some(t)) => self.create(&*t.store(), init).await,
            (0, None) => Err(refused("no cluster in the store")),
            (1, _) => match snap.clusters.into_iter().next() {
                Some(c) => self.reopen(c, own).await,
                None => Err(refused("the cluster vanished")),
            },
            (n, _) => Err(refused(format!("the store holds {n} clusters; expected one"))),
        };
        if let Some(t) = term {
            if let Err(e) = t.resign().await {
                warn!(error = %e, "could not resign the term the cluster was created in (it expires by itself)");
            }
        }
        id
    }

    /// First start: a root (generated, or given), the cluster, join tokens, and this manager's
    /// node and certificate, stored in one commit through `store` (the term's).
    async fn create(&self, store: &dyn Store, init: &NewCluster) -> Result<Identity, BootstrapError> {
        let now = self.clock.now();
        let expiry = init.cert_expiry.unwrap_or(DEFAULT_NODE_CERT_EXPIRY);
        let (ca_cert, ca_key) = match &init.root {
            Some((cert, key)) => {
                let signer: &[u8] = if key.is_empty() { b"" } else { cert };
                RootCa::new_with(cert, signer, key, expiry, b"", now, self.keys.external_keys())
                    .map_err(|e| refused(format!("unusable root CA certificate or key: {e}")))?;
                (cert.clone(), key.clone())
            }
            None => {
                let g = generate_root(DEFAULT_ROOT_CN, now, self.serial()?)
                    .map_err(|e| refused(format!("cannot generate the root CA: {e}")))?;
                (g.cert_pem, g.key_pem)
            }
        };
        let cluster_id = self.new_id()?;
        let d = digest(&ca_cert);
        let tokens = with_entropy::<_, swarmca_core::entropy::EntropyError>(self.entropy, |e| {
            Ok(JoinTokens {
                worker: generate_join_token(&d, false, e)?,
                manager: generate_join_token(&d, false, e)?,
            })
        })
        .map_err(|e| refused(format!("entropy: {e}")))?;
        let ca_config = CaConfig {
            node_cert_expiry: swarmca_types::prost_types::Duration::try_from(expiry).ok(),
            external_cas: init.external_cas.clone(),
            ..Default::default()
        };
        let mut cluster =
            swarmca_core::cluster::new_cluster(&cluster_id, &ca_cert, &ca_key, tokens, Some(ca_config));
        let kek = self.keys.kek(KekSource::SealKey)?;
        let data_key = with_entropy(self.entropy, DataKey::generate)?;
        cluster.sealing = Some(custody::sealing(&kek, &data_key, &cluster_id, self.entropy)?);
        let root = cluster.root_ca.clone().unwrap_or_default();
        let node_id = self.fresh_node_id()?;
        let own = self.issue(&root, &init.external_cas, expiry, &node_id, &cluster_id, None).await?;
        let key_file = seal_own_key(&data_key, &cluster_id, &own.key, self.entropy)?;
        let node = manager_node(&node_id, own.csr, own.cert.clone());
        let sealed = custody::seal_cluster(&cluster, &data_key, self.entropy)?;
        store.commit(vec![Op::CreateCluster(sealed), Op::CreateNode(node)]).await?;
        info!(cluster = %cluster_id, node = %node_id, "cluster created");
        Ok(Identity {
            cluster_id,
            node_id,
            cert_pem: own.cert,
            key_pem: own.key,
            key_file,
            data_key,
            migrated: false,
            tokens: root.join_tokens.clone().unwrap_or_default(),
            root,
            expiry,
            created: true,
            issued: true,
        })
    }

    /// Later starts: the stored cluster, and this manager's certificate `own` — kept when it is
    /// from this cluster, verifies against the current roots and is not past half its life;
    /// otherwise re-issued (keeping its node ID when it names one).
    async fn reopen(
        &self,
        stored: Cluster,
        own: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Identity, BootstrapError> {
        let (data_key, cluster, migrated) = self.open(stored).await?;
        // The key file is sealed under the data key; one written by an earlier version of this
        // format is under a key-encryption key: the seal key, or the cluster's unlock key.
        let mut keks = Vec::new();
        keks.extend(self.keys.seal.as_ref().map(Kek::from_seal_key));
        keks.extend(
            swarmca_core::cluster::unlock_key(&cluster)
                .and_then(|k| UnlockKey::from_bytes(k).ok())
                .map(|k| Kek::from_unlock_key(&k)),
        );
        // A key file that does not open costs the key and certificate, not the node ID the
        // certificate names.
        let mut key_lost = false;
        let own = match own {
            Some((cert, key)) => match open_own_key(&data_key, &keks, &cluster.id, key) {
                // A crash between writing the key file and the certificate file leaves a key
                // for a certificate that was never written: no identity.
                Ok(key) if !key_matches_cert(&cert, &key) => {
                    warn!("this manager's key file does not go with its certificate file (a write cut short?); it gets a new key and certificate");
                    key_lost = true;
                    Some((cert, Vec::new()))
                }
                Ok(key) => Some((cert, key)),
                Err(e) => {
                    warn!(error = %e, "cannot open this manager's key file; it gets a new key and certificate");
                    key_lost = true;
                    Some((cert, Vec::new()))
                }
            },
            None => None,
        };
        let root = cluster.root_ca.clone().ok_or_else(|| refused("the stored cluster has no root CA"))?;
        let tokens = root.join_tokens.clone().unwrap_or_default();
        let expiry = cluster_cert_expiry(&cluster);
        let now = self.clock.now();
        let mut keep = None;
        let mut node_id = None;
        let own_files = own.clone();
        if let Some((cert, key)) = own {
            let facts = cert_facts(&cert, now)
                .ok_or_else(|| refused("this manager's certificate file is not a valid node certificate"))?;
            if facts.org != cluster.id {
                return Err(refused(format!(
                    "this manager's certificate belongs to cluster {}, but the store holds cluster {}; wrong data directory?",
                    facts.org, cluster.id
                )));
            }
            let verifies = RootCa::from_api_reusing_with(None, &root, expiry, now, self.keys.external_keys())
                .ok()
                .is_some_and(|ca| ca.verify_peer(&certs_der(&cert), now).is_ok());
            if verifies && !facts.past_half_life && !key_lost {
                keep = Some((cert, key));
            }
            self.still_a_manager(&cluster, &facts.cn).await?;
            node_id = Some(facts.cn);
        }
        let (node_id, cert_pem, key_pem, issued) = match (keep, node_id) {
            (Some((cert, key)), Some(id)) => (id, cert, zeroize::Zeroizing::new(key), false),
            (_, id) => {
                let node_id = match id {
                    Some(id) => id,
                    None => self.fresh_node_id()?,
                };
                warn!(node = %node_id, "issuing a new certificate for this manager (missing, stale, or from another root)");
                let external = swarmca_core::cluster::external_cas(&cluster);
                // The certificate and key it has, however stale, are its client identity for
                // an external CA that asks for one (as SwarmKit's managers present theirs).
                let client = own_files.as_ref().filter(|(_, k)| !k.is_empty());
                let client = client.map(|(c, k)| (c.as_slice(), k.as_slice()));
                let through_leader =
                    !filter_external_ca_urls(crate::issuers::signing_root(&root), &root.ca_cert, &external)
                        .is_empty();
                let own = match self.issue(&root, &external, expiry, &node_id, &cluster.id, client).await {
                    Ok(own) => {
                        self.store_own_node(&cluster.id, &node_id, own.csr.clone(), &own.cert).await?;
                        own
                    }
                    // Asked directly, the external CA did not sign: it may want a client
                    // certificate this manager cannot present (none, or an expired one). The
                    // leader asks it instead, presenting its own (as SwarmKit's new managers
                    // join through a running manager).
                    Err(BootstrapError::Unavailable(direct)) if through_leader => {
                        warn!(error = %direct, "asking the cluster's leader to have this manager's certificate signed instead");
                        self.issue_through_leader(&root, expiry, &node_id, &cluster.id).await.map_err(
                            |e| match e {
                                BootstrapError::Unavailable(m) => {
                                    BootstrapError::Unavailable(format!("{direct}; through the leader: {m}"))
                                }
                                e => e,
                            },
                        )?
                    }
                    Err(e) => return Err(e),
                };
                (node_id, own.cert, own.key, true)
            }
        };
        let key_file = seal_own_key(&data_key, &cluster.id, &key_pem, self.entropy)?;
        Ok(Identity {
            cluster_id: cluster.id,
            node_id,
            cert_pem,
            key_pem,
            key_file,
            data_key,
            migrated,
            tokens,
            root,
            expiry,
            created: false,
            issued,
        })
    }

    /// Refuses a node the operator removed (its certificates are blacklisted) or demoted: it
    /// must not come back as a manager by reissuing its own certificate.
    async fn still_a_manager(&self, cluster: &Cluster, node_id: &str) -> Result<(), BootstrapError> {
        let node = self.store.get_node(node_id).await?;
        not_removed_or_demoted(cluster, node.as_ref(), node_id)
    }

    /// Stores this manager's node with the certificate just issued to it — unless the node was
    /// removed or demoted while the certificate was being issued (which may take a while,
    /// through an external CA): the node and the cluster are read again, and the write is
    /// fenced on the node's version, so a removal landing between the two fails the write
    /// and the next attempt sees it.
    async fn store_own_node(
        &self,
        cluster_id: &str,
        node_id: &str,
        csr: Vec<u8>,
        cert: &[u8],
    ) -> Result<(), BootstrapError> {
        let old = self.store.get_node(node_id).await?;
        let cluster = self
            .store
            .get_cluster(cluster_id)
            .await?
            .ok_or_else(|| refused("the cluster vanished while this manager's certificate was issued"))?;
        not_removed_or_demoted(&cluster, old.as_ref(), node_id)?;
        let node = manager_node(node_id, csr, cert.to_vec());
        let op = match old {
            Some(old) => {
                // What the earlier certificates were valid until is kept (the removal of this
                // node must outlive them too).
                let mut n =
                    Node { meta: old.meta, certificates_valid_until: old.certificates_valid_until, ..node };
                swarmca_core::policy::note_issued(&mut n, cert);
                Op::UpdateNode(n)
            }
            None => Op::CreateNode(node),
        };
        match self.store.commit(vec![op]).await {
            Ok(_) => Ok(()),
            // Changed or deleted since it was read: looked at again on the next attempt.
            Err(StoreError::NotExist | StoreError::Exists) => Err(BootstrapError::Unavailable(format!(
                "this manager's node {node_id} changed while its certificate was issued; trying again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The stored record opened: its data key unwrapped with this manager's keys, and its
    /// secrets opened. A record written in clear by an earlier version is sealed first (a new
    /// data key, wrapped under the seal key), retried if another manager writes it meanwhile.
    async fn open(&self, mut stored: Cluster) -> Result<(DataKey, Cluster, bool), BootstrapError> {
        loop {
            if let Some(dek) = custody::unseal(&stored, self.keys)? {
                let clear = custody::open_cluster(&stored, &dek)?;
                return Ok((dek, clear, false));
            }
            // Sealed secrets without a wrapped data key (a record rewritten by a version that
            // does not know the field, or damaged): sealing again would lose them for good.
            if custody::has_sealed_secrets(&stored) {
                return Err(refused(
                    "the cluster record holds sealed keys but no wrapped data key (written by an older swarmca, or damaged); restore it from a backup",
                ));
            }
            let (dek, record) = custody::migrate(&stored, self.keys, self.entropy)?;
            let sealed = custody::seal_cluster(&record, &dek, self.entropy)?;
            match self.store.commit(vec![Op::UpdateCluster(sealed)]).await {
                Ok(_) => {
                    info!(cluster = %stored.id, "the cluster's keys were stored in clear by an earlier version: sealed them now (once)");
                    return Ok((dek, record, true));
                }
                Err(StoreError::SequenceConflict) => {
                    stored =
                        self.store.get_cluster(&stored.id).await?.ok_or_else(|| {
                            refused("the cluster vanished while its keys were being sealed")
                        })?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A manager certificate for `node_id` with a new key, asked of the cluster's leader as a
    /// node asks for one (when the external CA did not sign for this manager directly): the node written with a certificate request (PENDING, as a join with
    /// the manager token makes it, or RENEW when the node exists), then signed by the leader's
    /// issuance — through the external CA with the leader's client identity. Waits at most
    /// [`THROUGH_LEADER_TIMEOUT`]; every failure is worth another attempt (a new key and
    /// request), but a removal or demotion of the node, which the next attempt sees.
    async fn issue_through_leader(
        &self,
        root: &ApiRootCa,
        expiry: Duration,
        node_id: &str,
        cluster_id: &str,
    ) -> Result<OwnCert, BootstrapError> {
        let unavailable = |m: String| BootstrapError::Unavailable(m);
        let ca =
            RootCa::from_api_reusing_with(None, root, expiry, self.clock.now(), self.keys.external_keys())
                .map_err(|e| refused(format!("the cluster root CA is unusable: {e}")))?;
        let (csr, key) = new_key_and_csr()
            .map_err(|e| refused(format!("cannot make a key and certificate request: {e}")))?;
        // The node as of the watch's start: no answer to the request is missed.
        let (snap, mut watch) = self.store.view_and_watch(WatchFilter::Node(node_id.to_string())).await?;
        let old = snap.nodes.into_iter().find(|n| n.id == node_id);
        let cluster =
            self.store.get_cluster(cluster_id).await?.ok_or_else(|| {
                refused("the cluster vanished while this manager's certificate was asked for")
            })?;
        not_removed_or_demoted(&cluster, old.as_ref(), node_id)?;
        let op = match old {
            Some(mut n) => {
                // A renewal is signed for the node's current role.
                if n.role != Role::Manager.to_proto() {
                    return Err(unavailable(format!(
                        "this manager's node {node_id} is not a manager yet (its role change is pending); trying again"
                    )));
                }
                n.certificate = Some(swarmca_core::policy::renew_request(&n, csr.clone()));
                Op::UpdateNode(n)
            }
            None => Op::CreateNode(Node {
                vxlanudp_port: cluster.vxlanudp_port,
                ..pending_manager_node(node_id, &csr)
            }),
        };
        match self.store.commit(vec![op]).await {
            Ok(_) => {}
            Err(StoreError::NotExist | StoreError::Exists) => {
                return Err(unavailable(format!(
                    "this manager's node {node_id} changed while its certificate was asked for; trying again"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        info!(node = %node_id, "the cluster's leader asks the external CA for this manager's certificate; waiting");
        let answer = async {
            // Writes made before this request (an earlier attempt's, answered late) are passed
            // over; once the request is seen, another request means it was replaced.
            let mut seen = false;
            loop {
                let n = match watch.next().await {
                    Some(Event::CreateNode(n) | Event::UpdateNode(n)) => n,
                    Some(Event::DeleteNode(_)) => {
                        return Err(unavailable(format!(
                            "this manager's node {node_id} was deleted while it waited for its certificate"
                        )))
                    }
                    Some(_) => continue,
                    None => {
                        return Err(unavailable("the store stopped reporting this manager's node".into()))
                    }
                };
                let c = n.certificate.clone().unwrap_or_default();
                if c.csr != csr {
                    if seen {
                        return Err(unavailable(
                            "this manager's certificate request was replaced; trying again".into(),
                        ));
                    }
                    continue;
                }
                seen = true;
                let status = c.status.unwrap_or_default();
                if status.state == State::Issued as i32 && !c.certificate.is_empty() {
                    // Removed or demoted while it waited: the certificate is not used.
                    let cluster = self.store.get_cluster(cluster_id).await?.ok_or_else(|| {
                        refused("the cluster vanished while this manager's certificate was asked for")
                    })?;
                    not_removed_or_demoted(&cluster, Some(&n), node_id)?;
                    return Ok(c.certificate);
                }
                if status.state == State::Failed as i32 {
                    return Err(unavailable(format!(
                        "the cluster's CA did not sign this manager's certificate: {}",
                        status.err
                    )));
                }
            }
        };
        let cert = tokio::time::timeout(THROUGH_LEADER_TIMEOUT, answer).await.map_err(|_| {
            unavailable(format!(
                "no leader had this manager's certificate signed within {} s; is another manager of this cluster running, and its external CA answering?",
                THROUGH_LEADER_TIMEOUT.as_secs()
            ))
        })??;
        ca.check_issued(&cert, &csr, node_id, Role::Manager, cluster_id, self.clock.now())
            .map_err(|e| unavailable(format!("the certificate issued for this manager is unusable: {e}")))?;
        Ok(OwnCert { cert, key: zeroize::Zeroizing::new(key), csr })
    }

    /// A manager certificate for `node_id` with a new key: through the cluster's external CAs
    /// when one is configured for this root, otherwise signed by the root key.
    async fn issue(
        &self,
        root: &ApiRootCa,
        external: &[ApiExternalCa],
        expiry: Duration,
        node_id: &str,
        cluster_id: &str,
        client: Option<(&[u8], &[u8])>,
    ) -> Result<OwnCert, BootstrapError> {
        let now = self.clock.now();
        let ca = RootCa::from_api_reusing_with(None, root, expiry, now, self.keys.external_keys())
            .map_err(|e| refused(format!("the cluster root CA is unusable: {e}")))?;
        let (csr, key) = new_key_and_csr()
            .map_err(|e| refused(format!("cannot make a key and certificate request: {e}")))?;
        // During a root rotation, as the leader's signer does: the rotation target's key, or
        // the external CAs listed for the target, with the cross-signed target appended.
        let urls = filter_external_ca_urls(crate::issuers::signing_root(root), &root.ca_cert, external);
        let cert = if !urls.is_empty() {
            let mut roots = certs_der(&root.ca_cert);
            if let Some(r) = &root.root_rotation {
                roots.extend(certs_der(&r.ca_cert));
            }
            // A certificate and key that do not go together (a crash between writing the two
            // files) are no identity to present: the request goes without one.
            let tls = client_tls_config(&roots, client)
                .or_else(|e| match client {
                    Some(_) => {
                        warn!(error = %e, "this manager's certificate and key cannot be presented to the external CA; asking without a client certificate");
                        client_tls_config(&roots, None)
                    }
                    None => Err(e),
                })
                .map_err(|e| refused(format!("no TLS configuration for the external CA: {e}")))?;
            let ext = ExternalCa::new(urls, ca.intermediates_pem().to_vec(), Some(tls), OWN_CERT_TIMEOUT);
            let req = SignRequest::node(&csr, node_id, Role::Manager, cluster_id);
            // Tried again, however the CA answered: a refusal is often mended on the CA's side
            // (its signing profile, its client list), and the manager then starts without
            // being restarted. The message says which kind of failure it is.
            let cert = ext.sign(&req).await.map_err(|e| {
                BootstrapError::Unavailable(if e.is_recoverable() {
                    format!("the external CA did not answer this manager's certificate request: {e}")
                } else {
                    format!(
                        "the external CA refused this manager's certificate request: {e}; check its signing configuration (this manager keeps asking)"
                    )
                })
            })?;
            // Like a refusal, tried again (with a new key and request) until the CA signs.
            ca.check_issued(&cert, &csr, node_id, Role::Manager, cluster_id, now).map_err(|e| {
                BootstrapError::Unavailable(format!(
                    "the external CA returned an unusable certificate for this manager: {e}"
                ))
            })?;
            cert
        } else if ca.can_sign() {
            ca.sign_csr(&csr, node_id, Role::Manager, cluster_id, now, self.serial()?)
                .map_err(|e| refused(format!("cannot sign this manager's certificate: {e}")))?
        } else {
            return Err(refused(
                "the cluster root CA has no key here and no external CA is configured for it; cannot issue this manager's certificate",
            ));
        };
        Ok(OwnCert { cert, key: zeroize::Zeroizing::new(key), csr })
    }

    fn serial(&self) -> Result<[u8; 20], BootstrapError> {
        draw(self.entropy).map_err(|e| refused(format!("entropy: {e}")))
    }

    fn fresh_node_id(&self) -> Result<String, BootstrapError> {
        match self.new_node_id {
            Some(id) => Ok(id.to_string()),
            None => self.new_id(),
        }
    }

    fn new_id(&self) -> Result<String, BootstrapError> {
        with_entropy(self.entropy, swarmca_core::id::new_id).map_err(|e| refused(format!("entropy: {e}")))
    }
}

/// Refuses `node_id` when `cluster` blacklists it (removed) or its stored `node` is no longer
/// meant to be a manager (demoted).
fn not_removed_or_demoted(
    cluster: &Cluster,
    node: Option<&Node>,
    node_id: &str,
) -> Result<(), BootstrapError> {
    const ANEW: &str = "move its certificates directory away and start it again to join as a new node";
    if cluster.blacklisted_certificates.contains_key(node_id) {
        return Err(BootstrapError::Removed(format!(
            "this manager's node {node_id} was removed from the cluster; {ANEW}"
        )));
    }
    if node.is_some_and(|n| n.spec.as_ref().map(|s| s.desired_role) != Some(Role::Manager.to_proto())) {
        return Err(BootstrapError::Removed(format!(
            "this manager's node {node_id} was demoted to a worker; promote it again (`swarmca node promote {node_id}`), or {ANEW}"
        )));
    }
    Ok(())
}

/// A manager's key sealed for its file.
pub fn seal_own_key(
    dek: &DataKey,
    cluster_id: &str,
    key_pem: &[u8],
    entropy: &SharedEntropy,
) -> Result<Vec<u8>, SealError> {
    with_entropy(entropy, |e| dek.seal(Purpose::NodeKey, cluster_id, key_pem, e))
}

/// The clear PEM of a manager's key file: opened under the data key (or one of `keks`, for a
/// file sealed by an earlier version of this format), or taken as it is when an earlier
/// version wrote it in clear.
fn open_own_key(dek: &DataKey, keks: &[Kek], cluster_id: &str, file: Vec<u8>) -> Result<Vec<u8>, SealError> {
    if !is_sealed(&file) {
        return Ok(file);
    }
    let mut last = match dek.open(Purpose::NodeKey, cluster_id, &file) {
        Ok(key) => return Ok(key.to_vec()),
        Err(e) => e,
    };
    for kek in keks {
        match kek.open_node_key(cluster_id, &file) {
            Ok(key) => return Ok(key.to_vec()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Whether `key_pem` is the private key of the first certificate of `cert_pem` (false when
/// either does not parse).
fn key_matches_cert(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    let Some(der) = certs_der(cert_pem).into_iter().next() else { return false };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else { return false };
    let Ok(key) = std::str::from_utf8(key_pem)
        .map_err(|_| ())
        .and_then(|k| rcgen::KeyPair::from_pem(k).map_err(|_| ()))
    else {
        return false;
    };
    rcgen::PublicKeyData::subject_public_key_info(&key) == cert.public_key().raw
}

/// A new P-256 key and a certificate request for it with an empty subject (the CA sets the
/// subject), as SwarmKit nodes make them: (CSR PEM, key PEM).
pub fn new_key_and_csr() -> Result<(Vec<u8>, Vec<u8>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?.pem()?.into_bytes();
    Ok((csr, key.serialize_pem().into_bytes()))
}

/// A certificate issued to this manager, with its new key and the CSR it was made from.
struct OwnCert {
    cert: Vec<u8>,
    key: zeroize::Zeroizing<Vec<u8>>,
    csr: Vec<u8>,
}

/// The node of a manager holding `cert`, issued for `csr`.
fn manager_node(node_id: &str, csr: Vec<u8>, cert: Vec<u8>) -> Node {
    let mut node = manager_node_in(node_id, csr, State::Issued);
    let issued = cert.clone();
    if let Some(c) = node.certificate.as_mut() {
        c.certificate = cert;
    }
    swarmca_core::policy::note_issued(&mut node, &issued);
    node
}

/// The node of a new manager asking for its certificate: what a join with the manager token
/// writes (PENDING, accepted, the node ID as CN).
fn pending_manager_node(node_id: &str, csr: &[u8]) -> Node {
    manager_node_in(node_id, csr.to_vec(), State::Pending)
}

/// An accepted manager node whose certificate for `csr` is in `state`, with no bytes yet.
fn manager_node_in(node_id: &str, csr: Vec<u8>, state: State) -> Node {
    Node {
        id: node_id.to_string(),
        role: Role::Manager.to_proto(),
        spec: Some(NodeSpec {
            desired_role: Role::Manager.to_proto(),
            membership: Membership::Accepted as i32,
            ..Default::default()
        }),
        certificate: Some(Certificate {
            role: Role::Manager.to_proto(),
            csr,
            status: Some(IssuanceStatus { state: state as i32, err: String::new() }),
            certificate: Vec::new(),
            cn: node_id.to_string(),
        }),
        ..Default::default()
    }
}

/// What a manager's own certificate says.
struct CertFacts {
    cn: String,
    org: String,
    past_half_life: bool,
}

fn cert_facts(pem: &[u8], now: SystemTime) -> Option<CertFacts> {
    let der = certs_der(pem).into_iter().next()?;
    let (_, c) = X509Certificate::from_der(&der).ok()?;
    let cn = c.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let org = c.subject().iter_organization().next()?.as_str().ok()?.to_string();
    let nb = c.validity().not_before.timestamp();
    let na = c.validity().not_after.timestamp();
    let now = i64::try_from(now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs()).ok()?;
    Some(CertFacts { cn, org, past_half_life: now > nb + (na - nb) / 2 })
}

#[cfg(test)]
mod tests;
