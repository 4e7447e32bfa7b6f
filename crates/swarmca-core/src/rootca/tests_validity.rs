//! How long an issued certificate lives: the cluster's expiry plus the backdate, never past
//! the life of what it chains through.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::role::Role;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap().into_bytes()
}

fn not_after(pem: &[u8]) -> i64 {
    crate::policy::leaf_not_after(pem).unwrap()
}

#[test]
fn a_leaf_is_cut_to_the_life_of_its_root() {
    // A root made 20 years minus two hours ago: two hours left (plus its one-hour backdate).
    let now = 1_700_000_000u64;
    let made = now - (ROOT_CA_VALIDITY.as_secs() - 2 * 3600);
    let root = generate_root("swarm-ca", at(made), [9; 20]).unwrap();
    let root_end = not_after(&root.cert_pem);
    assert!(root_end > now as i64 && root_end < (now + 3 * 3600) as i64, "{root_end}");
    let ca =
        RootCa::new(&root.cert_pem, &root.cert_pem, &root.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", at(now))
            .unwrap();
    let leaf = ca.sign_csr(&csr(), "node-1", Role::Worker, "cluster-1", at(now), [7; 20]).unwrap();
    assert_eq!(not_after(&leaf), root_end, "a 90-day leaf under a root with hours left");
    // The leaf verifies until its end, which is the root's.
    let der = crate::rootca::chain::parse_certs_pem(&leaf).unwrap();
    assert!(ca.verify_peer(&der, at(root_end as u64 - 60)).is_ok());

    // A leaf that ends before its root is left as the expiry says.
    let ca =
        RootCa::new(&root.cert_pem, &root.cert_pem, &root.key_pem, Duration::from_secs(3600), b"", at(now))
            .unwrap();
    let leaf = ca.sign_csr(&csr(), "node-1", Role::Worker, "cluster-1", at(now), [8; 20]).unwrap();
    let backdated_start = ((now + 30) / 60 * 60 - 3600) as i64;
    assert_eq!(not_after(&leaf), backdated_start + 2 * 3600);
    assert!(not_after(&leaf) < root_end);
}

#[test]
fn a_leaf_signed_through_a_cross_signed_root_ends_with_the_shorter_of_the_two() {
    // During a rotation the signer is the new root cross-signed by the old: the leaf must not
    // outlive the old root it chains to through the cross-signed certificate.
    let now = 1_700_000_000u64;
    let old = generate_root("swarm-ca", at(now - (ROOT_CA_VALIDITY.as_secs() - 5 * 3600)), [1; 20]).unwrap();
    let new = generate_root("swarm-ca-2", at(now), [2; 20]).unwrap();
    let old_ca =
        RootCa::new(&old.cert_pem, &old.cert_pem, &old.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", at(now))
            .unwrap();
    let cross = old_ca.cross_sign(&new.cert_pem).unwrap();
    let ca =
        RootCa::new(&old.cert_pem, &cross, &new.key_pem, DEFAULT_NODE_CERT_EXPIRY, &cross, at(now)).unwrap();
    let leaf = ca.sign_csr(&csr(), "node-2", Role::Manager, "cluster-1", at(now), [3; 20]).unwrap();
    let end = not_after(&leaf);
    assert!(end <= not_after(&old.cert_pem) && end <= not_after(&cross), "{end}");
    assert!(end > (now + 3 * 3600) as i64);
}

#[test]
fn a_ca_kept_running_past_its_root_signs_nothing() {
    // Loaded while its root had two hours left, asked to sign once it has ended.
    let now = 1_700_000_000u64;
    let root = generate_root("swarm-ca", at(now - (ROOT_CA_VALIDITY.as_secs() - 2 * 3600)), [4; 20]).unwrap();
    let end = not_after(&root.cert_pem);
    let ca =
        RootCa::new(&root.cert_pem, &root.cert_pem, &root.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", at(now))
            .unwrap();
    let err = ca.sign_csr(&csr(), "node-1", Role::Worker, "cluster-1", at(end as u64), [5; 20]).unwrap_err();
    assert_eq!(err, SignError::Expired(end));
    assert!(err.is_recoverable(), "a rotation may bring a signer");
    assert!(err.to_string().contains("rotate the root CA"));
    // A second before the end it still signs, cut to that end.
    let leaf = ca.sign_csr(&csr(), "node-1", Role::Worker, "cluster-1", at(end as u64 - 1), [6; 20]).unwrap();
    assert_eq!(not_after(&leaf), end);
}
