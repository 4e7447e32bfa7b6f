use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A CSR built at runtime with rcgen for the given key algorithm.
fn rcgen_csr(alg: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let params = rcgen::CertificateParams::new(vec!["node.example".to_string()]).unwrap();
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.pem().unwrap())
}

#[test]
fn accepts_openssl_csrs_of_supported_key_types() {
    for (name, kind) in [
        ("p256.csr", KeyKind::EcdsaP256),
        ("p384.csr", KeyKind::EcdsaP384),
        ("rsa2048.csr", KeyKind::Rsa { bits: 2048 }),
        ("malicious.csr", KeyKind::EcdsaP256),
        ("empty_subject.csr", KeyKind::EcdsaP256),
    ] {
        let pem = fixture(name);
        let csr = parse_csr_pem(&pem).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(csr.key_kind(), &kind, "{name}");
        let block = ::pem::parse(&pem).unwrap();
        assert_eq!(csr.der(), block.contents(), "{name}");
        // The SPKI is a sub-slice of the request DER.
        assert!(csr.der().windows(csr.public_key_der().len()).any(|w| w == csr.public_key_der()), "{name}");
        assert_eq!(parse_csr_der(csr.der()).unwrap().key_kind(), &kind);
    }
}

#[test]
fn accepts_rcgen_csrs_and_keeps_the_exact_public_key() {
    for (alg, kind) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, KeyKind::EcdsaP256),
        (&rcgen::PKCS_ECDSA_P384_SHA384, KeyKind::EcdsaP384),
    ] {
        let (key, pem) = rcgen_csr(alg);
        let csr = parse_csr_pem(pem.as_bytes()).unwrap();
        assert_eq!(csr.key_kind(), &kind);
        assert_eq!(csr.public_key_der(), rcgen::PublicKeyData::subject_public_key_info(&key).as_slice());
    }
}

#[test]
fn rejects_unsupported_keys_with_a_clear_reason() {
    for (name, what) in [
        ("ed25519.csr", "Ed25519"),
        ("rsa1024.csr", "RSA 1024 bits is too small"),
        ("p521.csr", "ECDSA P-521"),
    ] {
        let err = parse_csr_pem(&fixture(name)).unwrap_err();
        let CsrError::UnsupportedKey(reason) = &err else {
            panic!("{name}: {err:?}");
        };
        assert!(reason.starts_with(what), "{name}: {reason}");
        let text = err.to_string();
        assert!(text.starts_with("unsupported CSR key: "), "{text}");
        assert!(text.contains("accepted: ECDSA P-256, ECDSA P-384, RSA >= 2048 bits"), "{text}");
    }
    // Ed25519 from rcgen too.
    let (_, pem) = rcgen_csr(&rcgen::PKCS_ED25519);
    assert!(
        matches!(parse_csr_pem(pem.as_bytes()), Err(CsrError::UnsupportedKey(r)) if r.starts_with("Ed25519"))
    );
}

#[test]
fn garbage_is_a_decode_failure() {
    for input in [&b""[..], b"garbage", b"\x00\x01\x02", b"-----BEGIN CERTIFICATE REQUEST-----\nnot closed"] {
        let err = parse_csr_pem(input).unwrap_err();
        assert_eq!(err, CsrError::NoPemBlock);
        assert!(err.to_string().contains("CSR Decode failed"));
    }
}

#[test]
fn a_certificate_is_not_a_csr() {
    let err = parse_csr_pem(&fixture("not_a_csr.crt")).unwrap_err();
    assert_eq!(err, CsrError::NotACsr { label: "CERTIFICATE".into() });
    assert!(err.to_string().starts_with("not a csr"));
}

#[test]
fn only_the_first_pem_block_counts() {
    let mut input = fixture("not_a_csr.crt");
    input.extend_from_slice(&fixture("p256.csr"));
    assert!(matches!(parse_csr_pem(&input), Err(CsrError::NotACsr { .. })));
    let mut input = b"leading text\n".to_vec();
    input.extend_from_slice(&fixture("p256.csr"));
    input.extend_from_slice(&fixture("not_a_csr.crt"));
    assert_eq!(parse_csr_pem(&input).unwrap().key_kind(), &KeyKind::EcdsaP256);
}

#[test]
fn new_certificate_request_label_is_accepted() {
    let der = ::pem::parse(fixture("p256.csr")).unwrap().into_contents();
    let pem = ::pem::encode(&::pem::Pem::new("NEW CERTIFICATE REQUEST", der));
    assert!(parse_csr_pem(pem.as_bytes()).is_ok());
}

#[test]
fn truncated_and_trailing_der_is_malformed() {
    let der = ::pem::parse(fixture("p256.csr")).unwrap().into_contents();
    for cut in [1, 10, der.len() / 2, der.len() - 1] {
        assert!(matches!(parse_csr_der(&der[..cut]), Err(CsrError::Malformed(_))), "cut {cut}");
    }
    let mut trailing = der.clone();
    trailing.push(0);
    assert!(matches!(parse_csr_der(&trailing), Err(CsrError::Malformed(_))));
    let pem = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der[..der.len() - 3].to_vec()));
    assert!(matches!(parse_csr_pem(pem.as_bytes()), Err(CsrError::Malformed(_))));
}

/// The three parts of a request: (request info TLV, signature AlgorithmIdentifier TLV, the
/// signature BIT STRING's value).
fn envelope_parts(der: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let body = crate::der::expect_all(der, crate::der::TAG_SEQUENCE).unwrap();
    let (_, info, rest) = crate::der::split_tlv(body).unwrap();
    let (_, alg, rest) = crate::der::split_tlv(rest).unwrap();
    let sig = crate::der::expect_all(rest, crate::der::TAG_BIT_STRING).unwrap();
    (info.to_vec(), alg.to_vec(), sig.to_vec())
}

/// A TLV with its length in the long form on `n` bytes, minimal or not.
fn long_form(tag: u8, value: &[u8], n: usize) -> Vec<u8> {
    let len = value.len().to_be_bytes();
    let mut out = vec![tag, 0x80 | n as u8];
    out.extend_from_slice(&len[len.len() - n..]);
    out.extend_from_slice(value);
    out
}

#[test]
fn ber_lengths_on_the_unsigned_envelope_are_malformed() {
    use crate::der::{tlv, TAG_BIT_STRING, TAG_SEQUENCE};
    let der = ::pem::parse(fixture("p256.csr")).unwrap().into_contents();
    let (info, alg, sig) = envelope_parts(&der);
    let alg_value = crate::der::expect_all(&alg, TAG_SEQUENCE).unwrap();
    let oid_value = crate::der::expect_all(alg_value, crate::der::TAG_OID).unwrap();
    let join = |parts: &[&[u8]]| parts.concat();
    // Re-assembled canonically, the request is accepted again (the splitting is right).
    assert!(parse_csr_der(&tlv(TAG_SEQUENCE, &join(&[&info, &alg, &tlv(TAG_BIT_STRING, &sig)]))).is_ok());
    // None of these is covered by the signature: found by cargo-fuzz (csr_pem) as requests
    // x509-parser accepted and RustCrypto's DER decoder refused. Go refuses them too.
    for (name, bad) in [
        (
            "outer length on 3 bytes",
            long_form(TAG_SEQUENCE, &join(&[&info, &alg, &tlv(TAG_BIT_STRING, &sig)]), 3),
        ),
        (
            "algorithm length in long form",
            tlv(
                TAG_SEQUENCE,
                &join(&[&info, &long_form(TAG_SEQUENCE, alg_value, 1), &tlv(TAG_BIT_STRING, &sig)]),
            ),
        ),
        (
            "OID length in long form",
            tlv(
                TAG_SEQUENCE,
                &join(&[
                    &info,
                    &tlv(TAG_SEQUENCE, &long_form(crate::der::TAG_OID, oid_value, 1)),
                    &tlv(TAG_BIT_STRING, &sig),
                ]),
            ),
        ),
        (
            "signature length on 2 bytes",
            tlv(TAG_SEQUENCE, &join(&[&info, &alg, &long_form(TAG_BIT_STRING, &sig, 2)])),
        ),
    ] {
        match parse_csr_der(&bad) {
            Err(CsrError::Malformed(msg)) => {
                assert!(msg.contains("not DER: non-minimal length"), "{name}: {msg}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn signature_algorithm_parameters_are_absent_null_or_a_sequence() {
    use crate::der::{tlv, TAG_BIT_STRING, TAG_SEQUENCE};
    let der = ::pem::parse(fixture("p256.csr")).unwrap().into_contents();
    let (info, alg, sig) = envelope_parts(&der);
    let alg_value = crate::der::expect_all(&alg, TAG_SEQUENCE).unwrap();
    let with_params = |params: &[u8]| {
        let alg = tlv(TAG_SEQUENCE, &[alg_value, params].concat());
        tlv(TAG_SEQUENCE, &[info.as_slice(), &alg, &tlv(TAG_BIT_STRING, &sig)].concat())
    };
    // ECDSA ignores its parameters (as Go does), in the shapes signers use.
    assert!(parse_csr_der(&with_params(&[])).is_ok());
    assert!(parse_csr_der(&with_params(&[0x05, 0x00])).is_ok());
    // ... and a SEQUENCE (the shape of RSASSA-PSS parameters), which Go also ignores for ECDSA.
    assert!(parse_csr_der(&with_params(&[0x30, 0x00])).is_ok());
    let params_refused = "invalid CSR envelope: signature algorithm parameters";
    for (params, why) in [
        (&[0x01, 0x01, 0xff][..], params_refused),   // BOOLEAN
        (&[0x05, 0x01, 0x00], params_refused),       // NULL with contents
        (&[0x07, 0x00], params_refused),             // ObjectDescriptor, unknown to most DER decoders
        (&[0x05, 0x00, 0x05, 0x00], params_refused), // two values
        (&[0x1f, 0x21, 0x00], "not DER: high tag number form"),
    ] {
        match parse_csr_der(&with_params(params)) {
            Err(CsrError::Malformed(msg)) => assert!(msg.starts_with(why), "{params:02x?}: {msg}"),
            other => panic!("{params:02x?}: {other:?}"),
        }
    }
}

#[test]
fn ber_inside_the_signed_request_is_malformed_even_when_signed() {
    use crate::der::{tlv, TAG_BIT_STRING, TAG_SEQUENCE};
    use rcgen::SigningKey;
    let (key, pem) = rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256);
    let der = ::pem::parse(pem).unwrap().into_contents();
    let (info, alg, _) = envelope_parts(&der);
    let info_value = crate::der::expect_all(&info, TAG_SEQUENCE).unwrap();
    let sign = |info: &[u8]| {
        let mut sig = vec![0u8];
        sig.extend(key.sign(info).unwrap());
        tlv(TAG_SEQUENCE, &[info, alg.as_slice(), &tlv(TAG_BIT_STRING, &sig)].concat())
    };
    // Re-signed as is, it is accepted: what fails below is only the encoding.
    assert!(parse_csr_der(&sign(&info)).is_ok());
    match parse_csr_der(&sign(&long_form(TAG_SEQUENCE, info_value, 2))) {
        Err(CsrError::Malformed(msg)) => assert!(msg.contains("not DER: non-minimal length"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn flipped_signature_bit_is_a_bad_signature() {
    for name in ["p256.csr", "p384.csr", "rsa2048.csr"] {
        let mut der = ::pem::parse(fixture(name)).unwrap().into_contents();
        // The signature BIT STRING ends the request; flip a bit near the end. For ECDSA this
        // may also break the signature's own DER, which must still be a signature failure.
        let n = der.len();
        der[n - 2] ^= 0x01;
        assert_eq!(parse_csr_der(&der).unwrap_err(), CsrError::BadSignature, "{name}");
    }
}

#[test]
fn tampered_request_info_is_a_bad_signature() {
    let mut der = ::pem::parse(fixture("p256.csr")).unwrap().into_contents();
    // Change one letter of the subject CN "p256-node".
    let pos = der.windows(9).position(|w| w == b"p256-node").unwrap();
    der[pos] = b'q';
    assert_eq!(parse_csr_der(&der).unwrap_err(), CsrError::BadSignature);
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    // 70 KiB of valid-looking PEM: a real CSR padded with a huge header-ish preamble.
    let mut big = b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec();
    big.extend(std::iter::repeat_n(b'A', 70 * 1024));
    big.extend_from_slice(b"\n-----END CERTIFICATE REQUEST-----\n");
    let len = big.len();
    let err = parse_csr_pem(&big).unwrap_err();
    assert_eq!(err, CsrError::TooLarge { len });
    assert_eq!(err.to_string(), format!("CSR too large: {len} bytes (max 65536)"));
    assert_eq!(
        parse_csr_der(&vec![0x30; MAX_CSR_SIZE + 1]).unwrap_err(),
        CsrError::TooLarge { len: MAX_CSR_SIZE + 1 }
    );
    // Exactly the limit is decoded (and fails for other reasons).
    assert_eq!(parse_csr_pem(&vec![b' '; MAX_CSR_SIZE]).unwrap_err(), CsrError::NoPemBlock);
}

#[test]
fn single_byte_mutations_never_panic_and_rarely_pass() {
    let der = ::pem::parse(fixture("p256.csr")).unwrap().into_contents();
    let mut accepted = 0usize;
    for i in 0..der.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut m = der.clone();
            m[i] ^= x;
            if parse_csr_der(&m).is_ok() {
                eprintln!("accepted: byte {i} ({:#04x}) ^ {x:#04x}", der[i]);
                accepted += 1;
            }
        }
    }
    // Everything is covered by the signature or by the strict envelope check.
    assert_eq!(accepted, 0);
}

#[test]
fn a_remembered_self_signature_check_never_changes_a_verdict() {
    let cache = SignatureCache::new();
    let (_, pem) = rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256);
    let first = parse_csr_pem_remembering(pem.as_bytes(), Some(&cache)).unwrap();
    assert_eq!(cache.len(), 1);
    let again = parse_csr_pem_remembering(pem.as_bytes(), Some(&cache)).unwrap();
    assert_eq!(again.der(), first.der());
    assert_eq!(cache.len(), 1, "the same bytes are remembered once");

    // The same request with its signature's last byte changed: refused, and not remembered.
    let mut der = first.der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    assert!(matches!(parse_der(&der, Some(&cache)), Err(CsrError::BadSignature)));
    assert!(matches!(parse_der(&der, Some(&cache)), Err(CsrError::BadSignature)));
    assert_eq!(cache.len(), 1);

    // What is remembered is the signature check only: trailing data is still refused.
    let mut trailing = first.der().to_vec();
    trailing.push(0);
    assert!(matches!(parse_der(&trailing, Some(&cache)), Err(CsrError::Malformed(_))));
    // And a cache changes nothing for a request checked without it.
    assert_eq!(parse_csr_der(first.der()).unwrap().der(), first.der());
}
