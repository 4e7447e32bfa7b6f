//! A minimal DER reader, enough to take private-key structures apart.

/// DER tags used here.
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
/// `[0]` constructed, explicit.
pub(crate) const TAG_CTX0: u8 = 0xa0;
/// `[1]` constructed, explicit.
pub(crate) const TAG_CTX1: u8 = 0xa1;

/// Reads one tag-length-value; returns (tag, value, rest).
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// How deep [`check_strict`] follows constructed values; a CSR nests about 8 deep.
pub(crate) const MAX_STRICT_DEPTH: usize = 32;

/// Checks that `input` is a run of TLVs whose lengths, tags and forms are DER's (as Go's
/// `encoding/asn1` requires of every certificate request it parses), throughout. The contents
/// of primitive values (INTEGER minimality, BOOLEAN values, OID arcs, string charsets, what a
/// BIT or OCTET STRING wraps) are not looked at here: in a CSR they are all signed, and parsed
/// by x509-parser.
///
/// * every length definite and minimal: short form below 128, long form without leading zero
///   bytes otherwise (at most 4 length bytes);
/// * every tag in the low-tag-number form (numbers above 30 occur in no X.509 structure) and
///   never the reserved universal tag 0;
/// * universal SEQUENCE and SET constructed, every other universal type primitive (DER forbids
///   the constructed string forms);
/// * the contents of every constructed value again such a run, down to [`MAX_STRICT_DEPTH`].
///
/// On failure, returns what is wrong and the byte offset of the offending TLV.
pub(crate) fn check_strict(input: &[u8]) -> Result<(), (&'static str, usize)> {
    check_strict_at(input, 0, 0)
}

fn check_strict_at(mut input: &[u8], mut offset: usize, depth: usize) -> Result<(), (&'static str, usize)> {
    if depth > MAX_STRICT_DEPTH {
        return Err(("nested too deeply", offset));
    }
    while !input.is_empty() {
        let StrictTlv { tag, header_len, value, rest } =
            read_strict_tlv(input).map_err(|what| (what, offset))?;
        let constructed = tag & 0x20 != 0;
        if tag & 0xc0 == 0 {
            let number = tag & 0x1f;
            if number == 0 {
                return Err(("reserved universal tag 0", offset));
            }
            if constructed != (number == 0x10 || number == 0x11) {
                return Err(("universal tag of the wrong form", offset));
            }
        }
        if constructed {
            check_strict_at(value, offset + header_len, depth + 1)?;
        }
        offset += input.len() - rest.len();
        input = rest;
    }
    Ok(())
}

/// One TLV read under DER's rules.
struct StrictTlv<'a> {
    tag: u8,
    /// Bytes of tag and length.
    header_len: usize,
    value: &'a [u8],
    /// What follows the TLV.
    rest: &'a [u8],
}

/// Reads one TLV under DER's rules.
fn read_strict_tlv(input: &[u8]) -> Result<StrictTlv<'_>, &'static str> {
    const TRUNCATED: &str = "truncated value";
    let (&tag, rest) = input.split_first().ok_or(TRUNCATED)?;
    if tag & 0x1f == 0x1f {
        return Err("high tag number form");
    }
    let (&first, rest) = rest.split_first().ok_or(TRUNCATED)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 {
            return Err("indefinite length");
        }
        if n > 4 {
            return Err("length of more than 4 bytes");
        }
        let (len_bytes, after) = rest.split_at_checked(n).ok_or(TRUNCATED)?;
        if len_bytes.first() == Some(&0) {
            return Err("non-minimal length (leading zero byte)");
        }
        let len = len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len < 0x80 {
            return Err("non-minimal length (long form below 128)");
        }
        (len, after)
    };
    let (value, rest) = rest.split_at_checked(len).ok_or(TRUNCATED)?;
    Ok(StrictTlv { tag, header_len: input.len() - rest.len() - len, value, rest })
}

/// Reads one TLV that must have tag `tag`; returns (value, rest).
pub(crate) fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, v, rest) = read_tlv(input)?;
    (t == tag).then_some((v, rest))
}

/// Reads a whole input that must be exactly one TLV with tag `tag`.
pub(crate) fn expect_all(input: &[u8], tag: u8) -> Option<&[u8]> {
    let (v, rest) = expect(input, tag)?;
    rest.is_empty().then_some(v)
}

/// Reads one TLV; returns (tag, the whole encoded TLV, rest).
pub(crate) fn split_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (tag, _, rest) = read_tlv(input)?;
    let whole = input.get(..input.len() - rest.len())?;
    Some((tag, whole, rest))
}

/// Splits the contents of a constructed value into its elements (tag, whole TLV).
pub(crate) fn elements(mut contents: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (tag, whole, rest) = split_tlv(contents)?;
        out.push((tag, whole));
        contents = rest;
    }
    Some(out)
}

/// Encodes one TLV with a definite length.
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let len = value.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_round_trips_every_length_form() {
        for len in [0usize, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000] {
            let value = vec![0xab; len];
            let enc = tlv(TAG_OCTET_STRING, &value);
            let (tag, whole, rest) = split_tlv(&enc).unwrap();
            assert_eq!((tag, whole, rest), (TAG_OCTET_STRING, enc.as_slice(), &[][..]));
            assert_eq!(expect_all(&enc, TAG_OCTET_STRING).unwrap(), value.as_slice());
        }
        assert_eq!(tlv(TAG_SEQUENCE, &[]), vec![0x30, 0x00]);
        assert_eq!(&tlv(TAG_SEQUENCE, &[0; 0x80])[..3], &[0x30, 0x81, 0x80]);
        assert_eq!(&tlv(TAG_SEQUENCE, &[0; 0x100])[..4], &[0x30, 0x82, 0x01, 0x00]);
    }

    #[test]
    fn strict_accepts_minimal_encodings_of_every_length_form() {
        for len in [0usize, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000] {
            let inner = tlv(TAG_OCTET_STRING, &vec![0xab; len]);
            let outer = tlv(TAG_SEQUENCE, &[inner.clone(), tlv(TAG_CTX0, &inner)].concat());
            assert_eq!(check_strict(&outer), Ok(()), "length {len}");
        }
        assert_eq!(check_strict(&[]), Ok(()));
    }

    #[test]
    fn strict_refuses_each_ber_liberty_with_its_offset() {
        let int = tlv(TAG_INTEGER, &[1]);
        let nested = |inner: &[u8]| tlv(TAG_SEQUENCE, &[int.as_slice(), inner].concat());
        // Each violation sits inside a valid SEQUENCE, after a 3-byte INTEGER: offset 5.
        for (bad, what) in [
            (vec![0x04, 0x81, 0x05, 1, 2, 3, 4, 5], "non-minimal length (long form below 128)"),
            (vec![0x04, 0x82, 0x00, 0x01, 9], "non-minimal length (leading zero byte)"),
            (vec![0x30, 0x80, 0x00, 0x00], "indefinite length"),
            (vec![0x04, 0x85, 0, 0, 0, 0, 1, 9], "length of more than 4 bytes"),
            (vec![0x1f, 0x21, 0x00], "high tag number form"),
            (vec![0xbf, 0x21, 0x00], "high tag number form"),
            (vec![0x00, 0x00], "reserved universal tag 0"),
            (vec![0x23, 0x03, 0x03, 0x01, 0x00], "universal tag of the wrong form"),
            (vec![0x10, 0x00], "universal tag of the wrong form"),
            (vec![0x04, 0x05, 1, 2], "truncated value"),
        ] {
            let der = nested(&bad);
            assert_eq!(check_strict(&der), Err((what, 5)), "{bad:02x?}");
        }
        // Behind long-form headers: a 4-byte SEQUENCE header, then the 4-byte one of a 300-byte
        // OCTET STRING, then the violation at 4 + 4 + 300.
        let der =
            tlv(TAG_SEQUENCE, &[tlv(TAG_OCTET_STRING, &[7; 300]), vec![0x04, 0x81, 0x01, 0x07]].concat());
        assert_eq!(&der[..2], &[0x30, 0x82]);
        assert_eq!(check_strict(&der), Err(("non-minimal length (long form below 128)", 308)));
        // The outer value itself, and a sibling after a valid value.
        assert_eq!(
            check_strict(&[0x30, 0x81, 0x02, 0x05, 0x00]),
            Err(("non-minimal length (long form below 128)", 0))
        );
        assert_eq!(
            check_strict(&[int.as_slice(), &[0x04, 0x81, 0x01, 0x07]].concat()),
            Err(("non-minimal length (long form below 128)", 3))
        );
    }

    #[test]
    fn strict_bounds_nesting() {
        let mut der = tlv(TAG_INTEGER, &[1]);
        for _ in 0..MAX_STRICT_DEPTH {
            der = tlv(TAG_SEQUENCE, &der);
        }
        assert_eq!(check_strict(&der), Ok(()));
        let deeper = tlv(TAG_SEQUENCE, &der);
        assert_eq!(check_strict(&deeper).map_err(|(what, _)| what), Err("nested too deeply"));
    }

    #[test]
    fn elements_splits_and_rejects_truncation() {
        let a = tlv(TAG_INTEGER, &[1]);
        let b = tlv(TAG_SEQUENCE, &[5, 0]);
        let both = [a.clone(), b.clone()].concat();
        assert_eq!(elements(&both).unwrap(), vec![(TAG_INTEGER, a.as_slice()), (TAG_SEQUENCE, b.as_slice())]);
        assert!(elements(&both[..both.len() - 1]).is_none());
    }
}
