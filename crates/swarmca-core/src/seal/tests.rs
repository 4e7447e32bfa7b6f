use super::*;
use crate::entropy::EntropyError;

/// A counter stream: distinct bytes on every draw, reproducible.
struct Counter(u8);

impl Entropy for Counter {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        for b in dest {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

struct Failing;

impl Entropy for Failing {
    fn fill(&mut self, _: &mut [u8]) -> Result<(), EntropyError> {
        Err(EntropyError("no entropy".into()))
    }
}

const KEY_PEM: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

fn dek(e: &mut Counter) -> DataKey {
    DataKey::generate(e).unwrap()
}

#[test]
fn a_sealed_ca_key_opens_with_its_data_key_and_cluster_only() {
    let mut e = Counter(0);
    let (k, other) = (dek(&mut e), dek(&mut e));
    let sealed = k.seal(Purpose::CaKey, "cluster-a", KEY_PEM, &mut e).unwrap();
    assert!(is_sealed(&sealed));
    assert!(sealed.starts_with(b"-----BEGIN SWARMCA SEALED CA KEY-----\n"));
    // Nothing of the clear key shows through.
    assert!(!sealed.windows(16).any(|w| KEY_PEM.windows(16).any(|c| c == w)));
    assert_eq!(&*k.open(Purpose::CaKey, "cluster-a", &sealed).unwrap(), KEY_PEM);

    assert_eq!(
        other.open(Purpose::CaKey, "cluster-a", &sealed).unwrap_err(),
        SealError::WrongKey { what: "CA key" }
    );
    assert_eq!(
        k.open(Purpose::CaKey, "cluster-b", &sealed).unwrap_err(),
        SealError::WrongKey { what: "CA key" },
        "bound to its cluster"
    );
}

#[test]
fn a_sealed_value_cannot_pass_for_another_purpose() {
    let mut e = Counter(0);
    let k = dek(&mut e);
    let sealed = k.seal(Purpose::UnlockKey, "c", &[7; 32], &mut e).unwrap();
    // By its label first …
    assert!(matches!(k.open(Purpose::CaKey, "c", &sealed), Err(SealError::Format { what: "CA key", .. })));
    // … and by its key and associated data when the label is forged.
    let relabelled = String::from_utf8(sealed.clone()).unwrap().replace("UNLOCK KEY", "CA KEY");
    assert_eq!(
        k.open(Purpose::CaKey, "c", relabelled.as_bytes()).unwrap_err(),
        SealError::WrongKey { what: "CA key" }
    );
    assert_eq!(&*k.open(Purpose::UnlockKey, "c", &sealed).unwrap(), &[7; 32]);
}

#[test]
fn altered_or_truncated_values_are_refused_not_misread() {
    let mut e = Counter(0);
    let k = dek(&mut e);
    let sealed = k.seal(Purpose::CaKey, "c", KEY_PEM, &mut e).unwrap();
    let (block, _) = crate::pemutil::decode(&sealed).unwrap();
    for i in 0..block.der.len() {
        let mut body = block.der.clone();
        body[i] ^= 0x01;
        let forged = crate::pemutil::encode("SWARMCA SEALED CA KEY", &body);
        assert!(k.open(Purpose::CaKey, "c", &forged).is_err(), "flipped byte {i} accepted");
    }
    for n in [0, 1, 12, 28] {
        let forged = crate::pemutil::encode("SWARMCA SEALED CA KEY", &block.der[..n]);
        assert!(matches!(k.open(Purpose::CaKey, "c", &forged), Err(SealError::Format { .. })), "{n} bytes");
    }
    assert!(matches!(k.open(Purpose::CaKey, "c", KEY_PEM), Err(SealError::Format { .. })));
    assert!(matches!(k.open(Purpose::CaKey, "c", b"junk"), Err(SealError::Format { .. })));
}

#[test]
fn each_seal_draws_a_fresh_nonce() {
    let mut e = Counter(0);
    let k = dek(&mut e);
    let a = k.seal(Purpose::CaKey, "c", KEY_PEM, &mut e).unwrap();
    let b = k.seal(Purpose::CaKey, "c", KEY_PEM, &mut e).unwrap();
    assert_ne!(a, b);
    assert!(matches!(k.seal(Purpose::CaKey, "c", KEY_PEM, &mut Failing), Err(SealError::Entropy(_))));
    assert!(matches!(DataKey::generate(&mut Failing), Err(SealError::Entropy(_))));
}

#[test]
fn the_data_key_unwraps_only_under_its_kek_and_cluster() {
    let mut e = Counter(0);
    let k = dek(&mut e);
    let seal = Kek::from_seal_key(&SealKey::generate(&mut e).unwrap());
    let unlock = Kek::from_unlock_key(&UnlockKey::generate(&mut e).unwrap());
    assert_eq!((seal.source(), unlock.source()), (KekSource::SealKey, KekSource::UnlockKey));
    let wrapped = seal.wrap(&k, "c", &mut e).unwrap();
    assert!(wrapped.starts_with(b"-----BEGIN SWARMCA WRAPPED DATA KEY-----\n"));
    assert!(seal.unwrap(&wrapped, "c").unwrap().same_as(&k));
    assert_eq!(unlock.unwrap(&wrapped, "c").unwrap_err(), SealError::WrongKey { what: "data key" });
    assert_eq!(seal.unwrap(&wrapped, "d").unwrap_err(), SealError::WrongKey { what: "data key" });
    // Re-wrapped under the unlock key (autolock on), the same data key comes back.
    let rewrapped = unlock.wrap(&k, "c", &mut e).unwrap();
    assert!(unlock.unwrap(&rewrapped, "c").unwrap().same_as(&k));
    assert!(!dek(&mut e).same_as(&k));
}

#[test]
fn a_node_key_is_sealed_under_the_kek_not_the_data_key() {
    let mut e = Counter(0);
    let kek = Kek::from_seal_key(&SealKey::generate(&mut e).unwrap());
    let sealed = kek.seal_node_key("c", KEY_PEM, &mut e).unwrap();
    assert!(sealed.starts_with(b"-----BEGIN SWARMCA SEALED NODE KEY-----\n"));
    assert_eq!(&*kek.open_node_key("c", &sealed).unwrap(), KEY_PEM);
    let other = Kek::from_seal_key(&SealKey::generate(&mut e).unwrap());
    assert_eq!(other.open_node_key("c", &sealed).unwrap_err(), SealError::WrongKey { what: "node key" });
}

#[test]
fn unlock_keys_read_and_print_in_swarmkits_format() {
    let key = UnlockKey::from_bytes(&[0xfb; 32]).unwrap();
    let text = key.to_text();
    // SWMKEY-1- and standard base64 without padding: 43 characters for 32 bytes.
    assert_eq!(text.as_str(), "SWMKEY-1-+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/s");
    assert!(UnlockKey::parse(&format!("  {}\n", text.as_str())).unwrap().same_as(&key));
    for (bad, why) in [
        ("", "starts with"),
        ("SWMKEY-2-AAAA", "starts with"),
        ("SWMKEY-1-!!!!", "base64"),
        ("SWMKEY-1-AAAA", "32 bytes"),
    ] {
        let e = UnlockKey::parse(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
    assert!(!UnlockKey::parse(text.as_str()).unwrap().same_as(&UnlockKey::from_bytes(&[0xfa; 32]).unwrap()));
}

#[test]
fn seal_key_files_round_trip_and_bad_ones_say_how_to_make_one() {
    let mut e = Counter(0);
    let k = SealKey::generate(&mut e).unwrap();
    let text = k.to_text();
    assert!(text.starts_with(SEAL_KEY_PREFIX) && text.ends_with('\n'));
    let back = SealKey::parse(&text).unwrap();
    // Same key: what one wraps the other unwraps.
    let dk = dek(&mut e);
    let w = Kek::from_seal_key(&k).wrap(&dk, "c", &mut e).unwrap();
    assert!(Kek::from_seal_key(&back).unwrap(&w, "c").unwrap().same_as(&dk));
    let e = SealKey::parse("hunter2").unwrap_err().to_string();
    assert!(e.contains("swarmca seal-key generate"), "{e}");
    assert!(SealKey::parse(&format!("{SEAL_KEY_PREFIX}AAAA")).unwrap_err().to_string().contains("32 bytes"));
}

#[test]
fn keys_never_print() {
    let mut e = Counter(0x40);
    let dk = dek(&mut e);
    let uk = UnlockKey::generate(&mut e).unwrap();
    let sk = SealKey::generate(&mut e).unwrap();
    let kek = Kek::from_unlock_key(&uk);
    let shown = format!("{dk:?} {uk:?} {sk:?} {kek:?}");
    assert_eq!(shown, "DataKey(..) UnlockKey(..) SealKey(..) Kek(UnlockKey, ..)");
}
