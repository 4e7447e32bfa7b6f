//! The `CA` and `NodeCA` gRPC services (docs/behaviour.md §3.4, §3.5, §3.9, §3.10).

use std::time::Duration;

use swarmca_core::csr::MAX_CSR_SIZE;
use swarmca_core::id::new_id;
use swarmca_core::identity::PeerIdentity;
use swarmca_core::policy::is_final_state;
use swarmca_core::role::{Role, MANAGER_OU, WORKER_OU};
use swarmca_core::token::token_matches;
use swarmca_proto::ca_server::Ca;
use swarmca_proto::node_ca_server::NodeCa;
use swarmca_store::{Event, Node, Op, StoreError, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{
    Certificate, GetRootCaCertificateRequest, GetRootCaCertificateResponse, GetUnlockKeyRequest,
    GetUnlockKeyResponse, IssuanceStatus, IssueNodeCertificateRequest, IssueNodeCertificateResponse,
    JoinTokens, NodeCertificateStatusRequest, NodeCertificateStatusResponse, NodeSpec, NodeTlsInfo, Version,
};
use tonic::{Request, Response, Status};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::error::ServerError;
use crate::external::certs_der;
use crate::peer::{authorize_forwarded_role_and_org, forwarded_info, CallInfo};
use crate::server::{CaServer, PeerFacts};

/// Node-ID collisions are retried this many times (4 attempts in all), as in the original.
const NODE_ID_ATTEMPTS: usize = 4;
/// Read-modify-write retries of a renewal that keeps meeting concurrent writers.
const RENEW_ATTEMPTS: usize = 16;
/// Attempts at recording a node's certificate issuer against concurrent writers.
const TLS_INFO_ATTEMPTS: usize = 4;

impl CaServer {
    /// The caller's chain, verified against the current roots, with what it proves: the
    /// caller's identity and the issuer of its leaf. A chain already verified against these
    /// roots and still valid is answered from memory.
    fn direct_facts(&self, call: &CallInfo<'_>) -> Result<(Vec<Vec<u8>>, PeerFacts), String> {
        let chain = self.inner.deps.peers.chain(call).ok_or_else(String::new)?;
        let root = self.inner.read_signer().trust.clone();
        let root = root.ok_or_else(|| ": no root CA loaded".to_string())?;
        let now = self.inner.deps.clock.now();
        let memo = || self.inner.verified_peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(facts) = memo().get(&root, &chain, now) {
            return Ok((chain, facts));
        }
        // Verified outside the lock: concurrent callers do not queue behind one another.
        let (identity, issuer) = root.verify_peer_issuer(&chain, now).map_err(|e| format!(": {e}"))?;
        let facts = PeerFacts { identity, issuer };
        memo().insert(&root, &chain, facts.clone());
        Ok((chain, facts))
    }

    /// Verifies the caller's certificate chain against the current roots.
    fn direct_identity(&self, call: &CallInfo<'_>) -> Result<PeerIdentity, String> {
        self.direct_facts(call).map(|(_, facts)| facts.identity)
    }

    /// The issuer of the certificate a caller authenticated with, when the caller is itself
    /// (not forwarding for) an authenticated node: (node ID, TLS info, its leaf) when one of
    /// the known roots (or the rotation target, or the chain's own intermediates) issued it.
    fn direct_tls_info(&self, call: &CallInfo<'_>) -> Option<(String, NodeTlsInfo, Vec<u8>)> {
        if forwarded_info(call.metadata).is_some() {
            return None;
        }
        let (chain, facts) = self
            .direct_facts(call)
            .inspect_err(|e| debug!(error = %e, "no TLS info: caller not verified"))
            .ok()?;
        let (subject, spki) = facts.issuer;
        let info = NodeTlsInfo {
            trust_root: Vec::new(),
            cert_issuer_subject: subject,
            cert_issuer_public_key: spki,
        };
        Some((facts.identity.node_id, info, chain.into_iter().next()?))
    }

    /// Records, in the background, the TLS info of a node that authenticated with `presented`
    /// (its leaf): the issuer of that certificate and, when given in `info.trust_root`, the
    /// root bundle it just fetched (SwarmKit's agents report the same over their dispatcher
    /// session). Only a node's *current* certificate counts: a connection still open with an
    /// older one must not undo a newer report, and a certificate the node was sent but never
    /// used proves nothing. Best effort: a node that changed meanwhile is re-read a few times,
    /// then left for its next call.
    fn note_tls_info(&self, node_id: String, mut info: NodeTlsInfo, presented: Vec<u8>) {
        let server = self.clone();
        tokio::spawn(async move {
            let store = &server.inner.deps.store;
            for _ in 0..TLS_INFO_ATTEMPTS {
                let Ok(Some(mut node)) = store.get_node(&node_id).await else { return };
                let current = node.certificate.as_ref().map(|c| certs_der(&c.certificate));
                if current.as_ref().and_then(|c| c.first()) != Some(&presented) {
                    debug!(
                        node = %node_id,
                        presented = %swarmca_core::rootca::digest_string(&presented),
                        current = ?current.as_ref().and_then(|c| c.first()).map(|c| swarmca_core::rootca::digest_string(c)),
                        "not recording TLS info: authenticated with another than its current certificate"
                    );
                    return;
                }
                let desc = node.description.get_or_insert_with(Default::default);
                if info.trust_root.is_empty() {
                    info.trust_root =
                        desc.tls_info.as_ref().map(|t| t.trust_root.clone()).unwrap_or_default();
                }
                if desc.tls_info.as_ref() == Some(&info) {
                    return;
                }
                desc.tls_info = Some(info.clone());
                match store.commit(vec![Op::UpdateNode(node)]).await {
                    Err(StoreError::SequenceConflict) => continue,
                    Ok(_) => debug!(node = %node_id, "recorded the node's certificate issuer"),
                    Err(e) => debug!(node = %node_id, error = %e, "could not record the certificate issuer"),
                }
                return;
            }
        });
    }

    /// The renewal identity of the caller, if it is an authorized node of this cluster.
    async fn renewal_identity(&self, call: &CallInfo<'_>) -> Result<Option<String>, ServerError> {
        let direct = self.direct_identity(call);
        let fwd = forwarded_info(call.metadata);
        if let (Err(why), None) = (&direct, &fwd) {
            // Neither verified nor forwarded: no identity to authorize (a join).
            if !why.is_empty() {
                debug!(reason = %why, "not a renewal: the caller's certificate is not valid here");
            }
            return Ok(None);
        }
        let blacklist = self.blacklist().await?;
        let org = self.cluster_id();
        for role in [WORKER_OU, MANAGER_OU] {
            let r = authorize_forwarded_role_and_org(
                direct.as_ref().map_err(String::as_str),
                fwd.as_ref(),
                &[role],
                &[MANAGER_OU],
                org,
                &blacklist,
            );
            match r {
                Ok(id) => {
                    // Only a node that is a manager now may forward another's renewal.
                    if let (Some(_), Ok(forwarder)) = (&fwd, &direct) {
                        self.stored_manager(&forwarder.node_id, "forwarding node").await?;
                    }
                    return Ok(Some(id));
                }
                Err(e) => debug!(role, reason = %e, "not a renewal"),
            }
        }
        Ok(None)
    }

    async fn issue(
        &self,
        call: &CallInfo<'_>,
        req: IssueNodeCertificateRequest,
    ) -> Result<IssueNodeCertificateResponse, ServerError> {
        if req.csr.is_empty() {
            return Err(ServerError::EmptyField);
        }
        if req.csr.len() > MAX_CSR_SIZE {
            return Err(ServerError::CsrTooLarge(req.csr.len()));
        }
        self.ready_tokens_soon().await?;
        if let Some(node_id) = self.renewal_identity(call).await? {
            tracing::Span::current().record("node", node_id.as_str());
            let tls_info =
                self.direct_tls_info(call).filter(|(id, ..)| *id == node_id).map(|(_, t, l)| (t, l));
            return self.renew(&node_id, req.csr, tls_info).await;
        }
        // Re-read the tokens under the lock: a stop since the first check gives Aborted.
        let tokens = self.ready_tokens()?;
        let Some(role) = token_role(&tokens, &req.token) else {
            warn!("join refused: no valid join token");
            return Err(ServerError::InvalidJoinToken);
        };
        tracing::Span::current().record("role", role.ou());
        let cluster = self.cluster().await?;
        // The tokens this server holds may lag the store: a manager whose cluster watch broke
        // serves with what it last saw until it has read the cluster again. The token must
        // also be current, for the same role, in the cluster just read, or a rotated token
        // would still let nodes in through such a manager.
        let stored = cluster.root_ca.as_ref().and_then(|r| r.join_tokens.clone()).unwrap_or_default();
        if token_role(&stored, &req.token) != Some(role) {
            warn!("join refused: the join token was rotated (this manager had not seen it yet)");
            return Err(ServerError::InvalidJoinToken);
        }
        let store = &self.inner.deps.store;
        for attempt in 0..NODE_ID_ATTEMPTS {
            let id = crate::env::with_entropy(&self.inner.deps.entropy, new_id)?;
            let node = Node {
                id: id.clone(),
                role: role.to_proto(),
                certificate: Some(Certificate {
                    role: role.to_proto(),
                    csr: req.csr.clone(),
                    status: Some(IssuanceStatus { state: State::Pending as i32, err: String::new() }),
                    certificate: Vec::new(),
                    cn: id.clone(),
                }),
                spec: Some(NodeSpec {
                    annotations: None,
                    desired_role: role.to_proto(),
                    membership: Membership::Accepted as i32,
                    availability: req.availability,
                }),
                vxlanudp_port: cluster.vxlanudp_port,
                ..Default::default()
            };
            match store.commit(vec![Op::CreateNode(node)]).await {
                Ok(_) => {
                    info!(node = %id, role = role.ou(), "node joined; certificate pending");
                    return Ok(IssueNodeCertificateResponse {
                        node_id: id,
                        node_membership: Membership::Accepted as i32,
                    });
                }
                Err(StoreError::Exists) if attempt + 1 < NODE_ID_ATTEMPTS => {
                    warn!(node = %id, "node ID collision; drawing another");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Exists.into())
    }

    /// `issueRenewCertificate`: replace the node's certificate request, role from `node.role`.
    /// `tls_info` names the issuer of the certificate the node authenticated with (and that
    /// leaf), recorded in the same write if that leaf is the node's current certificate.
    async fn renew(
        &self,
        node_id: &str,
        csr: Vec<u8>,
        tls_info: Option<(NodeTlsInfo, Vec<u8>)>,
    ) -> Result<IssueNodeCertificateResponse, ServerError> {
        let store = &self.inner.deps.store;
        for _ in 0..RENEW_ATTEMPTS {
            let Some(mut node) = store.get_node(node_id).await? else {
                return Err(ServerError::RenewNodeNotFound(node_id.to_string()));
            };
            tracing::Span::current().record("role", Role::from_proto(node.role).map_or("invalid", Role::ou));
            let current_leaf =
                node.certificate.as_ref().and_then(|c| certs_der(&c.certificate).into_iter().next());
            node.certificate = Some(swarmca_core::policy::renew_request(&node, csr.clone()));
            if let Some((t, leaf)) = &tls_info {
                if current_leaf.as_ref() == Some(leaf) {
                    let desc = node.description.get_or_insert_with(Default::default);
                    let trust_root = desc.tls_info.as_ref().map(|t| t.trust_root.clone()).unwrap_or_default();
                    desc.tls_info = Some(NodeTlsInfo { trust_root, ..t.clone() });
                }
            }
            let membership = node.spec.as_ref().map_or(0, |s| s.membership);
            match store.commit(vec![Op::UpdateNode(node)]).await {
                Ok(_) => {
                    info!(node = %node_id, "certificate renewal requested");
                    return Ok(IssueNodeCertificateResponse {
                        node_id: node_id.to_string(),
                        node_membership: membership,
                    });
                }
                Err(StoreError::SequenceConflict) => continue,
                Err(StoreError::NotExist) => return Err(ServerError::RenewNodeNotFound(node_id.to_string())),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::Contention(format!("renewal of node {node_id} kept conflicting")))
    }

    async fn status(
        &self,
        node_id: String,
        deadline: Option<Duration>,
    ) -> Result<NodeCertificateStatusResponse, ServerError> {
        if node_id.is_empty() {
            return Err(ServerError::EmptyField);
        }
        let cancel = self.running_cancel()?;
        let (snap, mut watch) =
            self.inner.deps.store.view_and_watch(WatchFilter::Node(node_id.clone())).await?;
        let node = snap.nodes.into_iter().find(|n| n.id == node_id).ok_or(ServerError::NodeNotFound)?;
        if let Some(resp) = final_response(&node) {
            return Ok(resp);
        }
        let wait = async {
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.wait_for(|c| *c) => return Err(ServerError::Cancelled),
                    ev = watch.next() => match ev {
                        None => return Err(ServerError::WatchClosed),
                        Some(Event::UpdateNode(n)) | Some(Event::CreateNode(n)) => {
                            if let Some(resp) = final_response(&n) {
                                return Ok(resp);
                            }
                        }
                        Some(Event::DeleteNode(_)) => return Err(ServerError::NodeNotFound),
                        Some(_) => {}
                    },
                }
            }
        };
        match deadline {
            Some(d) => tokio::time::timeout(d, wait).await.map_err(|_| ServerError::DeadlineExceeded)?,
            None => wait.await,
        }
    }

    /// Refuses `node_id` unless the store holds it as a manager now, meant to stay one: a
    /// certificate says what a node was when it was issued, and a demoted manager's stays valid
    /// until it expires (SwarmKit issue #1655: such a node could still fetch the unlock key).
    async fn stored_manager(&self, node_id: &str, what: &str) -> Result<(), ServerError> {
        let node = self.inner.deps.store.get_node(node_id).await?;
        let manager = Role::Manager.to_proto();
        let is_manager = node
            .as_ref()
            .is_some_and(|n| n.role == manager && n.spec.as_ref().is_some_and(|s| s.desired_role == manager));
        if is_manager {
            return Ok(());
        }
        warn!(
            node = node_id,
            what, "refused: its manager certificate is still valid, but it is no longer a manager"
        );
        Err(ServerError::PermissionDenied(format!(
            "{what} {node_id} is not a manager any more (demoted or removed)"
        )))
    }

    async fn unlock_key(&self, call: &CallInfo<'_>) -> Result<GetUnlockKeyResponse, ServerError> {
        let cluster = self.cluster().await?;
        let direct = self.direct_identity(call);
        let forwarded = forwarded_info(call.metadata);
        let id = authorize_forwarded_role_and_org(
            direct.as_ref().map_err(String::as_str),
            forwarded.as_ref(),
            &[MANAGER_OU],
            &[MANAGER_OU],
            self.cluster_id(),
            &cluster.blacklisted_certificates,
        )
        .map_err(|e| ServerError::PermissionDenied(e.to_string()))
        .inspect(|id| {
            tracing::Span::current().record("node", id.as_str());
        })?;
        self.stored_manager(&id, "node").await?;
        if let (Some(_), Ok(forwarder)) = (&forwarded, &direct) {
            self.stored_manager(&forwarder.node_id, "forwarding node").await?;
        }
        if let Some((id, info, leaf)) = self.direct_tls_info(call) {
            self.note_tls_info(id, info, leaf);
        }
        let version = Version { index: swarmca_store::version_of(cluster.meta.as_ref()) };
        let unlock_key = if swarmca_core::cluster::autolock_on(&cluster) {
            swarmca_core::cluster::unlock_key(&cluster).map(<[u8]>::to_vec).unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(GetUnlockKeyResponse { unlock_key, version: Some(version) })
    }
}

/// The role `token` joins as under `tokens` (manager first), if any; constant time per token.
fn token_role(tokens: &JoinTokens, token: &str) -> Option<Role> {
    if token_matches(&tokens.manager, token) {
        Some(Role::Manager)
    } else if token_matches(&tokens.worker, token) {
        Some(Role::Worker)
    } else {
        None
    }
}

/// The status response for a node in a final state.
fn final_response(node: &Node) -> Option<NodeCertificateStatusResponse> {
    let cert = node.certificate.as_ref()?;
    let status = cert.status.clone().unwrap_or_default();
    is_final_state(status.state)
        .then(|| NodeCertificateStatusResponse { status: Some(status), certificate: Some(cert.clone()) })
}

/// Parses the `grpc-timeout` header (e.g. `5S`, `250m`).
pub(crate) fn grpc_timeout(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Ca for CaServer {
    async fn get_root_ca_certificate(
        &self,
        request: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let root = self.root_ca().ok_or(ServerError::NoRoot)?;
        if let Some((id, mut info, leaf)) = self.direct_tls_info(&CallInfo::of(&request)) {
            info.trust_root = root.certs_pem().to_vec();
            self.note_tls_info(id, info, leaf);
        }
        Ok(Response::new(GetRootCaCertificateResponse { certificate: root.certs_pem().to_vec() }))
    }

    async fn get_unlock_key(
        &self,
        request: Request<GetUnlockKeyRequest>,
    ) -> Result<Response<GetUnlockKeyResponse>, Status> {
        let call = CallInfo::of(&request);
        let span = info_span!("rpc", method = "GetUnlockKey", node = tracing::field::Empty);
        Ok(Response::new(self.unlock_key(&call).instrument(span).await?))
    }
}

#[tonic::async_trait]
impl NodeCa for CaServer {
    async fn issue_node_certificate(
        &self,
        request: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let call = CallInfo::of(&request);
        let span = info_span!(
            "rpc",
            method = "IssueNodeCertificate",
            node = tracing::field::Empty,
            role = tracing::field::Empty
        );
        let resp = self.issue(&call, request.get_ref().clone()).instrument(span).await?;
        Ok(Response::new(resp))
    }

    async fn node_certificate_status(
        &self,
        request: Request<NodeCertificateStatusRequest>,
    ) -> Result<Response<NodeCertificateStatusResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        let node_id = request.into_inner().node_id;
        let span = info_span!("rpc", method = "NodeCertificateStatus", node = %node_id);
        Ok(Response::new(self.status(node_id, deadline).instrument(span).await?))
    }
}
