//! Starting, restarting and aborting a root CA rotation, and reporting its progress (what
//! SwarmKit's control API does for `docker swarm ca --rotate`, docs/behaviour.md §4.7 and §6).
//!
//! A rotation writes `root_rotation = {new root, its key (if local), the new root cross-signed
//! by the current root}` into the cluster's RootCA object; the leader's reconciler then moves
//! every node over and finishes it. The cross-signature is made with the current root's key
//! when this cluster holds it, otherwise by an external CA of the current root (CFSSL profile
//! `CA`).
//!
//! Choices where SwarmKit's API differs or is silent:
//! * A new root with the same key as the current one is allowed (a re-issued root certificate):
//!   nodes converge at once, since their issuer's subject and key are unchanged.
//! * Rotating to the current root is refused when no rotation runs, and aborts one that does
//!   (as in SwarmKit); `abort` says so explicitly.
//! * Starting a rotation while one runs restarts it towards the new root, cross-signed by the
//!   current (not the intermediate) root.

use std::time::Duration;

use swarmca_core::rootca::{
    digest_string, generate_root, normalize_pems, RootCa, DEFAULT_ROOT_CN, MIN_NODE_CERT_EXPIRY,
    ROOT_CA_VALIDITY,
};
use swarmca_proto::admin;
use swarmca_store::{Node, WatchFilter};
use swarmca_types::issuance_status::State;
use swarmca_types::{CaConfig, Cluster, RootRotation};
use tracing::info;

use crate::control::Control;
use crate::env::draw;
use crate::error::ServerError;
use crate::external::{certs_der, client_tls_config, filter_external_ca_urls, ExternalCa};
use crate::issuers::{desired_issuer, has_issuer, IssuerView};

/// Most unconverged nodes listed in a [`admin::RotationStatus`].
const MAX_BLOCKING_LISTED: usize = 50;

fn external_specs(list: &[admin::ExternalCaSpec]) -> Result<Vec<swarmca_types::ExternalCa>, ServerError> {
    list.iter()
        .map(|e| {
            if !(e.url.starts_with("https://") || e.url.starts_with("http://")) {
                return Err(ServerError::InvalidSetting(format!(
                    "external CA URL must start with https:// or http://: {:?}",
                    e.url
                )));
            }
            Ok(swarmca_types::ExternalCa {
                url: e.url.clone(),
                ca_cert: e.ca_cert.clone(),
                ..Default::default()
            })
        })
        .collect()
}

fn invalid(msg: impl Into<String>) -> ServerError {
    ServerError::InvalidSetting(msg.into())
}

impl Control {
    /// Starts a rotation to `req.ca_cert` (generated when empty), restarts a running one
    /// towards it, or aborts the running one (`req.abort`). Returns the progress right after.
    pub async fn rotate_root(
        &self,
        req: admin::RotateRootRequest,
    ) -> Result<admin::RotationStatus, ServerError> {
        if req.abort {
            let (was, _) = self
                .update_cluster(|c| {
                    let root = c.root_ca.get_or_insert_with(Default::default);
                    Ok(root.root_rotation.take().map(|r| digest_string(&r.ca_cert)))
                })
                .await?;
            let Some(target) = was else {
                return Err(ServerError::FailedPrecondition("no root rotation is in progress".into()));
            };
            info!(target = %target, "root rotation aborted");
            return self.rotation_status().await;
        }
        let cert_expiry = match req.cert_expiry_secs {
            0 => None,
            s if Duration::from_secs(s) < MIN_NODE_CERT_EXPIRY => {
                return Err(invalid("minimum certificate expiry time is: 1h0m0s"))
            }
            s if Duration::from_secs(s) > ROOT_CA_VALIDITY => {
                return Err(invalid("maximum certificate expiry time is 20 years (the root CA validity)"))
            }
            s => Some(Duration::from_secs(s)),
        };
        let new_external = if req.set_external_cas { Some(external_specs(&req.external_cas)?) } else { None };
        let now = self.server.inner.deps.clock.now();

        // The new root: given (validated like any RootCA) or generated.
        let (new_cert, new_key) = if req.ca_cert.is_empty() {
            if !req.ca_key.is_empty() {
                return Err(invalid("a CA key needs its CA certificate"));
            }
            let serial = draw::<20>(&self.server.inner.deps.entropy)?;
            let g = generate_root(DEFAULT_ROOT_CN, now, serial)
                .map_err(|e| ServerError::Internal(format!("cannot generate a root CA: {e}")))?;
            (g.cert_pem, g.key_pem)
        } else {
            let cert = normalize_pems(&req.ca_cert);
            let sign_cert: &[u8] = if req.ca_key.is_empty() { &[] } else { &cert };
            let keys = self.server.inner.read_signer().external_keys();
            RootCa::new_with(&cert, sign_cert, &req.ca_key, Duration::ZERO, &[], now, &*keys)
                .map_err(|e| invalid(format!("invalid new root CA: {e}")))?;
            if certs_der(&cert).len() != 1 {
                return Err(invalid("the new root CA must be exactly one certificate"));
            }
            (cert, req.ca_key.clone())
        };

        let cluster = self.server.cluster().await?;
        let current = cluster.root_ca.clone().unwrap_or_default();
        if normalize_pems(&current.ca_cert) == new_cert {
            return Err(ServerError::FailedPrecondition(if current.root_rotation.is_some() {
                "this is the cluster's current root; use abort to stop the rotation in progress".into()
            } else {
                "the cluster already uses this root CA".into()
            }));
        }
        if let Some(r) = &current.root_rotation {
            if normalize_pems(&r.ca_cert) == new_cert && r.ca_key == new_key {
                info!("root rotation to this root already in progress");
                return self.rotation_status().await;
            }
        }
        // Without its key, the new root needs an external CA that signs for it.
        let externals = new_external.clone().unwrap_or_else(|| swarmca_core::cluster::external_cas(&cluster));
        if new_key.is_empty() && filter_external_ca_urls(&new_cert, &current.ca_cert, &externals).is_empty() {
            return Err(invalid(
                "rotating to a root CA without its key needs an external CA that signs for it \
                 (an external CA entry whose CA certificate is the new root)",
            ));
        }

        let cross = self.cross_sign(&current, &cluster, &new_cert, &new_key, now).await?;
        let expected_root = current.ca_cert.clone();
        let rotation =
            RootRotation { ca_cert: new_cert.clone(), ca_key: new_key, cross_signed_ca_cert: cross };
        self.update_cluster(|c| {
            let root = c.root_ca.get_or_insert_with(Default::default);
            if root.ca_cert != expected_root {
                return Err(ServerError::Contention("the cluster root changed meanwhile; try again".into()));
            }
            root.root_rotation = Some(rotation.clone());
            if cert_expiry.is_some() || new_external.is_some() {
                let ca = c
                    .spec
                    .get_or_insert_with(Default::default)
                    .ca_config
                    .get_or_insert_with(CaConfig::default);
                if let Some(d) = cert_expiry {
                    ca.node_cert_expiry = prost_types::Duration::try_from(d).ok();
                }
                if let Some(list) = &new_external {
                    ca.external_cas = list.clone();
                }
            }
            Ok(())
        })
        .await?;
        info!(target = %digest_string(&new_cert), "root rotation started");
        self.rotation_status().await
    }

    /// The new root cross-signed by the current one: locally with the current key, else by an
    /// external CA of the current root (needs the new root's key for the CSR).
    async fn cross_sign(
        &self,
        current: &swarmca_types::RootCa,
        cluster: &Cluster,
        new_cert: &[u8],
        new_key: &[u8],
        now: std::time::SystemTime,
    ) -> Result<Vec<u8>, ServerError> {
        let sign_cert: &[u8] = if current.ca_key.is_empty() { &[] } else { &current.ca_cert };
        let keys = self.server.inner.read_signer().external_keys();
        let current_ca =
            RootCa::new_with(&current.ca_cert, sign_cert, &current.ca_key, Duration::ZERO, &[], now, &*keys)
                .map_err(|e| {
                    ServerError::FailedPrecondition(format!("the current root CA is unusable: {e}"))
                })?;
        if current_ca.can_sign() {
            let cross = current_ca.cross_sign(new_cert).map_err(|e| invalid(e.to_string()))?;
            return Ok(normalize_pems(&cross));
        }
        if new_key.is_empty() {
            return Err(invalid(
                "the current root CA is external: cross-signing the new root through it needs the new root's key",
            ));
        }
        let externals = swarmca_core::cluster::external_cas(cluster);
        let urls = filter_external_ca_urls(&current.ca_cert, &current.ca_cert, &externals);
        if urls.is_empty() {
            return Err(ServerError::FailedPrecondition(
                "no external CA signs for the current root, and this cluster has no root key: \
                 nothing can cross-sign the new root"
                    .into(),
            ));
        }
        let tls = {
            let signer = self.server.inner.read_signer();
            client_tls_config(current_ca.roots_der(), signer.tls_identity_pems()).ok()
        };
        let ext = ExternalCa::new(urls, Vec::new(), tls, self.server.inner.cfg.external_ca_timeout);
        let cross = ext.cross_sign_root(new_cert, new_key).await.map_err(|e| {
            ServerError::FailedPrecondition(format!("the external CA did not cross-sign: {e}"))
        })?;
        // It must chain to the current root.
        RootCa::new(&current.ca_cert, &[], &[], Duration::ZERO, &cross, now).map_err(|e| {
            ServerError::FailedPrecondition(format!(
                "the external CA's cross-signed certificate does not chain to the current root: {e}"
            ))
        })?;
        Ok(cross)
    }

    /// Progress of the rotation in progress, if any.
    pub async fn rotation_status(&self) -> Result<admin::RotationStatus, ServerError> {
        let c = self.server.cluster().await?;
        let snap = self.store().view(WatchFilter::All).await?;
        let root = c.root_ca.clone().unwrap_or_default();
        let view = IssuerView::of(&c);
        let desired = desired_issuer(&root);
        let converged =
            snap.nodes.iter().filter(|n| desired.as_ref().is_some_and(|d| has_issuer(n, d))).count();
        let blocking: Vec<&Node> =
            snap.nodes.iter().filter(|n| !desired.as_ref().is_some_and(|d| has_issuer(n, d))).collect();
        let renewing = blocking
            .iter()
            .filter(|n| {
                let s = swarmca_core::policy::issuance_state(n);
                s == State::Rotate as i32 || s == State::Renew as i32 || s == State::Pending as i32
            })
            .count();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(admin::RotationStatus {
            in_progress: root.root_rotation.is_some(),
            current_digest: digest_string(&root.ca_cert),
            target_digest: root.root_rotation.as_ref().map(|r| digest_string(&r.ca_cert)).unwrap_or_default(),
            nodes: count(snap.nodes.len()),
            converged: count(converged),
            renewing: count(renewing),
            blocking: blocking
                .iter()
                .take(MAX_BLOCKING_LISTED)
                .map(|n| self.info(n, false, &view, None))
                .collect(),
        })
    }
}
