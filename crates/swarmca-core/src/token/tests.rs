use super::*;

struct FixedEntropy(Vec<u8>);

impl Entropy for FixedEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        for (d, s) in dest.iter_mut().zip(self.0.iter().cycle()) {
            *d = *s;
        }
        Ok(())
    }
}

fn digest_with_leading_zeros() -> [u8; 32] {
    let mut d = [0xab; 32];
    d[..4].copy_from_slice(&[0, 0, 0, 1]);
    d
}

fn valid_v1() -> String {
    format_join_token(&[0x11; 32], &[0x22; 16], false)
}

#[test]
fn generated_tokens_have_fixed_lengths_and_round_trip() {
    for (i, digest) in [[0u8; 32], [0xff; 32], digest_with_leading_zeros(), [0x5a; 32]].iter().enumerate() {
        let mut e = FixedEntropy(vec![u8::try_from(i).unwrap(); 16]);
        let v1 = generate_join_token(digest, false, &mut e).unwrap();
        assert_eq!(v1.len(), 85, "{v1}");
        assert!(v1.starts_with("SWMTKN-1-"));
        assert_eq!(parse_join_token(&v1).unwrap(), ParsedJoinToken { root_digest: *digest, fips: false });
        let v2 = generate_join_token(digest, true, &mut e).unwrap();
        assert_eq!(v2.len(), 87, "{v2}");
        assert!(v2.starts_with("SWMTKN-2-1-"));
        assert_eq!(parse_join_token(&v2).unwrap(), ParsedJoinToken { root_digest: *digest, fips: true });
    }
}

#[test]
fn digest_and_secret_are_zero_padded() {
    // Expected strings computed with python3 big-integer arithmetic.
    let mut secret = [0x12; 16];
    secret[..3].copy_from_slice(&[0, 0, 0]);
    let t = format_join_token(&digest_with_leading_zeros(), &secret, false);
    assert_eq!(t, "SWMTKN-1-0000005eheztwdso12deeqslkss65ac1zdy7j0y2md2bom1sbv-000003ut00615t3qi73rhsaoi");
    let zero = format_join_token(&[0; 32], &[0; 16], false);
    assert_eq!(zero, format!("SWMTKN-1-{}-{}", "0".repeat(50), "0".repeat(25)));
}

#[test]
fn parser_accepts_uppercase_and_fips_zero() {
    let t = valid_v1();
    let upper = format!("SWMTKN-1-{}", t["SWMTKN-1-".len()..].to_uppercase());
    assert_eq!(parse_join_token(&upper).unwrap().root_digest, [0x11; 32]);
    let v2_0 = t.replacen("SWMTKN-1-", "SWMTKN-2-0-", 1);
    assert_eq!(parse_join_token(&v2_0).unwrap(), ParsedJoinToken { root_digest: [0x11; 32], fips: false });
}

#[test]
fn parser_rejects_malformed_tokens() {
    let t = valid_v1();
    let body = &t["SWMTKN-1-".len()..];
    let (digest, secret) = body.split_once('-').unwrap();
    let cases: Vec<(String, TokenError)> = vec![
        (String::new(), TokenError::TooFewParts),
        ("SWMTKN-1-abc".into(), TokenError::TooFewParts),
        (format!("SWMTKM-1-{body}"), TokenError::WrongPrefix),
        (format!("swmtkn-1-{body}"), TokenError::WrongPrefix),
        (format!("SWMTKN-3-{body}"), TokenError::UnsupportedVersion("3".into())),
        (format!("SWMTKN-0-{body}"), TokenError::UnsupportedVersion("0".into())),
        (format!("SWMTKN-1-1-{body}"), TokenError::WrongPartCount { version: 1, expected: 4, got: 5 }),
        (format!("SWMTKN-2-{body}"), TokenError::WrongPartCount { version: 2, expected: 5, got: 4 }),
        (format!("SWMTKN-2-2-{body}"), TokenError::BadFipsFlag),
        (format!("SWMTKN-1-{digest}-{secret}0"), TokenError::BadSecretLength(26)),
        (format!("SWMTKN-1-{}-{secret}", &digest[1..]), TokenError::BadDigestLength(49)),
        (format!("SWMTKN-1-{}_-{secret}", &digest[1..]), TokenError::NonBase36Digest),
        (format!("SWMTKN-1-{}.-{secret}", &digest[1..]), TokenError::NonBase36Digest),
        (format!("SWMTKN-1-{digest}-{}+", &secret[1..]), TokenError::NonBase36Secret),
        (format!("SWMTKN-1-{}-{secret}", "z".repeat(50)), TokenError::DigestOutOfRange),
    ];
    for (token, expected) in cases {
        let err = parse_join_token(&token).unwrap_err();
        assert_eq!(err, expected, "{token}");
        assert!(err.to_string().starts_with("invalid join token"), "{err}");
    }
}

#[test]
fn largest_digest_is_accepted_and_one_more_is_rejected() {
    let max = crate::base36::encode_padded(&[0xff; 32], 50);
    let secret = "0".repeat(25);
    assert_eq!(parse_join_token(&format!("SWMTKN-1-{max}-{secret}")).unwrap().root_digest, [0xff; 32]);
    let mut over = vec![1u8];
    over.extend_from_slice(&[0; 32]);
    let over = crate::base36::encode_padded(&over, 50);
    assert_eq!(parse_join_token(&format!("SWMTKN-1-{over}-{secret}")), Err(TokenError::DigestOutOfRange));
}

#[test]
fn token_matching() {
    let t = valid_v1();
    assert!(token_matches(&t, &t.clone()));
    let mut other = t.clone().into_bytes();
    let last = other.last_mut().unwrap();
    *last = if *last == b'a' { b'b' } else { b'a' };
    assert!(!token_matches(&t, &String::from_utf8(other).unwrap()));
    assert!(!token_matches(&t, &t[..t.len() - 1]));
    assert!(!token_matches(&t, &format!("{t}x")));
    assert!(!token_matches(&t, ""));
    assert!(!token_matches("", ""));
    assert!(!token_matches("", &t));
}
