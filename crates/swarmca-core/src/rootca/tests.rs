use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::*;
use crate::csr::CsrError;
use rcgen::BasicConstraints;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::KeyIdMethod;
use rcgen::KeyUsagePurpose;
use time::OffsetDateTime;

/// Fixed test epoch: 2023-11-14T22:13:37Z (37 s past the minute, so it rounds up).
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_017)
}

fn secs(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn gen_root(cn: &str) -> GeneratedRoot {
    generate_root(cn, t0(), [0x42; 20]).unwrap()
}

fn signing_ca(root: &GeneratedRoot, expiry: Duration) -> RootCa {
    RootCa::new(&root.cert_pem, &root.cert_pem, &root.key_pem, expiry, b"", t0()).unwrap()
}

fn csr_for(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap().into_bytes()
}

fn p256_csr() -> Vec<u8> {
    csr_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// All certificate DERs of a PEM bundle.
fn ders(pem: &[u8]) -> Vec<Vec<u8>> {
    ::pem::parse_many(pem).unwrap().into_iter().map(|p| p.into_contents()).collect()
}

fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn attrs(name: &x509_parser::x509::X509Name<'_>) -> Vec<(String, String)> {
    name.iter_attributes().map(|a| (a.attr_type().to_id_string(), a.as_str().unwrap().to_string())).collect()
}

fn dns_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

const OID_CN: &str = "2.5.4.3";
const OID_OU: &str = "2.5.4.11";
const OID_O: &str = "2.5.4.10";

/// A leaf signed by `root` with an arbitrary subject, bypassing `sign_csr`.
fn custom_leaf(root: &GeneratedRoot, subject: &[(rcgen::DnType, &str)]) -> Vec<u8> {
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        std::str::from_utf8(&root.cert_pem).unwrap(),
        rcgen::KeyPair::from_pem(std::str::from_utf8(&root.key_pem).unwrap()).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (ty, v) in subject {
        params.distinguished_name.push(ty.clone(), *v);
    }
    params.not_before = OffsetDateTime::from(t0() - HOUR);
    params.not_after = OffsetDateTime::from(t0() + HOUR);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.is_ca = IsCa::ExplicitNoCa;
    params.signed_by(&key, &issuer).unwrap().der().to_vec()
}

/// `new_root` re-signed by `old_root` (SwarmKit `CrossSignCACertificate`): same subject,
/// key and extensions as `generate_root` produces.
fn cross_sign(new_root: &GeneratedRoot, new_cn: &str, old_root: &GeneratedRoot) -> Vec<u8> {
    let new_key = rcgen::KeyPair::from_pem(std::str::from_utf8(&new_root.key_pem).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        std::str::from_utf8(&old_root.cert_pem).unwrap(),
        rcgen::KeyPair::from_pem(std::str::from_utf8(&old_root.key_pem).unwrap()).unwrap(),
    )
    .unwrap();
    let new_cert_der = ders(&new_root.cert_pem).remove(0);
    let new_cert = parse(&new_cert_der);
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, dn_value(new_cn));
    params.not_before = new_cert.validity().not_before.to_datetime();
    params.not_after = new_cert.validity().not_after.to_datetime();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_id(new_key.public_key_raw()));
    params.use_authority_key_identifier_extension = true;
    params.signed_by(&new_key, &issuer).unwrap().pem().into_bytes()
}

// ---------------------------------------------------------------------------------------
// Issuance

#[test]
fn parse_validate_and_sign_csr() {
    let root = gen_root(DEFAULT_ROOT_CN);
    let ca = signing_ca(&root, DEFAULT_NODE_CERT_EXPIRY);
    for (role, expected_sans) in [
        (Role::Worker, vec!["swarm-worker", "node-1"]),
        (Role::Manager, vec!["swarm-manager", "node-1", "swarm-ca"]),
    ] {
        let pem = ca.sign_csr(&p256_csr(), "node-1", role, "cluster-1", t0(), [7; 20]).unwrap();
        let certs = ders(&pem);
        assert_eq!(certs.len(), 1, "no intermediates expected");
        let cert = parse(&certs[0]);
        assert_eq!(attrs(cert.issuer()), vec![(OID_CN.to_string(), "swarm-ca".to_string())]);
        // Subject RDN order O, OU, CN and nothing else.
        assert_eq!(
            attrs(cert.subject()),
            vec![
                (OID_O.to_string(), "cluster-1".to_string()),
                (OID_OU.to_string(), role.ou().to_string()),
                (OID_CN.to_string(), "node-1".to_string()),
            ]
        );
        assert_eq!(dns_sans(&cert), expected_sans);
        // The leaf chains to the root by name and signature.
        let root_der = ders(&root.cert_pem).remove(0);
        let root_cert = parse(&root_der);
        assert_eq!(cert.issuer().as_raw(), root_cert.subject().as_raw());
        cert.verify_signature(Some(root_cert.public_key())).unwrap();
        // And through rustls-webpki.
        let id = ca.verify_peer(&certs, t0()).unwrap();
        assert_eq!(
            id,
            PeerIdentity { node_id: "node-1".into(), roles: vec![role.ou().into()], org: "cluster-1".into() }
        );
        assert!(id.has_role(role.ou()));
    }
}

#[test]
fn malicious_csr_fields_are_ignored() {
    let root = gen_root(DEFAULT_ROOT_CN);
    let ca = signing_ca(&root, DEFAULT_NODE_CERT_EXPIRY);
    let csr = fixture("malicious.csr");
    let pem = ca.sign_csr(&csr, "node-2", Role::Worker, "cluster-2", t0(), [9; 20]).unwrap();
    let der = ders(&pem).remove(0);
    let cert = parse(&der);
    assert_eq!(
        attrs(cert.subject()),
        vec![
            (OID_O.to_string(), "cluster-2".to_string()),
            (OID_OU.to_string(), "swarm-worker".to_string()),
            (OID_CN.to_string(), "node-2".to_string()),
        ]
    );
    assert_eq!(dns_sans(&cert), vec!["swarm-worker", "node-2"]);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    // No extension of the CSR leaks, and the SKI is ours, not the CSR's.
    let oids: Vec<String> = cert.extensions().iter().map(|e| e.oid.to_id_string()).collect();
    assert!(!oids.contains(&"1.3.6.1.4.1.99999.1".to_string()), "{oids:?}");
    let ski = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(ski, key_id(&cert.public_key().subject_public_key.data));
    let csr_der = ::pem::parse(&csr).unwrap().into_contents();
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der).unwrap();
    let requested_ski = req
        .requested_extensions()
        .unwrap()
        .find_map(|e| match e {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(requested_ski, vec![0xde, 0xad, 0xbe, 0xef]);
    assert_ne!(ski, requested_ski);
    // The only thing taken from the CSR is its key.
    let parsed_csr = crate::csr::parse_csr_pem(&csr).unwrap();
    assert_eq!(cert.public_key().raw, parsed_csr.public_key_der());
    // A manager role does not come from the CSR's OU either.
    let id = ca.verify_peer(std::slice::from_ref(&der), t0()).unwrap();
    assert_eq!(id.roles, vec!["swarm-worker".to_string()]);
}

#[test]
fn go_style_csr_with_empty_subject_is_signed() {
    let root = gen_root(DEFAULT_ROOT_CN);
    let ca = signing_ca(&root, DEFAULT_NODE_CERT_EXPIRY);
    let pem = ca.sign_csr(&fixture("empty_subject.csr"), "n", Role::Manager, "c", t0(), [1; 20]).unwrap();
    let id = ca.verify_peer(&ders(&pem), t0()).unwrap();
    assert_eq!(id.node_id, "n");
    assert_eq!(id.org, "c");
}

#[test]
fn all_accepted_csr_key_types_are_signed() {
    let root = gen_root(DEFAULT_ROOT_CN);
    let ca = signing_ca(&root, DEFAULT_NODE_CERT_EXPIRY);
    for csr in [
        fixture("p256.csr"),
        fixture("p384.csr"),
        fixture("rsa2048.csr"),
        csr_for(&rcgen::PKCS_ECDSA_P384_SHA384),
    ] {
        let pem = ca.sign_csr(&csr, "node", Role::Worker, "org", t0(), [3; 20]).unwrap();
        ca.verify_peer(&ders(&pem), t0()).unwrap();
    }
}

#[test]
fn validity_window_follows_swarmkit() {
    let root = gen_root(DEFAULT_ROOT_CN);
    for (expiry, effective) in [
        (DEFAULT_NODE_CERT_EXPIRY, DEFAULT_NODE_CERT_EXPIRY),
        (HOUR, HOUR),
        (Duration::from_secs(59 * 60), DEFAULT_NODE_CERT_EXPIRY),
        (Duration::ZERO, DEFAULT_NODE_CERT_EXPIRY),
        (Duration::from_secs(30 * 24 * 3600), Duration::from_secs(30 * 24 * 3600)),
    ] {
        let ca = signing_ca(&root, expiry);
        assert_eq!(ca.expiry(), effective);
        // t0 is 37 s past the minute: rounds up. t0 + 23 s is on the minute. t0 - 7 s is
        // 30 s past: halves round up (away from zero, like Go). t0 - 8 s rounds down.
        for (now, minute) in [
            (t0(), 1_700_000_040),
            (t0() + Duration::from_secs(23), 1_700_000_040),
            (t0() - Duration::from_secs(7), 1_700_000_040),
            (t0() - Duration::from_secs(8), 1_699_999_980),
            (t0() + Duration::from_secs(53), 1_700_000_100),
        ] {
            let pem = ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", now, [5; 20]).unwrap();
            let der = ders(&pem).remove(0);
            let cert = parse(&der);
            let nb = cert.validity().not_before.timestamp();
            let na = cert.validity().not_after.timestamp();
            assert_eq!(nb, minute - 3600, "expiry {expiry:?}, now {}", secs(now));
            assert_eq!(na, nb + i64::try_from(effective.as_secs()).unwrap() + 3600);
            // About now + expiry.
            assert!((na - secs(now) - i64::try_from(effective.as_secs()).unwrap()).abs() <= 30);
        }
    }
}

#[test]
fn effective_expiry_replaces_short_values() {
    assert_eq!(effective_expiry(None), DEFAULT_NODE_CERT_EXPIRY);
    assert_eq!(effective_expiry(Some(Duration::from_secs(59 * 60))), Duration::from_secs(2160 * 3600));
    assert_eq!(effective_expiry(Some(Duration::from_secs(3599))), DEFAULT_NODE_CERT_EXPIRY);
    assert_eq!(effective_expiry(Some(HOUR)), HOUR);
    assert_eq!(effective_expiry(Some(5 * HOUR)), 5 * HOUR);
    assert_eq!(MIN_NODE_CERT_EXPIRY, HOUR);
    assert_eq!(CERT_BACKDATE, HOUR);
    assert_eq!(ROOT_CA_VALIDITY, Duration::from_secs(630_720_000));
}

#[test]
fn leaf_extensions() {
    let root = gen_root(DEFAULT_ROOT_CN);
    let ca = signing_ca(&root, DEFAULT_NODE_CERT_EXPIRY);
    let pem = ca.sign_csr(&p256_csr(), "n", Role::Manager, "o", t0(), [5; 20]).unwrap();
    let der = ders(&pem).remove(0);
    let cert = parse(&der);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && ku.value.key_encipherment());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign() && !ku.value.non_repudiation());
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(eku.value.other.is_empty() && !eku.value.code_signing);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca);
    let root_der = ders(&root.cert_pem).remove(0);
    let root_cert = parse(&root_der);
    let root_ski = key_id(&root_cert.public_key().subject_public_key.data);
    let mut aki = None;
    let mut ski = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
            _ => {}
        }
    }
    assert_eq!(aki, Some(root_ski));
    assert_eq!(ski, Some(key_id(&cert.public_key().subject_public_key.data)));
    assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
    assert_eq!(cert.signature_algorithm.algorithm.to_id_string(), "1.2.840.10045.4.3.2");
}

#[test]
fn serials_come_from_the_input_with_top_bit_cleared() {
    let root = gen_root(DEFAULT_ROOT_CN);
    let ca = signing_ca(&root, DEFAULT_NODE_CERT_EXPIRY);
    let serial_of = |s: [u8; 20]| {
        let pem = ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", t0(), s).unwrap();
        let der = ders(&pem).remove(0);
        parse(&der).raw_serial().to_vec()
    };
    let a = serial_of([0x11; 20]);
    let b = serial_of([0x12; 20]);
    assert_ne!(a, b);
    assert_eq!(a, vec![0x11; 20]);
    let mut expected = vec![0x7f];
    expected.extend_from_slice(&[0xff; 19]);
    assert_eq!(serial_of([0xff; 20]), expected);
    // 0x80 00.. becomes all zero, which is made non-zero.
    let mut top_only = [0u8; 20];
    top_only[0] = 0x80;
    assert_eq!(serial_of(top_only), vec![1]);
}

#[test]
fn sign_errors() {
    let root = gen_root(DEFAULT_ROOT_CN);
    let ca = signing_ca(&root, DEFAULT_NODE_CERT_EXPIRY);
    let err = ca.sign_csr(b"garbage", "n", Role::Worker, "o", t0(), [1; 20]).unwrap_err();
    assert_eq!(err, SignError::Csr(CsrError::NoPemBlock));
    assert!(!err.is_recoverable());
    assert_eq!(err.to_string(), "failed to sign node certificate: CSR Decode failed");
    let verify_only = RootCa::new(&root.cert_pem, b"", b"", DEFAULT_NODE_CERT_EXPIRY, b"", t0()).unwrap();
    assert!(!verify_only.can_sign());
    assert_eq!(verify_only.signer_key_pem(), None);
    // Without a signer the CSR is not even looked at.
    let err = verify_only.sign_csr(b"garbage", "n", Role::Worker, "o", t0(), [1; 20]).unwrap_err();
    assert_eq!(err, SignError::NoValidSigner);
    assert!(err.is_recoverable());
    assert_eq!(err.to_string(), "no valid signer found");
    let err = ca.sign_csr(&fixture("ed25519.csr"), "n", Role::Worker, "o", t0(), [1; 20]).unwrap_err();
    assert!(matches!(err, SignError::Csr(CsrError::UnsupportedKey(_))), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Peer verification

#[test]
fn verify_peer_rejections() {
    let root = gen_root(DEFAULT_ROOT_CN);
    let ca = signing_ca(&root, HOUR);
    let leaf = ders(&ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", t0(), [1; 20]).unwrap());
    assert!(ca.verify_peer(&leaf, t0()).is_ok());

    let other = signing_ca(&gen_root("other-ca"), HOUR);
    assert_eq!(other.verify_peer(&leaf, t0()).unwrap_err(), VerifyError::UnknownIssuer);
    // Even a root with the same name but another key.
    let same_name = signing_ca(&gen_root(DEFAULT_ROOT_CN), HOUR);
    assert_eq!(same_name.verify_peer(&leaf, t0()).unwrap_err(), VerifyError::UnknownIssuer);

    // NotAfter is about t0 + 1 h.
    assert_eq!(ca.verify_peer(&leaf, t0() + 2 * HOUR).unwrap_err(), VerifyError::Expired);
    assert_eq!(ca.verify_peer(&leaf, t0() - 2 * HOUR).unwrap_err(), VerifyError::NotYetValid);

    assert_eq!(ca.verify_peer(&[], t0()).unwrap_err(), VerifyError::EmptyChain);
    assert!(matches!(ca.verify_peer(&[b"junk".to_vec()], t0()), Err(VerifyError::Malformed(_))));

    use rcgen::DnType::{CommonName as CN, OrganizationName as O, OrganizationalUnitName as OU};
    let no_ou = custom_leaf(&root, &[(O, "o"), (CN, "n")]);
    assert_eq!(ca.verify_peer(&[no_ou], t0()).unwrap_err(), VerifyError::MissingOrganizationalUnit);
    let no_cn = custom_leaf(&root, &[(O, "o"), (OU, "swarm-worker")]);
    assert_eq!(ca.verify_peer(&[no_cn], t0()).unwrap_err(), VerifyError::MissingCommonName);
    let no_o = custom_leaf(&root, &[(OU, "swarm-worker"), (CN, "n")]);
    assert_eq!(ca.verify_peer(&[no_o], t0()).unwrap_err(), VerifyError::MissingOrganization);
    let empty_cn = custom_leaf(&root, &[(O, "o"), (OU, "swarm-worker"), (CN, "")]);
    assert_eq!(ca.verify_peer(&[empty_cn], t0()).unwrap_err(), VerifyError::MissingCommonName);
    let all = custom_leaf(&root, &[(O, "o"), (OU, "swarm-manager"), (CN, "n")]);
    assert_eq!(ca.verify_peer(&[all], t0()).unwrap().roles, vec!["swarm-manager".to_string()]);
    // The root itself is not a client certificate.
    assert!(ca.verify_peer(&ders(&root.cert_pem), t0()).is_err());
}

// ---------------------------------------------------------------------------------------
// Root CA construction

#[test]
fn generated_root_properties() {
    let now = t0();
    let g = generate_root("my-root", now, [0xff; 20]).unwrap();
    assert!(g.key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
    let der = ders(&g.cert_pem).remove(0);
    let cert = parse(&der);
    assert_eq!(attrs(cert.subject()), vec![(OID_CN.to_string(), "my-root".to_string())]);
    assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
    cert.verify_signature(None).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    assert_eq!(cert.validity().not_before.timestamp(), 1_700_000_040 - 3600);
    assert_eq!(cert.validity().not_after.timestamp(), 1_700_000_040 + 630_720_000);
    assert_eq!(cert.raw_serial()[0], 0x7f);
    assert_eq!(
        cert.public_key().algorithm.parameters.as_ref().unwrap().as_oid().unwrap().to_id_string(),
        "1.2.840.10045.3.1.7"
    );
    // Debug never shows the key.
    let dbg = format!("{g:?}");
    assert!(!dbg.contains("PRIVATE"), "{dbg}");
    let ca = signing_ca(&g, HOUR);
    let dbg = format!("{ca:?}");
    assert!(!dbg.contains("PRIVATE") && dbg.contains("can_sign: true"), "{dbg}");
    assert_eq!(ca.signer_key_pem(), Some(g.key_pem.as_slice()));
    assert_eq!(ca.signer_cert_der(), Some(der.as_slice()));
    assert_eq!(ca.roots_der(), std::slice::from_ref(&der));
}

#[test]
fn new_root_ca_errors() {
    let a = gen_root("root-a");
    let b = gen_root("root-b");
    let new = |roots: &[u8], cert: &[u8], key: &[u8], now: SystemTime| {
        RootCa::new(roots, cert, key, DEFAULT_NODE_CERT_EXPIRY, b"", now).unwrap_err()
    };
    assert_eq!(new(b"", b"", b"", t0()), RootCaError::NoValidRootCertificates);
    assert_eq!(new(b"  \n\t", b"", b"", t0()), RootCaError::NoValidRootCertificates);
    assert_eq!(new(b"", b"", b"", t0()).to_string(), "no valid root CA certificates found");
    assert!(matches!(new(b"garbage", b"", b"", t0()), RootCaError::MalformedCertificate(_)));
    let mut trailing = a.cert_pem.clone();
    trailing.extend_from_slice(b"junk");
    assert!(matches!(new(&trailing, b"", b"", t0()), RootCaError::MalformedCertificate(_)));
    let not_cert = ::pem::encode(&::pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
    assert!(matches!(new(not_cert.as_bytes(), b"", b"", t0()), RootCaError::MalformedCertificate(_)));

    // Signer halves.
    let err = new(&a.cert_pem, b"", &a.key_pem, t0());
    assert_eq!(err, RootCaError::IncompleteSigner);
    assert_eq!(err.to_string(), "must provide both a signing key and a signing cert, or neither");
    assert_eq!(new(&a.cert_pem, &a.cert_pem, b"", t0()), RootCaError::IncompleteSigner);

    // Key of another root.
    let err = new(&a.cert_pem, &a.cert_pem, &b.key_pem, t0());
    assert_eq!(err, RootCaError::KeyMismatch);
    assert_eq!(err.to_string(), "certificate key mismatch");
    // SEC1 key of another curve/type.
    assert_eq!(new(&a.cert_pem, &a.cert_pem, &fixture("ca_p384_sec1.key"), t0()), RootCaError::KeyMismatch);
    assert_eq!(
        new(&a.cert_pem, &a.cert_pem, &fixture("ca_rsa2048_pkcs1.key"), t0()),
        RootCaError::KeyMismatch
    );
    assert_eq!(new(&a.cert_pem, &a.cert_pem, &fixture("ca_p256_sec1.key"), t0()), RootCaError::KeyMismatch);

    // Malformed keys.
    for key in [
        b"garbage".to_vec(),
        ::pem::encode(&::pem::Pem::new("PRIVATE KEY", vec![0x30, 0x03, 0x02, 0x01, 0x00])).into_bytes(),
        ::pem::encode(&::pem::Pem::new("EC PRIVATE KEY", vec![1, 2, 3])).into_bytes(),
        a.cert_pem.clone(),
    ] {
        let err = new(&a.cert_pem, &a.cert_pem, &key, t0());
        assert!(matches!(err, RootCaError::MalformedPrivateKey(_)), "{err:?}");
        assert!(err.to_string().starts_with("malformed private key"));
    }

    // Expired and not-yet-valid roots.
    let far_future = t0() + ROOT_CA_VALIDITY + 2 * HOUR;
    let err = new(&a.cert_pem, &a.cert_pem, &a.key_pem, far_future);
    assert!(matches!(err, RootCaError::InvalidRootCertificate(_)), "{err:?}");
    assert!(err.to_string().starts_with("error while validating Root CA Certificate"));
    let err = new(&a.cert_pem, b"", b"", t0() - 2 * HOUR);
    assert!(matches!(err, RootCaError::InvalidRootCertificate(_)), "{err:?}");

    // A root that is not self-signed (a cross-signed certificate).
    let cross = cross_sign(&b, "root-b", &a);
    let err = new(&cross, b"", b"", t0());
    assert!(
        matches!(&err, RootCaError::InvalidRootCertificate(m) if m.contains("not self-signed")),
        "{err:?}"
    );

    // SHA-1 signed root.
    let ca_sha1 = fixture("ca_rsa_sha1.crt");
    let now = fixture_now(&ca_sha1);
    assert_eq!(new(&ca_sha1, b"", b"", now), RootCaError::UnsupportedSignatureAlgorithm);
    assert_eq!(RootCaError::UnsupportedSignatureAlgorithm.to_string(), "unsupported signature algorithm");

    // P-521 roots cannot be verified (nor signed with) by ring.
    let p521 = fixture("ca_p521.crt");
    let err = new(&p521, b"", b"", fixture_now(&p521));
    assert!(matches!(&err, RootCaError::InvalidRootCertificate(m) if m.contains("P-521")), "{err:?}");

    // A signing cert that does not chain to the roots.
    let err = new(&a.cert_pem, &b.cert_pem, &b.key_pem, t0());
    assert!(matches!(err, RootCaError::InvalidSigningCertificate(_)), "{err:?}");
}

/// A time one day after a fixture certificate's NotBefore.
fn fixture_now(pem: &[u8]) -> SystemTime {
    let der = ders(pem).remove(0);
    let nb = parse(&der).validity().not_before.timestamp();
    UNIX_EPOCH + Duration::from_secs(u64::try_from(nb).unwrap() + 86_400)
}

#[test]
fn ca_key_formats_and_algorithms() {
    for (cert, key, sig_oid) in [
        ("ca_p256.crt", "ca_p256_sec1.key", "1.2.840.10045.4.3.2"),
        ("ca_p256.crt", "ca_p256_pkcs8.key", "1.2.840.10045.4.3.2"),
        ("ca_p384.crt", "ca_p384_sec1.key", "1.2.840.10045.4.3.3"),
        ("ca_rsa2048.crt", "ca_rsa2048_pkcs1.key", "1.2.840.113549.1.1.11"),
        ("ca_rsa2048.crt", "ca_rsa2048_pkcs8.key", "1.2.840.113549.1.1.11"),
    ] {
        let cert_pem = fixture(cert);
        let now = fixture_now(&cert_pem);
        let ca = RootCa::new(&cert_pem, &cert_pem, &fixture(key), HOUR, b"", now)
            .unwrap_or_else(|e| panic!("{cert} {key}: {e}"));
        assert!(ca.can_sign());
        let pem = ca.sign_csr(&p256_csr(), "n", Role::Manager, "o", now, [2; 20]).unwrap();
        let leaf = ders(&pem);
        let parsed = parse(&leaf[0]);
        assert_eq!(parsed.signature_algorithm.algorithm.to_id_string(), sig_oid, "{key}");
        // openssl wrote the root's CN as a UTF8String; the issuer must match byte for byte.
        let root_der = ders(&cert_pem).remove(0);
        assert_eq!(parsed.issuer().as_raw(), parse(&root_der).subject().as_raw());
        ca.verify_peer(&leaf, now).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    // A P-521 key against a P-256 certificate is a mismatch.
    let cert_pem = fixture("ca_p256.crt");
    let now = fixture_now(&cert_pem);
    assert_eq!(
        RootCa::new(&cert_pem, &cert_pem, &fixture("ca_p521_pkcs8.key"), HOUR, b"", now).unwrap_err(),
        RootCaError::KeyMismatch
    );
}

#[test]
fn from_api_without_rotation() {
    let r = gen_root(DEFAULT_ROOT_CN);
    let api = swarmca_types::RootCa {
        ca_key: r.key_pem.clone(),
        ca_cert: r.cert_pem.clone(),
        ca_cert_hash: digest_string(&r.cert_pem),
        ..Default::default()
    };
    let ca = RootCa::from_api(&api, HOUR, t0()).unwrap();
    assert!(ca.can_sign());
    assert_eq!(ca.signer_key_pem(), Some(r.key_pem.as_slice()));
    assert_eq!(ca.certs_pem(), r.cert_pem.as_slice());
    assert_eq!(ca.digest_string(), api.ca_cert_hash);
    assert!(ca.intermediates_pem().is_empty());
    assert_eq!(ca.expiry(), HOUR);

    let verify_only =
        RootCa::from_api(&swarmca_types::RootCa { ca_key: vec![], ..api.clone() }, HOUR, t0()).unwrap();
    assert!(!verify_only.can_sign());
    assert_eq!(verify_only.digest(), ca.digest());
}

#[test]
fn from_api_with_rotation_signs_with_the_new_key_through_the_cross_signed_cert() {
    let r1 = gen_root("root-1");
    let r2 = gen_root("root-2");
    let cross = cross_sign(&r2, "root-2", &r1);
    let api = swarmca_types::RootCa {
        ca_key: r1.key_pem.clone(),
        ca_cert: r1.cert_pem.clone(),
        ca_cert_hash: digest_string(&r1.cert_pem),
        root_rotation: Some(swarmca_types::RootRotation {
            ca_cert: r2.cert_pem.clone(),
            ca_key: r2.key_pem.clone(),
            cross_signed_ca_cert: cross.clone(),
        }),
        ..Default::default()
    };
    let ca = RootCa::from_api(&api, HOUR, t0()).unwrap();
    assert!(ca.can_sign());
    assert_eq!(ca.signer_key_pem(), Some(r2.key_pem.as_slice()));
    assert_eq!(ca.certs_pem(), r1.cert_pem.as_slice());
    assert_eq!(ca.intermediates_pem(), cross.as_slice());

    let pem = ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", t0(), [4; 20]).unwrap();
    // Leaf PEM followed by the raw intermediates.
    assert!(pem.ends_with(&cross));
    let chain = ders(&pem);
    assert_eq!(chain.len(), 2);
    // Validates to R1 through the intermediate...
    ca.verify_peer(&chain, t0()).unwrap();
    // ...not without it...
    assert_eq!(ca.verify_peer(&chain[..1], t0()).unwrap_err(), VerifyError::UnknownIssuer);
    // ...and directly to R2.
    let r2_ca = signing_ca(&r2, HOUR);
    r2_ca.verify_peer(&chain[..1], t0()).unwrap();

    // With the rotation key missing the CA is verify-only.
    let mut no_key = api.clone();
    if let Some(rot) = no_key.root_rotation.as_mut() {
        rot.ca_key.clear();
    }
    let verify_only = RootCa::from_api(&no_key, HOUR, t0()).unwrap();
    assert!(!verify_only.can_sign());
    assert_eq!(verify_only.intermediates_pem(), cross.as_slice());
}

#[test]
fn intermediate_chain_checks() {
    let r1 = gen_root("root-1");
    let r2 = gen_root("root-2");
    let r3 = gen_root("root-3");
    let cross = cross_sign(&r2, "root-2", &r1);
    // The signer (R1 itself) does not match the first intermediate (R2').
    let err = RootCa::new(&r1.cert_pem, &r1.cert_pem, &r1.key_pem, HOUR, &cross, t0()).unwrap_err();
    assert_eq!(err, RootCaError::IntermediateMismatch);
    // Intermediates that do not chain to the roots.
    let err = RootCa::new(&r3.cert_pem, b"", b"", HOUR, &cross, t0()).unwrap_err();
    assert!(matches!(err, RootCaError::InvalidIntermediateChain(_)), "{err:?}");
    let err = RootCa::new(&r1.cert_pem, b"", b"", HOUR, b"garbage", t0()).unwrap_err();
    assert!(matches!(err, RootCaError::InvalidIntermediateChain(_)), "{err:?}");
    // Expired intermediate.
    let late = t0() + ROOT_CA_VALIDITY + 2 * HOUR;
    let err = RootCa::new(&r1.cert_pem, b"", b"", HOUR, &cross, late).unwrap_err();
    assert!(matches!(err, RootCaError::InvalidRootCertificate(_) | RootCaError::InvalidIntermediateChain(_)));
    // Valid: verify-only with intermediates.
    assert!(RootCa::new(&r1.cert_pem, b"", b"", HOUR, &cross, t0()).is_ok());
    // Several roots in one bundle.
    let mut bundle = r1.cert_pem.clone();
    bundle.extend_from_slice(&r3.cert_pem);
    let ca = RootCa::new(&bundle, &r3.cert_pem, &r3.key_pem, HOUR, b"", t0()).unwrap();
    assert_eq!(ca.roots_der().len(), 2);
    let leaf = ders(&ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", t0(), [4; 20]).unwrap());
    ca.verify_peer(&leaf, t0()).unwrap();
}

// ---------------------------------------------------------------------------------------
// Digests, PEM helpers

#[test]
fn digests_cover_the_exact_bytes() {
    let r = gen_root(DEFAULT_ROOT_CN);
    let mut with_newline = r.cert_pem.clone();
    with_newline.push(b'\n');
    let a = signing_ca(&r, HOUR);
    let b = RootCa::new(&with_newline, &r.cert_pem, &r.key_pem, HOUR, b"", t0()).unwrap();
    assert_ne!(a.digest(), b.digest());
    assert_eq!(b.certs_pem(), with_newline.as_slice());
    assert_eq!(a.digest(), digest(&r.cert_pem));
    assert_eq!(b.digest(), digest(&with_newline));
    assert_eq!(digest_string(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(
        digest_string(b"abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(a.digest_string(), digest_string(&r.cert_pem));
}

#[test]
fn normalize_pems_like_swarmkit() {
    let r1 = gen_root("root-1");
    let r2 = gen_root("root-2");
    let mut both = r1.cert_pem.clone();
    both.extend_from_slice(&r2.cert_pem);
    assert_eq!(normalize_pems(&both), both);
    // Surrounding and separating whitespace is dropped.
    let messy = [b"\n\n  ".as_slice(), &r1.cert_pem, b"\n\n\t", &r2.cert_pem, b"\n\n\n"].concat();
    assert_eq!(normalize_pems(&messy), both);
    // A missing final newline is restored.
    let trimmed = pemutil::trim_space(&r1.cert_pem).to_vec();
    assert_ne!(trimmed, r1.cert_pem);
    assert_eq!(normalize_pems(&trimmed), r1.cert_pem);
    // Headers are removed; other block types are kept.
    let body = std::str::from_utf8(&r1.cert_pem).unwrap().replacen(
        "-----BEGIN CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\nComment: hi\n\n",
        1,
    );
    assert_eq!(normalize_pems(body.as_bytes()), r1.cert_pem);
    let other = pemutil::encode("SOMETHING ELSE", b"payload");
    let mixed = [other.as_slice(), &r1.cert_pem].concat();
    assert_eq!(normalize_pems(&mixed), mixed);
    // CRLF input becomes LF.
    let crlf = std::str::from_utf8(&r1.cert_pem).unwrap().replace('\n', "\r\n");
    assert_eq!(normalize_pems(crlf.as_bytes()), r1.cert_pem);
    // Processing stops at data that holds no further block.
    let junk_after = [r1.cert_pem.as_slice(), b"not pem at all"].concat();
    assert_eq!(normalize_pems(&junk_after), r1.cert_pem);
    assert!(normalize_pems(b"").is_empty());
    assert!(normalize_pems(b"nothing here").is_empty());
}

#[test]
fn issuer_info_matches_the_certificate() {
    let r = gen_root("root-x");
    let (subject, spki) = issuer_info_of_cert_pem(&r.cert_pem).unwrap();
    let der = ders(&r.cert_pem).remove(0);
    let cert = parse(&der);
    assert_eq!(subject, cert.subject().as_raw());
    assert_eq!(spki, cert.public_key().raw);
    // A leaf's raw issuer equals the signer's raw subject.
    let ca = signing_ca(&r, HOUR);
    let leaf = ders(&ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", t0(), [4; 20]).unwrap()).remove(0);
    assert_eq!(parse(&leaf).issuer().as_raw(), subject.as_slice());
    assert!(issuer_info_of_cert_pem(b"").is_err());
    assert!(issuer_info_of_cert_pem(b"junk").is_err());
}

// ---------------------------------------------------------------------------------------
// Cross-signing (SwarmKit CrossSignCACertificate; TestExternalCACrossSign's assertions)

/// Every cross-sign case: (new root cert, new root key, time at which both are valid).
fn cross_sign_targets() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let generated = gen_root("root-2");
    vec![
        ("generated P-256", generated.cert_pem, generated.key_pem),
        ("openssl P-256", fixture("ca_p256.crt"), fixture("ca_p256_sec1.key")),
        ("openssl RSA-2048", fixture("ca_rsa2048.crt"), fixture("ca_rsa2048_pkcs1.key")),
    ]
}

#[test]
fn cross_signed_root_chains_leaves_of_the_new_root_to_the_old_one() {
    for (name, r2_cert, r2_key) in cross_sign_targets() {
        let now = fixture_now(&r2_cert).max(t0());
        let r1 = generate_root("root-1", now - HOUR, [0x11; 20]).unwrap();
        let r1_ca = RootCa::new(&r1.cert_pem, &r1.cert_pem, &r1.key_pem, HOUR, b"", now).unwrap();
        let r2_ca = RootCa::new(&r2_cert, &r2_cert, &r2_key, HOUR, b"", now).unwrap();
        let cross = r1_ca.cross_sign(&r2_cert).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ders(&cross).len(), 1, "{name}: one certificate");

        let r2_der = ders(&r2_cert).remove(0);
        let r1_der = ders(&r1.cert_pem).remove(0);
        let cross_der = ders(&cross).remove(0);
        let (r2p, r1p, xp) = (parse(&r2_der), parse(&r1_der), parse(&cross_der));
        assert_eq!(xp.subject().as_raw(), r2p.subject().as_raw(), "{name}: same subject");
        assert_eq!(xp.public_key().raw, r2p.public_key().raw, "{name}: same key");
        assert_eq!(xp.raw_serial(), r2p.raw_serial(), "{name}: same serial");
        assert_eq!(xp.validity().not_before, r2p.validity().not_before, "{name}");
        assert_eq!(xp.validity().not_after, r2p.validity().not_after, "{name}");
        assert!(xp.is_ca(), "{name}: still a CA");
        assert_eq!(xp.issuer().as_raw(), r1p.subject().as_raw(), "{name}: issued by the old root");
        xp.verify_signature(Some(r1p.public_key())).unwrap();
        // Every extension but the AKI is carried over byte for byte, in order.
        let non_aki = |c: &x509_parser::certificate::X509Certificate<'_>| {
            c.extensions()
                .iter()
                .filter(|e| e.oid.to_id_string() != "2.5.29.35")
                .map(|e| (e.oid.to_id_string(), e.critical, e.value.to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(non_aki(&xp), non_aki(&r2p), "{name}");
        assert!(!non_aki(&xp).is_empty(), "{name}");
        // The AKI now names the old root's SKI.
        let ski_r1 = r1p
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let aki = xp
            .iter_extensions()
            .filter_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert_eq!(aki, vec![ski_r1], "{name}: exactly one AKI, naming the old root");

        // A leaf from the new root: not valid against the old root alone, valid with the
        // intermediate, and valid against the new root with or without it.
        let leaf_pem = r2_ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", now, [9; 20]).unwrap();
        let leaf_der = ders(&leaf_pem).remove(0);
        assert_eq!(
            r1_ca.verify_peer(std::slice::from_ref(&leaf_der), now).unwrap_err(),
            VerifyError::UnknownIssuer,
            "{name}"
        );
        r1_ca
            .verify_peer(&[leaf_der.clone(), cross_der.clone()], now)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        r2_ca.verify_peer(std::slice::from_ref(&leaf_der), now).unwrap();
        r2_ca.verify_peer(&[leaf_der.clone(), cross_der.clone()], now).unwrap();

        // The rotation signer accepts it as its intermediate (NewRootCA's checks).
        let rotating = RootCa::new(&r1.cert_pem, &cross, &r2_key, HOUR, &cross, now)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let issued = rotating.sign_csr(&p256_csr(), "n", Role::Manager, "o", now, [8; 20]).unwrap();
        rotating.verify_peer(&ders(&issued), now).unwrap();
    }
}

#[test]
fn cross_sign_errors() {
    let r1 = gen_root("root-1");
    let r2 = gen_root("root-2");
    let verify_only = RootCa::new(&r1.cert_pem, b"", b"", HOUR, b"", t0()).unwrap();
    assert_eq!(verify_only.cross_sign(&r2.cert_pem).unwrap_err(), CrossSignError::NoValidSigner);
    let ca = signing_ca(&r1, HOUR);
    assert!(matches!(ca.cross_sign(b"garbage").unwrap_err(), CrossSignError::Malformed(_)));
    assert!(matches!(ca.cross_sign(b"").unwrap_err(), CrossSignError::Malformed(_)));
    let leaf = ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", t0(), [3; 20]).unwrap();
    assert_eq!(ca.cross_sign(&leaf).unwrap_err(), CrossSignError::NotCa);
    assert_eq!(cross_sign_csr(&leaf, &r1.key_pem).unwrap_err(), CrossSignError::NotCa);
    assert!(matches!(cross_sign_csr(&r2.cert_pem, &r1.key_pem).unwrap_err(), CrossSignError::Key(_)));
}

#[test]
fn cross_sign_csr_carries_the_root_subject_key_and_constraints() {
    for (name, cert, key) in cross_sign_targets() {
        let req = cross_sign_csr(&cert, &key).unwrap_or_else(|e| panic!("{name}: {e}"));
        let root_der = ders(&cert).remove(0);
        let root = parse(&root_der);
        let csr_der = ::pem::parse(&req.csr_pem).unwrap().into_contents();
        let (rest, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(csr.certification_request_info.subject.as_raw(), root.subject().as_raw(), "{name}");
        assert_eq!(csr.certification_request_info.subject_pki.raw, root.public_key().raw, "{name}");
        let requested = csr.requested_extensions().map(|e| e.count()).unwrap_or(0);
        assert_eq!(requested, root.extensions().len(), "{name}: all root extensions requested");
        assert_eq!(req.common_name, chain::cn_of(&root));
        let bc = root.extensions().iter().find(|e| e.oid.to_id_string() == "2.5.29.19").unwrap();
        assert_eq!(req.basic_constraints, Some((bc.critical, bc.value.to_vec())), "{name}");
        // Our own CSR parser accepts it (the CA path would sign it).
        crate::csr::parse_csr_pem(&req.csr_pem).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Two roots with the same subject (generated roots are all CN=swarm-ca: only the key tells
/// them apart), R1's signing CA, and a CA rotating to R2 (signing with R2's key, the
/// cross-signed R2 as intermediate).
fn same_subject_roots() -> (GeneratedRoot, GeneratedRoot, RootCa, RootCa) {
    let r1 = gen_root(DEFAULT_ROOT_CN);
    let r2 = generate_root(DEFAULT_ROOT_CN, t0(), [0x43; 20]).unwrap();
    let r1_ca = signing_ca(&r1, HOUR);
    let cross = r1_ca.cross_sign(&r2.cert_pem).unwrap();
    let rotating = RootCa::new(&r1.cert_pem, &cross, &r2.key_pem, HOUR, &cross, t0()).unwrap();
    (r1, r2, r1_ca, rotating)
}

#[test]
fn leaf_issuer_tells_roots_with_the_same_subject_apart() {
    let (r1, r2, r1_ca, rotating) = same_subject_roots();
    let (r1_der, r2_der) = (ders(&r1.cert_pem).remove(0), ders(&r2.cert_pem).remove(0));
    let r2_id = (parse(&r2_der).subject().as_raw().to_vec(), parse(&r2_der).public_key().raw.to_vec());
    let r1_id = (parse(&r1_der).subject().as_raw().to_vec(), parse(&r1_der).public_key().raw.to_vec());
    assert_eq!(r1_id.0, r2_id.0);

    let old_leaf = ders(&r1_ca.sign_csr(&p256_csr(), "a", Role::Worker, "o", t0(), [1; 20]).unwrap());
    let new_chain = ders(&rotating.sign_csr(&p256_csr(), "b", Role::Worker, "o", t0(), [2; 20]).unwrap());
    let both_roots = [r1_der.clone(), r2_der.clone()];
    assert_eq!(leaf_issuer(&old_leaf, &both_roots), Some(r1_id.clone()));
    // The cross-signed intermediate carries R2's subject and key.
    assert_eq!(leaf_issuer(&new_chain, std::slice::from_ref(&r1_der)), Some(r2_id.clone()));
    assert_eq!(leaf_issuer(&new_chain[..1], &both_roots), Some(r2_id));
    // Nothing that issued it: None, as for garbage.
    assert_eq!(leaf_issuer(&new_chain[..1], std::slice::from_ref(&r1_der)), None);
    assert_eq!(leaf_issuer(&[b"junk".to_vec()], &both_roots), None);
    assert_eq!(leaf_issuer(&[], &both_roots), None);
    assert_eq!(leaf_issuer(&old_leaf, std::slice::from_ref(&r1_der)), Some(r1_id));
    assert_eq!(leaf_issuer(&old_leaf, std::slice::from_ref(&r2_der)), None);
}

#[test]
fn verify_peer_issuer_names_the_key_on_the_verified_path() {
    // The same cases as leaf_issuer's, answered from the path webpki verified.
    let (r1, r2, r1_ca, rotating) = same_subject_roots();
    let (r1_der, r2_der) = (ders(&r1.cert_pem).remove(0), ders(&r2.cert_pem).remove(0));
    let mut both_pem = r1.cert_pem.clone();
    both_pem.extend_from_slice(&r2.cert_pem);
    let trust_both = RootCa::new(&both_pem, &[], &[], HOUR, &[], t0()).unwrap();
    let trust_r1 = RootCa::new(&r1.cert_pem, &[], &[], HOUR, &[], t0()).unwrap();
    let trust_r2 = RootCa::new(&r2.cert_pem, &[], &[], HOUR, &[], t0()).unwrap();
    let both_roots = [r1_der.clone(), r2_der.clone()];

    let old_leaf = ders(&r1_ca.sign_csr(&p256_csr(), "a", Role::Worker, "o", t0(), [1; 20]).unwrap());
    let new_chain = ders(&rotating.sign_csr(&p256_csr(), "b", Role::Worker, "o", t0(), [2; 20]).unwrap());
    type Case<'a> = (&'a RootCa, &'a [Vec<u8>], &'a [Vec<u8>]);
    let cases: [Case<'_>; 4] = [
        (&trust_both, &old_leaf, &both_roots),
        (&trust_r1, &new_chain, std::slice::from_ref(&r1_der)),
        (&trust_both, &new_chain[..1], &both_roots),
        (&trust_r1, &old_leaf, std::slice::from_ref(&r1_der)),
    ];
    for (i, (trust, chain, candidates)) in cases.into_iter().enumerate() {
        let (identity, issuer) =
            trust.verify_peer_issuer(chain, t0()).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(Some(issuer), leaf_issuer(chain, candidates), "case {i}");
        assert_eq!(identity, trust.verify_peer(chain, t0()).unwrap(), "case {i}");
    }
    // R2 alone did not issue the old leaf, and R1 alone does not reach the new leaf without
    // the cross-signed intermediate.
    assert!(trust_r2.verify_peer_issuer(&old_leaf, t0()).is_err());
    assert!(trust_r1.verify_peer_issuer(&new_chain[..1], t0()).is_err());
    assert!(matches!(trust_r1.verify_peer_issuer(&[], t0()), Err(VerifyError::EmptyChain)));
}

#[test]
fn spki_of_issued_walks_the_tbs() {
    let r = gen_root("root-s");
    let ca = signing_ca(&r, HOUR);
    let csr = p256_csr();
    let leaf = ders(&ca.sign_csr(&csr, "n", Role::Worker, "o", t0(), [5; 20]).unwrap()).remove(0);
    assert_eq!(spki_of_issued(&leaf), Some(parse(&leaf).public_key().raw));
    let root_der = ders(&r.cert_pem).remove(0);
    assert_eq!(spki_of_issued(&root_der), Some(parse(&root_der).public_key().raw));
    assert_eq!(spki_of_issued(b"\x30\x00"), None);
    assert_eq!(spki_of_issued(&leaf[..leaf.len() / 2]), None);
}

/// The template encoder writes exactly the TBSCertificate rcgen wrote before it (only the
/// ECDSA signature differs: it is randomised), for every kind of signer and field.
#[test]
fn template_leaves_match_rcgen_byte_for_byte() {
    let p256 = gen_root("swarm-ca");
    let long = Duration::from_secs(20 * 365 * 24 * 3600);
    let signers = [
        RootCa::new(&p256.cert_pem, &p256.cert_pem, &p256.key_pem, long, b"", t0()).unwrap(),
        RootCa::new(
            &fixture("ca_p256_noski.crt"),
            &fixture("ca_p256_noski.crt"),
            &fixture("ca_p256_noski_pkcs8.key"),
            long,
            b"",
            SystemTime::now(),
        )
        .unwrap(),
        RootCa::new(
            &fixture("ca_p384.crt"),
            &fixture("ca_p384.crt"),
            &fixture("ca_p384_sec1.key"),
            long,
            b"",
            SystemTime::now(),
        )
        .unwrap(),
        RootCa::new(
            &fixture("ca_rsa2048.crt"),
            &fixture("ca_rsa2048.crt"),
            &fixture("ca_rsa2048_pkcs8.key"),
            long,
            b"",
            SystemTime::now(),
        )
        .unwrap(),
    ];
    let has_ski: Vec<bool> = signers.iter().map(|ca| ca.signer.as_ref().unwrap().has_ski).collect();
    assert!(has_ski.contains(&true) && has_ski.contains(&false), "both AKI forms covered: {has_ski:?}");

    let keys: Vec<Vec<u8>> = ["p256.csr", "p384.csr", "rsa2048.csr"]
        .into_iter()
        .map(|name| crate::csr::parse_csr_pem(&fixture(name)).unwrap().public_key_der().to_vec())
        .collect();
    let at = |secs: i64, nanos: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
            .unwrap()
    };
    // (org, ou, cn, hosts, not before, not after, serial)
    let serial_high = {
        let mut s = [0u8; 20];
        s[3] = 0x80;
        s
    };
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<&'a str>, OffsetDateTime, OffsetDateTime, [u8; 20]);
    let cases: Vec<Case<'_>> = vec![
        (
            "cluster-1",
            "swarm-worker",
            "node-1",
            vec!["swarm-worker", "node-1"],
            at(1_700_000_000, 0),
            at(1_707_776_000, 0),
            [7; 20],
        ),
        (
            "",
            "swarm-manager",
            "n",
            vec!["swarm-manager", "n", "swarm-ca"],
            at(-100_000, 0),
            at(2_600_000_000, 5),
            [0xff; 20],
        ),
        (
            "org_with_underscore",
            "ou*",
            "ÿnicode",
            vec!["10.0.0.1", "::1", "", "host.example"],
            at(2_524_608_000, 0),
            at(2_524_607_999, 999),
            [0; 20],
        ),
        ("o", "", "", vec![], at(-631_152_001, 0), at(-631_152_000, 0), serial_high),
    ];
    for (i, ca) in signers.iter().enumerate() {
        let signer = ca.signer.as_ref().unwrap();
        for key in &keys {
            for (org, ou, cn, hosts, nb, na, serial) in &cases {
                let ours = issue(signer, key, org, ou, cn, hosts, *nb, *na, *serial).unwrap();
                let theirs = issue_with_rcgen(signer, key, org, ou, cn, hosts, *nb, *na, *serial).unwrap();
                let (o, t) = (parse(&ours), parse(&theirs));
                assert_eq!(
                    o.tbs_certificate.as_ref(),
                    t.tbs_certificate.as_ref(),
                    "signer {i}, case {org:?}/{ou:?}/{cn:?}/{hosts:?}"
                );
                assert_eq!(o.signature_algorithm, t.signature_algorithm);
                let signing_cert = parse(&signer.cert_der);
                o.verify_signature(Some(signing_cert.public_key())).unwrap();
                if o.signature_algorithm.algorithm.to_id_string().starts_with("1.2.840.113549.") {
                    assert_eq!(ours, theirs, "RSA PKCS#1 v1.5 signatures are deterministic");
                }
            }
        }
    }
}

#[test]
fn new_reusing_reuses_only_the_same_material_while_it_is_valid() {
    let r1 = gen_root("root-1");
    let r2 = gen_root("root-2");
    let first = signing_ca(&r1, HOUR);
    let later = t0() + Duration::from_secs(86_400);

    // Same material: the same CA with the new expiry, signing as before.
    let again =
        RootCa::new_reusing(Some(&first), &r1.cert_pem, &r1.cert_pem, &r1.key_pem, 2 * HOUR, b"", later)
            .unwrap();
    assert_eq!(again.expiry(), 2 * HOUR);
    assert_eq!(again.digest(), first.digest());
    assert!(Arc::ptr_eq(again.signer.as_ref().unwrap(), first.signer.as_ref().unwrap()));
    let pem = again.sign_csr(&p256_csr(), "n", Role::Worker, "o", later, [5; 20]).unwrap();
    let leaf = ders(&pem);
    let c = parse(&leaf[0]);
    assert_eq!(c.validity().not_after.timestamp() - c.validity().not_before.timestamp(), 3 * 3600);
    first.verify_peer(&leaf, later).unwrap();

    // Other material is built afresh: another root, or the same root without its key.
    let other =
        RootCa::new_reusing(Some(&first), &r2.cert_pem, &r2.cert_pem, &r2.key_pem, HOUR, b"", later).unwrap();
    assert_eq!(other.certs_pem(), r2.cert_pem.as_slice());
    assert!(first
        .verify_peer(
            &ders(&other.sign_csr(&p256_csr(), "n", Role::Worker, "o", later, [6; 20]).unwrap()),
            later
        )
        .is_err());
    let verify_only = RootCa::new_reusing(Some(&first), &r1.cert_pem, b"", b"", HOUR, b"", later).unwrap();
    assert!(!verify_only.can_sign());
    // ...and invalid material fails as `new` does, whatever was given to reuse.
    assert_eq!(
        RootCa::new_reusing(Some(&first), &r1.cert_pem, &r1.cert_pem, &r2.key_pem, HOUR, b"", later)
            .unwrap_err(),
        RootCaError::KeyMismatch
    );

    // Once a certificate it checked is no longer valid, nothing is reused: the root has
    // expired for `new` and for `new_reusing` alike.
    let expired = t0() + ROOT_CA_VALIDITY + Duration::from_secs(7 * 86_400);
    let fresh = RootCa::new(&r1.cert_pem, &r1.cert_pem, &r1.key_pem, HOUR, b"", expired).unwrap_err();
    assert!(matches!(fresh, RootCaError::InvalidRootCertificate(_)), "{fresh:?}");
    assert_eq!(
        RootCa::new_reusing(Some(&first), &r1.cert_pem, &r1.cert_pem, &r1.key_pem, HOUR, b"", expired)
            .unwrap_err(),
        fresh
    );
    let before = t0() - Duration::from_secs(7 * 86_400);
    assert!(RootCa::new_reusing(Some(&first), &r1.cert_pem, &r1.cert_pem, &r1.key_pem, HOUR, b"", before)
        .is_err());
}

#[test]
fn remembered_signatures_never_change_a_verdict() {
    let cache = SignatureCache::new();
    let r1 = gen_root("root-1");
    let r2 = gen_root("root-2");
    let ca = signing_ca(&r1, HOUR).with_signature_cache(cache.clone());
    let other = signing_ca(&r2, HOUR).with_signature_cache(cache.clone());
    let chain = ders(&ca.sign_csr(&p256_csr(), "n", Role::Worker, "o", t0(), [3; 20]).unwrap());
    ca.verify_peer(&chain, t0()).unwrap();
    assert!(!cache.is_empty());
    ca.verify_peer(&chain, t0()).unwrap();
    // The same chain under other roots, a tampered signature, or outside its validity is
    // refused as without the memo.
    assert_eq!(other.verify_peer(&chain, t0()).unwrap_err(), VerifyError::UnknownIssuer);
    let mut tampered = chain.clone();
    *tampered[0].last_mut().unwrap() ^= 1;
    assert!(ca.verify_peer(&tampered, t0()).is_err());
    assert_eq!(ca.verify_peer(&chain, t0() + ROOT_CA_VALIDITY).unwrap_err(), VerifyError::Expired);
}
