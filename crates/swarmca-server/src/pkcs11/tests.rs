//! URIs and signature encoding; the token itself is exercised against SoftHSM2 in tests/it.

use ring::signature::{self, KeyPair as _};

use super::{ecdsa_der, parse_uri, KeyUri};

#[test]
fn rfc7512_uris_name_the_token_and_key_and_carry_no_pin() {
    assert_eq!(
        parse_uri("pkcs11:token=swarm%20ca;object=root-2026;type=private").unwrap(),
        KeyUri { token: Some("swarm ca".into()), object: Some("root-2026".into()), id: None }
    );
    assert_eq!(parse_uri("pkcs11:id=%01%a0").unwrap().id, Some(vec![0x01, 0xa0]));
    for (bad, why) in [
        ("pkcs12:object=x", "starts with pkcs11:"),
        ("pkcs11:token=t", "names no key"),
        ("pkcs11:object=x?pin-value=1234", "no query"),
        ("pkcs11:object=x;type=cert", "private key"),
        ("pkcs11:object=%4", "%-escape"),
        ("pkcs11:object", "attribute=value"),
    ] {
        let e = parse_uri(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn a_raw_token_signature_becomes_the_der_x509_carries_and_verifies() {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let public =
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, kp.public_key().as_ref());
    // Many signatures: r or s with a high bit (padded) or leading zeros (trimmed) turn up.
    for i in 0..200u32 {
        let msg = i.to_be_bytes();
        let raw = kp.sign(&rng, &msg).unwrap();
        let der = ecdsa_der(raw.as_ref()).unwrap();
        public.verify(&msg, &der).unwrap_or_else(|_| panic!("signature {i} does not verify as DER"));
    }
    assert!(ecdsa_der(&[1; 63]).unwrap_err().contains("63-byte"));
    assert_eq!(ecdsa_der(&[0; 64]).unwrap(), [0x30, 6, 2, 1, 0, 2, 1, 0]);
}
