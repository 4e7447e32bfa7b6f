use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use time::OffsetDateTime;

use super::*;
use crate::rootca::{generate_root, GeneratedRoot, DEFAULT_NODE_CERT_EXPIRY};

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_017)
}

const HOUR: Duration = Duration::from_secs(3600);

fn root(cn: &str) -> (GeneratedRoot, RootCa) {
    let g = generate_root(cn, t0(), [7; 20]).unwrap();
    let ca = RootCa::new(&g.cert_pem, &g.cert_pem, &g.key_pem, DEFAULT_NODE_CERT_EXPIRY, b"", t0()).unwrap();
    (g, ca)
}

fn csr() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default().serialize_request(&key).unwrap();
    (key, csr.pem().unwrap().into_bytes())
}

/// A leaf for `key` signed by `root` with the given subject and usages.
fn leaf(
    root: &GeneratedRoot,
    key: &KeyPair,
    subject: &[(DnType, &str)],
    eku: Vec<ExtendedKeyUsagePurpose>,
    is_ca: bool,
) -> Vec<u8> {
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        std::str::from_utf8(&root.cert_pem).unwrap(),
        KeyPair::from_pem(std::str::from_utf8(&root.key_pem).unwrap()).unwrap(),
    )
    .unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for (ty, v) in subject {
        params.distinguished_name.push(ty.clone(), *v);
    }
    params.not_before = OffsetDateTime::from(t0() - HOUR);
    params.not_after = OffsetDateTime::from(t0() + HOUR);
    params.extended_key_usages = eku;
    params.is_ca = if is_ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
    params.signed_by(key, &issuer).unwrap().pem().into_bytes()
}

const BOTH: [ExtendedKeyUsagePurpose; 2] =
    [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];

fn subject<'a>(cn: &'a str, ou: &'a str, o: &'a str) -> Vec<(DnType, &'a str)> {
    vec![(DnType::OrganizationName, o), (DnType::OrganizationalUnitName, ou), (DnType::CommonName, cn)]
}

#[test]
fn accepts_what_the_local_signer_issues() {
    let (_, ca) = root("root");
    let (_, csr) = csr();
    let pem = ca.sign_csr(&csr, "node1", Role::Manager, "org", t0(), [3; 20]).unwrap();
    ca.check_issued(&pem, &csr, "node1", Role::Manager, "org", t0()).unwrap();
}

#[test]
fn accepts_a_leaf_without_eku_and_refuses_one_for_client_auth_only() {
    let (g, ca) = root("root");
    let (key, csr) = csr();
    let none = leaf(&g, &key, &subject("n", "swarm-worker", "org"), vec![], false);
    ca.check_issued(&none, &csr, "n", Role::Worker, "org", t0()).unwrap();
    let client_only = leaf(
        &g,
        &key,
        &subject("n", "swarm-worker", "org"),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        false,
    );
    let e = ca.check_issued(&client_only, &csr, "n", Role::Worker, "org", t0()).unwrap_err();
    assert!(matches!(e, IssuedCertError::Chain(_)), "{e}");
}

#[test]
fn refuses_another_key() {
    let (g, ca) = root("root");
    let (_, csr) = csr();
    let other = KeyPair::generate().unwrap();
    let pem = leaf(&g, &other, &subject("n", "swarm-worker", "org"), BOTH.to_vec(), false);
    let e = ca.check_issued(&pem, &csr, "n", Role::Worker, "org", t0()).unwrap_err();
    assert_eq!(e, IssuedCertError::KeyMismatch);
}

#[test]
fn refuses_a_wrong_subject() {
    let (g, ca) = root("root");
    let (key, csr) = csr();
    for (cn, ou, o, field) in [
        ("other", "swarm-worker", "org", "CN"),
        ("n", "swarm-manager", "org", "OU"),
        ("n", "swarm-worker", "other-org", "O"),
    ] {
        let pem = leaf(&g, &key, &subject(cn, ou, o), BOTH.to_vec(), false);
        match ca.check_issued(&pem, &csr, "n", Role::Worker, "org", t0()).unwrap_err() {
            IssuedCertError::Subject { field: f, .. } => assert_eq!(f, field),
            e => panic!("{field}: {e}"),
        }
    }
    // Two OUs: a worker certificate must not also claim the manager role.
    let mut two = subject("n", "swarm-worker", "org");
    two.push((DnType::OrganizationalUnitName, "swarm-manager"));
    let pem = leaf(&g, &key, &two, BOTH.to_vec(), false);
    let e = ca.check_issued(&pem, &csr, "n", Role::Worker, "org", t0()).unwrap_err();
    assert!(matches!(e, IssuedCertError::Subject { field: "OU", .. }), "{e}");
}

#[test]
fn refuses_a_foreign_root_an_expired_leaf_and_a_ca_leaf() {
    let (_, ca) = root("root");
    let (other, _) = root("other-root");
    let (key, csr) = csr();
    let foreign = leaf(&other, &key, &subject("n", "swarm-worker", "org"), BOTH.to_vec(), false);
    let e = ca.check_issued(&foreign, &csr, "n", Role::Worker, "org", t0()).unwrap_err();
    assert!(matches!(e, IssuedCertError::Chain(_)), "{e}");

    let (g, ca) = root("root");
    let ok = leaf(&g, &key, &subject("n", "swarm-worker", "org"), BOTH.to_vec(), false);
    let late = t0() + 2 * HOUR;
    let e = ca.check_issued(&ok, &csr, "n", Role::Worker, "org", late).unwrap_err();
    assert!(matches!(e, IssuedCertError::Chain(_)), "{e}");

    let ca_leaf = leaf(&g, &key, &subject("n", "swarm-worker", "org"), BOTH.to_vec(), true);
    let e = ca.check_issued(&ca_leaf, &csr, "n", Role::Worker, "org", t0()).unwrap_err();
    assert!(matches!(e, IssuedCertError::Chain(_)), "{e}");
}

#[test]
fn refuses_garbage() {
    let (_, ca) = root("root");
    let (_, csr) = csr();
    for bundle in [&b""[..], b"not pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
        let e = ca.check_issued(bundle, &csr, "n", Role::Worker, "org", t0()).unwrap_err();
        assert!(matches!(e, IssuedCertError::Malformed(_)), "{e}");
    }
    let pem = ca.sign_csr(&csr, "n", Role::Worker, "org", t0(), [3; 20]).unwrap();
    let e = ca.check_issued(&pem, b"garbage", "n", Role::Worker, "org", t0()).unwrap_err();
    assert!(matches!(e, IssuedCertError::Csr(_)), "{e}");
}
