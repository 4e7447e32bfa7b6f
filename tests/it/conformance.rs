//! SwarmKit `ca/server_test.go` cases (docs/behaviour.md §7.1 #1–#4, #6–#13), over real mTLS on loopback.
//! Clients as in the original: anonymous TLS, worker cert, manager cert, other-org manager.

// IssueNodeCertificateRequest.role is deprecated in SwarmKit; these tests set it on purpose.
#![allow(deprecated)]

use std::time::Duration;

use swarmca_core::role::Role;
use swarmca_server::INVALID_JOIN_TOKEN;
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{
    EncryptionConfig, EncryptionKey, GetRootCaCertificateRequest, GetUnlockKeyRequest,
    IssueNodeCertificateRequest, NodeCertificateStatusRequest, NodeRole,
};
use tonic::Code;
use x509_parser::prelude::*;

use crate::fixture::*;

/// Subject CN, OUs, Os and DNS SANs of a PEM leaf.
pub fn subject_of(pem: &[u8]) -> (String, Vec<String>, Vec<String>, Vec<String>) {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&p.contents).unwrap();
    let s = cert.subject();
    let cn = s.iter_common_name().next().unwrap().as_str().unwrap().to_string();
    let ous = s.iter_organizational_unit().map(|a| a.as_str().unwrap().to_string()).collect();
    let os = s.iter_organization().map(|a| a.as_str().unwrap().to_string()).collect();
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (cn, ous, os, sans)
}

#[tokio::test]
async fn get_root_ca_certificate() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.ca(addr, None).await;
    let r = c.get_root_ca_certificate(GetRootCaCertificateRequest {}).await.unwrap().into_inner();
    assert!(!r.certificate.is_empty());
    assert_eq!(r.certificate, f.root_pem, "the exact bytes whose digest is in the join tokens");
}

#[tokio::test]
async fn restart_root_ca() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let req = || NodeCertificateStatusRequest { node_id: "foo".into() };
    assert_eq!(c.node_certificate_status(req()).await.unwrap_err().code(), Code::NotFound);
    f.server.stop().await.unwrap();
    f.run_server().await;
    assert_eq!(c.node_certificate_status(req()).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn issue_node_certificate() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let (csr, _) = new_csr();
    let r = c.issue_node_certificate(join_req(&csr, &f.worker_token)).await.unwrap().into_inner();
    assert!(!r.node_id.is_empty());
    assert_eq!(r.node_membership, Membership::Accepted as i32);
    let s = wait_final(&mut c, &r.node_id).await;
    assert_eq!(s.status.unwrap().state, State::Issued as i32);
    let cert = s.certificate.unwrap();
    assert!(!cert.certificate.is_empty());
    assert_eq!(cert.role, NodeRole::Worker as i32);
    assert_eq!(cert.csr, csr, "clients accept only a certificate whose csr equals theirs");
    let (cn, ous, os, sans) = subject_of(&cert.certificate);
    assert_eq!(cn, r.node_id);
    assert_eq!(ous, ["swarm-worker"]);
    assert_eq!(os, [f.cluster_id.clone()]);
    assert_eq!(sans, ["swarm-worker".to_string(), r.node_id.clone()]);
}

#[tokio::test]
async fn manager_join_gets_manager_certificate_with_ca_san() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let (csr, _) = new_csr();
    let mut req = join_req(&csr, &f.manager_token);
    req.role = NodeRole::Worker as i32; // ignored: the token decides
    let r = c.issue_node_certificate(req).await.unwrap().into_inner();
    let s = wait_final(&mut c, &r.node_id).await;
    let cert = s.certificate.unwrap();
    assert_eq!(cert.role, NodeRole::Manager as i32);
    let (_, ous, _, sans) = subject_of(&cert.certificate);
    assert_eq!(ous, ["swarm-manager"]);
    assert_eq!(sans, ["swarm-manager".to_string(), r.node_id.clone(), "swarm-ca".to_string()]);
}

#[tokio::test]
async fn force_rotation_is_noop() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let (csr, _) = new_csr();
    let r = c.issue_node_certificate(join_req(&csr, &f.worker_token)).await.unwrap().into_inner();
    let issued = wait_final(&mut c, &r.node_id).await.certificate.unwrap().certificate;
    f.set_state(&r.node_id, State::Rotate).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let n = f.node(&r.node_id).await.unwrap();
    let cert = n.certificate.unwrap();
    assert_eq!(cert.certificate, issued, "the CA does not re-sign ROTATE");
    assert_eq!(cert.status.unwrap().state, State::Rotate as i32);
    assert_eq!(cert.role, NodeRole::Worker as i32);
}

#[tokio::test]
async fn issue_node_certificate_with_invalid_csr() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let r =
        c.issue_node_certificate(join_req(b"random garbage", &f.worker_token)).await.unwrap().into_inner();
    assert_eq!(r.node_membership, Membership::Accepted as i32);
    let s = wait_final(&mut c, &r.node_id).await;
    let st = s.status.unwrap();
    assert_eq!(st.state, State::Failed as i32);
    assert!(st.err.contains("CSR Decode failed"), "err = {}", st.err);
    assert!(s.certificate.unwrap().certificate.is_empty());
}

async fn renewal(creds_of: impl Fn(&Fixture) -> Creds, role: NodeRole, want: NodeRole) {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let creds = creds_of(&f);
    let mut c = f.node_ca(addr, Some(&creds)).await;
    let (csr, _) = new_csr();
    let req = IssueNodeCertificateRequest { csr: csr.clone(), role: role as i32, ..Default::default() };
    let r = c.issue_node_certificate(req).await.unwrap().into_inner();
    assert_eq!(r.node_id, creds.node_id, "a renewal keeps the node ID");
    assert_eq!(r.node_membership, Membership::Accepted as i32);
    let s = wait_final(&mut c, &r.node_id).await;
    assert_eq!(s.status.unwrap().state, State::Issued as i32);
    let cert = s.certificate.unwrap();
    assert_eq!(cert.role, want as i32);
    assert_eq!(cert.csr, csr);
}

#[tokio::test]
async fn issue_node_certificate_worker_renewal() {
    renewal(|f| f.worker.clone(), NodeRole::Worker, NodeRole::Worker).await;
}

#[tokio::test]
async fn issue_node_certificate_manager_renewal() {
    renewal(|f| f.manager.clone(), NodeRole::Manager, NodeRole::Manager).await;
}

#[tokio::test]
async fn issue_node_certificate_worker_from_different_org_renewal() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, Some(&f.other_org_manager)).await;
    let (csr, _) = new_csr();
    let req = IssueNodeCertificateRequest { csr, role: NodeRole::Worker as i32, ..Default::default() };
    let e = c.issue_node_certificate(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), INVALID_JOIN_TOKEN);
}

#[tokio::test]
async fn node_certificate_renewals_do_not_require_token() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut mc = f.node_ca(addr, Some(&f.manager)).await;
    let mut wc = f.node_ca(addr, Some(&f.worker)).await;
    for (client, want) in [(&mut mc, NodeRole::Manager), (&mut wc, NodeRole::Worker)] {
        let (csr, _) = new_csr();
        let r = client
            .issue_node_certificate(IssueNodeCertificateRequest { csr, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.node_membership, Membership::Accepted as i32);
        let mut status_client = f.node_ca(addr, Some(&f.manager)).await;
        let s = wait_final(&mut status_client, &r.node_id).await;
        assert_eq!(s.status.unwrap().state, State::Issued as i32);
        assert_eq!(s.certificate.unwrap().role, want as i32);
    }
}

#[tokio::test]
async fn new_node_certificate_requires_token() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let (csr, _) = new_csr();
    let expect_refused = |r: Result<tonic::Response<_>, tonic::Status>| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), INVALID_JOIN_TOKEN);
    };
    for role in [NodeRole::Worker, NodeRole::Manager] {
        let req = IssueNodeCertificateRequest { csr: csr.clone(), role: role as i32, ..Default::default() };
        expect_refused(c.issue_node_certificate(req).await);
        let mut bad = join_req(&csr, "invalid-secret");
        bad.role = role as i32;
        expect_refused(c.issue_node_certificate(bad).await);
    }
    for t in [&f.worker_token, &f.manager_token] {
        c.issue_node_certificate(join_req(&csr, t)).await.unwrap();
    }
    // Rotate both tokens in the store; once the server has picked them up the old ones fail.
    let (old_w, old_m) = (f.worker_token.clone(), f.manager_token.clone());
    let new_w = f.worker_token.replace(&f.worker_token[f.worker_token.len() - 25..], &"1".repeat(25));
    let new_m = f.manager_token.replace(&f.manager_token[f.manager_token.len() - 25..], &"2".repeat(25));
    let (w2, m2) = (new_w.clone(), new_m.clone());
    f.update_cluster(move |cl| {
        let t = cl.root_ca.as_mut().unwrap().join_tokens.as_mut().unwrap();
        t.worker = w2.clone();
        t.manager = m2.clone();
    })
    .await;
    let csr2 = csr.clone();
    let probe = f.node_ca(addr, None).await;
    eventually(5, || {
        let mut p = probe.clone();
        let req = join_req(&csr2, &new_w);
        async move { p.issue_node_certificate(req).await.is_ok() }
    })
    .await;
    for t in [&old_w, &old_m] {
        expect_refused(c.issue_node_certificate(join_req(&csr, t)).await);
    }
    for t in [&new_w, &new_m] {
        c.issue_node_certificate(join_req(&csr, t)).await.unwrap();
    }
}

#[tokio::test]
async fn new_node_certificate_bad_token() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let (csr, _) = new_csr();
    for role in [NodeRole::Manager, NodeRole::Worker] {
        let mut req = join_req(&csr, "invalid-secret");
        req.role = role as i32;
        let e = c.issue_node_certificate(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), INVALID_JOIN_TOKEN);
    }
    // A prefix or a one-character change of a real token is no token either.
    let prefix = &f.worker_token[..f.worker_token.len() - 1];
    let mut flipped = f.manager_token.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
    for t in [prefix.to_string(), String::from_utf8(flipped).unwrap()] {
        let e = c.issue_node_certificate(join_req(&csr, &t)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}

/// Autolock on, with `key` as the manager unlock key.
async fn autolock(f: &Fixture, key: &[u8]) {
    f.update_cluster(|cl| {
        cl.spec.as_mut().unwrap().encryption_config = Some(EncryptionConfig { auto_lock_managers: true });
        cl.unlock_keys = vec![EncryptionKey {
            subsystem: "swarm-manager".into(),
            key: key.to_vec(),
            ..Default::default()
        }];
    })
    .await;
}

#[tokio::test]
async fn get_unlock_key() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.ca(addr, Some(&f.manager)).await;
    let r = c.get_unlock_key(GetUnlockKeyRequest {}).await.unwrap().into_inner();
    assert!(r.unlock_key.is_empty());
    let v = swarmca_store::version_of(f.cluster().await.meta.as_ref());
    assert_eq!(r.version.unwrap().index, v);

    autolock(&f, b"secret").await;
    let r = c.get_unlock_key(GetUnlockKeyRequest {}).await.unwrap().into_inner();
    assert_eq!(r.unlock_key, b"secret");
    let v = swarmca_store::version_of(f.cluster().await.meta.as_ref());
    assert!(r.version.unwrap().index >= v);
}

#[tokio::test]
async fn get_unlock_key_is_for_managers_of_this_cluster_only() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    for creds in [None, Some(f.worker.clone()), Some(f.other_org_manager.clone())] {
        let mut c = f.ca(addr, creds.as_ref()).await;
        let e = c.get_unlock_key(GetUnlockKeyRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "caller {:?}", creds.map(|c| c.node_id));
        assert!(e.message().starts_with("Permission denied: unauthorized peer"), "{}", e.message());
    }
}

#[tokio::test]
async fn a_demoted_manager_with_a_still_valid_certificate_gets_no_unlock_key() {
    // SwarmKit issue #1655: authorization by certificate alone let a demoted manager keep
    // fetching the unlock key until its certificate expired.
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    autolock(&f, b"secret").await;
    let mut c = f.ca(addr, Some(&f.manager)).await;
    assert_eq!(c.get_unlock_key(GetUnlockKeyRequest {}).await.unwrap().into_inner().unlock_key, b"secret");
    // Demoted (desired role worker; the observed role follows at its next renewal).
    let id = f.manager.node_id.clone();
    f.update_node(&id, |n| n.spec.as_mut().unwrap().desired_role = NodeRole::Worker as i32).await;
    let e = c.get_unlock_key(GetUnlockKeyRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("not a manager any more"), "{}", e.message());
    // Promoted back: answered again.
    f.update_node(&id, |n| n.spec.as_mut().unwrap().desired_role = NodeRole::Manager as i32).await;
    assert_eq!(c.get_unlock_key(GetUnlockKeyRequest {}).await.unwrap().into_inner().unlock_key, b"secret");
    // Its observed role worker (as after renewing as one): refused too.
    f.update_node(&id, |n| n.role = NodeRole::Worker as i32).await;
    let e = c.get_unlock_key(GetUnlockKeyRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn role_from_token_only_and_role_survives_in_certificate() {
    // IssueNodeCertificateRequest.role is deprecated and ignored: a worker token asking for a
    // manager role still gets a worker certificate.
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let (csr, _) = new_csr();
    let mut req = join_req(&csr, &f.worker_token);
    req.role = NodeRole::Manager as i32;
    let r = c.issue_node_certificate(req).await.unwrap().into_inner();
    let s = wait_final(&mut c, &r.node_id).await;
    assert_eq!(s.certificate.unwrap().role, NodeRole::Worker as i32);
    assert_eq!(f.node(&r.node_id).await.unwrap().role, Role::Worker.to_proto());
}

/// Not in SwarmKit (tonic's default accepts 4 MiB): a request far bigger than any certificate
/// request is refused before it is decoded, and nothing is stored.
#[tokio::test]
async fn an_oversized_request_is_refused_and_stores_nothing() {
    let mut f = Fixture::start().await;
    let addr = f.serve_tls().await;
    let mut c = f.node_ca(addr, None).await;
    let (csr, _) = new_csr();
    let mut big = csr.clone();
    big.resize(swarmca_server::launch::MAX_REQUEST_BYTES + 1, b'A');
    let before =
        swarmca_store::Store::view(&f.store, swarmca_store::WatchFilter::All).await.unwrap().nodes.len();
    let e = c.issue_node_certificate(join_req(&big, &f.worker_token)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    let after =
        swarmca_store::Store::view(&f.store, swarmca_store::WatchFilter::All).await.unwrap().nodes.len();
    assert_eq!(before, after, "nothing stored");
    // A real CSR still joins on the same connection's server.
    let r = c.issue_node_certificate(join_req(&csr, &f.worker_token)).await.unwrap().into_inner();
    assert_eq!(wait_final(&mut c, &r.node_id).await.status.unwrap().state, State::Issued as i32);
}
