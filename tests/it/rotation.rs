//! Root rotation: SwarmKit's reconciler tests (docs/behaviour.md §7.1 #16–#19) on the in-process server, and
//! the rotation control path (start, restart, abort, completion).

use std::time::{Duration, SystemTime};

use swarmca_core::role::Role;
use swarmca_core::rootca::{
    digest, digest_string, generate_root, issuer_info_of_cert_pem, GeneratedRoot, RootCa,
};
use swarmca_core::token::parse_join_token;
use swarmca_proto::admin;
use swarmca_server::{root_ca_equal_stable, Control};
use swarmca_store::{Node, Op, Store};
use swarmca_types::issuance_status::State;
use swarmca_types::node_spec::Membership;
use swarmca_types::{
    Certificate, IssuanceStatus, NodeDescription, NodeSpec, NodeTlsInfo, RootCa as ApiRootCa,
};

use crate::fixture::*;

fn new_root() -> GeneratedRoot {
    generate_root("swarm-test-CA", SystemTime::now(), serial()).unwrap()
}

fn tls_info_of(pem: &[u8]) -> NodeTlsInfo {
    let (subject, spki) = issuer_info_of_cert_pem(pem).unwrap();
    NodeTlsInfo { trust_root: Vec::new(), cert_issuer_subject: subject, cert_issuer_public_key: spki }
}

/// `ca_cert`/`ca_key` rotating to `target`, cross-signed by `current` (which holds its key).
fn rotating(current_cert: &[u8], current_key: &[u8], target: &GeneratedRoot) -> ApiRootCa {
    let ca = RootCa::new(
        current_cert,
        current_cert,
        current_key,
        Duration::from_secs(3600),
        b"",
        SystemTime::now(),
    )
    .unwrap();
    ApiRootCa {
        ca_key: current_key.to_vec(),
        ca_cert: current_cert.to_vec(),
        ca_cert_hash: digest_string(current_cert),
        join_tokens: None,
        root_rotation: Some(swarmca_types::RootRotation {
            ca_cert: target.cert_pem.clone(),
            ca_key: target.key_pem.clone(),
            cross_signed_ca_cert: ca.cross_sign(&target.cert_pem).unwrap(),
        }),
        last_forced_rotation: 0,
    }
}

/// A node `id` in `state`, membership accepted (`m`) or pending, reporting `issuer` (PEM of a
/// root) if given. RENEW/PENDING nodes carry a fresh CSR so the CA can sign them.
fn node(id: &str, state: State, accepted: bool, issuer: Option<&[u8]>) -> Node {
    let (csr, _) = new_csr();
    Node {
        id: id.to_string(),
        role: Role::Worker.to_proto(),
        spec: Some(NodeSpec {
            membership: if accepted { Membership::Accepted } else { Membership::Pending } as i32,
            ..Default::default()
        }),
        description: issuer
            .map(|pem| NodeDescription { hostname: String::new(), tls_info: Some(tls_info_of(pem)) }),
        certificate: Some(Certificate {
            role: Role::Worker.to_proto(),
            csr,
            status: Some(IssuanceStatus { state: state as i32, err: String::new() }),
            certificate: Vec::new(),
            cn: id.to_string(),
        }),
        ..Default::default()
    }
}

/// Replaces every node of the store with `nodes` (the fixture's own nodes included).
async fn set_nodes(f: &Fixture, nodes: Vec<Node>) {
    let snap = f.store.view(swarmca_store::WatchFilter::All).await.unwrap();
    let mut ops: Vec<Op> = snap.nodes.into_iter().map(Op::DeleteNode).collect();
    ops.extend(nodes.into_iter().map(Op::CreateNode));
    f.store.commit(ops).await.unwrap();
}

/// Upserts `nodes`, keeping their version current.
async fn put_nodes(f: &Fixture, nodes: Vec<Node>) {
    for n in nodes {
        match f.node(&n.id).await {
            Some(old) => {
                let mut n = n;
                n.meta = old.meta;
                f.store.commit(vec![Op::UpdateNode(n)]).await.unwrap();
            }
            None => {
                f.store.commit(vec![Op::CreateNode(n)]).await.unwrap();
            }
        }
    }
}

async fn set_root(f: &Fixture, root: ApiRootCa) {
    f.update_cluster(|c| {
        let tokens = c.root_ca.as_ref().and_then(|r| r.join_tokens.clone());
        c.root_ca = Some(ApiRootCa { join_tokens: tokens, ..root.clone() });
    })
    .await;
}

async fn states(f: &Fixture) -> Vec<(String, i32)> {
    let snap = f.store.view(swarmca_store::WatchFilter::All).await.unwrap();
    snap.nodes.iter().map(|n| (n.id.clone(), state_of(n))).collect()
}

fn want(pairs: &[(&str, State)]) -> Vec<(String, i32)> {
    let mut v: Vec<_> = pairs.iter().map(|(id, s)| (id.to_string(), *s as i32)).collect();
    v.sort();
    v
}

/// Waits up to 5 s for the node states to equal `expected`.
async fn expect_states(f: &Fixture, expected: &[(&str, State)]) {
    let expected = want(expected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = states(f).await;
        if got == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "node states\n got {got:?}\nwant {expected:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits up to 5 s for the server's signer key to be `key`.
async fn expect_signer_key(f: &Fixture, key: &[u8]) {
    eventually(5, || async {
        f.server.root_ca().and_then(|r| r.signer_key_pem().map(<[u8]>::to_vec)) == Some(key.to_vec())
    })
    .await;
}

/// Spec §7.1 #16, TestRootRotationReconciliationWithChanges: six scenarios in sequence.
#[tokio::test]
async fn root_rotation_reconciliation_with_changes() {
    use State::*;
    let mut f = Fixture::start().await;
    let old = (f.root_pem.clone(), f.root_key_pem.clone());
    let r0 = new_root();
    let r1 = new_root();
    let to_r0 = rotating(&old.0, &old.1, &r0);

    // 1. No TLS info; rotation R0 started after the CA runs. RENEW and PENDING(m) nodes are
    //    signed first, then marked; PENDING(p) is never touched.
    f.stop_server().await;
    set_nodes(
        &f,
        vec![
            node("0", Pending, false, None),
            node("1", Issued, true, None),
            node("2", Renew, true, None),
            node("3", Rotate, true, None),
            node("4", Pending, true, None),
            node("5", Failed, true, None),
            node("6", Issued, false, None),
        ],
    )
    .await;
    f.run_server().await;
    set_root(&f, to_r0.clone()).await;
    expect_states(
        &f,
        &[
            ("0", Pending),
            ("1", Rotate),
            ("2", Rotate),
            ("3", Rotate),
            ("4", Rotate),
            ("5", Rotate),
            ("6", Rotate),
        ],
    )
    .await;
    for id in ["2", "4"] {
        let n = f.node(id).await.unwrap();
        assert!(!n.certificate.unwrap().certificate.is_empty(), "node {id} was signed before being marked");
    }
    assert!(root_ca_equal_stable(&f.cluster().await.root_ca.unwrap(), &to_r0));
    expect_signer_key(&f, &r0.key_pem).await;

    // 2. Same rotation, set before the CA starts; TLS info new on 1, 3, 4 and old on 2, 5, 6.
    f.stop_server().await;
    set_nodes(
        &f,
        vec![
            node("0", Pending, false, None),
            node("1", Issued, true, Some(&r0.cert_pem)),
            node("2", Issued, true, Some(&old.0)),
            node("3", Issued, true, Some(&r0.cert_pem)),
            node("4", Issued, true, Some(&r0.cert_pem)),
            node("5", Issued, true, Some(&old.0)),
            node("6", Issued, false, Some(&old.0)),
        ],
    )
    .await;
    f.run_server().await;
    let s2 = [
        ("0", Pending),
        ("1", Issued),
        ("2", Rotate),
        ("3", Issued),
        ("4", Issued),
        ("5", Rotate),
        ("6", Rotate),
    ];
    expect_states(&f, &s2).await;

    // 3. A new RENEW node without TLS info: signed, then marked; the others unchanged.
    put_nodes(&f, vec![node("7", Renew, true, None)]).await;
    let mut s3 = s2.to_vec();
    s3.push(("7", Rotate));
    expect_states(&f, &s3).await;
    assert!(!f.node("7").await.unwrap().certificate.unwrap().certificate.is_empty());

    // 4. The target changes to R1 mid-rotation: nodes on R0 (1, 4, 6, 7) and on the old root
    //    (5) are marked; 3, already on R1, and 2 stay ISSUED.
    put_nodes(
        &f,
        vec![
            node("1", Issued, true, Some(&r0.cert_pem)),
            node("2", Issued, true, Some(&r1.cert_pem)),
            node("3", Issued, true, Some(&r1.cert_pem)),
            node("4", Issued, true, Some(&r0.cert_pem)),
            node("5", Issued, true, Some(&old.0)),
            node("6", Issued, false, Some(&r0.cert_pem)),
            node("7", Issued, true, Some(&r0.cert_pem)),
        ],
    )
    .await;
    let to_r1 = rotating(&old.0, &old.1, &r1);
    set_root(&f, to_r1.clone()).await;
    expect_states(
        &f,
        &[
            ("0", Pending),
            ("1", Rotate),
            ("2", Issued),
            ("3", Issued),
            ("4", Rotate),
            ("5", Rotate),
            ("6", Rotate),
            ("7", Rotate),
        ],
    )
    .await;
    expect_signer_key(&f, &r1.key_pem).await;

    // 5. Everyone reports R1 (node 0 too, ISSUED but still pending membership): the rotation
    //    completes with R1 as root, its key, its digest, and fresh tokens for it.
    let before = f.cluster().await.root_ca.unwrap().join_tokens.unwrap();
    let mut all = vec![node("0", Issued, false, Some(&r1.cert_pem))];
    for id in ["1", "2", "3", "4", "5", "6", "7"] {
        all.push(node(id, Issued, true, Some(&r1.cert_pem)));
    }
    put_nodes(&f, all).await;
    eventually(5, || async { f.cluster().await.root_ca.unwrap().root_rotation.is_none() }).await;
    let done = f.cluster().await.root_ca.unwrap();
    assert_eq!(done.ca_cert, r1.cert_pem);
    assert_eq!(done.ca_key, r1.key_pem);
    assert_eq!(done.ca_cert_hash, digest_string(&r1.cert_pem));
    let tokens = done.join_tokens.clone().unwrap();
    assert_ne!(tokens.worker, before.worker);
    assert_ne!(tokens.manager, before.manager);
    assert_ne!(tokens.worker, tokens.manager);
    for t in [&tokens.worker, &tokens.manager] {
        assert_eq!(parse_join_token(t).unwrap().root_digest, digest(&r1.cert_pem));
    }
    expect_signer_key(&f, &r1.key_pem).await;

    // 6. Restart: a rotation back to R0 is written while the server is stopped; nodes are on
    //    R1. After start every accepted node and node 7 are marked; node 0, PENDING(p) with no
    //    info, stays PENDING.
    f.stop_server().await;
    let mut nodes = vec![node("0", Pending, false, None)];
    for id in ["1", "2", "3", "4", "5", "6", "7"] {
        nodes.push(node(id, Issued, true, Some(&r1.cert_pem)));
    }
    set_nodes(&f, nodes).await;
    let back = rotating(&r1.cert_pem, &r1.key_pem, &r0);
    set_root(&f, back.clone()).await;
    f.run_server().await;
    expect_states(
        &f,
        &[
            ("0", Pending),
            ("1", Rotate),
            ("2", Rotate),
            ("3", Rotate),
            ("4", Rotate),
            ("5", Rotate),
            ("6", Rotate),
            ("7", Rotate),
        ],
    )
    .await;
    assert!(root_ca_equal_stable(&f.cluster().await.root_ca.unwrap(), &back));
    expect_signer_key(&f, &r0.key_pem).await;
}

/// Spec §7.1 #17, TestRootRotationReconciliationNoChanges.
#[tokio::test]
async fn root_rotation_reconciliation_no_changes() {
    use State::*;
    let mut f = Fixture::start().await;
    let old = (f.root_pem.clone(), f.root_key_pem.clone());
    let r0 = new_root();
    let to_r0 = rotating(&old.0, &old.1, &r0);

    // 1. A rotation whose unconverged nodes are all PENDING or ROTATE already: nothing to do,
    //    nothing finishes.
    f.stop_server().await;
    set_nodes(
        &f,
        vec![
            node("0", Pending, false, None),
            node("1", Issued, true, Some(&r0.cert_pem)),
            node("2", Rotate, true, Some(&old.0)),
            node("3", Rotate, false, Some(&r0.cert_pem)),
        ],
    )
    .await;
    set_root(&f, to_r0.clone()).await;
    f.run_server().await;
    let s1 = [("0", Pending), ("1", Issued), ("2", Rotate), ("3", Rotate)];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(states(&f).await, want(&s1));
    assert!(root_ca_equal_stable(&f.cluster().await.root_ca.unwrap(), &to_r0));
    expect_signer_key(&f, &r0.key_pem).await;

    // 2. Aborted: nodes in ROTATE stay ROTATE, and a node on another issuer is not marked
    //    because no rotation is active.
    let aborted = ApiRootCa { root_rotation: None, ..to_r0.clone() };
    set_root(&f, aborted.clone()).await;
    put_nodes(&f, vec![node("1", Issued, true, Some(&r0.cert_pem))]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(states(&f).await, want(&s1));
    assert!(root_ca_equal_stable(&f.cluster().await.root_ca.unwrap(), &aborted));
    expect_signer_key(&f, &old.1).await;
}

/// Spec §7.1 #18, TestRootRotationReconciliationRace: five servers on one store, ten
/// successive rotations; the last one completes everywhere.
#[tokio::test]
async fn root_rotation_reconciliation_race() {
    let mut f = Fixture::start().await;
    f.stop_server().await;
    let nodes: Vec<Node> =
        (0..5).map(|i| node(&format!("n{i}"), State::Issued, true, Some(&f.root_pem))).collect();
    set_nodes(&f, nodes).await;
    let servers: Vec<_> = (1..=5u64).map(|i| f.extra_server(Duration::from_millis(10 * i))).collect();
    let runs: Vec<_> = servers
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.run().await })
        })
        .collect();
    for s in &servers {
        tokio::time::timeout(Duration::from_secs(5), s.ready()).await.unwrap();
    }
    let mut last = None;
    for _ in 0..10 {
        let target = new_root();
        let current = f.cluster().await.root_ca.unwrap();
        set_root(&f, rotating(&current.ca_cert, &current.ca_key, &target)).await;
        let ids: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        for id in &ids {
            let info = tls_info_of(&target.cert_pem);
            f.update_node(id, |n| {
                n.description =
                    Some(NodeDescription { hostname: String::new(), tls_info: Some(info.clone()) })
            })
            .await;
        }
        last = Some(target);
    }
    let last = last.unwrap();
    eventually(5, || async {
        let r = f.cluster().await.root_ca.unwrap();
        r.root_rotation.is_none() && r.ca_cert == last.cert_pem && r.ca_key == last.key_pem
    })
    .await;
    for s in &servers {
        eventually(5, || async {
            s.root_ca().and_then(|r| r.signer_key_pem().map(<[u8]>::to_vec)) == Some(last.key_pem.clone())
        })
        .await;
    }
    for s in &servers {
        s.stop().await.unwrap();
    }
    for r in runs {
        r.await.unwrap().unwrap();
    }
}

/// Spec §7.1 #19, TestRootRotationReconciliationThrottled: at most 30 nodes per interval.
#[tokio::test]
async fn root_rotation_reconciliation_throttled() {
    let f = Fixture::with(Opts { reconcile_interval: Duration::from_secs(3600), ..Opts::default() }).await;
    let existing = states(&f).await.len();
    let nodes: Vec<Node> =
        (existing..60).map(|i| node(&format!("t{i:02}"), State::Issued, true, None)).collect();
    put_nodes(&f, nodes).await;
    assert_eq!(states(&f).await.len(), 60);
    let r0 = new_root();
    set_root(&f, rotating(&f.root_pem, &f.root_key_pem, &r0)).await;
    let rotating_count =
        || async { states(&f).await.iter().filter(|(_, s)| *s == State::Rotate as i32).count() };
    eventually(5, || async { rotating_count().await == 30 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rotating_count().await, 30);
}

/// The rotation control path: start (generated root), restart towards a given root, abort,
/// then a full rotation driven by nodes fetching their new certificates, which completes with
/// fresh tokens; the old tokens are refused afterwards.
#[tokio::test]
async fn rotation_control_start_restart_abort_and_complete() {
    let f = Fixture::with(Opts { peers: PeerSource::Metadata, ..Opts::default() }).await;
    let control = Control::new(f.server.clone(), None);
    let idle = control.rotation_status().await.unwrap();
    assert!(!idle.in_progress);
    assert_eq!(idle.current_digest, digest_string(&f.root_pem));
    // Aborting nothing, or rotating to the current root, is refused.
    let abort = admin::RotateRootRequest { abort: true, ..Default::default() };
    assert!(control.rotate_root(abort.clone()).await.is_err());
    let same = admin::RotateRootRequest {
        ca_cert: f.root_pem.clone(),
        ca_key: f.root_key_pem.clone(),
        ..Default::default()
    };
    assert!(control.rotate_root(same).await.is_err());
    // A key without a certificate, or a certificate without key and without external CA.
    let r = new_root();
    assert!(control
        .rotate_root(admin::RotateRootRequest { ca_key: r.key_pem.clone(), ..Default::default() })
        .await
        .is_err());
    assert!(control
        .rotate_root(admin::RotateRootRequest { ca_cert: r.cert_pem.clone(), ..Default::default() })
        .await
        .is_err());
    // A leaf is not a root.
    let leaf = issue_creds(&f.root, "x", Role::Worker, "o");
    assert!(control
        .rotate_root(admin::RotateRootRequest {
            ca_cert: leaf.cert_pem,
            ca_key: leaf.key_pem,
            ..Default::default()
        })
        .await
        .is_err());

    // Start with a generated root.
    let st = control.rotate_root(admin::RotateRootRequest::default()).await.unwrap();
    assert!(st.in_progress);
    let first_target = st.target_digest.clone();
    assert_ne!(first_target, st.current_digest);
    // Restart towards a given root, with a new expiry in the same update.
    let given = new_root();
    let st = control
        .rotate_root(admin::RotateRootRequest {
            ca_cert: given.cert_pem.clone(),
            ca_key: given.key_pem.clone(),
            cert_expiry_secs: 7200,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(st.target_digest, digest_string(&given.cert_pem));
    let c = f.cluster().await;
    let rot = c.root_ca.clone().unwrap().root_rotation.unwrap();
    assert_eq!(rot.ca_key, given.key_pem);
    // Cross-signed by the current root: chains to it and carries the target's subject and key.
    RootCa::new(
        &f.root_pem,
        &rot.cross_signed_ca_cert,
        &given.key_pem,
        Duration::from_secs(3600),
        &rot.cross_signed_ca_cert,
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(c.spec.unwrap().ca_config.unwrap().node_cert_expiry.unwrap().seconds, 7200);
    // Same request again: no change.
    let again = control
        .rotate_root(admin::RotateRootRequest {
            ca_cert: given.cert_pem.clone(),
            ca_key: given.key_pem.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(again.target_digest, st.target_digest);
    // Abort: back to no rotation, same root.
    let st = control.rotate_root(abort.clone()).await.unwrap();
    assert!(!st.in_progress);
    assert_eq!(f.cluster().await.root_ca.unwrap().ca_cert, f.root_pem);

    // A full rotation: every node renews, then authenticates with its new certificate.
    let old_tokens = f.cluster().await.root_ca.unwrap().join_tokens.unwrap();
    let target = new_root();
    control
        .rotate_root(admin::RotateRootRequest {
            ca_cert: target.cert_pem.clone(),
            ca_key: target.key_pem.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (csr, _) = new_csr();
    let joined = f.join_in_process(&csr, &old_tokens.worker).await;
    // Nodes are asked to rotate; "renew" each one the way an agent would, then fetch.
    let ids: Vec<String> = f
        .store
        .view(swarmca_store::WatchFilter::All)
        .await
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.id)
        .collect();
    for id in &ids {
        eventually(5, || async {
            let s = state_of(&f.node(id).await.unwrap());
            s == State::Rotate as i32 || s == State::Issued as i32
        })
        .await;
        let (csr, _) = new_csr();
        f.update_node(id, |n| {
            let c = n.certificate.as_mut().unwrap();
            c.csr = csr.clone();
            c.certificate.clear();
            c.status = Some(IssuanceStatus { state: State::Renew as i32, err: String::new() });
        })
        .await;
        let resp = f.final_status(id).await;
        assert_eq!(resp.status.unwrap().state, State::Issued as i32, "node {id}");
        let cert_pem = resp.certificate.unwrap().certificate;
        // Fetched but not yet used: the node still counts as unconverged.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(f.cluster().await.root_ca.unwrap().root_rotation.is_some());
        let creds = Creds { node_id: id.clone(), cert_pem, key_pem: Vec::new() };
        use swarmca_proto::ca_server::Ca;
        let req = as_peer(tonic::Request::new(swarmca_types::GetRootCaCertificateRequest {}), &creds);
        f.server.get_root_ca_certificate(req).await.unwrap();
        eventually(5, || async {
            let n = f.node(id).await.unwrap();
            n.description.and_then(|d| d.tls_info).is_some_and(|t| {
                t.cert_issuer_public_key == tls_info_of(&target.cert_pem).cert_issuer_public_key
                    && !t.trust_root.is_empty()
            })
        })
        .await;
    }
    assert!(ids.contains(&joined));
    eventually(10, || async { f.cluster().await.root_ca.unwrap().root_rotation.is_none() }).await;
    let done = f.cluster().await.root_ca.unwrap();
    assert_eq!(done.ca_cert, target.cert_pem);
    let st = control.rotation_status().await.unwrap();
    assert!(!st.in_progress);
    assert_eq!(st.converged, st.nodes);
    // Old tokens are refused once the server has the new ones; new ones work.
    let new_tokens = done.join_tokens.unwrap();
    eventually(5, || async {
        use swarmca_proto::node_ca_server::NodeCa;
        let (csr, _) = new_csr();
        f.server
            .issue_node_certificate(tonic::Request::new(join_req(&csr, &old_tokens.worker)))
            .await
            .is_err()
    })
    .await;
    let (csr, _) = new_csr();
    let id = f.join_in_process(&csr, &new_tokens.worker).await;
    let resp = f.final_status(&id).await;
    let pem = resp.certificate.unwrap().certificate;
    let new_ca =
        RootCa::new(&target.cert_pem, b"", b"", Duration::from_secs(3600), b"", SystemTime::now()).unwrap();
    let chain: Vec<Vec<u8>> =
        ::pem::parse_many(&pem).unwrap().into_iter().map(|p| p.into_contents()).collect();
    assert_eq!(chain.len(), 1, "no intermediate after the rotation");
    new_ca.verify_peer(&chain, SystemTime::now()).unwrap();
    assert!(f.root.verify_peer(&chain, SystemTime::now()).is_err(), "not valid against the old root");
}

/// SwarmKit's nil-map case (docs/defects.md §8.4): a rotation to a root with the same subject and key as
/// the current one. The original's reconciler tracked nothing and never finished; here every
/// node already reports that issuer, so the rotation completes at once.
#[tokio::test]
async fn rotation_to_a_reissued_root_with_the_same_key_completes() {
    let f = Fixture::with(Opts { peers: PeerSource::Metadata, ..Opts::default() }).await;
    // The same subject and key, another serial and validity: a re-issued root certificate.
    let key = rcgen::KeyPair::from_pem(std::str::from_utf8(&f.root_key_pem).unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        rcgen::DnValue::PrintableString("swarm-test-CA".try_into().unwrap()),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let reissued = params.self_signed(&key).unwrap().pem().into_bytes();
    let (a, b) = (issuer_info_of_cert_pem(&reissued).unwrap(), issuer_info_of_cert_pem(&f.root_pem).unwrap());
    assert_eq!(a, b, "same subject and key");
    assert_ne!(reissued, f.root_pem);
    // Every node reports the current issuer, as nodes do once they have authenticated.
    let ids: Vec<String> = f
        .store
        .view(swarmca_store::WatchFilter::All)
        .await
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.id)
        .collect();
    for id in &ids {
        let info = tls_info_of(&f.root_pem);
        f.update_node(id, |n| {
            n.description = Some(NodeDescription { hostname: String::new(), tls_info: Some(info.clone()) })
        })
        .await;
    }
    let control = Control::new(f.server.clone(), None);
    control
        .rotate_root(admin::RotateRootRequest {
            ca_cert: reissued.clone(),
            ca_key: f.root_key_pem.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(5, || async { f.cluster().await.root_ca.unwrap().root_rotation.is_none() }).await;
    let done = f.cluster().await.root_ca.unwrap();
    assert_eq!(done.ca_cert, reissued);
    assert_eq!(done.ca_cert_hash, digest_string(&reissued));
    // No node was asked to renew: they were all converged.
    assert!(states(&f).await.iter().all(|(_, s)| *s != State::Rotate as i32));
}
