//! Who is calling: the caller's certificate chain (from mTLS in production, from whatever the
//! embedder injects under simulation), chain-verified against the cluster roots, and SwarmKit's
//! role/org/blacklist authorization including forwarded identities (docs/behaviour.md §1.3–§1.4).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use swarmca_core::identity::PeerIdentity;
use swarmca_types::BlacklistedCertificate;
use tonic::metadata::MetadataMap;

/// Metadata key marking a request forwarded by a manager.
pub const FORWARDED_CERT: &str = "forwarded_cert";
/// Metadata key carrying the forwarded caller's CN.
pub const FORWARDED_CERT_CN: &str = "forwarded_cert_cn";
/// Metadata key carrying the forwarded caller's first O.
pub const FORWARDED_CERT_ORG: &str = "forwarded_cert_org";
/// Metadata key carrying the forwarded caller's OUs (multi-valued).
pub const FORWARDED_CERT_OU: &str = "forwarded_cert_ou";
/// Metadata key carrying the forwarded caller's address.
pub const REMOTE_ADDR: &str = "remote_addr";

/// What an RPC handler knows about its caller before authentication.
#[derive(Debug)]
pub struct CallInfo<'a> {
    /// The request metadata.
    pub metadata: &'a MetadataMap,
    /// The DER chain (leaf first) the transport verified during the TLS handshake, if any.
    pub tls_chain: Option<Vec<Vec<u8>>>,
    /// The peer address, if known.
    pub remote_addr: Option<SocketAddr>,
}

impl<'a> CallInfo<'a> {
    /// Collects the call info of a tonic request.
    pub fn of<T>(req: &'a tonic::Request<T>) -> CallInfo<'a> {
        let tls_chain =
            req.peer_certs().map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect::<Vec<_>>());
        CallInfo { metadata: req.metadata(), tls_chain, remote_addr: req.remote_addr() }
    }
}

/// Supplies the certificate chain a caller presented. The server verifies it against the
/// current cluster roots itself, so an implementation only transports it.
pub trait PeerCertificates: Send + Sync + 'static {
    /// The caller's chain, leaf first, or `None` for an anonymous caller.
    fn chain(&self, call: &CallInfo<'_>) -> Option<Vec<Vec<u8>>>;
}

/// Production: the chain from the mTLS handshake.
#[derive(Debug, Default, Clone, Copy)]
pub struct TlsPeerCertificates;

impl PeerCertificates for TlsPeerCertificates {
    fn chain(&self, call: &CallInfo<'_>) -> Option<Vec<Vec<u8>>> {
        call.tls_chain.clone().filter(|c| !c.is_empty())
    }
}

/// The forwarded identity carried in metadata, when the request says it was forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedInfo {
    /// Forwarded CN.
    pub cn: String,
    /// Forwarded first O.
    pub org: String,
    /// Forwarded OUs.
    pub ous: Vec<String>,
}

/// `Some` when `forwarded_cert` holds exactly one value, `"true"`.
pub fn forwarded_info(md: &MetadataMap) -> Option<ForwardedInfo> {
    let marks: Vec<_> = md.get_all(FORWARDED_CERT).iter().collect();
    match marks.as_slice() {
        [only] if only.to_str().ok() == Some("true") => {}
        _ => return None,
    }
    let first = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_default();
    let ous =
        md.get_all(FORWARDED_CERT_OU).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect();
    Some(ForwardedInfo { cn: first(FORWARDED_CERT_CN), org: first(FORWARDED_CERT_ORG), ous })
}

/// Why authorization failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No (verifiable) certificate.
    #[error("unauthorized peer role: no verified client certificate{0}")]
    NoCertificate(String),
    /// The peer's OUs do not include an allowed role.
    #[error("unauthorized peer role: remote certificate not part of roles {0:?}")]
    Role(Vec<String>),
    /// The peer belongs to another cluster.
    #[error("unauthorized peer org: remote certificate not part of organization {0}")]
    Org(String),
    /// The peer's certificate was blacklisted (its node was removed).
    #[error("unauthorized peer: certificate of node {0} is blacklisted")]
    Blacklisted(String),
    /// The forwarder is not an authorized manager.
    #[error("unauthorized forwarder role: {0}")]
    Forwarder(Box<AuthError>),
    /// Forwarded identity incomplete.
    #[error("forwarded request without a complete certificate identity")]
    ForwardedIncomplete,
}

/// Checks a verified identity against allowed roles, the cluster org and the blacklist; returns
/// the node ID.
pub fn authorize_role_and_org(
    id: &PeerIdentity,
    roles: &[&str],
    org: &str,
    blacklist: &BTreeMap<String, BlacklistedCertificate>,
) -> Result<String, AuthError> {
    if !roles.iter().any(|r| id.has_role(r)) {
        return Err(AuthError::Role(roles.iter().map(|r| r.to_string()).collect()));
    }
    if id.org != org {
        return Err(AuthError::Org(org.to_string()));
    }
    if blacklist.contains_key(&id.node_id) {
        return Err(AuthError::Blacklisted(id.node_id.clone()));
    }
    Ok(id.node_id.clone())
}

/// SwarmKit's `AuthorizeForwardedRoleAndOrg`: a direct caller is checked against `roles`; a
/// forwarded request needs a forwarder in `forwarder_roles` and a forwarded identity in `roles`.
/// Unlike the original, the forwarded CN is checked against the blacklist too.
pub fn authorize_forwarded_role_and_org(
    direct: Result<&PeerIdentity, &str>,
    forwarded: Option<&ForwardedInfo>,
    roles: &[&str],
    forwarder_roles: &[&str],
    org: &str,
    blacklist: &BTreeMap<String, BlacklistedCertificate>,
) -> Result<String, AuthError> {
    let direct = direct.map_err(|why| AuthError::NoCertificate(why.to_string()));
    match forwarded {
        Some(fwd) => {
            let forwarder = direct.map_err(|e| AuthError::Forwarder(Box::new(e)))?;
            authorize_role_and_org(forwarder, forwarder_roles, org, blacklist)
                .map_err(|e| AuthError::Forwarder(Box::new(e)))?;
            if fwd.cn.is_empty() || fwd.org.is_empty() || fwd.ous.is_empty() {
                return Err(AuthError::ForwardedIncomplete);
            }
            let id = PeerIdentity { node_id: fwd.cn.clone(), roles: fwd.ous.clone(), org: fwd.org.clone() };
            authorize_role_and_org(&id, roles, org, blacklist)
        }
        None => authorize_role_and_org(direct?, roles, org, blacklist),
    }
}
