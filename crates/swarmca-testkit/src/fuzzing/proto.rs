//! Target `proto_requests`: the first byte picks one request message of our three services
//! (`CA`, `NodeCA`, `swarmca.admin.v1.Admin`), the rest is its protobuf encoding. A message
//! that decodes must re-encode to bytes that decode to the same message; it is then handed to
//! the real handler of a running (follower) server over an in-memory store, whose answer must
//! agree with the request's validity. A follower signs nothing, so no external CA is ever
//! contacted whatever the request configures.

use prost::Message;
use swarmca_core::csr::MAX_CSR_SIZE;
use swarmca_core::token::parse_join_token;
use swarmca_proto::admin::{self, admin_server::Admin};
use swarmca_proto::ca_server::Ca;
use swarmca_proto::node_ca_server::NodeCa;
use swarmca_store::Op;
use swarmca_types::issuance_status::State;
use swarmca_types::{
    Certificate, GetRootCaCertificateRequest, GetUnlockKeyRequest, IssuanceStatus,
    IssueNodeCertificateRequest, Node, NodeCertificateStatusRequest, NodeSpec,
};
use tonic::{Code, Request, Status};

use super::harness::{
    end_server, initial_cluster, material, new_server, run_input, yield_times, CheckedStore, SeededEntropy,
    SetPeers, SyncReads, CLUSTER_ID,
};
use swarmca_server::CaServer;
use swarmca_server::Control;

/// A node the store holds in each final state, and a manager (removal needs `force`).
const ISSUED_NODE: &str = "fuzzissuednode000000000000";
const FAILED_NODE: &str = "fuzzfailednode000000000000";
const MANAGER_NODE: &str = "fuzzmanagernode00000000000";

/// Decodes `bytes` as `M`, checks the re-encoding round trip, and returns the message.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = m.encode_to_vec();
    assert_eq!(again.len(), m.encoded_len(), "encoded_len disagrees with the encoding");
    match M::decode(again.as_slice()) {
        Ok(m2) => assert_eq!(m2, m, "decode(encode(m)) != m"),
        Err(e) => panic!("re-encoded message does not decode: {e}"),
    }
    Some(m)
}

/// Runs one input.
pub fn proto_requests(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let selector = selector % 14;
    // Most inputs do not decode: those are done (the round trip checked) before any server
    // is set up.
    if !decodes(selector, body) {
        return;
    }
    let body = body.to_vec();
    run_input(async move { handle(selector, &body).await });
}

/// Whether `body` decodes as the request `selector` picks (checking the round trip).
fn decodes(selector: u8, body: &[u8]) -> bool {
    match selector {
        0 => decode::<IssueNodeCertificateRequest>(body).is_some(),
        1 => decode::<NodeCertificateStatusRequest>(body).is_some(),
        2 => decode::<GetRootCaCertificateRequest>(body).is_some(),
        3 => decode::<GetUnlockKeyRequest>(body).is_some(),
        4 => decode::<admin::JoinTokenRequest>(body).is_some(),
        5 => decode::<admin::ListNodesRequest>(body).is_some(),
        6..=9 => decode::<admin::NodeRequest>(body).is_some(),
        10 => decode::<admin::RemoveNodeRequest>(body).is_some(),
        11 => decode::<admin::ClusterInfoRequest>(body).is_some(),
        12 => decode::<admin::UpdateClusterRequest>(body).is_some(),
        _ => decode::<admin::UnlockKeyRequest>(body).is_some(),
    }
}

fn node(id: &str, state: State, role: i32) -> Node {
    Node {
        id: id.to_string(),
        role,
        spec: Some(NodeSpec { desired_role: role, membership: 1, ..Default::default() }),
        certificate: Some(Certificate {
            role,
            csr: Vec::new(),
            status: Some(IssuanceStatus { state: state as i32, err: String::new() }),
            certificate: Vec::new(),
            cn: id.to_string(),
        }),
        ..Default::default()
    }
}

/// The cluster every input starts from (the same each time: made once).
fn the_cluster() -> &'static swarmca_types::Cluster {
    static C: std::sync::OnceLock<swarmca_types::Cluster> = std::sync::OnceLock::new();
    C.get_or_init(|| initial_cluster(&mut SeededEntropy(1)))
}

async fn handle(selector: u8, body: &[u8]) {
    let _ = material();
    let store = CheckedStore::default();
    let cluster = the_cluster().clone();
    let tokens = cluster.root_ca.clone().and_then(|r| r.join_tokens).unwrap_or_default();
    let setup = store.inner.commit_sync(vec![
        Op::CreateCluster(cluster),
        Op::CreateNode(node(ISSUED_NODE, State::Issued, 0)),
        Op::CreateNode(node(FAILED_NODE, State::Failed, 0)),
        Op::CreateNode(node(MANAGER_NODE, State::Issued, 1)),
    ]);
    assert!(setup.is_ok(), "harness: store setup failed");
    let server = new_server(&store, &SetPeers::default(), 7);
    let runner = server.clone();
    let run = tokio::spawn(async move { runner.run_follower().await });
    if tokio::time::timeout(std::time::Duration::from_secs(10), server.ready()).await.is_err() {
        panic!("follower never became ready");
    }
    dispatch(selector, body, &server, &store, &tokens).await;
    // Let the server follow what the request wrote (a changed expiry or external CA list
    // rebuilds its signer view); it must keep running.
    yield_times(8).await;
    assert!(!run.is_finished(), "the follower loop ended after the request");
    end_server(&server, run).await;
}

async fn dispatch(
    selector: u8,
    body: &[u8],
    server: &CaServer,
    store: &CheckedStore,
    tokens: &swarmca_types::JoinTokens,
) {
    let control = Control::new(server.clone(), None);
    match selector {
        0 => {
            let Some(m) = decode::<IssueNodeCertificateRequest>(body) else { return };
            let valid_size = !m.csr.is_empty() && m.csr.len() <= MAX_CSR_SIZE;
            let role = if m.token == tokens.manager {
                Some(1)
            } else if m.token == tokens.worker {
                Some(0)
            } else {
                None
            };
            let (csr, r) = (m.csr.clone(), server.issue_node_certificate(Request::new(m)).await);
            match (r, valid_size, role) {
                (Ok(resp), true, Some(role)) => {
                    let id = resp.into_inner().node_id;
                    let n = store.inner.core_node(&id);
                    let c = n.as_ref().and_then(|n| n.certificate.as_ref());
                    assert!(
                        c.is_some_and(|c| c.role == role && c.csr == csr && c.cn == id),
                        "join stored another request than it accepted"
                    );
                }
                (Ok(_), _, _) => panic!("join accepted an empty/oversized CSR or an invalid token"),
                (Err(s), true, Some(_)) => panic!("valid join refused: {s:?}"),
                (Err(s), _, _) => expect_code(&s, Code::InvalidArgument),
            }
        }
        1 => {
            let Some(m) = decode::<NodeCertificateStatusRequest>(body) else { return };
            let id = m.node_id.clone();
            let mut req = Request::new(m);
            // Bounds the wait for a node that is not final (none exists here).
            req.metadata_mut().insert("grpc-timeout", tonic::metadata::MetadataValue::from_static("1m"));
            let r = server.node_certificate_status(req).await;
            match (id.as_str(), r) {
                ("", Err(s)) => expect_code(&s, Code::InvalidArgument),
                (ISSUED_NODE | MANAGER_NODE, Ok(resp)) => {
                    assert_eq!(resp.into_inner().status.map(|s| s.state), Some(State::Issued as i32))
                }
                (FAILED_NODE, Ok(resp)) => {
                    assert_eq!(resp.into_inner().status.map(|s| s.state), Some(State::Failed as i32))
                }
                (_, Err(s)) => expect_code(&s, Code::NotFound),
                (other, Ok(_)) => panic!("status answered for unknown node {other:?}"),
            }
        }
        2 => {
            let Some(m) = decode::<GetRootCaCertificateRequest>(body) else { return };
            match server.get_root_ca_certificate(Request::new(m)).await {
                Ok(r) => assert_eq!(r.into_inner().certificate, material().root.cert_pem),
                Err(s) => panic!("GetRootCACertificate failed: {s:?}"),
            }
        }
        3 => {
            let Some(m) = decode::<GetUnlockKeyRequest>(body) else { return };
            // An anonymous caller never gets the unlock key.
            match server.get_unlock_key(Request::new(m)).await {
                Ok(_) => panic!("GetUnlockKey answered an anonymous caller"),
                Err(s) => expect_code(&s, Code::PermissionDenied),
            }
        }
        4 => {
            let Some(m) = decode::<admin::JoinTokenRequest>(body) else { return };
            let (role, rotate) = (m.role, m.rotate);
            let r = Admin::join_token(&control, Request::new(m)).await;
            match (role, r) {
                (0 | 1, Ok(resp)) => {
                    let t = resp.into_inner().token;
                    let old = if role == 1 { &tokens.manager } else { &tokens.worker };
                    assert_eq!(rotate, &t != old, "rotate={rotate} but token changed={}", &t != old);
                    assert!(parse_join_token(&t).is_ok(), "JoinToken returned an unparsable token");
                }
                (0 | 1, Err(s)) => panic!("JoinToken for a valid role failed: {s:?}"),
                (_, Ok(_)) => panic!("JoinToken accepted role {role}"),
                (_, Err(s)) => expect_code(&s, Code::InvalidArgument),
            }
        }
        5 => {
            let Some(m) = decode::<admin::ListNodesRequest>(body) else { return };
            let r = Admin::list_nodes(&control, Request::new(m)).await;
            assert!(r.is_ok_and(|r| r.into_inner().nodes.len() == 3), "ListNodes");
        }
        6..=9 => {
            let Some(m) = decode::<admin::NodeRequest>(body) else { return };
            let known = [ISSUED_NODE, FAILED_NODE, MANAGER_NODE].contains(&m.node_id.as_str());
            let req = Request::new(m);
            let r = match selector {
                6 => Admin::inspect_node(&control, req).await,
                7 => Admin::promote_node(&control, req).await,
                8 => Admin::demote_node(&control, req).await,
                _ => Admin::accept_node(&control, req).await,
            };
            match r {
                Ok(_) => assert!(known, "a node request succeeded for an unknown node"),
                Err(s) => {
                    assert!(!known, "a node request failed for a known node: {s:?}");
                    expect_code(&s, Code::NotFound);
                }
            }
        }
        10 => {
            let Some(m) = decode::<admin::RemoveNodeRequest>(body) else { return };
            let (id, force) = (m.node_id.clone(), m.force);
            let r = Admin::remove_node(&control, Request::new(m)).await;
            let blacklisted = store
                .inner
                .core_cluster(CLUSTER_ID)
                .is_some_and(|c| c.blacklisted_certificates.contains_key(&id));
            let gone = store.inner.core_node(&id).is_none();
            match r {
                Ok(_) => assert!(gone && blacklisted, "removed node not deleted and blacklisted"),
                Err(s) => {
                    assert!(!blacklisted, "a failed removal blacklisted {id:?}");
                    if id == MANAGER_NODE {
                        assert!(!force, "forced removal of a manager failed: {s:?}");
                    }
                }
            }
        }
        11 => {
            let Some(m) = decode::<admin::ClusterInfoRequest>(body) else { return };
            let r = Admin::get_cluster_info(&control, Request::new(m)).await;
            assert!(r.is_ok_and(|r| r.into_inner().id == CLUSTER_ID), "GetClusterInfo");
        }
        12 => {
            let Some(m) = decode::<admin::UpdateClusterRequest>(body) else { return };
            let secs = m.cert_expiry_secs;
            let urls_ok = !m.set_external_cas
                || m.external_cas
                    .iter()
                    .all(|e| e.url.starts_with("https://") || e.url.starts_with("http://"));
            let expiry_ok =
                secs == 0 || (3600..=swarmca_core::rootca::ROOT_CA_VALIDITY.as_secs()).contains(&secs);
            let r = Admin::update_cluster(&control, Request::new(m)).await;
            match r {
                Ok(_) => assert!(urls_ok && expiry_ok, "UpdateCluster accepted an invalid setting"),
                Err(s) => {
                    assert!(!(urls_ok && expiry_ok), "valid UpdateCluster refused: {s:?}");
                    expect_code(&s, Code::InvalidArgument);
                }
            }
        }
        _ => {
            let Some(m) = decode::<admin::UnlockKeyRequest>(body) else { return };
            let rotate = m.rotate;
            match Admin::unlock_key(&control, Request::new(m)).await {
                Ok(r) => {
                    assert!(!rotate && r.into_inner().unlock_key.is_empty(), "unlock key without autolock")
                }
                Err(s) => {
                    assert!(rotate, "UnlockKey failed: {s:?}");
                    expect_code(&s, Code::FailedPrecondition);
                }
            }
        }
    }
}

fn expect_code(s: &Status, code: Code) {
    assert_eq!(s.code(), code, "unexpected status {s:?}");
}
