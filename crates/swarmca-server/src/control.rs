//! Cluster administration: what SwarmKit's control API does for the CA (join-token rotation,
//! node removal with blacklisting, promote/demote, acceptance, certificate expiry, autolock),
//! as store read-modify-write operations retried on sequence conflicts. Used by the admin gRPC
//! service on the control socket and by the simulator's admin actor.

use std::sync::Arc;
use std::time::Duration;

use swarmca_core::cluster::{autolock_on, UNLOCK_SUBSYSTEM};
use swarmca_core::policy::issuance_state;
use swarmca_core::role::Role;
use swarmca_core::rootca::{digest, digest_string, MIN_NODE_CERT_EXPIRY};
use swarmca_core::token::generate_join_token;
use swarmca_proto::admin;
use swarmca_store::{Node, Op, StoreError};
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::{Availability, Membership};
use swarmca_types::{BlacklistedCertificate, CaConfig, Cluster, EncryptionConfig, EncryptionKey};
use tracing::info;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::env::{draw, with_entropy};
use crate::error::ServerError;
use crate::issuers::IssuerView;
use crate::server::CaServer;

/// Read-modify-write attempts before giving up with `Contention`.
const ATTEMPTS: usize = 32;

/// Administration of one cluster, bound to the server that serves it.
#[derive(Clone)]
pub struct Control {
    pub(crate) server: CaServer,
    self_node_id: Option<String>,
    leader: Option<LeaderLookup>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("self_node_id", &self.self_node_id).finish_non_exhaustive()
    }
}

/// Who leads the managers now (a node ID), for `node ls`; `None` when unknown.
pub type LeaderLookup =
    Arc<dyn Fn() -> swarmca_store::BoxFuture<'static, Option<String>> + Send + Sync + 'static>;

fn precondition(msg: String) -> ServerError {
    ServerError::FailedPrecondition(msg)
}

impl Control {
    /// Administration through `server`; `self_node_id` is the manager serving the socket, which
    /// can never be removed through it.
    pub fn new(server: CaServer, self_node_id: Option<String>) -> Control {
        Control { server, self_node_id, leader: None }
    }

    /// Names the leader through `lookup` (several managers on a shared store). Without it the
    /// serving manager is the leader.
    pub fn with_leader_lookup(mut self, lookup: LeaderLookup) -> Control {
        self.leader = Some(lookup);
        self
    }

    async fn leader_id(&self) -> Option<String> {
        match &self.leader {
            Some(lookup) => lookup().await,
            None => self.self_node_id.clone(),
        }
    }

    pub(crate) fn store(&self) -> &dyn swarmca_store::Store {
        &*self.server.inner.deps.store
    }

    /// Applies `f` to the cluster and commits, retrying on conflicts.
    pub(crate) async fn update_cluster<T>(
        &self,
        mut f: impl FnMut(&mut Cluster) -> Result<T, ServerError>,
    ) -> Result<(T, Cluster), ServerError> {
        for _ in 0..ATTEMPTS {
            let mut c = self.server.cluster().await?;
            let out = f(&mut c)?;
            match self.store().commit(vec![Op::UpdateCluster(c.clone())]).await {
                Ok(_) => return Ok((out, c)),
                Err(StoreError::SequenceConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::Contention("cluster update kept conflicting".into()))
    }

    /// Applies `f` to node `id` and commits, retrying on conflicts.
    async fn update_node(
        &self,
        id: &str,
        mut f: impl FnMut(&mut Node) -> Result<(), ServerError>,
    ) -> Result<Node, ServerError> {
        for _ in 0..ATTEMPTS {
            let mut n = self.node(id).await?;
            f(&mut n)?;
            match self.store().commit(vec![Op::UpdateNode(n.clone())]).await {
                Ok(_) => return Ok(n),
                Err(StoreError::SequenceConflict) => continue,
                Err(StoreError::NotExist) => return Err(ServerError::NodeNotFound),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::Contention(format!("update of node {id} kept conflicting")))
    }

    async fn node(&self, id: &str) -> Result<Node, ServerError> {
        self.store().get_node(id).await?.ok_or(ServerError::NodeNotFound)
    }

    /// The join token for `role`, after generating a new one if `rotate`.
    pub async fn join_token(&self, role: Role, rotate: bool) -> Result<String, ServerError> {
        if !rotate {
            let c = self.server.cluster().await?;
            let t = c.root_ca.and_then(|r| r.join_tokens).unwrap_or_default();
            return Ok(match role {
                Role::Worker => t.worker,
                Role::Manager => t.manager,
            });
        }
        let entropy = self.server.inner.deps.entropy.clone();
        let (token, _) = self
            .update_cluster(|c| {
                let fips = c.fips;
                let root = c.root_ca.get_or_insert_with(Default::default);
                let d = digest(&root.ca_cert);
                let token = with_entropy(&entropy, |e| generate_join_token(&d, fips, e))?;
                let t = root.join_tokens.get_or_insert_with(Default::default);
                match role {
                    Role::Worker => t.worker = token.clone(),
                    Role::Manager => t.manager = token.clone(),
                }
                Ok(token)
            })
            .await?;
        info!(role = role.ou(), "join token rotated");
        Ok(token)
    }

    /// Every node, in ID order.
    pub async fn list_nodes(&self) -> Result<Vec<admin::NodeInfo>, ServerError> {
        let snap = self.store().view(swarmca_store::WatchFilter::All).await?;
        let view = self.issuer_view(&snap);
        let leader = self.leader_id().await;
        Ok(snap.nodes.iter().map(|n| self.info(n, false, &view, leader.as_deref())).collect())
    }

    /// One node, with its certificate.
    pub async fn inspect_node(&self, id: &str) -> Result<admin::NodeInfo, ServerError> {
        let n = self.node(id).await?;
        let leader = self.leader_id().await;
        Ok(self.info(&n, true, &self.cluster_issuers().await, leader.as_deref()))
    }

    /// Removes a node and blacklists its certificates until they expire. Managers need
    /// `force`; the serving manager cannot be removed.
    pub async fn remove_node(&self, id: &str, force: bool) -> Result<admin::NodeInfo, ServerError> {
        if self.self_node_id.as_deref() == Some(id) {
            return Err(precondition(format!(
                "node {id} is the manager serving this cluster; it cannot be removed"
            )));
        }
        for _ in 0..ATTEMPTS {
            let node = self.node(id).await?;
            if node.role == Role::Manager.to_proto() && !force {
                return Err(precondition(format!("node {id} is a manager; demote it first or use --force")));
            }
            let mut cluster = self.server.cluster().await?;
            // Until every certificate the node was ever issued has expired: an earlier one can
            // outlive the current one (the validity was shortened since), and a node in the
            // middle of a renewal stores none. Unknown (a node recorded by an earlier version
            // in the middle of a renewal): the entry never expires, as in SwarmKit.
            let expiry = swarmca_core::policy::blacklist_until(&node)
                .map(|s| prost_types::Timestamp { seconds: s, nanos: 0 });
            cluster.blacklisted_certificates.insert(node.id.clone(), BlacklistedCertificate { expiry });
            let info = self.info(&node, false, &IssuerView::default(), None);
            match self.store().commit(vec![Op::UpdateCluster(cluster), Op::DeleteNode(node)]).await {
                Ok(_) => {
                    info!(node = %id, "node removed; its certificates are blacklisted");
                    return Ok(info);
                }
                Err(StoreError::SequenceConflict) => continue,
                Err(StoreError::NotExist) => return Err(ServerError::NodeNotFound),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::Contention(format!("removal of node {id} kept conflicting")))
    }

    /// Sets the node's role; it gets a certificate for it at its next renewal.
    pub async fn set_role(&self, id: &str, role: Role) -> Result<admin::NodeInfo, ServerError> {
        let n = self
            .update_node(id, |n| {
                let spec = n.spec.get_or_insert_with(Default::default);
                spec.desired_role = role.to_proto();
                n.role = role.to_proto();
                Ok(())
            })
            .await?;
        info!(node = %id, role = role.ou(), "node role changed; effective at its next renewal");
        let leader = self.leader_id().await;
        Ok(self.info(&n, false, &self.cluster_issuers().await, leader.as_deref()))
    }

    /// Marks a node's membership ACCEPTED (it is then signed if its request is pending).
    pub async fn accept_node(&self, id: &str) -> Result<admin::NodeInfo, ServerError> {
        let n = self
            .update_node(id, |n| {
                n.spec.get_or_insert_with(Default::default).membership = Membership::Accepted as i32;
                Ok(())
            })
            .await?;
        let leader = self.leader_id().await;
        Ok(self.info(&n, false, &self.cluster_issuers().await, leader.as_deref()))
    }

    /// Cluster summary.
    pub async fn cluster_info(&self) -> Result<admin::ClusterInfo, ServerError> {
        let c = self.server.cluster().await?;
        let snap = self.store().view(swarmca_store::WatchFilter::All).await?;
        Ok(self.cluster_summary(&c, &snap.nodes))
    }

    /// Changes the node certificate validity (at least 1 h), autolock, and/or the external CA
    /// list (CFSSL URLs, each optionally bound to the root it signs for).
    pub async fn update_cluster_settings(
        &self,
        cert_expiry: Option<Duration>,
        autolock: Option<bool>,
        external_cas: Option<Vec<admin::ExternalCaSpec>>,
    ) -> Result<admin::ClusterInfo, ServerError> {
        if let Some(list) = &external_cas {
            for e in list {
                if !(e.url.starts_with("https://") || e.url.starts_with("http://")) {
                    return Err(ServerError::InvalidSetting(format!(
                        "external CA URL must start with https:// or http://: {:?}",
                        e.url
                    )));
                }
            }
        }
        if let Some(d) = cert_expiry {
            if d < MIN_NODE_CERT_EXPIRY {
                return Err(ServerError::InvalidSetting("minimum certificate expiry time is: 1h0m0s".into()));
            }
            // Beyond the root's own validity every certificate would outlive its issuer.
            if d > swarmca_core::rootca::ROOT_CA_VALIDITY {
                return Err(ServerError::InvalidSetting(
                    "maximum certificate expiry time is 20 years (the root CA validity)".into(),
                ));
            }
        }
        let entropy = self.server.inner.deps.entropy.clone();
        let (_, c) = self
            .update_cluster(|c| {
                let spec = c.spec.get_or_insert_with(Default::default);
                if let Some(d) = cert_expiry {
                    let ca = spec.ca_config.get_or_insert_with(CaConfig::default);
                    ca.node_cert_expiry = prost_types::Duration::try_from(d).ok();
                }
                if let Some(list) = &external_cas {
                    let ca = spec.ca_config.get_or_insert_with(CaConfig::default);
                    ca.external_cas = list
                        .iter()
                        .map(|e| swarmca_types::ExternalCa {
                            url: e.url.clone(),
                            ca_cert: e.ca_cert.clone(),
                            ..Default::default()
                        })
                        .collect();
                }
                if let Some(on) = autolock {
                    spec.encryption_config = Some(EncryptionConfig { auto_lock_managers: on });
                    let has_key = c.unlock_keys.iter().any(|k| k.subsystem == UNLOCK_SUBSYSTEM);
                    if on && !has_key {
                        let key = draw::<32>(&entropy)?;
                        c.unlock_keys.push(unlock_key(key.to_vec()));
                    }
                }
                Ok(())
            })
            .await?;
        info!(?cert_expiry, ?autolock, external_cas = ?external_cas.as_ref().map(Vec::len), "cluster settings updated");
        let snap = self.store().view(swarmca_store::WatchFilter::All).await?;
        Ok(self.cluster_summary(&c, &snap.nodes))
    }

    /// The human-readable manager unlock key (empty when autolock is off), rotated first if
    /// asked.
    pub async fn unlock_key(&self, rotate: bool) -> Result<admin::UnlockKeyResponse, ServerError> {
        let entropy = self.server.inner.deps.entropy.clone();
        let c = if rotate {
            self.update_cluster(|c| {
                if !autolock_on(c) {
                    return Err(precondition("autolock is not enabled; nothing to rotate".into()));
                }
                let key = draw::<32>(&entropy)?;
                c.unlock_keys.retain(|k| k.subsystem != UNLOCK_SUBSYSTEM);
                c.unlock_keys.push(unlock_key(key.to_vec()));
                Ok(())
            })
            .await?
            .1
        } else {
            self.server.cluster().await?
        };
        let on = autolock_on(&c);
        let key = c.unlock_keys.iter().find(|k| k.subsystem == UNLOCK_SUBSYSTEM);
        Ok(admin::UnlockKeyResponse {
            unlock_key: match (on, key) {
                (true, Some(k)) => swarmca_core::seal::UnlockKey::from_bytes(&k.key)
                    .map_err(|e| ServerError::Internal(format!("stored unlock key: {e}")))?
                    .to_text()
                    .to_string(),
                _ => String::new(),
            },
            autolock: on,
        })
    }

    fn cert_expiry(&self, c: &Cluster) -> Duration {
        swarmca_core::rootca::cluster_cert_expiry(c)
    }

    fn cluster_summary(&self, c: &Cluster, nodes: &[Node]) -> admin::ClusterInfo {
        let root = c.root_ca.clone().unwrap_or_default();
        let pending = nodes
            .iter()
            .filter(|n| {
                let s = issuance_state(n);
                s == State::Pending as i32 || s == State::Renew as i32
            })
            .count();
        admin::ClusterInfo {
            id: c.id.clone(),
            root_ca_digest: digest_string(&root.ca_cert),
            root_ca_pem: root.ca_cert,
            cert_expiry_secs: self.cert_expiry(c).as_secs(),
            autolock: autolock_on(c),
            version: swarmca_store::version_of(c.meta.as_ref()),
            nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            pending: u32::try_from(pending).unwrap_or(u32::MAX),
            external_cas: c
                .spec
                .as_ref()
                .and_then(|s| s.ca_config.as_ref())
                .map(|ca| {
                    ca.external_cas
                        .iter()
                        .map(|e| admin::ExternalCaSpec {
                            url: crate::external::redact_url(&e.url),
                            ca_cert: e.ca_cert.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            signer_problem: self.server.signer_problem().unwrap_or_default(),
        }
    }

    /// The issuers of the served cluster as found in `snap`.
    fn issuer_view(&self, snap: &swarmca_store::Snapshot) -> IssuerView {
        let id = self.server.cluster_id();
        snap.clusters.iter().find(|c| c.id == id).map(IssuerView::of).unwrap_or_default()
    }

    /// The issuers of the served cluster, read now (unknown if unreadable).
    async fn cluster_issuers(&self) -> IssuerView {
        self.server.cluster().await.map(|c| IssuerView::of(&c)).unwrap_or_default()
    }

    pub(crate) fn info(
        &self,
        n: &Node,
        with_cert: bool,
        issuers: &IssuerView,
        leader: Option<&str>,
    ) -> admin::NodeInfo {
        let cert = n.certificate.clone().unwrap_or_default();
        let status = cert.status.clone().unwrap_or_default();
        let spec = n.spec.clone().unwrap_or_default();
        let summary = leaf_summary(&cert.certificate);
        admin::NodeInfo {
            id: n.id.clone(),
            role: n.role,
            desired_role: spec.desired_role,
            membership: if spec.membership == Membership::Accepted as i32 { "accepted" } else { "pending" }
                .into(),
            state: state_name(status.state).into(),
            detail: if status.state == State::Pending as i32 || status.state == State::Renew as i32 {
                self.server.signer_problem().map(|p| format!("waiting: {p}")).unwrap_or_default()
            } else {
                status.err
            },
            not_before: summary.as_ref().map_or(0, |s| s.not_before),
            not_after: summary.as_ref().map_or(0, |s| s.not_after),
            cert_fingerprint: summary.as_ref().map(|s| s.fingerprint.clone()).unwrap_or_default(),
            issuer: summary.map(|s| s.issuer).unwrap_or_default(),
            availability: Availability::try_from(spec.availability)
                .map_or("unknown", |a| match a {
                    Availability::Active => "active",
                    Availability::Pause => "pause",
                    Availability::Drain => "drain",
                })
                .into(),
            is_self: self.self_node_id.as_deref() == Some(n.id.as_str()),
            certificate: if with_cert { cert.certificate } else { Vec::new() },
            issuer_state: issuers.state_of(n).into(),
            is_leader: leader == Some(n.id.as_str()),
        }
    }
}

fn unlock_key(key: Vec<u8>) -> EncryptionKey {
    EncryptionKey { subsystem: UNLOCK_SUBSYSTEM.into(), key, ..Default::default() }
}

/// Lower-case name of an issuance state.
pub fn state_name(s: i32) -> &'static str {
    match State::try_from(s) {
        Ok(State::Unknown) => "unknown",
        Ok(State::Renew) => "renew",
        Ok(State::Pending) => "pending",
        Ok(State::Issued) => "issued",
        Ok(State::Failed) => "failed",
        Ok(State::Rotate) => "rotate",
        Err(_) => "invalid",
    }
}

struct LeafSummary {
    not_before: i64,
    not_after: i64,
    fingerprint: String,
    issuer: String,
}

/// Validity, fingerprint and issuer CN of the first certificate in a PEM bundle.
fn leaf_summary(pem: &[u8]) -> Option<LeafSummary> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, c) = X509Certificate::from_der(&p.contents).ok()?;
    let issuer = c.issuer().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or("").to_string();
    Some(LeafSummary {
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        fingerprint: digest_string(&p.contents),
        issuer,
    })
}
