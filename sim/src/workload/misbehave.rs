//! What clients do wrong on purpose to test authorization (I3): impostors with forged chains,
//! workers claiming to forward for other nodes, workers and removed nodes asking for the unlock
//! key.

use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use swarmca_types::IssueNodeCertificateRequest;
use tonic::Code;

use crate::peers::present;
use crate::shared::{lock, now};

use super::*;

/// How an impostor's certificate is made.
#[derive(Clone, Copy)]
pub(super) enum Forgery {
    /// Self-signed.
    SelfSigned,
    /// Signed by a look-alike root: the subject of the cluster's first root, another key.
    LookAlike,
    /// Signed by the cluster's (first) root itself, but for another organization.
    ForeignOrg,
}

impl Forgery {
    fn name(self) -> &'static str {
        match self {
            Forgery::SelfSigned => "self-signed",
            Forgery::LookAlike => "look-alike root",
            Forgery::ForeignOrg => "real root, another organization",
        }
    }
}

/// A chain that claims `node_id`'s identity as a manager, made as `how` says: never one the
/// cluster issued for it (`bundle`: the roots the client holds; `real_root`: the cluster's
/// first root certificate and key).
fn forged_chain(
    node_id: &str,
    org: &str,
    bundle: &[u8],
    real_root: Option<(Vec<u8>, Vec<u8>)>,
    how: Forgery,
) -> Option<Vec<Vec<u8>>> {
    let org = match how {
        Forgery::ForeignOrg => "another-cluster",
        _ => org,
    };
    let ou = swarmca_core::role::MANAGER_OU;
    let leaf_key = rcgen::KeyPair::generate().ok()?;
    let mut leaf = rcgen::CertificateParams::new(vec![ou.to_string(), node_id.to_string()]).ok()?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, node_id);
    dn.push(rcgen::DnType::OrganizationalUnitName, ou);
    dn.push(rcgen::DnType::OrganizationName, org);
    leaf.distinguished_name = dn;
    leaf.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = match how {
        Forgery::SelfSigned => return Some(vec![leaf.self_signed(&leaf_key).ok()?.der().to_vec()]),
        Forgery::LookAlike => {
            let root = chain_of(bundle).into_iter().next()?;
            rcgen::Issuer::from_ca_cert_der(&root.into(), rcgen::KeyPair::generate().ok()?).ok()?
        }
        Forgery::ForeignOrg => {
            let (cert, key) = real_root?;
            let root = chain_of(&cert).into_iter().next()?;
            let key = rcgen::KeyPair::from_pem(std::str::from_utf8(&key).ok()?).ok()?;
            rcgen::Issuer::from_ca_cert_der(&root.into(), key).ok()?
        }
    };
    Some(vec![leaf.signed_by(&leaf_key, &issuer).ok()?.der().to_vec()])
}

impl Client {
    /// An impostor renews as this node with a forged chain (I3: an identity is only what the
    /// cluster's roots vouch for): the CA must take it as a join without a token.
    pub(super) async fn impostor(&self, creds: &Creds) {
        if thread_rng().gen_bool(0.3) && !creds.manager {
            return self.forwarding_worker(creds).await;
        }
        if thread_rng().gen_bool(0.5) && creds.manager {
            return self.forwarding_for_removed(creds).await;
        }
        let how =
            [Forgery::SelfSigned, Forgery::LookAlike, Forgery::ForeignOrg][thread_rng().gen_range(0..3)];
        let real_root = lock(&self.shared.first_root).clone();
        let Some(chain) =
            forged_chain(&creds.node_id, &self.shared.cluster_id, &creds.bundle, real_root, how)
        else {
            return;
        };
        let Some(csr) = new_csr() else { return };
        let forged = Creds { manager: leaf_is_manager(&self.shared.facts, &chain), chain, ..creds.clone() };
        let r =
            self.call_issue(IssueNodeCertificateRequest { csr, ..Default::default() }, Some(&forged)).await;
        self.expect_tokenless(
            format!("a forged certificate ({}) for node {}", how.name(), creds.node_id),
            &r,
            "fault.impostor_refused",
        );
    }

    /// Logs `what` got `r`, which must be a refusal as a join without a token (or a call that
    /// did not get through); counts the refusal under `counter`.
    pub(super) fn expect_tokenless(&self, what: String, r: &Result<String, Code>, counter: &'static str) {
        self.shared.log.push(format!("rpc: {what} -> {:?}", r.as_ref().map_err(|c| format!("{c:?}"))));
        match r {
            Err(Code::InvalidArgument) => self.shared.coverage.hit(counter),
            Err(c) if TRANSPORT.contains(c) => {}
            other => self.shared.violation(
                "I3",
                format!("{what} was answered {other:?}, not refused as a join without a token"),
            ),
        }
    }

    /// A worker (its own, valid certificate) claims to forward a call for another node, as
    /// only managers may (docs/behaviour.md §1.4): the forwarded identity must not be believed, and the
    /// call is a join without a token.
    pub(super) async fn forwarding_worker(&self, creds: &Creds) {
        let other = lock(&self.shared.held).values().find(|id| **id != creds.node_id).cloned();
        let Some(other) = other else { return };
        let Some(r) = self.forward(creds, &other).await else { return };
        self.expect_tokenless(
            format!("worker {} forwarding for node {other}", creds.node_id),
            &r,
            "fault.forwarding_worker_refused",
        );
    }

    /// A manager (its own, valid certificate) forwards a renewal for a node the operator
    /// removed: unlike SwarmKit, which checks only the forwarder against the blacklist (spec
    /// §8.4), the forwarded identity is checked too, and the call is a join without a token.
    pub(super) async fn forwarding_for_removed(&self, creds: &Creds) {
        // A node still blacklisted: once every certificate it was issued has expired its entry
        // is pruned, and it is then an unknown node like any other.
        let blacklisted = |id: &str| lock(&self.shared.blacklisted).contains(id);
        let removed =
            lock(&self.shared.removed).iter().rev().map(|(id, _)| id.clone()).find(|id| blacklisted(id));
        let Some(removed) = removed else { return };
        let Some(r) = self.forward(creds, &removed).await else { return };
        if !blacklisted(&removed) {
            return; // pruned meanwhile
        }
        self.expect_tokenless(
            format!("manager {} forwarding for removed node {removed}", creds.node_id),
            &r,
            "fault.forwarded_removed_refused",
        );
    }

    /// A renewal presenting `creds` as the forwarder of node `other` (claimed a manager of
    /// this cluster).
    pub(super) async fn forward(&self, creds: &Creds, other: &str) -> Option<Result<String, Code>> {
        use swarmca_server::peer::{
            FORWARDED_CERT, FORWARDED_CERT_CN, FORWARDED_CERT_ORG, FORWARDED_CERT_OU,
        };
        let csr = new_csr()?;
        let mut r = tonic::Request::new(IssueNodeCertificateRequest { csr, ..Default::default() });
        present(&mut r, &creds.chain);
        let md = r.metadata_mut();
        for (k, v) in [
            (FORWARDED_CERT, "true"),
            (FORWARDED_CERT_CN, other),
            (FORWARDED_CERT_OU, swarmca_core::role::MANAGER_OU),
            (FORWARDED_CERT_ORG, self.shared.cluster_id.as_str()),
        ] {
            if let Ok(v) = v.parse() {
                md.insert(k, v);
            }
        }
        Some(self.send_issue(r).await)
    }

    /// Managers fetch the unlock key after getting a certificate (as SwarmKit managers do).
    pub(super) async fn unlock_key(&self, creds: &Creds) {
        let is_manager = creds.manager;
        // Workers have no business asking, but an impostor might: now and then one does, and
        // must be denied (the key is only for certificates with the manager OU).
        if !is_manager && !chance(self.shared.opts.p_bad_token) {
            return;
        }
        let Some(addr) = self.manager() else { return };
        let Some(ch) = channel(addr) else { return };
        let mut req = tonic::Request::new(swarmca_types::GetUnlockKeyRequest {});
        present(&mut req, &creds.chain);
        let start = now();
        let r = madsim::time::timeout(
            Duration::from_secs(5),
            swarmca_proto::ca_client::CaClient::new(ch).get_unlock_key(req),
        )
        .await;
        let ok = match r {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                let version = resp.version.map_or(0, |v| v.index);
                lock(&self.shared.unlock_answers).push((creds.node_id.clone(), version, resp.unlock_key));
                true
            }
            Ok(Err(s)) if s.code() == Code::PermissionDenied => false,
            _ => return,
        };
        if !is_manager {
            if ok {
                self.shared.violation(
                    "I3",
                    format!("node {} got the unlock key with a worker certificate", creds.node_id),
                );
            } else {
                self.shared.coverage.hit("branch.unlock_key_refused_worker");
            }
            return;
        }
        self.shared.log.push(format!("rpc: client {} unlock-key {} -> {ok}", self.idx, creds.node_id));
        lock(&self.shared.unlock_calls).push((creds.node_id.clone(), start, ok));
    }
}
